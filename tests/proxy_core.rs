//! The proxy core through real sockets: routing, auth, headers, streaming, limits, failures.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use tokio::sync::mpsc;

#[tokio::test]
async fn paths_map_onto_the_base_url_and_the_query_passes_byte_for_byte() {
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(&upstream.base_url(), &[]).await;
    for path in [
        "/api/v1/models?a=1&a=2&b=%2F%20x",
        "/v1/models?a=1&a=2&b=%2F%20x",
        "/models?a=1&a=2&b=%2F%20x",
    ] {
        assert_eq!(get(&proxy, path).await.status, 200);
    }
    get(&proxy, "/api/v1/generation?id=gen-1").await;
    let seen: Vec<_> = upstream
        .requests()
        .into_iter()
        .map(|s| s.path_and_query)
        .collect();
    assert_eq!(
        seen,
        [
            "/api/v1/models?a=1&a=2&b=%2F%20x",
            "/api/v1/models?a=1&a=2&b=%2F%20x",
            "/api/v1/models?a=1&a=2&b=%2F%20x",
            "/api/v1/generation?id=gen-1",
        ]
    );
}

#[tokio::test]
async fn upstream_sees_an_openrouter_key_and_never_the_proxy_key() {
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(&upstream.base_url(), &[]).await;
    for (name, value) in [
        ("authorization", format!("Bearer {PROXY_KEY}")),
        ("apikey", PROXY_KEY.to_owned()),
        ("x-api-key", PROXY_KEY.to_owned()),
    ] {
        let req = hyper::Request::post(proxy.url("/api/v1/chat/completions"))
            .header(name, value)
            .body(Full::new(Bytes::from_static(
                br#"{"model":"openai/gpt-4o"}"#,
            )))
            .unwrap();
        assert_eq!(send(req).await.status, 200, "auth form {name}");
    }
    let seen = upstream.requests();
    assert_eq!(seen.len(), 3);
    for s in &seen {
        assert!(
            [KEY_A, KEY_B].contains(&s.key().as_str()),
            "upstream got {:?}",
            s.key()
        );
        for (name, value) in &s.headers {
            assert!(
                !value
                    .as_bytes()
                    .windows(PROXY_KEY.len())
                    .any(|w| w == PROXY_KEY.as_bytes()),
                "proxy key in {name}"
            );
        }
        assert_eq!(s.body.as_ref(), br#"{"model":"openai/gpt-4o"}"#);
    }
}

#[tokio::test]
async fn missing_or_wrong_credentials_get_401_and_nothing_goes_upstream() {
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(&upstream.base_url(), &[]).await;
    let url = proxy.url("/api/v1/chat/completions");
    let cases: Vec<Vec<(&str, String)>> = vec![
        vec![],
        vec![("authorization", "Bearer wrong".into())],
        vec![("authorization", format!("Bearer {PROXY_KEY}x"))],
        vec![("authorization", format!("Basic {PROXY_KEY}"))],
        vec![("apikey", PROXY_KEY[1..].to_owned())],
        vec![("x-api-key", PROXY_KEY.to_uppercase())],
        vec![
            ("authorization", format!("Bearer {PROXY_KEY}")),
            ("authorization", format!("Bearer {PROXY_KEY}")),
        ],
    ];
    for headers in cases {
        let mut req = hyper::Request::post(&url);
        for (name, value) in &headers {
            req = req.header(*name, value);
        }
        let answer = send(req.body(Full::new(Bytes::from_static(b"{}"))).unwrap()).await;
        answer.assert_error(401);
        assert!(!answer.text().contains(PROXY_KEY));
    }
    assert!(upstream.requests().is_empty());
}

#[tokio::test]
async fn client_headers_pass_through_and_hop_by_hop_headers_do_not() {
    let upstream = Upstream::start(|_| {
        Reply::Full(
            200,
            vec![
                ("x-generation-id", "gen-42".into()),
                ("content-type", "application/json".into()),
            ],
            Bytes::from_static(b"{}"),
        )
    })
    .await;
    let proxy = Proxy::start(&upstream.base_url(), &[]).await;
    let req = request("POST", &proxy.url("/api/v1/chat/completions"))
        .header("http-referer", "https://my.app")
        .header("x-title", "My Agent")
        .header("user-agent", "OpenAI/Python 1.99")
        .header("content-type", "application/json")
        .header("connection", "keep-alive, x-drop-me")
        .header("x-drop-me", "1")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic abc")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let answer = send(req).await;
    assert_eq!(answer.headers["x-generation-id"], "gen-42");
    assert_eq!(answer.headers["access-control-allow-origin"], "*");
    let seen = &upstream.requests()[0];
    assert_eq!(seen.headers["http-referer"], "https://my.app");
    assert_eq!(seen.headers["x-title"], "My Agent");
    assert_eq!(seen.headers["user-agent"], "OpenAI/Python 1.99");
    assert_eq!(seen.headers["content-type"], "application/json");
    for gone in [
        "x-drop-me",
        "te",
        "proxy-authorization",
        "apikey",
        "x-api-key",
    ] {
        assert!(!seen.headers.contains_key(gone), "{gone} reached upstream");
    }
    assert_eq!(seen.headers["host"], upstream.addr.to_string());
}

/// The upstream holds its second chunk back until the client has the first:
/// if the proxy buffered anything, the client would never see chunk one.
#[tokio::test]
async fn sse_chunks_reach_the_client_one_by_one_as_upstream_sends_them() {
    let (upstream, chunks) = Upstream::with_stream().await;
    let proxy = Proxy::start(&upstream.base_url(), &[]).await;
    let req = request("POST", &proxy.url("/api/v1/chat/completions"))
        .body(Full::new(Bytes::from_static(
            br#"{"model":"a/b","stream":true}"#,
        )))
        .unwrap();
    let response = client().request(req).await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let events = [
        ": OPENROUTER PROCESSING\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n",
        "data: [DONE]\n\n",
    ];
    for event in events {
        chunks
            .send(Bytes::from_static(event.as_bytes()))
            .await
            .unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the chunk arrives while upstream waits for the client")
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), event.as_bytes());
    }
    drop(chunks);
    assert!(body.frame().await.is_none());
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_cancels_the_upstream_request() {
    let (upstream, chunks) = Upstream::with_stream().await;
    let proxy = Proxy::start(&upstream.base_url(), &[]).await;
    let mut body = open_stream(&proxy.url("/api/v1/chat/completions")).await;
    relay_one(&chunks, &mut body, "data: {}\n\n").await;
    drop(body); // the client goes away
    let closed = tokio::time::timeout(Duration::from_secs(5), chunks.closed()).await;
    assert!(
        closed.is_ok(),
        "upstream body still being read 5 s after the client left"
    );
}

#[tokio::test]
async fn bodies_over_the_cap_get_413_declared_or_not_and_are_not_forwarded() {
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(&upstream.base_url(), &[("MAX_BODY_BYTES", "1024")]).await;
    let url = proxy.url("/api/v1/chat/completions");
    let declared = request("POST", &url)
        .body(Full::new(Bytes::from(vec![b'x'; 2048])))
        .unwrap();
    send(declared).await.assert_error(413);
    // Chunked, no Content-Length: the cap is enforced while reading.
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    tokio::spawn(async move {
        for _ in 0..4 {
            let _ = tx.send(Bytes::from(vec![b'y'; 512])).await;
        }
    });
    let req = hyper::Request::post(&url)
        .header("authorization", format!("Bearer {PROXY_KEY}"))
        .body(http_body_util::Either::Right(ChannelBody::new(rx)))
        .unwrap();
    let response =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<MockBody>()
            .request(req)
            .await
            .unwrap();
    assert_eq!(response.status(), 413);
    let exactly = request("POST", &url)
        .body(Full::new(Bytes::from(vec![b'x'; 1024])))
        .unwrap();
    assert_eq!(send(exactly).await.status, 200);
    assert_eq!(upstream.requests().len(), 1);
}

#[tokio::test]
async fn an_unreachable_upstream_gives_502_in_openrouter_error_shape() {
    let proxy = Proxy::start(&closed_base_url().await, &[("MAX_RETRIES", "2")]).await;
    chat(&proxy, "openai/gpt-4o").await.assert_error(502);
}

#[tokio::test]
async fn an_upstream_that_never_answers_gives_504_after_the_timeout() {
    let upstream = Upstream::start(|_| Reply::Hang).await;
    let proxy = Proxy::start(&upstream.base_url(), &[("UPSTREAM_TIMEOUT", "1")]).await;
    chat(&proxy, "openai/gpt-4o").await.assert_error(504);
}

#[tokio::test]
async fn health_and_cors_preflight_need_no_key_and_forward_nothing() {
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(&upstream.base_url(), &[]).await;
    let health = send(
        hyper::Request::get(proxy.url("/health"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!((health.status, health.text().as_str()), (200, "OK"));
    let json = send(
        hyper::Request::get(proxy.url("/health?format=json"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(
        json.json(),
        serde_json::json!({"status": "OK", "upstream": "ok", "state": "kept"})
    );
    let preflight = hyper::Request::builder()
        .method("OPTIONS")
        .uri(proxy.url("/api/v1/chat/completions"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = send(preflight).await;
    assert_eq!(answer.status, 204);
    assert_eq!(answer.headers["access-control-allow-origin"], "*");
    assert_eq!(
        answer.headers["access-control-allow-headers"],
        "authorization, content-type"
    );
    assert!(upstream.requests().is_empty());
}

#[tokio::test]
async fn path_traversal_and_connect_are_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(&upstream.base_url(), &[]).await;
    for path in [
        "/api/v1/../../admin",
        "/api/v1/%2e%2e/secret",
        "/v1/./models",
        "/api/v1/..%2fadmin",
        "/api/v1/..%5Cadmin",
        "/api/v1/..;/admin",
    ] {
        get(&proxy, path).await.assert_error(400);
    }
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let connect = format!("CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nAuthorization: Bearer {PROXY_KEY}\r\n\r\n");
    tcp.write_all(connect.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    tcp.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 405");
    assert!(upstream.requests().is_empty());
}

#[tokio::test]
async fn zero_durations_mean_no_limit_rather_than_an_instant_timeout() {
    let upstream = Upstream::ok().await;
    let vars = [
        ("HEADER_READ_TIMEOUT", "0"),
        ("UPSTREAM_TIMEOUT", "0"),
        ("MAX_WAIT", "0"),
        ("STREAM_IDLE_TIMEOUT", "0"),
    ];
    let proxy = Proxy::start(&upstream.base_url(), &vars).await;
    assert_eq!(chat(&proxy, "openai/gpt-4o").await.status, 200);
    assert_eq!(chat(&proxy, "qwen/qwen3-coder:free").await.status, 200);
    // A stream that stays silent for a while: "0" must not mean "end it at once".
    let (streaming, chunks) = Upstream::with_stream().await;
    let proxy = Proxy::start(&streaming.base_url(), &vars).await;
    let mut body = open_stream(&proxy.url("/api/v1/chat/completions")).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    relay_one(&chunks, &mut body, "data: {\"choices\":[]}\n\n").await;
}

#[tokio::test]
async fn upstream_http2_speaks_h2c_to_a_plain_http_gateway_streams_included() {
    let (upstream, chunks) = Upstream::with_stream().await;
    let proxy = Proxy::start(&upstream.base_url(), &[("UPSTREAM_HTTP2", "true")]).await;
    let mut body = open_stream(&proxy.url("/api/v1/chat/completions")).await;
    relay_one(&chunks, &mut body, "data: {}\n\n").await;
    drop(chunks);
    assert_eq!(chat(&proxy, "openai/gpt-4o").await.status, 200);
    assert!(upstream
        .requests()
        .iter()
        .all(|s| s.version == hyper::Version::HTTP_2));
}

#[tokio::test]
async fn clients_speaking_http2_with_prior_knowledge_are_served() {
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(&upstream.base_url(), &[]).await;
    let h2c: TestClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let req = request("POST", &proxy.url("/api/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"openai/gpt-4o","messages":[]}"#,
        )))
        .unwrap();
    let response = h2c.request(req).await.expect("the proxy answers over h2c");
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.requests().len(), 1);
}

#[tokio::test]
async fn the_agents_network_details_and_cookies_are_not_passed_to_openrouter() {
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(&upstream.base_url(), &[]).await;
    let answer = send(
        request("POST", &proxy.url("/api/v1/chat/completions"))
            .header("x-forwarded-for", "10.1.2.3")
            .header("x-real-ip", "10.1.2.3")
            .header("forwarded", "for=10.1.2.3")
            .header("cookie", "session=secret")
            .header("http-referer", "https://my.app")
            .body(Full::new(Bytes::from_static(br#"{"model":"a/b"}"#)))
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, 200);
    let seen = &upstream.requests()[0].headers;
    for name in ["x-forwarded-for", "x-real-ip", "forwarded", "cookie"] {
        assert!(seen.get(name).is_none(), "{name} was forwarded");
    }
    assert_eq!(
        seen["http-referer"], "https://my.app",
        "attribution headers still go"
    );
}
