//! The fleet under faults: while Redis is away (across OpenRouter's reset, through a
//! restart or a reload) the replicas together stay within each account's limit; a hung,
//! restarted, emptied or restored Redis ends with exactly the count OpenRouter received;
//! values out of bounds in Redis are repaired, not believed. Real `redis-server`
//! processes, the real binary; without `redis-server` these tests say so and do not run.

mod common;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fleet::*;
use common::redis_server::RedisServer;
use common::*;

const SECOND: Duration = Duration::from_secs(1);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn served_by(upstream: &Upstream, secret: &str) -> usize {
    chats_seen(upstream)
        .iter()
        .filter(|s| s.key() == secret)
        .count()
}

/// A mock that answers free-model requests with OpenRouter's daily-limit 429 (naming its
/// reset instant, `reset_ms`) until that instant, and 200 after it; it counts the 200s
/// per key, the requests of the new window by its own clock.
async fn resetting_upstream(
    reset_ms: Arc<AtomicI64>,
) -> (Upstream, Arc<Mutex<HashMap<String, u64>>>) {
    let served: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let counts = Arc::clone(&served);
    let upstream = Upstream::start(move |seen| {
        let reset = reset_ms.load(Relaxed);
        if now_ms() < reset {
            let body = format!(
                r#"{{"error":{{"message":"Rate limit exceeded: free-models-per-day. ","code":429,"metadata":{{"headers":{{"X-RateLimit-Reset":"{reset}"}}}}}}}}"#
            );
            return Reply::json(429, &body);
        }
        *counts.lock().unwrap().entry(seen.key()).or_default() += 1;
        Reply::ok()
    })
    .await;
    (upstream, served)
}

/// Sends `n` chats to each replica in turn, one at a time.
async fn each_sends(fleet: &Fleet, n: usize) {
    for replica in &fleet.replicas {
        let url = replica.url("/api/v1/chat/completions");
        for _ in 0..n {
            let status = chat_at(url.clone(), FREE.to_owned()).await;
            assert!(status == 200 || status == 429, "{status}");
        }
    }
}

fn count_lines(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[tokio::test]
async fn an_outage_across_openrouters_reset_keeps_the_fleet_within_the_limit() {
    let Some(mut redis) = RedisServer::start("an_outage_across_openrouters_reset", None) else {
        return;
    };
    let reset = Arc::new(AtomicI64::new(i64::MAX));
    let (upstream, _) = resetting_upstream(Arc::clone(&reset)).await;
    let keys = format!("{KEY_A}:10");
    let vars = [("OPENROUTER_KEYS", keys.as_str()), ("MAX_WAIT", "0")];
    let fleet = Fleet::start(3, &upstream, &redis.url(), &vars).await;
    assert!(
        fleet
            .all_metrics_show("openrouter_proxy_replicas 3", 5 * SECOND)
            .await
    );
    // OpenRouter says the day's quota is gone until its reset, 3 s from now.
    let reset_at = now_ms() + 3_000;
    reset.store(reset_at, Relaxed);
    assert_eq!(fleet.replicas[0].chat(FREE).await.status, 429);
    let learned = fleet
        .all_show(5 * SECOND, |s| {
            key_in(s, KEY_A)["status"] == "daily_limit_reached"
        })
        .await;
    assert!(learned, "{}", fleet.replicas[2].key_status().await);

    // Redis goes; OpenRouter's reset passes while it is away.
    redis.kill();
    assert!(
        fleet
            .all_metrics_show("openrouter_proxy_redis_in_use 0", 5 * SECOND)
            .await
    );
    let wait = (reset_at - now_ms() + 300).max(0) as u64;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let before = chats_seen(&upstream).len();
    each_sends(&fleet, 15).await;
    let after_reset = chats_seen(&upstream).len() - before;
    // A third of the new window each: 3 + 3 + 3, never 10 each.
    assert!(
        after_reset <= 10 + 2,
        "{after_reset} reached OpenRouter in the new window of 10"
    );
    assert_eq!(after_reset, 9);
}

#[tokio::test]
async fn a_replica_started_while_redis_is_down_takes_the_share_it_remembers() {
    let Some(mut redis) = RedisServer::start("a_replica_started_while_redis_is_down", None) else {
        return;
    };
    let upstream = Upstream::ok().await;
    let keys = format!("{KEY_A}:30");
    let vars = [("OPENROUTER_KEYS", keys.as_str()), ("MAX_WAIT", "0")];
    let mut fleet = Fleet::start(3, &upstream, &redis.url(), &vars).await;
    assert!(
        fleet
            .all_metrics_show("openrouter_proxy_replicas 3", 5 * SECOND)
            .await
    );
    redis.kill();
    assert!(
        fleet
            .all_metrics_show("openrouter_proxy_redis_in_use 0", 5 * SECOND)
            .await
    );
    fleet.restart(0, &upstream, &redis.url(), &vars).await;
    each_sends(&fleet, 20).await;
    let sent = chats_seen(&upstream).len();
    assert!(
        sent <= 30 + 2,
        "{sent} reached OpenRouter for a limit of 30"
    );
    assert_eq!(sent, 30, "each replica its third");
    let log = fleet.replicas[0].log_text();
    assert!(log.contains("decides alone with 1/3 "), "{log}");
}

#[tokio::test]
async fn a_reload_during_an_outage_keeps_the_share_and_the_count() {
    let Some(mut redis) = RedisServer::start("a_reload_during_an_outage", None) else {
        return;
    };
    let upstream = Upstream::ok().await;
    let url = redis.url();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut fleet = Fleet::start(0, &upstream, &url, &[]).await;
    for dir in &dirs {
        std::fs::write(
            dir.path().join(".env"),
            format!("OPENROUTER_KEYS={KEY_A}:30\n"),
        )
        .unwrap();
        let vars = [
            ("REDIS_URL", url.as_str()),
            ("MAX_WAIT", "0"),
            ("STATE_FLUSH_INTERVAL", "0"),
        ];
        let state = dir.path().join("state.json");
        let replica = Running::start_in(dir.path(), &upstream.base_url(), &state, &vars).await;
        fleet.replicas.push(replica);
    }
    assert!(
        fleet
            .all_metrics_show("openrouter_proxy_replicas 3", 5 * SECOND)
            .await
    );
    redis.kill();
    assert!(
        fleet
            .all_metrics_show("openrouter_proxy_redis_in_use 0", 5 * SECOND)
            .await
    );
    each_sends(&fleet, 5).await;
    for replica in &fleet.replicas {
        replica.signal("HUP");
    }
    for replica in &fleet.replicas {
        replica.wait_for_log("reloaded the key list").await;
    }
    each_sends(&fleet, 20).await;
    let sent = chats_seen(&upstream).len();
    assert_eq!(sent, 30, "each replica its third, through the reload");

    // Redis comes back empty: what each replica sent alone, before and after its reload.
    redis.launch();
    let exact = eventually(10 * SECOND, || redis.shared_count("{a:k:") == 30).await;
    assert!(exact, "{}", redis.dump());
}

#[tokio::test]
async fn a_hung_redis_never_makes_the_fleet_count_what_it_did_not_send() {
    let Some(redis) = RedisServer::start("a_hung_redis", None) else {
        return;
    };
    let upstream = Upstream::ok().await;
    let keys = format!("{KEY_A}:1000");
    let vars = [("OPENROUTER_KEYS", keys.as_str()), ("MAX_WAIT", "0")];
    let fleet = Arc::new(Fleet::start(2, &upstream, &redis.url(), &vars).await);
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (fleet, stop) = (Arc::clone(&fleet), Arc::clone(&stop));
        tokio::spawn(async move {
            // Bounded: at most 2,000 requests, whatever happens.
            for _ in 0..500 {
                if stop.load(Relaxed) {
                    break;
                }
                fleet.chats(FREE, 4, 4).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(SECOND).await;
    // Longer than 4 × REDIS_TIMEOUT_MS: merges and picks time out, then all run at once.
    redis.pause();
    tokio::time::sleep(4 * SECOND).await;
    redis.resume();
    tokio::time::sleep(SECOND).await;
    stop.store(true, Relaxed);
    load.await.unwrap();
    let sent = chats_seen(&upstream).len() as u64;
    // Exactly what was sent: a pick whose confirmation timed out is sent and counted as the
    // replica's, and its script, run when Redis resumes, is fenced. Before: 1101 for 813.
    let exact = eventually(5 * SECOND, || redis.shared_count("{a:k:") == sent).await;
    assert!(
        exact,
        "OpenRouter received {sent}, Redis counts {}",
        redis.shared_count("{a:k:")
    );
    assert!(sent > 50, "the load ran: {sent}");
}

#[tokio::test]
async fn redis_lost_restarted_empty_or_restored_from_an_older_snapshot_ends_with_the_exact_count() {
    let Some(mut redis) = RedisServer::start("redis_restored_from_an_older_snapshot", None) else {
        return;
    };
    let upstream = Upstream::ok().await;
    let keys = format!("{KEY_A}:1000");
    let vars = [("OPENROUTER_KEYS", keys.as_str()), ("MAX_WAIT", "0")];
    let fleet = Fleet::start(2, &upstream, &redis.url(), &vars).await;
    let exact =
        |redis: &RedisServer| redis.shared_count("{a:k:") == chats_seen(&upstream).len() as u64;

    fleet.chats(FREE, 30, 6).await;
    assert!(
        eventually(5 * SECOND, || exact(&redis)).await,
        "{}",
        redis.dump()
    );
    // Lost, then back empty.
    redis.kill();
    assert!(
        fleet
            .all_metrics_show("openrouter_proxy_redis_in_use 0", 5 * SECOND)
            .await
    );
    fleet.chats(FREE, 20, 4).await;
    redis.launch();
    assert!(
        eventually(10 * SECOND, || exact(&redis)).await,
        "{}",
        redis.dump()
    );
    // Restored from a snapshot older than what the fleet has sent since.
    redis.command(&["SAVE"]);
    fleet.chats(FREE, 20, 4).await;
    tokio::time::sleep(SECOND).await;
    redis.kill();
    redis.launch();
    assert!(
        redis.shared_count("{a:k:") < chats_seen(&upstream).len() as u64,
        "the snapshot is older"
    );
    assert!(
        eventually(10 * SECOND, || exact(&redis)).await,
        "{}",
        redis.dump()
    );
    assert_eq!(chats_seen(&upstream).len(), 70);
}

#[tokio::test]
async fn after_a_redis_restart_each_replica_reconnects_without_flapping() {
    let Some(mut redis) = RedisServer::start("after_a_redis_restart", None) else {
        return;
    };
    let upstream = Upstream::ok().await;
    let keys = format!("{KEY_A}:1000");
    let vars = [("OPENROUTER_KEYS", keys.as_str())];
    let fleet = Fleet::start(2, &upstream, &redis.url(), &vars).await;
    fleet.chats(FREE, 8, 4).await;
    redis.kill();
    redis.launch();
    fleet.chats(FREE, 40, 4).await;
    tokio::time::sleep(2 * SECOND).await;
    for replica in &fleet.replicas {
        let log = replica.log_text();
        let lost = count_lines(&log, "is unreachable");
        assert!(lost <= 1, "lost {lost} times:\n{log}");
        assert_eq!(count_lines(&log, "is back"), lost, "{log}");
    }
    let sent = chats_seen(&upstream).len() as u64;
    assert!(eventually(5 * SECOND, || redis.shared_count("{a:k:") == sent).await);
}

#[tokio::test]
async fn a_key_counts_a_request_when_its_attempt_is_sent_not_when_picked() {
    let Some(redis) = RedisServer::start("a_key_counts_a_request_when_sent", None) else {
        return;
    };
    let upstream = Upstream::ok().await;
    let keys = format!("{KEY_A}:20");
    let vars = [("OPENROUTER_KEYS", keys.as_str()), ("MAX_WAIT", "0")];
    let fleet = Fleet::start(3, &upstream, &redis.url(), &vars).await;
    let statuses = fleet.chats(FREE, 60, 30).await;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 20);
    let totals = fleet
        .all_show(5 * SECOND, |s| {
            let totals = &key_in(s, KEY_A)["totals"];
            totals["requests"] == 20 && totals["successes"] == 20
        })
        .await;
    assert!(totals, "{}", fleet.replicas[0].key_status().await);
}

/// The Redis hash (with the default `REDIS_PREFIX`) of the account of a key of its own,
/// named by the key's SHA-256 prefix as in the state file.
fn account_hash(secret: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let hex = digest.as_ref()[..16]
        .iter()
        .fold(String::new(), |mut hex, b| {
            use std::fmt::Write as _;
            let _ = write!(hex, "{b:02x}");
            hex
        });
    format!("openrouter-proxy:{{a:k:{hex}}}")
}

/// One hash's fields, as text.
fn fields_of(redis: &RedisServer, hash: &str) -> String {
    format!("{:?}", redis.command(&["HGETALL", hash]))
}

#[tokio::test]
async fn values_out_of_bounds_in_redis_are_repaired_not_believed() {
    let Some(redis) = RedisServer::start("values_out_of_bounds_in_redis", None) else {
        return;
    };
    let upstream = Upstream::ok().await;
    let keys = format!("{KEY_A}:50,{KEY_B}:50");
    let vars = [("OPENROUTER_KEYS", keys.as_str()), ("MAX_WAIT", "0")];
    let fleet = Fleet::start(2, &upstream, &redis.url(), &vars).await;
    fleet.chats(FREE, 4, 2).await;
    tokio::time::sleep(SECOND).await;
    let hash = account_hash(KEY_A);
    let spread = |from: usize| {
        let seen = chats_seen(&upstream);
        let a = seen[from..].iter().filter(|s| s.key() == KEY_A).count();
        (a, seen.len() - from - a)
    };

    // A day in the future with the quota used up: not believed, the account serves on.
    redis.command(&["HSET", &hash, "day", "20991231", "u:someone", "50"]);
    tokio::time::sleep(SECOND).await;
    let from = chats_seen(&upstream).len();
    fleet.chats(FREE, 10, 2).await;
    let (a, b) = spread(from);
    assert!(a >= 4 && b >= 4, "A served {a}, B {b}");

    // Far-future block and limiter arrival: not adopted, not written back.
    redis.command(&["HSET", &hash, "b", "9e15", "br", "3", "tat", "9e15"]);
    tokio::time::sleep(SECOND).await;
    let from = chats_seen(&upstream).len();
    fleet.chats(FREE, 10, 2).await;
    let (a, b) = spread(from);
    assert!(a >= 4 && b >= 4, "A served {a}, B {b}");
    let status = fleet.replicas[1].key_status().await;
    assert!(
        key_in(&status, KEY_A)["blocked_until"].is_null(),
        "{status}"
    );

    // One field that is no number: the other account's merges go on.
    redis.command(&["HSET", &hash, "tat", "inf", "fb", "nan"]);
    let before_b = served_by(&upstream, KEY_B);
    tokio::time::sleep(SECOND).await;
    fleet.chats(FREE, 10, 2).await;
    assert!(
        fleet
            .all_metrics_show("openrouter_proxy_redis_in_use 1", SECOND)
            .await
    );
    let sent_b = served_by(&upstream, KEY_B) as u64;
    assert!(sent_b > before_b as u64);
    // And a hash that is not a hash at all is replaced.
    redis.command(&["DEL", &hash]);
    redis.command(&["SET", &hash, "garbage"]);
    tokio::time::sleep(SECOND).await;
    fleet.chats(FREE, 10, 2).await;
    assert!(
        fleet
            .all_metrics_show("openrouter_proxy_redis_in_use 1", SECOND)
            .await
    );
    let sent = chats_seen(&upstream).len() as u64;
    let counted = || redis.shared_count(&hash) + redis.shared_count(&account_hash(KEY_B));
    assert!(
        eventually(5 * SECOND, || counted() == sent).await,
        "OpenRouter received {sent}, Redis counts {}\n{}",
        counted(),
        redis.dump()
    );
    let fields = fields_of(&redis, &hash);
    for bad in ["9e15", "inf", "nan", "20991231", "someone"] {
        assert!(!fields.contains(bad), "{bad} left in {fields}");
    }
    for replica in &fleet.replicas {
        replica.signal("USR1");
    }
    tokio::time::sleep(SECOND).await;
    for state in &fleet.states {
        let text = std::fs::read_to_string(state).unwrap();
        assert!(!text.contains("9000000000000000"), "{text}");
    }
    let log = fleet.replicas[0].log_text() + &fleet.replicas[1].log_text();
    assert!(log.contains("out of bounds"), "{log}");
}

/// A small deterministic random sequence (xorshift), so a failing run can be repeated
/// with the seed it printed.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What the fault-injection soak does to Redis.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Killed, started again empty after a while.
    Killed,
    /// Hung (SIGSTOP), resumed after a while.
    Hung,
    /// Killed and started again empty at once.
    Restarted,
}

#[tokio::test]
async fn under_random_redis_faults_across_a_reset_the_fleet_never_overshoots_and_counts_exactly() {
    const LIMIT: usize = 30;
    const REPLICAS: usize = 3;
    let Some(mut redis) = RedisServer::start("under_random_redis_faults", None) else {
        return;
    };
    let seed = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| now_ms() as u64 | 1);
    let mut dice = Dice(seed);
    // OpenRouter's reset comes 12 s in: until then both accounts are used up (its 429
    // names the reset), after it each has a new window of LIMIT.
    let reset = Arc::new(AtomicI64::new(i64::MAX));
    let (upstream, new_window) = resetting_upstream(Arc::clone(&reset)).await;
    let keys = format!("{KEY_A}:{LIMIT},{KEY_B}:{LIMIT}");
    let vars = [
        ("OPENROUTER_KEYS", keys.as_str()),
        ("MAX_WAIT", "0"),
        ("FREE_RPM", "120"),
        ("FREE_BURST", "1"),
    ];
    let fleet = Arc::new(Fleet::start(REPLICAS, &upstream, &redis.url(), &vars).await);
    assert!(
        fleet
            .all_metrics_show("openrouter_proxy_replicas 3", 5 * SECOND)
            .await
    );
    let started = Instant::now();
    let reset_at = now_ms() + 12_000;
    reset.store(reset_at, Relaxed);

    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (fleet, stop) = (Arc::clone(&fleet), Arc::clone(&stop));
        tokio::spawn(async move {
            // Bounded: 3,000 requests at most.
            for _ in 0..1_000 {
                if stop.load(Relaxed) {
                    break;
                }
                fleet.chats(FREE, 3, 3).await;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        })
    };
    let mut faults = Vec::new();
    while started.elapsed() < Duration::from_secs(36) {
        tokio::time::sleep(Duration::from_millis(500 + dice.below(2_000))).await;
        let fault = match dice.below(3) {
            0 => Fault::Killed,
            1 => Fault::Hung,
            _ => Fault::Restarted,
        };
        let lasting = Duration::from_millis(1_000 + dice.below(3_000));
        faults.push((started.elapsed().as_secs_f32(), fault, lasting.as_millis()));
        match fault {
            Fault::Killed => {
                redis.kill();
                tokio::time::sleep(lasting).await;
                redis.launch();
            }
            Fault::Hung => {
                redis.pause();
                tokio::time::sleep(lasting).await;
                redis.resume();
            }
            Fault::Restarted => {
                redis.kill();
                redis.launch();
            }
        }
    }
    stop.store(true, Relaxed);
    load.await.unwrap();
    let mut report = format!("seed {seed}, faults (s, kind, ms): {faults:?}\n");
    for (name, secret) in [("A", KEY_A), ("B", KEY_B)] {
        let hash = account_hash(secret);
        // Counted by the mock's own clock: a request that reached it in the millisecond of
        // the reset belongs to the window it was answered in.
        let sent = new_window.lock().unwrap().get(secret).copied().unwrap_or(0);
        let exact = eventually(10 * SECOND, || redis.shared_count(&hash) == sent).await;
        let _ = writeln!(
            report,
            "account {name}: OpenRouter received {sent} in the new window (limit {LIMIT}), Redis counts {}",
            redis.shared_count(&hash)
        );
        // At most the limit plus replicas − 1.
        assert!(sent < (LIMIT + REPLICAS) as u64, "{report}");
        assert!(exact, "{report}{}", redis.dump());
    }
    eprintln!("{report}");
}
