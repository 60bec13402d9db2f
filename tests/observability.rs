//! /metrics, the status page and JSON logs, as a person watching the proxy sees them.
// Prometheus values are f64; every compared value here is a small integer count, exact in f64.
#![allow(clippy::float_cmp)]

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use prometheus_parse::{Scrape, Value};

const FREE: &str = "qwen/qwen3-coder:free";

fn daily_429() -> Reply {
    Reply::json(
        429,
        r#"{"error":{"message":"Rate limit exceeded: free-models-per-day","code":429,"metadata":{"headers":{"X-RateLimit-Reset":"4102444800000"}}}}"#,
    )
}

fn scrape(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("valid Prometheus text format")
}

/// The value of `name` with `labels`.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"));
    match &sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
        Value::Summary(_) => panic!("unexpected summary"),
    }
}

#[tokio::test]
async fn metrics_count_requests_errors_and_key_state_in_prometheus_format() {
    let upstream = Upstream::script(vec![daily_429()]).await;
    let proxy = Proxy::start(&upstream.base_url(), &[]).await;
    for _ in 0..3 {
        assert_eq!(chat(&proxy, FREE).await.status, 200);
    }
    assert_eq!(get(&proxy, "/api/v1/models").await.status, 200);
    let stream = request("POST", &proxy.url("/api/v1/chat/completions"))
        .body(Full::new(Bytes::from_static(
            b"{\"model\":\"a/b\",\"stream\":true}",
        )))
        .unwrap();
    send(stream).await;
    get(&proxy, "/key_status").await;

    let answer = get(&proxy, "/metrics").await;
    assert_eq!(answer.status, 200);
    assert!(answer.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = answer.text();
    assert!(!text.contains(KEY_A) && !text.contains(KEY_B) && !text.contains(PROXY_KEY));
    let m = scrape(&text);
    for (route, count) in [
        ("chat_completions", 4.0),
        ("other_proxied", 1.0),
        ("own", 1.0),
    ] {
        let labels = [("route", route), ("status", "2xx")];
        assert_eq!(
            value(&m, "openrouter_proxy_requests_total", &labels),
            count,
            "{route}"
        );
    }
    assert_eq!(
        value(&m, "openrouter_proxy_upstream_attempts_total", &[]),
        6.0
    );
    assert_eq!(
        value(&m, "openrouter_proxy_upstream_retries_total", &[]),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "openrouter_proxy_upstream_errors_total",
            &[("class", "free-daily")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "openrouter_proxy_upstream_errors_total",
            &[("class", "server")]
        ),
        0.0
    );
    let (id_a, id_b) = (key_id(KEY_A), key_id(KEY_B));
    let a = [("key", id_a.as_str())];
    assert_eq!(value(&m, "openrouter_proxy_key_blocked", &a), 1.0);
    assert!(value(&m, "openrouter_proxy_key_blocked_seconds", &a) > 1e9);
    // Quota series are per account (each key here is an account of its own).
    let (account_a, account_b) = ([("account", id_a.as_str())], [("account", id_b.as_str())]);
    assert_eq!(
        value(
            &m,
            "openrouter_proxy_account_free_requests_today",
            &account_b
        ),
        3.0
    );
    assert_eq!(
        value(&m, "openrouter_proxy_account_daily_limit", &account_a),
        50.0
    );
    assert_eq!(value(&m, "openrouter_proxy_open_streams", &[]), 0.0);
    assert_eq!(
        value(&m, "openrouter_proxy_in_flight_requests", &[]),
        1.0,
        "only the scrape itself"
    );
    // One arrival-to-upstream observation per request, one time-to-headers per attempt.
    assert_eq!(
        value(&m, "openrouter_proxy_overhead_before_upstream_seconds", &[]),
        5.0
    );
    assert_eq!(
        value(&m, "openrouter_proxy_upstream_time_to_headers_seconds", &[]),
        6.0
    );
    assert_eq!(
        value(&m, "openrouter_proxy_overhead_after_upstream_seconds", &[]),
        5.0
    );
}

#[tokio::test]
async fn metrics_need_the_proxy_key_unless_made_public() {
    let upstream = Upstream::ok().await;
    let private = Proxy::start(&upstream.base_url(), &[]).await;
    let anonymous = |proxy: &Proxy| {
        hyper::Request::get(proxy.url("/metrics"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    send(anonymous(&private)).await.assert_error(401);
    let public = Proxy::start(&upstream.base_url(), &[("METRICS_PUBLIC", "true")]).await;
    assert_eq!(send(anonymous(&public)).await.status, 200);
    assert!(upstream.requests().is_empty());
}

#[tokio::test]
async fn the_status_page_is_one_self_contained_html_page() {
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(&upstream.base_url(), &[]).await;
    for (path, accept) in [("/status", "*/*"), ("/", "text/html,application/xhtml+xml")] {
        let req = hyper::Request::get(proxy.url(path))
            .header("accept", accept)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let page = send(req).await;
        assert_eq!(page.status, 200, "{path}");
        assert!(page.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        let html = page.text();
        assert!(html.contains("fetch(\"/key_status\"") && html.contains("sessionStorage"));
        assert!(
            !html.contains("src=\"http") && !html.contains("href=\"http"),
            "external assets"
        );
    }
    // The icon a browser asks for with the page: nothing, without a key, not forwarded.
    let icon = send(
        hyper::Request::get(proxy.url("/favicon.ico"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(icon.status, 204);
    assert!(upstream.requests().is_empty());
}

/// The binary at TRACE level with JSON logs, its stderr written to `log`.
fn spawn_traced(
    base_url: &str,
    state: &std::path::Path,
    log: &std::path::Path,
) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_openrouter-proxy"))
        .env_clear()
        .envs(HashMap::from([
            ("PROXY_API_KEY", PROXY_KEY.to_owned()),
            ("OPENROUTER_KEYS", format!("{KEY_A},{KEY_B}")),
            ("OPENROUTER_BASE_URL", base_url.to_owned()),
            ("UVICORN_HOST", "127.0.0.1".to_owned()),
            ("UVICORN_PORT", "0".to_owned()),
            ("UVICORN_LOG_LEVEL", "trace".to_owned()),
            ("LOG_FORMAT", "json".to_owned()),
            ("KEY_PROBE_INTERVAL", "0".to_owned()),
            ("STATE_FILE", state.display().to_string()),
        ]))
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_and_trace_never_shows_a_key() {
    let upstream = Upstream::script(vec![daily_429()]).await;
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("proxy.log");
    let mut child = spawn_traced(
        &upstream.base_url(),
        &dir.path().join("state.json"),
        &log_path,
    );
    let port = listening_port(&log_path).await.expect("the proxy starts");
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let body = format!(r#"{{"model":"{FREE}","messages":[{{"role":"user","content":"hi"}}]}}"#);
    let chat = request("POST", &url("/api/v1/chat/completions"))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    assert_eq!(send(chat).await.status, 200);
    let status = send(
        request("GET", &url("/key_status"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
    .text();
    let metrics = send(
        request("GET", &url("/metrics"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
    .text();
    let page = send(
        hyper::Request::get(url("/status"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
    .text();
    assert!(Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap()
        .success());
    child.wait().unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap();
    let state = std::fs::read_to_string(dir.path().join("state.json")).unwrap();

    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines
        .iter()
        .all(|l| l["ts"].is_string() && l["level"].is_string() && l["msg"].is_string()));
    let request_line = lines
        .iter()
        .find(|l| {
            l["msg"]
                .as_str()
                .unwrap()
                .starts_with("POST /api/v1/chat/completions")
        })
        .expect("a request line");
    assert_eq!(request_line["level"], "INFO");
    assert!(
        request_line["msg"]
            .as_str()
            .unwrap()
            .contains("attempts=2 status=200"),
        "{request_line}"
    );
    assert!(lines
        .iter()
        .any(|l| l["level"] == "WARN" && l["msg"].as_str().unwrap().contains("free-daily")));
    assert!(lines
        .iter()
        .any(|l| l["level"] == "TRACE" && l["msg"].as_str().unwrap().contains("request body")));
    for (name, text) in [
        ("log", &log),
        ("/key_status", &status),
        ("/metrics", &metrics),
        ("status page", &page),
        ("state file", &state),
    ] {
        for secret in [KEY_A, KEY_B, PROXY_KEY] {
            assert!(!text.contains(secret), "{secret} appears in the {name}");
        }
    }
}

#[tokio::test]
async fn short_keys_get_unique_ids_and_metrics_have_no_duplicate_series() {
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(&upstream.base_url(), &[("OPENROUTER_KEYS", "k1,k2,k3")]).await;
    let status = get(&proxy, "/key_status").await.json();
    let ids: Vec<&str> = status["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    // Each `#<4 hex digits of its fingerprint> …`: all three mask to `…`, the ids differ.
    assert!(
        ids.iter()
            .all(|id| id.len() == "#3f9a …".len() && id.ends_with(" …")),
        "{ids:?}"
    );
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
        "{ids:?}"
    );
    let metrics = get(&proxy, "/metrics").await.text();
    let mut series: Vec<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').map(|(name, _)| name))
        .collect();
    let total = series.len();
    series.sort_unstable();
    series.dedup();
    assert_eq!(series.len(), total, "duplicate series in:\n{metrics}");
}

#[tokio::test]
async fn refused_proxy_keys_are_logged_without_the_key_and_rate_limited() {
    let upstream = Upstream::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Running::start(&upstream.base_url(), &dir.path().join("s.json"), &[]).await;
    for _ in 0..20 {
        let refused = send(
            hyper::Request::post(proxy.url("/api/v1/chat/completions"))
                .header("authorization", "Bearer wrong-key-wrong-key-wrong")
                .body(Full::new(Bytes::from_static(b"{}")))
                .unwrap(),
        )
        .await;
        refused.assert_error(401);
    }
    let log = proxy.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refused a request"))
        .collect();
    assert!(!lines.is_empty(), "no refusal logged:\n{log}");
    assert!(lines.len() <= 3, "a scanner floods the log:\n{log}");
    assert!(
        lines[0].contains("/api/v1/chat/completions")
            && lines[0].contains("127.0.0.1:")
            && lines[0].contains("authorization"),
        "{log}"
    );
    assert!(
        !log.contains("wrong-key"),
        "a presented key was logged:\n{log}"
    );
    assert!(upstream.requests().is_empty());
}

#[tokio::test]
async fn each_key_is_announced_at_startup_and_an_odd_one_is_warned_about() {
    let upstream = Upstream::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let keys = format!("{KEY_A}:10,notanopenrouterkey");
    let proxy = Running::start(
        &upstream.base_url(),
        &dir.path().join("s.json"),
        &[("OPENROUTER_KEYS", &keys)],
    )
    .await;
    let log = proxy.log_text();
    assert!(
        log.contains(&format!(
            "key {a}: account {a}, daily free-model limit 10 (configured)",
            a = key_id(KEY_A)
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "key {b}: account {b}, daily free-model limit 50 (default)",
            b = key_id("notanopenrouterkey")
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "key {} does not start with sk-or-",
            key_id("notanopenrouterkey")
        )),
        "{log}"
    );
    assert!(!log.contains("notanopenrouterkey"), "{log}");
}
