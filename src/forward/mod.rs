//! Forward: one request's journey to OpenRouter and back to a settled answer.
//!
//! The attempt loop (pick a key, send, classify, react, retry), the upstream
//! connection pool, header hygiene, the pure classification of
//! OpenRouter's answers and the pure reaction table beside it, the circuit
//! breaker, and the bounded hold of an answer's start for inspection. It knows
//! nothing of routing or of how the client receives the body.

pub mod attempts;
pub mod breaker;
pub mod held;
pub mod outcome;
pub mod pool;
pub mod reaction;
pub mod route;
pub mod upstream;
