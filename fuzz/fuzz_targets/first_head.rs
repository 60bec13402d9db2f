//! The first-head check against hyper itself, both ways: a head the check passes must
//! reach the service (otherwise the client gets hyper's bare answer instead of
//! OpenRouter's error shape), and a head it refuses must be one hyper refuses too
//! (otherwise a valid request is lost), except both framings at once, refused on purpose.
#![no_main]

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use openrouter_proxy::server::first_head::{inspect, Verdict, BOTH_FRAMINGS, MAX_HEAD_BYTES};
use tokio::io::AsyncWriteExt;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

/// Whether hyper, configured as the proxy configures it, hands this head to the service.
fn hyper_serves(data: &[u8]) -> bool {
    let served = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&served);
    runtime().block_on(async move {
        let (mut client, server) = tokio::io::duplex(2 * MAX_HEAD_BYTES);
        client.write_all(data).await.expect("fits the pipe");
        client.shutdown().await.expect("shutdown");
        let service = service_fn(move |_| {
            seen.store(true, Relaxed);
            async { Ok::<_, std::convert::Infallible>(hyper::Response::new(Empty::<Bytes>::new())) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .max_buf_size(MAX_HEAD_BYTES)
            .serve_connection(TokioIo::new(server), service)
            .await;
    });
    served.load(Relaxed)
}

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_HEAD_BYTES || data.starts_with(b"PRI * HTTP/2.0") {
        return;
    }
    match inspect(data) {
        Verdict::Pass => assert!(
            hyper_serves(data),
            "passed a head hyper refuses: {:?}",
            String::from_utf8_lossy(data)
        ),
        Verdict::Refuse(_, message) if message != BOTH_FRAMINGS => assert!(
            !hyper_serves(data),
            "refused a head hyper serves ({message}): {:?}",
            String::from_utf8_lossy(data)
        ),
        _ => {}
    }
});
