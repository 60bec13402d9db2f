//! A worker's one HTTP/2 connection, shared by all its requests: lent by cloning its
//! sender, opened by one request while the others wait for it, and let go after the idle
//! timeout without a request (its streams still open run to their end; the connection
//! closes after them).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http2;
use tokio::time::Instant;

use super::{lock, UpstreamError};

pub(super) struct SharedHttp2 {
    slot: Arc<Mutex<Slot>>,
    /// Held while the worker opens its connection, with the last attempt's failure: the
    /// requests that waited for that attempt fail with it rather than each trying in turn
    /// (a connect timeout would otherwise be paid once per waiting request).
    pub(super) opening: tokio::sync::Mutex<Option<(Instant, UpstreamError)>>,
    idle_timeout: Duration,
}

#[derive(Default)]
struct Slot {
    shared: Option<Shared>,
    /// Counts the connections shared, so a retirement watch only ever retires its own.
    generation: u64,
}

struct Shared {
    sender: http2::SendRequest<Full<Bytes>>,
    last_lent: Instant,
}

impl SharedHttp2 {
    pub(super) fn new(idle_timeout: Duration) -> SharedHttp2 {
        SharedHttp2 {
            slot: Arc::default(),
            opening: tokio::sync::Mutex::new(None),
            idle_timeout,
        }
    }

    /// The connection, unless it has closed or there is none.
    pub(super) fn lend(&self) -> Option<http2::SendRequest<Full<Bytes>>> {
        let mut slot = lock(&self.slot);
        let shared = slot
            .shared
            .as_mut()
            .filter(|shared| !shared.sender.is_closed())?;
        shared.last_lent = Instant::now();
        Some(shared.sender.clone())
    }

    /// Makes `sender` the worker's connection unless a live one is there already (several
    /// requests on a cold pool may each have opened one by ALPN).
    pub(super) fn share(&self, sender: &http2::SendRequest<Full<Bytes>>) {
        let mut slot = lock(&self.slot);
        if slot
            .shared
            .as_ref()
            .is_some_and(|shared| !shared.sender.is_closed())
        {
            return;
        }
        // Only on a runtime can anything watch it (the server's workers and the main
        // thread's background work all run on one).
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        slot.generation += 1;
        slot.shared = Some(Shared {
            sender: sender.clone(),
            last_lent: Instant::now(),
        });
        runtime.spawn(retire_when_idle(
            Arc::clone(&self.slot),
            slot.generation,
            self.idle_timeout,
        ));
    }

    /// Lets the connection go (it refused a request): the next request opens another.
    pub(super) fn forget(&self) {
        lock(&self.slot).shared = None;
    }
}

/// Lets the connection of `generation` go once it has not been lent for `timeout`.
async fn retire_when_idle(slot: Arc<Mutex<Slot>>, generation: u64, timeout: Duration) {
    loop {
        let due = {
            let mut slot = lock(&slot);
            if slot.generation != generation {
                return;
            }
            let Some(shared) = &slot.shared else {
                return;
            };
            let due = shared.last_lent + timeout;
            if due <= Instant::now() {
                slot.shared = None;
                return;
            }
            due
        };
        tokio::time::sleep_until(due).await;
    }
}
