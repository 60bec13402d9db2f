//! Talking to OpenRouter: the pooled HTTPS client, URI mapping, and header hygiene.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName};
use hyper::http::uri::Uri;
use hyper::{Request, Response, Version};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;

use crate::config::UpstreamBase;
use crate::worker::{self, PerWorker};

/// The original proxy's header.
pub const APIKEY: HeaderName = HeaderName::from_static("apikey");
/// Anthropic-style clients' header.
pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Idle keep-alive connections kept per upstream host, over all workers' clients.
pub const MAX_IDLE_UPSTREAM_CONNECTIONS: usize = 256;

/// A pooled client: HTTP/1.1 or HTTP/2 by ALPN.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One pair of pooled clients per server worker, plus one for every other thread (probes,
/// tests): a pooled connection's task runs on the worker that opened it, so a request
/// only ever uses connections polled on its own thread (see `crate::worker`).
///
/// Each pair is a client that lets TLS' ALPN choose the protocol, and one that speaks only
/// HTTP/2. The first is used until an answer came over HTTP/2 (OpenRouter's does), the
/// second from then on: hyper's pool lets only one HTTP/2 connection be made at a time, but
/// only when it knows beforehand that the connection will be HTTP/2. Through the ALPN
/// client a burst of requests on a cold pool (at startup, or after 90 s idle) opens one
/// TLS connection each, then keeps one and closes the rest: 13 handshakes for 24 streams
/// opened at once on 2 workers in `tests/tls.rs`, against one per worker now.
pub struct UpstreamClients {
    clients: PerWorker<Pair>,
    /// An answer came over HTTP/2: the HTTP/2-only clients are in use. Set back when one of
    /// them fails, so an upstream that stopped offering HTTP/2 is reached again over ALPN.
    speaks_http2: AtomicBool,
}

struct Pair {
    alpn: UpstreamClient,
    http2: UpstreamClient,
}

impl UpstreamClients {
    /// Builds them once at startup, sharing one connector (and its TLS configuration,
    /// which trusts the compiled-in roots and `extra_ca`). With `http2_only`
    /// (`UPSTREAM_HTTP2`), both clients of a pair speak only HTTP/2.
    #[must_use]
    pub fn new(http2_only: bool, extra_ca: &[CertificateDer<'static>]) -> UpstreamClients {
        let connector = connector(extra_ca);
        let workers = worker::count();
        // The idle cap is shared out, so more workers do not keep more idle connections.
        let max_idle = (MAX_IDLE_UPSTREAM_CONNECTIONS / workers).max(1);
        UpstreamClients {
            clients: PerWorker::new(|| Pair {
                alpn: client(connector.clone(), http2_only, max_idle),
                http2: client(connector.clone(), true, max_idle),
            }),
            speaks_http2: AtomicBool::new(http2_only),
        }
    }

    /// Sends `request` on this thread's pooled connections.
    pub fn request(
        &self,
        request: Request<Full<Bytes>>,
    ) -> impl Future<Output = Result<Response<Incoming>, hyper_util::client::legacy::Error>> + '_
    {
        let pair = self.clients.here();
        let http2 = self.speaks_http2.load(Relaxed);
        let pending = if http2 { &pair.http2 } else { &pair.alpn }.request(request);
        async move {
            let result = pending.await;
            match &result {
                Ok(response) if !http2 && response.version() == Version::HTTP_2 => {
                    self.speaks_http2.store(true, Relaxed);
                }
                Err(_) if http2 => self.speaks_http2.store(false, Relaxed),
                _ => {}
            }
            result
        }
    }
}

/// TLS roots are compiled in (webpki-roots), so it works in an empty container; ALPN
/// offers HTTP/2 and HTTP/1.1.
fn connector(extra_ca: &[CertificateDer<'static>]) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    http.set_keepalive(Some(Duration::from_secs(60)));
    HttpsConnectorBuilder::new()
        .with_tls_config(crate::tls::client_config(extra_ca))
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http)
}

fn client(
    connector: HttpsConnector<HttpConnector>,
    http2_only: bool,
    max_idle: usize,
) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        // OpenRouter speaks HTTP/2 (one multiplexed connection); for HTTP/1.1 upstreams this
        // bounds how many connections a burst of streams leaves idle, and the memory they hold.
        .pool_max_idle_per_host(max_idle)
        // HTTPS upstreams negotiate HTTP/2 by ALPN anyway; this also makes plain-http
        // upstreams (local gateways) use HTTP/2 with prior knowledge.
        .http2_only(http2_only)
        .build(connector)
}

/// An upstream client error as a sentence (`DNS lookup of openrouter.ai failed (…)`,
/// `127.0.0.1 refused the connection`), from the causes it chains, innermost last.
pub fn unreachable_reason(err: &(dyn std::error::Error + 'static), host: &str) -> String {
    let mut causes: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(cause) = next {
        let text = cause.to_string();
        if !causes.contains(&text) {
            causes.push(text);
        }
        next = cause.source();
    }
    let chain = causes.join(": ").to_lowercase();
    let innermost = causes.last().map_or("", String::as_str);
    if chain.contains("dns error") {
        format!("DNS lookup of {host} failed ({innermost})")
    } else if chain.contains("connection refused") {
        format!("{host} refused the connection")
    } else if chain.contains("timed out") || chain.contains("timeout") {
        format!("connecting to {host} timed out")
    } else if chain.contains("certificate") || chain.contains("tls") || chain.contains("handshake")
    {
        format!("the TLS handshake with {host} failed ({innermost})")
    } else if chain.contains("connection reset") || chain.contains("broken pipe") {
        format!("{host} closed the connection ({innermost})")
    } else {
        format!("{host}: {}", causes.join(": "))
    }
}

/// The request path without the proxy's own `/api/v1` or `/v1` prefix.
#[must_use]
pub fn upstream_path(path: &str) -> &str {
    for prefix in ["/api/v1", "/v1"] {
        if let Some(rest) = path.strip_prefix(prefix) {
            if rest.is_empty() || rest.starts_with('/') {
                return rest;
            }
        }
    }
    path
}

/// True when a path segment is `.` or `..`, literally or percent-encoded, also when
/// segments are separated by `\\` or an encoded `/` or `\\` (`%2f`, `%5c`) or carry a
/// `;parameter`: any spelling a server on the way might normalise out of the base path.
#[must_use]
pub fn has_dot_segment(path: &str) -> bool {
    let bytes = path.as_bytes();
    let separator_len = |at: usize| -> usize {
        match bytes[at] {
            b'/' | b'\\' => 1,
            b'%' if bytes.len() >= at + 3
                && (bytes[at + 1] == b'2' && bytes[at + 2].eq_ignore_ascii_case(&b'f')
                    || bytes[at + 1] == b'5' && bytes[at + 2].eq_ignore_ascii_case(&b'c')) =>
            {
                3
            }
            _ => 0,
        }
    };
    let mut start = 0;
    let mut at = 0;
    while at <= bytes.len() {
        let len = if at == bytes.len() {
            1
        } else {
            separator_len(at)
        };
        if len == 0 {
            at += 1;
            continue;
        }
        if is_dot_segment(&bytes[start..at]) {
            return true;
        }
        at += len;
        start = at;
    }
    false
}

/// `.` or `..` (each dot literal or `%2e`), ignoring a `;parameter` after it.
fn is_dot_segment(segment: &[u8]) -> bool {
    let segment = segment
        .iter()
        .position(|&b| b == b';')
        .map_or(segment, |end| &segment[..end]);
    let mut rest = segment;
    let mut dots = 0;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3
            && rest[0] == b'%'
            && rest[1] == b'2'
            && rest[2].eq_ignore_ascii_case(&b'e')
        {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

/// `{base}{mapped path}?{query}` with the query forwarded byte for byte.
pub fn upstream_uri(
    base: &UpstreamBase,
    path: &str,
    query: Option<&str>,
) -> Result<Uri, hyper::http::Error> {
    base.uri(upstream_path(path), query)
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus legacy ones that must not cross a proxy.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers and those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let header::Entry::Occupied(entry) = headers.entry(header::CONNECTION) {
        let listed: Vec<_> = entry.remove_entry_mult().1.collect();
        for value in &listed {
            for name in value.to_str().unwrap_or("").split(',') {
                if let Ok(name) = HeaderName::from_bytes(name.trim().as_bytes()) {
                    headers.remove(name);
                }
            }
        }
    }
    // One pass over the (few) headers present instead of hashing every hop-by-hop name;
    // most requests carry none of them.
    let present = headers.keys().filter(|name| is_hop_by_hop(name)).count();
    for _ in 0..present {
        let Some(name) = headers.keys().find(|name| is_hop_by_hop(name)).cloned() else {
            break;
        };
        headers.remove(name);
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name == header::UPGRADE
}

/// Prepares client headers for upstream: no hop-by-hop, no `Host` (the client
/// sets upstream's), no proxy credentials, no stale framing, and an uncompressed answer.
pub fn sanitize_request_headers(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    // The proxy reads OpenRouter's answers (error bodies, errors inside 200s, SSE events) to
    // decide what to do; it never decodes compression, so it asks for none. Everything it
    // passes on is what OpenRouter sent, byte for byte.
    headers.insert(
        header::ACCEPT_ENCODING,
        header::HeaderValue::from_static("identity"),
    );
    // The body is already read, so a client's `Expect: 100-continue` was answered here.
    // The agents' network details (forwarding headers) and browser cookies are theirs, not
    // OpenRouter's business: they are not passed on.
    for name in [
        header::HOST,
        header::CONTENT_LENGTH,
        header::EXPECT,
        header::AUTHORIZATION,
        APIKEY,
        X_API_KEY,
        header::COOKIE,
        header::FORWARDED,
        HeaderName::from_static("x-forwarded-for"),
        HeaderName::from_static("x-forwarded-host"),
        HeaderName::from_static("x-forwarded-proto"),
        HeaderName::from_static("x-real-ip"),
    ] {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;
    use hyper::http::uri::{Authority, Scheme};

    fn base(path: &str) -> UpstreamBase {
        UpstreamBase {
            scheme: Scheme::HTTPS,
            authority: Authority::from_static("openrouter.ai"),
            path: path.into(),
        }
    }

    #[test]
    fn paths_map_onto_the_base_url() {
        let b = base("/api/v1");
        let uri = |p, q| upstream_uri(&b, p, q).unwrap().to_string();
        assert_eq!(
            uri("/api/v1/chat/completions", None),
            "https://openrouter.ai/api/v1/chat/completions"
        );
        assert_eq!(
            uri("/v1/models", Some("a=1&a=2&b=%20x")),
            "https://openrouter.ai/api/v1/models?a=1&a=2&b=%20x"
        );
        assert_eq!(uri("/key", None), "https://openrouter.ai/api/v1/key");
        assert_eq!(
            uri("/api/v1x", None),
            "https://openrouter.ai/api/v1/api/v1x"
        );
        assert_eq!(uri("/api/v1", None), "https://openrouter.ai/api/v1");
        assert_eq!(
            upstream_uri(&base(""), "/v1", None).unwrap().to_string(),
            "https://openrouter.ai/"
        );
    }

    #[test]
    fn dot_segments_are_detected_in_every_spelling() {
        for p in [
            "/../x",
            "/a/..",
            "/a/%2e%2e/b",
            "/%2E./b",
            "/.%2e/b",
            "/./x",
            "/v1/..%2fadmin",
            "/v1/..%2Fadmin",
            "/v1/..%5cadmin",
            "/v1/..\\admin",
            "/v1/..;/admin",
            "/v1/.;x/y",
        ] {
            assert!(has_dot_segment(p), "{p}");
        }
        for p in [
            "/a/b",
            "/a/...",
            "/a/.well-known",
            "/v1/chat..completions",
            "/%2e%2e%2e",
            "/a;b/c",
            "/v1/chat%2fcompletions",
        ] {
            assert!(!has_dot_segment(p), "{p}");
        }
    }

    #[test]
    fn hop_by_hop_headers_and_credentials_are_removed() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("host", "localhost"),
            ("authorization", "Bearer proxy"),
            ("apikey", "proxy"),
            ("x-api-key", "proxy"),
            ("http-referer", "https://example.com"),
            ("x-title", "My agent"),
            ("expect", "100-continue"),
            ("content-type", "application/json"),
            ("cookie", "session=1"),
            ("x-forwarded-for", "10.0.0.7"),
            ("x-real-ip", "10.0.0.7"),
            ("forwarded", "for=10.0.0.7"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        sanitize_request_headers(&mut h);
        let mut left: Vec<_> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            ["accept-encoding", "content-type", "http-referer", "x-title"]
        );
    }
}
