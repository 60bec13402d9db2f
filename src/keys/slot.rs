//! One OpenRouter key's state: its GCRA limiter and lock-free counters.
//!
//! Every field is an atomic so selection, outcome recording and `/key_status`
//! never take a lock. Values that must change together are packed into one
//! `u64` (the day with its count; a block's end with its reason).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};

use hyper::header::HeaderValue;

use super::gcra::Gcra;
use super::probed::ProbeState;
use crate::config::{KeySpec, DEFAULT_DAILY_LIMIT};
use crate::mask::mask;

// All atomics here are independent counters or self-contained packed words:
// no other memory is published through them, so `Relaxed` is enough throughout.

/// Why a key is blocked. Daily and per-minute blocks only stop free-model requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum BlockReason {
    DailyLimit = 1,
    PerMinuteLimit = 2,
    Credits = 3,
    KeyLimit = 4,
    Unauthorized = 5,
}

impl BlockReason {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::DailyLimit,
            2 => Self::PerMinuteLimit,
            3 => Self::Credits,
            4 => Self::KeyLimit,
            5 => Self::Unauthorized,
            _ => return None,
        })
    }

    /// The name shown in `/key_status` and logs.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DailyLimit => "daily_limit",
            Self::PerMinuteLimit => "per_minute_limit",
            Self::Credits => "insufficient_credits",
            Self::KeyLimit => "key_limit_exceeded",
            Self::Unauthorized => "unauthorized",
        }
    }

    /// The reason named by [`Self::as_str`].
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        [
            Self::DailyLimit,
            Self::PerMinuteLimit,
            Self::Credits,
            Self::KeyLimit,
            Self::Unauthorized,
        ]
        .into_iter()
        .find(|r| r.as_str() == name)
    }

    /// Whether this block stops requests for paid models and other endpoints too.
    #[must_use]
    pub fn blocks_paid(self) -> bool {
        !matches!(self, Self::DailyLimit | Self::PerMinuteLimit)
    }
}

/// A block in force: until when, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub until_ms: i64,
    pub reason: BlockReason,
}

const UNTIL_MASK: u64 = (1 << 56) - 1;

fn pack_block(block: Block) -> u64 {
    ((block.reason as u64) << 56) | (block.until_ms.max(0) as u64 & UNTIL_MASK)
}

fn unpack_block(word: u64) -> Option<Block> {
    let reason = BlockReason::from_u8((word >> 56) as u8)?;
    Some(Block {
        until_ms: (word & UNTIL_MASK) as i64,
        reason,
    })
}

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
fn fingerprint(secret: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    digest.as_ref()[..16]
        .iter()
        .fold(String::with_capacity(32), |mut hex, byte| {
            use std::fmt::Write as _;
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// The date a packed usage word belongs to.
fn date_of(word: u64) -> u32 {
    (word >> 32) as u32
}

/// The count of `date` in a usage word whose date is not newer than `date`.
fn used_in(word: u64, date: u32) -> u64 {
    if date_of(word) == date {
        word & 0xFFFF_FFFF
    } else {
        0
    }
}

fn usage_word(date: u32, used: u64) -> u64 {
    (u64::from(date) << 32) | used.min(0xFFFF_FFFF)
}

/// One configured OpenRouter key.
pub struct KeySlot {
    /// `#<position> <masked key>`: the only form of it that is ever shown, unique even for
    /// short keys that all mask to `…`.
    pub id: String,
    /// A SHA-256 prefix of the key: how the state file recognises it without storing it.
    pub fingerprint: String,
    /// `Bearer <key>`, built once, marked sensitive so it is never logged by hyper.
    pub authorization: HeaderValue,
    /// Whether the daily limit came from `key:limit` (true) or the default.
    pub limit_configured: bool,
    /// Whether a probe replaced the default daily limit with the account's real one.
    limit_probed: AtomicBool,
    /// What OpenRouter's `/key` last said about this key.
    pub probe: ProbeState,
    limiter: Gcra,
    daily_limit: AtomicU32,
    /// `(yyyymmdd << 32) | free requests used that day`. The date never moves backwards.
    usage: AtomicU64,
    /// Packed [`Block`] that stops every request (401, 402, 403 key limit); 0 when never blocked.
    block: AtomicU64,
    /// Packed [`Block`] that stops free-model requests only (daily, per-minute), kept apart so
    /// neither kind of block can hide the other.
    free_block: AtomicU64,
    last_used_ms: AtomicI64,
    /// Pool-wide pick sequence of the last pick: ties go to the smallest (least recently used).
    pub(crate) last_pick: AtomicU64,
    pub totals: Totals,
}

impl KeySlot {
    /// Builds the slot of the `number`th configured key (from 1), limited to `per_minute`
    /// free-model requests (bursts of `burst`); `None` if the key cannot be an HTTP header value.
    #[must_use]
    pub fn new(spec: &KeySpec, number: usize, per_minute: u32, burst: u32) -> Option<Self> {
        let mut authorization = HeaderValue::try_from(format!("Bearer {}", spec.secret)).ok()?;
        authorization.set_sensitive(true);
        Some(KeySlot {
            id: format!("#{number} {}", mask(&spec.secret)),
            fingerprint: fingerprint(&spec.secret),
            authorization,
            limit_configured: spec.daily_limit.is_some(),
            limit_probed: AtomicBool::new(false),
            probe: ProbeState::default(),
            limiter: Gcra::new(per_minute, burst),
            daily_limit: AtomicU32::new(spec.daily_limit.unwrap_or(DEFAULT_DAILY_LIMIT)),
            usage: AtomicU64::new(0),
            block: AtomicU64::new(0),
            free_block: AtomicU64::new(0),
            last_used_ms: AtomicI64::new(0),
            last_pick: AtomicU64::new(0),
            totals: Totals::default(),
        })
    }

    /// Where the daily limit in force came from: `configured`, `probed` or `default`.
    #[must_use]
    pub fn limit_source(&self) -> &'static str {
        match (self.limit_configured, self.limit_probed.load(Relaxed)) {
            (true, _) => "configured",
            (false, true) => "probed",
            (false, false) => "default",
        }
    }

    /// Adopts the account's daily limit reported by a probe.
    pub(crate) fn set_probed_limit(&self, limit: u32) {
        self.daily_limit.store(limit.max(1), Relaxed);
        self.limit_probed.store(true, Relaxed);
    }

    /// Raises `date`'s count to `used` if it is higher (another program shares the account).
    /// A `date` older than the stored one changes nothing.
    pub(crate) fn raise_used(&self, date: u32, used: u32) {
        let _ = self.usage.fetch_update(Relaxed, Relaxed, |word| {
            (date >= date_of(word) && u64::from(used) > used_in(word, date))
                .then_some(usage_word(date, u64::from(used)))
        });
    }

    #[must_use]
    pub fn daily_limit(&self) -> u32 {
        self.daily_limit.load(Relaxed)
    }

    /// Free-model requests used on the quota day `date` (a newer stored day's count if
    /// midnight has already passed for someone else).
    #[must_use]
    pub fn used_on(&self, date: u32) -> u32 {
        let word = self.usage.load(Relaxed);
        if date_of(word) > date {
            return word as u32;
        }
        used_in(word, date) as u32
    }

    /// Takes one unit of quota if any is left, and returns the day it was charged to:
    /// `date`, or the stored day when that is newer (a pick that computed its date just
    /// before midnight counts against the new day rather than wiping it).
    pub(crate) fn reserve_daily(&self, date: u32) -> Option<u32> {
        let limit = u64::from(self.daily_limit());
        let mut charged = date;
        self.usage
            .fetch_update(Relaxed, Relaxed, |word| {
                charged = date.max(date_of(word));
                let used = used_in(word, charged);
                (used < limit).then_some(usage_word(charged, used + 1))
            })
            .ok()
            .map(|_| charged)
    }

    /// Gives back a unit that [`Self::reserve_daily`] charged to `date` and that was not used.
    pub(crate) fn release_daily(&self, date: u32) {
        let _ = self.usage.fetch_update(Relaxed, Relaxed, |word| {
            (date_of(word) == date && word as u32 > 0).then_some(word - 1)
        });
    }

    /// Marks `date`'s quota as fully used (OpenRouter said so); an older `date` changes nothing.
    pub(crate) fn exhaust_daily(&self, date: u32) {
        let limit = u64::from(self.daily_limit());
        let _ = self.usage.fetch_update(Relaxed, Relaxed, |word| {
            (date >= date_of(word)).then(|| usage_word(date, used_in(word, date).max(limit)))
        });
    }

    /// Takes a limiter slot at `now_ms`, or returns when one is free (epoch ms).
    pub(crate) fn take_slot(&self, now_ms: i64) -> Result<(), i64> {
        self.limiter.take(now_ms)
    }

    /// Gives back a limiter slot whose request never reached OpenRouter.
    pub(crate) fn give_back_slot(&self) {
        self.limiter.give_back();
    }

    /// When the limiter next admits a free-model request (epoch ms; ≤ `now_ms` means now).
    #[must_use]
    pub fn next_free_slot_ms(&self, now_ms: i64) -> i64 {
        self.limiter.next_free_ms(now_ms)
    }

    /// The block shown for the key at `now_ms`: one that stops every request, else a
    /// free-model-only one.
    #[must_use]
    pub fn block_at(&self, now_ms: i64) -> Option<Block> {
        self.paid_block_at(now_ms)
            .or_else(|| self.free_block_at(now_ms))
    }

    /// The block in force at `now_ms` that stops every request (401, 402, 403 key limit).
    #[must_use]
    pub fn paid_block_at(&self, now_ms: i64) -> Option<Block> {
        unpack_block(self.block.load(Relaxed)).filter(|b| b.until_ms > now_ms)
    }

    /// The block in force at `now_ms` that stops free-model requests only.
    #[must_use]
    pub fn free_block_at(&self, now_ms: i64) -> Option<Block> {
        unpack_block(self.free_block.load(Relaxed)).filter(|b| b.until_ms > now_ms)
    }

    fn block_word(&self, reason: BlockReason) -> &AtomicU64 {
        if reason.blocks_paid() {
            &self.block
        } else {
            &self.free_block
        }
    }

    /// Blocks the key until `block.until_ms`; a longer block of the same scope already in force is kept.
    pub(crate) fn block_until(&self, block: Block, now_ms: i64) {
        let new = pack_block(block);
        let _ = self
            .block_word(block.reason)
            .fetch_update(Relaxed, Relaxed, |word| match unpack_block(word) {
                Some(old) if old.until_ms > now_ms && old.until_ms >= block.until_ms => None,
                _ => Some(new),
            });
    }

    pub(crate) fn mark_used(&self, now_ms: i64, pick: u64) {
        self.last_used_ms.store(now_ms, Relaxed);
        self.last_pick.store(pick, Relaxed);
        self.totals.requests.fetch_add(1, Relaxed);
    }

    #[must_use]
    pub fn last_used_ms(&self) -> i64 {
        self.last_used_ms.load(Relaxed)
    }

    /// Restores what the state file remembered: `date`'s count, blocks, lifetime totals
    /// (requests, successes, rate_limited, errors, unreached; missing ones stay 0).
    pub(crate) fn restore(&self, date: u32, used: u32, blocks: &[Block], totals: &[u64]) {
        self.usage.store(usage_word(date, u64::from(used)), Relaxed);
        for block in blocks {
            self.block_word(block.reason)
                .store(pack_block(*block), Relaxed);
        }
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
