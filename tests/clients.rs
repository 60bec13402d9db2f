//! Clients of `CONFIG_FILE`, through the binary: a key per agent, its allowlist, its
//! daily and per-minute limits and concurrency, what it sees of itself, what the operator
//! sees of it, and the errors of a broken file.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::Full;

const PLANNER_KEY: &str = "pk-planner-0123456789";
const CODER_KEY: &str = "pk-coder-abcdefghijkl";
const FREE: &str = "qwen/qwen3-coder:free";
const PAID: &str = "openai/gpt-4o";

/// A proxy with `toml` as its `CONFIG_FILE`.
async fn with_clients(
    upstream: &Upstream,
    toml: &str,
    vars: &[(&str, &str)],
) -> (Running, tempfile::TempDir) {
    Running::with_config_file(&upstream.base_url(), toml, vars).await
}

async fn chat_as(proxy: &Running, key: &str, model: &str) -> Answer {
    let body = format!(r#"{{"model":"{model}","messages":[]}}"#);
    post_json(&proxy.url("/api/v1/chat/completions"), key, &body).await
}

async fn get_as(proxy: &Running, key: &str, path: &str) -> Answer {
    send(
        hyper::Request::builder()
            .uri(proxy.url(path))
            .header("authorization", format!("Bearer {key}"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn a_client_key_works_in_every_header_the_proxy_key_does_and_an_unknown_one_is_401() {
    let upstream = Upstream::ok().await;
    let toml = format!("[[clients]]\nname = \"planner\"\nkey = \"{PLANNER_KEY}\"\n");
    let (proxy, _dir) = with_clients(&upstream, &toml, &[]).await;
    for (name, value) in [
        ("authorization", format!("Bearer {PLANNER_KEY}")),
        ("apikey", PLANNER_KEY.to_owned()),
        ("x-api-key", PLANNER_KEY.to_owned()),
    ] {
        let answer = send(
            hyper::Request::builder()
                .method("POST")
                .uri(proxy.url("/api/v1/chat/completions"))
                .header(name, value)
                .body(Full::new(Bytes::from(format!(r#"{{"model":"{PAID}"}}"#))))
                .unwrap(),
        )
        .await;
        assert_eq!(answer.status, 200, "{name}");
    }
    chat_as(&proxy, "pk-nobody-0123456789", PAID)
        .await
        .assert_error(401);
    assert_eq!(upstream.requests().len(), 3);
    let log = proxy.log_text();
    assert!(log.contains("client=planner"), "{log}");
}

#[tokio::test]
async fn a_model_outside_the_allowlist_is_a_403_and_nothing_is_sent() {
    let upstream = Upstream::ok().await;
    let toml = format!(
        "[[clients]]\nname = \"coder\"\nkey = \"{CODER_KEY}\"\nmodels = [\"*:free\", \"anthropic/claude-*\"]\n"
    );
    let (proxy, _dir) = with_clients(&upstream, &toml, &[]).await;
    let refused = chat_as(&proxy, CODER_KEY, PAID).await;
    refused.assert_error(403);
    assert_eq!(
        refused.json()["error"]["message"],
        "model openai/gpt-4o is not allowed for client coder"
    );
    assert!(upstream.requests().is_empty());
    // Nor through OpenRouter's fallback list.
    let fallback = send(
        hyper::Request::builder()
            .method("POST")
            .uri(proxy.url("/api/v1/chat/completions"))
            .header("authorization", format!("Bearer {CODER_KEY}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(format!(
                r#"{{"models":["{FREE}","{PAID}"],"messages":[]}}"#
            ))))
            .unwrap(),
    )
    .await;
    fallback.assert_error(403);
    assert!(upstream.requests().is_empty());
    assert_eq!(chat_as(&proxy, CODER_KEY, FREE).await.status, 200);
    assert_eq!(
        chat_as(&proxy, CODER_KEY, "anthropic/claude-sonnet-4")
            .await
            .status,
        200
    );
    // The operator is not bound by a client's list.
    assert_eq!(chat_as(&proxy, PROXY_KEY, PAID).await.status, 200);
}

#[tokio::test]
async fn daily_limits_refuse_at_once_in_openrouters_shape_naming_the_client_and_the_limit() {
    let upstream = Upstream::ok().await;
    let toml = format!(
        "[[clients]]\nname = \"planner\"\nkey = \"{PLANNER_KEY}\"\nrequests_per_day = 4\nfree_requests_per_day = 2\n"
    );
    let (proxy, _dir) = with_clients(&upstream, &toml, &[]).await;
    for _ in 0..2 {
        assert_eq!(chat_as(&proxy, PLANNER_KEY, FREE).await.status, 200);
    }
    let free = chat_as(&proxy, PLANNER_KEY, FREE).await;
    free.assert_error(429);
    assert_eq!(
        free.json()["error"]["message"],
        "client planner reached its daily free-request limit (2)"
    );
    assert_eq!(free.header("x-ratelimit-limit"), "2");
    assert_eq!(free.header("x-ratelimit-remaining"), "0");
    let reset: i64 = free.header("x-ratelimit-reset").parse().unwrap();
    let retry: u64 = free.header("retry-after").parse().unwrap();
    assert!(reset > 0 && retry > 0 && retry <= 86_400);
    // Paid models count against the request limit only.
    for _ in 0..2 {
        assert_eq!(chat_as(&proxy, PLANNER_KEY, PAID).await.status, 200);
    }
    let all = chat_as(&proxy, PLANNER_KEY, PAID).await;
    all.assert_error(429);
    assert_eq!(
        all.json()["error"]["message"],
        "client planner reached its daily request limit (4)"
    );
    assert_eq!(upstream.requests().len(), 4, "refusals send nothing");
    // Not the message of an exhausted pool, and not the operator's limit.
    assert_eq!(chat_as(&proxy, PROXY_KEY, PAID).await.status, 200);
}

#[tokio::test]
async fn requests_the_proxy_refuses_itself_do_not_count() {
    // No key can serve a free model (MAX_WAIT 0, no quota left): the pool's 429 is no request
    // of the client's; nor is the allowlist's 403.
    let upstream = Upstream::ok().await;
    let toml = format!(
        "[[clients]]\nname = \"planner\"\nkey = \"{PLANNER_KEY}\"\nmodels = [\"*:free\", \"openai/*\"]\nrequests_per_day = 1\n"
    );
    let keys = format!("{KEY_A}:1");
    let (proxy, _dir) = with_clients(
        &upstream,
        &toml,
        &[("OPENROUTER_KEYS", keys.as_str()), ("MAX_WAIT", "0")],
    )
    .await;
    assert_eq!(chat_as(&proxy, PROXY_KEY, FREE).await.status, 200);
    let pool = chat_as(&proxy, PLANNER_KEY, FREE).await;
    pool.assert_error(429);
    assert!(!pool.text().contains("client planner"), "{}", pool.text());
    chat_as(&proxy, PLANNER_KEY, "anthropic/claude-sonnet-4")
        .await
        .assert_error(403);
    let status = get_as(&proxy, PLANNER_KEY, "/key_status").await.json();
    assert_eq!(status["client"]["today"]["requests"], 0, "{status}");
    // Its one request of the day is still there, and then it is gone.
    assert_eq!(chat_as(&proxy, PLANNER_KEY, PAID).await.status, 200);
    let over = chat_as(&proxy, PLANNER_KEY, PAID).await;
    over.assert_error(429);
    assert!(
        over.text().contains("daily request limit (1)"),
        "{}",
        over.text()
    );
    assert_eq!(upstream.requests().len(), 2);
}

#[tokio::test]
async fn tokens_and_cost_limits_admit_while_under_and_the_crossing_request_completes() {
    let upstream = Upstream::start(|_| {
        Reply::json(
            200,
            r#"{"id":"gen-1","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":7,"completion_tokens":5,"cost":0.4}}"#,
        )
    })
    .await;
    let toml = format!(
        "[[clients]]\nname = \"planner\"\nkey = \"{PLANNER_KEY}\"\ntokens_per_day = 20\n\n[[clients]]\nname = \"coder\"\nkey = \"{CODER_KEY}\"\nusd_per_day = 0.5\n"
    );
    let (proxy, _dir) = with_clients(&upstream, &toml, &[]).await;
    // 12 tokens each: the second crosses 20 and completes, the third is refused.
    for _ in 0..2 {
        assert_eq!(chat_as(&proxy, PLANNER_KEY, PAID).await.status, 200);
    }
    let tokens = chat_as(&proxy, PLANNER_KEY, PAID).await;
    tokens.assert_error(429);
    assert!(
        tokens
            .text()
            .contains("client planner reached its daily token limit (20)"),
        "{}",
        tokens.text()
    );
    // $0.40 each against $0.50.
    for _ in 0..2 {
        assert_eq!(chat_as(&proxy, CODER_KEY, PAID).await.status, 200);
    }
    let cost = chat_as(&proxy, CODER_KEY, PAID).await;
    cost.assert_error(429);
    assert!(
        cost.text()
            .contains("client coder reached its daily spending limit ($0.50)"),
        "{}",
        cost.text()
    );
    let status = proxy.key_status().await;
    let coder = status["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "coder")
        .unwrap();
    assert_eq!(coder["today"]["requests"], 2, "{status}");
    assert_eq!(coder["today"]["refused"]["usd_per_day"], 1);
    assert!((coder["today"]["cost"].as_f64().unwrap() - 0.8).abs() < 1e-9);
}

#[tokio::test]
async fn over_max_concurrent_a_request_waits_its_turn_up_to_max_wait_then_gets_a_429() {
    let (upstream, chunks) = Upstream::with_stream().await;
    let toml =
        format!("[[clients]]\nname = \"planner\"\nkey = \"{PLANNER_KEY}\"\nmax_concurrent = 1\n");
    let (proxy, _dir) = with_clients(&upstream, &toml, &[("MAX_WAIT", "1")]).await;
    // A stream is in flight until its last byte.
    let held = hyper::Request::builder()
        .method("POST")
        .uri(proxy.url("/api/v1/chat/completions"))
        .header("authorization", format!("Bearer {PLANNER_KEY}"))
        .body(Full::new(Bytes::from(format!(
            r#"{{"model":"{PAID}","stream":true}}"#
        ))))
        .unwrap();
    let mut body = client().request(held).await.unwrap().into_body();
    relay_one(&chunks, &mut body, "data: {}\n\n").await;
    let began = Instant::now();
    let busy = chat_as(&proxy, PLANNER_KEY, PAID).await;
    busy.assert_error(429);
    assert!(
        began.elapsed() >= Duration::from_millis(900),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(busy.header("retry-after"), "1");
    // Once the stream ends, the next one is admitted.
    drop(chunks);
    drop(body);
    let in_flight = || async {
        get_as(&proxy, PROXY_KEY, "/key_status").await.json()["clients"][0]["in_flight"].clone()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while in_flight().await != 0 {
        assert!(
            Instant::now() < deadline,
            "the stream's permit never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(chat_as(&proxy, PLANNER_KEY, PAID).await.status, 200);
}

#[tokio::test]
async fn requests_per_minute_spaces_a_clients_requests() {
    let upstream = Upstream::ok().await;
    let toml = format!(
        "[[clients]]\nname = \"planner\"\nkey = \"{PLANNER_KEY}\"\nrequests_per_minute = 120\n"
    );
    let (proxy, _dir) = with_clients(&upstream, &toml, &[("MAX_WAIT", "5")]).await;
    for _ in 0..3 {
        assert_eq!(chat_as(&proxy, PLANNER_KEY, PAID).await.status, 200);
    }
    assert_spaced(&upstream, Duration::from_millis(450));
}

#[tokio::test]
async fn a_client_sees_only_itself_and_the_operator_sees_every_client() {
    let upstream = Upstream::ok().await;
    let toml = format!(
        "[[clients]]\nname = \"planner\"\nkey = \"{PLANNER_KEY}\"\nfree_requests_per_day = 300\nusd_per_day = 1.5\n\n[[clients]]\nname = \"coder\"\nkey = \"{CODER_KEY}\"\n"
    );
    let (proxy, _dir) = with_clients(&upstream, &toml, &[]).await;
    assert_eq!(chat_as(&proxy, PLANNER_KEY, FREE).await.status, 200);
    let own = get_as(&proxy, PLANNER_KEY, "/key_status").await;
    assert_eq!(own.status, 200);
    let own_text = own.text();
    let own = own.json();
    assert_eq!(own.as_object().unwrap().len(), 1, "{own}");
    assert_eq!(own["client"]["name"], "planner");
    assert_eq!(own["client"]["today"]["free_requests"], 1);
    for hidden in ["sk-or", "coder", "accounts", "keys"] {
        assert!(!own_text.contains(hidden), "{hidden} in {own_text}");
    }
    get_as(&proxy, PLANNER_KEY, "/metrics")
        .await
        .assert_error(403);
    let before = upstream.requests().len();
    let key = get_as(&proxy, PLANNER_KEY, "/api/v1/key").await;
    assert_eq!(key.status, 200);
    let data = &key.json()["data"];
    assert_eq!(data["label"], "planner");
    assert_eq!(data["limit"], 1.5);
    assert_eq!(data["limit_reset"], "daily");
    assert_eq!(data["free_model_daily_requests"]["limit"], 300);
    assert_eq!(data["free_model_daily_requests"]["used"], 1);
    assert_eq!(data["free_model_daily_requests"]["remaining"], 299);
    assert_eq!(upstream.requests().len(), before, "nothing sent upstream");

    let all = proxy.key_status().await;
    let names: Vec<&str> = all["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["planner", "coder"]);
    let metrics = get_as(&proxy, PROXY_KEY, "/metrics").await.text();
    for line in [
        "openrouter_proxy_client_requests_today{client=\"planner\"} 1",
        "openrouter_proxy_client_free_requests_today{client=\"planner\"} 1",
        "openrouter_proxy_client_requests_today{client=\"coder\"} 0",
        "openrouter_proxy_client_refused_today{client=\"coder\",reason=\"model\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    let lines = metrics.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("the exposition parses");
    let text = all.to_string() + &proxy.log_text() + &metrics;
    for secret in [PLANNER_KEY, CODER_KEY] {
        assert!(!text.contains(secret), "{secret} shown");
    }
}

#[tokio::test]
async fn with_clients_proxy_api_key_may_be_unset() {
    let upstream = Upstream::ok().await;
    let toml = format!("[[clients]]\nname = \"planner\"\nkey = \"{PLANNER_KEY}\"\n");
    let (proxy, _dir) = with_clients(&upstream, &toml, &[("PROXY_API_KEY", "")]).await;
    assert_eq!(chat_as(&proxy, PLANNER_KEY, PAID).await.status, 200);
    for empty in ["", "Bearer "] {
        let answer = send(
            hyper::Request::builder()
                .method("POST")
                .uri(proxy.url("/api/v1/chat/completions"))
                .header("authorization", empty)
                .body(Full::new(Bytes::from(format!(r#"{{"model":"{PAID}"}}"#))))
                .unwrap(),
        )
        .await;
        answer.assert_error(401);
    }
}

fn config_error(toml: Option<&str>) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let file: PathBuf = dir.path().join("clients.toml");
    if let Some(toml) = toml {
        std::fs::write(&file, toml).unwrap();
    }
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_openrouter-proxy"))
        .env_clear()
        .current_dir(dir.path())
        .env("PROXY_API_KEY", PROXY_KEY)
        .env("OPENROUTER_KEYS", KEY_A)
        .env("CONFIG_FILE", &file)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_broken_config_file_stops_startup_listing_every_problem_with_its_line_and_no_key() {
    let toml =
        format!("[[clients]]\nname = \"planner\"\nkey = \"{PLANNER_KEY}\"\nrequests_per_dya = 5\n");
    let (code, stderr) = config_error(Some(&toml));
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("line 4") && stderr.contains("requests_per_dya"),
        "{stderr}"
    );
    let toml = format!(
        "[[clients]]\nname = \"planner\"\nkey = \"{PLANNER_KEY}\"\n\n[[clients]]\nname = \"planner\"\nkey = \"{PROXY_KEY}\"\nweight = 0\n"
    );
    let (code, stderr) = config_error(Some(&toml));
    assert_eq!(code, Some(64));
    for expected in [
        "line 5: client \"planner\": the name is used twice",
        "line 5: client \"planner\": its key is PROXY_API_KEY",
        "line 5: client \"planner\": weight must be at least 1",
    ] {
        assert!(stderr.contains(expected), "{expected} not in:\n{stderr}");
    }
    for secret in [PLANNER_KEY, PROXY_KEY] {
        assert!(!stderr.contains(secret), "{secret} in:\n{stderr}");
    }
    let (code, stderr) = config_error(None);
    assert_eq!(code, Some(64));
    assert!(stderr.contains("CONFIG_FILE: cannot read"), "{stderr}");
}

#[tokio::test]
async fn a_restart_keeps_each_clients_counts_and_the_state_file_holds_no_client_key() {
    let upstream = Upstream::start(|_| {
        Reply::json(
            200,
            r#"{"id":"gen-1","usage":{"prompt_tokens":7,"completion_tokens":5,"cost":0.25}}"#,
        )
    })
    .await;
    let toml =
        format!("[[clients]]\nname = \"planner\"\nkey = \"{PLANNER_KEY}\"\nrequests_per_day = 3\n");
    let vars = [("STATE_FLUSH_INTERVAL", "0")];
    let (mut proxy, dir) = with_clients(&upstream, &toml, &vars).await;
    for _ in 0..2 {
        assert_eq!(chat_as(&proxy, PLANNER_KEY, FREE).await.status, 200);
    }
    proxy.signal("TERM");
    assert!(proxy.wait(Duration::from_secs(10)).success());
    let state = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
    let hash = openrouter_proxy::config::file::sha256(PLANNER_KEY.as_bytes())
        .iter()
        .fold(String::new(), |mut hex, b| {
            use std::fmt::Write as _;
            let _ = write!(hex, "{b:02x}");
            hex
        });
    assert!(state.contains("\"planner\""), "{state}");
    assert!(
        !state.contains(PLANNER_KEY) && !state.contains(&hash[..16]),
        "{state}"
    );

    let file = dir.path().join("proxy.toml");
    let file = file.to_str().unwrap();
    let restarted = Running::start(
        &upstream.base_url(),
        &dir.path().join("state.json"),
        &[("CONFIG_FILE", file), ("STATE_FLUSH_INTERVAL", "0")],
    )
    .await;
    let own = get_as(&restarted, PLANNER_KEY, "/key_status").await.json();
    assert_eq!(own["client"]["today"]["requests"], 2, "{own}");
    assert_eq!(own["client"]["today"]["free_requests"], 2);
    assert_eq!(own["client"]["today"]["prompt_tokens"], 14);
    assert_eq!(own["client"]["lifetime"]["requests"], 2);
    assert_eq!(chat_as(&restarted, PLANNER_KEY, FREE).await.status, 200);
    chat_as(&restarted, PLANNER_KEY, FREE)
        .await
        .assert_error(429);
}

#[tokio::test]
async fn sighup_rereads_the_clients_keeping_counts_by_name_and_refusing_a_broken_file() {
    let upstream = Upstream::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clients.toml");
    let write = |toml: &str| std::fs::write(&file, toml).unwrap();
    write(&format!(
        "[[clients]]\nname = \"planner\"\nkey = \"{PLANNER_KEY}\"\nrequests_per_day = 5\n\n[[clients]]\nname = \"coder\"\nkey = \"{CODER_KEY}\"\n"
    ));
    std::fs::write(
        dir.path().join(".env"),
        format!("OPENROUTER_KEYS={KEY_A}\n"),
    )
    .unwrap();
    let config = file.to_str().unwrap().to_owned();
    let proxy = Running::start_in(
        dir.path(),
        &upstream.base_url(),
        &dir.path().join("state.json"),
        &[("CONFIG_FILE", config.as_str())],
    )
    .await;
    for _ in 0..3 {
        assert_eq!(chat_as(&proxy, PLANNER_KEY, PAID).await.status, 200);
    }
    assert_eq!(chat_as(&proxy, CODER_KEY, PAID).await.status, 200);
    let reloaded = |n: usize| {
        let proxy = &proxy;
        async move {
            let done = eventually(Duration::from_secs(5), || {
                proxy.log_text().matches("reloaded CONFIG_FILE").count() == n
            })
            .await;
            assert!(done, "{}", proxy.log_text());
        }
    };

    // planner's limit changes to 4 and it keeps its 3; coder goes; tester comes.
    let tester = "pk-tester-0123456789ab";
    write(&format!(
        "[[clients]]\nname = \"planner\"\nkey = \"{PLANNER_KEY}\"\nrequests_per_day = 4\n\n[[clients]]\nname = \"tester\"\nkey = \"{tester}\"\n"
    ));
    proxy.signal("HUP");
    reloaded(1).await;
    assert!(
        proxy.log_text().contains("1 kept their counts"),
        "{}",
        proxy.log_text()
    );
    assert_eq!(chat_as(&proxy, PLANNER_KEY, PAID).await.status, 200);
    let over = chat_as(&proxy, PLANNER_KEY, PAID).await;
    over.assert_error(429);
    assert!(
        over.text().contains("daily request limit (4)"),
        "{}",
        over.text()
    );
    chat_as(&proxy, CODER_KEY, PAID).await.assert_error(401);
    assert_eq!(chat_as(&proxy, tester, PAID).await.status, 200);

    // A file with an error is refused as a whole: the clients in force stay.
    write("[[clients]]\nname = \"planner\"\nkey = \"short\"\n");
    proxy.signal("HUP");
    let refused = eventually(Duration::from_secs(5), || {
        proxy.log_text().contains("reload refused")
    })
    .await;
    assert!(refused, "{}", proxy.log_text());
    assert_eq!(chat_as(&proxy, tester, PAID).await.status, 200);
    assert!(
        !proxy.log_text().contains("short\""),
        "{}",
        proxy.log_text()
    );
}

/// Keeps `outstanding` requests of `key` for a free model going until `until`; returns how
/// long each took that was answered by then.
fn keep_busy(
    proxy: &Running,
    key: &'static str,
    outstanding: usize,
    until: Instant,
) -> tokio::task::JoinSet<Vec<Duration>> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..outstanding {
        let url = proxy.url("/api/v1/chat/completions");
        tasks.spawn(async move {
            let mut took = Vec::new();
            // Bounded by time and count.
            for _ in 0..500 {
                if Instant::now() >= until {
                    break;
                }
                let began = Instant::now();
                let answer = send(
                    hyper::Request::builder()
                        .method("POST")
                        .uri(&url)
                        .header("authorization", format!("Bearer {key}"))
                        .body(Full::new(Bytes::from(format!(
                            r#"{{"model":"{FREE}","messages":[]}}"#
                        ))))
                        .unwrap(),
                )
                .await;
                assert_eq!(answer.status, 200, "{}", answer.text());
                // Those still waiting at the end drain the line as it stands: not a share.
                if Instant::now() <= until {
                    took.push(began.elapsed());
                }
            }
            took
        });
    }
    tasks
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

const FAIR_POOL: [(&str, &str); 3] = [("FREE_RPM", "600"), ("FREE_BURST", "1"), ("MAX_WAIT", "30")];

#[tokio::test]
async fn a_client_sending_one_at_a_time_is_not_queued_behind_another_clients_backlog() {
    let upstream = Upstream::ok().await;
    let toml = format!(
        "[[clients]]\nname = \"swarm\"\nkey = \"{PLANNER_KEY}\"\n\n[[clients]]\nname = \"solo\"\nkey = \"{CODER_KEY}\"\n"
    );
    let keys = format!("{KEY_A}:1000");
    let mut vars = vec![("OPENROUTER_KEYS", keys.as_str())];
    vars.extend_from_slice(&FAIR_POOL);
    let (proxy, _dir) = with_clients(&upstream, &toml, &vars).await;
    // The swarm keeps 10 free-model requests waiting: a slot every 100 ms serves one.
    let until = Instant::now() + Duration::from_secs(4);
    let swarm = keep_busy(&proxy, PLANNER_KEY, 10, until);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let solo = keep_busy(&proxy, CODER_KEY, 1, until);
    let solo = median(solo.join_all().await.concat());
    let swarm = median(swarm.join_all().await.concat());
    // The swarm waits about 10 slots a request, the solo client about 2.
    assert!(
        solo * 3 < swarm,
        "solo waited {solo:?} a request, the swarm {swarm:?}"
    );
}

#[tokio::test]
async fn clients_always_waiting_share_the_free_pool_by_their_weights() {
    let upstream = Upstream::ok().await;
    let toml = format!(
        "[[clients]]\nname = \"heavy\"\nkey = \"{PLANNER_KEY}\"\nweight = 3\n\n[[clients]]\nname = \"light\"\nkey = \"{CODER_KEY}\"\n"
    );
    let keys = format!("{KEY_A}:1000");
    let mut vars = vec![("OPENROUTER_KEYS", keys.as_str())];
    vars.extend_from_slice(&FAIR_POOL);
    let (proxy, _dir) = with_clients(&upstream, &toml, &vars).await;
    let until = Instant::now() + Duration::from_secs(5);
    let heavy = keep_busy(&proxy, PLANNER_KEY, 8, until);
    let light = keep_busy(&proxy, CODER_KEY, 8, until);
    let heavy = heavy.join_all().await.concat().len() as f64;
    let light = light.join_all().await.concat().len() as f64;
    let share = heavy / (heavy + light);
    assert!(
        (0.675..=0.825).contains(&share),
        "heavy {heavy}, light {light}: {share:.3} of the pool for a 3:1 weight"
    );
}

#[tokio::test]
async fn the_list_of_models_shows_a_client_only_what_it_may_use() {
    let upstream = Upstream::start(|seen| {
        if seen.path_and_query.ends_with("/models") {
            return Reply::json(
                200,
                r#"{"data":[{"id":"qwen/qwen3-coder:free","name":"Qwen"},{"id":"openai/gpt-4o","name":"GPT-4o"},{"id":"anthropic/claude-sonnet-4","name":"Claude"}]}"#,
            );
        }
        Reply::ok()
    })
    .await;
    let toml = format!(
        "[[clients]]\nname = \"coder\"\nkey = \"{CODER_KEY}\"\nmodels = [\"*:free\", \"anthropic/claude-*\"]\n\n[[clients]]\nname = \"planner\"\nkey = \"{PLANNER_KEY}\"\n"
    );
    let (proxy, _dir) = with_clients(&upstream, &toml, &[]).await;
    let ids = |answer: &Answer| -> Vec<String> {
        answer.json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let coder = get_as(&proxy, CODER_KEY, "/api/v1/models").await;
    assert_eq!(coder.status, 200);
    assert_eq!(
        ids(&coder),
        ["qwen/qwen3-coder:free", "anthropic/claude-sonnet-4"]
    );
    assert_eq!(coder.header("content-length"), coder.body.len().to_string());
    // Without an allowlist, and for the operator, the list as OpenRouter sent it.
    assert_eq!(
        ids(&get_as(&proxy, PLANNER_KEY, "/api/v1/models").await).len(),
        3
    );
    assert_eq!(
        ids(&get_as(&proxy, PROXY_KEY, "/api/v1/models").await).len(),
        3
    );
}
