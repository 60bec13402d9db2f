//! A worker's HTTP/1.1 connections waiting for a request: the most recently used is lent
//! first, the cap bounds how many a burst leaves open, and a sweep closes those idle
//! longer than the idle timeout or closed by the server.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::http1::Connection;
use super::lock;

/// How long a connection waits before lending it asks the socket whether the server
/// closed it. Servers close idle connections after seconds (uvicorn and Node 5 s, nginx
/// 75 s); one that closes sooner says so in its answer (`Connection: close`). Asking
/// every time would cost a system call per request (measured: 3 `recvfrom` a request
/// instead of 2, 2 µs more CPU in the kernel at c=64).
const ASK_THE_SOCKET_AFTER: Duration = Duration::from_secs(1);

/// One worker's idle HTTP/1.1 connections, oldest first.
pub(super) struct Idle {
    waiting: Vec<(Connection, Instant)>,
    cap: usize,
    timeout: Duration,
    /// A sweep task runs for this list (from its first idle connection until it is empty).
    swept: bool,
}

impl Idle {
    pub(super) fn new(cap: usize, timeout: Duration) -> Arc<Mutex<Idle>> {
        Arc::new(Mutex::new(Idle {
            waiting: Vec::new(),
            cap,
            timeout,
            swept: false,
        }))
    }

    /// The most recently used connection still open; those the server closed while they
    /// waited are let go on the way.
    pub(super) fn take(&mut self) -> Option<Connection> {
        while let Some((mut connection, since)) = self.waiting.pop() {
            if connection.is_open(since.elapsed() >= ASK_THE_SOCKET_AFTER) {
                return Some(connection);
            }
        }
        None
    }
}

/// Puts a connection whose answer has ended back in `idle`, unless the list is full
/// (then dropping it closes it).
pub(super) fn give_back(idle: &Arc<Mutex<Idle>>, connection: Connection) {
    let mut list = lock(idle);
    if list.waiting.len() >= list.cap {
        return;
    }
    if !list.swept {
        // Only on a runtime can anything sweep it (a body dropped at shutdown is not).
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        list.swept = true;
        runtime.spawn(sweep(Arc::clone(idle)));
    }
    list.waiting.push((connection, Instant::now()));
}

/// Closes the connections idle for the timeout, waking when the oldest one's is due;
/// ends when none is left (the next one given back starts another). Connections the
/// server closed meanwhile go on the way.
async fn sweep(idle: Arc<Mutex<Idle>>) {
    loop {
        let due = {
            let mut list = lock(&idle);
            let timeout = list.timeout;
            let now = Instant::now();
            list.waiting.retain_mut(|(connection, since)| {
                now - *since < timeout && connection.is_open(true)
            });
            let Some((_, oldest)) = list.waiting.first() else {
                list.swept = false;
                return;
            };
            *oldest + timeout
        };
        tokio::time::sleep_until(due).await;
    }
}
