//! The bounded hold of an upstream answer's start, so it can be classified
//! before anything is committed to the client.

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;

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
    pub rest: Option<Incoming>,
}

/// Why an answer's start could not be held.
pub enum HoldError {
    /// The body broke off.
    Broken,
    /// Only whitespace (OpenRouter's heartbeats) arrived before the first-byte deadline.
    NoFirstByte,
}

/// Reads `body` until it ends or more than `limit` bytes past leading
/// whitespace (OpenRouter's heartbeats) have arrived; the first byte past the
/// whitespace must arrive by `first_byte_by` when one is given. A body that
/// arrives in one frame is held without a copy.
pub async fn hold(
    mut body: Incoming,
    limit: usize,
    first_byte_by: Option<tokio::time::Instant>,
) -> Result<Held, HoldError> {
    let mut joined = Joined::default();
    let mut significant = 0usize;
    while significant <= limit {
        let next = match first_byte_by.filter(|_| significant == 0) {
            Some(deadline) => tokio::time::timeout_at(deadline, body.frame())
                .await
                .map_err(|_| HoldError::NoFirstByte)?,
            None => body.frame().await,
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
