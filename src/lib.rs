//! openrouter-proxy: one OpenRouter base URL in front of many OpenRouter keys.
//!
//! The binary (`main.rs`) only parses configuration and runs [`server::serve`];
//! everything else lives here so tests and benches can run the proxy in-process.
//! The folders follow one request: `server` accepts it, `ingress` reads and
//! routes it (`aliases` names the models a model alias stands for), `clients` admits it (who is asking, within which limits), `forward` sends it to OpenRouter with a key from `keys`, and
//! `stream` carries the answer back; `observe` shows what happened; `shared` keeps
//! several replicas' key state in one Redis.

pub mod aliases;
pub mod app;
pub mod clients;
pub mod config;
pub mod error;
pub mod forward;
pub mod http1_rules;
pub mod ingress;
pub mod keys;
pub mod mask;
pub mod observe;
pub mod server;
pub mod shared;
pub mod stream;
pub mod tls;
pub mod worker;
