//! Every example body from `shared/OPENROUTER.md`, classified.

use super::*;
use hyper::header::HeaderValue;

const FREE_DAILY_50: &str = r#"{"error":{"message":"Rate limit exceeded: free-models-per-day. Add 10 credits to unlock 1000 free model requests per day","code":429,"metadata":{"headers":{"X-RateLimit-Limit":"50","X-RateLimit-Remaining":"0","X-RateLimit-Reset":"1779321600000"},"provider_name":null}},"user_id":"user_2abc"}"#;
const FREE_DAILY_1000: &str = r#"{"error":{"message":"Rate limit exceeded: free-models-per-day-high-balance. ","code":429,"metadata":{"headers":{"X-RateLimit-Limit":"1000","X-RateLimit-Remaining":"0","X-RateLimit-Reset":"1786233600000"},"limit_source":"openrouter_free_tier_daily","remedy_hint":"Wait for the daily reset"}}}"#;
const FREE_PER_MIN: &str = r#"{"error":{"message":"Rate limit exceeded: free-models-per-min. ","code":429,"metadata":{"headers":{"X-RateLimit-Limit":"20","X-RateLimit-Remaining":"0","X-RateLimit-Reset":"1783519380000"},"provider_name":null}}}"#;
const SHARED_CAPACITY: &str = r#"{"error":{"message":"Rate limit exceeded: limit_rpm/qwen/qwen3-coder-480b-a35b-07-25/a9bbd882-011f-4606-8f60-85f3cb642586. High demand for qwen/qwen3-coder:free on OpenRouter - limited to 8 requests per minute. Please retry shortly.","code":429,"metadata":{"headers":{"X-RateLimit-Limit":"8","X-RateLimit-Remaining":"0","X-RateLimit-Reset":"1783519380000"},"provider_name":null,"limit_source":"openrouter_shared_capacity"}}}"#;
const PROVIDER_UPSTREAM: &str = r#"{"error":{"message":"Provider returned error","code":429,"metadata":{"raw":"deepseek/deepseek-v4-pro-0813 is temporarily rate-limited upstream. Please retry shortly, or add your own key to accumulate your rate limits: https://openrouter.ai/settings/integrations","provider_name":"DeepInfra","is_byok":false,"provider_error_code":"engine_overloaded","limit_source":"upstream_provider_shared_pool"}},"user_id":"user_2abc"}"#;
const PROVIDER_HINT: &str = r#"{"error":{"message":"Provider returned error","code":429,"metadata":{"raw":{"error":"Too Many Requests"},"retry_after_seconds":17,"headers":{"Retry-After":"17"}}}}"#;
const CAPACITY: &str = r#"{"error":{"message":"All providers for anthropic/claude-sonnet-4.5 are at capacity. Retry after 40 seconds.","error_type":"rate_limit_exceeded","http_status":429,"availability":{"code":"capacity_exhausted","retryable":true,"retry_after":40},"metadata":{"previous_errors":[{"provider":"anthropic","code":"capacity_exhausted","status":429}]}}}"#;
const CREDITS: &str = r#"{"error":{"message":"This request requires more credits, or fewer max_tokens. You requested up to 64000 tokens, but can only afford 2666. To increase, visit https://openrouter.ai/settings/credits and upgrade to a paid account","code":402,"metadata":{"provider_name":null}},"user_id":"user_2abc"}"#;
const CREDITS_SHORT: &str = r#"{"error":{"code":402,"message":"Insufficient credits. Add more using https://openrouter.ai/credits"}}"#;
const KEY_LIMIT: &str = r#"{"error":{"code":403,"message":"Key limit exceeded (daily limit). Manage it using https://openrouter.ai/settings/keys"}}"#;
const MODERATION: &str = r#"{"error":{"code":403,"message":"Your input was flagged for \"self-harm/intent\". No credits were charged.","metadata":{"reasons":["self-harm/intent"],"flagged_input":"...","provider_name":"OpenAI","model_slug":"openai/gpt-4o"}}}"#;
const UNAUTHORIZED: [&str; 3] = [
    r#"{"error":{"message":"No auth credentials found","code":401}}"#,
    r#"{"error":{"message":"User not found.","code":401}}"#,
    r#"{"error":{"code":401,"message":"Missing Authentication header"}}"#,
];
const NO_ENDPOINTS: &str = r#"{"error":{"message":"No endpoints found that support tool use. Try disabling \"tool_choice\".","code":404}}"#;
const TIMEOUT_408: &str =
    r#"{"error":{"code":408,"message":"Operation timed out. Please try again later."}}"#;
const BAD_GATEWAY: &str = r#"{"error":{"code":502,"message":"Provider returned error"}}"#;
const UNAVAILABLE: &str = r#"{"error":{"code":503,"message":"Service temporarily unavailable"}}"#;
const IN_200: &str = r#"{"id":null,"choices":null,"created":null,"model":null,"object":null,"usage":null,"error":{"message":"Provider returned error","code":429,"metadata":{"raw":"Too Many Requests","provider_name":"Hyperbolic"}},"user_id":"user_xyz"}"#;
const STREAM_EVENT: &str = r#"{"id":"gen-abc123","object":"chat.completion.chunk","created":1234567890,"model":"openai/gpt-4o","provider":"OpenAI","error":{"code":429,"message":"Rate limit exceeded","metadata":{"error_type":"rate_limit_exceeded"}},"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}]}"#;
const STREAM_STRING_CODE: &str = r#"{"error":{"message":"Internal error","code":"server_error"}}"#;

fn verdict(status: u16, headers: &[(&'static str, &'static str)], body: &str) -> Verdict {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.insert(*name, HeaderValue::from_static(value));
    }
    classify(status, &map, error_object(body.as_bytes()).as_ref())
}

#[test]
fn free_model_daily_limits_exhaust_the_key_until_the_reset_in_milliseconds() {
    assert_eq!(
        verdict(429, &[], FREE_DAILY_50),
        Verdict::FreeDaily {
            reset_ms: Some(1_779_321_600_000)
        }
    );
    assert_eq!(
        verdict(429, &[], FREE_DAILY_1000),
        Verdict::FreeDaily {
            reset_ms: Some(1_786_233_600_000)
        }
    );
    let from_header = verdict(
        429,
        &[("x-ratelimit-reset", "1779321600000")],
        r#"{"error":{"code":429,"message":"Rate limit exceeded: free-models-per-day"}}"#,
    );
    assert_eq!(
        from_header,
        Verdict::FreeDaily {
            reset_ms: Some(1_779_321_600_000)
        }
    );
}

#[test]
fn the_per_minute_limit_blocks_the_key_until_its_reset() {
    assert_eq!(
        verdict(429, &[], FREE_PER_MIN),
        Verdict::FreePerMinute {
            reset_ms: Some(1_783_519_380_000)
        }
    );
}

#[test]
fn model_level_429s_do_not_blame_the_key_and_carry_their_retry_hints() {
    assert_eq!(
        verdict(429, &[], SHARED_CAPACITY),
        Verdict::ModelBusy { retry_after: None }
    );
    assert_eq!(
        verdict(429, &[], PROVIDER_UPSTREAM),
        Verdict::ModelBusy { retry_after: None }
    );
    assert_eq!(
        verdict(429, &[], PROVIDER_HINT),
        Verdict::ModelBusy {
            retry_after: Some(Duration::from_secs(17))
        }
    );
    assert_eq!(
        verdict(429, &[], CAPACITY),
        Verdict::ModelBusy {
            retry_after: Some(Duration::from_secs(40))
        }
    );
    assert_eq!(
        verdict(429, &[("retry-after", "40")], CAPACITY),
        Verdict::ModelBusy {
            retry_after: Some(Duration::from_secs(40))
        }
    );
    assert_eq!(
        verdict(503, &[("retry-after", "5")], UNAVAILABLE),
        Verdict::ModelBusy {
            retry_after: Some(Duration::from_secs(5))
        }
    );
}

#[test]
fn credits_and_key_caps_are_the_key_s_problem_but_moderation_is_the_request_s() {
    assert_eq!(verdict(402, &[], CREDITS), Verdict::CreditsForRequest);
    assert_eq!(
        verdict(402, &[], CREDITS_SHORT),
        Verdict::Credits { retry_after: None }
    );
    assert_eq!(
        verdict(402, &[("retry-after", "3")], CREDITS_SHORT),
        Verdict::Credits {
            retry_after: Some(Duration::from_secs(3))
        }
    );
    assert_eq!(
        verdict(403, &[], KEY_LIMIT),
        Verdict::KeyLimit { reset_ms: None }
    );
    assert_eq!(verdict(403, &[], MODERATION), Verdict::Rejected);
    for body in UNAUTHORIZED {
        assert_eq!(verdict(401, &[], body), Verdict::Unauthorized);
    }
}

#[test]
fn upstream_failures_are_retried_and_request_errors_are_not() {
    assert_eq!(
        verdict(408, &[], TIMEOUT_408),
        Verdict::Server { retry_after: None }
    );
    assert_eq!(
        verdict(502, &[], BAD_GATEWAY),
        Verdict::Server { retry_after: None }
    );
    assert_eq!(
        verdict(503, &[], UNAVAILABLE),
        Verdict::Server { retry_after: None }
    );
    for status in [524, 529, 520] {
        assert_eq!(
            verdict(status, &[], "<html>Temporarily unavailable</html>"),
            Verdict::Server { retry_after: None }
        );
    }
    for status in [400, 413, 422] {
        assert_eq!(verdict(status, &[], NO_ENDPOINTS), Verdict::Rejected);
    }
    // What the model cannot serve: returned as it is, but an alias tries its next candidate.
    assert_eq!(verdict(404, &[], NO_ENDPOINTS), Verdict::NoSuchModel);
    assert_eq!(
        verdict(
            400,
            &[],
            r#"{"error":{"message":"qwen/nope:free is not a valid model ID","code":400}}"#
        ),
        Verdict::NoSuchModel
    );
}

#[test]
fn errors_inside_a_200_are_classified_by_their_own_code() {
    assert_eq!(
        verdict(200, &[], IN_200),
        Verdict::ModelBusy { retry_after: None }
    );
    assert_eq!(
        verdict(200, &[], STREAM_EVENT),
        Verdict::ModelBusy { retry_after: None }
    );
    assert_eq!(
        verdict(200, &[], STREAM_STRING_CODE),
        Verdict::Server { retry_after: None }
    );
    assert_eq!(
        verdict(200, &[], FREE_DAILY_50),
        Verdict::FreeDaily {
            reset_ms: Some(1_779_321_600_000)
        }
    );
    assert_eq!(
        verdict(200, &[], r#"{"choices":[{"message":{"content":"hi"}}]}"#),
        Verdict::Success
    );
}

#[test]
fn odd_hints_are_read_defensively() {
    assert_eq!(
        verdict(429, &[("retry-after", "-3")], "{}"),
        Verdict::ModelBusy { retry_after: None }
    );
    assert_eq!(
        verdict(429, &[("retry-after", "1.5")], "{}"),
        Verdict::ModelBusy {
            retry_after: Some(Duration::from_millis(1500))
        }
    );
    let seconds_reset = r#"{"error":{"code":429,"message":"free-models-per-min","metadata":{"headers":{"x-ratelimit-reset":1783519380}}}}"#;
    assert_eq!(
        verdict(429, &[], seconds_reset),
        Verdict::FreePerMinute {
            reset_ms: Some(1_783_519_380_000)
        }
    );
    assert_eq!(error_object(b"[1]"), None);
    assert_eq!(error_object(br#"{"error":"text"}"#), None);
}
