//! Config tests: the default and every example parse; bad files report every error with the
//! exact line, key and a hint.

use std::time::Duration;

use super::*;

mod access_log;
mod discovery;
mod security;
mod tls;
mod tracing;

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
    assert_eq!(
        c.upstreams[0].endpoints[0].address.to_string(),
        "127.0.0.1:8080"
    );
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
        let path = entry.unwrap().path();
        // Only the config files (the mTLS examples' certificates live in a subdirectory).
        if path.is_dir() {
            continue;
        }
        let original: Vec<char> = std::fs::read_to_string(path).unwrap().chars().collect();
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

/// Every resilience key, set: each lands in the model with the value written.
#[test]
fn resilience_keys_parse() {
    let text = "\
listeners:
  inbound:
    address: 127.0.0.1:7080
    upstream: orders
upstreams:
  orders:
    endpoints:
      - 127.0.0.1:8080
      - { address: 127.0.0.1:8081, weight: 3 }
      - address: \"unix:/tmp/o.sock\"
    balancer: hash:header:X-User-Id
    stream_idle_timeout: 2m
    health_check:
      http: { path: \"/healthz?full=1\", expect: [\"200-299\", 301, \"418\"] }
      interval: 10s
      jitter: 2s
      timeout: 3s
      healthy_threshold: 4
      unhealthy_threshold: 1
    circuit_breaker:
      enabled: false
      consecutive_failures: 0
      failure_rate_percent: 100
      min_requests: 7
      window: 30s
      base_ejection: 1s
      max_ejection: 1s
      max_ejected_percent: 0
    limits:
      max_requests: 10
      max_pending: 0
      max_connections: 20
    retry:
      attempts: 10
      on_status: [429, 500]
      on_grpc: [UNAVAILABLE, resource_exhausted, 4]
      all_methods: true
      per_try_timeout: 2s
      backoff: 10ms
      max_backoff: 10ms
      replay_buffer: 0
    retry_budget:
      percent: 1000
      min_per_second: 0
      window: 60s
";
    let c = parse("t.yaml", text).unwrap();
    let u = &c.upstreams[0];
    let endpoints: Vec<(String, u32)> = u
        .endpoints
        .iter()
        .map(|e| (e.address.to_string(), e.weight))
        .collect();
    assert_eq!(
        endpoints,
        [
            ("127.0.0.1:8080".to_owned(), 1),
            ("127.0.0.1:8081".to_owned(), 3),
            ("unix:/tmp/o.sock".to_owned(), 1),
        ]
    );
    assert_eq!(
        u.balancer,
        Balancer::Hash(HashKey::Header("x-user-id".into()))
    );
    assert_eq!(u.stream_idle_timeout, Duration::from_secs(120));

    let h = u.health_check.as_ref().unwrap();
    assert_eq!(
        h.probe,
        HealthProbe::Http {
            path: "/healthz?full=1".into(),
            expect: vec![(200, 299), (301, 301), (418, 418)],
        }
    );
    assert_eq!(
        (h.interval, h.jitter, h.timeout),
        (
            Duration::from_secs(10),
            Duration::from_secs(2),
            Duration::from_secs(3)
        )
    );
    assert_eq!((h.healthy_threshold, h.unhealthy_threshold), (4, 1));

    let b = &u.circuit_breaker;
    assert!(!b.enabled);
    assert_eq!(
        (
            b.consecutive_failures,
            b.failure_rate_percent,
            b.min_requests,
            b.max_ejected_percent
        ),
        (0, 100, 7, 0)
    );
    assert_eq!(
        (b.window, b.base_ejection, b.max_ejection),
        (
            Duration::from_secs(30),
            Duration::from_secs(1),
            Duration::from_secs(1)
        )
    );

    assert_eq!(
        (
            u.limits.max_requests,
            u.limits.max_pending,
            u.limits.max_connections
        ),
        (10, 0, Some(20))
    );

    let r = &u.retry;
    assert_eq!(r.attempts, 10);
    assert_eq!(r.on_status, [429, 500]);
    assert_eq!(r.on_grpc, [14, 8, 4]);
    assert!(r.all_methods);
    assert_eq!(r.per_try_timeout, Some(Duration::from_secs(2)));
    assert_eq!(
        (r.backoff, r.max_backoff),
        (Duration::from_millis(10), Duration::from_millis(10))
    );
    assert_eq!(r.replay_buffer, 0);

    assert_eq!(
        (
            u.retry_budget.percent,
            u.retry_budget.min_per_second,
            u.retry_budget.window
        ),
        (1000, 0, Duration::from_secs(60))
    );
}

/// Without any resilience key an upstream gets the model's defaults, and a route no retry of its
/// own; a probe given alone gets the documented interval, jitter, timeout and thresholds.
#[test]
fn resilience_defaults_when_absent() {
    let text = "\
listeners:
  inbound: { address: 127.0.0.1:7080, upstream: app }
upstreams:
  app: { endpoints: [127.0.0.1:8080] }
  tcp:
    health_check: { tcp: {} }
  http:
    health_check: { http: { path: /healthz } }
  grpc:
    health_check:
      grpc:
";
    let c = parse("t.yaml", text).unwrap();
    let u = &c.upstreams[0];
    assert_eq!(u.endpoints[0].weight, 1);
    assert_eq!(u.balancer, Balancer::P2c);
    assert!(u.health_check.is_none());
    assert_eq!(u.stream_idle_timeout, DEFAULT_STREAM_IDLE_TIMEOUT);
    assert_eq!(u.stream_idle_timeout, Duration::from_secs(300));

    let b = &u.circuit_breaker;
    assert!(b.enabled);
    assert_eq!(
        (
            b.consecutive_failures,
            b.failure_rate_percent,
            b.min_requests,
            b.max_ejected_percent
        ),
        (5, 50, 20, 50)
    );
    assert_eq!(
        (b.window, b.base_ejection, b.max_ejection),
        (
            Duration::from_secs(10),
            Duration::from_secs(5),
            Duration::from_secs(300)
        )
    );
    assert_eq!(
        (
            u.limits.max_requests,
            u.limits.max_pending,
            u.limits.max_connections
        ),
        (1024, 1024, None)
    );
    let r = &u.retry;
    assert_eq!(r.attempts, 3);
    assert_eq!(r.on_status, [502, 503, 504]);
    assert_eq!(r.on_grpc, [14]);
    assert!(!r.all_methods);
    assert_eq!(r.per_try_timeout, None);
    assert_eq!(
        (r.backoff, r.max_backoff, r.replay_buffer),
        (
            Duration::from_millis(25),
            Duration::from_millis(250),
            65_536
        )
    );
    assert_eq!(
        (
            u.retry_budget.percent,
            u.retry_budget.min_per_second,
            u.retry_budget.window
        ),
        (20, 10, Duration::from_secs(10))
    );
    assert!(c.listeners[0].routes.is_empty());

    let probe = |i: usize| c.upstreams[i].health_check.as_ref().unwrap();
    let tcp = probe(1);
    assert_eq!(tcp.probe, HealthProbe::Tcp);
    assert_eq!(
        (tcp.interval, tcp.jitter, tcp.timeout),
        (
            Duration::from_secs(5),
            Duration::from_millis(500),
            Duration::from_secs(1)
        )
    );
    assert_eq!((tcp.healthy_threshold, tcp.unhealthy_threshold), (2, 3));
    assert_eq!(
        probe(2).probe,
        HealthProbe::Http {
            path: "/healthz".into(),
            expect: vec![(200, 399)]
        }
    );
    // `grpc:` with nothing after it is the probe with its defaults, not an absent probe.
    assert_eq!(
        probe(3).probe,
        HealthProbe::Grpc {
            service: String::new()
        }
    );
}

/// Endpoints take a plain address or `{ address, weight }`; weights out of 1..=10000, a bad
/// address in either form and a duplicate across forms are each reported at the entry.
#[test]
fn endpoint_forms_and_weights() {
    let text = "\
listeners:
  inbound: { address: 127.0.0.1:7080, upstream: app }
upstreams:
  app:
    endpoints:
      - 127.0.0.1:8080
      - { address: 127.0.0.1:8081, weight: 0 }
      - address: 127.0.0.1:8082
        weight: 20000
      - { address: 127.0.0.1:8080, weight: 2 }
      - { address: \"nope:port\" }
      - \"unix:\"
";
    let e = errors(text);
    let got: Vec<(Option<usize>, &str)> = e.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert_eq!(
        got,
        [
            (Some(7), "upstreams.app.endpoints[1].weight"),
            (Some(9), "upstreams.app.endpoints[2].weight"),
            (Some(10), "upstreams.app.endpoints[3]"),
            (Some(11), "upstreams.app.endpoints[4]"),
            (Some(12), "upstreams.app.endpoints[5]"),
        ]
    );
    assert_eq!(e[0].message, "a weight of 0 sends this endpoint no traffic");
    assert!(e[0].hint.contains("remove it from `endpoints`"), "{}", e[0]);
    assert!(e[1].message.contains("maximum of 10000"), "{}", e[1]);
    assert!(e[1].hint.contains("relative"), "{}", e[1]);
    assert_eq!(e[2].message, "endpoint `127.0.0.1:8080` is listed twice");
    assert!(e[2].hint.contains("`weight`"), "{}", e[2]);
    assert!(e[3].message.contains("not a port number"), "{}", e[3]);
    assert!(e[4].message.contains("needs a path"), "{}", e[4]);
    assert!(e.iter().all(|e| !e.hint.is_empty()));

    let c = parse(
        "t.yaml",
        "listeners:\n  i: { address: 127.0.0.1:1, upstream: a }\nupstreams:\n  a:\n    endpoints:\n      - address: localhost:80\n        weight: 10000\n      - 127.0.0.1:2\n",
    )
    .unwrap();
    assert_eq!(
        c.upstreams[0].endpoints,
        [
            UpstreamEndpoint {
                address: Address::Host {
                    host: "localhost".into(),
                    port: 80
                },
                weight: 10_000,
                zone: None,
            },
            UpstreamEndpoint {
                address: Address::Tcp(([127, 0, 0, 1], 2).into()),
                weight: 1,
                zone: None,
            },
        ]
    );
}

/// Mistakes inside the hand-deserialized forms (endpoint, route `retry`, code lists) keep the
/// full key path and line, and an unknown key inside them is stepped over like anywhere else.
#[test]
fn resilience_type_errors_keep_key_paths() {
    let base = "listeners:\n  a:\n    address: 127.0.0.1:1\n    routes:\n      - upstream: u\n        retry: off\nupstreams:\n  u:\n    endpoints: [127.0.0.1:2]\n";
    let one = |text: &str| {
        let e = errors(text);
        assert_eq!(e.len(), 1, "{}", ConfigErrors(e.clone()));
        e.into_iter().next().unwrap()
    };

    let e = one(&base.replace("[127.0.0.1:2]", "[8080]"));
    assert_eq!(
        (e.line, e.key.as_str()),
        (Some(9), "upstreams.u.endpoints[0]")
    );
    assert!(e.hint.contains("weight: 3"), "{e}");

    let e = one(&base.replace("[127.0.0.1:2]", "[{ address: 127.0.0.1:2, weight: -1 }]"));
    assert_eq!(e.key, "upstreams.u.endpoints[0].weight");
    assert_eq!(e.hint, "use a whole number, e.g. 100");

    let e = one(&base.replace("[127.0.0.1:2]", "[{ adress: 127.0.0.1:2 }]"));
    assert_eq!(e.key, "upstreams.u.endpoints[0].adress");
    assert!(e.hint.starts_with("did you mean \"address\"?"), "{e}");

    let e = one(&base.replace("retry: off", "retry: no"));
    assert_eq!(
        (e.line, e.key.as_str()),
        (Some(6), "listeners.a.routes[0].retry")
    );
    assert!(e.message.contains("expected `off` or a mapping"), "{e}");
    assert!(e.hint.contains("retry: off"), "{e}");

    // The typo is read as the key it resembles, so checking goes on past it.
    let e = errors(&base.replace("retry: off", "retry: { atempts: 0, on_status: [503, 200] }"));
    let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "listeners.a.routes[0].retry.atempts",
            "listeners.a.routes[0].retry.attempts",
            "listeners.a.routes[0].retry.on_status[1]",
        ]
    );
    assert!(
        e[0].hint.starts_with("did you mean \"attempts\"?"),
        "{}",
        e[0]
    );

    let e = one(&format!("{base}    retry: {{ on_grpc: [[14]] }}\n"));
    assert_eq!(
        (e.line, e.key.as_str()),
        (Some(10), "upstreams.u.retry.on_grpc[0]")
    );
    assert!(e.hint.contains("1 to 16"), "{e}");

    let e = one(&format!(
        "{base}    health_check: {{ tcp: {{ port: 1 }} }}\n"
    ));
    assert_eq!(e.key, "upstreams.u.health_check.tcp.port");
    assert!(e.hint.contains("takes no keys"), "{e}");
}

/// Every balancer form, case-insensitive in its keywords; a typo gets a "did you mean".
#[test]
fn balancer_forms() {
    let with = |b: &str| {
        format!("listeners:\n  a: {{ address: 127.0.0.1:1, upstream: u }}\nupstreams:\n  u:\n    balancer: \"{b}\"\n")
    };
    for (raw, want) in [
        ("p2c", Balancer::P2c),
        ("round_robin", Balancer::RoundRobin),
        ("Least_Request", Balancer::LeastRequest),
        ("hash:client_ip", Balancer::Hash(HashKey::ClientIp)),
        (
            "hash:header:X-Session",
            Balancer::Hash(HashKey::Header("x-session".into())),
        ),
        (
            "hash:cookie:SessionId",
            Balancer::Hash(HashKey::Cookie("SessionId".into())),
        ),
    ] {
        let c = parse("t.yaml", &with(raw)).unwrap();
        assert_eq!(c.upstreams[0].balancer, want, "{raw}");
    }
    for (raw, message, hint) in [
        (
            "roundrobin",
            "`roundrobin` is not a balancer",
            "did you mean \"round_robin\"?",
        ),
        (
            "least_requests",
            "not a balancer",
            "did you mean \"least_request\"?",
        ),
        (
            "hash:client-ip",
            "not a balancer",
            "did you mean \"hash:client_ip\"?",
        ),
        (
            "random",
            "`random` is not a balancer",
            "use one of: p2c, round_robin",
        ),
        (
            "hash:header:",
            "is not a header name",
            "hash:header:x-user-id",
        ),
        (
            "hash:header:bad header",
            "`bad header`",
            "hash:header:x-user-id",
        ),
        (
            "hash:cookie:a;b",
            "`a;b` in `hash:cookie:a;b` is not a cookie name",
            "hash:cookie:session",
        ),
    ] {
        let e = errors(&with(raw));
        assert_eq!(e.len(), 1, "{raw}");
        assert_eq!(
            (e[0].line, e[0].key.as_str()),
            (Some(5), "upstreams.u.balancer")
        );
        assert!(e[0].message.contains(message), "{raw}: {}", e[0]);
        assert!(e[0].hint.contains(hint), "{raw}: {}", e[0]);
    }
}

/// Health check mistakes are all reported in one run, each at its key with a fix.
#[test]
fn health_check_rules() {
    let text = "\
listeners:
  a: { address: 127.0.0.1:1, upstream: none }
upstreams:
  none:
    health_check: { interval: 5s }
  two:
    health_check: { tcp: {}, grpc: { service: x } }
  http:
    health_check:
      http: { path: healthz, expect: [\"299-200\", 600, abc, \"200-\", 99] }
      interval: 2s
      jitter: 3s
      timeout: 2s
      healthy_threshold: 0
      unhealthy_threshold: 0
  empty:
    health_check:
      http: { path: /h, expect: [] }
      interval: 1s
";
    let e = errors(text);
    let got: Vec<(Option<usize>, &str)> = e.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert_eq!(
        got,
        [
            (Some(5), "upstreams.none.health_check"),
            (Some(7), "upstreams.two.health_check"),
            (Some(10), "upstreams.http.health_check.http.path"),
            (Some(10), "upstreams.http.health_check.http.expect[0]"),
            (Some(10), "upstreams.http.health_check.http.expect[1]"),
            (Some(10), "upstreams.http.health_check.http.expect[2]"),
            (Some(10), "upstreams.http.health_check.http.expect[3]"),
            (Some(10), "upstreams.http.health_check.http.expect[4]"),
            (Some(12), "upstreams.http.health_check.jitter"),
            (Some(13), "upstreams.http.health_check.timeout"),
            (Some(14), "upstreams.http.health_check.healthy_threshold"),
            (Some(15), "upstreams.http.health_check.unhealthy_threshold"),
            (Some(18), "upstreams.empty.health_check.http.expect"),
            // The default timeout (1s) against a 1s interval: reported at what was written.
            (Some(19), "upstreams.empty.health_check.interval"),
        ]
    );
    let by_key = |k: &str| e.iter().find(|e| e.key.ends_with(k)).unwrap();
    assert_eq!(by_key("none.health_check").message, "no probe is set");
    assert!(by_key("none.health_check").hint.contains("tcp: {}"));
    assert!(by_key("two.health_check").message.contains("`tcp`, `grpc`"));
    assert_eq!(by_key("http.path").hint, "write it as \"/healthz\"");
    assert_eq!(
        by_key("expect[0]").message,
        "the range `299-200` runs backwards"
    );
    assert_eq!(
        by_key("expect[0]").hint,
        "write the lower status first: \"200-299\""
    );
    assert!(by_key("expect[1]").message.contains("`600`"));
    assert!(by_key("expect[2]").hint.contains("100 to 599"));
    assert!(by_key("jitter").message.contains("longer than interval 2s"));
    assert!(by_key("health_check.timeout")
        .message
        .contains("not shorter than interval 2s"));
    assert!(by_key("health_check.timeout").hint.contains("timeout: 1s"));
    assert!(by_key("healthy_threshold").hint.contains("default 2"));
    assert!(by_key("unhealthy_threshold").hint.contains("default 3"));
    assert!(by_key("http.expect").hint.contains("200-399"));
    assert!(by_key("empty.health_check.interval")
        .message
        .contains("1s (the default)"));
    assert!(e.iter().all(|e| !e.hint.is_empty()));

    // "0s" turns jitter off (every other duration must be positive).
    let c = parse(
        "t.yaml",
        "listeners:\n  a: { address: 127.0.0.1:1, upstream: u }\nupstreams:\n  u:\n    health_check: { tcp: {}, jitter: 0s }\n",
    )
    .unwrap();
    assert_eq!(
        c.upstreams[0].health_check.as_ref().unwrap().jitter,
        Duration::ZERO
    );
}

/// Circuit breaker and upstream limit mistakes: percentages over 100, an ejection range that
/// runs backwards, limits of 0 where 0 would refuse everything.
#[test]
fn circuit_breaker_and_limits_rules() {
    let text = "\
listeners:
  a: { address: 127.0.0.1:1, upstream: u }
upstreams:
  u:
    circuit_breaker:
      failure_rate_percent: 101
      window: 0s
      base_ejection: 1m
      max_ejection: 30s
      max_ejected_percent: 200
    limits: { max_requests: 0, max_pending: 0, max_connections: 0 }
  v:
    circuit_breaker: { base_ejection: 10m }
";
    let e = errors(text);
    let got: Vec<(Option<usize>, &str)> = e.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert_eq!(
        got,
        [
            (Some(6), "upstreams.u.circuit_breaker.failure_rate_percent"),
            (Some(7), "upstreams.u.circuit_breaker.window"),
            (Some(9), "upstreams.u.circuit_breaker.max_ejection"),
            (Some(10), "upstreams.u.circuit_breaker.max_ejected_percent"),
            (Some(11), "upstreams.u.limits.max_requests"),
            (Some(11), "upstreams.u.limits.max_connections"),
            // Only base_ejection was written: the default max (5m) is shorter.
            (Some(13), "upstreams.v.circuit_breaker.base_ejection"),
        ]
    );
    assert_eq!(e[0].message, "101 is above 100 percent");
    assert_eq!(e[0].hint, "use 0 to 100 (default 50)");
    assert_eq!(
        e[2].message,
        "max_ejection 30s is shorter than base_ejection 1m"
    );
    assert!(e[2].hint.contains("double"), "{}", e[2]);
    assert!(e[4].hint.contains("default 1024"), "{}", e[4]);
    assert!(e[5].hint.contains("remove it"), "{}", e[5]);
    assert_eq!(
        e[6].message,
        "max_ejection 5m is shorter than base_ejection 10m"
    );
}

/// Retry and retry budget mistakes on an upstream, all reported together.
#[test]
fn retry_rules() {
    let text = "\
listeners:
  a: { address: 127.0.0.1:1, upstream: u }
upstreams:
  u:
    request_timeout: 2s
    retry:
      attempts: 0
      on_status: [503, 200, 700]
      on_grpc: [unavailabel, 0, 17, ok, Deadline_Exceeded]
      per_try_timeout: 2s
      backoff: 1s
      max_backoff: 100ms
      replay_buffer: 16777217
    retry_budget: { percent: 1001, window: 61s }
  v:
    retry: { attempts: 11, backoff: 1s }
    retry_budget: { window: 500ms }
";
    let e = errors(text);
    let got: Vec<(Option<usize>, &str)> = e.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert_eq!(
        got,
        [
            (Some(7), "upstreams.u.retry.attempts"),
            (Some(8), "upstreams.u.retry.on_status[1]"),
            (Some(8), "upstreams.u.retry.on_status[2]"),
            (Some(9), "upstreams.u.retry.on_grpc[0]"),
            (Some(9), "upstreams.u.retry.on_grpc[1]"),
            (Some(9), "upstreams.u.retry.on_grpc[2]"),
            (Some(9), "upstreams.u.retry.on_grpc[3]"),
            (Some(10), "upstreams.u.retry.per_try_timeout"),
            (Some(12), "upstreams.u.retry.max_backoff"),
            (Some(13), "upstreams.u.retry.replay_buffer"),
            (Some(14), "upstreams.u.retry_budget.window"),
            (Some(14), "upstreams.u.retry_budget.percent"),
            (Some(16), "upstreams.v.retry.attempts"),
            // Only backoff was written: the default max_backoff (250ms) is shorter.
            (Some(16), "upstreams.v.retry.backoff"),
            (Some(17), "upstreams.v.retry_budget.window"),
        ]
    );
    let msg = |i: usize| (e[i].message.as_str(), e[i].hint.as_str());
    assert_eq!(msg(0).0, "0 attempts would never send the request");
    assert!(msg(0).1.contains("1 means no retries"));
    assert_eq!(msg(1).0, "200 is not an error status");
    assert!(msg(1).1.contains("429 or 503"));
    assert_eq!(msg(2).0, "700 is not an HTTP status");
    assert_eq!(msg(3).0, "`unavailabel` is not a gRPC status code");
    assert!(
        msg(3).1.starts_with("did you mean \"unavailable\"?"),
        "{}",
        e[3]
    );
    assert!(msg(4).0.contains("OK"));
    assert_eq!(msg(5).0, "17 is not a gRPC status code");
    assert!(msg(6).0.contains("`ok`"));
    assert!(msg(7)
        .0
        .contains("not shorter than the upstream's request_timeout 2s"));
    // The example splits the deadline over the tries (3: `attempts` fell back to the default).
    assert!(msg(7).1.contains("below 2s, e.g. 666ms"), "{}", e[7]);
    assert_eq!(msg(8).0, "max_backoff 100ms is shorter than backoff 1s");
    assert!(msg(9).0.contains("16 MiB"));
    assert!(msg(10).1.contains("1s to 60s"));
    assert_eq!(msg(11).1, "use 0 to 1000 (default 20)");
    assert_eq!(msg(12).0, "11 attempts is more than the maximum of 10");
    assert!(msg(14).0.contains("500ms"));
    assert!(e.iter().all(|e| !e.hint.is_empty()));
}

/// A route's `retry` overrides the upstream's key by key: keys the route leaves out come from
/// the upstream's retry, not the global default. A route without `retry` has none of its own.
#[test]
fn route_retry_merges_with_upstream() {
    let text = "\
listeners:
  a:
    address: 127.0.0.1:1
    routes:
      - name: merged
        upstream: u
        retry: { attempts: 5, on_status: [429], backoff: 50ms }
      - name: plain
        upstream: u
      - name: off
        upstream: u
        retry: off
upstreams:
  u:
    retry:
      attempts: 2
      on_status: [503]
      on_grpc: [internal]
      all_methods: true
      per_try_timeout: 3s
      max_backoff: 1s
      replay_buffer: 1024
";
    let c = parse("t.yaml", text).unwrap();
    let routes = &c.listeners[0].routes;
    let merged = routes[0].retry.as_ref().unwrap();
    assert_eq!(merged.attempts, 5);
    assert_eq!(merged.on_status, [429]);
    assert_eq!(merged.backoff, Duration::from_millis(50));
    // From the upstream, each differing from the default.
    assert_eq!(merged.on_grpc, [13]);
    assert!(merged.all_methods);
    assert_eq!(merged.per_try_timeout, Some(Duration::from_secs(3)));
    assert_eq!(merged.max_backoff, Duration::from_secs(1));
    assert_eq!(merged.replay_buffer, 1024);

    assert!(routes[1].retry.is_none());
    assert_eq!(c.upstreams[0].retry.attempts, 2);

    // `off`: one try; the rest is the upstream's, except that no per-try timeout applies.
    let off = routes[2].retry.as_ref().unwrap();
    assert_eq!(off.attempts, 1);
    assert_eq!(off.per_try_timeout, None);
    assert_eq!(off.on_status, [503]);

    // A merge that makes max_backoff < backoff is an error at the route's key.
    let e = errors(&text.replace("backoff: 50ms", "backoff: 2s"));
    assert_eq!(
        (e[0].line, e[0].key.as_str()),
        (Some(7), "listeners.a.routes[0].retry.backoff")
    );
    assert_eq!(e[0].message, "max_backoff 1s is shorter than backoff 2s");
}

/// A per-try timeout must be shorter than the route's deadline: its own `timeout`, else the
/// upstream's `request_timeout`. An inherited per-try timeout a route's shorter `timeout` makes
/// useless is reported at that `timeout`; `retry: off` has no per-try timeout to clash.
#[test]
fn route_per_try_timeout_against_deadline() {
    let text = "\
listeners:
  a:
    address: 127.0.0.1:1
    routes:
      - upstream: u
        timeout: 1s
        retry: { per_try_timeout: 1s }
      - upstream: u
        retry: { per_try_timeout: 5s, attempts: 2 }
      - upstream: v
        timeout: 300ms
      - upstream: v
        timeout: 300ms
        retry: off
      - upstream: v
        timeout: 300ms
        retry: { per_try_timeout: 100ms }
upstreams:
  u: { request_timeout: 5s }
  v:
    retry: { per_try_timeout: 500ms }
";
    let e = errors(text);
    let got: Vec<(Option<usize>, &str)> = e.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert_eq!(
        got,
        [
            (Some(7), "listeners.a.routes[0].retry.per_try_timeout"),
            (Some(9), "listeners.a.routes[1].retry.per_try_timeout"),
            (Some(11), "listeners.a.routes[2].timeout"),
        ]
    );
    assert!(
        e[0].message
            .contains("not shorter than the route's timeout 1s"),
        "{}",
        e[0]
    );
    assert!(e[0].hint.contains("below 1s, e.g. 333ms"), "{}", e[0]);
    assert!(
        e[1].message.contains("the upstream's request_timeout 5s"),
        "{}",
        e[1]
    );
    assert!(e[1].hint.contains("e.g. 2s 500ms"), "{}", e[1]);
    assert!(e[2].message.contains("from upstream `v`"), "{}", e[2]);
    assert!(e[2].hint.contains("per_try_timeout: 100ms"), "{}", e[2]);

    let ok = text
        .replace("timeout: 1s\n        retry: { per_try_timeout: 1s }", "timeout: 2s\n        retry: { per_try_timeout: 1s }")
        .replace("per_try_timeout: 5s", "per_try_timeout: 4s")
        .replace("        timeout: 300ms\n      - upstream: v\n        timeout: 300ms\n        retry: off", "        timeout: 600ms\n      - upstream: v\n        timeout: 300ms\n        retry: off");
    let c = parse("t.yaml", &ok).unwrap();
    let routes = &c.listeners[0].routes;
    assert_eq!(
        routes[0].retry.as_ref().unwrap().per_try_timeout,
        Some(Duration::from_secs(1))
    );
    assert!(routes[2].retry.is_none());
    assert_eq!(routes[3].retry.as_ref().unwrap().attempts, 1);
}

/// The schema describes both endpoint forms and both forms of a route's `retry`.
#[test]
fn schema_describes_resilience_forms() {
    let v: serde_json::Value = serde_json::from_str(&json_schema()).unwrap();
    let defs = &v["$defs"];
    let endpoint = defs["RawEndpoint"]["anyOf"].as_array().unwrap();
    assert_eq!(endpoint[0]["type"], "string");
    assert_eq!(endpoint[1]["$ref"], "#/$defs/RawWeightedEndpoint");
    let weighted = &defs["RawWeightedEndpoint"];
    assert_eq!(weighted["required"], serde_json::json!(["address"]));
    assert_eq!(weighted["additionalProperties"], false);
    let retry = defs["RawRouteRetry"]["anyOf"].as_array().unwrap();
    assert_eq!(retry[0]["const"], "off");
    assert_eq!(retry[1]["$ref"], "#/$defs/RawRetry");
    let upstream = &defs["RawUpstream"]["properties"];
    for key in [
        "balancer",
        "stream_idle_timeout",
        "health_check",
        "circuit_breaker",
        "limits",
        "retry",
        "retry_budget",
    ] {
        assert!(upstream[key]["description"].is_string(), "{key}");
    }
}

/// The example in docs/config.md's "Resilience" section is valid and means what its comments say.
#[test]
fn docs_resilience_example_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/config.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let section = &doc[doc.find("## Resilience").unwrap()..];
    let start = section.find("```yaml\n").unwrap() + "```yaml\n".len();
    let end = start + section[start..].find("```").unwrap();
    let c = parse("config.md", &section[start..end]).unwrap_or_else(|e| panic!("{e}"));
    let weights: Vec<u32> = c.upstreams[0].endpoints.iter().map(|e| e.weight).collect();
    assert_eq!(weights, [1, 3]);
    let routes = &c.listeners[0].routes;
    assert_eq!(routes[0].retry.as_ref().unwrap().attempts, 1);
    let rest = routes[1].retry.as_ref().unwrap();
    assert_eq!((rest.attempts, rest.on_status.as_slice()), (2, &[503][..]));
}

/// The admin API stays on loopback or a Unix socket unless remote access is allowed explicitly;
/// the error names the key, its line and both fixes.
#[test]
fn admin_binds_loopback_unless_allowed() {
    for address in ["0.0.0.0:9901", "[::]:9901", "192.0.2.1:9901"] {
        let e = errors(&format!(
            "admin: {{ address: \"{address}\" }}\nlisteners:\n  in: {{ address: 127.0.0.1:7080, upstream: u }}\nupstreams:\n  u: {{ endpoints: [127.0.0.1:1] }}\n"
        ));
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!((e[0].key.as_str(), e[0].line), ("admin.address", Some(1)));
        assert!(e[0].message.contains("not a loopback address"), "{}", e[0]);
        assert!(e[0].hint.contains("admin.allow_remote: true"), "{}", e[0]);
    }
    for admin in [
        "{ address: \"0.0.0.0:9901\", allow_remote: true }",
        "{ address: \"[::1]:9901\" }",
        "{ address: \"127.0.0.2:9901\" }",
        "{ address: \"unix:/tmp/tandem-admin.sock\" }",
    ] {
        let c = parse("t.yaml", &format!(
            "admin: {admin}\nlisteners:\n  in: {{ address: 127.0.0.1:7080, upstream: u }}\nupstreams:\n  u: {{ endpoints: [127.0.0.1:1] }}\n"
        ))
        .unwrap_or_else(|e| panic!("{admin}: {e:?}"));
        assert_eq!(c.admin.allow_remote, admin.contains("allow_remote"));
    }
}

/// A listener's own `limits` replace the top-level values key by key; the rest is inherited, and
/// a bad value is reported at the listener's key path and line.
#[test]
fn listener_limits_override_the_top_level() {
    let text = "\
limits: { max_connections: 500, body_read_timeout: 5s, h2_max_concurrent_streams: 64 }
listeners:
  public:
    address: 127.0.0.1:7080
    upstream: u
    limits: { max_connections: 50, h2_max_resets_per_second: 20 }
  local: { address: 127.0.0.1:7081, upstream: u }
upstreams:
  u: { endpoints: [127.0.0.1:1] }
";
    let c = parse("t.yaml", text).unwrap_or_else(|e| panic!("{e:?}"));
    let (public, local) = (&c.listeners[0].limits, &c.listeners[1].limits);
    assert_eq!((public.max_connections, local.max_connections), (50, 500));
    assert_eq!(public.body_read_timeout, Duration::from_secs(5));
    assert_eq!(public.h2.max_concurrent_streams, 64);
    assert_eq!(
        (
            public.h2.max_resets_per_second,
            local.h2.max_resets_per_second
        ),
        (20, 200)
    );
    assert_eq!(c.limits.max_connections, 500);

    let e = errors(
        "listeners:\n  a:\n    address: 127.0.0.1:7080\n    upstream: u\n    limits:\n      max_header_bytes: 10\n      body_read_timeout: soon\nupstreams:\n  u: { endpoints: [127.0.0.1:1] }\n",
    );
    let got: Vec<(Option<usize>, &str)> = e.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert_eq!(
        got,
        [
            (Some(6), "listeners.a.limits.max_header_bytes"),
            (Some(7), "listeners.a.limits.body_read_timeout")
        ]
    );
}
