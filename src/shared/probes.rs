//! Probes coordinated across the fleet: a short lease in Redis decides which
//! replica asks OpenRouter's `/key` about a key this interval, and the result is
//! shared through the key's hash (without OpenRouter's label for the key).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::{scripts, Shared};
use crate::keys::{ProbeOutcome, ProbeReport};

impl Shared {
    /// Whether this replica probes the key with `fingerprint` now: always while Redis is not
    /// in use; otherwise only the replica that takes the key's lease for `interval`.
    pub async fn may_probe(&self, fingerprint: &str, interval: Duration) -> bool {
        if !self.in_use() {
            return true;
        }
        let lease = redis::cmd("SET")
            .arg(self.names.probe_lease(fingerprint))
            .arg(self.replica())
            .arg("NX")
            .arg("PX")
            .arg(interval.as_millis().max(1) as u64)
            .clone();
        let mut connection = self.connection();
        let taken = tokio::time::timeout(
            self.target.timeout,
            lease.query_async::<Option<String>>(&mut connection),
        )
        .await;
        // No answer: Redis is going away; probing once more alone does no harm.
        !matches!(taken, Ok(Ok(None)))
    }

    /// Shares what a probe of the key with `fingerprint` found at `at_ms`.
    pub fn publish_probe(
        self: &Arc<Self>,
        fingerprint: &str,
        outcome: &ProbeOutcome,
        at_ms: i64,
        next_at_ms: i64,
    ) {
        if !self.in_use() {
            return;
        }
        let mut invocation = scripts::PROBED.prepare_invoke();
        invocation
            .key(self.names.key(fingerprint))
            .arg(at_ms)
            .arg(encode(outcome, next_at_ms));
        self.in_background(invocation, || {});
    }
}

/// A probe's result as the key's hash keeps it.
#[must_use]
pub fn encode(outcome: &ProbeOutcome, next_at_ms: i64) -> String {
    let value = match outcome {
        ProbeOutcome::Report(report) => json!({
            "next": next_at_ms,
            "free_tier": report.is_free_tier,
            "credit": report.limit_remaining,
            "daily": report.free_daily.map(|(l, u, r)| [l, u, r]),
            "user": report.user_id,
        }),
        ProbeOutcome::Unauthorized => json!({"next": next_at_ms, "status": 401}),
        ProbeOutcome::Failed(status) => json!({"next": next_at_ms, "status": status}),
    };
    value.to_string()
}

/// What [`encode`] wrote: the outcome and when the key is asked again.
#[must_use]
pub fn decode(text: &str) -> Option<(ProbeOutcome, i64)> {
    let value: Value = serde_json::from_str(text).ok()?;
    let next = value["next"].as_i64()?;
    let outcome = match value["status"].as_u64() {
        Some(401) => ProbeOutcome::Unauthorized,
        Some(status) => ProbeOutcome::Failed(u16::try_from(status).unwrap_or(0)),
        None => {
            let daily = value["daily"].as_array().and_then(|d| {
                let n = |i: usize| d.get(i)?.as_u64().and_then(|v| u32::try_from(v).ok());
                Some((n(0)?, n(1)?, n(2)?))
            });
            ProbeOutcome::Report(ProbeReport {
                label: None,
                is_free_tier: value["free_tier"].as_bool(),
                limit_remaining: value["credit"].as_f64(),
                free_daily: daily,
                user_id: value["user"].as_str().map(str::to_owned),
            })
        }
    };
    Some((outcome, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_result_survives_the_round_trip_without_its_label() {
        let report = ProbeReport {
            label: Some("sk-or-v1-abc...xyz".into()),
            is_free_tier: Some(false),
            limit_remaining: Some(4.5),
            free_daily: Some((1000, 12, 988)),
            user_id: Some("user_2abc".into()),
        };
        let text = encode(&ProbeOutcome::Report(report.clone()), 77);
        assert!(!text.contains("abc...xyz"));
        let (outcome, next) = decode(&text).unwrap();
        assert_eq!(next, 77);
        assert_eq!(
            outcome,
            ProbeOutcome::Report(ProbeReport {
                label: None,
                ..report
            })
        );
        let (refused, _) = decode(&encode(&ProbeOutcome::Unauthorized, 5)).unwrap();
        assert_eq!(refused, ProbeOutcome::Unauthorized);
    }
}
