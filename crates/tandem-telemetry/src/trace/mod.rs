//! Distributed tracing: trace context in and out of requests, sampling, span records and their
//! export over OTLP.
//!
//! The request path and the exporter meet at one bounded queue and nothing else:
//!
//! ```text
//! request path:  Tracer::start_server (extract, sample) -> spans built only when sampled
//!                -> spans written as OTLP protobuf as they end (otlp::EncodedSpans), a request's together
//!                -> Tracer::record_encoded: queue push; full -> dropped, counted (never waits)
//! exporter task: every flush_interval, or at once when a batch is waiting:
//!                pop up to `batch` -> ExportTraceServiceRequest -> OTLP/gRPC or OTLP/HTTP,
//!                bounded by the export timeout; failed -> the batch is dropped, counted
//! ```
//!
//! Why not the OpenTelemetry SDK: its spans are built for in-process instrumentation (a span
//! object per span with locks, dynamic attribute maps, a processor chain), while Tandem knows
//! every span's shape in advance. A sampled request's spans are written as protobuf bytes when
//! they end, from what the request holds ([`otlp::EncodedSpans`]), and queued together; the
//! exporter only splices them into a request ([`otlp::Encoder`]). [`SpanRecord`] is the same
//! span as plain data, for callers that build one ([`Tracer::record`]). `opentelemetry-proto`
//! (the generated types of the official protos) encodes the resource and decodes collector
//! responses, and is the reference the encoder is tested against; gRPC is framed by hand over
//! hyper's HTTP/2 client (see [`export`]).
//!
//! Loss is explicit: a full queue, a collector that is down, slow or refuses a batch all drop
//! spans and count them in `tandem_trace_spans_dropped_total{reason}`; a request never waits for
//! telemetry. There is no retry of a failed export: retrying would either hold memory for a
//! collector that may not come back or block newer spans, and spans are samples.
//!
//! When tracing is off there is no [`Tracer`] at all: the proxy checks one `Option`.
//!
//! # Layout
//! - [`context`]: trace and span ids, W3C `traceparent`/`tracestate` and B3 read and write.
//! - [`sample`]: parent-based sampling with a trace-id ratio for new traces.
//! - [`span`]: the finished-span record.
//! - [`export`]: the exporter task (batching, OTLP/gRPC and OTLP/HTTP, counters).
//! - [`otlp`]: span records to OTLP protobuf, and the resource.

pub mod context;
pub mod export;
pub mod otlp;
pub mod sample;
pub mod span;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;
use http::HeaderMap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tandem_config::Tracing;
use tokio::sync::Notify;

pub use context::{Extracted, Parent, Propagator, SpanContext, SpanId, TraceId};
pub use export::{Exporter, ExporterHandle};
pub use otlp::{EncodedAttributes, EncodedSpans, SpanStart};
pub use sample::Sampler;
pub use span::{SpanKind, SpanRecord, Status, Value};

/// The request path's side of tracing: context formats, sampling, and the queue spans go into.
#[derive(Debug)]
pub struct Tracer {
    propagator: Propagator,
    sampler: Sampler,
    queue: Arc<Queue>,
    wake: Arc<Notify>,
    batch: usize,
    metrics: TraceMetrics,
}

/// Finished spans waiting for the exporter, in chunks (a request's spans travel together), and
/// bounded in spans: `tracing.queue` spans at most, whatever the chunks hold.
#[derive(Debug)]
pub(crate) struct Queue {
    chunks: ArrayQueue<EncodedSpans>,
    /// Spans in `chunks`.
    spans: AtomicUsize,
    /// Most spans held.
    capacity: usize,
}

impl Queue {
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Queue {
            // A chunk holds at least one span: never full before `spans` says so.
            chunks: ArrayQueue::new(capacity),
            spans: AtomicUsize::new(0),
            capacity,
        }
    }

    /// Queues `chunk`; gives it back when its spans do not fit. Returns the spans now queued.
    fn push(&self, chunk: EncodedSpans) -> Result<usize, EncodedSpans> {
        let n = chunk.spans() as usize;
        let before = self.spans.fetch_add(n, Ordering::AcqRel);
        if before + n > self.capacity {
            self.spans.fetch_sub(n, Ordering::AcqRel);
            return Err(chunk);
        }
        match self.chunks.push(chunk) {
            Ok(()) => Ok(before + n),
            Err(chunk) => {
                self.spans.fetch_sub(n, Ordering::AcqRel);
                Err(chunk)
            }
        }
    }

    pub(crate) fn pop(&self) -> Option<EncodedSpans> {
        let chunk = self.chunks.pop()?;
        self.spans
            .fetch_sub(chunk.spans() as usize, Ordering::AcqRel);
        Some(chunk)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Spans queued.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.spans.load(Ordering::Acquire)
    }
}

/// A server span just started: its context (to hand to upstream tries) and where it hangs.
#[derive(Clone, Debug)]
pub struct Started {
    /// The server span's own context; `sampled` says whether spans are recorded.
    pub context: SpanContext,
    /// The caller's span, when the request carried one.
    pub parent: Option<SpanId>,
}

/// Tracing counters (registered whether or not tracing is on, so dashboards see zeros).
#[derive(Clone, Debug)]
pub struct TraceMetrics {
    /// Spans the collector accepted.
    pub exported: Counter,
    /// Spans dropped because the queue was full (the exporter is behind).
    pub dropped_queue_full: Counter,
    /// Spans dropped because their export request failed (collector down, slow or erroring).
    pub dropped_export_failed: Counter,
    /// Spans the collector received but rejected (OTLP partial success).
    pub dropped_rejected: Counter,
    /// Export requests that failed.
    pub export_failures: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

// === impl Tracer ===

impl Tracer {
    /// The tracer for `config`, and the exporter that drains its queue (to be spawned).
    pub fn new(config: &Tracing, metrics: TraceMetrics) -> (Arc<Tracer>, Exporter) {
        let queue = Arc::new(Queue::new(config.queue));
        let wake = Arc::new(Notify::new());
        let batch = config.batch.clamp(1, config.queue.max(1));
        let tracer = Arc::new(Tracer {
            propagator: Propagator::new(&config.propagation),
            sampler: Sampler::new(config.sample_ratio),
            queue: queue.clone(),
            wake: wake.clone(),
            batch,
            metrics: metrics.clone(),
        });
        let exporter = Exporter::new(config, queue, wake, metrics);
        (tracer, exporter)
    }

    /// The configured context formats.
    pub fn propagator(&self) -> &Propagator {
        &self.propagator
    }

    /// Starts the server span of a request with `headers`: continues the caller's trace when it
    /// sent a valid context (keeping its sampling decision), else starts a new one sampled by
    /// the ratio.
    pub fn start_server(&self, headers: &HeaderMap) -> Started {
        let extracted = self.propagator.extract(headers);
        let trace_id = extracted
            .parent
            .as_ref()
            .map_or_else(TraceId::random, |p| p.trace_id);
        let sampled = self.sampler.sample(&extracted, trace_id);
        let (parent, trace_state) = match extracted.parent {
            Some(p) => (Some(p.span_id), p.trace_state),
            None => (None, None),
        };
        Started {
            context: SpanContext {
                trace_id,
                span_id: SpanId::random(),
                sampled,
                trace_state,
            },
            parent,
        }
    }

    /// Hands a finished span to the exporter; when the queue is full the span is dropped and
    /// counted. Never waits.
    pub fn record(&self, span: SpanRecord) {
        self.record_encoded(EncodedSpans::from(&span));
    }

    /// Hands finished spans, already encoded, to the exporter; when they do not fit in the
    /// queue they are dropped and counted. Never waits. A span left open is not sent.
    pub fn record_encoded(&self, mut spans: EncodedSpans) {
        spans.discard_open();
        let n = spans.spans();
        if n == 0 {
            return;
        }
        match self.queue.push(spans) {
            // Wake the exporter once a batch is waiting, rather than on every span.
            Ok(queued) => {
                if queued >= self.batch {
                    self.wake.notify_one();
                }
            }
            Err(_) => {
                self.metrics.dropped_queue_full.inc_by(u64::from(n));
            }
        }
    }
}

// === impl TraceMetrics ===

impl TraceMetrics {
    /// Registers the tracing counters in `registry` (prefix `tandem`).
    pub fn register(registry: &mut Registry) -> Self {
        let exported = Counter::default();
        registry.register(
            "trace_spans_exported",
            "Spans the trace collector accepted",
            exported.clone(),
        );
        let dropped = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "trace_spans_dropped",
            "Spans lost, by reason: queue_full (the exporter is behind), export_failed (the collector is down, slow or failing), rejected (the collector refused them)",
            dropped.clone(),
        );
        let export_failures = Counter::default();
        registry.register(
            "trace_export_failures",
            "Span export requests that failed (their spans are counted in tandem_trace_spans_dropped_total)",
            export_failures.clone(),
        );
        let reason = |reason| dropped.get_or_create(&ReasonLabels { reason }).clone();
        TraceMetrics {
            exported,
            dropped_queue_full: reason("queue_full"),
            dropped_export_failed: reason("export_failed"),
            dropped_rejected: reason("rejected"),
            export_failures,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Tracing {
        let text = format!(
            "listeners:\n  a: {{ address: 127.0.0.1:1, upstream: u }}\nupstreams:\n  u: {{}}\ntracing:\n  otlp: {{ endpoint: \"http://127.0.0.1:1\" }}\n{yaml}"
        );
        tandem_config::parse("t.yaml", &text)
            .unwrap()
            .tracing
            .unwrap()
    }

    fn span(tracer: &Started) -> SpanRecord {
        SpanRecord {
            trace_id: tracer.context.trace_id,
            span_id: tracer.context.span_id,
            parent: None,
            remote_parent: false,
            trace_state: None,
            name: "GET".into(),
            kind: SpanKind::Server,
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            attributes: Vec::new(),
            status: Status::Unset,
        }
    }

    /// A caller's context is continued (same trace, the caller's span as parent, its decision
    /// and tracestate); without one a new trace starts under the ratio.
    #[test]
    fn server_span_continues_or_starts_a_trace() {
        let (tracer, _) = Tracer::new(
            &config("  sample_ratio: 0\n"),
            TraceMetrics::register(&mut Registry::default()),
        );
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .unwrap(),
        );
        h.insert("tracestate", "congo=t61rcWkgMzE".parse().unwrap());
        let s = tracer.start_server(&h);
        assert_eq!(
            s.context.trace_id.to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(s.parent.unwrap().to_string(), "b7ad6b7169203331");
        assert_ne!(s.context.span_id.to_string(), "b7ad6b7169203331");
        assert!(s.context.sampled, "the parent's decision beats ratio 0");
        assert_eq!(s.context.trace_state.unwrap(), "congo=t61rcWkgMzE");

        let s = tracer.start_server(&HeaderMap::new());
        assert!(s.parent.is_none());
        assert!(!s.context.sampled, "ratio 0 samples no new trace");
    }

    /// A full queue drops and counts instead of waiting; the exporter is woken per batch.
    #[test]
    fn full_queue_drops_and_counts() {
        let mut registry = Registry::default();
        let metrics = TraceMetrics::register(&mut registry);
        let (tracer, exporter) = Tracer::new(&config("  queue: 4\n  batch: 2\n"), metrics);
        let s = tracer.start_server(&HeaderMap::new());
        for _ in 0..10 {
            tracer.record(span(&s));
        }
        assert_eq!(tracer.queue.len(), 4);
        assert_eq!(tracer.metrics.dropped_queue_full.get(), 6);
        drop(exporter);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("trace_spans_dropped_total{reason=\"queue_full\"} 6"),
            "{text}"
        );
        assert!(
            text.contains("trace_spans_dropped_total{reason=\"export_failed\"} 0"),
            "{text}"
        );
    }
}
