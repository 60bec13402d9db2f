//! Observe: what people and machines see of the proxy.
//!
//! Prometheus metrics from atomics, `/health`, `/key_status` and the status
//! page, and logging setup. It reads state; it never decides anything about a request.

pub mod aliases;
pub mod clients;
pub mod log_lines;
pub mod logging;
pub mod metrics;
pub mod status;
