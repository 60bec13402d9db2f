//! The application state every part of the proxy shares, built once at startup.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::aliases::Aliases;
use crate::clients::fair::FairQueue;
use crate::clients::Clients;
use crate::config::{Config, KeySpec};
use crate::forward::breaker::Breaker;
use crate::forward::pool::{UpstreamClients, UPSTREAM_IDLE_TIMEOUT};
use crate::ingress::auth::RefusalLog;
use crate::keys::{now_ms, KeyPool};
use crate::observe::metrics::Metrics;
use crate::shared::Shared;

/// Everything a request needs, built once at startup and shared.
pub struct App {
    pub config: Config,
    /// The key pool in force; a reload (SIGHUP) puts a new one in its place.
    pool: RwLock<Arc<KeyPool>>,
    /// Counts reloads, so a request can tell with one load whether its pool is still in force.
    generation: AtomicU64,
    pub metrics: Metrics,
    /// Whether OpenRouter is reachable at all (fail fast while it is not).
    pub breaker: Breaker,
    /// Rate-limits the WARN lines about refused proxy keys.
    pub refusals: RefusalLog,
    pub(crate) upstream: UpstreamClients,
    /// The clients of `CONFIG_FILE` in force, each with its key, limits and counts; a
    /// reload (SIGHUP) puts new ones in place, keeping counts by name.
    clients: RwLock<Arc<Clients>>,
    /// The model aliases of `CONFIG_FILE` in force; a reload puts new ones in place.
    aliases: RwLock<Arc<Aliases>>,
    /// Free-model requests waiting for the pool, served by their clients' fair share.
    pub fair: FairQueue,
    /// The fleet's shared state, with `REDIS_URL`.
    pub shared: Option<Arc<Shared>>,
    /// Whether the state file can be written (false after a failed check or write, until a
    /// write succeeds): `/health?format=json` says `degraded` while it cannot.
    pub state_kept: AtomicBool,
}

impl App {
    #[must_use]
    pub fn new(config: Config) -> Arc<App> {
        let pool = Arc::new(KeyPool::from_config(&config));
        let upstream = UpstreamClients::new(
            &config.upstream,
            config.upstream_http2,
            &config.extra_ca,
            UPSTREAM_IDLE_TIMEOUT,
        );
        let shared = config
            .redis
            .clone()
            .map(|target| Shared::new(target, &config.extra_ca));
        let fair = FairQueue::default();
        fair.enable(!config.clients.is_empty());
        Arc::new(App {
            clients: RwLock::new(Arc::new(Clients::from_config(&config, None))),
            aliases: RwLock::new(Arc::new(Aliases::from_config(&config, None))),
            fair,
            shared,
            config,
            pool: RwLock::new(pool),
            generation: AtomicU64::new(0),
            metrics: Metrics::default(),
            breaker: Breaker::default(),
            refusals: RefusalLog::default(),
            upstream,
            state_kept: AtomicBool::new(true),
        })
    }

    /// The key pool in force (its generation: [`Self::generation`]).
    #[must_use]
    pub fn keys(&self) -> Arc<KeyPool> {
        Arc::clone(
            &self
                .pool
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// The clients in force.
    #[must_use]
    pub fn clients(&self) -> Arc<Clients> {
        Arc::clone(
            &self
                .clients
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// The model aliases in force.
    #[must_use]
    pub fn aliases(&self) -> Arc<Aliases> {
        Arc::clone(
            &self
                .aliases
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Puts the clients and aliases of `config` (its `CONFIG_FILE`) in force: clients that
    /// stay (by name) keep their counts, a removed one is refused from the next request (its
    /// requests in flight finish), a changed limit applies to the next request; an alias
    /// that stays the same keeps its candidates' state. Returns how many clients stayed.
    pub fn reload_config_file(&self, config: &Config) -> usize {
        let mut clients = self
            .clients
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let fresh = Clients::from_config(config, Some(&clients));
        let stayed = fresh
            .all()
            .iter()
            .filter(|c| clients.all().iter().any(|o| o.spec.name == c.spec.name))
            .count();
        self.fair.enable(!fresh.is_empty());
        *clients = Arc::new(fresh);
        let mut aliases = self
            .aliases
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *aliases = Arc::new(Aliases::from_config(config, Some(&aliases)));
        stayed
    }

    /// Which pool is in force: changes with every reload.
    #[must_use]
    pub fn generation(&self) -> u64 {
        // Acquire pairs with the reload's Release: a changed generation is seen only once
        // the new pool is readable.
        self.generation.load(Ordering::Acquire)
    }

    /// Puts a pool built from `keys` (and the running configuration's other settings) in
    /// force, carrying over what the old pool knew about the keys that stay. Requests in
    /// flight finish with the pool they started with and report to the new one
    /// (see `Journey::follow`). Returns the new pool and how many keys stayed.
    pub fn reload_keys(&self, keys: Vec<KeySpec>) -> (Arc<KeyPool>, usize) {
        let config = Config {
            keys,
            ..self.config.clone()
        };
        let fresh = Arc::new(KeyPool::from_config(&config));
        let mut pool = self
            .pool
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Under the lock: no new request takes the old pool while counts move over; one that
        // already holds it moves onto the new pool at its next step (`Journey::follow`).
        let stayed = fresh.carry_over(&pool, now_ms());
        *pool = Arc::clone(&fresh);
        self.generation.fetch_add(1, Ordering::Release);
        (fresh, stayed)
    }
}
