//! The daily quota day: which civil day it is in `TIMEZONE` and when it ends.
//!
//! OpenRouter resets free-model quotas at 00:00 UTC; users in other zones may
//! choose their own midnight. The day is rolled lazily by whoever asks first
//! after midnight, so no timer task is needed and `/key_status` is never stale.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use jiff::tz::TimeZone;
use jiff::Timestamp;

/// A quota day: its civil date as `yyyymmdd` and the instant it ends (epoch ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Day {
    pub date: u32,
    pub end_ms: i64,
}

/// Bits of the packed word that hold the day's end in epoch seconds (enough until the year 4000).
const END_BITS: u32 = 37;

/// The current quota day, rolled over lazily.
pub struct Calendar {
    tz: TimeZone,
    /// `(yyyymmdd << END_BITS) | end in epoch seconds`: one word, so a reader never pairs
    /// one day's date with another day's end. Day ends are whole seconds (local midnights).
    day: AtomicU64,
}

fn pack(day: Day) -> u64 {
    (u64::from(day.date) << END_BITS) | (day.end_ms.max(0) / 1000) as u64
}

fn unpack(word: u64) -> Day {
    Day {
        date: (word >> END_BITS) as u32,
        end_ms: (word & ((1 << END_BITS) - 1)) as i64 * 1000,
    }
}

impl Calendar {
    #[must_use]
    pub fn new(tz: TimeZone) -> Self {
        // end 0 makes the first `today` call compute the real day.
        Calendar {
            tz,
            day: AtomicU64::new(0),
        }
    }

    /// The day `now_ms` falls in. Cheap (one atomic load) except once per day.
    pub fn today(&self, now_ms: i64) -> Day {
        // Relaxed: the word is self-contained; nothing else is published through it.
        let stored = unpack(self.day.load(Relaxed));
        if now_ms < stored.end_ms {
            return stored;
        }
        let day = day_containing(&self.tz, now_ms);
        // Only ever forwards: a caller with an older `now_ms` never moves the day back.
        self.day.fetch_max(pack(day), Relaxed);
        day
    }

    /// The zone's offset from UTC at `now_ms`, in ms: Redis computes the fleet's quota day
    /// from its own clock with it.
    #[must_use]
    pub fn utc_offset_ms(&self, now_ms: i64) -> i64 {
        let now = Timestamp::from_millisecond(now_ms).unwrap_or(Timestamp::UNIX_EPOCH);
        i64::from(self.tz.to_offset(now).seconds()) * 1000
    }

    /// Formats an instant as RFC 3339 in this calendar's zone.
    #[must_use]
    pub fn rfc3339(&self, ms: i64) -> String {
        rfc3339(&self.tz, ms)
    }
}

/// The quota day containing `now_ms` in `tz`.
#[must_use]
pub fn day_containing(tz: &TimeZone, now_ms: i64) -> Day {
    let now = Timestamp::from_millisecond(now_ms)
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_zoned(tz.clone());
    let date = now.date();
    // start_of_day handles zones whose midnight falls into a DST gap.
    let end_ms = now
        .tomorrow()
        .and_then(|t| t.start_of_day())
        .map_or(now_ms + 86_400_000, |t| t.timestamp().as_millisecond());
    let yyyymmdd = date.year() as u32 * 10_000 + date.month() as u32 * 100 + date.day() as u32;
    Day {
        date: yyyymmdd,
        end_ms,
    }
}

/// An instant as RFC 3339 with the offset `tz` has at that instant.
#[must_use]
pub fn rfc3339(tz: &TimeZone, ms: i64) -> String {
    let ts = Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH);
    ts.to_zoned(tz.clone())
        .strftime("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> i64 {
        rfc3339.parse::<Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn utc_day_ends_at_utc_midnight() {
        let day = day_containing(&TimeZone::UTC, ms("2026-11-24T23:59:59.999Z"));
        assert_eq!(
            day,
            Day {
                date: 20_261_124,
                end_ms: ms("2026-11-25T00:00:00Z")
            }
        );
        let next = day_containing(&TimeZone::UTC, ms("2026-11-25T00:00:00Z"));
        assert_eq!(next.date, 20_261_125);
    }

    #[test]
    fn moscow_day_ends_at_moscow_midnight() {
        let tz = TimeZone::get("Europe/Moscow").unwrap();
        let day = day_containing(&tz, ms("2026-11-24T20:59:00Z"));
        assert_eq!(
            day,
            Day {
                date: 20_261_124,
                end_ms: ms("2026-11-24T21:00:00Z")
            }
        );
        assert_eq!(
            day_containing(&tz, ms("2026-11-24T21:00:00Z")).date,
            20_261_125
        );
    }

    #[test]
    fn days_across_dst_changes_are_23_and_25_hours_long() {
        let tz = TimeZone::get("America/New_York").unwrap();
        let spring = day_containing(&tz, ms("2026-03-08T12:00:00Z"));
        assert_eq!(spring.end_ms, ms("2026-03-09T04:00:00Z"));
        assert_eq!(spring.end_ms - ms("2026-03-08T05:00:00Z"), 23 * 3_600_000);
        let autumn = day_containing(&tz, ms("2026-11-01T12:00:00Z"));
        assert_eq!(autumn.end_ms - ms("2026-11-01T04:00:00Z"), 25 * 3_600_000);
    }

    #[test]
    fn midnight_inside_a_dst_gap_ends_at_the_first_instant_of_the_day() {
        // Santiago skips 00:00-01:00 when DST starts (2026-09-06).
        let tz = TimeZone::get("America/Santiago").unwrap();
        let day = day_containing(&tz, ms("2026-09-05T15:00:00Z"));
        assert_eq!(rfc3339(&tz, day.end_ms), "2026-09-06T01:00:00-03:00");
    }

    #[test]
    fn a_late_caller_never_moves_the_stored_day_backwards() {
        let cal = Calendar::new(TimeZone::UTC);
        let tomorrow = cal.today(ms("2026-11-25T00:00:01Z"));
        // A caller whose clock reading is from just before midnight is counted in the new day.
        assert_eq!(cal.today(ms("2026-11-24T23:59:59Z")), tomorrow);
        assert_eq!(cal.today(ms("2026-11-25T10:00:00Z")), tomorrow);
    }

    #[test]
    fn calendar_rolls_lazily_at_the_day_end() {
        let cal = Calendar::new(TimeZone::UTC);
        let first = cal.today(ms("2026-11-24T10:00:00Z"));
        assert_eq!(cal.today(ms("2026-11-24T23:00:00Z")), first);
        assert_eq!(cal.today(first.end_ms).date, 20_261_125);
    }
}
