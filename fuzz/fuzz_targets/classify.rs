//! Upstream answers as the classifier and the SSE inspection see them: any bytes
//! as an error body under any status, and as an event stream cut anywhere.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openrouter_proxy::forward::outcome::{classify, error_object};
use openrouter_proxy::stream::sse::{classify_event, event_len};

fuzz_target!(|data: &[u8]| {
    let Some((&status, body)) = data.split_first() else { return };
    let status = 200 + u16::from(status) * 2;
    let error = error_object(body);
    let _ = classify(status, &hyper::HeaderMap::new(), error.as_ref());
    let mut rest = body;
    while let Some(len) = event_len(rest) {
        assert!(len > 0 && len <= rest.len());
        let _ = classify_event(&rest[..len]);
        rest = &rest[len..];
    }
});
