//! Every kind of OpenRouter refusal, played by the mock, and what the client and the keys see.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;

const FREE: &str = "qwen/qwen3-coder:free";
const PAID: &str = "openai/gpt-4o";
const RESET_MS: i64 = 4_102_444_800_000; // 2100-01-01T00:00:00Z: far enough to still be in force

fn daily_429() -> Reply {
    Reply::json(
        429,
        &format!(
            r#"{{"error":{{"message":"Rate limit exceeded: free-models-per-day. Add 10 credits to unlock 1000 free model requests per day","code":429,"metadata":{{"headers":{{"X-RateLimit-Limit":"50","X-RateLimit-Remaining":"0","X-RateLimit-Reset":"{RESET_MS}"}},"provider_name":null}}}},"user_id":"user_2abc"}}"#
        ),
    )
}

const PER_MIN: &str = r#"{"error":{"message":"Rate limit exceeded: free-models-per-min. ","code":429,"metadata":{"headers":{"X-RateLimit-Limit":"20","X-RateLimit-Remaining":"0"},"provider_name":null}}}"#;
const PROVIDER_429: &str = r#"{"error":{"message":"Provider returned error","code":429,"metadata":{"raw":"deepseek/deepseek-v4-pro-0813 is temporarily rate-limited upstream. Please retry shortly, or add your own key to accumulate your rate limits: https://openrouter.ai/settings/integrations","provider_name":"DeepInfra","is_byok":false,"provider_error_code":"engine_overloaded","limit_source":"upstream_provider_shared_pool"}},"user_id":"user_2abc"}"#;
const CREDITS: &str = r#"{"error":{"code":402,"message":"Insufficient credits. Add more using https://openrouter.ai/credits"}}"#;
const KEY_LIMIT: &str = r#"{"error":{"code":403,"message":"Key limit exceeded (daily limit). Manage it using https://openrouter.ai/settings/keys"}}"#;
const MODERATION: &str = r#"{"error":{"code":403,"message":"Your input was flagged for \"self-harm/intent\". No credits were charged.","metadata":{"reasons":["self-harm/intent"],"flagged_input":"...","provider_name":"OpenAI","model_slug":"openai/gpt-4o"}}}"#;
const USER_NOT_FOUND: &str = r#"{"error":{"message":"User not found.","code":401}}"#;
const BAD_REQUEST: &str = r#"{"error":{"code":400,"message":"messages: Field required"}}"#;
const IN_200: &str = r#"{"id":null,"choices":null,"created":null,"model":null,"object":null,"usage":null,"error":{"message":"Provider returned error","code":429,"metadata":{"raw":"Too Many Requests","provider_name":"Hyperbolic"}},"user_id":"user_xyz"}"#;
const PROCESSING: &str = ": OPENROUTER PROCESSING\n\n";
const ERROR_EVENT: &str = "data: {\"id\":\"gen-abc123\",\"object\":\"chat.completion.chunk\",\"created\":1234567890,\"model\":\"openai/gpt-4o\",\"provider\":\"OpenAI\",\"error\":{\"code\":429,\"message\":\"Rate limit exceeded\",\"metadata\":{\"error_type\":\"rate_limit_exceeded\"}},\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"},\"finish_reason\":\"error\"}]}\n\n";
const CONTENT: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"Hello\"}}]}\n\n";
const DONE: &str = "data: [DONE]\n\n";

fn key_state(status: &serde_json::Value, index: usize) -> (String, String) {
    let key = &status["keys"][index];
    (
        key["status"].as_str().unwrap().to_owned(),
        key["block_reason"].as_str().unwrap_or("-").to_owned(),
    )
}

async fn stream_chat(proxy: &Proxy, model: &str) -> Answer {
    let body = format!(r#"{{"model":"{model}","stream":true}}"#);
    send(
        request("POST", &proxy.url("/api/v1/chat/completions"))
            .body(Full::new(Bytes::from(body)))
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn daily_limit_429_blocks_the_key_until_its_reset_and_fails_over_invisibly() {
    let upstream = Upstream::script(vec![daily_429()]).await;
    let proxy = Proxy::start(&upstream.base_url(), &[]).await;
    let answer = chat(&proxy, FREE).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let keys: Vec<_> = upstream.requests().iter().map(Seen::key).collect();
    assert_eq!(keys, [KEY_A, KEY_B]);
    let status = get(&proxy, "/key_status").await.json();
    assert_eq!(
        key_state(&status, 0),
        ("daily_limit_reached".into(), "daily_limit".into())
    );
    assert_eq!(
        status["keys"][0]["blocked_until"],
        "2100-01-01T00:00:00+00:00"
    );
    assert_eq!(status["keys"][0]["daily_remaining"], 0);
    assert_eq!(status["keys"][0]["totals"]["rate_limited"], 1);
    assert_eq!(key_state(&status, 1), ("active".into(), "-".into()));
    // The exhausted key is skipped from now on, but still serves paid models.
    chat(&proxy, FREE).await;
    assert_eq!(upstream.requests().last().unwrap().key(), KEY_B);
}

#[tokio::test]
async fn per_minute_429_blocks_the_key_for_a_minute_and_fails_over() {
    let upstream = Upstream::script(vec![Reply::json(429, PER_MIN)]).await;
    let proxy = Proxy::start(&upstream.base_url(), &[]).await;
    assert_eq!(chat(&proxy, FREE).await.status, 200);
    let status = get(&proxy, "/key_status").await.json();
    assert_eq!(
        key_state(&status, 0),
        ("blocked".into(), "per_minute_limit".into())
    );
    assert_eq!(upstream.requests().len(), 2);
    // A per-minute block is about free models: paid requests may still use the key.
    chat(&proxy, PAID).await;
    chat(&proxy, PAID).await;
    let keys: Vec<_> = upstream.requests().iter().skip(2).map(Seen::key).collect();
    assert!(keys.contains(&KEY_A.to_owned()), "{keys:?}");
}

#[tokio::test]
async fn provider_429s_are_retried_without_blaming_any_key() {
    let upstream = Upstream::script(vec![
        Reply::json(429, PROVIDER_429),
        Reply::json(429, PROVIDER_429),
    ])
    .await;
    let proxy = Proxy::start(&upstream.base_url(), &[]).await;
    assert_eq!(chat(&proxy, FREE).await.status, 200);
    assert_eq!(upstream.requests().len(), 3);
    let status = get(&proxy, "/key_status").await.json();
    assert_eq!(key_state(&status, 0).0, "active");
    assert_eq!(key_state(&status, 1).0, "active");
}

#[tokio::test]
async fn retry_after_is_honoured_before_the_next_attempt() {
    let busy = Reply::Full(
        503,
        vec![("retry-after", "1".into())],
        Bytes::from_static(br#"{"error":{"code":503,"message":"busy"}}"#),
    );
    let upstream = Upstream::script(vec![busy]).await;
    let proxy = Proxy::start(&upstream.base_url(), &[]).await;
    assert_eq!(chat(&proxy, PAID).await.status, 200);
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2);
    assert!(
        seen[1].at - seen[0].at >= Duration::from_millis(990),
        "waited only {:?}",
        seen[1].at - seen[0].at
    );
}

#[tokio::test]
async fn credits_key_limit_and_auth_refusals_park_the_key_and_fail_over() {
    for (reply, reason) in [
        (Reply::json(402, CREDITS), "insufficient_credits"),
        (Reply::json(403, KEY_LIMIT), "key_limit_exceeded"),
        (Reply::json(401, USER_NOT_FOUND), "unauthorized"),
    ] {
        let upstream = Upstream::script(vec![reply]).await;
        let proxy = Proxy::start(&upstream.base_url(), &[]).await;
        assert_eq!(chat(&proxy, PAID).await.status, 200, "{reason}");
        let status = get(&proxy, "/key_status").await.json();
        assert_eq!(key_state(&status, 0), ("blocked".into(), reason.into()));
        let keys: Vec<_> = upstream.requests().iter().map(Seen::key).collect();
        assert_eq!(keys, [KEY_A, KEY_B], "{reason}");
        // Parked for minutes, not forever.
        let until: jiff::Timestamp = status["keys"][0]["blocked_until"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let minutes = (until.as_second() - jiff::Timestamp::now().as_second()) / 60;
        assert!(
            (4..=60).contains(&minutes),
            "{reason}: parked {minutes} min"
        );
    }
}

#[tokio::test]
async fn request_errors_come_back_unchanged_without_a_retry() {
    for (status, body) in [
        (400, BAD_REQUEST),
        (403, MODERATION),
        (
            404,
            r#"{"error":{"message":"No endpoints found","code":404}}"#,
        ),
    ] {
        let upstream = Upstream::script(vec![Reply::json(status, body)]).await;
        let proxy = Proxy::start(&upstream.base_url(), &[]).await;
        let answer = chat(&proxy, PAID).await;
        assert_eq!((answer.status, answer.text().as_str()), (status, body));
        assert_eq!(upstream.requests().len(), 1);
    }
}

#[tokio::test]
async fn server_errors_and_timeouts_are_retried() {
    let upstream = Upstream::script(vec![
        Reply::json(
            502,
            r#"{"error":{"code":502,"message":"Provider returned error"}}"#,
        ),
        Reply::Full(
            524,
            vec![("content-type", "text/html".into())],
            Bytes::from_static(b"<html>timeout</html>"),
        ),
        Reply::json(
            408,
            r#"{"error":{"code":408,"message":"Operation timed out. Please try again later."}}"#,
        ),
    ])
    .await;
    let proxy = Proxy::start(&upstream.base_url(), &[]).await;
    assert_eq!(chat(&proxy, PAID).await.status, 200);
    assert_eq!(upstream.requests().len(), 4);
}

#[tokio::test]
async fn when_retries_run_out_the_client_gets_the_last_upstream_error_unchanged() {
    let upstream = Upstream::start(|_| Reply::json(429, PROVIDER_429)).await;
    let proxy = Proxy::start(&upstream.base_url(), &[("MAX_RETRIES", "2")]).await;
    let answer = chat(&proxy, FREE).await;
    assert_eq!((answer.status, answer.text().as_str()), (429, PROVIDER_429));
    assert_eq!(upstream.requests().len(), 3);
    let none = Upstream::start(|_| Reply::json(429, PROVIDER_429)).await;
    let proxy = Proxy::start(&none.base_url(), &[("MAX_RETRIES", "0")]).await;
    assert_eq!(chat(&proxy, FREE).await.status, 429);
    assert_eq!(none.requests().len(), 1, "MAX_RETRIES=0 means no retry");
}

#[tokio::test]
async fn a_200_with_an_error_body_is_retried_like_its_code() {
    let upstream = Upstream::script(vec![Reply::json(200, &format!("\n\n  {IN_200}"))]).await;
    let proxy = Proxy::start(&upstream.base_url(), &[]).await;
    let answer = chat(&proxy, PAID).await;
    assert_eq!(answer.status, 200);
    assert!(answer.json()["choices"].is_array(), "{}", answer.text());
    assert_eq!(upstream.requests().len(), 2);
}

#[tokio::test]
async fn a_pre_content_stream_error_is_retried_inside_one_clean_client_stream() {
    let upstream = Upstream::script(vec![
        Reply::sse(&[PROCESSING, PROCESSING, ERROR_EVENT]),
        Reply::sse(&[PROCESSING, CONTENT, DONE]),
    ])
    .await;
    let proxy = Proxy::start(&upstream.base_url(), &[]).await;
    let answer = stream_chat(&proxy, FREE).await;
    let text = answer.text();
    assert_eq!(answer.status, 200);
    assert!(!text.contains("error"), "{text}");
    assert!(text.contains("Hello"), "{text}");
    assert_eq!(text.matches("[DONE]").count(), 1, "{text}");
    assert!(text.starts_with(PROCESSING), "{text}");
    assert_eq!(upstream.requests().len(), 2);
    let status = get(&proxy, "/key_status").await.json();
    let totals = |i: usize| status["keys"][i]["totals"].clone();
    assert_eq!(totals(0)["rate_limited"], 1);
    assert_eq!(totals(1)["successes"], 1);
}

#[tokio::test]
async fn an_error_after_content_is_passed_through_as_is() {
    let upstream = Upstream::script(vec![Reply::sse(&[CONTENT, ERROR_EVENT])]).await;
    let proxy = Proxy::start(&upstream.base_url(), &[]).await;
    let answer = stream_chat(&proxy, FREE).await;
    assert_eq!(answer.text(), format!("{CONTENT}{ERROR_EVENT}"));
    assert_eq!(upstream.requests().len(), 1);
}

#[tokio::test]
async fn a_stream_whose_retries_run_out_ends_with_one_error_event() {
    let upstream = Upstream::script(vec![
        Reply::sse(&[PROCESSING, ERROR_EVENT]),
        Reply::json(429, PROVIDER_429),
    ])
    .await;
    let proxy = Proxy::start(&upstream.base_url(), &[("MAX_RETRIES", "1")]).await;
    let text = stream_chat(&proxy, FREE).await.text();
    let events: Vec<_> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 2, "{text}");
    assert_eq!(events[0], PROCESSING.trim_end());
    let last: serde_json::Value =
        serde_json::from_str(events[1].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(last["error"]["code"], 429);
    assert_eq!(last["error"]["message"], "Provider returned error");
    // With no retries at all, the upstream's own error event reaches the client unchanged.
    let upstream = Upstream::script(vec![Reply::sse(&[ERROR_EVENT])]).await;
    let proxy = Proxy::start(&upstream.base_url(), &[("MAX_RETRIES", "0")]).await;
    assert_eq!(stream_chat(&proxy, FREE).await.text(), ERROR_EVENT);
}

#[tokio::test]
async fn a_client_that_leaves_during_a_backoff_stops_the_retries() {
    let upstream =
        Upstream::start(|_| Reply::json(500, r#"{"error":{"code":500,"message":"boom"}}"#)).await;
    let proxy = Proxy::start(
        &upstream.base_url(),
        &[("RETRY_BACKOFF", "1"), ("MAX_RETRIES", "10")],
    )
    .await;
    let gave_up = tokio::time::timeout(Duration::from_millis(300), chat(&proxy, PAID)).await;
    assert!(gave_up.is_err(), "the proxy answered during its backoff");
    let attempts = upstream.requests().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        upstream.requests().len(),
        attempts,
        "retries went on after the client left"
    );
}

#[tokio::test]
async fn a_401_after_a_daily_limit_block_still_stops_paid_requests_on_that_key() {
    let upstream = Upstream::script(vec![daily_429(), Reply::json(401, USER_NOT_FOUND)]).await;
    let proxy = Proxy::start(&upstream.base_url(), &[("OPENROUTER_KEYS", KEY_A)]).await;
    // The free-model request exhausts the key for the day (until 2100 here)...
    chat(&proxy, FREE).await.assert_error(429);
    // ...and a paid request then gets a 401: that block must not hide behind the longer daily one.
    chat(&proxy, PAID).await.assert_error(401);
    let status = get(&proxy, "/key_status").await.json();
    assert_eq!(
        key_state(&status, 0),
        ("blocked".into(), "unauthorized".into())
    );
    chat(&proxy, PAID).await.assert_error(429);
    assert_eq!(upstream.requests().len(), 2, "a blocked key was used again");
}

#[tokio::test]
async fn a_402_for_a_request_too_large_for_the_balance_tries_another_key_and_parks_none() {
    const TOO_LARGE: &str = r#"{"error":{"message":"This request requires more credits, or fewer max_tokens. You requested up to 64000 tokens, but can only afford 2666. To increase, visit https://openrouter.ai/settings/credits and upgrade to a paid account","code":402,"metadata":{"provider_name":null}},"user_id":"user_2abc"}"#;
    let upstream = Upstream::script(vec![Reply::json(402, TOO_LARGE)]).await;
    let proxy = Proxy::start(&upstream.base_url(), &[]).await;
    assert_eq!(chat(&proxy, PAID).await.status, 200);
    // Key A served nothing but is not parked: a smaller request may fit its balance.
    let status = get(&proxy, "/key_status").await.json();
    assert_eq!(key_state(&status, 0), ("active".into(), "-".into()));
    assert_eq!(chat(&proxy, PAID).await.status, 200);
    let keys: Vec<_> = upstream.requests().iter().map(Seen::key).collect();
    assert_eq!(keys, [KEY_A, KEY_B, KEY_A]);
}

#[tokio::test]
async fn a_request_too_large_for_every_key_ends_with_openrouter_s_402_after_each_key_once() {
    const TOO_LARGE: &str = r#"{"error":{"message":"This request requires more credits, or fewer max_tokens. You requested up to 64000 tokens, but can only afford 2666.","code":402}}"#;
    let upstream = Upstream::start(|_| Reply::json(402, TOO_LARGE)).await;
    let proxy = Proxy::start(&upstream.base_url(), &[]).await;
    let answer = chat(&proxy, PAID).await;
    assert_eq!(answer.status, 402);
    assert!(
        answer.text().contains("can only afford"),
        "{}",
        answer.text()
    );
    assert_eq!(
        upstream.requests().len(),
        2,
        "each key is tried once, not ten times"
    );
}

#[tokio::test]
async fn a_retry_that_waits_longer_than_the_idle_timeout_does_not_end_the_new_stream() {
    // The error event asks for a 2 s wait; the idle timeout is 1 s.
    const SLOW_RETRY: &str = "data: {\"error\":{\"code\":502,\"message\":\"Provider returned error\",\"metadata\":{\"retry_after_seconds\":2}},\"choices\":[]}\n\n";
    let (chunks, second) = tokio::sync::mpsc::channel(4);
    let upstream = Upstream::script(vec![Reply::sse(&[SLOW_RETRY]), Reply::Stream(second)]).await;
    let seen = std::sync::Arc::clone(&upstream.seen);
    // The retried stream starts quiet, so the relay waits on it (and checks its idle clock)
    // before the content arrives.
    tokio::spawn(async move {
        while seen.lock().unwrap().len() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        for event in [CONTENT, DONE] {
            chunks
                .send(Bytes::from_static(event.as_bytes()))
                .await
                .unwrap();
        }
    });
    let proxy = Proxy::start(&upstream.base_url(), &[("STREAM_IDLE_TIMEOUT", "1")]).await;
    let answer = stream_chat(&proxy, FREE).await;
    let text = answer.text();
    assert!(text.contains("Hello"), "{text}");
    assert!(!text.contains("STREAM_IDLE_TIMEOUT"), "{text}");
    assert_eq!(upstream.requests().len(), 2);
}
