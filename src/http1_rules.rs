//! The HTTP/1.1 message rules both sides of the proxy apply as hyper does: the agents'
//! first request head (`server::first_head`) and OpenRouter's answers read by the own
//! upstream client (`forward::pool`).

/// The largest head (start line and fields) read from either side.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// hyper's default limit on the number of a head's fields.
pub const MAX_HEADERS: usize = 100;

/// A `Content-Length` value: digits only, none of a sign or spaces hyper refuses too.
#[must_use]
pub fn parse_content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value)
        .ok()?
        .parse::<u64>()
        .ok()
        .filter(|&n| n <= u64::MAX - 2)
}

/// As hyper reads a `Transfer-Encoding` line: only a visible-ASCII value can say chunked,
/// by its last coding.
#[must_use]
pub fn last_coding_is_chunked(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
        && value
            .rsplit(|&b| b == b',')
            .next()
            .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}
