//! Config tests: the default and every example parse; bad files report every error with the
//! exact line, key and a hint.

use super::*;

fn errors(text: &str) -> Vec<ConfigError> {
    match parse("t.yaml", text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e.0,
    }
}

/// The embedded default is valid and says what the README says.
#[test]
fn default_is_valid() {
    let c = default_config();
    assert_eq!(c.source, DEFAULT_SOURCE);
    assert_eq!(c.admin.address.to_string(), "127.0.0.1:7901");
    let inbound = &c.listeners[0];
    assert_eq!(
        (inbound.name.as_str(), inbound.address.to_string()),
        ("inbound", "0.0.0.0:7080".into())
    );
    assert_eq!(inbound.default_upstream.as_deref(), Some("app"));
    let outbound = &c.listeners[1];
    assert_eq!(outbound.direction, Direction::Outbound);
    assert!(outbound.forward_proxy);
    assert_eq!(c.upstreams[0].endpoints[0].to_string(), "127.0.0.1:8080");
    assert_eq!(c.drain_timeout, std::time::Duration::from_secs(30));
}

/// Every shipped example passes.
#[test]
fn examples_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            if let Err(e) = load_file(&path) {
                panic!("{}:\n{e}", path.display());
            }
            n += 1;
        }
    }
    assert!(n >= 5, "expected the examples, found {n}");
}

/// An unknown key is reported at its line with the closest known key.
#[test]
fn unknown_key_has_line_and_suggestion() {
    let e = errors("listeners:\n  inbound:\n    adress: 127.0.0.1:1\n    upstream: app\nupstreams:\n  app: {}\n");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].line, Some(3));
    assert_eq!(e[0].key, "listeners.inbound.adress");
    assert!(e[0].hint.contains("did you mean \"address\"?"), "{}", e[0]);
}

/// Three independent semantic errors are all reported, each at its own line.
#[test]
fn reports_every_semantic_error() {
    let text = "\
listeners:
  inbound:
    address: 127.0.0.1:7080
    upstream: ap
    routes:
      - match: { path: { prefix: api } }
        upstream: app
upstreams:
  app:
    endpoints: [127.0.0.1:8080]
    connect_timeout: soon
";
    let e = errors(text);
    let got: Vec<(Option<usize>, &str)> = e.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert_eq!(
        got,
        [
            (Some(4), "listeners.inbound.upstream"),
            (Some(6), "listeners.inbound.routes[0].match.path"),
            (Some(11), "upstreams.app.connect_timeout"),
        ]
    );
    assert!(e[0].hint.contains("did you mean \"app\"?"), "{}", e[0]);
    assert!(e[1].hint.contains("\"/api\""), "{}", e[1]);
    assert!(e[2].hint.contains("\"2s\""), "{}", e[2]);
    let shown = ConfigErrors(e).to_string();
    assert!(
        shown.starts_with("t.yaml:4: listeners.inbound.upstream: unknown upstream `ap`\n  hint: "),
        "{shown}"
    );
}

/// YAML syntax errors carry a line.
#[test]
fn syntax_error_has_line() {
    let e = errors("listeners:\n  inbound:\n    address: [\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].line.is_some(), "{}", e[0]);
}

/// An error at the end of input points at the last line, not one past it (fuzz finding).
#[test]
fn end_of_input_error_stays_in_the_file() {
    let e = errors("?\n!");
    assert_eq!(e[0].line, Some(2), "{}", e[0]);
}

/// Listener rules: shared addresses, tcp listeners, listeners that would 404 everything.
#[test]
fn listener_rules() {
    let text = "\
admin: { address: 127.0.0.1:9000 }
listeners:
  a: { address: 127.0.0.1:9000, upstream: u }
  db: { address: 127.0.0.1:9001, protocol: tcp, forward_proxy: true }
  nothing: { address: localhost:9002 }
upstreams:
  u: { endpoints: [127.0.0.1:1] }
";
    let e = errors(text);
    let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "listeners.a.address",
            "listeners.db",
            "listeners.db.forward_proxy",
            "listeners.nothing.address",
            "listeners.nothing",
        ]
    );
    assert!(e[0].message.contains("already used by admin"), "{}", e[0]);
    assert_eq!(e[0].line, Some(3));
}

/// Matchers translate to their typed form.
#[test]
fn matchers_translate() {
    let text = "\
listeners:
  in:
    address: 127.0.0.1:7080
    routes:
      - name: wild
        match: { host: \"*.Example.com\", path: { exact: /x }, method: [get, POST], headers: { X-Canary: \"1\" } }
        upstream: u
        timeout: 250ms
upstreams:
  u: { endpoints: [\"unix:/tmp/u.sock\", \"localhost:80\"], protocol: http2 }
";
    let c = parse("t.yaml", text).unwrap();
    let r = &c.listeners[0].routes[0];
    assert_eq!(
        r.matcher.host,
        Some(HostMatch::Suffix(".example.com".into()))
    );
    assert_eq!(r.matcher.path, Some(PathMatch::Exact("/x".into())));
    assert_eq!(r.matcher.methods, [http::Method::GET, http::Method::POST]);
    assert_eq!(r.matcher.headers[0].0, "x-canary");
    assert_eq!(r.timeout, Some(std::time::Duration::from_millis(250)));
    assert_eq!(
        c.upstreams[0].endpoints[0],
        Address::Unix("/tmp/u.sock".into())
    );
    assert_eq!(
        c.upstreams[0].endpoints[1],
        Address::Host {
            host: "localhost".into(),
            port: 80
        }
    );
    assert_eq!(c.upstreams[0].protocol, UpstreamProtocol::Http2);
    let bad = errors(&text.replace("*.Example.com", "a.*.com"));
    assert_eq!(bad[0].key, "listeners.in.routes[0].match.host");
    assert_eq!(bad[0].line, Some(6));
}

/// The schema is JSON with the documented properties.
#[test]
fn schema_describes_the_file() {
    let s = json_schema();
    let v: serde_json::Value = serde_json::from_str(&s).unwrap();
    assert!(v["properties"]["listeners"].is_object(), "{s}");
    assert!(v["properties"]["upstreams"].is_object(), "{s}");
    assert!(
        s.contains("How long in-flight requests may take to finish"),
        "{s}"
    );
}
