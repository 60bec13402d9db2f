//! Pure classification of OpenRouter's answers: what an upstream status,
//! headers and error object mean for the key, the model and the request.
//!
//! No I/O here; unit-tested on the real bodies in `shared/OPENROUTER.md`.

use std::sync::LazyLock;
use std::time::Duration;

use hyper::header::{HeaderMap, RETRY_AFTER};
use memchr::memmem;
use serde_json::Value;

/// What an upstream answer means, and so what the proxy does next.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// A real answer: pass it on.
    Success,
    /// The request itself was refused (400, moderation 403, 404, 413, 422, ...): return it unchanged.
    Rejected,
    /// The model cannot be served (404 `No endpoints found`, 400 `is not a valid model ID`):
    /// returned unchanged, except to a model alias, which tries its next candidate.
    NoSuchModel,
    /// The key's account used its free-model quota: exhausted until `reset_ms`, else the next daily reset.
    FreeDaily { reset_ms: Option<i64> },
    /// The key's per-minute free-model limit: blocked until `reset_ms`, else 60 s.
    FreePerMinute { reset_ms: Option<i64> },
    /// 402: the account needs credits (or a transient in-flight budget, with `retry_after`).
    Credits { retry_after: Option<Duration> },
    /// 402 "requires more credits, or fewer max_tokens": this request is too large for the
    /// account's balance; smaller requests still fit, so the key is not parked.
    CreditsForRequest,
    /// 403 "Key limit exceeded": the key's own spend cap, until `reset_ms` if given.
    KeyLimit { reset_ms: Option<i64> },
    /// 401: the key was refused.
    Unauthorized,
    /// The model or its providers are busy (shared capacity, upstream provider limits): not the key's fault.
    ModelBusy { retry_after: Option<Duration> },
    /// An upstream failure (5xx, 408, 524, 529).
    Server { retry_after: Option<Duration> },
    /// The request never reached OpenRouter (connect refused, DNS, TLS handshake, connect timeout).
    Unreached,
    /// OpenRouter was reached but its answer broke off or could not be read. `nothing_generated`
    /// when the answer had already shown that no generation happened (an error status, or an
    /// event stream before its first content event).
    Broken { nothing_generated: bool },
    /// No data event (stream) or JSON byte arrived within `FIRST_TOKEN_TIMEOUT` of sending:
    /// the attempt was abandoned before anything reached the client.
    NoFirstToken,
}

impl Verdict {
    /// The error class used in logs and metrics.
    #[must_use]
    pub fn class(self) -> &'static str {
        match self {
            Verdict::Success => "success",
            Verdict::Rejected => "request",
            Verdict::NoSuchModel => "no-such-model",
            Verdict::FreeDaily { .. } => "free-daily",
            Verdict::FreePerMinute { .. } => "free-per-minute",
            Verdict::Credits { .. } | Verdict::CreditsForRequest => "credits",
            Verdict::KeyLimit { .. } => "key-limit",
            Verdict::Unauthorized => "auth",
            Verdict::ModelBusy { .. } => "provider-upstream",
            Verdict::Server { .. } => "server",
            Verdict::Unreached => "unreachable",
            Verdict::Broken { .. } => "broken",
            Verdict::NoFirstToken => "first-token",
        }
    }
}

/// Classifies an upstream answer: its HTTP status, headers, and the `error`
/// object of its body when there is one (also for errors inside a 200).
#[must_use]
pub fn classify(status: u16, headers: &HeaderMap, error: Option<&Value>) -> Verdict {
    let Some(error) = error else {
        return classify_status(status, headers, &Value::Null);
    };
    // Inside a 200 the error's own code is the real status; a non-numeric code is a server error.
    let code = if (200..300).contains(&status) {
        error_code(error).unwrap_or(500)
    } else {
        status
    };
    classify_status(code, headers, error)
}

fn classify_status(code: u16, headers: &HeaderMap, error: &Value) -> Verdict {
    let message = error["message"].as_str().unwrap_or("");
    let metadata = &error["metadata"];
    let limit_source = metadata["limit_source"].as_str().unwrap_or("");
    let retry_after = retry_after(headers, error);
    match code {
        200..=299 => Verdict::Success,
        429 if message.contains("free-models-per-day")
            || limit_source == "openrouter_free_tier_daily" =>
        {
            Verdict::FreeDaily {
                reset_ms: rate_limit_reset(headers, metadata),
            }
        }
        429 if message.contains("free-models-per-min") => Verdict::FreePerMinute {
            reset_ms: rate_limit_reset(headers, metadata),
        },
        // Shared capacity, upstream provider limits, capacity with retry hints, and unexplained 429s:
        // the model is busy, and another key would not help.
        429 => Verdict::ModelBusy { retry_after },
        503 if retry_after.is_some()
            || error["availability"]["retryable"].as_bool() == Some(true) =>
        {
            Verdict::ModelBusy { retry_after }
        }
        402 if message.contains("fewer max_tokens") || message.contains("can only afford") => {
            Verdict::CreditsForRequest
        }
        402 => Verdict::Credits { retry_after },
        403 if message.contains("Key limit exceeded") => Verdict::KeyLimit {
            reset_ms: rate_limit_reset(headers, metadata),
        },
        401 => Verdict::Unauthorized,
        408 | 500..=599 => Verdict::Server { retry_after },
        404 if message.contains("No endpoints found") => Verdict::NoSuchModel,
        400 if message.contains("is not a valid model ID") => Verdict::NoSuchModel,
        _ => Verdict::Rejected,
    }
}

/// `error.code` as a status: a number, or a numeric string.
fn error_code(error: &Value) -> Option<u16> {
    match &error["code"] {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `X-RateLimit-Reset` from the response headers or `error.metadata.headers`, as epoch ms.
#[must_use]
pub fn rate_limit_reset(headers: &HeaderMap, metadata: &Value) -> Option<i64> {
    let from_header = headers
        .get("x-ratelimit-reset")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let raw = from_header.or_else(|| metadata_header(metadata, "x-ratelimit-reset"))?;
    let value: i64 = raw.trim().parse().ok()?;
    // OpenRouter sends epoch milliseconds; a 10-digit value is seconds from some other gateway.
    Some(if value < 100_000_000_000 {
        value * 1000
    } else {
        value
    })
}

/// How long upstream asked us to wait: `Retry-After` (header or metadata),
/// `metadata.retry_after_seconds`, or `availability.retry_after`.
#[must_use]
pub fn retry_after(headers: &HeaderMap, error: &Value) -> Option<Duration> {
    let header = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok());
    let metadata = &error["metadata"];
    let seconds = header
        .or_else(|| metadata_header(metadata, "retry-after").and_then(|v| v.trim().parse().ok()))
        .or_else(|| metadata["retry_after_seconds"].as_f64())
        .or_else(|| error["availability"]["retry_after"].as_f64())?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(86_400.0)))
}

/// A header inside `error.metadata.headers`, matched case-insensitively.
fn metadata_header(metadata: &Value, name: &str) -> Option<String> {
    let (_, value) = metadata["headers"]
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))?;
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The `error` object of a JSON body, if the body is a JSON object with one.
#[must_use]
pub fn error_object(body: &[u8]) -> Option<Value> {
    error_and_user(body).0
}

/// The bytes every error object's key is, searched for in every answer and streamed event;
/// the searcher is built once (building it per call cost as much as searching an answer).
static ERROR_KEY: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"error\""));

/// The `error` object of a JSON body and the top-level `user_id` OpenRouter adds to error
/// answers (which names the account behind the key), read in one pass.
///
/// A body without the bytes `"error"` has no error object and is not parsed: every answer
/// and every streamed event is asked, and parsing a whole answer cost more user CPU than
/// anything else on a request's path (4,700 of 59,000 instructions for a 260-byte answer,
/// callgrind). OpenRouter writes its keys plainly; a key spelled with `\u` escapes would
/// be missed.
#[must_use]
pub fn error_and_user(body: &[u8]) -> (Option<Value>, Option<String>) {
    #[derive(serde::Deserialize)]
    struct Envelope {
        error: Option<Value>,
        user_id: Option<String>,
    }
    if ERROR_KEY.find(body).is_none() {
        return (None, None);
    }
    match serde_json::from_slice::<Envelope>(body) {
        Ok(envelope) => (
            envelope.error.filter(Value::is_object),
            envelope.user_id.filter(|u| !u.is_empty() && u.len() <= 128),
        ),
        Err(_) => (None, None),
    }
}

#[cfg(test)]
mod tests;
