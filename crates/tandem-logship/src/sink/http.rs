//! The HTTP sinks: batches POSTed to a URL over pooled HTTP/1.1 keep-alive connections
//! (hyper's client), plain or TLS (rustls, see [`super::tls`]), in one of four formats: NDJSON,
//! Loki push, Elasticsearch bulk, OTLP logs.
//!
//! OTLP over gRPC (`protocol: grpc`) is the same protobuf request as one unary call of
//! `opentelemetry.proto.collector.logs.v1.LogsService/Export`: HTTP/2 (prior knowledge on
//! `http://`, ALPN `h2` on `https://`), `content-type: application/grpc`, the message in one
//! length-prefixed gRPC frame (gzipped inside it with `grpc-encoding: gzip`), the outcome in the
//! `grpc-status` trailer: 0 is a delivery (with the response's partial success read as over
//! HTTP), 3 `INVALID_ARGUMENT` a refusal for good, any other code retried (`UNAVAILABLE`,
//! `RESOURCE_EXHAUSTED`, ..., and `UNAUTHENTICATED`/`UNIMPLEMENTED`, which a fix of the
//! receiver or the configuration resolves).
//!
//! A 2xx answer is a delivery — for Elasticsearch and OTLP once the answer's per-item results
//! are read: items Elasticsearch failed with 429/5xx are sent again, alone; items refused for
//! good, and records an OTLP receiver rejected, are dropped and counted. 429 and 503 are
//! retried after their `Retry-After` (seconds or an HTTP date) when they carry one. 400, 413
//! and 422 are refused for good ([`Outcome::Rejected`]: the driver splits a 413'd batch, and
//! drops and counts what stays refused). Every other failure (no connection, a TLS error, a
//! timeout, 5xx, and the statuses a fix of the receiver or of the configuration resolves: 401,
//! 403, 404, 408, 415, ...) is retried after the driver's back-off. The answer's body is read (for the log line of a failure, or the bulk
//! results) so the connection can be reused.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use http::header::{HeaderMap, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tandem_config::{HttpApi, HttpLogSink};
use tandem_telemetry::logs::LogSinkMetrics;

use super::elastic::{self, Bulk};
use super::loki::Loki;
use super::otlp::{self, Otlp};
use super::tls::{self, TlsError};
use super::{encode, BoxFuture, Failure, Outcome, Resend, RetryReason, Sink};
use crate::record::Chunk;

/// Bytes of an answer's body read (for the log) before giving up on it.
const MAX_ANSWER: usize = 64 * 1024;

/// Bytes of an Elasticsearch bulk answer read: its per-item results (a few dozen bytes per item
/// with `filter_path`, a few hundred without).
const MAX_BULK_ANSWER: usize = 64 * 1024 * 1024;

/// What an HTTP sink sends.
enum Api {
    Ndjson,
    Loki(Loki),
    Elasticsearch(Bulk),
    Otlp(Otlp),
}

/// The pooled HTTP client of a sink.
type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// How often a sink's TLS files are checked for a change.
pub const TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// An HTTP sink: NDJSON, Loki, Elasticsearch or OTLP.
pub struct HttpSink {
    name: Arc<str>,
    /// Replaced whole when the TLS files change (see [`HttpSink::spawn_tls_watcher`]): new
    /// requests take the new client and its new connections; requests under way finish on
    /// the old one.
    client: std::sync::RwLock<HttpClient>,
    /// The TLS files and settings, for reloading; None for `http://`.
    tls: Option<tandem_config::SinkTls>,
    timeout_connect: Duration,
    url: Uri,
    headers: HeaderMap,
    gzip: bool,
    timeout: Duration,
    api: Api,
    /// OTLP over gRPC.
    grpc: bool,
    metrics: LogSinkMetrics,
}

impl HttpSink {
    /// A sink for `cfg` (no connection is made until the first batch); fails when its TLS
    /// files cannot be used.
    pub fn new(
        name: &str,
        cfg: &HttpLogSink,
        metrics: LogSinkMetrics,
    ) -> Result<HttpSink, TlsError> {
        let timeout_connect = cfg.timeout.min(Duration::from_secs(10));
        let grpc = matches!(cfg.api, HttpApi::Otlp { grpc: true, .. });
        let client = build_client(cfg.tls.as_ref(), timeout_connect, grpc)?;

        let (api, content_type) = match &cfg.api {
            HttpApi::Ndjson => (Api::Ndjson, "application/x-ndjson"),
            HttpApi::Loki {
                stream_labels,
                protobuf,
            } => {
                let l = Loki::new(stream_labels.clone(), *protobuf);
                let ct = l.content_type();
                (Api::Loki(l), ct)
            }
            HttpApi::Elasticsearch {
                index,
                data_stream,
                document_id,
            } => (
                Api::Elasticsearch(Bulk::new(index, *data_stream).with_ids(*document_id)),
                "application/x-ndjson",
            ),
            HttpApi::Otlp { json, grpc } => {
                let o = Otlp::new(*json);
                let ct = if *grpc {
                    "application/grpc"
                } else {
                    o.content_type()
                };
                (Api::Otlp(o), ct)
            }
        };
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        if grpc {
            headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
            if cfg.gzip {
                headers.insert("grpc-encoding", HeaderValue::from_static("gzip"));
            }
        } else if cfg.gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        for (k, v) in &cfg.headers {
            headers.insert(k.clone(), v.clone());
        }
        let mut url = cfg.url.clone();
        if matches!(api, Api::Elasticsearch(_)) && url.query().is_none() {
            // Only the fields the sink reads: the answer shrinks from hundreds of bytes per
            // item to a few dozen, and to `{"errors":false}` when all went well.
            let pq = format!("{}?{}", url.path(), elastic::FILTER_PATH);
            let mut parts = url.clone().into_parts();
            if let Ok(p) = pq.parse() {
                parts.path_and_query = Some(p);
                url = Uri::from_parts(parts).unwrap_or(url);
            }
        }
        Ok(HttpSink {
            name: name.into(),
            client: std::sync::RwLock::new(client),
            tls: cfg.tls.clone(),
            timeout_connect,
            url,
            headers,
            gzip: cfg.gzip,
            timeout: cfg.timeout,
            api,
            grpc,
            metrics,
        })
    }

    async fn post(&self, body: Bytes) -> Outcome {
        let mut req = Request::new(Full::new(body.clone()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.url.clone();
        *req.headers_mut() = self.headers.clone();
        let limit = match self.api {
            Api::Elasticsearch(_) => MAX_BULK_ANSWER,
            _ => MAX_ANSWER,
        };
        let client = self
            .client
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let exchange = async {
            let resp = client.request(req).await?;
            let (parts, body) = resp.into_parts();
            // Reading the body lets the connection be reused; its text goes into the log.
            let mut headers = parts.headers;
            let text = match Limited::new(body, limit).collect().await {
                Ok(c) => {
                    // gRPC's outcome is in the trailers: kept with the headers.
                    if let Some(t) = c.trailers() {
                        headers.extend(t.clone());
                    }
                    Ok(c.to_bytes())
                }
                Err(e) => Err(e.to_string()),
            };
            Ok::<_, hyper_util::client::legacy::Error>((parts.status, headers, text))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => retry(
                RetryReason::Timeout,
                None,
                format!(
                    "no complete answer within {}",
                    humantime::format_duration(self.timeout)
                ),
            ),
            Ok(Err(e)) => {
                let reason = if e.is_connect() {
                    RetryReason::Connect
                } else {
                    RetryReason::Io
                };
                let mut detail = error_chain(&e);
                if detail.contains("certificate") || detail.contains("CertificateRequired") {
                    detail.push_str(
                        " (TLS: check the sink's `tls.ca`, the CA that signed its certificate, \
                         `tls.server_name`, and `tls.cert`/`tls.key` if it wants a client \
                         certificate)",
                    );
                }
                retry(reason, None, detail)
            }
            Ok(Ok((status, headers, text))) => {
                if self.grpc && status.is_success() {
                    return self.grpc_answer(&headers, &text.unwrap_or_default());
                }
                if !status.is_success() {
                    return classify(
                        status,
                        &headers,
                        &text.unwrap_or_default(),
                        SystemTime::now(),
                    );
                }
                match &self.api {
                    Api::Elasticsearch(_) => match text {
                        Ok(answer) => self.bulk_answer(body, answer).await,
                        Err(e) => retry(
                            RetryReason::StatusOther,
                            None,
                            format!("status {status} but the bulk answer could not be read: {e}"),
                        ),
                    },
                    Api::Otlp(o) => {
                        let answer = text.unwrap_or_default();
                        self.otlp_partial(if o.content_type() == "application/json" {
                            otlp::rejected_json(&answer)
                        } else {
                            otlp::rejected(&answer)
                        })
                    }
                    Api::Ndjson | Api::Loki(_) => Outcome::Delivered,
                }
            }
        }
    }

    /// An OTLP answer's partial success (`rejected` records and why, over HTTP or gRPC): the
    /// rest was delivered; the rejected are dropped, counted and logged.
    fn otlp_partial(&self, rejected: Option<(u64, String)>) -> Outcome {
        match rejected {
            None => Outcome::Delivered,
            Some((n, why)) => {
                self.metrics.dropped_lines[1].inc_by(n);
                tracing::warn!(sink = %self.name, rejected = n, error = %why, "the OTLP receiver rejected log records (partial success); they are dropped and counted");
                Outcome::Partial {
                    dropped: usize::try_from(n).unwrap_or(usize::MAX),
                    resend: None,
                }
            }
        }
    }

    /// A gRPC answer (HTTP 200): its `grpc-status` says what became of the batch.
    fn grpc_answer(&self, headers: &HeaderMap, body: &[u8]) -> Outcome {
        let code = headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u32>().ok());
        let message = headers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .map(percent_decode)
            .unwrap_or_default();
        match code {
            Some(0) => {
                // One frame: flag, length, ExportLogsServiceResponse.
                self.otlp_partial(otlp::rejected(body.get(5..).unwrap_or_default()))
            }
            Some(3) => Outcome::Rejected {
                status: 400,
                detail: format!("grpc-status 3 (INVALID_ARGUMENT): {message}"),
            },
            Some(c) => retry(
                if c == 8 {
                    RetryReason::Status429
                } else {
                    RetryReason::Status5xx
                },
                None,
                format!("grpc-status {c} ({}): {message}", grpc_code_name(c)),
            ),
            None => retry(
                RetryReason::StatusOther,
                None,
                "a gRPC answer without grpc-status (not a gRPC server?)".to_owned(),
            ),
        }
    }

    /// A 2xx bulk answer: delivered, or the items to send again and those dropped.
    async fn bulk_answer(&self, sent: Bytes, answer: Bytes) -> Outcome {
        // The usual answer: nothing to read back, nothing to decompress.
        if elastic::all_indexed(&answer) {
            return Outcome::Delivered;
        }
        let gzip = self.gzip;
        // Parsing the answer and cutting the body are CPU work: off the runtime.
        let work = tokio::task::spawn_blocking(move || {
            let raw = if gzip {
                let mut raw = Vec::with_capacity(sent.len() * 4);
                GzDecoder::new(&sent[..])
                    .read_to_end(&mut raw)
                    .map_err(|e| format!("cannot read back the gzipped bulk body: {e}"))?;
                Bytes::from(raw)
            } else {
                sent
            };
            let items = elastic::count_items(&raw);
            let Some(result) = elastic::parse_response(&answer, items)? else {
                return Ok(None);
            };
            let mut body = Vec::new();
            if !result.retry.is_empty() {
                let mut plain = Vec::with_capacity(raw.len());
                elastic::select_items(&raw, &result.retry, &mut plain);
                body = if gzip { gzip_bytes(&plain) } else { plain };
            }
            Ok(Some((result, body)))
        })
        .await;
        let result = match work {
            Ok(Ok(None)) => return Outcome::Delivered,
            Ok(Ok(Some(r))) => r,
            Ok(Err(detail)) => return retry(RetryReason::StatusOther, None, detail),
            Err(e) => {
                return retry(
                    RetryReason::StatusOther,
                    None,
                    format!("reading the bulk answer failed: {e}"),
                )
            }
        };
        let (result, body) = result;
        if !result.dropped.is_empty() {
            self.metrics.dropped_lines[0].inc_by(result.dropped.len() as u64);
            // One line per distinct status and error type in this answer.
            let mut seen: Vec<(u16, &str)> = Vec::new();
            for d in &result.dropped {
                if seen.contains(&(d.status, d.kind.as_str())) {
                    continue;
                }
                seen.push((d.status, d.kind.as_str()));
                let count = result
                    .dropped
                    .iter()
                    .filter(|o| o.status == d.status && o.kind == d.kind)
                    .count();
                let reason: String = d.reason.chars().take(300).collect();
                tracing::warn!(sink = %self.name, lines = count, status = d.status, error_type = %d.kind, error_reason = %reason, "Elasticsearch refused log lines for good; they are dropped and counted in tandem_logs_sink_dropped_lines_total");
            }
        }
        let resend = (!result.retry.is_empty()).then(|| Resend {
            body: Bytes::from(body),
            lines: result.retry.len(),
            failure: Failure {
                reason: if result.retry_status == 429 {
                    RetryReason::Status429
                } else {
                    RetryReason::Status5xx
                },
                after: None,
                detail: format!(
                    "{} of the bulk's items failed with status {} (and 5xx/429); sending them again",
                    result.retry.len(),
                    result.retry_status
                ),
            },
        });
        Outcome::Partial {
            dropped: result.dropped.len(),
            resend,
        }
    }
}

impl Sink for HttpSink {
    fn encode(&self, batch: &[std::sync::Arc<Chunk>], out: &mut Vec<u8>) {
        let raw_into = |out: &mut Vec<u8>| match &self.api {
            Api::Ndjson => encode::ndjson(batch, out),
            Api::Loki(l) => l.encode(batch, out),
            Api::Elasticsearch(b) => b.encode(batch, out),
            Api::Otlp(o) => o.encode(batch, out),
        };
        if self.grpc {
            // One length-prefixed frame: compressed flag, big-endian length, message.
            let mut raw = Vec::with_capacity(batch.iter().map(|c| c.bytes).sum::<usize>() * 2);
            raw_into(&mut raw);
            let msg = if self.gzip { gzip_bytes(&raw) } else { raw };
            out.push(u8::from(self.gzip));
            out.extend_from_slice(&u32::try_from(msg.len()).unwrap_or(u32::MAX).to_be_bytes());
            out.extend_from_slice(&msg);
            return;
        }
        if !self.gzip {
            raw_into(out);
            return;
        }
        let mut raw = Vec::with_capacity(batch.iter().map(|c| c.bytes).sum::<usize>() * 2);
        raw_into(&mut raw);
        gzip_into(&raw, out);
    }

    fn send(&self, body: Bytes) -> BoxFuture<'_, Outcome> {
        Box::pin(self.post(body))
    }
}

/// The pooled client for a sink with `tls` (None: `http://`), its TLS files read and checked.
fn build_client(
    tls: Option<&tandem_config::SinkTls>,
    connect_timeout: Duration,
    http2: bool,
) -> Result<HttpClient, TlsError> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    connector.enforce_http(false);
    let tls_config = match tls {
        Some(t) => tls::client_config(t)?,
        // An http:// sink: the TLS side is never used; roots stay empty.
        None => rustls::ClientConfig::builder_with_provider(tandem_tls::pair::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::from(format!("TLS setup failed: {e}")))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    };
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config)
        .https_or_http();
    let builder = match tls.and_then(|t| t.server_name.clone()) {
        Some(n) => {
            let name = rustls_pki_types::ServerName::try_from(n.clone()).map_err(|_| {
                TlsError::from(format!("tls.server_name: `{n}` is not a valid server name"))
            })?;
            builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
        }
        None => builder,
    };
    if http2 {
        // gRPC: HTTP/2 only (ALPN h2 over TLS, prior knowledge in the clear).
        let https = builder.enable_http2().wrap_connector(connector);
        return Ok(Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .http2_only(true)
            .build(https));
    }
    let https = builder.enable_http1().wrap_connector(connector);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(8)
        .build(https))
}

impl HttpSink {
    /// Checks the sink's TLS files (`tls.ca`, `tls.cert`, `tls.key`) every `interval` until the
    /// sink is dropped, and when their contents changed, reads and checks them again: a usable
    /// set replaces the client (new connections use it; the old pool's idle connections
    /// close), an unusable one is logged once and the last good one stays. Writers rarely
    /// replace a cert and its key in one step: a refused set is tried again while the files keep
    /// changing (up to three times, 300 ms apart) before it is reported. Must be called in a
    /// Tokio runtime; does nothing for a sink without TLS files.
    pub fn spawn_tls_watcher(self: &Arc<Self>, interval: Duration) {
        let Some(tls) = self.tls.clone() else { return };
        let files = tls::watched_files(&tls);
        if files.is_empty() {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut seen = tls::files_hash(&files);
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(sink) = weak.upgrade() else { return };
                let now = tls::files_hash(&files);
                if now == seen {
                    continue;
                }
                let mut current = now;
                let mut tries = 0;
                let outcome = loop {
                    match build_client(Some(&tls), sink.timeout_connect, sink.grpc) {
                        Ok(c) => break Ok(c),
                        Err(e) => {
                            tries += 1;
                            tokio::time::sleep(TLS_SETTLE).await;
                            let again = tls::files_hash(&files);
                            if tries < 3 && again != current {
                                // Still being written: judge the next version.
                                current = again;
                                continue;
                            }
                            break Err(e);
                        }
                    }
                };
                seen = current;
                match outcome {
                    Ok(c) => {
                        *sink
                            .client
                            .write()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = c;
                        tracing::info!(sink = %sink.name, "log sink TLS files reloaded; new connections use them");
                    }
                    Err(e) => {
                        tracing::error!(sink = %sink.name, error = %e, "log sink TLS files changed but cannot be used; still using the last good ones");
                    }
                }
            }
        });
    }
}

/// The name of a gRPC status code, for the log.
fn grpc_code_name(code: u32) -> &'static str {
    match code {
        1 => "CANCELLED",
        2 => "UNKNOWN",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "other",
    }
}

/// `grpc-message` is percent-encoded.
fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How long a refused TLS reload waits for the files to settle before trying again.
const TLS_SETTLE: Duration = Duration::from_millis(300);

/// Gzips `raw` onto `out`. Fast compression: log lines compress well even at level 1, and CPU
/// per line matters more in a sidecar than the last few percent of bytes.
fn gzip_into(raw: &[u8], out: &mut Vec<u8>) {
    let mut gz = GzEncoder::new(out, Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = gz.write_all(raw);
    let _ = gz.finish();
}

fn gzip_bytes(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() / 4 + 64);
    gzip_into(raw, &mut out);
    out
}

/// What an answer means for the batch: 2xx delivered; 400, 413 and 422 refused for good (the
/// same body can never succeed: Loki's "entry out of order"/"too old", a malformed request, a
/// request too large); else retried, after `Retry-After` when a 429 or 503 carries one.
pub fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Outcome {
    if status.is_success() {
        return Outcome::Delivered;
    }
    let snippet = String::from_utf8_lossy(&body[..body.len().min(200)]);
    let detail = format!("status {status}: {}", snippet.trim());
    let after = || headers.get(RETRY_AFTER).and_then(|v| retry_after(v, now));
    match status.as_u16() {
        429 => retry(RetryReason::Status429, after(), detail),
        503 => retry(RetryReason::Status5xx, after(), detail),
        500..=599 => retry(RetryReason::Status5xx, None, detail),
        400 | 413 | 422 => Outcome::Rejected {
            status: status.as_u16(),
            detail,
        },
        _ => retry(RetryReason::StatusOther, None, detail),
    }
}

/// A `Retry-After` value: delay-seconds, or an HTTP date (a date in the past means now).
pub fn retry_after(v: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let s = v.to_str().ok()?.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(s).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn retry(reason: RetryReason, after: Option<Duration>, detail: String) -> Outcome {
    Outcome::Retry(Failure {
        reason,
        after,
        detail,
    })
}

/// An error with its causes, `a: b: c` (hyper's own message is often just "client error").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An OTLP/gRPC sink: `grpc-status` 0 is a delivery (its partial success read from the
    /// answer's frame), 3 a refusal for good, others retried, none a retry with a hint; the
    /// request is one length-prefixed frame, gzipped inside with `gzip: true`, and no
    /// `content-encoding`.
    #[test]
    fn grpc_frames_and_statuses() {
        use opentelemetry_proto::tonic::collector::logs::v1::{
            ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
        };
        use prost::Message;
        let cfg = tandem_config::parse(
            "t.yaml",
            "logs:\n  checkpoint: { dir: /c }\n  sources:\n    a: { paths: [/a] }\n  sinks:\n    o: { type: otlp, url: \"http://127.0.0.1:4317\", protocol: grpc, gzip: true }\n",
        )
        .unwrap();
        let logs = cfg.logs.unwrap();
        let tandem_config::LogSinkKind::Http(h) = &logs.sinks[0].kind else {
            panic!()
        };
        let sink = HttpSink::new("o", h, tandem_telemetry::Metrics::new().log_sink("o")).unwrap();
        assert_eq!(sink.headers[CONTENT_TYPE], "application/grpc");
        assert_eq!(sink.headers["grpc-encoding"], "gzip");
        assert!(sink.headers.get(CONTENT_ENCODING).is_none());

        let origin = Arc::new(crate::record::Origin::new(
            "a".into(),
            "/a".into(),
            Arc::from(vec![]),
        ));
        let (tx, _rx) = std::sync::mpsc::channel();
        let chunk = Arc::new(Chunk::new(
            vec![crate::record::Record {
                message: Bytes::from_static(b"hello seq=1"),
                ..Default::default()
            }],
            11,
            SystemTime::now(),
            origin,
            (1, 0, 12),
            1,
            tx,
            None,
        ));
        let mut out = Vec::new();
        sink.encode(&[chunk], &mut out);
        assert_eq!(out[0], 1, "compressed flag");
        let len = u32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        assert_eq!(len, out.len() - 5);
        let mut raw = Vec::new();
        GzDecoder::new(&out[5..]).read_to_end(&mut raw).unwrap();
        let req = ExportLogsServiceRequest::decode(raw.as_slice()).unwrap();
        let rec = &req.resource_logs[0].scope_logs[0].log_records[0];
        assert!(format!("{:?}", rec.body).contains("hello seq=1"));

        let answer = |code: Option<&str>, msg: &str, resp: &ExportLogsServiceResponse| {
            let mut h = HeaderMap::new();
            if let Some(c) = code {
                h.insert("grpc-status", HeaderValue::from_str(c).unwrap());
            }
            h.insert("grpc-message", HeaderValue::from_str(msg).unwrap());
            let body = resp.encode_to_vec();
            let mut framed = vec![0];
            framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
            framed.extend_from_slice(&body);
            sink.grpc_answer(&h, &framed)
        };
        let ok = ExportLogsServiceResponse::default();
        assert!(matches!(answer(Some("0"), "", &ok), Outcome::Delivered));
        let partial = ExportLogsServiceResponse {
            partial_success: Some(ExportLogsPartialSuccess {
                rejected_log_records: 2,
                error_message: "bad".into(),
            }),
        };
        assert!(matches!(
            answer(Some("0"), "", &partial),
            Outcome::Partial {
                dropped: 2,
                resend: None
            }
        ));
        match answer(Some("3"), "bad%20record", &ok) {
            Outcome::Rejected { status, detail } => {
                assert_eq!(status, 400);
                assert!(detail.contains("INVALID_ARGUMENT") && detail.contains("bad record"));
            }
            o => panic!("{o:?}"),
        }
        let f = failure(answer(Some("14"), "down", &ok));
        assert_eq!(f.reason, RetryReason::Status5xx);
        assert!(f.detail.contains("UNAVAILABLE"), "{}", f.detail);
        assert_eq!(
            failure(answer(Some("8"), "", &ok)).reason,
            RetryReason::Status429
        );
        assert_eq!(
            failure(answer(Some("16"), "", &ok)).reason,
            RetryReason::Status5xx,
            "UNAUTHENTICATED: fixed by configuration, retried"
        );
        assert!(failure(answer(None, "", &ok))
            .detail
            .contains("not a gRPC server"));
        assert_eq!(percent_decode("a%2Fb%zz%"), "a/b%zz%");
    }

    fn status(code: u16, retry: Option<&str>) -> Outcome {
        let mut h = HeaderMap::new();
        if let Some(r) = retry {
            h.insert(
                RETRY_AFTER,
                HeaderValue::from_str(r).unwrap_or(HeaderValue::from_static("x")),
            );
        }
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        classify(
            StatusCode::from_u16(code).unwrap_or(StatusCode::OK),
            &h,
            b"busy",
            now,
        )
    }

    fn failure(o: Outcome) -> Failure {
        match o {
            Outcome::Retry(f) => f,
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    /// 2xx is delivery; 429 and 503 honour Retry-After in both forms; other statuses retry on
    /// the back-off, with the status and body in the detail.
    #[test]
    fn answers_are_classified() {
        assert!(matches!(status(200, None), Outcome::Delivered));
        assert!(matches!(status(204, Some("5")), Outcome::Delivered));
        let f = failure(status(429, Some("2")));
        assert_eq!(
            (f.reason, f.after),
            (RetryReason::Status429, Some(Duration::from_secs(2)))
        );
        assert!(
            f.detail.contains("429") && f.detail.contains("busy"),
            "{}",
            f.detail
        );
        // 1_700_000_000 is Tue, 14 Nov 2023 22:13:20 GMT.
        let f = failure(status(503, Some("Tue, 14 Nov 2023 22:13:50 GMT")));
        assert_eq!(
            (f.reason, f.after),
            (RetryReason::Status5xx, Some(Duration::from_secs(30)))
        );
        let f = failure(status(503, Some("Tue, 14 Nov 2023 22:00:00 GMT")));
        assert_eq!(f.after, Some(Duration::ZERO), "a past date means now");
        let f = failure(status(500, Some("9")));
        assert_eq!(
            (f.reason, f.after),
            (RetryReason::Status5xx, None),
            "only 429/503 say when"
        );
        let f = failure(status(429, Some("soon")));
        assert_eq!(
            f.after, None,
            "an unreadable Retry-After falls back to the back-off"
        );
        for code in [400, 413, 422] {
            match status(code, None) {
                Outcome::Rejected { status, detail } => {
                    assert_eq!(status, code);
                    assert!(detail.contains(&code.to_string()) && detail.contains("busy"));
                }
                other => panic!("{code}: expected a rejection, got {other:?}"),
            }
        }
        // Fixed by the receiver or the configuration, not by dropping every batch: retried.
        for code in [302, 401, 403, 404, 408, 415] {
            assert_eq!(failure(status(code, None)).reason, RetryReason::StatusOther);
        }
    }
}
