//! The exporter: one task that drains the span queue in batches and sends them to the collector
//! over OTLP/gRPC (`TraceService/Export`, with tonic) or OTLP/HTTP (`POST` protobuf, with
//! hyper's client).
//!
//! It wakes every `flush_interval`, or at once when the request path sees a whole batch waiting,
//! and exports everything queued, `batch` spans per request, one request at a time, each bounded
//! by the export timeout. While a request is out the queue keeps filling and, once full, drops:
//! a slow collector costs spans, never request latency. A failed request drops its batch and is
//! counted; the first failure after a success is logged as a warning, the rest at debug level
//! until the collector takes a batch again, so a collector that is down does not flood the log.
//!
//! Connections: gRPC keeps one HTTP/2 channel (connected on first use, reconnected by tonic
//! after a failure); HTTP keeps hyper's pooled keep-alive connections. Only `http://` (no TLS):
//! `check` refuses `https://` until Tandem has a TLS client.
//!
//! Shutdown ([`ExporterHandle::shutdown`]): one last flush of what is queued, bounded by the
//! caller's grace period.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::bytes::{Buf, BufMut};
use prost::encoding::{DecodeContext, WireType};
use prost::{DecodeError, Message};
use tandem_config::{OtlpProtocol, Tracing};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

use super::otlp;
use super::otlp::EncodedSpans;
use super::{Queue, TraceMetrics};

/// Largest collector response read (OTLP responses are a few bytes; errors a short message).
const MAX_RESPONSE: usize = 64 * 1024;

/// Drains the span queue to the collector; [`Exporter::spawn`] starts it.
pub struct Exporter {
    queue: Arc<Queue>,
    /// A chunk popped that did not fit in the last batch: the first of the next.
    held: Option<EncodedSpans>,
    wake: Arc<Notify>,
    batch: usize,
    flush_interval: Duration,
    timeout: Duration,
    endpoint: String,
    protocol: OtlpProtocol,
    encoder: otlp::Encoder,
    metrics: TraceMetrics,
    /// Whether the last export failed (failures after the first are logged at debug level).
    failing: bool,
}

/// The running exporter.
#[derive(Debug)]
pub struct ExporterHandle {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Why an export request failed.
#[derive(Debug)]
enum ExportError {
    /// The collector could not be reached, the exchange broke, or the collector answered with
    /// an error.
    Failed(String),
    /// No answer within the export timeout.
    Timeout(Duration),
}

/// The connection to the collector. One lives on the exporter task: the size difference
/// between variants costs nothing.
#[allow(clippy::large_enum_variant)]
enum Client {
    Grpc(tonic::client::Grpc<tonic::transport::Channel>),
    Http {
        client: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
        uri: http::Uri,
    },
    /// The endpoint could not be used (`check` makes this unreachable); every export fails.
    Unusable(String),
}

// === impl Exporter ===

impl Exporter {
    pub(super) fn new(
        config: &Tracing,
        queue: Arc<Queue>,
        wake: Arc<Notify>,
        metrics: TraceMetrics,
    ) -> Self {
        Exporter {
            queue,
            held: None,
            wake,
            batch: config.batch.clamp(1, config.queue.max(1)),
            flush_interval: config.flush_interval,
            timeout: config.otlp.timeout,
            endpoint: config.otlp.endpoint.clone(),
            protocol: config.otlp.protocol,
            encoder: otlp::Encoder::new(&otlp::resource(config)),
            metrics,
            failing: false,
        }
    }

    /// Starts the export task on the current runtime.
    pub fn spawn(self) -> ExporterHandle {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(self.run(stopped));
        ExporterHandle { stop, task }
    }

    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut client = self.client();
        let mut tick = tokio::time::interval(self.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                _ = self.wake.notified() => false,
                _ = &mut stop => true,
            };
            self.flush(&mut client).await;
            if stopping {
                return;
            }
        }
    }

    /// Exports everything queued now, a batch (at most `batch` spans) per request.
    async fn flush(&mut self, client: &mut Client) {
        loop {
            if self.held.is_none() && self.queue.is_empty() {
                return;
            }
            // Chunks go from the queue straight into the encoder, not through a `Vec`; the
            // chunk that would overflow the batch waits for the next one.
            let (queue, batch, held) = (&self.queue, self.batch, &mut self.held);
            let mut taken = 0;
            let mut full = false;
            let request = self.encoder.encode(std::iter::from_fn(|| {
                if full {
                    return None;
                }
                let chunk = held.take().or_else(|| queue.pop())?;
                let n = chunk.spans() as usize;
                // A chunk larger than a whole batch goes alone.
                if taken > 0 && taken + n > batch {
                    *held = Some(chunk);
                    full = true;
                    return None;
                }
                taken += n;
                if taken >= batch {
                    full = true;
                }
                Some(chunk)
            }));
            if taken == 0 {
                return;
            }
            self.export(client, request, taken as u64).await;
            if !full {
                return;
            }
        }
    }

    async fn export(&mut self, client: &mut Client, request: Bytes, n: u64) {
        let sent = tokio::time::timeout(self.timeout, client.send(request)).await;
        match sent.unwrap_or(Err(ExportError::Timeout(self.timeout))) {
            Ok(rejected) => {
                let rejected = rejected.min(n);
                self.metrics.exported.inc_by(n - rejected);
                self.metrics.dropped_rejected.inc_by(rejected);
                if self.failing {
                    self.failing = false;
                    tracing::info!(endpoint = %self.endpoint, "trace collector takes spans again");
                }
                if rejected > 0 {
                    tracing::debug!(endpoint = %self.endpoint, rejected, "trace collector rejected spans");
                }
            }
            Err(e) => {
                self.metrics.export_failures.inc();
                self.metrics.dropped_export_failed.inc_by(n);
                if self.failing {
                    tracing::debug!(endpoint = %self.endpoint, error = %e, spans = n, "span export failed");
                } else {
                    self.failing = true;
                    tracing::warn!(endpoint = %self.endpoint, error = %e, spans = n, "span export failed; spans are dropped until the collector answers (tandem_trace_spans_dropped_total)");
                }
            }
        }
    }

    fn client(&self) -> Client {
        match self.protocol {
            OtlpProtocol::Grpc => {
                match tonic::transport::Endpoint::from_shared(self.endpoint.clone()) {
                    Ok(e) => Client::Grpc(tonic::client::Grpc::new(
                        e.connect_timeout(self.timeout)
                            .timeout(self.timeout)
                            .tcp_nodelay(true)
                            .connect_lazy(),
                    )),
                    Err(e) => Client::Unusable(e.to_string()),
                }
            }
            OtlpProtocol::HttpProtobuf => match self.endpoint.parse::<http::Uri>() {
                Ok(uri) => {
                    let mut connector = HttpConnector::new();
                    connector.set_connect_timeout(Some(self.timeout));
                    connector.set_nodelay(true);
                    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                        .pool_idle_timeout(Duration::from_secs(30))
                        .build(connector);
                    Client::Http { client, uri }
                }
                Err(e) => Client::Unusable(e.to_string()),
            },
        }
    }
}

// === impl ExporterHandle ===

impl ExporterHandle {
    /// Exports what is queued, then stops; gives up after `grace`.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
            tracing::warn!(
                ?grace,
                "spans still queued at exit were dropped: the collector did not take them in time"
            );
        }
    }
}

// === impl Client ===

impl Client {
    /// Sends one encoded `ExportTraceServiceRequest`; `Ok` carries how many spans the
    /// collector rejected.
    async fn send(&mut self, request: Bytes) -> Result<u64, ExportError> {
        match self {
            Client::Grpc(grpc) => {
                // What the generated TraceServiceClient::export does, with a body that is
                // already protobuf.
                grpc.ready()
                    .await
                    .map_err(|e| ExportError::Failed(describe(&e)))?;
                let codec =
                    tonic_prost::ProstCodec::<Encoded, ExportTraceServiceResponse>::default();
                let path = http::uri::PathAndQuery::from_static(EXPORT_PATH);
                match grpc
                    .unary(tonic::Request::new(Encoded(request)), path, codec)
                    .await
                {
                    Ok(res) => Ok(rejected(res.get_ref())),
                    // Transport failures arrive as UNAVAILABLE with the connect error as message.
                    Err(status) => Err(ExportError::Failed(format!(
                        "gRPC {:?}: {}",
                        status.code(),
                        status.message()
                    ))),
                }
            }
            Client::Http { client, uri } => {
                let body = request;
                let req = http::Request::post(uri.clone())
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                    .header(
                        http::header::USER_AGENT,
                        concat!("tandem/", env!("CARGO_PKG_VERSION")),
                    )
                    .body(Full::new(body))
                    .map_err(|e| ExportError::Failed(e.to_string()))?;
                let res = client
                    .request(req)
                    .await
                    .map_err(|e| ExportError::Failed(describe(&e)))?;
                let status = res.status();
                let body = Limited::new(res.into_body(), MAX_RESPONSE)
                    .collect()
                    .await
                    .map_err(|e| ExportError::Failed(e.to_string()))?
                    .to_bytes();
                if !status.is_success() {
                    return Err(ExportError::Failed(format!(
                        "the collector answered HTTP {status}"
                    )));
                }
                // A body that is not an ExportTraceServiceResponse (some proxies answer 200
                // with nothing) counts as full success.
                Ok(ExportTraceServiceResponse::decode(body)
                    .map(|r| rejected(&r))
                    .unwrap_or(0))
            }
            Client::Unusable(why) => Err(ExportError::Failed(why.clone())),
        }
    }
}

/// The gRPC method spans are exported with.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// An `ExportTraceServiceRequest` already encoded by [`otlp::Encoder`], handed to tonic's
/// protobuf codec as is. Never decoded.
#[derive(Debug, Default)]
struct Encoded(Bytes);

impl Message for Encoded {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

fn rejected(res: &ExportTraceServiceResponse) -> u64 {
    res.partial_success
        .as_ref()
        .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0))
}

fn describe(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

impl std::fmt::Display for ExportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExportError::Failed(e) => f.write_str(e),
            ExportError::Timeout(t) => write!(f, "no answer from the collector within {t:?}"),
        }
    }
}
