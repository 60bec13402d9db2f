//! One proxied request's journey, as named steps (the router has checked the proxy key):
//! check the target → read body → pick key → send → classify → retry or stream back.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use log::{info, log_enabled, Level};

use crate::app::App;
use crate::error::ProxyError;
use crate::forward::attempts::{Journey, Outgoing, Settled};
use crate::forward::upstream::{has_dot_segment, sanitize_request_headers, upstream_uri};
use crate::ingress::model;
use crate::ingress::request_body::{read_capped, ReadError};
use crate::keys::Demand;
use crate::stream::body::ProxyBody;
use crate::stream::relay::SseRelay;

/// Proxies one request to OpenRouter with the best key and pipes the answer back.
pub async fn forward(
    app: &Arc<App>,
    request: Request<Incoming>,
    started: Instant,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (mut parts, body) = request.into_parts();
    let uri = target(app, &parts)?;
    let body = read_body(app, body).await?;
    let model = model_of(&parts.headers, &body)?;
    sanitize_request_headers(&mut parts.headers);
    if log::log_enabled!(Level::Trace) {
        log::trace!("request body: {}", String::from_utf8_lossy(&body));
    }
    let outgoing = Outgoing {
        method: parts.method,
        uri,
        headers: parts.headers,
        body: body.clone(),
        demand: if model.free {
            Demand::Free
        } else {
            Demand::Other
        },
    };
    let mut journey = Journey::new(Arc::clone(app), outgoing, started);
    let settled = journey.settle().await;
    if log_enabled!(Level::Info) {
        let status = match &settled {
            Settled::Stream(response) => response.status(),
            Settled::Answer(response) => response.status(),
            Settled::Failed(err) => err.status(),
        };
        log_request(&journey, model.model.as_deref(), status, started);
    }
    if let Some(at) = journey.headers_at {
        app.metrics.after_upstream.observe(at.elapsed());
    }
    match settled {
        Settled::Stream(response) => {
            let (mut head, upstream) = response.into_parts();
            // The relay may retry, or end the stream with its own event: the client's body is
            // not the upstream's, so its length is not either.
            head.headers.remove(CONTENT_LENGTH);
            Ok(Response::from_parts(
                head,
                ProxyBody::Relay(Box::new(SseRelay::new(upstream, journey))),
            ))
        }
        Settled::Answer(response) => Ok(response.map(ProxyBody::from)),
        Settled::Failed(err) => Err(err),
    }
}

/// The upstream URI for the request's target, or why it cannot be forwarded.
fn target(app: &App, parts: &Parts) -> Result<Uri, ProxyError> {
    if parts.method == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed);
    }
    // HTTP/1 absolute-form (`GET http://host/ HTTP/1.1`) names a host; the proxy never goes anywhere
    // but OPENROUTER_BASE_URL, so it refuses rather than quietly ignore the client's host.
    if parts.version < Version::HTTP_2 && parts.uri.authority().is_some() {
        return Err(ProxyError::BadRequest(
            "absolute-form request targets are not accepted; send a path",
        ));
    }
    let path = parts.uri.path();
    if has_dot_segment(path) {
        return Err(ProxyError::BadRequest(
            "the path must not contain . or .. segments",
        ));
    }
    upstream_uri(&app.config.upstream, path, parts.uri.query())
        .map_err(|_| ProxyError::BadRequest("the request path cannot be forwarded"))
}

/// The whole request body, within `MAX_BODY_BYTES` and `REQUEST_BODY_TIMEOUT`.
async fn read_body(app: &App, body: Incoming) -> Result<Bytes, ProxyError> {
    let config = &app.config;
    read_capped(body, config.max_body_bytes, config.request_body_timeout)
        .await
        .map_err(|err| match err {
            ReadError::TooLarge => ProxyError::PayloadTooLarge {
                limit: config.max_body_bytes,
            },
            ReadError::Stalled => ProxyError::BodyTimeout,
            ReadError::Broken => ProxyError::BadRequest("the request body could not be read"),
        })
}

/// What the body says about the model; a body declared as JSON must be sound JSON.
fn model_of<'b>(headers: &HeaderMap, body: &'b [u8]) -> Result<model::ModelInfo<'b>, ProxyError> {
    let declared_json = headers.get(CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes()
            .windows(4)
            .any(|w| w.eq_ignore_ascii_case(b"json"))
    });
    Ok(match (body.is_empty(), declared_json) {
        (true, _) => model::ModelInfo::default(),
        // A broken JSON body would only earn an upstream 400 that still costs a key's quota.
        (false, true) => {
            model::read(body).map_err(|problem| ProxyError::BadRequest(problem.message()))?
        }
        (false, false) => model::peek(body),
    })
}

/// The one INFO line per request: no body, no full key.
fn log_request(journey: &Journey, model: Option<&str>, status: StatusCode, started: Instant) {
    let key = journey
        .last_key
        .map_or("-", |k| journey.pool().keys()[k].id.as_str());
    info!(
        "{} {} model={} key={} attempts={} status={} {:.1}ms",
        journey.outgoing.method,
        journey.outgoing.uri.path(),
        model.unwrap_or("-"),
        key,
        journey.attempts,
        status.as_u16(),
        started.elapsed().as_secs_f64() * 1e3
    );
}
