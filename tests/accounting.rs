//! Every request ends well and is accounted: a first-token deadline that fails
//! over inside the client's one stream, and a record of each request when its
//! response ends (how, how long, how many bytes, tokens and cost).
#![allow(clippy::float_cmp)] // counters and sums of exact binary fractions, read back from text

mod common;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};

const FREE: &str = "qwen/qwen3-coder:free";
const PROCESSING: &str = ": OPENROUTER PROCESSING\n\n";
const CONTENT: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"Hello\"}}]}\n\n";

/// A mock whose first `stalls` answers are heartbeats only (streams of comments, or JSON
/// whitespace for non-streaming requests); later ones answer at once. The flags say which
/// stalled answers the proxy closed.
async fn stalling(stalls: usize) -> (Upstream, Arc<Mutex<Vec<Arc<AtomicBool>>>>) {
    let closed = Arc::new(Mutex::new(Vec::new()));
    let flags = Arc::clone(&closed);
    let upstream = Upstream::start(move |seen| {
        let streaming = String::from_utf8_lossy(&seen.body).contains("\"stream\":true");
        let mut flags = flags.lock().unwrap();
        if flags.len() < stalls {
            let (reply, flag) = if streaming {
                heartbeats("text/event-stream", PROCESSING)
            } else {
                heartbeats("application/json", "\n")
            };
            flags.push(flag);
            return reply;
        }
        if streaming {
            Reply::sse(&[CONTENT, "data: [DONE]\n\n"])
        } else {
            Reply::ok()
        }
    })
    .await;
    (upstream, closed)
}

fn stream_body(model: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"model":"{model}","stream":true,"messages":[]}}"#
    ))
}

async fn post(proxy: &Proxy, body: Bytes) -> Answer {
    send(
        request("POST", &proxy.url("/api/v1/chat/completions"))
            .body(Full::new(body))
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn a_stream_of_comments_only_is_abandoned_at_the_first_token_deadline_and_retried_in_the_same_stream(
) {
    let (upstream, closed) = stalling(1).await;
    let proxy = Proxy::start(&upstream.base_url(), &[("FIRST_TOKEN_TIMEOUT", "1")]).await;
    let answer = post(&proxy, stream_body(FREE)).await;
    assert_eq!(answer.status, 200);
    let text = answer.text();
    assert!(text.starts_with(": OPENROUTER PROCESSING"), "{text}");
    assert!(text.contains(CONTENT), "{text}");
    assert!(!text.contains("error"), "{text}");
    assert_eq!(upstream.requests().len(), 2);
    let closed = eventually(Duration::from_secs(5), || {
        closed.lock().unwrap()[0].load(Relaxed)
    })
    .await;
    assert!(closed, "the abandoned upstream request was kept open");
    let status = get(&proxy, "/key_status").await.json();
    // OpenRouter counted the abandoned attempt: both took a unit of quota.
    let used: u64 = status["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["daily_used"].as_u64().unwrap())
        .sum();
    assert_eq!(used, 2, "{status}");
}

#[tokio::test]
async fn when_every_attempt_stalls_the_client_gets_one_error_event_after_the_retries() {
    let (upstream, _closed) = stalling(usize::MAX).await;
    let proxy = Proxy::start(
        &upstream.base_url(),
        &[("FIRST_TOKEN_TIMEOUT", "1"), ("MAX_RETRIES", "2")],
    )
    .await;
    let answer = post(&proxy, stream_body(FREE)).await;
    assert_eq!(answer.status, 200);
    let text = answer.text();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| e.starts_with("data:"))
        .collect();
    assert_eq!(events.len(), 1, "{text}");
    let error: serde_json::Value =
        serde_json::from_str(events[0].trim_start_matches("data:").trim()).unwrap();
    assert_error_shape(&error, 408);
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("FIRST_TOKEN_TIMEOUT"));
    assert_eq!(upstream.requests().len(), 3);
}

#[tokio::test]
async fn a_json_answer_kept_open_with_whitespace_is_retried_at_the_deadline() {
    let (upstream, closed) = stalling(1).await;
    let proxy = Proxy::start(&upstream.base_url(), &[("FIRST_TOKEN_TIMEOUT", "1")]).await;
    let body = Bytes::from(format!(r#"{{"model":"{FREE}","messages":[]}}"#));
    let answer = post(&proxy, body).await;
    assert_eq!(answer.status, 200);
    assert!(
        answer.text().contains("\"content\":\"hi\""),
        "{}",
        answer.text()
    );
    assert_eq!(upstream.requests().len(), 2);
    assert!(
        eventually(Duration::from_secs(5), || closed.lock().unwrap()[0]
            .load(Relaxed))
        .await
    );
}

#[tokio::test]
async fn a_client_that_leaves_while_the_proxy_waits_for_the_first_token_closes_the_upstream_request(
) {
    let (upstream, closed) = stalling(1).await;
    let proxy = Proxy::start(&upstream.base_url(), &[("FIRST_TOKEN_TIMEOUT", "30")]).await;
    let response = client()
        .request(
            request("POST", &proxy.url("/api/v1/chat/completions"))
                .body(Full::new(stream_body(FREE)))
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(first.starts_with(b": OPENROUTER"));
    drop(body);
    assert!(
        eventually(Duration::from_secs(5), || closed.lock().unwrap()[0]
            .load(Relaxed))
        .await
    );
    assert_eq!(
        upstream.requests().len(),
        1,
        "no retry for a client that left"
    );
}

const USAGE_EVENT: &str = "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":100,\"completion_tokens\":20,\"total_tokens\":120,\"cost\":0.0015,\"completion_tokens_details\":{\"reasoning_tokens\":5}}}\n\n";
const USAGE_JSON: &str = r#"{"id":"gen-9","choices":[{"message":{"role":"assistant","content":"hi"}}],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10,"cost":0.00025}}"#;

/// A sample of `/metrics`: the value of `name` with all of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .find(|l| {
            l.starts_with(name)
                && l[name.len()..].starts_with(['{', ' '])
                && labels.iter().all(|x| l.contains(x))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
}

#[tokio::test]
async fn tokens_and_cost_of_streams_and_json_answers_are_counted_per_key_account_and_minute() {
    let upstream = Upstream::start(|seen| {
        if String::from_utf8_lossy(&seen.body).contains("\"stream\":true") {
            Reply::sse(&[PROCESSING, CONTENT, USAGE_EVENT, "data: [DONE]\n\n"])
        } else {
            Reply::json(200, USAGE_JSON)
        }
    })
    .await;
    let keys = format!("{KEY_A}@team,{KEY_B}@team");
    let proxy = Proxy::start(&upstream.base_url(), &[("OPENROUTER_KEYS", keys.as_str())]).await;
    assert_eq!(post(&proxy, stream_body(FREE)).await.status, 200);
    let json = Bytes::from(format!(r#"{{"model":"{FREE}","messages":[]}}"#));
    assert_eq!(post(&proxy, json).await.status, 200);
    let status = get(&proxy, "/key_status").await.json();
    let team = &status["accounts"][0];
    assert_eq!(team["usage"]["today"]["prompt_tokens"], 107, "{status}");
    assert_eq!(team["usage"]["today"]["completion_tokens"], 23);
    assert!((team["usage"]["lifetime"]["cost"].as_f64().unwrap() - 0.00175).abs() < 1e-12);
    let per_key: u64 = status["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["usage"]["today"]["prompt_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(per_key, 107);
    let last = |series: &str| team["history"][series][59].as_u64().unwrap();
    assert_eq!(
        (last("requests"), last("free_requests"), last("tokens")),
        (2, 2, 130)
    );
    assert_eq!(status["history"]["requests"][59], 2);
    let metrics = get(&proxy, "/metrics").await.text();
    assert_eq!(
        metric(
            &metrics,
            "openrouter_proxy_account_prompt_tokens_total",
            &["account=\"team\""]
        ),
        107.0
    );
    assert_eq!(
        metric(
            &metrics,
            "openrouter_proxy_account_cost_usd_total",
            &["team"]
        ),
        0.00175
    );
    assert_eq!(
        metric(
            &metrics,
            "openrouter_proxy_requests_ended_total",
            &["ended=\"completed\""]
        ),
        2.0
    );
    assert_eq!(
        metric(
            &metrics,
            "openrouter_proxy_request_duration_seconds_count",
            &[]
        ),
        2.0
    );
    assert_eq!(
        metric(
            &metrics,
            "openrouter_proxy_time_to_first_content_seconds_count",
            &[]
        ),
        2.0
    );
}

#[tokio::test]
async fn a_stream_whose_client_leaves_or_whose_upstream_breaks_is_recorded_as_such() {
    let (upstream, chunks) = Upstream::with_stream().await;
    let proxy = Proxy::start(&upstream.base_url(), &[]).await;
    let mut stream = open_stream(&proxy.url("/api/v1/chat/completions")).await;
    relay_one(&chunks, &mut stream, CONTENT).await;
    drop(stream);
    let ended = |name: &'static str| {
        let proxy_url = proxy.url("/metrics");
        async move {
            let text = send(
                request("GET", &proxy_url)
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .text();
            metric(&text, "openrouter_proxy_requests_ended_total", &[name])
        }
    };
    let mut left = 0.0;
    for _ in 0..100 {
        left = ended("client_closed").await;
        if left == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(left, 1.0);
    assert_eq!(
        ended("completed").await,
        0.0,
        "a stream the client left is no clean 200"
    );
    drop(chunks);

    // An upstream that sends content, then drops its connection mid-stream.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/api/v1", listener.local_addr().unwrap());
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut head = [0u8; 4096];
        let _ = socket.read(&mut head).await;
        let chunk = format!("{:x}\r\n{CONTENT}\r\n", CONTENT.len());
        let answer = format!("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}");
        let _ = socket.write_all(answer.as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
    let broken = Proxy::start(&base, &[]).await;
    let text = post(&broken, stream_body("a/b")).await.text();
    assert!(
        text.contains(CONTENT) && text.contains("broke off"),
        "{text}"
    );
    let metrics = get(&broken, "/metrics").await.text();
    assert_eq!(
        metric(
            &metrics,
            "openrouter_proxy_requests_ended_total",
            &["upstream_error"]
        ),
        1.0
    );
}

#[tokio::test]
async fn the_binary_logs_one_line_per_request_when_it_ends_and_keeps_usage_across_a_restart() {
    let upstream = Upstream::start(|seen| {
        if String::from_utf8_lossy(&seen.body).contains("\"stream\":true") {
            Reply::sse(&[CONTENT, USAGE_EVENT, "data: [DONE]\n\n"])
        } else {
            Reply::json(200, USAGE_JSON)
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let vars = [("STATE_FLUSH_INTERVAL", "0")];
    let mut proxy = Running::start(&upstream.base_url(), &state, &vars).await;
    let answer = send(
        request("POST", &proxy.url("/api/v1/chat/completions"))
            .body(Full::new(stream_body(FREE)))
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, 200);
    let sent = answer.text().len();
    proxy.wait_for_log("ended=").await;
    let log = proxy.log_text();
    let line = log.lines().find(|l| l.contains("ended=")).unwrap();
    for part in [
        "POST /api/v1/chat/completions",
        "model=qwen/qwen3-coder:free",
        "account=",
        "attempts=1",
        "status=200",
        "ended=completed",
        "ttfb=",
        "total=",
        "tokens=100/20",
        "cost=0.001500",
    ] {
        assert!(line.contains(part), "{part} not in: {line}");
    }
    assert!(
        line.contains(&format!("bytes={sent}")),
        "{sent} bytes sent: {line}"
    );
    proxy.signal("TERM");
    assert!(proxy.wait(Duration::from_secs(10)).success());
    let restarted = Running::start(&upstream.base_url(), &state, &vars).await;
    let status = restarted.key_status().await;
    let prompt: u64 = status["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["usage"]["lifetime"]["prompt_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(prompt, 100, "{status}");
}

#[tokio::test]
async fn a_wait_for_the_limiter_is_shown_as_waited_not_hidden_in_the_time_to_first_byte() {
    let upstream = Upstream::ok().await;
    let dir = tempfile::tempdir().unwrap();
    // One key, 60 free requests a minute, no burst: the second request waits about 1 s.
    let keys = format!("{KEY_A}:100");
    let vars = [
        ("OPENROUTER_KEYS", keys.as_str()),
        ("FREE_RPM", "60"),
        ("FREE_BURST", "1"),
    ];
    let proxy = Running::start(&upstream.base_url(), &dir.path().join("state.json"), &vars).await;
    for _ in 0..2 {
        assert_eq!(proxy.chat(FREE).await.status, 200);
    }
    let logged = eventually(Duration::from_secs(5), || {
        proxy.log_text().matches("ended=").count() == 2
    })
    .await;
    assert!(logged, "{}", proxy.log_text());
    let log = proxy.log_text();
    let waits: Vec<f64> = log
        .lines()
        .filter_map(|l| l.split(" waited=").nth(1))
        .map(|rest| rest.split("ms").next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(waits.len(), 2, "{log}");
    assert!(waits[0] < 100.0 && waits[1] > 500.0, "{waits:?}");
    let metrics = send(
        request("GET", &proxy.url("/metrics"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
    .text();
    assert_eq!(
        metric(&metrics, "openrouter_proxy_queue_wait_seconds_count", &[]),
        2.0
    );
    assert!(metric(&metrics, "openrouter_proxy_queue_wait_seconds_sum", &[]) > 0.5);
}
