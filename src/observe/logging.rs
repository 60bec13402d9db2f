//! Logging setup: `env_logger` with timestamps, or one JSON object per line with
//! `LOG_FORMAT=json`; `RUST_LOG` wins over `UVICORN_LOG_LEVEL`. Also the once-a-second
//! limit for log lines a client could otherwise repeat at will.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

/// Initialises logging before the configuration is validated, so nothing is lost.
/// An invalid level falls back to `info` here; configuration parsing reports it.
pub fn init(env: &HashMap<String, String>) {
    let mut builder = env_logger::Builder::new();
    let level = ["UVICORN_LOG_LEVEL", "LOG_LEVEL"]
        .iter()
        .find_map(|name| env.get(*name))
        .and_then(|level| crate::config::level_named(level))
        .unwrap_or(log::LevelFilter::Info);
    builder.filter_level(level);
    // Dependencies' debug chatter (connection pools, TLS) stays out unless RUST_LOG asks for it.
    for noisy in ["hyper", "hyper_util", "rustls", "h2"] {
        builder.filter_module(noisy, level.min(log::LevelFilter::Info));
    }
    if let Some(spec) = env.get("RUST_LOG") {
        builder.parse_filters(spec);
    }
    builder.format_timestamp_millis();
    let json = env
        .get("LOG_FORMAT")
        .is_some_and(|f| f.trim().eq_ignore_ascii_case("json"));
    if !json && !std::io::stderr().is_terminal() {
        // Not a terminal: write plain lines and pass them straight through, instead of
        // styling every request's line and then scanning it again to strip the styles.
        builder.write_style(env_logger::WriteStyle::Always);
        // A pipe target: env_logger then writes without asking the terminal about colours
        // on every line (one failing TCGETS ioctl a request, seen with strace).
        builder.target(env_logger::Target::Pipe(Box::new(std::io::stderr())));
        builder.format(|buf, record| {
            use std::io::Write as _;
            writeln!(
                buf,
                "[{} {:<5} {}] {}",
                buf.timestamp_millis(),
                record.level(),
                record.target(),
                record.args()
            )
        });
    }
    if json {
        builder.format(|buf, record| {
            use std::io::Write as _;
            let line = serde_json::json!({
                "ts": buf.timestamp_millis().to_string(),
                "level": record.level().as_str(),
                "target": record.target(),
                "msg": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    let _ = builder.try_init();
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
