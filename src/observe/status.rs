//! The proxy's own read-only endpoints: `/health`, `/key_status`, `/metrics` and the status page.

use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::Response;
use serde_json::{json, Value};

use crate::app::App;
use crate::keys::now_ms;
use bytes::Bytes;

/// `GET /health`: `OK` (the process serves), or with `?format=json` also whether
/// OpenRouter is reachable: `{"status":"OK","upstream":"ok"}`, or `degraded` and
/// `unreachable` while the circuit breaker is open.
#[must_use]
pub fn health(app: &App, query: Option<&str>) -> Response<Bytes> {
    let json = query.is_some_and(|q| q.split('&').any(|pair| pair == "format=json"));
    let (body, content_type) = if json {
        let body = if app.breaker.is_open() {
            r#"{"status":"degraded","upstream":"unreachable"}"#
        } else {
            r#"{"status":"OK","upstream":"ok"}"#
        };
        (body, "application/json")
    } else {
        ("OK", "text/plain; charset=utf-8")
    };
    let mut response = Response::new(Bytes::from_static(body.as_bytes()));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// `GET /key_status`: every key's state, read from atomics only.
#[must_use]
pub fn key_status(app: &App) -> Response<Bytes> {
    let now = now_ms();
    let pool = &app.keys;
    let calendar = pool.calendar();
    let day = calendar.today(now);
    let time = |ms: i64| (ms > 0).then(|| calendar.rfc3339(ms));
    let keys: Vec<Value> = pool
        .keys()
        .iter()
        .enumerate()
        .map(|(index, key)| {
            let used = key.used_on(day.date);
            let limit = key.daily_limit();
            let block = key.block_at(now);
            let totals = &key.totals;
            let load =
                |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
            json!({
                "id": key.id,
                "status": pool.state_of(index, now),
                "daily_used": used,
                "daily_limit": limit,
                "daily_remaining": limit.saturating_sub(used),
                "limit_source": key.limit_source(),
                "probe": key.probe.to_json(|ms| calendar.rfc3339(ms)),
                "blocked_until": block.map(|b| calendar.rfc3339(b.until_ms)),
                "block_reason": block.map(|b| b.reason.as_str()),
                "next_free_slot_in_ms": (key.next_free_slot_ms(now) - now).max(0),
                "last_used": time(key.last_used_ms()),
                "totals": {
                    "requests": load(&totals.requests),
                    "successes": load(&totals.successes),
                    "rate_limited": load(&totals.rate_limited),
                    "errors": load(&totals.errors),
                    "unreached": load(&totals.unreached),
                },
            })
        })
        .collect();
    let body = json!({
        "now": calendar.rfc3339(now),
        "timezone": app.config.timezone_name,
        "next_reset": calendar.rfc3339(day.end_ms),
        "keys": keys,
        "upstream_errors": app.metrics.errors_by_class().iter().map(|(class, n)| ((*class).to_owned(), json!(n))).collect::<serde_json::Map<_, _>>(),
    });
    let mut response = Response::new(Bytes::from(body.to_string()));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// `GET /metrics`: Prometheus text exposition format 0.0.4.
#[must_use]
pub fn metrics(app: &App) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from(app.metrics.render(&app.keys)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// The status page: one self-contained HTML page, embedded in the binary.
#[must_use]
pub fn page() -> Response<Bytes> {
    let mut response = Response::new(Bytes::from_static(include_bytes!("status_page.html")));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}
