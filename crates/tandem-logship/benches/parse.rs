//! Criterion benches for the per-line cost of parsing and shaping on a source's thread: each
//! parser on a typical line, the `json` line with extraction and key redaction, pattern
//! redaction, and multi-line joining of a stack trace. Reading, framing and encoding are not
//! here (the e2e runs and docs/benchmarks.md measure the whole path).
//!
//! Run: `cargo bench -p tandem-logship --bench parse`.

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tandem_config::{LogParser, LogPattern, RedactPattern, Shape, TimeFormat, TimestampRule};
use tandem_logship::framer::Line;
use tandem_logship::multiline::{JoinRules, Joiner};
use tandem_logship::shape::Shaper;

const PLAIN: &[u8] =
    b"2026-11-24T10:00:00.123Z INFO [main] request handled in 182 us by worker 3 seq=000123456";
const JSON: &[u8] = br#"{"ts":"2026-11-24T10:00:00.123Z","level":"info","msg":"request handled in 182 us","worker":3,"seq":123456,"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","password":"hunter2"}"#;
const LOGFMT: &[u8] = br#"ts=2026-11-24T10:00:00.123Z level=info msg="request handled in 182 us" worker=3 seq=123456 trace_id=4bf92f3577b34da6a3ce929d0e0e4736"#;

fn shaper(parser: LogParser, shape: impl FnOnce(&mut Shape)) -> Shaper {
    let mut s = Shape::default();
    shape(&mut s);
    Shaper::new(&parser, &s)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("shape_line");
    g.throughput(Throughput::Elements(1));
    let cases: Vec<(&str, Shaper, &[u8])> = vec![
        ("plain", shaper(LogParser::Plain, |_| {}), PLAIN),
        ("json", shaper(LogParser::Json, |_| {}), JSON),
        (
            "json_extract_time",
            shaper(LogParser::Json, |s| {
                s.timestamp = Some(TimestampRule {
                    field: "ts".into(),
                    format: TimeFormat::Rfc3339,
                })
            }),
            JSON,
        ),
        ("logfmt", shaper(LogParser::Logfmt, |_| {}), LOGFMT),
        (
            "regex",
            shaper(
                LogParser::Regex(LogPattern(
                    regex::Regex::new(
                        r"^(?P<ts>\S+) (?P<level>[A-Z]+) \[(?P<thread>[^\]]+)\] (?P<message>.*)$",
                    )
                    .unwrap(),
                )),
                |_| {},
            ),
            PLAIN,
        ),
        (
            "plain_redact_patterns",
            shaper(LogParser::Plain, |s| {
                s.redact.patterns = vec![RedactPattern::Bearer, RedactPattern::CreditCard]
            }),
            PLAIN,
        ),
    ];
    for (name, mut s, line) in cases {
        let line = Bytes::from_static(line);
        g.bench_function(name, |b| b.iter(|| black_box(s.shape(line.clone()).ok())));
    }
    g.finish();

    // A 12-line stack trace, joined: per line pushed.
    let mut lines = Vec::new();
    let mut end = 0u64;
    for i in 0..12 {
        let text = if i == 0 {
            Bytes::from_static(b"2026-11-24T10:00:00Z ERROR [main] request failed")
        } else {
            Bytes::from_static(b"\tat com.example.orders.Service.place(Service.java:42)")
        };
        end += text.len() as u64 + 1;
        lines.push(Line {
            text,
            end,
            cut: false,
        });
    }
    let rules = JoinRules {
        start: regex::bytes::Regex::new(r"^\d{4}-").unwrap(),
        timeout: Duration::from_secs(1),
        max_lines: 500,
        max_bytes: 256 << 10,
    };
    let mut g = c.benchmark_group("multiline");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("join_12_line_trace", |b| {
        let now = Instant::now();
        let mut out = Vec::new();
        b.iter(|| {
            let mut j = Joiner::new(rules.clone(), 0);
            for l in &lines {
                j.push(l, now, &mut out);
            }
            out.extend(j.flush());
            black_box(out.drain(..).count())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
