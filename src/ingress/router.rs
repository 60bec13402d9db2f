//! Which handler answers a request: the proxy's own endpoints, CORS preflight, or the proxy.

use hyper::body::Incoming;
use hyper::header::ACCEPT;
use hyper::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS,
};
use hyper::{Method, Request, Response, StatusCode};
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use crate::error::ProxyError;
use crate::ingress::auth::authenticate;
use crate::observe::metrics::Route;
use crate::stream::body::ProxyBody;
use std::net::SocketAddr;

use bytes::Bytes;

use crate::app::App;
use crate::clients::Caller;
use crate::ingress::proxied::forward;
use crate::keys::now_ms;
use crate::observe::{clients, status};

/// Keeps the in-flight gauge right however the handler ends (a client that
/// leaves drops the handler future mid-way).
struct InFlight<'a>(&'a AtomicI64);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a AtomicI64) -> Self {
        gauge.fetch_add(1, Relaxed);
        InFlight(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Answers one request from `peer`; every failure is already a response here.
pub async fn route(
    app: &Arc<App>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let arrived = Instant::now();
    let _in_flight = InFlight::enter(&app.metrics.in_flight);
    let path = request.uri().path();
    let kind = if path.ends_with("/chat/completions") {
        Route::Chat
    } else {
        Route::Proxied
    };
    let (kind, mut response) = match (request.method(), path) {
        (&Method::GET | &Method::HEAD, "/health") => {
            (Route::Own, own(status::health(app, request.uri().query())))
        }
        (&Method::OPTIONS, _) => (Route::Own, preflight(&request)),
        (_, "/key_status" | "/key-status") => (
            Route::Own,
            own(match authorized(app, &request, peer) {
                Ok(Caller::Operator) => status::key_status(app),
                Ok(Caller::Client(client)) => clients::status(app, &client),
                Err(refused) => refused.into_response(),
            }),
        ),
        (_, "/metrics") if app.config.metrics_public => (Route::Own, own(status::metrics(app))),
        (_, "/metrics") => (
            Route::Own,
            own(match authorized(app, &request, peer) {
                Ok(Caller::Operator) => status::metrics(app),
                Ok(Caller::Client(_)) => ProxyError::Forbidden(
                    "the metrics are the operator's: use PROXY_API_KEY".to_owned(),
                )
                .into_response(),
                Err(refused) => refused.into_response(),
            }),
        ),
        (&Method::GET, "/status") => (Route::Own, own(status::page())),
        // Browsers ask for it with the status page: no icon, no key, no warning.
        (&Method::GET, "/favicon.ico") => (Route::Own, no_icon()),
        (&Method::GET, "/") if accepts_html(&request) => (Route::Own, own(status::page())),
        _ => match authorized(app, &request, peer) {
            // What a client's key may still do is the proxy's to say, not OpenRouter's.
            Ok(Caller::Client(client))
                if request.method() == Method::GET && request.uri().path().ends_with("/key") =>
            {
                (Route::Own, own(clients::key(app, &client)))
            }
            // Boxed: hyper keeps a slot the size of this handler's future for the connection's
            // whole life. The forward future (5 KB) lives until the answer's head is ready;
            // inline, its size would stay reserved while the answer streams and while the
            // connection idles.
            Ok(caller) => (
                kind,
                Box::pin(forward(app, request, caller, arrived))
                    .await
                    .unwrap_or_else(|err| own(err.into_response())),
            ),
            Err(refused) => (kind, own(refused.into_response())),
        },
    };
    app.metrics.count_request(kind, response.status().as_u16());
    response
        .headers_mut()
        .insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

/// `/favicon.ico`: 204, nothing to show.
fn no_icon() -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

/// One of the proxy's own answers (an endpoint, or an error) as a response body.
fn own(response: Response<Bytes>) -> Response<ProxyBody> {
    response.map(ProxyBody::from)
}

/// Who sent the request (the operator or a client); the 401 to send (and one
/// rate-limited WARN line, without the key) when the key is nobody's.
fn authorized(
    app: &App,
    request: &Request<Incoming>,
    peer: SocketAddr,
) -> Result<Caller, ProxyError> {
    let headers = request.headers();
    authenticate(headers, app.config.proxy_api_key.as_bytes(), &app.clients()).map_err(|why| {
        app.refusals
            .refused(request.uri().path(), request.headers(), peer, now_ms());
        ProxyError::Unauthorized(why)
    })
}

/// CORS preflight, answered here so browsers can call the proxy; nothing is forwarded.
fn preflight(request: &Request<Incoming>) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, OPTIONS"),
    );
    let requested = request
        .headers()
        .get(ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned();
    headers.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        requested.unwrap_or(HeaderValue::from_static("*")),
    );
    headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    response
}

/// A browser asking for a page (its `Accept` lists `text/html`).
fn accepts_html(request: &Request<Incoming>) -> bool {
    request
        .headers()
        .get(ACCEPT)
        .is_some_and(|v| v.as_bytes().windows(9).any(|w| w == b"text/html"))
}
