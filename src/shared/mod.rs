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
//! (`merge.rs`), at once when a refusal is learned. When Redis is away, the
//! replica decides alone with its fair share (`alone.rs`) and adds what it
//! counted when Redis is back. Without `REDIS_URL` none of this exists.

mod alone;
mod merge;
mod names;
pub mod probes;
mod scripts;

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::Notify;

use crate::config::RedisTarget;
use crate::keys::{now_ms, Block, BlockReason, KeyPool, Pick};
use crate::worker::PerWorker;
pub use merge::start;
use names::Names;

// The state word: Relaxed, a flag read on its own (nothing else is published through it).
const CONNECTING: u8 = 0;
const IN_USE: u8 = 1;
const AWAY: u8 = 2;

/// This replica's link to the fleet's shared state.
pub struct Shared {
    target: RedisTarget,
    /// One connection per server worker, plus one for the merge, probes and other threads:
    /// each is driven by the thread that uses it, so a pick does not wait on another thread.
    connections: PerWorker<ConnectionManager>,
    names: Names,
    state: AtomicU8,
    /// Replicas alive at the last heartbeat (this one included).
    fleet: AtomicU32,
    /// This replica's name in the fleet's heartbeat set.
    replica: String,
    /// Wakes the merge task at once (a refusal was learned).
    nudge: Notify,
}

/// What Redis said about a free-model pick.
pub enum Confirmed {
    /// Taken for the fleet.
    Taken,
    /// The fleet's state refuses it; the local view has been told why.
    Refused,
    /// Redis did not answer in time: decide alone.
    Away,
}

impl Shared {
    /// The link to `target`; connects lazily and reconnects by itself.
    ///
    /// # Panics
    /// If the URL is not one the client accepts, which configuration parsing rules out.
    #[must_use]
    pub fn new(target: RedisTarget) -> Arc<Shared> {
        let client = redis::Client::open(target.url.as_str()).expect("REDIS_URL was validated");
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
            fleet: AtomicU32::new(1),
            replica: replica_name(),
            nudge: Notify::new(),
        })
    }

    /// The connection driven by this thread.
    fn connection(&self) -> ConnectionManager {
        self.connections.here().clone()
    }

    /// Whether Redis is in use now (false while it is away or not yet reached).
    #[must_use]
    pub fn in_use(&self) -> bool {
        self.state.load(Relaxed) == IN_USE
    }

    /// Replicas alive at the last heartbeat.
    #[must_use]
    pub fn fleet(&self) -> u32 {
        self.fleet.load(Relaxed)
    }

    /// Asks the merge task to share what this replica learned now rather than in 250 ms.
    pub fn nudge(&self) {
        self.nudge.notify_one();
    }

    /// Confirms free-model `pick` (taken locally from `pool` at `now_ms`) for the fleet.
    /// A refusal is applied to the local view (block, used-up quota or limiter spacing),
    /// so the next local pick looks elsewhere; its local unit and slot are given back.
    pub async fn confirm(&self, pool: &KeyPool, pick: Pick, now_ms: i64) -> Confirmed {
        let Some((account_index, date)) = pick.charged else {
            return Confirmed::Taken;
        };
        let account = &pool.accounts()[account_index];
        let (interval, tolerance) = account.limiter().shape_ms();
        let day_end = pool.calendar().today(now_ms).end_ms;
        let mut invocation = scripts::PICK.prepare_invoke();
        invocation
            .key(self.names.account(pool, account_index))
            .arg(date)
            .arg(account.daily_limit())
            .arg(interval)
            .arg(tolerance)
            .arg(day_end);
        let mut connection = self.connection();
        let answer = tokio::time::timeout(
            self.target.timeout,
            invocation.invoke_async::<Vec<i64>>(&mut connection),
        )
        .await;
        let answer = match answer {
            Ok(Ok(answer)) => answer,
            Ok(Err(err)) => {
                self.lost(pool, &err.to_string());
                return Confirmed::Away;
            }
            Err(_) => {
                self.lost(pool, "no answer in REDIS_TIMEOUT_MS");
                return Confirmed::Away;
            }
        };
        if answer.first() == Some(&0) {
            return Confirmed::Taken;
        }
        // Given back before the refusal is applied: giving back the local slot after
        // deferring the limiter would move it back one interval, before the fleet's.
        pool.give_back(pick);
        let wait = answer.get(1).copied().unwrap_or(0);
        let until = now_ms.saturating_add(wait.max(1));
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
            _ => account.limiter().defer_until(until),
        }
        Confirmed::Refused
    }

    /// Gives back in Redis what [`Self::confirm`] took for `pick` (its attempt never reached
    /// OpenRouter); in the background, never on the request path.
    pub fn give_back(self: &Arc<Self>, pool: &KeyPool, pick: Pick) {
        let Some((account_index, date)) = pick.charged else {
            return;
        };
        let (interval, _) = pool.accounts()[account_index].limiter().shape_ms();
        let mut invocation = scripts::GIVE_BACK.prepare_invoke();
        invocation
            .key(self.names.account(pool, account_index))
            .arg(date)
            .arg(interval);
        self.in_background(invocation);
    }

    /// Runs `invocation` in its own task, bounded by `REDIS_TIMEOUT_MS`; its answer is not
    /// needed (the next merge brings the fleet's state back either way).
    fn in_background(self: &Arc<Self>, invocation: redis::ScriptInvocation<'static>) {
        let shared = Arc::clone(self);
        tokio::spawn(async move {
            let mut connection = shared.connection();
            let call = invocation.invoke_async::<i64>(&mut connection);
            let _ = tokio::time::timeout(shared.target.timeout, call).await;
        });
    }

    /// Redis answered a merge: shared decisions resume (said once, at the change).
    fn reached(&self, pool: &KeyPool) {
        match self.state.swap(IN_USE, Relaxed) {
            IN_USE => {}
            AWAY => {
                alone::end(pool);
                info!(
                    "Redis at {} is back: sharing key state with the fleet again ({} replica(s)); what this replica counted meanwhile was added",
                    self.target.shown(),
                    self.fleet()
                );
            }
            _ => info!(
                "sharing key state through Redis at {} with {} replica(s)",
                self.target.shown(),
                self.fleet()
            ),
        }
    }

    /// Redis failed: this replica decides alone with its fair share until it is back.
    fn lost(&self, pool: &KeyPool, why: &str) {
        if self.state.swap(AWAY, Relaxed) == AWAY {
            return;
        }
        let fleet = self.fleet();
        alone::begin(pool, fleet, now_ms());
        warn!(
            "Redis at {} is unreachable ({why}): this replica decides alone with 1/{fleet} of each account's remaining quota and rate until it is back",
            self.target.shown()
        );
    }
}

/// A name for this replica in the heartbeat set: its pid and a random part.
fn replica_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{}-{random:016x}", std::process::id())
}
