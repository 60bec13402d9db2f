//! An HTTP/1.1 request's head as bytes, and an answer's head from bytes.

use std::io::Write as _;

use bytes::Bytes;
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING,
};
use hyper::http::request;
use hyper::http::response;
use hyper::{Method, Response, StatusCode, Version};

use super::framing::{Chunked, Framing};
use crate::http1_rules::{last_coding_is_chunked, parse_content_length, MAX_HEADERS};

/// `METHOD path HTTP/1.1`, `Host`, the request's fields and its `Content-Length`.
pub(super) fn encode_request(
    parts: &request::Parts,
    host: &HeaderValue,
    body_len: usize,
) -> Vec<u8> {
    let path = parts.uri.path_and_query().map_or("/", |path| path.as_str());
    let fields: usize = parts
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    let mut head =
        Vec::with_capacity(parts.method.as_str().len() + path.len() + host.len() + fields + 64);
    head.extend_from_slice(parts.method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(path.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    head.extend_from_slice(host.as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    let needs_length =
        body_len > 0 || matches!(parts.method, Method::POST | Method::PUT | Method::PATCH);
    if needs_length && !parts.headers.contains_key(CONTENT_LENGTH) {
        // Writing into a Vec cannot fail.
        let _ = write!(head, "content-length: {body_len}\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// An answer's head, parsed.
pub(super) struct Head {
    pub(super) parts: response::Parts,
    pub(super) framing: Framing,
    /// The connection can carry another request after this answer.
    pub(super) keep_alive: bool,
}

/// Why an answer's head could not be read.
#[derive(Debug)]
pub struct HeadError(String);

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid response head from upstream: {}", self.0)
    }
}

impl std::error::Error for HeadError {}

/// Parses the head at the start of `buffer`: `Ok(None)` while it is incomplete, else the
/// head and its length in bytes. Informational answers (1xx) come back as heads too; the
/// caller skips them.
pub(super) fn parse_response(
    buffer: &[u8],
    method: &Method,
) -> Result<Option<(Head, usize)>, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut fields);
    let length = match parsed.parse(buffer) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(err) => return Err(HeadError(err.to_string())),
    };
    let code = parsed.code.unwrap_or_default();
    let status = StatusCode::from_u16(code).map_err(|_| HeadError(format!("status {code}")))?;
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // One copy of the head; the field values are slices of it.
    let copy = Bytes::copy_from_slice(&buffer[..length]);
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    for field in parsed.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| HeadError(format!("field name {:?}", field.name)))?;
        let start = field.value.as_ptr() as usize - buffer.as_ptr() as usize;
        let value = HeaderValue::from_maybe_shared(copy.slice(start..start + field.value.len()))
            .map_err(|_| HeadError(format!("the value of {name}")))?;
        headers.append(name, value);
    }
    let framing = framing(status, method, &headers)?;
    let keep_alive = version == Version::HTTP_11
        && status != StatusCode::SWITCHING_PROTOCOLS
        && framing != Framing::UntilClose
        && !has_token(&headers, &CONNECTION, "close");
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    Ok(Some((
        Head {
            parts,
            framing,
            keep_alive,
        },
        length,
    )))
}

/// RFC 9112 §6.3, in its order.
fn framing(status: StatusCode, method: &Method, headers: &HeaderMap) -> Result<Framing, HeadError> {
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Done);
    }
    // As in hyper: the last Transfer-Encoding line decides, by its last coding.
    if let Some(coding) = headers.get_all(TRANSFER_ENCODING).iter().next_back() {
        return Ok(if last_coding_is_chunked(coding.as_bytes()) {
            Framing::Chunked(Chunked::start())
        } else {
            Framing::UntilClose
        });
    }
    let mut lengths = headers
        .get_all(CONTENT_LENGTH)
        .iter()
        .map(|value| parse_content_length(value.as_bytes()));
    let Some(first) = lengths.next() else {
        return Ok(Framing::UntilClose);
    };
    let length =
        first.ok_or_else(|| HeadError("a content-length that is not a number".to_owned()))?;
    if lengths.any(|other| other != Some(length)) {
        return Err(HeadError("different content-length values".to_owned()));
    }
    Ok(if length == 0 {
        Framing::Done
    } else {
        Framing::Length(length)
    })
}

fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::Request;

    #[test]
    fn a_request_head_names_the_path_the_host_its_fields_and_its_length() {
        let (mut parts, ()) = Request::post("https://openrouter.ai/api/v1/chat?x=1")
            .header("authorization", "Bearer k")
            .body(())
            .unwrap()
            .into_parts();
        let host = HeaderValue::from_static("openrouter.ai");
        assert_eq!(
            encode_request(&parts, &host, 2),
            b"POST /api/v1/chat?x=1 HTTP/1.1\r\nhost: openrouter.ai\r\nauthorization: Bearer k\r\ncontent-length: 2\r\n\r\n"
        );
        parts.method = Method::GET;
        parts.headers.clear();
        assert_eq!(
            encode_request(&parts, &host, 0),
            b"GET /api/v1/chat?x=1 HTTP/1.1\r\nhost: openrouter.ai\r\n\r\n"
        );
    }

    fn parse(wire: &str, method: &Method) -> Result<Option<(Head, usize)>, HeadError> {
        parse_response(wire.as_bytes(), method)
    }

    #[test]
    fn answer_heads_say_how_their_body_ends_and_whether_the_connection_stays() {
        let (head, length) = parse(
            "HTTP/1.1 200 OK\r\ncontent-length: 12\r\nx-a: b\r\n\r\nbody",
            &Method::POST,
        )
        .unwrap()
        .unwrap();
        assert_eq!((head.parts.status, length), (StatusCode::OK, 47));
        assert_eq!(head.parts.headers["x-a"], "b");
        assert_eq!((head.framing, head.keep_alive), (Framing::Length(12), true));

        let framing_of = |wire: &str, method: &Method| {
            let (head, _) = parse(wire, method).unwrap().unwrap();
            (head.framing, head.keep_alive)
        };
        let chunked = Framing::Chunked(Chunked::start());
        for (wire, method, expected) in [
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                Method::POST,
                (chunked, true),
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
                Method::POST,
                (Framing::UntilClose, false),
            ),
            (
                "HTTP/1.1 200 OK\r\n\r\n",
                Method::POST,
                (Framing::UntilClose, false),
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n",
                Method::HEAD,
                (Framing::Done, true),
            ),
            (
                "HTTP/1.1 204 No Content\r\n\r\n",
                Method::POST,
                (Framing::Done, true),
            ),
            (
                "HTTP/1.1 100 Continue\r\n\r\n",
                Method::POST,
                (Framing::Done, true),
            ),
            (
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
                Method::POST,
                (Framing::Done, false),
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: Close\r\n\r\n",
                Method::POST,
                (Framing::Done, false),
            ),
            (
                "HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\n",
                Method::POST,
                (Framing::Length(3), false),
            ),
        ] {
            assert_eq!(framing_of(wire, &method), expected, "{wire}");
        }
    }

    #[test]
    fn incomplete_heads_wait_and_broken_ones_are_errors() {
        assert!(parse("HTTP/1.1 200 OK\r\ncontent-le", &Method::POST)
            .unwrap()
            .is_none());
        for wire in [
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +1\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 OK\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(parse(wire, &Method::POST).is_err(), "{wire}");
        }
        let many = "x-a: 1\r\n".repeat(MAX_HEADERS + 1);
        assert!(parse(&format!("HTTP/1.1 200 OK\r\n{many}\r\n"), &Method::POST).is_err());
    }
}
