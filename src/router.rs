//! Which handler answers a request: the proxy's own endpoints, CORS preflight, or the proxy.

use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS,
};
use hyper::{Method, Request, Response, StatusCode};

use crate::auth::authenticate;
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::proxy::{forward, App};
use crate::status;

/// Answers one request; every failure is already a response here.
pub async fn route(app: &std::sync::Arc<App>, request: Request<Incoming>) -> Response<ProxyBody> {
    let path = request.uri().path();
    let mut response = match (request.method(), path) {
        (&Method::GET | &Method::HEAD, "/health") => status::health(request.uri().query()),
        (&Method::OPTIONS, _) => preflight(&request),
        (_, "/key_status" | "/key-status") => {
            own_endpoint(app, &request, || status::key_status(app))
        }
        // Reserved for the metrics endpoint; never forwarded upstream.
        (_, "/metrics") => own_endpoint(app, &request, || ProxyError::NotFound.into_response()),
        _ => forward(app, request)
            .await
            .unwrap_or_else(ProxyError::into_response),
    };
    response
        .headers_mut()
        .insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

fn own_endpoint(
    app: &App,
    request: &Request<Incoming>,
    handler: impl FnOnce() -> Response<ProxyBody>,
) -> Response<ProxyBody> {
    match authenticate(request.headers(), app.config.proxy_api_key.as_bytes()) {
        Ok(()) => handler(),
        Err(why) => ProxyError::Unauthorized(why).into_response(),
    }
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
