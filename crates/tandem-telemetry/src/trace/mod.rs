//! Distributed tracing: trace context in and out of requests, sampling, span records and their
//! export over OTLP.
//!
//! The request path and the exporter meet at one bounded queue and nothing else:
//!
//! ```text
//! request path:  Tracer::start_server (extract, sample) -> spans built only when sampled
//!                -> spans written as OTLP protobuf as the request goes (otlp::EncodedSpans):
//!                   the server span's request side on arrival, client spans as tries end,
//!                   the rest of the server span with the response
//!                -> Tracer::record_encoded(_pair): a request's spans copied together to the end
//!                   of the batch being filled, sealed at `batch` spans; queue full -> dropped,
//!                   counted (never waits)
//! exporter task: at once when a batch is sealed, and every flush_interval (then the batch
//!                being filled too): header written in front -> ExportTraceServiceRequest ->
//!                OTLP/gRPC or OTLP/HTTP, bounded by the export timeout; failed -> the batch
//!                is dropped, counted
//! ```
//!
//! Why not the OpenTelemetry SDK: its spans are built for in-process instrumentation (a span
//! object per span with locks, dynamic attribute maps, a processor chain), while Tandem knows
//! every span's shape in advance. A sampled request's spans are written as protobuf bytes while
//! what they describe is at hand ([`otlp::EncodedSpans`]), and copied together into
//! the batch that becomes the export request; the exporter only writes the request's header in
//! front ([`otlp::Encoder`]). [`SpanRecord`] is the same
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
//!
//! Span times are Unix nanoseconds from the request's monotonic instants through
//! [`crate::clock`] (the wall clock is read once a second, not per span).

pub mod context;
pub mod export;
pub mod otlp;
pub mod sample;
pub mod span;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

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
pub use otlp::{EncodedAttributes, EncodedSpans, Key, SpanStart};
pub use sample::Sampler;
pub use span::{SpanKind, SpanRecord, Status, Value};

/// The request path's side of tracing: context formats, sampling, and the queue spans go into.
#[derive(Debug)]
pub struct Tracer {
    propagator: Propagator,
    sampler: Sampler,
    queue: Arc<Queue>,
    wake: Arc<Notify>,
    metrics: TraceMetrics,
}

/// Finished spans waiting for the exporter, bounded in spans (`tracing.queue` at most).
///
/// A request's spans are copied, as they are recorded, to the end of the batch being filled
/// (one buffer, with room for the export request's header in front, see [`otlp::Encoder`]);
/// a batch of `batch` spans is sealed and handed over whole. Per request that is a short lock
/// and one copy of bytes still in cache, and the request's own buffer is freed at once, to be
/// reused by the next; queuing each request's buffer instead cost a queue slot, a buffer
/// cycling through memory until the export, and a second copy into the export request.
#[derive(Debug)]
pub(crate) struct Queue {
    /// Sealed batches, oldest first. As many slots as spans: never full before `spans` says so.
    sealed: ArrayQueue<Batch>,
    /// The batch being filled.
    open: Mutex<Batch>,
    /// Spans in `sealed` and `open`.
    spans: AtomicUsize,
    /// Most spans held.
    capacity: usize,
    /// Most spans per batch (more only when one request's spans are more).
    batch: usize,
    /// Bytes kept free at the start of every batch for the request header.
    room: usize,
}

/// Most bytes a batch is made with room for ([`Queue::next_capacity`]), besides the header's
/// room; one may grow past it.
const MAX_BATCH_BYTES: usize = 4 << 20;

/// Spans in one buffer, after `Queue::room` free bytes: one export request once finished.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) bytes: Vec<u8>,
    pub(crate) spans: usize,
}

impl Batch {
    fn new(room: usize, capacity: usize) -> Self {
        let mut bytes = Vec::with_capacity(capacity.max(room));
        bytes.resize(room, 0);
        Batch { bytes, spans: 0 }
    }
}

impl Queue {
    pub(crate) fn new(capacity: usize, batch: usize, room: usize) -> Self {
        let capacity = capacity.max(1);
        Queue {
            sealed: ArrayQueue::new(capacity),
            open: Mutex::new(Batch::new(room, room)),
            spans: AtomicUsize::new(0),
            capacity,
            batch: batch.clamp(1, capacity),
            room,
        }
    }

    /// Bytes kept free at the start of every batch.
    pub(crate) fn room(&self) -> usize {
        self.room
    }

    /// Adds the whole spans of `chunks` (one request's) to the open batch, together, sealing it
    /// when a batch is full; `Err` when they do not fit in the queue. `Ok(true)`: a sealed
    /// batch is waiting.
    fn push(&self, chunks: &[&EncodedSpans]) -> Result<bool, ()> {
        let n: usize = chunks.iter().map(|c| c.spans() as usize).sum();
        let before = self.spans.fetch_add(n, Ordering::AcqRel);
        if before + n > self.capacity {
            self.spans.fetch_sub(n, Ordering::AcqRel);
            return Err(());
        }
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let mut sealed = false;
        // The chunk goes whole into one batch: the open one is sealed first when it would
        // overflow (a chunk larger than a batch makes one of its own).
        if open.spans > 0 && open.spans + n > self.batch {
            self.seal(&mut open);
            sealed = true;
        }
        for c in chunks {
            open.bytes.extend_from_slice(c.as_bytes());
        }
        open.spans += n;
        if open.spans >= self.batch {
            self.seal(&mut open);
            sealed = true;
        }
        Ok(sealed)
    }

    /// Moves the open batch to `sealed`, and starts the next one.
    fn seal(&self, open: &mut Batch) {
        let next = Batch::new(self.room, self.next_capacity(open));
        let full = std::mem::replace(open, next);
        let n = full.spans;
        if self.sealed.push(full).is_err() {
            // Unreachable: a sealed batch holds a span at least and there are as many slots
            // as spans may be held. Were it reached, its spans would be lost uncounted.
            self.spans.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// Bytes for the batch after `done`: room for a full batch of spans the size of `done`'s
    /// (and an eighth more), so that filling it never reallocates and copies. Sized after the
    /// last batch alone, a batch taken part-filled by a flush (an idle proxy, every
    /// `flush_interval`) made the next one grow by doubling, copying each time.
    fn next_capacity(&self, done: &Batch) -> usize {
        let bytes = done.bytes.len().saturating_sub(self.room);
        if done.spans == 0 {
            return done.bytes.len();
        }
        let per_span = bytes.div_ceil(done.spans);
        let full = per_span.saturating_mul(self.batch);
        // Bounded: one request's unusually large spans do not size every batch after it.
        let full = full.saturating_add(full / 8);
        self.room + full.max(bytes).min(MAX_BATCH_BYTES)
    }

    /// The oldest sealed batch.
    pub(crate) fn pop(&self) -> Option<Batch> {
        let batch = self.sealed.pop()?;
        self.spans.fetch_sub(batch.spans, Ordering::AcqRel);
        Some(batch)
    }

    /// The batch being filled, if it holds any span (a flush that does not wait for it to
    /// fill).
    pub(crate) fn take_open(&self) -> Option<Batch> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.spans == 0 {
            return None;
        }
        let next = Batch::new(self.room, self.next_capacity(&open));
        let batch = std::mem::replace(&mut *open, next);
        drop(open);
        self.spans.fetch_sub(batch.spans, Ordering::AcqRel);
        Some(batch)
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
    /// Whether the request carried any header of the configured formats (valid or not): only
    /// then is there anything to strip before it goes upstream.
    pub carried: bool,
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
        let encoder = Exporter::encoder(config);
        let queue = Arc::new(Queue::new(
            config.queue,
            config.batch,
            encoder.header_room(),
        ));
        let wake = Arc::new(Notify::new());
        let tracer = Arc::new(Tracer {
            propagator: Propagator::new(&config.propagation),
            sampler: Sampler::new(config.sample_ratio),
            queue: queue.clone(),
            wake: wake.clone(),
            metrics: metrics.clone(),
        });
        let exporter = Exporter::new(config, encoder, queue, wake, metrics);
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
        let carried = self.propagator.carried(headers);
        let extracted = if carried {
            self.propagator.extract_carried(headers)
        } else {
            Extracted::default()
        };
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
            carried,
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
        if spans.spans() == 0 {
            return;
        }
        self.push(&[&spans]);
        // Still in cache: the next request's buffer.
        spans.recycle();
    }

    /// [`Tracer::record_encoded`] for two buffers of one request's spans (its client spans and
    /// its server span), which go into the same batch, in this order, under one lock.
    pub fn record_encoded_pair(&self, mut first: EncodedSpans, mut second: EncodedSpans) {
        first.discard_open();
        second.discard_open();
        if first.spans() + second.spans() > 0 {
            self.push(&[&first, &second]);
        }
        first.recycle();
        second.recycle();
    }

    /// Records the whole spans in `spans` now and empties it of them, keeping its buffer and
    /// its preamble for spans still to come: a request's tries that ended (failed, or were
    /// retried) go out with the next batch, not when the request's response ends. Nothing
    /// while a span is open in it.
    pub fn record_finished(&self, spans: &mut EncodedSpans) {
        if spans.is_open() || spans.spans() == 0 {
            return;
        }
        self.push(&[spans]);
        spans.clear_spans();
    }

    fn push(&self, chunks: &[&EncodedSpans]) {
        match self.queue.push(chunks) {
            // Wake the exporter once a batch is waiting, rather than on every span.
            Ok(true) => self.wake.notify_one(),
            Ok(false) => {}
            Err(()) => {
                let n: u32 = chunks.iter().map(|c| c.spans()).sum();
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

    /// A sampled root span's start (trace 1, span 1).
    fn root_started() -> Started {
        Started {
            context: SpanContext {
                trace_id: TraceId::from_u128(1).unwrap(),
                span_id: SpanId::from_u64(1).unwrap(),
                sampled: true,
                trace_state: None,
            },
            parent: None,
            carried: false,
        }
    }

    /// A span of `s`'s context named `name`, without a parent, started at 1 ns.
    fn start_of<'a>(s: &Started, name: &'a str, kind: SpanKind) -> SpanStart<'a> {
        SpanStart {
            trace_id: s.context.trace_id,
            span_id: s.context.span_id,
            parent: None,
            remote_parent: false,
            trace_state: None,
            name,
            name_suffix: None,
            kind,
            start_unix_nanos: 1,
        }
    }

    /// Spans go into batches of at most `batch` spans (a request's spans never split; more
    /// than a batch make one of their own), sealed as they fill, after the room kept for the
    /// header; the batch being filled is taken only when asked for.
    #[test]
    fn queue_seals_whole_batches() {
        let chunk = |spans: u64| {
            let mut c = EncodedSpans::with_capacity(64);
            for i in 1..=spans {
                c.push_record(&SpanRecord {
                    span_id: SpanId::from_u64(i).unwrap(),
                    ..span(&root_started())
                });
            }
            c
        };
        let q = Queue::new(100, 4, 7);
        assert_eq!(q.push(&[&chunk(2)]), Ok(false));
        assert_eq!(q.push(&[&chunk(1)]), Ok(false));
        assert!(q.pop().is_none(), "nothing sealed before a batch is full");
        // 3 + 2 > 4: the open batch is sealed first, the two go into the next.
        assert_eq!(q.push(&[&chunk(1), &chunk(1)]), Ok(true));
        assert_eq!(q.push(&[&chunk(2)]), Ok(true));
        assert_eq!(q.push(&[&chunk(9)]), Ok(true));
        assert_eq!(q.push(&[&chunk(1)]), Ok(false));
        assert_eq!(q.len(), 17);
        let sizes: Vec<usize> = std::iter::from_fn(|| q.pop())
            .map(|b| {
                assert_eq!(&b.bytes[..7], &[0; 7], "the header's room comes first");
                assert_eq!(b.bytes.len(), 7 + chunk(1).as_bytes().len() * b.spans);
                b.spans
            })
            .collect();
        assert_eq!(sizes, [3, 4, 9]);
        assert_eq!(q.len(), 1);
        assert_eq!(q.take_open().map(|b| b.spans), Some(1));
        assert!(q.take_open().is_none());
        assert_eq!(q.len(), 0);
    }

    /// A batch is made with room for a full batch of spans like the last one's, so filling it
    /// never reallocates, even after a flush took the last one part-filled.
    #[test]
    fn batches_are_sized_for_a_full_batch() {
        let one = |i: u64| {
            let mut c = EncodedSpans::with_capacity(64);
            c.push_record(&SpanRecord {
                span_id: SpanId::from_u64(i).unwrap(),
                attributes: vec![("url.path", Value::String("/p".repeat(40)))],
                ..span(&root_started())
            });
            c
        };
        let q = Queue::new(1000, 50, 9);
        // A flush takes a batch of 3 spans; the next has room for 50.
        for i in 1..=3 {
            assert_eq!(q.push(&[&one(i)]), Ok(false));
        }
        assert_eq!(q.take_open().map(|b| b.spans), Some(3));
        let span_len = one(1).as_bytes().len();
        let capacity = q.open.lock().unwrap().bytes.capacity();
        assert!(capacity >= 9 + 50 * span_len, "{capacity}");
        let at = q.open.lock().unwrap().bytes.as_ptr();
        for i in 1..50 {
            assert_eq!(q.push(&[&one(i)]), Ok(false));
        }
        assert_eq!(q.open.lock().unwrap().bytes.as_ptr(), at, "no reallocation");
        assert_eq!(q.push(&[&one(50)]), Ok(true));
        let full = q.pop().unwrap();
        assert_eq!((full.spans, full.bytes.as_ptr()), (50, at));
        assert!(q.open.lock().unwrap().bytes.capacity() >= 9 + 50 * span_len);
    }

    /// A request's two buffers go into one batch together, and are dropped and counted
    /// together when they do not fit.
    #[test]
    fn a_pair_is_recorded_together() {
        let (tracer, _exporter) = Tracer::new(
            &config("  queue: 3\n  batch: 2\n"),
            TraceMetrics::register(&mut Registry::default()),
        );
        let s = tracer.start_server(&HeaderMap::new());
        let chunk = |n: usize| {
            let mut c = EncodedSpans::with_capacity(64);
            for _ in 0..n {
                c.push_record(&span(&s));
            }
            c
        };
        tracer.record_encoded_pair(chunk(1), chunk(1));
        assert_eq!(tracer.queue.len(), 2);
        let batch = tracer.queue.pop().unwrap();
        assert_eq!(batch.spans, 2, "one batch, sealed when full");
        tracer.record_encoded_pair(chunk(2), chunk(2));
        assert_eq!(tracer.queue.len(), 0);
        assert_eq!(tracer.metrics.dropped_queue_full.get(), 4);
        // An open span is not sent; an empty pair records nothing.
        let mut open = chunk(1);
        open.begin(&start_of(&s, "open", SpanKind::Server));
        tracer.record_encoded_pair(EncodedSpans::default(), open);
        assert_eq!(tracer.queue.len(), 1);
        tracer.record_encoded_pair(EncodedSpans::default(), EncodedSpans::default());
        assert_eq!(tracer.queue.len(), 1);
    }

    /// Finished spans are recorded at once and leave the buffer, which keeps its preamble for
    /// later spans; nothing is recorded while a span is open in it.
    #[test]
    fn finished_spans_are_recorded_at_once() {
        let (tracer, _exporter) = Tracer::new(
            &config("  queue: 10\n  batch: 10\n"),
            TraceMetrics::register(&mut Registry::default()),
        );
        let s = tracer.start_server(&HeaderMap::new());
        let url = Key::new("url.full");
        let mut clients = EncodedSpans::with_capacity(64);
        clients.preamble_str_parts_attr(&url, &["http://", "up/x"]);
        let start = start_of(&s, "GET", SpanKind::Client);
        clients.begin(&start);
        clients.copy_preamble();
        let one_span = clients.as_bytes().len();
        tracer.record_finished(&mut clients);
        assert_eq!(tracer.queue.len(), 0, "open: not recorded");
        clients.end(2);
        let whole = clients.as_bytes().to_vec();
        tracer.record_finished(&mut clients);
        assert_eq!(tracer.queue.len(), 1);
        assert_eq!((clients.spans(), clients.as_bytes().len()), (0, 0));
        // The preamble is still there for the next try's span, which is the same again.
        clients.begin(&start);
        clients.copy_preamble();
        assert_eq!(clients.as_bytes().len(), one_span);
        clients.end(2);
        assert_eq!(clients.as_bytes(), &whole[..]);
        tracer.record_finished(&mut clients);
        assert_eq!(tracer.queue.len(), 2);
        let batch = tracer.queue.take_open().unwrap();
        assert_eq!(batch.spans, 2);
        assert!(batch.bytes.ends_with(&[whole.clone(), whole].concat()));
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
