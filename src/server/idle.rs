//! Idle HTTP/2 connections: after the preface, hyper's header timeout no longer
//! applies, and an HTTP/2 connection with no open stream would stay for ever,
//! holding a descriptor without ever sending a request (or the proxy key).
//!
//! Each connection counts its open exchanges (a request until its response body
//! is dropped); one that has had none for `HEADER_READ_TIMEOUT` is closed.

use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use crate::keys::now_ms;
use crate::stream::body::ProxyBody;

// Relaxed: a counter and a timestamp read by one watcher; a stale read delays a close by one round.

/// The open exchanges of one connection, and when the count last changed.
#[derive(Default)]
pub struct Activity {
    open: AtomicUsize,
    changed_ms: AtomicI64,
}

impl Activity {
    /// Counts an exchange as open until the returned body (wrapping `body`) is dropped.
    pub fn track(self: &Arc<Self>, body: ProxyBody) -> Tracked {
        self.open.fetch_add(1, Relaxed);
        self.changed_ms.store(now_ms(), Relaxed);
        Tracked {
            body,
            activity: Arc::clone(self),
        }
    }

    /// Resolves once the connection has had no open exchange for `limit`.
    pub async fn idle_for(&self, limit: Duration) {
        self.changed_ms.store(now_ms(), Relaxed);
        let limit_ms = limit.as_millis() as i64;
        loop {
            let since = now_ms() - self.changed_ms.load(Relaxed);
            if self.open.load(Relaxed) == 0 && since >= limit_ms {
                return;
            }
            let wait = if self.open.load(Relaxed) == 0 {
                limit_ms - since
            } else {
                limit_ms
            };
            tokio::time::sleep(Duration::from_millis(wait.max(1) as u64)).await;
        }
    }
}

/// A response body that keeps its exchange counted as open until it is dropped.
pub struct Tracked {
    body: ProxyBody,
    activity: Arc<Activity>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.activity.changed_ms.store(now_ms(), Relaxed);
        self.activity.open.fetch_sub(1, Relaxed);
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
