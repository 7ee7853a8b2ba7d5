//! Criterion bench for what the access log costs a request on the request path: rendering the
//! line of one HTTP request with every field and handing it to the writer thread (which writes
//! to `io::sink()` on another thread here).
//!
//! Run: `cargo bench -p tandem-telemetry --bench access_log` (or `--profile profiling` to reuse
//! a profiling build's dependencies).
//!
//! 2026-11-24, 2-vCPU KVM guest shared with other work, glibc malloc (the binary uses
//! mimalloc), the same record every time (so the context fields are always copied from the
//! last line): 180 ns a line; 680 ns before per-thread shard buffers, fixed-size copies and
//! cached context fields (a `Vec` and a channel message per line).

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion};
use tandem_config::AccessLogField;
use tandem_telemetry::access_log::{self, End, Output, RequestRecord};
use tandem_telemetry::Counter;

fn record() -> RequestRecord<'static> {
    RequestRecord {
        start: SystemTime::now().into(),
        head: Some(Duration::from_micros(591)),
        duration: Duration::from_micros(603),
        listener: "h1",
        direction: "inbound",
        route: Some("default"),
        upstream: Some("backend_h1"),
        endpoint: Some("127.0.0.1:39180"),
        client: Some("127.0.0.1:54512".parse().unwrap()),
        protocol: "HTTP/1.1",
        method: "GET",
        path: "/",
        authority: Some(b"127.0.0.1:39101"),
        status: Some(200),
        grpc_status: None,
        received_bytes: 0,
        sent_bytes: 13,
        attempts: 1,
        error: None,
        end: End::Complete,
        user_agent: Some(b"h2load nghttp2/1.52.0"),
        peer_identity: None,
        trace_id: None,
        span_id: None,
        context: None,
    }
}

fn bench(c: &mut Criterion) {
    let r = record();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dropped = Counter::default();
    let (log, writer) = access_log::start(
        Output::writer(Box::new(std::io::sink())),
        &AccessLogField::ALL,
        1 << 20,
        dropped.clone(),
    )
    .unwrap();
    c.bench_function("log one request (render + queue), every field", |b| {
        b.iter(|| log.log_request(black_box(&r)))
    });
    rt.block_on(writer.shutdown(Duration::from_secs(5)));
    eprintln!("dropped: {}", dropped.get());
}

criterion_group!(benches, bench);
criterion_main!(benches);
