//! The YAML file as serde sees it. Every field is documented: these comments become the JSON
//! Schema's descriptions (`tandem config schema`). Values that need checking with a line number
//! (durations, addresses) stay strings here and are parsed by `check`.
//!
//! Every struct denies unknown fields, so a typo is an error with a "did you mean" hint instead of
//! a setting silently ignored. Name maps (`listeners`, `upstreams`, `match.headers`) keep file
//! order and reject a name given twice; serde's own maps would silently keep the last one.

use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

mod tracing;
pub use self::tracing::*;
mod logs;
pub use logs::*;
mod security;
pub use security::*;
mod tls;
pub use self::tls::*;
mod discovery;
pub use discovery::*;

/// A Tandem configuration file.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// The admin API (health, readiness, metrics, effective config). Default: 127.0.0.1:7901.
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    /// The app Tandem runs beside; `/ready` waits for it when Tandem supervises it.
    #[serde(default)]
    pub app: Option<RawApp>,
    /// How long in-flight requests may take to finish after SIGTERM (default "30s").
    #[serde(default)]
    pub drain_timeout: Option<String>,
    /// Protections applied to every listener.
    #[serde(default)]
    pub limits: Option<RawLimits>,
    /// Listeners by name. At least one, unless the file configures `logs` only.
    #[serde(default, deserialize_with = "unique_map")]
    pub listeners: IndexMap<String, RawListener>,
    /// Log shipping: sources, sinks, checkpoints (docs/logship.md).
    #[serde(default)]
    pub logs: Option<RawLogs>,
    /// Upstreams by name.
    #[serde(default, deserialize_with = "unique_map")]
    pub upstreams: IndexMap<String, RawUpstream>,
    /// Access log: one JSON line per HTTP request or TCP connection. Absent: off.
    #[serde(default)]
    pub access_log: Option<RawAccessLog>,
    /// Distributed tracing with OTLP export. Absent: off (trace headers pass through untouched).
    #[serde(default)]
    pub tracing: Option<RawTracing>,
    /// The etcd cluster for `discovery: { etcd }` upstreams and `registration`.
    #[serde(default)]
    pub etcd: Option<RawEtcd>,
    /// Register the app in etcd under a lease while this sidecar runs (docs/discovery.md).
    #[serde(default)]
    pub registration: Option<RawRegistration>,
    /// The workload identity for TLS and mTLS: certificate, key, trust bundle (docs/security.md).
    #[serde(default)]
    pub tls: Option<RawTls>,
    /// Prometheus metrics on the admin API's `/metrics`.
    #[serde(default)]
    pub metrics: Option<RawMetrics>,
}

/// Prometheus metrics.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Per-request HTTP metrics (request counts, durations, body sizes per route). Default true;
    /// false skips them on the request path. Connection, resilience, tracing, log shipping and
    /// process metrics are always exported.
    #[serde(default)]
    pub requests: Option<bool>,
}

/// The admin API.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// `IP:port` or `unix:/path`. Keep it on loopback or a Unix socket: any other address is an
    /// error unless `allow_remote` is set.
    pub address: String,
    /// Allow a non-loopback `address` (the admin API is unauthenticated: expose it only behind
    /// a firewall or network policy). Default false.
    #[serde(default)]
    pub allow_remote: bool,
}

/// The app Tandem runs beside.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawApp {
    /// The upstream that reaches the app (readiness probes its first endpoint).
    pub upstream: String,
}

/// Listener protections.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Connections one listener holds at once (default 10000); more wait in the kernel backlog.
    pub max_connections: Option<usize>,
    /// Largest request head in bytes (default 65536, at least 1024); larger gets 431.
    pub max_header_bytes: Option<usize>,
    /// Most header fields in a request (default 100); more gets 431.
    pub max_headers: Option<usize>,
    /// Time a client has to send a complete request head (default "10s").
    pub header_read_timeout: Option<String>,
    /// A TCP proxy connection idle this long in both directions is closed (default "1h").
    pub tcp_idle_timeout: Option<String>,
    /// A client connection that accepts no bytes for this long while Tandem has some to send is
    /// closed (default "60s"; slow readers).
    pub send_timeout: Option<String>,
    /// A request body with no data from the client for this long fails (default "30s"): 408
    /// when no response has started, else the stream or connection is closed (slow bodies).
    pub body_read_timeout: Option<String>,
    /// HTTP/2 streams one client connection may have open at once (default 256); more are
    /// refused with REFUSED_STREAM.
    pub h2_max_concurrent_streams: Option<u32>,
    /// HTTP/2 streams a client may open and reset before Tandem accepts them, at once, before
    /// the connection gets GOAWAY (rapid reset, CVE-2023-44487; default 20).
    pub h2_max_pending_accept_reset_streams: Option<usize>,
    /// HTTP/2 streams Tandem may reset for a client's protocol errors before the connection gets
    /// GOAWAY (default 1024).
    pub h2_max_local_error_reset_streams: Option<usize>,
    /// Bytes of response data buffered per HTTP/2 stream while the client's flow-control window
    /// is closed (default 409600, at least 16384).
    pub h2_max_send_buf_size: Option<usize>,
    /// HTTP/2 requests a client may cancel (RST_STREAM) per second on one connection before
    /// their response starts, with a burst of as many; beyond it the connection is closed
    /// (rapid reset after accept; default 200).
    pub h2_max_resets_per_second: Option<u32>,
}

/// A listener.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// `IP:port` or `unix:/path`.
    pub address: String,
    /// `inbound` (peers to the app; sets forwarded headers) or `outbound` (the app to others).
    #[serde(default)]
    pub direction: Option<RawDirection>,
    /// `http` (HTTP/1.1 and HTTP/2 on one port) or `tcp` (opaque bytes). Default `http`.
    #[serde(default)]
    pub protocol: Option<RawListenerProtocol>,
    /// Default upstream: for HTTP requests no route matches; the target of a TCP listener.
    #[serde(default)]
    pub upstream: Option<String>,
    /// HTTP forward proxy: `http://NAME/...` and `CONNECT NAME:port` reach upstream NAME.
    #[serde(default)]
    pub forward_proxy: bool,
    /// Routes, first match wins (HTTP only).
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// Write this listener's requests or connections to the access log (default true when
    /// the top-level `access_log` is set).
    #[serde(default)]
    pub access_log: Option<bool>,
    /// This listener's protections: each key given replaces the top-level `limits` value.
    #[serde(default)]
    pub limits: Option<RawLimits>,
    /// Normalize request paths before routing, authorization and forwarding (default: true on
    /// inbound listeners and on listeners with `authorization`, false on outbound ones).
    #[serde(default)]
    pub normalize_path: Option<bool>,
    /// Authorization policy of the listener's requests (docs/security.md). Absent: everything
    /// is allowed.
    #[serde(default)]
    pub authorization: Option<RawAuthorization>,
    /// Terminate TLS on this listener with the workload certificate (top-level `tls`).
    #[serde(default)]
    pub tls: Option<RawListenerTls>,
}

/// The access log.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    /// `stdout` (the default) or a file path, appended to and reopened on SIGUSR1 (logrotate).
    #[serde(default)]
    pub path: Option<String>,
    /// The fields of each line, in order (default: every field; names in docs/config.md,
    /// "Access logs").
    #[serde(default)]
    pub fields: Option<Vec<String>>,
    /// Lines queued for the writer before new ones are dropped and counted in
    /// `tandem_access_log_dropped_total` (default 8192).
    #[serde(default)]
    pub buffer: Option<usize>,
}

/// Listener direction.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawDirection {
    /// Peers to the app.
    Inbound,
    /// The app to other services.
    Outbound,
}

/// Listener protocol.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawListenerProtocol {
    /// HTTP/1.1 and HTTP/2 prior knowledge on one port.
    Http,
    /// Opaque TCP.
    Tcp,
}

/// A route.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Name for metrics (default `<listener>.<index>`), unique within the listener.
    #[serde(default)]
    pub name: Option<String>,
    /// Conditions, all of which must hold; absent matches every request.
    #[serde(default, rename = "match")]
    pub matcher: Option<RawMatch>,
    /// Upstream name.
    pub upstream: String,
    /// Time to the response head for this route, overriding the upstream's `request_timeout`.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Local rate limit: requests beyond it are answered 429 with `Retry-After`.
    #[serde(default)]
    pub rate_limit: Option<RawRateLimit>,
    /// Retry policy for this route: `off`, or the keys of the upstream's `retry` to change (keys
    /// not given keep the upstream's value).
    #[serde(default)]
    pub retry: Option<RawRouteRetry>,
    /// JWT authentication: requests need a valid bearer token (docs/security.md).
    #[serde(default)]
    pub jwt: Option<RawJwt>,
}

/// A route's retry policy: `off` (one try only) or a mapping that overrides some of the
/// upstream's retry keys.
// Deserialized by hand, like `OneOrMany`, so errors inside the mapping keep their key path.
#[derive(Debug, JsonSchema)]
#[schemars(untagged)]
pub enum RawRouteRetry {
    /// `off`: no retries on this route.
    #[schemars(schema_with = "off_schema")]
    Off,
    /// Keys of the upstream's `retry`; those not given keep the upstream's value.
    Policy(RawRetry),
}

/// A token bucket per key: `requests` per `per`, up to `burst` at once.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// Requests admitted per `per` (the steady rate), at least 1.
    pub requests: u32,
    /// The period of `requests` (default `1s`).
    #[serde(default)]
    pub per: Option<String>,
    /// Requests admitted at once after a quiet spell (default: `requests`).
    #[serde(default)]
    pub burst: Option<u32>,
    /// What gets its own bucket: `none` (one for the route, the default), `client_ip`, or
    /// `header:NAME` (requests without the header share one bucket).
    #[serde(default)]
    pub key: Option<String>,
    /// Most keys tracked at once (default 100000); beyond it, new keys share one bucket.
    #[serde(default)]
    pub max_keys: Option<usize>,
}

/// Route conditions.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// Exact host (`api.example.com`) or wildcard (`*.example.com`), without port.
    #[serde(default)]
    pub host: Option<String>,
    /// Path condition: `{ exact: /healthz }` or `{ prefix: /api }`.
    #[serde(default)]
    pub path: Option<RawPathMatch>,
    /// A method or a list of methods.
    #[serde(default)]
    pub method: Option<OneOrMany>,
    /// Headers that must be present with exactly these values.
    #[serde(default, deserialize_with = "unique_map")]
    pub headers: IndexMap<String, String>,
    /// Verified peer identities (mTLS): exact, a prefix ending in `*`, or `*`; any may match.
    #[serde(default)]
    pub peer_identities: Option<Vec<String>>,
}

/// Path condition; exactly one of the two.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPathMatch {
    /// The path equals this.
    #[serde(default)]
    pub exact: Option<String>,
    /// The path starts with this, on a segment boundary.
    #[serde(default)]
    pub prefix: Option<String>,
}

/// One value or a list of values.
// Deserialized by hand rather than `#[serde(untagged)]`: untagged enums buffer the value and lose
// its key path, so a bad `method` was reported at `match` with "did not match any variant".
#[derive(Debug, JsonSchema)]
#[schemars(untagged)]
pub enum OneOrMany {
    /// One value, e.g. GET.
    One(String),
    /// A list of values, e.g. [GET, HEAD].
    Many(Vec<String>),
}

/// A number or a string, e.g. a status (`200`) or a status range (`"200-299"`).
// Deserialized by hand rather than `#[serde(untagged)]`, which would lose the key path.
#[derive(Debug, JsonSchema)]
#[schemars(untagged)]
pub enum NumberOrString {
    /// A whole number.
    Number(i64),
    /// A string.
    String(String),
}

/// An upstream.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// Endpoints: `IP:port`, `host:port` (resolved when connecting) or `unix:/path`, each either
    /// as a plain string (weight 1) or as `{ address: ..., weight: N }`.
    #[serde(default)]
    pub endpoints: Vec<RawEndpoint>,
    /// Where the endpoints come from when they are not listed in `endpoints`: `dns`, `file` or
    /// `etcd` (docs/discovery.md).
    #[serde(default)]
    pub discovery: Option<RawDiscovery>,
    /// Send requests to endpoints in the local zone while enough of them are available.
    #[serde(default)]
    pub prefer_zone: Option<RawPreferZone>,
    /// `http1`, `http2` (prior knowledge) or `auto` (same as the downstream request). Default `auto`.
    #[serde(default)]
    pub protocol: Option<RawUpstreamProtocol>,
    /// Bound on opening one connection (default "2s").
    #[serde(default)]
    pub connect_timeout: Option<String>,
    /// Bound from sending a request to receiving the response head (default "15s").
    #[serde(default)]
    pub request_timeout: Option<String>,
    /// Connection pool.
    #[serde(default)]
    pub pool: Option<RawPool>,
    /// How an endpoint is chosen: `p2c` (default), `round_robin`, `least_request`,
    /// `hash:header:NAME`, `hash:cookie:NAME` or `hash:client_ip` (sticky by key).
    #[serde(default)]
    pub balancer: Option<String>,
    /// A request or response body with no data either way for this long is aborted (default "5m").
    #[serde(default)]
    pub stream_idle_timeout: Option<String>,
    /// Active health checks of every endpoint; absent: none (only passive outlier detection).
    #[serde(default)]
    pub health_check: Option<RawHealthCheck>,
    /// Passive outlier detection: endpoints that keep failing are ejected for a while.
    #[serde(default)]
    pub circuit_breaker: Option<RawCircuitBreaker>,
    /// Bounds on concurrent requests and connections; beyond them requests get 503 `overloaded`.
    #[serde(default)]
    pub limits: Option<RawUpstreamLimits>,
    /// Retry policy of every route to this upstream (a route's `retry` overrides it key by key).
    #[serde(default)]
    pub retry: Option<RawRetry>,
    /// Caps the retries of all routes to this upstream together.
    #[serde(default)]
    pub retry_budget: Option<RawRetryBudget>,
    /// Connect to the endpoints over TLS (mTLS with the workload certificate by default).
    #[serde(default)]
    pub tls: Option<RawUpstreamTls>,
}

/// An upstream endpoint: an address (weight 1), or an address with a weight.
// Deserialized by hand, like `OneOrMany`, so a bad `weight` is reported at its own key.
#[derive(Debug, JsonSchema)]
#[schemars(untagged)]
pub enum RawEndpoint {
    /// `IP:port`, `host:port` or `unix:/path`, with weight 1.
    Address(String),
    /// An address with a weight.
    Weighted(RawWeightedEndpoint),
}

/// An endpoint with a weight.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWeightedEndpoint {
    /// `IP:port`, `host:port` (resolved when connecting) or `unix:/path`.
    pub address: String,
    /// Relative share of traffic, 1 to 10000 (default 1).
    #[serde(default)]
    pub weight: Option<u32>,
    /// The endpoint's zone (for `prefer_zone`).
    #[serde(default)]
    pub zone: Option<String>,
}

/// Active health checks: exactly one of `http`, `tcp` or `grpc`, and how often.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// Probe with `GET path` over HTTP/1.1; passes on an expected status.
    #[serde(default)]
    pub http: Option<RawHttpProbe>,
    /// Probe with a TCP connect (`tcp: {}`); passes when it connects.
    #[serde(default, deserialize_with = "present")]
    pub tcp: Option<RawTcpProbe>,
    /// Probe with `grpc.health.v1.Health/Check` over h2c; passes on `SERVING`.
    #[serde(default, deserialize_with = "present")]
    pub grpc: Option<RawGrpcProbe>,
    /// Time between probes of one endpoint (default "5s").
    #[serde(default)]
    pub interval: Option<String>,
    /// Up to this much random delay before each probe (default: a tenth of `interval`; "0s" for
    /// none).
    #[serde(default)]
    pub jitter: Option<String>,
    /// A probe slower than this fails (default "1s"); must be shorter than `interval`.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Passing probes in a row that make an unhealthy endpoint healthy again (default 2).
    #[serde(default)]
    pub healthy_threshold: Option<u32>,
    /// Failing probes in a row that make an endpoint unhealthy (default 3).
    #[serde(default)]
    pub unhealthy_threshold: Option<u32>,
}

/// An HTTP health probe.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHttpProbe {
    /// Request path, starting with '/', e.g. `/healthz`.
    pub path: String,
    /// Passing statuses: codes (`200`) or ranges (`"200-299"`), 100 to 599 (default
    /// `["200-399"]`).
    #[serde(default)]
    pub expect: Option<Vec<NumberOrString>>,
}

/// A TCP connect probe; takes no keys.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTcpProbe {}

/// A gRPC health probe.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawGrpcProbe {
    /// The service asked about (default "": the server as a whole).
    #[serde(default)]
    pub service: Option<String>,
}

/// Passive outlier detection, per endpoint.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCircuitBreaker {
    /// Whether failing endpoints are ejected at all (default true).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Failures in a row that eject an endpoint (default 5; 0 disables this trigger).
    #[serde(default)]
    pub consecutive_failures: Option<u32>,
    /// A failure share at or above this percentage over `window` ejects an endpoint (default 50;
    /// 0 disables this trigger).
    #[serde(default)]
    pub failure_rate_percent: Option<u32>,
    /// Requests an endpoint needs in `window` before its failure rate counts (default 20).
    #[serde(default)]
    pub min_requests: Option<u32>,
    /// The window of the failure rate (default "10s").
    #[serde(default)]
    pub window: Option<String>,
    /// First ejection time; doubles with each ejection in a row (default "5s").
    #[serde(default)]
    pub base_ejection: Option<String>,
    /// Longest ejection time, at least `base_ejection` (default "5m").
    #[serde(default)]
    pub max_ejection: Option<String>,
    /// Most endpoints ejected at once, as a percentage (default 50); one always stays.
    #[serde(default)]
    pub max_ejected_percent: Option<u32>,
}

/// Per-upstream bounds on concurrent work.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamLimits {
    /// Requests in flight to the upstream at once (default 1024, at least 1).
    #[serde(default)]
    pub max_requests: Option<usize>,
    /// Requests waiting for a slot at once (default 1024; 0: refuse at once when full).
    #[serde(default)]
    pub max_pending: Option<usize>,
    /// Upstream connections open at once, idle ones included (default: no own bound).
    #[serde(default)]
    pub max_connections: Option<usize>,
}

/// When and how failed requests are tried again.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Tries in all, the first included: 1 to 10 (default 3; 1 disables retries).
    #[serde(default)]
    pub attempts: Option<u32>,
    /// Response statuses retried, each 400 to 599 (default `[502, 503, 504]`).
    #[serde(default)]
    pub on_status: Option<Vec<u32>>,
    /// gRPC status codes retried: names (`unavailable`) or numbers 1 to 16 (default
    /// `[unavailable]`).
    #[serde(default)]
    pub on_grpc: Option<Vec<NumberOrString>>,
    /// Retry responses to non-idempotent methods (POST, PATCH) too (default false).
    #[serde(default)]
    pub all_methods: Option<bool>,
    /// Bound on each try's time to the response head (default: only the route's deadline);
    /// shorter than the route's `timeout` / the upstream's `request_timeout`.
    #[serde(default)]
    pub per_try_timeout: Option<String>,
    /// Back-off before the first retry, doubling per retry, with jitter (default "25ms").
    #[serde(default)]
    pub backoff: Option<String>,
    /// Longest back-off, at least `backoff` (default "250ms").
    #[serde(default)]
    pub max_backoff: Option<String>,
    /// Request bodies up to this many bytes are kept for a retry (default 65536, at most 16 MiB;
    /// 0: only requests without a body are retried).
    #[serde(default)]
    pub replay_buffer: Option<usize>,
}

/// Caps retries to `percent` % of requests plus `min_per_second`, over `window`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRetryBudget {
    /// Retries allowed as a percentage of requests, 0 to 1000 (default 20).
    #[serde(default)]
    pub percent: Option<u32>,
    /// Retries always allowed per second, so low traffic can still retry (default 10).
    #[serde(default)]
    pub min_per_second: Option<u32>,
    /// How long a request counts towards the budget, 1s to 60s (default "10s").
    #[serde(default)]
    pub window: Option<String>,
}

/// Upstream HTTP version.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawUpstreamProtocol {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 prior knowledge.
    Http2,
    /// Same as downstream.
    Auto,
}

/// Connection pool settings.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    /// Idle connections close after this long (default "4s": before the app closes them).
    #[serde(default)]
    pub idle_timeout: Option<String>,
    /// Most idle connections kept per endpoint (default 256).
    #[serde(default)]
    pub max_idle_per_endpoint: Option<usize>,
}

// === impl OneOrMany ===

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct OneOrManyVisitor;

        impl<'de> Visitor<'de> for OneOrManyVisitor {
            type Value = OneOrMany;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(OneOrMany::One(v.to_owned()))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    items.push(item);
                }
                Ok(OneOrMany::Many(items))
            }
        }

        d.deserialize_any(OneOrManyVisitor)
    }
}

// === impl NumberOrString ===

impl<'de> Deserialize<'de> for NumberOrString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NumberOrStringVisitor;

        impl<'de> Visitor<'de> for NumberOrStringVisitor {
            type Value = NumberOrString;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number or a string")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(NumberOrString::Number(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                // Out of i64's range is out of every range the checker accepts.
                Ok(NumberOrString::Number(i64::try_from(v).unwrap_or(i64::MAX)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(NumberOrString::String(v.to_owned()))
            }
        }

        d.deserialize_any(NumberOrStringVisitor)
    }
}

// === impl RawEndpoint ===

impl<'de> Deserialize<'de> for RawEndpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EndpointVisitor;

        impl<'de> Visitor<'de> for EndpointVisitor {
            type Value = RawEndpoint;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address or a mapping with `address` and `weight`")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawEndpoint::Address(v.to_owned()))
            }

            // The map is handed on, not buffered, so its errors keep their key path.
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                RawWeightedEndpoint::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawEndpoint::Weighted)
            }
        }

        d.deserialize_any(EndpointVisitor)
    }
}

// === impl RawRouteRetry ===

impl<'de> Deserialize<'de> for RawRouteRetry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RouteRetryVisitor;

        impl<'de> Visitor<'de> for RouteRetryVisitor {
            type Value = RawRouteRetry;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`off` or a mapping of retry keys")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                if v == "off" {
                    Ok(RawRouteRetry::Off)
                } else {
                    Err(de::Error::invalid_value(de::Unexpected::Str(v), &self))
                }
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                RawRetry::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawRouteRetry::Policy)
            }
        }

        d.deserialize_any(RouteRetryVisitor)
    }
}

/// The schema of `retry: off`.
fn off_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "const": "off",
    })
}

/// For a probe that may be written without keys (`tcp:`): present but empty counts as given,
/// where serde alone would read it as absent.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(d).map(|v| Some(v.unwrap_or_default()))
}

/// A name map that keeps file order and refuses a name given twice.
///
/// The error text `duplicate name `NAME`` is matched by the serde error translation in `lib.rs`
/// to build the key path and hint; keep them in step.
fn unique_map<'de, D, K, V>(d: D) -> Result<IndexMap<K, V>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Eq + Hash + fmt::Display,
    V: Deserialize<'de>,
{
    struct UniqueVisitor<K, V>(PhantomData<(K, V)>);

    impl<'de, K, V> Visitor<'de> for UniqueVisitor<K, V>
    where
        K: Deserialize<'de> + Eq + Hash + fmt::Display,
        V: Deserialize<'de>,
    {
        type Value = IndexMap<K, V>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of names to values")
        }

        // `listeners:` with nothing after it is an empty map, so the checker can say what is
        // missing ("no listeners") instead of reporting a type error.
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(IndexMap::new())
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = IndexMap::new();
            while let Some(k) = map.next_key::<K>()? {
                if out.contains_key(&k) {
                    return Err(de::Error::custom(format_args!("duplicate name `{k}`")));
                }
                let v = map.next_value()?;
                out.insert(k, v);
            }
            Ok(out)
        }
    }

    d.deserialize_map(UniqueVisitor(PhantomData))
}
