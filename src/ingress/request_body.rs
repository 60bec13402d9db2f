//! The capped read of a request body into one `Bytes`, kept for every attempt.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};

use crate::forward::held::Joined;

/// A whole request body.
pub struct RequestBody {
    pub bytes: Bytes,
    /// It came in one frame and is kept without a copy: a slice of hyper's read buffer.
    pub in_read_buffer: bool,
}

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
) -> Result<RequestBody, ReadError> {
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
            return Ok(RequestBody {
                in_read_buffer: joined.is_one_frame(),
                bytes: joined.into_bytes(),
            });
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
