//! Keys of one OpenRouter account share one quota: configured with `@account`, or learned
//! from the `user_id` OpenRouter puts in its answers; through the proxy, against the mock.

mod common;

use std::time::Duration;

use common::*;

const FREE: &str = "qwen/qwen3-coder:free";
const PAID: &str = "openai/gpt-4o";

fn daily_429(user: &str, reset_ms: i64) -> Reply {
    Reply::json(
        429,
        &format!(
            r#"{{"error":{{"message":"Rate limit exceeded: free-models-per-day. Add 10 credits to unlock 1000 free model requests per day","code":429,"metadata":{{"headers":{{"X-RateLimit-Limit":"50","X-RateLimit-Remaining":"0","X-RateLimit-Reset":"{reset_ms}"}},"provider_name":null}}}},"user_id":"{user}"}}"#
        ),
    )
}

fn account<'a>(status: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    status["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id)
        .unwrap_or_else(|| panic!("no account {id} in {status}"))
}

#[tokio::test]
async fn two_keys_of_one_account_serve_its_limit_in_all_not_twice() {
    let upstream = Upstream::ok().await;
    let keys = format!("{KEY_A}:3@alice,{KEY_B}@alice");
    let proxy = Proxy::with_keys(&upstream, &keys).await;
    for _ in 0..3 {
        assert_eq!(chat(&proxy, FREE).await.status, 200);
    }
    chat(&proxy, FREE).await.assert_error(429);
    assert_eq!(upstream.requests().len(), 3);
    let status = get(&proxy, "/key_status").await.json();
    let alice = account(&status, "alice");
    assert_eq!(
        (alice["daily_used"].as_u64(), alice["daily_limit"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(alice["keys"].as_array().unwrap().len(), 2);
    assert_eq!(alice["learned"], false);
    for key in status["keys"].as_array().unwrap() {
        assert_eq!(key["account"], "alice");
        assert_eq!(key["daily_used"], 3, "a key shows its account's count");
    }
    // Both keys served: the least recently used key of the account takes each request.
    let used: std::collections::HashSet<String> =
        upstream.requests().iter().map(Seen::key).collect();
    assert_eq!(used.len(), 2);
}

#[tokio::test]
async fn two_keys_of_one_account_are_spaced_as_one_by_the_limiter() {
    let upstream = Upstream::ok().await;
    let keys = format!("{KEY_A}@alice,{KEY_B}@alice");
    // 600/min with burst 1: one request per 100 ms for the account, whichever key.
    let vars = [
        ("OPENROUTER_KEYS", keys.as_str()),
        ("FREE_RPM", "600"),
        ("FREE_BURST", "1"),
        ("MAX_WAIT", "10"),
    ];
    let proxy = Proxy::start(&upstream.base_url(), &vars).await;
    let answers = concurrent_chats(&proxy, FREE, 4).await;
    assert!(answers.iter().all(|&status| status == 200), "{answers:?}");
    assert_spaced(&upstream, Duration::from_millis(95));
}

#[tokio::test]
async fn a_401_on_one_key_of_an_account_leaves_the_other_key_serving() {
    const USER_NOT_FOUND: &str = r#"{"error":{"message":"User not found.","code":401}}"#;
    let upstream = Upstream::start(|seen| {
        if seen.key() == KEY_A {
            Reply::json(401, USER_NOT_FOUND)
        } else {
            Reply::ok()
        }
    })
    .await;
    let keys = format!("{KEY_A}@alice,{KEY_B}@alice");
    let proxy = Proxy::start(&upstream.base_url(), &[("OPENROUTER_KEYS", &keys)]).await;
    for model in [FREE, PAID, FREE, PAID] {
        assert_eq!(chat(&proxy, model).await.status, 200, "{model}");
    }
    let keys: Vec<String> = upstream.requests().iter().map(Seen::key).collect();
    assert_eq!(keys.iter().filter(|k| *k == KEY_A).count(), 1, "{keys:?}");
    let status = get(&proxy, "/key_status").await.json();
    assert_eq!(status["keys"][0]["status"], "blocked");
    assert_eq!(status["keys"][0]["block_reason"], "unauthorized");
    assert_eq!(account(&status, "alice")["status"], "active");
}

#[tokio::test]
async fn the_quota_comes_back_at_openrouter_s_reset_instant() {
    let reset = openrouter_proxy::keys::now_ms() + 2_000;
    let upstream = Upstream::script(vec![daily_429("user_2abc", reset)]).await;
    // New York's midnight is hours away; OpenRouter's reset is two seconds away.
    let vars = [
        ("OPENROUTER_KEYS", KEY_A),
        ("TIMEZONE", "America/New_York"),
        ("MAX_WAIT", "0"),
    ];
    let proxy = Proxy::start(&upstream.base_url(), &vars).await;
    chat(&proxy, FREE).await.assert_error(429);
    let status = get(&proxy, "/key_status").await.json();
    assert_eq!(status["keys"][0]["status"], "daily_limit_reached");
    assert!(
        eventually(Duration::from_secs(5), || openrouter_proxy::keys::now_ms()
            > reset)
        .await
    );
    assert_eq!(chat(&proxy, FREE).await.status, 200);
    let status = get(&proxy, "/key_status").await.json();
    assert_eq!(status["keys"][0]["daily_used"], 1, "{status}");
}

#[tokio::test]
async fn openrouter_free_spends_free_model_quota() {
    let upstream = Upstream::ok().await;
    let keys = format!("{KEY_A}:1");
    let proxy = Proxy::with_keys(&upstream, &keys).await;
    assert_eq!(chat(&proxy, "openrouter/free").await.status, 200);
    chat(&proxy, "openrouter/free").await.assert_error(429);
    assert_eq!(
        chat(&proxy, PAID).await.status,
        200,
        "paid models are not limited"
    );
}

#[tokio::test]
async fn two_unconfigured_keys_with_one_user_id_become_one_learned_account_across_a_restart() {
    let reset = 4_102_444_800_000; // 2100: in force
    let upstream = Upstream::script(vec![
        daily_429("user_2abc", reset),
        daily_429("user_2abc", reset),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let vars = [("OPENROUTER_KEYS", format!("{KEY_A},{KEY_B},{KEY_C}"))];
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut proxy = Running::start(&upstream.base_url(), &state, &vars).await;
    // Keys A and B are refused with the same user id; C serves.
    assert_eq!(proxy.chat(FREE).await.status, 200);
    let check = |status: &serde_json::Value| {
        let learned = account(status, "user_2abc");
        assert_eq!(learned["learned"], true, "{status}");
        assert_eq!(learned["keys"].as_array().unwrap().len(), 2, "{status}");
        assert_eq!(learned["status"], "daily_limit_reached", "{status}");
        assert_eq!(status["accounts"].as_array().unwrap().len(), 2, "{status}");
    };
    check(&proxy.key_status().await);
    assert!(proxy
        .log_text()
        .contains("belong to one OpenRouter account (user user_2abc)"));
    proxy.signal("TERM");
    assert!(proxy.wait(Duration::from_secs(10)).success());
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(!text.contains(KEY_A) && !text.contains(KEY_B), "{text}");
    let proxy = Running::start(&upstream.base_url(), &state, &vars).await;
    check(&proxy.key_status().await);
}
