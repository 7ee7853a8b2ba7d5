//! Request policies resolved once per route when the snapshot is built, applied by
//! [`crate::forward`] between routing and balancing (order in [`crate::stack`]).
//!
//! # Layout
//! - [`ratelimit`]: local rate limiting, a token bucket per key (429 with `Retry-After`).
//!
//! Retries with budgets, timeouts per try, breakers and concurrency limits join here.

pub mod ratelimit;
