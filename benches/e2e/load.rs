//! The benchmark's own client: latency, throughput, time to first byte and
//! per-chunk delay, against the mock directly or through the proxy.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use tokio::sync::Semaphore;

use crate::mock::now_nanos;

pub type BenchClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The benchmark's own CA, once the TLS rows made it: the client trusts it besides the
/// compiled-in roots, to talk HTTPS to the mock directly (the TLS baseline).
pub static BENCH_CA: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();

/// A free-model request (what most traffic through the proxy is).
pub const FREE_BODY: &[u8] =
    br#"{"model":"bench/model:free","messages":[{"role":"user","content":"Say hello."}]}"#;
/// A paid-model request: needs no quota unit or limiter slot.
pub const PAID_BODY: &[u8] =
    br#"{"model":"bench/model","messages":[{"role":"user","content":"Say hello."}]}"#;

/// HTTP/1.1 (as most agents' HTTP clients speak), plain or over TLS.
pub fn client() -> BenchClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let tls = openrouter_proxy::tls::client_config(BENCH_CA.get().map_or(&[], Vec::as_slice));
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .build(connector)
}

/// Where requests go: the mock itself, or the proxy in front of it.
#[derive(Clone)]
pub struct Target {
    pub url: String,
    pub auth: Option<String>,
    pub body: &'static [u8],
}

impl Target {
    /// The mock itself, asked directly.
    pub fn direct(url: &str) -> Target {
        Target {
            url: url.to_owned(),
            auth: None,
            body: FREE_BODY,
        }
    }

    /// nginx listening on `port` in front of the mock (no key).
    pub fn nginx(port: u16) -> Target {
        Target {
            url: format!("http://127.0.0.1:{port}/api/v1"),
            auth: None,
            body: FREE_BODY,
        }
    }

    /// The proxy listening on `port`, with the proxy key.
    pub fn proxy(port: u16) -> Target {
        Target {
            url: format!("http://127.0.0.1:{port}/api/v1"),
            auth: Some(format!("Bearer {}", crate::procs::PROXY_KEY)),
            body: FREE_BODY,
        }
    }
}

impl Target {
    /// A chat completion request; `query` shapes the mock's answer.
    pub fn request(&self, query: &str) -> Request<Full<Bytes>> {
        let mut builder = Request::post(format!("{}/chat/completions?{query}", self.url))
            .header("content-type", "application/json");
        if let Some(auth) = &self.auth {
            builder = builder.header("authorization", auth);
        }
        builder
            .body(Full::new(Bytes::from_static(self.body)))
            .expect("valid request")
    }
}

/// One JSON request; the time until the whole body is in.
pub async fn one(client: &BenchClient, target: &Target, query: &str) -> Duration {
    let started = Instant::now();
    let response = client
        .request(target.request(query))
        .await
        .expect("request succeeds");
    assert!(
        response.status().is_success(),
        "status {}",
        response.status()
    );
    response.into_body().collect().await.expect("body arrives");
    started.elapsed()
}

/// Sequential request latencies after `warmup` unmeasured ones.
pub async fn latencies(
    client: &BenchClient,
    target: &Target,
    n: usize,
    warmup: usize,
) -> Vec<Duration> {
    for _ in 0..warmup {
        one(client, target, "").await;
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(one(client, target, "").await);
    }
    out
}

/// Requests per second from `concurrency` loops over `duration`.
pub async fn throughput(
    client: &BenchClient,
    target: &Target,
    query: &'static str,
    concurrency: usize,
    duration: Duration,
) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, target, done) = (client.clone(), target.clone(), Arc::clone(&done));
        tasks.spawn(async move {
            while Instant::now() < deadline {
                one(&client, &target, query).await;
                done.fetch_add(1, Relaxed);
            }
        });
    }
    let started = Instant::now();
    tasks.join_all().await;
    done.load(Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Time from sending a streaming request to its first body byte, sequentially.
pub async fn ttfb(client: &BenchClient, target: &Target, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let started = Instant::now();
        let response = client
            .request(target.request("stream=1&chunks=1&interval=1"))
            .await
            .expect("stream starts");
        let mut body = response.into_body();
        body.frame()
            .await
            .expect("a first frame")
            .expect("no error");
        let elapsed = started.elapsed();
        while body.frame().await.is_some() {}
        if i >= n / 10 {
            out.push(elapsed);
        }
    }
    out
}

/// What many concurrent streams saw.
pub struct StreamRun {
    /// Receive time minus send time of every chunk.
    pub delays: Vec<Duration>,
    pub chunks: u64,
    pub expected: u64,
    pub failed: usize,
}

/// Opens `count` streams of `chunks` chunks `interval_ms` apart (at most 256
/// connecting at once), calls `all_open` once every stream has its first chunk,
/// then waits for all of them to finish.
pub async fn streams(
    target: &Target,
    count: usize,
    chunks: u32,
    interval_ms: u64,
    all_open: impl FnOnce(),
) -> StreamRun {
    let client = client();
    let opening = Arc::new(Semaphore::new(256));
    let open = Arc::new(AtomicUsize::new(0));
    let query: &'static str =
        Box::leak(format!("stream=1&chunks={chunks}&interval={interval_ms}").into_boxed_str());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..count {
        let (client, target, opening, open) = (
            client.clone(),
            target.clone(),
            Arc::clone(&opening),
            Arc::clone(&open),
        );
        tasks.spawn(async move {
            let permit = opening.acquire_owned().await.expect("semaphore open");
            let response = client.request(target.request(query)).await.ok()?;
            let mut body = response.into_body();
            let mut delays = Vec::with_capacity(chunks as usize);
            let mut carry: Vec<u8> = Vec::new();
            let mut permit = Some(permit);
            while let Some(frame) = body.frame().await {
                let now = now_nanos();
                let Ok(data) = frame.ok()?.into_data() else {
                    continue;
                };
                carry.extend_from_slice(&data);
                while let Some(end) = carry.windows(2).position(|w| w == b"\n\n") {
                    if let Some(sent) = timestamp(&carry[..end]) {
                        delays.push(Duration::from_nanos(now.saturating_sub(sent)));
                    }
                    carry.drain(..end + 2);
                }
                if permit.take().is_some() {
                    open.fetch_add(1, Relaxed);
                }
            }
            Some(delays)
        });
    }
    let mut all_open = Some(all_open);
    let mut results = Vec::with_capacity(count);
    let watch = async {
        while open.load(Relaxed) < count {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::pin!(watch);
    loop {
        tokio::select! {
            () = &mut watch, if all_open.is_some() => (all_open.take().expect("called once"))(),
            next = tasks.join_next() => match next {
                Some(result) => results.push(result.ok().flatten()),
                None => break,
            },
        }
    }
    let failed = results.iter().filter(|r| r.is_none()).count();
    let delays: Vec<Duration> = results.into_iter().flatten().flatten().collect();
    StreamRun {
        chunks: delays.len() as u64,
        delays,
        expected: count as u64 * u64::from(chunks),
        failed,
    }
}

fn timestamp(event: &[u8]) -> Option<u64> {
    let start = event.windows(4).position(|w| w == b"\"t\":")? + 4;
    let digits = event[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&event[start..start + digits])
        .ok()?
        .parse()
        .ok()
}

/// The `p`th percentile (0-100) of `values`.
pub fn percentile(values: &mut [Duration], p: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values.sort_unstable();
    let index = ((p / 100.0) * (values.len() - 1) as f64).round() as usize;
    values[index]
}
