//! Every environment variable the proxy reads: name, default, parser, and one
//! error that lists all bad values at once.
//!
//! The names of the Python original (`PROXY_API_KEY`, `OPENROUTER_KEYS`, `TIMEZONE`,
//! `UVICORN_*`) keep working so an existing `.env` moves over unchanged.

use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::Uri;
use jiff::tz::TimeZone;

use crate::mask::mask;

/// `path` made absolute (from the working directory), for messages an operator acts on.
#[must_use]
pub fn absolute(path: &std::path::Path) -> std::path::PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// The default daily free-model limit of a key given without `:limit` (OpenRouter's 50/day tier).
pub const DEFAULT_DAILY_LIMIT: u32 = 50;

pub mod cli;
pub mod env_file;
mod extra_ca;
pub mod file;
mod read;
mod redis;
mod variables;

pub use file::{AliasSpec, ClientLimits, ClientSpec};
pub use redis::RedisTarget;
pub use variables::{markdown_table, Variable, VARIABLES};

use read::{parse_base_url, parse_host, parse_keys, parse_log_level, Reader};

/// An OpenRouter key as configured: the secret, its explicit daily limit and account, if any.
#[derive(Clone)]
pub struct KeySpec {
    pub secret: String,
    /// The account's daily limit, when this entry gives one.
    pub daily_limit: Option<u32>,
    /// The `@account` name; keys without one are accounts of their own.
    pub account: Option<String>,
}

impl fmt::Debug for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySpec")
            .field("secret", &mask(&self.secret))
            .field("daily_limit", &self.daily_limit)
            .field("account", &self.account)
            .finish()
    }
}

/// The most bytes an account name may have.
pub const MAX_ACCOUNT_NAME: usize = 64;

/// The upstream base URL split into the parts every request reuses.
#[derive(Clone, Debug)]
pub struct UpstreamBase {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Path prefix without a trailing slash, e.g. `/api/v1`.
    pub path: String,
}

impl UpstreamBase {
    /// `{base path}{path}?{query}` on the upstream host, the query forwarded byte for byte.
    pub fn uri(&self, path: &str, query: Option<&str>) -> Result<Uri, hyper::http::Error> {
        let query_len = query.map_or(0, |q| q.len() + 1);
        let mut buf = BytesMut::with_capacity(self.path.len() + path.len() + query_len);
        buf.put_slice(self.path.as_bytes());
        buf.put_slice(path.as_bytes());
        if buf.is_empty() {
            buf.put_u8(b'/');
        }
        if let Some(q) = query {
            buf.put_u8(b'?');
            buf.put_slice(q.as_bytes());
        }
        let path_and_query = PathAndQuery::from_maybe_shared(buf.freeze())?;
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }
}

/// The validated configuration.
#[derive(Clone)]
pub struct Config {
    /// The operator's key; empty when unset (allowed only with clients).
    pub proxy_api_key: String,
    /// The clients of `CONFIG_FILE`, each with its own key and limits.
    pub clients: Vec<ClientSpec>,
    /// The model aliases of `CONFIG_FILE`.
    pub aliases: Vec<AliasSpec>,
    pub keys: Vec<KeySpec>,
    pub timezone_name: String,
    pub timezone: TimeZone,
    pub listen: SocketAddr,
    pub log_level: log::LevelFilter,
    pub upstream: UpstreamBase,
    pub upstream_http2: bool,
    pub max_body_bytes: usize,
    pub upstream_timeout: Duration,
    pub header_read_timeout: Duration,
    pub request_body_timeout: Duration,
    pub stream_idle_timeout: Duration,
    /// How long an attempt may go without its first token (0: no limit).
    pub first_token_timeout: Duration,
    pub free_rpm: u32,
    pub free_burst: u32,
    pub max_wait: Duration,
    pub max_retries: u32,
    pub max_retry_time: Duration,
    pub retry_backoff: Duration,
    pub shutdown_grace: Duration,
    pub key_probe_interval: Duration,
    pub metrics_public: bool,
    /// Connections open at once; more are closed at once.
    pub max_connections: usize,
    pub log_json: bool,
    /// `None` when persistence is off (`STATE_FILE=`).
    pub state_file: Option<std::path::PathBuf>,
    pub state_flush_interval: Duration,
    /// `None` without `REDIS_URL`: one process, its state file its only memory.
    pub redis: Option<RedisTarget>,
    /// `EXTRA_CA_FILE`'s certificates, trusted besides the compiled-in roots (usually none).
    pub extra_ca: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("proxy_api_key", &mask(&self.proxy_api_key))
            .field("keys", &self.keys)
            .field("timezone", &self.timezone_name)
            .field("listen", &self.listen)
            .field("upstream", &self.upstream)
            .field("redis", &self.redis)
            .finish_non_exhaustive()
    }
}

/// Every invalid variable, each with the reason.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for problem in &self.0 {
            writeln!(f, "  {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Builds the configuration from `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
        let mut r = Reader {
            lookup,
            problems: Vec::new(),
        };
        let proxy_api_key = r
            .raw(&["PROXY_API_KEY"])
            .map(|(_, v)| v)
            .unwrap_or_default();
        let file::FileConfig { clients, aliases } =
            file::path_to_read(r.raw(&["CONFIG_FILE"]).map(|(_, v)| v))
                .map(|path| file::read(&path, &proxy_api_key, &mut r.problems))
                .unwrap_or_default();
        if proxy_api_key.is_empty() && clients.is_empty() {
            r.problems.push(
                "PROXY_API_KEY: required but not set (or define clients in CONFIG_FILE)".to_owned(),
            );
        }
        let keys_raw = r.required("OPENROUTER_KEYS");
        let keys = parse_keys(&keys_raw, &mut r.problems);
        let timezone_name = r
            .raw(&["TIMEZONE"])
            .map_or_else(|| "UTC".to_owned(), |(_, v)| v);
        let timezone = TimeZone::get(&timezone_name).unwrap_or_else(|_| {
            r.problems.push(format!(
                "TIMEZONE: {timezone_name:?} is not an IANA time zone name"
            ));
            TimeZone::UTC
        });
        let host = parse_host(&mut r);
        let port = r.parsed(
            &["UVICORN_PORT", "PORT"],
            9999u16,
            "a port number (0-65535)",
        );
        let log_level = parse_log_level(&mut r);
        let upstream = parse_base_url(&mut r);
        let config = Config {
            proxy_api_key,
            clients,
            aliases,
            keys,
            timezone_name,
            timezone,
            listen: SocketAddr::new(host, port),
            log_level,
            upstream,
            upstream_http2: r.flag("UPSTREAM_HTTP2"),
            max_body_bytes: r.parsed(&["MAX_BODY_BYTES"], 32 << 20, "a size in bytes"),
            upstream_timeout: r.seconds("UPSTREAM_TIMEOUT", 300, 3600),
            header_read_timeout: r.seconds("HEADER_READ_TIMEOUT", 30, 3600),
            request_body_timeout: r.seconds("REQUEST_BODY_TIMEOUT", 30, 3600),
            stream_idle_timeout: r.seconds("STREAM_IDLE_TIMEOUT", 300, 86400),
            first_token_timeout: r.seconds("FIRST_TOKEN_TIMEOUT", 180, 3600),
            free_rpm: r.positive("FREE_RPM", 20),
            free_burst: r.positive("FREE_BURST", 1),
            max_wait: r.seconds("MAX_WAIT", 30, 3600),
            max_retries: r.parsed(&["MAX_RETRIES"], 10, "a count"),
            max_retry_time: r.seconds("MAX_RETRY_TIME", 120, 86400),
            retry_backoff: r.seconds("RETRY_BACKOFF", 1, 300),
            shutdown_grace: r.seconds("SHUTDOWN_GRACE", 30, 3600),
            key_probe_interval: r.seconds("KEY_PROBE_INTERVAL", 300, 86400),
            metrics_public: r.flag("METRICS_PUBLIC"),
            max_connections: r.parsed(
                &["MAX_CONNECTIONS"],
                default_max_connections(),
                "a count of connections",
            ),
            log_json: r.choice("LOG_FORMAT", &["text", "json"]) == "json",
            // Set but empty turns persistence off, so this one is read without the empty-means-unset rule.
            state_file: match (r.lookup)("STATE_FILE").map(|v| v.trim().to_owned()) {
                None => Some("./openrouter-proxy-state.json".into()),
                Some(path) if path.is_empty() => None,
                Some(path) => Some(path.into()),
            },
            state_flush_interval: r.seconds("STATE_FLUSH_INTERVAL", 1, 3600),
            redis: redis::parse_redis(&mut r),
            extra_ca: extra_ca::parse_extra_ca(&mut r),
        };
        if r.problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(r.problems))
        }
    }

    /// The configuration of `--help`: each variable with its default.
    #[must_use]
    pub fn help_text() -> String {
        let mut out = String::new();
        for var in VARIABLES {
            let _ = writeln!(
                out,
                "  {:<34} default {:<30} {}",
                var.names.join(" | "),
                var.default,
                var.help.replace('`', "")
            );
        }
        out
    }
}

/// Half the process's descriptor limit (each client connection may hold an upstream one
/// too), at least 64; 4096 where the limit cannot be read.
fn default_max_connections() -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|n| n.parse::<usize>().ok())
        });
    soft.map_or(4096, |n| (n / 2).max(64))
}

/// A level by the names the original proxy (uvicorn) and `log` use.
#[must_use]
pub fn level_named(name: &str) -> Option<log::LevelFilter> {
    Some(match name.trim().to_ascii_lowercase().as_str() {
        "trace" => log::LevelFilter::Trace,
        "debug" => log::LevelFilter::Debug,
        "info" => log::LevelFilter::Info,
        "warn" | "warning" => log::LevelFilter::Warn,
        "error" | "critical" => log::LevelFilter::Error,
        "off" => log::LevelFilter::Off,
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
