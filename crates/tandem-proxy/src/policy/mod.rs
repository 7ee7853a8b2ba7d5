//! Request policies resolved once per route or upstream when the snapshot is built, applied by
//! [`crate::forward`] (order in [`crate::stack`]).
//!
//! # Layout
//! - [`authz`]: a listener's authorization policy (deny, then allow, default deny; 403).
//! - [`authn`]: JWT authentication of a route's requests (401) and claims as headers.
//! - [`ratelimit`]: local rate limiting, a token bucket per key (429 with `Retry-After`).
//! - [`retry`]: which failures are retried, back-off, and the retry budget.
//! - [`breaker`]: passive outlier detection, a circuit breaker per endpoint.
//! - [`limit`]: per-upstream concurrency limits (fast 503 `overloaded`).

pub mod authn;
pub mod authz;
pub mod breaker;
pub mod limit;
pub mod ratelimit;
pub mod retry;
