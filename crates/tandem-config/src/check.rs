//! `check()`: raw -> typed [`Config`], collecting every error with its key path and a fix.
//!
//! Pure: no files, sockets or clocks. Lines are attached by the caller from the key path.

use std::collections::HashSet;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};

use crate::model::*;
use crate::raw::*;

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
    let rl = raw.limits.unwrap_or_default();
    let positive =
        |c: &mut Checker, key: &str, v: Option<usize>, default: usize, min: usize| -> usize {
            match v {
                Some(v) if v < min => {
                    c.err(
                        key,
                        format!("{v} is too small"),
                        format!("use at least {min} (default {default})"),
                    );
                    default
                }
                Some(v) => v,
                None => default,
            }
        };
    let limits = Limits {
        max_connections: positive(
            &mut c,
            "limits.max_connections",
            rl.max_connections,
            10_000,
            1,
        ),
        max_header_bytes: positive(
            &mut c,
            "limits.max_header_bytes",
            rl.max_header_bytes,
            65_536,
            1024,
        ),
        max_headers: positive(&mut c, "limits.max_headers", rl.max_headers, 100, 1),
        header_read_timeout: c.duration(
            "limits.header_read_timeout",
            rl.header_read_timeout.as_deref(),
            Duration::from_secs(10),
        ),
        tcp_idle_timeout: c.duration(
            "limits.tcp_idle_timeout",
            rl.tcp_idle_timeout.as_deref(),
            Duration::from_secs(3600),
        ),
    };

    // Upstreams.
    let mut upstreams = Vec::with_capacity(raw.upstreams.len());
    for (name, u) in &raw.upstreams {
        let key = format!("upstreams.{name}");
        check_name(&mut c, &key, name);
        let mut endpoints = Vec::with_capacity(u.endpoints.len());
        let mut seen = HashSet::new();
        for (i, e) in u.endpoints.iter().enumerate() {
            match e.parse::<Address>() {
                Ok(a) => {
                    if !seen.insert(a.clone()) {
                        c.err(
                            format!("{key}.endpoints[{i}]"),
                            format!("endpoint `{e}` is listed twice"),
                            "remove the duplicate",
                        );
                    }
                    endpoints.push(UpstreamEndpoint {
                        address: a,
                        weight: 1,
                    });
                }
                Err(msg) => c.err(
                    format!("{key}.endpoints[{i}]"),
                    msg,
                    "use IP:port, host:port or unix:/path.sock",
                ),
            }
        }
        let pool = u.pool.as_ref();
        upstreams.push(Upstream {
            name: name.clone(),
            endpoints,
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
            request_timeout: c.duration(
                &format!("{key}.request_timeout"),
                u.request_timeout.as_deref(),
                Duration::from_secs(15),
            ),
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
            balancer: Balancer::P2c,
            health_check: None,
            circuit_breaker: CircuitBreaker::default(),
            limits: UpstreamLimits::default(),
            retry: Retry::default(),
            retry_budget: RetryBudget::default(),
            stream_idle_timeout: DEFAULT_STREAM_IDLE_TIMEOUT,
        });
    }

    // Listeners.
    if raw.listeners.is_empty() {
        c.err(
            "listeners",
            "no listeners",
            "add one, e.g. listeners: { inbound: { address: 0.0.0.0:7080, upstream: app } }",
        );
    }
    // Addresses already taken, with who took them, to catch two sockets that cannot both bind.
    let mut taken: Vec<(Address, String)> = vec![(admin.clone(), "admin".into())];
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
            routes.push(Route {
                name: rname,
                matcher,
                upstream: r.upstream.clone(),
                timeout,
                rate_limit,
                retry: None,
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
        });
    }

    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    Ok(Config {
        source: source.to_owned(),
        admin: Admin { address: admin },
        drain_timeout,
        limits,
        app,
        listeners,
        upstreams,
    })
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
        Some(other) => match other.strip_prefix("header:").map(str::trim) {
            Some(name) if HeaderName::from_bytes(name.as_bytes()).is_ok() && !name.is_empty() => {
                RateLimitKey::Header(name.to_ascii_lowercase())
            }
            _ => {
                c.err(
                    format!("{key}.key"),
                    format!("`{other}` is not a rate limit key"),
                    "use `none`, `client_ip` or `header:NAME` (e.g. header:x-api-key)",
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
