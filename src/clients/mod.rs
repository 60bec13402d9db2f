//! The demand side: who is asking. Each client of `CONFIG_FILE` has its own key,
//! the models it may use, its limits and its counts; the operator
//! (`PROXY_API_KEY`) has none and sees everything. A presented key is found by
//! its SHA-256 in a map (never a loop of early-exit compares), so the time a
//! lookup takes says nothing about how close a wrong key came.

pub mod admission;
pub mod allow;
pub mod fair;
pub mod persist;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::config::{ClientSpec, Config};
use crate::keys::share::{bump, count_in, Share};
use crate::keys::{Gcra, History, Tally, Usage, UsageCounters};
use crate::observe::logging::OncePerSecond;
use allow::Allowlist;

// Counters and packed `(date << 32) | count` words, each self-contained: Relaxed throughout.

/// Who sent a request.
#[derive(Clone)]
pub enum Caller {
    /// `PROXY_API_KEY`: no limits, sees everything.
    Operator,
    /// A client of `CONFIG_FILE`, as configured when the request arrived.
    Client(Arc<Client>),
}

/// Why a client's request was refused before anything was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    Model,
    RequestsPerDay,
    FreeRequestsPerDay,
    TokensPerDay,
    UsdPerDay,
    Busy,
}

/// Refusal reasons in the order of [`Refused`], as `/key_status` names them.
pub const REFUSALS: [&str; 6] = [
    "model",
    "requests_per_day",
    "free_requests_per_day",
    "tokens_per_day",
    "usd_per_day",
    "busy",
];

/// One client: its configuration, and what it did (kept across reloads by name).
pub struct Client {
    pub spec: ClientSpec,
    allow: Option<Allowlist>,
    /// Its per-minute limit, if it has one.
    limiter: Option<Gcra>,
    /// Its `max_concurrent` permits; waiting is first come first served.
    concurrency: Option<Arc<Semaphore>>,
    /// Its counts: shared with the client of the same name in the configuration a reload
    /// replaces, so requests in flight across a reload count where the next ones do.
    pub counts: Arc<Counts>,
}

/// What one client did.
pub struct Counts {
    /// Its name (the one thing a reload keeps it by).
    pub name: Arc<str>,
    /// Requests sent upstream (or on their way) on the quota day: this replica's own, and
    /// the other replicas' as the last merge said (with `REDIS_URL`).
    pub requests: Share,
    /// The same for free-model requests.
    pub free_requests: Share,
    /// Tokens and cost of its answers through this replica, today's and lifetime.
    pub spent: UsageCounters,
    /// Today's tokens and cost through the other replicas, as the last merge said.
    pub others_spent: OthersSpent,
    /// Lifetime requests and free requests.
    lifetime: [AtomicU64; 2],
    /// Requests in flight (until their response's last byte).
    pub in_flight: AtomicU64,
    /// Requests waiting for their turn now.
    pub waiting: AtomicU64,
    /// Refused today by reason, `(date << 32) | count` each.
    refused: [AtomicU64; 6],
    /// One log line a second per reason, however many are refused.
    refusal_lines: [OncePerSecond; 6],
    /// The last hour through this replica, a slot a minute (the status page's chart).
    pub history: History,
}

impl Counts {
    fn new(name: &str) -> Self {
        Counts {
            name: Arc::from(name),
            requests: Share::default(),
            free_requests: Share::default(),
            spent: UsageCounters::default(),
            others_spent: OthersSpent::default(),
            lifetime: [AtomicU64::new(0), AtomicU64::new(0)],
            in_flight: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            refused: Default::default(),
            refusal_lines: Default::default(),
            history: History::default(),
        }
    }
}

/// Today's tokens and cost of a client through the other replicas. Written by the merge
/// alone; a reader may see a day's figures a moment before its date, which only shows.
#[derive(Default)]
pub struct OthersSpent {
    day: AtomicU32,
    parts: [AtomicU64; 3],
}

impl OthersSpent {
    /// What the other replicas spent on `date`.
    pub fn set(&self, date: u32, usage: Usage) {
        for (part, value) in self.parts.iter().zip(usage.parts()) {
            part.store(value, Relaxed);
        }
        self.day.store(date, Relaxed);
    }

    #[must_use]
    pub fn on(&self, date: u32) -> Usage {
        if self.day.load(Relaxed) != date {
            return Usage::default();
        }
        Usage::from_parts(self.parts.each_ref().map(|p| p.load(Relaxed)))
    }
}

impl Client {
    /// A client of `spec`, its counts taken over from `previous` (same name) if any.
    fn new(spec: ClientSpec, previous: Option<&Clients>) -> Self {
        let limits = &spec.limits;
        let counts = previous
            .and_then(|p| p.all().iter().find(|c| c.spec.name == spec.name))
            .map_or_else(
                || Arc::new(Counts::new(&spec.name)),
                |c| Arc::clone(&c.counts),
            );
        Client {
            allow: spec.models.as_deref().map(Allowlist::new),
            limiter: limits
                .requests_per_minute
                .map(|rpm| Gcra::new(rpm, limits.burst)),
            concurrency: limits
                .max_concurrent
                .map(|n| Arc::new(Semaphore::new(n as usize))),
            counts,
            spec,
        }
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The per-minute limiter's interval and burst tolerance (ms), if it has one.
    #[must_use]
    pub fn limiter_shape_ms(&self) -> Option<(i64, i64)> {
        self.limiter.as_ref().map(Gcra::shape_ms)
    }

    /// Whether a limit of this client holds across the fleet through Redis for a request
    /// (`free`: for free models): a daily request limit, or free-request limit, or rate.
    #[must_use]
    pub fn has_shared_limit(&self, free: bool) -> bool {
        let limits = &self.spec.limits;
        limits.requests_per_day.is_some()
            || limits.requests_per_minute.is_some()
            || (free && limits.free_requests_per_day.is_some())
    }

    /// Counts a request of `date` (`free`: a free-model one) as this replica's: Redis
    /// counted it for the fleet.
    pub fn count_mine(&self, date: u32, free: bool) {
        self.counts.requests.count_mine(date, false);
        if free {
            self.counts.free_requests.count_mine(date, false);
        }
    }

    /// Redis is away: this replica keeps to `1 / replicas` of what is left of each daily
    /// limit and of the per-minute rate (once; until [`Self::end_alone`]).
    pub fn go_alone(&self, date: u32, replicas: u32) {
        let limits = &self.spec.limits;
        let mut began = false;
        for (share, limit) in [
            (&self.counts.requests, limits.requests_per_day),
            (&self.counts.free_requests, limits.free_requests_per_day),
        ] {
            let limit = limit.map_or(u32::MAX, |l| u32::try_from(l).unwrap_or(u32::MAX));
            let fleet = share.mine_on(date).saturating_add(share.others_on(date));
            began |= share.go_alone(date, limit.saturating_sub(fleet), replicas);
        }
        if let (true, Some(limiter)) = (began, &self.limiter) {
            limiter.widen_for(replicas);
        }
    }

    /// Redis is back: the whole limits are the fleet's again, decided in Redis.
    pub fn end_alone(&self) {
        if self.counts.requests.alone_with() == 0 {
            return;
        }
        self.counts.requests.end_alone();
        self.counts.free_requests.end_alone();
        if let Some(limiter) = &self.limiter {
            limiter.widen_for(1);
        }
    }

    /// Whether the client may use `model`.
    #[must_use]
    pub fn allows(&self, model: &str) -> bool {
        self.allow.as_ref().is_none_or(|a| a.allows(model))
    }

    /// The fleet's requests (all, free) of quota day `date`: this replica's and, with
    /// `REDIS_URL`, the others' as the last merge said.
    #[must_use]
    pub fn requests_on(&self, date: u32) -> (u64, u64) {
        let fleet = |share: &Share| u64::from(share.mine_on(date) + share.others_on(date));
        (
            fleet(&self.counts.requests),
            fleet(&self.counts.free_requests),
        )
    }

    /// The fleet's tokens and cost of quota day `date`, like [`Self::requests_on`].
    #[must_use]
    pub fn spent_on(&self, date: u32) -> Usage {
        let mine = self.counts.spent.today(date);
        let others = self.counts.others_spent.on(date);
        Usage::from_parts(std::array::from_fn(|i| {
            mine.parts()[i].saturating_add(others.parts()[i])
        }))
    }

    /// Lifetime requests sent upstream.
    #[must_use]
    pub fn lifetime_requests(&self) -> u64 {
        self.counts.lifetime[0].load(Relaxed)
    }

    /// Refusals of quota day `date`, by reason.
    pub fn refused_on(&self, date: u32) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        REFUSALS
            .iter()
            .zip(&self.counts.refused)
            .map(move |(name, word)| (*name, count_in(word.load(Relaxed), date)))
    }

    /// Counts a refusal of `date`, and logs it (at most a line a second per reason).
    pub fn count_refused(&self, why: Refused, date: u32) {
        bump(&self.counts.refused[why as usize], date);
        // The chart counts every request, the proxy's own 429s among them.
        let now = crate::keys::now_ms();
        self.counts.history.add(Tally::Requests, 1, now);
        if why != Refused::Model {
            self.counts.history.add(Tally::Proxy429, 1, now);
        }
        if self.counts.refusal_lines[why as usize].allow(now) {
            log::warn!(
                "refused a request of client {}: {} (today: {})",
                self.name(),
                REFUSALS[why as usize],
                count_in(self.counts.refused[why as usize].load(Relaxed), date)
            );
        }
    }

    /// Its limits and today's use, as `/key_status` shows them.
    #[must_use]
    pub fn to_json(&self, date: u32) -> Value {
        let limits = &self.spec.limits;
        let (requests, free) = self.requests_on(date);
        let today = self.spent_on(date);
        let refused: serde_json::Map<String, Value> = REFUSALS
            .iter()
            .zip(&self.counts.refused)
            .map(|(name, word)| {
                (
                    (*name).to_owned(),
                    json!(count_in(word.load(Relaxed), date)),
                )
            })
            .collect();
        json!({
            "name": self.spec.name,
            "models": self.spec.models,
            "limits": {
                "requests_per_minute": limits.requests_per_minute,
                "burst": limits.burst,
                "requests_per_day": limits.requests_per_day,
                "free_requests_per_day": limits.free_requests_per_day,
                "tokens_per_day": limits.tokens_per_day,
                "usd_per_day": limits.nano_usd_per_day.map(|n| n as f64 / 1e9),
                "max_concurrent": limits.max_concurrent,
                "weight": limits.weight,
            },
            "today": {
                "requests": requests,
                "free_requests": free,
                "prompt_tokens": today.prompt_tokens,
                "completion_tokens": today.completion_tokens,
                "cost": today.cost_nano as f64 / 1e9,
                "refused": refused,
            },
            "in_flight": self.counts.in_flight.load(Relaxed),
            "waiting": self.counts.waiting.load(Relaxed),
            "history": self.counts.history.to_json(crate::keys::now_ms()),
            "lifetime": {
                "requests": self.counts.lifetime[0].load(Relaxed),
                "free_requests": self.counts.lifetime[1].load(Relaxed),
                "usage": self.counts.spent.lifetime().to_json(),
            },
        })
    }
}

/// Every configured client, found by the SHA-256 of its key.
#[derive(Default)]
pub struct Clients {
    by_key: HashMap<[u8; 32], usize>,
    list: Box<[Arc<Client>]>,
}

impl Clients {
    /// The clients of `config`; each one named in `previous` (the configuration a reload
    /// replaces) keeps its counts.
    #[must_use]
    pub fn from_config(config: &Config, previous: Option<&Clients>) -> Self {
        let list: Box<[Arc<Client>]> = config
            .clients
            .iter()
            .cloned()
            .map(|spec| Arc::new(Client::new(spec, previous)))
            .collect();
        let by_key = list
            .iter()
            .enumerate()
            .map(|(i, c)| (c.spec.key_sha256, i))
            .collect();
        Clients { by_key, list }
    }

    /// The client whose key is `presented`, if any.
    #[must_use]
    pub fn find(&self, presented: &[u8]) -> Option<&Arc<Client>> {
        if self.list.is_empty() {
            return None;
        }
        let index = self.by_key.get(&crate::config::file::sha256(presented))?;
        Some(&self.list[*index])
    }

    #[must_use]
    pub fn all(&self) -> &[Arc<Client>] {
        &self.list
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}
