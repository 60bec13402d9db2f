//! The per-minute limiter: GCRA (the generic cell rate algorithm) on one
//! atomic "theoretical arrival time".
//!
//! Written here rather than taken from governor because the proxy needs two
//! things governor does not offer: a non-consuming look at when the next
//! request is admitted (`/key_status` shows it live), and giving a slot back
//! when an attempt never reached OpenRouter. Time is passed in (epoch ms), so
//! tests drive it directly and the shared-state version can use one clock.

use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

// Relaxed throughout: the word is self-contained, nothing else is published through it.

/// A GCRA limiter admitting `per_minute` requests a minute with `burst` back to back.
/// Its fields are in microseconds (the arrival time since the epoch).
pub struct Gcra {
    /// When the next request would be admitted if there were no burst tolerance (epoch µs).
    arrival: AtomicI64,
    interval: i64,
    /// How far ahead of now the arrival time may run: `(burst - 1) × interval`.
    tolerance: i64,
    /// Extra spacing per admission (µs): 0, or while replicas decide alone (Redis away),
    /// `(replicas - 1) × interval`, so together they stay within one account's rate.
    widening: AtomicI64,
}

impl Gcra {
    /// A limiter of `per_minute` requests a minute (at least 1) with bursts of `burst` (at least 1).
    #[must_use]
    pub fn new(per_minute: u32, burst: u32) -> Self {
        let interval = 60_000_000 / i64::from(per_minute.max(1));
        Gcra {
            arrival: AtomicI64::new(0),
            interval,
            tolerance: interval.saturating_mul(i64::from(burst.max(1)) - 1),
            widening: AtomicI64::new(0),
        }
    }

    /// The arrival time as it counts at `now` (µs): never before now, and never further
    /// ahead than one admission could have put it (a wall clock stepped back is forgiven).
    fn effective_tat(&self, stored: i64, now: i64) -> i64 {
        stored
            .min(now.saturating_add(self.tolerance + self.interval))
            .max(now)
    }

    /// Takes a slot at `now_ms`, or returns the first instant (epoch ms, rounded up) one is free.
    pub fn take(&self, now_ms: i64) -> Result<(), i64> {
        let micros = now_ms.saturating_mul(1000);
        let mut refused_until = 0;
        self.arrival
            .fetch_update(Relaxed, Relaxed, |stored| {
                let tat = self.effective_tat(stored, micros);
                if tat - micros > self.tolerance {
                    refused_until = tat - self.tolerance;
                    None
                } else {
                    Some(tat + self.interval + self.widening.load(Relaxed))
                }
            })
            .map(drop)
            .map_err(|_| ceil_ms(refused_until))
    }

    /// Gives back a slot taken by [`Self::take`] whose request never left the proxy's host.
    pub fn give_back(&self) {
        let step = self.interval + self.widening.load(Relaxed);
        let _ = self
            .arrival
            .fetch_update(Relaxed, Relaxed, |stored| Some(stored.saturating_sub(step)));
    }

    /// Spaces admissions as if `replicas` limiters shared this one's rate (1: as configured).
    pub fn widen_for(&self, replicas: u32) {
        let extra = self.interval * i64::from(replicas.max(1) - 1);
        self.widening.store(extra, Relaxed);
    }

    /// Admits nothing before `until_ms`: another holder of the rate (a replica, through Redis)
    /// said the next slot is then.
    pub fn defer_until(&self, until_ms: i64) {
        self.arrival
            .fetch_max(until_ms.saturating_mul(1000) + self.tolerance, Relaxed);
    }

    /// How far the arrival time runs ahead of `now_ms` (ms, 0 when idle): what Redis gets.
    #[must_use]
    pub fn ahead_ms(&self, now_ms: i64) -> i64 {
        (self.arrival.load(Relaxed) / 1000 - now_ms).max(0)
    }

    /// Raises the arrival time to `ahead_ms` past `now_ms` (what Redis holds), never lowers it.
    pub fn raise_ahead(&self, now_ms: i64, ahead_ms: i64) {
        let arrival = now_ms.saturating_add(ahead_ms).saturating_mul(1000);
        self.arrival.fetch_max(arrival, Relaxed);
    }

    /// The spacing between admissions and the burst tolerance, in milliseconds.
    #[must_use]
    pub fn shape_ms(&self) -> (i64, i64) {
        (self.interval / 1000, self.tolerance / 1000)
    }

    /// Takes over `other`'s state when two limiters turn out to guard one account: the later
    /// arrival time wins, so neither's spacing is lost.
    pub fn absorb(&self, other: &Gcra) {
        self.arrival.fetch_max(other.arrival.load(Relaxed), Relaxed);
        self.widening
            .fetch_max(other.widening.load(Relaxed), Relaxed);
    }

    /// Whether a request would be admitted at `now_ms`, without taking a slot: the cheap test
    /// a pick runs for every account (the clamp of a stepped-back clock cannot change it).
    #[inline]
    #[must_use]
    pub fn admits(&self, now_ms: i64) -> bool {
        self.arrival.load(Relaxed) - self.tolerance <= now_ms.saturating_mul(1000)
    }

    /// When a request is next admitted (epoch ms, ≤ `now_ms` means now), without taking a slot.
    #[must_use]
    pub fn next_free_ms(&self, now_ms: i64) -> i64 {
        let micros = now_ms.saturating_mul(1000);
        let tat = self.effective_tat(self.arrival.load(Relaxed), micros);
        let free_at = tat - self.tolerance;
        // The common case, admitted now, needs no division (this runs for every key of a pick).
        if free_at <= micros {
            return now_ms;
        }
        ceil_ms(free_at)
    }
}

/// Microseconds to whole milliseconds, rounded up so a sleeper never wakes early.
fn ceil_ms(us: i64) -> i64 {
    -(-us).div_euclid(1000)
}

#[cfg(test)]
mod tests {
    use super::Gcra;

    const T0: i64 = 1_795_521_600_000;

    #[test]
    fn spaces_requests_by_the_interval() {
        let g = Gcra::new(20, 1);
        assert_eq!(g.take(T0), Ok(()));
        assert_eq!(g.take(T0), Err(T0 + 3_000));
        assert_eq!(g.take(T0 + 2_999), Err(T0 + 3_000));
        assert_eq!(g.take(T0 + 3_000), Ok(()));
    }

    #[test]
    fn a_burst_is_admitted_back_to_back_then_spaced() {
        let g = Gcra::new(60, 3);
        for _ in 0..3 {
            assert_eq!(g.take(T0), Ok(()));
        }
        assert_eq!(g.take(T0), Err(T0 + 1_000));
        assert_eq!(g.take(T0 + 1_000), Ok(()));
    }

    #[test]
    fn peeking_takes_nothing_and_follows_the_clock() {
        let g = Gcra::new(20, 1);
        assert_eq!(g.next_free_ms(T0), T0);
        g.take(T0).unwrap();
        assert_eq!(g.next_free_ms(T0), T0 + 3_000);
        assert_eq!(g.next_free_ms(T0 + 1_000), T0 + 3_000);
        assert_eq!(g.next_free_ms(T0 + 5_000), T0 + 5_000);
        assert_eq!(g.take(T0 + 3_000), Ok(()));
    }

    #[test]
    fn the_cheap_admission_test_agrees_with_the_next_free_instant() {
        let g = Gcra::new(20, 2);
        for step in 0..40 {
            let now = T0 + step * 500;
            assert_eq!(
                g.admits(now),
                g.next_free_ms(now) <= now,
                "at +{}",
                step * 500
            );
            if step % 3 == 0 {
                let _ = g.take(now);
            }
        }
        assert!(!Gcra::new(20, 1).admits(T0 - 1) || Gcra::new(20, 1).take(T0).is_ok());
    }

    #[test]
    fn a_slot_given_back_is_free_again() {
        let g = Gcra::new(20, 1);
        g.take(T0).unwrap();
        g.give_back();
        assert_eq!(g.next_free_ms(T0), T0);
        assert_eq!(g.take(T0), Ok(()));
    }

    #[test]
    fn a_wall_clock_stepped_back_does_not_throttle_for_the_step() {
        let g = Gcra::new(20, 1);
        g.take(T0).unwrap();
        // An hour back: at most one interval of waiting, not an hour.
        let earlier = T0 - 3_600_000;
        assert_eq!(g.next_free_ms(earlier), earlier + 3_000);
    }
}
