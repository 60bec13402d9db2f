//! The key manager through the HTTP proxy: rotation, quotas, limiter spacing, 429s, /key_status.

mod common;

use std::time::Duration;

use common::*;

const FREE: &str = "qwen/qwen3-coder:free";
const PAID: &str = "openai/gpt-4o";

fn keys_seen(upstream: &Upstream) -> Vec<String> {
    upstream.requests().iter().map(Seen::key).collect()
}

/// One key whose limiter admits `rpm` free-model requests a minute, one at a time,
/// with requests waiting up to `max_wait` seconds for it.
async fn one_limited_key(upstream: &Upstream, rpm: &str, max_wait: &str) -> Proxy {
    let vars = [
        ("OPENROUTER_KEYS", KEY_A),
        ("FREE_RPM", rpm),
        ("FREE_BURST", "1"),
        ("MAX_WAIT", max_wait),
    ];
    Proxy::start(&upstream.base_url(), &vars).await
}

#[tokio::test]
async fn free_requests_rotate_by_remaining_share_of_the_daily_quota() {
    let upstream = Upstream::ok().await;
    let keys = format!("{KEY_A}:100,{KEY_B}:10");
    let proxy = Proxy::start(&upstream.base_url(), &[("OPENROUTER_KEYS", &keys)]).await;
    for _ in 0..5 {
        assert_eq!(chat(&proxy, FREE).await.status, 200);
    }
    // Equal shares: least recently used (A); then B has 10/10 left against A's 99/100;
    // after that A's 98/100 beats B's 9/10.
    assert_eq!(keys_seen(&upstream), [KEY_A, KEY_B, KEY_A, KEY_A, KEY_A]);
}

#[tokio::test]
async fn a_key_at_its_daily_limit_is_skipped() {
    let upstream = Upstream::ok().await;
    let keys = format!("{KEY_A}:1,{KEY_B}:5");
    let proxy = Proxy::start(&upstream.base_url(), &[("OPENROUTER_KEYS", &keys)]).await;
    for _ in 0..4 {
        assert_eq!(chat(&proxy, FREE).await.status, 200);
    }
    assert_eq!(keys_seen(&upstream), [KEY_A, KEY_B, KEY_B, KEY_B]);
}

#[tokio::test]
async fn free_model_requests_are_spaced_by_the_limiter_and_wait_instead_of_failing() {
    let upstream = Upstream::ok().await;
    // 600/min with burst 1: one request per 100 ms on the single key.
    let proxy = one_limited_key(&upstream, "600", "10").await;
    let answers = concurrent_chats(&proxy, FREE, 4).await;
    assert!(answers.iter().all(|&status| status == 200), "{answers:?}");
    assert_spaced(&upstream, Duration::from_millis(95));
}

#[tokio::test]
async fn paid_model_requests_use_no_free_quota() {
    let upstream = Upstream::ok().await;
    let keys = format!("{KEY_A}:1");
    let proxy = Proxy::with_keys(&upstream, &keys).await;
    for _ in 0..5 {
        assert_eq!(chat(&proxy, PAID).await.status, 200);
    }
    assert_eq!(get(&proxy, "/api/v1/models").await.status, 200);
    let status = get(&proxy, "/key_status").await.json();
    assert_eq!(status["keys"][0]["daily_used"], 0);
    assert_eq!(status["keys"][0]["totals"]["requests"], 6);
    assert_eq!(chat(&proxy, FREE).await.status, 200);
    assert_eq!(
        get(&proxy, "/key_status").await.json()["keys"][0]["daily_used"],
        1
    );
}

#[tokio::test]
async fn when_every_key_is_at_its_daily_limit_the_client_gets_429_with_retry_after() {
    let upstream = Upstream::ok().await;
    let keys = format!("{KEY_A}:1,{KEY_B}:1");
    let proxy = Proxy::with_keys(&upstream, &keys).await;
    chat(&proxy, FREE).await;
    chat(&proxy, FREE).await;
    let answer = chat(&proxy, FREE).await;
    answer.assert_error(429);
    let retry_after = answer.retry_after();
    assert!((1..=86_400).contains(&retry_after), "{retry_after}");
    assert!(
        answer.text().contains("daily free-model limit"),
        "{}",
        answer.text()
    );
    assert_eq!(
        upstream.requests().len(),
        2,
        "the refused request never reached upstream"
    );
    // Paid models still go through.
    assert_eq!(chat(&proxy, PAID).await.status, 200);
}

#[tokio::test]
async fn a_throttled_key_past_max_wait_gives_429_naming_the_throttle() {
    let upstream = Upstream::ok().await;
    let proxy = one_limited_key(&upstream, "1", "1").await;
    assert_eq!(chat(&proxy, FREE).await.status, 200);
    let answer = chat(&proxy, FREE).await;
    answer.assert_error(429);
    let retry_after = answer.retry_after();
    assert!((55..=60).contains(&retry_after), "{retry_after}");
    assert!(answer.text().contains("throttled"), "{}", answer.text());
}

#[tokio::test]
async fn key_status_needs_auth_and_shows_masked_keys_only() {
    let upstream = Upstream::ok().await;
    let keys = format!("{KEY_A}:1000,{KEY_B}");
    let proxy = Proxy::start(
        &upstream.base_url(),
        &[("OPENROUTER_KEYS", &keys), ("TIMEZONE", "Europe/Moscow")],
    )
    .await;
    chat(&proxy, FREE).await;
    let anonymous = send(
        hyper::Request::get(proxy.url("/key_status"))
            .body(http_body_util::Full::default())
            .unwrap(),
    )
    .await;
    anonymous.assert_error(401);
    let answer = get(&proxy, "/key-status").await;
    assert_eq!(answer.status, 200);
    let text = answer.text();
    assert!(
        !text.contains(KEY_A) && !text.contains(KEY_B) && !text.contains(PROXY_KEY),
        "{text}"
    );
    let status = answer.json();
    assert_eq!(status["timezone"], "Europe/Moscow");
    assert!(
        status["next_reset"]
            .as_str()
            .unwrap()
            .ends_with("T00:00:00+03:00"),
        "{status}"
    );
    let first = &status["keys"][0];
    let id = first["id"].as_str().unwrap();
    assert!(
        id.starts_with('#') && id.ends_with(" sk-or-v1-aa…0001"),
        "{id}"
    );
    assert_eq!(first["daily_used"], 1);
    assert_eq!(first["daily_limit"], 1000);
    assert_eq!(first["daily_remaining"], 999);
    assert_eq!(first["limit_source"], "configured");
    assert_eq!(first["status"], "active");
    assert_eq!(first["blocked_until"], serde_json::Value::Null);
    assert_eq!(first["totals"]["successes"], 1);
    assert_eq!(status["keys"][1]["daily_limit"], 50);
    assert_eq!(status["keys"][1]["limit_source"], "default");
}
