//! Stream: the response body the client receives.
//!
//! Either plain bytes, an upstream body piped frame by frame (after any held
//! prefix), or an event stream relayed with pre-content inspection and retries
//! inside the same client stream; plus the SSE event scanning that inspection
//! uses. Nothing here parses or copies frames once content flows.

pub mod accounted;
pub mod body;
pub mod idle_watch;
pub mod relay;
pub mod sse;
