//! Bodies: the capped read of a request body into one `Bytes`, the bounded
//! hold of an upstream body's start, and the response body that is either the
//! proxy's own bytes or upstream's frames piped through.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::relay::SseRelay;

/// Why a request body could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// Larger than `MAX_BODY_BYTES`.
    TooLarge,
    /// The client paused longer than `REQUEST_BODY_TIMEOUT`.
    Stalled,
    /// The client's framing was broken or the connection dropped.
    Broken,
}

/// Reads a whole request body, refusing more than `cap` bytes or a pause of more
/// than `pause` between two pieces (zero: no limit).
///
/// A body that arrives in one frame (the usual case) is returned without any
/// copy; several frames are copied once into one buffer. The result is kept
/// for retries, where cloning it costs a reference count.
pub async fn read_capped(
    mut body: Incoming,
    cap: usize,
    pause: Duration,
) -> Result<Bytes, ReadError> {
    if body.size_hint().lower() > cap as u64 {
        return Err(ReadError::TooLarge);
    }
    let mut joined = Joined::default();
    loop {
        let next = if pause.is_zero() {
            body.frame().await
        } else {
            tokio::time::timeout(pause, body.frame())
                .await
                .map_err(|_| ReadError::Stalled)?
        };
        let Some(frame) = next else {
            return Ok(joined.into_bytes());
        };
        let Ok(data) = frame.map_err(|_| ReadError::Broken)?.into_data() else {
            continue;
        };
        if joined.len() + data.len() > cap {
            return Err(ReadError::TooLarge);
        }
        joined.push(data);
    }
}

/// Frames joined into one `Bytes`: the first is kept as it came, a second one
/// makes the only copy.
#[derive(Default)]
struct Joined {
    first: Option<Bytes>,
    copied: BytesMut,
}

impl Joined {
    fn push(&mut self, data: Bytes) {
        match self.first.take() {
            None if self.copied.is_empty() => self.first = Some(data),
            first => {
                if let Some(first) = first {
                    self.copied.extend_from_slice(&first);
                }
                self.copied.extend_from_slice(&data);
            }
        }
    }

    fn len(&self) -> usize {
        self.first.as_ref().map_or(self.copied.len(), Bytes::len)
    }

    fn into_bytes(self) -> Bytes {
        self.first.unwrap_or_else(|| self.copied.freeze())
    }
}

/// The start of an upstream body, held back for inspection.
pub struct Held {
    /// Everything read so far.
    pub bytes: Bytes,
    /// The unread remainder; `None` when `bytes` is the whole body.
    pub rest: Option<Incoming>,
}

impl Held {
    /// The whole body again: held bytes first, then the rest piped.
    #[must_use]
    pub fn into_body(self) -> ProxyBody {
        match self.rest {
            None => ProxyBody::full(self.bytes),
            Some(rest) => ProxyBody::upstream(Some(self.bytes), rest),
        }
    }
}

/// Reads `body` until it ends or more than `limit` bytes past leading
/// whitespace (OpenRouter's heartbeats) have arrived. A body that arrives in
/// one frame is held without a copy.
pub async fn hold(mut body: Incoming, limit: usize) -> Result<Held, hyper::Error> {
    let mut joined = Joined::default();
    let mut significant = 0usize;
    while significant <= limit {
        let Some(frame) = body.frame().await else {
            return Ok(Held {
                bytes: joined.into_bytes(),
                rest: None,
            });
        };
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        significant += if significant == 0 {
            data.len() - data.iter().take_while(|b| b.is_ascii_whitespace()).count()
        } else {
            data.len()
        };
        joined.push(data);
    }
    Ok(Held {
        bytes: joined.into_bytes(),
        rest: Some(body),
    })
}

/// A response body: the proxy's own bytes, upstream's body (after any held
/// prefix) frame by frame, or an event stream under pre-content inspection.
pub enum ProxyBody {
    Full(Option<Bytes>),
    Upstream { held: Option<Bytes>, rest: Incoming },
    Relay(Box<SseRelay>),
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
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(bytes) => bytes.is_none(),
            ProxyBody::Upstream { held, rest } => held.is_none() && rest.is_end_stream(),
            ProxyBody::Relay(relay) => relay.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ProxyBody::Upstream { held: None, rest } => rest.size_hint(),
            ProxyBody::Upstream { .. } | ProxyBody::Relay(_) => SizeHint::default(),
        }
    }
}
