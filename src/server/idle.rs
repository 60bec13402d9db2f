//! Idle and stalled HTTP/2 connections.
//!
//! After the preface, hyper's header timeout no longer applies, and an HTTP/2
//! connection with no open stream would stay for ever, holding a descriptor
//! without ever sending a request (or the proxy key). Each connection counts its
//! open exchanges (a request until its response body is dropped); one that has
//! had none for `HEADER_READ_TIMEOUT` is closed.
//!
//! A client that stops reading an HTTP/2 stream stalls only that stream's
//! flow-control window, never the socket, so the socket's write timeout does not
//! see it: hyper simply stops asking the response body for frames. Each HTTP/2
//! response therefore marks when it handed hyper a frame that hyper has not come
//! back after; one left waiting like that for `STREAM_IDLE_TIMEOUT` closes the
//! connection, which drops its upstream requests.

use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use crate::keys::now_ms;
use crate::stream::body::{BodyError, ProxyBody};

// Relaxed throughout: counters and timestamps read by one watcher; a stale read delays a
// close by one round, and no other memory is published through them.

/// A response's wait for hyper: [`POLLED`] while hyper keeps asking for frames,
/// [`HANDED`] right after a frame was handed over, and once the watcher has seen that,
/// the time (epoch ms) it first saw it. No clock is read per frame.
type Waiting = AtomicI64;
const POLLED: i64 = 0;
const HANDED: i64 = -1;

/// Why a connection's watcher closes it.
#[derive(Debug, PartialEq, Eq)]
pub enum Closing {
    /// No open exchange for the header timeout.
    Idle,
    /// A response has waited for the client to take a frame for the stream idle timeout.
    Stalled,
}

/// The open exchanges of one HTTP/2 connection, and when the count last changed.
/// (HTTP/1 connections have hyper's header timeout and the socket's write timeout, and
/// keep no count: that was two clock reads and a body wrapper per request for nothing.)
#[derive(Default)]
pub struct Activity {
    open: AtomicUsize,
    changed_ms: AtomicI64,
    /// The wait marks of its responses. A lock per connection, taken once per exchange and
    /// by the watcher's rounds, so never contended on the request path.
    responses: Mutex<Vec<Weak<Waiting>>>,
}

impl Activity {
    /// Counts an exchange as open until the returned body (wrapping `body`) is dropped.
    pub fn track(self: &Arc<Self>, body: ProxyBody) -> Tracked {
        self.open.fetch_add(1, Relaxed);
        self.changed_ms.store(now_ms(), Relaxed);
        let waiting = Arc::new(Waiting::new(POLLED));
        let mut responses = self
            .responses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        responses.retain(|w| w.strong_count() > 0);
        responses.push(Arc::downgrade(&waiting));
        drop(responses);
        Tracked {
            body,
            activity: Arc::clone(self),
            waiting,
        }
    }

    /// Resolves once the connection has had no open exchange for `idle_limit`, or (for
    /// `stall_limit` > 0) one of its responses has waited that long for hyper to take a frame.
    pub async fn watch(&self, idle_limit: Duration, stall_limit: Duration) -> Closing {
        self.changed_ms.store(now_ms(), Relaxed);
        let idle_ms = (!idle_limit.is_zero()).then_some(idle_limit.as_millis() as i64);
        let stall_ms = (!stall_limit.is_zero()).then_some(stall_limit.as_millis() as i64);
        // Stalls are looked for a few times per limit, at most once a second.
        let stall_round = stall_ms.map(|ms| (ms / 2).clamp(1, 1000));
        loop {
            let now = now_ms();
            let open = self.open.load(Relaxed);
            let since = now - self.changed_ms.load(Relaxed);
            if idle_ms.is_some_and(|limit| open == 0 && since >= limit) {
                return Closing::Idle;
            }
            if let Some(limit) = stall_ms {
                if self.oldest_wait_ms(now) >= limit {
                    return Closing::Stalled;
                }
            }
            let idle_wait = idle_ms.map(|limit| if open == 0 { limit - since } else { limit });
            let wait = match (idle_wait, stall_round) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => return std::future::pending().await,
            };
            tokio::time::sleep(Duration::from_millis(wait.max(1) as u64)).await;
        }
    }

    /// How long the longest-waiting response has waited for hyper, stamping fresh waits.
    fn oldest_wait_ms(&self, now: i64) -> i64 {
        let responses = self
            .responses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut oldest = 0;
        for mark in responses.iter().filter_map(Weak::upgrade) {
            let since = match mark.load(Relaxed) {
                POLLED => continue,
                // Stamped now unless hyper came back meanwhile.
                HANDED => match mark.compare_exchange(HANDED, now, Relaxed, Relaxed) {
                    Ok(_) => now,
                    Err(_) => continue,
                },
                stamped => stamped,
            };
            oldest = oldest.max(now - since);
        }
        oldest
    }
}

/// A response body that keeps its exchange counted as open until it is dropped.
pub struct Tracked {
    body: ProxyBody,
    activity: Arc<Activity>,
    waiting: Arc<Waiting>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.activity.changed_ms.store(now_ms(), Relaxed);
        self.activity.open.fetch_sub(1, Relaxed);
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        let handed = matches!(polled, Poll::Ready(Some(Ok(_))));
        this.waiting
            .store(if handed { HANDED } else { POLLED }, Relaxed);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
