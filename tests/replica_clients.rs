//! Clients across replicas: with one Redis, a client's daily request and free-request
//! limits and its per-minute limit hold for the whole fleet, exactly; its tokens and cost
//! add up on every replica; while Redis is away each replica keeps the client to its share
//! of what is left. Real `redis-server` processes, the real binary; without
//! `redis-server` these tests say so and do not run.

mod common;

use std::fmt::Write as _;
use std::time::Duration;

use common::fleet::*;
use common::redis_server::RedisServer;
use common::*;

const SECOND: Duration = Duration::from_secs(1);
const PLANNER_KEY: &str = "pk-planner-0123456789";

/// A fleet of `n` replicas whose `CONFIG_FILE` defines client `planner` with `limits`,
/// logging at `trace`.
async fn fleet_with_planner(
    n: usize,
    upstream: &Upstream,
    redis: &RedisServer,
    limits: &str,
) -> (Fleet, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clients.toml");
    let toml = format!("[[clients]]\nname = \"planner\"\nkey = \"{PLANNER_KEY}\"\n{limits}\n");
    std::fs::write(&file, toml).unwrap();
    let keys = format!("{KEY_A}:1000,{KEY_B}:1000");
    let vars = [
        ("CONFIG_FILE", file.to_str().unwrap()),
        ("MAX_WAIT", "0"),
        ("OPENROUTER_KEYS", keys.as_str()),
        ("LOG_LEVEL", "trace"),
    ];
    let fleet = Fleet::start(n, upstream, &redis.url(), &vars).await;
    assert!(
        fleet
            .all_metrics_show("openrouter_proxy_redis_in_use 1", 5 * SECOND)
            .await
    );
    (fleet, dir)
}

/// `total` chats of the planner for `model`, `at_once` at a time, spread over the
/// replicas in turn; their answers.
async fn planner_chats(fleet: &Fleet, model: &str, total: usize, at_once: usize) -> Vec<Answer> {
    fleet.chats_as(PLANNER_KEY, model, total, at_once).await
}

/// From Redis' slow log: the scripts run with two keys (an account pick that counts a
/// client's request) and the client admissions (one key, the client's hash, and the 11
/// arguments of `ADMIT`; the merge's client script has 8).
fn client_scripts(redis: &RedisServer) -> (usize, usize) {
    let redis::Value::Array(entries) = redis.command(&["SLOWLOG", "GET", "-1"]) else {
        panic!("SLOWLOG GET answers an array");
    };
    let mut counts = (0, 0);
    for entry in entries {
        let redis::Value::Array(fields) = entry else {
            continue;
        };
        let Some(redis::Value::Array(args)) = fields.get(3) else {
            continue;
        };
        let args: Vec<String> = args
            .iter()
            .map(|a| redis::from_redis_value::<String>(a.clone()).unwrap_or_default())
            .collect();
        if !args[0].eq_ignore_ascii_case("evalsha") {
            continue;
        }
        match args[2].as_str() {
            "2" => counts.0 += 1,
            "1" if args[3].contains("c:planner") && args.len() == 4 + 11 => counts.1 += 1,
            _ => {}
        }
    }
    counts
}

fn served(answers: &[Answer]) -> usize {
    answers.iter().filter(|a| a.status == 200).count()
}

/// The planner as replica `replica`'s operator `/key_status` shows it.
async fn planner_today(replica: &Running) -> serde_json::Value {
    replica.key_status().await["clients"][0]["today"].clone()
}

#[tokio::test]
async fn two_replicas_share_a_clients_daily_limits_exactly_add_up_its_tokens_and_never_show_its_key(
) {
    let Some(redis) = RedisServer::start("replicas_share_a_clients_limits", None) else {
        return;
    };
    let upstream = Upstream::start(|_| {
        Reply::json(
            200,
            r#"{"id":"gen-1","choices":[{"message":{"role":"assistant","content":"hi"}}],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,"cost":0.001}}"#,
        )
    })
    .await;
    let (fleet, _dir) = fleet_with_planner(
        2,
        &upstream,
        &redis,
        "requests_per_day = 25\nfree_requests_per_day = 15",
    )
    .await;

    // Free requests from both replicas at once: 15 for the fleet, not 15 each. Each is
    // counted for the client by its key's pick, in the same script (Redis' slow log, at 0
    // µs, records every command): no admission script of its own.
    redis.command(&["CONFIG", "SET", "slowlog-log-slower-than", "0"]);
    redis.command(&["CONFIG", "SET", "slowlog-max-len", "100000"]);
    redis.command(&["SLOWLOG", "RESET"]);
    let answers = planner_chats(&fleet, FREE, 40, 8).await;
    assert_eq!(served(&answers), 15);
    let (picks_with_client, admissions) = client_scripts(&redis);
    assert!(
        picks_with_client >= 15,
        "{picks_with_client} picks counted the client"
    );
    assert_eq!(admissions, 0, "free requests took an admission round trip");
    let refused = answers.iter().find(|a| a.status == 429).unwrap();
    assert!(
        refused
            .text()
            .contains("client planner reached its daily free-request limit (15)"),
        "{}",
        refused.text()
    );
    // Paid requests take what is left of the daily request limit: 10, each admitted by
    // one round trip (a paid request waits for no pick in Redis).
    redis.command(&["SLOWLOG", "RESET"]);
    let answers = planner_chats(&fleet, PAID, 20, 4).await;
    assert_eq!(served(&answers), 10);
    let (picks_with_client, admissions) = client_scripts(&redis);
    assert_eq!((picks_with_client, admissions), (0, 20));
    assert_eq!(chats_seen(&upstream).len(), 25);

    // Each replica shows the fleet's day: 25 requests, 15 free, 25 answers' tokens and cost.
    assert!(
        fleet
            .all_show(5 * SECOND, |status| {
                let today = &status["clients"][0]["today"];
                today["requests"] == 25
                    && today["free_requests"] == 15
                    && today["prompt_tokens"] == 250
                    && today["completion_tokens"] == 125
            })
            .await,
        "{}\n{}",
        planner_today(&fleet.replicas[0]).await,
        planner_today(&fleet.replicas[1]).await
    );
    let cost = planner_today(&fleet.replicas[1]).await["cost"]
        .as_f64()
        .unwrap();
    assert!((cost - 0.025).abs() < 1e-9, "{cost}");

    // Redis holds the client by name. Nothing anywhere holds its key or the key's hash:
    // Redis, the logs at trace, /key_status, /metrics, the state files.
    let dump = redis.dump();
    assert!(dump.contains("c:planner"), "{dump}");
    let hash = openrouter_proxy::config::file::sha256(PLANNER_KEY.as_bytes())
        .iter()
        .fold(String::new(), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        });
    let mut outputs = vec![("Redis".to_owned(), dump)];
    let mut fleet = fleet;
    for (i, replica) in fleet.replicas.iter().enumerate() {
        outputs.push((
            format!("/key_status {i}"),
            replica.key_status().await.to_string(),
        ));
        outputs.push((format!("/metrics {i}"), text_of(replica, "/metrics").await));
    }
    for (i, replica) in fleet.replicas.iter_mut().enumerate() {
        replica.signal("TERM");
        replica.wait(10 * SECOND);
        outputs.push((format!("log {i}"), replica.log_text()));
        outputs.push((
            format!("state file {i}"),
            std::fs::read_to_string(&fleet.states[i]).unwrap(),
        ));
    }
    for (place, text) in &outputs {
        assert!(!text.is_empty(), "{place} is empty");
        for secret in [PLANNER_KEY, &PLANNER_KEY[..12], hash.as_str(), &hash[..16]] {
            assert!(!text.contains(secret), "{place} holds {secret}:\n{text}");
        }
    }
    assert!(outputs
        .iter()
        .any(|(place, text)| place.starts_with("log") && text.contains("TRACE")));
}

#[tokio::test]
async fn a_clients_per_minute_limit_holds_across_replicas_admitted_or_at_the_pick() {
    // Paid requests are admitted by their own script; free ones at their key's pick.
    for model in [PAID, FREE] {
        let Some(redis) = RedisServer::start("replicas_share_a_clients_rate", None) else {
            return;
        };
        let upstream = Upstream::ok().await;
        // 2 at once, then one every 30 s: alone, each replica would let 2 through.
        let (fleet, _dir) =
            fleet_with_planner(2, &upstream, &redis, "requests_per_minute = 2\nburst = 2").await;
        let answers = planner_chats(&fleet, model, 8, 8).await;
        assert_eq!(served(&answers), 2, "{model}: the fleet's burst is 2");
        assert_eq!(chats_seen(&upstream).len(), 2);
        let busy = answers.iter().find(|a| a.status == 429).unwrap();
        assert!(
            busy.text().contains("requests_per_minute"),
            "{}",
            busy.text()
        );
    }
}

#[tokio::test]
async fn while_redis_is_away_each_replica_keeps_a_client_to_its_share_of_what_is_left() {
    let Some(mut redis) = RedisServer::start("replicas_client_share_alone", None) else {
        return;
    };
    let upstream = Upstream::ok().await;
    let (fleet, _dir) = fleet_with_planner(2, &upstream, &redis, "requests_per_day = 20").await;
    assert_eq!(served(&planner_chats(&fleet, PAID, 4, 2).await), 4);
    // Both replicas know the fleet's 4 before Redis goes.
    assert!(
        fleet
            .all_show(5 * SECOND, |s| s["clients"][0]["today"]["requests"] == 4)
            .await
    );
    redis.kill();
    // 16 left: 8 each, whatever each is asked (free requests: the first picks may find
    // Redis gone before the replica knows, and decide alone there).
    let answers = planner_chats(&fleet, FREE, 30, 3).await;
    assert_eq!(served(&answers), 16);
    assert_eq!(chats_seen(&upstream).len(), 20);
    for replica in &fleet.replicas {
        assert!(
            replica.log_text().contains("decides alone"),
            "{}",
            replica.log_text()
        );
    }

    // Back, empty: each replica writes its own count again, and the fleet's day is 20.
    redis.launch();
    assert!(
        fleet
            .all_show(10 * SECOND, |s| s["clients"][0]["today"]["requests"] == 20)
            .await
    );
    assert_eq!(served(&planner_chats(&fleet, PAID, 4, 2).await), 0);
    assert_eq!(chats_seen(&upstream).len(), 20);
}
