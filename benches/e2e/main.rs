//! Question: what does the proxy cost its users, next to talking to the
//! upstream directly? Latency, throughput, streaming delay, memory and
//! allocations, direct and proxied side by side in the same run.
//!
//! Run: `cargo bench --bench e2e` (release proxy binary as its own process;
//! `E2E_ROUNDS=N` repeats the timed measurements and reports medians, default 3;
//! `E2E_TLS=0` skips the second table, HTTPS to the upstream against nginx's; `E2E_SHARED=0`
//! the third, the price of sharing state through Redis).
//! Under `cargo test` it runs a seconds-long smoke version of itself.

/// Progress and notices on stderr, left out of the smoke run so `cargo test` stays quiet
/// unless something fails (a panic's message still shows).
macro_rules! progress {
    ($($arg:tt)*) => {
        if !$crate::SMOKE.load(std::sync::atomic::Ordering::Relaxed) {
            eprintln!($($arg)*);
        }
    };
}

mod child;
mod contenders;
mod load;
mod mock;
mod nginx;
mod procs;
mod report;
mod shared;
mod upstream_tls;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use contenders::{Contender, RssReader};
use load::{percentile, StreamRun, Target};
use procs::{proxy_env, spawn_mock, spawn_ready};
use report::{Allocations, Hold, Measured, Results};
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

/// Set for the seconds-long smoke run under `cargo test`.
static SMOKE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// How big each measurement is.
struct Plan {
    full: bool,
    rounds: usize,
    latency_n: usize,
    throughput_for: Duration,
    ttfb_n: usize,
    few_streams: usize,
    many_streams: usize,
    /// Streams held open at once (0: not measured), and how long after they close RSS is read.
    hold_streams: usize,
    hold_interval_ms: u64,
    settle: Duration,
    count_allocations: bool,
}

fn plan() -> Plan {
    let full = std::env::args().any(|a| a == "--bench");
    // For focused runs: E2E_ROUNDS=0 skips the timed rounds, E2E_HOLD=0 the held streams,
    // E2E_ALLOC=0 the allocation counting.
    let var = |name: &str| std::env::var(name).ok();
    let rounds = var("E2E_ROUNDS")
        .and_then(|r| r.parse().ok())
        .unwrap_or(if full { 3 } else { 1 });
    let hold = |default: usize| {
        var("E2E_HOLD")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(default)
    };
    let count_allocations = var("E2E_ALLOC").is_none_or(|v| v != "0");
    if full {
        Plan {
            full,
            rounds,
            latency_n: 2000,
            throughput_for: Duration::from_secs(3),
            ttfb_n: 500,
            few_streams: 100,
            many_streams: 1000,
            hold_streams: hold(9900),
            hold_interval_ms: 1000,
            settle: Duration::from_secs(60),
            count_allocations,
        }
    } else {
        Plan {
            full,
            rounds,
            latency_n: 50,
            throughput_for: Duration::from_millis(200),
            ttfb_n: 20,
            few_streams: 5,
            many_streams: 20,
            hold_streams: hold(20),
            hold_interval_ms: 20,
            settle: Duration::from_millis(100),
            count_allocations,
        }
    }
}

#[must_use]
pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// What one round measured for direct or for one contender (µs, req/s, MB).
#[derive(Default, Clone)]
pub struct Figures {
    /// c=1 latency [p50, p99], then with everything pinned to one CPU.
    pub lat: [f64; 2],
    pub lat_pinned: [f64; 2],
    pub rps0: f64,
    pub rps20: f64,
    pub ttfb: [f64; 2],
    /// Chunk delay [p50, p99] with a hundred, then a thousand streams.
    pub chunk_few: [f64; 2],
    pub chunk_many: [f64; 2],
    pub rss_load: f64,
    pub rss_streams: f64,
    /// CPU µs per request at c=64 (0 ms upstream) and per forwarded chunk (many streams).
    pub cpu_per_request: f64,
    pub cpu_per_chunk: f64,
    /// The kernel's part of `cpu_per_request`.
    pub kernel_cpu_per_request: f64,
    /// Context switches per request at c=64 (0 ms upstream): each is a sleep and a wake-up.
    pub switches_per_request: f64,
}

fn stream_delays(run: &mut StreamRun) -> [f64; 2] {
    assert_eq!(run.failed, 0, "streams failed");
    assert_eq!(run.chunks, run.expected, "chunks lost");
    [
        us(percentile(&mut run.delays, 50.0)),
        us(percentile(&mut run.delays, 99.0)),
    ]
}

fn p50_p99(mut values: Vec<Duration>) -> [f64; 2] {
    [
        us(percentile(&mut values, 50.0)),
        us(percentile(&mut values, 99.0)),
    ]
}

/// The processes every measurement involves besides the contender: this one (the
/// client) and the mock; pinned with the contender for the pinned rows.
struct Bystanders {
    pids: Vec<u32>,
    all_cpus: String,
}

/// One round against `target`; `contender` is what is in front of the mock (`None`: direct).
async fn round(
    plan: &Plan,
    target: &Target,
    contender: Option<&Contender>,
    bystanders: &Bystanders,
) -> Figures {
    let client = load::client();
    let mut f = Figures::default();
    let cpu = || contender.map_or(0.0, Contender::cpu);
    let rss = || contender.map_or(0.0, Contender::rss);
    f.lat = p50_p99(load::latencies(&client, target, plan.latency_n, plan.latency_n / 10).await);
    let mut pinned: Vec<u32> = bystanders.pids.clone();
    pinned.extend(contender.map(Contender::pids).unwrap_or_default());
    if contenders::pin(&pinned, "0") {
        // A fresh client: its connections' tasks start on the pinned threads.
        let client = load::client();
        f.lat_pinned =
            p50_p99(load::latencies(&client, target, plan.latency_n, plan.latency_n / 10).await);
        contenders::pin(&pinned, &bystanders.all_cpus);
    } else {
        f.lat_pinned = [f64::NAN; 2];
    }
    let peak = tokio::spawn(sample_rss(
        plan.throughput_for,
        contender.map(Contender::rss_reader),
    ));
    let switches = || contender.map_or(f64::NAN, Contender::context_switches);
    let kernel_cpu = || contender.map_or(0.0, Contender::kernel_cpu);
    let (cpu_before, kernel_before, switches_before) = (cpu(), kernel_cpu(), switches());
    f.rps0 = load::throughput(&client, target, "", 64, plan.throughput_for).await;
    f.rss_load = peak.await.expect("sampler");
    let requests = f.rps0 * plan.throughput_for.as_secs_f64();
    f.cpu_per_request = (cpu() - cpu_before) * 1e6 / requests.max(1.0);
    f.kernel_cpu_per_request = (kernel_cpu() - kernel_before) * 1e6 / requests.max(1.0);
    f.switches_per_request = (switches() - switches_before) / requests.max(1.0);
    f.rps20 = load::throughput(&client, target, "latency=20", 64, plan.throughput_for).await;
    f.ttfb = p50_p99(load::ttfb(&client, target, plan.ttfb_n).await);
    f.chunk_few = stream_delays(&mut load::streams(target, plan.few_streams, 20, 50, || {}).await);
    let cpu_before = cpu();
    let mut rss_streams = 0.0;
    let mut run = load::streams(target, plan.many_streams, 20, 50, || rss_streams = rss()).await;
    f.cpu_per_chunk = (cpu() - cpu_before) * 1e6 / run.chunks.max(1) as f64;
    f.rss_streams = rss_streams;
    f.chunk_many = stream_delays(&mut run);
    f
}

/// The highest RSS `reader` reports over `over` (0 without one).
async fn sample_rss(over: Duration, reader: Option<RssReader>) -> f64 {
    let Some(reader) = reader else {
        tokio::time::sleep(over).await;
        return 0.0;
    };
    let mut peak: f64 = 0.0;
    let deadline = tokio::time::Instant::now() + over;
    while tokio::time::Instant::now() < deadline {
        peak = peak.max(reader.read());
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
    SMOKE.store(!plan.full, std::sync::atomic::Ordering::Relaxed);
    // The smoke run's tables are not shown either (its numbers mean nothing).
    let _quiet = (!plan.full).then(gag::Gag::stdout).and_then(Result::ok);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let results = runtime.block_on(measure(&plan));
    report::print(&summary(&plan), &results);
    if std::env::var("E2E_TLS").map_or(true, |v| v != "0") {
        let tls = runtime.block_on(upstream_tls::measure(&plan));
        upstream_tls::print(&tls);
    }
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

fn summary(plan: &Plan) -> report::Summary {
    report::Summary {
        rounds: plan.rounds,
        few_streams: plan.few_streams,
        many_streams: plan.many_streams,
        smoke: !plan.full,
    }
}

async fn measure(plan: &Plan) -> Results {
    let (mut mock, mock_port) = spawn_mock();
    let upstream = format!("http://127.0.0.1:{mock_port}/api/v1");
    let contenders = contenders::start(&upstream, mock_port, !plan.full);
    let bystanders = Bystanders {
        pids: vec![std::process::id(), mock.id()],
        // Read before anything is pinned.
        all_cpus: contenders::all_cpus(),
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut measured: Vec<Measured> = contenders
        .iter()
        .map(|c| Measured {
            name: c.name,
            rss_idle: c.rss(),
            rounds: Vec::new(),
            hold: None,
        })
        .collect();
    let direct_target = Target::direct(&upstream);
    let mut direct = Vec::new();
    for i in 0..plan.rounds {
        progress!("round {}/{}", i + 1, plan.rounds);
        direct.push(round(plan, &direct_target, None, &bystanders).await);
        for (contender, measured) in contenders.iter().zip(&mut measured) {
            measured
                .rounds
                .push(round(plan, &contender.target, Some(contender), &bystanders).await);
        }
    }
    let mut direct_hold = None;
    if plan.hold_streams > 0 {
        let count = plan.hold_streams;
        progress!("holding {count} streams");
        let mut run = load::streams(&direct_target, count, 10, plan.hold_interval_ms, || {}).await;
        direct_hold = Some(stream_delays(&mut run));
        let mut closed = tokio::time::Instant::now();
        for (contender, measured) in contenders.iter().zip(&mut measured) {
            let mut rss_holding = 0.0;
            let mut run =
                load::streams(&contender.target, count, 10, plan.hold_interval_ms, || {
                    rss_holding = contender.rss();
                })
                .await;
            closed = tokio::time::Instant::now();
            measured.hold = Some(Hold {
                count,
                rss_holding,
                rss_after: f64::NAN,
                delays: stream_delays(&mut run),
            });
        }
        // The last contender's streams closed `settle` ago, the others' earlier.
        progress!("waiting {:?} for memory to settle", plan.settle);
        tokio::time::sleep_until(closed + plan.settle).await;
        for (contender, measured) in contenders.iter().zip(&mut measured) {
            if let Some(hold) = &mut measured.hold {
                hold.rss_after = contender.rss();
            }
        }
    }
    drop(contenders);
    let allocations = if plan.count_allocations {
        progress!("counting allocations");
        Some(allocations(&upstream, plan.full).await)
    } else {
        None
    };
    let _ = mock.kill();
    let _ = mock.wait();
    Results {
        direct,
        direct_hold,
        measured,
        allocations,
        settle: plan.settle,
    }
}
