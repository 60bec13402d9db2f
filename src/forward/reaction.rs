//! What the proxy does about each classified answer: which key or quota it
//! blocks, what it gives back, and whether and when it retries.
//!
//! Pure (no I/O, "now" passed in) and beside the classification it reacts to,
//! so the whole refusal table is unit-tested; the attempt loop only carries it out.

use std::time::Duration;

use crate::forward::outcome::Verdict;
use crate::keys::{BlockReason, Outcome};

/// How long a key is parked after a 401 (not forever: OpenRouter has 401'd everyone during incidents).
const UNAUTHORIZED_BLOCK_MS: i64 = 5 * 60_000;
const PER_MINUTE_BLOCK_MS: i64 = 60_000;
const CREDITS_BLOCK_MS: i64 = 5 * 60_000;
const KEY_LIMIT_BLOCK_MS: i64 = 60 * 60_000;

/// Whether and when to try again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    No,
    /// At once, on another key.
    Now,
    /// After what OpenRouter asked for.
    After(Duration),
    /// After the exponential backoff.
    Backoff,
    /// After the backoff, but only for a request that cannot do anything twice (GET, HEAD, OPTIONS).
    BackoffIfIdempotent,
    /// After the backoff, unless OpenRouter has been unreachable for several attempts in a row.
    BackoffUnlessDown,
}

/// The reaction to one failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reaction {
    /// How the attempt counts in the key's totals.
    pub outcome: Outcome,
    /// Block the key until this instant (epoch ms), for this reason.
    pub block: Option<(i64, BlockReason)>,
    /// OpenRouter said the free-model quota is used up, until this reset if it gave one.
    pub exhaust_daily: Option<Option<i64>>,
    /// The attempt never reached OpenRouter: give back its quota unit and limiter slot.
    pub give_back: bool,
    /// Do not use this key again for this request (only).
    pub exclude: bool,
    pub retry: Retry,
}

impl Reaction {
    fn new(outcome: Outcome, retry: Retry) -> Self {
        Reaction {
            outcome,
            block: None,
            exhaust_daily: None,
            give_back: false,
            exclude: false,
            retry,
        }
    }

    fn blocking(until_ms: i64, reason: BlockReason) -> Self {
        Reaction {
            block: Some((until_ms, reason)),
            ..Reaction::new(Outcome::Error, Retry::Now)
        }
    }
}

/// What to do after an attempt classified as `verdict` at `now_ms`.
#[must_use]
pub fn reaction(verdict: Verdict, now_ms: i64) -> Reaction {
    let later = |ms: i64| now_ms.saturating_add(ms);
    match verdict {
        Verdict::Success | Verdict::Rejected | Verdict::NoSuchModel => {
            Reaction::new(Outcome::Error, Retry::No)
        }
        Verdict::FreeDaily { reset_ms } => Reaction {
            exhaust_daily: Some(reset_ms),
            ..Reaction::new(Outcome::RateLimited, Retry::Now)
        },
        Verdict::FreePerMinute { reset_ms } => Reaction {
            outcome: Outcome::RateLimited,
            ..Reaction::blocking(
                reset_ms.unwrap_or(later(PER_MINUTE_BLOCK_MS)),
                BlockReason::PerMinuteLimit,
            )
        },
        Verdict::Credits { retry_after } => {
            let park = retry_after.map_or(CREDITS_BLOCK_MS, |d| d.as_millis() as i64);
            Reaction::blocking(later(park), BlockReason::Credits)
        }
        Verdict::CreditsForRequest => Reaction {
            exclude: true,
            ..Reaction::new(Outcome::Error, Retry::Now)
        },
        Verdict::KeyLimit { reset_ms } => Reaction::blocking(
            reset_ms.unwrap_or(later(KEY_LIMIT_BLOCK_MS)),
            BlockReason::KeyLimit,
        ),
        Verdict::Unauthorized => {
            Reaction::blocking(later(UNAUTHORIZED_BLOCK_MS), BlockReason::Unauthorized)
        }
        Verdict::ModelBusy { retry_after } => Reaction::new(
            Outcome::RateLimited,
            retry_after.map_or(Retry::Backoff, Retry::After),
        ),
        Verdict::Server { retry_after } => Reaction::new(
            Outcome::Error,
            retry_after.map_or(Retry::Backoff, Retry::After),
        ),
        Verdict::Unreached => Reaction {
            give_back: true,
            ..Reaction::new(Outcome::Unreached, Retry::BackoffUnlessDown)
        },
        // OpenRouter counted the attempt (it had started generating, or waiting for a provider):
        // its quota unit stays used; another key (or provider) may answer sooner.
        Verdict::NoFirstToken => Reaction::new(Outcome::Error, Retry::Now),
        Verdict::Broken { nothing_generated } => Reaction::new(
            Outcome::Error,
            if nothing_generated {
                Retry::Backoff
            } else {
                Retry::BackoffIfIdempotent
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_521_600_000;

    #[test]
    fn key_refusals_block_the_key_and_retry_at_once_on_another() {
        let cases = [
            (
                Verdict::Unauthorized,
                NOW + UNAUTHORIZED_BLOCK_MS,
                BlockReason::Unauthorized,
            ),
            (
                Verdict::Credits { retry_after: None },
                NOW + CREDITS_BLOCK_MS,
                BlockReason::Credits,
            ),
            (
                Verdict::Credits {
                    retry_after: Some(Duration::from_secs(3)),
                },
                NOW + 3_000,
                BlockReason::Credits,
            ),
            (
                Verdict::KeyLimit { reset_ms: None },
                NOW + KEY_LIMIT_BLOCK_MS,
                BlockReason::KeyLimit,
            ),
            (
                Verdict::FreePerMinute {
                    reset_ms: Some(NOW + 7_000),
                },
                NOW + 7_000,
                BlockReason::PerMinuteLimit,
            ),
        ];
        for (verdict, until, reason) in cases {
            let r = reaction(verdict, NOW);
            assert_eq!(r.block, Some((until, reason)), "{verdict:?}");
            assert_eq!(r.retry, Retry::Now, "{verdict:?}");
            assert!(!r.give_back && !r.exclude, "{verdict:?}");
        }
    }

    #[test]
    fn a_daily_limit_exhausts_the_quota_until_openrouter_s_reset() {
        let r = reaction(
            Verdict::FreeDaily {
                reset_ms: Some(NOW + 5_000),
            },
            NOW,
        );
        assert_eq!(r.exhaust_daily, Some(Some(NOW + 5_000)));
        assert_eq!(
            (r.outcome, r.retry, r.block),
            (Outcome::RateLimited, Retry::Now, None)
        );
    }

    #[test]
    fn a_request_too_large_for_the_balance_excludes_the_key_for_this_request_only() {
        let r = reaction(Verdict::CreditsForRequest, NOW);
        assert_eq!((r.exclude, r.block, r.retry), (true, None, Retry::Now));
    }

    #[test]
    fn an_attempt_that_never_reached_openrouter_gives_its_quota_back() {
        let r = reaction(Verdict::Unreached, NOW);
        assert!(r.give_back);
        assert_eq!(
            (r.outcome, r.retry),
            (Outcome::Unreached, Retry::BackoffUnlessDown)
        );
    }

    #[test]
    fn a_broken_answer_is_retried_only_when_nothing_can_have_been_generated() {
        let sent = reaction(
            Verdict::Broken {
                nothing_generated: false,
            },
            NOW,
        );
        assert_eq!(sent.retry, Retry::BackoffIfIdempotent);
        assert!(!sent.give_back);
        let before_content = reaction(
            Verdict::Broken {
                nothing_generated: true,
            },
            NOW,
        );
        assert_eq!(before_content.retry, Retry::Backoff);
    }

    #[test]
    fn busy_models_and_server_errors_wait_as_asked_and_answers_end_the_journey() {
        let asked = Some(Duration::from_secs(4));
        assert_eq!(
            reaction(Verdict::ModelBusy { retry_after: asked }, NOW).retry,
            Retry::After(Duration::from_secs(4))
        );
        assert_eq!(
            reaction(Verdict::Server { retry_after: None }, NOW).retry,
            Retry::Backoff
        );
        assert_eq!(reaction(Verdict::Rejected, NOW).retry, Retry::No);
    }
}
