//! The accept loop, the connection builder and graceful shutdown.
//! Serves whatever [`router::route`] answers, once a connection's first request head
//! has passed [`first_head`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::{service_fn, Service};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use log::{debug, info, warn};
use tokio::net::{TcpListener, TcpStream};

use crate::app::App;
use crate::ingress::router;
use crate::keys::now_ms;
use crate::observe::logging::OncePerSecond;
use crate::observe::metrics::Route;
use crate::stream::body::ProxyBody;

pub mod first_head;
mod idle;
mod replay;
pub mod workers;

/// How often an HTTP/2 connection is pinged, and how long the answer may take.
const HTTP2_PING_INTERVAL: Duration = Duration::from_secs(30);
const HTTP2_PING_TIMEOUT: Duration = Duration::from_secs(20);

use first_head::{FirstHead, MAX_HEAD_BYTES};
use idle::{Activity, Closing};
use replay::Replay;
use workers::Workers;

/// One open connection counted against `MAX_CONNECTIONS`; given back when dropped.
struct ConnectionSlot(Arc<AtomicUsize>);

impl ConnectionSlot {
    fn take(open: &Arc<AtomicUsize>, cap: usize) -> Option<Self> {
        // Relaxed: a counter; the cap may be passed by a connection or two in a race.
        (open.fetch_add(1, Relaxed) < cap)
            .then(|| ConnectionSlot(Arc::clone(open)))
            .or_else(|| {
                open.fetch_sub(1, Relaxed);
                None
            })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// The HTTP/1 and HTTP/2 connection settings, built once.
///
/// Two builders rather than hyper-util's `auto` one: the first head check already knows
/// which protocol a connection speaks, and `auto` learns it by reading the first 24 bytes
/// on their own, after which hyper's first read buffer (8 KiB, 24 bytes used) doubles to
/// 16 KiB for the rest of the connection. Without it, and with what a request keeps moved
/// out of that buffer ([`crate::ingress::detach`]), a held stream's connection keeps 8 KiB.
/// Shared by every connection (an `Arc`), not copied into each one's task.
struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl Builders {
    fn new(app: &App) -> Self {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            // HEADER_READ_TIMEOUT=0 turns the limit off rather than timing out at once.
            .header_read_timeout(Some(app.config.header_read_timeout).filter(|t| !t.is_zero()))
            // Bounds the request head (431 above it); bodies are read in pieces of at most this size.
            .max_buf_size(MAX_HEAD_BYTES);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            // Pings find peers that vanished while streams are open.
            .keep_alive_interval(Some(HTTP2_PING_INTERVAL))
            .keep_alive_timeout(HTTP2_PING_TIMEOUT);
        Builders { http1, http2 }
    }
}

/// One accepted connection: its first head is checked, then hyper serves it until it
/// ends or graceful shutdown closes it.
async fn connection(
    mut stream: TcpStream,
    app: Arc<App>,
    builders: Arc<Builders>,
    watcher: Watcher,
    mut closing: tokio::sync::watch::Receiver<()>,
) {
    let first_head = tokio::select! {
        head = first_head::read(&mut stream, app.config.header_read_timeout) => head,
        _ = closing.changed() => return,
    };
    let head = match first_head {
        FirstHead::Serve(head) => head,
        FirstHead::Refused(status) => {
            app.metrics
                .count_request(Route::MalformedHead, status.as_u16());
            return;
        }
        FirstHead::Gone => return,
    };
    // Only for the log line about a refused proxy key; unknown is rare (the peer already left).
    let peer = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let http2 = head.starts_with(first_head::HTTP2_PREFACE);
    let idle_limit = app.config.header_read_timeout;
    let write_limit = app.config.stream_idle_timeout;
    let io = TokioIo::new(Replay::new(head, stream, write_limit));
    // HTTP/1 has hyper's header timeout between requests and the socket's write timeout;
    // HTTP/2 needs the watchdog, which counts its open exchanges.
    let served = if http2 {
        let activity = Arc::new(Activity::default());
        let counted = Arc::clone(&activity);
        let service = routed(app, peer, move |body| counted.track(body));
        // Boxed: an HTTP/2 connection's state is twice an HTTP/1 one's, and inline it would
        // size every connection's task (most are HTTP/1) for the rest of its life.
        let served = Box::pin(watcher.watch(builders.http2.serve_connection(io, service)));
        tokio::select! {
            served = served => served,
            // Idle: nothing is open on it. Stalled: closing drops its upstream requests.
            closing = activity.watch(idle_limit, write_limit) => {
                match closing {
                    Closing::Idle => debug!("closed an HTTP/2 connection idle for {}s", idle_limit.as_secs()),
                    Closing::Stalled => info!(
                        "closed an HTTP/2 connection whose client took nothing for {}s (STREAM_IDLE_TIMEOUT)",
                        write_limit.as_secs()
                    ),
                }
                Ok(())
            }
        }
    } else {
        let service = routed(app, peer, std::convert::identity);
        watcher
            .watch(builders.http1.serve_connection(io, service))
            .await
    };
    if let Err(err) = served {
        debug!("connection ended with an error: {err}");
    }
}

/// The service answering a connection's requests from `peer` with [`router::route`], each
/// answer's body passed through `wrap`.
fn routed<B: hyper::body::Body>(
    app: Arc<App>,
    peer: SocketAddr,
    wrap: impl Fn(ProxyBody) -> B + Clone + Send + 'static,
) -> impl Service<
    Request<Incoming>,
    Response = Response<B>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone {
    service_fn(move |request| {
        let (app, wrap) = (Arc::clone(&app), wrap.clone());
        async move {
            let response = router::route(&app, request, peer).await;
            Ok::<_, Infallible>(response.map(wrap))
        }
    })
}

/// Serves `listener` until `shutdown` resolves, then stops accepting and lets
/// in-flight requests finish for up to `SHUTDOWN_GRACE`.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let builders = Arc::new(Builders::new(&app));
    let workers = Workers::start();
    let graceful = GracefulShutdown::new();
    // Connections still sending their first head have no request to finish: dropping this
    // sender ends them as shutdown begins, instead of holding it up for HEADER_READ_TIMEOUT.
    let (closing, _) = tokio::sync::watch::channel(());
    let open = Arc::new(AtomicUsize::new(0));
    let warnings = OncePerSecond::default();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    if warnings.allow(now_ms()) {
                        warn!("accept failed: {err}");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(slot) = ConnectionSlot::take(&open, app.config.max_connections) else {
            // Over the cap: closed at once, so descriptors stay for the connections already in.
            drop(stream);
            if warnings.allow(now_ms()) {
                warn!(
                    "{} connections open (MAX_CONNECTIONS): new ones are closed at once",
                    app.config.max_connections
                );
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Registered again with the worker's own reactor, so its readiness wakes that worker.
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        let (app, builders) = (Arc::clone(&app), Arc::clone(&builders));
        let (watcher, closing) = (graceful.watcher(), closing.subscribe());
        workers.spawn(async move {
            let Ok(stream) = TcpStream::from_std(stream) else {
                return;
            };
            connection(stream, app, builders, watcher, closing).await;
            drop(slot);
        });
    }
    drop((listener, closing));
    info!(
        "shutting down: waiting up to {}s for in-flight requests",
        app.config.shutdown_grace.as_secs()
    );
    tokio::select! {
        () = graceful.shutdown() => info!("all connections finished"),
        () = tokio::time::sleep(app.config.shutdown_grace) => warn!("shutdown grace period over; closing remaining connections"),
    }
}
