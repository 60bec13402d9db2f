//! What a client sees of itself (`/key_status` and `GET /api/v1/key` with its own
//! key), and the clients as the operator sees them in `/key_status`. A client
//! never sees an OpenRouter key (even masked), an account or another client.

use bytes::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::Response;
use serde_json::{json, Value};

use crate::app::App;
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
    app.clients
        .all()
        .iter()
        .map(|client| client.to_json(date))
        .collect()
}

/// `/key_status` with a client's key: `{"client": {...}}`, nothing else.
#[must_use]
pub fn status(app: &App, index: usize) -> Response<Bytes> {
    json_response(&json!({"client": app.clients.get(index).to_json(today(app))}))
}

/// `GET /api/v1/key` with a client's key, answered in OpenRouter's own shape about the
/// client: its daily budget as the key's limit, its free-request limit as the key's
/// free-model quota. Nothing is sent upstream.
#[must_use]
pub fn key(app: &App, index: usize) -> Response<Bytes> {
    let client = app.clients.get(index);
    let date = today(app);
    let limits = &client.spec.limits;
    let (requests, free) = client.requests_on(date);
    let spent = client.spent.today(date);
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
