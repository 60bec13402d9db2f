//! One OpenRouter account: what OpenRouter's free-model limits belong to.
//!
//! Several keys of one account share one daily counter and limit, one
//! per-minute GCRA limiter, and the blocks OpenRouter applies to the account
//! (free-models-per-day, free-models-per-min, 402 credits). Every field is an
//! atomic or a packed word, so picks and `/key_status` never take a lock.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;

use super::block::{Block, BlockWord, Scope};
use super::gcra::Gcra;
use super::history::History;
use super::share::{count_in as used_in, date_of, packed as usage_word, Share};
use super::usage::UsageCounters;
use crate::config::DEFAULT_DAILY_LIMIT;

// All atomics here are independent counters or self-contained packed words:
// no other memory is published through them, so `Relaxed` is enough throughout.

/// One account's quota, limiter and blocks.
///
/// `repr(C)` with what every pick reads first (usage, blocks, last pick, the limiter):
/// a pick looks at the account of every key, so these share one cache line.
#[repr(C)]
pub struct Account {
    /// `(yyyymmdd << 32) | free requests used that day`. The date never moves backwards.
    usage: AtomicU64,
    /// 402 credits: every request of the account.
    pub(crate) block: BlockWord,
    /// Daily and per-minute blocks: free-model requests only.
    pub(crate) free_block: BlockWord,
    /// Pool-wide pick sequence of the account's last pick: ties go to the smallest.
    pub(crate) last_pick: AtomicU64,
    limiter: Gcra,
    daily_limit: AtomicU32,
    /// OpenRouter's own reset instant of the window the count belongs to (epoch ms); when it
    /// passes, the count starts again from 0. 0 when OpenRouter named none.
    window_ends_ms: AtomicI64,
    /// Its part in a fleet of replicas: units this replica sent, OpenRouter's floor, the
    /// share it decides alone with while Redis is away.
    pub share: Share,
    /// Tokens and cost of the requests its keys served.
    pub spent: UsageCounters,
    /// Its last hour, minute by minute.
    pub history: History,
    /// The `@name` it was configured with; `None` for a key's account of its own.
    pub name: Option<String>,
    /// The OpenRouter user id learned from its answers, once known.
    pub user_id: OnceLock<String>,
    /// True once OpenRouter's answers showed that keys configured apart are this one account.
    pub learned: AtomicBool,
    /// Whether the daily limit came from the configuration.
    pub limit_configured: bool,
    limit_probed: AtomicBool,
    /// A probe's limit differing from the configured one was logged.
    pub(crate) mismatch_logged: AtomicBool,
    /// OpenRouter grouping it with another configured account was logged.
    pub(crate) disagreement_logged: AtomicBool,
}

impl Account {
    /// An account limited to `per_minute` free-model requests (bursts of `burst`).
    #[must_use]
    pub fn new(
        name: Option<String>,
        daily_limit: Option<u32>,
        per_minute: u32,
        burst: u32,
    ) -> Self {
        Account {
            name,
            user_id: OnceLock::new(),
            learned: AtomicBool::new(false),
            limit_configured: daily_limit.is_some(),
            limit_probed: AtomicBool::new(false),
            daily_limit: AtomicU32::new(daily_limit.unwrap_or(DEFAULT_DAILY_LIMIT)),
            usage: AtomicU64::new(0),
            window_ends_ms: AtomicI64::new(0),
            share: Share::default(),
            limiter: Gcra::new(per_minute, burst),
            free_block: BlockWord::default(),
            block: BlockWord::default(),
            last_pick: AtomicU64::new(0),
            spent: UsageCounters::default(),
            history: History::default(),
            mismatch_logged: AtomicBool::new(false),
            disagreement_logged: AtomicBool::new(false),
        }
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

    #[must_use]
    pub fn daily_limit(&self) -> u32 {
        self.daily_limit.load(Relaxed)
    }

    /// The limit this replica may use on `date`: the daily limit, or while Redis is away its
    /// share of it.
    #[must_use]
    pub fn limit_on(&self, date: u32) -> u32 {
        self.share.limit_on(date, self.daily_limit())
    }

    /// The per-minute limiter.
    #[must_use]
    pub fn limiter(&self) -> &Gcra {
        &self.limiter
    }

    /// Adopts OpenRouter's reset instant another replica learned, if later than the one known.
    pub(crate) fn learn_window_end(&self, ends_ms: i64) {
        self.window_ends_ms.fetch_max(ends_ms, Relaxed);
    }

    /// Starts the count again from 0 once OpenRouter's reset instant has passed.
    pub(crate) fn roll_window(&self, date: u32, now_ms: i64) {
        let ends = self.window_ends_ms.load(Relaxed);
        if ends == 0 || now_ms < ends {
            return;
        }
        if self
            .window_ends_ms
            .compare_exchange(ends, 0, Relaxed, Relaxed)
            .is_ok()
        {
            let _ = self.usage.fetch_update(Relaxed, Relaxed, |word| {
                (date >= date_of(word)).then_some(usage_word(date, 0))
            });
            self.share.roll(date);
        }
    }

    /// Raises `date`'s count to `used` if it is higher (another program shares the account).
    /// A `date` older than the stored one changes nothing.
    pub(crate) fn raise_used(&self, date: u32, used: u32) {
        let _ = self.usage.fetch_update(Relaxed, Relaxed, |word| {
            (date >= date_of(word) && u64::from(used) > used_in(word, date))
                .then_some(usage_word(date, u64::from(used)))
        });
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
        let limit = u64::from(self.limit_on(date));
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

    /// OpenRouter said the quota is used up: `date`'s count becomes the limit (an older
    /// `date` changes nothing), until OpenRouter's own reset `window_ends_ms` if it named one.
    pub(crate) fn exhaust_daily(&self, date: u32, window_ends_ms: Option<i64>) {
        let limit = u64::from(self.daily_limit());
        let _ = self.usage.fetch_update(Relaxed, Relaxed, |word| {
            (date >= date_of(word)).then(|| usage_word(date, used_in(word, date).max(limit)))
        });
        self.share.raise_floor(date, limit as u32);
        if let Some(ends) = window_ends_ms {
            self.window_ends_ms.store(ends, Relaxed);
        }
    }

    /// Takes a limiter slot at `now_ms`, or returns when one is free (epoch ms).
    pub(crate) fn take_slot(&self, now_ms: i64) -> Result<(), i64> {
        self.limiter.take(now_ms)
    }

    /// Gives back a limiter slot whose request never reached OpenRouter.
    pub(crate) fn give_back_slot(&self) {
        self.limiter.give_back();
    }

    /// Whether the limiter admits a free-model request at `now_ms` (takes nothing).
    #[inline]
    #[must_use]
    pub fn limiter_admits(&self, now_ms: i64) -> bool {
        self.limiter.admits(now_ms)
    }

    /// When the limiter next admits a free-model request (epoch ms; ≤ `now_ms` means now).
    #[must_use]
    pub fn next_free_slot_ms(&self, now_ms: i64) -> i64 {
        self.limiter.next_free_ms(now_ms)
    }

    /// The account block that stops every request (402 credits), in force at `now_ms`.
    #[must_use]
    pub fn block_at(&self, now_ms: i64) -> Option<Block> {
        self.block.at(now_ms)
    }

    /// The account block that stops free-model requests (daily, per-minute), in force at `now_ms`.
    #[must_use]
    pub fn free_block_at(&self, now_ms: i64) -> Option<Block> {
        self.free_block.at(now_ms)
    }

    /// Blocks the account; `block.reason` must be one of the account's (see [`Scope`]).
    pub(crate) fn block_until(&self, block: Block, now_ms: i64) {
        match block.reason.scope() {
            Scope::AccountFree => self.free_block.extend(block, now_ms),
            Scope::Account | Scope::Key => self.block.extend(block, now_ms),
        }
    }

    /// Takes in what `other` counted and blocked: today's counts add up (capped at the
    /// limit), the stricter block wins, the limiter keeps the later next slot.
    pub(crate) fn absorb(&self, other: &Account, date: u32, now_ms: i64) {
        let theirs = other.used_on(date);
        let limit = self.daily_limit();
        let _ = self.usage.fetch_update(Relaxed, Relaxed, |word| {
            let sum = used_in(word, date) + u64::from(theirs);
            (date >= date_of(word)).then(|| usage_word(date, sum.min(u64::from(limit))))
        });
        for block in [other.free_block_at(now_ms), other.block_at(now_ms)]
            .into_iter()
            .flatten()
        {
            self.block_until(block, now_ms);
        }
        let ends = other.window_ends_ms.load(Relaxed);
        if ends > self.window_ends_ms.load(Relaxed) {
            self.window_ends_ms.store(ends, Relaxed);
        }
        self.limiter.absorb(&other.limiter);
        self.share.absorb(&other.share, date);
        self.spent.absorb(&other.spent, date);
        self.history.absorb(&other.history, now_ms);
    }

    /// Restores what the state file remembered: `date`'s count and this replica's part of
    /// it (never lowering them), blocks.
    pub(crate) fn restore(
        &self,
        date: u32,
        (used, mine): (u32, u32),
        blocks: &[Block],
        window_ends_ms: i64,
    ) {
        self.raise_used(date, used);
        self.share.raise_mine(date, mine);
        for block in blocks {
            match block.reason.scope() {
                Scope::AccountFree => self.free_block.restore(*block),
                Scope::Account | Scope::Key => self.block.restore(*block),
            }
        }
        if window_ends_ms > 0 {
            self.window_ends_ms.store(window_ends_ms, Relaxed);
        }
    }

    /// OpenRouter's reset instant of the current window, if it named one (epoch ms).
    #[must_use]
    pub fn window_ends_ms(&self) -> Option<i64> {
        Some(self.window_ends_ms.load(Relaxed)).filter(|ms| *ms > 0)
    }
}

#[cfg(test)]
mod tests;
