//! Tokens and cost, per key and per account: today's (reset with the daily
//! quota, at midnight in `TIMEZONE`) and lifetime totals, in atomics. Cost is
//! kept in nano-USD so it adds up exactly.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use serde::Deserialize;
use serde_json::{json, Value};

// Independent counters: Relaxed throughout. A request counted across midnight may land on
// either day; nothing else is published through them.

/// More tokens than any model's context window holds (the largest are a few million).
const MAX_TOKENS_PER_ANSWER: u64 = 100_000_000;
/// More than any one request costs ($1,000), in nano-USD.
const MAX_NANO_USD_PER_ANSWER: u64 = 1_000 * 1_000_000_000;

/// What one request used, as OpenRouter's `usage` object said.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// In nano-USD (1e-9 USD).
    pub cost_nano: u64,
}

/// The fields of OpenRouter's `usage` object the proxy keeps; the rest (details, totals)
/// is skipped without being built, so reading it allocates nothing.
#[derive(Deserialize)]
struct UsageFields {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    cost: Option<f64>,
}

impl Usage {
    /// Reads the OpenRouter `usage` object at the start of `json` (anything may follow it);
    /// `None` when it is not one or has no token counts.
    #[must_use]
    pub fn read(json: &[u8]) -> Option<Usage> {
        let fields = serde_json::Deserializer::from_slice(json)
            .into_iter::<UsageFields>()
            .next()?
            .ok()?;
        if fields.prompt_tokens.is_none() && fields.completion_tokens.is_none() {
            return None;
        }
        let cost = fields.cost.filter(|c| c.is_finite() && *c >= 0.0);
        Some(Usage {
            prompt_tokens: fields.prompt_tokens.unwrap_or(0),
            completion_tokens: fields.completion_tokens.unwrap_or(0),
            // Saturating (`as` from f64): a cost past u64 reads as the largest, then implausible.
            cost_nano: cost.map_or(0, |c| (c * 1e9).round() as u64),
        })
    }

    /// Whether one answer can have used this much: no more tokens than a context window
    /// holds, no more than $1,000. Anything else is a broken or hostile answer, not usage.
    #[must_use]
    pub fn plausible(self) -> bool {
        self.prompt_tokens <= MAX_TOKENS_PER_ANSWER
            && self.completion_tokens <= MAX_TOKENS_PER_ANSWER
            && self.cost_nano <= MAX_NANO_USD_PER_ANSWER
    }

    /// `[prompt tokens, completion tokens, nano-USD]`, as the state file keeps them.
    #[must_use]
    pub fn parts(self) -> [u64; 3] {
        [self.prompt_tokens, self.completion_tokens, self.cost_nano]
    }

    #[must_use]
    pub fn from_parts(parts: [u64; 3]) -> Usage {
        Usage {
            prompt_tokens: parts[0],
            completion_tokens: parts[1],
            cost_nano: parts[2],
        }
    }

    /// `{"prompt_tokens":..,"completion_tokens":..,"cost":<USD>}`.
    #[must_use]
    pub fn to_json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost": self.cost_nano as f64 / 1e9,
        })
    }
}

/// Today's and lifetime usage of one key or account.
#[derive(Default)]
pub struct UsageCounters {
    /// The quota day (`yyyymmdd`) `today` counts.
    day: AtomicU32,
    today: [AtomicU64; 3],
    lifetime: [AtomicU64; 3],
}

impl UsageCounters {
    /// Adds `usage` on quota day `date`.
    pub fn add(&self, date: u32, usage: Usage) {
        self.roll(date);
        for ((today, lifetime), value) in self.today.iter().zip(&self.lifetime).zip(usage.parts()) {
            // Saturating: a counter never wraps round to a small number.
            for counter in [today, lifetime] {
                let _ = counter.fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_add(value)));
            }
        }
    }

    /// Starts a new day's counts once `date` is newer than the one counted.
    fn roll(&self, date: u32) {
        let day = self.day.load(Relaxed);
        if date > day
            && self
                .day
                .compare_exchange(day, date, Relaxed, Relaxed)
                .is_ok()
        {
            for counter in &self.today {
                counter.store(0, Relaxed);
            }
        }
    }

    /// The usage of quota day `date` (zero once a newer day has begun).
    #[must_use]
    pub fn today(&self, date: u32) -> Usage {
        if self.day.load(Relaxed) != date {
            return Usage::default();
        }
        Usage::from_parts(self.today.each_ref().map(|c| c.load(Relaxed)))
    }

    #[must_use]
    pub fn lifetime(&self) -> Usage {
        Usage::from_parts(self.lifetime.each_ref().map(|c| c.load(Relaxed)))
    }

    /// Restores what the state file kept: `date`'s usage and the lifetime totals.
    pub fn restore(&self, date: u32, today: Usage, lifetime: Usage) {
        self.day.store(date, Relaxed);
        for (counter, value) in self.today.iter().zip(today.parts()) {
            counter.store(value, Relaxed);
        }
        for (counter, value) in self.lifetime.iter().zip(lifetime.parts()) {
            counter.store(value, Relaxed);
        }
    }

    /// Adds what `other` counted (an account merged into this one, or a key carried over).
    pub fn absorb(&self, other: &UsageCounters, date: u32) {
        self.roll(date);
        for (counter, value) in self.today.iter().zip(other.today(date).parts()) {
            counter.fetch_add(value, Relaxed);
        }
        for (counter, value) in self.lifetime.iter().zip(other.lifetime().parts()) {
            counter.fetch_add(value, Relaxed);
        }
    }

    /// `{"today": {...}, "lifetime": {...}}` for `/key_status`.
    #[must_use]
    pub fn to_json(&self, date: u32) -> Value {
        json!({"today": self.today(date).to_json(), "lifetime": self.lifetime().to_json()})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_read_from_openrouter_s_object_and_today_resets_with_the_day() {
        let usage = Usage::read(
            br#"{"prompt_tokens":194,"completion_tokens":2,"total_tokens":196,
               "cost":0.0001234,"prompt_tokens_details":{"cached_tokens":0}}}
data: [DONE]"#,
        )
        .unwrap();
        assert_eq!(
            usage,
            Usage {
                prompt_tokens: 194,
                completion_tokens: 2,
                cost_nano: 123_400
            }
        );
        assert_eq!(Usage::read(br#"{"cost":1}"#), None);
        assert_eq!(Usage::read(br#"{"prompt_tokens":"#), None);
        let counters = UsageCounters::default();
        counters.add(20_261_206, usage);
        counters.add(20_261_206, usage);
        assert_eq!(counters.today(20_261_206).prompt_tokens, 388);
        counters.add(20_261_207, usage);
        assert_eq!(counters.today(20_261_207).prompt_tokens, 194);
        assert_eq!(counters.today(20_261_206), Usage::default());
        assert_eq!(counters.lifetime().cost_nano, 370_200);
    }
}
