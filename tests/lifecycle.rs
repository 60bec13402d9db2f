//! The binary as a process: key state survives restarts, bad state files never stop
//! it, and SIGTERM drains in-flight streams before exiting.

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};

const FREE: &str = "qwen/qwen3-coder:free";

/// The per-key parts of /key_status that must survive a restart.
fn remembered(status: &serde_json::Value) -> Vec<serde_json::Value> {
    status["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            serde_json::json!([
                k["id"],
                k["daily_used"],
                k["status"],
                k["blocked_until"],
                k["block_reason"],
                k["totals"]
            ])
        })
        .collect()
}

fn per_minute_429() -> Reply {
    Reply::json(
        429,
        r#"{"error":{"message":"Rate limit exceeded: free-models-per-min. ","code":429,"metadata":{"headers":{"X-RateLimit-Reset":"4102444800000"}}}}"#,
    )
}

#[tokio::test]
async fn counts_and_blocks_survive_sigterm_and_kill_9_loses_at_most_one_flush_interval() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let upstream = Upstream::script(vec![per_minute_429()]).await;
    let mut proxy = Running::start(&upstream.base_url(), &state, &[]).await;
    for _ in 0..3 {
        assert_eq!(proxy.chat(FREE).await.status, 200);
    }
    let before = proxy.key_status().await;
    assert_eq!(
        before["keys"][0]["block_reason"], "per_minute_limit",
        "{before}"
    );
    assert_eq!(before["keys"][1]["daily_used"], 3, "{before}");
    proxy.signal("TERM");
    assert!(proxy.wait(Duration::from_secs(10)).success());
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(
        !text.contains(KEY_A) && !text.contains(KEY_B),
        "a key is in the state file:\n{text}"
    );

    let mut proxy = Running::start(&upstream.base_url(), &state, &[]).await;
    assert_eq!(remembered(&proxy.key_status().await), remembered(&before));

    // kill -9 after more traffic: everything older than one flush interval survives.
    proxy.chat(FREE).await;
    proxy.chat(FREE).await;
    let flushed = proxy.key_status().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    proxy.signal("KILL");
    proxy.wait(Duration::from_secs(5));
    let proxy = Running::start(&upstream.base_url(), &state, &[]).await;
    assert_eq!(remembered(&proxy.key_status().await), remembered(&flushed));
    assert_eq!(flushed["keys"][1]["daily_used"], 5);
}

#[tokio::test]
async fn counts_from_an_earlier_day_are_dropped_but_blocks_in_force_and_totals_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let upstream = Upstream::script(vec![per_minute_429()]).await;
    let mut proxy = Running::start(&upstream.base_url(), &state, &[]).await;
    proxy.chat(FREE).await;
    proxy.signal("TERM");
    proxy.wait(Duration::from_secs(10));
    let mut document: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    for account in document["accounts"].as_array_mut().unwrap() {
        account["day"] = 20_000_101.into();
    }
    std::fs::write(&state, document.to_string()).unwrap();
    let proxy = Running::start(&upstream.base_url(), &state, &[]).await;
    let status = proxy.key_status().await;
    assert_eq!(status["keys"][0]["daily_used"], 0, "{status}");
    assert_eq!(status["keys"][1]["daily_used"], 0, "{status}");
    assert_eq!(
        status["keys"][0]["block_reason"], "per_minute_limit",
        "{status}"
    );
    assert_eq!(status["keys"][1]["totals"]["successes"], 1, "{status}");
}

#[tokio::test]
async fn a_corrupt_or_unusable_state_file_is_a_warning_and_the_proxy_serves() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::ok().await;
    for (name, contents) in [
        ("truncated.json", r#"{"version":1,"keys":[{"key":"ab"#),
        ("types.json", r#"{"version":"one","keys":7}"#),
        // A bare string: the warning must not echo the file's contents.
        ("string.json", r#""sk-or-v1-leaked-through-a-warning""#),
    ] {
        let state = dir.path().join(name);
        std::fs::write(&state, contents).unwrap();
        let proxy = Running::start(&upstream.base_url(), &state, &[]).await;
        assert_eq!(proxy.chat(FREE).await.status, 200);
        assert!(
            proxy.log_text().contains("is corrupt"),
            "{}",
            proxy.log_text()
        );
        assert!(!proxy.log_text().contains("leaked"), "{}", proxy.log_text());
        assert_eq!(
            std::fs::read_to_string(state.with_extension("json.corrupt")).unwrap(),
            contents
        );
    }
    let directory = dir.path().join("a-directory");
    std::fs::create_dir(&directory).unwrap();
    let proxy = Running::start(&upstream.base_url(), &directory, &[]).await;
    assert_eq!(proxy.chat(FREE).await.status, 200);
    assert!(
        proxy.log_text().contains("cannot be read"),
        "{}",
        proxy.log_text()
    );

    // A parent that is a regular file: not writable even for root.
    let blocker = dir.path().join("not-a-directory");
    std::fs::write(&blocker, "").unwrap();
    let proxy = Running::start(&upstream.base_url(), &blocker.join("state.json"), &[]).await;
    for _ in 0..3 {
        assert_eq!(proxy.chat(FREE).await.status, 200);
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let log = proxy.log_text();
    assert_eq!(log.matches("cannot be written").count(), 1, "{log}");
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_stream_finish_and_refuses_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, chunks) = Upstream::with_stream().await;
    let mut proxy = Running::start(
        &upstream.base_url(),
        &dir.path().join("state.json"),
        &[("SHUTDOWN_GRACE", "30")],
    )
    .await;
    let mut body = open_stream(&proxy.url("/api/v1/chat/completions")).await;
    relay_one(&chunks, &mut body, "data: {\"n\":1}\n\n").await;

    proxy.signal("TERM");
    let refused = eventually(Duration::from_secs(5), || {
        std::net::TcpStream::connect(("127.0.0.1", proxy.port)).is_err()
    })
    .await;
    assert!(refused, "new connections are still accepted after SIGTERM");
    for n in 2..=3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        chunks
            .send(Bytes::from(format!("data: {{\"n\":{n}}}\n\n")))
            .await
            .unwrap();
        let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(frame, format!("data: {{\"n\":{n}}}\n\n"));
    }
    assert!(
        proxy.child.try_wait().unwrap().is_none(),
        "exited with a stream in flight"
    );
    chunks
        .send(Bytes::from_static(b"data: [DONE]\n\n"))
        .await
        .unwrap();
    drop(chunks);
    assert_eq!(
        body.frame().await.unwrap().unwrap().into_data().unwrap(),
        "data: [DONE]\n\n"
    );
    assert!(body.frame().await.is_none());
    assert!(proxy.wait(Duration::from_secs(10)).success());
}

#[tokio::test]
async fn a_second_signal_exits_at_once_after_writing_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let (upstream, chunks) = Upstream::with_stream().await;
    let vars = [("SHUTDOWN_GRACE", "60"), ("STATE_FLUSH_INTERVAL", "0")];
    let mut proxy = Running::start(&upstream.base_url(), &state, &vars).await;
    let req = request("POST", &proxy.url("/api/v1/chat/completions"))
        .body(Full::new(Bytes::from_static(
            br#"{"model":"a/b:free","stream":true}"#,
        )))
        .unwrap();
    let mut body = client().request(req).await.unwrap().into_body();
    relay_one(&chunks, &mut body, "data: {}\n\n").await;
    proxy.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.signal("INT");
    let status = proxy.wait(Duration::from_secs(5));
    assert_eq!(status.code(), Some(1));
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(saved["accounts"][0]["daily_used"], 1, "{saved}");
}

#[tokio::test]
async fn two_signals_back_to_back_exit_at_once_and_neither_is_missed() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, chunks) = Upstream::with_stream().await;
    let vars = [("SHUTDOWN_GRACE", "60")];
    let mut proxy = Running::start(&upstream.base_url(), &dir.path().join("s.json"), &vars).await;
    let mut body = open_stream(&proxy.url("/api/v1/chat/completions")).await;
    relay_one(&chunks, &mut body, "data: {}\n\n").await;
    // No pause between them: the second lands while the first is being handled.
    proxy.signal("TERM");
    proxy.signal("TERM");
    let status = proxy.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{}", proxy.log_text());
}

#[tokio::test]
async fn connections_that_never_sent_a_request_do_not_hold_up_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::ok().await;
    let vars = [("SHUTDOWN_GRACE", "60"), ("HEADER_READ_TIMEOUT", "60")];
    let mut proxy = Running::start(&upstream.base_url(), &dir.path().join("s.json"), &vars).await;
    let silent = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    let mut half_sent = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    std::io::Write::write_all(&mut half_sent, b"GET /api/v1/models HTTP/1.1\r\n").unwrap();
    assert_eq!(proxy.chat("openai/gpt-4o").await.status, 200);
    proxy.signal("TERM");
    // Both limits are 60 s: an exit well before that means neither connection was waited for.
    assert!(proxy.wait(Duration::from_secs(10)).success());
    drop((silent, half_sent));
}

#[tokio::test]
async fn an_idle_proxy_does_not_rewrite_its_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let upstream = Upstream::ok().await;
    let proxy = Running::start(
        &upstream.base_url(),
        &state,
        &[("STATE_FLUSH_INTERVAL", "1")],
    )
    .await;
    assert_eq!(proxy.chat(FREE).await.status, 200);
    let written = eventually(Duration::from_secs(5), || {
        std::fs::read_to_string(&state).is_ok_and(|t| t.contains("\"daily_used\": 1"))
    })
    .await;
    assert!(written, "the state was never written: {}", proxy.log_text());
    // Each write replaces the file (a new inode); several idle intervals must leave it alone.
    let identity = |path: &Path| {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).unwrap();
        (meta.ino(), meta.mtime_nsec(), meta.mtime())
    };
    let before = identity(&state);
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert_eq!(
        identity(&state),
        before,
        "an idle proxy rewrote its state file"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name != "state.json")
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[tokio::test]
async fn a_state_file_of_the_per_key_format_is_still_restored() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let upstream = Upstream::ok().await;
    // Write today's file with the real fingerprints, then turn it into the version 1 shape.
    let proxy = Running::start(&upstream.base_url(), &state, &[]).await;
    let today = proxy.key_status().await["now"].as_str().unwrap()[..10].replace('-', "");
    let mut proxy = proxy;
    proxy.signal("TERM");
    proxy.wait(Duration::from_secs(10));
    let current: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let fingerprint = |i: usize| current["keys"][i]["key"].clone();
    let old = serde_json::json!({
        "version": 1,
        "saved_at": "2026-11-24T10:00:00+00:00",
        "keys": [
            {"key": fingerprint(0), "day": today.parse::<u32>().unwrap(), "daily_used": 7,
             "block": {"until_ms": 4_102_444_800_000_i64, "reason": "unauthorized"},
             "totals": [9, 7, 1, 1]},
            {"key": fingerprint(1), "day": today.parse::<u32>().unwrap(), "daily_used": 3,
             "block": {"until_ms": 4_102_444_800_000_i64, "reason": "daily_limit"},
             "totals": [3, 3, 0, 0]},
        ],
    });
    std::fs::write(&state, old.to_string()).unwrap();
    let proxy = Running::start(&upstream.base_url(), &state, &[]).await;
    let status = proxy.key_status().await;
    let key = |i: usize| &status["keys"][i];
    assert_eq!(key(0)["daily_used"], 7, "{status}");
    assert_eq!(key(0)["block_reason"], "unauthorized", "{status}");
    assert_eq!(key(0)["totals"]["requests"], 9, "{status}");
    assert_eq!(key(1)["daily_used"], 3, "{status}");
    assert_eq!(key(1)["status"], "daily_limit_reached", "{status}");
}

#[tokio::test]
async fn a_fifo_or_a_link_as_state_file_is_neither_read_nor_followed() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::ok().await;
    let fifo = dir.path().join("fifo.json");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    // A FIFO would block the read for ever: the proxy must start and serve.
    let proxy = Running::start(&upstream.base_url(), &fifo, &[]).await;
    assert_eq!(proxy.chat(FREE).await.status, 200);
    assert!(
        proxy.log_text().contains("not a regular file"),
        "{}",
        proxy.log_text()
    );
    drop(proxy);

    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, "precious").unwrap();
    let link = dir.path().join("link.json");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let mut proxy = Running::start(&upstream.base_url(), &link, &[]).await;
    assert_eq!(proxy.chat(FREE).await.status, 200);
    proxy.signal("TERM");
    assert!(proxy.wait(Duration::from_secs(10)).success());
    assert!(
        proxy.log_text().contains("not a regular file"),
        "{}",
        proxy.log_text()
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
}

#[tokio::test]
async fn sighup_and_sigusr_write_the_state_and_do_not_kill_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let upstream = Upstream::ok().await;
    let vars = [("STATE_FLUSH_INTERVAL", "0")];
    let mut proxy = Running::start(&upstream.base_url(), &state, &vars).await;
    assert_eq!(proxy.chat(FREE).await.status, 200);
    for signal in ["HUP", "USR1", "USR2"] {
        let _ = std::fs::remove_file(&state);
        proxy.signal(signal);
        let written = eventually(Duration::from_secs(5), || state.exists()).await;
        assert!(written, "{signal}: no state written: {}", proxy.log_text());
        assert!(
            proxy.child.try_wait().unwrap().is_none(),
            "{signal} killed the proxy"
        );
        assert_eq!(proxy.chat(FREE).await.status, 200);
    }
}

const CONTENT_EVENT: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n";

#[tokio::test]
async fn sighup_reloads_the_key_list_keeping_counts_and_streams_of_keys_that_stay() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let env = dir.path().join(".env");
    std::fs::write(&env, format!("OPENROUTER_KEYS={KEY_A}:10,{KEY_B}:10\n")).unwrap();
    let (upstream, chunks) = Upstream::with_stream().await;
    let mut proxy = Running::start_in(dir.path(), &upstream.base_url(), &state, &[]).await;
    // A stream on key A (the first pick of a paid model), still waiting for its first
    // token at the reload.
    let mut stream = open_stream(&proxy.url("/api/v1/chat/completions")).await;
    for _ in 0..3 {
        assert_eq!(proxy.chat(FREE).await.status, 200);
    }
    let before = proxy.key_status().await;
    let (used, requests, successes) = {
        let a = key_in(&before, KEY_A);
        let number = |v: &serde_json::Value| v.as_u64().unwrap();
        (
            number(&a["daily_used"]),
            number(&a["totals"]["requests"]),
            number(&a["totals"]["successes"]),
        )
    };
    assert!(used >= 1 && requests == used + 1, "{before}");
    let id_before = key_in(&before, KEY_A)["id"].clone();

    // B removed, C added, A moved into account "team" with C and re-limited to 5.
    std::fs::write(
        &env,
        format!("OPENROUTER_KEYS={KEY_C}@team,{KEY_A}:5@team\n"),
    )
    .unwrap();
    proxy.signal("HUP");
    proxy.wait_for_log("reloaded the key list").await;
    let after = proxy.key_status().await;
    let ids: Vec<&str> = after["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.len() == 2 && ids[0].ends_with("0003") && ids[1].ends_with("0001"),
        "{after}"
    );
    let a = key_in(&after, KEY_A);
    assert_eq!(
        a["id"], id_before,
        "A moved from first to second and kept its id"
    );
    assert_eq!(a["account"], "team");
    assert_eq!(a["daily_limit"], 5);
    assert_eq!(a["daily_used"], used, "A's count came along: {after}");
    assert_eq!(a["totals"]["requests"], requests);
    assert_eq!(a["totals"]["successes"], successes);

    // The stream picked before the reload finishes, and its success counts on A in the new list.
    relay_one(&chunks, &mut stream, CONTENT_EVENT).await;
    drop(chunks);
    while stream.frame().await.is_some() {}
    let after_stream = proxy.key_status().await;
    assert_eq!(
        key_in(&after_stream, KEY_A)["totals"]["successes"],
        successes + 1
    );
    assert_eq!(proxy.chat(FREE).await.status, 200);
    assert_eq!(
        key_in(&proxy.key_status().await, KEY_A)["daily_used"],
        used + 1
    );

    // A list with errors is refused; the running one stays.
    std::fs::write(&env, format!("OPENROUTER_KEYS={KEY_C};{KEY_A}\n")).unwrap();
    proxy.signal("HUP");
    let refused = eventually(Duration::from_secs(5), || {
        proxy
            .log_text()
            .contains("the key list and clients in force are kept")
    })
    .await;
    assert!(refused, "{}", proxy.log_text());
    assert_eq!(
        proxy.key_status().await["keys"].as_array().unwrap().len(),
        2
    );
    assert_eq!(proxy.chat(FREE).await.status, 200);
    assert!(proxy.child.try_wait().unwrap().is_none());
    let log = proxy.log_text();
    for secret in [KEY_A, KEY_B, KEY_C] {
        assert!(!log.contains(secret), "a key in full in the log: {log}");
    }
}

#[tokio::test]
async fn every_request_line_is_in_the_log_when_the_process_stops_right_after_a_burst() {
    // Worker threads write their request lines in batches when they run out of work;
    // a stop right after a burst must still find every line written, whole.
    let upstream =
        Upstream::start(|_| Reply::json(200, r#"{"choices":[{"message":{"content":"Hi"}}]}"#))
            .await;
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = Running::start(&upstream.base_url(), &dir.path().join("state.json"), &[]).await;
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..48 {
        let url = proxy.url("/api/v1/chat/completions");
        burst.spawn(async move {
            let body = Bytes::from_static(br#"{"model":"openai/gpt-4o","messages":[]}"#);
            send(request("POST", &url).body(Full::new(body)).unwrap())
                .await
                .status
        });
    }
    assert!(burst.join_all().await.iter().all(|status| *status == 200));
    proxy.signal("TERM");
    assert!(proxy.wait(Duration::from_secs(10)).success());
    let log = proxy.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("ended=")).collect();
    assert_eq!(lines.len(), 48, "{log}");
    for line in lines {
        assert!(
            line.starts_with('[') && line.contains(" INFO  ") && line.contains("status=200"),
            "a broken line: {line}"
        );
    }
}

#[tokio::test]
async fn a_state_file_that_cannot_be_written_is_said_before_the_port_opens_and_health_is_degraded()
{
    let upstream = Upstream::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("missing").join("state.json");
    let proxy = Running::start(&upstream.base_url(), &state, &[]).await;
    let log = proxy.log_text();
    let said = log
        .find(&format!(
            "STATE_FILE {}: cannot write in {}",
            state.display(),
            state.parent().unwrap().display()
        ))
        .unwrap_or_else(|| panic!("not said:\n{log}"));
    assert!(said < log.find("listening on").unwrap(), "{log}");
    let health = send(
        request("GET", &proxy.url("/health?format=json"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(health.status, 200);
    assert_eq!(
        health.json(),
        serde_json::json!({"status": "degraded", "upstream": "ok", "state": "not kept"})
    );
}
