//! Logging setup: `RUST_LOG`-style filters (`env_filter`), lines with timestamps, or one JSON object per line with
//! `LOG_FORMAT=json`; `RUST_LOG` wins over `UVICORN_LOG_LEVEL`. Also the once-a-second
//! limit for log lines a client could otherwise repeat at will.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

use super::log_lines::{Format, Lines};

/// Initialises logging before the configuration is validated, so nothing is lost.
/// An invalid level falls back to `info` here; configuration parsing reports it.
pub fn init(env: &HashMap<String, String>) {
    let mut filter = env_filter::Builder::new();
    let level = ["UVICORN_LOG_LEVEL", "LOG_LEVEL"]
        .iter()
        .find_map(|name| env.get(*name))
        .and_then(|level| crate::config::level_named(level))
        .unwrap_or(log::LevelFilter::Info);
    filter.filter_level(level);
    // Dependencies' debug chatter (connection pools, TLS) stays out unless RUST_LOG asks for it.
    for noisy in ["hyper", "hyper_util", "rustls", "h2"] {
        filter.filter_module(noisy, level.min(log::LevelFilter::Info));
    }
    if let Some(spec) = env.get("RUST_LOG") {
        filter.parse(spec);
    }
    let filter = filter.build();
    let json = env
        .get("LOG_FORMAT")
        .is_some_and(|f| f.trim().eq_ignore_ascii_case("json"));
    // Asked once: colours only for a terminal.
    let format = if json {
        Format::Json
    } else if std::io::stderr().is_terminal() {
        Format::Styled
    } else {
        Format::Plain
    };
    let max = filter.filter();
    if log::set_boxed_logger(Box::new(Lines { filter, format })).is_ok() {
        // Lines below this level cost one comparison at the call site and nothing else.
        log::set_max_level(max);
    }
}

/// Lets one log line through a second, so a flood (of connections, of refused keys) cannot
/// flood the log.
#[derive(Default)]
pub struct OncePerSecond(AtomicI64);

impl OncePerSecond {
    /// True for the first call in each second (epoch ms `now_ms`); a lost race says false.
    pub fn allow(&self, now_ms: i64) -> bool {
        // Relaxed: a rate limit for log lines; a lost race prints one line more or less.
        let last = self.0.load(Relaxed);
        now_ms - last >= 1_000
            && self
                .0
                .compare_exchange(last, now_ms, Relaxed, Relaxed)
                .is_ok()
    }
}

/// A count with its noun, for log lines: "1 key", "3 keys".
#[must_use]
pub fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}
