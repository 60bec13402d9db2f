//! Ingress: what the proxy does with a request before any key is involved.
//!
//! Routing to the proxy's own endpoints or to forwarding, the proxy-key check,
//! the capped read of the request body, and what the body says about the model
//! (free or paid). It owns no upstream I/O: forwarding is `forward`'s.

pub mod auth;
pub mod detach;
pub mod model;
pub mod models_list;
pub mod proxied;
pub mod request_body;
pub mod router;
