//! `GET /api/v1/models` for a client with an allowlist: OpenRouter's list, with only
//! the models the client may use. The one answer the proxy rewrites; every other
//! answer is piped as it comes.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::{CONTENT_ENCODING, CONTENT_LENGTH, TRANSFER_ENCODING};
use hyper::Response;
use serde_json::Value;

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

/// OpenRouter's successful list `answer`, with only the entries `client` may use.
pub async fn filtered(
    answer: Response<Held>,
    client: &Client,
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
    let Some(models) = list.get_mut("data").and_then(Value::as_array_mut) else {
        return Err(ProxyError::UpstreamProtocol(UNREADABLE));
    };
    models.retain(|m| {
        m.get("id")
            .and_then(Value::as_str)
            .is_some_and(|id| client.allows(id))
    });
    let body = Bytes::from(list.to_string());
    // The rewritten body has its own length and no upstream encoding.
    for name in [CONTENT_ENCODING, TRANSFER_ENCODING] {
        parts.headers.remove(name);
    }
    parts.headers.insert(CONTENT_LENGTH, body.len().into());
    Ok(Response::from_parts(parts, body))
}

const UNREADABLE: &str = "OpenRouter's list of models could not be read";
