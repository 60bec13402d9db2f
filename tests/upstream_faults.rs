//! Upstream faults: whatever OpenRouter (or the network) does, the client gets a clear
//! error or a clean end, and the proxy's in-flight gauges return to zero.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A raw TCP "upstream" that runs `behave` on every connection it accepts.
async fn raw_upstream<F, Fut>(behave: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(behave(stream));
        }
    });
    addr
}

/// Reads the request head so the client sees a normal exchange start.
async fn read_head(stream: &mut TcpStream) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

const SSE_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
const CONTENT: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n";

fn chunk(data: &str) -> Vec<u8> {
    format!("{:x}\r\n{data}\r\n", data.len()).into_bytes()
}

async fn stream_request(proxy: &Proxy) -> Answer {
    let body = Bytes::from_static(br#"{"model":"a/b","stream":true}"#);
    send(
        request("POST", &proxy.url("/api/v1/chat/completions"))
            .body(Full::new(body))
            .unwrap(),
    )
    .await
}

/// The proxy has nothing in flight but the scrape asking.
async fn assert_gauges_at_rest(proxy: &Proxy) {
    let settled = eventually(Duration::from_secs(3), || {
        proxy
            .app
            .metrics
            .open_streams
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
            && proxy
                .app
                .metrics
                .in_flight
                .load(std::sync::atomic::Ordering::Relaxed)
                == 0
    })
    .await;
    assert!(settled, "gauges did not return to zero");
}

fn last_event(text: &str) -> serde_json::Value {
    let event = text.trim_end().rsplit("\n\n").next().unwrap();
    serde_json::from_str(
        event
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("not an event: {text}")),
    )
    .unwrap()
}

#[tokio::test]
async fn refused_connections_tls_failures_and_garbage_are_502s() {
    let garbage = raw_upstream(|mut s| async move {
        read_head(&mut s).await;
        let _ = s.write_all(b"this is not HTTP at all\r\n\r\n").await;
    })
    .await;
    // Answers a TLS ClientHello with plain HTTP, as a misconfigured https:// base URL would.
    let plain_http = raw_upstream(|mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            .await;
        let _ = s.read(&mut [0u8; 1024]).await;
    })
    .await;
    for base in [
        closed_base_url().await,
        format!("http://{garbage}/api/v1"),
        format!("https://{plain_http}/api/v1"),
    ] {
        let proxy = Proxy::start(&base, &[("MAX_RETRIES", "1"), ("UPSTREAM_TIMEOUT", "5")]).await;
        chat(&proxy, "a/b").await.assert_error(502);
        assert_gauges_at_rest(&proxy).await;
    }
}

#[tokio::test]
async fn an_enormous_response_header_is_a_502_not_a_crash() {
    let addr = raw_upstream(|mut s| async move {
        read_head(&mut s).await;
        let huge = format!(
            "HTTP/1.1 200 OK\r\nX-Huge: {}\r\nContent-Length: 2\r\n\r\n{{}}",
            "h".repeat(1 << 20)
        );
        let _ = s.write_all(huge.as_bytes()).await;
    })
    .await;
    let proxy = Proxy::start(&format!("http://{addr}/api/v1"), &[("MAX_RETRIES", "0")]).await;
    chat(&proxy, "a/b").await.assert_error(502);
    assert_gauges_at_rest(&proxy).await;
    assert_eq!(get(&proxy, "/health").await.status, 200);
}

#[tokio::test]
async fn a_stream_that_goes_silent_ends_with_an_error_event_after_the_idle_timeout() {
    let addr = raw_upstream(|mut s| async move {
        read_head(&mut s).await;
        let _ = s.write_all(&[SSE_HEAD, &chunk(CONTENT)].concat()).await;
        tokio::time::sleep(Duration::from_secs(30)).await; // silent, never closes
    })
    .await;
    let proxy = Proxy::start(
        &format!("http://{addr}/api/v1"),
        &[("STREAM_IDLE_TIMEOUT", "1")],
    )
    .await;
    let answer = tokio::time::timeout(Duration::from_secs(5), stream_request(&proxy))
        .await
        .expect("the stream ended");
    let text = answer.text();
    assert!(text.starts_with(CONTENT), "{text}");
    assert_eq!(last_event(&text)["error"]["code"], 504, "{text}");
    assert_gauges_at_rest(&proxy).await;
}

#[tokio::test]
async fn a_connection_reset_mid_stream_ends_with_an_error_event() {
    let addr = raw_upstream(|mut s| async move {
        read_head(&mut s).await;
        let _ = s.write_all(&[SSE_HEAD, &chunk(CONTENT)].concat()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = s.set_zero_linger(); // drop sends RST
    })
    .await;
    let proxy = Proxy::start(&format!("http://{addr}/api/v1"), &[]).await;
    let text = stream_request(&proxy).await.text();
    assert!(text.starts_with(CONTENT), "{text}");
    assert_eq!(last_event(&text)["error"]["code"], 502, "{text}");
    assert_gauges_at_rest(&proxy).await;
}

#[tokio::test]
async fn a_body_that_never_ends_is_piped_without_buffering() {
    let addr = raw_upstream(|mut s| async move {
        read_head(&mut s).await;
        let head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
        if s.write_all(head).await.is_err() {
            return;
        }
        let piece = chunk(&"x".repeat(64 * 1024));
        while s.write_all(&piece).await.is_ok() {}
    })
    .await;
    // The proxy runs as a process of its own, so its memory is measured apart from this
    // test process (and from the sibling tests running beside it).
    let dir = tempfile::tempdir().unwrap();
    let proxy = Running::start(
        &format!("http://{addr}/api/v1"),
        &dir.path().join("state.json"),
        &[],
    )
    .await;
    let response = client()
        .request(
            request("GET", &proxy.url("/api/v1/files/endless"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = response.into_body();
    let (mut received, mut baseline) = (0usize, None);
    while received < 400 << 20 {
        let frame = body
            .frame()
            .await
            .expect("the body goes on")
            .expect("no error");
        received += frame.into_data().map_or(0, |d| d.len());
        if baseline.is_none() && received > 16 << 20 {
            baseline = Some(proxy.rss_mib());
        }
    }
    let growth = proxy.rss_mib().saturating_sub(baseline.unwrap());
    assert!(
        growth < 64,
        "the proxy grew by {growth} MiB while 400 MiB passed through"
    );
}

#[tokio::test]
async fn an_unreachable_openrouter_costs_no_quota_and_fails_fast_once_it_is_known_down() {
    let proxy = Proxy::start(
        &closed_base_url().await,
        &[("FREE_BURST", "1"), ("MAX_RETRIES", "10")],
    )
    .await;
    chat(&proxy, "a/b:free").await.assert_error(502);
    let status = get(&proxy, "/key_status").await.json();
    let attempts = |status: &serde_json::Value| -> u64 {
        (0..2)
            .map(|i| status["keys"][i]["totals"]["requests"].as_u64().unwrap())
            .sum()
    };
    let first = attempts(&status);
    // Retried until the breaker opened (three in a row), not ten times.
    assert_eq!(first, 3, "{status}");
    for key in status["keys"].as_array().unwrap() {
        assert_eq!(key["daily_used"], 0, "quota spent on an outage: {key}");
        assert_eq!(key["next_free_slot_in_ms"], 0, "limiter slot kept: {key}");
        assert_eq!(key["status"], "active", "{key}");
    }
    let unreached: u64 = (0..2)
        .map(|i| status["keys"][i]["totals"]["unreached"].as_u64().unwrap())
        .sum();
    assert_eq!(unreached, first);
    let health = get(&proxy, "/health?format=json").await.json();
    assert_eq!(
        health,
        serde_json::json!({"status": "degraded", "upstream": "unreachable", "state": "kept"})
    );
    // Known down: the next request makes its one attempt and is not retried.
    chat(&proxy, "a/b:free").await.assert_error(502);
    let status = get(&proxy, "/key_status").await.json();
    assert_eq!(attempts(&status), first + 1);
}

#[tokio::test]
async fn one_answer_from_openrouter_closes_the_breaker() {
    // Refuses connections until `open` is set, then answers like OpenRouter.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let proxy = Proxy::start(&format!("http://{addr}/api/v1"), &[]).await;
    for _ in 0..2 {
        chat(&proxy, "a/b").await.assert_error(502);
    }
    assert!(proxy.app.breaker.is_open());
    let upstream = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = upstream.accept().await {
            read_head(&mut stream).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
                .await;
        }
    });
    assert_eq!(chat(&proxy, "a/b").await.status, 200);
    assert!(!proxy.app.breaker.is_open());
    let health = get(&proxy, "/health?format=json").await.json();
    assert_eq!(health["status"], "OK");
}

#[tokio::test]
async fn a_connection_that_breaks_after_the_request_was_sent_is_not_retried_for_a_generation() {
    let addr = raw_upstream(|mut s| async move {
        read_head(&mut s).await;
        // Received, then gone without a word: OpenRouter may be generating already.
        drop(s);
    })
    .await;
    let proxy = Proxy::start(&format!("http://{addr}/api/v1"), &[]).await;
    let answer = chat(&proxy, "a/b").await;
    answer.assert_error(502);
    assert!(answer.text().contains("not retried"), "{}", answer.text());
    let status = get(&proxy, "/key_status").await.json();
    let attempts: u64 = (0..2)
        .map(|i| status["keys"][i]["totals"]["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(attempts, 1, "a POST that may have run was sent again");
    // A GET cannot generate anything: it is retried as before.
    get(&proxy, "/api/v1/models").await.assert_error(502);
    let status = get(&proxy, "/key_status").await.json();
    let attempts: u64 = (0..2)
        .map(|i| status["keys"][i]["totals"]["requests"].as_u64().unwrap())
        .sum();
    assert!(attempts > 2, "the GET was not retried: {status}");
}

#[tokio::test]
async fn a_relayed_stream_never_carries_the_upstream_s_content_length() {
    const ERROR_EVENT: &str = "data: {\"error\":{\"code\":502,\"message\":\"Provider returned error\"},\"choices\":[]}\n\n";
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = std::sync::Arc::clone(&answered);
    let addr = raw_upstream(move |mut s| {
        let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            read_head(&mut s).await;
            // The first answer is a pre-content error, the retry a short success: both framed
            // by Content-Length, which the client must not get (its body is neither).
            let body = if n == 0 {
                ERROR_EVENT.to_owned()
            } else {
                format!("{CONTENT}data: [DONE]\n\n")
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
        }
    })
    .await;
    let proxy = Proxy::start(&format!("http://{addr}/api/v1"), &[]).await;
    let answer = stream_request(&proxy).await;
    assert!(
        answer.headers.get("content-length").is_none(),
        "{:?}",
        answer.headers
    );
    let text = answer.text();
    assert!(
        text.contains("Hel") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    assert!(!text.contains("error"), "{text}");
}

#[tokio::test]
async fn a_long_line_before_the_first_event_end_is_passed_on_after_64_kib_not_held() {
    let (upstream, chunks) = Upstream::with_stream().await;
    let proxy = Proxy::start(&upstream.base_url(), &[]).await;
    let mut body = open_stream(&proxy.url("/api/v1/chat/completions")).await;
    let piece = Bytes::from(vec![b'x'; 1024]);
    chunks.send(Bytes::from_static(b"data: ")).await.unwrap();
    // 100 KiB of one line and no end of event: past the 64 KiB the relay holds, it must pipe.
    let feeder = tokio::spawn(async move {
        for _ in 0..100 {
            if chunks.send(piece.clone()).await.is_err() {
                return None;
            }
        }
        Some(chunks) // kept open: the event never ends
    });
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the relay held a long line back instead of passing it on")
        .unwrap()
        .unwrap();
    assert!(first.into_data().unwrap().starts_with(b"data: xxxx"));
    drop(feeder);
}

#[tokio::test]
async fn openrouter_is_asked_for_uncompressed_answers_it_can_read() {
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(&upstream.base_url(), &[]).await;
    let answer = send(
        request("POST", &proxy.url("/api/v1/chat/completions"))
            .header("accept-encoding", "gzip, br")
            .body(Full::new(Bytes::from_static(br#"{"model":"a/b"}"#)))
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, 200);
    let seen = &upstream.requests()[0];
    assert_eq!(seen.headers["accept-encoding"], "identity");
}

#[tokio::test]
async fn an_upstream_101_is_a_502_and_a_truncated_200_says_openrouter_answered() {
    let switching = raw_upstream(|mut s| async move {
        read_head(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
            .await;
        let _ = s.read(&mut [0u8; 64]).await;
    })
    .await;
    let proxy = Proxy::start(&format!("http://{switching}/api/v1"), &[]).await;
    let answer = chat(&proxy, "a/b").await;
    answer.assert_error(502);
    assert!(answer.text().contains("101"), "{}", answer.text());

    let truncated = raw_upstream(|mut s| async move {
        read_head(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"id\":")
            .await;
    })
    .await;
    let proxy = Proxy::start(&format!("http://{truncated}/api/v1"), &[]).await;
    let answer = chat(&proxy, "a/b:free").await;
    answer.assert_error(502);
    assert!(answer.text().contains("was reached"), "{}", answer.text());
    let status = get(&proxy, "/key_status").await.json();
    let attempts: u64 = (0..2)
        .map(|i| status["keys"][i]["totals"]["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(
        attempts, 1,
        "a generation that may have run was retried: {status}"
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_and_its_upstream_request_closed() {
    let (upstream, chunks) = Upstream::with_stream().await;
    let proxy = Proxy::start(&upstream.base_url(), &[("STREAM_IDLE_TIMEOUT", "1")]).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut client = socket.connect(proxy.addr).await.unwrap();
    let body = r#"{"model":"a/b","stream":true}"#;
    let head = format!(
        "POST /api/v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {PROXY_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    client.write_all(head.as_bytes()).await.unwrap();
    // The upstream streams content as fast as it is taken; the client reads nothing.
    let closed = feed_until_closed(chunks);
    let closed = tokio::time::timeout(Duration::from_secs(20), closed)
        .await
        .expect("the upstream request stayed open for a client that reads nothing")
        .unwrap();
    assert!(closed);
    drop(client);
}

/// The binary, its OpenRouter a port on 127.0.0.1 where nothing listens; with its state
/// file's directory.
async fn running_against_a_closed_port(vars: &[(&str, &str)]) -> (Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let proxy = Running::start(
        &closed_base_url().await,
        &dir.path().join("state.json"),
        vars,
    )
    .await;
    (proxy, dir)
}

#[tokio::test]
async fn an_unreachable_openrouter_is_logged_as_a_sentence_not_a_debug_dump() {
    let (proxy, _dir) = running_against_a_closed_port(&[("MAX_RETRIES", "0")]).await;
    let answer = proxy.chat("qwen/qwen3-coder:free").await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    proxy
        .wait_for_log("could not reach OpenRouter: 127.0.0.1 refused the connection")
        .await;
    assert!(
        !proxy.log_text().contains("ConnectError"),
        "{}",
        proxy.log_text()
    );
}

#[tokio::test]
async fn an_openrouter_unreachable_at_startup_is_said_once_before_any_request() {
    let (proxy, _dir) = running_against_a_closed_port(&[("KEY_PROBE_INTERVAL", "300")]).await;
    let said = "could not reach OpenRouter at startup: 127.0.0.1 refused the connection; \
                requests will be answered 502 until it can be reached";
    proxy.wait_for_log(said).await;
    // The second key's probe (spaced after the first) does not say it again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let log = proxy.log_text();
    assert_eq!(
        log.matches("could not reach OpenRouter").count(),
        1,
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.contains(said) && l.contains("WARN")),
        "{log}"
    );
}
