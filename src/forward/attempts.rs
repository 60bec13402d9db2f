//! The attempt loop: pick a key → send → classify → react, until there is
//! something to hand to the client. Every retry is a fresh key selection, so
//! the limiter and quota accounting apply to every attempt.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::forward::pool::UpstreamBody;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::http::response::Parts;
use hyper::{Method, Request, Response, Uri};
use log::warn;

use crate::app::App;
use crate::clients::admission::Today;
use crate::clients::Client;
use crate::error::ProxyError;
use crate::forward::held::{hold, Held, HoldError, HoldLimits};
use crate::forward::outcome::{classify, error_and_user, Verdict};
use crate::forward::reaction::{reaction, Retry};
use crate::forward::route::{self, Route, Tried};
use crate::forward::upstream::{strip_hop_by_hop, unreachable_reason};
use crate::keys::{now_ms, Demand, KeyPool, Outcome, Pick, Shortage, Tally, Unavailable, Via};
use crate::shared::Confirmed;

/// The most of an upstream body held back to look for an error before committing to it.
pub const INSPECT_LIMIT: usize = 64 * 1024;
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What the proxy sends upstream, kept so every attempt can be rebuilt from it.
pub struct Outgoing {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub demand: Demand,
}

impl Outgoing {
    fn request(&self, authorization: &HeaderValue) -> Request<Full<Bytes>> {
        // Cloning `body` is a reference count, and so is each header value. The map is made
        // with room for the key, the `content-length` hyper adds and HTTP/1.1's `Host`: a
        // clone of the client's map is exactly full, and each of those inserts made it grow.
        let mut headers = HeaderMap::with_capacity(self.headers.len() + 3);
        for (name, value) in &self.headers {
            headers.append(name, value.clone());
        }
        headers.insert(AUTHORIZATION, authorization.clone());
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = headers;
        request
    }
}

/// Where the attempts ended.
pub enum Settled {
    /// A 200 event stream (from the journey's last key): relay it, inspecting events
    /// until the first content.
    Stream(Response<UpstreamBody>),
    /// An upstream answer to hand over as it is (a success, a refusal, or the last error once retries ran out).
    Answer(Response<Held>),
    /// The proxy's own error: no key in time, upstream unreachable or silent.
    Failed(ProxyError),
}

/// One request's attempts so far.
pub struct Journey {
    app: Arc<App>,
    /// The key pool its picks come from, and that pool's generation; see [`Self::follow`].
    pool: Arc<KeyPool>,
    generation: u64,
    pub outgoing: Outgoing,
    pub attempts: u32,
    pub last_key: Option<usize>,
    /// What the latest pick took, given back if its attempt never reached OpenRouter.
    last_pick: Option<Pick>,
    /// Keys that refused this request as too large for their balance (not parked for others).
    excluded: Vec<usize>,
    /// When the request arrived.
    started: Instant,
    /// When the latest upstream response headers arrived.
    pub headers_at: Option<Instant>,
    /// When the latest attempt was sent.
    sent_at: Option<Instant>,
    /// Who it is for, by name, and the client's weight: its place when free-model requests
    /// wait for the pool (the operator's requests wait as `operator`, weight 1).
    pub fair_share: (Arc<str>, u32),
    /// How long it waited on purpose, for its client's turn and for keys.
    pub waited: Duration,
    /// The model alias it names, and where it is in its candidates.
    pub route: Option<Route>,
    /// Moves to an alias' next candidate on the first pass: they are not retries.
    first_pass_moves: u32,
    /// The client whose request its first confirmed pick counts for the fleet (a free
    /// request with `REDIS_URL`, see `clients::admission::Taken::AtPick`); `None` once
    /// counted, or when its admission counted it.
    pub count_client: Option<Arc<Client>>,
}

/// What a request's record names of its journey.
#[derive(Clone)]
pub struct Trail {
    pub pool: Arc<KeyPool>,
    /// The key that answered last.
    pub key: usize,
    pub attempts: u32,
    /// For a model alias: the candidate that answered last, and how many were tried.
    pub tried: Option<Tried>,
}

/// What confirming a pick came to.
enum Confirmation {
    /// Taken (for the fleet, or alone).
    Picked(Pick),
    /// The fleet refused this key: pick again.
    Again,
    /// The client's per-minute limit for the fleet frees up in this many ms: pick again then.
    ClientWait(i64),
}

impl Journey {
    #[must_use]
    pub fn new(app: Arc<App>, outgoing: Outgoing, started: Instant) -> Self {
        let generation = app.generation();
        Journey {
            pool: app.keys(),
            generation,
            app,
            outgoing,
            attempts: 0,
            last_key: None,
            last_pick: None,
            excluded: Vec::new(),
            started,
            headers_at: None,
            sent_at: None,
            fair_share: (Arc::from("operator"), 1),
            waited: Duration::ZERO,
            route: None,
            first_pass_moves: 0,
            count_client: None,
        }
    }

    /// Sends the request as `route`'s candidates: the body with the current one as its
    /// model, and its demand (free or not).
    pub fn follow_route(&mut self, route: Route) {
        self.route = Some(route);
        self.send_current_candidate();
    }

    /// The body and demand of the route's current candidate.
    fn send_current_candidate(&mut self) {
        if let Some(route) = &self.route {
            self.outgoing.body = route.body();
            self.outgoing.demand = route.demand();
        }
    }

    /// The shared application state.
    #[must_use]
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// When the latest attempt must have shown its first token (`FIRST_TOKEN_TIMEOUT` after
    /// it was sent), if there is such a limit.
    #[must_use]
    pub fn first_token_deadline(&self) -> Option<tokio::time::Instant> {
        let limit = self.app.config.first_token_timeout;
        if limit.is_zero() {
            return None;
        }
        let sent = self.sent_at?;
        tokio::time::Instant::from_std(sent).checked_add(limit)
    }

    /// The key pool its picks come from, shared (for a record that outlives the journey).
    #[must_use]
    pub fn pool_arc(&self) -> Arc<KeyPool> {
        Arc::clone(&self.pool)
    }

    /// The key that answered last, its pool, the attempts made and the alias' candidate:
    /// what the request's record names.
    #[must_use]
    pub fn served(&self) -> Option<Trail> {
        let key = self.last_key?;
        Some(Trail {
            pool: self.pool_arc(),
            key,
            attempts: self.attempts,
            tried: self.route.as_ref().map(Route::tried),
        })
    }

    /// Moves the journey onto the pool in force when a reload replaced its own: the keys
    /// it used, excluded or took quota with are found again by fingerprint (a key the
    /// reload removed is forgotten), so what it learns from now on lands where it counts.
    fn follow(&mut self) {
        let generation = self.app.generation();
        if generation == self.generation {
            return;
        }
        let live = self.app.keys();
        let old = std::mem::replace(&mut self.pool, live);
        self.generation = generation;
        let moved = |index: usize| self.pool.index_of(&old.keys()[index].fingerprint);
        self.last_key = self.last_key.and_then(moved);
        self.excluded = self.excluded.iter().filter_map(|&k| moved(k)).collect();
        self.last_pick = self.last_pick.and_then(|pick| {
            let index = moved(pick.index)?;
            let account = self.pool.keys()[index].account();
            Some(Pick {
                index,
                charged: pick.charged.map(|(_, date)| (account, date)),
                ..pick
            })
        });
    }

    /// Counts how the attempt with the last key ended (and, for an alias, that its
    /// candidate answered).
    pub fn record(&mut self, outcome: Outcome) {
        self.follow();
        if let Some(key) = self.last_key {
            self.pool.record(key, outcome);
        }
        if let (Outcome::Success, Some(route)) = (outcome, &self.route) {
            let date = self.pool.calendar().today(now_ms()).date;
            route.alias.served(route.candidate, date);
        }
    }

    /// Runs attempts until one can be handed to the client, or retries run out.
    pub async fn settle(&mut self) -> Settled {
        let mut last_answer: Option<Response<Held>> = None;
        loop {
            let key = match self.acquire().await {
                Ok(pick) => {
                    self.last_pick = Some(pick);
                    pick.index
                }
                Err(err) => return last_answer.map_or(Settled::Failed(err), Settled::Answer),
            };
            self.attempts += 1;
            self.last_key = Some(key);
            let (verdict, answer) = match self.send(key).await {
                Ok(response) => match self.inspect(response).await {
                    Inspected::Done(settled) => return settled,
                    Inspected::Failed(verdict, answer) => (verdict, answer),
                },
                Err(Sent::Failed(verdict)) => (verdict, None),
                Err(Sent::TimedOut) => {
                    self.record(Outcome::Error);
                    return Settled::Failed(ProxyError::UpstreamTimeout);
                }
            };
            if answer.is_some() {
                last_answer = answer;
            }
            match self.plan(verdict) {
                Some(delay) => tokio::time::sleep(delay).await,
                None => {
                    return last_answer
                        .map_or_else(|| Settled::Failed(failure_of(verdict)), Settled::Answer)
                }
            }
        }
    }

    /// Picks a key (see [`Self::pick_or_wait`]), adding the time it waited to [`Self::waited`].
    async fn acquire(&mut self) -> Result<Pick, ProxyError> {
        let began = Instant::now();
        let picked = self.pick_or_wait().await;
        self.waited += began.elapsed();
        picked
    }

    /// Picks a key, waiting up to `MAX_WAIT` (and, for retries, within `MAX_RETRY_TIME`)
    /// for a limiter or block to let one through; each try picks from the pool in force.
    async fn pick_or_wait(&mut self) -> Result<Pick, ProxyError> {
        let config = &self.app.config;
        let wait = if self.attempts == 0 {
            config.max_wait
        } else {
            config.max_wait.min(self.remaining())
        };
        let deadline = now_ms().saturating_add(wait.as_millis() as i64);
        if self.takes_turns() && self.app.fair.has_waiters() {
            // Others wait already: a newcomer does not take the slot the next one waits for.
            return self.acquire_in_turn(deadline).await;
        }
        loop {
            self.follow();
            let now = now_ms();
            match self.pool.pick(self.outgoing.demand, now, &self.excluded) {
                Ok(pick) => match self.confirm(pick, now).await? {
                    Confirmation::Picked(pick) => return Ok(pick),
                    // The fleet refused it (its account is used up, blocked or throttled
                    // for the fleet); the local view knows now: pick again.
                    Confirmation::Again => {}
                    Confirmation::ClientWait(wait_ms) => {
                        self.client_wait(wait_ms, deadline).await?;
                    }
                },
                Err(unavailable) if unavailable.until_ms <= deadline => {
                    if self.takes_turns() {
                        return self.acquire_in_turn(deadline).await;
                    }
                    let pause = (unavailable.until_ms - now).max(1);
                    tokio::time::sleep(Duration::from_millis(pause as u64)).await;
                }
                Err(unavailable) => return Err(no_key(&self.pool, unavailable)),
            }
        }
    }

    /// Whether this request waits for the pool in its client's fair share: a free-model
    /// request, with clients configured (without them, first come first served).
    fn takes_turns(&self) -> bool {
        self.outgoing.demand == Demand::Free && self.app.fair.enabled()
    }

    /// Waits for the pool in the fair queue (see `clients::fair`): only the request next
    /// in line picks; the others wait until the line moves, up to `deadline`.
    async fn acquire_in_turn(&mut self, deadline: i64) -> Result<Pick, ProxyError> {
        let app = Arc::clone(&self.app);
        let (client, weight) = self.fair_share.clone();
        let mut place = app.fair.join(&client, weight);
        loop {
            self.follow();
            let now = now_ms();
            if !place.is_next() {
                let left = Duration::from_millis((deadline - now).max(0) as u64);
                if tokio::time::timeout(left, place.changed()).await.is_err() {
                    let unavailable = self
                        .pool
                        .unavailable(Demand::Free, now_ms(), &self.excluded);
                    return Err(no_key(&self.pool, unavailable));
                }
                continue;
            }
            match self.pool.pick(self.outgoing.demand, now, &self.excluded) {
                Ok(pick) => match self.confirm(pick, now).await? {
                    Confirmation::Picked(pick) => {
                        place.served();
                        return Ok(pick);
                    }
                    Confirmation::Again => {}
                    Confirmation::ClientWait(wait_ms) => {
                        // Its client's rate is the bottleneck, not the pool: the line moves
                        // on without it, and it joins again once its client has a slot.
                        drop(place);
                        self.client_wait(wait_ms, deadline).await?;
                        place = app.fair.join(&client, weight);
                    }
                },
                Err(unavailable) if unavailable.until_ms <= deadline => {
                    let pause = (unavailable.until_ms - now).max(1);
                    tokio::time::sleep(Duration::from_millis(pause as u64)).await;
                }
                Err(unavailable) => return Err(no_key(&self.pool, unavailable)),
            }
        }
    }

    /// With `REDIS_URL`, confirms a free-model pick for the whole fleet in Redis, with the
    /// request's client if its first pick counts it, or takes it alone while Redis is away.
    /// A client's daily limit reached for the fleet ends the request with its 429.
    async fn confirm(&mut self, pick: Pick, now: i64) -> Result<Confirmation, ProxyError> {
        let (Some(shared), Some(_)) = (&self.app.shared, pick.charged) else {
            return Ok(Confirmation::Picked(pick));
        };
        let client = self.count_client.as_deref();
        let via = match shared.confirm(&self.pool, pick, now, client).await {
            Confirmed::Taken => Via::Redis,
            Confirmed::Away => Via::Alone,
            Confirmed::Refused => return Ok(Confirmation::Again),
            Confirmed::ClientWait(wait_ms) => return Ok(Confirmation::ClientWait(wait_ms)),
            Confirmed::ClientOver(why) => {
                let client = client.expect("only a client's pick is refused for it");
                return Err(client.refusal(why, Today::new(self.pool.calendar(), now)));
            }
        };
        self.count_client = None;
        Ok(Confirmation::Picked(Pick { via, ..pick }))
    }

    /// Waits `wait_ms` for the client's per-minute limit, or says it is busy if that is
    /// past `deadline`.
    async fn client_wait(&self, wait_ms: i64, deadline: i64) -> Result<(), ProxyError> {
        let now = now_ms();
        if now + wait_ms > deadline {
            let client = self
                .count_client
                .as_ref()
                .expect("only a client's pick waits for it");
            return Err(client.busy(Today::new(self.pool.calendar(), now)));
        }
        tokio::time::sleep(Duration::from_millis(wait_ms as u64)).await;
        Ok(())
    }

    fn remaining(&self) -> Duration {
        self.app
            .config
            .max_retry_time
            .saturating_sub(self.started.elapsed())
    }

    /// Sends one attempt with key `key` and waits (bounded by `UPSTREAM_TIMEOUT`, 0 = unbounded) for its headers.
    async fn send(&mut self, key: usize) -> Result<Response<UpstreamBody>, Sent> {
        let slot = &self.pool.keys()[key];
        slot.count_sent();
        let request = self.outgoing.request(&slot.authorization);
        let metrics = &self.app.metrics;
        metrics.upstream_attempts.fetch_add(1, Relaxed);
        if self.attempts == 1 {
            metrics.before_upstream.observe(self.started.elapsed());
        } else {
            metrics.upstream_retries.fetch_add(1, Relaxed);
        }
        let sent = Instant::now();
        self.sent_at = Some(sent);
        let pending = self.app.upstream.request(request);
        let result = match self.header_wait() {
            None => pending.await,
            Some((limit, on_timeout)) => tokio::time::timeout(limit, pending)
                .await
                .map_err(|_| on_timeout)?,
        };
        let response = result.map_err(|err| {
            // A connect error (refused, DNS, TLS handshake, connect timeout) means the request
            // never left; anything later may have been received and acted on.
            let host = self.app.config.upstream.authority.host();
            if err.is_connect() {
                warn!(
                    "could not reach OpenRouter: {}",
                    unreachable_reason(&err, host)
                );
                Sent::Failed(Verdict::Unreached)
            } else {
                warn!(
                    "the connection to OpenRouter failed after the request was sent: {}",
                    unreachable_reason(&err, host)
                );
                Sent::Failed(Verdict::Broken {
                    nothing_generated: false,
                })
            }
        })?;
        self.app.breaker.reached();
        let now = Instant::now();
        metrics.upstream_headers.observe(now - sent);
        self.headers_at = Some(now);
        Ok(response)
    }

    /// How long to wait for response headers, and what it means when they do not come: the
    /// shorter of `UPSTREAM_TIMEOUT` (a 504, not retried) and `FIRST_TOKEN_TIMEOUT` (retried).
    fn header_wait(&self) -> Option<(Duration, Sent)> {
        let config = &self.app.config;
        let upstream = Some(config.upstream_timeout).filter(|t| !t.is_zero());
        let first_token = Some(config.first_token_timeout).filter(|t| !t.is_zero());
        match (upstream, first_token) {
            (Some(u), Some(f)) if f < u => Some((f, Sent::Failed(Verdict::NoFirstToken))),
            (Some(u), _) => Some((u, Sent::TimedOut)),
            (None, Some(f)) => Some((f, Sent::Failed(Verdict::NoFirstToken))),
            (None, None) => None,
        }
    }

    /// Looks at an upstream response (holding back at most [`INSPECT_LIMIT`] of its body) and classifies it.
    async fn inspect(&mut self, response: Response<UpstreamBody>) -> Inspected {
        let (mut head, body) = response.into_parts();
        strip_hop_by_hop(&mut head.headers);
        let status = head.status;
        if status.is_informational() {
            // A 101 switch the proxy never asked for: relaying it bare (its Upgrade header is
            // hop-by-hop) would leave the client with a broken exchange; the proxy does not tunnel.
            self.record(Outcome::Error);
            return Inspected::Done(Settled::Failed(ProxyError::UpstreamProtocol(
                "OpenRouter switched protocols (101), which the proxy does not tunnel",
            )));
        }
        let content_type = head
            .headers
            .get(CONTENT_TYPE)
            .map_or(&b""[..], HeaderValue::as_bytes);
        let is = |prefix: &[u8]| {
            content_type.len() >= prefix.len()
                && content_type[..prefix.len()].eq_ignore_ascii_case(prefix)
        };
        if status.is_success() && is(b"text/event-stream") {
            // Recorded by the relay once the stream shows content or an error.
            return Inspected::Done(Settled::Stream(Response::from_parts(head, body)));
        }
        if status.is_success() && !is(b"application/json") {
            self.record(Outcome::Success);
            return Inspected::Done(Settled::Answer(Response::from_parts(
                head,
                Held {
                    bytes: Bytes::new(),
                    rest: Some(body),
                },
            )));
        }
        self.inspect_held(head, body).await
    }

    /// Holds the start of a JSON or error body (at most [`INSPECT_LIMIT`]) and classifies it,
    /// including an error object inside a 200.
    async fn inspect_held(&mut self, head: Parts, body: UpstreamBody) -> Inspected {
        let status = head.status;
        // A success body may take as long as the generation, but its first JSON byte must come
        // within FIRST_TOKEN_TIMEOUT; an error body is bounded by UPSTREAM_TIMEOUT.
        let start = if status.is_success() {
            let idle = self.app.config.stream_idle_timeout;
            let limits = HoldLimits {
                first_byte_by: self.first_token_deadline(),
                idle: (!idle.is_zero()).then_some(idle),
            };
            match hold(body, INSPECT_LIMIT, limits).await {
                Err(HoldError::NoFirstByte) => {
                    return Inspected::Failed(Verdict::NoFirstToken, None);
                }
                Err(HoldError::Stalled) => {
                    // Generated (and counted by OpenRouter) at least in part: not retried.
                    self.record(Outcome::Error);
                    let secs = idle.as_secs();
                    return Inspected::Done(Settled::Failed(ProxyError::UpstreamStalled { secs }));
                }
                result => result.ok(),
            }
        } else if self.app.config.upstream_timeout.is_zero() {
            hold(body, INSPECT_LIMIT, HoldLimits::default()).await.ok()
        } else {
            let holding = hold(body, INSPECT_LIMIT, HoldLimits::default());
            tokio::time::timeout(self.app.config.upstream_timeout, holding)
                .await
                .ok()
                .and_then(Result::ok)
        };
        let Some(start) = start else {
            // OpenRouter answered, but the body broke off: an error status had generated nothing.
            return Inspected::Failed(
                Verdict::Broken {
                    nothing_generated: !status.is_success(),
                },
                None,
            );
        };
        let (error, user) = if start.rest.is_none() {
            error_and_user(&start.bytes)
        } else {
            (None, None)
        };
        // An error answer names the account behind the key: keys of one account share its quota.
        if let (Some(_), Some(user)) = (&error, &user) {
            self.follow();
            if let Some(key) = self.last_key {
                self.pool.learn_user(key, user, now_ms());
            }
        }
        let verdict = classify(status.as_u16(), &head.headers, error.as_ref());
        let answer = Response::from_parts(head, start);
        match verdict {
            Verdict::Success => {
                self.record(Outcome::Success);
                Inspected::Done(Settled::Answer(answer))
            }
            // A model that cannot be served is the request's answer, unless an alias has
            // another candidate to try.
            Verdict::Rejected | Verdict::NoSuchModel
                if verdict == Verdict::Rejected || self.route.is_none() =>
            {
                self.record(Outcome::Error);
                self.app.metrics.count_error(verdict.class());
                Inspected::Done(Settled::Answer(answer))
            }
            _ => Inspected::Failed(verdict, Some(answer)),
        }
    }

    /// Reacts to a failed attempt with the last key: records it, carries out what
    /// [`reaction`] says for the verdict, and returns how long to wait before the
    /// next attempt, or `None` when no retry is allowed.
    pub fn plan(&mut self, verdict: Verdict) -> Option<Duration> {
        let now = now_ms();
        let react = reaction(verdict, now);
        let first_pass_move = self.move_on_if_model_failed(verdict, now);
        self.record(react.outcome);
        if react.outcome == Outcome::RateLimited {
            self.pool.tally(self.last_key, Tally::OpenRouter429, 1, now);
        }
        self.app.metrics.count_error(verdict.class());
        if react.give_back {
            if let Some(pick) = self.last_pick.take() {
                match (&self.app.shared, pick.via) {
                    (Some(shared), Via::Redis) => shared.give_back(&self.pool, pick),
                    _ => self.pool.give_back(pick),
                }
            }
            self.app.breaker.unreached();
        }
        if let (Some(shared), true) = (
            &self.app.shared,
            react.block.is_some() || react.exhaust_daily.is_some(),
        ) {
            // The fleet learns the refusal now, not at the next merge.
            shared.nudge();
        }
        if let Some(key) = self.last_key {
            if let Some((until, reason)) = react.block {
                self.pool.block(key, until, reason, now);
            }
            if let Some(reset) = react.exhaust_daily {
                self.pool.exhaust_daily(key, reset, now);
            }
            if react.exclude {
                self.excluded.push(key);
            }
        }
        let delay = match react.retry {
            // An alias' next candidate, on the first pass: at once, and not a retry.
            _ if first_pass_move => {
                self.first_pass_moves += 1;
                Some(Duration::ZERO)
            }
            Retry::No => None,
            Retry::Now => Some(Duration::ZERO),
            Retry::After(delay) => Some(delay),
            Retry::Backoff => Some(self.backoff()),
            Retry::BackoffIfIdempotent => self.outgoing_is_idempotent().then(|| self.backoff()),
            Retry::BackoffUnlessDown => (!self.app.breaker.is_open()).then(|| self.backoff()),
        };
        let retries = self.attempts - self.first_pass_moves;
        let allowed = delay
            .filter(|delay| retries <= self.app.config.max_retries && *delay <= self.remaining());
        if let Some(key) = self.last_key {
            log_reaction(&self.pool, key, verdict, allowed, self.attempts);
        }
        allowed
    }

    /// For an alias, moves to the next candidate after a failure of the model's own; true
    /// when that move is on the first pass (not a retry).
    fn move_on_if_model_failed(&mut self, verdict: Verdict, now: i64) -> bool {
        let (Some(route), Some(skip_ms)) = (&mut self.route, route::model_failure(verdict)) else {
            return false;
        };
        let first_pass = !route.first_pass_done();
        route.move_on(skip_ms, now, self.pool.calendar().today(now).date);
        self.send_current_candidate();
        first_pass
    }

    /// Whether sending the request twice cannot do anything twice (RFC 9110 safe methods).
    fn outgoing_is_idempotent(&self) -> bool {
        matches!(
            self.outgoing.method,
            Method::GET | Method::HEAD | Method::OPTIONS
        )
    }

    /// Exponential backoff from `RETRY_BACKOFF`, doubling per attempt, with jitter in [50%, 100%).
    fn backoff(&self) -> Duration {
        let exponent = self.attempts.saturating_sub(1).min(16);
        let full = self
            .app
            .config
            .retry_backoff
            .saturating_mul(1 << exponent)
            .min(MAX_BACKOFF);
        full.mul_f64(0.5 + jitter() * 0.5)
    }
}

/// A random number in [0, 1) without a dependency: std's per-instance random hasher keys.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// Why an attempt produced no response head.
enum Sent {
    Failed(Verdict),
    TimedOut,
}

/// The proxy's own error when retries end without any upstream answer to hand over.
fn failure_of(verdict: Verdict) -> ProxyError {
    match verdict {
        Verdict::Broken { .. } => ProxyError::UpstreamBroken,
        Verdict::NoFirstToken => ProxyError::NoFirstToken,
        _ => ProxyError::UpstreamUnreachable,
    }
}

enum Inspected {
    Done(Settled),
    /// A failed attempt: its verdict, and the upstream answer to return if retries run out.
    Failed(Verdict, Option<Response<Held>>),
}

fn log_reaction(
    pool: &KeyPool,
    key: usize,
    verdict: Verdict,
    retry_in: Option<Duration>,
    attempts: u32,
) {
    if !log::log_enabled!(log::Level::Warn) {
        return;
    }
    let slot = &pool.keys()[key];
    let calendar = pool.calendar();
    let block = slot.block_at(now_ms()).map(|b| {
        format!(
            "; blocked ({}) until {}",
            b.reason.as_str(),
            calendar.rfc3339(b.until_ms)
        )
    });
    let next = match retry_in {
        Some(delay) => format!("retrying in {:.1}s", delay.as_secs_f64()),
        None => format!("giving up after {attempts} attempt(s)"),
    };
    warn!(
        "key {} hit {}{}; {next}",
        slot.id,
        verdict.class(),
        block.unwrap_or_default()
    );
}

/// The 429 the client gets when no key can serve in time.
fn no_key(pool: &KeyPool, unavailable: Unavailable) -> ProxyError {
    let wait_ms = (unavailable.until_ms - now_ms()).max(0) as u64;
    let when = pool.calendar().rfc3339(unavailable.until_ms);
    let message = match unavailable.reason {
        Shortage::Throttled => format!(
            "all keys are throttled by the free-model per-minute limit; next free slot at {when}"
        ),
        Shortage::DailyLimit => {
            format!("all keys reached their daily free-model limit until {when}")
        }
        Shortage::Blocked => format!("all keys are blocked after upstream refusals until {when}"),
    };
    ProxyError::NoKey {
        message,
        retry_after_secs: wait_ms.div_ceil(1000).max(1),
    }
}
