//! Several replicas, one quota: processes of the binary share accounts' quota,
//! limiter and blocks through a real `redis-server`, exactly, and keep serving
//! (each within its share) when Redis goes away. Without `redis-server` these
//! tests say so and do not run (`.ci/run` installs it and makes that a failure).

mod common;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fleet::*;
use common::redis_server::RedisServer;
use common::*;

#[tokio::test]
async fn three_replicas_share_two_accounts_quota_exactly() {
    let Some(redis) = RedisServer::start("three_replicas_share_two_accounts_quota_exactly", None)
    else {
        return;
    };
    let upstream = Upstream::ok().await;
    let keys = format!("{KEY_A}:40,{KEY_B}:40");
    let vars = [("OPENROUTER_KEYS", keys.as_str()), ("MAX_WAIT", "0")];
    let fleet = Fleet::start(3, &upstream, &redis.url(), &vars).await;
    let statuses = fleet.chats(FREE, 300, 30).await;
    let served = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((served, refused), (80, 220), "{statuses:?}");
    let seen = chats_seen(&upstream);
    assert_eq!(seen.len(), 80);
    for secret in [KEY_A, KEY_B] {
        assert_eq!(seen.iter().filter(|s| s.key() == secret).count(), 40);
    }
    let shown = fleet
        .all_show(Duration::from_secs(5), |s| {
            used(s, KEY_A) == 40 && used(s, KEY_B) == 40
        })
        .await;
    assert!(shown, "{}", fleet.replicas[0].key_status().await);
}

#[tokio::test]
async fn the_limiter_spaces_one_accounts_requests_across_replicas() {
    let Some(redis) = RedisServer::start(
        "the_limiter_spaces_one_accounts_requests_across_replicas",
        None,
    ) else {
        return;
    };
    let upstream = Upstream::ok().await;
    let keys = format!("{KEY_A}:1000");
    let vars = [
        ("OPENROUTER_KEYS", keys.as_str()),
        ("FREE_RPM", "120"),
        ("FREE_BURST", "1"),
        ("MAX_WAIT", "30"),
    ];
    let fleet = Fleet::start(3, &upstream, &redis.url(), &vars).await;
    // Every replica bursts at once: unshared limiters would send three at a time.
    let statuses = fleet.chats(FREE, 9, 9).await;
    assert!(
        statuses.iter().all(|s| *s == 200),
        "{statuses:?}\n{}",
        fleet.replicas[1].log_text()
    );
    let mut times: Vec<Instant> = chats_seen(&upstream).iter().map(|s| s.at).collect();
    times.sort();
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        // 500 ms apart at Redis' clock; the way from Redis to the mock adds a little jitter.
        assert!(gap >= Duration::from_millis(400), "requests {gap:?} apart");
    }
}

#[tokio::test]
async fn a_refusal_learned_on_one_replica_is_honoured_by_the_others_within_a_second() {
    let Some(redis) = RedisServer::start("a_refusal_learned_on_one_replica", None) else {
        return;
    };
    let unauthorized_b = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&unauthorized_b);
    let upstream = Upstream::start(move |seen| {
        let body = String::from_utf8_lossy(&seen.body);
        if seen.key() == KEY_A && body.contains(":free") {
            return Reply::json(
                429,
                r#"{"error":{"message":"Rate limit exceeded: free-models-per-day. ","code":429,"metadata":{"headers":{"X-RateLimit-Reset":"4102444800000"}}}}"#,
            );
        }
        if seen.key() == KEY_B && flag.load(Relaxed) {
            return Reply::json(401, r#"{"error":{"message":"User not found.","code":401}}"#);
        }
        Reply::ok()
    })
    .await;
    let keys = format!("{KEY_A}:50,{KEY_B}:50");
    let fleet = Fleet::start(
        3,
        &upstream,
        &redis.url(),
        &[("OPENROUTER_KEYS", keys.as_str())],
    )
    .await;
    let (a, b, c) = (&fleet.replicas[0], &fleet.replicas[1], &fleet.replicas[2]);

    // Replica A learns that key A's account is used up for today (and retries on B).
    while chats_seen(&upstream).iter().all(|s| s.key() != KEY_A) {
        assert_eq!(a.chat(FREE).await.status, 200);
    }
    let learned = Instant::now();
    let honoured = wait_for(b, |s| key_in(s, KEY_A)["status"] == "daily_limit_reached").await;
    let took = learned.elapsed();
    assert!(honoured, "{}", b.key_status().await);
    assert!(
        took < Duration::from_secs(1),
        "replica B learned it after {took:?}"
    );
    let before = chats_seen(&upstream).len();
    for _ in 0..4 {
        assert_eq!(b.chat(FREE).await.status, 200);
    }
    let later = chats_seen(&upstream);
    assert!(
        later[before..].iter().all(|s| s.key() == KEY_B),
        "B used key A's account"
    );

    // Replica B gets a 401 for key B: replica C stops using key B for paid models too.
    unauthorized_b.store(true, Relaxed);
    let before = chats_seen(&upstream).len();
    while chats_seen(&upstream)[before..]
        .iter()
        .all(|s| s.key() != KEY_B)
    {
        assert_eq!(b.chat(PAID).await.status, 200);
    }
    let learned = Instant::now();
    assert!(wait_for(c, |s| key_in(s, KEY_B)["status"] == "blocked").await);
    let took = learned.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "replica C learned it after {took:?}"
    );
    let before = chats_seen(&upstream).len();
    for _ in 0..4 {
        assert_eq!(c.chat(PAID).await.status, 200);
    }
    assert!(chats_seen(&upstream)[before..]
        .iter()
        .all(|s| s.key() == KEY_A));
}

/// Polls `replica`'s /key_status (for up to 5 s) until `check` holds.
async fn wait_for(replica: &Running, check: impl Fn(&serde_json::Value) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if check(&replica.key_status().await) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn when_redis_goes_away_each_replica_keeps_to_its_share_and_adds_its_count_when_back() {
    let Some(mut redis) = RedisServer::start("when_redis_goes_away", None) else {
        return;
    };
    let upstream = Upstream::ok().await;
    let keys = format!("{KEY_A}:40");
    let vars = [("OPENROUTER_KEYS", keys.as_str()), ("MAX_WAIT", "0")];
    let fleet = Fleet::start(2, &upstream, &redis.url(), &vars).await;
    assert!(fleet.chats(FREE, 10, 5).await.iter().all(|s| *s == 200));
    // Both replicas know the count and the fleet's size before Redis goes.
    assert!(
        fleet
            .all_show(Duration::from_secs(5), |s| used(s, KEY_A) == 10)
            .await
    );
    for replica in &fleet.replicas {
        let metrics = text_of(replica, "/metrics").await;
        assert!(metrics.contains("openrouter_proxy_replicas 2"), "{metrics}");
        assert!(metrics.contains("openrouter_proxy_redis_in_use 1"));
    }

    redis.kill();
    // 30 left: each replica serves exactly its 15, and answers every request.
    for replica in &fleet.replicas {
        let url = replica.url("/api/v1/chat/completions");
        let mut statuses = Vec::new();
        for _ in 0..20 {
            statuses.push(chat_at(url.clone(), FREE.to_owned()).await);
        }
        let served = statuses.iter().filter(|s| **s == 200).count();
        assert_eq!(served, 15, "{statuses:?}");
        assert!(statuses.iter().all(|s| *s == 200 || *s == 429));
        let health = text_of(replica, "/health?format=json").await;
        let health: serde_json::Value = serde_json::from_str(&health).unwrap();
        assert_eq!(health["status"], "degraded");
        assert_eq!(health["redis"], "unreachable");
        assert!(text_of(replica, "/metrics")
            .await
            .contains("openrouter_proxy_redis_in_use 0"));
    }
    assert_eq!(chats_seen(&upstream).len(), 40);

    // Redis comes back empty: the replicas fill it again, with what they counted meanwhile.
    redis.launch();
    assert!(
        fleet
            .all_show(Duration::from_secs(15), |s| used(s, KEY_A) == 40)
            .await
    );
    for replica in &fleet.replicas {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !text_of(replica, "/metrics")
            .await
            .contains("openrouter_proxy_redis_in_use 1")
        {
            assert!(Instant::now() < deadline, "Redis not in use again");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            chat_at(replica.url("/api/v1/chat/completions"), FREE.into()).await,
            429
        );
    }
    assert_eq!(redis.shared_count("{a:k:"), 40, "{}", redis.dump());
}

#[tokio::test]
async fn a_fleet_restarted_with_redis_kept_finds_counts_blocks_and_learned_accounts() {
    let Some(redis) = RedisServer::start("a_fleet_restarted_with_redis_kept", None) else {
        return;
    };
    let upstream = Upstream::start(|seen| {
        let body = String::from_utf8_lossy(&seen.body);
        if body.contains("bad/model") {
            // An error answer names the account's user: both keys are one account.
            return Reply::json(
                400,
                r#"{"error":{"message":"bad/model is not a valid model ID","code":400},"user_id":"user_shared"}"#,
            );
        }
        if seen.key() == KEY_C {
            return Reply::json(401, r#"{"error":{"message":"User not found.","code":401}}"#);
        }
        Reply::ok()
    })
    .await;
    let keys = format!("{KEY_A}:50,{KEY_B}:50,{KEY_C}:50");
    let vars = [("OPENROUTER_KEYS", keys.as_str())];
    let mut fleet = Fleet::start(2, &upstream, &redis.url(), &vars).await;
    let first = &fleet.replicas[0];
    // Paid requests go round the keys: C answers 401 (blocked), A and B name their user.
    for _ in 0..4 {
        first.chat("bad/model").await;
    }
    for _ in 0..6 {
        assert_eq!(first.chat(FREE).await.status, 200);
    }
    let before = first.key_status().await;
    assert_eq!(
        key_in(&before, KEY_A)["account"],
        key_in(&before, KEY_B)["account"],
        "{before}"
    );
    let shared_used = used(&before, KEY_A);
    assert!(shared_used >= 6, "{before}");
    tokio::time::sleep(Duration::from_millis(600)).await; // one merge round and more

    // Every replica goes, and comes back without its state file: Redis remembers.
    fleet.launch(&upstream, &redis.url(), &vars).await;
    let remembered = fleet
        .all_show(Duration::from_secs(5), |s| {
            key_in(s, KEY_C)["status"] == "blocked"
                && key_in(s, KEY_A)["account"] == key_in(s, KEY_B)["account"]
                && used(s, KEY_A) == shared_used
                && key_in(s, KEY_A)["totals"]["requests"].as_u64() > Some(0)
        })
        .await;
    assert!(remembered, "{}", fleet.replicas[1].key_status().await);
}

#[tokio::test]
async fn nothing_in_redis_logs_or_answers_holds_a_key_the_proxy_key_or_the_redis_password() {
    let password = "redis-Secret-pass-42";
    let Some(redis) = RedisServer::start("nothing_in_redis_holds_a_secret", Some(password)) else {
        return;
    };
    let upstream = Upstream::start(|seen| {
        if seen.path_and_query == "/api/v1/key" {
            return Reply::json(
                200,
                r#"{"data":{"label":"sk-or-v1-aaa...001","limit":null,"limit_remaining":null,"is_free_tier":false,"free_model_daily_requests":{"limit":1000,"remaining":990,"used":10}}}"#,
            );
        }
        Reply::ok()
    })
    .await;
    let keys = format!("{KEY_A}:50,{KEY_B}:50@team");
    let vars = [
        ("OPENROUTER_KEYS", keys.as_str()),
        ("KEY_PROBE_INTERVAL", "1"),
    ];
    let fleet = Fleet::start(2, &upstream, &redis.url(), &vars).await;
    fleet.chats(FREE, 6, 3).await;
    fleet.chats(PAID, 4, 2).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let dump = redis.dump();
    assert!(dump.contains("{a:n:team}"), "{dump}");
    let mut seen_text = dump.clone();
    for replica in &fleet.replicas {
        seen_text.push_str(&replica.log_text());
        seen_text.push_str(&text_of(replica, "/key_status").await);
        seen_text.push_str(&text_of(replica, "/metrics").await);
        seen_text.push_str(&text_of(replica, "/health?format=json").await);
    }
    for secret in [KEY_A, KEY_B, PROXY_KEY, password] {
        assert!(
            !seen_text.contains(secret),
            "{secret} seen in:\n{seen_text}"
        );
    }
    assert!(!dump.contains("sk-or"), "{dump}");
    let log = fleet.replicas[0].log_text();
    assert!(
        log.contains(&format!("redis://127.0.0.1:{}/0", redis.port)),
        "{log}"
    );
}

#[tokio::test]
async fn an_unreachable_redis_at_startup_is_no_reason_not_to_serve() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("redis://:hunter2-pass@127.0.0.1:{closed}/0");
    let upstream = Upstream::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let replica = Running::start(
        &upstream.base_url(),
        &dir.path().join("state.json"),
        &[("REDIS_URL", url.as_str())],
    )
    .await;
    assert_eq!(replica.chat(FREE).await.status, 200);
    let health: serde_json::Value =
        serde_json::from_str(&text_of(&replica, "/health?format=json").await).unwrap();
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["redis"], "unreachable");
    assert!(text_of(&replica, "/metrics")
        .await
        .contains("openrouter_proxy_redis_in_use 0"));
    let log = replica.log_text();
    assert!(log.contains("unreachable"), "{log}");
    assert!(!log.contains("hunter2"), "{log}");
}

#[tokio::test]
async fn the_fleet_probes_each_key_once_per_interval_and_shares_what_it_found() {
    let Some(redis) = RedisServer::start("the_fleet_probes_each_key_once", None) else {
        return;
    };
    let upstream = Upstream::start(|seen| {
        if seen.path_and_query == "/api/v1/key" {
            return Reply::json(
                200,
                r#"{"data":{"label":"x","limit":null,"limit_remaining":null,"is_free_tier":true,"free_model_daily_requests":{"limit":50,"remaining":47,"used":3}}}"#,
            );
        }
        Reply::ok()
    })
    .await;
    let vars = [("KEY_PROBE_INTERVAL", "10")];
    let fleet = Fleet::start(3, &upstream, &redis.url(), &vars).await;
    // Every replica shows a probe of every key, though each key was asked about once.
    let shared = fleet
        .all_show(Duration::from_secs(8), |s| {
            s["keys"]
                .as_array()
                .unwrap()
                .iter()
                .all(|k| k["probe"]["free_daily"]["used"] == 3)
        })
        .await;
    assert!(shared, "{}", fleet.replicas[2].key_status().await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let probes: Vec<String> = upstream
        .requests()
        .iter()
        .filter(|s| s.path_and_query == "/api/v1/key")
        .map(Seen::key)
        .collect();
    for secret in [KEY_A, KEY_B] {
        let count = probes.iter().filter(|k| *k == secret).count();
        assert_eq!(count, 1, "one interval, three replicas: {probes:?}");
    }
}
