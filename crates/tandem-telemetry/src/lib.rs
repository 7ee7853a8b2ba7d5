//! Telemetry: every metric Tandem exports, registered in one place, and handles resolved once.
//!
//! The request path never hashes labels: [`Metrics::route`] and [`Metrics::listener`] resolve a
//! label set once (when a config snapshot is built) into handles that share storage with the
//! registry, so recording is an atomic add. Metric names follow `tandem_<thing>_<unit>[_total]`.
//!
//! # Layout
//! - [`Metrics`]: the registry and the metric families.
//! - [`RouteMetrics`], [`ListenerMetrics`]: pre-resolved handles for one route or listener.
//! - [`access_log`]: request and connection records, rendered as JSON lines by a writer thread
//!   behind a bounded queue.
//! - [`json`]: the JSON string escaper of the hand-written JSON encoders (access log, log
//!   shipping).
//! - [`trace`]: distributed tracing: trace context (W3C, B3), sampling, spans, OTLP export.
//! - [`logs`]: log shipping handles ([`logs::LogSourceMetrics`], [`logs::LogSinkMetrics`]).
//! - [`tls`]: TLS handshakes, certificate expiry and reloads.
//! - [`clock`]: Unix times from monotonic instants, reading the wall clock once a second.
//! - [`histogram`]: the lock-free histogram behind the latency metrics; [`process`]: process
//!   metrics read from `/proc`.

pub mod access_log;
pub mod clock;
pub mod discovery;
pub mod histogram;
pub mod json;
pub mod logs;
pub mod process;
pub mod tls;
pub mod trace;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
pub use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

pub use crate::histogram::IntHistogram;

/// Latency bucket bounds in nanoseconds: 0.5 ms to 30 s, roughly 1-2.5-5 per decade (a sidecar
/// hop on loopback lands in the first buckets; a slow upstream in the last).
static LATENCY_BOUNDS_NS: [u64; 16] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    20_000_000_000,
    30_000_000_000,
];

fn latency_histogram() -> IntHistogram {
    IntHistogram::new(&LATENCY_BOUNDS_NS, 1e9)
}

/// Body size bucket bounds in bytes: powers of four from 64 B to 64 MiB (an empty body lands in
/// the first bucket; a file upload in the last ones).
static SIZE_BOUNDS_BYTES: [u64; 11] = [
    64,
    256,
    1 << 10,
    4 << 10,
    16 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
    4 << 20,
    16 << 20,
    64 << 20,
];

fn size_histogram() -> IntHistogram {
    IntHistogram::new(&SIZE_BOUNDS_BYTES, 1.0)
}

/// The method classes requests are counted by: the registered methods, and `other` for any
/// extension method (so client input never creates a series).
pub const METHOD_CLASSES: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "other",
];

/// The index into [`METHOD_CLASSES`] of a request method.
pub fn method_class(method: &str) -> usize {
    match method {
        "GET" => 0,
        "HEAD" => 1,
        "POST" => 2,
        "PUT" => 3,
        "DELETE" => 4,
        "PATCH" => 5,
        "OPTIONS" => 6,
        "CONNECT" => 7,
        "TRACE" => 8,
        _ => 9,
    }
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The Content-Type of [`Metrics::encode`]'s output (OpenMetrics).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The Content-Type of [`Metrics::encode_prometheus`]'s output (Prometheus text 0.0.4).
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    direction: &'static str,
    listener: String,
    route: String,
    upstream: String,
    method: &'static str,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    direction: &'static str,
    listener: String,
    route: String,
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    listener: String,
    upstream: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthzLabels {
    listener: String,
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    listener: String,
    peer_identity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamReasonLabels {
    upstream: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    upstream: String,
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealthCheckLabels {
    upstream: String,
    endpoint: String,
    result: &'static str,
}

type HistogramFamily = Family<RouteLabels, IntHistogram, fn() -> IntHistogram>;

/// The process-wide metrics registry.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily,
    request_size: HistogramFamily,
    response_size: HistogramFamily,
    /// Whether per-request HTTP metrics are recorded (`metrics.enabled` in the config).
    requests_enabled: bool,
    proxy_errors: Family<ErrorLabels, Counter>,
    conns_active: Family<ListenerLabels, Gauge>,
    conns_total: Family<ListenerLabels, Counter>,
    conns_rejected: Family<ListenerLabels, Counter>,
    tcp_rx: Family<ListenerLabels, Counter>,
    tcp_tx: Family<ListenerLabels, Counter>,
    retries: Family<UpstreamReasonLabels, Counter>,
    budget_exhausted: Family<UpstreamLabels, Counter>,
    ejections: Family<UpstreamReasonLabels, Counter>,
    ejected: Family<EndpointLabels, Gauge>,
    healthy: Family<EndpointLabels, Gauge>,
    health_checks: Family<HealthCheckLabels, Counter>,
    /// The shared health handles of endpoints without health checks.
    unchecked: discovery::Unchecked,
    access_log_dropped: Counter,
    authz_denied: Family<AuthzLabels, Counter>,
    peer_requests: Family<PeerLabels, Counter>,
    trace: trace::TraceMetrics,
    logs: logs::LogFamilies,
    tls: tls::TlsFamilies,
    discovery: discovery::DiscoveryFamilies,
}

/// Resilience handles for one upstream (retries, budget) and its endpoints (breakers, health).
#[derive(Clone, Debug)]
pub struct UpstreamMetrics {
    /// Retries by reason, indexed like the proxy's `RetryReason::ALL`.
    pub retries: Arc<[Counter]>,
    /// Retries refused because the retry budget was spent.
    pub budget_exhausted: Counter,
    /// Ejections by reason: consecutive_failures, failure_rate, probe_failed.
    pub ejections: Arc<[Counter; 3]>,
    /// Per endpoint, in endpoint order.
    pub endpoints: Arc<[EndpointMetrics]>,
}

/// Handles for one endpoint of an upstream.
#[derive(Clone, Debug)]
pub struct EndpointMetrics {
    /// 1 while ejected by its breaker (half-open included), else 0.
    pub ejected: Gauge,
    /// 1 healthy or unchecked, 0 failing active health checks. Without health checks, this and
    /// the two counters below are unregistered handles shared by every endpoint: an upstream
    /// of thousands of discovered endpoints then costs one series per endpoint, not four.
    pub healthy: Gauge,
    /// Active health checks that passed.
    pub checks_passed: Counter,
    /// Active health checks that failed.
    pub checks_failed: Counter,
}

/// Handles for one (listener, route, upstream): a counter per method class and status class,
/// the route's latency histogram and its body size histograms; empty (recording nothing) when
/// request metrics are off.
#[derive(Clone, Debug)]
pub struct RouteMetrics(Option<Arc<RouteHandles>>);

#[derive(Debug)]
struct RouteHandles {
    by_class: [[Counter; 5]; METHOD_CLASSES.len()],
    duration: IntHistogram,
    request_size: IntHistogram,
    response_size: IntHistogram,
}

/// Handles for one listener.
#[derive(Clone, Debug)]
pub struct ListenerMetrics {
    /// Connections open now.
    pub active: Gauge,
    /// Connections accepted since start.
    pub accepted: Counter,
    /// Connections refused because the listener was at `max_connections`... or draining.
    pub rejected: Counter,
    /// TCP proxy bytes received from downstream.
    pub tcp_received: Counter,
    /// TCP proxy bytes sent to downstream.
    pub tcp_sent: Counter,
}

// === impl Metrics ===

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates the registry with every Tandem metric registered.
    pub fn new() -> Self {
        Self::with_request_metrics(true)
    }

    /// [`Metrics::new`]; with `enabled` false the per-request HTTP metrics (requests, durations,
    /// body sizes) are not recorded: route handles are empty and their families stay empty.
    /// Connection, resilience, tracing, log shipping and process metrics are unaffected.
    pub fn with_request_metrics(enabled: bool) -> Self {
        // Process metrics keep their standard unprefixed names; Tandem's own get `tandem_`.
        let mut root = Registry::default();
        root.register_collector(Box::new(process::ProcessCollector));
        let registry = root.sub_registry_with_prefix("tandem");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests completed, by listener, route, upstream and response status class",
            requests.clone(),
        );
        let duration: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "http_request_duration",
            "Time from receiving a request to sending the response head",
            Unit::Seconds,
            duration.clone(),
        );
        let request_size: HistogramFamily = Family::new_with_constructor(size_histogram);
        registry.register_with_unit(
            "http_request_size",
            "Request body bytes received from the client (0 for a request without a body)",
            Unit::Bytes,
            request_size.clone(),
        );
        let response_size: HistogramFamily = Family::new_with_constructor(size_histogram);
        registry.register_with_unit(
            "http_response_size",
            "Response body bytes sent to the client, counted when the body ends",
            Unit::Bytes,
            response_size.clone(),
        );
        let proxy_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "proxy_errors",
            "Requests Tandem answered itself because of an error, by reason (the tandem-error header)",
            proxy_errors.clone(),
        );
        let conns_active = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "connections_active",
            "Downstream connections open now",
            conns_active.clone(),
        );
        let conns_total = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "connections_accepted",
            "Downstream connections accepted",
            conns_total.clone(),
        );
        let conns_rejected = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "connections_rejected",
            "Downstream connections closed at once because the listener was full",
            conns_rejected.clone(),
        );
        let tcp_rx = Family::<ListenerLabels, Counter>::default();
        registry.register_with_unit(
            "tcp_received",
            "Bytes received from downstream on TCP listeners",
            Unit::Bytes,
            tcp_rx.clone(),
        );
        let tcp_tx = Family::<ListenerLabels, Counter>::default();
        registry.register_with_unit(
            "tcp_sent",
            "Bytes sent to downstream on TCP listeners",
            Unit::Bytes,
            tcp_tx.clone(),
        );
        let retries = Family::<UpstreamReasonLabels, Counter>::default();
        registry.register(
            "retries",
            "Requests tried again, by upstream and reason (connect_failed, reset, timeout, status, grpc)",
            retries.clone(),
        );
        let budget_exhausted = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "retry_budget_exhausted",
            "Retries not made because the upstream's retry budget was spent",
            budget_exhausted.clone(),
        );
        let ejections = Family::<UpstreamReasonLabels, Counter>::default();
        registry.register(
            "endpoint_ejections",
            "Endpoints taken out of rotation by their circuit breaker, by reason",
            ejections.clone(),
        );
        let ejected = Family::<EndpointLabels, Gauge>::default();
        registry.register(
            "endpoint_ejected",
            "1 while an endpoint is ejected by its circuit breaker (open or half-open)",
            ejected.clone(),
        );
        let healthy = Family::<EndpointLabels, Gauge>::default();
        registry.register(
            "endpoint_healthy",
            "0 while an endpoint fails its active health checks, else 1",
            healthy.clone(),
        );
        let health_checks = Family::<HealthCheckLabels, Counter>::default();
        registry.register(
            "health_checks",
            "Active health checks by endpoint and result (pass, fail)",
            health_checks.clone(),
        );
        let access_log_dropped = Counter::default();
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the writer's queue was full or a write failed",
            access_log_dropped.clone(),
        );
        let authz_denied = Family::<AuthzLabels, Counter>::default();
        registry.register(
            "authz_denied",
            "Requests denied by a listener's authorization policy, by the rule that decided \
             (`default`: no allow rule matched)",
            authz_denied.clone(),
        );
        let peer_requests = Family::<PeerLabels, Counter>::default();
        registry.register(
            "http_peer_requests",
            "HTTP requests on TLS listeners by the client's verified identity: the identities a \
             listener's authorization rules name exactly, `other` for any other, `none` without \
             a client certificate",
            peer_requests.clone(),
        );
        let trace = trace::TraceMetrics::register(registry);
        let logs = logs::LogFamilies::register(registry);
        let tls = tls::TlsFamilies::register(registry);
        let discovery = discovery::DiscoveryFamilies::register(registry);
        Metrics {
            registry: root,
            access_log_dropped,
            authz_denied,
            peer_requests,
            trace,
            logs,
            tls,
            discovery,
            retries,
            budget_exhausted,
            ejections,
            ejected,
            healthy,
            health_checks,
            unchecked: discovery::Unchecked::default(),
            requests,
            duration,
            request_size,
            response_size,
            requests_enabled: enabled,
            proxy_errors,
            conns_active,
            conns_total,
            conns_rejected,
            tcp_rx,
            tcp_tx,
        }
    }

    /// Resolves the handles of one route; call when building a snapshot, not per request.
    /// `direction` is the listener's (`inbound` or `outbound`).
    pub fn route(
        &self,
        direction: &'static str,
        listener: &str,
        route: &str,
        upstream: &str,
    ) -> RouteMetrics {
        if !self.requests_enabled {
            return RouteMetrics(None);
        }
        let by_class = METHOD_CLASSES.map(|method| {
            STATUS_CLASSES.map(|status_class| {
                self.requests
                    .get_or_create(&RequestLabels {
                        direction,
                        listener: listener.to_owned(),
                        route: route.to_owned(),
                        upstream: upstream.to_owned(),
                        method,
                        status_class,
                    })
                    .clone()
            })
        });
        let labels = RouteLabels {
            direction,
            listener: listener.to_owned(),
            route: route.to_owned(),
            upstream: upstream.to_owned(),
        };
        RouteMetrics(Some(Arc::new(RouteHandles {
            by_class,
            duration: self.duration.get_or_create(&labels).clone(),
            request_size: self.request_size.get_or_create(&labels).clone(),
            response_size: self.response_size.get_or_create(&labels).clone(),
        })))
    }

    /// Resolves the handles of one listener.
    pub fn listener(&self, listener: &str) -> ListenerMetrics {
        let labels = ListenerLabels {
            listener: listener.to_owned(),
        };
        ListenerMetrics {
            active: self.conns_active.get_or_create(&labels).clone(),
            accepted: self.conns_total.get_or_create(&labels).clone(),
            rejected: self.conns_rejected.get_or_create(&labels).clone(),
            tcp_received: self.tcp_rx.get_or_create(&labels).clone(),
            tcp_sent: self.tcp_tx.get_or_create(&labels).clone(),
        }
    }

    /// Resolves the resilience handles of an upstream and its endpoints (labelled by their
    /// configured addresses); `retry_reasons` are the retry reason labels in index order.
    /// `health_checked`: the upstream has active health checks (without them its endpoints
    /// get no `endpoint_healthy` and `health_checks_total` series).
    pub fn upstream(
        &self,
        upstream: &str,
        endpoints: &[String],
        retry_reasons: &[&'static str],
        health_checked: bool,
    ) -> UpstreamMetrics {
        let reason = |family: &Family<UpstreamReasonLabels, Counter>, reason: &'static str| {
            family
                .get_or_create(&UpstreamReasonLabels {
                    upstream: upstream.to_owned(),
                    reason,
                })
                .clone()
        };
        let families = self.endpoint_families(health_checked);
        let endpoints = endpoints
            .iter()
            .map(|e| families.endpoint(upstream, e))
            .collect();
        UpstreamMetrics {
            retries: retry_reasons
                .iter()
                .map(|r| reason(&self.retries, r))
                .collect(),
            budget_exhausted: self
                .budget_exhausted
                .get_or_create(&UpstreamLabels {
                    upstream: upstream.to_owned(),
                })
                .clone(),
            ejections: Arc::new(
                ["consecutive_failures", "failure_rate", "probe_failed"]
                    .map(|r| reason(&self.ejections, r)),
            ),
            endpoints,
        }
    }

    /// The tracing counters (spans exported and dropped).
    pub fn trace(&self) -> trace::TraceMetrics {
        self.trace.clone()
    }

    /// Resolves the counter of one proxy error reason.
    pub fn proxy_error(&self, listener: &str, upstream: &str, reason: &'static str) -> Counter {
        self.proxy_errors
            .get_or_create(&ErrorLabels {
                listener: listener.to_owned(),
                upstream: upstream.to_owned(),
                reason,
            })
            .clone()
    }

    /// The counter of requests `listener`'s policy denied by `rule`
    /// (`tandem_authz_denied_total`); resolve when building a snapshot.
    pub fn authz_denied(&self, listener: &str, rule: &str) -> Counter {
        self.authz_denied
            .get_or_create(&AuthzLabels {
                listener: listener.to_owned(),
                rule: rule.to_owned(),
            })
            .clone()
    }

    /// The request counter of `peer_identity` on `listener`'s TLS connections
    /// (`tandem_http_peer_requests_total`); the caller bounds the values (config names, `other`,
    /// `none`). Resolve when building a snapshot.
    pub fn peer_requests(&self, listener: &str, peer_identity: &str) -> Counter {
        self.peer_requests
            .get_or_create(&PeerLabels {
                listener: listener.to_owned(),
                peer_identity: peer_identity.to_owned(),
            })
            .clone()
    }

    /// The counter of dropped access log lines (`tandem_access_log_dropped_total`).
    pub fn access_log_dropped(&self) -> Counter {
        self.access_log_dropped.clone()
    }

    /// Renders every metric in the Prometheus text format 0.0.4.
    pub fn encode_prometheus(&self) -> String {
        openmetrics_to_prometheus(&self.encode())
    }

    /// Renders every metric in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail; an error here would be a bug in the encoder.
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Rewrites OpenMetrics text as Prometheus text format 0.0.4, for scrapers and tools (such as
/// `promtool check metrics`) that do not negotiate OpenMetrics: counter families are named with
/// their `_total` suffix, and `# UNIT` and `# EOF` lines go.
pub fn openmetrics_to_prometheus(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        match meta {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(kind);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

// === impl RouteMetrics ===

impl RouteMetrics {
    /// Records one finished request; `method` is its [`method_class`].
    pub fn record(&self, method: usize, status: u16, elapsed: Duration) {
        let Some(h) = &self.0 else {
            return;
        };
        let idx = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        };
        if let Some(c) = h.by_class.get(method).and_then(|m| m.get(idx)) {
            c.inc();
        }
        h.duration
            .observe(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
    }

    /// The request body size histogram; `None` when request metrics are off.
    pub fn request_size(&self) -> Option<&IntHistogram> {
        self.0.as_ref().map(|h| &h.request_size)
    }

    /// The response body size histogram; `None` when request metrics are off.
    pub fn response_size(&self) -> Option<&IntHistogram> {
        self.0.as_ref().map(|h| &h.response_size)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Handles share storage with the registry: recording through a handle shows in the output.
    #[test]
    fn handles_record_into_registry() {
        let m = Metrics::new();
        let r = m.route("inbound", "inbound", "api", "app");
        r.record(method_class("GET"), 204, Duration::from_millis(3));
        r.record(method_class("BREW"), 503, Duration::from_millis(3));
        let l = m.listener("inbound");
        l.active.inc();
        l.tcp_received.inc_by(42);
        let text = m.encode();
        assert!(text.contains(
            r#"tandem_http_requests_total{direction="inbound",listener="inbound",route="api",upstream="app",method="GET",status_class="2xx"} 1"#
        ), "{text}");
        assert!(
            text.contains(r#"method="other",status_class="5xx"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"tandem_http_request_duration_seconds_count{direction="inbound",listener="inbound",route="api",upstream="app"} 2"#), "{text}");
        assert!(
            text.contains("\n# TYPE process_resident_memory_bytes gauge\n"),
            "{text}"
        );
        assert!(text.contains("\nprocess_cpu_seconds_total "), "{text}");
        assert!(
            text.contains(r#"tandem_tcp_received_bytes_total{listener="inbound"} 42"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tandem_connections_active{listener="inbound"} 1"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
        let prom = m.encode_prometheus();
        assert!(
            prom.contains("# TYPE tandem_http_requests_total counter\n"),
            "{prom}"
        );
        assert!(
            prom.contains("# HELP tandem_tcp_received_bytes_total Bytes"),
            "{prom}"
        );
        assert!(
            prom.contains("# TYPE tandem_http_request_duration_seconds histogram\n"),
            "{prom}"
        );
        assert!(
            !prom.contains("# EOF") && !prom.contains("# UNIT"),
            "{prom}"
        );
    }

    /// Body sizes land in byte buckets (64 B ... 64 MiB) under `_bytes` names.
    #[test]
    fn size_histograms_use_byte_buckets() {
        let m = Metrics::new();
        let r = m.route("outbound", "out", "api", "app");
        let req = r.request_size().unwrap();
        req.observe(0);
        req.observe(300);
        r.response_size().unwrap().observe(70 << 20);
        let text = m.encode();
        let labels = r#"direction="outbound",listener="out",route="api",upstream="app""#;
        for line in [
            format!(r#"tandem_http_request_size_bytes_bucket{{le="64.0",{labels}}} 1"#),
            format!(r#"tandem_http_request_size_bytes_bucket{{le="256.0",{labels}}} 1"#),
            format!(r#"tandem_http_request_size_bytes_bucket{{le="1024.0",{labels}}} 2"#),
            format!(r#"tandem_http_request_size_bytes_sum{{{labels}}} 300.0"#),
            format!(r#"tandem_http_response_size_bytes_bucket{{le="67108864.0",{labels}}} 0"#),
            format!(r#"tandem_http_response_size_bytes_bucket{{le="+Inf",{labels}}} 1"#),
        ] {
            assert!(text.contains(&line), "missing {line}\n{text}");
        }
    }

    /// With request metrics off, route handles record nothing and create no series; the
    /// other metrics are still there.
    #[test]
    fn request_metrics_off_records_nothing() {
        let m = Metrics::with_request_metrics(false);
        let r = m.route("inbound", "in", "api", "app");
        r.record(method_class("GET"), 200, Duration::from_millis(1));
        assert!(r.request_size().is_none() && r.response_size().is_none());
        m.listener("in").accepted.inc();
        let text = m.encode();
        assert!(!text.contains("tandem_http_requests_total{"), "{text}");
        assert!(
            !text.contains("tandem_http_request_duration_seconds_count{"),
            "{text}"
        );
        assert!(
            text.contains(r#"tandem_connections_accepted_total{listener="in"} 1"#),
            "{text}"
        );
    }
}
