//! What the operator sees of the model aliases: per alias and candidate, today's
//! requests answered and model-scoped failures, and whether it is skipped now
//! (`/key_status` `aliases`, `/metrics` with `alias` and `model` labels).

use std::fmt::Write as _;

use serde_json::Value;

use crate::aliases::Aliases;
use crate::keys::Calendar;

/// Every alias for the operator's `/key_status`.
#[must_use]
pub fn all(aliases: &Aliases, calendar: &Calendar, now_ms: i64) -> Value {
    Value::Array(
        aliases
            .all()
            .iter()
            .map(|alias| alias.to_json(calendar, now_ms))
            .collect(),
    )
}

/// A series: its name, help, and its value from a candidate's (served, failed, skipped now).
type Series = (&'static str, &'static str, fn(u64, u64, bool) -> u64);

/// The per-candidate series of `/metrics` (aliases come from the file, so the labels'
/// values are bounded; the configuration refuses quotes and backslashes in them).
pub fn write_metrics(out: &mut String, aliases: &Aliases, date: u32, now_ms: i64) {
    if aliases.all().is_empty() {
        return;
    }
    let series: [Series; 3] = [
        (
            "alias_served_today",
            "Requests each alias candidate answered this quota day.",
            |served, _, _| served,
        ),
        (
            "alias_failures_today",
            "Failures of each alias candidate that were the model's own this quota day.",
            |_, failed, _| failed,
        ),
        (
            "alias_skipped",
            "1 while alias requests pass the candidate by after such a failure.",
            |_, _, skipped| u64::from(skipped),
        ),
    ];
    for (name, help, value) in series {
        let _ = writeln!(
            out,
            "# HELP openrouter_proxy_{name} {help}\n# TYPE openrouter_proxy_{name} gauge"
        );
        for alias in aliases.all() {
            for (index, candidate) in alias.candidates.iter().enumerate() {
                let (served, failed) = alias.counts_on(index, date);
                let _ = writeln!(
                    out,
                    "openrouter_proxy_{name}{{alias=\"{}\",model=\"{}\"}} {}",
                    alias.name,
                    candidate.model,
                    value(served, failed, candidate.skipped_at(now_ms))
                );
            }
        }
    }
}
