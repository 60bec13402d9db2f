//! The mock OpenRouter for the benchmark: JSON completions and SSE streams,
//! shaped by the query string (`latency`, `chunks`, `interval` in ms; `stream=1`).
//! Each SSE chunk carries its send time, so the client can measure per-chunk delay.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::time::Sleep;

const COMPLETION: &[u8] = br#"{"id":"gen-bench","object":"chat.completion","model":"bench/model:free","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the mock upstream."},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":7,"total_tokens":16}}"#;

/// Wall-clock nanoseconds: the mock runs in its own process, and chunk send
/// and receive times are compared across processes.
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[derive(Clone, Copy)]
struct Shape {
    latency: Duration,
    stream: bool,
    chunks: u32,
    interval: Duration,
    /// A non-200 status answers with OpenRouter's error body for it.
    status: u16,
}

fn shape(query: Option<&str>) -> Shape {
    let mut shape = Shape {
        latency: Duration::ZERO,
        stream: false,
        chunks: 10,
        interval: Duration::from_millis(10),
        status: 200,
    };
    for pair in query.unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let n: u64 = v.parse().unwrap_or(0);
        match k {
            "latency" => shape.latency = Duration::from_millis(n),
            "stream" => shape.stream = n == 1,
            "chunks" => shape.chunks = n as u32,
            "interval" => shape.interval = Duration::from_millis(n),
            "status" => shape.status = u16::try_from(n).unwrap_or(500),
            _ => {}
        }
    }
    shape
}

/// Runs the mock as its own process (so its sockets do not share the
/// benchmark client's file-descriptor limit): prints `ready <port>`, serves until killed.
/// With `--mock-tls <cert.pem> <key.pem>` it speaks TLS (ALPN `h2`, `http/1.1`), as
/// OpenRouter does.
pub fn run_process() {
    let args: Vec<String> = std::env::args().collect();
    let tls = args
        .iter()
        .position(|a| a == "--mock-tls")
        .map(|at| acceptor(&args[at + 1], &args[at + 2]));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let addr = start(tls).await;
        println!("ready {}", addr.port());
        std::future::pending::<()>().await;
    });
}

fn acceptor(cert: &str, key: &str) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .expect("certificate file")
        .collect::<Result<Vec<_>, _>>()
        .expect("certificates");
    let key = PrivateKeyDer::from_pem_file(key).expect("key file");
    let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("certificate and key");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
}

/// Starts the mock on 127.0.0.1:0 in the current runtime, over TLS with `tls`.
pub async fn start(tls: Option<tokio_rustls::TlsAcceptor>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mock");
    let addr = listener.local_addr().expect("mock address");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    let shape = shape(req.uri().query());
                    let _ = req.into_body().collect().await;
                    if !shape.latency.is_zero() {
                        tokio::time::sleep(shape.latency).await;
                    }
                    Ok::<_, Infallible>(respond(shape))
                });
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                // Many thousands of streams may share one HTTP/2 connection from the proxy.
                builder.http2().max_concurrent_streams(None);
                match tls {
                    None => {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                    Some(tls) => {
                        if let Ok(stream) = tls.accept(stream).await {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                }
            });
        }
    });
    addr
}

const PROVIDER_429: &[u8] = br#"{"error":{"message":"Provider returned error","code":429,"metadata":{"raw":"temporarily rate-limited upstream","limit_source":"upstream_provider_shared_pool"}}}"#;
const SERVER_500: &[u8] = br#"{"error":{"code":500,"message":"Internal Server Error"}}"#;

fn respond(shape: Shape) -> Response<MockBody> {
    if shape.status != 200 {
        let body = if shape.status == 429 {
            PROVIDER_429
        } else {
            SERVER_500
        };
        return Response::builder()
            .status(shape.status)
            .header("content-type", "application/json")
            .body(Either::Left(Full::new(Bytes::from_static(body))))
            .expect("valid response");
    }
    if shape.stream {
        let body = Either::Right(TimedChunks {
            left: shape.chunks,
            interval: shape.interval,
            next: None,
            done: false,
        });
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(body)
            .expect("valid response")
    } else {
        Response::builder()
            .header("content-type", "application/json")
            .body(Either::Left(Full::new(Bytes::from_static(COMPLETION))))
            .expect("valid response")
    }
}

/// A JSON body, or an SSE stream of timestamped chunks then `[DONE]`.
pub type MockBody = Either<Full<Bytes>, TimedChunks>;

/// `left` timestamped chunks, one every `interval` (the first at once), then `[DONE]`.
pub struct TimedChunks {
    left: u32,
    interval: Duration,
    next: Option<Pin<Box<Sleep>>>,
    done: bool,
}

fn chunk() -> Bytes {
    let nanos = now_nanos();
    format!("data: {{\"t\":{nanos},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token \"}}}}]}}\n\n").into()
}

impl Body for TimedChunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(sleep) = this.next.as_mut() {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let deadline = sleep.deadline() + this.interval;
            sleep.as_mut().reset(deadline);
        } else {
            // The first chunk goes out at once: time to first byte is the proxy's alone.
            this.next = Some(Box::pin(tokio::time::sleep(this.interval)));
        }
        if this.left == 0 {
            this.done = true;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                b"data: [DONE]\n\n",
            )))));
        }
        this.left -= 1;
        Poll::Ready(Some(Ok(Frame::data(chunk()))))
    }
}
