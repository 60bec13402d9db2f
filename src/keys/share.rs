//! One account's part in a fleet of replicas (with `REDIS_URL`): what this
//! replica itself sent in the current window (its contribution to the shared
//! count, pushed to Redis as an absolute number so a late or repeated merge
//! can never count twice), what OpenRouter itself said of the count (the
//! floor), and, while Redis is away, the share it decides alone with.
//!
//! Deciding alone: of the quota left in the window when Redis went away, the
//! replica takes `1 / replicas` and leaves the rest to the others; in any later
//! window (OpenRouter's reset or midnight passed during the outage) it takes
//! `1 / replicas` of the whole limit. Rounded down, so the fleet together never
//! takes more than the limit.

use std::sync::atomic::{
    AtomicU32, AtomicU64,
    Ordering::{Relaxed, SeqCst},
};

// Relaxed where a word is self-contained; SeqCst where a merge must see a unit counted
// once it sees it settled (`mine`, `unsettled`).

/// The date a packed `(yyyymmdd << 32) | count` word belongs to.
pub(crate) fn date_of(word: u64) -> u32 {
    (word >> 32) as u32
}

/// The count of `date` in a packed word (0 when the word is of another date).
pub(crate) fn count_in(word: u64, date: u32) -> u64 {
    if date_of(word) == date {
        word & 0xFFFF_FFFF
    } else {
        0
    }
}

pub(crate) fn packed(date: u32, count: u64) -> u64 {
    (u64::from(date) << 32) | count.min(0xFFFF_FFFF)
}

/// One account's part in the fleet.
#[derive(Default)]
pub struct Share {
    /// `(date << 32) | units` this replica itself sent in the current window.
    mine: AtomicU64,
    /// `(date << 32) | units` the other replicas had sent, as the last merge said: pushed
    /// back, it stands for them in a Redis that lost its data until they are back.
    others: AtomicU64,
    /// `(date << 32) | count` OpenRouter itself gave (its daily 429, a `/key` probe): the
    /// fleet's count is at least this, whoever sent the requests.
    floor: AtomicU64,
    /// While deciding alone: `(date << 32) | units` of that window's quota left to the others.
    withheld: AtomicU64,
    /// While deciding alone: the fleet's size it shares with (0: not alone).
    alone_with: AtomicU32,
    /// Units Redis may count as this replica's that `mine` does not show yet: picks whose
    /// answer is on its way, units given back whose give-back has not run.
    unsettled: AtomicU32,
}

impl Share {
    /// Counts a unit this replica sends on `date`, confirmed by Redis or decided alone
    /// (`undo`: one given back, its attempt never reached OpenRouter).
    pub(crate) fn count_mine(&self, date: u32, undo: bool) {
        // SeqCst: a merge that sees the unit settled sees it counted.
        let _ = self.mine.fetch_update(SeqCst, SeqCst, |word| {
            let n = count_in(word, date);
            Some(packed(date, if undo { n.saturating_sub(1) } else { n + 1 }))
        });
    }

    /// Units this replica sent on `date` in the current window.
    #[must_use]
    pub fn mine_on(&self, date: u32) -> u32 {
        count_in(self.mine.load(Relaxed), date) as u32
    }

    /// Raises this replica's count of `date` to what the state file remembered.
    pub(crate) fn raise_mine(&self, date: u32, units: u32) {
        raise(&self.mine, date, units);
    }

    /// Raises this replica's count of `date` to what Redis holds for it (`in_redis`: a state
    /// file older than the last merge), less the units still unsettled: a pick Redis has
    /// counted whose answer has not arrived is counted here when it does, not twice.
    pub(crate) fn raise_mine_to_redis(&self, date: u32, in_redis: u32) {
        let unsettled = self.unsettled.load(SeqCst);
        raise(&self.mine, date, in_redis.saturating_sub(unsettled));
    }

    /// A unit Redis may count before `mine` shows it is under way until the guard drops.
    pub(crate) fn unsettled(&self) -> Unsettled<'_> {
        self.unsettle();
        Unsettled(self)
    }

    /// A unit Redis may count before `mine` shows it is under way (see [`Self::settle`]).
    pub(crate) fn unsettle(&self) {
        self.unsettled.fetch_add(1, SeqCst);
    }

    /// The unit of [`Self::unsettle`] is settled: `mine` shows it (counted, or given back and
    /// the give-back ran or gave up).
    pub(crate) fn settle(&self) {
        let _ = self
            .unsettled
            .fetch_update(SeqCst, SeqCst, |n| Some(n.saturating_sub(1)));
    }

    /// What the other replicas had sent on `date`, as the last merge said.
    #[must_use]
    pub fn others_on(&self, date: u32) -> u32 {
        count_in(self.others.load(Relaxed), date) as u32
    }

    pub(crate) fn raise_others(&self, date: u32, units: u32) {
        raise(&self.others, date, units);
    }

    /// What the other replicas have on `date` now (a client's units, which go back when a
    /// request never reaches OpenRouter, so they may be fewer than the last merge said).
    pub(crate) fn set_others(&self, date: u32, units: u32) {
        self.others.store(packed(date, u64::from(units)), Relaxed);
    }

    /// Counts a unit of `date` as this replica's if the fleet's count (its own and the
    /// others' as last heard) stays under `limit`, or its share of it while deciding
    /// alone; false when reached. No limit: always counted.
    pub(crate) fn take_within(&self, date: u32, limit: Option<u64>) -> bool {
        let limit = limit.map(|l| self.limit_on(date, u32::try_from(l).unwrap_or(u32::MAX)));
        let others = u64::from(self.others_on(date));
        self.mine
            .fetch_update(SeqCst, SeqCst, |word| {
                let n = count_in(word, date);
                limit
                    .is_none_or(|l| n + others < u64::from(l))
                    .then(|| packed(date, n + 1))
            })
            .is_ok()
    }

    /// What OpenRouter said `date`'s count is at least.
    #[must_use]
    pub fn floor_on(&self, date: u32) -> u32 {
        count_in(self.floor.load(Relaxed), date) as u32
    }

    pub(crate) fn raise_floor(&self, date: u32, count: u32) {
        raise(&self.floor, date, count);
    }

    /// A new window began (OpenRouter's reset passed): nothing of the old one carries on.
    pub(super) fn roll(&self, date: u32) {
        for word in [&self.mine, &self.others, &self.floor] {
            word.store(packed(date, 0), Relaxed);
        }
        // The share of what was left in the old window is no share of the new one.
        self.withheld.store(0, Relaxed);
    }

    /// Starts deciding alone in a fleet of `replicas` with `left` units of `date`'s window
    /// left; false if it already does (its share was taken when Redis went away).
    pub(crate) fn go_alone(&self, date: u32, left: u32, replicas: u32) -> bool {
        let replicas = replicas.max(1);
        if self
            .alone_with
            .compare_exchange(0, replicas, Relaxed, Relaxed)
            .is_err()
        {
            return false;
        }
        // Rounded down: replicas cannot agree on who would take a remainder.
        let withheld = left - left / replicas;
        self.withheld
            .store(packed(date, u64::from(withheld)), Relaxed);
        true
    }

    /// Redis is back: the whole quota is the fleet's again.
    pub(crate) fn end_alone(&self) {
        self.alone_with.store(0, Relaxed);
        self.withheld.store(0, Relaxed);
    }

    /// The fleet's size while deciding alone (0: not alone).
    #[must_use]
    pub fn alone_with(&self) -> u32 {
        self.alone_with.load(Relaxed)
    }

    /// The limit this replica may use on `date` out of `limit`.
    #[must_use]
    pub fn limit_on(&self, date: u32, limit: u32) -> u32 {
        let replicas = self.alone_with.load(Relaxed);
        if replicas == 0 {
            return limit;
        }
        let withheld = self.withheld.load(Relaxed);
        if date_of(withheld) == date {
            limit.saturating_sub(count_in(withheld, date) as u32)
        } else {
            // A window that began while alone: its share of the whole limit.
            limit / replicas
        }
    }

    /// Takes over what `other` (the same account in a replaced pool) knew on `date`.
    pub(super) fn absorb(&self, other: &Share, date: u32) {
        let theirs = other.mine_on(date);
        let _ = self.mine.fetch_update(Relaxed, Relaxed, |word| {
            Some(packed(date, count_in(word, date) + u64::from(theirs)))
        });
        self.raise_floor(date, other.floor_on(date));
        let withheld = other.withheld.load(Relaxed);
        if self.alone_with.load(Relaxed) == 0 {
            self.withheld.store(withheld, Relaxed);
            self.alone_with
                .store(other.alone_with.load(Relaxed), Relaxed);
        }
    }
}

/// A unit under way to Redis (see [`Share::unsettled`]); settled when dropped.
pub(crate) struct Unsettled<'a>(&'a Share);

impl Drop for Unsettled<'_> {
    fn drop(&mut self) {
        self.0.settle();
    }
}

/// Adds one to `date`'s count in `word` (a word of an older date starts again from 0).
pub(crate) fn bump(word: &AtomicU64, date: u32) {
    let _ = word.fetch_update(Relaxed, Relaxed, |w| {
        Some(packed(date, count_in(w, date) + 1))
    });
}

/// Raises `date`'s count in `word` to `count`; an older `date` changes nothing.
fn raise(word: &AtomicU64, date: u32, count: u32) {
    let _ = word.fetch_update(SeqCst, SeqCst, |w| {
        (date >= date_of(w) && u64::from(count) > count_in(w, date))
            .then_some(packed(date, u64::from(count)))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alone_a_replica_takes_its_share_of_what_is_left_then_of_every_new_window() {
        let share = Share::default();
        assert_eq!(share.limit_on(1, 30), 30);
        // 3 replicas, 20 left of 30 on day 1: 20 - 20/3 = 14 withheld.
        assert!(share.go_alone(1, 20, 3));
        assert!(!share.go_alone(1, 20, 1), "the share is taken once");
        assert_eq!(share.limit_on(1, 30), 16);
        // Midnight passed during the outage: a third of the whole limit.
        assert_eq!(share.limit_on(2, 30), 10);
        // OpenRouter's reset passed on the same day: the same.
        share.roll(1);
        assert_eq!(share.limit_on(1, 30), 10);
        share.end_alone();
        assert_eq!(share.limit_on(1, 30), 30);
    }

    #[test]
    fn mine_counts_this_replicas_units_per_window() {
        let share = Share::default();
        share.count_mine(5, false);
        share.count_mine(5, false);
        share.count_mine(5, true);
        assert_eq!(share.mine_on(5), 1);
        share.raise_mine(5, 3);
        share.raise_mine(4, 9);
        assert_eq!(share.mine_on(5), 3);
        share.roll(5);
        assert_eq!(share.mine_on(5), 0);
        share.count_mine(6, false);
        assert_eq!(share.mine_on(6), 1);
    }

    #[test]
    fn a_replaced_pool_keeps_what_was_sent_and_the_share_decided_alone() {
        let (old, new) = (Share::default(), Share::default());
        old.count_mine(5, false);
        old.raise_floor(5, 7);
        assert!(old.go_alone(5, 20, 2));
        new.absorb(&old, 5);
        assert_eq!(new.mine_on(5), 1);
        assert_eq!(new.floor_on(5), 7);
        assert_eq!(new.limit_on(5, 30), 20);
        assert_eq!(new.alone_with(), 2);
    }
}
