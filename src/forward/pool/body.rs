//! An upstream answer's body, which gives its HTTP/1.1 connection back to the worker's
//! idle list once the answer has been read to its end.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;

use super::idle::{self, Idle};

/// The body of an answer from OpenRouter.
///
/// An HTTP/1.1 connection carries one answer at a time, so it goes back to its worker's
/// idle list when the body has ended: when its end is read, or when it is dropped already
/// complete (hyper's server stops polling a body once it says it has ended). A body
/// dropped before its end takes its connection with it: hyper closes a connection whose
/// answer nobody reads. An HTTP/2 answer has no lease: its connection is shared.
pub struct UpstreamBody {
    body: Incoming,
    lease: Option<Lease>,
}

/// An HTTP/1.1 connection lent to one answer.
pub(super) struct Lease {
    pub(super) sender: http1::SendRequest<Full<Bytes>>,
    pub(super) idle: Arc<Mutex<Idle>>,
}

impl UpstreamBody {
    pub(super) fn new(body: Incoming, lease: Option<Lease>) -> UpstreamBody {
        UpstreamBody { body, lease }
    }

    fn give_back(&mut self) {
        if let Some(lease) = self.lease.take() {
            idle::give_back(&lease.idle, lease.sender);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Err(_))) => self.lease = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if self.body.is_end_stream() {
            self.give_back();
        }
    }
}
