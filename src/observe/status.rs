//! The proxy's own read-only endpoints: `/health`, `/key_status`, `/metrics` and the status page.

use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::Response;
use serde_json::{json, Value};

use crate::app::App;
use crate::keys::{now_ms, KeyPool};
use bytes::Bytes;

/// `GET /health`: `OK` (the process serves), or with `?format=json` also whether
/// OpenRouter is reachable: `{"status":"OK","upstream":"ok"}`, or `degraded` and
/// `unreachable` while the circuit breaker is open; with `REDIS_URL` also whether Redis
/// is in use (`"redis":"ok"`, or `"unreachable"` and `degraded` while the replica decides
/// alone); with `STATE_FILE`, whether it can be written (`"state":"kept"`, or
/// `"not kept"` and `degraded`).
#[must_use]
pub fn health(app: &App, query: Option<&str>) -> Response<Bytes> {
    let json = query.is_some_and(|q| q.split('&').any(|pair| pair == "format=json"));
    let (body, content_type) = if json {
        let upstream_ok = !app.breaker.is_open();
        let redis_ok = app.shared.as_ref().map(|shared| shared.in_use());
        let state_ok = app
            .config
            .state_file
            .as_ref()
            .map(|_| app.state_kept.load(std::sync::atomic::Ordering::Relaxed));
        let healthy = upstream_ok && redis_ok != Some(false) && state_ok != Some(false);
        let mut body = json!({
            "status": if healthy { "OK" } else { "degraded" },
            "upstream": if upstream_ok { "ok" } else { "unreachable" },
        });
        if let Some(ok) = redis_ok {
            body["redis"] = json!(if ok { "ok" } else { "unreachable" });
        }
        if let Some(ok) = state_ok {
            body["state"] = json!(if ok { "kept" } else { "not kept" });
        }
        (Bytes::from(body.to_string()), "application/json")
    } else {
        (Bytes::from_static(b"OK"), "text/plain; charset=utf-8")
    };
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// `GET /key_status`: every key's and account's state, read from atomics only.
#[must_use]
pub fn key_status(app: &App) -> Response<Bytes> {
    let now = now_ms();
    let pool = &*app.keys();
    let calendar = pool.calendar();
    let day = calendar.today(now);
    let keys: Vec<Value> = (0..pool.keys().len())
        .map(|index| key_json(pool, index, now))
        .collect();
    let accounts: Vec<Value> = pool
        .live_accounts()
        .into_iter()
        .map(|(index, members)| account_json(pool, index, &members, now))
        .collect();
    let body = json!({
        "now": calendar.rfc3339(now),
        "timezone": app.config.timezone_name,
        "next_reset": calendar.rfc3339(day.end_ms),
        "keys": keys,
        "accounts": accounts,
        "history": pool.history.to_json(now),
        "clients": super::clients::all(app),
        "aliases": super::aliases::all(&app.aliases(), calendar, now),
        "upstream_errors": app.metrics.errors_by_class().iter().map(|(class, n)| ((*class).to_owned(), json!(n))).collect::<serde_json::Map<_, _>>(),
    });
    let mut response = Response::new(Bytes::from(body.to_string()));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The quota fields a key shares with its account: its account's.
fn quota_json(pool: &KeyPool, account: usize, now: i64) -> serde_json::Map<String, Value> {
    let calendar = pool.calendar();
    let day = calendar.today(now);
    let a = &pool.accounts()[account];
    let used = a.used_on(day.date);
    let limit = a.daily_limit();
    let mut fields = serde_json::Map::new();
    fields.insert("daily_used".into(), json!(used));
    fields.insert("daily_limit".into(), json!(limit));
    fields.insert("daily_remaining".into(), json!(limit.saturating_sub(used)));
    fields.insert("limit_source".into(), json!(a.limit_source()));
    fields.insert(
        "next_free_slot_in_ms".into(),
        json!((a.next_free_slot_ms(now) - now).max(0)),
    );
    fields
}

fn key_json(pool: &KeyPool, index: usize, now: i64) -> Value {
    let calendar = pool.calendar();
    let key = &pool.keys()[index];
    let block = pool.block_shown(index, now);
    let totals = key.totals.values();
    let mut fields = quota_json(pool, key.account(), now);
    fields.extend(
        json!({
            "id": key.id,
            "account": pool.account_id(key.account()),
            "status": pool.state_of(index, now),
            "probe": key.probe.to_json(|ms| calendar.rfc3339(ms)),
            "blocked_until": block.map(|b| calendar.rfc3339(b.until_ms)),
            "block_reason": block.map(|b| b.reason.as_str()),
            "last_used": (key.last_used_ms() > 0).then(|| calendar.rfc3339(key.last_used_ms())),
            "usage": key.spent.to_json(calendar.today(now).date),
            "totals": {
                "requests": totals[0],
                "successes": totals[1],
                "rate_limited": totals[2],
                "errors": totals[3],
                "unreached": totals[4],
            },
        })
        .as_object()
        .cloned()
        .unwrap_or_default(),
    );
    Value::Object(fields)
}

fn account_json(pool: &KeyPool, index: usize, members: &[usize], now: i64) -> Value {
    let calendar = pool.calendar();
    let account = &pool.accounts()[index];
    let block = account.block_at(now).or_else(|| account.free_block_at(now));
    let mut fields = quota_json(pool, index, now);
    fields.extend(
        json!({
            "id": pool.account_id(index),
            "keys": members.iter().map(|&k| pool.keys()[k].id.as_str()).collect::<Vec<_>>(),
            "status": pool.account_state(index, now),
            "blocked_until": block.map(|b| calendar.rfc3339(b.until_ms)),
            "block_reason": block.map(|b| b.reason.as_str()),
            "learned": account.learned.load(std::sync::atomic::Ordering::Relaxed),
            "usage": account.spent.to_json(calendar.today(now).date),
            "history": account.history.to_json(now),
        })
        .as_object()
        .cloned()
        .unwrap_or_default(),
    );
    Value::Object(fields)
}

/// `GET /metrics`: Prometheus text exposition format 0.0.4.
#[must_use]
pub fn metrics(app: &App) -> Response<Bytes> {
    let keys = app.keys();
    let mut text = app
        .metrics
        .render(&keys, app.shared.as_ref().map(|s| (s.in_use(), s.fleet())));
    let now = now_ms();
    let date = keys.calendar().today(now).date;
    super::clients::write_metrics(&mut text, &app.clients(), date);
    super::aliases::write_metrics(&mut text, &app.aliases(), date, now);
    let mut response = Response::new(Bytes::from(text));
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
