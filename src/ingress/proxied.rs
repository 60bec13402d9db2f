//! One proxied request's journey, as named steps (the router has checked the proxy key):
//! check the target → read body → pick key → send → classify → retry or stream back.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, Uri, Version};
use log::Level;

use crate::aliases::Alias;
use crate::app::App;
use crate::clients::admission::{Ticket, Today};
use crate::clients::Caller;
use crate::error::ProxyError;
use crate::forward::attempts::{Journey, Outgoing, Settled};
use crate::forward::held::Held;
use crate::forward::route::Route;
use crate::forward::upstream::{has_dot_segment, sanitize_request_headers, upstream_uri};
use crate::ingress::detach::detach;
use crate::ingress::request_body::{read_capped, ReadError, RequestBody};
use crate::ingress::{model, models_list};
use crate::keys::now_ms;
use crate::keys::Demand;
use crate::stream::accounted::{Accounted, Ended, Served};
use crate::stream::body::ProxyBody;
use crate::stream::relay::SseRelay;

/// The candidate model that answered a request for a model alias.
const X_PROXY_MODEL: HeaderName = HeaderName::from_static("x-proxy-model");

/// Proxies one request to OpenRouter with the best key and pipes the answer back.
pub async fn forward(
    app: &Arc<App>,
    request: Request<Incoming>,
    caller: Caller,
    started: Instant,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (mut parts, body) = request.into_parts();
    let uri = target(app, &parts)?;
    let body = detach(&mut parts.headers, read_body(app, body).await?);
    let model = model_of(&parts.headers, &body)?;
    let alias = alias_of(app, &model);
    let ticket = admit(app, &caller, &model, alias.as_deref()).await?;
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
    let route = match (alias, &model.model) {
        (Some(alias), Some(Cow::Borrowed(name))) => {
            Some(Route::new(alias, &body, name.as_bytes(), now_ms()))
        }
        _ => None,
    };
    let model = model.model.map(|name| match name {
        // The name as it lies in the request body: a slice of it, not a copy.
        Cow::Borrowed(name) => body.slice_ref(name.as_bytes()),
        Cow::Owned(name) => Bytes::from(name),
    });
    let mut journey = Journey::new(Arc::clone(app), outgoing, started);
    if let Some(route) = route {
        journey.follow_route(route);
    }
    if let Some(ticket) = &ticket {
        journey.fair_share = (Arc::clone(&ticket.counts.name), ticket.weight);
        if let (true, Caller::Client(client)) = (ticket.counted_at_pick(), &caller) {
            journey.count_client = Some(Arc::clone(client));
        }
    }
    let served = Served {
        method: journey.outgoing.method.clone(),
        uri: journey.outgoing.uri.clone(),
        model,
        tried: None,
        status: 0,
        started,
        free: journey.outgoing.demand == Demand::Free,
        refused_by_proxy: false,
        pool: journey.pool_arc(),
        key: None,
        attempts: 0,
        ended_early: None,
        ticket,
        waited: Duration::ZERO,
    };
    let mut in_flight = InFlight {
        journey: Some(journey),
        served: Some(served),
        app: Arc::clone(app),
    };
    let settled = in_flight.journey().settle().await;
    let (journey, mut served) = in_flight.hand_over();
    if let Some(at) = journey.headers_at {
        app.metrics.after_upstream.observe(at.elapsed());
    }
    served.refused_by_proxy = matches!(settled, Settled::Failed(ProxyError::NoKey { .. }));
    // The candidate that answered an alias request (a stream that fails over later, inside
    // itself, names the first one here; its log line names the last).
    let proxy_model = journey
        .route
        .as_ref()
        .and_then(|route| HeaderValue::from_str(route.model()).ok());
    served.ended_early = match &settled {
        Settled::Failed(ProxyError::NoFirstToken) => Some(Ended::FirstTokenTimeout),
        Settled::Failed(ProxyError::UpstreamStalled { .. }) => Some(Ended::IdleTimeout),
        _ => None,
    };
    let mut response = match settled {
        Settled::Stream(response) => {
            let (mut head, upstream) = response.into_parts();
            // The relay may retry, or end the stream with its own event: the client's body is
            // not the upstream's, so its length is not either.
            head.headers.remove(CONTENT_LENGTH);
            let relay = ProxyBody::Relay(Box::new(SseRelay::new(upstream, journey)));
            Response::from_parts(head, relay)
        }
        Settled::Answer(response) => answer(app, &caller, &served, response).await,
        Settled::Failed(err) => err.into_response().map(ProxyBody::from),
    };
    if let Some(value) = proxy_model {
        response.headers_mut().insert(X_PROXY_MODEL, value);
    }
    served.status = response.status().as_u16();
    // Recorded (log line, usage, request metrics) when the response ends, not now.
    Ok(response
        .map(|body| ProxyBody::Accounted(Box::new(Accounted::new(body, Arc::clone(app), served)))))
}

/// A request whose journey upstream is under way. If the client leaves before the response
/// head (a client timeout on a long generation drops this future), the request still gets
/// its record: the end line (`ended=client_closed`, status 499 as nginx logs it) and metrics.
struct InFlight {
    journey: Option<Journey>,
    served: Option<Served>,
    app: Arc<App>,
}

impl InFlight {
    fn journey(&mut self) -> &mut Journey {
        self.journey
            .as_mut()
            .expect("the journey is handed over once, at the end")
    }

    /// The journey settled: the response's own record takes over.
    fn hand_over(mut self) -> (Journey, Served) {
        self.take().expect("handed over once")
    }

    /// The journey and its record, brought up to date with the key and attempts.
    fn take(&mut self) -> Option<(Journey, Served)> {
        let (journey, mut served) = (self.journey.take()?, self.served.take()?);
        (served.pool, served.key) = (journey.pool_arc(), journey.last_key);
        served.attempts = journey.attempts;
        served.tried = journey.route.as_ref().map(Route::tried);
        let turn = served.ticket.as_ref().map_or(Duration::ZERO, |t| t.waited);
        served.waited = journey.waited + turn;
        Some((journey, served))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let Some((_, mut served)) = self.take() else {
            return;
        };
        served.status = 499;
        // Recorded as its body would be, had one begun: dropped at once, before its end.
        drop(Accounted::new(
            ProxyBody::empty(),
            Arc::clone(&self.app),
            served,
        ));
    }
}

/// An upstream answer as the client gets it: the list of models names the aliases first,
/// and a client with an allowlist sees only the models it may use; anything else as it is.
async fn answer(
    app: &App,
    caller: &Caller,
    served: &Served,
    response: Response<Held>,
) -> Response<ProxyBody> {
    let client = match caller {
        Caller::Client(client) => Some(&**client),
        Caller::Operator => None,
    };
    let aliases = app.aliases();
    if response.status().is_success()
        && models_list::is_models_list(&served.method, served.uri.path())
        && models_list::rewritten(&aliases, client)
    {
        return models_list::rewrite(response, &aliases, client)
            .await
            .unwrap_or_else(ProxyError::into_response)
            .map(ProxyBody::from);
    }
    let idle_after = app.config.stream_idle_timeout;
    response.map(|held| ProxyBody::answer(held, idle_after))
}

/// The model alias the request names, if any (its `model` as the client wrote it: a name
/// written with JSON escapes is not an alias).
fn alias_of(app: &App, model: &model::ModelInfo<'_>) -> Option<Arc<Alias>> {
    let Some(Cow::Borrowed(name)) = &model.model else {
        return None;
    };
    app.aliases().find(name).cloned()
}

/// A client's request admitted within its limits (`None` for the operator's). An alias is
/// allowed when its name is, or every one of its candidates; it is free when they all are.
async fn admit(
    app: &App,
    caller: &Caller,
    model: &model::ModelInfo<'_>,
    alias: Option<&Alias>,
) -> Result<Option<Ticket>, ProxyError> {
    let Caller::Client(client) = caller else {
        return Ok(None);
    };
    let now = now_ms();
    let today = Today::new(app.keys().calendar(), now);
    let allowed_alias = alias.filter(|alias| {
        client.allows(&alias.name) || alias.candidates.iter().all(|c| client.allows(&c.model))
    });
    let named = model.model.iter().filter(|_| allowed_alias.is_none());
    let models = named.chain(&model.fallbacks).map(AsRef::as_ref);
    let free = alias.map_or(model.free, Alias::all_free);
    let ticket = client
        .admit(
            models,
            free,
            today,
            app.config.max_wait,
            app.shared.as_ref(),
        )
        .await?;
    Ok(Some(ticket))
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
async fn read_body(app: &App, body: Incoming) -> Result<RequestBody, ProxyError> {
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
