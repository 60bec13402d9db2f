//! An upstream answer's body: read from the worker's shared HTTP/2 connection through
//! hyper, or from an HTTP/1.1 connection of its own (which it gives back to the idle list
//! once the answer has been read to its end).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::{http1, BoxError};

/// The body of an answer from OpenRouter.
pub struct UpstreamBody(Kind);

enum Kind {
    Http2(Incoming),
    Http1(http1::Reader),
}

impl UpstreamBody {
    pub(super) fn http2(body: Incoming) -> UpstreamBody {
        UpstreamBody(Kind::Http2(body))
    }

    pub(super) fn http1(reader: http1::Reader) -> UpstreamBody {
        UpstreamBody(Kind::Http1(reader))
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.0 {
            Kind::Http2(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map_err(Into::into))),
            Kind::Http1(reader) => reader.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Http2(body) => body.is_end_stream(),
            Kind::Http1(reader) => reader.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Http2(body) => body.size_hint(),
            Kind::Http1(reader) => reader
                .exact_len()
                .map_or_else(SizeHint::default, SizeHint::with_exact),
        }
    }
}
