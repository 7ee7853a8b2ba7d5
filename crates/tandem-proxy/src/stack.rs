//! The per-listener snapshot the request path reads: routes resolved to upstream handles and
//! pre-resolved metric handles, built once from a checked [`Config`].
//!
//! Phase order for an HTTP request (see `docs/lifecycle.md`), written once here and walked by
//! [`crate::forward::handle`]:
//!
//! 1. observe: metric handles of the chosen route record the final outcome (outermost);
//! 2. route: [`RouteTable`] first match, then the forward-proxy name lookup, then the default;
//! 3. rate limit: the route's [`RateLimiter`], if any (429 with `Retry-After`);
//! 4. rewrite: hop-by-hop removal, `forwarded` on inbound;
//! 5. balance: [`UpstreamHandle::pick`] chooses an endpoint;
//! 6. send: the endpoint's pooled client, bounded by the route's timeout.
//!
//! Later policy phases (authz, retry, breaker) slot in between 2 and 5 as fields of
//! [`RouteTarget`], resolved here, never looked up per request.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tandem_config::{Config, Direction, Limits, ListenerProtocol, RouteMatch, UpstreamProtocol};
use tandem_telemetry::{Counter, ListenerMetrics, Metrics, RouteMetrics};

use crate::balance::Balancer;
use crate::error::ErrorKind;
use crate::policy::ratelimit::RateLimiter;
use crate::pool::Endpoint;
use crate::route::RouteTable;

/// Everything the data path needs for one configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// The configuration it was built from.
    pub config: Arc<Config>,
    /// One stack per listener, in config order.
    pub listeners: Vec<Arc<ListenerStack>>,
    /// Upstreams by name.
    pub upstreams: HashMap<String, Arc<UpstreamHandle>>,
}

/// One upstream: its endpoints with their pools, and how to reach them.
#[derive(Debug)]
pub struct UpstreamHandle {
    /// Name.
    pub name: String,
    /// Protocol towards the endpoints.
    pub protocol: UpstreamProtocol,
    /// Endpoints with their connection pools.
    pub endpoints: Vec<Endpoint>,
    /// Default time to the response head.
    pub request_timeout: Duration,
    balancer: Balancer,
}

/// Where a route sends requests, with its handles.
#[derive(Debug)]
pub struct RouteTarget {
    /// Route name (metric label).
    pub name: String,
    /// The upstream.
    pub upstream: Arc<UpstreamHandle>,
    /// Time to the response head.
    pub timeout: Duration,
    /// The route's rate limit.
    pub rate_limit: Option<RateLimiter>,
    /// Request metrics for (listener, route, upstream).
    pub metrics: RouteMetrics,
    /// Error counters by [`ErrorKind`] for (listener, upstream).
    pub errors: ErrorCounters,
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
}

// === impl Snapshot ===

impl Snapshot {
    /// Resolves `config` into request-path state. Opens no connections.
    pub fn build(config: Arc<Config>, metrics: &Metrics) -> Snapshot {
        let upstreams: HashMap<String, Arc<UpstreamHandle>> = config
            .upstreams
            .iter()
            .map(|u| {
                let endpoints = u
                    .endpoints
                    .iter()
                    .map(|e| Endpoint::new(e.address.clone(), u.connect_timeout, &u.pool))
                    .collect();
                let h = UpstreamHandle {
                    name: u.name.clone(),
                    protocol: u.protocol,
                    endpoints,
                    request_timeout: u.request_timeout,
                    balancer: Balancer::default(),
                };
                (u.name.clone(), Arc::new(h))
            })
            .collect();

        let listeners = config
            .listeners
            .iter()
            .map(|l| {
                let target = |route: &str,
                              upstream: &str,
                              timeout: Option<Duration>,
                              rate_limit: Option<RateLimiter>| {
                    // `check()` guarantees the name resolves; a miss here is a bug, reported as a
                    // route to nowhere rather than a panic.
                    let up = upstreams
                        .get(upstream)
                        .cloned()
                        .unwrap_or_else(|| Arc::new(UpstreamHandle::empty(upstream)));
                    Arc::new(RouteTarget {
                        name: route.to_owned(),
                        timeout: timeout.unwrap_or(up.request_timeout),
                        rate_limit,
                        metrics: metrics.route(&l.name, route, upstream),
                        errors: ErrorCounters::new(metrics, &l.name, upstream),
                        upstream: up,
                    })
                };
                let routes: Vec<(RouteMatch, Arc<RouteTarget>)> = l
                    .routes
                    .iter()
                    .map(|r| {
                        let limiter = r.rate_limit.as_ref().map(RateLimiter::new);
                        (
                            r.matcher.clone(),
                            target(&r.name, &r.upstream, r.timeout, limiter),
                        )
                    })
                    .collect();
                let default = l
                    .default_upstream
                    .as_deref()
                    .map(|u| target("default", u, None, None));
                let forward = if l.forward_proxy {
                    config
                        .upstreams
                        .iter()
                        .map(|u| (u.name.clone(), target("forward", &u.name, None, None)))
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
                    no_route: metrics.route(&l.name, "", ""),
                    no_route_errors: ErrorCounters::new(metrics, &l.name, ""),
                    metrics: metrics.listener(&l.name),
                    limits: config.limits.clone(),
                })
            })
            .collect();

        Snapshot {
            config,
            listeners,
            upstreams,
        }
    }

    /// The stack of the listener called `name`.
    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerStack>> {
        self.listeners.iter().find(|l| l.name == name)
    }
}

// === impl UpstreamHandle ===

impl UpstreamHandle {
    fn empty(name: &str) -> Self {
        UpstreamHandle {
            name: name.to_owned(),
            protocol: UpstreamProtocol::Auto,
            endpoints: Vec::new(),
            request_timeout: Duration::from_secs(15),
            balancer: Balancer::default(),
        }
    }

    /// The endpoint to use for the next request, `None` when there are none.
    pub fn pick(&self) -> Option<&Endpoint> {
        self.balancer
            .pick(self.endpoints.len())
            .and_then(|i| self.endpoints.get(i))
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
