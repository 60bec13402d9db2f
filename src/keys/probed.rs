//! What OpenRouter's `GET /key` last said about a key, kept in atomics so
//! selection and `/key_status` read it without a lock.

use std::sync::atomic::{
    AtomicBool, AtomicI64, AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed,
};
use std::sync::OnceLock;

use serde_json::{json, Value};

// Independent flags and figures, each read on its own: `Relaxed` throughout.

/// A successful probe's findings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProbeReport {
    pub label: Option<String>,
    pub is_free_tier: Option<bool>,
    /// Remaining credit under the key's own cap in USD; `None` = no cap.
    pub limit_remaining: Option<f64>,
    /// Today's free-model quota of the account: (limit, used, remaining).
    pub free_daily: Option<(u32, u32, u32)>,
    /// The OpenRouter user the key belongs to, when the answer names it.
    pub user_id: Option<String>,
}

/// How a probe ended.
#[derive(Clone, Debug, PartialEq)]
pub enum ProbeOutcome {
    Report(ProbeReport),
    /// 401: the key is not valid (now).
    Unauthorized,
    /// Anything else: an HTTP status, or 0 for a network error, timeout or unreadable body.
    Failed(u16),
}

const ABSENT: u32 = u32::MAX;

/// The last probe of one key. `repr(C)`: the flags a pick reads come first (see `KeySlot`).
#[derive(Default)]
#[repr(C)]
pub struct ProbeState {
    /// Until when the flags below hold without a newer probe.
    pub(crate) next_at_ms: AtomicI64,
    invalid: AtomicBool,
    no_credit: AtomicBool,
    at_ms: AtomicI64,
    /// 0 unknown, 1 false, 2 true.
    is_free_tier: AtomicU8,
    /// `f64` bits; NaN = no cap or unknown.
    limit_remaining: AtomicU64,
    free: [AtomicU32; 3],
    /// 0 = the last probe succeeded; else its HTTP status, or 1 for a network-level failure.
    error: AtomicU16,
    label: OnceLock<String>,
}

impl ProbeState {
    /// The key answered 401 at its last probe.
    #[must_use]
    pub fn invalid(&self) -> bool {
        self.invalid.load(Relaxed)
    }

    /// The key's credit cap is used up: no paid-model requests until a probe shows credit.
    #[must_use]
    pub fn no_credit(&self) -> bool {
        self.no_credit.load(Relaxed)
    }

    /// When the last probe's answer arrived (epoch ms; 0 = never).
    #[must_use]
    pub fn at_ms(&self) -> i64 {
        self.at_ms.load(Relaxed)
    }

    pub(crate) fn record(&self, outcome: &ProbeOutcome, now_ms: i64, next_at_ms: i64) {
        self.at_ms.store(now_ms, Relaxed);
        self.next_at_ms.store(next_at_ms, Relaxed);
        match outcome {
            ProbeOutcome::Report(report) => {
                self.error.store(0, Relaxed);
                self.invalid.store(false, Relaxed);
                if let Some(label) = &report.label {
                    let _ = self.label.set(label.clone());
                }
                self.is_free_tier.store(
                    report.is_free_tier.map_or(0, |free| 1 + u8::from(free)),
                    Relaxed,
                );
                self.limit_remaining.store(
                    report.limit_remaining.unwrap_or(f64::NAN).to_bits(),
                    Relaxed,
                );
                self.no_credit.store(
                    report.limit_remaining.is_some_and(|credit| credit <= 0.0),
                    Relaxed,
                );
                let (limit, used, remaining) =
                    report.free_daily.unwrap_or((ABSENT, ABSENT, ABSENT));
                for (slot, value) in self.free.iter().zip([limit, used, remaining]) {
                    slot.store(value, Relaxed);
                }
            }
            ProbeOutcome::Unauthorized => {
                self.error.store(401, Relaxed);
                self.invalid.store(true, Relaxed);
            }
            // Network errors and odd answers change nothing but the error shown.
            ProbeOutcome::Failed(status) => self.error.store((*status).max(1), Relaxed),
        }
    }

    /// Takes over what `other` (the same key in the pool a reload replaced) last learned.
    pub(crate) fn copy_from(&self, other: &ProbeState) {
        let copy_i64 = |to: &AtomicI64, from: &AtomicI64| to.store(from.load(Relaxed), Relaxed);
        copy_i64(&self.next_at_ms, &other.next_at_ms);
        copy_i64(&self.at_ms, &other.at_ms);
        self.invalid.store(other.invalid.load(Relaxed), Relaxed);
        self.no_credit.store(other.no_credit.load(Relaxed), Relaxed);
        self.is_free_tier
            .store(other.is_free_tier.load(Relaxed), Relaxed);
        self.limit_remaining
            .store(other.limit_remaining.load(Relaxed), Relaxed);
        for (to, from) in self.free.iter().zip(&other.free) {
            to.store(from.load(Relaxed), Relaxed);
        }
        self.error.store(other.error.load(Relaxed), Relaxed);
        if let Some(label) = other.label.get() {
            let _ = self.label.set(label.clone());
        }
    }

    /// The `probe` object of `/key_status`; `format_time` renders epoch ms.
    #[must_use]
    pub fn to_json(&self, format_time: impl Fn(i64) -> String) -> Value {
        let at = self.at_ms.load(Relaxed);
        if at == 0 {
            return Value::Null;
        }
        let error = self.error.load(Relaxed);
        if error != 0 {
            let what = match error {
                1 => "no usable answer (network error, timeout or malformed body)".to_owned(),
                401 => "401: the key was refused".to_owned(),
                status => format!("HTTP {status}"),
            };
            return json!({"at": format_time(at), "error": what});
        }
        let [limit, used, remaining] = self.free.each_ref().map(|v| v.load(Relaxed));
        let credit = f64::from_bits(self.limit_remaining.load(Relaxed));
        json!({
            "at": format_time(at),
            "label": self.label.get(),
            "is_free_tier": match self.is_free_tier.load(Relaxed) { 0 => Value::Null, v => Value::Bool(v == 2) },
            "limit_remaining": if credit.is_nan() { Value::Null } else { json!(credit) },
            "free_daily": if limit == ABSENT { Value::Null } else { json!({"limit": limit, "used": used, "remaining": remaining}) },
        })
    }
}
