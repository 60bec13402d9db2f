//! Model aliases of `CONFIG_FILE`, through the binary against the mock OpenRouter: the
//! candidate sent, the moves to the next one on a failure of the model's own (at once,
//! without backoff), the skip that spares the following requests, account failures that
//! switch key and keep the candidate, a stream that moves on inside itself, the bounded
//! end when all are busy, the list of models, allowlists, `X-Proxy-Model`, reload, and a
//! request for a model that is no alias, sent byte for byte as before.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::fleet::text_of;
use common::*;
use http_body_util::Full;

const FIRST: &str = "meta-llama/llama-3.3-70b-instruct:free";
const SECOND: &str = "qwen/qwen3-235b-a22b:free";
const THIRD: &str = "openrouter/free";
const FOURTH: &str = "deepseek/deepseek-chat-v3.1:free";
const CODER_KEY: &str = "pk-coder-abcdefghijkl";

const PROVIDER_429: &str = r#"{"error":{"message":"meta-llama/llama-3.3-70b-instruct:free is temporarily rate-limited upstream. Please retry shortly, or add your own key to accumulate your rate limits: https://openrouter.ai/settings/integrations","code":429,"metadata":{"raw":"meta-llama/llama-3.3-70b-instruct:free is temporarily rate-limited upstream.","provider_name":"Chutes"}},"user_id":"user_2abc"}"#;
const DAILY_429: &str = r#"{"error":{"message":"Rate limit exceeded: free-models-per-day. Add 10 credits to unlock 1000 free model requests per day","code":429,"metadata":{"headers":{"X-RateLimit-Limit":"50","X-RateLimit-Remaining":"0","X-RateLimit-Reset":"4102444800000"},"provider_name":null}},"user_id":"user_2abc"}"#;
const NO_ENDPOINTS: &str =
    r#"{"error":{"message":"No endpoints found for qwen/qwen3-235b-a22b:free.","code":404}}"#;
const SERVER_500: &str = r#"{"error":{"message":"Internal Server Error","code":500}}"#;
const IN_200: &str = r#"{"error":{"message":"Provider returned error","code":502}}"#;

/// What the mock answers for each model (`None`: a completion naming the model).
type Script = Arc<Mutex<HashMap<&'static str, Vec<Reply>>>>;

/// The model of a request body as the mock saw it.
fn model_of(seen: &Seen) -> String {
    serde_json::from_slice::<serde_json::Value>(&seen.body).unwrap()["model"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A mock OpenRouter that plays, per model, the replies queued for it, then a completion
/// naming the model; its list of models holds the four candidates and a paid model.
async fn upstream_by_model(script: &Script) -> Upstream {
    let script = Arc::clone(script);
    Upstream::start(move |seen| {
        if seen.path_and_query.ends_with("/models") {
            return Reply::json(
                200,
                &format!(
                    r#"{{"data":[{{"id":"{FIRST}","name":"Llama","context_length":131072}},{{"id":"{SECOND}","name":"Qwen"}},{{"id":"openai/gpt-4o","name":"GPT-4o"}}]}}"#
                ),
            );
        }
        let model = model_of(seen);
        let queued = script
            .lock()
            .unwrap()
            .get_mut(model.as_str())
            .and_then(|replies| (!replies.is_empty()).then(|| replies.remove(0)));
        queued.unwrap_or_else(|| {
            Reply::json(
                200,
                &format!(
                    r#"{{"id":"gen-1","model":"{model}","choices":[{{"message":{{"role":"assistant","content":"hi from {model}"}}}}]}}"#
                ),
            )
        })
    })
    .await
}

/// A proxy whose `CONFIG_FILE` is `toml`, on `upstream`, with `RETRY_BACKOFF=30` (a retry
/// with backoff would take seconds) unless `vars` say otherwise.
async fn proxy_with(
    upstream: &Upstream,
    toml: &str,
    vars: &[(&str, &str)],
) -> (Running, tempfile::TempDir) {
    let mut all = vec![("RETRY_BACKOFF", "30")];
    all.extend_from_slice(vars);
    Running::with_config_file(&upstream.base_url(), toml, &all).await
}

/// Scripts the second candidate to answer with a short, clean stream: "hi from the second".
fn second_streams_hi(script: &Script) {
    script.lock().unwrap().insert(
        SECOND,
        vec![Reply::sse(&[
            "data: {\"choices\":[{\"delta\":{\"content\":\"hi from the second\"}}]}\n\n",
            "data: [DONE]\n\n",
        ])],
    );
}

fn aliases_toml() -> String {
    format!(
        "[aliases]\nfast = [\"{FIRST}\", \"{SECOND}\", \"{THIRD}\", \"{FOURTH}\"]\ncoder = [\"qwen/qwen3-coder:free\"]\n"
    )
}

async fn chat_with(proxy: &Running, key: &str, body: &str) -> Answer {
    post_json(&proxy.url("/api/v1/chat/completions"), key, body).await
}

fn chats(upstream: &Upstream) -> Vec<Seen> {
    upstream
        .requests()
        .into_iter()
        .filter(|s| s.path_and_query.ends_with("/chat/completions"))
        .collect()
}

fn models_sent(upstream: &Upstream) -> Vec<String> {
    chats(upstream).iter().map(model_of).collect()
}

#[tokio::test]
async fn the_first_candidate_is_sent_in_a_body_otherwise_unchanged() {
    let script = Script::default();
    let upstream = upstream_by_model(&script).await;
    let (proxy, _dir) = proxy_with(&upstream, &aliases_toml(), &[]).await;
    let body = r#"{ "messages" : [{"role":"user","content":"say \"fast\""}],"model":"fast",  "temperature":0.25 }"#;
    let answer = chat_with(&proxy, PROXY_KEY, body).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.header("x-proxy-model"), FIRST);
    let sent = &chats(&upstream)[0];
    assert_eq!(
        sent.body,
        body.replace(r#""model":"fast""#, &format!(r#""model":"{FIRST}""#))
    );
    proxy
        .wait_for_log(&format!("model=fast->{FIRST} candidates=1"))
        .await;

    // A model that is no alias goes byte for byte, with no X-Proxy-Model.
    let plain = format!(r#"{{"model":"{SECOND}",  "messages":[] }}"#);
    let answer = chat_with(&proxy, PROXY_KEY, &plain).await;
    assert_eq!(answer.status, 200);
    assert!(answer.headers.get("x-proxy-model").is_none());
    assert_eq!(chats(&upstream)[1].body, plain.as_bytes());
}

#[tokio::test]
async fn a_provider_429_moves_on_at_once_and_the_next_requests_skip_that_candidate() {
    let script = Script::default();
    script
        .lock()
        .unwrap()
        .insert(FIRST, vec![Reply::json(429, PROVIDER_429)]);
    let upstream = upstream_by_model(&script).await;
    // RETRY_BACKOFF=30: a retry with backoff would take seconds.
    let (proxy, _dir) = proxy_with(&upstream, &aliases_toml(), &[]).await;
    let began = Instant::now();
    let answer = chat_with(&proxy, PROXY_KEY, r#"{"model":"fast","messages":[]}"#).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(answer.header("x-proxy-model"), SECOND);
    // Within the skip (10 s without Retry-After), the next request goes straight to the second.
    let answer = chat_with(&proxy, PROXY_KEY, r#"{"model":"fast","messages":[]}"#).await;
    assert_eq!(answer.header("x-proxy-model"), SECOND);
    assert_eq!(models_sent(&upstream), [FIRST, SECOND, SECOND]);

    let status = proxy.key_status().await;
    let fast = &status["aliases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "fast")
        .unwrap()["candidates"];
    assert_eq!(fast[0]["failed_today"], 1, "{status}");
    assert!(fast[0]["skipped_until"].is_string(), "{status}");
    assert_eq!(fast[1]["served_today"], 2, "{status}");
    let metrics = text_of(&proxy, "/metrics").await;
    assert!(
        metrics.contains(&format!(
            "openrouter_proxy_alias_served_today{{alias=\"fast\",model=\"{SECOND}\"}} 2"
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "openrouter_proxy_alias_skipped{{alias=\"fast\",model=\"{FIRST}\"}} 1"
    )));
}

#[tokio::test]
async fn a_500_a_404_no_endpoints_and_an_error_inside_a_200_each_move_on() {
    let script = Script::default();
    {
        let mut script = script.lock().unwrap();
        script.insert(FIRST, vec![Reply::json(500, SERVER_500)]);
        script.insert(SECOND, vec![Reply::json(404, NO_ENDPOINTS)]);
        script.insert(THIRD, vec![Reply::json(200, IN_200)]);
    }
    let upstream = upstream_by_model(&script).await;
    let (proxy, _dir) = proxy_with(&upstream, &aliases_toml(), &[]).await;
    let began = Instant::now();
    let answer = chat_with(&proxy, PROXY_KEY, r#"{"model":"fast","messages":[]}"#).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(began.elapsed() < Duration::from_secs(3));
    assert_eq!(answer.header("x-proxy-model"), FOURTH);
    assert_eq!(models_sent(&upstream), [FIRST, SECOND, THIRD, FOURTH]);
    proxy
        .wait_for_log(&format!("model=fast->{FOURTH} candidates=4"))
        .await;
    // Without an alias, a 404 "No endpoints found" is the answer, as before.
    script
        .lock()
        .unwrap()
        .insert(SECOND, vec![Reply::json(404, NO_ENDPOINTS)]);
    let plain = chat_with(
        &proxy,
        PROXY_KEY,
        &format!(r#"{{"model":"{SECOND}","messages":[]}}"#),
    )
    .await;
    assert_eq!(plain.status, 404);
}

#[tokio::test]
async fn a_daily_quota_429_switches_key_and_keeps_the_candidate() {
    let script = Script::default();
    script
        .lock()
        .unwrap()
        .insert(FIRST, vec![Reply::json(429, DAILY_429)]);
    let upstream = upstream_by_model(&script).await;
    let (proxy, _dir) = proxy_with(&upstream, &aliases_toml(), &[]).await;
    let answer = chat_with(&proxy, PROXY_KEY, r#"{"model":"fast","messages":[]}"#).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.header("x-proxy-model"), FIRST);
    let sent = chats(&upstream);
    assert_eq!(models_sent(&upstream), [FIRST, FIRST]);
    assert_ne!(sent[0].key(), sent[1].key());
}

#[tokio::test]
async fn a_stream_of_comments_only_moves_on_inside_one_stream() {
    let script = Script::default();
    let (stall, stalled) = tokio::sync::mpsc::channel::<Bytes>(4);
    stall
        .try_send(Bytes::from_static(b": OPENROUTER PROCESSING\n\n"))
        .unwrap();
    script
        .lock()
        .unwrap()
        .insert(FIRST, vec![Reply::Stream(stalled)]);
    second_streams_hi(&script);
    let upstream = upstream_by_model(&script).await;
    let (proxy, _dir) =
        proxy_with(&upstream, &aliases_toml(), &[("FIRST_TOKEN_TIMEOUT", "1")]).await;
    let answer = chat_with(
        &proxy,
        PROXY_KEY,
        r#"{"model":"fast","messages":[],"stream":true}"#,
    )
    .await;
    assert_eq!(answer.status, 200);
    let text = answer.text();
    assert!(text.contains("hi from the second"), "{text}");
    assert_eq!(text.matches("[DONE]").count(), 1, "{text}");
    assert!(!text.contains("error"), "{text}");
    assert_eq!(models_sent(&upstream), [FIRST, SECOND]);
    drop(stall);
}

#[tokio::test]
async fn when_every_candidate_is_busy_the_request_ends_in_bounded_time_with_the_last_error() {
    let script = Script::default();
    {
        let mut script = script.lock().unwrap();
        for model in [FIRST, SECOND, THIRD, FOURTH] {
            script.insert(
                model,
                (0..10).map(|_| Reply::json(429, PROVIDER_429)).collect(),
            );
        }
    }
    let upstream = upstream_by_model(&script).await;
    let (proxy, _dir) = proxy_with(
        &upstream,
        &aliases_toml(),
        &[("RETRY_BACKOFF", "0"), ("MAX_RETRIES", "2")],
    )
    .await;
    let began = Instant::now();
    let answer = chat_with(&proxy, PROXY_KEY, r#"{"model":"fast","messages":[]}"#).await;
    assert_eq!(answer.status, 429, "{}", answer.text());
    assert!(
        answer.text().contains("rate-limited upstream"),
        "{}",
        answer.text()
    );
    assert!(began.elapsed() < Duration::from_secs(5));
    // The first pass over four candidates, then MAX_RETRIES more.
    assert_eq!(chats(&upstream).len(), 4 + 2);
}

#[tokio::test]
async fn the_list_of_models_names_the_aliases_first_and_allowlists_can_name_an_alias() {
    let script = Script::default();
    let upstream = upstream_by_model(&script).await;
    let toml = format!(
        "{}\n[[clients]]\nname = \"coder\"\nkey = \"{CODER_KEY}\"\nmodels = [\"coder\", \"openai/*\"]\n",
        aliases_toml()
    );
    let (proxy, _dir) = proxy_with(&upstream, &toml, &[]).await;
    let ids = |answer: &Answer| -> Vec<String> {
        answer.json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = send(
        request("GET", &proxy.url("/api/v1/models"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(ids(&all)[..2], ["coder", "fast"]);
    let fast = &all.json()["data"][1];
    assert_eq!(
        fast["context_length"], 131_072,
        "the first candidate's entry"
    );
    assert!(fast["description"].as_str().unwrap().contains(SECOND));

    // The client may use the alias it names (its candidate is not in its list), not the other.
    let coder_list = send(
        hyper::Request::builder()
            .uri(proxy.url("/api/v1/models"))
            .header("authorization", format!("Bearer {CODER_KEY}"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(ids(&coder_list), ["coder", "openai/gpt-4o"]);
    let answer = chat_with(&proxy, CODER_KEY, r#"{"model":"coder","messages":[]}"#).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.header("x-proxy-model"), "qwen/qwen3-coder:free");
    let refused = chat_with(&proxy, CODER_KEY, r#"{"model":"fast","messages":[]}"#).await;
    assert_eq!(refused.status, 403);
    assert!(
        refused
            .text()
            .contains("model fast is not allowed for client coder"),
        "{}",
        refused.text()
    );
}

#[tokio::test]
async fn a_reload_puts_new_aliases_in_force() {
    let script = Script::default();
    let upstream = upstream_by_model(&script).await;
    let (proxy, dir) = proxy_with(&upstream, &aliases_toml(), &[]).await;
    std::fs::write(
        dir.path().join("proxy.toml"),
        format!("[aliases]\nfast = [\"{FOURTH}\"]\n"),
    )
    .unwrap();
    proxy.signal("HUP");
    proxy
        .wait_for_log("reloaded CONFIG_FILE: 0 clients, 0 kept their counts; 1 model aliases")
        .await;
    let answer = chat_with(&proxy, PROXY_KEY, r#"{"model":"fast","messages":[]}"#).await;
    assert_eq!(answer.header("x-proxy-model"), FOURTH);
    // "coder" is gone: sent as it is, as any model that is no alias.
    chat_with(&proxy, PROXY_KEY, r#"{"model":"coder","messages":[]}"#).await;
    assert_eq!(models_sent(&upstream), [FOURTH, "coder"]);
}

#[tokio::test]
async fn an_error_event_before_any_content_moves_a_stream_to_the_next_candidate() {
    let script = Script::default();
    script.lock().unwrap().insert(
        FIRST,
        vec![Reply::sse(&[
            ": OPENROUTER PROCESSING\n\n",
            "data: {\"error\":{\"code\":502,\"message\":\"Provider returned error\"},\"choices\":[{\"delta\":{\"content\":\"\"},\"finish_reason\":\"error\"}]}\n\n",
        ])],
    );
    second_streams_hi(&script);
    let upstream = upstream_by_model(&script).await;
    let (proxy, _dir) = proxy_with(&upstream, &aliases_toml(), &[]).await;
    let began = Instant::now();
    let answer = chat_with(
        &proxy,
        PROXY_KEY,
        r#"{"model":"fast","messages":[],"stream":true}"#,
    )
    .await;
    let text = answer.text();
    assert!(text.contains("hi from the second"), "{text}");
    assert!(!text.contains("Provider returned error"), "{text}");
    assert_eq!(text.matches("[DONE]").count(), 1, "{text}");
    assert!(began.elapsed() < Duration::from_secs(3), "no backoff");
    assert_eq!(models_sent(&upstream), [FIRST, SECOND]);
}
