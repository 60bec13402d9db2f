//! Which server worker thread this is. The server runs one single-threaded runtime per
//! core (`server::workers`); what a request uses from a pool of connections (the upstream
//! client, the Redis connection) is picked by this index ([`PerWorker`]), so those connections are
//! driven by the thread that uses them.

use std::cell::Cell;
use std::num::NonZeroUsize;

thread_local! {
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// How many workers the server runs: one per CPU this process may use (cgroup quotas
/// and affinity masks included).
#[must_use]
pub fn count() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// The worker running on this thread (`0..count()`), or `None` off the workers.
#[must_use]
pub fn current() -> Option<usize> {
    WORKER.with(Cell::get)
}

/// Marks this thread as worker `index`.
pub fn mark_this_thread(index: usize) {
    WORKER.with(|worker| worker.set(Some(index)));
}

/// One `T` per worker, plus one shared by every other thread (the main thread's
/// background work, tests): each is used, and so driven, by one thread only.
pub struct PerWorker<T>(Box<[T]>);

impl<T> PerWorker<T> {
    /// Makes one value per worker and one for every other thread.
    pub fn new(mut make: impl FnMut() -> T) -> PerWorker<T> {
        PerWorker((0..=count()).map(|_| make()).collect())
    }

    /// This thread's value.
    #[must_use]
    pub fn here(&self) -> &T {
        let last = self.0.len() - 1;
        &self.0[current().map_or(last, |worker| worker.min(last))]
    }
}
