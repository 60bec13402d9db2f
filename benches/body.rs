//! Question: what does reading a request body's model cost (`ingress::model::read`: the
//! nesting check, the JSON check and the model fields), for a chat request of a few
//! hundred bytes and for an agent's 119 KB one (200 messages of code, with the escapes
//! code has)? Agents send the second kind, and every byte of it is read once per request.
//!
//! Baseline, measured beside it: serde_json skipping the same bytes (`IgnoredAny`), the
//! least a read that checks the JSON can cost. Target: for the agent's body, `read` at
//! most twice the baseline (the small one's few hundred nanoseconds are shown, not aimed at).
//!
//! Run: `cargo bench --bench body`

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use openrouter_proxy::ingress::model;

/// A chat request with `messages` messages of `line_count` lines of code each.
fn request(messages: usize, line_count: usize) -> String {
    let mut body = String::from(r#"{"model":"qwen/qwen3-coder:free","stream":true,"messages":["#);
    for i in 0..messages {
        if i > 0 {
            body.push(',');
        }
        body.push_str(r#"{"role":"user","content":"fn main() {\n"#);
        for line in 0..line_count {
            let _ = write!(
                body,
                r#"    let line_{line} = format!(\"{{}} and {{:?}}\", value, [1, 2, 3]); // {i}\n"#
            );
        }
        body.push_str(r#"}\n"}"#);
    }
    body.push_str("]}");
    body
}

fn body(c: &mut Criterion) {
    let mut group = c.benchmark_group("model_read");
    for (name, bytes) in [("small", request(1, 2)), ("agent", request(200, 8))] {
        assert!(model::read(bytes.as_bytes()).is_ok_and(|info| info.free));
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_with_input(BenchmarkId::new("read", name), &bytes, |b, bytes| {
            b.iter(|| black_box(model::read(black_box(bytes.as_bytes())).is_ok()));
        });
        group.bench_with_input(BenchmarkId::new("serde_skip", name), &bytes, |b, bytes| {
            b.iter(|| {
                black_box(
                    serde_json::from_slice::<serde::de::IgnoredAny>(black_box(bytes.as_bytes()))
                        .is_ok(),
                )
            });
        });
    }
    group.finish();
}

criterion_group!(benches, body);

/// `cargo bench` measures and reports; the one-iteration smoke run of `cargo test
/// --all-targets` is quiet unless it fails (a panic's message goes to stderr).
fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let _quiet = smoke.then(gag::Gag::stdout).and_then(Result::ok);
    benches();
    Criterion::default().configure_from_args().final_summary();
}
