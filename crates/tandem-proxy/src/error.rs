//! Every failure on the data path is one [`ProxyError`]; [`ProxyError::to_response`] is the single
//! exhaustive mapping to a status code, a `tandem-error` header naming the reason, and a one-line
//! body naming the upstream, so a user reading a 502 knows which upstream failed and why.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

use crate::body::ProxyBody;

/// Name of the response header carrying [`ErrorKind::reason`].
pub const ERROR_HEADER: &str = "tandem-error";

/// Why Tandem answered a request itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum ErrorKind {
    /// No route matched and the listener has no default upstream (404).
    NoRoute,
    /// The upstream has no endpoints (503).
    NoEndpoints,
    /// Connecting to the endpoint failed: refused, unreachable, DNS (502).
    ConnectFailed,
    /// Connecting took longer than the upstream's `connect_timeout` (504).
    ConnectTimeout,
    /// The upstream closed or reset the connection before a complete response head (502).
    UpstreamReset,
    /// No response head within the request timeout (504).
    UpstreamTimeout,
    /// The upstream sent something that is not valid HTTP (502).
    UpstreamProtocol,
    /// The request cannot be forwarded as sent (400).
    BadRequest,
    /// Tandem is draining and takes no new requests on this connection (503).
    Draining,
    /// The route's rate limit refused the request (429, with `Retry-After`).
    RateLimited,
    /// The upstream's concurrency limits are reached (503): refused at once instead of queued.
    Overloaded,
    /// The client stopped sending its request body for `limits.body_read_timeout` (408).
    ClientTimeout,
    /// The listener's authorization policy denied the request (403).
    Forbidden,
    /// The route requires a valid JWT and the request has none (401, with `WWW-Authenticate`).
    Unauthenticated,
    /// The TLS handshake with the upstream failed: untrusted certificate, not the expected
    /// identity, or the upstream refused Tandem's certificate (502).
    UpstreamTls,
}

/// Which side a failure came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client sent something wrong.
    Downstream,
    /// The upstream failed.
    Upstream,
    /// Tandem's own configuration or state.
    Local,
}

/// A failure on the data path.
#[derive(Debug)]
pub struct ProxyError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// The upstream involved, if one was chosen.
    pub upstream: Option<String>,
    /// The endpoint involved, if one was chosen.
    pub endpoint: Option<String>,
    /// Human-readable cause (one line).
    pub cause: String,
    /// When the client may try again (sent as `Retry-After`, whole seconds rounded up).
    pub retry_after: Option<std::time::Duration>,
    /// The `WWW-Authenticate` challenge of a 401 (boxed: errors stay small on the hot path).
    pub challenge: Option<Box<HeaderValue>>,
}

// === impl ErrorKind ===

impl ErrorKind {
    /// Every kind, in discriminant order (indexes per-kind counters).
    pub const ALL: [ErrorKind; 15] = [
        ErrorKind::NoRoute,
        ErrorKind::NoEndpoints,
        ErrorKind::ConnectFailed,
        ErrorKind::ConnectTimeout,
        ErrorKind::UpstreamReset,
        ErrorKind::UpstreamTimeout,
        ErrorKind::UpstreamProtocol,
        ErrorKind::BadRequest,
        ErrorKind::Draining,
        ErrorKind::RateLimited,
        ErrorKind::Overloaded,
        ErrorKind::ClientTimeout,
        ErrorKind::Forbidden,
        ErrorKind::Unauthenticated,
        ErrorKind::UpstreamTls,
    ];

    /// The value of the `tandem-error` header.
    pub fn reason(self) -> &'static str {
        match self {
            ErrorKind::NoRoute => "no_route",
            ErrorKind::NoEndpoints => "no_endpoints",
            ErrorKind::ConnectFailed => "connect_failed",
            ErrorKind::ConnectTimeout => "connect_timeout",
            ErrorKind::UpstreamReset => "upstream_reset",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::UpstreamProtocol => "upstream_protocol",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Draining => "draining",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::ClientTimeout => "client_timeout",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::UpstreamTls => "upstream_tls",
        }
    }

    /// The status code sent downstream.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::NoEndpoints | ErrorKind::Draining | ErrorKind::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorKind::ConnectFailed
            | ErrorKind::UpstreamReset
            | ErrorKind::UpstreamProtocol
            | ErrorKind::UpstreamTls => StatusCode::BAD_GATEWAY,
            ErrorKind::ConnectTimeout | ErrorKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        }
    }

    /// Where the failure came from.
    pub fn source(self) -> ErrorSource {
        match self {
            ErrorKind::BadRequest
            | ErrorKind::RateLimited
            | ErrorKind::ClientTimeout
            | ErrorKind::Forbidden
            | ErrorKind::Unauthenticated => ErrorSource::Downstream,
            ErrorKind::NoRoute
            | ErrorKind::NoEndpoints
            | ErrorKind::Draining
            | ErrorKind::Overloaded => ErrorSource::Local,
            ErrorKind::ConnectFailed
            | ErrorKind::ConnectTimeout
            | ErrorKind::UpstreamReset
            | ErrorKind::UpstreamTimeout
            | ErrorKind::UpstreamProtocol
            | ErrorKind::UpstreamTls => ErrorSource::Upstream,
        }
    }

    /// The gRPC status code a gRPC client gets for this failure: the HTTP-to-gRPC mapping of
    /// the gRPC spec, except that an expired deadline is `DEADLINE_EXCEEDED` (4) and a rate
    /// limit `RESOURCE_EXHAUSTED` (8), which is what gRPC clients act on; authorization and
    /// authentication failures are `PERMISSION_DENIED` (7) and `UNAUTHENTICATED` (16).
    pub fn grpc_status(self) -> u8 {
        match self {
            ErrorKind::NoRoute => 12,
            ErrorKind::UpstreamTimeout | ErrorKind::ClientTimeout => 4,
            ErrorKind::RateLimited => 8,
            ErrorKind::Forbidden => 7,
            ErrorKind::Unauthenticated => 16,
            ErrorKind::BadRequest | ErrorKind::UpstreamProtocol => 13,
            ErrorKind::NoEndpoints
            | ErrorKind::ConnectFailed
            | ErrorKind::ConnectTimeout
            | ErrorKind::UpstreamReset
            | ErrorKind::Draining
            | ErrorKind::Overloaded
            | ErrorKind::UpstreamTls => 14,
        }
    }
}

// === impl ProxyError ===

impl ProxyError {
    /// A new error of `kind` with a cause.
    pub fn new(kind: ErrorKind, cause: impl Into<String>) -> Self {
        ProxyError {
            kind,
            upstream: None,
            endpoint: None,
            cause: cause.into(),
            retry_after: None,
            challenge: None,
        }
    }

    /// Names the upstream (and endpoint) involved.
    pub fn at(mut self, upstream: &str, endpoint: Option<String>) -> Self {
        self.upstream = Some(upstream.to_owned());
        self.endpoint = endpoint;
        self
    }

    /// The one-line message sent as the response body.
    pub fn message(&self) -> String {
        let cause = self.cause.replace(['\r', '\n'], " ");
        match (&self.upstream, &self.endpoint) {
            (Some(u), Some(e)) => format!(
                "tandem: {}: upstream `{u}` ({e}): {cause}\n",
                self.kind.reason()
            ),
            (Some(u), None) => format!("tandem: {}: upstream `{u}`: {cause}\n", self.kind.reason()),
            _ => format!("tandem: {}: {cause}\n", self.kind.reason()),
        }
    }

    /// The response sent downstream for this error.
    pub fn to_response(&self) -> Response<ProxyBody> {
        let mut res = Response::new(ProxyBody::local(Bytes::from(self.message())));
        *res.status_mut() = self.kind.status();
        let h = res.headers_mut();
        h.insert(ERROR_HEADER, HeaderValue::from_static(self.kind.reason()));
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Some(wait) = self.retry_after {
            h.insert(http::header::RETRY_AFTER, retry_after_secs(wait));
        }
        if let Some(c) = &self.challenge {
            h.insert(http::header::WWW_AUTHENTICATE, HeaderValue::clone(c));
        }
        if matches!(
            self.kind,
            ErrorKind::BadRequest | ErrorKind::Draining | ErrorKind::ClientTimeout
        ) {
            h.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        res
    }
}

impl ProxyError {
    /// The response a gRPC client gets for this error: a trailers-only gRPC response (HTTP 200,
    /// `grpc-status`, percent-encoded `grpc-message`), still carrying `tandem-error`.
    pub fn to_grpc_response(&self) -> Response<ProxyBody> {
        let mut res = Response::new(ProxyBody::empty());
        let h = res.headers_mut();
        h.insert(ERROR_HEADER, HeaderValue::from_static(self.kind.reason()));
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(
            "grpc-status",
            HeaderValue::from(u16::from(self.kind.grpc_status())),
        );
        let message = self.message();
        let mut encoded = String::with_capacity(message.len());
        for b in message.trim_end().bytes() {
            if (0x20..0x7f).contains(&b) && b != b'%' {
                encoded.push(b as char);
            } else {
                encoded.push_str(&format!("%{b:02X}"));
            }
        }
        if let Ok(v) = HeaderValue::from_str(&encoded) {
            h.insert("grpc-message", v);
        }
        if let Some(wait) = self.retry_after {
            h.insert(http::header::RETRY_AFTER, retry_after_secs(wait));
        }
        res
    }
}

/// `Retry-After` in whole seconds, rounded up (a client retrying sooner would be refused again),
/// at least 1.
fn retry_after_secs(wait: std::time::Duration) -> HeaderValue {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    HeaderValue::from(secs.max(1))
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message().trim_end())
    }
}

impl std::error::Error for ProxyError {}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Each kind maps to the status and reason the docs promise, and the body names the upstream.
    #[test]
    fn kinds_map_to_status_header_and_body() {
        let cases = [
            (ErrorKind::NoRoute, 404, "no_route"),
            (ErrorKind::NoEndpoints, 503, "no_endpoints"),
            (ErrorKind::ConnectFailed, 502, "connect_failed"),
            (ErrorKind::ConnectTimeout, 504, "connect_timeout"),
            (ErrorKind::UpstreamReset, 502, "upstream_reset"),
            (ErrorKind::UpstreamTimeout, 504, "upstream_timeout"),
            (ErrorKind::UpstreamProtocol, 502, "upstream_protocol"),
            (ErrorKind::BadRequest, 400, "bad_request"),
            (ErrorKind::Draining, 503, "draining"),
            (ErrorKind::RateLimited, 429, "rate_limited"),
            (ErrorKind::Overloaded, 503, "overloaded"),
            (ErrorKind::ClientTimeout, 408, "client_timeout"),
            (ErrorKind::Forbidden, 403, "forbidden"),
            (ErrorKind::Unauthenticated, 401, "unauthenticated"),
            (ErrorKind::UpstreamTls, 502, "upstream_tls"),
        ];
        assert_eq!(cases.len(), ErrorKind::ALL.len());
        for (kind, status, reason) in cases {
            let err = ProxyError::new(kind, "why\nnot").at("orders", Some("127.0.0.1:1".into()));
            let res = err.to_response();
            assert_eq!(res.status().as_u16(), status);
            assert_eq!(res.headers()[ERROR_HEADER], reason);
            let msg = err.message();
            assert!(msg.contains("upstream `orders` (127.0.0.1:1)"), "{msg}");
            assert_eq!(msg.matches('\n').count(), 1, "one line: {msg:?}");
        }
    }

    /// `Retry-After` is whole seconds, rounded up, at least 1.
    #[test]
    fn retry_after_rounds_up() {
        for (wait_ms, header) in [
            (1, "1"),
            (999, "1"),
            (1000, "1"),
            (1001, "2"),
            (59_500, "60"),
        ] {
            let mut err = ProxyError::new(ErrorKind::RateLimited, "slow down");
            err.retry_after = Some(std::time::Duration::from_millis(wait_ms));
            let res = err.to_response();
            assert_eq!(
                res.headers()[http::header::RETRY_AFTER],
                header,
                "{wait_ms} ms"
            );
        }
    }

    /// gRPC clients get a trailers-only response with the mapped code and a percent-encoded
    /// message, and still the `tandem-error` reason.
    #[test]
    fn grpc_errors() {
        let err =
            ProxyError::new(ErrorKind::UpstreamTimeout, "no response within 100%").at("g", None);
        let res = err.to_grpc_response();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["grpc-status"], "4");
        assert_eq!(res.headers()["content-type"], "application/grpc");
        assert_eq!(res.headers()[ERROR_HEADER], "upstream_timeout");
        let msg = res.headers()["grpc-message"].to_str().unwrap();
        assert!(msg.ends_with("within 100%25"), "{msg}");
        assert_eq!(ErrorKind::Overloaded.grpc_status(), 14);
        assert_eq!(ErrorKind::RateLimited.grpc_status(), 8);
        assert_eq!(ErrorKind::Forbidden.grpc_status(), 7);
        assert_eq!(ErrorKind::Unauthenticated.grpc_status(), 16);
    }
}
