//! The proxy's own errors, and how each becomes an OpenRouter-shaped response
//! (`{"error":{"code":N,"message":"..."}}`) that client SDKs already parse.

use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};

use bytes::Bytes;

/// Every way a request can fail inside the proxy.
#[derive(Debug)]
pub enum ProxyError {
    /// Missing or wrong proxy key.
    Unauthorized(&'static str),
    /// Body over `MAX_BODY_BYTES`.
    PayloadTooLarge { limit: usize },
    /// The request itself is unusable (broken body, path traversal, ...).
    BadRequest(&'static str),
    /// A method the proxy never forwards (CONNECT).
    MethodNotAllowed,
    /// A client asked for what it may not have (a model outside its allowlist, the metrics).
    Forbidden(String),
    /// A client reached one of its daily limits: 429 until the quota day ends.
    ClientLimit {
        message: String,
        limit: u64,
        reset_ms: i64,
        retry_after_secs: u64,
    },
    /// A client's per-minute or concurrency limit held the request longer than `MAX_WAIT`.
    ClientBusy {
        message: String,
        retry_after_secs: u64,
    },
    /// The client stopped sending its body for longer than `REQUEST_BODY_TIMEOUT`.
    BodyTimeout,

    /// No key can serve before the wait limit.
    NoKey {
        message: String,
        retry_after_secs: u64,
    },
    /// Upstream could not be reached (connect, DNS, TLS).
    UpstreamUnreachable,
    /// Upstream was reached but its answer broke off, and a retry could have run the request twice.
    UpstreamBroken,
    /// Upstream answered in a way the proxy cannot relay (a 101 switch).
    UpstreamProtocol(&'static str),
    /// Upstream sent no response headers in time.
    UpstreamTimeout,
    /// Upstream began a JSON answer, then sent nothing more for `STREAM_IDLE_TIMEOUT`.
    UpstreamStalled { secs: u64 },
    /// No attempt produced a first token within `FIRST_TOKEN_TIMEOUT`, and retries ran out.
    NoFirstToken,
}

impl ProxyError {
    /// The HTTP status of this error (exhaustive on purpose: a new variant needs a decision).
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ProxyError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::Forbidden(_) => StatusCode::FORBIDDEN,
            ProxyError::ClientLimit { .. } | ProxyError::ClientBusy { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            // NoFirstToken: OpenRouter's own code for a generation that took too long.
            ProxyError::BodyTimeout | ProxyError::NoFirstToken => StatusCode::REQUEST_TIMEOUT,

            ProxyError::NoKey { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::UpstreamUnreachable
            | ProxyError::UpstreamBroken
            | ProxyError::UpstreamProtocol(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout | ProxyError::UpstreamStalled { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
        }
    }

    /// The human-readable message of the error body.
    #[must_use]
    pub fn message(&self) -> String {
        match self {
            ProxyError::Unauthorized(why)
            | ProxyError::BadRequest(why)
            | ProxyError::UpstreamProtocol(why) => (*why).to_owned(),
            ProxyError::PayloadTooLarge { limit } => {
                format!("request body is larger than MAX_BODY_BYTES ({limit} bytes)")
            }
            ProxyError::MethodNotAllowed => {
                "the proxy forwards only to OpenRouter; CONNECT is not supported".to_owned()
            }
            ProxyError::BodyTimeout => {
                "the request body stopped arriving for longer than REQUEST_BODY_TIMEOUT".to_owned()
            }

            ProxyError::NoKey { message, .. }
            | ProxyError::Forbidden(message)
            | ProxyError::ClientLimit { message, .. }
            | ProxyError::ClientBusy { message, .. } => message.clone(),
            ProxyError::UpstreamUnreachable => {
                "could not reach OpenRouter (connection or TLS failure)".to_owned()
            }
            ProxyError::UpstreamBroken => "OpenRouter was reached, but its answer broke off; not retried, as the request may already have been processed".to_owned(),
            ProxyError::UpstreamTimeout => {
                "OpenRouter did not answer within UPSTREAM_TIMEOUT".to_owned()
            }
            ProxyError::UpstreamStalled { secs } => format!(
                "OpenRouter began its answer, then sent nothing for {secs} s (STREAM_IDLE_TIMEOUT); not retried, as the request may already have been processed"
            ),
            ProxyError::NoFirstToken => NO_FIRST_TOKEN.to_owned(),
        }
    }

    /// Renders the error as the response the client sees.
    #[must_use]
    pub fn into_response(self) -> Response<Bytes> {
        let status = self.status();
        let mut response = error_response(status, &self.message());
        let headers = response.headers_mut();
        match self {
            ProxyError::NoKey {
                retry_after_secs, ..
            }
            | ProxyError::ClientBusy {
                retry_after_secs, ..
            } => {
                headers.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            ProxyError::ClientLimit {
                limit,
                reset_ms,
                retry_after_secs,
                ..
            } => {
                // As OpenRouter sends them, so clients that read them already understand.
                headers.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
                headers.insert("x-ratelimit-limit", HeaderValue::from(limit));
                headers.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
                headers.insert("x-ratelimit-reset", HeaderValue::from(reset_ms));
            }
            _ => {}
        }
        response
    }
}

/// Why a request that never got a first token ended.
pub const NO_FIRST_TOKEN: &str =
    "no token arrived within FIRST_TOKEN_TIMEOUT on any attempt; the model's providers may be overloaded";

/// An OpenRouter-shaped JSON error response.
#[must_use]
pub fn error_response(status: StatusCode, message: &str) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from(error_body(status, message)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The body of an OpenRouter-shaped error: `{"error":{"code":N,"message":"..."}}`.
#[must_use]
pub fn error_body(status: StatusCode, message: &str) -> String {
    serde_json::json!({"error": {"code": status.as_u16(), "message": message}}).to_string()
}
