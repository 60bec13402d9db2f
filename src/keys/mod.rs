//! The key manager: which OpenRouter key serves a request.
//!
//! OpenRouter's free-model limits belong to the account, not the key: an
//! [`Account`] holds the daily quota, the per-minute GCRA limiter and the
//! account's blocks, shared by all its keys; a [`KeySlot`] holds what belongs
//! to one key (its 401 and key-limit blocks, totals, probe). Keys configured
//! as `key@name` share the account `name`; others are accounts of their own
//! until OpenRouter's answers show two of them carry one user id (`merge.rs`).
//! Selection (`select.rs`) works on accounts, then on the account's keys.

mod account;
mod block;
mod calendar;
mod gcra;
mod history;
mod merge;
pub mod probe;
mod probed;
mod reload;
mod select;
pub(crate) mod share;
mod slot;
pub mod state;
mod usage;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

pub use account::Account;
pub use block::{Block, BlockReason, Scope};
pub use calendar::{day_containing, rfc3339, Calendar, Day};
pub use gcra::Gcra;
pub use history::{History, Tally};
pub use probed::{ProbeOutcome, ProbeReport, ProbeState};
pub use slot::{KeySlot, Outcome, Totals};
pub use usage::{Usage, UsageCounters};

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
    /// A free model: takes a limiter slot and a unit of the account's daily quota.
    Free,
    /// A paid model or a metadata endpoint: only needs an unblocked key.
    Other,
}

/// Why no key can serve right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shortage {
    /// Every account's limiter is spacing requests out.
    Throttled,
    /// Every account has used its free-model quota for today.
    DailyLimit,
    /// Every key or account is blocked after an upstream refusal.
    Blocked,
}

/// No key can serve before `until_ms`; `reason` is why the soonest one cannot serve now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unavailable {
    pub until_ms: i64,
    pub reason: Shortage,
}

/// A key picked for one attempt, and what the pick took from its account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    pub index: usize,
    /// The account charged and the quota day, for a free-model pick (`None` for others).
    pub charged: Option<(usize, u32)>,
    /// Where a free-model pick's unit was counted, so a give-back undoes it there.
    pub via: Via,
}

/// Where a free-model pick was counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// In this process only (no Redis configured, or not a free-model pick).
    Local,
    /// Confirmed by Redis for the whole fleet.
    Redis,
    /// Counted alone while Redis was away; added to the shared count when it is back.
    Alone,
}

/// All configured keys and their accounts.
pub struct KeyPool {
    keys: Box<[KeySlot]>,
    accounts: Box<[Account]>,
    calendar: Calendar,
    picks: AtomicU64,
    /// The last hour of every account together.
    pub history: History,
    /// Serialises account merges (rare; never on the request path).
    merging: Mutex<()>,
}

impl KeyPool {
    /// Builds the pool from the validated configuration: one account per `@name`, and one
    /// for each key without a name.
    ///
    /// # Panics
    /// If a key is not a valid header value, which configuration parsing rules out.
    #[must_use]
    pub fn from_config(config: &Config) -> Self {
        let mut accounts: Vec<Account> = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        let mut keys = Vec::with_capacity(config.keys.len());
        let fingerprints: Vec<String> = config
            .keys
            .iter()
            .map(|k| slot::fingerprint(&k.secret))
            .collect();
        let short_ids = slot::short_ids(&fingerprints);
        for (index, spec) in config.keys.iter().enumerate() {
            let account_name = spec.account.as_deref();
            let existing = account_name.and_then(|name| names.iter().position(|n| *n == name));
            let account = existing.unwrap_or_else(|| {
                // An account's limit is the one any of its entries gives (parsing checked they agree).
                let limit = config
                    .keys
                    .iter()
                    .filter(|k| account_name.is_some() && k.account.as_deref() == account_name)
                    .find_map(|k| k.daily_limit)
                    .or(spec.daily_limit);
                accounts.push(Account::new(
                    account_name.map(str::to_owned),
                    limit,
                    config.free_rpm,
                    config.free_burst,
                ));
                names.push(account_name.unwrap_or(""));
                accounts.len() - 1
            });
            keys.push(
                KeySlot::new(spec, fingerprints[index].clone(), short_ids[index], account)
                    .expect("keys are validated as header values"),
            );
        }
        KeyPool {
            keys: keys.into(),
            accounts: accounts.into(),
            calendar: Calendar::new(config.timezone.clone()),
            picks: AtomicU64::new(0),
            history: History::default(),
            merging: Mutex::new(()),
        }
    }

    /// The keys in configuration order.
    #[must_use]
    pub fn keys(&self) -> &[KeySlot] {
        &self.keys
    }

    /// Every account ever made, including ones whose keys have since merged into another
    /// (those have no keys: see [`Self::live_accounts`]).
    #[must_use]
    pub fn accounts(&self) -> &[Account] {
        &self.accounts
    }

    /// The accounts that have keys, each with the indices of its keys.
    #[must_use]
    pub fn live_accounts(&self) -> Vec<(usize, Vec<usize>)> {
        let mut live: Vec<(usize, Vec<usize>)> = Vec::new();
        for (index, key) in self.keys.iter().enumerate() {
            let account = key.account();
            match live.iter_mut().find(|(a, _)| *a == account) {
                Some((_, members)) => members.push(index),
                None => live.push((account, vec![index])),
            }
        }
        live
    }

    /// The account key `index` belongs to.
    #[must_use]
    pub fn account_of(&self, index: usize) -> &Account {
        &self.accounts[self.keys[index].account()]
    }

    /// How account `index` is shown: its configured name, the user id OpenRouter named, or
    /// the id of its first key for an account of its own.
    #[must_use]
    pub fn account_id(&self, index: usize) -> String {
        let account = &self.accounts[index];
        if let Some(name) = &account.name {
            return name.clone();
        }
        if let Some(user) = account.user_id.get() {
            return user.clone();
        }
        self.keys
            .iter()
            .find(|k| k.account() == index)
            .map_or_else(|| format!("#{index}"), |k| k.id.clone())
    }

    #[must_use]
    pub fn calendar(&self) -> &Calendar {
        &self.calendar
    }

    /// Blocks key `index` (or its account, by the reason's scope) until `until_ms`;
    /// a longer block already in force is kept.
    pub fn block(&self, index: usize, until_ms: i64, reason: BlockReason, now_ms: i64) {
        let block = Block { until_ms, reason };
        match reason.scope() {
            Scope::Key => self.keys[index].block.extend(block, now_ms),
            Scope::Account | Scope::AccountFree => {
                self.account_of(index).block_until(block, now_ms);
            }
        }
    }

    /// OpenRouter said the account's free-model quota is gone: mark it used up and block
    /// free-model requests until `until_ms` (OpenRouter's reset, when the count starts
    /// again from 0) or else the next daily reset.
    pub fn exhaust_daily(&self, index: usize, until_ms: Option<i64>, now_ms: i64) -> i64 {
        let day = self.calendar.today(now_ms);
        if until_ms.is_some_and(|t| t <= now_ms) {
            // The answer took longer than the window it speaks of: that window is over, the
            // quota is back. Marking the day used up would lose it until midnight.
            return now_ms;
        }
        let reset = until_ms;
        let until = reset.unwrap_or(day.end_ms);
        self.account_of(index).exhaust_daily(day.date, reset);
        self.block(index, until, BlockReason::DailyLimit, now_ms);
        until
    }

    /// Applies what OpenRouter's `/key` said about key `index`; `next_at_ms` is when it is asked again.
    pub fn apply_probe(&self, index: usize, outcome: &ProbeOutcome, now_ms: i64, next_at_ms: i64) {
        let key = &self.keys[index];
        key.probe.record(outcome, now_ms, next_at_ms);
        let ProbeOutcome::Report(report) = outcome else {
            return;
        };
        if let Some(user) = &report.user_id {
            self.learn_user(index, user, now_ms);
        }
        let Some((limit, used, _)) = report.free_daily else {
            return;
        };
        let account = self.account_of(index);
        if account.limit_configured {
            if limit != account.daily_limit() && !account.mismatch_logged.swap(true, Relaxed) {
                log::warn!(
                    "key {} is configured with a daily limit of {} but OpenRouter reports {limit}; keeping the configured one",
                    key.id,
                    account.daily_limit()
                );
            }
        } else {
            account.set_probed_limit(limit);
        }
        // Keys of one account report the same counter: the larger of ours and theirs, never a
        // sum; OpenRouter's own count is a floor for the fleet's.
        let date = self.calendar.today(now_ms).date;
        account.raise_used(date, used);
        account.share.raise_floor(date, used);
    }

    /// Counts `n` of `tally` this minute, for the account of key `index` (if any) and for all.
    pub fn tally(&self, index: Option<usize>, tally: Tally, n: u64, now_ms: i64) {
        if let Some(index) = index {
            self.account_of(index).history.add(tally, n, now_ms);
        }
        self.history.add(tally, n, now_ms);
    }

    /// Adds what one request served by key `index` used, to the key and its account.
    pub fn record_usage(&self, index: usize, usage: Usage, now_ms: i64) {
        let date = self.calendar.today(now_ms).date;
        self.keys[index].spent.add(date, usage);
        self.account_of(index).spent.add(date, usage);
    }

    /// Counts how an attempt with key `index` ended.
    pub fn record(&self, index: usize, outcome: Outcome) {
        self.keys[index].record(outcome);
    }

    /// The state `/key_status` shows for key `index` at `now_ms`: its own block first,
    /// then its account's.
    #[must_use]
    pub fn state_of(&self, index: usize, now_ms: i64) -> &'static str {
        let key = &self.keys[index];
        if key.probe.invalid() {
            return "invalid";
        }
        if key.block_at(now_ms).is_some() {
            return "blocked";
        }
        self.account_state(key.account(), now_ms)
    }

    /// The state of account `index` at `now_ms`.
    #[must_use]
    pub fn account_state(&self, index: usize, now_ms: i64) -> &'static str {
        let account = &self.accounts[index];
        let day = self.calendar.today(now_ms);
        account.roll_window(day.date, now_ms);
        match account
            .block_at(now_ms)
            .or_else(|| account.free_block_at(now_ms))
        {
            Some(b) if b.reason == BlockReason::DailyLimit => "daily_limit_reached",
            Some(_) => "blocked",
            None if account.used_on(day.date) >= account.daily_limit() => "daily_limit_reached",
            None if account.next_free_slot_ms(now_ms) > now_ms => "throttled",
            None => "active",
        }
    }

    /// The block shown for key `index`: its own, else its account's (every request, then
    /// free-model requests).
    #[must_use]
    pub fn block_shown(&self, index: usize, now_ms: i64) -> Option<Block> {
        let account = self.account_of(index);
        self.keys[index]
            .block_at(now_ms)
            .or_else(|| account.block_at(now_ms))
            .or_else(|| account.free_block_at(now_ms))
    }
}

#[cfg(test)]
mod tests;
