//! The TLS sections: defaults, relative paths, and each mistake reported at its line with a fix.

use std::path::PathBuf;
use std::time::Duration;

use super::errors;
use crate::*;

const IDENTITY: &str = "\
tls:
  cert: certs/cert.pem
  key: /abs/key.pem
  trust_bundle: certs/ca.pem
";

/// Paths resolve against the config file's directory (absolute ones stay); a listener's
/// `tls: {}` means mTLS when there is a trust bundle; upstream TLS presents the workload cert.
#[test]
fn tls_defaults_and_paths() {
    let text = format!(
        "{IDENTITY}listeners:
  inbound: {{ address: 127.0.0.1:7080, upstream: app, tls: {{}} }}
upstreams:
  app:
    endpoints: [127.0.0.1:8080]
    tls: {{ identities: [spiffe://d.test/ns/a/sa/b] }}
"
    );
    let c = parse("/etc/tandem/t.yaml", &text).unwrap();
    let tls = c.tls.unwrap();
    assert_eq!(tls.cert, PathBuf::from("/etc/tandem/certs/cert.pem"));
    assert_eq!(tls.key, PathBuf::from("/abs/key.pem"));
    assert_eq!(
        tls.trust_bundle,
        Some(PathBuf::from("/etc/tandem/certs/ca.pem"))
    );
    assert_eq!(tls.reload_interval, Duration::from_secs(5));
    let l = c.listeners[0].tls.clone().unwrap();
    assert_eq!(l.client_auth, ClientAuth::Required);
    assert_eq!(l.handshake_timeout, Duration::from_secs(10));
    let u = c.upstreams[0].tls.clone().unwrap();
    assert_eq!(u.identities, ["spiffe://d.test/ns/a/sa/b"]);
    assert!(u.client_cert);
    assert!(parse("t.yaml", &text.replace("tls: {}", ""))
        .unwrap()
        .listeners[0]
        .tls
        .is_none());
}

/// Without a trust bundle a TLS listener defaults to server-only TLS, and asking for client
/// certificates is an error at `client_auth` naming the missing key.
#[test]
fn client_auth_needs_a_trust_bundle() {
    let base = "tls: { cert: c.pem, key: k.pem }
listeners:
  inbound:
    address: 127.0.0.1:7080
    upstream: app
    tls: { client_auth: CA }
upstreams:
  app: { endpoints: [127.0.0.1:8080] }
";
    let c = parse("t.yaml", &base.replace("{ client_auth: CA }", "{}")).unwrap();
    assert_eq!(
        c.listeners[0].tls.clone().unwrap().client_auth,
        ClientAuth::None
    );
    let e = errors(&base.replace("CA", "required"));
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].key, "listeners.inbound.tls.client_auth");
    assert_eq!(e[0].line, Some(6));
    assert!(e[0].hint.contains("trust_bundle"), "{}", e[0].hint);
}

/// TLS anywhere without the top-level identity names the section and says what to add.
#[test]
fn tls_needs_the_identity() {
    let e = errors(
        "listeners:
  inbound: { address: 127.0.0.1:7080, upstream: app, tls: {} }
upstreams:
  app:
    endpoints: [127.0.0.1:8080]
    tls: { identities: [spiffe://d/x] }
",
    );
    let keys: Vec<_> = e.iter().map(|e| (e.key.as_str(), e.line)).collect();
    assert_eq!(
        keys,
        [
            ("listeners.inbound.tls", Some(2)),
            ("upstreams.app.tls", Some(6))
        ]
    );
    assert!(e.iter().all(|e| e.hint.contains("tandem certs issue")));
}

/// Upstream identities must be SPIFFE IDs or DNS names; IP endpoints need something to verify.
#[test]
fn upstream_identity_mistakes() {
    let text = |tls: &str| {
        format!(
            "{IDENTITY}listeners:
  outbound: {{ address: 127.0.0.1:7001, upstream: b }}
upstreams:
  b:
    endpoints: [127.0.0.1:8443]
    tls: {tls}
"
        )
    };
    let e = errors(&text(
        "{ identities: [spiffe://D/ns/x, \"spiffe://d//x\", \"http://x/y\"] }",
    ));
    let keys: Vec<_> = e.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "upstreams.b.tls.identities[0]",
            "upstreams.b.tls.identities[1]",
            "upstreams.b.tls.identities[2]"
        ]
    );
    assert!(e[0].message.contains("trust domain"), "{}", e[0].message);

    let e = errors(&text("{}"));
    assert_eq!(e[0].key, "upstreams.b.tls");
    assert!(e[0].hint.contains("identities") && e[0].hint.contains("server_name"));
    let e = errors(&text("{ identities: [] }"));
    assert_eq!(e[0].key, "upstreams.b.tls.identities");

    let c = parse(
        "t.yaml",
        &text("{ server_name: b.internal, client_cert: false }"),
    )
    .unwrap();
    let u = c.upstreams[0].tls.clone().unwrap();
    assert_eq!(u.server_name.as_deref(), Some("b.internal"));
    assert!(u.identities.is_empty() && !u.client_cert);
    // A host endpoint is its own name to verify.
    assert!(parse(
        "t.yaml",
        &text("{}").replace("127.0.0.1:8443", "b.internal:8443")
    )
    .is_ok());
}

/// A typo in a TLS key is caught like any other, with a suggestion.
#[test]
fn tls_unknown_key() {
    let e = errors(&format!(
        "{}listeners:
  inbound: {{ address: 127.0.0.1:7080, upstream: app }}
upstreams:
  app: {{ endpoints: [127.0.0.1:8080] }}
",
        IDENTITY.replace("trust_bundle", "trust_bundel")
    ));
    assert_eq!(e[0].line, Some(4));
    assert!(e[0].hint.contains("trust_bundle"), "{}", e[0].hint);
}
