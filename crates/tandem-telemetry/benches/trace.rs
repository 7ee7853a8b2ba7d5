//! Criterion benches for what tracing adds to a request on the request path: reading the
//! caller's context, starting a server span, writing a try's context, and building and queueing
//! a sampled span. Export (protobuf encoding, the network) runs on the exporter task and is not
//! here.
//!
//! Run: `cargo bench -p tandem-telemetry --bench trace`.
//!
//! 2026-11-23, 2-vCPU AMD EPYC KVM guest shared with other benchmark runs, rustc 1.95, glibc
//! malloc (the binary uses mimalloc): reading traceparent + tracestate 100 ns; starting a server
//! span (read, sample, two random ids) 115 ns; one try's HTTP/1.1 trace lines 65 ns; strip and
//! inject into an HTTP/2 header map 130 ns; building and queueing a sampled server span with
//! 13 attributes 300 ns; encoding a batch of 512 such spans 225 µs (440 ns a span, dropping the
//! records included; 1.5 µs a span through `opentelemetry-proto`'s generated structs, hence
//! `otlp::Encoder`). A sampled request with one try costs about 0.8 µs on the request path and
//! 0.9 µs on the exporter task.
//!
//! Since then (2026-11-24, issue 4) the proxy writes its spans as protobuf as they end
//! ("write + record a sampled server span (EncodedSpans)"), and the batch bench measures
//! splicing such chunks into a request, which is all the exporter does now. Not timed yet (no
//! wall-clock runs on the shared machine); callgrind counts per request are in
//! docs/benchmarks.md ("Telemetry on vs off").

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use prometheus_client::registry::Registry;
use tandem_config::Propagation;
use tandem_telemetry::trace::{
    otlp, EncodedSpans, Propagator, SpanKind, SpanRecord, SpanStart, Status, TraceMetrics, Tracer,
    Value,
};

fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("orders.internal:8080"));
    h.insert("user-agent", HeaderValue::from_static("curl/8.5.0"));
    h.insert("accept", HeaderValue::from_static("*/*"));
    h.insert(
        "traceparent",
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    h.insert("tracestate", HeaderValue::from_static("congo=t61rcWkgMzE"));
    h
}

fn tracer() -> std::sync::Arc<Tracer> {
    tracer_with_queue(1024)
}

fn tracer_with_queue(queue: usize) -> std::sync::Arc<Tracer> {
    let text = format!(
        "listeners:\n  a: {{ address: 127.0.0.1:1, upstream: u }}\nupstreams:\n  u: {{}}\n\
         tracing:\n  otlp: {{ endpoint: \"http://127.0.0.1:4318\" }}\n  queue: {}\n  batch: 1\n",
        queue.clamp(1, 1 << 20)
    );
    let config = tandem_config::parse("bench.yaml", &text).unwrap();
    let (tracer, _exporter) = Tracer::new(
        config.tracing.as_ref().unwrap(),
        TraceMetrics::register(&mut Registry::default()),
    );
    tracer
}

/// A server span as the proxy builds one for a sampled GET (14 attributes).
fn server_span(t: &Tracer, h: &HeaderMap) -> SpanRecord {
    let s = t.start_server(h);
    let attributes = vec![
        ("http.request.method", Value::Static("GET")),
        ("url.path", Value::String("/api/orders/42".to_owned())),
        ("url.scheme", Value::Static("http")),
        (
            "server.address",
            Value::String("orders.internal".to_owned()),
        ),
        ("server.port", Value::Int(8080)),
        ("network.protocol.version", Value::Static("1.1")),
        ("client.address", Value::String("10.0.0.7".to_owned())),
        (
            "user_agent.original",
            Value::String("curl/8.5.0".to_owned()),
        ),
        ("http.route", Value::String("/api/*".to_owned())),
        ("http.response.status_code", Value::Int(200)),
        ("tandem.listener", Value::String("inbound".to_owned())),
        ("tandem.route", Value::String("api".to_owned())),
        ("tandem.upstream", Value::String("orders".to_owned())),
    ];
    SpanRecord {
        trace_id: s.context.trace_id,
        span_id: s.context.span_id,
        parent: s.parent,
        remote_parent: true,
        trace_state: s.context.trace_state,
        name: format!("GET {}", "/api/*").into(),
        kind: SpanKind::Server,
        start_unix_nanos: 1,
        end_unix_nanos: 2,
        attributes,
        status: Status::Unset,
    }
}

/// The span of [`server_span`], written as the proxy writes it.
fn encoded_server_span(t: &Tracer, h: &HeaderMap) -> EncodedSpans {
    let s = t.start_server(h);
    let mut e = EncodedSpans::with_capacity(1024);
    e.begin(&SpanStart {
        trace_id: s.context.trace_id,
        span_id: s.context.span_id,
        parent: s.parent,
        remote_parent: true,
        trace_state: s.context.trace_state.as_ref().map(HeaderValue::as_bytes),
        name: "GET",
        name_suffix: Some("/api/*"),
        kind: SpanKind::Server,
        start_unix_nanos: 1,
    });
    e.str("http.request.method", "GET");
    e.str("url.path", "/api/orders/42");
    e.str("url.scheme", "http");
    e.str("server.address", "orders.internal");
    e.int("server.port", 8080);
    e.str("network.protocol.version", "1.1");
    e.str("client.address", "10.0.0.7");
    e.str("user_agent.original", "curl/8.5.0");
    e.str("http.route", "/api/*");
    e.int("http.response.status_code", 200);
    e.str("tandem.listener", "inbound");
    e.str("tandem.route", "api");
    e.str("tandem.upstream", "orders");
    e.end(2);
    e
}

fn benches(c: &mut Criterion) {
    let h = headers();
    let w3c = Propagator::new(&[Propagation::W3c]);
    c.bench_function("extract w3c (traceparent + tracestate)", |b| {
        b.iter(|| black_box(w3c.extract(black_box(&h))))
    });
    let t = tracer();
    c.bench_function("start server span (extract, sample, ids)", |b| {
        b.iter(|| black_box(t.start_server(black_box(&h))))
    });
    let ctx = t.start_server(&h).context;
    c.bench_function(
        "render one try's traceparent + tracestate (HTTP/1.1)",
        |b| b.iter(|| black_box(w3c.render_h1(black_box(&ctx)))),
    );
    let mut out = h.clone();
    c.bench_function("strip + inject w3c (HTTP/2 header map)", |b| {
        b.iter(|| {
            w3c.strip(&mut out);
            w3c.inject(black_box(&ctx), &mut out);
        })
    });
    // A queue big enough for every iteration, made outside the timed part: this measures
    // building the span and pushing it, not the exporter.
    c.bench_function("build + record a sampled server span", |b| {
        b.iter_custom(|n| {
            let sink = tracer_with_queue(n as usize);
            let started = std::time::Instant::now();
            for _ in 0..n {
                sink.record(server_span(&t, &h));
            }
            started.elapsed()
        })
    });
    // What the proxy does: the same span written straight to protobuf as it ends.
    c.bench_function("write + record a sampled server span (EncodedSpans)", |b| {
        b.iter_custom(|n| {
            let sink = tracer_with_queue(n as usize);
            let started = std::time::Instant::now();
            for _ in 0..n {
                sink.record_encoded(encoded_server_span(&t, &h));
            }
            started.elapsed()
        })
    });
    // The exporter's side, per batch: span records to protobuf messages, then bytes.
    let config = tandem_config::parse(
        "bench.yaml",
        "listeners:\n  a: { address: 127.0.0.1:1, upstream: u }\nupstreams:\n  u: {}\n\
         tracing:\n  otlp: { endpoint: \"http://127.0.0.1:4318\" }\n",
    )
    .unwrap();
    let encoder = otlp::Encoder::new(&otlp::resource(config.tracing.as_ref().unwrap()));
    c.bench_function("encode a batch of 512 spans (OTLP protobuf)", |b| {
        b.iter_batched(
            || {
                (0..512)
                    .map(|_| encoded_server_span(&t, &h))
                    .collect::<Vec<_>>()
            },
            |spans| black_box(encoder.encode(spans)),
            criterion::BatchSize::LargeInput,
        )
    });
}

criterion_group!(trace, benches);
criterion_main!(trace);
