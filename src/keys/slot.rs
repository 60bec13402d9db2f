//! One OpenRouter key: what belongs to the key alone (its 401 and key-limit
//! blocks, last use, lifetime totals, its probe) and which account it is in.
//! Quota and the per-minute limiter belong to the account (`account.rs`).
//!
//! Every field is an atomic so selection, outcome recording and `/key_status`
//! never take a lock.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;

use hyper::header::HeaderValue;

use super::block::{Block, BlockWord};
use super::probed::ProbeState;
use super::usage::UsageCounters;
use crate::config::KeySpec;
use crate::mask::mask;

// All atomics here are independent counters or self-contained packed words:
// no other memory is published through them, so `Relaxed` is enough throughout.

/// Lifetime totals shown in `/key_status`.
#[derive(Default)]
pub struct Totals {
    pub requests: AtomicU64,
    pub successes: AtomicU64,
    pub rate_limited: AtomicU64,
    pub errors: AtomicU64,
    /// Attempts that never reached OpenRouter (connect, DNS or TLS failure): they cost no quota.
    pub unreached: AtomicU64,
}

impl Totals {
    fn counters(&self) -> [&AtomicU64; 5] {
        [
            &self.requests,
            &self.successes,
            &self.rate_limited,
            &self.errors,
            &self.unreached,
        ]
    }

    /// requests, successes, rate_limited, errors, unreached.
    #[must_use]
    pub fn values(&self) -> [u64; 5] {
        self.counters().map(|c| c.load(Relaxed))
    }

    /// Moves each counter from what it was (`read`) to the fleet's figure (`fleet`), keeping
    /// whatever was counted in between.
    pub(crate) fn adjust(&self, read: &[u64; 5], fleet: &[u64; 5]) {
        for ((counter, read), fleet) in self.counters().into_iter().zip(read).zip(fleet) {
            counter.fetch_add(fleet.wrapping_sub(*read), Relaxed);
        }
    }
}

/// How one attempt with a key ended, for its lifetime totals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    RateLimited,
    Error,
    /// The attempt never reached OpenRouter.
    Unreached,
}

/// The first 16 bytes of the key's SHA-256, in hex.
pub(crate) fn fingerprint(secret: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    digest.as_ref()[..16]
        .iter()
        .fold(String::with_capacity(32), |mut hex, byte| {
            use std::fmt::Write as _;
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// Hex digits of the fingerprint a key's id shows at least: 16 bits, unique in a list of
/// a few keys, and no more of the SHA-256 than a glance needs.
const SHORT_ID_DIGITS: usize = 4;

/// Each fingerprint's shortest prefix of at least [`SHORT_ID_DIGITS`] that no other one in
/// the list starts with: a key keeps its id wherever it stands in `OPENROUTER_KEYS` and
/// whatever keys a reload adds or removes (unless one shares its first digits).
pub(crate) fn short_ids(fingerprints: &[String]) -> Vec<&str> {
    fingerprints
        .iter()
        .enumerate()
        .map(|(index, own)| {
            let shared = fingerprints
                .iter()
                .enumerate()
                .filter(|&(other, _)| other != index)
                .map(|(_, theirs)| {
                    own.bytes()
                        .zip(theirs.bytes())
                        .take_while(|(a, b)| a == b)
                        .count()
                })
                .max()
                .unwrap_or(0);
            &own[..(shared + 1).clamp(SHORT_ID_DIGITS, own.len())]
        })
        .collect()
}

/// One configured OpenRouter key: what belongs to the key alone.
///
/// `repr(C)` with the fields every pick reads first (block, account, last pick, then the
/// probe's flags): a pick scans every key, and keeping those in one cache line per key
/// is what keeps a 100-key pick in L1.
#[repr(C)]
pub struct KeySlot {
    /// 401 and 403 key-limit blocks: every request through this key.
    pub(crate) block: BlockWord,
    /// The index of its account in the pool; changes only when accounts merge.
    pub(crate) account: AtomicUsize,
    /// Pool-wide pick sequence of the last pick: ties go to the smallest (least recently used).
    pub(crate) last_pick: AtomicU64,
    /// What OpenRouter's `/key` last said about this key.
    pub probe: ProbeState,
    /// `#<short fingerprint> <masked key>` (`#3f9a sk-or-v1-ab…7f3c`): the only form of it
    /// that is ever shown; unique even for short keys that all mask to `…`, and the same
    /// across restarts and reloads, so metric series do not jump.
    pub id: String,
    /// A SHA-256 prefix of the key: how the state file recognises it without storing it.
    pub fingerprint: String,
    /// `Bearer <key>`, built once, marked sensitive so it is never logged by hyper.
    pub authorization: HeaderValue,
    /// The OpenRouter user id its answers carried, once seen.
    pub user_id: OnceLock<String>,
    last_used_ms: AtomicI64,
    pub totals: Totals,
    /// Tokens and cost of the requests it served.
    pub spent: UsageCounters,
}

impl KeySlot {
    /// Builds the slot of a key with its fingerprint and short id (see [`short_ids`]), in
    /// account `account`; `None` if the key cannot be an HTTP header value.
    #[must_use]
    pub fn new(
        spec: &KeySpec,
        fingerprint: String,
        short_id: &str,
        account: usize,
    ) -> Option<Self> {
        let mut authorization = HeaderValue::try_from(format!("Bearer {}", spec.secret)).ok()?;
        authorization.set_sensitive(true);
        Some(KeySlot {
            id: format!("#{short_id} {}", mask(&spec.secret)),
            fingerprint,
            authorization,
            probe: ProbeState::default(),
            account: AtomicUsize::new(account),
            user_id: OnceLock::new(),
            block: BlockWord::default(),
            last_used_ms: AtomicI64::new(0),
            last_pick: AtomicU64::new(0),
            totals: Totals::default(),
            spent: UsageCounters::default(),
        })
    }

    /// The index of the account this key belongs to now.
    #[must_use]
    pub fn account(&self) -> usize {
        self.account.load(Relaxed)
    }

    /// The key's own block (401, 403 key limit) in force at `now_ms`, if any.
    #[must_use]
    pub fn block_at(&self, now_ms: i64) -> Option<Block> {
        self.block.at(now_ms)
    }

    pub(crate) fn mark_used(&self, now_ms: i64, pick: u64) {
        self.last_used_ms.store(now_ms, Relaxed);
        self.last_pick.store(pick, Relaxed);
    }

    /// Counts an attempt sent upstream with this key (a pick the fleet refused is none).
    pub fn count_sent(&self) {
        self.totals.requests.fetch_add(1, Relaxed);
    }

    /// Restores when the key was last used and its place in the pick order.
    pub fn set_last_used(&self, at_ms: i64, pick: u64) {
        self.last_used_ms.store(at_ms, Relaxed);
        self.last_pick.store(pick, Relaxed);
    }

    #[must_use]
    pub fn last_used_ms(&self) -> i64 {
        self.last_used_ms.load(Relaxed)
    }

    /// Restores the lifetime totals the state file remembered (requests, successes,
    /// rate_limited, errors, unreached; missing ones stay 0). Its block is restored through
    /// the pool, which knows the block's scope.
    pub(crate) fn restore_totals(&self, totals: &[u64]) {
        for (counter, value) in self.totals.counters().into_iter().zip(totals) {
            counter.store(*value, Relaxed);
        }
    }

    pub(crate) fn record(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Success => &self.totals.successes,
            Outcome::RateLimited => &self.totals.rate_limited,
            Outcome::Error => &self.totals.errors,
            Outcome::Unreached => &self.totals.unreached,
        };
        counter.fetch_add(1, Relaxed);
    }
}

#[cfg(test)]
mod tests;
