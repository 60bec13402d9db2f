//! Which server worker thread this is. The server runs one single-threaded runtime per
//! core (`server::workers`); what a request uses from a pool of connections (the upstream
//! client, the Redis connection) is picked by this index, so those connections are
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

/// Index into a per-worker table of `len` entries (one per worker, then one shared by
/// every other thread).
#[must_use]
pub fn slot(len: usize) -> usize {
    let last = len - 1;
    current().map_or(last, |worker| worker.min(last))
}
