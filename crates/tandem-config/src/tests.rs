//! Config tests: the default and every example parse; bad files report every error with the
//! exact line, key and a hint.

use std::time::Duration;

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
    assert_eq!(c.upstreams[0].endpoints[0].address.to_string(), "127.0.0.1:8080");
    assert_eq!(c.drain_timeout, std::time::Duration::from_secs(30));
    // Idle upstream connections close before a typical app's 5 s keep-alive does.
    assert_eq!(c.upstreams[0].pool.idle_timeout, Duration::from_secs(4));
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
        c.upstreams[0].endpoints[0].address,
        Address::Unix("/tmp/u.sock".into())
    );
    assert_eq!(
        c.upstreams[0].endpoints[1].address,
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

/// The shipped `examples/default.yaml` is the embedded default, byte for byte.
#[test]
fn default_example_is_the_embedded_default() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/default.yaml");
    assert_eq!(std::fs::read_to_string(path).unwrap(), DEFAULT_CONFIG);
}

/// A listener (or upstream) name given twice is an error at the second one, not a silent overwrite.
#[test]
fn duplicate_names_are_reported() {
    let e = errors(
        "listeners:\n  a:\n    address: 127.0.0.1:1\n    upstream: u\n  a:\n    address: 127.0.0.1:2\n    upstream: u\nupstreams:\n  u: {}\n",
    );
    assert_eq!(e.len(), 1);
    assert_eq!((e[0].line, e[0].key.as_str()), (Some(5), "listeners.a"));
    assert!(e[0].message.contains("given twice"), "{}", e[0]);
    let e = errors("listeners:\n  a:\n    address: 127.0.0.1:1\n    upstream: u\n    upstream: u\nupstreams:\n  u: {}\n");
    assert_eq!(
        (e[0].line, e[0].key.as_str()),
        (Some(5), "listeners.a.upstream")
    );
}

/// A missing required key points at the mapping it belongs in, with an example of the key.
#[test]
fn missing_key_points_at_its_mapping() {
    let e = errors("listeners:\n  inbound:\n    upstream: u\nupstreams:\n  u: {}\n");
    assert_eq!(e[0].line, Some(2));
    assert_eq!(e[0].key, "listeners.inbound.address");
    assert!(e[0].hint.contains("address: 127.0.0.1:7080"), "{}", e[0]);
}

/// Type errors say what to write instead, in the user's terms rather than Rust's.
#[test]
fn type_errors_have_specific_hints() {
    let base = "listeners:\n  a:\n    address: 127.0.0.1:1\n    upstream: u\nupstreams:\n  u: {}\n";
    let e = errors(&base.replace("upstream: u\nup", "upstream: u\n    direction: inbond\nup"));
    assert_eq!(
        (e[0].line, e[0].key.as_str()),
        (Some(5), "listeners.a.direction")
    );
    assert!(
        e[0].hint.starts_with("did you mean \"inbound\"?"),
        "{}",
        e[0]
    );

    let e = errors(&base.replace("upstream: u\nup", "upstream: u\n    forward_proxy: yes\nup"));
    assert_eq!(e[0].key, "listeners.a.forward_proxy");
    assert_eq!(e[0].hint, "use true or false");

    let e = errors(&format!("{base}limits:\n  max_headers: -1\n"));
    assert_eq!(
        (e[0].line, e[0].key.as_str()),
        (Some(8), "limits.max_headers")
    );
    assert!(!e[0].message.contains("usize"), "{}", e[0]);

    let e = errors(&base.replace(
        "upstream: u\nup",
        "upstream: u\n    routes:\n      - upstream: u\n        match: { method: { a: 1 } }\nup",
    ));
    assert_eq!(
        (e[0].line, e[0].key.as_str()),
        (Some(7), "listeners.a.routes[0].match.method")
    );
}

/// A second YAML document is refused at its `---` line.
#[test]
fn second_document_is_located() {
    let e = errors("# c\nlisteners: {}\n---\nlisteners: {}\n");
    assert_eq!(e[0].line, Some(3), "{}", e[0]);
    assert!(e[0].hint.contains("---"), "{}", e[0]);
}

/// A tab used for indentation gets a hint naming tabs.
#[test]
fn tab_indentation_hint() {
    let e = errors("listeners:\n\ta:\n");
    assert_eq!(e[0].line, Some(2), "{}", e[0]);
    assert!(e[0].hint.contains("tabs"), "{}", e[0]);
}

/// TCP listeners need an upstream and take neither routes nor forward_proxy.
#[test]
fn tcp_listener_rules() {
    let text = "\
listeners:
  db:
    address: 127.0.0.1:5432
    protocol: tcp
    forward_proxy: true
    routes:
      - upstream: pg
upstreams:
  pg: { endpoints: [10.0.0.1:5432] }
";
    let e = errors(text);
    let got: Vec<(Option<usize>, &str)> = e.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert_eq!(
        got,
        [
            (Some(2), "listeners.db"),
            (Some(5), "listeners.db.forward_proxy"),
            (Some(6), "listeners.db.routes"),
        ]
    );
    assert!(e[0].hint.contains("upstream: NAME"), "{}", e[0]);
    let ok = parse(
        "t.yaml",
        &text.replace(
            "    forward_proxy: true\n    routes:\n      - upstream: pg\n",
            "    upstream: pg\n",
        ),
    )
    .unwrap();
    assert_eq!(ok.listeners[0].protocol, ListenerProtocol::Tcp);
    assert_eq!(ok.listeners[0].default_upstream.as_deref(), Some("pg"));
}

/// Two listeners collide on the same address or when a wildcard covers the other's port; port 0
/// (a free port from the OS) never collides.
#[test]
fn listener_addresses_collide() {
    let two = |a: &str, b: &str| {
        format!("listeners:\n  a: {{ address: \"{a}\", upstream: u }}\n  b: {{ address: \"{b}\", upstream: u }}\nupstreams:\n  u: {{}}\n")
    };
    for (a, b) in [
        ("127.0.0.1:7080", "127.0.0.1:7080"),
        ("0.0.0.0:7080", "127.0.0.1:7080"),
        ("127.0.0.1:7080", "[::]:7080"),
        ("unix:/tmp/t.sock", "unix:/tmp/t.sock"),
    ] {
        let e = errors(&two(a, b));
        assert_eq!(
            (e[0].line, e[0].key.as_str()),
            (Some(3), "listeners.b.address"),
            "{a} {b}"
        );
    }
    for (a, b) in [
        ("127.0.0.1:0", "127.0.0.1:0"),
        ("127.0.0.1:7080", "127.0.0.1:7081"),
        ("127.0.0.1:7080", "127.0.0.2:7080"),
        ("0.0.0.0:7080", "[::1]:7080"),
    ] {
        assert!(parse("t.yaml", &two(a, b)).is_ok(), "{a} {b}");
    }
}

/// Host patterns: wildcards become suffixes, exact hosts are lower-cased, and each kind of bad
/// pattern gets its own fix.
#[test]
fn host_patterns() {
    let with_host = |h: &str| {
        format!("listeners:\n  in:\n    address: 127.0.0.1:7080\n    routes:\n      - match: {{ host: \"{h}\" }}\n        upstream: u\nupstreams:\n  u: {{}}\n")
    };
    let host = |h: &str| {
        parse("t.yaml", &with_host(h)).unwrap().listeners[0].routes[0]
            .matcher
            .host
            .clone()
    };
    assert_eq!(
        host("*.Example.COM"),
        Some(HostMatch::Suffix(".example.com".into()))
    );
    assert_eq!(
        host("API.example.com"),
        Some(HostMatch::Exact("api.example.com".into()))
    );
    for (bad, hint) in [
        ("a.*.com", "leftmost label"),
        ("api.example.com:8080", "remove the port"),
        ("api.example.com/v1", "path"),
        ("*", "remove `host`"),
        ("exa mple.com", "host name"),
    ] {
        let e = errors(&with_host(bad));
        assert_eq!(
            (e[0].line, e[0].key.as_str()),
            (Some(5), "listeners.in.routes[0].match.host")
        );
        assert!(e[0].hint.contains(hint), "{bad}: {}", e[0]);
    }
}

/// Paths with a query, empty method lists and bad methods are refused at their own keys.
#[test]
fn path_and_method_rules() {
    let text = "\
listeners:
  in:
    address: 127.0.0.1:7080
    routes:
      - match: { path: { prefix: \"/a?x=1\" } }
        upstream: u
      - match: { method: [] }
        upstream: u
      - match: { method: [GET, \"NOT A METHOD\"] }
        upstream: u
upstreams:
  u: {}
";
    let e = errors(text);
    let got: Vec<(Option<usize>, &str)> = e.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert_eq!(
        got,
        [
            (Some(5), "listeners.in.routes[0].match.path"),
            (Some(7), "listeners.in.routes[1].match.method"),
            (Some(9), "listeners.in.routes[2].match.method[1]"),
        ]
    );
    assert!(e[0].hint.contains("\"/a\""), "{}", e[0]);
}

/// Display: `file:line: key: message`, then the hint; the line is left out when unknown.
#[test]
fn display_format() {
    let mut e = ConfigError {
        file: "f.yaml".into(),
        line: Some(3),
        key: "a.b".into(),
        message: "bad".into(),
        hint: "fix it".into(),
    };
    assert_eq!(e.to_string(), "f.yaml:3: a.b: bad\n  hint: fix it");
    e.line = None;
    assert_eq!(e.to_string(), "f.yaml: a.b: bad\n  hint: fix it");
    let missing = load_file(std::path::Path::new("/nonexistent/tandem.yaml")).unwrap_err();
    assert_eq!(missing.0[0].line, None);
    assert!(
        missing
            .to_string()
            .starts_with("/nonexistent/tandem.yaml: cannot read"),
        "{missing}"
    );
}

/// An unknown key does not hide later errors: it is stepped over and checking goes on, so a
/// typo (line 11) and an unknown upstream (line 6) are reported in one run, in line order.
#[test]
fn unknown_key_and_semantic_errors_together() {
    let text = "\
admin:
  address: 127.0.0.1:7901
listeners:
  inbound:
    address: 127.0.0.1:7080
    upstream: billing
    routes:
      - name: api
        match: { path: { prefix: /api } }
        upstream: app
        timout: 5s
upstreams:
  app:
    endpoints: [127.0.0.1:8080]
    pooll:
      idle_timeout: 1s
    connect_timeout: never
";
    let e = errors(text);
    let got: Vec<(Option<usize>, &str)> = e.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert_eq!(
        got,
        [
            (Some(6), "listeners.inbound.upstream"),
            (Some(11), "listeners.inbound.routes[0].timout"),
            (Some(15), "upstreams.app.pooll"),
            (Some(17), "upstreams.app.connect_timeout"),
        ]
    );
    assert_eq!(e[1].message, "unknown field `timout`");
    assert!(
        e[1].hint.starts_with("did you mean \"timeout\"?"),
        "{}",
        e[1]
    );
    assert!(e[2].hint.starts_with("did you mean \"pool\"?"), "{}", e[2]);
}

/// Stepping over an unknown key adds no error of its own: a misspelt key is read as the key it
/// resembles (so it is not also "missing"), a mapping whose only key is removed stays a mapping,
/// and a key that can be neither renamed nor cut out (no close match, in a flow mapping) ends
/// parsing there.
#[test]
fn skipping_unknown_keys_adds_no_errors() {
    let base = "listeners:\n  a:\n    address: 127.0.0.1:1\n    upstream: u\nupstreams:\n  u: {}\n";
    let e = errors(&base.replace("    address:", "    adress:"));
    assert_eq!(e.len(), 1, "{}", ConfigErrors(e.clone()));

    let e = errors(&format!("limits:\n  zzz: 5\n{base}"));
    assert_eq!(e.len(), 1, "{}", ConfigErrors(e.clone()));
    assert_eq!((e[0].line, e[0].key.as_str()), (Some(2), "limits.zzz"));

    let e = errors(&format!("{base}drain: 5s\n"));
    assert_eq!(e.len(), 1);
    assert_eq!((e[0].line, e[0].key.as_str()), (Some(7), "drain"));

    // Renamed in place, even inside a flow mapping, so the bad reference is found too.
    let text = base.replace("upstream: u", "upstream: x");
    let e = errors(&text.replace("u: {}", "u: { endpoint: [] }"));
    let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["listeners.a.upstream", "upstreams.u.endpoint"]);
    // Neither close to a key nor on its own line: parsing stops at it.
    let e = errors(&text.replace("u: {}", "u: { zzz: [] }"));
    let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["upstreams.u.zzz"]);

    // A typo in a listener whose other keys are fine: the listener is still checked.
    let e = errors(&base.replace(
        "    upstream: u\n",
        "    upstream: u\n    direktion: outbound\n    forward_proxy: true\n    protocol: tcp\n",
    ));
    let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["listeners.a.direktion", "listeners.a.forward_proxy"]);
}

/// Randomly damaged examples (deterministic seed) never panic, and every error line lies inside
/// the text: stepping over unknown keys must keep line numbers true. A cheap, always-on cousin
/// of the `config` fuzz target.
#[test]
fn damaged_examples_keep_lines_inside_the_file() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut seed: u64 = 0x7a4d_e3c1;
    let mut rnd = |n: usize| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((seed >> 33) as usize) % n.max(1)
    };
    for entry in std::fs::read_dir(&dir).unwrap() {
        let original: Vec<char> = std::fs::read_to_string(entry.unwrap().path())
            .unwrap()
            .chars()
            .collect();
        for _ in 0..300 {
            let mut t = original.clone();
            for _ in 0..1 + rnd(4) {
                let i = rnd(t.len());
                match rnd(4) {
                    0 => {
                        t.remove(i);
                    }
                    1 => t.insert(i, ['x', ' ', ':', '\n', '-', '{', '\t', 'e'][rnd(8)]),
                    2 => {
                        let j = rnd(t.len());
                        t.swap(i, j);
                    }
                    _ => t[i] = 'z',
                }
            }
            let text: String = t.into_iter().collect();
            let last = text.replace("\r\n", "\n").matches(['\n', '\r']).count() + 1;
            if let Err(errors) = parse("m.yaml", &text) {
                for e in &errors.0 {
                    let line = e.line.unwrap_or(1);
                    assert!((1..=last).contains(&line), "{e}\n---\n{text}");
                }
            }
        }
    }
}

/// `rate_limit` on a route: defaults filled in, keys parsed, and each bad value reported at its
/// own line with a fix.
#[test]
fn rate_limit_rules() {
    let text = "\
listeners:
  inbound:
    address: 127.0.0.1:7080
    routes:
      - match: { path: { prefix: /api } }
        upstream: app
        rate_limit: { requests: 100, key: header:X-Api-Key }
      - match: { path: { prefix: /login } }
        upstream: app
        rate_limit: { requests: 5, per: 1m, burst: 2, key: client_ip, max_keys: 1000 }
upstreams:
  app: { endpoints: [127.0.0.1:8080] }
";
    let c = parse("t.yaml", text).unwrap();
    let routes = &c.listeners[0].routes;
    let api = routes[0].rate_limit.as_ref().unwrap();
    assert_eq!(
        (api.requests, api.per, api.burst, &api.key, api.max_keys),
        (
            100,
            Duration::from_secs(1),
            100,
            &RateLimitKey::Header("x-api-key".into()),
            100_000
        )
    );
    let login = routes[1].rate_limit.as_ref().unwrap();
    assert_eq!(
        (
            login.requests,
            login.per,
            login.burst,
            &login.key,
            login.max_keys
        ),
        (5, Duration::from_secs(60), 2, &RateLimitKey::ClientIp, 1000)
    );

    let bad = text
        .replace(
            "requests: 100, key: header:X-Api-Key",
            "requests: 0, key: cookie",
        )
        .replace("per: 1m, burst: 2", "per: 0s, burst: 0");
    let e = errors(&bad);
    let got: Vec<(Option<usize>, &str)> = e.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert_eq!(
        got,
        [
            (Some(7), "listeners.inbound.routes[0].rate_limit.requests"),
            (Some(7), "listeners.inbound.routes[0].rate_limit.key"),
            (Some(10), "listeners.inbound.routes[1].rate_limit.burst"),
            (Some(10), "listeners.inbound.routes[1].rate_limit.per"),
        ]
    );
    assert!(e[1].hint.contains("header:NAME"), "{}", e[1]);
}
