//! openrouter-proxy: one OpenRouter base URL in front of many OpenRouter keys.
//!
//! The binary (`main.rs`) only parses configuration and runs [`server::serve`];
//! everything else lives here so tests and benches can run the proxy in-process.

pub mod attempts;
pub mod auth;
pub mod body;
pub mod breaker;
pub mod cli;
pub mod config;
pub mod env_file;
pub mod error;
pub mod keys;
pub mod logging;
pub mod mask;
pub mod metrics;
pub mod model;
pub mod outcome;
pub mod probe;
pub mod proxy;
pub mod reaction;
pub mod relay;
pub mod router;
pub mod server;
pub mod sse;
pub mod state;
pub mod status;
pub mod upstream;
