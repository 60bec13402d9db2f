//! Why an upstream request failed: before anything was sent (a connect error: refused,
//! DNS, TLS handshake, connect timeout, a connection closed before the request was written)
//! or after (the answer may have been generated).

use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// Any error that can cross threads: an upstream connection's causes and body errors.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// An upstream request's failure, with the causes it chains for
/// [`unreachable_reason`](crate::forward::upstream::unreachable_reason).
///
/// Cloneable: the requests that waited for a worker's HTTP/2 connection all fail with
/// the error that opening it met.
#[derive(Clone, Debug)]
pub struct UpstreamError {
    connect: bool,
    cause: Arc<dyn Error + Send + Sync>,
}

impl UpstreamError {
    /// The request never left: no answer can have been generated.
    pub(super) fn connect(cause: impl Into<BoxError>) -> UpstreamError {
        UpstreamError {
            connect: true,
            cause: Arc::from(cause.into()),
        }
    }

    /// The connection failed after the request was written, or while its answer came.
    pub(super) fn sent(cause: BoxError) -> UpstreamError {
        UpstreamError {
            connect: false,
            cause: Arc::from(cause),
        }
    }

    /// True when the request never reached OpenRouter.
    #[must_use]
    pub fn is_connect(&self) -> bool {
        self.connect
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.connect {
            "could not send the request"
        } else {
            "the request was sent"
        })
    }
}

impl Error for UpstreamError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.cause)
    }
}
