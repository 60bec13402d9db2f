//! One proxied request's journey, as named steps:
//! authenticate → read body → pick key → send → stream back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, AUTHORIZATION};
use hyper::{Method, Request, Response, StatusCode, Uri};
use log::{info, log_enabled, Level};

use crate::auth::authenticate;
use crate::body::{read_capped, ProxyBody, ReadError};
use crate::config::Config;
use crate::error::ProxyError;
use crate::keys::{now_ms, Demand, KeyPool, Outcome, Shortage, Unavailable};
use crate::model;
use crate::upstream::{
    build_client, has_dot_segment, sanitize_request_headers, strip_hop_by_hop, upstream_uri,
    UpstreamClient,
};

/// Everything a request needs, built once at startup and shared.
pub struct App {
    pub config: Config,
    pub keys: KeyPool,
    client: UpstreamClient,
}

impl App {
    #[must_use]
    pub fn new(config: Config) -> Arc<App> {
        let keys = KeyPool::from_config(&config);
        Arc::new(App {
            config,
            keys,
            client: build_client(),
        })
    }
}

/// What the proxy will send upstream, kept so every attempt can be rebuilt from it.
struct Outgoing {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Outgoing {
    fn request(&self, authorization: &hyper::header::HeaderValue) -> Request<Full<Bytes>> {
        // Cloning `body` is a reference count; the header map clone shares its values' bytes.
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
            .headers_mut()
            .insert(AUTHORIZATION, authorization.clone());
        request
    }
}

/// Proxies one request to OpenRouter with the best key and pipes the answer back.
pub async fn forward(
    app: &App,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let started = Instant::now();
    let (mut parts, body) = request.into_parts();
    authenticate(&parts.headers, app.config.proxy_api_key.as_bytes())
        .map_err(ProxyError::Unauthorized)?;
    if parts.method == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed);
    }
    let path = parts.uri.path();
    if has_dot_segment(path) {
        return Err(ProxyError::BadRequest(
            "the path must not contain . or .. segments",
        ));
    }
    let uri = upstream_uri(&app.config.upstream, path, parts.uri.query())
        .map_err(|_| ProxyError::BadRequest("the request path cannot be forwarded"))?;
    let body = read_capped(body, app.config.max_body_bytes)
        .await
        .map_err(|err| match err {
            ReadError::TooLarge => ProxyError::PayloadTooLarge {
                limit: app.config.max_body_bytes,
            },
            ReadError::Broken => ProxyError::BadRequest("the request body could not be read"),
        })?;
    let model = if body.is_empty() {
        model::ModelInfo::default()
    } else {
        model::peek(&body)
    };
    let demand = if model.free {
        Demand::Free
    } else {
        Demand::Other
    };
    sanitize_request_headers(&mut parts.headers);
    let outgoing = Outgoing {
        method: parts.method,
        uri,
        headers: parts.headers,
        body: body.clone(),
    };

    let key = app
        .keys
        .acquire(demand, app.config.max_wait)
        .await
        .map_err(|u| no_key(app, u))?;
    let slot = &app.keys.keys()[key];
    let result = send(app, outgoing.request(&slot.authorization)).await;
    let outcome = match &result {
        Ok(r) if r.status().is_success() => Outcome::Success,
        Ok(r) if r.status() == StatusCode::TOO_MANY_REQUESTS => Outcome::RateLimited,
        _ => Outcome::Error,
    };
    app.keys.record(key, outcome);
    if log_enabled!(Level::Info) {
        let status = result
            .as_ref()
            .map_or_else(ProxyError::status, Response::status);
        info!(
            "{} {} model={} key={} attempts=1 status={} {:.1}ms",
            outgoing.method,
            outgoing.uri.path(),
            model.model.as_deref().unwrap_or("-"),
            slot.id,
            status.as_u16(),
            started.elapsed().as_secs_f64() * 1e3
        );
    }
    let (mut head, incoming) = result?.into_parts();
    strip_hop_by_hop(&mut head.headers);
    Ok(Response::from_parts(head, ProxyBody::Upstream(incoming)))
}

/// Sends one attempt and waits (bounded by `UPSTREAM_TIMEOUT`, 0 = no bound) for its headers.
async fn send(app: &App, request: Request<Full<Bytes>>) -> Result<Response<Incoming>, ProxyError> {
    let pending = app.client.request(request);
    let result = if app.config.upstream_timeout.is_zero() {
        pending.await
    } else {
        tokio::time::timeout(app.config.upstream_timeout, pending)
            .await
            .map_err(|_| ProxyError::UpstreamTimeout)?
    };
    result.map_err(|err| {
        log::warn!("upstream request failed: {err:?}");
        ProxyError::UpstreamUnreachable
    })
}

/// The 429 the client gets when no key can serve in time.
fn no_key(app: &App, unavailable: Unavailable) -> ProxyError {
    let now = now_ms();
    let wait = Duration::from_millis((unavailable.until_ms - now).max(0) as u64);
    let when = app.keys.calendar().rfc3339(unavailable.until_ms);
    let message = match unavailable.reason {
        Shortage::Throttled => format!(
            "all keys are throttled by the free-model per-minute limit; next free slot at {when}"
        ),
        Shortage::DailyLimit => {
            format!("all keys reached their daily free-model limit until {when}")
        }
        Shortage::Blocked => format!("all keys are blocked after upstream refusals until {when}"),
    };
    ProxyError::NoKey {
        message,
        retry_after_secs: wait.as_millis().div_ceil(1000).max(1) as u64,
    }
}
