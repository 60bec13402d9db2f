//! Hostile and malformed input over raw TCP: each gets a clear 4xx, nothing reaches
//! OpenRouter that should not, no key quota is spent, and the server keeps serving.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FREE_BODY: &str = r#"{"model":"qwen/qwen3-coder:free","messages":[]}"#;

/// Sends raw bytes (then half-closes when `close` is set) and returns everything
/// the proxy wrote back within the time limit.
async fn exchange(addr: SocketAddr, bytes: &[u8], close: bool) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let _ = tcp.write_all(bytes).await;
    if close {
        let _ = tcp.shutdown().await;
    }
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 8192];
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline.into(), tcp.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if complete(&out) {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A whole response with a `Content-Length` body has arrived.
fn complete(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
        })
        .is_some_and(|len| body.len() >= len)
}

fn status(response: &str) -> u16 {
    response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The response carries OpenRouter's error shape with `code` equal to the status.
fn assert_openrouter_error(response: &str, expected: u16, name: &str) {
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{name}: no whole response: {response:?}"));
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{name}: {head}"
    );
    let json: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{name}: {e}: {body:?}"));
    assert_error_shape(&json, expected);
}

/// Sends raw bytes and returns everything the proxy writes back until it closes (or 3 s pass).
async fn send_until_closed(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn post(path: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: proxy\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn auth() -> String {
    format!("Authorization: Bearer {PROXY_KEY}\r\n")
}

fn json_auth() -> String {
    format!("{}Content-Type: application/json\r\n", auth())
}

/// (name, request bytes, half-close after sending, expected status)
fn cases() -> Vec<(&'static str, Vec<u8>, bool, u16)> {
    let chat = "/api/v1/chat/completions";
    let big_header = format!(
        "GET /api/v1/models HTTP/1.1\r\nHost: p\r\n{}X-Big: {}\r\n\r\n",
        auth(),
        "a".repeat(70_000)
    );
    let many_headers = "X-Many: v\r\n".repeat(150);
    let deep = format!(
        r#"{{"model":"a:free","x":{}{}}}"#,
        "[".repeat(1000),
        "]".repeat(1000)
    );
    let huge_model = format!(r#"{{"model":"{}:free"}}"#, "m".repeat(3_000));
    let control_byte = [
        &b"GET /api/v1/models HTTP/1.1\r\nHost: p\r\nX-Bad: a\x01b\r\n"[..],
        auth().as_bytes(),
        b"\r\n",
    ]
    .concat();
    let non_utf8_auth = [&b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer \xff\xfe\r\nContent-Length: 2\r\n\r\n{}"[..]].concat();
    vec![
        ("malformed request line", b"GARBAGE\r\n\r\n".to_vec(), false, 400),
        ("request line without a version", b"GET /api/v1/models\r\n\r\n".to_vec(), false, 400),
        ("header block over the size limit", big_header.into_bytes(), false, 431),
        ("too many headers", format!("GET /api/v1/models HTTP/1.1\r\nHost: p\r\n{}{many_headers}\r\n", auth()).into_bytes(), false, 431),
        ("control byte in a header value", control_byte, false, 400),
        ("header name with a space", format!("GET /api/v1/models HTTP/1.1\r\nHost: p\r\n{}Bad Name: x\r\n\r\n", auth()).into_bytes(), false, 400),
        ("non-UTF-8 credentials", non_utf8_auth, false, 401),
        ("no credentials", post(chat, "", FREE_BODY), false, 401),
        ("empty Authorization", post(chat, "Authorization:\r\n", FREE_BODY), false, 401),
        ("empty APIKEY", post(chat, "APIKEY: \r\n", FREE_BODY), false, 401),
        ("duplicated Authorization", post(chat, &format!("{}{}", auth(), auth()), FREE_BODY), false, 401),
        ("key prefix", post(chat, &format!("Authorization: Bearer {}\r\n", &PROXY_KEY[..10]), FREE_BODY), false, 401),
        ("key with a suffix", post(chat, &format!("Authorization: Bearer {PROXY_KEY}0\r\n"), FREE_BODY), false, 401),
        ("key in another case", post(chat, &format!("x-api-key: {}\r\n", PROXY_KEY.to_uppercase()), FREE_BODY), false, 401),
        ("key after two spaces", post(chat, &format!("Authorization: Bearer  {PROXY_KEY}\r\n"), FREE_BODY), false, 401),
        ("wrong scheme", post(chat, &format!("Authorization: Basic {PROXY_KEY}\r\n"), FREE_BODY), false, 401),
        ("declared body over MAX_BODY_BYTES", format!("POST {chat} HTTP/1.1\r\nHost: p\r\n{}Content-Length: 10000\r\n\r\n", auth()).into_bytes(), false, 413),
        ("chunked body over MAX_BODY_BYTES", format!("POST {chat} HTTP/1.1\r\nHost: p\r\n{}Transfer-Encoding: chunked\r\n\r\n1000\r\n{}\r\n1000\r\n{}\r\n0\r\n\r\n", auth(), "a".repeat(4096), "b".repeat(4096)).into_bytes(), false, 413),
        ("Content-Length larger than the body", format!("POST {chat} HTTP/1.1\r\nHost: p\r\n{}Content-Length: 500\r\n\r\n{FREE_BODY}", json_auth()).into_bytes(), true, 400),
        ("invalid chunk size", format!("POST {chat} HTTP/1.1\r\nHost: p\r\n{}Transfer-Encoding: chunked\r\n\r\nzz\r\n{FREE_BODY}\r\n0\r\n\r\n", json_auth()).into_bytes(), false, 400),
        ("chunked body cut off", format!("POST {chat} HTTP/1.1\r\nHost: p\r\n{}Transfer-Encoding: chunked\r\n\r\n5\r\n{{\"mo", json_auth()).into_bytes(), true, 400),
        ("two different Content-Lengths", format!("POST {chat} HTTP/1.1\r\nHost: p\r\n{}Content-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}", auth()).into_bytes(), false, 400),
        ("body that is not JSON", post(chat, &json_auth(), "model=qwen:free"), false, 400),
        ("JSON that is not an object", post(chat, &json_auth(), r#"["qwen/qwen3-coder:free"]"#), false, 400),
        ("model of the wrong type", post(chat, &json_auth(), r#"{"model":{"id":"x:free"}}"#), false, 400),
        ("huge model string", post(chat, &json_auth(), &huge_model), false, 400),
        ("deeply nested JSON", post(chat, &json_auth(), &deep), false, 400),
        ("absolute-form target", format!("GET http://evil.example/steal HTTP/1.1\r\nHost: evil.example\r\n{}\r\n", auth()).into_bytes(), false, 400),
        ("CONNECT", format!("CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n{}\r\n", auth()).into_bytes(), false, 405),
        ("path traversal", format!("GET /api/v1/../../etc/passwd HTTP/1.1\r\nHost: p\r\n{}\r\n", auth()).into_bytes(), false, 400),
        ("encoded path traversal", format!("GET /api/v1/%2e%2e/%2E%2E/admin HTTP/1.1\r\nHost: p\r\n{}\r\n", auth()).into_bytes(), false, 400),
    ]
}

#[tokio::test]
async fn hostile_requests_get_clear_4xx_answers_and_cost_no_quota() {
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(
        &upstream.base_url(),
        &[
            ("MAX_BODY_BYTES", "4096"),
            ("OPENROUTER_KEYS", &format!("{KEY_A}:5")),
        ],
    )
    .await;
    let cases = cases();
    assert!(cases.len() >= 30);
    for (name, bytes, close, expected) in cases {
        let response = exchange(proxy.addr, &bytes, close).await;
        assert_eq!(status(&response), expected, "{name}: {response}");
        assert_openrouter_error(&response, expected, name);
        assert!(!response.contains(KEY_A), "{name}");
    }
    assert!(
        upstream.requests().is_empty(),
        "forwarded: {:?}",
        upstream
            .requests()
            .iter()
            .map(|s| &s.path_and_query)
            .collect::<Vec<_>>()
    );
    let status = get(&proxy, "/key_status").await.json();
    assert_eq!(status["keys"][0]["daily_used"], 0);
    assert_eq!(status["keys"][0]["totals"]["requests"], 0);
    assert_eq!(
        chat(&proxy, "qwen/qwen3-coder:free").await.status,
        200,
        "still serving"
    );
}

#[tokio::test]
async fn a_content_length_shorter_than_the_body_leaves_the_rest_as_a_bad_request() {
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(&upstream.base_url(), &[]).await;
    let body = r#"{"model":"a/b"}"#;
    let bytes = format!("POST /api/v1/chat/completions HTTP/1.1\r\nHost: p\r\n{}Content-Length: {}\r\n\r\n{body}SMUGGLED / HTTP/1.1\r\n\r\n", json_auth(), body.len());
    let text = send_until_closed(proxy.addr, bytes.as_bytes()).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // The trailing bytes parse as a second request (method SMUGGLED), which is refused, not forwarded.
    assert_eq!(
        text.matches("HTTP/1.1 4").count(),
        1,
        "the trailing bytes were not refused: {text}"
    );
    assert_eq!(upstream.requests().len(), 1);
    assert_eq!(upstream.requests()[0].body.as_ref(), body.as_bytes());
}

#[tokio::test]
async fn slowloris_headers_are_cut_off_and_idle_connections_do_not_block_others() {
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(&upstream.base_url(), &[("HEADER_READ_TIMEOUT", "1")]).await;
    // Each idle connection costs this process two descriptors (client and proxy side):
    // raise the soft limit as far as allowed, and size the crowd from what we got.
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let crowd = usize::try_from(limit.saturating_sub(200) / 2).map_or(1000, |n| n.min(1000));
    let mut idle = Vec::new();
    for _ in 0..crowd {
        idle.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    // A hang, not a slowdown, is the failure: the bound is far above any busy machine's delay.
    let served = tokio::time::timeout(Duration::from_secs(30), chat(&proxy, "openai/gpt-4o")).await;
    assert_eq!(
        served.expect("idle connections blocked a request").status,
        200
    );

    let mut slow = TcpStream::connect(proxy.addr).await.unwrap();
    slow.write_all(b"GET /api/v1/models HTTP/1.1\r\n")
        .await
        .unwrap();
    let dribbling = Instant::now();
    let mut answer = None;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let _ = slow.write_all(b"X-Slow: a\r\n").await;
        let mut buf = [0u8; 512];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), slow.read(&mut buf)).await
        {
            answer = Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            break;
        }
    }
    let answer = answer.unwrap_or_else(|| {
        panic!(
            "a client dribbling headers was still connected after {:?}",
            dribbling.elapsed()
        )
    });
    assert_eq!(status(&answer), 408, "{answer}");
    assert_openrouter_error(&answer, 408, "slowloris");
    // The idle ones are closed by the same timeout, without an answer: they asked nothing.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(3), idle[0].read(&mut buf))
        .await
        .expect("idle connection closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf[..n]));
}

/// Both framings at once is how requests are smuggled past a front end that reads one
/// while the back end reads the other: refused outright, nothing forwarded, connection closed.
#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused_and_nothing_is_smuggled() {
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(&upstream.base_url(), &[]).await;
    let smuggled = format!("GET /api/v1/smuggled HTTP/1.1\r\nHost: p\r\n{}\r\n", auth());
    let chunk = r#"{"model":"a/b"}"#;
    for framing in [
        "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
    ] {
        let bytes = format!(
            "POST /api/v1/chat/completions HTTP/1.1\r\nHost: p\r\n{}{framing}\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n{smuggled}",
            json_auth(),
            chunk.len()
        );
        // One answer only: the smuggled request after the body is never read.
        let response = send_until_closed(proxy.addr, bytes.as_bytes()).await;
        assert_eq!(status(&response), 400, "{response}");
        assert_openrouter_error(&response, 400, framing);
        assert_eq!(response.matches("HTTP/1.1").count(), 1, "{response}");
    }
    assert!(upstream.requests().is_empty(), "something was forwarded");
    assert_eq!(
        get(&proxy, "/metrics")
            .await
            .text()
            .matches("route=\"malformed_head\",status=\"4xx\"} 2")
            .count(),
        1,
        "refusals are counted"
    );
}

/// The check covers a connection's first head; later heads on a keep-alive connection are
/// hyper's, which still refuses a broken one and never forwards it.
#[tokio::test]
async fn a_broken_second_head_on_a_kept_alive_connection_is_refused_by_hyper() {
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(&upstream.base_url(), &[]).await;
    let bytes = format!(
        "GET /api/v1/models HTTP/1.1\r\nHost: p\r\n{}\r\nGARBAGE\r\n\r\n",
        auth()
    );
    let text = send_until_closed(proxy.addr, bytes.as_bytes()).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("HTTP/1.1 400"), "{text}");
    assert_eq!(upstream.requests().len(), 1);
}

#[tokio::test]
async fn a_head_arriving_in_pieces_is_served_once_whole() {
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(&upstream.base_url(), &[]).await;
    let request = post("/api/v1/chat/completions", &json_auth(), FREE_BODY);
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    // Split inside the request line, inside a header and inside the blank line.
    let blank = request.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    for piece in [
        &request[..7],
        &request[7..40],
        &request[40..blank + 2],
        &request[blank + 2..],
    ] {
        tcp.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut out = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut out))
        .await
        .expect("an answer")
        .unwrap();
    let response = String::from_utf8_lossy(&out[..n]);
    assert_eq!(status(&response), 200, "{response}");
    assert_eq!(upstream.requests()[0].body.as_ref(), FREE_BODY.as_bytes());
}

#[tokio::test]
async fn a_kept_alive_connection_left_idle_is_closed_after_the_header_timeout() {
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(&upstream.base_url(), &[("HEADER_READ_TIMEOUT", "1")]).await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let request = format!("GET /api/v1/models HTTP/1.1\r\nHost: p\r\n{}\r\n", auth());
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let idle = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("the idle connection is closed")
        .unwrap_or(0);
    assert!(
        n == 0 || buf[..n].starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(idle.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn a_body_that_stops_arriving_gets_a_408_and_costs_no_quota() {
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(&upstream.base_url(), &[("REQUEST_BODY_TIMEOUT", "1")]).await;
    let head = format!(
        "POST /api/v1/chat/completions HTTP/1.1\r\nHost: p\r\n{}Content-Length: {}\r\n\r\n",
        json_auth(),
        FREE_BODY.len()
    );
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&FREE_BODY.as_bytes()[..10]).await.unwrap();
    let paused = Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    let response = String::from_utf8_lossy(&out);
    assert_eq!(status(&response), 408, "{response}");
    assert_openrouter_error(&response, 408, "stalled body");
    assert!(paused.elapsed() >= Duration::from_millis(900));
    assert!(upstream.requests().is_empty());
    let status = get(&proxy, "/key_status").await.json();
    assert_eq!(status["keys"][0]["totals"]["requests"], 0);
}

#[tokio::test]
async fn connections_over_max_connections_are_closed_at_once_and_the_proxy_keeps_serving() {
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(
        &upstream.base_url(),
        &[("MAX_CONNECTIONS", "3"), ("HEADER_READ_TIMEOUT", "60")],
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    // The fourth is accepted and closed at once: it reads the end of the stream.
    let mut extra = TcpStream::connect(proxy.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), extra.read(&mut buf))
        .await
        .expect("a connection over the cap was kept open")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // The held ones leave: there is room again (once the proxy has seen them go).
    held.clear();
    let mut served = false;
    for _ in 0..100 {
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer).await;
        if answer.starts_with(b"HTTP/1.1 200") {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "the proxy did not serve again under the cap");
    assert_eq!(chat(&proxy, "openai/gpt-4o").await.status, 200);
}

/// An HTTP/2 (prior knowledge) connection to the proxy: its request sender, and a task
/// that ends when the proxy closes the connection.
async fn h2_connection(
    proxy: &Proxy,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    (
        sender,
        tokio::spawn(async move {
            let _ = connection.await;
        }),
    )
}

#[tokio::test]
async fn idle_http2_connections_are_closed_after_the_header_timeout_but_open_streams_are_not() {
    let (upstream, chunks) = Upstream::with_stream().await;
    let proxy = Proxy::start(&upstream.base_url(), &[("HEADER_READ_TIMEOUT", "1")]).await;
    // No request at all after the preface: closed.
    let (_idle_sender, idle) = h2_connection(&proxy).await;
    tokio::time::timeout(Duration::from_secs(10), idle)
        .await
        .expect("an idle HTTP/2 connection stayed open")
        .unwrap();
    // A stream that stays open longer than the timeout keeps its connection.
    let (mut sender, open) = h2_connection(&proxy).await;
    let request = hyper::Request::post("/api/v1/chat/completions")
        .header("authorization", format!("Bearer {PROXY_KEY}"))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"model":"a/b","stream":true}"#,
        )))
        .unwrap();
    let mut body = sender.send_request(request).await.unwrap().into_body();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(
        !open.is_finished(),
        "a connection with an open stream was closed"
    );
    relay_one(&chunks, &mut body, "data: {}\n\n").await;
    drop((body, chunks));
    // Once the stream is over, the connection is idle again and goes.
    tokio::time::timeout(Duration::from_secs(10), open)
        .await
        .expect("the connection stayed open after its stream ended")
        .unwrap();
}

#[tokio::test]
async fn an_http2_client_that_stops_reading_is_cut_off_and_its_upstream_request_closed() {
    let (upstream, chunks) = Upstream::with_stream().await;
    let proxy = Proxy::start(&upstream.base_url(), &[("STREAM_IDLE_TIMEOUT", "1")]).await;
    // Flow control, not the socket, stalls an HTTP/2 stream: small windows the client
    // never opens again, because it never reads the body.
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = hyper::Request::post("/api/v1/chat/completions")
        .header("authorization", format!("Bearer {PROXY_KEY}"))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"model":"a/b","stream":true}"#,
        )))
        .unwrap();
    let feeding = feed_until_closed(chunks);
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let closed = tokio::time::timeout(Duration::from_secs(20), feeding)
        .await
        .expect("the upstream request stayed open for an HTTP/2 client that reads nothing")
        .unwrap();
    assert!(closed);
    // The proxy closed the client's connection too.
    tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("the stalled HTTP/2 connection stayed open")
        .unwrap();
    drop(response);
}
