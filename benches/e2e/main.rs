//! Question: what does the proxy cost its users, next to talking to the
//! upstream directly? Latency, throughput, streaming delay, memory and
//! allocations, direct and proxied side by side in the same run.
//!
//! Run: `cargo bench --bench e2e` (release proxy binary as its own process;
//! `E2E_ROUNDS=N` repeats the timed measurements and reports medians, default 3;
//! `E2E_SHARED=0` skips the second table, the price of sharing state through Redis).
//! Under `cargo test` it runs a seconds-long smoke version of itself.

mod child;
mod load;
mod mock;
mod nginx;
mod procs;
mod report;
mod shared;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use load::{percentile, StreamRun, Target};
use procs::{proxy_env, rss_mb, spawn_mock, spawn_ready, start_proxy};
use report::{Allocations, Hold, Results};
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// How big each measurement is.
struct Plan {
    full: bool,
    rounds: usize,
    latency_n: usize,
    throughput_for: Duration,
    ttfb_n: usize,
    many_streams: usize,
    hold_streams: Vec<usize>,
    hold_interval_ms: u64,
    count_allocations: bool,
}

fn plan() -> Plan {
    let full = std::env::args().any(|a| a == "--bench");
    // For focused runs: E2E_ROUNDS=0 skips the timed rounds, E2E_HOLD=9900 picks the held
    // stream counts (empty skips them), E2E_ALLOC=0 skips allocation counting.
    let var = |name: &str| std::env::var(name).ok();
    let rounds = var("E2E_ROUNDS")
        .and_then(|r| r.parse().ok())
        .unwrap_or(if full { 3 } else { 1 });
    let holds = |default: &[usize]| {
        var("E2E_HOLD").map_or_else(
            || default.to_vec(),
            |v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect(),
        )
    };
    let count_allocations = var("E2E_ALLOC").is_none_or(|v| v != "0");
    if full {
        Plan {
            full,
            rounds,
            latency_n: 2000,
            throughput_for: Duration::from_secs(3),
            ttfb_n: 500,
            many_streams: 1000,
            hold_streams: holds(&[1000, 9900]),
            hold_interval_ms: 1000,
            count_allocations,
        }
    } else {
        Plan {
            full,
            rounds,
            latency_n: 50,
            throughput_for: Duration::from_millis(200),
            ttfb_n: 20,
            many_streams: 20,
            hold_streams: holds(&[10, 20]),
            hold_interval_ms: 20,
            count_allocations,
        }
    }
}

#[must_use]
pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[derive(Default)]
pub struct Round {
    pub lat: [[f64; 2]; 2], // [direct, proxy][p50, p99] in µs
    pub rps0: [f64; 2],
    pub rps20: [f64; 2],
    pub ttfb: [[f64; 2]; 2],
    pub chunk: [[f64; 2]; 2],
    pub rss_load: f64,
    /// Proxy CPU µs per request at c=64 (0 ms upstream) and per forwarded chunk.
    pub cpu_per_request: f64,
    pub cpu_per_chunk: f64,
}

fn stream_delays(run: &mut StreamRun) -> [f64; 2] {
    assert_eq!(run.failed, 0, "streams failed");
    assert_eq!(run.chunks, run.expected, "chunks lost");
    [
        us(percentile(&mut run.delays, 50.0)),
        us(percentile(&mut run.delays, 99.0)),
    ]
}

/// How to read a proxy's memory and CPU time: its process, or nginx's process tree.
#[derive(Clone, Copy)]
struct Watched {
    pid: u32,
    rss: fn(u32) -> f64,
    cpu: fn(u32) -> f64,
}

/// One round against `targets` (direct, then the proxy in front, which `proxy` watches).
async fn round(plan: &Plan, targets: &[Target; 2], proxy: Watched) -> Round {
    let client = load::client();
    let mut r = Round::default();
    for (i, target) in targets.iter().enumerate() {
        let mut lat = load::latencies(&client, target, plan.latency_n, plan.latency_n / 10).await;
        r.lat[i] = [
            us(percentile(&mut lat, 50.0)),
            us(percentile(&mut lat, 99.0)),
        ];
        let sampler =
            (i == 1).then(|| tokio::spawn(sample_rss(proxy.pid, plan.throughput_for, proxy.rss)));
        let cpu_before = (proxy.cpu)(proxy.pid);
        r.rps0[i] = load::throughput(&client, target, "", 64, plan.throughput_for).await;
        if let Some(sampler) = sampler {
            r.rss_load = sampler.await.expect("sampler");
            let requests = r.rps0[i] * plan.throughput_for.as_secs_f64();
            r.cpu_per_request = ((proxy.cpu)(proxy.pid) - cpu_before) * 1e6 / requests.max(1.0);
        }
        r.rps20[i] = load::throughput(&client, target, "latency=20", 64, plan.throughput_for).await;
        let mut ttfb = load::ttfb(&client, target, plan.ttfb_n).await;
        r.ttfb[i] = [
            us(percentile(&mut ttfb, 50.0)),
            us(percentile(&mut ttfb, 99.0)),
        ];
        let cpu_before = (proxy.cpu)(proxy.pid);
        let mut run = load::streams(target, plan.many_streams, 20, 50, || {}).await;
        if i == 1 {
            let chunks = run.chunks.max(1) as f64;
            r.cpu_per_chunk = ((proxy.cpu)(proxy.pid) - cpu_before) * 1e6 / chunks;
        }
        r.chunk[i] = stream_delays(&mut run);
    }
    r
}

async fn sample_rss(pid: u32, over: Duration, rss_of: fn(u32) -> f64) -> f64 {
    let mut peak: f64 = 0.0;
    let deadline = tokio::time::Instant::now() + over;
    while tokio::time::Instant::now() < deadline {
        peak = peak.max(rss_of(pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    peak
}

/// The allocation-counting child: sends `stats` and reads the counts.
struct Counter {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Counter {
    fn start(upstream: &str) -> (Counter, u16) {
        let mut command = Command::new(std::env::current_exe().expect("own path"));
        proxy_env(&mut command, upstream);
        command
            .env("UVICORN_LOG_LEVEL", "info")
            .arg("--proxy-child")
            .stdin(Stdio::piped());
        let (mut child, port) = spawn_ready(&mut command);
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        (
            Counter {
                child,
                stdin,
                stdout,
            },
            port,
        )
    }

    /// (allocator calls that allocate, live heap bytes) in the child right now.
    fn stats(&mut self) -> (u64, u64) {
        writeln!(self.stdin, "stats").expect("ask");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("answer");
        let n: Vec<u64> = line
            .split_whitespace()
            .map(|n| n.parse().expect("number"))
            .collect();
        (n[0] + n[1], n[2])
    }

    fn count(&mut self) -> u64 {
        self.stats().0
    }
}

/// Allocations per proxied JSON request and per forwarded chunk of one long stream,
/// and live heap bytes per held stream.
async fn allocations(upstream: &str, full: bool) -> Allocations {
    let (mut counter, port) = Counter::start(upstream);
    let target = Target::proxy(port);
    let client = load::client();
    let n = if full { 5000 } else { 100 };
    load::latencies(&client, &target, 0, 200).await;
    let before = counter.count();
    load::latencies(&client, &target, 0, n).await;
    let per_request = (counter.count() - before) as f64 / n as f64;

    // One long stream: count allocator calls between its 25% and 75% chunks.
    let chunks: u64 = if full { 4000 } else { 400 };
    let response = client
        .request(target.request(&format!("stream=1&chunks={chunks}&interval=1")))
        .await
        .expect("stream starts");
    let mut body = response.into_body();
    let (mut seen, mut marks) = (0u64, Vec::new());
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        let Ok(data) = frame.expect("stream frame").into_data() else {
            continue;
        };
        let before = seen;
        seen += data.windows(2).filter(|w| w == b"\n\n").count() as u64;
        for mark in [chunks / 4, chunks * 3 / 4] {
            if before < mark && seen >= mark {
                marks.push((seen, counter.count()));
            }
        }
    }
    let [(c1, a1), (c2, a2)] = marks[..] else {
        panic!("the stream ended early: {seen} chunks")
    };
    let per_chunk = (a2 - a1) as f64 / (c2 - c1) as f64;

    // Live heap per open stream: what each held stream costs in the allocator's own count.
    let (held, interval) = if full { (1000, 1000) } else { (20, 50) };
    let before = counter.stats().1;
    let mut during = before;
    load::streams(&target, held, 3, interval, || during = counter.stats().1).await;
    // Leak check: after more bursts, with every stream closed, live heap must come back
    // to where the first burst left it (idle pooled connections included both times).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_first = counter.stats().1;
    for _ in 0..5 {
        load::streams(&target, held, 3, interval / 10, || {}).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_more = counter.stats().1;
    let _ = counter.child.kill();
    let _ = counter.child.wait();
    Allocations {
        per_request,
        per_chunk,
        heap_per_stream: during.saturating_sub(before) as f64 / held as f64,
        heap_growth_after_bursts: after_more as f64 - after_first as f64,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--mock") {
        mock::run_process();
        return;
    }
    if std::env::args().any(|a| a == "--proxy-child") {
        child::run(|| {
            let stats = GLOBAL.stats();
            let live = stats
                .bytes_allocated
                .saturating_sub(stats.bytes_deallocated);
            (stats.allocations, stats.reallocations, live)
        });
        return;
    }
    let plan = plan();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let results = runtime.block_on(measure(&plan));
    report::print(&plan_summary(&plan), &results);
    if std::env::var("E2E_SHARED").map_or(true, |v| v != "0") {
        let sharing = runtime.block_on(async {
            let (mut mock, mock_port) = spawn_mock();
            let upstream = format!("http://127.0.0.1:{mock_port}/api/v1");
            let sharing = shared::measure(
                &upstream,
                plan.rounds.max(1),
                plan.latency_n,
                plan.throughput_for,
            )
            .await;
            let _ = mock.kill();
            let _ = mock.wait();
            sharing
        });
        if let Some(sharing) = sharing {
            shared::print(&sharing, !plan.full);
        }
    }
}

fn plan_summary(plan: &Plan) -> report::Summary {
    report::Summary {
        rounds: plan.rounds,
        many_streams: plan.many_streams,
        smoke: !plan.full,
    }
}

async fn measure(plan: &Plan) -> Results {
    let (mut mock, mock_port) = spawn_mock();
    let upstream = format!("http://127.0.0.1:{mock_port}/api/v1");
    let (mut proxy, port) = start_proxy(&upstream, &[]);
    let pid = proxy.id();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_idle = rss_mb(pid);
    let targets = [Target::direct(&upstream), Target::proxy(port)];
    let nginx = nginx::start(mock_port);
    let mut rounds = Vec::new();
    let mut nginx_rounds = Vec::new();
    for i in 0..plan.rounds {
        eprintln!("round {}/{}", i + 1, plan.rounds);
        let ours = Watched {
            pid,
            rss: rss_mb,
            cpu: procs::cpu_seconds,
        };
        rounds.push(round(plan, &targets, ours).await);
        if let Some(nginx) = &nginx {
            let through_nginx = [Target::direct(&upstream), Target::nginx(nginx.port)];
            let theirs = Watched {
                pid: nginx.pid(),
                rss: nginx::rss_tree_mb,
                cpu: nginx::cpu_tree_seconds,
            };
            nginx_rounds.push(round(plan, &through_nginx, theirs).await);
        }
    }
    drop(nginx);
    let mut holds = Vec::new();
    for &count in &plan.hold_streams {
        eprintln!("holding {count} streams");
        let mut rss = 0.0;
        let mut proxied = load::streams(&targets[1], count, 10, plan.hold_interval_ms, || {
            rss = rss_mb(pid);
        })
        .await;
        let mut direct = load::streams(&targets[0], count, 10, plan.hold_interval_ms, || {}).await;
        holds.push(Hold {
            count,
            rss,
            direct: stream_delays(&mut direct),
            proxied: stream_delays(&mut proxied),
        });
    }
    eprintln!("counting allocations");
    let allocations = if plan.count_allocations {
        allocations(&upstream, plan.full).await
    } else {
        Allocations {
            per_request: f64::NAN,
            per_chunk: f64::NAN,
            heap_per_stream: f64::NAN,
            heap_growth_after_bursts: f64::NAN,
        }
    };
    let _ = proxy.kill();
    let _ = proxy.wait();
    let _ = mock.kill();
    let _ = mock.wait();
    Results {
        rounds,
        nginx_rounds,
        rss_idle,
        holds,
        allocations,
    }
}
