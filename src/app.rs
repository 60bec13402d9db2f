//! The application state every part of the proxy shares, built once at startup.

use std::sync::Arc;

use crate::config::Config;
use crate::forward::breaker::Breaker;
use crate::forward::upstream::{build_client, UpstreamClient};
use crate::ingress::auth::RefusalLog;
use crate::keys::KeyPool;
use crate::observe::metrics::Metrics;

/// Everything a request needs, built once at startup and shared.
pub struct App {
    pub config: Config,
    pub keys: KeyPool,
    pub metrics: Metrics,
    /// Whether OpenRouter is reachable at all (fail fast while it is not).
    pub breaker: Breaker,
    /// Rate-limits the WARN lines about refused proxy keys.
    pub refusals: RefusalLog,
    pub(crate) client: UpstreamClient,
}

impl App {
    #[must_use]
    pub fn new(config: Config) -> Arc<App> {
        let keys = KeyPool::from_config(&config);
        let client = build_client(config.upstream_http2);
        Arc::new(App {
            config,
            keys,
            metrics: Metrics::default(),
            breaker: Breaker::default(),
            refusals: RefusalLog::default(),
            client,
        })
    }
}
