//! The exporter: one task that drains the span queue in batches and sends them to the collector
//! over OTLP/gRPC (`TraceService/Export`) or OTLP/HTTP (`POST` protobuf), both with hyper's
//! client.
//!
//! It wakes when the request path seals a whole batch and exports the sealed batches; every
//! `flush_interval` it exports the batch still filling too. One request at a time (`batch`
//! spans at most each), each bounded by the export timeout. A wake does not send the few spans
//! that came in during the last export: every export request costs about as much CPU on the
//! proxy's core whatever it carries, so they wait for their batch to fill. While a request is
//! out the queue keeps filling and, once full, drops: a slow collector costs spans, never
//! request latency. A failed request drops its batch and is counted; the first failure after a
//! success is logged as a warning, the rest at debug level until the collector takes a batch
//! again, so a collector that is down does not flood the log.
//!
//! gRPC is framed here rather than by tonic: a unary call is one HTTP/2 POST whose body is the
//! message behind a 5-byte prefix, answered by a message and `grpc-status` in the trailers.
//! The batch buffer keeps room for the prefix and the request header in front of its spans, so
//! a batch goes out as the bytes the spans were copied into; tonic's codec would copy every
//! batch into a buffer of its own (most of what the export cost per span after the encoding).
//!
//! Connections: gRPC keeps one HTTP/2 connection (prior knowledge, connected on first use and
//! again after a failure); HTTP keeps hyper's pooled keep-alive connections. Only `http://` (no
//! TLS): `check` refuses `https://` until Tandem has a TLS client.
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
use prost::Message;
use tandem_config::{OtlpProtocol, Tracing};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

use super::otlp;
use super::{Queue, TraceMetrics};

/// Largest collector response read (OTLP responses are a few bytes; errors a short message).
const MAX_RESPONSE: usize = 64 * 1024;

/// Drains the span queue to the collector; [`Exporter::spawn`] starts it.
pub struct Exporter {
    queue: Arc<Queue>,
    wake: Arc<Notify>,
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
    Grpc {
        client: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
        /// The endpoint's origin and the `Export` method's path.
        uri: http::Uri,
    },
    Http {
        client: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
        uri: http::Uri,
    },
    /// The endpoint could not be used (`check` makes this unreachable); every export fails.
    Unusable(String),
}

// === impl Exporter ===

impl Exporter {
    /// The encoder of `config`'s export requests.
    pub(super) fn encoder(config: &Tracing) -> otlp::Encoder {
        match config.otlp.protocol {
            OtlpProtocol::Grpc => otlp::Encoder::new(&otlp::resource(config)).grpc_framed(),
            OtlpProtocol::HttpProtobuf => otlp::Encoder::new(&otlp::resource(config)),
        }
    }

    pub(super) fn new(
        config: &Tracing,
        encoder: otlp::Encoder,
        queue: Arc<Queue>,
        wake: Arc<Notify>,
        metrics: TraceMetrics,
    ) -> Self {
        Exporter {
            queue,
            wake,
            flush_interval: config.flush_interval,
            timeout: config.otlp.timeout,
            endpoint: config.otlp.endpoint.clone(),
            protocol: config.otlp.protocol,
            encoder,
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
            // (stopping, everything): a tick or the stop exports everything queued; a wake
            // (a whole batch is waiting) whole batches only, so that the export right after a
            // full one does not go out with the few spans that came in meanwhile: every export
            // costs a request's worth of work on the proxy's core whatever it carries.
            let (stopping, all) = tokio::select! {
                _ = tick.tick() => (false, true),
                _ = self.wake.notified() => (false, false),
                _ = &mut stop => (true, true),
            };
            self.flush(&mut client, all).await;
            if stopping {
                return;
            }
        }
    }

    /// Exports what is queued now, a batch (at most `batch` spans) per request: the sealed
    /// batches, and when `all` the one being filled too (else it waits to fill, or for the
    /// next tick).
    async fn flush(&mut self, client: &mut Client, all: bool) {
        loop {
            let (batch, last) = match self.queue.pop() {
                Some(b) => (b, false),
                // A partial batch: everything there was. What comes in meanwhile waits.
                None if all => match self.queue.take_open() {
                    Some(b) => (b, true),
                    None => return,
                },
                None => return,
            };
            let n = batch.spans as u64;
            let request = self.encoder.finish(batch.bytes, self.queue.room());
            self.export(client, request, n).await;
            if last {
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
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(self.timeout));
        connector.set_nodelay(true);
        let mut builder = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
        builder.pool_idle_timeout(Duration::from_secs(30));
        match self.protocol {
            OtlpProtocol::Grpc => match grpc_uri(&self.endpoint) {
                Ok(uri) => Client::Grpc {
                    client: builder.http2_only(true).build(connector),
                    uri,
                },
                Err(e) => Client::Unusable(e),
            },
            OtlpProtocol::HttpProtobuf => match self.endpoint.parse::<http::Uri>() {
                Ok(uri) => Client::Http {
                    client: builder.build(connector),
                    uri,
                },
                Err(e) => Client::Unusable(e.to_string()),
            },
        }
    }
}

/// The `Export` method's URI at `endpoint` (its scheme and authority; a path is ignored, as
/// gRPC clients do).
fn grpc_uri(endpoint: &str) -> Result<http::Uri, String> {
    let parts = endpoint
        .parse::<http::Uri>()
        .map_err(|e| e.to_string())?
        .into_parts();
    let mut uri = http::uri::Parts::default();
    uri.scheme = parts.scheme;
    uri.authority = parts.authority;
    uri.path_and_query = Some(http::uri::PathAndQuery::from_static(EXPORT_PATH));
    http::Uri::from_parts(uri).map_err(|e| e.to_string())
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
            Client::Grpc { client, uri } => {
                let req = http::Request::post(uri.clone())
                    .header(http::header::CONTENT_TYPE, "application/grpc")
                    .header(http::header::TE, "trailers")
                    .header(
                        http::header::USER_AGENT,
                        concat!("tandem/", env!("CARGO_PKG_VERSION")),
                    )
                    .body(Full::new(request))
                    .map_err(|e| ExportError::Failed(e.to_string()))?;
                let res = client
                    .request(req)
                    .await
                    .map_err(|e| ExportError::Failed(describe(&e)))?;
                let status = res.status();
                // A "trailers-only" answer (an error before any message) has them in the head.
                let in_head = grpc_status(res.headers());
                let collected = Limited::new(res.into_body(), MAX_RESPONSE)
                    .collect()
                    .await
                    .map_err(|e| ExportError::Failed(e.to_string()))?;
                let in_trailers = collected.trailers().and_then(grpc_status);
                if !status.is_success() {
                    return Err(ExportError::Failed(format!(
                        "the collector answered HTTP {status}"
                    )));
                }
                match in_trailers.or(in_head) {
                    Some((0, _)) => {}
                    Some((code, message)) => {
                        return Err(ExportError::Failed(format!(
                            "gRPC {:?}: {message}",
                            tonic::Code::from(code)
                        )))
                    }
                    None => {
                        return Err(ExportError::Failed(
                            "the collector's answer has no grpc-status".to_owned(),
                        ))
                    }
                }
                // One message: a 5-byte prefix (compressed flag, length), then the response.
                let body = collected.to_bytes();
                Ok(body
                    .get(5..)
                    .and_then(|m| ExportTraceServiceResponse::decode(m).ok())
                    .map_or(0, |r| rejected(&r)))
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

/// `grpc-status` (and `grpc-message`) of a response's head or trailers.
fn grpc_status(h: &http::HeaderMap) -> Option<(i32, String)> {
    let code = std::str::from_utf8(h.get("grpc-status")?.as_bytes())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let message = h
        .get("grpc-message")
        .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
        .unwrap_or_default();
    Some((code, message))
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
