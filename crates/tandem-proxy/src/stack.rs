//! The per-listener snapshot the request path reads: routes resolved to upstream handles and
//! pre-resolved metric handles, built once from a checked [`Config`].
//!
//! Phase order for an HTTP request (see `docs/lifecycle.md`), written once here and walked by
//! [`crate::forward::handle`]:
//!
//! 1. observe: metric handles of the chosen route record the final outcome (outermost), and
//!    an [`crate::observe::Observer`] follows the request to its last response byte; with
//!    tracing, the server span starts before routing and ends with the response head;
//! 2. route: the path normalized ([`crate::path`]; 400 when it cannot be), then [`RouteTable`]
//!    first match, then the forward-proxy name lookup, then the default;
//! 3. authenticate: the route's JWT [`Verifier`], if any (401 with `WWW-Authenticate`); claims
//!    forwarded as headers;
//! 4. authorize: the listener's [`AuthzPolicy`], if any (403), with an audit event;
//! 5. rate limit: the route's [`RateLimiter`], if any (429 with `Retry-After`);
//! 6. rewrite: hop-by-hop removal, `forwarded` on inbound;
//! 7. balance: [`UpstreamHandle::pick`] chooses an endpoint;
//! 8. send: the endpoint's pooled client, bounded by the route's timeout.
//!
//! Policy phases (JWT, rate limit, retry, breaker) are fields of [`RouteTarget`] or
//! [`ListenerStack`] (authorization), resolved here, never looked up per request.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tandem_config::{
    Config, Direction, HashKey, HealthCheck, Limits, ListenerProtocol, PathMatch, Retry,
    RouteMatch, Upstream, UpstreamProtocol,
};
use tandem_telemetry::access_log::AccessLog;
use tandem_telemetry::trace::Tracer;
use tandem_telemetry::{Counter, ListenerMetrics, Metrics, RouteMetrics, UpstreamMetrics};
use tandem_tls::jwt::Verifier;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::balance::{pick_or_fail_open, Balancer, EndpointState, Health};
use crate::error::ErrorKind;
use crate::policy::authz::AuthzPolicy;
use crate::policy::breaker::{BreakerState, EjectReason, EjectionBudget, Transition};
use crate::policy::limit::ConcurrencyLimit;
use crate::policy::ratelimit::RateLimiter;
use crate::policy::retry::{RetryBudget, RetryPolicy, RetryReason};
use crate::pool::{ConnLimit, Endpoint};
use crate::route::RouteTable;
use tandem_telemetry::tls::Side;
use tandem_tls::client::ClientTls;
use tandem_tls::identity::Expected;
use tandem_tls::server::{ClientAuth, ServerTls};
use tandem_tls::store::Identity;

/// Everything the data path needs for one configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// The configuration it was built from.
    pub config: Arc<Config>,
    /// One stack per listener, in config order.
    pub listeners: Vec<Arc<ListenerStack>>,
    /// Upstreams by name.
    pub upstreams: HashMap<String, Arc<UpstreamHandle>>,
    /// Every route's JWT verifier, for [`Snapshot::spawn_jwks_refresh`].
    pub verifiers: Vec<Arc<Verifier>>,
}

/// One upstream: its endpoints with their pools and state, and the policies shared by every
/// route to it.
#[derive(Debug)]
pub struct UpstreamHandle {
    /// Name.
    pub name: String,
    /// Protocol towards the endpoints.
    pub protocol: UpstreamProtocol,
    /// Endpoints with their connection pools.
    pub endpoints: Vec<Endpoint>,
    /// Load, latency, breaker and health per endpoint (same order as `endpoints`).
    pub states: Vec<EndpointState>,
    /// Default time to the response head.
    pub request_timeout: Duration,
    /// The upstream's retry policy (routes may override it).
    pub retry: Arc<RetryPolicy>,
    /// Shared by every route to this upstream.
    pub budget: RetryBudget,
    /// How many endpoints the breakers may eject at once.
    pub ejections: EjectionBudget,
    /// In-flight and pending bounds.
    pub limit: ConcurrencyLimit,
    /// What a hash balancer hashes.
    pub hash_key: Option<HashKey>,
    /// Active health checking, when configured.
    pub health_check: Option<HealthCheck>,
    /// A response body with no frame for this long is aborted.
    pub stream_idle_timeout: Duration,
    /// Retry, breaker and health metrics.
    pub metrics: UpstreamMetrics,
    balancer: Balancer,
}

/// A request's hold on its endpoint and its upstream slot, released when the response body
/// ends (or the request fails).
#[derive(Debug)]
pub struct InFlight {
    upstream: Arc<UpstreamHandle>,
    endpoint: usize,
    _slot: Option<OwnedSemaphorePermit>,
}

/// Where a route sends requests, with its handles.
#[derive(Debug)]
pub struct RouteTarget {
    /// Route name (metric label).
    pub name: String,
    /// The upstream.
    pub upstream: Arc<UpstreamHandle>,
    /// Time to the response head, over all tries.
    pub timeout: Duration,
    /// The route's retry policy (its own, or its upstream's).
    pub retry: Arc<RetryPolicy>,
    /// The route's rate limit.
    pub rate_limit: Option<RateLimiter>,
    /// Request metrics for (listener, route, upstream).
    pub metrics: RouteMetrics,
    /// Error counters by [`ErrorKind`] for (listener, upstream).
    pub errors: ErrorCounters,
    /// `http.route` of its spans: the route's path condition as a template, if it has one.
    pub http_route: Option<Arc<str>>,
    /// JWT authentication, when the route requires it.
    pub jwt: Option<Arc<Verifier>>,
}

/// `tandem_proxy_errors_total` handles, one per reason.
#[derive(Clone, Debug)]
pub struct ErrorCounters(Arc<[Counter; ErrorKind::ALL.len()]>);

/// One listener's immutable request-path state.
#[derive(Debug)]
pub struct ListenerStack {
    /// Listener name.
    pub name: String,
    /// Inbound or outbound.
    pub direction: Direction,
    /// HTTP or TCP.
    pub protocol: ListenerProtocol,
    /// Routes, first match wins.
    pub routes: RouteTable<Arc<RouteTarget>>,
    /// Target of requests no route matches (HTTP) or of every connection (TCP).
    pub default: Option<Arc<RouteTarget>>,
    /// Forward-proxy targets by upstream name (empty unless `forward_proxy`).
    pub forward: HashMap<String, Arc<RouteTarget>>,
    /// Metrics for requests that matched no route.
    pub no_route: RouteMetrics,
    /// Error counters for requests that matched no route.
    pub no_route_errors: ErrorCounters,
    /// Connection metrics.
    pub metrics: ListenerMetrics,
    /// Limits.
    pub limits: Limits,
    /// Where finished requests or connections are logged; `None`: not logged.
    pub access_log: Option<AccessLog>,
    /// Spans and trace context, when tracing is on.
    pub tracer: Option<Arc<Tracer>>,
    /// The authorization policy, when the listener has one.
    pub authz: Option<AuthzPolicy>,
    /// Whether request paths are normalized ([`crate::path`]).
    pub normalize_path: bool,
    /// TLS termination, when the listener has `tls`.
    pub tls: ListenerTls,
}

/// A listener's TLS state.
#[derive(Debug)]
pub enum ListenerTls {
    /// Plaintext.
    Plain,
    /// TLS terminated with the workload identity.
    Tls(ServerTls),
    /// TLS configured but unusable (no identity loaded, or rustls refused the settings): every
    /// connection is closed rather than served in plaintext.
    Broken(Arc<str>),
}

// === impl Snapshot ===

impl Snapshot {
    /// Resolves `config` into request-path state, without tracing. Opens no connections.
    pub fn build(config: Arc<Config>, metrics: &Metrics) -> Snapshot {
        Self::build_with(config, metrics, None, None)
    }

    /// [`Snapshot::build`], with the access log that listeners with `access_log` write to and
    /// the tracer every HTTP listener records spans with, when given. Opens no connections.
    pub fn build_with(
        config: Arc<Config>,
        metrics: &Metrics,
        access_log: Option<&AccessLog>,
        tracer: Option<Arc<Tracer>>,
    ) -> Snapshot {
        Self::build_tls(config, metrics, access_log, tracer, None)
    }

    /// [`Snapshot::build_with`], with the workload identity that TLS listeners terminate with
    /// and TLS upstreams originate with (`None`: the config has no `tls`).
    pub fn build_tls(
        config: Arc<Config>,
        metrics: &Metrics,
        access_log: Option<&AccessLog>,
        tracer: Option<Arc<Tracer>>,
        identity: Option<&Arc<Identity>>,
    ) -> Snapshot {
        let upstreams: HashMap<String, Arc<UpstreamHandle>> = config
            .upstreams
            .iter()
            .map(|u| {
                let tls = u
                    .tls
                    .as_ref()
                    .map(|t| client_tls(&u.name, t, identity, metrics));
                (
                    u.name.clone(),
                    Arc::new(UpstreamHandle::with_tls(u, metrics, tls)),
                )
            })
            .collect();

        let mut verifiers = Vec::new();
        let listeners = config
            .listeners
            .iter()
            .map(|l| {
                let direction = match l.direction {
                    Direction::Inbound => "inbound",
                    Direction::Outbound => "outbound",
                };
                let target = |route: &str,
                              upstream: &str,
                              timeout: Option<Duration>,
                              retry: Option<&Retry>,
                              rate_limit: Option<RateLimiter>,
                              path: Option<&PathMatch>,
                              jwt: Option<Arc<Verifier>>| {
                    // `check()` guarantees the name resolves; a miss here is a bug, reported as a
                    // route to nowhere rather than a panic.
                    let up = upstreams
                        .get(upstream)
                        .cloned()
                        .unwrap_or_else(|| Arc::new(UpstreamHandle::empty(upstream)));
                    Arc::new(RouteTarget {
                        name: route.to_owned(),
                        timeout: timeout.unwrap_or(up.request_timeout),
                        retry: retry
                            .map(|r| Arc::new(RetryPolicy::new(r)))
                            .unwrap_or_else(|| up.retry.clone()),
                        rate_limit,
                        metrics: metrics.route(direction, &l.name, route, upstream),
                        errors: ErrorCounters::new(metrics, &l.name, upstream),
                        http_route: crate::trace::http_route(path),
                        jwt,
                        upstream: up,
                    })
                };
                let routes: Vec<(RouteMatch, Arc<RouteTarget>)> = l
                    .routes
                    .iter()
                    .map(|r| {
                        let limiter = r.rate_limit.as_ref().map(RateLimiter::new);
                        let jwt = r.jwt.as_ref().map(|j| {
                            let v = Arc::new(Verifier::new(&r.name, j));
                            verifiers.push(v.clone());
                            v
                        });
                        (
                            r.matcher.clone(),
                            target(
                                &r.name,
                                &r.upstream,
                                r.timeout,
                                r.retry.as_ref(),
                                limiter,
                                r.matcher.path.as_ref(),
                                jwt,
                            ),
                        )
                    })
                    .collect();
                let default = l
                    .default_upstream
                    .as_deref()
                    .map(|u| target("default", u, None, None, None, None, None));
                let forward = if l.forward_proxy {
                    config
                        .upstreams
                        .iter()
                        .map(|u| {
                            (
                                u.name.clone(),
                                target("forward", &u.name, None, None, None, None, None),
                            )
                        })
                        .collect()
                } else {
                    HashMap::new()
                };
                Arc::new(ListenerStack {
                    name: l.name.clone(),
                    direction: l.direction,
                    protocol: l.protocol,
                    routes: RouteTable::new(routes),
                    default,
                    forward,
                    no_route: metrics.route(direction, &l.name, "", ""),
                    no_route_errors: ErrorCounters::new(metrics, &l.name, ""),
                    metrics: metrics.listener(&l.name),
                    limits: l.limits.clone(),
                    access_log: access_log.filter(|_| l.access_log).cloned(),
                    tracer: tracer.clone(),
                    normalize_path: l.normalize_path,
                    authz: l
                        .authorization
                        .as_ref()
                        .map(|a| AuthzPolicy::new(&l.name, a, metrics)),
                    tls: match &l.tls {
                        None => ListenerTls::Plain,
                        Some(t) => server_tls(&l.name, t, identity, metrics),
                    },
                })
            })
            .collect();

        Snapshot {
            config,
            listeners,
            upstreams,
            verifiers,
        }
    }

    /// Starts the JWKS load and refresh tasks of every JWT route (they end with the snapshot).
    pub fn spawn_jwks_refresh(&self) {
        for v in &self.verifiers {
            v.spawn_refresh();
        }
    }

    /// The stack of the listener called `name`.
    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerStack>> {
        self.listeners.iter().find(|l| l.name == name)
    }
}

/// A listener's TLS terminator from its settings and the workload identity.
fn server_tls(
    name: &str,
    t: &tandem_config::ListenerTls,
    identity: Option<&Arc<Identity>>,
    metrics: &Metrics,
) -> ListenerTls {
    let Some(identity) = identity else {
        return ListenerTls::Broken("no TLS identity is loaded (top-level `tls`)".into());
    };
    let auth = match t.client_auth {
        tandem_config::ClientAuth::Required => ClientAuth::Required,
        tandem_config::ClientAuth::Optional => ClientAuth::Optional,
        tandem_config::ClientAuth::None => ClientAuth::None,
    };
    let handshakes = metrics.tls_handshakes(Side::Listener, name);
    match ServerTls::new(
        identity.clone(),
        auth,
        t.handshake_timeout,
        Some(handshakes),
    ) {
        Ok(s) => ListenerTls::Tls(s),
        Err(e) => {
            tracing::error!(listener = %name, error = %e, "TLS settings refused; the listener will close every connection");
            ListenerTls::Broken(e.to_string().into())
        }
    }
}

/// An upstream's TLS originator from its settings and the workload identity.
fn client_tls(
    name: &str,
    t: &tandem_config::UpstreamTls,
    identity: Option<&Arc<Identity>>,
    metrics: &Metrics,
) -> Result<Arc<ClientTls>, Arc<str>> {
    let Some(identity) = identity else {
        return Err("no TLS identity is loaded (top-level `tls`)".into());
    };
    let expected = if t.identities.is_empty() {
        // `check()` requires a name when every endpoint is an IP; with host endpoints the
        // host is verified per connection (no configured name).
        Expected::DnsName(t.server_name.clone().unwrap_or_default())
    } else {
        Expected::Identities(t.identities.clone())
    };
    let handshakes = metrics.tls_handshakes(Side::Upstream, name);
    ClientTls::new(
        identity.clone(),
        expected,
        t.server_name.clone(),
        t.client_cert,
        Some(handshakes),
    )
    .map(Arc::new)
    .map_err(|e| {
        tracing::error!(upstream = %name, error = %e, "TLS settings refused; connections to it will fail");
        Arc::from(e.to_string())
    })
}

// === impl UpstreamHandle ===

impl UpstreamHandle {
    fn new(u: &Upstream, metrics: &Metrics) -> Self {
        Self::with_tls(u, metrics, None)
    }

    /// `tls`: the endpoints' TLS origination (`Err`: configured but unusable, every connect
    /// fails with the reason).
    fn with_tls(
        u: &Upstream,
        metrics: &Metrics,
        tls: Option<Result<Arc<ClientTls>, Arc<str>>>,
    ) -> Self {
        let conn_limit = u.limits.max_connections.map(ConnLimit::new);
        let endpoints: Vec<Endpoint> = u
            .endpoints
            .iter()
            .map(|e| {
                Endpoint::new(
                    e.address.clone(),
                    u.connect_timeout,
                    &u.pool,
                    conn_limit.clone(),
                )
                .with_tls(tls.clone())
            })
            .collect();
        let labels: Vec<String> = endpoints.iter().map(|e| e.label.clone()).collect();
        let weights: Vec<u32> = u.endpoints.iter().map(|e| e.weight).collect();
        let reasons = RetryReason::ALL.map(RetryReason::as_str);
        UpstreamHandle {
            name: u.name.clone(),
            protocol: u.protocol,
            states: u
                .endpoints
                .iter()
                .map(|e| EndpointState::new(e.weight, u.circuit_breaker.clone()))
                .collect(),
            request_timeout: u.request_timeout,
            retry: Arc::new(RetryPolicy::new(&u.retry)),
            budget: RetryBudget::new(&u.retry_budget),
            ejections: EjectionBudget::new(endpoints.len(), u.circuit_breaker.max_ejected_percent),
            limit: ConcurrencyLimit::new(&u.limits),
            hash_key: match &u.balancer {
                tandem_config::Balancer::Hash(k) => Some(k.clone()),
                _ => None,
            },
            health_check: u.health_check.clone(),
            stream_idle_timeout: u.stream_idle_timeout,
            metrics: metrics.upstream(&u.name, &labels, &reasons),
            balancer: Balancer::new(&u.balancer, &weights, &labels),
            endpoints,
        }
    }

    fn empty(name: &str) -> Self {
        let u = Upstream {
            name: name.to_owned(),
            endpoints: Vec::new(),
            protocol: UpstreamProtocol::Auto,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(15),
            pool: tandem_config::Pool {
                idle_timeout: Duration::from_secs(4),
                max_idle_per_endpoint: 0,
            },
            balancer: tandem_config::Balancer::P2c,
            health_check: None,
            circuit_breaker: Default::default(),
            limits: Default::default(),
            retry: Default::default(),
            retry_budget: Default::default(),
            stream_idle_timeout: tandem_config::DEFAULT_STREAM_IDLE_TIMEOUT,
            tls: None,
        };
        UpstreamHandle::new(&u, &Metrics::new())
    }

    /// The endpoint index for the next try: `hash` for hash balancers, `avoid` the endpoint the
    /// previous try failed on. `None` only when there are no endpoints.
    pub fn pick(&self, hash: Option<u64>, avoid: Option<usize>, now: Instant) -> Option<usize> {
        pick_or_fail_open(&self.balancer, &self.states, hash, avoid, now)
    }

    /// Records a try's outcome on endpoint `i`: latency estimate, breaker, metrics and a log
    /// line when the breaker changes state.
    pub fn record(&self, i: usize, elapsed: Duration, success: bool, probe: bool, now: Instant) {
        let (Some(state), Some(endpoint)) = (self.states.get(i), self.endpoints.get(i)) else {
            return;
        };
        state.observe(elapsed, success, now);
        let Some(t) = state.outlier.record(success, probe, now, &self.ejections) else {
            return;
        };
        let gauge = self.metrics.endpoints.get(i).map(|m| &m.ejected);
        match t {
            Transition::Ejected(reason, d) => {
                let idx = match reason {
                    EjectReason::ConsecutiveFailures => 0,
                    EjectReason::FailureRate => 1,
                    EjectReason::ProbeFailed => 2,
                };
                self.metrics.ejections[idx].inc();
                if let Some(g) = gauge {
                    g.set(1);
                }
                tracing::warn!(upstream = %self.name, endpoint = %endpoint.label, reason = reason.as_str(), ejected_for = ?d, "endpoint ejected");
            }
            Transition::Closed => {
                state.forgive();
                if let Some(g) = gauge {
                    g.set(0);
                }
                tracing::info!(upstream = %self.name, endpoint = %endpoint.label, "endpoint back in rotation (probe succeeded)");
            }
            Transition::EjectionRefused(reason) => {
                tracing::warn!(upstream = %self.name, endpoint = %endpoint.label, reason = reason.as_str(), ejected = self.ejections.ejected(), "endpoint failing but not ejected: the upstream's max_ejected_percent is reached");
            }
        }
    }

    /// Starts a try on endpoint `i`: counts it in flight and claims the half-open probe.
    /// Returns whether the try is the probe.
    pub fn start(&self, i: usize, now: Instant) -> bool {
        match self.states.get(i) {
            Some(s) => {
                s.start();
                s.outlier.on_pick(now)
            }
            None => false,
        }
    }

    /// Ends a try on endpoint `i` that produced no response.
    pub fn finish(&self, i: usize) {
        if let Some(s) = self.states.get(i) {
            s.finish();
        }
    }
}

/// What `/upstreams` shows of one upstream.
#[derive(Debug, serde::Serialize)]
pub struct UpstreamView {
    /// Name.
    pub name: String,
    /// Protocol towards the endpoints.
    pub protocol: UpstreamProtocol,
    /// Requests in flight to the upstream (all endpoints).
    pub in_flight: usize,
    /// Requests waiting for a slot (`limits.max_pending`).
    pub pending: usize,
    /// Endpoints ejected by their breakers now.
    pub ejected: usize,
    /// Each endpoint.
    pub endpoints: Vec<EndpointView>,
}

/// What `/upstreams` shows of one endpoint.
#[derive(Debug, serde::Serialize)]
pub struct EndpointView {
    /// Configured address.
    pub address: String,
    /// Relative share of traffic.
    pub weight: u32,
    /// `healthy`, `unhealthy` (active checks), or `unknown` (unchecked / no verdict yet).
    pub health: &'static str,
    /// Whether the balancer would pick it now (health and breaker together).
    pub eligible: bool,
    /// `closed`, `open` or `half_open`.
    pub breaker: &'static str,
    /// Why the breaker is open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ejection_reason: Option<&'static str>,
    /// Time left in the ejection, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ejected_for_ms: Option<u64>,
    /// The peak-EWMA latency estimate, in milliseconds.
    pub ewma_ms: f64,
    /// Requests in flight to it.
    pub in_flight: u32,
    /// Idle pooled HTTP/1.1 connections.
    pub idle_connections: usize,
    /// Whether a shared HTTP/2 connection is open.
    pub http2_connection: bool,
}

impl UpstreamHandle {
    /// The live state for the admin API.
    pub fn view(&self) -> UpstreamView {
        let now = Instant::now();
        UpstreamView {
            name: self.name.clone(),
            protocol: self.protocol,
            in_flight: self.limit.in_flight(),
            pending: self.limit.pending(),
            ejected: self.ejections.ejected(),
            endpoints: self
                .endpoints
                .iter()
                .zip(&self.states)
                .map(|(e, s)| {
                    let (breaker, reason, remaining) = match s.outlier.state(now) {
                        BreakerState::Closed => ("closed", None, None),
                        BreakerState::HalfOpen => ("half_open", None, None),
                        BreakerState::Open { remaining, reason } => (
                            "open",
                            Some(reason.as_str()),
                            Some(remaining.as_millis() as u64),
                        ),
                    };
                    let (idle, h2) = e.pooled();
                    EndpointView {
                        address: e.label.clone(),
                        weight: s.weight,
                        health: match s.health() {
                            Health::Healthy => "healthy",
                            Health::Unhealthy => "unhealthy",
                            Health::Unknown => "unknown",
                        },
                        eligible: s.eligible(now),
                        breaker,
                        ejection_reason: reason,
                        ejected_for_ms: remaining,
                        ewma_ms: (s.latency(now).as_secs_f64() * 1e6).round() / 1e3,
                        in_flight: s.in_flight(),
                        idle_connections: idle,
                        http2_connection: h2,
                    }
                })
                .collect(),
        }
    }
}

impl Snapshot {
    /// Every upstream's live state, in config order.
    pub fn upstreams_view(&self) -> Vec<UpstreamView> {
        self.config
            .upstreams
            .iter()
            .filter_map(|u| self.upstreams.get(&u.name))
            .map(|u| u.view())
            .collect()
    }
}

// === impl InFlight ===

impl InFlight {
    /// Takes over a started try on `endpoint` (ended by [`UpstreamHandle::start`]) and the
    /// request's upstream slot.
    pub fn new(
        upstream: Arc<UpstreamHandle>,
        endpoint: usize,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Self {
        InFlight {
            upstream,
            endpoint,
            _slot: slot,
        }
    }
}

impl InFlight {
    /// The upstream of the request.
    pub fn upstream(&self) -> &UpstreamHandle {
        &self.upstream
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.upstream.finish(self.endpoint);
    }
}

// === impl ErrorCounters ===

impl ErrorCounters {
    fn new(metrics: &Metrics, listener: &str, upstream: &str) -> Self {
        ErrorCounters(Arc::new(
            ErrorKind::ALL.map(|k| metrics.proxy_error(listener, upstream, k.reason())),
        ))
    }

    /// Counts one error of `kind`.
    pub fn inc(&self, kind: ErrorKind) {
        self.0[kind as usize].inc();
    }
}
