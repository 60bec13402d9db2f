//! Question: what does the proxy cost its users, next to talking to the
//! upstream directly? Latency, throughput, streaming delay, memory and
//! allocations, direct and proxied side by side in the same run.
//!
//! Run: `cargo bench --bench e2e` (release proxy binary as its own process;
//! `E2E_ROUNDS=N` repeats the timed measurements and reports medians, default 3).
//! Under `cargo test` it runs a seconds-long smoke version of itself.

mod child;
mod load;
mod mock;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use load::{percentile, StreamRun, Target};
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const PROXY_KEY: &str = "bench-proxy-key";

/// How big each measurement is.
struct Plan {
    full: bool,
    rounds: usize,
    latency_n: usize,
    throughput_for: Duration,
    ttfb_n: usize,
    many_streams: usize,
    hold_streams: [usize; 2],
    hold_interval_ms: u64,
}

fn plan() -> Plan {
    let full = std::env::args().any(|a| a == "--bench");
    let rounds = std::env::var("E2E_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(if full { 3 } else { 1 });
    if full {
        Plan {
            full,
            rounds,
            latency_n: 2000,
            throughput_for: Duration::from_secs(3),
            ttfb_n: 500,
            many_streams: 1000,
            hold_streams: [1000, 9900],
            hold_interval_ms: 1000,
        }
    } else {
        Plan {
            full,
            rounds,
            latency_n: 50,
            throughput_for: Duration::from_millis(200),
            ttfb_n: 20,
            many_streams: 20,
            hold_streams: [10, 20],
            hold_interval_ms: 20,
        }
    }
}

fn proxy_env(command: &mut Command, upstream: &str) {
    let keys: Vec<String> = (0..10)
        .map(|i| format!("sk-or-v1-bench-key-{i:04}:4000000000"))
        .collect();
    command
        .env_clear()
        .env("PROXY_API_KEY", PROXY_KEY)
        .env("OPENROUTER_KEYS", keys.join(","))
        .env("OPENROUTER_BASE_URL", upstream)
        .env("FREE_RPM", "4000000000")
        .env("FREE_BURST", "1000000000")
        .env("UVICORN_HOST", "127.0.0.1");
}

/// The release binary, started the way users run it (default log level).
fn start_proxy(upstream: &str) -> (Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("port")
        .port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_openrouter-proxy"));
    proxy_env(&mut command, upstream);
    let child = command
        .env("UVICORN_PORT", port.to_string())
        .stderr(Stdio::null())
        .spawn()
        .expect("proxy starts");
    for _ in 0..500 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (child, port);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the proxy did not start listening");
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// One row per measure: name, direct, proxied, added or ratio, target.
struct Table(Vec<[String; 5]>);

impl Table {
    fn row(&mut self, cells: [&str; 5]) {
        self.0.push(cells.map(str::to_owned));
    }

    fn print(&self) {
        let widths: Vec<usize> = (0..5)
            .map(|c| {
                self.0
                    .iter()
                    .map(|r| r[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for (i, row) in self.0.iter().enumerate() {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            println!("| {} |", cells.join(" | "));
            if i == 0 {
                println!(
                    "|{}|",
                    widths
                        .iter()
                        .map(|w| "-".repeat(w + 2))
                        .collect::<Vec<_>>()
                        .join("|")
                );
            }
        }
    }
}

#[derive(Default)]
struct Round {
    lat: [[f64; 2]; 2], // [direct, proxy][p50, p99] in µs
    rps0: [f64; 2],
    rps20: [f64; 2],
    ttfb: [[f64; 2]; 2],
    chunk: [[f64; 2]; 2],
    rss_load: f64,
}

fn stream_delays(run: &mut StreamRun) -> [f64; 2] {
    assert_eq!(run.failed, 0, "streams failed");
    assert_eq!(run.chunks, run.expected, "chunks lost");
    [
        us(percentile(&mut run.delays, 50.0)),
        us(percentile(&mut run.delays, 99.0)),
    ]
}

async fn round(plan: &Plan, targets: &[Target; 2], proxy_pid: u32) -> Round {
    let client = load::client();
    let mut r = Round::default();
    for (i, target) in targets.iter().enumerate() {
        let mut lat = load::latencies(&client, target, plan.latency_n, plan.latency_n / 10).await;
        r.lat[i] = [
            us(percentile(&mut lat, 50.0)),
            us(percentile(&mut lat, 99.0)),
        ];
        let sampler = (i == 1).then(|| tokio::spawn(sample_rss(proxy_pid, plan.throughput_for)));
        r.rps0[i] = load::throughput(&client, target, "", 64, plan.throughput_for).await;
        if let Some(sampler) = sampler {
            r.rss_load = sampler.await.expect("sampler");
        }
        r.rps20[i] = load::throughput(&client, target, "latency=20", 64, plan.throughput_for).await;
        let mut ttfb = load::ttfb(&client, target, plan.ttfb_n).await;
        r.ttfb[i] = [
            us(percentile(&mut ttfb, 50.0)),
            us(percentile(&mut ttfb, 99.0)),
        ];
        let mut run = load::streams(target, plan.many_streams, 20, 50, || {}).await;
        r.chunk[i] = stream_delays(&mut run);
    }
    r
}

async fn sample_rss(pid: u32, over: Duration) -> f64 {
    let mut peak: f64 = 0.0;
    let deadline = tokio::time::Instant::now() + over;
    while tokio::time::Instant::now() < deadline {
        peak = peak.max(rss_mb(pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    peak
}

/// Spawns a child that prints `ready <port>` first, and returns it with the port.
fn spawn_ready(command: &mut Command) -> (Child, u16) {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("child starts");
    let mut line = String::new();
    // Read byte by byte so nothing after the first line is buffered away from later readers.
    let stdout = child.stdout.as_mut().expect("stdout");
    let mut byte = [0u8; 1];
    while std::io::Read::read(stdout, &mut byte).map_or(false, |n| n == 1) && byte[0] != b'\n' {
        line.push(char::from(byte[0]));
    }
    let port = line.trim().strip_prefix("ready ").and_then(|p| p.parse().ok()).expect("ready <port>");
    (child, port)
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
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = command.spawn().expect("counting child starts");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("ready line");
        let port = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .expect("ready <port>");
        (
            Counter {
                child,
                stdin,
                stdout,
            },
            port,
        )
    }

    fn count(&mut self) -> u64 {
        writeln!(self.stdin, "stats").expect("ask");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("answer");
        line.split_whitespace()
            .map(|n| n.parse::<u64>().expect("number"))
            .sum()
    }
}

/// Allocations per proxied JSON request, and per forwarded chunk of one long stream.
async fn allocations(upstream: &str, full: bool) -> (f64, f64) {
    let (mut counter, port) = Counter::start(upstream);
    let target = Target {
        url: format!("http://127.0.0.1:{port}/api/v1"),
        auth: Some(format!("Bearer {PROXY_KEY}")),
    };
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
    let _ = counter.child.kill();
    let [(c1, a1), (c2, a2)] = marks[..] else {
        panic!("the stream ended early: {seen} chunks")
    };
    (per_request, (a2 - a1) as f64 / (c2 - c1) as f64)
}

fn main() {
    if std::env::args().any(|a| a == "--mock") {
        mock::run_process();
        return;
    }
    if std::env::args().any(|a| a == "--proxy-child") {
        child::run(|| {
            let stats = GLOBAL.stats();
            (stats.allocations, stats.reallocations)
        });
        return;
    }
    let plan = plan();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (mut mock, mock_port) = spawn_ready(Command::new(std::env::current_exe().expect("own path")).arg("--mock"));
        let upstream = format!("http://127.0.0.1:{mock_port}/api/v1");
        let (mut proxy, port) = start_proxy(&upstream);
        let pid = proxy.id();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rss_idle = rss_mb(pid);
        let targets = [
            Target {
                url: upstream.clone(),
                auth: None,
            },
            Target {
                url: format!("http://127.0.0.1:{port}/api/v1"),
                auth: Some(format!("Bearer {PROXY_KEY}")),
            },
        ];
        let mut rounds = Vec::new();
        for i in 0..plan.rounds {
            eprintln!("round {}/{}", i + 1, plan.rounds);
            rounds.push(round(&plan, &targets, pid).await);
        }
        let med = |f: &dyn Fn(&Round) -> f64| median(rounds.iter().map(f).collect());

        let mut holds = Vec::new();
        for count in plan.hold_streams {
            eprintln!("holding {count} streams");
            let mut at_peak = 0.0;
            let mut proxied = load::streams(&targets[1], count, 10, plan.hold_interval_ms, || {
                at_peak = rss_mb(pid)
            })
            .await;
            let mut direct =
                load::streams(&targets[0], count, 10, plan.hold_interval_ms, || {}).await;
            holds.push((
                count,
                at_peak,
                stream_delays(&mut direct),
                stream_delays(&mut proxied),
            ));
        }
        eprintln!("counting allocations");
        let (allocs_request, allocs_chunk) = allocations(&upstream, plan.full).await;
        let _ = proxy.kill();
        let _ = mock.kill();

        let mut t = Table(Vec::new());
        t.row(["measure", "direct", "proxy", "added / ratio", "target"]);
        for (name, p, target) in [
            ("latency c=1 p50", 0, ""),
            ("latency c=1 p99", 1, "added ≤ 100 µs"),
        ] {
            let (d, x) = (med(&|r| r.lat[0][p]), med(&|r| r.lat[1][p]));
            t.row([
                name,
                &format!("{d:.0} µs"),
                &format!("{x:.0} µs"),
                &format!("+{:.0} µs", med(&|r| r.lat[1][p] - r.lat[0][p])),
                target,
            ]);
        }
        for (name, f, target) in [
            (
                "throughput c=64, 0 ms upstream",
                (|r: &Round| r.rps0) as fn(&Round) -> [f64; 2],
                "≥ 0.5 × direct",
            ),
            (
                "throughput c=64, 20 ms upstream",
                |r: &Round| r.rps20,
                "≥ 0.97 × direct",
            ),
        ] {
            let (d, x) = (med(&|r| f(r)[0]), med(&|r| f(r)[1]));
            t.row([
                name,
                &format!("{d:.0} req/s"),
                &format!("{x:.0} req/s"),
                &format!("{:.2} ×", med(&|r| f(r)[1] / f(r)[0])),
                target,
            ]);
        }
        for (name, p, target) in [
            ("SSE time to first byte p50", 0, ""),
            ("SSE time to first byte p99", 1, "added ≤ 200 µs"),
        ] {
            let (d, x) = (med(&|r| r.ttfb[0][p]), med(&|r| r.ttfb[1][p]));
            t.row([
                name,
                &format!("{d:.0} µs"),
                &format!("{x:.0} µs"),
                &format!("+{:.0} µs", med(&|r| r.ttfb[1][p] - r.ttfb[0][p])),
                target,
            ]);
        }
        let n = plan.many_streams;
        for (p, label) in [(0, "p50"), (1, "p99")] {
            let (d, x) = (med(&|r| r.chunk[0][p]), med(&|r| r.chunk[1][p]));
            t.row([
                &format!("chunk delay {label}, {n} streams"),
                &format!("{d:.0} µs"),
                &format!("{x:.0} µs"),
                &format!("+{:.0} µs", med(&|r| r.chunk[1][p] - r.chunk[0][p])),
                "",
            ]);
        }
        t.row([
            "proxy RSS idle",
            "",
            &format!("{rss_idle:.1} MB"),
            "",
            "≤ 8 MB",
        ]);
        t.row([
            "proxy RSS peak, c=64 load",
            "",
            &format!("{:.1} MB", med(&|r| r.rss_load)),
            "",
            "",
        ]);
        for (count, rss, direct, proxied) in &holds {
            t.row([
                &format!("proxy RSS holding {count} SSE streams"),
                "",
                &format!("{rss:.1} MB"),
                "",
                if *count >= 9900 { "≤ 100 MB" } else { "" },
            ]);
            t.row([
                &format!("chunk delay p99, {count} streams"),
                &format!("{:.0} µs", direct[1]),
                &format!("{:.0} µs", proxied[1]),
                &format!("+{:.0} µs", proxied[1] - direct[1]),
                if *count >= 9900 { "added ≤ 1 ms" } else { "" },
            ]);
        }
        t.row([
            "allocations per proxied request",
            "",
            &format!("{allocs_request:.1}"),
            "",
            "",
        ]);
        t.row([
            "allocations per forwarded SSE chunk",
            "",
            &format!("{allocs_chunk:.2}"),
            "",
            "≤ 2",
        ]);
        println!();
        println!(
            "e2e: {} round(s), medians; {} cores",
            plan.rounds,
            std::thread::available_parallelism().map_or(0, usize::from)
        );
        t.print();
    });
}
