//! Requests that end badly are still held to account: an answer that stalls is ended at
//! `STREAM_IDLE_TIMEOUT` (JSON too), a client that leaves before the response head, a
//! JSON answer that never starts, usage no answer can carry, a second SIGTERM: each gets
//! its end-of-request line and metric, through the real binary.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use tokio::sync::mpsc;

const FREE: &str = "qwen/qwen3-coder:free";

fn chat_body() -> Bytes {
    Bytes::from(format!(r#"{{"model":"{FREE}","messages":[]}}"#))
}

/// A mock whose first answer is a JSON 200 fed by the returned sender (later ones: 200).
async fn fed_json() -> (Upstream, mpsc::Sender<Bytes>) {
    let (chunks, rx) = mpsc::channel::<Bytes>(64);
    let rx = Mutex::new(Some(rx));
    let upstream = Upstream::start(move |_| {
        rx.lock()
            .unwrap()
            .take()
            .map_or_else(Reply::ok, |rx| Reply::Fed("application/json", rx))
    })
    .await;
    (upstream, chunks)
}

/// The end-of-request line, once the binary wrote it.
async fn end_line(proxy: &Running) -> String {
    proxy.wait_for_log("ended=").await;
    let log = proxy.log_text();
    log.lines()
        .find(|l| l.contains("ended="))
        .unwrap()
        .to_owned()
}

async fn metrics(proxy: &Running) -> String {
    send(
        request("GET", &proxy.url("/metrics"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
    .text()
}

fn ended_total(metrics: &str, ended: &str) -> u64 {
    let label = format!("openrouter_proxy_requests_ended_total{{ended=\"{ended}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&label))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {label} in\n{metrics}"))
}

fn start(
    dir: &tempfile::TempDir,
    upstream: &Upstream,
    vars: &[(&str, &str)],
) -> impl std::future::Future<Output = Running> {
    let (base, state) = (upstream.base_url(), dir.path().join("state.json"));
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    async move {
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Running::start(&base, &state, &vars).await
    }
}

#[tokio::test]
async fn a_json_answer_that_stalls_after_its_first_byte_ends_with_a_504_at_the_idle_timeout() {
    let (upstream, chunks) = fed_json().await;
    chunks
        .send(Bytes::from_static(br#"{"id":"gen-p","#))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let proxy = start(&dir, &upstream, &[("STREAM_IDLE_TIMEOUT", "1")]).await;
    let began = Instant::now();
    let asked = send(
        request("POST", &proxy.url("/api/v1/chat/completions"))
            .body(Full::new(chat_body()))
            .unwrap(),
    );
    let answer = tokio::time::timeout(Duration::from_secs(10), asked)
        .await
        .expect("the proxy answers a stalled JSON answer in time");
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    answer.assert_error(504);
    assert!(
        answer.text().contains("STREAM_IDLE_TIMEOUT"),
        "{}",
        answer.text()
    );
    let line = end_line(&proxy).await;
    assert!(
        line.contains("status=504") && line.contains("ended=idle_timeout"),
        "{line}"
    );
    assert_eq!(ended_total(&metrics(&proxy).await, "idle_timeout"), 1);
    assert_eq!(
        upstream.requests().len(),
        1,
        "not retried: it may have been generated"
    );
    drop(chunks);
}

#[tokio::test]
async fn a_long_json_answer_that_stalls_while_piped_is_cut_at_the_idle_timeout() {
    let (upstream, chunks) = fed_json().await;
    // Past the 64 KiB the proxy holds to classify: from here it is piped to the client.
    let mut start_of_answer = br#"{"id":"gen-long","choices":[{"message":{"content":""#.to_vec();
    start_of_answer.resize(70 * 1024, b'a');
    chunks.send(Bytes::from(start_of_answer)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let proxy = start(&dir, &upstream, &[("STREAM_IDLE_TIMEOUT", "1")]).await;
    let response = client()
        .request(
            request("POST", &proxy.url("/api/v1/chat/completions"))
                .body(Full::new(chat_body()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let began = Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect()).await;
    let read = read.expect("the proxy ended the body");
    assert!(read.is_err(), "a stalled answer must not look complete");
    assert!(began.elapsed() < Duration::from_secs(5));
    let line = end_line(&proxy).await;
    assert!(line.contains("ended=idle_timeout"), "{line}");
    drop(chunks);
}

#[tokio::test]
async fn a_client_that_leaves_before_the_response_head_gets_its_end_line_and_metric() {
    let upstream = Upstream::start(|_| Reply::Hang).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start(
        &dir,
        &upstream,
        &[("UPSTREAM_TIMEOUT", "0"), ("FIRST_TOKEN_TIMEOUT", "0")],
    )
    .await;
    let url = proxy.url("/api/v1/chat/completions");
    let gave_up = tokio::time::timeout(
        Duration::from_millis(500),
        send(request("POST", &url).body(Full::new(chat_body())).unwrap()),
    )
    .await;
    assert!(gave_up.is_err(), "the upstream never answers");
    let line = end_line(&proxy).await;
    for part in ["ended=client_closed", "status=499", "attempts=1", "key=#"] {
        assert!(line.contains(part), "{part} not in {line}");
    }
    assert_eq!(ended_total(&metrics(&proxy).await, "client_closed"), 1);
    assert_eq!(upstream.requests().len(), 1);
}

#[tokio::test]
async fn a_json_answer_with_no_first_token_ends_as_first_token_timeout() {
    let (reply, _closed) = heartbeats("application/json", "\n");
    let reply = Arc::new(Mutex::new(Some(reply)));
    let upstream =
        Upstream::start(move |_| reply.lock().unwrap().take().unwrap_or(Reply::Hang)).await;
    let dir = tempfile::tempdir().unwrap();
    let vars = [("FIRST_TOKEN_TIMEOUT", "1"), ("MAX_RETRIES", "0")];
    let proxy = start(&dir, &upstream, &vars).await;
    let answer = send(
        request("POST", &proxy.url("/api/v1/chat/completions"))
            .body(Full::new(chat_body()))
            .unwrap(),
    )
    .await;
    answer.assert_error(408);
    let line = end_line(&proxy).await;
    assert!(
        line.contains("status=408") && line.contains("ended=first_token_timeout"),
        "{line}"
    );
    assert_eq!(
        ended_total(&metrics(&proxy).await, "first_token_timeout"),
        1
    );
}

#[tokio::test]
async fn usage_no_answer_can_carry_is_ignored_and_counters_never_wrap() {
    let answers = Arc::new(Mutex::new(vec![
        r#"{"id":"gen-2","usage":{"prompt_tokens":7,"completion_tokens":3,"cost":0.5}}"#,
        r#"{"id":"gen-1","usage":{"prompt_tokens":18446744073709551615,"completion_tokens":5,"cost":1e300}}"#,
    ]));
    let upstream = Upstream::start(move |_| {
        let body = answers.lock().unwrap().pop().unwrap_or(r#"{"id":"x"}"#);
        Reply::json(200, body)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start(&dir, &upstream, &[]).await;
    for _ in 0..2 {
        let answer = send(
            request("POST", &proxy.url("/api/v1/chat/completions"))
                .body(Full::new(chat_body()))
                .unwrap(),
        )
        .await;
        assert_eq!(answer.status, 200);
    }
    let settled = eventually(Duration::from_secs(5), || {
        proxy.log_text().matches("ended=").count() == 2
    })
    .await;
    assert!(settled);
    let status = proxy.key_status().await;
    let lifetime = |what: &str| -> u64 {
        status["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["usage"]["lifetime"][what].as_u64().unwrap())
            .sum()
    };
    assert_eq!(lifetime("prompt_tokens"), 7, "{status}");
    assert_eq!(lifetime("completion_tokens"), 3, "{status}");
    let log = proxy.log_text();
    assert!(log.contains("ignored a usage no answer can carry"), "{log}");
}

#[tokio::test]
async fn a_second_sigterm_writes_every_request_line_before_it_exits() {
    let (upstream, chunks) = Upstream::with_stream().await;
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = start(&dir, &upstream, &[("SHUTDOWN_GRACE", "60")]).await;
    // A stream held open, so the first signal waits for it.
    let mut body = open_stream(&proxy.url("/api/v1/chat/completions")).await;
    relay_one(&chunks, &mut body, "data: {}\n\n").await;
    // Requests keep the workers busy while the signals arrive; each one the client got
    // whole must be in the log.
    let completed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (url, completed) = (
            proxy.url("/api/v1/chat/completions"),
            Arc::clone(&completed),
        );
        load.spawn(async move {
            // Bounded: 200 requests a task at most; the proxy's exit ends it sooner.
            for _ in 0..200 {
                let body = Bytes::from_static(br#"{"model":"openai/gpt-4o","messages":[]}"#);
                let asked = client().request(request("POST", &url).body(Full::new(body)).unwrap());
                let Ok(response) = asked.await else { return };
                if response.into_body().collect().await.is_ok() {
                    completed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.signal("TERM");
    proxy.signal("TERM");
    assert_eq!(proxy.wait(Duration::from_secs(10)).code(), Some(1));
    load.join_all().await;
    let completed = completed.load(std::sync::atomic::Ordering::SeqCst);
    let log = proxy.log_text();
    let lines = log
        .lines()
        .filter(|l| l.contains("ended=completed") && l.contains("model=openai/gpt-4o"))
        .count();
    assert!(completed > 16, "the load ran: {completed}");
    assert!(lines >= completed, "{completed} answered, {lines} logged");
}
