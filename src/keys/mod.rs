//! The key manager: which OpenRouter key serves a request.
//!
//! Each key has a GCRA limiter (free-model requests per minute) and a daily
//! free-model quota counted in lock-free atomics. A free-model request goes to
//! the key with the largest remaining share of its daily quota whose limiter
//! admits it now; other requests go to the least recently used unblocked key.

mod calendar;
mod gcra;
pub mod probe;
mod probed;
mod slot;
pub mod state;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use calendar::{day_containing, rfc3339, Calendar, Day};
pub use gcra::Gcra;
pub use probed::{ProbeOutcome, ProbeReport, ProbeState};
pub use slot::{Block, BlockReason, KeySlot, Outcome};

use crate::config::Config;

/// The wall clock in epoch milliseconds.
#[must_use]
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What a request needs from a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Demand {
    /// A `:free` model: takes a limiter token and a unit of daily quota.
    Free,
    /// A paid model or a metadata endpoint: only needs an unblocked key.
    Other,
}

/// Why no key can serve right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shortage {
    /// Every key's limiter is spacing requests out.
    Throttled,
    /// Every key has used its free-model quota for today.
    DailyLimit,
    /// Every key is blocked after an upstream refusal.
    Blocked,
}

/// No key can serve before `until_ms`; `reason` is why the soonest one cannot serve now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unavailable {
    pub until_ms: i64,
    pub reason: Shortage,
}

/// A key picked for one attempt, and what the pick took from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    pub index: usize,
    /// The quota day a free-model pick was charged to (`None` for other requests).
    pub charged: Option<u32>,
}

/// All configured keys.
pub struct KeyPool {
    keys: Box<[KeySlot]>,
    calendar: Calendar,
    picks: AtomicU64,
}

impl KeyPool {
    /// Picks a key, waiting up to `max_wait` for a limiter or block to let one through.
    /// Keys in `exclude` are not considered (this request already learned they cannot serve it).
    pub async fn acquire(
        &self,
        demand: Demand,
        max_wait: Duration,
        exclude: &[usize],
    ) -> Result<Pick, Unavailable> {
        let deadline = now_ms().saturating_add(max_wait.as_millis() as i64);
        loop {
            let now = now_ms();
            match self.pick(demand, now, exclude) {
                Ok(pick) => return Ok(pick),
                Err(unavailable) if unavailable.until_ms <= deadline => {
                    let wait = (unavailable.until_ms - now).max(1);
                    tokio::time::sleep(Duration::from_millis(wait as u64)).await;
                }
                Err(unavailable) => return Err(unavailable),
            }
        }
    }

    /// Builds the pool from the validated configuration.
    ///
    /// # Panics
    /// If a key is not a valid header value, which configuration parsing rules out.
    #[must_use]
    pub fn from_config(config: &Config) -> Self {
        let keys = config
            .keys
            .iter()
            .enumerate()
            .map(|(index, spec)| {
                KeySlot::new(spec, index + 1, config.free_rpm, config.free_burst)
                    .expect("keys are validated as header values")
            })
            .collect();
        KeyPool {
            keys,
            calendar: Calendar::new(config.timezone.clone()),
            picks: AtomicU64::new(0),
        }
    }

    /// The keys in configuration order.
    #[must_use]
    pub fn keys(&self) -> &[KeySlot] {
        &self.keys
    }

    #[must_use]
    pub fn calendar(&self) -> &Calendar {
        &self.calendar
    }

    /// Picks the best key for `demand` at `now_ms` (never one in `exclude`), taking its
    /// limiter slot and quota unit, or says when the soonest key frees up.
    pub fn pick(
        &self,
        demand: Demand,
        now_ms: i64,
        exclude: &[usize],
    ) -> Result<Pick, Unavailable> {
        let day = self.calendar.today(now_ms);
        // Each round either claims a key or learns that its best candidate is
        // throttled or out of quota (and skips it next round), so it ends.
        for _ in 0..=self.keys.len() {
            let index = self
                .best_candidate(demand, day, now_ms, exclude)
                .ok_or_else(|| self.shortage(demand, day, now_ms, exclude))?;
            if let Some(pick) = self.claim(index, demand, day, now_ms) {
                return Ok(pick);
            }
        }
        Err(self.shortage(demand, day, now_ms, exclude))
    }

    /// Gives back what `pick` took (its quota unit and limiter slot): its attempt never
    /// reached OpenRouter, so OpenRouter counted nothing.
    pub fn give_back(&self, pick: Pick) {
        let key = &self.keys[pick.index];
        if let Some(date) = pick.charged {
            key.release_daily(date);
            key.give_back_slot();
        }
    }

    fn best_candidate(
        &self,
        demand: Demand,
        day: Day,
        now_ms: i64,
        exclude: &[usize],
    ) -> Option<usize> {
        let mut best: Option<(usize, u64, u64, u64)> = None; // (index, remaining, limit, last_pick)
        for (index, key) in self.keys.iter().enumerate() {
            if exclude.contains(&index) || Self::available_from(key, demand, day, now_ms).0 > now_ms
            {
                continue;
            }
            let limit = u64::from(key.daily_limit());
            let remaining = match demand {
                Demand::Free => limit.saturating_sub(u64::from(key.used_on(day.date))),
                Demand::Other => 0,
            };
            let last = key.last_pick.load(Relaxed);
            let better = best.is_none_or(|(_, b_rem, b_lim, b_last)| {
                // remaining/limit compared without division: rem * b_lim vs b_rem * lim.
                let (mine, theirs) = (remaining * b_lim, b_rem * limit);
                mine > theirs || (mine == theirs && last < b_last)
            });
            if better {
                best = Some((index, remaining, limit, last));
            }
        }
        best.map(|(index, ..)| index)
    }

    /// When `key` can next serve `demand` (≤ `now_ms` means now), and what holds it back.
    fn available_from(key: &KeySlot, demand: Demand, day: Day, now_ms: i64) -> (i64, Shortage) {
        let mut from = (now_ms, Shortage::Throttled);
        let free_block = key.free_block_at(now_ms).filter(|_| demand == Demand::Free);
        for block in [key.paid_block_at(now_ms), free_block]
            .into_iter()
            .flatten()
        {
            let reason = if block.reason == BlockReason::DailyLimit {
                Shortage::DailyLimit
            } else {
                Shortage::Blocked
            };
            if block.until_ms > from.0 {
                from = (block.until_ms, reason);
            }
        }
        // A key refused by its last probe, or out of credit for paid use, waits for the next probe.
        let next_probe = key.probe.next_at_ms.load(Relaxed);
        if (key.probe.invalid() || (demand == Demand::Other && key.probe.no_credit()))
            && next_probe > from.0
        {
            from = (next_probe, Shortage::Blocked);
        }
        if demand == Demand::Free {
            if key.used_on(day.date) >= key.daily_limit() && day.end_ms > from.0 {
                from = (day.end_ms, Shortage::DailyLimit);
            }
            let next_slot = key.next_free_slot_ms(now_ms);
            if next_slot > from.0 {
                from = (next_slot, Shortage::Throttled);
            }
        }
        from
    }

    fn claim(&self, index: usize, demand: Demand, day: Day, now_ms: i64) -> Option<Pick> {
        let key = &self.keys[index];
        let mut charged = None;
        if demand == Demand::Free {
            let date = key.reserve_daily(day.date)?;
            if key.take_slot(now_ms).is_err() {
                key.release_daily(date);
                return None;
            }
            charged = Some(date);
        }
        key.mark_used(now_ms, self.picks.fetch_add(1, Relaxed) + 1);
        Some(Pick { index, charged })
    }

    fn shortage(&self, demand: Demand, day: Day, now_ms: i64, exclude: &[usize]) -> Unavailable {
        self.keys
            .iter()
            .enumerate()
            .filter(|(index, _)| !exclude.contains(index))
            .map(|(_, key)| Self::available_from(key, demand, day, now_ms))
            .min_by_key(|(until, _)| *until)
            .map_or(
                Unavailable {
                    until_ms: day.end_ms,
                    reason: Shortage::Blocked,
                },
                |(until_ms, reason)| Unavailable {
                    until_ms: until_ms.max(now_ms),
                    reason,
                },
            )
    }

    /// Blocks key `index` until `until_ms` for `reason` (a longer block is kept).
    pub fn block(&self, index: usize, until_ms: i64, reason: BlockReason, now_ms: i64) {
        self.keys[index].block_until(Block { until_ms, reason }, now_ms);
    }

    /// OpenRouter said the key's free-model quota is gone: mark it used up and
    /// block free-model requests until `until_ms`, or the next daily reset.
    pub fn exhaust_daily(&self, index: usize, until_ms: Option<i64>, now_ms: i64) -> i64 {
        let day = self.calendar.today(now_ms);
        let until = until_ms.filter(|t| *t > now_ms).unwrap_or(day.end_ms);
        self.keys[index].exhaust_daily(day.date);
        self.block(index, until, BlockReason::DailyLimit, now_ms);
        until
    }

    /// Restores a key's remembered state (see `state.rs`).
    pub fn restore(&self, index: usize, date: u32, used: u32, blocks: &[Block], totals: &[u64]) {
        self.keys[index].restore(date, used, blocks, totals);
    }

    /// Applies what OpenRouter's `/key` said about key `index`; `next_at_ms` is when it is asked again.
    pub fn apply_probe(&self, index: usize, outcome: &ProbeOutcome, now_ms: i64, next_at_ms: i64) {
        let key = &self.keys[index];
        key.probe.record(outcome, now_ms, next_at_ms);
        let ProbeOutcome::Report(ProbeReport {
            free_daily: Some((limit, used, _)),
            ..
        }) = outcome
        else {
            return;
        };
        if key.limit_configured {
            if *limit != key.daily_limit() && !key.probe.mismatch_logged.swap(true, Relaxed) {
                log::warn!(
                    "key {} is configured with a daily limit of {} but OpenRouter reports {limit}; keeping the configured one",
                    key.id,
                    key.daily_limit()
                );
            }
        } else {
            key.set_probed_limit(*limit);
        }
        key.raise_used(self.calendar.today(now_ms).date, *used);
    }

    /// Counts how an attempt with key `index` ended.
    pub fn record(&self, index: usize, outcome: Outcome) {
        self.keys[index].record(outcome);
    }

    /// The state `/key_status` shows for key `index` at `now_ms`.
    #[must_use]
    pub fn state_of(&self, index: usize, now_ms: i64) -> &'static str {
        let key = &self.keys[index];
        let day = self.calendar.today(now_ms);
        if key.probe.invalid() {
            return "invalid";
        }
        match key.block_at(now_ms) {
            Some(b) if b.reason == BlockReason::DailyLimit => "daily_limit_reached",
            Some(_) => "blocked",
            None if key.used_on(day.date) >= key.daily_limit() => "daily_limit_reached",
            None if key.next_free_slot_ms(now_ms) > now_ms => "throttled",
            None => "active",
        }
    }
}

#[cfg(test)]
mod tests;
