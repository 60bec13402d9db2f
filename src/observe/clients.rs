//! What a client sees of itself (`/key_status` and `GET /api/v1/key` with its own
//! key), and the clients as the operator sees them in `/key_status`. A client
//! never sees an OpenRouter key (even masked), an account or another client.

use bytes::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::Response;
use serde_json::{json, Value};

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use crate::app::App;
use crate::clients::{Client, Clients};
use crate::keys::now_ms;

fn json_response(body: &Value) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from(body.to_string()));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The quota day's date now.
fn today(app: &App) -> u32 {
    app.keys().calendar().today(now_ms()).date
}

/// Every client, for the operator's `/key_status`.
#[must_use]
pub fn all(app: &App) -> Value {
    let date = today(app);
    app.clients()
        .all()
        .iter()
        .map(|client| client.to_json(date))
        .collect()
}

/// `/key_status` with a client's key: `{"client": {...}}`, nothing else.
#[must_use]
pub fn status(app: &App, client: &Client) -> Response<Bytes> {
    json_response(&json!({"client": client.to_json(today(app))}))
}

/// `GET /api/v1/key` with a client's key, answered in OpenRouter's own shape about the
/// client: its daily budget as the key's limit, its free-request limit as the key's
/// free-model quota. Nothing is sent upstream.
#[must_use]
pub fn key(app: &App, client: &Client) -> Response<Bytes> {
    let date = today(app);
    let limits = &client.spec.limits;
    let (requests, free) = client.requests_on(date);
    let spent = client.spent_on(date);
    let usd = |nano: u64| nano as f64 / 1e9;
    let limit = limits.nano_usd_per_day.map(usd);
    let free_limit = limits.free_requests_per_day;
    json_response(&json!({"data": {
        "label": client.name(),
        "limit": limit,
        "limit_remaining": limits.nano_usd_per_day.map(|l| usd(l.saturating_sub(spent.cost_nano))),
        "limit_reset": "daily",
        "usage": usd(spent.cost_nano),
        "usage_daily": usd(spent.cost_nano),
        "is_free_tier": false,
        "free_model_daily_requests": {
            "limit": free_limit,
            "used": free,
            "remaining": free_limit.map(|l| l.saturating_sub(free)),
        },
        "requests_today": requests,
        "requests_per_day": limits.requests_per_day,
        "tokens_today": spent.prompt_tokens.saturating_add(spent.completion_tokens),
        "tokens_per_day": limits.tokens_per_day,
    }}))
}

/// The per-client series of `/metrics` (clients come from the file, so the label's
/// values are bounded): today's requests and refusals, lifetime requests, tokens and
/// cost, requests in flight and waiting.
pub fn write_metrics(out: &mut String, clients: &Clients, date: u32) {
    if clients.is_empty() {
        return;
    }
    let each = |out: &mut String,
                name: &str,
                kind: &str,
                help: &str,
                value: &dyn Fn(&Client) -> String| {
        let _ = writeln!(
            out,
            "# HELP openrouter_proxy_{name} {help}\n# TYPE openrouter_proxy_{name} {kind}"
        );
        for client in clients.all() {
            let _ = writeln!(
                out,
                "openrouter_proxy_{name}{{client=\"{}\"}} {}",
                client.name(),
                value(client)
            );
        }
    };
    each(
        out,
        "client_requests_today",
        "gauge",
        "Requests of each client sent upstream this quota day.",
        &|c| c.requests_on(date).0.to_string(),
    );
    each(
        out,
        "client_free_requests_today",
        "gauge",
        "Free-model requests of each client this quota day.",
        &|c| c.requests_on(date).1.to_string(),
    );
    each(
        out,
        "client_requests_total",
        "counter",
        "Requests of each client sent upstream, lifetime.",
        &|c| c.lifetime_requests().to_string(),
    );
    each(
        out,
        "client_cost_usd_total",
        "counter",
        "Cost of each client's answers in USD, lifetime.",
        &|c| (c.counts.spent.lifetime().cost_nano as f64 / 1e9).to_string(),
    );
    each(
        out,
        "client_in_flight",
        "gauge",
        "Requests of each client in flight (a stream until its last byte).",
        &|c| c.counts.in_flight.load(Relaxed).to_string(),
    );
    each(
        out,
        "client_waiting",
        "gauge",
        "Requests of each client waiting for their turn.",
        &|c| c.counts.waiting.load(Relaxed).to_string(),
    );
    let _ = writeln!(out, "# HELP openrouter_proxy_client_tokens_total Prompt and completion tokens of each client's answers, lifetime.\n# TYPE openrouter_proxy_client_tokens_total counter");
    for client in clients.all() {
        let lifetime = client.counts.spent.lifetime();
        for (kind, n) in [
            ("prompt", lifetime.prompt_tokens),
            ("completion", lifetime.completion_tokens),
        ] {
            let _ = writeln!(
                out,
                "openrouter_proxy_client_tokens_total{{client=\"{}\",kind=\"{kind}\"}} {n}",
                client.name()
            );
        }
    }
    let _ = writeln!(out, "# HELP openrouter_proxy_client_refused_today Requests of each client the proxy refused this quota day, by reason.\n# TYPE openrouter_proxy_client_refused_today gauge");
    for client in clients.all() {
        for (reason, n) in client.refused_on(date) {
            let _ = writeln!(
                out,
                "openrouter_proxy_client_refused_today{{client=\"{}\",reason=\"{reason}\"}} {n}",
                client.name()
            );
        }
    }
}
