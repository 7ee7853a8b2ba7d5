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

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use tandem_config::{
    Address, CircuitBreaker, Config, Direction, HashKey, HealthCheck, Limits, ListenerProtocol,
    PathMatch, Pool, Retry, RouteMatch, Upstream, UpstreamEndpoint, UpstreamProtocol,
};
use tandem_telemetry::access_log::AccessLog;
use tandem_telemetry::discovery::EndpointFamilies;
use tandem_telemetry::trace::{EncodedAttributes, Tracer};
use tandem_telemetry::{
    Counter, EndpointMetrics, ListenerMetrics, Metrics, RouteMetrics, UpstreamMetrics,
};
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
///
/// The endpoints are a [`Members`] snapshot behind an [`ArcSwap`]: discovery replaces it with
/// [`UpstreamHandle::set_endpoints`] while requests run. A request loads the snapshot once per
/// try and keeps it, so indices stay valid for that try; endpoints that stay across a change
/// keep their state (latency estimate, breaker, health, pooled connections).
#[derive(Debug)]
pub struct UpstreamHandle {
    /// Name.
    pub name: String,
    /// Protocol towards the endpoints.
    pub protocol: UpstreamProtocol,
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
    members: ArcSwap<Members>,
    params: MemberParams,
    /// Serializes [`UpstreamHandle::set_endpoints`] (readers never take it).
    updating: Mutex<()>,
    /// Set by [`crate::health::spawn_all`]: endpoints that join later get their own checker.
    pub(crate) health_started: AtomicBool,
    /// What the admin API shows about the endpoints' source.
    discovery: Mutex<Option<DiscoveryStatus>>,
}

/// The endpoints of an upstream at one moment, with their state and metric handles (all in
/// the same order), and the balancer built for exactly this set.
#[derive(Debug)]
pub struct Members {
    /// Endpoints with their connection pools.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Load, latency, breaker and health per endpoint.
    pub states: Vec<Arc<EndpointState>>,
    /// Breaker and health metric handles per endpoint.
    pub metrics: Vec<EndpointMetrics>,
    /// Zone per endpoint, when known (one shared string per distinct zone).
    pub zones: Vec<Option<Arc<str>>>,
    balancer: Balancer,
    /// The local zone's endpoints, with `prefer_zone`.
    local: Option<LocalZone>,
}

/// The endpoints of the local zone and a balancer over just them.
#[derive(Debug)]
struct LocalZone {
    /// Index into the whole set of each local endpoint.
    idx: Vec<usize>,
    states: Vec<Arc<EndpointState>>,
    balancer: Balancer,
    min_eligible: usize,
}

/// One endpoint of the set [`UpstreamHandle::set_members`] applies.
#[derive(Clone, Copy, Debug)]
pub struct Wanted<'a> {
    /// Where it is (endpoints are told apart by it).
    pub address: &'a Address,
    /// Relative share of traffic (0 counts as 1).
    pub weight: u32,
    /// Its zone, when known.
    pub zone: Option<&'a str>,
}

/// An endpoint with its state, metric handles and zone, as a set is built from them.
type MemberEntry = (
    Arc<Endpoint>,
    Arc<EndpointState>,
    EndpointMetrics,
    Option<Arc<str>>,
);

/// What a new endpoint is built with.
#[derive(Debug)]
struct MemberParams {
    connect_timeout: Duration,
    pool: Pool,
    conn_limit: Option<Arc<ConnLimit>>,
    /// Shared with every endpoint's breaker.
    breaker: Arc<CircuitBreaker>,
    algorithm: tandem_config::Balancer,
    families: EndpointFamilies,
    prefer_zone: Option<tandem_config::PreferZone>,
    /// TLS origination for every endpoint (`Err`: configured but unusable).
    tls: Option<Result<Arc<ClientTls>, Arc<str>>>,
}

/// Where an upstream's endpoints came from, for `/upstreams`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DiscoveryStatus {
    /// `static`, `dns`, `file` or `etcd`.
    pub source: &'static str,
    /// What the source watches (a DNS name, a path, an etcd key prefix).
    pub target: String,
    /// When the source last answered successfully.
    #[serde(skip)]
    pub updated: Option<Instant>,
    /// The source's last error, while it fails (the last good endpoints keep serving).
    pub error: Option<String>,
}

/// What changed when a new endpoint set was applied.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MembershipChange {
    /// Endpoints that joined.
    pub added: Vec<String>,
    /// Endpoints that left.
    pub removed: Vec<String>,
    /// Endpoints that stayed but changed weight.
    pub reweighted: Vec<String>,
    /// Endpoints that stayed but changed zone.
    pub rezoned: Vec<String>,
}

/// A request's hold on its endpoint and its upstream slot, released when the response body
/// ends (or the request fails).
#[derive(Debug)]
pub struct InFlight {
    upstream: Arc<UpstreamHandle>,
    members: Arc<Members>,
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
    /// `tandem.listener`, `tandem.route` and `tandem.upstream` of its spans, encoded once as
    /// OTLP attributes: each span copies the bytes rather than writing three attributes.
    pub span_names: EncodedAttributes,
    /// JWT authentication, when the route requires it.
    pub jwt: Option<Arc<Verifier>>,
    /// Its listener, route and upstream names' id in access log records
    /// (`RequestRecord::context`).
    pub log_id: u64,
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
    /// Requests by client identity, on TLS listeners.
    pub peers: Option<PeerCounters>,
}

/// `tandem_http_peer_requests_total` of one TLS listener: a counter per identity its
/// authorization rules name exactly (the only identities that become label values, so a client
/// certificate never creates a series), `other` and `none`.
#[derive(Debug)]
pub struct PeerCounters {
    known: Vec<(String, Counter)>,
    other: Counter,
    none: Counter,
}

impl PeerCounters {
    fn new(
        listener: &str,
        authz: Option<&tandem_config::Authorization>,
        metrics: &Metrics,
    ) -> Self {
        let mut known: Vec<(String, Counter)> = Vec::new();
        for rule in authz.map_or(&[][..], |a| &a.rules[..]) {
            for m in &rule.identities {
                if let tandem_config::IdentityMatch::Exact(id) = m {
                    if !known.iter().any(|(k, _)| k == id) {
                        known.push((id.clone(), metrics.peer_requests(listener, id)));
                    }
                }
            }
        }
        PeerCounters {
            known,
            other: metrics.peer_requests(listener, "other"),
            none: metrics.peer_requests(listener, "none"),
        }
    }

    /// Counts one request from `identity`. A linear scan: a policy names a handful.
    pub fn count(&self, identity: Option<&crate::identity::PeerIdentity>) {
        match identity {
            None => self.none.inc(),
            Some(id) => match self.known.iter().find(|(k, _)| k == id.as_str()) {
                Some((_, c)) => c.inc(),
                None => self.other.inc(),
            },
        };
    }
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
                        span_names: EncodedAttributes::strs(&[
                            ("tandem.listener", l.name.as_str()),
                            ("tandem.route", route),
                            ("tandem.upstream", upstream),
                        ]),
                        jwt,
                        upstream: up,
                        log_id: tandem_telemetry::access_log::context_id(),
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
                    peers: l
                        .tls
                        .as_ref()
                        .map(|_| PeerCounters::new(&l.name, l.authorization.as_ref(), metrics)),
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
        let params = MemberParams {
            connect_timeout: u.connect_timeout,
            pool: u.pool.clone(),
            conn_limit: u.limits.max_connections.map(ConnLimit::new),
            breaker: Arc::new(u.circuit_breaker.clone()),
            algorithm: u.balancer.clone(),
            families: metrics.endpoint_families(u.health_check.is_some()),
            prefer_zone: u.prefer_zone.clone(),
            tls,
        };
        let labels: Vec<String> = u.endpoints.iter().map(|e| e.address.to_string()).collect();
        let reasons = RetryReason::ALL.map(RetryReason::as_str);
        let upstream_metrics =
            metrics.upstream(&u.name, &labels, &reasons, u.health_check.is_some());
        let members = Members::build(
            &params,
            u.endpoints
                .iter()
                .zip(upstream_metrics.endpoints.iter())
                .map(|(e, m)| {
                    (
                        Arc::new(params.endpoint(e.address.clone())),
                        Arc::new(EndpointState::new(e.weight, params.breaker.clone())),
                        m.clone(),
                        e.zone.as_deref().map(Arc::from),
                    )
                })
                .collect(),
        );
        let discovery = match &u.discovery {
            tandem_config::Discovery::Static => None,
            d => Some(DiscoveryStatus {
                source: discovery_source(d),
                target: String::new(),
                updated: None,
                error: Some("no answer from the source yet".into()),
            }),
        };
        UpstreamHandle {
            name: u.name.clone(),
            protocol: u.protocol,
            request_timeout: u.request_timeout,
            retry: Arc::new(RetryPolicy::new(&u.retry)),
            budget: RetryBudget::new(&u.retry_budget),
            ejections: EjectionBudget::new(
                members.endpoints.len(),
                u.circuit_breaker.max_ejected_percent,
            ),
            limit: ConcurrencyLimit::new(&u.limits),
            hash_key: match &u.balancer {
                tandem_config::Balancer::Hash(k) => Some(k.clone()),
                _ => None,
            },
            health_check: u.health_check.clone(),
            stream_idle_timeout: u.stream_idle_timeout,
            metrics: upstream_metrics,
            members: ArcSwap::from_pointee(members),
            params,
            updating: Mutex::new(()),
            health_started: AtomicBool::new(false),
            discovery: Mutex::new(discovery),
        }
    }

    fn empty(name: &str) -> Self {
        let u = Upstream {
            name: name.to_owned(),
            endpoints: Vec::new(),
            discovery: tandem_config::Discovery::Static,
            prefer_zone: None,
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

    /// The endpoints now. A request keeps the snapshot for a whole try.
    pub fn members(&self) -> Arc<Members> {
        self.members.load_full()
    }

    /// Replaces the endpoint set. Endpoints whose address stays keep their state and pooled
    /// connections (a new weight takes effect at once); new ones start fresh; removed ones
    /// leave the balancer now, and requests already on them finish. Returns what changed
    /// (nothing: the set is not replaced).
    pub fn set_endpoints(self: &Arc<Self>, wanted: &[UpstreamEndpoint]) -> MembershipChange {
        self.set_members(wanted.iter().map(|w| Wanted {
            address: &w.address,
            weight: w.weight,
            zone: w.zone.as_deref(),
        }))
    }

    /// [`UpstreamHandle::set_endpoints`] from borrowed records: a discovery source applies
    /// its set of thousands without first copying it (a copy per change, of every address
    /// and zone, is what a burst of changes would otherwise allocate and free).
    pub fn set_members<'a>(
        self: &Arc<Self>,
        wanted: impl ExactSizeIterator<Item = Wanted<'a>>,
    ) -> MembershipChange {
        let _serial = self.updating.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.members.load_full();
        // By address, so a set of thousands of endpoints is diffed in linear time.
        let index: HashMap<&Address, usize> = old
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| (&e.address, i))
            .collect();
        // Zones are few: every endpoint of one zone shares one string.
        let mut zones: HashSet<Arc<str>> = old.zones.iter().flatten().cloned().collect();
        let mut zone_of = |w: &Wanted| {
            w.zone.map(|z| match zones.get(z) {
                Some(shared) => shared.clone(),
                None => {
                    let shared: Arc<str> = Arc::from(z);
                    zones.insert(shared.clone());
                    shared
                }
            })
        };
        let mut change = MembershipChange::default();
        let mut entries = Vec::with_capacity(wanted.len());
        let mut joined = Vec::new();
        let mut seen: HashSet<&Address> = HashSet::with_capacity(wanted.len());
        for w in wanted {
            if !seen.insert(w.address) {
                continue;
            }
            let weight = w.weight.max(1);
            match index.get(w.address) {
                Some(&i) => {
                    if old.states[i].weight() != weight {
                        change.reweighted.push(old.endpoints[i].label.clone());
                        old.states[i].set_weight(weight);
                    }
                    let zone = if old.zones[i].as_deref() == w.zone {
                        old.zones[i].clone()
                    } else {
                        change.rezoned.push(old.endpoints[i].label.clone());
                        zone_of(&w)
                    };
                    entries.push((
                        old.endpoints[i].clone(),
                        old.states[i].clone(),
                        old.metrics[i].clone(),
                        zone,
                    ));
                }
                None => {
                    let endpoint = Arc::new(self.params.endpoint(w.address.clone()));
                    let metrics = self.params.families.endpoint(&self.name, &endpoint.label);
                    change.added.push(endpoint.label.clone());
                    let state = Arc::new(EndpointState::new(weight, self.params.breaker.clone()));
                    joined.push(entries.len());
                    entries.push((endpoint, state, metrics, zone_of(&w)));
                }
            }
        }
        let now = Instant::now();
        for (i, e) in old.endpoints.iter().enumerate() {
            if !seen.contains(&e.address) {
                change.removed.push(e.label.clone());
                self.params.families.remove(&self.name, &e.label);
                // Its breaker's claim on the ejection budget leaves with it.
                if old.states[i].outlier.state(now) != BreakerState::Closed {
                    self.ejections.release();
                }
            }
        }
        if change == MembershipChange::default() {
            return change;
        }
        let members = Arc::new(Members::build(&self.params, entries));
        self.ejections.resize(members.endpoints.len());
        self.members.store(members.clone());
        if self.health_started.load(Ordering::Acquire) {
            if let Some(check) = &self.health_check {
                for i in joined {
                    crate::health::spawn_one(self, &members, i, check.clone());
                }
            }
        }
        change
    }

    /// Runs `f` while no endpoint set is being applied.
    pub(crate) fn with_update_lock(&self, f: impl FnOnce()) {
        let _serial = self.updating.lock().unwrap_or_else(|e| e.into_inner());
        f();
    }

    /// Records what the admin API shows about the endpoints' source.
    pub fn set_discovery_status(&self, status: DiscoveryStatus) {
        if let Ok(mut d) = self.discovery.lock() {
            *d = Some(status);
        }
    }

    /// The endpoint index in `members` for the next try: `hash` for hash balancers, `avoid`
    /// the endpoint the previous try failed on. `None` only when there are no endpoints.
    pub fn pick(
        &self,
        members: &Members,
        hash: Option<u64>,
        avoid: Option<&Arc<Endpoint>>,
        now: Instant,
    ) -> Option<usize> {
        let avoid = avoid.and_then(|a| members.endpoints.iter().position(|e| Arc::ptr_eq(e, a)));
        if let Some(local) = &members.local {
            // The local zone while enough of it is available (a scan of the local endpoints).
            let eligible = local
                .idx
                .iter()
                .zip(&local.states)
                .filter(|(i, s)| Some(**i) != avoid && s.eligible(now))
                .count();
            if eligible >= local.min_eligible {
                let local_avoid = avoid.and_then(|a| local.idx.iter().position(|&i| i == a));
                if let Some(j) = local.balancer.pick(&local.states, hash, local_avoid, now) {
                    return local.idx.get(j).copied();
                }
            }
        }
        pick_or_fail_open(&members.balancer, &members.states, hash, avoid, now)
    }

    /// Records a try's outcome on endpoint `i` of `members`: latency estimate, breaker,
    /// metrics and a log line when the breaker changes state.
    pub fn record(
        &self,
        members: &Members,
        i: usize,
        elapsed: Duration,
        success: bool,
        probe: bool,
        now: Instant,
    ) {
        let (Some(state), Some(endpoint)) = (members.states.get(i), members.endpoints.get(i))
        else {
            return;
        };
        state.observe(elapsed, success, now);
        let Some(t) = state.outlier.record(success, probe, now, &self.ejections) else {
            return;
        };
        let gauge = members.metrics.get(i).map(|m| &m.ejected);
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

    /// Starts a try on endpoint `i` of `members`: counts it in flight and claims the half-open
    /// probe. Returns whether the try is the probe.
    pub fn start(&self, members: &Members, i: usize, now: Instant) -> bool {
        match members.states.get(i) {
            Some(s) => {
                s.start();
                s.outlier.on_pick(now)
            }
            None => false,
        }
    }

    /// Ends a try on endpoint `i` of `members` that produced no response.
    pub fn finish(&self, members: &Members, i: usize) {
        if let Some(s) = members.states.get(i) {
            s.finish();
        }
    }
}

/// The `source` label of a discovery setting.
pub fn discovery_source(d: &tandem_config::Discovery) -> &'static str {
    match d {
        tandem_config::Discovery::Static => "static",
        tandem_config::Discovery::Dns(_) => "dns",
        tandem_config::Discovery::File(_) => "file",
        tandem_config::Discovery::Etcd(_) => "etcd",
    }
}

// === impl Members ===

impl Members {
    fn build(params: &MemberParams, entries: Vec<MemberEntry>) -> Members {
        let mut endpoints = Vec::with_capacity(entries.len());
        let mut states = Vec::with_capacity(entries.len());
        let mut metrics = Vec::with_capacity(entries.len());
        let mut zones = Vec::with_capacity(entries.len());
        for (e, s, m, z) in entries {
            endpoints.push(e);
            states.push(s);
            metrics.push(m);
            zones.push(z);
        }
        // Labels only feed the hash ring: other balancers need no copy of them.
        let labels: Vec<String> = match params.algorithm {
            tandem_config::Balancer::Hash(_) => endpoints.iter().map(|e| e.label.clone()).collect(),
            _ => Vec::new(),
        };
        let weights: Vec<u32> = states.iter().map(|s| s.weight()).collect();
        let local = params.prefer_zone.as_ref().and_then(|p| {
            let idx: Vec<usize> = (0..zones.len())
                .filter(|&i| zones[i].as_deref() == Some(p.zone.as_str()))
                .collect();
            // Everything local, or nothing: no preference to apply.
            if idx.is_empty() || idx.len() == zones.len() {
                return None;
            }
            let w: Vec<u32> = idx.iter().map(|&i| weights[i]).collect();
            let l: Vec<String> = idx.iter().filter_map(|&i| labels.get(i).cloned()).collect();
            Some(LocalZone {
                states: idx.iter().map(|&i| states[i].clone()).collect(),
                balancer: Balancer::new(&params.algorithm, &w, &l),
                idx,
                min_eligible: p.min_eligible,
            })
        });
        Members {
            balancer: Balancer::new(&params.algorithm, &weights, &labels),
            endpoints,
            states,
            metrics,
            zones,
            local,
        }
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether there are no endpoints.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }
}

// === impl MemberParams ===

impl MemberParams {
    fn endpoint(&self, address: Address) -> Endpoint {
        Endpoint::new(
            address,
            self.connect_timeout,
            &self.pool,
            self.conn_limit.clone(),
        )
        .with_tls(self.tls.clone())
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
    /// Where the endpoints come from (absent: the static `endpoints` list).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery: Option<DiscoveryView>,
    /// Each endpoint.
    pub endpoints: Vec<EndpointView>,
}

/// What `/upstreams` shows of an upstream's discovery source.
#[derive(Debug, serde::Serialize)]
pub struct DiscoveryView {
    /// `dns`, `file` or `etcd`.
    pub source: &'static str,
    /// What it watches.
    pub target: String,
    /// Seconds since the source last answered successfully (absent: never).
    pub last_update_age_seconds: Option<f64>,
    /// The source's current error, while it fails (the last good endpoints keep serving).
    pub error: Option<String>,
}

/// What `/upstreams` shows of one endpoint.
#[derive(Debug, serde::Serialize)]
pub struct EndpointView {
    /// Configured address.
    pub address: String,
    /// Relative share of traffic.
    pub weight: u32,
    /// Zone, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
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
        let members = self.members();
        let discovery = self
            .discovery
            .lock()
            .ok()
            .and_then(|d| d.clone())
            .map(|d| DiscoveryView {
                source: d.source,
                target: d.target,
                last_update_age_seconds: d.updated.map(|u| {
                    (now.saturating_duration_since(u).as_secs_f64() * 10.0).round() / 10.0
                }),
                error: d.error,
            });
        UpstreamView {
            name: self.name.clone(),
            protocol: self.protocol,
            in_flight: self.limit.in_flight(),
            pending: self.limit.pending(),
            ejected: self.ejections.ejected(),
            discovery,
            endpoints: members
                .endpoints
                .iter()
                .zip(&members.states)
                .zip(&members.zones)
                .map(|((e, s), zone)| {
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
                        weight: s.weight(),
                        zone: zone.as_deref().map(str::to_owned),
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
        members: Arc<Members>,
        endpoint: usize,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Self {
        InFlight {
            upstream,
            members,
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
        self.upstream.finish(&self.members, self.endpoint);
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn upstream(endpoints: &[&str]) -> Arc<UpstreamHandle> {
        let config = Upstream {
            endpoints: endpoints.iter().map(|a| ep(a, 1)).collect(),
            ..upstream_config()
        };
        Arc::new(UpstreamHandle::new(&config, &Metrics::new()))
    }

    fn upstream_config() -> Upstream {
        Upstream {
            name: "orders".into(),
            endpoints: Vec::new(),
            discovery: tandem_config::Discovery::Static,
            prefer_zone: None,
            protocol: UpstreamProtocol::Auto,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(15),
            pool: Pool {
                idle_timeout: Duration::from_secs(4),
                max_idle_per_endpoint: 8,
            },
            balancer: tandem_config::Balancer::P2c,
            health_check: None,
            circuit_breaker: CircuitBreaker {
                consecutive_failures: 1,
                ..Default::default()
            },
            limits: Default::default(),
            retry: Default::default(),
            retry_budget: Default::default(),
            stream_idle_timeout: tandem_config::DEFAULT_STREAM_IDLE_TIMEOUT,
            tls: None,
        }
    }

    fn ep(a: &str, weight: u32) -> UpstreamEndpoint {
        UpstreamEndpoint {
            address: a.parse().unwrap(),
            weight,
            zone: None,
        }
    }

    /// A new set keeps the state of endpoints that stay (same objects: latency, breaker,
    /// health, pools), starts joiners fresh, drops leavers, and applies a new weight in place;
    /// the same set again changes nothing.
    #[tokio::test(start_paused = true)]
    async fn set_endpoints_diffs_by_address() {
        let u = upstream(&["10.0.0.1:80", "10.0.0.2:80"]);
        let before = u.members();
        let kept = before.states[1].clone();
        kept.observe(Duration::from_millis(40), true, Instant::now());

        let change = u.set_endpoints(&[ep("10.0.0.2:80", 3), ep("10.0.0.3:80", 1)]);
        assert_eq!(change.added, ["10.0.0.3:80"]);
        assert_eq!(change.removed, ["10.0.0.1:80"]);
        assert_eq!(change.reweighted, ["10.0.0.2:80"]);
        let after = u.members();
        let labels: Vec<&str> = after.endpoints.iter().map(|e| e.label.as_str()).collect();
        assert_eq!(labels, ["10.0.0.2:80", "10.0.0.3:80"]);
        assert!(Arc::ptr_eq(&after.states[0], &kept));
        assert!(Arc::ptr_eq(&after.endpoints[0], &before.endpoints[1]));
        assert_eq!(after.states[0].weight(), 3);
        assert!(after.states[0].latency(Instant::now()) >= Duration::from_millis(39));
        assert_eq!(after.states[1].weight(), 1);

        let again = u.set_endpoints(&[ep("10.0.0.3:80", 1), ep("10.0.0.2:80", 3)]);
        assert_eq!(again, MembershipChange::default());
        assert!(Arc::ptr_eq(&after, &u.members()));

        // Picks only ever land on the current set.
        for _ in 0..50 {
            let m = u.members();
            let i = u.pick(&m, None, None, Instant::now()).unwrap();
            assert_ne!(m.endpoints[i].label, "10.0.0.1:80");
        }
        // Empty set: no endpoints, 503 upstream of this.
        u.set_endpoints(&[]);
        assert_eq!(u.pick(&u.members(), None, None, Instant::now()), None);
    }

    /// Endpoints of one zone share one zone string, across rebuilds too; an upstream without
    /// health checks gives each endpoint one series (`endpoint_ejected`), one with health checks
    /// four; an endpoint that leaves takes its series with it.
    #[tokio::test(start_paused = true)]
    async fn zones_shared_and_series_per_endpoint() {
        let zoned = |a: &str, z: &str| UpstreamEndpoint {
            zone: Some(z.into()),
            ..ep(a, 1)
        };
        let metrics = Metrics::new();
        let u = Arc::new(UpstreamHandle::new(&upstream_config(), &metrics));
        u.set_endpoints(&[
            zoned("10.0.0.1:80", "a"),
            zoned("10.0.0.2:80", "a"),
            zoned("10.0.0.3:80", "b"),
        ]);
        let m = u.members();
        let z = |m: &Members, i: usize| m.zones[i].clone().unwrap();
        assert!(Arc::ptr_eq(&z(&m, 0), &z(&m, 1)));
        assert_eq!(&*z(&m, 2), "b");
        u.set_endpoints(&[
            zoned("10.0.0.1:80", "a"),
            zoned("10.0.0.3:80", "b"),
            zoned("10.0.0.4:80", "a"),
        ]);
        let later = u.members();
        assert!(Arc::ptr_eq(&z(&later, 0), &z(&m, 0)));
        assert!(
            Arc::ptr_eq(&z(&later, 2), &z(&m, 0)),
            "a joiner shares its zone's string"
        );
        let text = metrics.encode_prometheus();
        let series = |ep: &str| text.lines().filter(|l| l.contains(ep)).count();
        assert_eq!(series("10.0.0.4:80"), 1, "{text}");
        assert_eq!(series("10.0.0.2:80"), 0, "{text}");
        assert!(!text.contains("tandem_endpoint_healthy{"), "{text}");

        let metrics = Metrics::new();
        let checked = Upstream {
            health_check: Some(HealthCheck {
                probe: tandem_config::HealthProbe::Tcp,
                interval: Duration::from_secs(5),
                jitter: Duration::ZERO,
                timeout: Duration::from_secs(1),
                healthy_threshold: 1,
                unhealthy_threshold: 1,
            }),
            ..upstream_config()
        };
        let u = Arc::new(UpstreamHandle::new(&checked, &metrics));
        u.set_endpoints(&[ep("10.0.0.1:80", 1)]);
        let text = metrics.encode_prometheus();
        assert_eq!(
            text.lines().filter(|l| l.contains("10.0.0.1:80")).count(),
            4,
            "{text}"
        );
    }

    /// A request on an endpoint that leaves finishes on it: its hold counts out on the old
    /// state; a retry's `avoid` resolves against the new set by identity.
    #[tokio::test(start_paused = true)]
    async fn in_flight_requests_survive_a_change() {
        let u = upstream(&["10.0.0.1:80", "10.0.0.2:80"]);
        let m = u.members();
        let i = 0;
        u.start(&m, i, Instant::now());
        let state = m.states[i].clone();
        let endpoint = m.endpoints[i].clone();
        let hold = InFlight::new(u.clone(), m, i, None);
        u.set_endpoints(&[ep("10.0.0.2:80", 1), ep("10.0.0.3:80", 1)]);
        assert_eq!(state.in_flight(), 1);
        drop(hold);
        assert_eq!(state.in_flight(), 0);
        let now_set = u.members();
        let kept = now_set.endpoints[0].clone();
        for _ in 0..50 {
            assert_eq!(
                u.pick(&now_set, None, Some(&kept), Instant::now()),
                Some(1),
                "the avoided endpoint is skipped in the new set"
            );
            // Avoiding an endpoint that left avoids nothing.
            assert!(u
                .pick(&now_set, None, Some(&endpoint), Instant::now())
                .is_some());
        }
    }

    /// An ejected endpoint that leaves gives its share of the ejection budget back, and the
    /// budget follows the set's size.
    #[tokio::test(start_paused = true)]
    async fn removed_ejected_endpoint_returns_its_budget() {
        let u = upstream(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"]);
        let m = u.members();
        let now = Instant::now();
        u.start(&m, 0, now);
        u.record(&m, 0, Duration::from_millis(1), false, false, now);
        assert_eq!(u.ejections.ejected(), 1);
        u.set_endpoints(&[ep("10.0.0.2:80", 1), ep("10.0.0.3:80", 1)]);
        assert_eq!(u.ejections.ejected(), 0);
        // Two endpoints at 50 %: one may be ejected, never both.
        let m = u.members();
        for i in 0..2 {
            u.start(&m, i, now);
            u.record(&m, i, Duration::from_millis(1), false, false, now);
        }
        assert_eq!(u.ejections.ejected(), 1);
    }

    /// With `prefer_zone`, picks stay in the local zone while at least `min_eligible` of its
    /// endpoints are eligible; below that every zone shares; a zone change applies at once.
    #[tokio::test(start_paused = true)]
    async fn prefers_the_local_zone_while_enough_is_eligible() {
        let config = Upstream {
            prefer_zone: Some(tandem_config::PreferZone {
                zone: "a".into(),
                min_eligible: 2,
            }),
            ..upstream_config()
        };
        let u = Arc::new(UpstreamHandle::new(&config, &Metrics::new()));
        let zoned = |a: &str, z: &str| UpstreamEndpoint {
            zone: Some(z.into()),
            ..ep(a, 1)
        };
        u.set_endpoints(&[
            zoned("10.0.0.1:80", "a"),
            zoned("10.0.0.2:80", "a"),
            zoned("10.0.0.3:80", "b"),
            zoned("10.0.0.4:80", "b"),
        ]);
        let picks = |u: &UpstreamHandle| {
            let m = u.members();
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..200 {
                let i = u.pick(&m, None, None, Instant::now()).unwrap();
                seen.insert(m.endpoints[i].label.clone());
            }
            seen.into_iter().collect::<Vec<_>>()
        };
        assert_eq!(picks(&u), ["10.0.0.1:80", "10.0.0.2:80"]);

        // One local endpoint ejected: fewer than 2 eligible, every zone shares.
        let m = u.members();
        u.start(&m, 0, Instant::now());
        u.record(
            &m,
            0,
            Duration::from_millis(1),
            false,
            false,
            Instant::now(),
        );
        assert_eq!(picks(&u), ["10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"]);

        // A third endpoint moves into zone a: preferred again (the ejected one stays out).
        let change = u.set_endpoints(&[
            zoned("10.0.0.1:80", "a"),
            zoned("10.0.0.2:80", "a"),
            zoned("10.0.0.3:80", "a"),
            zoned("10.0.0.4:80", "b"),
        ]);
        assert_eq!(change.rezoned, ["10.0.0.3:80"]);
        assert_eq!(picks(&u), ["10.0.0.2:80", "10.0.0.3:80"]);
    }
}
