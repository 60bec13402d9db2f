//! Admitting a client's request before anything is sent: its allowlist (403),
//! its daily limits (429 at once, naming the limit and the client), then its
//! per-minute limit and concurrency, waited for up to `MAX_WAIT` first come
//! first served (then 429). A request takes its units of the daily counts when
//! admitted and gives them back if it never reached OpenRouter, so a request
//! counts once, when its first attempt is sent, and concurrent requests cannot
//! overshoot a daily limit.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;

use super::{Client, Counts, Refused};
use crate::error::ProxyError;
use crate::keys::{Calendar, Tally, Usage};
use crate::shared::clients::Admitted;
use crate::shared::Shared;

/// An admitted request of a client: the units it took and its concurrency permit, held
/// until its response ends.
pub struct Ticket {
    /// The client's counts (they outlive a reload that changes its limits).
    pub counts: Arc<Counts>,
    /// Its share of a contended free-model pool.
    pub weight: u32,
    /// How long it waited for its turn (per-minute limit, concurrency).
    pub waited: Duration,
    date: u32,
    free: bool,
    permit: Option<OwnedSemaphorePermit>,
    /// Where its units were taken.
    taken: Taken,
}

/// Where a request's units were taken.
pub enum Taken {
    /// Here (no Redis, no shared limit, or Redis away).
    Here,
    /// In Redis by its admission: a request that never reached OpenRouter is given back there.
    InRedis(Arc<Shared>),
    /// Not yet: its key's pick counts it for the fleet (a free request with `REDIS_URL`), so
    /// one that never picked has nothing to give back.
    AtPick,
}

/// The quota day's date and its end (epoch ms), for counts and `Retry-After`.
#[derive(Clone, Copy)]
pub struct Today {
    pub date: u32,
    pub end_ms: i64,
    pub now_ms: i64,
    /// `TIMEZONE`'s offset from UTC now (ms), for Redis to find the same quota day.
    pub offset_ms: i64,
}

impl Today {
    /// The quota day of `calendar` at `now_ms`.
    #[must_use]
    pub fn new(calendar: &Calendar, now_ms: i64) -> Today {
        let day = calendar.today(now_ms);
        Today {
            date: day.date,
            end_ms: day.end_ms,
            now_ms,
            offset_ms: calendar.utc_offset_ms(now_ms),
        }
    }
}

impl Client {
    /// Admits a request for `models` (its `model` and any fallbacks; `free`: free models
    /// only) or says why not; with `shared`, for the whole fleet.
    pub async fn admit<'m>(
        &self,
        mut models: impl Iterator<Item = &'m str>,
        free: bool,
        today: Today,
        max_wait: Duration,
        shared: Option<&Arc<Shared>>,
    ) -> Result<Ticket, ProxyError> {
        if let Some(model) = models.find(|m| !self.allows(m)) {
            self.count_refused(Refused::Model, today.date);
            return Err(ProxyError::Forbidden(format!(
                "model {model} is not allowed for client {}",
                self.name()
            )));
        }
        self.check_spend(today)?;
        let began = tokio::time::Instant::now();
        let permit = self.wait_turn(today, max_wait).await?;
        let taken = self
            .take_units(today, free, shared, began + max_wait)
            .await?;
        let waited = began.elapsed();
        self.counts.in_flight.fetch_add(1, Relaxed);
        Ok(Ticket {
            counts: Arc::clone(&self.counts),
            weight: self.spec.limits.weight,
            waited,
            date: today.date,
            free,
            permit,
            taken,
        })
    }

    /// Tokens and cost are known only when a request ends: one is admitted while today's
    /// total (the fleet's, as the last merge said) is under the limit, so the one that
    /// crosses it completes.
    fn check_spend(&self, today: Today) -> Result<(), ProxyError> {
        let limits = &self.spec.limits;
        let spent = self.spent_on(today.date);
        let tokens = spent.prompt_tokens.saturating_add(spent.completion_tokens);
        if let Some(limit) = limits.tokens_per_day.filter(|l| tokens >= *l) {
            return Err(self.over(
                Refused::TokensPerDay,
                "daily token limit",
                limit,
                limit,
                today,
            ));
        }
        if let Some(limit) = limits.nano_usd_per_day.filter(|l| spent.cost_nano >= *l) {
            let dollars = limit.div_ceil(1_000_000_000);
            return Err(self.over(
                Refused::UsdPerDay,
                "daily spending limit",
                limit,
                dollars,
                today,
            ));
        }
        Ok(())
    }

    /// Takes one unit of today's requests (and free requests), within the limits: in Redis
    /// for the fleet when the client has a shared limit and Redis is in use (returned, for
    /// a give-back), else here (within this replica's share while Redis is away). A free
    /// request for the fleet is counted by its key's pick, in the same round trip
    /// ([`Taken::AtPick`]); here it is only refused early if the fleet's count as last
    /// heard is at a limit.
    async fn take_units(
        &self,
        today: Today,
        free: bool,
        shared: Option<&Arc<Shared>>,
        deadline: tokio::time::Instant,
    ) -> Result<Taken, ProxyError> {
        let counts = &self.counts;
        let Some(shared) = shared.filter(|_| self.has_shared_limit(free)) else {
            self.take_here(today.date, free)
                .map_err(|why| self.refusal(why, today))?;
            return Ok(Taken::Here);
        };
        if free && shared.in_use() {
            self.reached(today.date, free)
                .map_err(|why| self.refusal(why, today))?;
            return Ok(Taken::AtPick);
        }
        // Until what is decided is counted here: a merge meanwhile does not count it twice.
        let _requests = counts.requests.unsettled();
        let _free = free.then(|| counts.free_requests.unsettled());
        match shared.admit(self, free, today, deadline).await {
            Admitted::Taken => Ok(Taken::InRedis(Arc::clone(shared))),
            Admitted::Over(why) => Err(self.refusal(why, today)),
            Admitted::Busy => Err(self.busy(today)),
            Admitted::Away => self
                .take_here(today.date, free)
                .map(|()| Taken::Here)
                .map_err(|why| self.refusal(why, today)),
        }
    }

    /// Takes the units here: within the fleet's count as last heard, or this replica's
    /// share of what is left while Redis is away.
    pub(crate) fn take_here(&self, date: u32, free: bool) -> Result<(), Refused> {
        let limits = &self.spec.limits;
        let counts = &self.counts;
        if !counts.requests.take_within(date, limits.requests_per_day) {
            return Err(Refused::RequestsPerDay);
        }
        if free
            && !counts
                .free_requests
                .take_within(date, limits.free_requests_per_day)
        {
            counts.requests.count_mine(date, true);
            return Err(Refused::FreeRequestsPerDay);
        }
        Ok(())
    }

    /// Whether the fleet's count as last heard is at a daily limit (nothing is taken).
    fn reached(&self, date: u32, free: bool) -> Result<(), Refused> {
        let limits = &self.spec.limits;
        let (requests, free_requests) = self.requests_on(date);
        if limits.requests_per_day.is_some_and(|l| requests >= l) {
            return Err(Refused::RequestsPerDay);
        }
        if free
            && limits
                .free_requests_per_day
                .is_some_and(|l| free_requests >= l)
        {
            return Err(Refused::FreeRequestsPerDay);
        }
        Ok(())
    }

    /// The 429 of daily limit `why` (the request or free-request limit).
    #[must_use]
    pub fn refusal(&self, why: Refused, today: Today) -> ProxyError {
        if why == Refused::FreeRequestsPerDay {
            self.over_free_requests(today)
        } else {
            self.over_requests(today)
        }
    }

    fn over_requests(&self, today: Today) -> ProxyError {
        let limit = self.spec.limits.requests_per_day.unwrap_or(0);
        self.over(
            Refused::RequestsPerDay,
            "daily request limit",
            limit,
            limit,
            today,
        )
    }

    fn over_free_requests(&self, today: Today) -> ProxyError {
        let limit = self.spec.limits.free_requests_per_day.unwrap_or(0);
        self.over(
            Refused::FreeRequestsPerDay,
            "daily free-request limit",
            limit,
            limit,
            today,
        )
    }

    /// The 429 of a daily limit: until the quota day ends, in OpenRouter's headers.
    fn over(&self, why: Refused, what: &str, shown: u64, limit: u64, today: Today) -> ProxyError {
        self.count_refused(why, today.date);
        let amount = if why == Refused::UsdPerDay {
            format!("${:.2}", shown as f64 / 1e9)
        } else {
            shown.to_string()
        };
        ProxyError::ClientLimit {
            message: format!("client {} reached its {what} ({amount})", self.name()),
            limit,
            reset_ms: today.end_ms,
            retry_after_secs: ((today.end_ms - today.now_ms).max(0) as u64).div_ceil(1000),
        }
    }

    /// Waits (up to `max_wait`) for the per-minute limit and a concurrency permit.
    async fn wait_turn(
        &self,
        today: Today,
        max_wait: Duration,
    ) -> Result<Option<OwnedSemaphorePermit>, ProxyError> {
        if self.limiter.is_none() && self.concurrency.is_none() {
            return Ok(None);
        }
        self.counts.waiting.fetch_add(1, Relaxed);
        let deadline = tokio::time::Instant::now() + max_wait;
        let turn = tokio::time::timeout_at(deadline, self.turn()).await;
        self.counts.waiting.fetch_sub(1, Relaxed);
        turn.map_err(|_| self.busy(today))
    }

    /// The 429 of a request that waited `MAX_WAIT` for its turn.
    #[must_use]
    pub fn busy(&self, today: Today) -> ProxyError {
        self.count_refused(Refused::Busy, today.date);
        ProxyError::ClientBusy {
            message: format!(
                "client {} is at its requests_per_minute or max_concurrent limit; waited MAX_WAIT",
                self.name()
            ),
            retry_after_secs: 1,
        }
    }

    /// The permit (first come first served), then a slot of the per-minute limit.
    async fn turn(&self) -> Option<OwnedSemaphorePermit> {
        let permit = match &self.concurrency {
            Some(semaphore) => Some(
                semaphore
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed"),
            ),
            None => None,
        };
        if let Some(limiter) = &self.limiter {
            while let Err(next_ms) = limiter.take(crate::keys::now_ms()) {
                let pause = (next_ms - crate::keys::now_ms()).max(1) as u64;
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
        permit
    }
}

impl Ticket {
    /// Whether its key's pick counts it for the fleet ([`Taken::AtPick`]).
    #[must_use]
    pub fn counted_at_pick(&self) -> bool {
        matches!(self.taken, Taken::AtPick)
    }

    /// The request ended: its permit goes back, what its answer used is counted, and if it
    /// never reached OpenRouter its units are given back (it does not count).
    pub fn release(self, sent: bool, usage: Option<Usage>) {
        let Ticket {
            counts,
            date,
            free,
            permit,
            taken,
            ..
        } = self;
        // The next waiting request may start now.
        drop(permit);
        counts.in_flight.fetch_sub(1, Relaxed);
        let now = crate::keys::now_ms();
        if let Some(usage) = usage {
            counts.spent.add(date, usage);
            let tokens = usage.prompt_tokens.saturating_add(usage.completion_tokens);
            counts.history.add(Tally::Tokens, tokens, now);
        }
        if sent {
            counts.lifetime[0].fetch_add(1, Relaxed);
            counts.history.add(Tally::Requests, 1, now);
            if free {
                counts.lifetime[1].fetch_add(1, Relaxed);
                counts.history.add(Tally::FreeRequests, 1, now);
            }
        } else {
            match &taken {
                Taken::AtPick => return,
                // Unsettled before it is given back here, settled once Redis' part ran.
                Taken::InRedis(shared) => shared.give_back_client(&counts, date, free),
                Taken::Here => {}
            }
            counts.requests.count_mine(date, true);
            if free {
                counts.free_requests.count_mine(date, true);
            }
        }
    }
}
