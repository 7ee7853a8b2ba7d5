//! Policies parsed from YAML, as a user writes them, and decided for hand-built requests.

use http::HeaderValue;
use tandem_config::parse;

use super::*;

fn policy(rules: &str) -> (AuthzPolicy, Metrics) {
    let text = format!(
        "listeners:\n  inbound:\n    address: 127.0.0.1:7080\n    upstream: app\n    authorization:\n      rules:\n{rules}upstreams:\n  app: {{ endpoints: [127.0.0.1:8080] }}\n"
    );
    let cfg = parse("t.yaml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let metrics = Metrics::new();
    let p = AuthzPolicy::new(
        "inbound",
        cfg.listeners[0].authorization.as_ref().unwrap(),
        &metrics,
    );
    (p, metrics)
}

struct Req {
    identity: Option<PeerIdentity>,
    source: Option<IpAddr>,
    method: Method,
    path: &'static str,
    headers: HeaderMap,
}

fn req(path: &'static str) -> Req {
    Req {
        identity: None,
        source: Some("192.0.2.7".parse().unwrap()),
        method: Method::GET,
        path,
        headers: HeaderMap::new(),
    }
}

fn decide<'a>(p: &'a AuthzPolicy, r: &Req) -> Decision<'a> {
    p.decide(&AuthzRequest {
        route: "r",
        identity: r.identity.as_ref(),
        source: r.source,
        method: &r.method,
        path: r.path,
        headers: &r.headers,
    })
}

/// Deny rules win over allow rules whatever their order; no allow match is a default deny.
#[test]
fn deny_first_then_allow_then_default() {
    let (p, _) = policy(
        "        - { action: allow, name: api, paths: [\"/api/*\"] }\n        - { action: deny, name: no-admin, paths: [\"/api/admin/*\"] }\n",
    );
    assert_eq!(decide(&p, &req("/api/users")), Decision::Allowed("api"));
    assert_eq!(decide(&p, &req("/api")), Decision::Allowed("api"));
    assert_eq!(decide(&p, &req("/api/admin")), Decision::Denied("no-admin"));
    assert_eq!(
        decide(&p, &req("/api/admin/x")),
        Decision::Denied("no-admin")
    );
    assert_eq!(
        decide(&p, &req("/api/administrator")),
        Decision::Allowed("api")
    );
    assert_eq!(decide(&p, &req("/other")), Decision::Denied("default"));
    assert_eq!(decide(&p, &req("/apix")), Decision::Denied("default"));
}

/// Path forms: exact, segment prefix, plain prefix, everything.
#[test]
fn path_patterns() {
    let (p, _) = policy(
        "        - { action: allow, name: exact, paths: [/health] }\n        - { action: allow, name: plain, paths: [\"/img*\"] }\n",
    );
    assert_eq!(decide(&p, &req("/health")), Decision::Allowed("exact"));
    assert_eq!(decide(&p, &req("/health/")), Decision::Denied("default"));
    assert_eq!(decide(&p, &req("/imgs/a")), Decision::Allowed("plain"));
    assert_eq!(decide(&p, &req("/img")), Decision::Allowed("plain"));
    assert_eq!(decide(&p, &req("/im")), Decision::Denied("default"));
    let (p, _) = policy("        - { action: allow, paths: [\"/*\"] }\n");
    assert_eq!(decide(&p, &req("/")), Decision::Allowed("rules[0]"));
    assert_eq!(decide(&p, &req("/x/y")), Decision::Allowed("rules[0]"));
}

/// Identity conditions: exact, prefix, any; a connection without identity matches none.
#[test]
fn identities() {
    let (p, _) = policy(
        "        - { action: deny, name: intruder, identities: [\"spiffe://prod/ns/shop/sa/intruder\"] }\n        - { action: allow, name: shop, identities: [\"spiffe://prod/ns/shop/*\"] }\n        - { action: allow, name: any-mtls, identities: [\"*\"], methods: [GET] }\n",
    );
    let mut r = req("/x");
    r.method = Method::POST;
    assert_eq!(decide(&p, &r), Decision::Denied("default"));
    r.identity = Some(PeerIdentity::new("spiffe://prod/ns/shop/sa/cart"));
    assert_eq!(decide(&p, &r), Decision::Allowed("shop"));
    r.identity = Some(PeerIdentity::new("spiffe://prod/ns/shop/sa/intruder"));
    assert_eq!(decide(&p, &r), Decision::Denied("intruder"));
    r.identity = Some(PeerIdentity::new("spiffe://prod/ns/other/sa/x"));
    assert_eq!(decide(&p, &r), Decision::Denied("default"));
    r.method = Method::GET;
    assert_eq!(decide(&p, &r), Decision::Allowed("any-mtls"));
}

/// Source networks, methods and headers are ANDed within a rule; a Unix socket client (no
/// address) matches no network.
#[test]
fn sources_methods_headers() {
    let (p, _) = policy(
        "        - action: allow\n          name: office-writes\n          source_cidrs: [10.0.0.0/8, \"::1\"]\n          methods: [post, PUT]\n          headers: { x-tenant: acme }\n        - { action: allow, name: reads, methods: [GET, HEAD] }\n",
    );
    let mut r = req("/x");
    r.method = Method::POST;
    r.source = Some("10.1.2.3".parse().unwrap());
    assert_eq!(
        decide(&p, &r),
        Decision::Denied("default"),
        "header missing"
    );
    r.headers
        .insert("x-tenant", HeaderValue::from_static("acme"));
    assert_eq!(decide(&p, &r), Decision::Allowed("office-writes"));
    r.source = Some("::ffff:10.9.9.9".parse().unwrap());
    assert_eq!(
        decide(&p, &r),
        Decision::Allowed("office-writes"),
        "mapped v4"
    );
    r.source = Some("::1".parse().unwrap());
    assert_eq!(decide(&p, &r), Decision::Allowed("office-writes"));
    r.source = Some("11.0.0.1".parse().unwrap());
    assert_eq!(decide(&p, &r), Decision::Denied("default"));
    r.source = None;
    assert_eq!(decide(&p, &r), Decision::Denied("default"));
    r.method = Method::HEAD;
    assert_eq!(decide(&p, &r), Decision::Allowed("reads"));
}

/// `authorize` answers 403 `forbidden` naming the rule, and counts denials per rule.
#[test]
fn authorize_counts_and_answers_403() {
    let (p, metrics) = policy(
        "        - { action: deny, name: no-admin, paths: [\"/admin/*\"] }\n        - { action: allow }\n",
    );
    let r = req("/admin");
    let ar = AuthzRequest {
        route: "r",
        identity: None,
        source: r.source,
        method: &r.method,
        path: r.path,
        headers: &r.headers,
    };
    let err = p.authorize(&ar).unwrap_err();
    let res = err.to_response();
    assert_eq!(res.status(), 403);
    assert_eq!(res.headers()["tandem-error"], "forbidden");
    assert!(
        err.message().contains("rule `no-admin`"),
        "{}",
        err.message()
    );
    p.authorize(&ar).unwrap_err();
    let ok = AuthzRequest { path: "/x", ..ar };
    p.authorize(&ok).unwrap();
    let text = metrics.encode();
    assert!(
        text.contains("tandem_authz_denied_total{listener=\"inbound\",rule=\"no-admin\"} 2"),
        "{text}"
    );
}

/// On a tcp listener the policy decides per connection on identity and source: deny rules
/// first, then allow rules, else the default deny; every denial is counted.
#[test]
fn connections_are_decided_on_identity_and_source() {
    let text = "listeners:\n  db:\n    address: 127.0.0.1:7080\n    protocol: tcp\n    upstream: app\n    authorization:\n      rules:\n        - { action: allow, name: shop, identities: [\"spiffe://prod/ns/shop/*\"] }\n        - { action: deny, name: bad-net, source_cidrs: [192.0.2.0/24] }\n        - { action: allow, name: local, source_cidrs: [127.0.0.0/8] }\nupstreams:\n  app: { endpoints: [127.0.0.1:8080] }\n";
    let cfg = parse("t.yaml", text).unwrap_or_else(|e| panic!("{e}"));
    let metrics = Metrics::new();
    let p = AuthzPolicy::new(
        "db",
        cfg.listeners[0].authorization.as_ref().unwrap(),
        &metrics,
    );
    let shop = PeerIdentity::new("spiffe://prod/ns/shop/sa/cart");
    let other = PeerIdentity::new("spiffe://prod/ns/web/sa/ui");
    let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
    assert!(p.authorize_connection(Some(&shop), ip("10.1.2.3")).is_ok());
    assert!(p.authorize_connection(None, ip("127.0.0.1")).is_ok());
    // The deny rule wins over the identity allow, whatever the order in the file.
    let e = p
        .authorize_connection(Some(&shop), ip("192.0.2.9"))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Forbidden);
    assert!(e.to_string().contains("bad-net"), "{e}");
    let e = p
        .authorize_connection(Some(&other), ip("10.1.2.3"))
        .unwrap_err();
    assert!(e.to_string().contains("default deny"), "{e}");
    assert!(p.authorize_connection(None, None).is_err());
    let text = metrics.encode();
    assert!(
        text.contains("tandem_authz_denied_total{listener=\"db\",rule=\"bad-net\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("tandem_authz_denied_total{listener=\"db\",rule=\"default\"} 2"),
        "{text}"
    );
}
