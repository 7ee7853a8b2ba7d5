//! `authorization` and `jwt`: every key parses, and each mistake is reported at its line with a
//! fix.

use std::time::Duration;

use super::errors;
use crate::*;

const GOOD: &str = "\
listeners:
  inbound:
    address: 127.0.0.1:7080
    upstream: app
    authorization:
      rules:
        - name: no-admin
          action: deny
          paths: [\"/admin/*\", \"/debug*\"]
        - action: allow
          identities: [\"spiffe://prod/ns/shop/*\", \"*\", \"spiffe://prod/ns/a/sa/b\"]
          source_cidrs: [10.0.0.0/8, \"::1\", 192.0.2.7]
          methods: [get, POST]
          headers: { x-tenant: acme }
    routes:
      - name: api
        match: { path: { prefix: /api } }
        upstream: app
        jwt:
          issuer: https://issuer.test
          audiences: [orders]
          jwks: { url: \"http://127.0.0.1:9/jwks.json\", refresh: 1m, min_refresh_interval: 2s }
          algorithms: [RS256, ES256, EdDSA, HS256]
          leeway: 0s
          forward_claims: { sub: X-User, email: x-email }
          hs256_secret_file: /etc/tandem/hs256
upstreams:
  app: { endpoints: [127.0.0.1:8080] }
";

/// Every key of both sections lands in the model.
#[test]
fn keys_parse() {
    let c = parse("t.yaml", GOOD).unwrap();
    let a = c.listeners[0].authorization.as_ref().unwrap();
    assert_eq!(a.rules.len(), 2);
    assert_eq!(a.rules[0].name, "no-admin");
    assert_eq!(a.rules[0].action, AuthzAction::Deny);
    assert_eq!(
        a.rules[0].paths,
        [
            AuthzPath::Segments("/admin".into()),
            AuthzPath::Prefix("/debug".into())
        ]
    );
    let allow = &a.rules[1];
    assert_eq!(allow.name, "rules[1]");
    assert_eq!(
        allow.identities,
        [
            IdentityMatch::Prefix("spiffe://prod/ns/shop/".into()),
            IdentityMatch::Any,
            IdentityMatch::Exact("spiffe://prod/ns/a/sa/b".into())
        ]
    );
    assert_eq!(allow.source_cidrs.len(), 3);
    assert_eq!(allow.source_cidrs[1].prefix, 128);
    assert_eq!(allow.methods, [http::Method::GET, http::Method::POST]);
    assert_eq!(allow.headers[0].0, "x-tenant");

    let j = c.listeners[0].routes[0].jwt.as_ref().unwrap();
    assert_eq!(j.issuer, "https://issuer.test");
    assert_eq!(j.algorithms.len(), 4);
    assert_eq!(j.leeway, Duration::ZERO);
    assert_eq!(
        j.forward_claims,
        [
            ("sub".to_owned(), "x-user".to_owned()),
            ("email".to_owned(), "x-email".to_owned())
        ]
    );
    let jwks = j.jwks.as_ref().unwrap();
    assert_eq!(
        jwks.source,
        JwksSource::Url("http://127.0.0.1:9/jwks.json".into())
    );
    assert_eq!(jwks.refresh, Duration::from_secs(60));
    assert_eq!(jwks.min_refresh_interval, Duration::from_secs(2));
}

/// Defaults: asymmetric algorithms only, 60 s leeway, 5 min refresh.
#[test]
fn jwt_defaults() {
    let text = GOOD
        .replace("          algorithms: [RS256, ES256, EdDSA, HS256]\n", "")
        .replace("          leeway: 0s\n", "")
        .replace("          hs256_secret_file: /etc/tandem/hs256\n", "")
        .replace(", refresh: 1m, min_refresh_interval: 2s", "");
    let c = parse("t.yaml", &text).unwrap();
    let j = c.listeners[0].routes[0].jwt.as_ref().unwrap();
    assert_eq!(
        j.algorithms,
        [
            JwtAlgorithm::RS256,
            JwtAlgorithm::ES256,
            JwtAlgorithm::EdDSA
        ]
    );
    assert_eq!(j.leeway, Duration::from_secs(60));
    let jwks = j.jwks.as_ref().unwrap();
    assert_eq!(jwks.refresh, Duration::from_secs(300));
    assert_eq!(jwks.min_refresh_interval, Duration::from_secs(10));
}

fn one(text: &str) -> ConfigError {
    let e = errors(text);
    assert_eq!(e.len(), 1, "{e:?}");
    e.into_iter().next().unwrap()
}

/// Authorization mistakes, each at its line with a fix.
#[test]
fn authorization_mistakes() {
    let e = one(&GOOD.replace("\"/admin/*\"", "\"/x/../admin\""));
    assert_eq!(
        (e.line, e.key.as_str()),
        (Some(9), "listeners.inbound.authorization.rules[0].paths[0]")
    );
    assert!(e.hint.contains("normalized"), "{e}");
    let e = one(&GOOD.replace("\"/admin/*\"", "\"/%61dmin\""));
    assert!(e.hint.contains("decoded"), "{e}");
    let e = one(&GOOD.replace("\"/admin/*\"", "\"/ad*min\""));
    assert!(e.hint.contains("only end"), "{e}");
    let e = one(&GOOD.replace("10.0.0.0/8", "10.0.0.1/8"));
    assert_eq!(
        e.key,
        "listeners.inbound.authorization.rules[1].source_cidrs[0]"
    );
    assert!(e.hint.contains("10.0.0.0/8"), "{e}");
    let e = one(&GOOD.replace("methods: [get, POST]", "methods: []"));
    assert_eq!(e.key, "listeners.inbound.authorization.rules[1].methods");
    let e = one(&GOOD.replace("\"spiffe://prod/ns/shop/*\"", "\"spiffe://*/x\""));
    assert!(e.hint.contains("only end"), "{e}");
    let e = one(&GOOD.replace("- action: allow", "- action: deny"));
    assert_eq!(e.key, "listeners.inbound.authorization.rules");
    assert!(e.message.contains("denies every request"), "{e}");
    let e = one(&GOOD.replace("name: no-admin", "name: default"));
    assert_eq!(e.key, "listeners.inbound.authorization.rules[0].name");
    let e = one(&GOOD.replace("action: deny", "action: block"));
    assert_eq!(e.line, Some(8));
    let e = one(&GOOD.replace("      rules:\n        - name: no-admin\n          action: deny\n          paths: [\"/admin/*\", \"/debug*\"]\n        - action: allow\n          identities: [\"spiffe://prod/ns/shop/*\", \"*\", \"spiffe://prod/ns/a/sa/b\"]\n          source_cidrs: [10.0.0.0/8, \"::1\", 192.0.2.7]\n          methods: [get, POST]\n          headers: { x-tenant: acme }\n", "      rules: []\n"));
    assert!(e.message.contains("without rules"), "{e}");
}

/// JWT mistakes, each at its key with a fix.
#[test]
fn jwt_mistakes() {
    let key = "listeners.inbound.routes[0].jwt";
    let e = one(&GOOD.replace("HS256]", "HS256, none]"));
    assert_eq!(e.key, format!("{key}.algorithms[4]"));
    assert!(e.hint.contains("never accepted"), "{e}");
    let e = one(&GOOD.replace("          hs256_secret_file: /etc/tandem/hs256\n", ""));
    assert!(e.message.contains("HS256 needs"), "{e}");
    let e = one(&GOOD.replace(
        "algorithms: [RS256, ES256, EdDSA, HS256]",
        "algorithms: [RS256]",
    ));
    assert_eq!(e.key, format!("{key}.hs256_secret_file"));
    let https = GOOD.replace(
        "url: \"http://127.0.0.1:9/jwks.json\"",
        "url: \"https://idp.test/jwks.json\", ca: /etc/idp-ca.pem",
    );
    assert_ne!(https, GOOD);
    let c = parse("t.yaml", &https).unwrap();
    let jwks = c.listeners[0].routes[0]
        .jwt
        .as_ref()
        .and_then(|j| j.jwks.as_ref())
        .unwrap();
    assert_eq!(
        jwks.ca.as_deref(),
        Some(std::path::Path::new("/etc/idp-ca.pem"))
    );
    let e = one(&GOOD.replace("http://127.0.0.1:9/jwks.json", "ftp://idp.test/jwks.json"));
    assert_eq!(e.key, format!("{key}.jwks.url"));
    let e = one(&GOOD.replace(
        "url: \"http://127.0.0.1:9/jwks.json\"",
        "url: \"http://127.0.0.1:9/jwks.json\", ca: /etc/idp-ca.pem",
    ));
    assert_eq!(e.key, format!("{key}.jwks.ca"));
    let e = one(&GOOD.replace("audiences: [orders]", "audiences: []"));
    assert_eq!(e.key, format!("{key}.audiences"));
    let e = one(&GOOD.replace("sub: X-User", "sub: authorization"));
    assert_eq!(e.key, format!("{key}.forward_claims.sub"));
    let e = one(&GOOD.replace("email: x-email", "email: x-user"));
    assert!(e.message.contains("two claims"), "{e}");
    let e = one(&GOOD.replace(
        "jwks: { url: \"http://127.0.0.1:9/jwks.json\", refresh: 1m, min_refresh_interval: 2s }",
        "jwks: { file: /x, url: \"http://127.0.0.1:9/\" }",
    ));
    assert!(e.message.contains("both"), "{e}");
    let e = one(&GOOD.replace("RS256, ES256, EdDSA, HS256", "RS265, HS256"));
    assert!(e.hint.contains("did you mean \"RS256\""), "{e}");
    let e = one(&GOOD.replace("leeway: 0s", "leeway: soon"));
    assert_eq!(e.key, format!("{key}.leeway"));
}

/// Paths are normalized on inbound listeners and under a policy by default, not on outbound
/// ones (an app's own request, e.g. a signed one, passes as sent); off under path rules is
/// refused.
#[test]
fn normalize_path_defaults() {
    let c = parse(
        "t.yaml",
        "listeners:\n  in: { address: 127.0.0.1:7080, upstream: app }\n  out: { address: 127.0.0.1:7001, upstream: app, direction: outbound }\n  out2: { address: 127.0.0.1:7002, upstream: app, direction: outbound, normalize_path: true }\n  in2: { address: 127.0.0.1:7081, upstream: app, normalize_path: false }\nupstreams:\n  app: { endpoints: [127.0.0.1:8080] }\n",
    )
    .unwrap();
    let n: Vec<bool> = c.listeners.iter().map(|l| l.normalize_path).collect();
    assert_eq!(n, [true, false, true, false]);
    let e = one(&GOOD.replace(
        "    upstream: app\n    authorization:",
        "    upstream: app\n    normalize_path: false\n    authorization:",
    ));
    assert_eq!(e.key, "listeners.inbound.normalize_path");
    assert_eq!(e.line, Some(5));
}

/// A tcp listener's policy may match identities and source networks, nothing per request.
#[test]
fn tcp_policies_match_connections_only() {
    let tcp = |rule: &str| {
        format!("listeners:\n  db:\n    address: 127.0.0.1:7080\n    protocol: tcp\n    upstream: app\n    authorization:\n      rules:\n        - {rule}\nupstreams:\n  app: {{ endpoints: [127.0.0.1:8080] }}\n")
    };
    let c = parse(
        "t.yaml",
        &tcp("{ action: allow, identities: [\"spiffe://p/*\"], source_cidrs: [10.0.0.0/8] }"),
    )
    .unwrap();
    assert_eq!(
        c.listeners[0].authorization.as_ref().unwrap().rules.len(),
        1
    );
    for (field, rule) in [
        ("methods", "{ action: allow, methods: [GET] }"),
        ("paths", "{ action: allow, paths: [/x] }"),
        ("headers", "{ action: allow, headers: { x-a: b } }"),
    ] {
        let e = one(&tcp(rule));
        assert_eq!(
            e.key,
            format!("listeners.db.authorization.rules[0].{field}"),
            "{e}"
        );
        assert!(e.message.contains("whole connections"), "{e}");
        assert!(e.hint.contains("identities"), "{e}");
    }
}

/// `match.peer_identities` takes identity patterns; a bad one is reported at its index.
#[test]
fn route_peer_identities() {
    let text = |ids: &str| {
        format!("listeners:\n  in:\n    address: 127.0.0.1:7080\n    routes:\n      - match: {{ peer_identities: {ids} }}\n        upstream: app\n      - upstream: app\nupstreams:\n  app: {{ endpoints: [127.0.0.1:8080] }}\n")
    };
    let c = parse("t.yaml", &text("[\"spiffe://p/ns/a/*\", \"*\"]")).unwrap();
    assert_eq!(
        c.listeners[0].routes[0].matcher.peer_identities,
        [
            IdentityMatch::Prefix("spiffe://p/ns/a/".into()),
            IdentityMatch::Any
        ]
    );
    let e = one(&text("[\"spiffe://p/*/a\"]"));
    assert_eq!(
        e.key, "listeners.in.routes[0].match.peer_identities[0]",
        "{e}"
    );
    let e = one(&text("[]"));
    assert_eq!(e.key, "listeners.in.routes[0].match.peer_identities", "{e}");
}
