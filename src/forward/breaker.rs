//! The upstream circuit breaker: while OpenRouter cannot be reached at all,
//! requests fail fast instead of each backing off for `MAX_RETRY_TIME`.
//!
//! It opens after a few attempts in a row that never reached OpenRouter
//! (connect refused, DNS, TLS handshake, connect timeout). While open, a
//! request still makes its one attempt (that attempt is the probe: no timer
//! is needed) but is not retried. Any attempt that reaches OpenRouter closes it.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

/// Consecutive unreached attempts that open the breaker: a lone refused connect is
/// retried as usual, a run of them means OpenRouter (or the network) is down.
pub const OPEN_AFTER: u32 = 3;

/// Counts consecutive attempts that never reached OpenRouter.
#[derive(Default)]
pub struct Breaker {
    // Relaxed: a counter; a stale read only lets one more retry through or fails one sooner.
    unreached_in_a_row: AtomicU32,
}

impl Breaker {
    /// An attempt reached OpenRouter (whatever it answered).
    pub fn reached(&self) {
        if self.unreached_in_a_row.load(Relaxed) != 0 {
            self.unreached_in_a_row.store(0, Relaxed);
        }
    }

    /// An attempt never reached OpenRouter.
    pub fn unreached(&self) {
        self.unreached_in_a_row.fetch_add(1, Relaxed);
    }

    /// True while OpenRouter is considered unreachable: no retries after unreached attempts.
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.unreached_in_a_row.load(Relaxed) >= OPEN_AFTER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_a_run_of_unreached_attempts_and_one_success_closes_it() {
        let breaker = Breaker::default();
        for _ in 1..OPEN_AFTER {
            breaker.unreached();
            assert!(!breaker.is_open());
        }
        breaker.unreached();
        assert!(breaker.is_open());
        breaker.reached();
        assert!(!breaker.is_open());
    }
}
