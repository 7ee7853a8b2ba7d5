//! Tandem's data path: everything a request or connection touches between accept and upstream.
//!
//! Modules follow the connection, so `ls src/` reads as the lifecycle:
//!
//! # Layout
//! - [`listen`]: bind TCP and Unix sockets, accept under a connection bound, drain.
//! - [`server`]: serve one accepted connection (HTTP/1.1 and HTTP/2 detected by preface, or TCP).
//! - [`framing`]: HTTP/1.x request-smuggling guard (conflicting Content-Length/Transfer-Encoding).
//! - [`path`]: request path normalization (before routing and authorization).
//! - [`route`]: the pure route table (host, path, method, headers; first match wins).
//! - [`policy`]: request policies: authorization, JWT authentication, rate limits, retries and budgets, breakers, concurrency limits.
//! - [`stack`]: the per-listener snapshot: routes resolved to upstream handles and metric handles.
//! - [`forward`]: the request handler walking the phases: route, rate limit, rewrite headers,
//!   admit, then the retry loop (balance, send, classify).
//! - [`headers`]: hop-by-hop removal (RFC 9110 §7.6.1) and `forwarded`/`x-forwarded-*`.
//! - [`identity`]: the verified peer identity of a connection (set by mTLS).
//! - [`balance`]: endpoint choice (P2C peak EWMA, round robin, least request, consistent hash)
//!   and per-endpoint load, latency, breaker and health.
//! - [`health`]: active health checks (HTTP, TCP, gRPC) per endpoint.
//! - [`pool`]: pooled upstream connections per endpoint (HTTP/1.1 keep-alive, HTTP/2 multiplexed).
//! - [`h1`]: Tandem's HTTP/1.1 client side: one exchange over one pooled upstream connection.
//! - [`tcp`]: opaque TCP proxying with idle timeout and byte counts.
//! - [`error`]: [`ProxyError`], the one place failures become status, `tandem-error` and body.
//! - [`body`]: the response body (upstream stream or a local message) and the replayable
//!   request body.
//! - [`observe`]: the outermost phase: one record per request or TCP connection, finished when
//!   its last byte is sent (access log).
//! - [`trace`]: server and client spans of a request, trace context into each upstream try.
//!
//! Invariants: bodies stream end to end; nothing is buffered beyond hyper's bounded read buffers
//! and a retry's replay buffer (64 KiB by default);
//! the request path reads an immutable [`stack::ListenerStack`] and takes no global lock.

pub mod balance;
pub mod body;
pub mod error;
pub mod forward;
pub mod framing;
pub mod h1;
pub mod headers;
pub mod health;
pub mod identity;
pub mod listen;
pub mod observe;
pub mod path;
pub mod policy;
pub mod pool;
pub mod route;
pub mod server;
pub mod stack;
pub mod stall;
pub mod tcp;
pub mod trace;

pub use error::{ErrorKind, ProxyError};
pub use listen::{BoundListener, Drain};
pub use stack::{ListenerStack, Snapshot};
