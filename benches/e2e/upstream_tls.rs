//! The path that ships: HTTPS to the upstream. The mock speaks TLS with a certificate from
//! a CA this run makes (ALPN `h2`, `http/1.1`, as OpenRouter); the proxy (the shipped
//! build) trusts it through `EXTRA_CA_FILE` and multiplexes its streams over HTTP/2; nginx
//! verifies it with `proxy_ssl_trusted_certificate` and keeps a pool of HTTP/1.1 TLS
//! connections. The baseline is the benchmark's client talking HTTPS (HTTP/1.1) to the
//! mock itself, as an agent without the proxy would. The client → contender leg is plain
//! HTTP/1.1 on loopback for both.

use std::process::Child;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use crate::contenders::{self, Contender};
use crate::load::{self, percentile, Target};
use crate::procs::{self, spawn_ready};
use crate::{nginx, us, Plan};

/// What one contender (or the baseline) measured; medians over the rounds.
#[derive(Clone, Copy, Default)]
struct Row {
    /// c=1 latency p50, µs.
    latency: f64,
    /// c=64, 0 ms upstream: requests per second.
    throughput: f64,
    /// CPU µs per request at c=64.
    cpu_per_request: f64,
    /// A thousand streams: chunk delay p99 (µs); once all are open, RSS (MB) and upstream connections.
    many: [f64; 3],
    /// The held streams, once: the same figures.
    hold: [f64; 3],
}

pub struct TlsResults {
    direct: Row,
    contenders: Vec<(&'static str, Row)>,
    many: usize,
    hold: usize,
    smoke: bool,
}

struct Mock {
    child: Child,
    port: u16,
    url: String,
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA, a certificate for 127.0.0.1 and localhost signed by it, written into `dir`.
fn certificates(dir: &std::path::Path) -> std::path::PathBuf {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "bench CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
    let key = KeyPair::generate().expect("key");
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("certificate");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
    std::fs::write(dir.join("cert.pem"), server.pem()).expect("write");
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("write");
    load::BENCH_CA
        .set(vec![ca.der().clone()])
        .expect("the CA is made once");
    dir.join("ca.pem")
}

pub async fn measure(plan: &Plan) -> TlsResults {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = certificates(dir.path());
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (child, port) = spawn_ready(
        std::process::Command::new(std::env::current_exe().expect("own path"))
            .arg("--mock")
            .arg("--mock-tls")
            .args([&cert, &key]),
    );
    let mock = Mock {
        child,
        port,
        url: format!("https://127.0.0.1:{port}/api/v1"),
    };
    let mut contenders = Vec::new();
    if plan.full {
        if let Some(nginx) = nginx::start(port, Some(&ca)) {
            contenders.push(Contender::nginx(nginx));
        }
    }
    let (name, binary) = contenders::shipped();
    let ca_path = ca.display().to_string();
    contenders.push(Contender::proxy(
        name,
        &binary,
        &mock.url,
        &[("EXTRA_CA_FILE", ca_path.as_str())],
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let direct_target = Target::direct(&mock.url);
    let mut direct_rounds = Vec::new();
    let mut rounds: Vec<Vec<Row>> = vec![Vec::new(); contenders.len()];
    for i in 0..plan.rounds {
        progress!("TLS round {}/{}", i + 1, plan.rounds);
        direct_rounds.push(round(plan, &direct_target, None, &mock).await);
        for (contender, rows) in contenders.iter().zip(&mut rounds) {
            rows.push(round(plan, &contender.target, Some(contender), &mock).await);
        }
    }
    let mut direct = median_row(&direct_rounds);
    let mut rows: Vec<(&'static str, Row)> = contenders
        .iter()
        .zip(&rounds)
        .map(|(c, r)| (c.name, median_row(r)))
        .collect();
    if plan.hold_streams > 0 {
        progress!("TLS: holding {} streams", plan.hold_streams);
        direct.hold = hold(plan, &direct_target, None, &mock).await;
        for (contender, (_, row)) in contenders.iter().zip(&mut rows) {
            row.hold = hold(plan, &contender.target, Some(contender), &mock).await;
        }
    }
    TlsResults {
        direct,
        contenders: rows,
        many: plan.many_streams,
        hold: plan.hold_streams,
        smoke: !plan.full,
    }
}

async fn round(plan: &Plan, target: &Target, contender: Option<&Contender>, mock: &Mock) -> Row {
    let client = load::client();
    let cpu = || contender.map_or(0.0, Contender::cpu);
    let mut latencies = load::latencies(&client, target, plan.latency_n, plan.latency_n / 10).await;
    let latency = us(percentile(&mut latencies, 50.0));
    let before = cpu();
    let throughput = load::throughput(&client, target, "", 64, plan.throughput_for).await;
    let requests = throughput * plan.throughput_for.as_secs_f64();
    let cpu_per_request = (cpu() - before) * 1e6 / requests.max(1.0);
    Row {
        latency,
        throughput,
        cpu_per_request,
        many: streams(plan.many_streams, 50, target, contender, mock).await,
        hold: [f64::NAN; 3],
    }
}

async fn hold(
    plan: &Plan,
    target: &Target,
    contender: Option<&Contender>,
    mock: &Mock,
) -> [f64; 3] {
    streams(
        plan.hold_streams,
        plan.hold_interval_ms,
        target,
        contender,
        mock,
    )
    .await
}

/// `count` streams of 10 or 20 chunks: chunk delay p99, and once all are open, RSS and the
/// connections the contender holds to the mock.
async fn streams(
    count: usize,
    interval_ms: u64,
    target: &Target,
    contender: Option<&Contender>,
    mock: &Mock,
) -> [f64; 3] {
    let chunks = if interval_ms >= 1000 { 10 } else { 20 };
    let (mut rss, mut connections) = (f64::NAN, f64::NAN);
    let mut run = load::streams(target, count, chunks, interval_ms, || {
        if let Some(contender) = contender {
            rss = contender.rss();
            connections = procs::connections_to(&contender.pids(), mock.port) as f64;
        }
    })
    .await;
    assert_eq!(run.failed, 0, "TLS streams failed");
    assert_eq!(run.chunks, run.expected, "TLS chunks lost");
    [us(percentile(&mut run.delays, 99.0)), rss, connections]
}

fn median_row(rows: &[Row]) -> Row {
    let med = |f: &dyn Fn(&Row) -> f64| {
        let mut values: Vec<f64> = rows.iter().map(f).collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
    };
    Row {
        latency: med(&|r| r.latency),
        throughput: med(&|r| r.throughput),
        cpu_per_request: med(&|r| r.cpu_per_request),
        many: [0, 1, 2].map(|i| med(&|r| r.many[i])),
        hold: [f64::NAN; 3],
    }
}

pub fn print(results: &TlsResults) {
    println!();
    if results.smoke {
        println!("TLS upstream smoke run (numbers mean nothing)");
    } else {
        println!(
            "TLS upstream (HTTPS to the mock, the proxy's h2 against nginx's HTTP/1.1 pool), medians; direct = the client's own HTTPS"
        );
    }
    let names: Vec<&str> = results.contenders.iter().map(|(n, _)| *n).collect();
    println!("| measure | direct (TLS) | {} |", names.join(" | "));
    println!("|---|---|{}", "---|".repeat(names.len()));
    let d = &results.direct;
    let row = |label: &str, direct: String, cell: &dyn Fn(&Row) -> String| {
        let cells: Vec<String> = results.contenders.iter().map(|(_, r)| cell(r)).collect();
        println!("| {label} | {direct} | {} |", cells.join(" | "));
    };
    row("c=1 added p50", format!("{:.0} µs", d.latency), &|r| {
        format!("{:+.0} µs", r.latency - d.latency)
    });
    row(
        "c=64 0 ms throughput",
        format!("{:.0} req/s", d.throughput),
        &|r| format!("{:.2} ×", r.throughput / d.throughput),
    );
    row("CPU per request c=64", String::new(), &|r| {
        format!("{:.1} µs", r.cpu_per_request)
    });
    for (label, count, pick) in [
        (
            "streams",
            results.many,
            (|r: &Row| r.many) as fn(&Row) -> [f64; 3],
        ),
        ("held streams", results.hold, |r: &Row| r.hold),
    ] {
        if count == 0 {
            continue;
        }
        let base = pick(d);
        row(
            &format!("{count} {label}: chunk delay added p99"),
            format!("{:.0} µs", base[0]),
            &|r| format!("{:+.0} µs", pick(r)[0] - base[0]),
        );
        row(&format!("{count} {label}: RSS"), String::new(), &|r| {
            format!("{:.1} MB", pick(r)[1])
        });
        // Direct, each HTTP/1.1 stream is a connection of its own, by construction.
        row(
            &format!("{count} {label}: upstream connections"),
            String::new(),
            &|r| format!("{:.0}", pick(r)[2]),
        );
    }
}
