//! The table of every environment variable: names, defaults and meanings. `--help`,
//! docs/configuration.md (generated from it, checked by a test) and `.env.sample` (checked
//! by a test) all come from here.

/// One variable: its name (and aliases), its default as `--help` shows it, and what it means.
pub struct Variable {
    pub names: &'static [&'static str],
    /// A value, or words in parentheses where there is no single value.
    pub default: &'static str,
    /// One line, Markdown code spans allowed (`--help` prints them without the backticks).
    pub help: &'static str,
    /// What only docs/configuration.md says after `help`: examples, reasons, links.
    pub more: &'static str,
}

/// Every variable, in the order `--help`, docs/configuration.md and `.env.sample` list them.
pub const VARIABLES: &[Variable] = &[
    Variable {
        names: &["PROXY_API_KEY"],
        default: "(required without clients)",
        help: "the operator's key: no limits, sees everything; may be left unset when `CONFIG_FILE` defines clients",
        more: "",
    },
    Variable {
        names: &["OPENROUTER_KEYS"],
        default: "(required)",
        help: "comma-separated OpenRouter keys, each `key[:daily_limit][@account]` (default limit 50); keys with one `@account` share its quota",
        more: "For example `sk-or-v1-a1:1000@alice,sk-or-v1-a2@alice,sk-or-v1-b1`. A key without `@` is an account of its own, a limit on any key of an account is the account's (two different ones are an error); account names are `[A-Za-z0-9_.-]`, at most 64 bytes",
    },
    Variable {
        names: &["CONFIG_FILE"],
        default: "(openrouter-proxy.toml if present)",
        help: "TOML file of clients (a key per agent, with its own limits) and model aliases; when set, it must exist and be valid",
        more: "See [clients.md](clients.md) and [aliases.md](aliases.md); an invalid file stops startup (exit 64) with every problem and its line",
    },
    Variable {
        names: &["TIMEZONE"],
        default: "UTC",
        help: "IANA time zone whose midnight resets the daily counters",
        more: "OpenRouter resets at 00:00 UTC",
    },
    Variable {
        names: &["UVICORN_HOST", "HOST"],
        default: "0.0.0.0",
        help: "listen address",
        more: "`.env.sample` sets `127.0.0.1`; a non-loopback address logs one WARN at startup (plain HTTP: put TLS in front, see [operations.md](operations.md))",
    },
    Variable {
        names: &["UVICORN_PORT", "PORT"],
        default: "9999",
        help: "listen port",
        more: "",
    },
    Variable {
        names: &["UVICORN_LOG_LEVEL", "LOG_LEVEL"],
        default: "info",
        help: "log level: `trace`, `debug`, `info`, `warning`, `error` (`RUST_LOG` wins if set)",
        more: "",
    },
    Variable {
        names: &["OPENROUTER_BASE_URL"],
        default: "https://openrouter.ai/api/v1",
        help: "upstream base URL (`http://` allowed for local gateways and tests)",
        more: "",
    },
    Variable {
        names: &["UPSTREAM_HTTP2"],
        default: "false",
        help: "`true` speaks only HTTP/2 upstream, with prior knowledge on `http://` (h2c gateways); `https://` uses HTTP/2 by ALPN anyway",
        more: "",
    },
    Variable {
        names: &["MAX_BODY_BYTES"],
        default: "33554432",
        help: "largest request body accepted, in bytes (413 above it)",
        more: "",
    },
    Variable {
        names: &["UPSTREAM_TIMEOUT"],
        default: "300",
        help: "seconds to wait for upstream response headers before answering 504; at most 3600",
        more: "",
    },
    Variable {
        names: &["STREAM_IDLE_TIMEOUT"],
        default: "300",
        help: "seconds an answer (event stream or JSON) may go without a byte from OpenRouter before it is ended (0 = never); at most 86400",
        more: "Ended means an error event, a 504, or the connection cut",
    },
    Variable {
        names: &["FIRST_TOKEN_TIMEOUT"],
        default: "180",
        help: "seconds an attempt may go without its first data event (stream) or JSON byte before it is abandoned and retried (0 = no limit); at most 3600",
        more: "Reasoning models stream their thinking as data events, so a streamed request passes as soon as the model starts, however long it thinks; a non-streaming answer sends its body only at the end, so this also bounds a whole non-streaming generation: 3 minutes lets several thousand tokens of a slow free model through. Raise it for long non-streaming jobs",
    },
    Variable {
        names: &["HEADER_READ_TIMEOUT"],
        default: "30",
        help: "seconds a client has, from connecting, to send its first request head, and then each next one (0 = no limit); at most 3600",
        more: "",
    },
    Variable {
        names: &["REQUEST_BODY_TIMEOUT"],
        default: "30",
        help: "seconds a client may pause while sending a request body before it gets a 408 (0 = no limit); at most 3600",
        more: "",
    },
    Variable {
        names: &["FREE_RPM"],
        default: "20",
        help: "free-model requests per minute per key (OpenRouter's limit)",
        more: "",
    },
    Variable {
        names: &["FREE_BURST"],
        default: "1",
        help: "free-model requests a key may send back to back (1 spreads them evenly)",
        more: "",
    },
    Variable {
        names: &["MAX_WAIT"],
        default: "30",
        help: "seconds a free-model request may wait for a key to free up before 429; at most 3600",
        more: "",
    },
    Variable {
        names: &["MAX_RETRIES"],
        default: "10",
        help: "retries after a retryable upstream error (0 = none)",
        more: "",
    },
    Variable {
        names: &["MAX_RETRY_TIME"],
        default: "120",
        help: "seconds one request may spend retrying and waiting in all; at most 86400",
        more: "",
    },
    Variable {
        names: &["RETRY_BACKOFF"],
        default: "1",
        help: "seconds of the first backoff; doubles per retry, with jitter, up to 30 s; at most 300",
        more: "",
    },
    Variable {
        names: &["KEY_PROBE_INTERVAL"],
        default: "300",
        help: "seconds between asking OpenRouter's `/key` about each key's limits and usage (0 = never); at most 86400",
        more: "",
    },
    Variable {
        names: &["MAX_CONNECTIONS"],
        default: "(half the descriptor limit)",
        help: "client connections open at once; more are closed at once (the descriptor limit is the process's soft `RLIMIT_NOFILE`)",
        more: "At least 64 by default; closing logs one WARN a second at most, so a flood of idle connections cannot use up the descriptors",
    },
    Variable {
        names: &["METRICS_PUBLIC"],
        default: "false",
        help: "`true` serves `/metrics` without the proxy key (for a scraper on a private network)",
        more: "",
    },
    Variable {
        names: &["LOG_FORMAT"],
        default: "text",
        help: "`text`, or `json` for one JSON object per line",
        more: "",
    },
    Variable {
        names: &["STATE_FILE"],
        default: "./openrouter-proxy-state.json",
        help: "where key counts and blocks survive restarts (set it empty to keep nothing)",
        more: "A file that cannot be written is said before the port opens, and `/health?format=json` says `degraded` until a write succeeds",
    },
    Variable {
        names: &["STATE_FLUSH_INTERVAL"],
        default: "1",
        help: "seconds between state file writes when something changed (0 = only at shutdown); at most 3600",
        more: "",
    },
    Variable {
        names: &["EXTRA_CA_FILE"],
        default: "(none)",
        help: "PEM file of CA certificates trusted besides the compiled-in roots, for `OPENROUTER_BASE_URL` and `rediss://`",
        more: "For a TLS-inspecting corporate proxy, a private gateway or a Redis with its own CA (curl's `--cacert`, Node's `NODE_EXTRA_CA_CERTS`). A file that cannot be read, is not PEM, or holds no certificate usable as a root stops startup (exit 64)",
    },
    Variable {
        names: &["REDIS_URL"],
        default: "(none: one process)",
        help: "the Redis or Valkey replicas share quota, limiter and blocks through: `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS",
        more: "See [replicas.md](replicas.md). `rediss://` checks the server's certificate against the same roots as OpenRouter's. The URL is never logged with its password",
    },
    Variable {
        names: &["REDIS_PREFIX"],
        default: "openrouter-proxy:",
        help: "prefix of every Redis key, so two deployments can share one Redis",
        more: "",
    },
    Variable {
        names: &["REDIS_TIMEOUT_MS"],
        default: "250",
        help: "milliseconds one Redis command may take before the replica decides alone (1-5000)",
        more: "",
    },
    Variable {
        names: &["SHUTDOWN_GRACE"],
        default: "30",
        help: "seconds in-flight requests get to finish after SIGTERM/SIGINT; at most 3600",
        more: "",
    },
];

/// The variables as the Markdown table of docs/configuration.md: a test checks the page
/// holds exactly this between its markers (and rewrites it with `REGENERATE_DOCS=1`).
#[must_use]
pub fn markdown_table() -> String {
    use std::fmt::Write as _;
    let mut table = String::from("| variable | default | meaning |\n|---|---|---|\n");
    for var in VARIABLES {
        let mut name = format!("`{}`", var.names[0]);
        for alias in &var.names[1..] {
            let _ = write!(name, " (or `{alias}`)");
        }
        let default = match var.default.strip_prefix('(') {
            Some(words) => words.trim_end_matches(')').to_owned(),
            None => format!("`{}`", var.default),
        };
        let more = if var.more.is_empty() {
            String::new()
        } else {
            format!(". {}", var.more)
        };
        let _ = writeln!(table, "| {name} | {default} | {}{more} |", var.help);
    }
    table
}
