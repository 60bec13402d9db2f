//! Learning each key's real limits and usage from OpenRouter's `GET /key`:
//! at startup (in the background) and every `KEY_PROBE_INTERVAL`, spaced out
//! so the probes themselves never burst.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, AUTHORIZATION};
use hyper::{Request, StatusCode};
use log::warn;
use serde::Deserialize;

use crate::app::App;
use crate::forward::upstream::unreachable_reason;
use crate::keys::{now_ms, ProbeOutcome, ProbeReport};

/// The most of a `/key` answer that is read.
const MAX_ANSWER: usize = 64 * 1024;
/// The longest gap between two probes of one round.
const MAX_SPACING: Duration = Duration::from_secs(2);

#[derive(Deserialize)]
struct KeyAnswer {
    data: KeyData,
}

#[derive(Deserialize)]
struct KeyData {
    label: Option<String>,
    limit_remaining: Option<f64>,
    is_free_tier: Option<bool>,
    free_model_daily_requests: Option<FreeDaily>,
    /// Not documented: used when present to group keys of one account, never relied on.
    creator_user_id: Option<String>,
}

#[derive(Deserialize)]
struct FreeDaily {
    limit: u32,
    used: u32,
    remaining: Option<u32>,
}

/// Reads a `/key` answer body (current or older shape).
#[must_use]
pub fn parse(body: &[u8]) -> Option<ProbeReport> {
    let data = serde_json::from_slice::<KeyAnswer>(body).ok()?.data;
    Some(ProbeReport {
        label: data.label,
        is_free_tier: data.is_free_tier,
        limit_remaining: data.limit_remaining,
        user_id: data.creator_user_id.filter(|u| !u.is_empty()),
        free_daily: data.free_model_daily_requests.map(|f| {
            (
                f.limit,
                f.used,
                f.remaining.unwrap_or(f.limit.saturating_sub(f.used)),
            )
        }),
    })
}

/// Starts the probing task unless `KEY_PROBE_INTERVAL` is 0.
pub fn spawn(app: &Arc<App>) {
    let interval = app.config.key_probe_interval;
    if interval.is_zero() {
        return;
    }
    let app = Arc::clone(app);
    tokio::spawn(async move {
        // The first probe is the first word from OpenRouter: if it cannot get through, say
        // so now rather than at the first request.
        let mut first = true;
        loop {
            // Each round probes the key list in force when it starts (a reload shows next round).
            let pool = app.keys();
            let count = u32::try_from(pool.keys().len()).unwrap_or(u32::MAX);
            let spacing = (interval / count.max(1)).min(MAX_SPACING);
            for key in pool.keys() {
                // With replicas, one of them probes each key per interval and shares the result.
                if let Some(shared) = &app.shared {
                    if !shared.may_probe(&key.fingerprint, interval).await {
                        tokio::time::sleep(spacing).await;
                        continue;
                    }
                }
                let (outcome, unreached) = probe(&app, &key.authorization).await;
                if let (true, Some(reason)) = (std::mem::take(&mut first), unreached) {
                    warn!(
                        "could not reach OpenRouter at startup: {reason}; requests will be answered \
                         502 until it can be reached"
                    );
                }
                let now = now_ms();
                let next_at = now.saturating_add(interval.as_millis() as i64);
                // Applied to the pool in force now, which a reload may have replaced meanwhile.
                let live = app.keys();
                if let Some(index) = live.index_of(&key.fingerprint) {
                    live.apply_probe(index, &outcome, now, next_at);
                }
                if let Some(shared) = &app.shared {
                    shared.publish_probe(&key.fingerprint, &outcome, now, next_at);
                }
                tokio::time::sleep(spacing).await;
            }
            tokio::time::sleep(interval.saturating_sub(spacing * count)).await;
        }
    });
}

/// Asks OpenRouter about the key behind `authorization`; with the outcome, why OpenRouter
/// could not be reached, when it could not.
async fn probe(app: &App, authorization: &HeaderValue) -> (ProbeOutcome, Option<String>) {
    let Ok(uri) = app.config.upstream.uri("/key", None) else {
        return (ProbeOutcome::Failed(0), None);
    };
    let mut request = Request::new(Full::new(Bytes::new()));
    *request.uri_mut() = uri;
    request
        .headers_mut()
        .insert(AUTHORIZATION, authorization.clone());
    let timeout = if app.config.upstream_timeout.is_zero() {
        Duration::from_secs(30)
    } else {
        app.config.upstream_timeout
    };
    let host = app.config.upstream.authority.host();
    let answer = tokio::time::timeout(timeout, async {
        let response = app
            .upstream
            .request(request)
            .await
            .map_err(|err| err.is_connect().then(|| unreachable_reason(&err, host)))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|_| None)?
            .to_bytes();
        Ok((status, body))
    })
    .await;
    match answer {
        Ok(Ok((StatusCode::OK, body))) => (
            parse(&body).map_or(ProbeOutcome::Failed(0), ProbeOutcome::Report),
            None,
        ),
        Ok(Ok((StatusCode::UNAUTHORIZED, _))) => (ProbeOutcome::Unauthorized, None),
        Ok(Ok((status, _))) => (ProbeOutcome::Failed(status.as_u16()), None),
        Ok(Err(unreached)) => (ProbeOutcome::Failed(0), unreached),
        Err(_) => (
            ProbeOutcome::Failed(0),
            Some(format!(
                "{host} did not answer within {} s",
                timeout.as_secs()
            )),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_shape_gives_the_free_model_quota() {
        let body = br#"{"data":{"label":"sk-or-v1-au7...890","limit":100,"limit_remaining":74.5,"limit_reset":"monthly","include_byok_in_limit":false,"usage":25.5,"usage_daily":25.5,"usage_weekly":25.5,"usage_monthly":25.5,"byok_usage":0,"byok_usage_daily":0,"byok_usage_weekly":0,"byok_usage_monthly":0,"is_free_tier":false,"is_management_key":false,"is_provisioning_key":false,"expires_at":"2027-12-31T23:59:59Z","rate_limit":{"requests":-1,"interval":"10s","note":"This field is deprecated and safe to ignore."},"free_model_daily_requests":{"limit":50,"remaining":38,"used":12}}}"#;
        let report = parse(body).unwrap();
        assert_eq!(report.free_daily, Some((50, 12, 38)));
        assert_eq!(report.limit_remaining, Some(74.5));
        assert_eq!(report.is_free_tier, Some(false));
        assert_eq!(report.label.as_deref(), Some("sk-or-v1-au7...890"));
    }

    #[test]
    fn the_older_shape_has_no_free_model_quota() {
        let body = br#"{"data":{"label":"sk-or-v1-116...0ce","limit":5,"usage":0.1015644762,"is_provisioning_key":false,"limit_remaining":4.8984355238,"is_free_tier":false,"rate_limit":{"requests":50,"interval":"10s"}}}"#;
        let report = parse(body).unwrap();
        assert_eq!(report.free_daily, None);
        assert_eq!(report.is_free_tier, Some(false));
        let unlimited =
            parse(br#"{"data":{"limit":null,"limit_remaining":null,"is_free_tier":true}}"#)
                .unwrap();
        assert_eq!(unlimited.limit_remaining, None);
    }

    #[test]
    fn malformed_answers_are_not_reports() {
        for body in [
            &b"not json"[..],
            b"{}",
            br#"{"data":[]}"#,
            br#"{"data":{"free_model_daily_requests":{"limit":"x"}}}"#,
        ] {
            assert_eq!(parse(body), None);
        }
    }
}
