//! Model aliases (`[aliases]` of `CONFIG_FILE`): one stable name a client sends,
//! several models tried in order. A candidate that failed for reasons of its own
//! (its providers saturated, down, or gone) is skipped by the following alias
//! requests for its `Retry-After` (10 s without one), so a saturated model is not
//! asked again by every request; what each candidate served and how often it
//! failed today is kept for `/key_status`, `/metrics` and the status page.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use serde_json::{json, Value};

use crate::config::{AliasSpec, Config};
use crate::keys::share::{bump, count_in};
use crate::keys::Calendar;

// Relaxed throughout: each word is self-contained, read for display or as a hint.

/// How long a candidate is skipped after a model-scoped failure that named no wait.
pub const DEFAULT_SKIP_MS: i64 = 10_000;

/// One alias and its candidates' state.
pub struct Alias {
    pub name: String,
    pub candidates: Box<[Candidate]>,
}

/// One candidate model of an alias.
pub struct Candidate {
    pub model: String,
    /// Alias requests pass it by until this instant (epoch ms).
    skipped_until: AtomicI64,
    /// `(date << 32) | count` of requests it answered on the quota day.
    served: AtomicU64,
    /// `(date << 32) | count` of model-scoped failures on the quota day.
    failed: AtomicU64,
}

impl Candidate {
    fn new(model: &str) -> Self {
        Candidate {
            model: model.to_owned(),
            skipped_until: AtomicI64::new(0),
            served: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// Whether it is skipped at `now_ms`.
    #[must_use]
    pub fn skipped_at(&self, now_ms: i64) -> bool {
        self.skipped_until.load(Relaxed) > now_ms
    }
}

impl Alias {
    fn new(spec: &AliasSpec) -> Self {
        Alias {
            name: spec.name.clone(),
            candidates: spec.candidates.iter().map(|m| Candidate::new(m)).collect(),
        }
    }

    /// Whether every candidate is a free model.
    #[must_use]
    pub fn all_free(&self) -> bool {
        self.candidates
            .iter()
            .all(|c| crate::ingress::model::is_free(&c.model))
    }

    /// The candidate to try after `from` (`None`: the first): the next one in order that is
    /// not skipped at `now_ms`, else the one whose skip ends first.
    #[must_use]
    pub fn next_candidate(&self, from: Option<usize>, now_ms: i64) -> usize {
        let n = self.candidates.len();
        let start = from.map_or(0, |i| i + 1);
        (start..start + n)
            .map(|i| i % n)
            .find(|&i| !self.candidates[i].skipped_at(now_ms))
            .unwrap_or_else(|| {
                (0..n)
                    .min_by_key(|&i| self.candidates[i].skipped_until.load(Relaxed))
                    .unwrap_or(0)
            })
    }

    /// Candidate `index` failed for reasons of its own at `now_ms` on quota day `date`:
    /// skipped for `skip_ms`.
    pub fn failed(&self, index: usize, skip_ms: i64, now_ms: i64, date: u32) {
        let candidate = &self.candidates[index];
        candidate
            .skipped_until
            .fetch_max(now_ms.saturating_add(skip_ms), Relaxed);
        bump(&candidate.failed, date);
    }

    /// Candidate `index` answered a request on quota day `date`.
    pub fn served(&self, index: usize, date: u32) {
        bump(&self.candidates[index].served, date);
    }

    /// Each candidate's day and whether it is skipped now, for `/key_status`.
    #[must_use]
    pub fn to_json(&self, calendar: &Calendar, now_ms: i64) -> Value {
        let date = calendar.today(now_ms).date;
        let candidates: Vec<Value> = self
            .candidates
            .iter()
            .map(|c| {
                let until = c.skipped_until.load(Relaxed);
                json!({
                    "model": c.model,
                    "served_today": count_in(c.served.load(Relaxed), date),
                    "failed_today": count_in(c.failed.load(Relaxed), date),
                    "skipped_until": (until > now_ms).then(|| calendar.rfc3339(until)),
                })
            })
            .collect();
        json!({"name": self.name, "candidates": candidates})
    }

    /// Requests candidate `index` answered on quota day `date`, and its model-scoped failures.
    #[must_use]
    pub fn counts_on(&self, index: usize, date: u32) -> (u64, u64) {
        let c = &self.candidates[index];
        (
            count_in(c.served.load(Relaxed), date),
            count_in(c.failed.load(Relaxed), date),
        )
    }
}

/// Every configured alias.
#[derive(Default)]
pub struct Aliases {
    list: Box<[Arc<Alias>]>,
}

impl Aliases {
    /// The aliases of `config`; one the same as in `previous` (a reload) keeps its state.
    #[must_use]
    pub fn from_config(config: &Config, previous: Option<&Aliases>) -> Self {
        let list = config
            .aliases
            .iter()
            .map(|spec| {
                previous
                    .and_then(|p| p.list.iter().find(|a| same(a, spec)))
                    .map_or_else(|| Arc::new(Alias::new(spec)), Arc::clone)
            })
            .collect();
        Aliases { list }
    }

    /// The alias named `name`, if any.
    #[must_use]
    pub fn find(&self, name: &str) -> Option<&Arc<Alias>> {
        self.list.iter().find(|a| a.name == name)
    }

    #[must_use]
    pub fn all(&self) -> &[Arc<Alias>] {
        &self.list
    }
}

fn same(alias: &Alias, spec: &AliasSpec) -> bool {
    alias.name == spec.name
        && alias
            .candidates
            .iter()
            .map(|c| &c.model)
            .eq(spec.candidates.iter())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alias() -> Alias {
        Alias::new(&AliasSpec {
            name: "fast".into(),
            candidates: vec!["a:free".into(), "b:free".into(), "c:free".into()],
        })
    }

    #[test]
    fn the_next_candidate_is_the_next_one_not_skipped_else_the_one_freed_first() {
        let alias = alias();
        assert_eq!(alias.next_candidate(None, 0), 0);
        alias.failed(0, 10_000, 0, 1);
        assert_eq!(alias.next_candidate(None, 1), 1);
        assert_eq!(alias.next_candidate(Some(1), 1), 2);
        alias.failed(2, 5_000, 0, 1);
        assert_eq!(
            alias.next_candidate(Some(1), 1),
            1,
            "wraps round to the only one left"
        );
        alias.failed(1, 20_000, 0, 1);
        assert_eq!(
            alias.next_candidate(None, 1),
            2,
            "all skipped: the first freed"
        );
        assert_eq!(alias.next_candidate(None, 10_001), 0);
        assert!(alias.all_free());
    }
}
