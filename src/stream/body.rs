//! The response body: the proxy's own bytes, an upstream body piped frame by
//! frame after any held prefix, or an event stream under pre-content inspection.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::accounted::Accounted;
use super::idle_watch::IdleWatch;
use super::relay::SseRelay;
use crate::forward::held::Held;
use crate::forward::pool::{BoxError, UpstreamBody};

/// Why a response body ended before its end: the client then sees its connection cut (no
/// status can change once the head is sent), and the record says which.
#[derive(Debug)]
pub enum BodyError {
    /// OpenRouter's answer broke off.
    Upstream(BoxError),
    /// OpenRouter sent nothing of the answer for `STREAM_IDLE_TIMEOUT` (seconds).
    Stalled(u64),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Upstream(err) => write!(f, "the OpenRouter answer broke off: {err}"),
            BodyError::Stalled(secs) => {
                write!(
                    f,
                    "OpenRouter sent nothing for {secs} s (STREAM_IDLE_TIMEOUT)"
                )
            }
        }
    }
}

impl std::error::Error for BodyError {}

/// A response body: the proxy's own bytes, upstream's body (after any held
/// prefix) frame by frame, or an event stream under pre-content inspection.
pub enum ProxyBody {
    Full(Option<Bytes>),
    Upstream {
        held: Option<Bytes>,
        rest: UpstreamBody,
        idle: Option<IdleWatch>,
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

    /// The whole upstream body again: held bytes first, then the rest piped, ended when
    /// upstream sends nothing for `idle_after` (0: never).
    #[must_use]
    pub fn answer(held: Held, idle_after: std::time::Duration) -> Self {
        match held.rest {
            None => ProxyBody::full(held.bytes),
            Some(rest) => ProxyBody::Upstream {
                held: Some(held.bytes).filter(|b| !b.is_empty()),
                rest,
                idle: IdleWatch::new(idle_after),
            },
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
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Upstream { held, rest, idle } => {
                if let Some(bytes) = held.take() {
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                match Pin::new(rest).poll_frame(cx) {
                    Poll::Pending => {
                        let stalled = idle
                            .as_mut()
                            .and_then(|watch| watch.expired(cx).then(|| watch.after_secs()));
                        match stalled {
                            Some(secs) => Poll::Ready(Some(Err(BodyError::Stalled(secs)))),
                            None => Poll::Pending,
                        }
                    }
                    Poll::Ready(frame) => {
                        if let Some(watch) = idle {
                            watch.touched();
                        }
                        Poll::Ready(frame.map(|f| f.map_err(BodyError::Upstream)))
                    }
                }
            }
            ProxyBody::Relay(relay) => Pin::new(relay.as_mut()).poll_frame(cx),
            ProxyBody::Accounted(accounted) => Pin::new(accounted.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(bytes) => bytes.is_none(),
            ProxyBody::Upstream { held, rest, .. } => held.is_none() && rest.is_end_stream(),
            ProxyBody::Relay(relay) => relay.is_end_stream(),
            ProxyBody::Accounted(accounted) => accounted.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ProxyBody::Upstream {
                held: None, rest, ..
            } => rest.size_hint(),
            ProxyBody::Accounted(accounted) => accounted.size_hint(),
            ProxyBody::Upstream { .. } | ProxyBody::Relay(_) => SizeHint::default(),
        }
    }
}
