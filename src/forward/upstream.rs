//! Talking to OpenRouter: URI mapping, header hygiene, and why it could not be reached.

use hyper::header::{self, HeaderMap, HeaderName};
use hyper::http::uri::Uri;

use crate::config::UpstreamBase;

/// The original proxy's header.
pub const APIKEY: HeaderName = HeaderName::from_static("apikey");
/// Anthropic-style clients' header.
pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

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
static HOP_BY_HOP: [HeaderName; 8] = [
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
    // Looked for among the few names present first: a lookup by name hashes it.
    if headers.keys().any(|name| name == header::CONNECTION) {
        let listed: Vec<_> = headers
            .get_all(header::CONNECTION)
            .iter()
            .cloned()
            .collect();
        for value in &listed {
            for name in value.to_str().unwrap_or("").split(',') {
                if let Ok(name) = HeaderName::from_bytes(name.trim().as_bytes()) {
                    headers.remove(name);
                }
            }
        }
    }
    remove_where(headers, is_hop_by_hop);
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name == header::UPGRADE
}

/// Removes every header `doomed` names, in one pass over the (few) headers present instead
/// of a hashed `remove` per name: twelve of those were 2,000 of a request's 59,000
/// user-space instructions (callgrind), and most names are absent.
fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    let present = headers.keys().filter(|name| doomed(name)).count();
    for _ in 0..present {
        let Some(name) = headers.keys().find(|name| doomed(name)).cloned() else {
            break;
        };
        headers.remove(name);
    }
}

/// Client headers OpenRouter does not get: `Host` (the client sets upstream's), stale
/// framing, a client's `Expect: 100-continue` (the body is already read, so it was answered
/// here), the proxy's credentials, and the agents' network details (forwarding headers)
/// and browser cookies, which are theirs, not OpenRouter's business.
static NOT_FORWARDED: [HeaderName; 12] = [
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
];

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
    remove_where(headers, |name| NOT_FORWARDED.contains(name));
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
