//! The fair share of a contended free-model pool: when free-model requests wait
//! for a key (the accounts' limiters or quotas are the bottleneck), the next slot
//! goes to the waiting request of the client that has had the least of the pool
//! lately relative to its `weight` (start-time fair queuing: each request gets a
//! tag, its client's last tag plus `1 / weight`, never below the tag of the one
//! served last; the smallest tag goes next). Within a client, first come first
//! served. Only requests that have to wait take part; nothing here runs on the
//! path of a request a key can serve at once.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};

use tokio::sync::Notify;

/// The waiting free-model requests of every client.
#[derive(Default)]
pub struct FairQueue {
    /// Whether clients are configured (without them, first come first served).
    enabled: AtomicBool,
    /// Requests in the queue, so a request that need not wait checks it without the lock.
    // Relaxed: a hint; a request that misses a waiter joining at that instant is one that
    // would have raced for the slot anyway.
    waiters: AtomicUsize,
    state: Mutex<State>,
    /// Wakes the waiters when the head of the queue changes.
    turn: Notify,
}

#[derive(Default)]
struct State {
    /// The tag of the request served last: a client that was idle starts from here, so
    /// it cannot bank a share it did not use.
    virtual_now: f64,
    /// Each client's (by name) last tag handed out.
    finish: HashMap<String, f64>,
    /// The waiting requests by (tag, arrival): the first is next.
    waiting: BTreeSet<(Tag, u64)>,
    arrivals: u64,
}

/// A tag, ordered as a number (tags are finite and never NaN).
#[derive(Clone, Copy, PartialEq)]
struct Tag(f64);

impl Eq for Tag {}

impl Ord for Tag {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl PartialOrd for Tag {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// A request's place in the queue; it leaves when dropped.
pub struct Place<'q> {
    queue: &'q FairQueue,
    key: (Tag, u64),
    client: String,
    step: f64,
    served: bool,
}

impl FairQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Turns the queue on (clients are configured) or off.
    pub fn enable(&self, on: bool) {
        self.enabled.store(on, Relaxed);
    }

    /// Whether free-model requests wait in their clients' fair share.
    #[must_use]
    pub fn enabled(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    /// Whether any request waits now.
    #[must_use]
    pub fn has_waiters(&self) -> bool {
        self.waiters.load(Relaxed) > 0
    }

    /// Queues a request of `client` (its `weight`).
    pub fn join(&self, client: &str, weight: u32) -> Place<'_> {
        let mut state = self.lock();
        let step = 1.0 / f64::from(weight.max(1));
        let last = state.finish.get(client).copied().unwrap_or(0.0);
        let tag = last.max(state.virtual_now);
        state.finish.insert(client.to_owned(), tag + step);
        state.arrivals += 1;
        let key = (Tag(tag), state.arrivals);
        state.waiting.insert(key);
        self.waiters.fetch_add(1, Relaxed);
        Place {
            queue: self,
            key,
            client: client.to_owned(),
            step,
            served: false,
        }
    }
}

impl Place<'_> {
    /// Whether this request is next.
    #[must_use]
    pub fn is_next(&self) -> bool {
        self.queue.lock().waiting.first() == Some(&self.key)
    }

    /// Waits until the head of the queue changes (call [`Self::is_next`] again then).
    pub async fn changed(&self) {
        let notified = self.queue.turn.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !self.is_next() {
            notified.await;
        }
    }

    /// This request got its slot: the next one may go.
    pub fn served(mut self) {
        self.served = true;
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut state = self.queue.lock();
        state.waiting.remove(&self.key);
        self.queue.waiters.fetch_sub(1, Relaxed);
        let tag = self.key.0 .0;
        if self.served {
            state.virtual_now = state.virtual_now.max(tag);
        } else if let Some(last) = state.finish.get_mut(&self.client) {
            // Left without its slot (waited too long, or its client went): the share it
            // reserved is given back if nothing was queued after it.
            if (*last - (tag + self.step)).abs() < f64::EPSILON {
                *last = tag;
            }
        }
        drop(state);
        self.queue.turn.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves `slots` slots to whichever waits first, `a` and `b` always keeping one
    /// waiting; returns how many each got.
    fn split(weights: (u32, u32), slots: usize) -> (usize, usize) {
        let queue = FairQueue::default();
        let mut a = Some(queue.join("a", weights.0));
        let mut b = Some(queue.join("b", weights.1));
        let mut served = (0, 0);
        for _ in 0..slots {
            if a.as_ref().is_some_and(Place::is_next) {
                a.take().unwrap().served();
                served.0 += 1;
                a = Some(queue.join("a", weights.0));
            } else {
                b.take().unwrap().served();
                served.1 += 1;
                b = Some(queue.join("b", weights.1));
            }
        }
        served
    }

    #[test]
    fn always_waiting_clients_share_in_proportion_to_their_weights() {
        assert_eq!(split((1, 1), 100), (50, 50));
        let (a, b) = split((3, 1), 400);
        assert_eq!((a, b), (300, 100));
    }

    #[test]
    fn a_client_with_one_request_goes_ahead_of_another_clients_backlog() {
        let queue = FairQueue::default();
        let backlog: Vec<Place<'_>> = (0..10).map(|_| queue.join("a", 1)).collect();
        let mut backlog = backlog.into_iter();
        backlog.next().unwrap().served();
        let b = queue.join("b", 1);
        // Behind a's next one at most.
        let second = backlog.next().unwrap();
        assert!(second.is_next() || b.is_next());
        second.served();
        assert!(b.is_next());
    }

    #[test]
    fn within_a_client_first_come_first_served_and_a_leaver_gives_its_share_back() {
        let queue = FairQueue::default();
        let first = queue.join("a", 1);
        let second = queue.join("a", 1);
        assert!(first.is_next() && !second.is_next());
        drop(second);
        let third = queue.join("a", 1);
        drop(first);
        assert!(third.is_next());
    }
}
