//! One single-threaded runtime per core (nginx's worker model). A connection, the
//! upstream requests made for it and the pooled upstream connections they ride on are
//! all polled on one thread: a response chunk passes from the upstream connection's task
//! to the client connection's task through that thread's own run queue, without waking
//! another thread (with the work-stealing runtime, about four cross-thread wake-ups per
//! request, each an `eventfd` write and a `futex` or `epoll_wait` return on the other side).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::observe::log_lines;
use crate::worker;

/// Builds a single-threaded runtime whose thread hands its batched log lines to stderr
/// whenever it runs out of work (see [`log_lines`]).
///
/// # Errors
/// When the runtime cannot be built (out of file descriptors for its driver).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(log_lines::flush_batched)
        .build()
}

/// The running workers' runtimes, for [`flush_logs_and_stop`] (the last started set).
static RUNNING: Mutex<Vec<Handle>> = Mutex::new(Vec::new());

/// Has every worker write the log lines it holds and then serve nothing more, waiting up
/// to `limit` for them: before the process exits without the orderly stop (a second
/// SIGTERM), so every request a client saw end is in the log and none ends after.
pub fn flush_logs_and_stop(limit: Duration) {
    let handles = RUNNING
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let (done, flushed) = std::sync::mpsc::channel();
    for handle in &handles {
        let done = done.clone();
        drop(handle.spawn(async move {
            log_lines::flush_batched();
            let _ = done.send(());
            // Blocks this worker's only thread until the process exits.
            loop {
                std::thread::park();
            }
        }));
    }
    let deadline = std::time::Instant::now() + limit;
    for _ in &handles {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if flushed.recv_timeout(left).is_err() {
            return;
        }
    }
}

/// The running workers; dropping this stops them (their remaining tasks are dropped)
/// and waits until each has written its last log lines.
pub struct Workers {
    handles: Vec<Handle>,
    /// Round-robin over the workers for each new connection.
    next: AtomicUsize,
    /// Dropped to stop the workers.
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Starts [`worker::count`] worker threads, each driving its own runtime.
    ///
    /// # Panics
    /// When a worker thread or its runtime cannot be created (the process is out of
    /// threads or descriptors before it has served anything).
    #[must_use]
    pub fn start() -> Workers {
        let mut handles = Vec::new();
        let mut stops = Vec::new();
        let mut threads = Vec::new();
        for index in 0..worker::count() {
            let (stop, stopped) = oneshot::channel::<()>();
            let (handle_tx, handle_rx) = std::sync::mpsc::channel();
            let thread = std::thread::Builder::new()
                .name(format!("worker-{index}"))
                .spawn(move || {
                    worker::mark_this_thread(index);
                    log_lines::batch_on_this_thread();
                    let runtime = runtime().expect("a worker runtime starts");
                    let _ = handle_tx.send(runtime.handle().clone());
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                    drop(runtime);
                    log_lines::flush_batched();
                })
                .expect("a worker thread starts");
            handles.push(handle_rx.recv().expect("the worker sends its handle"));
            stops.push(stop);
            threads.push(thread);
        }
        RUNNING
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone_from(&handles);
        Workers {
            handles,
            next: AtomicUsize::new(0),
            stops,
            threads,
        }
    }

    /// Runs `task` on the next worker.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        // Relaxed: only spreads connections; two taking the same worker is harmless.
        let index = self.next.fetch_add(1, Relaxed) % self.handles.len();
        drop(self.handles[index].spawn(task));
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stops.clear();
        for thread in self.threads.drain(..) {
            // A worker that panicked has nothing left to write.
            let _ = thread.join();
        }
    }
}
