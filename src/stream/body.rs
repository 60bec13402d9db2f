//! The response body: the proxy's own bytes, an upstream body piped frame by
//! frame after any held prefix, or an event stream under pre-content inspection.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::accounted::Accounted;
use super::relay::SseRelay;
use crate::forward::held::Held;

/// A response body: the proxy's own bytes, upstream's body (after any held
/// prefix) frame by frame, or an event stream under pre-content inspection.
pub enum ProxyBody {
    Full(Option<Bytes>),
    Upstream {
        held: Option<Bytes>,
        rest: Incoming,
    },
    Relay(Box<SseRelay>),
    /// A proxied response, recorded when it ends.
    Accounted(Box<Accounted>),
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

    #[must_use]
    pub fn upstream(held: Option<Bytes>, rest: Incoming) -> Self {
        ProxyBody::Upstream {
            held: held.filter(|b| !b.is_empty()),
            rest,
        }
    }
}

impl From<Held> for ProxyBody {
    /// The whole upstream body again: held bytes first, then the rest piped.
    fn from(held: Held) -> Self {
        match held.rest {
            None => ProxyBody::full(held.bytes),
            Some(rest) => ProxyBody::upstream(Some(held.bytes), rest),
        }
    }
}

impl From<Bytes> for ProxyBody {
    fn from(bytes: Bytes) -> Self {
        ProxyBody::full(bytes)
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
            ProxyBody::Upstream { held, rest } => match held.take() {
                Some(bytes) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                None => Pin::new(rest).poll_frame(cx),
            },
            ProxyBody::Relay(relay) => Pin::new(relay.as_mut()).poll_frame(cx),
            ProxyBody::Accounted(accounted) => Pin::new(accounted.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(bytes) => bytes.is_none(),
            ProxyBody::Upstream { held, rest } => held.is_none() && rest.is_end_stream(),
            ProxyBody::Relay(relay) => relay.is_end_stream(),
            ProxyBody::Accounted(accounted) => accounted.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ProxyBody::Upstream { held: None, rest } => rest.size_hint(),
            ProxyBody::Accounted(accounted) => accounted.size_hint(),
            ProxyBody::Upstream { .. } | ProxyBody::Relay(_) => SizeHint::default(),
        }
    }
}
