//! The last hour at a glance: per account (and for all), one slot per minute
//! of requests, free-model requests, 429s from OpenRouter and from the proxy,
//! and tokens. Fixed size, updated with atomics on the request path (no lock,
//! no allocation); a slot is cleared by the first update of a new minute.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde_json::{json, Value};

// Relaxed: counters read only for display; a count racing a minute's turnover may land in
// the neighbouring minute, which a chart of minutes does not show.

const MINUTES: usize = 60;

/// What a minute counts.
#[derive(Clone, Copy)]
pub enum Tally {
    Requests = 0,
    FreeRequests = 1,
    OpenRouter429 = 2,
    Proxy429 = 3,
    Tokens = 4,
}

const NAMES: [&str; 5] = [
    "requests",
    "free_requests",
    "openrouter_429",
    "proxy_429",
    "tokens",
];

/// One minute's counts, and which minute (since the epoch) they are of.
#[derive(Default)]
struct Slot {
    minute: AtomicU64,
    counts: [AtomicU64; 5],
}

/// Sixty one-minute slots.
pub struct History {
    slots: [Slot; MINUTES],
}

impl Default for History {
    fn default() -> Self {
        History {
            slots: std::array::from_fn(|_| Slot::default()),
        }
    }
}

fn minute_of(now_ms: i64) -> u64 {
    (now_ms.max(0) / 60_000) as u64
}

impl History {
    /// Adds `n` to what the minute of `now_ms` counts of `tally`.
    pub fn add(&self, tally: Tally, n: u64, now_ms: i64) {
        let minute = minute_of(now_ms);
        let slot = &self.slots[(minute % MINUTES as u64) as usize];
        let seen = slot.minute.load(Relaxed);
        if seen < minute
            && slot
                .minute
                .compare_exchange(seen, minute, Relaxed, Relaxed)
                .is_ok()
        {
            for count in &slot.counts {
                count.store(0, Relaxed);
            }
        }
        if slot.minute.load(Relaxed) == minute {
            slot.counts[tally as usize].fetch_add(n, Relaxed);
        }
    }

    /// The counts of minute `minute` (0 for a minute no slot holds any more).
    fn counts(&self, minute: u64) -> [u64; 5] {
        let slot = &self.slots[(minute % MINUTES as u64) as usize];
        if slot.minute.load(Relaxed) != minute {
            return [0; 5];
        }
        slot.counts.each_ref().map(|c| c.load(Relaxed))
    }

    /// Each tally's last 60 minutes, oldest first, ending with the minute of `now_ms`.
    #[must_use]
    pub fn to_json(&self, now_ms: i64) -> Value {
        let current = minute_of(now_ms);
        let minutes: Vec<[u64; 5]> = (0..MINUTES as u64)
            .map(|ago| self.counts(current.saturating_sub(MINUTES as u64 - 1 - ago)))
            .collect();
        let mut series = serde_json::Map::new();
        for (tally, name) in NAMES.iter().enumerate() {
            series.insert(
                (*name).to_owned(),
                json!(minutes.iter().map(|m| m[tally]).collect::<Vec<_>>()),
            );
        }
        Value::Object(series)
    }

    /// Adds what `other` counted in the last hour (an account merged into this one).
    pub fn absorb(&self, other: &History, now_ms: i64) {
        let current = minute_of(now_ms);
        for ago in 0..MINUTES as u64 {
            let minute = current.saturating_sub(ago);
            for (tally, n) in other.counts(minute).into_iter().enumerate() {
                if n > 0 {
                    let at = (minute * 60_000) as i64;
                    self.add(TALLIES[tally], n, at);
                }
            }
        }
    }
}

const TALLIES: [Tally; 5] = [
    Tally::Requests,
    Tally::FreeRequests,
    Tally::OpenRouter429,
    Tally::Proxy429,
    Tally::Tokens,
];

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_795_521_600_000; // a whole minute

    #[test]
    fn each_minute_counts_apart_and_an_hour_later_its_slot_starts_over() {
        let history = History::default();
        history.add(Tally::Requests, 1, T0);
        history.add(Tally::Requests, 1, T0 + 59_999);
        history.add(Tally::Tokens, 40, T0 + 60_000);
        let json = history.to_json(T0 + 60_000);
        let requests = json["requests"].as_array().unwrap();
        assert_eq!(requests.len(), 60);
        assert_eq!(requests[58], 2);
        assert_eq!(requests[59], 0);
        assert_eq!(json["tokens"][59], 40);
        // 60 minutes on, the first minute's slot is reused and shows only the new count.
        history.add(Tally::Requests, 1, T0 + 3_600_000);
        let later = history.to_json(T0 + 3_600_000);
        assert_eq!(later["requests"][59], 1);
        assert_eq!(
            later["requests"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| **n != 0)
                .count(),
            1
        );
        let merged = History::default();
        merged.absorb(&history, T0 + 3_600_000);
        assert_eq!(merged.to_json(T0 + 3_600_000)["tokens"][0], 40);
    }
}
