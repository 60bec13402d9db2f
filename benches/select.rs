//! Question: how long does picking a key take with 1, 10 and 100 keys, and with 100 keys
//! in 30 accounts? Target: under 1 µs per pick with 100 keys (in 30 accounts too).
//! Baseline: the LRU pick that paid-model requests use, against the free-model pick that
//! also scores accounts' quotas, takes a daily unit and a GCRA slot.
//!
//! And with 50 clients in `CONFIG_FILE`: finding the client by its key's SHA-256, admitting
//! the request (allowlist, daily limits, units taken) and picking a key among 10, released
//! again. Target: under 1 µs for a paid-model request, under 2 µs for a free one (the
//! admission runs in a current-thread runtime's `block_on`, whose own cost is measured
//! beside it as `block_on_empty`).
//!
//! Run: `cargo bench --bench select`

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, BenchmarkId, Criterion};
use openrouter_proxy::clients::admission::Today;
use openrouter_proxy::clients::Clients;
use openrouter_proxy::config::Config;
use openrouter_proxy::keys::{now_ms, Demand, KeyPool};

/// `n` keys, in `accounts` shared accounts (0: each key its own account), with limits high
/// enough that no pick is ever refused during the run; `config_file` names a CONFIG_FILE.
fn config(n: usize, accounts: usize, config_file: Option<&std::path::Path>) -> Config {
    let keys: Vec<String> = (0..n)
        .map(|i| match accounts {
            0 => format!("sk-or-v1-bench{i:04}:4000000000"),
            _ => format!("sk-or-v1-bench{i:04}:4000000000@acct{}", i % accounts),
        })
        .collect();
    let mut vars: HashMap<&str, String> = [
        ("PROXY_API_KEY", "p".to_owned()),
        ("OPENROUTER_KEYS", keys.join(",")),
        ("FREE_RPM", "4000000000".to_owned()),
        ("FREE_BURST", "1000000000".to_owned()),
    ]
    .into_iter()
    .collect();
    if let Some(file) = config_file {
        vars.insert("CONFIG_FILE", file.to_string_lossy().into_owned());
    }
    Config::from_lookup(|name| vars.get(name).cloned()).expect("valid bench config")
}

fn pool(n: usize, accounts: usize) -> KeyPool {
    KeyPool::from_config(&config(n, accounts, None))
}

fn select(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for (label, n, accounts) in [
        ("1", 1, 0),
        ("10", 10, 0),
        ("100", 100, 0),
        ("100_in_30_accounts", 100, 30),
    ] {
        let keys = pool(n, accounts);
        let now = now_ms();
        group.bench_with_input(BenchmarkId::new("free", label), &n, |b, _| {
            b.iter(|| black_box(keys.pick(black_box(Demand::Free), now, &[])));
        });
        group.bench_with_input(BenchmarkId::new("paid_lru", label), &n, |b, _| {
            b.iter(|| black_box(keys.pick(black_box(Demand::Other), now, &[])));
        });
    }
    group.finish();
}

/// A config with 50 clients, each with every daily limit and an allowlist, and 10 keys.
fn config_with_clients() -> Config {
    let mut toml = String::new();
    for i in 0..50 {
        let _ = write!(
            toml,
            "[[clients]]\nname = \"agent{i}\"\nkey = \"pk-agent-{i:04}-0123456789\"\nmodels = [\"*:free\", \"openai/*\"]\nrequests_per_day = 4000000000\nfree_requests_per_day = 4000000000\ntokens_per_day = 4000000000\nusd_per_day = 1000000\n\n"
        );
    }
    let file = std::env::temp_dir().join(format!("select-bench-{}.toml", std::process::id()));
    std::fs::write(&file, toml).expect("the bench writes its clients file");
    let config = config(10, 0, Some(&file));
    let _ = std::fs::remove_file(file);
    config
}

fn admission(c: &mut Criterion) {
    let config = config_with_clients();
    let clients = Clients::from_config(&config, None);
    let keys = KeyPool::from_config(&config);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let today = |now: i64| Today::new(keys.calendar(), now);
    let mut group = c.benchmark_group("admit_and_pick_50_clients");
    group.bench_function("block_on_empty", |b| {
        b.iter(|| runtime.block_on(async { black_box(1) }));
    });
    for (label, model, demand) in [
        ("paid", "openai/gpt-4o", Demand::Other),
        ("free", "qwen/qwen3-coder:free", Demand::Free),
    ] {
        let free = demand == Demand::Free;
        group.bench_function(label, |b| {
            b.iter(|| {
                let now = now_ms();
                let client = clients
                    .find(black_box(b"pk-agent-0037-0123456789"))
                    .expect("a client");
                let ticket = runtime
                    .block_on(client.admit(
                        [model].into_iter(),
                        free,
                        today(now),
                        Duration::ZERO,
                        None,
                    ))
                    .expect("admitted");
                let pick = keys.pick(demand, now, &[]);
                ticket.release(true, None);
                black_box(pick)
            });
        });
    }
    group.finish();
}

criterion_group!(benches, select, admission);

/// `cargo bench` measures and reports; the one-iteration smoke run of `cargo test
/// --all-targets` is quiet unless it fails (a panic's message goes to stderr).
fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let _quiet = smoke.then(gag::Gag::stdout).and_then(Result::ok);
    benches();
    Criterion::default().configure_from_args().final_summary();
}
