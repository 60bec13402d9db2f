//! The bounded hold of an upstream answer's start, so it can be classified
//! before anything is committed to the client.

use crate::forward::pool::UpstreamBody;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;

/// Frames joined into one `Bytes`: the first is kept as it came, a second one
/// makes the only copy.
#[derive(Default)]
pub(crate) struct Joined {
    first: Option<Bytes>,
    copied: BytesMut,
}

impl Joined {
    pub(crate) fn push(&mut self, data: Bytes) {
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

    #[must_use]
    pub(crate) fn len(&self) -> usize {
        self.first.as_ref().map_or(self.copied.len(), Bytes::len)
    }

    /// Whether the bytes are one frame as it came (a slice of hyper's read buffer).
    #[must_use]
    pub(crate) fn is_one_frame(&self) -> bool {
        self.first.is_some()
    }

    #[must_use]
    pub(crate) fn into_bytes(self) -> Bytes {
        self.first.unwrap_or_else(|| self.copied.freeze())
    }
}

/// The start of an upstream body, held back for inspection.
pub struct Held {
    /// Everything read so far.
    pub bytes: Bytes,
    /// The unread remainder; `None` when `bytes` is the whole body.
    pub rest: Option<UpstreamBody>,
}

/// Why an answer's start could not be held.
pub enum HoldError {
    /// The body broke off.
    Broken,
    /// Only whitespace (OpenRouter's heartbeats) arrived before the first-byte deadline.
    NoFirstByte,
    /// After the first byte, nothing more arrived for the idle limit.
    Stalled,
}

/// How long [`hold`] waits for each part of a body.
#[derive(Clone, Copy, Default)]
pub struct HoldLimits {
    /// The first byte past leading whitespace must arrive by then.
    pub first_byte_by: Option<tokio::time::Instant>,
    /// After it, no gap between frames may be longer (`STREAM_IDLE_TIMEOUT`).
    pub idle: Option<std::time::Duration>,
}

/// Reads `body` until it ends or more than `limit` bytes past leading
/// whitespace (OpenRouter's heartbeats) have arrived, within `limits`. A body
/// that arrives in one frame is held without a copy.
pub async fn hold(
    mut body: UpstreamBody,
    limit: usize,
    limits: HoldLimits,
) -> Result<Held, HoldError> {
    let mut joined = Joined::default();
    let mut significant = 0usize;
    while significant <= limit {
        let next = match (significant, limits.first_byte_by, limits.idle) {
            (0, Some(deadline), _) => tokio::time::timeout_at(deadline, body.frame())
                .await
                .map_err(|_| HoldError::NoFirstByte)?,
            (1.., _, Some(idle)) => tokio::time::timeout(idle, body.frame())
                .await
                .map_err(|_| HoldError::Stalled)?,
            _ => body.frame().await,
        };
        let Some(frame) = next else {
            return Ok(Held {
                bytes: joined.into_bytes(),
                rest: None,
            });
        };
        let Ok(data) = frame.map_err(|_| HoldError::Broken)?.into_data() else {
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
