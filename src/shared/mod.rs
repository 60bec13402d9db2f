//! Several replicas, one quota: with `REDIS_URL`, every replica shares each
//! account's daily count, limiter and blocks, and each key's blocks, totals,
//! last use, probe and learned account, through one Redis (or Valkey).
//!
//! The local [`KeyPool`] stays what every decision reads; Redis is the authority
//! where it must be exact. A free-model pick chosen locally is confirmed by one
//! script in Redis ([`Shared::confirm`]), which checks the account's blocks,
//! count and limiter at Redis' clock and takes the unit and the slot, or says
//! why not (the next candidate is then tried). Paid picks never wait for Redis.
//! Everything else is merged both ways in the background every 250 ms
//! (`merge.rs`), at once when a refusal is learned. Each replica's contribution
//! to a count is its own absolute number (`u:<replica>`), so nothing is ever
//! counted twice. When Redis is away, the replica decides alone with its fair
//! share (`alone.rs`); its own count reaches Redis when it is back. Without
//! `REDIS_URL` none of this exists.

mod alone;
pub mod clients;
mod merge;
mod names;
pub mod probes;
mod scripts;

use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use log::{info, warn};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use rustls::pki_types::CertificateDer;
use tokio::sync::Notify;

use crate::clients::Client;
use crate::config::RedisTarget;
use crate::keys::{now_ms, Block, BlockReason, KeyPool, Pick};
use crate::observe::logging::plural;
use crate::worker::PerWorker;
pub use merge::start;
use names::Names;

// The state word: Relaxed, a flag read on its own (nothing else is published through it).
const CONNECTING: u8 = 0;
const IN_USE: u8 = 1;
const AWAY: u8 = 2;

/// The fleet's size assumed by a replica that never learned it (Redis away since it
/// started, nothing remembered): it takes a quarter of each account while alone.
pub const ASSUMED_FLEET: u32 = 4;

/// This replica's link to the fleet's shared state.
pub struct Shared {
    target: RedisTarget,
    /// One connection per server worker, plus one for the merge, probes and other threads:
    /// each is driven by the thread that uses it, so a pick does not wait on another thread.
    connections: PerWorker<ConnectionManager>,
    names: Names,
    state: AtomicU8,
    /// Serialises changes of `state` with what they do to the pool (taking or giving back
    /// the share decided alone), which run on different threads. Never on the request path.
    transition: Mutex<()>,
    /// Replicas alive at the last heartbeat (this one included); 0 while never known.
    fleet: AtomicU32,
    /// Since when (epoch ms) the heartbeat has counted fewer replicas than `fleet`; 0: it has not.
    fleet_smaller_since: AtomicI64,
    /// This replica's name: in the heartbeat set and on its counts (`u:<name>`); kept in the
    /// state file, so a restarted replica goes on with its own counts.
    replica: OnceLock<String>,
    /// Wakes the merge task at once (a refusal was learned).
    nudge: Notify,
    /// The next free-model pick's number. It starts at the start's epoch ms × 1000, so a
    /// restarted replica (same name) never reuses a number its last run fenced.
    next_pick: AtomicU64,
    /// Picks this replica stopped waiting for (no answer in time, or the request went
    /// away), by account hash: the next merge fences them in Redis, so a script that still
    /// runs there counts nothing (the replica counted the unit itself, if it sent it).
    fences: Mutex<Vec<(String, u64)>>,
}

/// What Redis said about a free-model pick.
pub enum Confirmed {
    /// Taken for the fleet.
    Taken,
    /// The fleet's state refuses it; the local view has been told why.
    Refused,
    /// Redis did not answer in time: decide alone.
    Away,
    /// The client's daily limit for the fleet (or its share while alone) refuses the
    /// request; nothing was taken.
    ClientOver(crate::clients::Refused),
    /// The client's per-minute limit for the fleet has a slot in this many ms; nothing was
    /// taken.
    ClientWait(i64),
}

impl Shared {
    /// The link to `target`; connects lazily and reconnects by itself. A `rediss://` server's
    /// certificate is checked against the compiled-in roots and `extra_ca`.
    ///
    /// # Panics
    /// If the URL is not one the client accepts, which configuration parsing rules out.
    #[must_use]
    pub fn new(target: RedisTarget, extra_ca: &[CertificateDer<'static>]) -> Arc<Shared> {
        let client = if target.url.starts_with("rediss://") && !extra_ca.is_empty() {
            let roots = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(crate::tls::redis_roots_pem(extra_ca)),
            };
            redis::Client::build_with_tls(target.url.as_str(), roots)
        } else {
            redis::Client::open(target.url.as_str())
        }
        .expect("REDIS_URL and EXTRA_CA_FILE were validated");
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(target.timeout))
            .set_response_timeout(Some(target.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        // Lazy: each connects on its first use, from the runtime of the thread that uses it.
        let connections = PerWorker::new(|| {
            ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                .expect("a lazy connection manager needs no connection")
        });
        Arc::new(Shared {
            names: Names::new(&target.prefix),
            target,
            connections,
            state: AtomicU8::new(CONNECTING),
            transition: Mutex::new(()),
            fleet: AtomicU32::new(0),
            fleet_smaller_since: AtomicI64::new(0),
            replica: OnceLock::new(),
            nudge: Notify::new(),
            next_pick: AtomicU64::new(u64::try_from(now_ms()).unwrap_or(0) * 1_000),
            fences: Mutex::new(Vec::new()),
        })
    }

    /// The connection driven by this thread.
    fn connection(&self) -> ConnectionManager {
        self.connections.here().clone()
    }

    /// Runs `call` on this thread's connection. A connection Redis dropped (it restarted, a
    /// proxy in between closed it) is replaced and the call made once more: a stale
    /// connection is a reconnect, not Redis going away. Never after a timeout: the call may
    /// still run.
    async fn query<T, F, Fut>(&self, call: F) -> redis::RedisResult<T>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        match call(self.connection()).await {
            Err(err) if dropped(&err) => call(self.connection()).await,
            answer => answer,
        }
    }

    /// Adopts what the state file remembered of this replica: its name (so its counts in
    /// Redis are its own again) and the fleet's size. Before the first merge.
    pub fn remember(&self, replica: Option<String>, fleet: Option<u32>) {
        if let Some(name) = replica {
            let _ = self.replica.set(name);
        }
        if let Some(fleet) = fleet {
            self.fleet.store(fleet.max(1), Relaxed);
        }
    }

    /// This replica's name in the fleet.
    #[must_use]
    pub fn replica(&self) -> &str {
        self.replica.get_or_init(replica_name)
    }

    /// Whether Redis is in use now (false while it is away or not yet reached).
    #[must_use]
    pub fn in_use(&self) -> bool {
        self.state.load(Relaxed) == IN_USE
    }

    /// Replicas alive at the last heartbeat, or remembered; 0 while never known.
    #[must_use]
    pub fn fleet(&self) -> u32 {
        self.fleet.load(Relaxed)
    }

    /// The heartbeat counted `replicas` at `now_ms`. A larger fleet is believed at once; a
    /// smaller one only once it has been counted for a whole heartbeat window: a Redis that
    /// restarted empty counts only the replicas that merged since, and a share taken with
    /// that count would be too large.
    fn heard_fleet(&self, replicas: u32, now_ms: i64) {
        let replicas = replicas.max(1);
        if replicas >= self.fleet() {
            self.fleet.store(replicas, Relaxed);
            self.fleet_smaller_since.store(0, Relaxed);
            return;
        }
        let since = self.fleet_smaller_since.load(Relaxed);
        if since == 0 {
            self.fleet_smaller_since.store(now_ms, Relaxed);
        } else if now_ms - since >= scripts::HEARTBEAT_WINDOW_MS {
            self.fleet.store(replicas, Relaxed);
            self.fleet_smaller_since.store(0, Relaxed);
        }
    }

    /// Asks the merge task to share what this replica learned now rather than in 250 ms.
    pub fn nudge(&self) {
        self.nudge.notify_one();
    }

    /// The Redis key of account `index` and the arguments every account script starts
    /// with (see `scripts::ACCOUNT_PRELUDE`): offset, limit, interval, tolerance, replica.
    fn account_args(
        &self,
        pool: &KeyPool,
        index: usize,
        now_ms: i64,
    ) -> (String, (i64, u32, i64, i64, &str)) {
        let account = &pool.accounts()[index];
        let (interval, tolerance) = account.limiter().shape_ms();
        let offset = pool.calendar().utc_offset_ms(now_ms);
        let args = (
            offset,
            account.daily_limit(),
            interval,
            tolerance,
            self.replica(),
        );
        (self.names.account(pool, index), args)
    }

    /// Confirms free-model `pick` (taken locally from `pool` at `now_ms`) for the fleet, or
    /// takes it alone while Redis is away; a pick taken either way is counted as this
    /// replica's, and so is the request of `client` (one whose admission left it to the
    /// pick), in the same round trip. A refusal is applied to the local view (block,
    /// used-up quota or limiter spacing), so the next local pick looks elsewhere; its local
    /// unit and slot are given back.
    pub async fn confirm(
        &self,
        pool: &KeyPool,
        pick: Pick,
        now_ms: i64,
        client: Option<&Client>,
    ) -> Confirmed {
        let Some((account_index, date)) = pick.charged else {
            return Confirmed::Taken;
        };
        let account = &pool.accounts()[account_index];
        if !self.in_use() {
            return self.alone(pool, pick, client);
        }
        let (name, args) = self.account_args(pool, account_index, now_ms);
        let seq = self.next_pick.fetch_add(1, Relaxed);
        // Dropped last: a merge that sees the units settled sees them counted.
        let _unsettled = account.share.unsettled();
        let _client_unsettled = client.map(|c| {
            (
                c.counts.requests.unsettled(),
                c.counts.free_requests.unsettled(),
            )
        });
        let mut waiting = Waiting::new(self, &name, seq);
        let (mine, others) = merge::report(account, date, now_ms);
        let mut invocation = scripts::PICK.prepare_invoke();
        invocation
            .key(&name)
            .arg(args)
            .arg(date)
            .arg(mine)
            .arg(others)
            .arg(seq);
        if let Some(client) = client {
            let (limits, shape) = clients::limit_args(client);
            invocation
                .key(self.names.client(client.name()))
                .arg(client.counts.requests.mine_on(date))
                .arg(client.counts.free_requests.mine_on(date))
                .arg(limits)
                .arg(shape);
        }
        // A connection Redis dropped (it restarted) is replaced and the script sent again:
        // it cannot have run on a Redis that was not there (a connection cut between a
        // script's run and its answer would count one unit too many, never one too few).
        let invocation = &invocation;
        let call = self.query(|mut connection| async move {
            invocation.invoke_async::<Vec<i64>>(&mut connection).await
        });
        let answer = match tokio::time::timeout(self.target.timeout, call).await {
            Ok(Ok(answer)) => answer,
            failed => {
                let why = match failed {
                    Ok(Err(err)) => err.to_string(),
                    _ => "no answer in REDIS_TIMEOUT_MS".to_owned(),
                };
                // Fenced before the unit is counted: a merge that pushes the count fences
                // the script too, should it still run.
                waiting.fence();
                self.lost(pool, &why);
                return self.alone(pool, pick, client);
            }
        };
        waiting.answered();
        if answer.first() == Some(&0) {
            account.share.count_mine(date, false);
            if let Some(client) = client {
                client.end_alone();
                client.count_mine(date, true);
            }
            return Confirmed::Taken;
        }
        // Given back before the refusal is applied: giving back the local slot after
        // deferring the limiter would move it back one interval, before the fleet's.
        pool.give_back(pick);
        if let Some(refused) = clients::client_refused(&answer) {
            return match refused {
                Ok(why) => Confirmed::ClientOver(why),
                Err(wait_ms) => Confirmed::ClientWait(wait_ms.clamp(1, 60_000)),
            };
        }
        let wait = answer.get(1).copied().unwrap_or(0);
        // Bounded like every value read back: a wait is at most a quota day and a bit.
        let until = now_ms.saturating_add(wait.clamp(1, merge::FAR_MS));
        match answer.first().copied() {
            Some(1) => {
                let reason = answer
                    .get(2)
                    .and_then(|r| u8::try_from(*r).ok())
                    .and_then(BlockReason::from_u8)
                    .unwrap_or(BlockReason::PerMinuteLimit);
                account.block_until(
                    Block {
                        until_ms: until,
                        reason,
                    },
                    now_ms,
                );
            }
            Some(2) => account.raise_used(date, account.daily_limit()),
            Some(3) => account.limiter().defer_until(until),
            // `{4}` (fenced) answers only a pick nobody waits for any more.
            _ => {}
        }
        Confirmed::Refused
    }

    /// Takes `pick` (and `client`'s request) alone, within this replica's share: Redis is
    /// away.
    fn alone(&self, pool: &KeyPool, pick: Pick, client: Option<&Client>) -> Confirmed {
        let Some((account_index, date)) = pick.charged else {
            return Confirmed::Away;
        };
        if let Some(client) = client {
            client.go_alone(date, self.fleet_or_assumed());
            if let Err(why) = client.take_here(date, true) {
                pool.give_back(pick);
                return Confirmed::ClientOver(why);
            }
        }
        pool.accounts()[account_index].share.count_mine(date, false);
        Confirmed::Away
    }

    /// Gives back, here and in Redis, what [`Self::confirm`] took for `pick` (its attempt
    /// never reached OpenRouter); Redis' part in the background, never on the request path.
    pub fn give_back(self: &Arc<Self>, pool: &Arc<KeyPool>, pick: Pick) {
        let Some((account_index, date)) = pick.charged else {
            return;
        };
        // Unsettled until Redis' part ran: a merge in between does not count it again here.
        pool.accounts()[account_index].share.unsettle();
        pool.give_back(pick);
        let (interval, _) = pool.accounts()[account_index].limiter().shape_ms();
        let mut invocation = scripts::GIVE_BACK.prepare_invoke();
        invocation
            .key(self.names.account(pool, account_index))
            .arg(date)
            .arg(interval)
            .arg(self.replica());
        let pool = Arc::clone(pool);
        self.in_background(invocation, move || {
            pool.accounts()[account_index].share.settle();
        });
    }

    /// The fences to send with the next merge of account hash `name`.
    fn fences_of(&self, name: &str) -> Vec<u64> {
        let fences = self.fences.lock().unwrap_or_else(PoisonError::into_inner);
        fences
            .iter()
            .filter(|(hash, _)| hash == name)
            .map(|&(_, seq)| seq)
            .collect()
    }

    /// A merge of account hash `name` carrying `sent` was answered: they are in Redis.
    fn fenced(&self, name: &str, sent: &[u64]) {
        let mut fences = self.fences.lock().unwrap_or_else(PoisonError::into_inner);
        fences.retain(|(hash, seq)| hash != name || !sent.contains(seq));
    }

    /// Runs `invocation` in its own task, bounded by `REDIS_TIMEOUT_MS`, then `after`; its
    /// answer is not needed (the next merge brings the fleet's state back either way).
    fn in_background(
        self: &Arc<Self>,
        invocation: redis::ScriptInvocation<'static>,
        after: impl FnOnce() + Send + 'static,
    ) {
        let shared = Arc::clone(self);
        tokio::spawn(async move {
            // Never sent twice: a give-back that ran twice would lose a unit.
            let mut connection = shared.connection();
            let call = invocation.invoke_async::<i64>(&mut connection);
            let _ = tokio::time::timeout(shared.target.timeout, call).await;
            after();
        });
    }

    /// A reload put `pool` in force: while Redis is away, the accounts it added take their
    /// share too (the others carried theirs over).
    pub fn reloaded(&self, pool: &KeyPool) {
        let _guard = self
            .transition
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.state.load(Relaxed) == AWAY {
            alone::begin(pool, self.fleet_or_assumed(), now_ms());
        }
    }

    /// The fleet's size to decide alone with: the last one known, or [`ASSUMED_FLEET`].
    fn fleet_or_assumed(&self) -> u32 {
        match self.fleet() {
            0 => ASSUMED_FLEET,
            known => known,
        }
    }

    /// Redis answered a merge: shared decisions resume (said once, at the change).
    fn reached(&self, pool: &KeyPool) {
        if self.state.load(Relaxed) == IN_USE {
            return;
        }
        let _guard = self
            .transition
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match self.state.swap(IN_USE, Relaxed) {
            IN_USE => {}
            AWAY => {
                alone::end(pool);
                info!(
                    "Redis at {} is back: sharing key state with the fleet again ({}); what this replica sent meanwhile is in the shared counts",
                    self.target.shown(),
                    plural(self.fleet() as usize, "replica")
                );
            }
            _ => info!(
                "sharing key state through Redis at {} with {}",
                self.target.shown(),
                plural(self.fleet() as usize, "replica")
            ),
        }
    }

    /// Redis failed: this replica decides alone with its fair share until it is back.
    fn lost(&self, pool: &KeyPool, why: &str) {
        if self.state.load(Relaxed) == AWAY {
            return;
        }
        let _guard = self
            .transition
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.state.swap(AWAY, Relaxed) == AWAY {
            return;
        }
        let fleet = self.fleet_or_assumed();
        alone::begin(pool, fleet, now_ms());
        let known = if self.fleet() == 0 {
            " (the fleet's size was never learned: assumed)"
        } else {
            ""
        };
        warn!(
            "Redis at {} is unreachable ({why}): this replica decides alone with 1/{fleet}{known} of each account's remaining quota and rate until it is back",
            self.target.shown()
        );
    }
}

/// A pick or admission waiting for Redis' answer: if it is never answered (no answer in
/// time, or the request went away), it is fenced.
struct Waiting<'a> {
    shared: &'a Shared,
    hash: &'a str,
    seq: u64,
    open: bool,
}

impl<'a> Waiting<'a> {
    fn new(shared: &'a Shared, hash: &'a str, seq: u64) -> Waiting<'a> {
        Waiting {
            shared,
            hash,
            seq,
            open: true,
        }
    }

    /// Redis answered: nothing to fence.
    fn answered(&mut self) {
        self.open = false;
    }

    /// Redis did not answer: should the script still run, it counts nothing.
    fn fence(&mut self) {
        if std::mem::take(&mut self.open) {
            let mut fences = self
                .shared
                .fences
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            fences.push((self.hash.to_owned(), self.seq));
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.fence();
    }
}

/// Whether `err` says the connection went (and is being replaced), not that Redis is slow.
fn dropped(err: &redis::RedisError) -> bool {
    !err.is_timeout() && (err.is_connection_dropped() || err.is_unrecoverable_error())
}

/// A name for this replica in the heartbeat set: its pid and a random part.
fn replica_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{}-{random:016x}", std::process::id())
}
