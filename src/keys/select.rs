//! Picking a key: among accounts that are not blocked, have quota left and whose
//! limiter admits a request now, the largest remaining share of the daily quota
//! wins (ties: the least recently used account), then the least recently used
//! usable key of that account. Requests for paid models and other endpoints need
//! no quota or limiter slot: the least recently used usable key serves them.

use std::sync::atomic::Ordering::Relaxed;

use super::{
    Account, Block, BlockReason, Day, Demand, KeyPool, KeySlot, Pick, Shortage, Unavailable, Via,
};

/// A candidate's rank: remaining quota over limit (compared by cross-multiplying), then
/// the account's and the key's last pick (smaller = less recently used).
#[derive(Clone, Copy)]
struct Rank {
    index: usize,
    remaining: u64,
    limit: u64,
    account_last: u64,
    key_last: u64,
}

impl Rank {
    fn beats(&self, other: &Rank) -> bool {
        let (mine, theirs) = (self.remaining * other.limit, other.remaining * self.limit);
        mine > theirs
            || (mine == theirs
                && (self.account_last, self.key_last) < (other.account_last, other.key_last))
    }
}

impl KeyPool {
    /// Picks the best key for `demand` at `now_ms` (never one in `exclude`), taking its
    /// account's limiter slot and quota unit, or says when the soonest key frees up.
    pub fn pick(
        &self,
        demand: Demand,
        now_ms: i64,
        exclude: &[usize],
    ) -> Result<Pick, Unavailable> {
        let day = self.calendar.today(now_ms);
        // Each round either claims a key or learns that its best candidate is throttled
        // or out of quota (and skips it next round), so it ends.
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

    /// When the soonest key frees up for `demand` and why none serves now, without taking
    /// anything (for a request that gave up waiting in line).
    #[must_use]
    pub fn unavailable(&self, demand: Demand, now_ms: i64, exclude: &[usize]) -> Unavailable {
        self.shortage(demand, self.calendar.today(now_ms), now_ms, exclude)
    }

    /// Gives back what `pick` took (its quota unit and limiter slot): its attempt never
    /// reached OpenRouter, so OpenRouter counted nothing.
    pub fn give_back(&self, pick: Pick) {
        if let Some((account, date)) = pick.charged {
            let account = &self.accounts[account];
            account.release_daily(date);
            account.give_back_slot();
            if pick.via != Via::Local {
                account.share.count_mine(date, true);
            }
        }
    }

    fn best_candidate(
        &self,
        demand: Demand,
        day: Day,
        now_ms: i64,
        exclude: &[usize],
    ) -> Option<usize> {
        // Two lean loops rather than one general one: this is the per-key cost of every pick.
        match demand {
            Demand::Free => self.best_free(day, now_ms, exclude),
            Demand::Other => self.best_other(now_ms, exclude),
        }
    }

    /// The least recently used key that is not blocked (nor its account by credits).
    fn best_other(&self, now_ms: i64, exclude: &[usize]) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for (index, key) in self.keys.iter().enumerate() {
            let last = key.last_pick.load(Relaxed);
            if best.is_some_and(|(b, _)| last >= b)
                || (!exclude.is_empty() && exclude.contains(&index))
                || !key_usable(key, Demand::Other, now_ms)
                || self.accounts[key.account()].block_at(now_ms).is_some()
            {
                continue;
            }
            best = Some((last, index));
        }
        best.map(|(_, index)| index)
    }

    /// The usable key of the account with the largest share of its quota left whose limiter
    /// admits a request now (ties: the least recently used account, then key).
    fn best_free(&self, day: Day, now_ms: i64, exclude: &[usize]) -> Option<usize> {
        let mut best: Option<Rank> = None;
        for (index, key) in self.keys.iter().enumerate() {
            if (!exclude.is_empty() && exclude.contains(&index))
                || !key_usable(key, Demand::Free, now_ms)
            {
                continue;
            }
            let account = &self.accounts[key.account()];
            account.roll_window(day.date, now_ms);
            let limit = u64::from(account.limit_on(day.date));
            let used = u64::from(account.used_on(day.date));
            if used >= limit || !account_admits_free(account, now_ms) {
                continue;
            }
            let rank = Rank {
                index,
                remaining: limit - used,
                limit,
                account_last: account.last_pick.load(Relaxed),
                key_last: key.last_pick.load(Relaxed),
            };
            if best.is_none_or(|b| rank.beats(&b)) {
                best = Some(rank);
            }
        }
        best.map(|rank| rank.index)
    }

    fn claim(&self, index: usize, demand: Demand, day: Day, now_ms: i64) -> Option<Pick> {
        let key = &self.keys[index];
        let account_index = key.account();
        let account = &self.accounts[account_index];
        let mut charged = None;
        let pick = self.picks.fetch_add(1, Relaxed) + 1;
        if demand == Demand::Free {
            let date = account.reserve_daily(day.date)?;
            if account.take_slot(now_ms).is_err() {
                account.release_daily(date);
                return None;
            }
            charged = Some((account_index, date));
            account.last_pick.store(pick, Relaxed);
        }
        key.mark_used(now_ms, pick);
        Some(Pick {
            index,
            charged,
            via: Via::Local,
        })
    }

    fn shortage(&self, demand: Demand, day: Day, now_ms: i64, exclude: &[usize]) -> Unavailable {
        self.keys
            .iter()
            .enumerate()
            .filter(|(index, _)| !exclude.contains(index))
            .map(|(_, key)| available_from(key, &self.accounts[key.account()], demand, day, now_ms))
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
}

/// Whether `key` itself may serve `demand` now: not blocked, and not refused by its last
/// probe (nor out of credit, for paid use).
#[inline]
fn key_usable(key: &KeySlot, demand: Demand, now_ms: i64) -> bool {
    key.block_at(now_ms).is_none()
        && !((key.probe.invalid() || (demand == Demand::Other && key.probe.no_credit()))
            && key.probe.next_at_ms.load(Relaxed) > now_ms)
}

/// Whether `account` takes a free-model request now: no block, and its limiter admits one.
/// (Its quota left is checked by the caller, which needs the figures anyway, after rolling
/// its window.)
#[inline]
fn account_admits_free(account: &Account, now_ms: i64) -> bool {
    account.block_at(now_ms).is_none()
        && account.free_block_at(now_ms).is_none()
        && account.limiter_admits(now_ms)
}

/// When `key` of `account` can next serve `demand` (≤ `now_ms` means now), and what holds it
/// back: what a refusal says, so only on the path where no key can serve now.
fn available_from(
    key: &KeySlot,
    account: &Account,
    demand: Demand,
    day: Day,
    now_ms: i64,
) -> (i64, Shortage) {
    let mut from = (now_ms, Shortage::Throttled);
    let mut consider = |block: Option<Block>| {
        if let Some(block) = block {
            if block.until_ms > from.0 {
                let reason = if block.reason == BlockReason::DailyLimit {
                    Shortage::DailyLimit
                } else {
                    Shortage::Blocked
                };
                from = (block.until_ms, reason);
            }
        }
    };
    consider(key.block_at(now_ms));
    consider(account.block_at(now_ms));
    if demand == Demand::Free {
        consider(account.free_block_at(now_ms));
    }
    // A key refused by its last probe, or out of credit for paid use, waits for the next probe.
    if key.probe.invalid() || (demand == Demand::Other && key.probe.no_credit()) {
        let next_probe = key.probe.next_at_ms.load(Relaxed);
        if next_probe > from.0 {
            from = (next_probe, Shortage::Blocked);
        }
    }
    if demand == Demand::Free {
        account.roll_window(day.date, now_ms);
        if account.used_on(day.date) >= account.limit_on(day.date) {
            // The count starts again at OpenRouter's reset if it named one, else at midnight.
            let reset = account
                .window_ends_ms()
                .map_or(day.end_ms, |ends| ends.min(day.end_ms));
            if reset > from.0 {
                from = (reset, Shortage::DailyLimit);
            }
        }
        let next_slot = account.next_free_slot_ms(now_ms);
        if next_slot > from.0 {
            from = (next_slot, Shortage::Throttled);
        }
    }
    from
}
