//! `check()`: raw -> typed [`Config`], collecting every error with its key path and a fix.
//!
//! Pure: no files, sockets or clocks. Lines are attached by the caller from the key path.

use std::collections::HashSet;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};

use crate::model::*;
use crate::raw::*;

mod access_log;
mod discovery;
mod logs;
mod security;
mod tls;
mod tracing;

/// Largest endpoint weight: weights are relative, and a bound keeps a hash ring's virtual nodes
/// (a multiple of the weights) small.
const MAX_WEIGHT: u32 = 10_000;

/// Largest request body kept for replay: each in-flight retryable request may hold this much.
const MAX_REPLAY_BUFFER: usize = 16 * 1024 * 1024;

/// The balancer forms, for hints.
const BALANCERS: [&str; 6] = [
    "p2c",
    "round_robin",
    "least_request",
    "hash:header:NAME",
    "hash:cookie:NAME",
    "hash:client_ip",
];

/// gRPC status code names by number (index 0 is OK, never retried).
const GRPC_CODES: [&str; 17] = [
    "ok",
    "cancelled",
    "unknown",
    "invalid_argument",
    "deadline_exceeded",
    "not_found",
    "already_exists",
    "permission_denied",
    "resource_exhausted",
    "failed_precondition",
    "aborted",
    "out_of_range",
    "unimplemented",
    "internal",
    "unavailable",
    "data_loss",
    "unauthenticated",
];

/// An error before lines are attached.
#[derive(Debug)]
pub(crate) struct Problem {
    pub(crate) key: String,
    pub(crate) message: String,
    pub(crate) hint: String,
}

struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn err(&mut self, key: impl Into<String>, message: impl Into<String>, hint: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            message: message.into(),
            hint: hint.into(),
        });
    }

    fn duration(&mut self, key: &str, raw: Option<&str>, default: Duration) -> Duration {
        let Some(s) = raw else { return default };
        match humantime::parse_duration(s.trim()) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.err(
                    key,
                    "must be greater than zero",
                    "use a duration like \"2s\" or \"500ms\"",
                );
                default
            }
            Err(e) => {
                self.err(
                    key,
                    format!("`{s}` is not a duration ({e})"),
                    "use a duration like \"2s\", \"500ms\" or \"1m\"",
                );
                default
            }
        }
    }

    fn listen_address(&mut self, key: &str, raw: &str) -> Option<Address> {
        match raw.parse::<Address>() {
            Ok(Address::Host { .. }) => {
                self.err(
                    key,
                    format!("`{raw}` names a host; listeners need an IP address"),
                    "use an IP, e.g. 127.0.0.1:7080 or 0.0.0.0:7080, or unix:/path.sock",
                );
                None
            }
            Ok(a) => Some(a),
            Err(e) => {
                self.err(
                    key,
                    e,
                    "use IP:port (127.0.0.1:7080, [::1]:7080) or unix:/path.sock",
                );
                None
            }
        }
    }
}

/// Checks `raw` and builds the typed config; `source` names it in `Config::source`.
pub(crate) fn check(source: &str, raw: RawConfig) -> Result<Config, Vec<Problem>> {
    let mut c = Checker {
        problems: Vec::new(),
    };
    let upstream_names: Vec<&str> = raw.upstreams.keys().map(String::as_str).collect();
    let known = if upstream_names.is_empty() {
        "there are no upstreams; add one under `upstreams:`".to_owned()
    } else {
        format!("known upstreams: {}", upstream_names.join(", "))
    };
    let resolve = |c: &mut Checker, key: &str, name: &str| {
        if !raw.upstreams.contains_key(name) {
            let suggestion = closest(name, upstream_names.iter().copied())
                .map(|s| format!("did you mean \"{s}\"? "))
                .unwrap_or_default();
            c.err(
                key,
                format!("unknown upstream `{name}`"),
                format!("{suggestion}{known}"),
            );
        }
    };

    // Admin.
    let admin_raw = raw
        .admin
        .as_ref()
        .map_or("127.0.0.1:7901", |a| a.address.as_str());
    let admin = c
        .listen_address("admin.address", admin_raw)
        .unwrap_or(Address::Tcp(([127, 0, 0, 1], 7901).into()));
    let admin = Admin {
        address: admin,
        allow_remote: raw.admin.as_ref().is_some_and(|a| a.allow_remote),
    };
    if let Some((message, hint)) = admin.exposure_error() {
        c.err("admin.address", message, hint);
    }

    let app = raw.app.as_ref().map(|a| {
        resolve(&mut c, "app.upstream", &a.upstream);
        App {
            upstream: a.upstream.clone(),
        }
    });

    let drain_timeout = c.duration(
        "drain_timeout",
        raw.drain_timeout.as_deref(),
        Duration::from_secs(30),
    );

    // Limits.
    let limits = check_limits(
        &mut c,
        "limits",
        raw.limits.as_ref().unwrap_or(&RawLimits::default()),
        &Limits::default(),
    );

    // Upstreams.
    let mut upstreams = Vec::with_capacity(raw.upstreams.len());
    for (name, u) in &raw.upstreams {
        let key = format!("upstreams.{name}");
        check_name(&mut c, &key, name);
        let endpoints = check_endpoints(&mut c, &key, &u.endpoints);
        let discovery = discovery::check_discovery(
            &mut c,
            &key,
            u.discovery.as_ref(),
            !u.endpoints.is_empty(),
            raw.etcd.is_some(),
        );
        let pool = u.pool.as_ref();
        let request_timeout = c.duration(
            &format!("{key}.request_timeout"),
            u.request_timeout.as_deref(),
            Duration::from_secs(15),
        );
        let retry = u.retry.as_ref().map_or_else(Retry::default, |r| {
            check_upstream_retry(&mut c, &format!("{key}.retry"), r, request_timeout)
        });
        let upstream_tls = u.tls.as_ref().map(|t| {
            let all_ips = !endpoints.is_empty()
                && endpoints
                    .iter()
                    .all(|e| !matches!(e.address, Address::Host { .. }));
            tls::check_upstream(&mut c, &format!("{key}.tls"), t, raw.tls.as_ref(), all_ips)
        });
        upstreams.push(Upstream {
            name: name.clone(),
            endpoints,
            discovery,
            prefer_zone: u.prefer_zone.as_ref().map(|p| {
                discovery::check_prefer_zone(
                    &mut c,
                    &key,
                    p,
                    raw.registration.as_ref().and_then(|r| r.zone.as_deref()),
                )
            }),
            protocol: match u.protocol {
                Some(RawUpstreamProtocol::Http1) => UpstreamProtocol::Http1,
                Some(RawUpstreamProtocol::Http2) => UpstreamProtocol::Http2,
                Some(RawUpstreamProtocol::Auto) | None => UpstreamProtocol::Auto,
            },
            connect_timeout: c.duration(
                &format!("{key}.connect_timeout"),
                u.connect_timeout.as_deref(),
                Duration::from_secs(2),
            ),
            request_timeout,
            pool: Pool {
                idle_timeout: c.duration(
                    &format!("{key}.pool.idle_timeout"),
                    pool.and_then(|p| p.idle_timeout.as_deref()),
                    // Under the 5 s keep-alive of Node.js, uvicorn and Apache: Tandem closes an
                    // idle connection before the app does, so the app rarely closes one under a
                    // request (the keep-alive race).
                    Duration::from_secs(4),
                ),
                max_idle_per_endpoint: pool.and_then(|p| p.max_idle_per_endpoint).unwrap_or(256),
            },
            balancer: check_balancer(&mut c, &format!("{key}.balancer"), u.balancer.as_deref()),
            health_check: u
                .health_check
                .as_ref()
                .map(|h| check_health(&mut c, &format!("{key}.health_check"), h)),
            circuit_breaker: u
                .circuit_breaker
                .as_ref()
                .map_or_else(CircuitBreaker::default, |b| {
                    check_breaker(&mut c, &format!("{key}.circuit_breaker"), b)
                }),
            limits: u.limits.as_ref().map_or_else(UpstreamLimits::default, |l| {
                check_upstream_limits(&mut c, &format!("{key}.limits"), l)
            }),
            retry,
            retry_budget: u
                .retry_budget
                .as_ref()
                .map_or_else(RetryBudget::default, |b| {
                    check_budget(&mut c, &format!("{key}.retry_budget"), b)
                }),
            stream_idle_timeout: c.duration(
                &format!("{key}.stream_idle_timeout"),
                u.stream_idle_timeout.as_deref(),
                DEFAULT_STREAM_IDLE_TIMEOUT,
            ),
            tls: upstream_tls,
        });
    }

    let access_log = raw
        .access_log
        .as_ref()
        .map(|a| access_log::check(&mut c, a));

    // Listeners: a file that only ships logs needs none.
    if raw.listeners.is_empty() && raw.logs.is_none() {
        c.err(
            "listeners",
            "no listeners",
            "add one, e.g. listeners: { inbound: { address: 0.0.0.0:7080, upstream: app } }",
        );
    }
    // Addresses already taken, with who took them, to catch two sockets that cannot both bind.
    let mut taken: Vec<(Address, String)> = vec![(admin.address.clone(), "admin".into())];
    let mut listeners = Vec::with_capacity(raw.listeners.len());
    for (name, l) in &raw.listeners {
        let key = format!("listeners.{name}");
        check_name(&mut c, &key, name);
        let address = c.listen_address(&format!("{key}.address"), &l.address);
        if let Some(a) = &address {
            if let Some((other_addr, other)) = taken.iter().find(|(t, _)| collides(a, t)) {
                let message = if a == other_addr {
                    format!("{a} is already used by {other}")
                } else {
                    format!(
                        "{a} overlaps {other_addr} of {other}: a wildcard address (0.0.0.0, [::]) \
                         takes the port on every interface"
                    )
                };
                c.err(
                    format!("{key}.address"),
                    message,
                    "give every listener and the admin API its own address (a different port)",
                );
            }
            taken.push((a.clone(), format!("listener `{name}`")));
        }
        let protocol = match l.protocol {
            Some(RawListenerProtocol::Tcp) => ListenerProtocol::Tcp,
            _ => ListenerProtocol::Http,
        };
        let listener_limits = match &l.limits {
            Some(rl) => check_limits(&mut c, &format!("{key}.limits"), rl, &limits),
            None => limits.clone(),
        };
        if let Some(u) = &l.upstream {
            resolve(&mut c, &format!("{key}.upstream"), u);
        }
        if protocol == ListenerProtocol::Tcp {
            if l.upstream.is_none() {
                c.err(
                    &key,
                    "a tcp listener needs an `upstream`",
                    "add `upstream: NAME` naming where connections go",
                );
            }
            if !l.routes.is_empty() {
                c.err(
                    format!("{key}.routes"),
                    "routes apply to http listeners only",
                    "remove `routes` or use `protocol: http`",
                );
            }
            if l.forward_proxy {
                c.err(
                    format!("{key}.forward_proxy"),
                    "forward_proxy applies to http listeners only",
                    "remove it or use `protocol: http`",
                );
            }
        } else if l.routes.is_empty() && l.upstream.is_none() && !l.forward_proxy {
            c.err(&key, "this listener has no routes, no default upstream and no forward proxy, so it would answer 404 to everything", "add `upstream: NAME`, some `routes`, or `forward_proxy: true`");
        }
        let mut routes = Vec::with_capacity(l.routes.len());
        let mut route_names = HashSet::new();
        for (i, r) in l.routes.iter().enumerate() {
            let rkey = format!("{key}.routes[{i}]");
            let rname = r.name.clone().unwrap_or_else(|| format!("{name}.{i}"));
            if !route_names.insert(rname.clone()) {
                c.err(
                    format!("{rkey}.name"),
                    format!("route name `{rname}` is used twice in this listener"),
                    "give each route a unique name",
                );
            }
            resolve(&mut c, &format!("{rkey}.upstream"), &r.upstream);
            let timeout = r
                .timeout
                .as_deref()
                .map(|t| c.duration(&format!("{rkey}.timeout"), Some(t), Duration::from_secs(15)));
            let matcher = match &r.matcher {
                Some(m) => check_match(&mut c, &format!("{rkey}.match"), m),
                None => RouteMatch::default(),
            };
            let rate_limit = r
                .rate_limit
                .as_ref()
                .map(|rl| check_rate_limit(&mut c, &format!("{rkey}.rate_limit"), rl));
            let upstream = upstreams.iter().find(|u| u.name == r.upstream);
            let retry = check_route_retry(&mut c, &rkey, r, timeout, upstream);
            let jwt = r
                .jwt
                .as_ref()
                .map(|j| security::check_jwt(&mut c, &format!("{rkey}.jwt"), j));
            routes.push(Route {
                name: rname,
                matcher,
                upstream: r.upstream.clone(),
                timeout,
                rate_limit,
                retry,
                jwt,
            });
        }
        listeners.push(Listener {
            name: name.clone(),
            address: address.unwrap_or(Address::Tcp(([127, 0, 0, 1], 0).into())),
            direction: match l.direction {
                Some(RawDirection::Outbound) => Direction::Outbound,
                _ => Direction::Inbound,
            },
            protocol,
            routes,
            default_upstream: l.upstream.clone(),
            forward_proxy: l.forward_proxy,
            access_log: access_log::listener(&mut c, &key, l.access_log, access_log.is_some()),
            limits: listener_limits,
            normalize_path: security::check_normalize_path(&mut c, &key, l),
            authorization: l.authorization.as_ref().map(|a| {
                security::check_authorization(&mut c, &format!("{key}.authorization"), a, protocol)
            }),
            tls: l
                .tls
                .as_ref()
                .map(|t| tls::check_listener(&mut c, &format!("{key}.tls"), t, raw.tls.as_ref())),
        });
    }

    let tracing = raw
        .tracing
        .as_ref()
        .map(|t| tracing::check_tracing(&mut c, t));
    let mut logs = raw
        .logs
        .as_ref()
        .map(|l| logs::check_logs(&mut c, l, access_log.is_some()));
    let tls = raw
        .tls
        .as_ref()
        .map(|t| tls::check_identity(&mut c, source, t));
    let etcd = raw.etcd.as_ref().map(|e| discovery::check_etcd(&mut c, e));
    let registration = raw
        .registration
        .as_ref()
        .map(|r| discovery::check_registration(&mut c, r, &listeners, etcd.is_some()));
    if let Some(l) = &mut logs {
        logs::identity_labels(l, tracing.as_ref(), registration.as_ref());
    }

    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    Ok(Config {
        source: source.to_owned(),
        admin,
        drain_timeout,
        limits,
        app,
        listeners,
        upstreams,
        access_log,
        tracing,
        logs,
        tls,
        metrics: MetricsConfig {
            requests: raw
                .metrics
                .as_ref()
                .and_then(|m| m.requests)
                .unwrap_or(true),
        },
        etcd,
        registration,
    })
}

/// `limits` at `key` over `base`: every key given replaces the base value (the defaults at the
/// top level, the top-level limits for a listener).
fn check_limits(c: &mut Checker, key: &str, rl: &RawLimits, base: &Limits) -> Limits {
    let mut positive = |name: &str, v: Option<usize>, base: usize, min: usize| -> usize {
        match v {
            Some(v) if v < min => {
                c.err(
                    format!("{key}.{name}"),
                    format!("{v} is too small"),
                    format!("use at least {min} (otherwise {base})"),
                );
                base
            }
            Some(v) => v,
            None => base,
        }
    };
    let u32_of = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    let h2 = &base.h2;
    let max_connections = positive(
        "max_connections",
        rl.max_connections,
        base.max_connections,
        1,
    );
    let max_header_bytes = positive(
        "max_header_bytes",
        rl.max_header_bytes,
        base.max_header_bytes,
        1024,
    );
    let max_headers = positive("max_headers", rl.max_headers, base.max_headers, 1);
    let h2 = H2Limits {
        max_concurrent_streams: u32_of(positive(
            "h2_max_concurrent_streams",
            rl.h2_max_concurrent_streams.map(|v| v as usize),
            h2.max_concurrent_streams as usize,
            1,
        )),
        max_pending_accept_reset_streams: positive(
            "h2_max_pending_accept_reset_streams",
            rl.h2_max_pending_accept_reset_streams,
            h2.max_pending_accept_reset_streams,
            1,
        ),
        max_local_error_reset_streams: positive(
            "h2_max_local_error_reset_streams",
            rl.h2_max_local_error_reset_streams,
            h2.max_local_error_reset_streams,
            1,
        ),
        max_send_buf_size: positive(
            "h2_max_send_buf_size",
            rl.h2_max_send_buf_size,
            h2.max_send_buf_size,
            16_384,
        ),
        max_resets_per_second: u32_of(positive(
            "h2_max_resets_per_second",
            rl.h2_max_resets_per_second.map(|v| v as usize),
            h2.max_resets_per_second as usize,
            1,
        )),
    };
    let mut duration =
        |name: &str, v: Option<&str>, base: Duration| c.duration(&format!("{key}.{name}"), v, base);
    Limits {
        max_connections,
        max_header_bytes,
        max_headers,
        header_read_timeout: duration(
            "header_read_timeout",
            rl.header_read_timeout.as_deref(),
            base.header_read_timeout,
        ),
        tcp_idle_timeout: duration(
            "tcp_idle_timeout",
            rl.tcp_idle_timeout.as_deref(),
            base.tcp_idle_timeout,
        ),
        body_read_timeout: duration(
            "body_read_timeout",
            rl.body_read_timeout.as_deref(),
            base.body_read_timeout,
        ),
        send_timeout: duration(
            "send_timeout",
            rl.send_timeout.as_deref(),
            base.send_timeout,
        ),
        h2,
    }
}

fn check_rate_limit(c: &mut Checker, key: &str, rl: &RawRateLimit) -> RateLimit {
    if rl.requests == 0 {
        c.err(
            format!("{key}.requests"),
            "a rate of 0 requests admits nothing",
            "use at least 1, or remove `rate_limit` to admit everything",
        );
    }
    if rl.burst == Some(0) {
        c.err(
            format!("{key}.burst"),
            "a burst of 0 admits nothing",
            "use at least 1 (the default is `requests`)",
        );
    }
    if rl.max_keys == Some(0) {
        c.err(
            format!("{key}.max_keys"),
            "0 keys tracks nothing",
            "use at least 1 (default 100000)",
        );
    }
    let key_kind = match rl.key.as_deref().map(str::trim) {
        None | Some("none") => RateLimitKey::None,
        Some("client_ip") => RateLimitKey::ClientIp,
        Some("peer_identity") => RateLimitKey::PeerIdentity,
        Some(other) => match other.strip_prefix("header:").map(str::trim) {
            Some(name) if HeaderName::from_bytes(name.as_bytes()).is_ok() && !name.is_empty() => {
                RateLimitKey::Header(name.to_ascii_lowercase())
            }
            _ => {
                c.err(
                    format!("{key}.key"),
                    format!("`{other}` is not a rate limit key"),
                    "use `none`, `client_ip`, `peer_identity` or `header:NAME` (e.g. header:x-api-key)",
                );
                RateLimitKey::None
            }
        },
    };
    let requests = rl.requests.max(1);
    RateLimit {
        requests,
        per: c.duration(
            &format!("{key}.per"),
            rl.per.as_deref(),
            Duration::from_secs(1),
        ),
        burst: rl.burst.unwrap_or(requests).max(1),
        key: key_kind,
        max_keys: rl.max_keys.unwrap_or(100_000).max(1),
    }
}

fn check_endpoints(c: &mut Checker, key: &str, raw: &[RawEndpoint]) -> Vec<UpstreamEndpoint> {
    let mut endpoints = Vec::with_capacity(raw.len());
    let mut seen = HashSet::new();
    for (i, e) in raw.iter().enumerate() {
        let ekey = format!("{key}.endpoints[{i}]");
        let (address, weight, zone) = match e {
            RawEndpoint::Address(a) => (a, None, None),
            RawEndpoint::Weighted(w) => (&w.address, w.weight, w.zone.clone()),
        };
        let weight = match weight {
            Some(0) => {
                c.err(
                    format!("{ekey}.weight"),
                    "a weight of 0 sends this endpoint no traffic",
                    format!(
                        "use 1 to {MAX_WEIGHT} (default 1); to take the endpoint out of \
                         rotation, remove it from `endpoints`"
                    ),
                );
                1
            }
            Some(w) if w > MAX_WEIGHT => {
                c.err(
                    format!("{ekey}.weight"),
                    format!("weight {w} is above the maximum of {MAX_WEIGHT}"),
                    "weights are relative shares: scale them down, e.g. 1 and 3 rather than \
                     1000 and 3000",
                );
                MAX_WEIGHT
            }
            Some(w) => w,
            None => 1,
        };
        match address.parse::<Address>() {
            Ok(a) => {
                if !seen.insert(a.clone()) {
                    c.err(
                        &ekey,
                        format!("endpoint `{address}` is listed twice"),
                        "remove the duplicate; to send it more traffic, give it a `weight`",
                    );
                }
                endpoints.push(UpstreamEndpoint {
                    address: a,
                    weight,
                    zone,
                });
            }
            Err(msg) => c.err(&ekey, msg, "use IP:port, host:port or unix:/path.sock"),
        }
    }
    endpoints
}

fn check_balancer(c: &mut Checker, key: &str, raw: Option<&str>) -> Balancer {
    let Some(raw) = raw else {
        return Balancer::P2c;
    };
    let s = raw.trim();
    let lower = s.to_ascii_lowercase();
    match lower.as_str() {
        "p2c" => return Balancer::P2c,
        "round_robin" => return Balancer::RoundRobin,
        "least_request" => return Balancer::LeastRequest,
        "hash:client_ip" => return Balancer::Hash(HashKey::ClientIp),
        _ => {}
    }
    // The prefixes are ASCII, so their length in `lower` is their length in `s`; the name keeps
    // its case (cookie names are case-sensitive).
    if lower.starts_with("hash:header:") {
        let name = s["hash:header:".len()..].trim();
        if !name.is_empty() && HeaderName::from_bytes(name.as_bytes()).is_ok() {
            return Balancer::Hash(HashKey::Header(name.to_ascii_lowercase()));
        }
        c.err(
            key,
            format!("`{name}` in `{s}` is not a header name"),
            "name the header to hash, e.g. hash:header:x-user-id",
        );
        return Balancer::P2c;
    }
    if lower.starts_with("hash:cookie:") {
        let name = s["hash:cookie:".len()..].trim();
        if is_cookie_name(name) {
            return Balancer::Hash(HashKey::Cookie(name.to_owned()));
        }
        c.err(
            key,
            format!("`{name}` in `{s}` is not a cookie name"),
            "name the cookie to hash, e.g. hash:cookie:session (no spaces, quotes or ;,=)",
        );
        return Balancer::P2c;
    }
    let suggestion = closest(&lower, BALANCERS.iter().copied())
        .map(|b| format!("did you mean \"{b}\"? "))
        .unwrap_or_default();
    c.err(
        key,
        format!("`{s}` is not a balancer"),
        format!("{suggestion}use one of: {}", BALANCERS.join(", ")),
    );
    Balancer::P2c
}

/// A cookie name is an HTTP token (RFC 6265 section 4.1.1).
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

fn check_health(c: &mut Checker, key: &str, h: &RawHealthCheck) -> HealthCheck {
    let given: Vec<&str> = [
        h.http.as_ref().map(|_| "http"),
        h.tcp.as_ref().map(|_| "tcp"),
        h.grpc.as_ref().map(|_| "grpc"),
    ]
    .into_iter()
    .flatten()
    .collect();
    match given.as_slice() {
        [] => c.err(
            key,
            "no probe is set",
            "add one of `http: { path: /healthz }`, `tcp: {}` or `grpc: {}`; or remove \
             `health_check` to rely on the circuit breaker alone",
        ),
        [_] => {}
        _ => c.err(
            key,
            format!(
                "more than one probe is set (`{}`); a health check has exactly one",
                given.join("`, `")
            ),
            "keep one of them: `http`, `tcp` or `grpc`",
        ),
    }
    let probe = if let Some(http) = &h.http {
        let pkey = format!("{key}.http");
        HealthProbe::Http {
            path: check_probe_path(c, &format!("{pkey}.path"), &http.path),
            expect: match &http.expect {
                None => vec![(200, 399)],
                Some(list) if list.is_empty() => {
                    c.err(
                        format!("{pkey}.expect"),
                        "the expect list is empty, so no probe could pass",
                        "remove `expect` to pass on 200-399, or list statuses: [200, \"300-399\"]",
                    );
                    vec![(200, 399)]
                }
                Some(list) => list
                    .iter()
                    .enumerate()
                    .filter_map(|(i, e)| status_range(c, &format!("{pkey}.expect[{i}]"), e))
                    .collect(),
            },
        }
    } else if let Some(grpc) = &h.grpc {
        HealthProbe::Grpc {
            service: grpc.service.clone().unwrap_or_default(),
        }
    } else {
        HealthProbe::Tcp
    };

    let interval = c.duration(
        &format!("{key}.interval"),
        h.interval.as_deref(),
        Duration::from_secs(5),
    );
    // "0s" is a valid choice here (probe in step), unlike for every other duration.
    let jitter = match h.jitter.as_deref() {
        Some(j) if humantime::parse_duration(j.trim()).is_ok_and(|d| d.is_zero()) => Duration::ZERO,
        j => c.duration(&format!("{key}.jitter"), j, interval / 10),
    };
    if jitter > interval {
        c.err(
            format!("{key}.jitter"),
            format!(
                "jitter {} is longer than interval {}, so probes would drift a whole interval \
                 or more",
                fmt_duration(jitter),
                fmt_duration(interval)
            ),
            format!(
                "use a jitter up to the interval, e.g. {} (the default is a tenth of it)",
                fmt_duration(interval / 10)
            ),
        );
    }
    let timeout = c.duration(
        &format!("{key}.timeout"),
        h.timeout.as_deref(),
        Duration::from_secs(1),
    );
    if timeout >= interval {
        let (tkey, whose) = if h.timeout.is_some() {
            (format!("{key}.timeout"), "")
        } else {
            (format!("{key}.interval"), " (the default)")
        };
        c.err(
            tkey,
            format!(
                "the probe timeout {}{whose} is not shorter than interval {}, so probes would \
                 overlap",
                fmt_duration(timeout),
                fmt_duration(interval)
            ),
            format!(
                "make `timeout` shorter than `interval`, e.g. timeout: {}",
                fmt_duration(share(interval, 2))
            ),
        );
    }
    HealthCheck {
        probe,
        interval,
        jitter,
        timeout,
        healthy_threshold: at_least_one(
            c,
            &format!("{key}.healthy_threshold"),
            h.healthy_threshold,
            2,
        ),
        unhealthy_threshold: at_least_one(
            c,
            &format!("{key}.unhealthy_threshold"),
            h.unhealthy_threshold,
            3,
        ),
    }
}

/// The path of an HTTP probe: starts with '/', may carry a query.
fn check_probe_path(c: &mut Checker, key: &str, path: &str) -> String {
    if !path.starts_with('/') {
        c.err(
            key,
            format!("`{path}` does not start with '/'"),
            format!("write it as \"/{}\"", path.trim_start_matches('/')),
        );
    } else if path.parse::<http::uri::PathAndQuery>().is_err() || path.contains('#') {
        c.err(
            key,
            format!("`{path}` is not a valid request path"),
            "use visible ASCII without '#' and percent-encode the rest, e.g. /healthz",
        );
    }
    path.to_owned()
}

/// A status (`200`, `"200"`) or an inclusive range (`"200-299"`), both ends within 100..=599.
fn status_range(c: &mut Checker, key: &str, raw: &NumberOrString) -> Option<(u16, u16)> {
    const HINT: &str = "use a status (200) or a range (\"200-299\"), each from 100 to 599";
    let status = |s: &str| {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|n| (100..=599).contains(n))
    };
    let (text, range) = match raw {
        NumberOrString::Number(n) => {
            let ok = u16::try_from(*n).ok().filter(|n| (100..=599).contains(n));
            (n.to_string(), ok.map(|n| (n, n)))
        }
        NumberOrString::String(s) => {
            let range = match s.split_once('-') {
                Some((a, b)) => status(a).zip(status(b)),
                None => status(s).map(|n| (n, n)),
            };
            (s.clone(), range)
        }
    };
    match range {
        Some((a, b)) if a <= b => Some((a, b)),
        Some((a, b)) => {
            c.err(
                key,
                format!("the range `{text}` runs backwards"),
                format!("write the lower status first: \"{b}-{a}\""),
            );
            None
        }
        None => {
            c.err(
                key,
                format!("`{text}` is not a status or a status range"),
                HINT,
            );
            None
        }
    }
}

fn check_breaker(c: &mut Checker, key: &str, b: &RawCircuitBreaker) -> CircuitBreaker {
    let d = CircuitBreaker::default();
    let base_ejection = c.duration(
        &format!("{key}.base_ejection"),
        b.base_ejection.as_deref(),
        d.base_ejection,
    );
    let max_ejection = c.duration(
        &format!("{key}.max_ejection"),
        b.max_ejection.as_deref(),
        d.max_ejection,
    );
    if max_ejection < base_ejection {
        let which = if b.max_ejection.is_some() {
            "max_ejection"
        } else {
            "base_ejection"
        };
        c.err(
            format!("{key}.{which}"),
            format!(
                "max_ejection {} is shorter than base_ejection {}",
                fmt_duration(max_ejection),
                fmt_duration(base_ejection)
            ),
            "ejections start at base_ejection and double up to max_ejection: make max_ejection \
             at least base_ejection",
        );
    }
    CircuitBreaker {
        enabled: b.enabled.unwrap_or(d.enabled),
        consecutive_failures: b.consecutive_failures.unwrap_or(d.consecutive_failures),
        failure_rate_percent: percent(
            c,
            &format!("{key}.failure_rate_percent"),
            b.failure_rate_percent,
            d.failure_rate_percent,
            100,
        ),
        min_requests: b.min_requests.unwrap_or(d.min_requests),
        window: c.duration(&format!("{key}.window"), b.window.as_deref(), d.window),
        base_ejection,
        max_ejection,
        max_ejected_percent: percent(
            c,
            &format!("{key}.max_ejected_percent"),
            b.max_ejected_percent,
            d.max_ejected_percent,
            100,
        ),
    }
}

fn check_upstream_limits(c: &mut Checker, key: &str, l: &RawUpstreamLimits) -> UpstreamLimits {
    let d = UpstreamLimits::default();
    if l.max_requests == Some(0) {
        c.err(
            format!("{key}.max_requests"),
            "a limit of 0 requests refuses every request",
            format!("use at least 1 (default {})", d.max_requests),
        );
    }
    if l.max_connections == Some(0) {
        c.err(
            format!("{key}.max_connections"),
            "a limit of 0 connections refuses every request",
            "use at least 1, or remove it to be bounded by max_requests and the pool",
        );
    }
    UpstreamLimits {
        max_requests: l.max_requests.unwrap_or(d.max_requests).max(1),
        max_pending: l.max_pending.unwrap_or(d.max_pending),
        max_connections: l.max_connections.or(d.max_connections).map(|n| n.max(1)),
    }
}

/// `raw` over `base`: keys given in `raw` are checked and replace the base's values.
fn check_retry(c: &mut Checker, key: &str, raw: &RawRetry, base: &Retry) -> Retry {
    let attempts = match raw.attempts {
        Some(a @ 1..=10) => a,
        Some(0) => {
            c.err(
                format!("{key}.attempts"),
                "0 attempts would never send the request",
                "use 1 to 10 tries in all, the first included; 1 means no retries",
            );
            base.attempts
        }
        Some(a) => {
            c.err(
                format!("{key}.attempts"),
                format!("{a} attempts is more than the maximum of 10"),
                "use at most 10 tries in all: retries beyond a few add load to an upstream that \
                 is already failing",
            );
            base.attempts
        }
        None => base.attempts,
    };
    let on_status = match &raw.on_status {
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, s)| retry_status(c, &format!("{key}.on_status[{i}]"), *s))
            .collect(),
        None => base.on_status.clone(),
    };
    let on_grpc = match &raw.on_grpc {
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, g)| grpc_code(c, &format!("{key}.on_grpc[{i}]"), g))
            .collect(),
        None => base.on_grpc.clone(),
    };
    let per_try_timeout = match raw.per_try_timeout.as_deref() {
        Some(p) => Some(c.duration(
            &format!("{key}.per_try_timeout"),
            Some(p),
            Duration::from_secs(1),
        )),
        None => base.per_try_timeout,
    };
    let backoff = c.duration(
        &format!("{key}.backoff"),
        raw.backoff.as_deref(),
        base.backoff,
    );
    let max_backoff = c.duration(
        &format!("{key}.max_backoff"),
        raw.max_backoff.as_deref(),
        base.max_backoff,
    );
    // With neither key given here, both come from the base, which was checked where it was set.
    if max_backoff < backoff && (raw.backoff.is_some() || raw.max_backoff.is_some()) {
        let which = if raw.max_backoff.is_some() {
            "max_backoff"
        } else {
            "backoff"
        };
        c.err(
            format!("{key}.{which}"),
            format!(
                "max_backoff {} is shorter than backoff {}",
                fmt_duration(max_backoff),
                fmt_duration(backoff)
            ),
            "back-off starts at `backoff` and doubles up to `max_backoff`: make max_backoff at \
             least backoff",
        );
    }
    let replay_buffer = match raw.replay_buffer {
        Some(n) if n > MAX_REPLAY_BUFFER => {
            c.err(
                format!("{key}.replay_buffer"),
                format!("{n} bytes is more than the maximum of {MAX_REPLAY_BUFFER} (16 MiB)"),
                "every retryable request in flight may hold this much memory: use at most \
                 16777216; requests with larger bodies are sent once, without retries",
            );
            base.replay_buffer
        }
        Some(n) => n,
        None => base.replay_buffer,
    };
    Retry {
        attempts,
        on_status,
        on_grpc,
        all_methods: raw.all_methods.unwrap_or(base.all_methods),
        per_try_timeout,
        backoff,
        max_backoff,
        replay_buffer,
    }
}

/// A route's retry policy merged over its upstream's, and its per-try timeout checked against
/// the route's deadline.
fn check_route_retry(
    c: &mut Checker,
    rkey: &str,
    r: &RawRoute,
    timeout: Option<Duration>,
    upstream: Option<&Upstream>,
) -> Option<Retry> {
    let default = Retry::default();
    let base = upstream.map_or(&default, |u| &u.retry);
    let retry = match &r.retry {
        None => None,
        // No retries: the route's deadline alone bounds its one try.
        Some(RawRouteRetry::Off) => Some(Retry {
            attempts: 1,
            per_try_timeout: None,
            ..base.clone()
        }),
        Some(RawRouteRetry::Policy(p)) => Some(check_retry(c, &format!("{rkey}.retry"), p, base)),
    };
    let Some(upstream) = upstream else {
        return retry;
    };
    let effective = retry.as_ref().unwrap_or(base);
    let (Some(per_try), attempts) = (effective.per_try_timeout, effective.attempts) else {
        return retry;
    };
    let deadline = timeout.unwrap_or(upstream.request_timeout);
    if per_try < deadline {
        return retry;
    }
    let own = matches!(&r.retry, Some(RawRouteRetry::Policy(p)) if p.per_try_timeout.is_some());
    if own {
        let (what, fix) = match timeout {
            Some(_) => ("the route's timeout", "`timeout`"),
            None => (
                "the upstream's request_timeout",
                "the upstream's `request_timeout`",
            ),
        };
        let key = format!("{rkey}.retry.per_try_timeout");
        per_try_too_long(c, &key, per_try, (what, deadline), attempts, fix);
    } else if timeout.is_some() {
        // Inherited from the upstream, where it fits the upstream's own deadline (else it was
        // reported there); this route's shorter `timeout` is what makes it useless.
        c.err(
            format!("{rkey}.timeout"),
            format!(
                "timeout {} is not longer than the per_try_timeout {} this route takes from \
                 upstream `{}`, so no try could be cut short and retried",
                fmt_duration(deadline),
                fmt_duration(per_try),
                upstream.name
            ),
            format!(
                "give the route its own `retry: {{ per_try_timeout: {} }}`, or raise `timeout` \
                 above {}",
                fmt_duration(share(deadline, attempts)),
                fmt_duration(per_try)
            ),
        );
    }
    retry
}

/// An upstream's retry policy, its per-try timeout checked against `request_timeout`.
fn check_upstream_retry(
    c: &mut Checker,
    key: &str,
    raw: &RawRetry,
    request_timeout: Duration,
) -> Retry {
    let retry = check_retry(c, key, raw, &Retry::default());
    if let Some(per_try) = retry.per_try_timeout.filter(|p| *p >= request_timeout) {
        per_try_too_long(
            c,
            &format!("{key}.per_try_timeout"),
            per_try,
            ("the upstream's request_timeout", request_timeout),
            retry.attempts,
            "`request_timeout`",
        );
    }
    retry
}

/// Reports a per-try timeout that is not shorter than the deadline (named, and its value) it is
/// meant to split; `fix` names the key that sets the deadline.
fn per_try_too_long(
    c: &mut Checker,
    key: &str,
    per_try: Duration,
    (what, deadline): (&str, Duration),
    attempts: u32,
    fix: &str,
) {
    c.err(
        key,
        format!(
            "per_try_timeout {} is not shorter than {what} {}, so no try could be cut short and \
             retried",
            fmt_duration(per_try),
            fmt_duration(deadline)
        ),
        format!(
            "use a per_try_timeout below {}, e.g. {}, or raise {fix}",
            fmt_duration(deadline),
            fmt_duration(share(deadline, attempts))
        ),
    );
}

/// A retried status: an error status, 400 to 599.
fn retry_status(c: &mut Checker, key: &str, status: u32) -> Option<u16> {
    match status {
        400..=599 => u16::try_from(status).ok(),
        100..=399 => {
            c.err(
                key,
                format!("{status} is not an error status"),
                "retry on 4xx and 5xx statuses only, e.g. 429 or 503; successes and redirects \
                 are final",
            );
            None
        }
        _ => {
            c.err(
                key,
                format!("{status} is not an HTTP status"),
                "use a status from 400 to 599, e.g. 503",
            );
            None
        }
    }
}

/// A retried gRPC status code, by name (any case) or number, 1 to 16.
fn grpc_code(c: &mut Checker, key: &str, raw: &NumberOrString) -> Option<u32> {
    const HINT: &str = "use a gRPC code name (unavailable, resource_exhausted, ...) or a number \
                        from 1 to 16";
    match raw {
        NumberOrString::Number(0) => {
            c.err(key, "0 is OK, which is never retried", HINT);
            None
        }
        NumberOrString::Number(n @ 1..=16) => u32::try_from(*n).ok(),
        NumberOrString::Number(n) => {
            c.err(key, format!("{n} is not a gRPC status code"), HINT);
            None
        }
        NumberOrString::String(s) => {
            let name = s.trim().to_ascii_lowercase();
            match GRPC_CODES.iter().position(|g| *g == name) {
                Some(0) => {
                    c.err(key, "`ok` is success, which is never retried", HINT);
                    None
                }
                Some(n) => u32::try_from(n).ok(),
                None => {
                    let suggestion = closest(&name, GRPC_CODES[1..].iter().copied())
                        .map(|g| format!("did you mean \"{g}\"? "))
                        .unwrap_or_default();
                    c.err(
                        key,
                        format!("`{s}` is not a gRPC status code"),
                        format!("{suggestion}{HINT}"),
                    );
                    None
                }
            }
        }
    }
}

fn check_budget(c: &mut Checker, key: &str, b: &RawRetryBudget) -> RetryBudget {
    let d = RetryBudget::default();
    let wkey = format!("{key}.window");
    let mut window = c.duration(&wkey, b.window.as_deref(), d.window);
    if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&window) {
        c.err(
            &wkey,
            format!("a window of {} is out of range", fmt_duration(window)),
            "use 1s to 60s (default 10s): shorter lets bursts through, longer remembers an \
             outage after it ended",
        );
        window = d.window;
    }
    RetryBudget {
        percent: percent(c, &format!("{key}.percent"), b.percent, d.percent, 1000),
        min_per_second: b.min_per_second.unwrap_or(d.min_per_second),
        window,
    }
}

/// A percentage from 0 to `max`.
fn percent(c: &mut Checker, key: &str, v: Option<u32>, default: u32, max: u32) -> u32 {
    match v {
        Some(p) if p > max => {
            c.err(
                key,
                format!("{p} is above {max} percent"),
                format!("use 0 to {max} (default {default})"),
            );
            default
        }
        Some(p) => p,
        None => default,
    }
}

/// A count of at least 1.
fn at_least_one(c: &mut Checker, key: &str, v: Option<u32>, default: u32) -> u32 {
    match v {
        Some(0) => {
            c.err(
                key,
                "a threshold of 0 would never be reached",
                format!("use at least 1 (default {default})"),
            );
            default
        }
        Some(n) => n,
        None => default,
    }
}

/// `deadline` split over `parts` tries, in whole milliseconds (at least 1 ms), for hints.
fn share(deadline: Duration, parts: u32) -> Duration {
    let ms = deadline.as_millis() / u128::from(parts.max(2));
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX).max(1))
}

fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn check_name(c: &mut Checker, key: &str, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        c.err(
            key,
            format!("`{name}` is not a valid name"),
            "use letters, digits, '-' and '_' (at most 63), e.g. orders-api",
        );
    }
}

fn check_match(c: &mut Checker, key: &str, m: &RawMatch) -> RouteMatch {
    let mut out = RouteMatch::default();
    if let Some(h) = &m.host {
        match host_match(h) {
            Ok(host) => out.host = Some(host),
            Err(hint) => c.err(
                format!("{key}.host"),
                format!("`{h}` is not a host pattern"),
                hint,
            ),
        }
    }
    if let Some(p) = &m.path {
        let pkey = format!("{key}.path");
        match (&p.exact, &p.prefix) {
            // The query is not part of the path a request is matched on, so a `?` could never
            // match; `#` never reaches a server at all.
            (Some(v), None) | (None, Some(v)) if v.contains(['?', '#']) => c.err(
                &pkey,
                format!("`{v}` contains '?' or '#'; paths are matched without query or fragment"),
                format!(
                    "match the path only: \"{}\"",
                    v.split(['?', '#']).next().unwrap_or("/")
                ),
            ),
            (Some(e), None) if e.starts_with('/') => out.path = Some(PathMatch::Exact(e.clone())),
            (None, Some(pre)) if pre.starts_with('/') => {
                out.path = Some(PathMatch::Prefix(pre.clone()))
            }
            (Some(_), Some(_)) => c.err(
                &pkey,
                "both `exact` and `prefix` are set",
                "keep one: { exact: /healthz } or { prefix: /api }",
            ),
            (None, None) => c.err(
                &pkey,
                "neither `exact` nor `prefix` is set",
                "use { exact: /healthz } or { prefix: /api }",
            ),
            (Some(v), None) | (None, Some(v)) => c.err(
                &pkey,
                format!("`{v}` does not start with '/'"),
                format!("write it as \"/{}\"", v.trim_start_matches('/')),
            ),
        }
    }
    if let Some(OneOrMany::Many(list)) = &m.method {
        // An empty list reads as "no method allowed" but the model treats it as "any method";
        // refuse the ambiguity rather than guess.
        if list.is_empty() {
            c.err(
                format!("{key}.method"),
                "the method list is empty",
                "remove `method` to match every method, or list some: [GET, HEAD]",
            );
        }
    }
    if let Some(methods) = &m.method {
        let list: Vec<&String> = match methods {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v.iter().collect(),
        };
        for (i, s) in list.into_iter().enumerate() {
            let mkey = match methods {
                OneOrMany::One(_) => format!("{key}.method"),
                OneOrMany::Many(_) => format!("{key}.method[{i}]"),
            };
            let up = s.trim().to_ascii_uppercase();
            match Method::from_bytes(up.as_bytes()) {
                Ok(mth) if !up.is_empty() => out.methods.push(mth),
                _ => c.err(
                    mkey,
                    format!("`{s}` is not an HTTP method"),
                    "use GET, POST, PUT, DELETE, PATCH, HEAD, OPTIONS, ...",
                ),
            }
        }
    }
    for (name, value) in &m.headers {
        let hkey = format!("{key}.headers.{name}");
        let n = HeaderName::from_bytes(name.trim().as_bytes());
        let v = HeaderValue::from_str(value);
        match (n, v) {
            (Ok(n), Ok(v)) => out.headers.push((n, v)),
            (Err(_), _) => c.err(
                &hkey,
                format!("`{name}` is not a valid header name"),
                "use letters, digits and '-', e.g. x-canary",
            ),
            (_, Err(_)) => c.err(
                &hkey,
                "the value has characters not allowed in a header",
                "use visible ASCII characters",
            ),
        }
    }
    out.peer_identities = security::list(
        c,
        key,
        "peer_identities",
        m.peer_identities.as_deref(),
        security::identity_match,
    );
    out
}

/// Parses a host pattern: `api.example.com` or `*.example.com`, lower-cased. The error is a hint.
fn host_match(pattern: &str) -> Result<HostMatch, String> {
    let lower = pattern.trim().to_ascii_lowercase();
    if lower == "*" {
        return Err("remove `host` to match every host".into());
    }
    if let Some((host, _)) = lower.split_once('/') {
        return Err(format!(
            "a host has no path: use host: {host} and put the path under `path: {{ prefix: ... }}`"
        ));
    }
    if let Some((host, _)) = lower.rsplit_once(':') {
        return Err(format!(
            "remove the port: hosts are matched without it, e.g. `{host}`"
        ));
    }
    let (wild, rest) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    if rest.contains('*') {
        return Err("only the leftmost label may be a wildcard, as in *.example.com".into());
    }
    // Underscores are not valid in DNS host names but appear in container and compose names.
    let valid = !rest.is_empty()
        && rest.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        return Err(
            "use a host name (api.example.com) or a leftmost wildcard (*.example.com)".into(),
        );
    }
    Ok(if wild {
        HostMatch::Suffix(format!(".{rest}"))
    } else {
        HostMatch::Exact(rest.to_owned())
    })
}

/// Whether two listen addresses cannot both be bound: the same address, or the same TCP port where
/// one side is a wildcard covering the other. Port 0 asks the OS for a free port, so it never
/// collides.
fn collides(a: &Address, b: &Address) -> bool {
    match (a, b) {
        (Address::Tcp(x), Address::Tcp(y)) => {
            if x.port() != y.port() || x.port() == 0 {
                return false;
            }
            let (xi, yi) = (x.ip(), y.ip());
            // `[::]` also takes IPv4 on Linux (dual-stack, `bindv6only=0` is the default).
            let covers = |w: std::net::IpAddr, o: std::net::IpAddr| {
                w.is_unspecified() && (w.is_ipv6() || o.is_ipv4())
            };
            xi == yi || covers(xi, yi) || covers(yi, xi)
        }
        (Address::Unix(x), Address::Unix(y)) => x == y,
        _ => false,
    }
}

/// The candidate closest to `word` by edit distance, when close enough to be a typo.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .map(|c| (levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}
