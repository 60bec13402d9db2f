//! The path that ships: HTTPS to OpenRouter (HTTP/2 by ALPN, every stream of a worker on
//! one TLS connection), `EXTRA_CA_FILE`, and `rediss://`, all against a CA the test makes.

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::redis_server::RedisServer;
use common::tls::TestCa;
use common::*;
use http_body_util::BodyExt;
use tokio::sync::mpsc;

/// Streams held open together over the HTTPS upstream.
const STREAMS: usize = 24;
const EVENT: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n";

/// A TLS mock: JSON for a plain request; for `"stream":true`, an event stream fed through
/// a sender kept in the returned list, so the streams stay open together.
async fn tls_upstream(ca: &TestCa) -> (Upstream, Arc<Mutex<Vec<mpsc::Sender<Bytes>>>>) {
    tls_upstream_offering(ca, &[b"h2", b"http/1.1"]).await
}

/// [`tls_upstream`] offering `protocols` by ALPN.
async fn tls_upstream_offering(
    ca: &TestCa,
    protocols: &[&[u8]],
) -> (Upstream, Arc<Mutex<Vec<mpsc::Sender<Bytes>>>>) {
    let feeds = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&feeds);
    let acceptor = ca.server().acceptor_offering(protocols);
    let upstream = Upstream::start_tls(acceptor, move |seen| {
        if seen.body.windows(13).any(|w| w == b"\"stream\":true") {
            let (tx, rx) = mpsc::channel(4);
            kept.lock().unwrap().push(tx);
            Reply::Stream(rx)
        } else {
            Reply::ok()
        }
    })
    .await;
    (upstream, feeds)
}

#[tokio::test]
async fn json_and_a_burst_of_streams_go_over_https_with_http2_one_connection_per_worker() {
    let ca = TestCa::new("test CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write(dir.path(), "ca.pem");
    let (upstream, feeds) = tls_upstream(&ca).await;
    let checked = Command::new(env!("CARGO_BIN_EXE_openrouter-proxy"))
        .arg("--check-config")
        .current_dir(dir.path())
        .env_clear()
        .env("PROXY_API_KEY", PROXY_KEY)
        .env("OPENROUTER_KEYS", KEY_A)
        .env("EXTRA_CA_FILE", &ca_file)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&checked.stdout)
            .contains("trusted CAs: the compiled-in roots and 1 from EXTRA_CA_FILE"),
        "{checked:?}"
    );
    // With the startup probe of `/key`, as deployed.
    let proxy = Running::start(
        &upstream.base_url(),
        &dir.path().join("state.json"),
        &[
            ("EXTRA_CA_FILE", ca_file.to_str().unwrap()),
            ("OPENROUTER_KEYS", KEY_A),
            ("KEY_PROBE_INTERVAL", "300"),
        ],
    )
    .await;
    let probed = async {
        while proxy.key_status().await["keys"][0]["probe"].is_null() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), probed)
        .await
        .expect("the startup probe reached the mock");

    hold_a_burst_of_streams(&proxy, &feeds).await;
    let answer = proxy.chat("a/b").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(
        answer.text().contains("\"content\":\"hi\""),
        "{}",
        answer.text()
    );

    let requests = upstream.requests();
    assert_eq!(
        requests.len(),
        STREAMS + 2,
        "the probe, the streams, the JSON"
    );
    assert!(requests.iter().all(|r| r.version == hyper::Version::HTTP_2));
    // The probe's connection (made on the main thread), then one per worker.
    let connections = upstream.connections.lock().unwrap().clone();
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    assert!(
        connections.iter().all(|c| c == "h2") && connections.len() <= workers + 1,
        "{} requests over {connections:?} with {workers} workers",
        requests.len()
    );
}

/// A burst of streams on the workers' cold pools, opened all at once as a swarm of agents
/// would; held open together (each has its response head, none has ended), then fed.
async fn hold_a_burst_of_streams(proxy: &Running, feeds: &Mutex<Vec<mpsc::Sender<Bytes>>>) {
    let url = proxy.url("/api/v1/chat/completions");
    let opening: Vec<_> = (0..STREAMS)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { open_stream(&url).await })
        })
        .collect();
    let mut bodies = Vec::new();
    for opened in opening {
        bodies.push(opened.await.unwrap());
    }
    let senders: Vec<_> = feeds.lock().unwrap().drain(..).collect();
    assert_eq!(senders.len(), STREAMS);
    for sender in senders {
        sender
            .send(Bytes::from_static(EVENT.as_bytes()))
            .await
            .unwrap();
    }
    for body in bodies {
        let text = tokio::time::timeout(Duration::from_secs(10), body.collect())
            .await
            .expect("the stream ends once its sender is gone")
            .unwrap()
            .to_bytes();
        assert_eq!(text, EVENT.as_bytes());
    }
}

/// The proxy in front of `upstream` with one key and no startup probe, trusting `ca`
/// through `EXTRA_CA_FILE` (kept in the returned directory).
async fn proxy_trusting(ca: &TestCa, upstream: &Upstream) -> (Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write(dir.path(), "ca.pem");
    let proxy = Running::start(
        &upstream.base_url(),
        &dir.path().join("state.json"),
        &[
            ("EXTRA_CA_FILE", ca_file.to_str().unwrap()),
            ("OPENROUTER_KEYS", KEY_A),
        ],
    )
    .await;
    (proxy, dir)
}

#[tokio::test]
async fn without_a_startup_probe_a_burst_still_opens_one_http2_connection_per_worker() {
    let ca = TestCa::new("test CA");
    let (upstream, feeds) = tls_upstream(&ca).await;
    let (proxy, _dir) = proxy_trusting(&ca, &upstream).await;
    hold_a_burst_of_streams(&proxy, &feeds).await;
    let connections = upstream.connections.lock().unwrap().clone();
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    assert!(
        connections.iter().all(|c| c == "h2") && connections.len() <= workers,
        "{connections:?} with {workers} workers"
    );
}

#[tokio::test]
async fn an_https_upstream_offering_only_http1_gets_a_connection_per_open_stream_kept_for_later() {
    let ca = TestCa::new("test CA");
    let (upstream, feeds) = tls_upstream_offering(&ca, &[b"http/1.1"]).await;
    let (proxy, _dir) = proxy_trusting(&ca, &upstream).await;
    hold_a_burst_of_streams(&proxy, &feeds).await;
    for _ in 0..3 {
        let answer = proxy.chat("a/b").await;
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    assert!(upstream
        .requests()
        .iter()
        .all(|r| r.version == hyper::Version::HTTP_11));
    // One connection per stream held open together, then those kept idle serve the rest.
    let connections = upstream.connections.lock().unwrap().clone();
    assert!(
        connections.iter().all(|c| c == "http/1.1") && connections.len() == STREAMS,
        "{connections:?}"
    );
}

#[tokio::test]
async fn a_certificate_no_trusted_ca_signed_is_refused_with_a_502_and_costs_no_quota() {
    let (trusted, stranger) = (TestCa::new("trusted CA"), TestCa::new("stranger CA"));
    let dir = tempfile::tempdir().unwrap();
    let ca_file = trusted.write(dir.path(), "ca.pem");
    let (upstream, _feeds) = tls_upstream(&stranger).await;
    let proxy = Running::start(
        &upstream.base_url(),
        &dir.path().join("state.json"),
        &[
            ("EXTRA_CA_FILE", ca_file.to_str().unwrap()),
            ("MAX_RETRIES", "1"),
        ],
    )
    .await;
    let answer = proxy.chat("qwen/qwen3-coder:free").await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert!(
        answer.text().contains("could not reach OpenRouter"),
        "{}",
        answer.text()
    );
    assert!(upstream.requests().is_empty());
    let status = proxy.key_status().await;
    for key in status["keys"].as_array().unwrap() {
        assert_eq!(
            key["daily_used"], 0,
            "quota spent on a refused certificate: {key}"
        );
        assert_eq!(
            key["totals"]["requests"], key["totals"]["unreached"],
            "{key}"
        );
    }
    let log = proxy.log_text();
    assert!(
        log.contains("could not reach OpenRouter: the TLS handshake with 127.0.0.1 failed")
            && log.contains("UnknownIssuer"),
        "{log}"
    );
}

#[test]
fn an_extra_ca_file_that_is_missing_not_pem_or_without_a_certificate_stops_startup() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let key_only = dir.path().join("key.pem");
    std::fs::write(
        &key_only,
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let missing = dir.path().join("missing.pem");
    for (file, said) in [
        (&missing, "cannot read"),
        (&garbage, "is not a PEM file"),
        (&key_only, "holds no certificate"),
    ] {
        let run = Command::new(env!("CARGO_BIN_EXE_openrouter-proxy"))
            .current_dir(dir.path())
            .env_clear()
            .env("PROXY_API_KEY", PROXY_KEY)
            .env("OPENROUTER_KEYS", KEY_A)
            .env("UVICORN_PORT", "0")
            .env("EXTRA_CA_FILE", file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(64), "{stderr}");
        let expected = format!("EXTRA_CA_FILE: {}", file.display());
        assert!(
            stderr.contains(&expected) || stderr.contains(&format!("EXTRA_CA_FILE: {said}")),
            "{stderr}"
        );
        assert!(stderr.contains(said), "{stderr}");
    }
}

#[tokio::test]
async fn replicas_share_quota_through_rediss_checked_against_the_extra_ca() {
    let ca = TestCa::new("redis CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write(dir.path(), "ca.pem");
    let (cert, key) = ca.server().write(dir.path());
    let Some(redis) = RedisServer::start_tls(
        "replicas_share_quota_through_rediss_checked_against_the_extra_ca",
        &cert,
        &key,
        &ca_file,
    ) else {
        return;
    };
    let upstream = Upstream::ok().await;
    let (url, ca_path) = (redis.tls_url(), ca_file.to_str().unwrap().to_owned());
    let replica = |name: &'static str| {
        let (url, ca_path, base) = (url.clone(), ca_path.clone(), upstream.base_url());
        let state = dir.path().join(format!("{name}.json"));
        async move {
            Running::start(
                &base,
                &state,
                &[
                    ("REDIS_URL", &url),
                    ("EXTRA_CA_FILE", &ca_path),
                    ("REDIS_TIMEOUT_MS", "2000"),
                ],
            )
            .await
        }
    };
    let (one, two) = (replica("one").await, replica("two").await);
    for proxy in [&one, &two, &one] {
        let answer = proxy.chat("qwen/qwen3-coder:free").await;
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    // Both see the fleet's three, which only Redis (over TLS) could have told them.
    let used = |status: serde_json::Value| -> u64 {
        status["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["daily_used"].as_u64().unwrap())
            .sum()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut counts = [0, 0];
    while std::time::Instant::now() < deadline {
        counts = [used(one.key_status().await), used(two.key_status().await)];
        if counts == [3, 3] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(counts, [3, 3], "{}\n{}", one.log_text(), two.log_text());
    let health = send(
        request("GET", &one.url("/health?format=json"))
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
    .json();
    assert_eq!(health["redis"], "ok", "{health}");
    // The plain port shows the keys the replicas wrote over TLS.
    assert!(
        redis.dump().contains("openrouter-proxy:"),
        "{}",
        redis.dump()
    );
}
