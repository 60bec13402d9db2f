//! The upstream connection pool, one per server worker: the proxy's own HTTP/1.1 client
//! (`http1`) and hyper's HTTP/2 `client::conn`.
//!
//! Each worker keeps the HTTP/1.1 connections that wait for a request and at most one
//! HTTP/2 connection that all its requests share. Only the worker that opened a
//! connection uses it (see `crate::worker`), so no lock here is ever contended. TLS and
//! ALPN come from one connector (compiled-in roots plus `EXTRA_CA_FILE`); a connection
//! speaks what ALPN picked, or HTTP/2 only with `UPSTREAM_HTTP2`.
//!
//! It replaces hyper-util's pooled client (a shared pool, a checkout future and a boxed
//! request future per request, an idle-return task per HTTP/1.1 answer): measured in
//! docs/PERFORMANCE.md, "Round three".

mod body;
mod error;
mod http1;
mod idle;
mod shared_http2;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Body as _;
use hyper::client::conn::http2;
use hyper::header::HeaderValue;
use hyper::http::uri::{Scheme, Uri};
use hyper::{Request, Response};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connection as _, HttpConnector};
use hyper_util::rt::TokioIo;
use log::debug;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower_service::Service;

pub use body::UpstreamBody;
pub use error::{BoxError, UpstreamError};

use crate::config::UpstreamBase;
use crate::worker::{self, PerWorker};
use http1::Connection;
use idle::Idle;
use shared_http2::SharedHttp2;

/// Idle keep-alive HTTP/1.1 connections kept, over all workers.
pub const MAX_IDLE_UPSTREAM_CONNECTIONS: usize = 256;

/// How long an upstream connection may go without a request before it is let go.
pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

type Io = MaybeHttpsStream<TokioIo<TcpStream>>;

/// The connections to OpenRouter, one pool per worker plus one for every other thread
/// (probes at startup, tests).
pub struct UpstreamClients {
    connector: HttpsConnector<HttpConnector>,
    /// `scheme://authority`: what the connector dials.
    origin: Uri,
    /// The `Host` an HTTP/1.1 request carries (HTTP/2 sends the URI's authority).
    host: HeaderValue,
    http2: http2::Builder<SpawnBoxed>,
    /// `UPSTREAM_HTTP2`: every connection speaks HTTP/2, whatever ALPN says (prior
    /// knowledge for plain-http upstreams).
    http2_only: bool,
    /// The latest connection opened spoke HTTP/2 (OpenRouter's do): a request looks for
    /// its worker's shared connection, and waits for the one being opened instead of
    /// opening its own.
    speaks_http2: AtomicBool,
    workers: PerWorker<WorkerPool>,
}

/// One worker's connections.
struct WorkerPool {
    http1: Arc<Mutex<Idle>>,
    http2: SharedHttp2,
}

enum Sender {
    Http1(Connection),
    Http2(http2::SendRequest<Full<Bytes>>),
}

/// A connection for one request; `reused` when it was open before this request asked,
/// and so may have been closed by the server meanwhile.
struct Checkout {
    sender: Sender,
    reused: bool,
}

/// A request that failed: given back when it was never written to the connection.
struct Failed {
    unsent: Option<Request<Full<Bytes>>>,
    error: BoxError,
}

impl UpstreamClients {
    /// Builds them once at startup for the upstream at `base`, trusting the compiled-in
    /// roots and `extra_ca`.
    #[must_use]
    pub(crate) fn new(
        base: &UpstreamBase,
        http2_only: bool,
        extra_ca: &[CertificateDer<'static>],
        idle_timeout: Duration,
    ) -> UpstreamClients {
        let origin = Uri::builder()
            .scheme(base.scheme.clone())
            .authority(base.authority.clone())
            .path_and_query("/")
            .build()
            .expect("a validated scheme and authority make a URI");
        // The idle cap is shared out, so more workers do not keep more idle connections.
        let cap = (MAX_IDLE_UPSTREAM_CONNECTIONS / worker::count()).max(1);
        UpstreamClients {
            connector: connector(extra_ca),
            host: host_header(base),
            origin,
            http2: http2::Builder::new(SpawnBoxed),
            http2_only,
            // Until a connection says otherwise, an HTTPS upstream is taken to speak HTTP/2
            // (OpenRouter does): a burst on a cold pool waits for one connection per worker
            // instead of opening one each by ALPN.
            speaks_http2: AtomicBool::new(http2_only || base.scheme == Scheme::HTTPS),
            workers: PerWorker::new(|| WorkerPool {
                http1: Idle::new(cap, idle_timeout),
                http2: SharedHttp2::new(idle_timeout),
            }),
        }
    }

    /// Sends `request` (its URI absolute, on this upstream) on this thread's connections.
    /// A request that a reused connection never wrote (the server closed it while it was
    /// idle) is sent again on another.
    pub async fn request(
        &self,
        mut request: Request<Full<Bytes>>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        debug_assert_eq!(request.uri().authority(), self.origin.authority());
        let here = self.workers.here();
        loop {
            let checkout = match self.lend(here) {
                Some(checkout) => checkout,
                // Boxed: opening a connection (TCP, TLS, a handshake) is a large future that
                // would otherwise size every request's, lent a connection or not.
                None => Box::pin(self.checkout(here)).await?,
            };
            let error = match self.send(here, checkout.sender, request).await {
                Ok(response) => return Ok(response),
                Err(Failed {
                    unsent: Some(unsent),
                    error,
                }) => {
                    if checkout.reused {
                        request = unsent;
                        continue;
                    }
                    UpstreamError::connect(error)
                }
                Err(Failed {
                    unsent: None,
                    error,
                }) => UpstreamError::sent(error),
            };
            return Err(error);
        }
    }

    /// An open connection: the worker's HTTP/2 one, or an idle HTTP/1.1 one.
    fn lend(&self, here: &WorkerPool) -> Option<Checkout> {
        let sender = if self.speaks_http2.load(Relaxed) {
            Sender::Http2(here.http2.lend()?)
        } else {
            Sender::Http1(lock(&here.http1).take()?)
        };
        Some(Checkout {
            sender,
            reused: true,
        })
    }

    /// A connection when none was open to lend: the worker's HTTP/2 one once it is open
    /// (this request opens it, or waits for the one opening it), or a new HTTP/1.1 one.
    async fn checkout(&self, here: &WorkerPool) -> Result<Checkout, UpstreamError> {
        if self.speaks_http2.load(Relaxed) {
            if let Some(opened) = self.open_shared_http2(here).await {
                return opened;
            }
        }
        // The connection waited for spoke HTTP/1.1, or one was given back meanwhile.
        if let Some(checkout) = self.lend(here) {
            return Ok(checkout);
        }
        self.open(here).await
    }

    /// The worker's HTTP/2 connection, opened by this request or by the one it waited
    /// for; `None` when the connection that one opened spoke HTTP/1.1 after all.
    async fn open_shared_http2(
        &self,
        here: &WorkerPool,
    ) -> Option<Result<Checkout, UpstreamError>> {
        let asked = Instant::now();
        let mut opening = here.http2.opening.lock().await;
        if let Some(sender) = here.http2.lend() {
            return Some(Ok(Checkout {
                sender: Sender::Http2(sender),
                reused: true,
            }));
        }
        if let Some((_, error)) = opening.as_ref().filter(|(failed, _)| *failed >= asked) {
            return Some(Err(error.clone()));
        }
        if !self.speaks_http2.load(Relaxed) {
            return None;
        }
        let opened = self.open(here).await;
        *opening = opened
            .as_ref()
            .err()
            .map(|error| (Instant::now(), error.clone()));
        Some(opened)
    }

    /// Opens a connection: HTTP/2 when ALPN picked it (or `UPSTREAM_HTTP2`), which becomes
    /// the worker's shared one; HTTP/1.1 otherwise.
    async fn open(&self, here: &WorkerPool) -> Result<Checkout, UpstreamError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(UpstreamError::connect)?;
        let io: Io = connector
            .call(self.origin.clone())
            .await
            .map_err(UpstreamError::connect)?;
        let http2 = self.http2_only || io.connected().is_negotiated_h2();
        self.speaks_http2.store(http2, Relaxed);
        let sender = if http2 {
            let (sender, connection) = self
                .http2
                .handshake(io)
                .await
                .map_err(UpstreamError::connect)?;
            tokio::spawn(Drive(connection));
            here.http2.share(&sender);
            Sender::Http2(sender)
        } else {
            Sender::Http1(Connection::new(io))
        };
        Ok(Checkout {
            sender,
            reused: false,
        })
    }

    async fn send(
        &self,
        here: &WorkerPool,
        sender: Sender,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<UpstreamBody>, Failed> {
        match sender {
            Sender::Http2(mut sender) => match sender.try_send_request(request).await {
                Ok(response) => Ok(response.map(UpstreamBody::http2)),
                Err(mut failed) => {
                    let unsent = failed.take_message();
                    // Gone, or refusing new streams: the next request opens another. A
                    // stream's own failure leaves the connection to the others.
                    if unsent.is_some() || sender.is_closed() {
                        here.http2.forget();
                    }
                    Err(Failed {
                        unsent,
                        error: failed.into_error().into(),
                    })
                }
            },
            Sender::Http1(connection) => {
                let (parts, mut body) = request.into_parts();
                let bytes = whole(&mut body);
                match connection
                    .send(&parts, &self.host, &bytes, &here.http1)
                    .await
                {
                    Ok(response) => Ok(response.map(UpstreamBody::http1)),
                    Err(failed) => Err(Failed {
                        unsent: failed
                            .unsent
                            .then(|| Request::from_parts(parts, Full::new(bytes))),
                        error: failed.error,
                    }),
                }
            }
        }
    }
}

/// A request body's bytes: a `Full` body is ready at its first poll.
fn whole(body: &mut Full<Bytes>) -> Bytes {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(body).poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    }
}

/// Runs a connection until it closes; its errors reach the request that was on it.
///
/// A future of its own: an `async` block awaiting the connection would hold it twice
/// (as what it captured and as what it awaits), 1.5 KB more per connection.
struct Drive<C>(C);

impl<C: Future<Output = hyper::Result<()>> + Unpin> Future for Drive<C> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|closed| {
            if let Err(err) = closed {
                debug!("an upstream connection closed: {err}");
            }
        })
    }
}

/// What these locks guard stays consistent across a panic (each change is one
/// assignment, push, pop or retain), so a poisoned lock is used as it is.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `host[:port]`, the port only when it is not the scheme's default (never a user name).
fn host_header(base: &UpstreamBase) -> HeaderValue {
    let default_port = if base.scheme == Scheme::HTTPS {
        443
    } else {
        80
    };
    let authority = &base.authority;
    let host = match authority.port_u16() {
        Some(port) if port != default_port => format!("{}:{port}", authority.host()),
        _ => authority.host().to_owned(),
    };
    HeaderValue::from_str(&host).expect("a validated authority's host is a valid header value")
}

/// TLS roots are compiled in (webpki-roots), so it works in an empty container; ALPN
/// offers HTTP/2 and HTTP/1.1.
fn connector(extra_ca: &[CertificateDer<'static>]) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    http.set_keepalive(Some(Duration::from_secs(60)));
    HttpsConnectorBuilder::new()
        .with_tls_config(crate::tls::client_config(extra_ca))
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http)
}

/// Runs the tasks hyper's HTTP/2 client spawns (one per request, until its answer's head,
/// and one per request body it cannot send at once), each boxed on its own. They are all
/// one enum, as large as its largest variant (the connection's); spawned inline, 9,900
/// streams opened at once over TLS held 174 MB of RSS, boxed 150 MB (two focused bench
/// runs, the same sitting), as hyper-util's executor did.
#[derive(Clone, Copy)]
struct SpawnBoxed;

impl<F: Future + Send + 'static> hyper::rt::Executor<F> for SpawnBoxed
where
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(Box::pin(future));
    }
}
