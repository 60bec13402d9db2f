//! Server-sent-event boundary scanning for the pre-content inspection.
//!
//! Before the first content event of a stream, the proxy looks at each event:
//! comments are keep-alives, a `data:` event with an `error` object may be
//! retried, anything else is content (after which nothing is parsed again).

use serde_json::Value;

use crate::forward::outcome::error_object;

/// What one complete event is.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// Only comment lines (`: OPENROUTER PROCESSING`) or nothing at all.
    Comment,
    /// An error reported inside the stream: its `error` object.
    Error(Value),
    /// Anything else: a chunk, `[DONE]`, a named event.
    Content,
}

/// The length of the first complete event in `buf` (through its blank line), if there is one.
#[must_use]
pub fn event_len(buf: &[u8]) -> Option<usize> {
    event_len_from(buf, 0)
}

/// [`event_len`], looking for the blank line only from `from` on: the caller knows the
/// bytes before it hold none (an event boundary spans at most 4 bytes, so `from` is 3 bytes
/// before the end of what was scanned last time). Keeps the scan of a long line that
/// arrives in pieces linear.
#[must_use]
pub fn event_len_from(buf: &[u8], from: usize) -> Option<usize> {
    let mut start = from.min(buf.len());
    while let Some(offset) = buf[start..].iter().position(|&b| b == b'\n' || b == b'\r') {
        let i = start + offset;
        let after = line_break_len(&buf[i..])?;
        let next = i + after;
        match line_break_len(&buf[next..]) {
            Some(blank) => return Some(next + blank),
            None if next < buf.len() => start = next,
            None => return None,
        }
    }
    None
}

/// Length of the line break at the start of `buf` (`\r\n`, `\n` or `\r`); `None` when
/// there is none, or when a lone `\r` ends the buffer and a `\n` may still follow.
fn line_break_len(buf: &[u8]) -> Option<usize> {
    match buf {
        [b'\r', b'\n', ..] => Some(2),
        [b'\r'] => None,
        [b'\r' | b'\n', ..] => Some(1),
        _ => None,
    }
}

/// Classifies one complete event.
#[must_use]
pub fn classify_event(event: &[u8]) -> Event {
    let mut data: Option<&[u8]> = None;
    let mut joined: Vec<u8> = Vec::new();
    let mut other_fields = false;
    for line in event
        .split(|&b| b == b'\n' || b == b'\r')
        .filter(|l| !l.is_empty())
    {
        if line[0] == b':' {
            continue;
        }
        let Some(value) = line.strip_prefix(b"data:") else {
            other_fields = true;
            continue;
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        // Multi-line data is rare: join only then (pre-content only, so the copy is bounded).
        match data {
            None => data = Some(value),
            Some(first) => {
                if joined.is_empty() {
                    joined.extend_from_slice(first);
                }
                joined.push(b'\n');
                joined.extend_from_slice(value);
            }
        }
    }
    let payload = if joined.is_empty() {
        data
    } else {
        Some(joined.as_slice())
    };
    match payload {
        None if !other_fields => Event::Comment,
        Some(p) => error_object(p).map_or(Event::Content, Event::Error),
        None => Event::Content,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_end_at_a_blank_line_in_any_line_ending() {
        assert_eq!(event_len(b": OPENROUTER PROCESSING\n\ndata: x"), Some(25));
        assert_eq!(event_len(b"data: x\r\n\r\nrest"), Some(11));
        assert_eq!(event_len(b"data: x\r\rrest"), Some(9));
        assert_eq!(event_len(b"data: x\ndata: y\n\n"), Some(17));
        assert_eq!(event_len(b"data: x\n"), None);
        assert_eq!(event_len(b"data: x\r\n\r"), None);
        assert_eq!(event_len(b"data: x"), None);
        assert_eq!(event_len(b""), None);
    }

    #[test]
    fn a_scan_resumed_three_bytes_before_where_it_stopped_finds_the_same_boundary() {
        for text in [
            &b"data: x\r\n\r\nrest"[..],
            b"data: x\n\ndata: y",
            b"data: x\r\rrest",
            b": c\ndata: long line\r\n\r\n",
            b"data: x\ndata: y\n\n",
        ] {
            let whole = event_len(text);
            for cut in 0..=text.len() {
                if event_len(&text[..cut]).is_none() {
                    assert_eq!(
                        event_len_from(text, cut.saturating_sub(3)),
                        whole,
                        "{:?} cut at {cut}",
                        String::from_utf8_lossy(text)
                    );
                }
            }
        }
    }

    #[test]
    fn comments_content_and_errors_are_told_apart() {
        assert_eq!(
            classify_event(b": OPENROUTER PROCESSING\n\n"),
            Event::Comment
        );
        assert_eq!(classify_event(b"data: [DONE]\n\n"), Event::Content);
        assert_eq!(
            classify_event(b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n"),
            Event::Content
        );
        assert_eq!(classify_event(b"event: ping\n\n"), Event::Content);
        let old = classify_event(
            b"data: {\"error\":{\"message\":\"Rate limit exceeded\",\"code\":429}}\n\n",
        );
        assert!(matches!(old, Event::Error(e) if e["code"] == 429));
        let new = b"data: {\"id\":\"gen-abc123\",\"error\":{\"code\":429,\"message\":\"Rate limit exceeded\"},\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"},\"finish_reason\":\"error\"}]}\r\n\r\n";
        assert!(matches!(classify_event(new), Event::Error(_)));
        // Content that merely mentions "error" is content.
        assert_eq!(
            classify_event(
                b"data: {\"choices\":[{\"delta\":{\"content\":\"\\\"error\\\"\"}}]}\n\n"
            ),
            Event::Content
        );
        assert!(matches!(
            classify_event(b"data: {\"error\":\ndata: {\"code\":500}}\n\n"),
            Event::Error(_)
        ));
    }
}
