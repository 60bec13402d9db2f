//! The table of every environment variable: names, defaults and meanings,
//! shared by `--help`, the README and `.env.sample`.

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
        default: "(required without clients)",
        help: "the operator's key: no limits, sees everything; may be left unset when CONFIG_FILE defines clients",
    },
    Variable {
        names: &["OPENROUTER_KEYS"],
        default: "(required)",
        help: "comma-separated OpenRouter keys, each key[:daily_limit][@account] (default limit 50; keys with one @account share its quota)",
    },
    Variable {
        names: &["CONFIG_FILE"],
        default: "(openrouter-proxy.toml if present)",
        help: "TOML file of clients (a key per agent, with its own limits) and model aliases; when set, it must exist and be valid",
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
        names: &["UPSTREAM_HTTP2"],
        default: "false",
        help: "true speaks only HTTP/2 upstream, with prior knowledge on http:// (h2c gateways); https:// uses HTTP/2 by ALPN anyway",
    },
    Variable {
        names: &["MAX_BODY_BYTES"],
        default: "33554432",
        help: "largest request body accepted, in bytes (413 above it)",
    },
    Variable {
        names: &["UPSTREAM_TIMEOUT"],
        default: "300",
        help: "seconds to wait for upstream response headers before answering 504; at most 3600",
    },
    Variable {
        names: &["STREAM_IDLE_TIMEOUT"],
        default: "300",
        help: "seconds an answer (event stream or JSON) may go without a byte from OpenRouter before it is ended (0 = never); at most 86400",
    },
    Variable {
        names: &["FIRST_TOKEN_TIMEOUT"],
        default: "180",
        help: "seconds an attempt may go without its first data event (stream) or JSON byte before it is abandoned and retried (0 = no limit); at most 3600",
    },
    Variable {
        names: &["HEADER_READ_TIMEOUT"],
        default: "30",
        help: "seconds a client has, from connecting, to send its first request head, and then each next one (0 = no limit); at most 3600",
    },
    Variable {
        names: &["REQUEST_BODY_TIMEOUT"],
        default: "30",
        help: "seconds a client may pause while sending a request body before it gets a 408 (0 = no limit); at most 3600",
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
        help: "seconds a free-model request may wait for a key to free up before 429; at most 3600",
    },
    Variable {
        names: &["MAX_RETRIES"],
        default: "10",
        help: "retries after a retryable upstream error (0 = none)",
    },
    Variable {
        names: &["MAX_RETRY_TIME"],
        default: "120",
        help: "seconds one request may spend retrying and waiting in all; at most 86400",
    },
    Variable {
        names: &["RETRY_BACKOFF"],
        default: "1",
        help: "seconds of the first backoff; doubles per retry, with jitter, up to 30 s; at most 300",
    },
    Variable {
        names: &["KEY_PROBE_INTERVAL"],
        default: "300",
        help:
            "seconds between asking OpenRouter's /key about each key's limits and usage (0 = never); at most 86400",
    },
    Variable {
        names: &["MAX_CONNECTIONS"],
        default: "(half the descriptor limit)",
        help: "client connections open at once; more are closed at once (the descriptor limit is the process's soft RLIMIT_NOFILE)",
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
        help: "seconds between state file writes when something changed (0 = only at shutdown); at most 3600",
    },
    Variable {
        names: &["REDIS_URL"],
        default: "(none: one process)",
        help: "the Redis or Valkey replicas share quota, limiter and blocks through: redis://[user:password@]host:port[/db], or rediss:// for TLS",
    },
    Variable {
        names: &["REDIS_PREFIX"],
        default: "openrouter-proxy:",
        help: "prefix of every Redis key, so two deployments can share one Redis",
    },
    Variable {
        names: &["REDIS_TIMEOUT_MS"],
        default: "250",
        help: "milliseconds one Redis command may take before the replica decides alone (1-5000)",
    },
    Variable {
        names: &["SHUTDOWN_GRACE"],
        default: "30",
        help: "seconds in-flight requests get to finish after SIGTERM/SIGINT; at most 3600",
    },
];
