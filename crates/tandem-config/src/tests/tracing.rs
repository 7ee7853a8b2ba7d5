//! The `tracing` section: defaults, every key, and each mistake reported at its line with a fix.

use std::time::Duration;

use super::errors;
use crate::*;

const BASE: &str = "\
listeners:
  inbound: { address: 127.0.0.1:7080, upstream: app }
upstreams:
  app: { endpoints: [127.0.0.1:8080] }
";

/// The base file with `section` (indented lines, optionally after a leading newline) under
/// `tracing:`, which is line 5.
fn with_tracing(section: &str) -> String {
    let section = section.strip_prefix('\n').unwrap_or(section);
    format!("{BASE}tracing:\n{section}")
}

/// Without a `tracing` section tracing is off; with only a collector everything else defaults.
#[test]
fn tracing_defaults() {
    assert!(parse("t.yaml", BASE).unwrap().tracing.is_none());
    assert!(default_config().tracing.is_none());

    let c = parse(
        "t.yaml",
        &with_tracing("  otlp: { endpoint: \"http://127.0.0.1:4318\" }\n"),
    )
    .unwrap();
    let t = c.tracing.unwrap();
    assert_eq!(t.otlp.endpoint, "http://127.0.0.1:4318/v1/traces");
    assert_eq!(t.otlp.protocol, OtlpProtocol::HttpProtobuf);
    assert_eq!(t.otlp.timeout, Duration::from_secs(10));
    assert_eq!(t.sample_ratio, 1.0);
    assert_eq!(t.propagation, [Propagation::W3c]);
    assert_eq!(t.service_name, "tandem");
    assert!(t.resource.is_empty());
    assert_eq!((t.queue, t.batch), (2048, 512));
    assert_eq!(t.flush_interval, Duration::from_secs(1));

    // A small queue brings the default batch down with it.
    let c = parse(
        "t.yaml",
        &with_tracing("  otlp: { endpoint: \"http://127.0.0.1:4318\" }\n  queue: 100\n"),
    )
    .unwrap();
    assert_eq!(c.tracing.unwrap().batch, 100);
}

/// Every key, set: each lands in the model as written.
#[test]
fn tracing_keys_parse() {
    let text = with_tracing(
        "
  otlp: { endpoint: \"http://collector.local:4317\", protocol: grpc, timeout: 2s }
  sample_ratio: 0.25
  propagation: [b3, w3c, b3multi]
  service_name: orders
  resource: { deployment.environment: prod, team: payments }
  queue: 4096
  batch: 256
  flush_interval: 500ms
",
    );
    let t = parse("t.yaml", &text).unwrap().tracing.unwrap();
    assert_eq!(t.otlp.endpoint, "http://collector.local:4317");
    assert_eq!(t.otlp.protocol, OtlpProtocol::Grpc);
    assert_eq!(t.otlp.timeout, Duration::from_secs(2));
    assert_eq!(t.sample_ratio, 0.25);
    assert_eq!(
        t.propagation,
        [Propagation::B3, Propagation::W3c, Propagation::B3multi]
    );
    assert_eq!(t.service_name, "orders");
    assert_eq!(
        t.resource,
        [
            ("deployment.environment".to_owned(), "prod".to_owned()),
            ("team".to_owned(), "payments".to_owned())
        ]
    );
    assert_eq!((t.queue, t.batch), (4096, 256));
    assert_eq!(t.flush_interval, Duration::from_millis(500));

    // An OTLP/HTTP endpoint with its own path keeps it; an integer ratio is a ratio.
    let text = with_tracing(
        "  otlp: { endpoint: \"http://127.0.0.1:9000/otlp/v1/traces\", protocol: http/protobuf }\n  sample_ratio: 0\n",
    );
    let t = parse("t.yaml", &text).unwrap().tracing.unwrap();
    assert_eq!(t.otlp.endpoint, "http://127.0.0.1:9000/otlp/v1/traces");
    assert_eq!(t.sample_ratio, 0.0);
}

/// Each bad value is reported at its own line and key, with a fix, all in one run.
#[test]
fn tracing_mistakes_are_reported_together() {
    let text = with_tracing(
        "
  otlp:
    endpoint: \"http://127.0.0.1:4317\"
    timeout: 5m
  sample_ratio: 1.5
  propagation: [w3c, w3c]
  service_name: \" \"
  resource: { service.name: x, \"\": y }
  queue: 0
  batch: 0
  flush_interval: 0s
",
    );
    let e = errors(&text);
    let got: Vec<(Option<usize>, &str)> = e.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert_eq!(
        got,
        [
            (Some(6), "tracing.otlp.protocol"),
            (Some(8), "tracing.otlp.timeout"),
            (Some(9), "tracing.sample_ratio"),
            (Some(10), "tracing.propagation[1]"),
            (Some(11), "tracing.service_name"),
            (Some(12), "tracing.resource.service.name"),
            (Some(12), "tracing.resource."),
            (Some(13), "tracing.queue"),
            (Some(14), "tracing.batch"),
            (Some(15), "tracing.flush_interval"),
        ]
    );
    let hint = |k: &str| {
        e.iter()
            .find(|e| e.key == k)
            .map(|e| e.hint.clone())
            .unwrap()
    };
    assert!(
        hint("tracing.otlp.protocol").contains("protocol: grpc"),
        "{e:?}"
    );
    assert!(
        hint("tracing.resource.service.name").contains("service_name: x"),
        "{e:?}"
    );
    assert!(hint("tracing.sample_ratio").contains("0.0"), "{e:?}");
}

/// Collector URLs: scheme, host, path and query, each refused with a way to write it.
#[test]
fn tracing_endpoint_rules() {
    let case = |endpoint: &str, protocol: &str| {
        let e = errors(&with_tracing(&format!(
            "  otlp: {{ endpoint: \"{endpoint}\", protocol: {protocol} }}\n"
        )));
        assert_eq!(e.len(), 1, "{endpoint}: {e:?}");
        assert_eq!(e[0].key, "tracing.otlp.endpoint");
        assert_eq!(e[0].line, Some(6));
        (e[0].message.clone(), e[0].hint.clone())
    };
    let (m, h) = case("https://collector:4317", "grpc");
    assert!(m.contains("TLS"), "{m}");
    assert!(h.contains("http://collector:4317"), "{h}");
    let (m, h) = case("127.0.0.1:4317", "grpc");
    assert!(m.contains("no scheme") || m.contains("not a URL"), "{m}");
    assert!(h.contains("http://"), "{h}");
    let (m, _) = case("ftp://collector:21", "grpc");
    assert!(m.contains("`ftp`"), "{m}");
    let (m, h) = case("http://127.0.0.1:4317/v1/traces", "grpc");
    assert!(m.contains("without a path"), "{m}");
    assert!(h.contains("protocol: http/protobuf"), "{h}");
    let (m, _) = case("http://127.0.0.1:4318/v1/traces?x=1", "http/protobuf");
    assert!(m.contains("query"), "{m}");
    let (m, _) = case("not a url", "grpc");
    assert!(m.contains("not a URL"), "{m}");
}

/// Misspelt enum values and a missing `otlp` get the usual serde hints, at their lines.
#[test]
fn tracing_type_errors() {
    let e = errors(&with_tracing(
        "  otlp: { endpoint: \"http://c:4318\" }\n  propagation: [w3c, zipkin]\n",
    ));
    assert_eq!(
        (e[0].line, e[0].key.as_str()),
        (Some(7), "tracing.propagation[1]")
    );
    assert!(e[0].hint.contains("w3c, b3, b3multi"), "{}", e[0]);

    let e = errors(&with_tracing(
        "  otlp: { endpoint: \"http://c:4317\", protocol: gprc }\n",
    ));
    assert!(e[0].hint.starts_with("did you mean \"grpc\"?"), "{}", e[0]);

    let e = errors(&with_tracing("  sample_ratio: 0.5\n"));
    assert_eq!(e[0].key, "tracing.otlp");
    assert_eq!(e[0].line, Some(5));

    let e = errors(&with_tracing(
        "  otlp: { endpoint: \"http://c:4318\" }\n  propagation: [b3]\n  sample: 1\n",
    ));
    assert_eq!(e[0].key, "tracing.sample");
    assert!(e[0].hint.contains("sample_ratio"), "{}", e[0]);
}

/// The schema documents the section and both enum spellings.
#[test]
fn schema_describes_tracing() {
    let v: serde_json::Value = serde_json::from_str(&json_schema()).unwrap();
    assert!(v["properties"]["tracing"]["description"].is_string());
    let s = v.to_string();
    assert!(s.contains("http/protobuf"), "{s}");
    assert!(s.contains("b3multi"), "{s}");
}

/// The example in docs/config.md's "Tracing" section is valid and means what its comments say.
#[test]
fn docs_tracing_example_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/config.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let section = &doc[doc.find("## Tracing").unwrap()..];
    let start = section.find("```yaml\n").unwrap() + "```yaml\n".len();
    let end = start + section[start..].find("```").unwrap();
    let c = parse("config.md", &format!("{BASE}{}", &section[start..end]))
        .unwrap_or_else(|e| panic!("{e}"));
    let t = c.tracing.unwrap();
    assert_eq!(t.otlp.protocol, OtlpProtocol::Grpc);
    assert_eq!(t.sample_ratio, 0.1);
    assert_eq!(t.propagation, [Propagation::W3c, Propagation::B3]);
    assert_eq!(t.service_name, "orders-sidecar");
}
