//! The checked, typed configuration: what the rest of Tandem consumes.
//!
//! Every value here has passed `check()`: addresses parse, names resolve, durations are
//! positive, matchers are well formed. Nothing in this module does I/O. `Serialize` gives the
//! effective configuration for the admin API's `GET /config`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

mod access_log;
pub use access_log::*;
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

/// The whole, checked configuration of one Tandem process.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    /// Where the configuration came from (a file path, or `<embedded default>`); used in errors.
    pub source: String,
    /// The admin API.
    pub admin: Admin,
    /// How long in-flight requests may take to finish after SIGTERM before Tandem exits.
    #[serde(with = "humantime_serde_compat")]
    pub drain_timeout: Duration,
    /// Limits that protect every listener against hostile or broken clients.
    pub limits: Limits,
    /// The local app this sidecar fronts, when the config names one.
    pub app: Option<App>,
    /// Listeners in file order.
    pub listeners: Vec<Listener>,
    /// Upstreams in file order; names are unique.
    pub upstreams: Vec<Upstream>,
    /// The access log, when configured (off by default).
    pub access_log: Option<AccessLog>,
    /// Distributed tracing; `None`: off.
    pub tracing: Option<Tracing>,
    /// Log shipping, when the file has a `logs:` section.
    pub logs: Option<Logs>,
    /// The etcd cluster, when configured.
    pub etcd: Option<Etcd>,
    /// The app's registration in etcd, when configured.
    pub registration: Option<Registration>,
    /// The workload identity (certificate files); `None`: no TLS anywhere.
    pub tls: Option<Tls>,
    /// What `/metrics` exports.
    pub metrics: MetricsConfig,
}

/// Prometheus metrics.
#[derive(Clone, Debug, Serialize)]
pub struct MetricsConfig {
    /// Whether per-request HTTP metrics (counts, durations, body sizes) are recorded.
    pub requests: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { requests: true }
    }
}

/// The admin API (health, metrics, effective config).
#[derive(Clone, Debug, Serialize)]
pub struct Admin {
    /// Where the admin API listens; loopback or a Unix socket unless `allow_remote`.
    pub address: Address,
    /// A non-loopback `address` was allowed explicitly.
    pub allow_remote: bool,
}

impl Admin {
    /// The error for an admin address that is neither loopback nor a Unix socket when remote
    /// access was not allowed explicitly: what is wrong, and the fix.
    pub fn exposure_error(&self) -> Option<(String, &'static str)> {
        if self.allow_remote || self.address.is_local() {
            return None;
        }
        Some((
            format!(
                "`{}` is not a loopback address; the admin API is unauthenticated (configuration, metrics, upstream state)",
                self.address
            ),
            "use 127.0.0.1:PORT, [::1]:PORT or unix:/path.sock, or set `admin.allow_remote: true` to expose it on purpose (behind a firewall or network policy)",
        ))
    }
}

/// The app Tandem runs beside.
#[derive(Clone, Debug, Serialize)]
pub struct App {
    /// The upstream that reaches the app; when Tandem supervises the app, `/ready` waits until the
    /// first endpoint of this upstream accepts connections.
    pub upstream: String,
}

/// Per-listener protections.
#[derive(Clone, Debug, Serialize)]
pub struct Limits {
    /// Connections a listener holds at once; more wait in the kernel backlog.
    pub max_connections: usize,
    /// Largest request head (request line plus headers) in bytes; larger gets 431.
    pub max_header_bytes: usize,
    /// Most header fields in one request; more gets 431.
    pub max_headers: usize,
    /// Time a client has to send a complete request head; slower connections are closed.
    #[serde(with = "humantime_serde_compat")]
    pub header_read_timeout: Duration,
    /// A TCP proxy connection with no bytes either way for this long is closed.
    #[serde(with = "humantime_serde_compat")]
    pub tcp_idle_timeout: Duration,
    /// A request body with no data from the client for this long fails (slow bodies).
    #[serde(with = "humantime_serde_compat")]
    pub body_read_timeout: Duration,
    /// A client connection that accepts no bytes for this long while Tandem has some to send
    /// is closed (slow readers).
    #[serde(with = "humantime_serde_compat")]
    pub send_timeout: Duration,
    /// HTTP/2 flood limits.
    pub h2: H2Limits,
}

impl Default for Limits {
    /// The defaults documented in docs/config.md, `limits`.
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_header_bytes: 65_536,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(10),
            tcp_idle_timeout: Duration::from_secs(3600),
            body_read_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(60),
            h2: H2Limits {
                max_concurrent_streams: 256,
                max_pending_accept_reset_streams: 20,
                max_local_error_reset_streams: 1024,
                max_send_buf_size: 409_600,
                max_resets_per_second: 200,
            },
        }
    }
}

/// Per-connection HTTP/2 limits against floods (rapid reset, CONTINUATION, HPACK bombs, stalls).
/// The header list limit is [`Limits::max_header_bytes`]; h2 also bounds CONTINUATION frames by
/// it and answers SETTINGS and PING floods with a bounded number of queued acknowledgements.
#[derive(Clone, Debug, Serialize)]
pub struct H2Limits {
    /// Streams open at once on one connection; more are refused with REFUSED_STREAM.
    pub max_concurrent_streams: u32,
    /// Streams the client opened and reset before Tandem accepted them, at once; beyond this
    /// the connection gets GOAWAY (ENHANCE_YOUR_CALM).
    pub max_pending_accept_reset_streams: usize,
    /// Streams Tandem reset because of the client's protocol errors; beyond this the connection
    /// gets GOAWAY (ENHANCE_YOUR_CALM).
    pub max_local_error_reset_streams: usize,
    /// Response bytes buffered per stream while the client's window is closed.
    pub max_send_buf_size: usize,
    /// Requests a client may cancel per second on one connection before their response starts
    /// (burst of as many); beyond it the connection is closed.
    pub max_resets_per_second: u32,
}

/// A socket address: TCP `host:port` or a Unix domain socket path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "String")]
pub enum Address {
    /// A TCP socket address with a literal IP.
    Tcp(SocketAddr),
    /// A TCP address by host name, resolved when connecting (upstream endpoints only).
    Host {
        /// Host name, e.g. `localhost`.
        host: String,
        /// TCP port.
        port: u16,
    },
    /// A Unix domain socket path (`unix:/path`).
    Unix(PathBuf),
}

/// Which side of the app a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Traffic from peers to the app: `forwarded`/`x-forwarded-*` headers are set.
    Inbound,
    /// Traffic from the app to other services.
    Outbound,
}

/// What a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerProtocol {
    /// HTTP/1.1 and HTTP/2 (prior knowledge, detected by its preface) on one port.
    Http,
    /// Opaque TCP, copied both ways to the listener's upstream.
    Tcp,
}

/// A named listener.
#[derive(Clone, Debug, Serialize)]
pub struct Listener {
    /// Unique name, used in metrics and logs.
    pub name: String,
    /// Where it listens.
    pub address: Address,
    /// Inbound or outbound.
    pub direction: Direction,
    /// HTTP or TCP.
    pub protocol: ListenerProtocol,
    /// Routes, first match wins (HTTP only).
    pub routes: Vec<Route>,
    /// Upstream for requests no route matches (HTTP), or the upstream of a TCP listener.
    pub default_upstream: Option<String>,
    /// Act as an HTTP forward proxy: `http://NAME/...` absolute-form requests and `CONNECT NAME:port`
    /// reach the upstream called NAME.
    pub forward_proxy: bool,
    /// Whether its requests or connections are written to the access log (when there is one).
    pub access_log: bool,
    /// Its protections: the top-level `limits` with this listener's own keys applied.
    pub limits: Limits,
    /// Authorization policy; `None`: every request is allowed.
    pub authorization: Option<Authorization>,
    /// Whether request paths are normalized before routing, authorization and forwarding.
    pub normalize_path: bool,
    /// TLS termination; `None`: plaintext.
    pub tls: Option<ListenerTls>,
}

/// A route: a match and where matching requests go.
#[derive(Clone, Debug, Serialize)]
pub struct Route {
    /// Name for metrics; defaults to `<listener>.<index>` when not given.
    pub name: String,
    /// What a request must look like to take this route.
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    /// Upstream name (checked to exist).
    pub upstream: String,
    /// Overrides the upstream's `request_timeout` for this route.
    #[serde(with = "humantime_serde_compat::option")]
    pub timeout: Option<Duration>,
    /// Local rate limit, if any.
    pub rate_limit: Option<RateLimit>,
    /// Overrides the upstream's retry policy for this route (the upstream's budget still applies).
    pub retry: Option<Retry>,
    /// JWT authentication, if required.
    pub jwt: Option<Jwt>,
}

/// A local rate limit: a token bucket per key holding `burst` tokens, refilled at `requests` per
/// `per`.
#[derive(Clone, Debug, Serialize)]
pub struct RateLimit {
    /// Steady rate: requests per `per` (at least 1).
    pub requests: u32,
    /// Period of `requests`.
    #[serde(with = "humantime_serde_compat")]
    pub per: Duration,
    /// Bucket size: requests admitted at once (at least 1).
    pub burst: u32,
    /// What gets its own bucket.
    pub key: RateLimitKey,
    /// Most keys tracked at once; beyond it new keys share one bucket.
    pub max_keys: usize,
}

/// What a rate limit counts separately.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitKey {
    /// One bucket for the route.
    None,
    /// One per client IP address (Unix socket clients share one).
    ClientIp,
    /// One per verified peer identity (mTLS); connections without one share one.
    PeerIdentity,
    /// One per value of this header (lower-case name); requests without it share one.
    Header(String),
}

/// Conditions a request must all meet; an empty match matches everything.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RouteMatch {
    /// Host (authority without port), exact or `*.suffix` wildcard; compared case-insensitively.
    pub host: Option<HostMatch>,
    /// Path condition.
    pub path: Option<PathMatch>,
    /// Allowed methods; empty means any.
    #[serde(serialize_with = "ser_methods")]
    pub methods: Vec<http::Method>,
    /// Headers that must be present with exactly this value.
    #[serde(serialize_with = "ser_headers")]
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// The connection's verified peer identity must match one of these; empty means any
    /// (including none).
    pub peer_identities: Vec<IdentityMatch>,
}

/// Host condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostMatch {
    /// Lower-cased host, e.g. `api.example.com`.
    Exact(String),
    /// Lower-cased suffix including the leading dot, e.g. `.example.com` for `*.example.com`;
    /// matches one or more labels before it, never the bare suffix.
    Suffix(String),
}

/// Path condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathMatch {
    /// The path (without query) equals this.
    Exact(String),
    /// The path starts with this on a segment boundary (`/api` matches `/api` and `/api/x`, not
    /// `/apix`); `/` matches everything.
    Prefix(String),
}

/// HTTP version Tandem speaks to an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 always.
    Http1,
    /// HTTP/2 prior knowledge (h2c) always; needed for gRPC to an h2-only server.
    Http2,
    /// The same version the downstream request used.
    Auto,
}

/// A named group of endpoints.
#[derive(Clone, Debug, Serialize)]
pub struct Upstream {
    /// Unique name.
    pub name: String,
    /// Static endpoints; may be empty (requests then get 503). With another `discovery`
    /// source, empty: endpoints arrive at run time.
    pub endpoints: Vec<UpstreamEndpoint>,
    /// Where the endpoints come from.
    pub discovery: Discovery,
    /// Zone-aware preference, when configured.
    pub prefer_zone: Option<PreferZone>,
    /// HTTP version used towards the endpoints.
    pub protocol: UpstreamProtocol,
    /// Bound on establishing one connection.
    #[serde(with = "humantime_serde_compat")]
    pub connect_timeout: Duration,
    /// Bound on the time from sending the request to receiving the response head.
    #[serde(with = "humantime_serde_compat")]
    pub request_timeout: Duration,
    /// Connection pool settings.
    pub pool: Pool,
    /// How an endpoint is chosen for each request.
    pub balancer: Balancer,
    /// Active health checking, when configured.
    pub health_check: Option<HealthCheck>,
    /// Passive outlier detection: endpoints that fail are ejected for a while.
    pub circuit_breaker: CircuitBreaker,
    /// Bounds on concurrent work towards this upstream.
    pub limits: UpstreamLimits,
    /// Retry policy of every route to this upstream (a route may override it).
    pub retry: Retry,
    /// Bounds the retries of all routes to this upstream together.
    pub retry_budget: RetryBudget,
    /// A response or request body stream with no frame either way for this long is aborted
    /// (long-lived gRPC streams and slow downloads still work while they move).
    #[serde(with = "humantime_serde_compat")]
    pub stream_idle_timeout: Duration,
    /// TLS origination; `None`: plaintext.
    pub tls: Option<UpstreamTls>,
}

/// One endpoint of an upstream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UpstreamEndpoint {
    /// Where it is.
    pub address: Address,
    /// Relative share of traffic (at least 1; default 1).
    pub weight: u32,
    /// Zone, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

/// Load-balancing algorithm.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balancer {
    /// Power of two choices over peak-EWMA latency times in-flight requests, divided by weight
    /// (the default: moves traffic off slow endpoints within a few requests).
    P2c,
    /// Weighted round robin.
    RoundRobin,
    /// The endpoint with the fewest in-flight requests per unit of weight (ties by P2C sampling).
    LeastRequest,
    /// Consistent hashing (a ring of weighted virtual nodes): the same key reaches the same
    /// endpoint while it is available (sticky sessions).
    Hash(HashKey),
}

/// What a consistent-hash balancer hashes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HashKey {
    /// The value of this header (lower-case name); requests without it are spread by P2C.
    Header(String),
    /// The value of this cookie; requests without it are spread by P2C.
    Cookie(String),
    /// The client's IP address.
    ClientIp,
}

/// Active health checks of every endpoint of an upstream.
#[derive(Clone, Debug, Serialize)]
pub struct HealthCheck {
    /// What a probe does.
    pub probe: HealthProbe,
    /// Time between probes of one endpoint.
    #[serde(with = "humantime_serde_compat")]
    pub interval: Duration,
    /// Up to this much random extra delay before each probe, so endpoints are not probed in step.
    #[serde(with = "humantime_serde_compat")]
    pub jitter: Duration,
    /// A probe that takes longer fails.
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
    /// Consecutive passing probes that make an unhealthy endpoint healthy again.
    pub healthy_threshold: u32,
    /// Consecutive failing probes that make an endpoint unhealthy.
    pub unhealthy_threshold: u32,
}

/// A health probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthProbe {
    /// `GET path` over HTTP/1.1; passes when the status is in one of the ranges.
    Http {
        /// Request path, e.g. `/healthz`.
        path: String,
        /// Passing statuses as inclusive ranges (default 200-399).
        expect: Vec<(u16, u16)>,
    },
    /// A TCP connect that succeeds passes.
    Tcp,
    /// `grpc.health.v1.Health/Check` over h2c; passes on `SERVING`.
    Grpc {
        /// The service name asked about (empty: the server as a whole).
        service: String,
    },
}

/// Passive outlier detection (per endpoint circuit breaking).
#[derive(Clone, Debug, Serialize)]
pub struct CircuitBreaker {
    /// Whether endpoints are ejected at all.
    pub enabled: bool,
    /// This many failures in a row eject an endpoint (0 disables this trigger).
    pub consecutive_failures: u32,
    /// A failure share at or above this percentage over `window` ejects an endpoint (0 disables).
    pub failure_rate_percent: u32,
    /// The failure rate counts only once an endpoint had this many requests in the window.
    pub min_requests: u32,
    /// The window of the failure rate.
    #[serde(with = "humantime_serde_compat")]
    pub window: Duration,
    /// First ejection time; each ejection in a row doubles it.
    #[serde(with = "humantime_serde_compat")]
    pub base_ejection: Duration,
    /// Longest ejection time.
    #[serde(with = "humantime_serde_compat")]
    pub max_ejection: Duration,
    /// Never eject more than this percentage of an upstream's endpoints (at least one endpoint
    /// always stays in rotation).
    pub max_ejected_percent: u32,
}

/// Per-upstream bounds on concurrent work; beyond them requests get a fast 503 `overloaded`.
#[derive(Clone, Debug, Serialize)]
pub struct UpstreamLimits {
    /// Requests in flight to the upstream at once.
    pub max_requests: usize,
    /// Requests waiting for one of `max_requests` at once; more are refused immediately.
    pub max_pending: usize,
    /// Upstream connections open at once (idle ones included); `None`: bounded by
    /// `max_requests` plus the pool's idle connections.
    pub max_connections: Option<usize>,
}

/// When and how a failed request is tried again.
#[derive(Clone, Debug, Serialize)]
pub struct Retry {
    /// Tries in all, the first included (1 disables retries).
    pub attempts: u32,
    /// Response statuses that are retried (idempotent requests, or any with `all_methods`).
    pub on_status: Vec<u16>,
    /// gRPC status codes (from `grpc-status` in the response head) that are retried.
    pub on_grpc: Vec<u32>,
    /// Retry failed responses of non-idempotent methods too (connect failures and requests the
    /// upstream never saw are retried for every method regardless).
    pub all_methods: bool,
    /// Bound on each try's time to the response head; `None`: only the route's deadline.
    #[serde(with = "humantime_serde_compat::option")]
    pub per_try_timeout: Option<Duration>,
    /// Back-off before the first retry; doubles per retry, with full jitter.
    #[serde(with = "humantime_serde_compat")]
    pub backoff: Duration,
    /// Longest back-off (also caps an honoured `Retry-After`).
    #[serde(with = "humantime_serde_compat")]
    pub max_backoff: Duration,
    /// Request bodies up to this many bytes are kept for replay; larger ones are not retried.
    pub replay_buffer: usize,
}

/// A retry budget: retries may add at most `percent` % of the requests plus `min_per_second`
/// per second, over a sliding `window`.
#[derive(Clone, Debug, Serialize)]
pub struct RetryBudget {
    /// Retries allowed as a percentage of requests.
    pub percent: u32,
    /// Retries always allowed per second, so low traffic can still retry.
    pub min_per_second: u32,
    /// How long a request counts towards the budget.
    #[serde(with = "humantime_serde_compat")]
    pub window: Duration,
}

/// Connection pool settings for one upstream.
#[derive(Clone, Debug, Serialize)]
pub struct Pool {
    /// Idle connections are closed after this long.
    #[serde(with = "humantime_serde_compat")]
    pub idle_timeout: Duration,
    /// Most idle connections kept per endpoint.
    pub max_idle_per_endpoint: usize,
}

// === defaults ===
//
// The defaults are the safe settings a route gets without a line of config: they live here so
// the checker, the docs' examples and the tests agree on them.

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            enabled: true,
            consecutive_failures: 5,
            failure_rate_percent: 50,
            min_requests: 20,
            window: Duration::from_secs(10),
            base_ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

impl Default for UpstreamLimits {
    fn default() -> Self {
        UpstreamLimits {
            max_requests: 1024,
            max_pending: 1024,
            max_connections: None,
        }
    }
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 3,
            on_status: vec![502, 503, 504],
            // UNAVAILABLE: the gRPC code for "try again".
            on_grpc: vec![14],
            all_methods: false,
            per_try_timeout: None,
            backoff: Duration::from_millis(25),
            max_backoff: Duration::from_millis(250),
            replay_buffer: 64 * 1024,
        }
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            percent: 20,
            min_per_second: 10,
            window: Duration::from_secs(10),
        }
    }
}

/// Default stream idle timeout (Envoy's too).
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

// === impl Address ===

impl Address {
    /// A loopback IP or a Unix socket: reachable from this host only.
    pub fn is_local(&self) -> bool {
        match self {
            Address::Tcp(a) => a.ip().is_loopback(),
            Address::Unix(_) => true,
            Address::Host { .. } => false,
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Tcp(a) => write!(f, "{a}"),
            Address::Host { host, port } => write!(f, "{host}:{port}"),
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl From<Address> for String {
    fn from(a: Address) -> String {
        a.to_string()
    }
}

impl std::str::FromStr for Address {
    type Err = String;

    /// Parses `unix:/path`, `IP:port`, `[v6]:port` or `host:port`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("a unix address needs a path, e.g. unix:/run/app.sock".into());
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Ok(Address::Tcp(sa));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}` is not host:port or unix:/path"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("`{port}` in `{s}` is not a port number (0-65535)"))?;
        let valid_host = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid_host {
            return Err(format!(
                "`{host}` in `{s}` is not a valid IP address or host name"
            ));
        }
        Ok(Address::Host {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

// === serde helpers ===

fn ser_methods<S: serde::Serializer>(m: &[http::Method], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(m.iter().map(|m| m.as_str()))
}

fn ser_headers<S: serde::Serializer>(
    h: &[(http::HeaderName, http::HeaderValue)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(
        h.iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap_or("<binary>"))),
    )
}

/// Durations serialize as humantime strings (`30s`, `1m 30s`), the same form the YAML takes.
mod humantime_serde_compat {
    use std::time::Duration;

    pub(crate) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub(crate) mod option {
        use std::time::Duration;

        pub(crate) fn serialize<S: serde::Serializer>(
            d: &Option<Duration>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }
    }
}
