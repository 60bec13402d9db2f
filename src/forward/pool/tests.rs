//! The pool against a small upstream on 127.0.0.1 that counts its connections: what is
//! reused, what is closed, and when.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::http::uri::{Authority, Scheme};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::{UpstreamClients, UpstreamError};
use crate::config::UpstreamBase;
use crate::forward::upstream::unreachable_reason;

/// What the upstream does with a connection once it has answered on it.
#[derive(Clone)]
enum AfterAnswer {
    KeepOpen,
    /// Closes it 50 ms later, as a server's idle timeout does (HTTP/1.1).
    DropSoon,
    /// Closes it when told (HTTP/1.1).
    DropWhenTold(Arc<Notify>),
    /// Sends GOAWAY and closes it once its streams are done (HTTP/2).
    GoAway,
}

/// An upstream answering `ok` to every request, over HTTP/1.1 or HTTP/2 (prior knowledge).
struct Upstream {
    base: UpstreamBase,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    /// Each request's target and `Host`, as received.
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

impl Upstream {
    async fn start(http2: bool, after: AfterAnswer) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = Upstream {
            base: UpstreamBase {
                scheme: Scheme::HTTP,
                authority: Authority::try_from(format!("127.0.0.1:{port}")).unwrap(),
                path: String::new(),
            },
            accepted: Arc::default(),
            closed: Arc::default(),
            seen: Arc::default(),
        };
        let (accepted, closed, seen) = (
            Arc::clone(&upstream.accepted),
            Arc::clone(&upstream.closed),
            Arc::clone(&upstream.seen),
        );
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                accepted.fetch_add(1, SeqCst);
                let (closed, seen, after) = (Arc::clone(&closed), Arc::clone(&seen), after.clone());
                tokio::spawn(async move {
                    serve(TokioIo::new(stream), http2, after, seen).await;
                    closed.fetch_add(1, SeqCst);
                });
            }
        });
        upstream
    }

    fn clients(&self, http2_only: bool, idle_timeout: Duration) -> UpstreamClients {
        UpstreamClients::new(&self.base, http2_only, &[], idle_timeout)
    }

    fn request(&self, path_and_query: &str) -> Request<Full<Bytes>> {
        let uri = self.base.uri(path_and_query, None).unwrap();
        Request::post(uri)
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    }
}

async fn serve(
    io: TokioIo<tokio::net::TcpStream>,
    http2: bool,
    after: AfterAnswer,
    seen: Arc<Mutex<Vec<(String, String)>>>,
) {
    let answered = Arc::new(Notify::new());
    let on_answer = Arc::clone(&answered);
    let service = service_fn(move |request: Request<Incoming>| {
        let host = request
            .headers()
            .get("host")
            .map_or(String::new(), |h| h.to_str().unwrap().to_owned());
        seen.lock().unwrap().push((request.uri().to_string(), host));
        on_answer.notify_one();
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok")))) }
    });
    if http2 {
        let connection = http2::Builder::new(TokioExecutor::new()).serve_connection(io, service);
        tokio::pin!(connection);
        tokio::select! {
            _ = connection.as_mut() => return,
            () = answered.notified(), if matches!(after, AfterAnswer::GoAway) => {}
        }
        connection.as_mut().graceful_shutdown();
        let _ = connection.await;
    } else {
        // Boxed, not pinned on the stack, so that dropping it closes the socket there and then.
        let mut connection = Box::pin(http1::Builder::new().serve_connection(io, service));
        match after {
            AfterAnswer::DropSoon => tokio::select! {
                _ = connection.as_mut() => {}
                () = async {
                    answered.notified().await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                } => {}
            },
            AfterAnswer::DropWhenTold(told) => {
                tokio::select! {
                    _ = connection.as_mut() => {}
                    () = told.notified() => {}
                }
            }
            AfterAnswer::KeepOpen | AfterAnswer::GoAway => {
                let _ = connection.await;
            }
        }
    }
}

async fn ok(clients: &UpstreamClients, request: Request<Full<Bytes>>) {
    let response = clients.request(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "ok");
}

/// One request answered; the upstream sees its connection close; the next request is
/// answered on a new one.
async fn answered_closed_and_reopened(upstream: &Upstream, clients: &UpstreamClients) {
    ok(clients, upstream.request("/a")).await;
    assert!(
        eventually(|| upstream.closed.load(SeqCst) == 1).await,
        "the connection was closed"
    );
    ok(clients, upstream.request("/b")).await;
    assert_eq!(upstream.accepted.load(SeqCst), 2);
}

async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

#[tokio::test]
async fn http1_answers_read_to_their_end_give_the_connection_back_for_the_next_request() {
    let upstream = Upstream::start(false, AfterAnswer::KeepOpen).await;
    let clients = upstream.clients(false, Duration::from_secs(90));
    for _ in 0..3 {
        ok(&clients, upstream.request("/v1/chat?q=1")).await;
    }
    assert_eq!(upstream.accepted.load(SeqCst), 1);
    let authority = upstream.base.authority.to_string();
    assert_eq!(
        *upstream.seen.lock().unwrap(),
        vec![("/v1/chat?q=1".to_owned(), authority); 3],
        "HTTP/1.1 requests name the path on the request line and the authority as Host"
    );
}

#[tokio::test]
async fn an_http1_answer_dropped_before_its_end_does_not_lend_its_connection_again() {
    let upstream = Upstream::start(false, AfterAnswer::KeepOpen).await;
    let clients = upstream.clients(false, Duration::from_secs(90));
    let response = clients.request(upstream.request("/a")).await.unwrap();
    drop(response);
    ok(&clients, upstream.request("/b")).await;
    assert_eq!(upstream.accepted.load(SeqCst), 2);
    assert!(eventually(|| upstream.closed.load(SeqCst) == 1).await);
}

#[tokio::test]
async fn idle_http1_connections_are_closed_after_the_idle_timeout() {
    let upstream = Upstream::start(false, AfterAnswer::KeepOpen).await;
    let clients = upstream.clients(false, Duration::from_millis(200));
    answered_closed_and_reopened(&upstream, &clients).await;
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_not_used_again() {
    let upstream = Upstream::start(false, AfterAnswer::DropSoon).await;
    let clients = upstream.clients(false, Duration::from_secs(90));
    answered_closed_and_reopened(&upstream, &clients).await;
}

#[tokio::test]
async fn a_connection_the_upstream_closed_before_the_reactor_saw_it_is_not_lent() {
    let told = Arc::new(Notify::new());
    let after = AfterAnswer::DropWhenTold(Arc::clone(&told));
    // On a thread of its own, so that it closes the connection while this one is blocked.
    let (sender, started) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            sender.send(Upstream::start(false, after).await).unwrap();
            std::future::pending::<()>().await;
        });
    });
    let upstream = started.recv().unwrap();
    let clients = upstream.clients(false, Duration::from_secs(90));
    ok(&clients, upstream.request("/a")).await;
    told.notify_one();
    // Blocked, as a busy worker is between two looks for events: this thread's runtime
    // does not learn that the upstream closed the connection; only the socket itself
    // knows, and the pool asks it before lending a connection idle that long.
    std::thread::sleep(Duration::from_millis(1100));
    ok(&clients, upstream.request("/b")).await;
    assert_eq!(upstream.accepted.load(SeqCst), 2);
    let paths: Vec<_> = upstream
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|(p, _)| p.clone())
        .collect();
    assert_eq!(paths, ["/a", "/b"]);
}

#[tokio::test]
async fn http2_requests_share_one_connection_opened_once() {
    let upstream = Upstream::start(true, AfterAnswer::KeepOpen).await;
    let clients = Arc::new(upstream.clients(true, Duration::from_secs(90)));
    // All at once on a cold pool: the first opens the connection, the others wait for it.
    let burst: Vec<_> = (0..8)
        .map(|i| {
            let (clients, request) = (Arc::clone(&clients), upstream.request(&format!("/{i}")));
            tokio::spawn(async move { ok(&clients, request).await })
        })
        .collect();
    for answered in burst {
        answered.await.unwrap();
    }
    ok(&clients, upstream.request("/after")).await;
    assert_eq!(upstream.accepted.load(SeqCst), 1);
}

#[tokio::test]
async fn an_http2_connection_without_requests_is_let_go_after_the_idle_timeout() {
    let upstream = Upstream::start(true, AfterAnswer::KeepOpen).await;
    let clients = upstream.clients(true, Duration::from_millis(200));
    answered_closed_and_reopened(&upstream, &clients).await;
}

#[tokio::test]
async fn after_an_http2_goaway_the_next_request_opens_a_new_connection() {
    let upstream = Upstream::start(true, AfterAnswer::GoAway).await;
    let clients = upstream.clients(true, Duration::from_secs(90));
    answered_closed_and_reopened(&upstream, &clients).await;
}

#[tokio::test]
async fn requests_waiting_for_an_http2_connection_that_cannot_open_fail_as_unreached() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let base = UpstreamBase {
        scheme: Scheme::HTTP,
        authority: Authority::try_from(format!("127.0.0.1:{port}")).unwrap(),
        path: String::new(),
    };
    let clients = Arc::new(UpstreamClients::new(
        &base,
        true,
        &[],
        Duration::from_secs(90),
    ));
    let requests: Vec<_> = (0..4)
        .map(|_| {
            let clients = Arc::clone(&clients);
            let request = Request::post(base.uri("/x", None).unwrap())
                .body(Full::new(Bytes::new()))
                .unwrap();
            tokio::spawn(async move { clients.request(request).await.map(|_| ()) })
        })
        .collect();
    for request in requests {
        let error: UpstreamError = request.await.unwrap().expect_err("nothing listens there");
        assert!(error.is_connect());
        assert_eq!(
            unreachable_reason(&error, "127.0.0.1"),
            "127.0.0.1 refused the connection"
        );
    }
}

#[test]
fn the_host_header_names_the_port_only_when_it_is_not_the_scheme_default() {
    let host = |scheme: Scheme, authority: &str| {
        let base = UpstreamBase {
            scheme,
            authority: Authority::try_from(authority).unwrap(),
            path: String::new(),
        };
        super::host_header(&base).to_str().unwrap().to_owned()
    };
    assert_eq!(host(Scheme::HTTPS, "openrouter.ai"), "openrouter.ai");
    assert_eq!(host(Scheme::HTTPS, "openrouter.ai:443"), "openrouter.ai");
    assert_eq!(host(Scheme::HTTP, "gateway:80"), "gateway");
    assert_eq!(host(Scheme::HTTPS, "gateway:8443"), "gateway:8443");
    assert_eq!(
        host(Scheme::HTTP, "user:secret@gateway:8080"),
        "gateway:8080"
    );
}
