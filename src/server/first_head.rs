//! The first request head of every connection, read and checked before hyper sees it.
//!
//! hyper answers a head it cannot parse with a bare status line and no body, and it
//! follows RFC 9112 for a head with both `Content-Length` and `Transfer-Encoding`
//! (chunked wins, the connection closes afterwards). Clients of this proxy expect
//! OpenRouter's JSON error shape, and both framings at once is a smuggling probe that
//! deserves a refusal. Checking the first head with hyper's own parser (httparse with
//! the same defaults) covers the one-shot connections such input arrives on; a bad
//! head later on a keep-alive connection still gets hyper's bare answer. HTTP/2
//! connections are handed over untouched.

use bytes::{BufMut, Bytes, BytesMut};
use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Duration, Instant};

use crate::error::error_body;
pub use crate::http1_rules::MAX_HEAD_BYTES;
use crate::http1_rules::{last_coding_is_chunked, parse_content_length, MAX_HEADERS};

/// What an HTTP/2 client with prior knowledge sends first.
pub const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How long, and how much, a refused client's unread bytes are drained so that closing
/// the socket does not reset the connection before the client has read the refusal.
const DRAIN_TIME: Duration = Duration::from_secs(1);
const DRAIN_BYTES: u64 = 1024 * 1024;

/// The one refusal hyper would not make: it reads such a body as chunked (RFC 9112).
pub const BOTH_FRAMINGS: &str = "request has both Content-Length and Transfer-Encoding";

/// What the start of a connection amounts to.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not a whole head yet.
    Incomplete,
    /// A head hyper can take, or the HTTP/2 preface.
    Pass,
    /// Answer with this status and message, then close.
    Refuse(StatusCode, &'static str),
}

/// How reading the first head ended.
pub enum FirstHead {
    /// Serve the connection, replaying these already-read bytes first.
    Serve(Bytes),
    /// Refused with this status (the answer is written), to be counted.
    Refused(StatusCode),
    /// The client left or never sent a byte in time: nothing to answer.
    Gone,
}

/// Reads until the first head is complete (or refused). `limit` bounds the whole head
/// from accept, which is what stops a client dribbling headers; zero means no limit.
pub async fn read(stream: &mut TcpStream, limit: Duration) -> FirstHead {
    // Checked: a limit too far ahead for the clock is no limit.
    let deadline = (!limit.is_zero())
        .then(|| Instant::now().checked_add(limit))
        .flatten();
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let room = MAX_HEAD_BYTES - buf.len();
        // BytesMut at least doubles when it grows, so this stays a few reallocations.
        buf.reserve(room.min(4096));
        let scanned = buf.len().saturating_sub(2);
        let mut window = (&mut buf).limit(room);
        let read = stream.read_buf(&mut window);
        let read = match deadline {
            Some(deadline) => timeout_at(deadline, read).await.ok(),
            None => Some(read.await),
        };
        let verdict = match read {
            Some(Ok(0) | Err(_)) => return FirstHead::Gone,
            None if buf.is_empty() => return FirstHead::Gone,
            None => Verdict::Refuse(
                StatusCode::REQUEST_TIMEOUT,
                "request head not received within HEADER_READ_TIMEOUT",
            ),
            // Parsing only once the end of the head has arrived keeps a dribbling client
            // from costing a parse per byte (the HTTP/2 preface ends like a head, too).
            Some(Ok(_)) if ends_head(&buf[scanned..]) || buf.len() >= MAX_HEAD_BYTES => {
                inspect(&buf)
            }
            Some(Ok(_)) => Verdict::Incomplete,
        };
        match verdict {
            Verdict::Incomplete => {}
            // An exact-size copy: the read buffer is sized for the worst case, and what is
            // replayed lives as long as hyper takes to read it.
            Verdict::Pass => return FirstHead::Serve(Bytes::copy_from_slice(&buf)),
            Verdict::Refuse(status, message) => {
                refuse(stream, status, message).await;
                return FirstHead::Refused(status);
            }
        }
    }
}

/// Whether `bytes` contain the blank line that ends a head (httparse accepts bare LF too).
fn ends_head(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| w == b"\n\n") || bytes.windows(3).any(|w| w == b"\n\r\n")
}

/// The verdict on a connection that starts like the HTTP/2 preface, if it does.
fn preface_verdict(bytes: &[u8]) -> Option<Verdict> {
    let n = bytes.len().min(HTTP2_PREFACE.len());
    (n > 0 && bytes[..n] == HTTP2_PREFACE[..n]).then(|| {
        if n == HTTP2_PREFACE.len() {
            Verdict::Pass
        } else {
            Verdict::Incomplete
        }
    })
}

/// Judges the bytes a connection has sent so far.
#[must_use]
pub fn inspect(bytes: &[u8]) -> Verdict {
    if let Some(verdict) = preface_verdict(bytes) {
        return verdict;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => framing(&request),
        Ok(httparse::Status::Partial) if bytes.len() >= MAX_HEAD_BYTES => Verdict::Refuse(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request head is larger than 64 KiB",
        ),
        Ok(httparse::Status::Partial) => Verdict::Incomplete,
        Err(httparse::Error::TooManyHeaders) => Verdict::Refuse(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request has more than 100 headers",
        ),
        Err(_) => Verdict::Refuse(StatusCode::BAD_REQUEST, "malformed HTTP request head"),
    }
}

/// The target and body framing checks hyper would fail the head on, plus the one it
/// resolves by RFC 9112 but this proxy refuses: both `Content-Length` and
/// `Transfer-Encoding`.
fn framing(request: &httparse::Request<'_, '_>) -> Verdict {
    let bad = |message| Verdict::Refuse(StatusCode::BAD_REQUEST, message);
    if request
        .path
        .is_none_or(|target| hyper::Uri::try_from(target).is_err())
    {
        return bad("malformed request target");
    }
    let named = |name: &'static str| {
        request
            .headers
            .iter()
            .filter(move |header| header.name.eq_ignore_ascii_case(name))
            .map(|header| header.value)
    };
    // As in hyper: the last Transfer-Encoding line decides, by its last coding.
    match (
        named("content-length").next(),
        named("transfer-encoding").next_back(),
    ) {
        (Some(_), Some(_)) => bad(BOTH_FRAMINGS),
        (None, Some(_)) if request.version != Some(1) => bad("HTTP/1.0 has no Transfer-Encoding"),
        (None, Some(coding)) if !last_coding_is_chunked(coding) => {
            bad("Transfer-Encoding must end with chunked")
        }
        (Some(_), None) => {
            let mut lengths = named("content-length").map(parse_content_length);
            let first = lengths.next().flatten();
            if first.is_none() || lengths.any(|length| length != first) {
                bad("invalid or conflicting Content-Length")
            } else {
                Verdict::Pass
            }
        }
        _ => Verdict::Pass,
    }
}

/// Writes the refusal, then closes after draining what the client still sends.
async fn refuse(stream: &mut TcpStream, status: StatusCode, message: &str) {
    let body = error_body(status, message);
    let response = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         access-control-allow-origin: *\r\nconnection: close\r\n\r\n{body}",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
    );
    let deadline = Instant::now() + DRAIN_TIME;
    if !matches!(
        timeout_at(deadline, stream.write_all(response.as_bytes())).await,
        Ok(Ok(()))
    ) {
        return;
    }
    let _ = stream.shutdown().await;
    // `copy` allocates its buffer only here; a buffer on this future's stack would make
    // every connection's task that much larger for its whole life.
    let mut rest = (&mut *stream).take(DRAIN_BYTES);
    let _ = timeout_at(deadline, tokio::io::copy(&mut rest, &mut tokio::io::sink())).await;
}

#[cfg(test)]
mod tests;
