//! The accept loop, the connection builder and graceful shutdown.
//! Serves whatever [`router::route`] answers, once a connection's first request head
//! has passed [`first_head`].

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use log::{debug, info, warn};
use tokio::net::{TcpListener, TcpStream};

use crate::app::App;
use crate::ingress::router;
use crate::observe::metrics::Route;

pub mod first_head;
mod replay;

use first_head::{FirstHead, MAX_HEAD_BYTES};
use replay::Replay;

/// The HTTP/1 and HTTP/2 connection settings, built once.
fn connection_builder(app: &App) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // HEADER_READ_TIMEOUT=0 turns the limit off rather than timing out at once.
        .header_read_timeout(Some(app.config.header_read_timeout).filter(|t| !t.is_zero()))
        // Bounds the request head (431 above it); bodies are read in pieces of at most this size.
        .max_buf_size(MAX_HEAD_BYTES);
    builder.http2().timer(TokioTimer::new());
    builder
}

/// One accepted connection: its first head is checked, then hyper serves it until it
/// ends or graceful shutdown closes it.
async fn connection(
    mut stream: TcpStream,
    app: Arc<App>,
    builder: auto::Builder<TokioExecutor>,
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
        .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    let service = service_fn(move |request| {
        let app = Arc::clone(&app);
        async move { Ok::<_, Infallible>(router::route(&app, request, peer).await) }
    });
    let connection = builder.serve_connection(TokioIo::new(Replay::new(head, stream)), service);
    if let Err(err) = watcher.watch(connection.into_owned()).await {
        debug!("connection ended with an error: {err}");
    }
}

/// Serves `listener` until `shutdown` resolves, then stops accepting and lets
/// in-flight requests finish for up to `SHUTDOWN_GRACE`.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let builder = connection_builder(&app);
    let graceful = GracefulShutdown::new();
    // Connections still sending their first head have no request to finish: dropping this
    // sender ends them as shutdown begins, instead of holding it up for HEADER_READ_TIMEOUT.
    let (closing, _) = tokio::sync::watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    warn!("accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            stream,
            Arc::clone(&app),
            builder.clone(),
            graceful.watcher(),
            closing.subscribe(),
        ));
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
