//! Question: how long does picking a key take with 1, 10 and 100 keys, and with 100 keys
//! in 30 accounts? Target: under 1 µs per pick with 100 keys (in 30 accounts too).
//! Baseline: the LRU pick that paid-model requests use, against the free-model pick that
//! also scores accounts' quotas, takes a daily unit and a GCRA slot.
//!
//! Run: `cargo bench --bench select`

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use openrouter_proxy::config::Config;
use openrouter_proxy::keys::{now_ms, Demand, KeyPool};

/// `n` keys, in `accounts` shared accounts (0: each key its own account).
fn pool(n: usize, accounts: usize) -> KeyPool {
    // Limits high enough that no pick is ever refused during the run.
    let keys: Vec<String> = (0..n)
        .map(|i| match accounts {
            0 => format!("sk-or-v1-bench{i:04}:4000000000"),
            _ => format!("sk-or-v1-bench{i:04}:4000000000@acct{}", i % accounts),
        })
        .collect();
    let vars: HashMap<&str, String> = [
        ("PROXY_API_KEY", "p".to_owned()),
        ("OPENROUTER_KEYS", keys.join(",")),
        ("FREE_RPM", "4000000000".to_owned()),
        ("FREE_BURST", "1000000000".to_owned()),
    ]
    .into_iter()
    .collect();
    let config = Config::from_lookup(|name| vars.get(name).cloned()).expect("valid bench config");
    KeyPool::from_config(&config)
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

criterion_group!(benches, select);
criterion_main!(benches);
