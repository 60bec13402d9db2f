//! The proxy's own counters, gauges and latency histograms, kept in atomics
//! (no lock, no allocation per request) and written by hand in Prometheus'
//! text exposition format 0.0.4 for `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::keys::{now_ms, Account, KeyPool, Usage};

// Every figure is an independent counter or gauge: `Relaxed` throughout.

/// What kind of route a request took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/chat/completions` (any prefix).
    Chat,
    /// Any other proxied path.
    Proxied,
    /// The proxy's own endpoints (`/health`, `/key_status`, `/metrics`, status page, preflight).
    Own,
    /// A connection's first request head, refused before routing (malformed, too large, ...).
    MalformedHead,
}

const ROUTES: [&str; 4] = ["chat_completions", "other_proxied", "own", "malformed_head"];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Classified upstream errors, as named by `Verdict::class`.
pub const ERROR_CLASSES: [&str; 11] = [
    "free-daily",
    "free-per-minute",
    "provider-upstream",
    "credits",
    "key-limit",
    "auth",
    "server",
    "unreachable",
    "broken",
    "request",
    "first-token",
];
/// How proxied requests end, in the order of `stream::accounted::Ended`.
pub const ENDINGS: [&str; 5] = [
    "completed",
    "client_closed",
    "upstream_error",
    "idle_timeout",
    "first_token_timeout",
];
/// Histogram bucket upper bounds in microseconds: the proxy's own overheads.
const BUCKETS_US: [u64; 12] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 250_000, 1_000_000, 10_000_000,
];
/// Bucket upper bounds in microseconds for whole requests, up to long generations.
const LONG_BUCKETS_US: [u64; 12] = [
    10_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    300_000_000,
];

/// A latency histogram with fixed buckets.
pub struct Histogram {
    bounds: &'static [u64; 12],
    buckets: [AtomicU64; 12],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::with_bounds(&BUCKETS_US)
    }
}

/// A histogram of whole requests (up to minutes).
pub struct LongHistogram(pub Histogram);

impl Default for LongHistogram {
    fn default() -> Self {
        LongHistogram(Histogram::with_bounds(&LONG_BUCKETS_US))
    }
}

impl Histogram {
    fn with_bounds(bounds: &'static [u64; 12]) -> Self {
        Histogram {
            bounds,
            buckets: Default::default(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, elapsed: Duration) {
        let us = elapsed.as_micros() as u64;
        if let Some(bucket) = self.bounds.iter().position(|&bound| us <= bound) {
            self.buckets[bucket].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{}\"}} {cumulative}",
                *bound as f64 / 1e6
            );
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_us.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Everything `/metrics` reports besides the per-key figures the key pool keeps.
#[derive(Default)]
pub struct Metrics {
    requests: [[AtomicU64; 5]; ROUTES.len()],
    pub upstream_attempts: AtomicU64,
    pub upstream_retries: AtomicU64,
    upstream_errors: [AtomicU64; ERROR_CLASSES.len()],
    pub in_flight: AtomicI64,
    pub open_streams: AtomicI64,
    /// Request arrival → first upstream request sent.
    pub before_upstream: Histogram,
    /// Upstream response headers → response handed to the client connection.
    pub after_upstream: Histogram,
    /// Upstream request sent → upstream response headers.
    pub upstream_headers: Histogram,
    /// Request arrival → the response's end (its last byte, the client gone, an error).
    pub request_duration: LongHistogram,
    /// Request arrival → the first content event (streams) or first byte (other answers).
    pub time_to_first_content: LongHistogram,
    /// Time a request waited on purpose: for its client's turn and for a key (a limiter's
    /// slot, a block's end), summed over its attempts.
    pub queue_wait: LongHistogram,
    /// Proxied requests by how they ended (see [`ENDINGS`]).
    pub ended: [AtomicU64; ENDINGS.len()],
}

impl Metrics {
    /// Counts a finished request by route and status class.
    pub fn count_request(&self, route: Route, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests[route as usize][class].fetch_add(1, Relaxed);
    }

    /// Counts a classified upstream error by its class (one of [`ERROR_CLASSES`]).
    pub fn count_error(&self, class: &str) {
        if let Some(index) = ERROR_CLASSES.iter().position(|c| *c == class) {
            self.upstream_errors[index].fetch_add(1, Relaxed);
        }
    }

    /// Upstream errors so far, by class.
    #[must_use]
    pub fn errors_by_class(&self) -> [(&'static str, u64); ERROR_CLASSES.len()] {
        std::array::from_fn(|i| (ERROR_CLASSES[i], self.upstream_errors[i].load(Relaxed)))
    }

    /// The whole exposition: these metrics and every key's.
    /// `shared`: with `REDIS_URL`, whether Redis is in use and the fleet's size.
    #[must_use]
    pub fn render(&self, keys: &KeyPool, shared: Option<(bool, u32)>) -> String {
        let mut out = String::with_capacity(4096 + keys.keys().len() * 600);
        self.write_requests(&mut out);
        write_keys(&mut out, keys);
        if let Some((in_use, replicas)) = shared {
            let _ = writeln!(out, "# HELP openrouter_proxy_redis_in_use 1 while key state is shared through Redis, 0 while this replica decides alone.\n# TYPE openrouter_proxy_redis_in_use gauge\nopenrouter_proxy_redis_in_use {}", u8::from(in_use));
            let _ = writeln!(out, "# HELP openrouter_proxy_replicas Replicas alive at the last heartbeat in Redis.\n# TYPE openrouter_proxy_replicas gauge\nopenrouter_proxy_replicas {replicas}");
        }
        self.before_upstream.write(
            &mut out,
            "openrouter_proxy_overhead_before_upstream_seconds",
            "Time from request arrival to the first upstream request being sent.",
        );
        self.after_upstream.write(
            &mut out,
            "openrouter_proxy_overhead_after_upstream_seconds",
            "Time from upstream response headers to the response being handed to the client.",
        );
        self.upstream_headers.write(
            &mut out,
            "openrouter_proxy_upstream_time_to_headers_seconds",
            "Time from sending an upstream request to its response headers.",
        );
        self.request_duration.0.write(
            &mut out,
            "openrouter_proxy_request_duration_seconds",
            "Time from a proxied request's arrival to the end of its response.",
        );
        self.time_to_first_content.0.write(
            &mut out,
            "openrouter_proxy_time_to_first_content_seconds",
            "Time from a proxied request's arrival to its first content event (streams) or first byte.",
        );
        self.queue_wait.0.write(
            &mut out,
            "openrouter_proxy_queue_wait_seconds",
            "Time a proxied request waited on purpose: for its client's turn and for a key (limiter slot, block end).",
        );
        let _ = writeln!(out, "# HELP openrouter_proxy_requests_ended_total Proxied requests by how their response ended.\n# TYPE openrouter_proxy_requests_ended_total counter");
        for (name, count) in ENDINGS.iter().zip(&self.ended) {
            let _ = writeln!(
                out,
                "openrouter_proxy_requests_ended_total{{ended=\"{name}\"}} {}",
                count.load(Relaxed)
            );
        }
        out
    }

    fn write_requests(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP openrouter_proxy_requests_total Requests answered, by route kind and final status class.\n# TYPE openrouter_proxy_requests_total counter");
        for (route, classes) in ROUTES.iter().zip(&self.requests) {
            for (class, counter) in STATUS_CLASSES.iter().zip(classes) {
                let _ = writeln!(
                    out,
                    "openrouter_proxy_requests_total{{route=\"{route}\",status=\"{class}\"}} {}",
                    counter.load(Relaxed)
                );
            }
        }
        let counters = [
            (
                "upstream_attempts_total",
                "Requests sent to OpenRouter, retries included.",
                &self.upstream_attempts,
            ),
            (
                "upstream_retries_total",
                "Attempts that were retries of an earlier attempt.",
                &self.upstream_retries,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP openrouter_proxy_{name} {help}\n# TYPE openrouter_proxy_{name} counter\nopenrouter_proxy_{name} {}", value.load(Relaxed));
        }
        let _ = writeln!(out, "# HELP openrouter_proxy_upstream_errors_total Classified upstream errors.\n# TYPE openrouter_proxy_upstream_errors_total counter");
        for (class, count) in self.errors_by_class() {
            let _ = writeln!(
                out,
                "openrouter_proxy_upstream_errors_total{{class=\"{class}\"}} {count}"
            );
        }
        let gauges = [
            (
                "in_flight_requests",
                "Requests being handled (until their response head is sent).",
                &self.in_flight,
            ),
            (
                "open_streams",
                "Event streams being relayed to clients.",
                &self.open_streams,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP openrouter_proxy_{name} {help}\n# TYPE openrouter_proxy_{name} gauge\nopenrouter_proxy_{name} {}", value.load(Relaxed));
        }
    }
}

/// One per-key figure: the pool, the key's index and now (epoch ms) give its value.
type KeyFigure = fn(&KeyPool, usize, i64) -> f64;
/// One per-account figure: the account, today's date and now (epoch ms) give its value.
type AccountFigure = fn(&Account, u32, i64) -> f64;

/// One usage figure of a key or an account.
type UsageFigure = fn(Usage) -> f64;

/// A label value with Prometheus' escapes.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn write_keys(out: &mut String, pool: &KeyPool) {
    let now = now_ms();
    write_account_figures(out, pool, now);
    write_key_figures(out, pool, now);
    write_usage(out, pool);
}

/// Lifetime tokens and cost, per key (labels `key`, `account`) and per account.
fn write_usage(out: &mut String, pool: &KeyPool) {
    let series: [(&str, &str, UsageFigure); 3] = [
        (
            "prompt_tokens_total",
            "Prompt tokens of the requests",
            |u| u.prompt_tokens as f64,
        ),
        (
            "completion_tokens_total",
            "Completion tokens of the requests",
            |u| u.completion_tokens as f64,
        ),
        (
            "cost_usd_total",
            "Cost in USD, as OpenRouter reported it, of the requests",
            |u| u.cost_nano as f64 / 1e9,
        ),
    ];
    let live = pool.live_accounts();
    for (name, help, figure) in series {
        let _ = writeln!(out, "# HELP openrouter_proxy_key_{name} {help} the key served.\n# TYPE openrouter_proxy_key_{name} counter");
        for key in pool.keys() {
            let _ = writeln!(
                out,
                "openrouter_proxy_key_{name}{{key=\"{}\",account=\"{}\"}} {}",
                label(&key.id),
                label(&pool.account_id(key.account())),
                figure(key.spent.lifetime())
            );
        }
        let _ = writeln!(out, "# HELP openrouter_proxy_account_{name} {help} the account's keys served.\n# TYPE openrouter_proxy_account_{name} counter");
        for (index, _) in &live {
            let _ = writeln!(
                out,
                "openrouter_proxy_account_{name}{{account=\"{}\"}} {}",
                label(&pool.account_id(*index)),
                figure(pool.accounts()[*index].spent.lifetime())
            );
        }
    }
}

/// The quota series, one per account (label `account`).
fn write_account_figures(out: &mut String, pool: &KeyPool, now: i64) {
    let day = pool.calendar().today(now);
    let live = pool.live_accounts();
    let accounts: [(&str, &str, AccountFigure); 3] = [
        (
            "account_free_requests_today",
            "Free-model requests the account used today (shared by its keys).",
            |a, date, _| f64::from(a.used_on(date)),
        ),
        (
            "account_daily_limit",
            "The account's free-model daily limit in force.",
            |a, _, _| f64::from(a.daily_limit()),
        ),
        (
            "account_limiter_wait_seconds",
            "Seconds until the account's per-minute limiter admits a free-model request.",
            |a, _, now| (a.next_free_slot_ms(now) - now).max(0) as f64 / 1e3,
        ),
    ];
    for (name, help, figure) in accounts {
        let _ = writeln!(
            out,
            "# HELP openrouter_proxy_{name} {help}\n# TYPE openrouter_proxy_{name} gauge"
        );
        for (index, _) in &live {
            let _ = writeln!(
                out,
                "openrouter_proxy_{name}{{account=\"{}\"}} {}",
                label(&pool.account_id(*index)),
                figure(&pool.accounts()[*index], day.date, now)
            );
        }
    }
}

/// The block series, one per key (labels `key` and `account`).
fn write_key_figures(out: &mut String, pool: &KeyPool, now: i64) {
    let keys: [(&str, &str, KeyFigure); 2] = [
        (
            "key_blocked",
            "1 while the key or its account is blocked after an upstream refusal (or the key is invalid).",
            |pool, k, now| {
                f64::from(u8::from(
                    pool.block_shown(k, now).is_some() || pool.keys()[k].probe.invalid(),
                ))
            },
        ),
        (
            "key_blocked_seconds",
            "Seconds until the block shown for the key ends.",
            |pool, k, now| {
                pool.block_shown(k, now)
                    .map_or(0.0, |b| (b.until_ms - now) as f64 / 1e3)
            },
        ),
    ];
    for (name, help, figure) in keys {
        let _ = writeln!(
            out,
            "# HELP openrouter_proxy_{name} {help}\n# TYPE openrouter_proxy_{name} gauge"
        );
        for (index, key) in pool.keys().iter().enumerate() {
            let _ = writeln!(
                out,
                "openrouter_proxy_{name}{{key=\"{}\",account=\"{}\"}} {}",
                label(&key.id),
                label(&pool.account_id(key.account())),
                figure(pool, index, now)
            );
        }
    }
}
