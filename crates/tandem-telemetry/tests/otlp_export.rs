//! The exporter against real collectors on loopback: a gRPC `TraceService` (tonic, from the
//! official OTLP protos) and an OTLP/HTTP endpoint (hyper, decoding the same protobuf), plus
//! collectors that are down or hang.
#![allow(clippy::unwrap_used, missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prometheus_client::registry::Registry;
use prost::Message;
use tandem_telemetry::trace::{
    SpanId, SpanKind, SpanRecord, Status, TraceId, TraceMetrics, Tracer, Value,
};
use tokio::net::TcpListener;

type Received = Arc<Mutex<Vec<(ExportTraceServiceRequest, Option<String>)>>>;

/// A gRPC collector that keeps every request.
struct GrpcCollector(Received);

#[tonic::async_trait]
impl TraceService for GrpcCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push((request.into_inner(), None));
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn grpc_collector() -> (SocketAddr, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    let svc = TraceServiceServer::new(GrpcCollector(received.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (addr, received)
}

/// An OTLP/HTTP collector that keeps every request with its path and content type, and answers
/// with a partial success rejecting `reject` spans.
async fn http_collector(reject: i64) -> (SocketAddr, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    let kept = received.clone();
    tokio::spawn(async move {
        loop {
            let (io, _) = listener.accept().await.unwrap();
            let kept = kept.clone();
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let kept = kept.clone();
                async move {
                    let what = format!(
                        "{} {} {}",
                        req.method(),
                        req.uri().path(),
                        req.headers()["content-type"].to_str().unwrap()
                    );
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let decoded = ExportTraceServiceRequest::decode(body).unwrap();
                    kept.lock().unwrap().push((decoded, Some(what)));
                    let res = ExportTraceServiceResponse {
                        partial_success: (reject > 0).then(|| ExportTracePartialSuccess {
                            rejected_spans: reject,
                            error_message: "too old".into(),
                        }),
                    };
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(
                        res.encode_to_vec(),
                    ))))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), svc),
            );
        }
    });
    (addr, received)
}

/// A tracing section for `endpoint`; `extra` lines are added (flush_interval 50ms unless given).
fn config(endpoint: &str, protocol: &str, extra: &str) -> tandem_config::Tracing {
    let flush = if extra.contains("flush_interval") {
        ""
    } else {
        "  flush_interval: 50ms\n"
    };
    let text = format!(
        "listeners:\n  a: {{ address: 127.0.0.1:1, upstream: u }}\nupstreams:\n  u: {{}}\n\
         tracing:\n  otlp: {{ endpoint: \"{endpoint}\", protocol: {protocol}, timeout: 500ms }}\n  \
         service_name: test-svc\n  resource: {{ deployment.environment: ci }}\n{flush}{extra}"
    );
    tandem_config::parse("t.yaml", &text)
        .unwrap()
        .tracing
        .unwrap()
}

fn span(i: u64) -> SpanRecord {
    SpanRecord {
        trace_id: TraceId::from_u128(0xabc).unwrap(),
        span_id: SpanId::from_u64(i).unwrap(),
        parent: None,
        remote_parent: false,
        trace_state: None,
        name: format!("GET /{i}").into(),
        kind: SpanKind::Client,
        start_unix_nanos: 1_000,
        end_unix_nanos: 2_000,
        attributes: vec![("http.response.status_code", Value::Int(200))],
        status: Status::Unset,
    }
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not within 4s");
}

fn spans(received: &Received) -> usize {
    received
        .lock()
        .unwrap()
        .iter()
        .flat_map(|(r, _)| &r.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum()
}

fn resource_attr(req: &ExportTraceServiceRequest, key: &str) -> Option<String> {
    req.resource_spans[0]
        .resource
        .as_ref()?
        .attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) => Some(s.clone()),
            _ => None,
        })
}

/// OTLP/gRPC: spans arrive in batches with their ids, names and the resource; counted exported.
#[tokio::test]
async fn grpc_collector_receives_batches() {
    let (addr, received) = grpc_collector().await;
    let metrics = TraceMetrics::register(&mut Registry::default());
    let (tracer, exporter) = Tracer::new(
        &config(&format!("http://{addr}"), "grpc", "  batch: 2\n"),
        metrics.clone(),
    );
    let handle = exporter.spawn();
    for i in 1..=5 {
        tracer.record(span(i));
    }
    eventually("5 spans at the collector", || spans(&received) == 5).await;
    let got = received.lock().unwrap().clone();
    assert!(
        got.len() >= 3,
        "batches of at most 2: {} requests",
        got.len()
    );
    let first = &got[0].0;
    let s = &first.resource_spans[0].scope_spans[0];
    assert_eq!(s.scope.as_ref().unwrap().name, "tandem");
    assert_eq!(s.spans[0].trace_id, 0xabcu128.to_be_bytes());
    assert_eq!(s.spans[0].name, "GET /1");
    assert_eq!(resource_attr(first, "service.name").unwrap(), "test-svc");
    assert_eq!(
        resource_attr(first, "deployment.environment").unwrap(),
        "ci"
    );
    assert_eq!(
        resource_attr(first, "service.version").unwrap(),
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        resource_attr(first, "service.instance.id").unwrap().len(),
        36
    );
    assert_eq!(metrics.exported.get(), 5);
    assert_eq!(metrics.dropped_export_failed.get(), 0);
    handle.shutdown(Duration::from_secs(1)).await;
}

/// OTLP/HTTP: `POST /v1/traces` with a protobuf body; a partial success counts the rejected
/// spans as dropped.
#[tokio::test]
async fn http_collector_receives_and_partial_success_counts() {
    let (addr, received) = http_collector(1).await;
    let metrics = TraceMetrics::register(&mut Registry::default());
    let (tracer, exporter) = Tracer::new(
        &config(&format!("http://{addr}"), "http/protobuf", ""),
        metrics.clone(),
    );
    let handle = exporter.spawn();
    for i in 1..=3 {
        tracer.record(span(i));
    }
    eventually("3 spans at the collector", || spans(&received) == 3).await;
    let got = received.lock().unwrap().clone();
    assert_eq!(
        got[0].1.as_deref(),
        Some("POST /v1/traces application/x-protobuf")
    );
    eventually("counters", || {
        metrics.exported.get() + metrics.dropped_rejected.get() == 3
    })
    .await;
    assert_eq!(metrics.dropped_rejected.get(), got.len() as u64);
    handle.shutdown(Duration::from_secs(1)).await;
}

/// A collector that is down: every span is dropped and counted, nothing waits.
#[tokio::test]
async fn collector_down_drops_and_counts() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    for protocol in ["grpc", "http/protobuf"] {
        let metrics = TraceMetrics::register(&mut Registry::default());
        let (tracer, exporter) = Tracer::new(
            &config(&format!("http://127.0.0.1:{port}"), protocol, ""),
            metrics.clone(),
        );
        let handle = exporter.spawn();
        for i in 1..=4 {
            tracer.record(span(i));
        }
        eventually(protocol, || metrics.dropped_export_failed.get() == 4).await;
        assert!(metrics.export_failures.get() >= 1);
        assert_eq!(metrics.exported.get(), 0);
        handle.shutdown(Duration::from_secs(1)).await;
    }
}

/// A collector that accepts connections and never answers: exports time out, the queue fills
/// and drops, and recording stays instant throughout.
#[tokio::test]
async fn hung_collector_never_blocks_recording() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            keep.lock().unwrap().push(s);
        }
    });
    for protocol in ["grpc", "http/protobuf"] {
        let metrics = TraceMetrics::register(&mut Registry::default());
        let (tracer, exporter) = Tracer::new(
            &config(
                &format!("http://{addr}"),
                protocol,
                "  queue: 8\n  batch: 4\n",
            ),
            metrics.clone(),
        );
        let handle = exporter.spawn();
        let started = std::time::Instant::now();
        for i in 1..=1000 {
            tracer.record(span(i));
            if i % 100 == 0 {
                tokio::task::yield_now().await;
            }
        }
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "{protocol}: recording 1000 spans took {:?}",
            started.elapsed()
        );
        assert!(metrics.dropped_queue_full.get() >= 900, "{protocol}");
        eventually(protocol, || metrics.dropped_export_failed.get() >= 4).await;
        assert_eq!(metrics.exported.get(), 0);
        handle.shutdown(Duration::from_millis(100)).await;
    }
}

/// Shutdown exports what is still queued, even long before the next flush.
#[tokio::test]
async fn shutdown_flushes_the_queue() {
    let (addr, received) = grpc_collector().await;
    let metrics = TraceMetrics::register(&mut Registry::default());
    let (tracer, exporter) = Tracer::new(
        &config(&format!("http://{addr}"), "grpc", "  flush_interval: 1h\n"),
        metrics.clone(),
    );
    let handle = exporter.spawn();
    // Let the first (immediate) tick pass with an empty queue.
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 1..=3 {
        tracer.record(span(i));
    }
    handle.shutdown(Duration::from_secs(2)).await;
    assert_eq!(spans(&received), 3);
    assert_eq!(metrics.exported.get(), 3);
}

/// A whole batch goes at once; the spans after it wait for the next tick (here: shutdown),
/// rather than going in a small request of their own right after it.
#[tokio::test]
async fn whole_batches_go_at_once_the_rest_waits() {
    let (addr, received) = grpc_collector().await;
    let metrics = TraceMetrics::register(&mut Registry::default());
    let (tracer, exporter) = Tracer::new(
        &config(
            &format!("http://{addr}"),
            "grpc",
            "  flush_interval: 1h\n  batch: 4\n",
        ),
        metrics.clone(),
    );
    let handle = exporter.spawn();
    // Let the first (immediate) tick pass with an empty queue.
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 1..=9 {
        tracer.record(span(i));
    }
    eventually("two whole batches", || spans(&received) == 8).await;
    // Time for a wrong export of the ninth span to arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sizes = |r: &Received| -> Vec<usize> {
        r.lock()
            .unwrap()
            .iter()
            .map(|(req, _)| req.resource_spans[0].scope_spans[0].spans.len())
            .collect()
    };
    assert_eq!(sizes(&received), [4, 4]);
    handle.shutdown(Duration::from_secs(2)).await;
    assert_eq!(sizes(&received), [4, 4, 1]);
    assert_eq!(metrics.exported.get(), 9);
}
