//! Learning each key's limits and usage from OpenRouter's `GET /key`, against the mock.

mod common;

use std::time::Duration;

use common::*;

const FREE: &str = "qwen/qwen3-coder:free";
const PAID: &str = "openai/gpt-4o";

fn key_answer(free_limit: u32, used: u32, credit: &str) -> Reply {
    Reply::json(
        200,
        &format!(
            r#"{{"data":{{"label":"sk-or-v1-abc...123","limit":10,"limit_remaining":{credit},"is_free_tier":false,"free_model_daily_requests":{{"limit":{free_limit},"remaining":{},"used":{used}}}}}}}"#,
            free_limit - used
        ),
    )
}

const OLD_ANSWER: &str = r#"{"data":{"label":"sk-or-v1-116...0ce","limit":5,"usage":0.1015644762,"is_provisioning_key":false,"limit_remaining":4.8984355238,"is_free_tier":true,"rate_limit":{"requests":50,"interval":"10s"}}}"#;

/// A mock whose `/key` answer depends on the key asked about; everything else is 200.
async fn upstream(answer: impl Fn(&str) -> Reply + Send + Sync + 'static) -> Upstream {
    Upstream::start(move |seen| {
        if seen.path_and_query == "/api/v1/key" {
            answer(&seen.key())
        } else {
            Reply::ok()
        }
    })
    .await
}

async fn probed(proxy: &Proxy, keys: usize) -> serde_json::Value {
    let mut status = serde_json::Value::Null;
    for _ in 0..250 {
        status = get(proxy, "/key_status").await.json();
        if (0..keys).all(|i| !status["keys"][i]["probe"].is_null()) {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("keys were not probed: {status}");
}

#[tokio::test]
async fn probed_limits_and_usage_are_adopted_but_an_explicit_limit_wins() {
    let upstream = upstream(|_| key_answer(1000, 7, "9.5")).await;
    let keys = format!("{KEY_A},{KEY_B}:50");
    let proxy = Proxy::start(
        &upstream.base_url(),
        &[("OPENROUTER_KEYS", &keys), ("KEY_PROBE_INTERVAL", "300")],
    )
    .await;
    let status = probed(&proxy, 2).await;
    let (a, b) = (&status["keys"][0], &status["keys"][1]);
    assert_eq!(
        (a["daily_limit"].clone(), a["limit_source"].clone()),
        (1000.into(), "probed".into()),
        "{a}"
    );
    assert_eq!(
        a["daily_used"], 7,
        "another program's usage raises our count: {a}"
    );
    assert_eq!(
        a["probe"]["free_daily"],
        serde_json::json!({"limit": 1000, "used": 7, "remaining": 993})
    );
    assert_eq!(a["probe"]["limit_remaining"], 9.5);
    assert_eq!(a["probe"]["is_free_tier"], false);
    assert_eq!(a["probe"]["label"], "sk-or-v1-abc...123");
    assert_eq!(
        (b["daily_limit"].clone(), b["limit_source"].clone()),
        (50.into(), "configured".into()),
        "{b}"
    );
    assert_eq!(b["daily_used"], 7);
}

#[tokio::test]
async fn an_older_answer_keeps_the_configured_or_default_limit() {
    let upstream = upstream(|_| Reply::json(200, OLD_ANSWER)).await;
    let proxy = Proxy::start(&upstream.base_url(), &[("KEY_PROBE_INTERVAL", "300")]).await;
    let status = probed(&proxy, 2).await;
    let a = &status["keys"][0];
    assert_eq!(
        (a["daily_limit"].clone(), a["limit_source"].clone()),
        (50.into(), "default".into()),
        "{a}"
    );
    assert_eq!(a["probe"]["is_free_tier"], true);
    assert_eq!(a["probe"]["free_daily"], serde_json::Value::Null);
}

#[tokio::test]
async fn a_key_that_probes_401_is_invalid_and_skipped() {
    let upstream = upstream(|key| {
        if key == KEY_A {
            Reply::json(401, r#"{"error":{"message":"User not found.","code":401}}"#)
        } else {
            key_answer(50, 0, "null")
        }
    })
    .await;
    let proxy = Proxy::start(&upstream.base_url(), &[("KEY_PROBE_INTERVAL", "300")]).await;
    let status = probed(&proxy, 2).await;
    assert_eq!(status["keys"][0]["status"], "invalid", "{status}");
    assert!(status["keys"][0]["probe"]["error"]
        .as_str()
        .unwrap()
        .contains("401"));
    for model in [FREE, PAID, FREE, PAID] {
        assert_eq!(chat(&proxy, model).await.status, 200);
    }
    let used: Vec<_> = upstream
        .requests()
        .iter()
        .filter(|s| s.path_and_query != "/api/v1/key")
        .map(Seen::key)
        .collect();
    assert!(used.iter().all(|k| k == KEY_B), "{used:?}");
}

#[tokio::test]
async fn failed_probes_change_nothing() {
    for reply in [
        || Reply::json(500, r#"{"error":{"code":500,"message":"boom"}}"#),
        || Reply::json(200, "{not json"),
        || Reply::Hang,
    ] {
        let upstream = upstream(move |_| reply()).await;
        let vars = [("KEY_PROBE_INTERVAL", "300"), ("UPSTREAM_TIMEOUT", "1")];
        let proxy = Proxy::start(&upstream.base_url(), &vars).await;
        // Probes run in the background: requests are served while they hang.
        assert_eq!(chat(&proxy, FREE).await.status, 200);
        let status = probed(&proxy, 1).await;
        let a = &status["keys"][0];
        assert!(a["probe"]["error"].is_string(), "{a}");
        assert_eq!(
            (a["daily_limit"].clone(), a["status"].clone()),
            (50.into(), "active".into()),
            "{a}"
        );
    }
}

#[tokio::test]
async fn a_key_out_of_credit_is_skipped_for_paid_models_only() {
    let upstream = upstream(|key| key_answer(50, 0, if key == KEY_A { "0" } else { "3.25" })).await;
    let proxy = Proxy::start(&upstream.base_url(), &[("KEY_PROBE_INTERVAL", "300")]).await;
    probed(&proxy, 2).await;
    let before = upstream.requests().len();
    for _ in 0..4 {
        assert_eq!(chat(&proxy, PAID).await.status, 200);
    }
    let paid: Vec<_> = upstream.requests()[before..]
        .iter()
        .map(Seen::key)
        .collect();
    assert_eq!(paid, [KEY_B; 4]);
    for _ in 0..2 {
        assert_eq!(chat(&proxy, FREE).await.status, 200);
    }
    let free: Vec<_> = upstream.requests()[before + 4..]
        .iter()
        .map(Seen::key)
        .collect();
    assert!(free.contains(&KEY_A.to_owned()), "{free:?}");
}

#[tokio::test]
async fn probing_is_off_with_an_interval_of_zero() {
    let upstream = upstream(|_| key_answer(1000, 3, "1")).await;
    let proxy = Proxy::start(&upstream.base_url(), &[("KEY_PROBE_INTERVAL", "0")]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(upstream.requests().is_empty());
    let status = get(&proxy, "/key_status").await.json();
    assert_eq!(status["keys"][0]["probe"], serde_json::Value::Null);
}

#[tokio::test]
async fn keys_whose_key_answer_names_one_user_share_one_account_and_its_count_is_not_summed() {
    let upstream = upstream(|key| {
        let user = if key == KEY_C { "user_other" } else { "user_same" };
        Reply::json(
            200,
            &format!(
                r#"{{"data":{{"label":"x","limit":null,"limit_remaining":null,"is_free_tier":false,"creator_user_id":"{user}","free_model_daily_requests":{{"limit":1000,"remaining":990,"used":10}}}}}}"#
            ),
        )
    })
    .await;
    let keys = format!("{KEY_A},{KEY_B},{KEY_C}");
    let proxy = Proxy::start(
        &upstream.base_url(),
        &[("OPENROUTER_KEYS", &keys), ("KEY_PROBE_INTERVAL", "300")],
    )
    .await;
    let status = probed(&proxy, 3).await;
    let accounts = status["accounts"].as_array().unwrap();
    assert_eq!(accounts.len(), 2, "{status}");
    let same = accounts.iter().find(|a| a["id"] == "user_same").unwrap();
    assert_eq!(same["keys"].as_array().unwrap().len(), 2, "{status}");
    assert_eq!(same["learned"], true);
    // Both keys reported the account's 10: combined with the larger, never summed.
    assert_eq!(same["daily_used"], 10, "{status}");
}
