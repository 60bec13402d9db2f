//! The own HTTP/1.1 client against an upstream on 127.0.0.1 that writes scripted bytes:
//! answers cut anywhere, every framing, and which connections are used again.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::http::uri::{Authority, Scheme};
use hyper::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::config::UpstreamBase;
use crate::forward::pool::UpstreamClients;

/// An upstream that answers each request with the next of its answers, written `step`
/// bytes at a time, and closes the connection after those that say so; it keeps what
/// each connection received.
struct Scripted {
    base: UpstreamBase,
    connections: Arc<Mutex<Vec<String>>>,
}

/// An answer's bytes, and whether the upstream closes the connection after them.
type Answer = (&'static str, bool);

impl Scripted {
    async fn start(answers: &[Answer], step: usize) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections: Arc<Mutex<Vec<String>>> = Arc::default();
        let received = Arc::clone(&connections);
        let answers = Arc::new(Mutex::new(VecDeque::from(answers.to_vec())));
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let at = {
                    let mut connections = received.lock().unwrap();
                    connections.push(String::new());
                    connections.len() - 1
                };
                let (received, answers) = (Arc::clone(&received), Arc::clone(&answers));
                tokio::spawn(serve(stream, step, answers, move |request: &str| {
                    received.lock().unwrap()[at].push_str(request);
                }));
            }
        });
        Scripted {
            base: UpstreamBase {
                scheme: Scheme::HTTP,
                authority: Authority::try_from(format!("127.0.0.1:{port}")).unwrap(),
                path: String::new(),
            },
            connections,
        }
    }

    fn clients(&self) -> UpstreamClients {
        UpstreamClients::new(&self.base, false, &[], Duration::from_secs(90))
    }

    fn request(&self, body: &'static str) -> Request<Full<Bytes>> {
        Request::post(self.base.uri("/chat", None).unwrap())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    }

    fn connections(&self) -> usize {
        self.connections.lock().unwrap().len()
    }
}

async fn serve(
    mut stream: TcpStream,
    step: usize,
    answers: Arc<Mutex<VecDeque<Answer>>>,
    received: impl Fn(&str),
) {
    while let Some(request) = read_request(&mut stream).await {
        received(&request);
        let Some((answer, close)) = answers.lock().unwrap().pop_front() else {
            return;
        };
        for piece in answer.as_bytes().chunks(step) {
            stream.write_all(piece).await.unwrap();
            if step < answer.len() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        if close {
            return;
        }
    }
}

/// One request's head and `content-length` body, as text; `None` at the connection's end.
async fn read_request(stream: &mut TcpStream) -> Option<String> {
    let mut received = Vec::new();
    let mut byte = [0u8; 1];
    while !received.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        received.push(byte[0]);
    }
    let head = String::from_utf8(received).unwrap();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
        .map_or(0, |n| n.parse().unwrap());
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.ok()?;
    Some(head + std::str::from_utf8(&body).unwrap())
}

/// The answer's status and whole body, or the body's error as text.
async fn answer(
    clients: &UpstreamClients,
    request: Request<Full<Bytes>>,
) -> (u16, Result<String, String>) {
    let response = clients.request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|body| String::from_utf8(body.to_bytes().to_vec()).unwrap())
        .map_err(|error| error.to_string());
    (status, body)
}

const CHUNKED: &str = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n7;x=1\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n";
const LENGTH: &str = "HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok";

#[tokio::test]
async fn answers_cut_into_single_bytes_are_read_whole_and_the_connection_used_again() {
    let upstream = Scripted::start(&[(CHUNKED, false), (LENGTH, false)], 1).await;
    let clients = upstream.clients();
    assert_eq!(
        answer(&clients, upstream.request("{}")).await,
        (200, Ok("hello, world".into()))
    );
    assert_eq!(
        answer(&clients, upstream.request("{\"a\":1}")).await,
        (201, Ok("ok".into()))
    );
    assert_eq!(upstream.connections(), 1, "one connection for both");
    let received = upstream.connections.lock().unwrap()[0].clone();
    let port = upstream.base.authority.port_u16().unwrap();
    assert_eq!(
        received,
        format!(
            "POST /chat HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}\
             POST /chat HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{{\"a\":1}}"
        )
    );
}

#[tokio::test]
async fn a_connection_the_answer_says_to_close_or_that_ends_the_body_is_not_used_again() {
    // The upstream keeps the first two open: the client must not send on them again.
    for (first, then_close) in [
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
            false,
        ),
        ("HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", false),
        // No length: the body is everything until the server closes.
        ("HTTP/1.1 200 OK\r\n\r\nok", true),
    ] {
        let upstream = Scripted::start(&[(first, then_close), (LENGTH, false)], 64).await;
        let clients = upstream.clients();
        assert_eq!(
            answer(&clients, upstream.request("{}")).await,
            (200, Ok("ok".into())),
            "{first}"
        );
        assert_eq!(
            answer(&clients, upstream.request("{}")).await,
            (201, Ok("ok".into()))
        );
        assert_eq!(upstream.connections(), 2, "{first}");
    }
}

#[tokio::test]
async fn answers_that_break_off_or_break_the_framing_are_errors_and_their_connection_is_closed() {
    for (broken, error) in [
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
            "the connection closed before the answer's end",
        ),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n5z\r\n",
            "invalid chunked body from upstream: a chunk size that is not hex",
        ),
    ] {
        let upstream = Scripted::start(&[(broken, true), (LENGTH, false)], 64).await;
        let clients = upstream.clients();
        assert_eq!(
            answer(&clients, upstream.request("{}")).await,
            (200, Err(error.into())),
            "{broken}"
        );
        assert_eq!(
            answer(&clients, upstream.request("{}")).await,
            (201, Ok("ok".into()))
        );
        assert_eq!(upstream.connections(), 2, "{broken}");
    }
}

#[tokio::test]
async fn a_head_that_is_not_http_or_never_comes_fails_the_request_as_sent() {
    for (wire, reason) in [
        (
            "SSH-2.0-OpenSSH_9.2\r\n\r\n",
            "invalid response head from upstream",
        ),
        ("", "the connection closed before the answer's head"),
    ] {
        let upstream = Scripted::start(&[(wire, true)], 64).await;
        let clients = upstream.clients();
        let Err(error) = clients.request(upstream.request("{}")).await else {
            panic!("an answer from {wire:?}");
        };
        assert!(!error.is_connect(), "the request was written: {wire:?}");
        let cause = std::error::Error::source(&error).unwrap().to_string();
        assert!(cause.starts_with(reason), "{cause}");
    }
}

#[tokio::test]
async fn bodies_larger_than_the_sockets_buffers_go_out_and_come_back_whole() {
    let big_answer: &'static str = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: 300000\r\n\r\n{}",
            "a".repeat(300_000)
        )
        .into_boxed_str(),
    );
    let upstream = Scripted::start(&[(big_answer, false), (LENGTH, false)], 1 << 20).await;
    let clients = upstream.clients();
    let body = "b".repeat(4 << 20);
    let request = Request::post(upstream.base.uri("/chat", None).unwrap())
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let (status, answered) = answer(&clients, request).await;
    assert_eq!((status, answered.map(|a| a.len())), (200, Ok(300_000)));
    assert_eq!(
        answer(&clients, upstream.request("{}")).await,
        (201, Ok("ok".into()))
    );
    assert_eq!(upstream.connections(), 1);
    let received = upstream.connections.lock().unwrap()[0].clone();
    assert!(received.contains(&format!("content-length: {}\r\n\r\n{body}POST", 4 << 20)));
}
