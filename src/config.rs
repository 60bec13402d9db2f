//! Every environment variable the proxy reads: name, default, parser, and one
//! error that lists all bad values at once.
//!
//! The names of the Python original (`PROXY_API_KEY`, `OPENROUTER_KEYS`, `TIMEZONE`,
//! `UVICORN_*`) keep working so an existing `.env` moves over unchanged.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use hyper::http::uri::{Authority, Scheme};
use hyper::Uri;
use jiff::tz::TimeZone;

use crate::mask::mask;

/// The default daily free-model limit of a key given without `:limit` (OpenRouter's 50/day tier).
pub const DEFAULT_DAILY_LIMIT: u32 = 50;

/// One variable: its name (and aliases), its default as shown in `--help`, and what it means.
pub struct Variable {
    pub names: &'static [&'static str],
    pub default: &'static str,
    pub help: &'static str,
}

/// Every variable, in the order `--help` and `.env.sample` list them.
pub const VARIABLES: &[Variable] = &[
    Variable {
        names: &["PROXY_API_KEY"],
        default: "(required)",
        help: "the one key clients send to the proxy",
    },
    Variable {
        names: &["OPENROUTER_KEYS"],
        default: "(required)",
        help: "comma-separated OpenRouter keys, each optionally key:daily_limit (default limit 50)",
    },
    Variable {
        names: &["TIMEZONE"],
        default: "UTC",
        help: "IANA time zone whose midnight resets the daily counters",
    },
    Variable {
        names: &["UVICORN_HOST", "HOST"],
        default: "0.0.0.0",
        help: "listen address",
    },
    Variable {
        names: &["UVICORN_PORT", "PORT"],
        default: "9999",
        help: "listen port",
    },
    Variable {
        names: &["UVICORN_LOG_LEVEL", "LOG_LEVEL"],
        default: "info",
        help: "log level: trace, debug, info, warning, error (RUST_LOG wins if set)",
    },
    Variable {
        names: &["OPENROUTER_BASE_URL"],
        default: "https://openrouter.ai/api/v1",
        help: "upstream base URL (http:// allowed for local gateways and tests)",
    },
    Variable {
        names: &["MAX_BODY_BYTES"],
        default: "33554432",
        help: "largest request body accepted, in bytes (413 above it)",
    },
    Variable {
        names: &["UPSTREAM_TIMEOUT"],
        default: "300",
        help: "seconds to wait for upstream response headers before answering 504",
    },
    Variable {
        names: &["STREAM_IDLE_TIMEOUT"],
        default: "300",
        help: "seconds an event stream may go without a byte from OpenRouter before it is ended (0 = never)",
    },
    Variable {
        names: &["HEADER_READ_TIMEOUT"],
        default: "30",
        help: "seconds a client has to send its request headers",
    },
    Variable {
        names: &["FREE_RPM"],
        default: "20",
        help: "free-model requests per minute per key (OpenRouter's limit)",
    },
    Variable {
        names: &["FREE_BURST"],
        default: "1",
        help: "free-model requests a key may send back to back (1 spreads them evenly)",
    },
    Variable {
        names: &["MAX_WAIT"],
        default: "30",
        help: "seconds a free-model request may wait for a key to free up before 429",
    },
    Variable {
        names: &["MAX_RETRIES"],
        default: "10",
        help: "retries after a retryable upstream error (0 = none)",
    },
    Variable {
        names: &["MAX_RETRY_TIME"],
        default: "120",
        help: "seconds one request may spend retrying and waiting in all",
    },
    Variable {
        names: &["RETRY_BACKOFF"],
        default: "1",
        help: "seconds of the first backoff; doubles per retry, with jitter, up to 30 s",
    },
    Variable {
        names: &["KEY_PROBE_INTERVAL"],
        default: "300",
        help:
            "seconds between asking OpenRouter's /key about each key's limits and usage (0 = never)",
    },
    Variable {
        names: &["METRICS_PUBLIC"],
        default: "false",
        help: "true serves /metrics without the proxy key (for a scraper on a private network)",
    },
    Variable {
        names: &["LOG_FORMAT"],
        default: "text",
        help: "text, or json for one JSON object per line",
    },
    Variable {
        names: &["STATE_FILE"],
        default: "./openrouter-proxy-state.json",
        help: "where key counts and blocks survive restarts (set it empty to keep nothing)",
    },
    Variable {
        names: &["STATE_FLUSH_INTERVAL"],
        default: "1",
        help: "seconds between state file writes when something changed (0 = only at shutdown)",
    },
    Variable {
        names: &["SHUTDOWN_GRACE"],
        default: "30",
        help: "seconds in-flight requests get to finish after SIGTERM/SIGINT",
    },
];

/// An OpenRouter key as configured: the secret and its explicit daily limit, if any.
#[derive(Clone)]
pub struct KeySpec {
    pub secret: String,
    pub daily_limit: Option<u32>,
}

impl fmt::Debug for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySpec")
            .field("secret", &mask(&self.secret))
            .field("daily_limit", &self.daily_limit)
            .finish()
    }
}

/// The upstream base URL split into the parts every request reuses.
#[derive(Clone, Debug)]
pub struct UpstreamBase {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Path prefix without a trailing slash, e.g. `/api/v1`.
    pub path: String,
}

/// The validated configuration.
#[derive(Clone)]
pub struct Config {
    pub proxy_api_key: String,
    pub keys: Vec<KeySpec>,
    pub timezone_name: String,
    pub timezone: TimeZone,
    pub listen: SocketAddr,
    pub log_level: log::LevelFilter,
    pub upstream: UpstreamBase,
    pub max_body_bytes: usize,
    pub upstream_timeout: Duration,
    pub header_read_timeout: Duration,
    pub stream_idle_timeout: Duration,
    pub free_rpm: u32,
    pub free_burst: u32,
    pub max_wait: Duration,
    pub max_retries: u32,
    pub max_retry_time: Duration,
    pub retry_backoff: Duration,
    pub shutdown_grace: Duration,
    pub key_probe_interval: Duration,
    pub metrics_public: bool,
    pub log_json: bool,
    /// `None` when persistence is off (`STATE_FILE=`).
    pub state_file: Option<std::path::PathBuf>,
    pub state_flush_interval: Duration,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("proxy_api_key", &mask(&self.proxy_api_key))
            .field("keys", &self.keys)
            .field("timezone", &self.timezone_name)
            .field("listen", &self.listen)
            .field("upstream", &self.upstream)
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

/// Reads variables through `lookup`, collecting every problem before failing.
struct Reader<F> {
    lookup: F,
    problems: Vec<String>,
}

impl<F: Fn(&str) -> Option<String>> Reader<F> {
    /// The first non-empty value among `names`, with the name it came from.
    fn raw(&self, names: &[&'static str]) -> Option<(&'static str, String)> {
        names.iter().find_map(|name| {
            (self.lookup)(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .map(|v| (*name, v))
        })
    }

    fn required(&mut self, name: &'static str) -> String {
        if let Some((_, value)) = self.raw(&[name]) {
            return value;
        }
        self.problems.push(format!("{name}: required but not set"));
        String::new()
    }

    fn parsed<T: std::str::FromStr>(
        &mut self,
        names: &[&'static str],
        default: T,
        what: &str,
    ) -> T {
        match self.raw(names) {
            None => default,
            Some((name, value)) => value.parse().unwrap_or_else(|_| {
                self.problems
                    .push(format!("{name}: {value:?} is not {what}"));
                default
            }),
        }
    }

    fn flag(&mut self, name: &'static str) -> bool {
        match self.raw(&[name]).map(|(_, v)| v.to_ascii_lowercase()) {
            None => false,
            Some(v) if ["true", "1", "yes", "on"].contains(&v.as_str()) => true,
            Some(v) if ["false", "0", "no", "off"].contains(&v.as_str()) => false,
            Some(v) => {
                self.problems
                    .push(format!("{name}: {v:?} is not true or false"));
                false
            }
        }
    }

    /// One of `choices` (case-insensitive); the first is the default.
    fn choice(&mut self, name: &'static str, choices: &[&'static str]) -> &'static str {
        let Some((_, value)) = self.raw(&[name]) else {
            return choices[0];
        };
        choices
            .iter()
            .find(|c| c.eq_ignore_ascii_case(&value))
            .copied()
            .unwrap_or_else(|| {
                self.problems.push(format!(
                    "{name}: {value:?} is not one of {}",
                    choices.join(", ")
                ));
                choices[0]
            })
    }

    fn seconds(&mut self, name: &'static str, default: u64) -> Duration {
        Duration::from_secs(self.parsed(&[name], default, "a whole number of seconds"))
    }

    fn positive(&mut self, name: &'static str, default: u32) -> u32 {
        let value = self.parsed(&[name], default, "a positive integer");
        if value == 0 {
            self.problems.push(format!("{name}: must be at least 1"));
            return default;
        }
        value
    }
}

impl Config {
    /// Builds the configuration from `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
        let mut r = Reader {
            lookup,
            problems: Vec::new(),
        };
        let proxy_api_key = r.required("PROXY_API_KEY");
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
            keys,
            timezone_name,
            timezone,
            listen: SocketAddr::new(host, port),
            log_level,
            upstream,
            max_body_bytes: r.parsed(&["MAX_BODY_BYTES"], 32 << 20, "a size in bytes"),
            upstream_timeout: r.seconds("UPSTREAM_TIMEOUT", 300),
            header_read_timeout: r.seconds("HEADER_READ_TIMEOUT", 30),
            stream_idle_timeout: r.seconds("STREAM_IDLE_TIMEOUT", 300),
            free_rpm: r.positive("FREE_RPM", 20),
            free_burst: r.positive("FREE_BURST", 1),
            max_wait: r.seconds("MAX_WAIT", 30),
            max_retries: r.parsed(&["MAX_RETRIES"], 10, "a count"),
            max_retry_time: r.seconds("MAX_RETRY_TIME", 120),
            retry_backoff: r.seconds("RETRY_BACKOFF", 1),
            shutdown_grace: r.seconds("SHUTDOWN_GRACE", 30),
            key_probe_interval: r.seconds("KEY_PROBE_INTERVAL", 300),
            metrics_public: r.flag("METRICS_PUBLIC"),
            log_json: r.choice("LOG_FORMAT", &["text", "json"]) == "json",
            // Set but empty turns persistence off, so this one is read without the empty-means-unset rule.
            state_file: match (r.lookup)("STATE_FILE").map(|v| v.trim().to_owned()) {
                None => Some("./openrouter-proxy-state.json".into()),
                Some(path) if path.is_empty() => None,
                Some(path) => Some(path.into()),
            },
            state_flush_interval: r.seconds("STATE_FLUSH_INTERVAL", 1),
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
                var.help
            );
        }
        out
    }
}

fn parse_keys(raw: &str, problems: &mut Vec<String>) -> Vec<KeySpec> {
    let mut keys: Vec<KeySpec> = Vec::new();
    if raw.is_empty() {
        return keys;
    }
    for (index, entry) in raw.split(',').map(str::trim).enumerate() {
        let position = index + 1;
        let (secret, daily_limit) = match entry.rsplit_once(':') {
            None => (entry, None),
            Some((secret, limit)) => match limit.trim().parse::<u32>() {
                Ok(n) if n > 0 => (secret.trim(), Some(n)),
                _ => {
                    problems.push(format!(
                        "OPENROUTER_KEYS: entry {position} ({}): daily limit {limit:?} is not a positive integer",
                        mask(secret)
                    ));
                    continue;
                }
            },
        };
        if secret.is_empty() {
            problems.push(format!(
                "OPENROUTER_KEYS: entry {position} has an empty key"
            ));
        } else if keys.iter().any(|k| k.secret == secret) {
            problems.push(format!(
                "OPENROUTER_KEYS: entry {position} ({}) duplicates an earlier key",
                mask(secret)
            ));
        } else {
            keys.push(KeySpec {
                secret: secret.to_owned(),
                daily_limit,
            });
        }
    }
    keys
}

fn parse_host<F: Fn(&str) -> Option<String>>(r: &mut Reader<F>) -> IpAddr {
    match r.raw(&["UVICORN_HOST", "HOST"]) {
        None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Some((_, host)) if host.eq_ignore_ascii_case("localhost") => {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        }
        Some((name, host)) => host.trim_matches(['[', ']']).parse().unwrap_or_else(|_| {
            r.problems
                .push(format!("{name}: {host:?} is not an IP address"));
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        }),
    }
}

fn parse_log_level<F: Fn(&str) -> Option<String>>(r: &mut Reader<F>) -> log::LevelFilter {
    let Some((name, level)) = r.raw(&["UVICORN_LOG_LEVEL", "LOG_LEVEL"]) else {
        return log::LevelFilter::Info;
    };
    match level.to_ascii_lowercase().as_str() {
        "trace" => log::LevelFilter::Trace,
        "debug" => log::LevelFilter::Debug,
        "info" => log::LevelFilter::Info,
        "warn" | "warning" => log::LevelFilter::Warn,
        "error" | "critical" => log::LevelFilter::Error,
        "off" => log::LevelFilter::Off,
        _ => {
            r.problems.push(format!(
                "{name}: {level:?} is not one of trace, debug, info, warning, error, critical"
            ));
            log::LevelFilter::Info
        }
    }
}

fn parse_base_url<F: Fn(&str) -> Option<String>>(r: &mut Reader<F>) -> UpstreamBase {
    let default = || UpstreamBase {
        scheme: Scheme::HTTPS,
        authority: Authority::from_static("openrouter.ai"),
        path: "/api/v1".to_owned(),
    };
    let Some((name, raw)) = r.raw(&["OPENROUTER_BASE_URL"]) else {
        return default();
    };
    let parsed = raw.parse::<Uri>().ok().and_then(|uri| {
        let parts = uri.into_parts();
        let scheme = parts
            .scheme
            .filter(|s| *s == Scheme::HTTP || *s == Scheme::HTTPS)?;
        let authority = parts.authority?;
        let path_and_query = parts.path_and_query;
        if path_and_query.as_ref().and_then(|pq| pq.query()).is_some() {
            return None;
        }
        let path = path_and_query
            .as_ref()
            .map_or("", |pq| pq.path())
            .trim_end_matches('/')
            .to_owned();
        Some(UpstreamBase {
            scheme,
            authority,
            path,
        })
    });
    parsed.unwrap_or_else(|| {
        r.problems.push(format!(
            "{name}: {raw:?} is not an http:// or https:// URL without a query"
        ));
        default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn minimal_configuration_takes_the_documented_defaults() {
        let c = config(&[
            ("PROXY_API_KEY", "p"),
            ("OPENROUTER_KEYS", "sk-a:1000,sk-b, sk-c:50"),
        ])
        .unwrap();
        assert_eq!(c.listen, "0.0.0.0:9999".parse().unwrap());
        assert_eq!(c.timezone_name, "UTC");
        assert_eq!(c.upstream.authority.as_str(), "openrouter.ai");
        assert_eq!(c.upstream.path, "/api/v1");
        assert_eq!(c.max_body_bytes, 32 << 20);
        let limits: Vec<_> = c
            .keys
            .iter()
            .map(|k| (k.secret.as_str(), k.daily_limit))
            .collect();
        assert_eq!(
            limits,
            [("sk-a", Some(1000)), ("sk-b", None), ("sk-c", Some(50))]
        );
    }

    #[test]
    fn uvicorn_names_and_their_aliases_are_read() {
        let c = config(&[
            ("PROXY_API_KEY", "p"),
            ("OPENROUTER_KEYS", "k"),
            ("HOST", "127.0.0.1"),
            ("UVICORN_PORT", "8080"),
            ("PORT", "1"),
            ("LOG_LEVEL", "warning"),
            ("OPENROUTER_BASE_URL", "http://127.0.0.1:5000/v1/"),
        ])
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.log_level, log::LevelFilter::Warn);
        assert_eq!(c.upstream.scheme, Scheme::HTTP);
        assert_eq!(c.upstream.path, "/v1");
    }

    #[test]
    fn every_bad_variable_is_reported_at_once_with_keys_masked() {
        let err = config(&[
            (
                "OPENROUTER_KEYS",
                "sk-or-v1-0123456789abcdef:abc,,sk-dup,sk-dup,sk-zero:0",
            ),
            ("TIMEZONE", "Mars/Olympus"),
            ("UVICORN_PORT", "99999"),
            ("OPENROUTER_BASE_URL", "ftp://x"),
            ("FREE_RPM", "0"),
            ("MAX_WAIT", "-1"),
        ])
        .unwrap_err();
        let text = err.to_string();
        for expected in [
            "PROXY_API_KEY: required",
            "entry 1 (sk-or-v1-01…cdef): daily limit \"abc\"",
            "entry 2 has an empty key",
            "entry 4 (…) duplicates",
            "entry 5 (…): daily limit \"0\"",
            "TIMEZONE: \"Mars/Olympus\"",
            "UVICORN_PORT: \"99999\"",
            "OPENROUTER_BASE_URL",
            "FREE_RPM: must be at least 1",
            "MAX_WAIT: \"-1\"",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert!(!text.contains("0123456789abcdef"), "a key leaked:\n{text}");
    }

    #[test]
    fn zero_is_a_valid_duration() {
        let c = config(&[
            ("PROXY_API_KEY", "p"),
            ("OPENROUTER_KEYS", "k"),
            ("MAX_WAIT", "0"),
        ])
        .unwrap();
        assert_eq!(c.max_wait, Duration::ZERO);
    }

    #[test]
    fn help_lists_every_variable_with_its_default() {
        let help = Config::help_text();
        for var in VARIABLES {
            assert!(help.contains(var.names[0]) && help.contains(var.default));
        }
    }
}
