//! Test helpers: a mock OpenRouter that records what it receives and plays
//! scripted replies, the proxy started in-process on port 0, and a small client.
#![allow(dead_code)] // each test file uses a different part of the helpers

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use openrouter_proxy::app::App;
use openrouter_proxy::config::Config;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

pub mod fleet;
pub mod process;
pub mod redis_server;
pub mod tls;
#[allow(unused_imports)] // only the process-level test files use it
pub use process::Running;

pub const PROXY_KEY: &str = "proxy-key-0123456789";
pub const KEY_A: &str = "sk-or-v1-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa0001";
pub const KEY_B: &str = "sk-or-v1-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb0002";
pub const KEY_C: &str = "sk-or-v1-cccccccccccccccccccccccccccccccc0003";

/// One request as the mock upstream saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
    pub version: hyper::Version,
}

impl Seen {
    /// The OpenRouter key the proxy sent, without `Bearer `.
    pub fn key(&self) -> String {
        let auth = self
            .headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        auth.strip_prefix("Bearer ").unwrap_or(&auth).to_owned()
    }
}

/// A scripted reply from the mock upstream.
pub enum Reply {
    /// Status, headers, whole body.
    Full(u16, Vec<(&'static str, String)>, Bytes),
    /// 200 `text/event-stream`, with chunks fed through the sender the test keeps.
    Stream(mpsc::Receiver<Bytes>),
    /// 200 with this content type, chunks fed through the sender the test keeps.
    Fed(&'static str, mpsc::Receiver<Bytes>),
    /// Accept the request and never answer.
    Hang,
}

impl Reply {
    pub fn json(status: u16, body: &str) -> Reply {
        Reply::Full(
            status,
            vec![("content-type", "application/json".into())],
            Bytes::copy_from_slice(body.as_bytes()),
        )
    }

    /// A complete event stream: each event sent at once, then the end.
    pub fn sse(events: &[&str]) -> Reply {
        let (tx, rx) = mpsc::channel(events.len().max(1));
        for event in events {
            tx.try_send(Bytes::copy_from_slice(event.as_bytes()))
                .unwrap();
        }
        Reply::Stream(rx)
    }

    pub fn ok() -> Reply {
        Reply::json(
            200,
            r#"{"id":"gen-1","choices":[{"message":{"role":"assistant","content":"hi"}}]}"#,
        )
    }
}

type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

/// The mock OpenRouter.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Each connection accepted: the protocol TLS' ALPN chose (`h2`, `http/1.1`), or
    /// `plain` without TLS; a failed handshake is `handshake failed`.
    pub connections: Arc<Mutex<Vec<String>>>,
    /// With TLS: `https` base URLs.
    tls: bool,
}

impl Upstream {
    /// Starts a mock that answers every request with `handler`.
    pub async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Upstream {
        Upstream::serve(None, handler).await
    }

    /// Starts a mock that speaks TLS (ALPN `h2`, `http/1.1`) with `acceptor`'s certificate.
    pub async fn start_tls(
        acceptor: tokio_rustls::TlsAcceptor,
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Upstream {
        Upstream::serve(Some(acceptor), handler).await
    }

    async fn serve(
        tls: Option<tokio_rustls::TlsAcceptor>,
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let recorded = Arc::clone(&seen);
        let accepted = Arc::clone(&connections);
        let with_tls = tls.is_some();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (handler, recorded) = (Arc::clone(&handler), Arc::clone(&recorded));
                let (tls, accepted) = (tls.clone(), Arc::clone(&accepted));
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (handler, recorded) = (Arc::clone(&handler), Arc::clone(&recorded));
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(http_body_util::Collected::to_bytes)
                                .unwrap_or_default();
                            let seen = Seen {
                                version: parts.version,
                                method: parts.method.to_string(),
                                path_and_query: parts
                                    .uri
                                    .path_and_query()
                                    .map(ToString::to_string)
                                    .unwrap_or_default(),
                                headers: parts.headers,
                                body,
                                at: Instant::now(),
                            };
                            let reply = handler(&seen);
                            recorded.lock().unwrap().push(seen);
                            Ok::<_, Infallible>(render(reply).await)
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let Some(tls) = tls else {
                        accepted.lock().unwrap().push("plain".to_owned());
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                        return;
                    };
                    let Ok(stream) = tls.accept(stream).await else {
                        accepted.lock().unwrap().push("handshake failed".to_owned());
                        return;
                    };
                    let alpn = stream.get_ref().1.alpn_protocol().unwrap_or(b"none");
                    accepted
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(alpn).into_owned());
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            seen,
            connections,
            tls: with_tls,
        }
    }

    /// The first request gets an event stream fed by the returned sender, chunk by
    /// chunk as the test sends them; later requests get 200.
    pub async fn with_stream() -> (Upstream, mpsc::Sender<Bytes>) {
        let (chunks, rx) = mpsc::channel::<Bytes>(8);
        let rx = Mutex::new(Some(rx));
        let upstream = Upstream::start(move |_| {
            rx.lock()
                .unwrap()
                .take()
                .map_or_else(Reply::ok, Reply::Stream)
        })
        .await;
        (upstream, chunks)
    }

    /// Plays `replies` in order, then answers 200 to everything.
    pub async fn script(replies: Vec<Reply>) -> Upstream {
        let replies = Mutex::new(std::collections::VecDeque::from(replies));
        Upstream::start(move |_| {
            replies
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(Reply::ok)
        })
        .await
    }

    /// Answers 200 with a small completion to everything.
    pub async fn ok() -> Upstream {
        Upstream::start(|_| Reply::ok()).await
    }

    pub fn base_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/api/v1", self.addr)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn render(reply: Reply) -> Response<MockBody> {
    match reply {
        Reply::Full(status, headers, body) => {
            let mut response = Response::new(Either::Left(Full::new(body)));
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            for (name, value) in headers {
                response.headers_mut().append(
                    HeaderName::from_static(name),
                    HeaderValue::from_str(&value).unwrap(),
                );
            }
            response
        }
        Reply::Stream(chunks) => fed("text/event-stream", chunks),
        Reply::Fed(content_type, chunks) => fed(content_type, chunks),
        Reply::Hang => std::future::pending().await,
    }
}

fn fed(content_type: &'static str, chunks: mpsc::Receiver<Bytes>) -> Response<MockBody> {
    let mut response = Response::new(Either::Right(ChannelBody(chunks)));
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static(content_type));
    response
}

/// A 200 of `content_type` that repeats `heartbeat` every 100 ms and never sends anything
/// else (OpenRouter waiting for a provider); the flag turns true once the proxy closed it.
pub fn heartbeats(
    content_type: &'static str,
    heartbeat: &'static str,
) -> (Reply, Arc<std::sync::atomic::AtomicBool>) {
    let (tx, rx) = mpsc::channel(4);
    let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&closed);
    tokio::spawn(async move {
        // Bounded: a test that forgets it still ends (10 minutes of heartbeats at most).
        for _ in 0..6000 {
            if tx
                .send(Bytes::from_static(heartbeat.as_bytes()))
                .await
                .is_err()
            {
                flag.store(true, std::sync::atomic::Ordering::Relaxed);
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (Reply::Fed(content_type, rx), closed)
}

/// Feeds 16 KiB content events into `chunks` as fast as they are taken (a bounded number);
/// the task ends true once the proxy dropped the upstream request.
pub fn feed_until_closed(chunks: mpsc::Sender<Bytes>) -> tokio::task::JoinHandle<bool> {
    let event = Bytes::from(format!(
        "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n",
        "x".repeat(16 * 1024)
    ));
    tokio::spawn(async move {
        for _ in 0..100_000 {
            if chunks.send(event.clone()).await.is_err() {
                return true;
            }
        }
        false
    })
}

/// The id the proxy shows for `secret`: `#` and the first 4 hex digits of its SHA-256, then
/// the masked key (the test keys of one list differ in those digits).
pub fn key_id(secret: &str) -> String {
    let digest = openrouter_proxy::config::file::sha256(secret.as_bytes());
    format!(
        "#{:02x}{:02x} {}",
        digest[0],
        digest[1],
        openrouter_proxy::mask::mask(secret)
    )
}

/// The key in a `/key_status` answer whose masked id ends like `secret`.
pub fn key_in<'s>(status: &'s serde_json::Value, secret: &str) -> &'s serde_json::Value {
    let tail = &secret[secret.len() - 4..];
    status["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"].as_str().unwrap().ends_with(tail))
        .unwrap_or_else(|| panic!("no key …{tail} in {status}"))
}

/// The mock's response body: whole, or chunks as the test sends them.
pub type MockBody = Either<Full<Bytes>, ChannelBody>;

/// A body of the chunks a test sends, ended when the test drops its sender.
pub struct ChannelBody(mpsc::Receiver<Bytes>);

impl ChannelBody {
    pub fn new(chunks: mpsc::Receiver<Bytes>) -> Self {
        ChannelBody(chunks)
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

/// The proxy running in-process on 127.0.0.1:0.
pub struct Proxy {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A configuration for tests: the given variables over sensible test defaults.
pub fn config(base_url: &str, vars: &[(&str, &str)]) -> Config {
    let mut map: HashMap<String, String> = [
        ("PROXY_API_KEY", PROXY_KEY.to_owned()),
        ("OPENROUTER_KEYS", format!("{KEY_A},{KEY_B}")),
        ("OPENROUTER_BASE_URL", base_url.to_owned()),
        ("FREE_BURST", "1000".to_owned()),
        ("SHUTDOWN_GRACE", "1".to_owned()),
        ("RETRY_BACKOFF", "0".to_owned()),
        ("KEY_PROBE_INTERVAL", "0".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    map.extend(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    Config::from_lookup(|name| map.get(name).cloned()).expect("valid test configuration")
}

impl Proxy {
    pub async fn start(base_url: &str, vars: &[(&str, &str)]) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = App::new(config(base_url, vars));
        let (stop, stopped) = oneshot::channel::<()>();
        openrouter_proxy::keys::probe::spawn(&app);
        let served = Arc::clone(&app);
        tokio::spawn(openrouter_proxy::server::serve(listener, served, async {
            let _ = stopped.await;
        }));
        Proxy {
            addr,
            app,
            stop: Some(stop),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The proxy with `keys` as `OPENROUTER_KEYS` that never waits for a key (`MAX_WAIT=0`).
    pub async fn with_keys(upstream: &Upstream, keys: &str) -> Proxy {
        let vars = [("OPENROUTER_KEYS", keys), ("MAX_WAIT", "0")];
        Proxy::start(&upstream.base_url(), &vars).await
    }
}

/// A finished response as the client saw it.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// Header `name`, which must be there, as text.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }

    /// The `Retry-After` header in seconds.
    pub fn retry_after(&self) -> u64 {
        self.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Asserts the OpenRouter error shape with this code.
    pub fn assert_error(&self, code: u16) {
        assert_eq!(self.status, code, "{}", self.text());
        assert_error_shape(&self.json(), code);
    }
}

/// Asserts `{"error":{"code":code,"message":"<not empty>"}}`.
pub fn assert_error_shape(json: &serde_json::Value, code: u16) {
    assert_eq!(json["error"]["code"], code, "{json}");
    assert!(
        json["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{json}"
    );
}

pub type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Builds a request to the proxy with the proxy key as bearer.
pub fn request(method: &str, url: &str) -> hyper::http::request::Builder {
    Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {PROXY_KEY}"))
}

/// POSTs `body` (JSON) to `url` with bearer `key` and collects the whole answer.
pub async fn post_json(url: &str, key: &str, body: &str) -> Answer {
    send(
        Request::builder()
            .method("POST")
            .uri(url)
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
            .unwrap(),
    )
    .await
}

/// Sends a request and collects the whole answer.
pub async fn send(req: Request<Full<Bytes>>) -> Answer {
    let response = client().request(req).await.expect("the proxy answers");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("the body arrives").to_bytes();
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

/// Opens a streaming chat completion at `url` with the proxy key and returns its
/// body, to be read frame by frame.
pub async fn open_stream(url: &str) -> hyper::body::Incoming {
    let req = request("POST", url)
        .body(Full::new(Bytes::from_static(
            br#"{"model":"a/b","stream":true}"#,
        )))
        .unwrap();
    client()
        .request(req)
        .await
        .expect("the proxy answers")
        .into_body()
}

/// Sends `event` from the mock upstream and asserts the client receives exactly it, at once.
pub async fn relay_one(
    chunks: &mpsc::Sender<Bytes>,
    body: &mut hyper::body::Incoming,
    event: &'static str,
) {
    chunks
        .send(Bytes::from_static(event.as_bytes()))
        .await
        .unwrap();
    let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(frame, event);
}

/// Asserts that no two requests reached the mock closer together than `at_least`.
pub fn assert_spaced(upstream: &Upstream, at_least: Duration) {
    let mut times: Vec<_> = upstream.requests().iter().map(|s| s.at).collect();
    times.sort();
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= at_least, "requests only {gap:?} apart");
    }
}

/// `n` chat completions for `model` sent at once; their statuses.
pub async fn concurrent_chats(proxy: &Proxy, model: &str, n: usize) -> Vec<u16> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let url = proxy.url("/api/v1/chat/completions");
        let body = format!(r#"{{"model":"{model}"}}"#);
        tasks.spawn(async move {
            let req = request("POST", &url)
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            send(req).await.status
        });
    }
    tasks.join_all().await
}

/// POSTs a chat completion for `model` with the proxy key.
pub async fn chat(proxy: &Proxy, model: &str) -> Answer {
    let body = format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#);
    let req = request("POST", &proxy.url("/api/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    send(req).await
}

/// GETs a path with the proxy key.
pub async fn get(proxy: &Proxy, path: &str) -> Answer {
    send(
        request("GET", &proxy.url(path))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
}

/// Waits until the proxy binary whose stderr goes to `log` says where it listens (it was
/// started with `UVICORN_PORT=0`, so the port is its own pick: no race with other tests).
pub async fn listening_port(log: &std::path::Path) -> Option<u16> {
    let mut port = None;
    eventually(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        port = text
            .split("listening on 127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|digits| digits.parse().ok());
        port.is_some()
    })
    .await;
    port
}

/// A base URL where nothing listens.
pub async fn closed_base_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/api/v1")
}

/// Waits up to `limit` for `condition`, polling every 10 ms.
pub async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}
