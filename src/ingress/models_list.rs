//! `GET /api/v1/models` with model aliases, or for a client with an allowlist:
//! OpenRouter's list with each alias first (as a model entry, so editor plugins can
//! pick it), and only what the client may use. The one answer the proxy rewrites;
//! every other answer is piped as it comes.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::{CONTENT_ENCODING, CONTENT_LENGTH, TRANSFER_ENCODING};
use hyper::Response;
use serde_json::{json, Value};

use crate::aliases::Aliases;
use crate::clients::Client;
use crate::error::ProxyError;
use crate::forward::held::Held;

/// More than OpenRouter's list of every model (a few MB).
const MAX_LIST_BYTES: usize = 64 << 20;

/// Whether a request is for the list of models.
#[must_use]
pub fn is_models_list(method: &hyper::Method, path: &str) -> bool {
    method == hyper::Method::GET && path.ends_with("/models")
}

/// Whether the list needs rewriting: there are aliases, or `client` has an allowlist.
#[must_use]
pub fn rewritten(aliases: &Aliases, client: Option<&Client>) -> bool {
    !aliases.all().is_empty() || client.is_some_and(|c| c.spec.models.is_some())
}

/// OpenRouter's successful list `answer`, with every alias first (its entry is its first
/// candidate's, renamed) and only the entries `client` may use.
pub async fn rewrite(
    answer: Response<Held>,
    aliases: &Aliases,
    client: Option<&Client>,
) -> Result<Response<Bytes>, ProxyError> {
    let (mut parts, start) = answer.into_parts();
    let mut body = start.bytes.to_vec();
    if let Some(rest) = start.rest {
        let rest = http_body_util::Limited::new(rest, MAX_LIST_BYTES)
            .collect()
            .await
            .map_err(|_| ProxyError::UpstreamBroken)?;
        body.extend_from_slice(&rest.to_bytes());
    }
    let mut list: Value =
        serde_json::from_slice(&body).map_err(|_| ProxyError::UpstreamProtocol(UNREADABLE))?;
    let allowed = |id: &str| client.is_none_or(|c| c.allows(id));
    let entries: Vec<Value> = aliases
        .all()
        .iter()
        .filter(|alias| {
            allowed(&alias.name) || alias.candidates.iter().all(|c| allowed(&c.model))
        })
        .map(|alias| {
            let models: Vec<&str> = alias.candidates.iter().map(|c| c.model.as_str()).collect();
            let first = models.iter().find_map(|id| {
                models_list_entry(models_in(&list), id)
            });
            let mut entry = first.unwrap_or_else(|| json!({}));
            entry["id"] = json!(alias.name);
            entry["canonical_slug"] = json!(alias.name);
            entry["name"] = json!(format!("Alias: {}", alias.name));
            entry["description"] = json!(format!(
                "A model alias of the proxy: tries {}, in this order, the first that can answer now.",
                models.join(", ")
            ));
            entry
        })
        .collect();
    let Some(models) = list.get_mut("data").and_then(Value::as_array_mut) else {
        return Err(ProxyError::UpstreamProtocol(UNREADABLE));
    };
    models.retain(|m| m.get("id").and_then(Value::as_str).is_some_and(allowed));
    models.splice(0..0, entries);
    let body = Bytes::from(list.to_string());
    // The rewritten body has its own length and no upstream encoding.
    for name in [CONTENT_ENCODING, TRANSFER_ENCODING] {
        parts.headers.remove(name);
    }
    parts.headers.insert(CONTENT_LENGTH, body.len().into());
    Ok(Response::from_parts(parts, body))
}

const UNREADABLE: &str = "OpenRouter's list of models could not be read";

/// The entries of `list`'s `data`.
fn models_in(list: &Value) -> &[Value] {
    list.get("data")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The entry of model `id` in `models`, copied.
fn models_list_entry(models: &[Value], id: &str) -> Option<Value> {
    models
        .iter()
        .find(|m| m.get("id").and_then(Value::as_str) == Some(id))
        .cloned()
}
