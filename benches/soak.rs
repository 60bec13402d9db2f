//! Question: does the proxy stay flat over a long run? A million requests and
//! ten thousand streams, with a mix of successes, 429s and upstream 500s, through
//! the release binary: RSS at start, middle and end, open file descriptors before
//! and after, and whether `/key_status` accounts for every request exactly.
//!
//! Run: `cargo bench --bench soak` (`SOAK_REQUESTS`, `SOAK_STREAMS`, `SOAK_ROUNDS` to
//! resize; `E2E_PROXY_BIN` for another build).
//! memory actually in use, as opposed to what the allocator keeps for later.
//! Under `cargo test` it runs a small version of itself.

// Shared with the e2e benchmark, which uses all of it; this one needs only part.
#[allow(dead_code)]
#[path = "e2e/load.rs"]
mod load;
#[path = "e2e/mock.rs"]
mod mock;
#[allow(dead_code)]
#[path = "e2e/procs.rs"]
mod procs;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use load::Target;
use procs::{rss_mb, spawn_mock, start_proxy, PROXY_KEY};

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

fn series(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.1}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What the clients saw, by status.
#[derive(Default)]
struct Seen {
    ok: AtomicU64,
    rate_limited: AtomicU64,
    server_error: AtomicU64,
}

/// Requests `range` of the mix: every 10th a provider 429, every 25th a 500, the rest succeed.
async fn requests(target: &Target, range: std::ops::Range<u64>, seen: &Arc<Seen>) {
    let next = Arc::new(AtomicU64::new(range.start));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (client, target, next, seen, end) = (
            load::client(),
            target.clone(),
            Arc::clone(&next),
            Arc::clone(seen),
            range.end,
        );
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Relaxed);
                if i >= end {
                    break;
                }
                let query = if i % 10 == 0 {
                    "status=429"
                } else if i % 25 == 0 {
                    "status=500"
                } else {
                    ""
                };
                let response = client
                    .request(target.request(query))
                    .await
                    .expect("the proxy answers");
                let counter = match response.status().as_u16() {
                    200 => &seen.ok,
                    429 => &seen.rate_limited,
                    _ => &seen.server_error,
                };
                counter.fetch_add(1, Relaxed);
                response.into_body().collect().await.expect("body");
            }
        });
    }
    workers.join_all().await;
}

fn main() {
    if std::env::args().any(|a| a == "--mock") {
        mock::run_process();
        return;
    }
    let full = std::env::args().any(|a| a == "--bench");
    // The small smoke run of `cargo test --all-targets` is quiet unless it fails (a
    // failed assertion's message goes to stderr).
    let _quiet = (!full).then(gag::Gag::stdout).and_then(Result::ok);
    let var = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let total = var("SOAK_REQUESTS", if full { 1_000_000 } else { 2_000 });
    let streams = var("SOAK_STREAMS", if full { 10_000 } else { 50 }) as usize;
    let rounds = var("SOAK_ROUNDS", 10).max(2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (mut mock, mock_port) = spawn_mock();
        // No retries: every client request is exactly one attempt, so /key_status must match it.
        let (mut proxy, port) = start_proxy(&procs::default_binary(), &format!("http://127.0.0.1:{mock_port}/api/v1"), &[("MAX_RETRIES", "0")]);
        let pid = proxy.id();
        let target = Target::proxy(port);
        let seen = Arc::new(Seen::default());
        let started = Instant::now();
        // Each round a share of the requests, then the same share of the streams (at most 1,000
        // open at once). "Start" is after round 1, once pools and buffers have their working size.
        let (mut rss, mut fds, mut stream_chunks) = (Vec::new(), Vec::new(), 0);
        let share = |n: u64, round: u64| n * round / rounds;
        for round in 0..rounds {
            requests(&target, share(total, round)..share(total, round + 1), &seen).await;
            let (from, to) = (share(streams as u64, round) as usize, share(streams as u64, round + 1) as usize);
            for batch_start in (from..to).step_by(1000) {
                let run = load::streams(&target, (to - batch_start).min(1000), 5, 10, || {}).await;
                assert_eq!(run.failed, 0, "streams failed");
                stream_chunks += run.chunks;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (resident, open) = (rss_mb(pid), open_fds(pid));
            println!("round {}: proxy RSS {resident:.1} MB, {open} fds", round + 1);
            rss.push(resident);
            fds.push(open);
        }
        let (first, middle, last) = (0, rounds as usize / 2 - 1, rounds as usize - 1);
        let (fds_before, fds_after) = (fds[first], fds[last]);
        let elapsed = started.elapsed();
        // The allocator hands freed pages back on its own schedule (jemalloc's decay, 10 s).
        let settle = if full { Duration::from_secs(15) } else { Duration::from_millis(100) };
        tokio::time::sleep(settle).await;
        let rss_settled = rss_mb(pid);

        let status = load::client()
            .request(
                hyper::Request::get(format!("http://127.0.0.1:{port}/key_status"))
                    .header("authorization", format!("Bearer {PROXY_KEY}"))
                    .body(http_body_util::Full::default())
                    .expect("request"),
            )
            .await
            .expect("key_status");
        let body = status.into_body().collect().await.expect("body").to_bytes();
        let status: serde_json::Value = serde_json::from_slice(&body).expect("json");
        let sum = |field: &str| status["keys"].as_array().expect("keys").iter().map(|k| k["totals"][field].as_u64().unwrap_or(0)).sum::<u64>();
        let (ok, limited, errors) = (seen.ok.load(Relaxed), seen.rate_limited.load(Relaxed), seen.server_error.load(Relaxed));
        let streams = streams as u64;
        let _ = proxy.kill();
        let _ = proxy.wait();
        let _ = mock.kill();
        let _ = mock.wait();

        println!("\nsoak: {total} requests + {streams} streams ({stream_chunks} chunks) in {rounds} rounds, {:.0} s", elapsed.as_secs_f64());
        println!("| measure | value |\n|---|---|");
        println!("| requests answered 200 / 429 / 500 | {ok} / {limited} / {errors} |");
        let at = |values: &[f64], name: &str| {
            if values.len() == rss.len() {
                println!("| {name} after round 1 / {} / {} | {:.1} / {:.1} / {:.1} MB |", middle + 1, last + 1, values[first], values[middle], values[last]);
                println!("| {name}, every round | {} MB |", series(values));
            }
        };
        at(&rss, "proxy RSS");
        println!("| proxy RSS {} s after the last round | {rss_settled:.1} MB |", settle.as_secs());
        println!("| proxy open file descriptors after round 1 / at the end | {fds_before} / {fds_after} |");
        let accounted = [
            ("attempts", sum("requests"), total + streams),
            ("successes", sum("successes"), ok + streams),
            ("rate limited", sum("rate_limited"), limited),
            ("errors", sum("errors"), errors),
        ];
        for (name, counted, expected) in accounted {
            println!("| /key_status {name} | {counted} (sent {expected}) |");
            assert_eq!(counted, expected, "/key_status {name} does not add up");
        }
    });
}
