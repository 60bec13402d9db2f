//! Bodies: the capped read of a request body into one `Bytes`, and the
//! response body that is either the proxy's own bytes or upstream's frames piped through.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// Why a request body could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// Larger than `MAX_BODY_BYTES`.
    TooLarge,
    /// The client's framing was broken or the connection dropped.
    Broken,
}

/// Reads a whole request body, refusing more than `cap` bytes.
///
/// A body that arrives in one frame (the usual case) is returned without any
/// copy; several frames are copied once into one buffer. The result is kept
/// for retries, where cloning it costs a reference count.
pub async fn read_capped(body: Incoming, cap: usize) -> Result<Bytes, ReadError> {
    if body.size_hint().lower() > cap as u64 {
        return Err(ReadError::TooLarge);
    }
    match Limited::new(body, cap).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(ReadError::TooLarge),
        Err(_) => Err(ReadError::Broken),
    }
}

/// A response body: the proxy's own bytes, or upstream's body frame by frame.
pub enum ProxyBody {
    Full(Option<Bytes>),
    Upstream(Incoming),
}

impl ProxyBody {
    #[must_use]
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ProxyBody::Full(Some(bytes.into()))
    }

    #[must_use]
    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Upstream(incoming) => Pin::new(incoming).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(bytes) => bytes.is_none(),
            ProxyBody::Upstream(incoming) => incoming.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ProxyBody::Upstream(incoming) => incoming.size_hint(),
        }
    }
}
