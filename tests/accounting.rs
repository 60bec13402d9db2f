//! Every request ends well and is accounted: a first-token deadline that fails
//! over inside the client's one stream, and a record of each request when its
//! response ends (how, how long, how many bytes, tokens and cost).

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
