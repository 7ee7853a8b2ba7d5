//! When a failed try is tried again, how long to wait first, and the budget that bounds retries.
//!
//! Safe by construction:
//! - a try the upstream cannot have seen (connect failure or timeout, HTTP/2 `REFUSED_STREAM`)
//!   is retried for every method;
//! - a reset or timeout before any response byte, and a configured status or gRPC code in the
//!   response head, are retried for idempotent methods (or every method with `all_methods`);
//! - nothing is retried once a response byte went downstream (the loop in
//!   [`crate::forward`] only retries before it returns a response);
//! - request bodies are replayed only while the whole body fits the replay buffer
//!   ([`crate::body::RequestBody`]);
//! - every retry takes a token from the upstream's [`RetryBudget`] (tower's `TpsBudget`:
//!   retries may add `percent`% of recent requests plus `min_per_second`), so a failing upstream
//!   never sees more than (1 + percent) × the client's rate, plus a trickle.
//!
//! Back-off is exponential with full jitter (`backoff × 2^(n-1)`, capped at `max_backoff`); a
//! `Retry-After` of at most `max_backoff` on a retried 429/503 is honoured instead, a longer one
//! ends retrying (the client sees the upstream's answer).

use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};
use tandem_config::{Retry, RetryBudget as BudgetConfig};
use tower::retry::budget::{Budget as _, TpsBudget};

use crate::error::ErrorKind;

const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// A route's retry policy, resolved once.
#[derive(Debug)]
pub struct RetryPolicy {
    /// Tries in all.
    pub attempts: u32,
    /// Bound per try on the time to the response head.
    pub per_try_timeout: Option<Duration>,
    /// Largest request body kept for replay.
    pub replay_buffer: usize,
    statuses: Vec<u16>,
    grpc: u32,
    all_methods: bool,
    backoff: Duration,
    max_backoff: Duration,
}

/// The retry budget of one upstream, shared by every route to it.
pub struct RetryBudget(TpsBudget);

/// Why a try is retried (metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum RetryReason {
    /// No connection could be opened.
    ConnectFailed,
    /// The connection failed before a response head.
    Reset,
    /// The try timed out before a response head.
    Timeout,
    /// A configured status.
    Status,
    /// A configured gRPC code.
    Grpc,
}

// === impl RetryPolicy ===

impl RetryPolicy {
    /// Resolves the configuration.
    pub fn new(c: &Retry) -> Self {
        RetryPolicy {
            attempts: c.attempts.max(1),
            per_try_timeout: c.per_try_timeout,
            replay_buffer: c.replay_buffer,
            statuses: c.on_status.clone(),
            grpc: c
                .on_grpc
                .iter()
                .filter(|&&g| g < 32)
                .fold(0, |m, g| m | (1 << g)),
            all_methods: c.all_methods,
            backoff: c.backoff,
            max_backoff: c.max_backoff,
        }
    }

    /// Whether this policy ever retries.
    pub fn enabled(&self) -> bool {
        self.attempts > 1
    }

    fn method_ok(&self, method: &Method) -> bool {
        self.all_methods || method.is_idempotent()
    }

    /// Whether a try that failed with `kind` is worth another; `unseen`: the upstream cannot
    /// have received the request.
    pub fn on_error(&self, kind: ErrorKind, unseen: bool, method: &Method) -> Option<RetryReason> {
        let reason = match kind {
            ErrorKind::ConnectFailed | ErrorKind::ConnectTimeout => {
                return Some(RetryReason::ConnectFailed)
            }
            ErrorKind::UpstreamReset => RetryReason::Reset,
            ErrorKind::UpstreamTimeout => RetryReason::Timeout,
            _ => return None,
        };
        (unseen || self.method_ok(method)).then_some(reason)
    }

    /// Whether a response head asks for a retry (`grpc`: the request was a gRPC call, whose
    /// statuses are checked too).
    pub fn on_response(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        method: &Method,
        grpc: bool,
    ) -> Option<RetryReason> {
        if !self.method_ok(method) {
            return None;
        }
        if self.statuses.contains(&status.as_u16()) {
            return Some(RetryReason::Status);
        }
        if grpc && self.grpc != 0 {
            let code = headers
                .get(GRPC_STATUS)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u32>().ok());
            if let Some(code) = code.filter(|&c| c < 32 && self.grpc & (1 << c) != 0) {
                let _ = code;
                return Some(RetryReason::Grpc);
            }
        }
        None
    }

    /// The wait before retry number `n` (1-based): full jitter over the exponential back-off,
    /// or the response's `Retry-After` when it asks for no more than `max_backoff`. `None`:
    /// the upstream asked to wait longer than Tandem would; do not retry.
    pub fn backoff(&self, n: u32, headers: Option<&HeaderMap>) -> Option<Duration> {
        if let Some(after) = headers.and_then(retry_after) {
            return (after <= self.max_backoff).then_some(after);
        }
        let factor = 1u32
            .checked_shl(n.saturating_sub(1).min(20))
            .unwrap_or(u32::MAX);
        let cap = self.backoff.saturating_mul(factor).min(self.max_backoff);
        let nanos = cap.as_nanos().min(u128::from(u64::MAX)) as u64;
        Some(Duration::from_nanos(fastrand::u64(..=nanos)))
    }
}

/// `Retry-After` in delta-seconds (an HTTP date means "later than Tandem waits").
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    match v.trim().parse::<u64>() {
        Ok(secs) => Some(Duration::from_secs(secs)),
        Err(_) => Some(Duration::MAX),
    }
}

// === impl RetryBudget ===

impl RetryBudget {
    /// A budget from the configuration.
    pub fn new(c: &BudgetConfig) -> Self {
        let window = c
            .window
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        RetryBudget(TpsBudget::new(
            window,
            c.min_per_second,
            c.percent as f32 / 100.0,
        ))
    }

    /// Counts a request (each original request, not retries).
    pub fn deposit(&self) {
        self.0.deposit();
    }

    /// Takes a token for one retry; `false` when the budget is spent.
    pub fn withdraw(&self) -> bool {
        self.0.withdraw()
    }
}

impl std::fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RetryBudget")
    }
}

// === impl RetryReason ===

impl RetryReason {
    /// Every reason, in discriminant order.
    pub const ALL: [RetryReason; 5] = [
        RetryReason::ConnectFailed,
        RetryReason::Reset,
        RetryReason::Timeout,
        RetryReason::Status,
        RetryReason::Grpc,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::ConnectFailed => "connect_failed",
            RetryReason::Reset => "reset",
            RetryReason::Timeout => "timeout",
            RetryReason::Status => "status",
            RetryReason::Grpc => "grpc",
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::new(&Retry::default())
    }

    /// Connect failures for every method; resets and statuses only for idempotent ones unless
    /// the upstream cannot have seen the request or the route says all methods.
    #[test]
    fn what_is_retried() {
        let p = policy();
        let post = Method::POST;
        let get = Method::GET;
        assert_eq!(
            p.on_error(ErrorKind::ConnectFailed, false, &post),
            Some(RetryReason::ConnectFailed)
        );
        assert_eq!(p.on_error(ErrorKind::UpstreamReset, false, &post), None);
        assert_eq!(
            p.on_error(ErrorKind::UpstreamReset, true, &post),
            Some(RetryReason::Reset)
        );
        assert_eq!(
            p.on_error(ErrorKind::UpstreamTimeout, false, &get),
            Some(RetryReason::Timeout)
        );
        assert_eq!(p.on_error(ErrorKind::UpstreamProtocol, true, &get), None);
        let h = HeaderMap::new();
        assert_eq!(
            p.on_response(StatusCode::SERVICE_UNAVAILABLE, &h, &get, true),
            Some(RetryReason::Status)
        );
        assert_eq!(
            p.on_response(StatusCode::SERVICE_UNAVAILABLE, &h, &post, false),
            None
        );
        assert_eq!(
            p.on_response(StatusCode::INTERNAL_SERVER_ERROR, &h, &get, true),
            None
        );
        let mut g = HeaderMap::new();
        g.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(
            p.on_response(StatusCode::OK, &g, &get, true),
            Some(RetryReason::Grpc)
        );
        assert_eq!(
            p.on_response(StatusCode::OK, &g, &get, false),
            None,
            "grpc-status on the response to a plain HTTP request is not a gRPC status"
        );
        g.insert("grpc-status", "13".parse().unwrap());
        assert_eq!(p.on_response(StatusCode::OK, &g, &get, true), None);
        let all = RetryPolicy::new(&Retry {
            all_methods: true,
            ..Retry::default()
        });
        assert_eq!(
            all.on_response(StatusCode::BAD_GATEWAY, &h, &post, false),
            Some(RetryReason::Status)
        );
    }

    /// Full jitter under an exponential cap; `Retry-After` honoured up to `max_backoff`.
    #[test]
    fn backoff() {
        let p = policy();
        for n in 1..6 {
            let cap = Duration::from_millis(25 * (1 << (n - 1))).min(Duration::from_millis(250));
            for _ in 0..100 {
                assert!(p.backoff(n, None).unwrap() <= cap);
            }
        }
        let spread: std::collections::HashSet<_> =
            (0..50).map(|_| p.backoff(3, None).unwrap()).collect();
        assert!(spread.len() > 10, "jittered");
        let mut h = HeaderMap::new();
        h.insert("retry-after", "0".parse().unwrap());
        assert_eq!(p.backoff(1, Some(&h)), Some(Duration::ZERO));
        h.insert("retry-after", "3".parse().unwrap());
        assert_eq!(p.backoff(1, Some(&h)), None, "longer than max_backoff");
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(p.backoff(1, Some(&h)), None);
    }

    /// The budget admits `percent` of deposits plus the per-second floor, then refuses.
    #[tokio::test(start_paused = true)]
    async fn budget_bounds_retries() {
        let b = RetryBudget::new(&BudgetConfig {
            percent: 20,
            min_per_second: 0,
            window: Duration::from_secs(10),
        });
        for _ in 0..100 {
            b.deposit();
        }
        let granted = (0..100).filter(|_| b.withdraw()).count();
        assert!((19..=21).contains(&granted), "{granted}");
    }
}
