//! `logs:` section tests: a full section translates to the model with its defaults, a logs-only
//! file needs no listeners, and each mistake is reported at its key with a fix.

use std::time::Duration;

use super::parse_size;
use crate::*;

fn errors(text: &str) -> Vec<ConfigError> {
    match parse("t.yaml", text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e.0,
    }
}

fn keys(e: &[ConfigError]) -> Vec<(Option<usize>, &str)> {
    e.iter().map(|e| (e.line, e.key.as_str())).collect()
}

/// A logs-only file is valid (no listeners needed) and gets every default.
#[test]
fn logs_only_file_with_defaults() {
    let c = parse(
        "t.yaml",
        "\
logs:
  checkpoint: { dir: /var/lib/tandem/logs }
  sources:
    app: { paths: [/var/log/app/*.log] }
  sinks:
    central: { type: http, url: http://127.0.0.1:9880/ingest }
",
    )
    .unwrap();
    assert!(c.listeners.is_empty());
    let logs = c.logs.unwrap();
    assert_eq!(
        logs.checkpoint_dir,
        std::path::Path::new("/var/lib/tandem/logs")
    );
    assert_eq!(logs.sync_interval, Duration::from_secs(1));
    assert_eq!(logs.memory_budget, 4 << 20);
    assert_eq!(logs.flush_timeout, Duration::from_secs(5));
    let s = &logs.sources[0];
    assert_eq!(
        (s.name.as_str(), &s.parser, s.max_line_bytes),
        ("app", &LogParser::Plain, 65536)
    );
    let f = s.kind.file().unwrap();
    assert_eq!(f.paths, ["/var/log/app/*.log"]);
    assert_eq!(f.start_at, StartAt::Beginning);
    assert_eq!(f.poll_interval, Duration::from_millis(250));
    assert_eq!(f.scan_interval, Duration::from_secs(1));
    let k = &logs.sinks[0];
    assert_eq!(k.sources, ["app"]);
    assert_eq!(k.concurrency, 1);
    assert_eq!(
        (k.backoff, k.max_backoff),
        (Duration::from_millis(100), Duration::from_secs(30))
    );
    assert_eq!(
        (k.batch.max_lines, k.batch.max_bytes, k.batch.timeout),
        (1000, 1 << 20, Duration::from_secs(1))
    );
    let LogSinkKind::Http(h) = &k.kind else {
        panic!("{:?}", k.kind)
    };
    assert_eq!(h.url.to_string(), "http://127.0.0.1:9880/ingest");
    assert!(!h.gzip);
    assert_eq!(h.timeout, Duration::from_secs(30));
}

/// Every key given is carried into the model; header values never show in `GET /config`.
#[test]
fn every_key_translates() {
    let c = parse(
        "t.yaml",
        "\
listeners:
  inbound: { address: 127.0.0.1:7080, upstream: app }
upstreams:
  app: { endpoints: [127.0.0.1:8080] }
logs:
  checkpoint: { dir: /state, sync_interval: 200ms }
  memory_budget: 32MiB
  flush_timeout: 10s
  labels: { service: orders, env: prod }
  sources:
    app:
      type: file
      paths: [/var/log/app.log, \"/var/log/app/**/*.json\"]
      start_at: end
      parser: json
      max_line_bytes: 4096
      poll_interval: 50ms
      scan_interval: 2s
      labels: { env: canary }
    other: { paths: [/srv/x.log] }
  sinks:
    central:
      type: http
      url: http://logs.internal:8080/ingest
      headers: { authorization: Bearer s3cr3t-t0ken }
      gzip: true
      timeout: 5s
      sources: [app]
      batch: { max_lines: 500, max_bytes: 65536, timeout: 200ms }
      concurrency: 4
      backoff: 50ms
      max_backoff: 2s
    archive: { type: file, path: /archive/all.ndjson }
    debug: { type: console, sources: [other] }
",
    )
    .unwrap();
    let logs = c.logs.as_ref().unwrap();
    assert_eq!(logs.sync_interval, Duration::from_millis(200));
    assert_eq!(logs.memory_budget, 32 << 20);
    assert_eq!(logs.flush_timeout, Duration::from_secs(10));
    assert_eq!(
        logs.labels,
        [
            ("service".to_owned(), "orders".to_owned()),
            ("env".into(), "prod".into())
        ]
    );
    let app = &logs.sources[0];
    assert_eq!((&app.parser, app.max_line_bytes), (&LogParser::Json, 4096));
    assert_eq!(app.labels, [("env".to_owned(), "canary".to_owned())]);
    let f = app.kind.file().unwrap();
    assert_eq!(f.start_at, StartAt::End);
    assert_eq!(
        (f.poll_interval, f.scan_interval),
        (Duration::from_millis(50), Duration::from_secs(2))
    );
    let central = &logs.sinks[0];
    assert_eq!(central.sources, ["app"]);
    assert_eq!(central.concurrency, 4);
    assert_eq!(
        (central.batch.max_lines, central.batch.max_bytes),
        (500, 65536)
    );
    let LogSinkKind::Http(h) = &central.kind else {
        panic!()
    };
    assert!(h.gzip);
    assert_eq!(h.headers[0].0.as_str(), "authorization");
    assert_eq!(logs.sinks[1].sources, ["app", "other"]);
    assert!(
        matches!(&logs.sinks[1].kind, LogSinkKind::File { path, .. } if path.ends_with("all.ndjson"))
    );
    assert!(matches!(logs.sinks[2].kind, LogSinkKind::Console { .. }));
    let shown = serde_json::to_string(&c).unwrap();
    assert!(!shown.contains("s3cr3t"), "{shown}");
    assert!(shown.contains(r#""authorization":"<redacted>""#), "{shown}");
}

/// Each semantic mistake is reported at its own line and key, all in one run.
#[test]
fn mistakes_are_reported_at_their_keys() {
    let text = "\
logs:
  memory_budget: 100KiB
  sources:
    app:
      paths: [var/log/app.log, \"/var/log/[x.log\"]
      max_line_bytes: 10
      labels: { 1bad: x }
  sinks:
    central:
      type: http
      url: ftp://logs.internal/ingest
      path: /tmp/x
      sources: [ap]
      batch: { max_lines: 0, max_bytes: 16mb }
      concurrency: 100
      backoff: 2s
      max_backoff: 1s
      headers: { content-length: \"5\" }
    archive: { type: file }
";
    let e = errors(text);
    assert_eq!(
        keys(&e),
        [
            (Some(1), "logs"),
            (Some(2), "logs.memory_budget"),
            (Some(5), "logs.sources.app.paths[0]"),
            (Some(5), "logs.sources.app.paths[1]"),
            (Some(6), "logs.sources.app.max_line_bytes"),
            (Some(7), "logs.sources.app.labels.1bad"),
            (Some(11), "logs.sinks.central.url"),
            (Some(12), "logs.sinks.central.path"),
            (Some(13), "logs.sinks.central.sources[0]"),
            (Some(14), "logs.sinks.central.batch.max_lines"),
            (Some(14), "logs.sinks.central.batch.max_bytes"),
            (Some(15), "logs.sinks.central.concurrency"),
            (Some(17), "logs.sinks.central.max_backoff"),
            (Some(18), "logs.sinks.central.headers.content-length"),
            (Some(19), "logs.sinks.archive"),
        ],
        "{}",
        ConfigErrors(e.clone())
    );
    let hint = |k: &str| &e.iter().find(|e| e.key == k).unwrap().hint;
    assert!(hint("logs").contains("checkpoint: { dir: /var/lib/tandem/logs }"));
    assert!(hint("logs.memory_budget").contains("1MiB to 64GiB"));
    assert!(hint("logs.sources.app.paths[0]").contains("/var/log/app/var/log/app.log"));
    assert!(hint("logs.sinks.central.sources[0]").contains("did you mean \"app\"?"));
    assert!(hint("logs.sinks.central.batch.max_bytes").contains("\"16MiB\""));
    assert!(hint("logs.sinks.archive").contains("path: /var/log/tandem/out.ndjson"));
}

/// No sources and no sinks: both named, with an example.
#[test]
fn empty_sections() {
    let e = errors("logs:\n  checkpoint: { dir: /s }\n");
    assert_eq!(
        keys(&e),
        [(Some(1), "logs.sources"), (Some(1), "logs.sinks")]
    );
    assert!(e[0].hint.contains("paths:"), "{}", e[0]);
    assert!(e[1].hint.contains("type: http"), "{}", e[1]);
}

/// Sinks that would read back their own output, or a checkpoint inside the tailed paths, are
/// refused: both loop without end.
#[test]
fn feedback_loops_are_refused() {
    let e = errors(
        "\
logs:
  checkpoint: { dir: /var/log/app }
  sources:
    app: { paths: [\"/var/log/app/*\"] }
  sinks:
    copy: { type: file, path: /var/log/app/copy.ndjson }
",
    );
    assert_eq!(
        keys(&e),
        [
            (Some(2), "logs.checkpoint.dir"),
            (Some(6), "logs.sinks.copy.path")
        ]
    );
    assert!(
        e[1].message.contains("read back what it writes"),
        "{}",
        e[1]
    );
}

/// Unknown keys and wrong enum values under `logs` get the usual did-you-mean hints.
#[test]
fn typos_under_logs() {
    let e = errors(
        "\
logs:
  checkpoint: { dir: /s }
  sources:
    app: { paths: [/a.log], parsr: json }
  sinks:
    x: { type: htp, url: http://h/ }
",
    );
    assert_eq!(e[0].key, "logs.sources.app.parsr");
    assert!(e[0].hint.contains("did you mean \"parser\"?"), "{}", e[0]);
    assert_eq!(e[1].line, Some(6));
    assert!(e[1].hint.contains("did you mean \"http\"?"), "{}", e[1]);
}

/// A source no sink receives is a mistake: its lines would be read and never shipped.
#[test]
fn every_source_reaches_a_sink() {
    let e = errors(
        "\
logs:
  checkpoint: { dir: /s }
  sources:
    app: { paths: [/a.log] }
    other: { paths: [/b.log] }
  sinks:
    x: { type: console, sources: [app] }
",
    );
    assert_eq!(keys(&e), [(Some(5), "logs.sources.other")]);
    assert!(e[0].hint.contains("sources"), "{}", e[0]);
}

/// Without `logs`, a file still needs a listener.
#[test]
fn listeners_still_required_without_logs() {
    let e = errors("upstreams:\n  app: { endpoints: [127.0.0.1:1] }\n");
    assert_eq!(e[0].key, "listeners");
}

#[test]
fn sizes() {
    assert_eq!(parse_size("1024"), Some(1024));
    assert_eq!(parse_size("16MiB"), Some(16 << 20));
    assert_eq!(parse_size("16 MiB"), Some(16 << 20));
    assert_eq!(parse_size("2KB"), Some(2000));
    assert_eq!(parse_size("1GiB"), Some(1 << 30));
    assert_eq!(parse_size("16mb"), None);
    assert_eq!(parse_size("MiB"), None);
    assert_eq!(parse_size("-1"), None);
    assert_eq!(parse_size("99999999999999999999GiB"), None);
}

/// The `logs:` examples in docs/logship.md and docs/config.md are valid.
#[test]
fn docs_logs_examples_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
    for (file, sinks) in [("logship.md", 1), ("config.md", 5)] {
        let doc = std::fs::read_to_string(root.join(file)).unwrap();
        let start = doc.find("```yaml\nlogs:").unwrap() + "```yaml\n".len();
        let end = start + doc[start..].find("```").unwrap();
        let c = parse(file, &doc[start..end]).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(c.logs.unwrap().sinks.len(), sinks, "{file}");
    }
}

/// `stdio` and `access_log` sources: defaults (both streams, 256MiB disk buffer, JSON for the
/// access log), a chosen stream and size.
#[test]
fn stream_sources_translate() {
    let c = parse(
        "t.yaml",
        "\
access_log: {}
logs:
  checkpoint: { dir: /var/lib/tandem/logs }
  sources:
    app: { type: stdio }
    errs: { type: stdio, streams: [stderr], disk_buffer: 1MiB }
    access: { type: access_log }
  sinks:
    central: { type: http, url: http://127.0.0.1:9880/ingest }
",
    );
    // Two stdio sources are refused; check the first alone below.
    let e = match c {
        Ok(_) => panic!("two stdio sources accepted"),
        Err(e) => e.0,
    };
    assert_eq!(keys(&e), [(Some(6), "logs.sources.errs")], "{e:?}");

    let c = parse(
        "t.yaml",
        "\
access_log: {}
logs:
  checkpoint: { dir: /var/lib/tandem/logs }
  sources:
    app: { type: stdio, streams: [stderr], disk_buffer: 1MiB }
    access: { type: access_log }
  sinks:
    central: { type: http, url: http://127.0.0.1:9880/ingest }
",
    )
    .unwrap();
    let logs = c.logs.unwrap();
    let LogSourceKind::Stdio(s) = &logs.sources[0].kind else {
        panic!("{:?}", logs.sources[0].kind)
    };
    assert_eq!(
        (s.stdout, s.stderr, s.buffer.disk_buffer),
        (false, true, 1 << 20)
    );
    assert_eq!(logs.sources[0].parser, LogParser::Plain);
    let LogSourceKind::AccessLog(b) = &logs.sources[1].kind else {
        panic!("{:?}", logs.sources[1].kind)
    };
    assert_eq!(b.disk_buffer, 256 << 20);
    assert_eq!(logs.sources[1].parser, LogParser::Json);
}

/// `protocol: grpc` on an OTLP sink: the method's path on a bare host:port URL; a URL with a
/// path, JSON encoding, or `protocol` on another sink are reported at their lines.
#[test]
fn otlp_grpc() {
    let c = parse(
        "t.yaml",
        "\
logs:
  checkpoint: { dir: /var/lib/tandem/logs }
  sources:
    app: { paths: [/var/log/app/*.log] }
  sinks:
    otel: { type: otlp, url: \"http://collector:4317\", protocol: grpc, gzip: true }
    otel2: { type: otlp, url: \"http://collector:4318\", protocol: http }
",
    )
    .unwrap();
    let logs = c.logs.unwrap();
    let LogSinkKind::Http(h) = &logs.sinks[0].kind else {
        panic!()
    };
    assert_eq!(
        h.url.to_string(),
        "http://collector:4317/opentelemetry.proto.collector.logs.v1.LogsService/Export"
    );
    assert!(
        matches!(
            h.api,
            HttpApi::Otlp {
                json: false,
                grpc: true
            }
        ) && h.gzip
    );
    let LogSinkKind::Http(h) = &logs.sinks[1].kind else {
        panic!()
    };
    assert_eq!(h.url.to_string(), "http://collector:4318/v1/logs");
    assert!(matches!(h.api, HttpApi::Otlp { grpc: false, .. }));

    let e = errors(
        "\
logs:
  checkpoint: { dir: /var/lib/tandem/logs }
  sources:
    app: { paths: [/var/log/app/*.log] }
  sinks:
    a: { type: otlp, url: \"http://collector:4317/v1/logs\", protocol: grpc }
    b: { type: otlp, url: \"http://collector:4317\", protocol: grpc, encoding: json }
    c: { type: loki, url: \"http://loki:3100\", protocol: grpc }
",
    );
    assert_eq!(
        keys(&e),
        [
            (Some(6), "logs.sinks.a.url"),
            (Some(7), "logs.sinks.b.encoding"),
            (Some(8), "logs.sinks.c.protocol"),
        ],
        "{}",
        ConfigErrors(e.clone())
    );
}

/// `document_id` is an Elasticsearch key: on another sink it is reported at its line; an
/// unknown value names the choices.
#[test]
fn document_id_mistakes() {
    let e = errors(
        "\
logs:
  checkpoint: { dir: /var/lib/tandem/logs }
  sources:
    app: { paths: [/var/log/app/*.log] }
  sinks:
    loki: { type: loki, url: \"http://loki:3100\", document_id: auto }
",
    );
    assert_eq!(
        keys(&e),
        [(Some(6), "logs.sinks.loki.document_id")],
        "{}",
        ConfigErrors(e.clone())
    );
    let e = errors(
        "\
logs:
  checkpoint: { dir: /var/lib/tandem/logs }
  sources:
    app: { paths: [/var/log/app/*.log] }
  sinks:
    es:
      type: elasticsearch
      url: http://es:9200
      document_id: hash
",
    );
    assert_eq!(e.len(), 1, "{}", ConfigErrors(e.clone()));
    assert_eq!(e[0].line, Some(9), "{}", ConfigErrors(e.clone()));
    let text = ConfigErrors(e.clone()).to_string();
    assert!(text.contains("auto") && text.contains("none"), "{text}");
}

/// `multiline` on stdio and access_log sources: translated as on a file source; a bad
/// pattern or bound reported at its line and key.
#[test]
fn stream_sources_join_lines() {
    let c = parse(
        "t.yaml",
        r#"access_log: {}
logs:
  checkpoint: { dir: /var/lib/tandem/logs }
  sources:
    app: { type: stdio, multiline: { start: '^\S', timeout: 300ms, max_lines: 20 } }
    access: { type: access_log, multiline: { start: '^\{' } }
  sinks:
    central: { type: http, url: http://127.0.0.1:9880/ingest }
"#,
    )
    .unwrap();
    let logs = c.logs.unwrap();
    let m = logs.sources[0].multiline.as_ref().unwrap();
    assert_eq!(m.start.0.as_str(), r"^\S");
    assert_eq!(
        (m.timeout, m.max_lines, m.max_bytes),
        (Duration::from_millis(300), 20, 256 << 10)
    );
    let m = logs.sources[1].multiline.as_ref().unwrap();
    assert_eq!((m.timeout, m.max_lines), (Duration::from_secs(1), 500));

    let e = errors(
        "\
logs:
  checkpoint: { dir: /var/lib/tandem/logs }
  sources:
    app:
      type: stdio
      multiline: { start: '(', max_bytes: 1KiB, max_lines: 0 }
  sinks:
    central: { type: console }
",
    );
    assert_eq!(
        keys(&e),
        [
            (Some(6), "logs.sources.app.multiline.start"),
            (Some(6), "logs.sources.app.multiline.max_lines"),
        ],
        "{}",
        ConfigErrors(e.clone())
    );
}

/// File keys on stream sources, stream keys on file sources, an access_log source without
/// the access log, a tiny disk buffer: each at its key.
#[test]
fn stream_source_mistakes() {
    let e = errors(
        "\
logs:
  checkpoint: { dir: /var/lib/tandem/logs }
  sources:
    app: { type: stdio, paths: [/x.log], disk_buffer: 1KiB, streams: [] }
    files: { paths: [/y.log], disk_buffer: 1MiB }
    access: { type: access_log, streams: [stdout] }
  sinks:
    central: { type: http, url: http://127.0.0.1:9880/ingest }
",
    );
    assert_eq!(
        keys(&e),
        [
            (Some(4), "logs.sources.app.paths"),
            (Some(4), "logs.sources.app.disk_buffer"),
            (Some(4), "logs.sources.app.streams"),
            (Some(5), "logs.sources.files.disk_buffer"),
            (Some(6), "logs.sources.access.streams"),
            (Some(6), "logs.sources.access.type"),
        ],
        "{}",
        ConfigErrors(e.clone())
    );
    let hint = |k: &str| &e.iter().find(|e| e.key == k).unwrap().hint;
    assert!(hint("logs.sources.access.type").contains("access_log: {}"));
    assert!(hint("logs.sources.app.disk_buffer").contains("64KiB"));
}

/// Loki, Elasticsearch and OTLP sinks: their API path added to a bare URL (kept when given),
/// tenant and credentials as headers (redacted in `GET /config`), index pattern and data
/// stream, TLS files with a server name, and `https` without `tls` using the system bundle.
#[test]
fn api_sinks_translate() {
    let c = parse(
        "t.yaml",
        "\
logs:
  checkpoint: { dir: /var/lib/tandem/logs }
  sources:
    app: { paths: [/var/log/app/*.log] }
  sinks:
    loki: { type: loki, url: \"http://loki:3100\", tenant: team-a, stream_labels: [service, level] }
    es:
      type: elasticsearch
      url: https://es:9200/proxy/
      index: app-%Y.%m
      data_stream: true
      document_id: none
      username: elastic
      password: changeme
      tls: { ca: /etc/ca.pem, cert: /etc/c.pem, key: /etc/k.pem, server_name: es.internal }
    es2: { type: elasticsearch, url: \"https://es:9200\", api_key: abc== }
    otel: { type: otlp, url: \"http://collector:4318/custom/logs\", gzip: true }
    otel2: { type: otlp, url: \"http://collector:4318\", encoding: json }
    loki2: { type: loki, url: \"http://loki:3100\", encoding: protobuf }
",
    )
    .unwrap();
    let logs = c.logs.as_ref().unwrap();
    let http = |i: usize| match &logs.sinks[i].kind {
        LogSinkKind::Http(h) => h.clone(),
        k => panic!("{k:?}"),
    };
    let header = |h: &HttpLogSink, n: &str| {
        h.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.to_str().unwrap().to_owned())
    };
    let loki = http(0);
    assert_eq!(loki.url.to_string(), "http://loki:3100/loki/api/v1/push");
    assert_eq!(header(&loki, "x-scope-orgid").as_deref(), Some("team-a"));
    assert!(
        matches!(&loki.api, HttpApi::Loki { stream_labels: Some(l), protobuf: false } if l == &["service", "level"])
    );
    assert!(loki.tls.is_none());
    let es = http(1);
    assert_eq!(es.url.to_string(), "https://es:9200/proxy/_bulk");
    assert!(
        matches!(&es.api, HttpApi::Elasticsearch { index, data_stream: true, document_id: false } if index == "app-%Y.%m")
    );
    // base64("elastic:changeme")
    assert_eq!(
        header(&es, "authorization").as_deref(),
        Some("Basic ZWxhc3RpYzpjaGFuZ2VtZQ==")
    );
    let tls = es.tls.as_ref().unwrap();
    assert_eq!(tls.ca.as_deref(), Some(std::path::Path::new("/etc/ca.pem")));
    assert_eq!(tls.client, Some(("/etc/c.pem".into(), "/etc/k.pem".into())));
    assert_eq!(tls.server_name.as_deref(), Some("es.internal"));
    let es2 = http(2);
    assert_eq!(es2.url.to_string(), "https://es:9200/_bulk");
    assert_eq!(
        header(&es2, "authorization").as_deref(),
        Some("ApiKey abc==")
    );
    assert!(
        matches!(&es2.api, HttpApi::Elasticsearch { index, data_stream: false, document_id: true } if index == "logs-%Y.%m.%d")
    );
    let t = es2.tls.as_ref().unwrap();
    assert!(t.ca.is_none() && t.client.is_none() && t.server_name.is_none());
    let otel = http(3);
    assert_eq!(otel.url.to_string(), "http://collector:4318/custom/logs");
    assert!(
        matches!(
            otel.api,
            HttpApi::Otlp {
                json: false,
                grpc: false
            }
        ) && otel.gzip
    );
    assert!(matches!(
        http(4).api,
        HttpApi::Otlp {
            json: true,
            grpc: false
        }
    ));
    assert_eq!(http(4).url.to_string(), "http://collector:4318/v1/logs");
    assert!(matches!(
        http(5).api,
        HttpApi::Loki {
            stream_labels: None,
            protobuf: true
        }
    ));
    let shown = serde_json::to_string(&c).unwrap();
    assert!(
        !shown.contains("ZWxhc3Rp") && !shown.contains("abc=="),
        "{shown}"
    );
}

/// The new sinks' mistakes, each at its key with a fix.
#[test]
fn api_sink_mistakes() {
    let text = "\
logs:
  checkpoint: { dir: /var/lib/tandem/logs }
  sources:
    app: { paths: [/var/log/app/*.log] }
  sinks:
    a: { type: http, url: \"http://x\", tenant: t, index: i }
    b: { type: loki, stream_labels: [service, 2x, service] }
    c:
      type: elasticsearch
      url: http://es:9200
      index: Logs-%Y-%q
      api_key: k
      username: u
      tls: { ca: /ca.pem }
    d:
      type: elasticsearch
      url: https://es:9200
      password: p
      tls: { ca: ca.pem, cert: /c.pem, server_name: \"bad name\" }
    e: { type: otlp, url: \"https://c:4318\", tls: { key: /k.pem } }
    f: { type: file, path: /out.ndjson, tls: { ca: /ca.pem } }
    g: { type: elasticsearch, url: \"http://l\", encoding: json }
    h: { type: loki, url: \"http://l\", encoding: protobuf, gzip: true }
";
    let e = errors(text);
    assert_eq!(
        keys(&e),
        [
            (Some(6), "logs.sinks.a.tenant"),
            (Some(6), "logs.sinks.a.index"),
            (Some(7), "logs.sinks.b.url"),
            (Some(7), "logs.sinks.b.stream_labels[1]"),
            (Some(7), "logs.sinks.b.stream_labels[2]"),
            (Some(11), "logs.sinks.c.index"),
            (Some(12), "logs.sinks.c.api_key"),
            (Some(14), "logs.sinks.c.tls"),
            (Some(18), "logs.sinks.d.password"),
            (Some(19), "logs.sinks.d.tls.ca"),
            (Some(19), "logs.sinks.d.tls.cert"),
            (Some(19), "logs.sinks.d.tls.server_name"),
            (Some(20), "logs.sinks.e.tls.key"),
            (Some(21), "logs.sinks.f.tls"),
            (Some(22), "logs.sinks.g.encoding"),
            (Some(23), "logs.sinks.h.gzip"),
        ],
        "{}",
        ConfigErrors(e.clone())
    );
    let hint = |k: &str| &e.iter().find(|e| e.key == k).unwrap().hint;
    assert!(hint("logs.sinks.a.tenant").contains("loki"));
    assert!(hint("logs.sinks.b.url").contains("http://loki.internal:3100"));
    assert!(hint("logs.sinks.c.index").contains("%Y"));
    assert!(hint("logs.sinks.c.tls").contains("https://"));
    assert!(hint("logs.sinks.d.tls.cert").contains("key:"));
    assert!(hint("logs.sinks.f.tls").contains("http, loki, elasticsearch, otlp"));
    assert!(hint("logs.sinks.g.encoding").contains("otlp, loki"));
    assert!(hint("logs.sinks.h.gzip").contains("encoding: json"));
}

/// Parsing and shaping keys translate to the model: patterns compiled, levels, sampling as
/// one-in-N, redaction with built-in and custom patterns, the tracing service as a label.
#[test]
fn parsing_and_shaping_keys() {
    let c = parse(
        "t.yaml",
        r#"
tracing:
  otlp: { endpoint: "http://127.0.0.1:4318" }
  service_name: orders
logs:
  checkpoint: { dir: /var/lib/tandem/logs }
  sources:
    app:
      paths: [/var/log/app/*.log]
      parser: regex
      pattern: '^(?P<ts>\S+) (?P<level>\w+) (?P<message>.*)$'
      multiline: { start: '^\d{4}-', timeout: 2s, max_lines: 50, max_bytes: 64KiB }
      timestamp: { field: ts, format: "%Y-%m-%dT%H:%M:%S" }
      level: { field: severity, pattern: '\[(\w+)\]' }
      trace: { fields: [tid], pattern: 'trace=(?P<trace_id>\w+)' }
      redact: { keys: [Pin], patterns: [bearer, credit_card, 'sk_[a-z0-9]+'], marker: "***" }
      drop: { levels: [trace, debug] }
      sample: { level: info, rate: 0.1 }
    plain: { paths: [/var/log/other.log], parser: logfmt }
  sinks:
    central: { type: http, url: http://127.0.0.1:9880/ingest }
"#,
    )
    .unwrap();
    let logs = c.logs.unwrap();
    assert_eq!(logs.labels, [("service".to_owned(), "orders".to_owned())]);
    let s = &logs.sources[0];
    let LogParser::Regex(p) = &s.parser else {
        panic!("{:?}", s.parser)
    };
    assert!(p.0.is_match("t INFO hello"));
    let m = s.multiline.as_ref().unwrap();
    assert_eq!(
        (m.timeout, m.max_lines, m.max_bytes),
        (Duration::from_secs(2), 50, 64 << 10)
    );
    assert!(m.start.0.is_match("2026-01-01"));
    let sh = &s.shape;
    let ts = sh.timestamp.as_ref().unwrap();
    assert_eq!(
        (ts.field.as_str(), &ts.format),
        ("ts", &TimeFormat::Strftime("%Y-%m-%dT%H:%M:%S".into()))
    );
    assert_eq!(sh.level.fields, ["severity"]);
    assert!(sh.level.pattern.is_some());
    assert_eq!(sh.trace.fields, ["tid"]);
    assert_eq!(sh.trace.span_fields[0], "span_id");
    assert_eq!(sh.redact.keys, ["pin"]);
    assert_eq!(sh.redact.patterns.len(), 3);
    assert_eq!(
        sh.redact.patterns[..2],
        [RedactPattern::Bearer, RedactPattern::CreditCard]
    );
    assert_eq!(sh.redact.marker, "***");
    assert_eq!(sh.drop_levels, [LogLevel::Trace, LogLevel::Debug]);
    let smp = sh.sample.as_ref().unwrap();
    assert_eq!((smp.level, smp.every), (LogLevel::Info, 10));
    assert_eq!(logs.sources[1].parser, LogParser::Logfmt);
    let d = &logs.sources[1].shape;
    assert!(d.timestamp.is_none() && d.sample.is_none() && d.drop_levels.is_empty());
    assert_eq!(d.redact.keys.len(), DEFAULT_REDACT_KEYS.len());
    // `service` given in the labels wins over the tracing name.
    let c = parse(
        "t.yaml",
        "tracing: { otlp: { endpoint: \"http://127.0.0.1:4318\" }, service_name: orders }\n\
         logs: { checkpoint: { dir: /c }, labels: { service: billing }, sources: { a: { paths: [/a] } }, sinks: { k: { type: console } } }\n",
    )
    .unwrap();
    assert_eq!(
        c.logs.unwrap().labels,
        [("service".to_owned(), "billing".to_owned())]
    );
}

/// Each mistake in the parsing keys is reported at its line and key, naming the bad pattern.
#[test]
fn parsing_mistakes_name_their_key_and_pattern() {
    let e = errors(
        r#"logs:
  checkpoint: { dir: /c }
  sources:
    a:
      paths: [/a]
      parser: regex
      pattern: '^(?P<ts>\S+'
      multiline: { start: '[z-a]', max_lines: 0 }
      timestamp: { format: "%Q-nope" }
      level: { pattern: '(' }
      trace: { pattern: 'trace=(\w+)' }
      redact: { patterns: ['x*', '(?P<'] }
      drop: { levels: [info] }
      sample: { level: info, rate: 1.5 }
    b: { paths: [/b], pattern: 'x' }
    c: { paths: [/c2], parser: regex }
    d: { paths: [/d], parser: regex, pattern: '\d+' }
    e: { paths: [/e], timestamp: { format: iso } }
  sinks:
    k: { type: console }
"#,
    );
    let got = keys(&e);
    for want in [
        (Some(7), "logs.sources.a.pattern"),
        (Some(8), "logs.sources.a.multiline.start"),
        (Some(8), "logs.sources.a.multiline.max_lines"),
        (Some(9), "logs.sources.a.timestamp.format"),
        (Some(10), "logs.sources.a.level.pattern"),
        (Some(11), "logs.sources.a.trace.pattern"),
        (Some(12), "logs.sources.a.redact.patterns[0]"),
        (Some(12), "logs.sources.a.redact.patterns[1]"),
        (Some(14), "logs.sources.a.sample.rate"),
        (Some(14), "logs.sources.a.sample.level"),
        (Some(15), "logs.sources.b.pattern"),
        (Some(16), "logs.sources.c"),
        (Some(17), "logs.sources.d.pattern"),
        (Some(18), "logs.sources.e.timestamp.format"),
    ] {
        assert!(got.contains(&want), "{want:?} not in {got:?}");
    }
    let bad = e
        .iter()
        .find(|e| e.key == "logs.sources.a.pattern")
        .unwrap();
    assert!(bad.message.contains(r"`^(?P<ts>\S+`"), "{}", bad.message);
    assert!(bad.message.contains("unclosed group"), "{}", bad.message);
    assert_eq!(bad.file, "t.yaml");
    assert!(!bad.hint.is_empty());
}

/// Without tracing, the registered service names `service`, and the registered instance id (else
/// its advertised address) names `instance`; labels given in `logs.labels` win.
#[test]
fn service_and_instance_labels_from_registration() {
    let text = |labels: &str, id: &str| {
        format!(
            "etcd: {{ endpoints: [http://127.0.0.1:2379] }}\n\
             registration: {{ service: billing, listener: inbound, address: 10.0.0.5:7080{id} }}\n\
             listeners: {{ inbound: {{ address: 0.0.0.0:7080, upstream: app }} }}\n\
             upstreams: {{ app: {{ endpoints: [127.0.0.1:8080] }} }}\n\
             logs: {{ checkpoint: {{ dir: /c }}, labels: {{ {labels} }}, sources: {{ a: {{ paths: [/a] }} }}, sinks: {{ k: {{ type: console }} }} }}\n"
        )
    };
    let labels = |t: String| parse("t.yaml", &t).unwrap().logs.unwrap().labels;
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    assert_eq!(
        labels(text("env: prod", "")),
        pairs(&[
            ("env", "prod"),
            ("service", "billing"),
            ("instance", "10.0.0.5:7080")
        ])
    );
    assert_eq!(
        labels(text("", ", id: billing-7")),
        pairs(&[("service", "billing"), ("instance", "billing-7")])
    );
    assert_eq!(
        labels(text("instance: mine, service: s", "")),
        pairs(&[("instance", "mine"), ("service", "s")])
    );
}

/// File sinks: `rotate` (defaults 100MiB and 5, bounds checked) and `format` (also on console
/// sinks); neither on an HTTP sink.
#[test]
fn file_sink_rotation_and_format() {
    let c = parse(
        "t.yaml",
        "\
logs:
  checkpoint: { dir: /var/lib/tandem/logs }
  sources:
    app: { paths: [/var/log/app/*.log] }
  sinks:
    a: { type: file, path: /var/log/out/a.log, rotate: {}, format: text }
    b: { type: file, path: /var/log/out/b.log, rotate: { max_bytes: 1MiB, keep: 30 } }
    c: { type: console, format: text }
",
    )
    .unwrap();
    let sinks = c.logs.unwrap().sinks;
    match &sinks[0].kind {
        LogSinkKind::File {
            rotate: Some(r),
            format,
            ..
        } => {
            assert_eq!((r.max_bytes, r.keep), (100 << 20, 5));
            assert_eq!(*format, LineFormat::Text);
        }
        k => panic!("{k:?}"),
    }
    match &sinks[1].kind {
        LogSinkKind::File {
            rotate: Some(r),
            format,
            ..
        } => {
            assert_eq!((r.max_bytes, r.keep), (1 << 20, 30));
            assert_eq!(*format, LineFormat::Ndjson);
        }
        k => panic!("{k:?}"),
    }
    assert!(matches!(
        sinks[2].kind,
        LogSinkKind::Console {
            format: LineFormat::Text
        }
    ));

    let e = errors(
        "\
logs:
  checkpoint: { dir: /var/lib/tandem/logs }
  sources:
    app: { paths: [/var/log/app/*.log] }
  sinks:
    a: { type: file, path: /var/log/out/a.log, rotate: { max_bytes: 1KiB, keep: 0 } }
    b: { type: http, url: http://127.0.0.1:1/, format: text, rotate: {} }
",
    );
    assert_eq!(
        keys(&e),
        vec![
            (Some(6), "logs.sinks.a.rotate.max_bytes"),
            (Some(6), "logs.sinks.a.rotate.keep"),
            (Some(7), "logs.sinks.b.rotate"),
            (Some(7), "logs.sinks.b.format"),
        ],
        "{e:#?}"
    );
}
