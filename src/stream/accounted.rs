//! Accounted when it ends, not when its headers arrive.

/// How a proxied response ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Its last byte was sent.
    Completed,
    /// The client left before the end.
    ClientClosed,
    /// The upstream answer broke off.
    UpstreamError,
    /// OpenRouter sent nothing for `STREAM_IDLE_TIMEOUT`.
    IdleTimeout,
    /// No attempt showed a first token within `FIRST_TOKEN_TIMEOUT`.
    FirstTokenTimeout,
}

impl Ended {
    pub const ALL: [Ended; 5] = [
        Ended::Completed,
        Ended::ClientClosed,
        Ended::UpstreamError,
        Ended::IdleTimeout,
        Ended::FirstTokenTimeout,
    ];

    /// The name used in logs and metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Ended::Completed => "completed",
            Ended::ClientClosed => "client_closed",
            Ended::UpstreamError => "upstream_error",
            Ended::IdleTimeout => "idle_timeout",
            Ended::FirstTokenTimeout => "first_token_timeout",
        }
    }
}
