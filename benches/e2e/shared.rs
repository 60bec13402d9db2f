//! The price of sharing (`REDIS_URL`): c=1 latency of a free-model and of a paid-model
//! request through a proxy that shares its state through Redis on loopback, against the
//! embedded default in the same run; and c=64 free-model throughput of one and of two
//! replicas sharing Redis, against one embedded proxy. Skipped (and said) where
//! `redis-server` is not installed.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::load::{self, percentile, Target, PAID_BODY};
use crate::procs::start_proxy;
use crate::us;

/// Medians over the rounds; latencies are [p50, p99] in µs.
pub struct Sharing {
    pub free: [[f64; 2]; 2],
    pub paid: [[f64; 2]; 2],
    /// Requests per second: embedded, one replica with Redis, two replicas with Redis.
    pub throughput: [f64; 3],
}

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> Option<(Redis, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((Redis(child), port));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Runs the comparison `rounds` times (`latency_n` requests per latency figure, each
/// throughput run for `throughput_for`).
pub async fn measure(
    upstream: &str,
    rounds: usize,
    latency_n: usize,
    throughput_for: Duration,
) -> Option<Sharing> {
    let Some((_redis, redis_port)) = start_redis() else {
        progress!("sharing: redis-server is not installed; the Redis rows were not measured");
        return None;
    };
    let url = format!("redis://127.0.0.1:{redis_port}/0");
    let binary = crate::procs::default_binary();
    let (embedded, embedded_port) = start_proxy(&binary, upstream, &[]);
    let (first, first_port) = start_proxy(&binary, upstream, &[("REDIS_URL", url.as_str())]);
    let (second, second_port) = start_proxy(&binary, upstream, &[("REDIS_URL", url.as_str())]);
    let client = load::client();
    let latency = |target: Target| {
        let client = client.clone();
        async move {
            let mut lat = load::latencies(&client, &target, latency_n, latency_n / 10).await;
            [
                us(percentile(&mut lat, 50.0)),
                us(percentile(&mut lat, 99.0)),
            ]
        }
    };
    let paid = |port| Target {
        body: PAID_BODY,
        ..Target::proxy(port)
    };
    let mut samples = Vec::new();
    for _ in 0..rounds {
        let free = [
            latency(Target::proxy(embedded_port)).await,
            latency(Target::proxy(first_port)).await,
        ];
        let paid = [
            latency(paid(embedded_port)).await,
            latency(paid(first_port)).await,
        ];
        let alone = load::throughput(
            &client,
            &Target::proxy(embedded_port),
            "",
            64,
            throughput_for,
        )
        .await;
        let one =
            load::throughput(&client, &Target::proxy(first_port), "", 64, throughput_for).await;
        let (to_first, to_second) = (Target::proxy(first_port), Target::proxy(second_port));
        let (a, b) = tokio::join!(
            load::throughput(&client, &to_first, "", 32, throughput_for),
            load::throughput(&client, &to_second, "", 32, throughput_for),
        );
        samples.push(Sharing {
            free,
            paid,
            throughput: [alone, one, a + b],
        });
    }
    for mut child in [embedded, first, second] {
        let _ = child.kill();
        let _ = child.wait();
    }
    Some(median_of(&samples))
}

fn median_of(samples: &[Sharing]) -> Sharing {
    let med = |f: &dyn Fn(&Sharing) -> f64| {
        let mut values: Vec<f64> = samples.iter().map(f).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    Sharing {
        free: [0, 1].map(|i| [0, 1].map(|p| med(&|s| s.free[i][p]))),
        paid: [0, 1].map(|i| [0, 1].map(|p| med(&|s| s.paid[i][p]))),
        throughput: [0, 1, 2].map(|i| med(&|s| s.throughput[i])),
    }
}

/// The second table: with Redis against embedded.
pub fn print(sharing: &Sharing, smoke: bool) {
    println!();
    if smoke {
        println!("sharing smoke run (numbers mean nothing)");
    } else {
        println!("sharing through Redis on loopback, medians; target: ≤ +100 µs p50 free, nothing measurable paid");
    }
    println!("| measure | embedded | with Redis | added / ratio |");
    println!("|---|---|---|---|");
    for (name, pair) in [
        ("free-model c=1 p50", sharing.free.map(|p| p[0])),
        ("free-model c=1 p99", sharing.free.map(|p| p[1])),
        ("paid-model c=1 p50", sharing.paid.map(|p| p[0])),
        ("paid-model c=1 p99", sharing.paid.map(|p| p[1])),
    ] {
        println!(
            "| {name} | {:.0} µs | {:.0} µs | {:+.0} µs |",
            pair[0],
            pair[1],
            pair[1] - pair[0]
        );
    }
    let [alone, one, two] = sharing.throughput;
    println!(
        "| free-model c=64, one replica | {alone:.0} req/s | {one:.0} req/s | {:.2}× |",
        one / alone
    );
    println!(
        "| free-model c=64, two replicas | {alone:.0} req/s | {two:.0} req/s | {:.2}× |",
        two / alone
    );
}
