//! Who is asking: the operator (`PROXY_API_KEY`) or a client of `CONFIG_FILE`.
//!
//! Accepted: `Authorization: Bearer <key>` (scheme case-insensitive), the
//! original proxy's `APIKEY: <key>`, and Anthropic-style `x-api-key: <key>`.
//! The operator key is compared in constant time, a client key looked up by its
//! SHA-256; a header sent twice is refused as ambiguous.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use hyper::header::{HeaderMap, AUTHORIZATION};

use crate::clients::{Caller, Clients};
use crate::forward::upstream::{APIKEY, X_API_KEY};
use crate::observe::logging::OncePerSecond;

/// Who the credentials belong to: the operator (`operator_key`, when set) or one of
/// `clients`.
pub fn authenticate(
    headers: &HeaderMap,
    operator_key: &[u8],
    clients: &Clients,
) -> Result<Caller, &'static str> {
    let mut presented = false;
    let mut caller = None;
    for name in [&AUTHORIZATION, &APIKEY, &X_API_KEY] {
        let mut values = headers.get_all(name).iter();
        let Some(value) = values.next() else { continue };
        if values.next().is_some() {
            return Err("authentication header sent more than once");
        }
        presented = true;
        let credential = if *name == AUTHORIZATION {
            bearer_token(value.as_bytes())
        } else {
            Some(value.as_bytes())
        };
        let Some(credential) = credential else {
            continue;
        };
        // An unset operator key matches nothing, not an empty credential.
        if !operator_key.is_empty() && constant_time_eq(credential, operator_key) {
            caller = Some(Caller::Operator);
        } else if let Some(client) = clients.find(credential) {
            caller = caller.or_else(|| Some(Caller::Client(Arc::clone(client))));
        }
    }
    match (presented, caller) {
        (_, Some(caller)) => Ok(caller),
        (false, None) => Err("missing proxy API key: send Authorization: Bearer <PROXY_API_KEY>"),
        (true, None) => Err("invalid proxy API key"),
    }
}

/// The headers that carried a credential, for the log (never the credential itself).
#[must_use]
pub fn presented_in(headers: &HeaderMap) -> &'static str {
    match (
        headers.contains_key(AUTHORIZATION),
        headers.contains_key(APIKEY),
        headers.contains_key(X_API_KEY),
    ) {
        (false, false, false) => "no key header",
        (true, false, false) => "authorization",
        (false, true, false) => "apikey",
        (false, false, true) => "x-api-key",
        _ => "several key headers",
    }
}

/// At most one WARN line a second about refused proxy keys, so a scanner cannot flood
/// the log; the refusals left out are counted into the next line.
#[derive(Default)]
pub struct RefusalLog {
    once: OncePerSecond,
    // Relaxed: a count for the next log line.
    left_out: AtomicU64,
}

impl RefusalLog {
    /// Logs a refused request to `path` from `peer`, unless a line went out in the last second.
    pub fn refused(&self, path: &str, headers: &HeaderMap, peer: SocketAddr, now_ms: i64) {
        if !self.once.allow(now_ms) {
            self.left_out.fetch_add(1, Relaxed);
            return;
        }
        let left_out = self.left_out.swap(0, Relaxed);
        let more = if left_out > 0 {
            format!(" ({left_out} more refused since the last line)")
        } else {
            String::new()
        };
        log::warn!(
            "refused a request to {path} from {peer}: wrong or missing proxy key ({}){more}",
            presented_in(headers)
        );
    }
}

fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then_some(token)
}

/// Equality whose time depends only on the lengths, not on where the bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn all_three_forms_are_accepted() {
        for pair in [
            ("authorization", "Bearer secret"),
            ("authorization", "bEaReR secret"),
            ("apikey", "secret"),
            ("x-api-key", "secret"),
        ] {
            assert!(
                matches!(
                    authenticate(&headers(&[pair]), b"secret", &Clients::default()),
                    Ok(Caller::Operator)
                ),
                "{pair:?}"
            );
        }
    }

    #[test]
    fn near_misses_are_refused() {
        for pair in [
            ("authorization", "Bearer secre"),
            ("authorization", "Bearer secret2"),
            ("authorization", "Bearer SECRET"),
            ("authorization", "Bearer  secret"),
            ("authorization", "Basic secret"),
            ("authorization", "secret"),
            ("authorization", "Bearer"),
            ("apikey", ""),
        ] {
            assert_eq!(
                authenticate(&headers(&[pair]), b"secret", &Clients::default()).err(),
                Some("invalid proxy API key"),
                "{pair:?}"
            );
        }
        assert!(
            authenticate(&HeaderMap::new(), b"secret", &Clients::default())
                .err()
                .is_some_and(|why| why.starts_with("missing"))
        );
    }

    #[test]
    fn an_unset_operator_key_accepts_no_empty_credential() {
        let h = headers(&[("apikey", "")]);
        assert_eq!(
            authenticate(&h, b"", &Clients::default()).err(),
            Some("invalid proxy API key")
        );
    }

    #[test]
    fn a_duplicated_auth_header_is_refused() {
        let h = headers(&[
            ("authorization", "Bearer secret"),
            ("authorization", "Bearer other"),
        ]);
        assert_eq!(
            authenticate(&h, b"secret", &Clients::default()).err(),
            Some("authentication header sent more than once")
        );
    }
}
