//! Request bodies as the body peek sees them: it must never panic, and what it
//! accepts must be a JSON object whose model (if any) came from the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openrouter_proxy::ingress::model::{read, MAX_MODEL_LEN};

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = read(data) {
        assert!(data.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'));
        if let Some(model) = info.model {
            assert!(model.len() <= MAX_MODEL_LEN);
            assert_eq!(info.free, model.ends_with(":free"));
        }
    }
});
