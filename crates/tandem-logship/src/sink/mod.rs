//! Sinks: where records go, and the driver they share.
//!
//! A sink only knows how to encode a batch and send it once ([`Sink`]). Everything else is the
//! driver's ([`drive`]), the same for every sink: batching by lines, bytes and time; up to
//! `concurrency` deliveries in flight; retries with exponential back-off and jitter, or the
//! `Retry-After` the sink was given; and confirmation of every chunk in a batch once it is
//! delivered, which is what lets the committer move checkpoints.
//!
//! A delivery is retried until it succeeds or Tandem stops when the failure can pass: no
//! connection, a timeout, 429, 5xx, and the statuses a fix of the receiver or of Tandem's
//! configuration resolves (401, 403, 404, 415, ...). A sink that keeps failing that way holds its
//! batches, the memory budget fills, and the sources pause until it accepts again; the metrics
//! and the log say why.
//!
//! What retrying cannot fix is dropped, so that one poison batch cannot stall the pipeline
//! (and every checkpoint behind it) forever:
//! - a receiver that refuses a whole request for good ([`Outcome::Rejected`]: 400, e.g. Loki's
//!   "entry out of order" or "too old", 422, and 413 for a single record): the batch is counted
//!   in `tandem_logs_sink_dropped_lines_total{reason="rejected"}`, logged with the status and the
//!   start of the receiver's answer, and confirmed, so the checkpoint moves past it. A 413 for a
//!   batch of several records first splits it in halves, each sent (and split again) on its own;
//! - a receiver that refuses some records for good while accepting the rest (an Elasticsearch
//!   bulk item failing with 400, an OTLP partial success): the sink counts and logs them and
//!   answers [`Outcome::Partial`], with the body of the records to send again, if any; the batch
//!   is confirmed once every record is accepted or refused that way.
//!
//! # Layout
//! - [`encode`]: NDJSON encoding.
//! - [`http`]: the HTTP sinks over HTTP/1.1 (hyper), gzip, `Retry-After`, TLS ([`tls`]), in
//!   one of four formats: NDJSON, [`loki`] push, [`elastic`] bulk, [`otlp`] logs.
//! - [`file`](mod@file), NDJSON appended to a file, or written to stdout.

pub mod elastic;
pub mod encode;
pub mod file;
pub mod http;
pub mod loki;
pub mod otlp;
pub mod tls;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tandem_config::LogBatch;
use tandem_telemetry::logs::LogSinkMetrics;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::record::Chunk;

/// A boxed future, for [`Sink::send`] (a trait object cannot return `impl Future`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Longest wait for the checkpoint to record a delivery before the next one starts.
const CHECKPOINT_WAIT: Duration = Duration::from_secs(1);

/// The longest `Retry-After` honoured; a longer one is cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// One destination for records.
pub trait Sink: Send + Sync + 'static {
    /// Appends the encoding of `batch` to `out`. Called once per batch, off the async runtime;
    /// retries send the same bytes again.
    fn encode(&self, batch: &[Arc<Chunk>], out: &mut Vec<u8>);

    /// Sends one encoded batch, once. Retrying is the driver's job.
    fn send(&self, body: Bytes) -> BoxFuture<'_, Outcome>;
}

/// What one delivery attempt came to.
#[derive(Debug)]
pub enum Outcome {
    /// The sink confirmed it (HTTP 2xx, bytes written).
    Delivered,
    /// Not delivered; try again.
    Retry(Failure),
    /// Refused for good (a 400, a 413, a 422): retrying the same body cannot succeed.
    Rejected {
        /// The HTTP status.
        status: u16,
        /// For the log: status and the start of the answer.
        detail: String,
    },
    /// The receiver accepted part of the batch: `dropped` records were refused for good (the
    /// sink counted and logged them), and `resend`, if any, must be sent again.
    Partial {
        /// Records refused for good.
        dropped: usize,
        /// What to send again, and why.
        resend: Option<Resend>,
    },
}

/// The part of a batch to send again after a partial success.
#[derive(Debug)]
pub struct Resend {
    /// Its encoded body (gzipped when the sink gzips).
    pub body: Bytes,
    /// Records in it.
    pub lines: usize,
    /// Why, for the retry metric and the log.
    pub failure: Failure,
}

/// Why a delivery failed, and when to try again.
#[derive(Debug)]
pub struct Failure {
    /// For the retry metric.
    pub reason: RetryReason,
    /// When the sink said when to come back (`Retry-After`).
    pub after: Option<Duration>,
    /// For the log: status and the start of the answer, or the error.
    pub detail: String,
}

/// Why a delivery is tried again, indexed like [`tandem_telemetry::logs::LOG_RETRY_REASONS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryReason {
    /// No connection could be made.
    Connect = 0,
    /// No complete answer in time.
    Timeout = 1,
    /// 429 Too Many Requests.
    Status429 = 2,
    /// A 5xx status.
    Status5xx = 3,
    /// Any other status that is not 2xx.
    StatusOther = 4,
    /// An I/O error: the connection broke, a write failed.
    Io = 5,
}

/// How one sink batches and retries.
#[derive(Clone, Debug)]
pub struct DriverSettings {
    /// The sink's name, for logs.
    pub name: Arc<str>,
    /// Batching.
    pub batch: LogBatch,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// First back-off.
    pub backoff: Duration,
    /// Longest back-off.
    pub max_backoff: Duration,
}

/// Exponential back-off with "equal jitter": each wait is between half and all of
/// `base * 2^n`, capped at `max`, so retries of many batches spread out.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at `base`.
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            next: base.min(max),
            max,
        }
    }

    /// The next wait.
    pub fn next_wait(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(self.max);
        let half = d / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// Failed attempts in a row after which a sink is shown as `down` rather than `retrying`.
pub const DOWN_AFTER_FAILURES: u64 = 3;

/// A sink's live state for `tandem logs status` and `GET /logs`, kept by its driver.
#[derive(Debug, Default)]
pub struct SinkState {
    queued_chunks: AtomicU64,
    batch_lines: AtomicU64,
    batch_bytes: AtomicU64,
    in_flight: AtomicU64,
    in_flight_lines: AtomicU64,
    in_flight_bytes: AtomicU64,
    delivered_lines: AtomicU64,
    delivered_bytes: AtomicU64,
    deliveries: AtomicU64,
    failures_in_a_row: AtomicU64,
    times: Mutex<SinkTimes>,
}

#[derive(Debug, Default)]
struct SinkTimes {
    last_error: Option<(String, SystemTime)>,
    failing_since: Option<SystemTime>,
    last_delivery: Option<SystemTime>,
}

/// A snapshot of [`SinkState`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct SinkView {
    /// `ok` (the last attempt delivered, or none failed), `retrying` (failing, fewer than
    /// [`DOWN_AFTER_FAILURES`] attempts in a row), `down` (that many or more).
    pub state: &'static str,
    /// Chunks waiting in the sink's queue.
    pub queued_chunks: u64,
    /// The batch being filled: lines and line bytes.
    pub batch_lines: u64,
    /// See `batch_lines`.
    pub batch_bytes: u64,
    /// Batches being delivered (retried included), their lines and line bytes.
    pub in_flight_batches: u64,
    /// See `in_flight_batches`.
    pub in_flight_lines: u64,
    /// See `in_flight_batches`.
    pub in_flight_bytes: u64,
    /// Delivered and confirmed since the start: lines, bytes sent, deliveries.
    pub delivered_lines: u64,
    /// See `delivered_lines`.
    pub delivered_bytes: u64,
    /// See `delivered_lines`.
    pub deliveries: u64,
    /// Failed attempts since the last delivery.
    pub failures_in_a_row: u64,
    /// The last failure's detail, and when (RFC 3339).
    pub last_error: Option<String>,
    /// See `last_error`.
    pub last_error_at: Option<String>,
    /// Since when the sink fails (absent when it does not).
    pub failing_since: Option<String>,
    /// The last delivery's time.
    pub last_delivery_at: Option<String>,
}

impl SinkState {
    fn times(&self) -> std::sync::MutexGuard<'_, SinkTimes> {
        self.times.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn delivered(&self, lines: u64, bytes: u64) {
        self.delivered_lines.fetch_add(lines, Ordering::Relaxed);
        self.delivered_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.deliveries.fetch_add(1, Ordering::Relaxed);
        self.failures_in_a_row.store(0, Ordering::Relaxed);
        let mut t = self.times();
        t.failing_since = None;
        t.last_delivery = Some(SystemTime::now());
    }

    /// A batch was refused for good and dropped: shown as the last error, without making the
    /// sink look down (the next batch may well go through).
    fn rejected(&self, detail: &str) {
        self.times().last_error = Some((detail.to_owned(), SystemTime::now()));
    }

    fn failed(&self, detail: &str) {
        self.failures_in_a_row.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now();
        let mut t = self.times();
        t.last_error = Some((detail.to_owned(), now));
        t.failing_since.get_or_insert(now);
    }

    /// A snapshot.
    pub fn view(&self) -> SinkView {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let fmt = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
        let t = self.times();
        let failures = r(&self.failures_in_a_row);
        SinkView {
            state: match failures {
                0 => "ok",
                n if n < DOWN_AFTER_FAILURES => "retrying",
                _ => "down",
            },
            queued_chunks: r(&self.queued_chunks),
            batch_lines: r(&self.batch_lines),
            batch_bytes: r(&self.batch_bytes),
            in_flight_batches: r(&self.in_flight),
            in_flight_lines: r(&self.in_flight_lines),
            in_flight_bytes: r(&self.in_flight_bytes),
            delivered_lines: r(&self.delivered_lines),
            delivered_bytes: r(&self.delivered_bytes),
            deliveries: r(&self.deliveries),
            failures_in_a_row: failures,
            last_error: t.last_error.as_ref().map(|e| e.0.clone()),
            last_error_at: t.last_error.as_ref().map(|e| fmt(e.1)),
            failing_since: t.failing_since.map(fmt),
            last_delivery_at: t.last_delivery.map(fmt),
        }
    }
}

/// Counts a batch in flight until dropped (delivered, or cancelled at a hard stop).
struct InFlight {
    state: Arc<SinkState>,
    lines: u64,
    bytes: u64,
}

impl InFlight {
    fn new(state: Arc<SinkState>, lines: u64, bytes: u64) -> InFlight {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        state.in_flight_lines.fetch_add(lines, Ordering::Relaxed);
        state.in_flight_bytes.fetch_add(bytes, Ordering::Relaxed);
        InFlight {
            state,
            lines,
            bytes,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.state
            .in_flight_lines
            .fetch_sub(self.lines, Ordering::Relaxed);
        self.state
            .in_flight_bytes
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Runs one sink: batches what arrives on `rx`, delivers, confirms. Returns once `rx` closed
/// and every batch was delivered, or at `stop` (undelivered chunks stay unconfirmed: read
/// again on the next start).
pub async fn drive(
    sink: Arc<dyn Sink>,
    rx: UnboundedReceiver<Arc<Chunk>>,
    settings: DriverSettings,
    metrics: LogSinkMetrics,
    stop: CancellationToken,
) {
    drive_with_state(sink, rx, settings, metrics, stop, Arc::default()).await;
}

/// [`drive`], keeping `state` up to date for `/logs`.
pub async fn drive_with_state(
    sink: Arc<dyn Sink>,
    mut rx: UnboundedReceiver<Arc<Chunk>>,
    settings: DriverSettings,
    metrics: LogSinkMetrics,
    stop: CancellationToken,
    state: Arc<SinkState>,
) {
    let settings = Arc::new(settings);
    let slots = Arc::new(Semaphore::new(settings.concurrency.max(1)));
    let mut inflight = JoinSet::new();
    let mut batch: Vec<Arc<Chunk>> = Vec::new();
    let (mut lines, mut bytes) = (0usize, 0usize);
    let mut deadline: Option<Instant> = None;
    let mut open = true;
    // A chunk that did not fit the batch being filled: it starts the next one.
    let mut carry: Option<Arc<Chunk>> = None;
    loop {
        state.queued_chunks.store(
            rx.len() as u64 + u64::from(carry.is_some()),
            Ordering::Relaxed,
        );
        state.batch_lines.store(lines as u64, Ordering::Relaxed);
        state.batch_bytes.store(bytes as u64, Ordering::Relaxed);
        if batch.is_empty() {
            if let Some(chunk) = carry.take() {
                deadline = Some(Instant::now() + settings.batch.timeout);
                lines += chunk.records.len();
                bytes += chunk.bytes;
                batch.push(chunk);
            }
        }
        let full = carry.is_some()
            || lines >= settings.batch.max_lines
            || bytes >= settings.batch.max_bytes;
        let due = deadline.is_some_and(|d| d <= Instant::now());
        if !batch.is_empty() && (full || due || !open) {
            let slot = tokio::select! {
                s = slots.clone().acquire_owned() => s.ok(),
                _ = stop.cancelled() => None,
            };
            let Some(slot) = slot else { break };
            let counted = InFlight::new(state.clone(), lines as u64, bytes as u64);
            inflight.spawn(deliver(
                sink.clone(),
                std::mem::take(&mut batch),
                lines,
                settings.clone(),
                metrics.clone(),
                stop.clone(),
                (slot, counted),
            ));
            (lines, bytes, deadline) = (0, 0, None);
            continue;
        }
        if !open {
            break;
        }
        let wake = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = stop.cancelled() => break,
            m = rx.recv() => match m {
                Some(chunk) => {
                    let fits = lines + chunk.records.len() <= settings.batch.max_lines
                        && bytes + chunk.bytes <= settings.batch.max_bytes;
                    if batch.is_empty() || fits {
                        if batch.is_empty() {
                            deadline = Some(Instant::now() + settings.batch.timeout);
                        }
                        lines += chunk.records.len();
                        bytes += chunk.bytes;
                        batch.push(chunk);
                    } else {
                        carry = Some(chunk);
                    }
                }
                None => open = false,
            },
            _ = tokio::time::sleep_until(wake), if deadline.is_some() => {}
            Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
        }
    }
    loop {
        tokio::select! {
            r = inflight.join_next() => if r.is_none() { break },
            _ = stop.cancelled() => {
                inflight.abort_all();
                while inflight.join_next().await.is_some() {}
                break;
            }
        }
    }
}

/// Encodes `batch` once and sends it until delivered or refused for good (or `stop`), then
/// confirms its chunks.
async fn deliver(
    sink: Arc<dyn Sink>,
    batch: Vec<Arc<Chunk>>,
    lines: usize,
    s: Arc<DriverSettings>,
    metrics: LogSinkMetrics,
    stop: CancellationToken,
    (_slot, counted): (OwnedSemaphorePermit, InFlight),
) {
    let Some(body) = encode_off_runtime(&sink, batch.clone()).await else {
        tracing::error!(sink = %s.name, "encoding a log batch failed; it will be read again on the next start");
        return;
    };
    let ctx = SendCtx {
        sink: &sink,
        s: &s,
        metrics: &metrics,
        stop: &stop,
        state: &counted.state,
    };
    let Some(attempts) = send_until_done(&ctx, &batch, body, lines).await else {
        return;
    };
    if attempts > 1 {
        tracing::info!(sink = %s.name, attempts, lines, "log batch done after retries");
    }
    // Hold the delivery slot until the checkpoint has caught up: with it, a crash replays at
    // most the deliveries in flight. Bounded, so a slow disk delays shipping a little rather
    // than stopping it.
    let recorded = crate::record::confirm_batch(&batch);
    let _ = tokio::time::timeout(CHECKPOINT_WAIT, async {
        for r in recorded {
            let _ = r.await;
        }
    })
    .await;
}

/// Encoding (and gzip) is CPU work: off the runtime that serves the proxy. None if it panicked.
async fn encode_off_runtime(sink: &Arc<dyn Sink>, batch: Vec<Arc<Chunk>>) -> Option<Bytes> {
    let encoder = sink.clone();
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::with_capacity(batch.iter().map(|c| c.bytes).sum::<usize>() * 2);
        encoder.encode(&batch, &mut out);
        Bytes::from(out)
    })
    .await
    .ok()
}

/// What sending one batch needs besides the batch.
struct SendCtx<'a> {
    sink: &'a Arc<dyn Sink>,
    s: &'a DriverSettings,
    metrics: &'a LogSinkMetrics,
    stop: &'a CancellationToken,
    state: &'a SinkState,
}

/// Sends `body` (the encoding of `batch`, `lines` records) until it is delivered, or refused
/// for good: then dropped and counted — after splitting it in halves, each sent the same way,
/// when the refusal is a 413 and it holds more than one record. Returns the attempts made, or
/// None at `stop`.
fn send_until_done<'a>(
    ctx: &'a SendCtx<'a>,
    batch: &'a [Arc<Chunk>],
    mut body: Bytes,
    lines: usize,
) -> BoxFuture<'a, Option<u32>> {
    Box::pin(async move {
        let SendCtx {
            sink,
            s,
            metrics,
            stop,
            state,
        } = ctx;
        let mut backoff = Backoff::new(s.backoff, s.max_backoff);
        let mut attempt: u32 = 0;
        // Records still to be accepted: all of them, until a partial success says otherwise.
        let mut pending = lines;
        loop {
            attempt += 1;
            let started = Instant::now();
            let outcome = tokio::select! {
                o = sink.send(body.clone()) => o,
                _ = stop.cancelled() => return None,
            };
            metrics
                .latency
                .observe(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
            let failure = match outcome {
                Outcome::Delivered => {
                    metrics.shipped_lines.inc_by(pending as u64);
                    metrics.shipped_bytes.inc_by(body.len() as u64);
                    state.delivered(pending as u64, body.len() as u64);
                    return Some(attempt);
                }
                Outcome::Partial { dropped, resend } => {
                    let left = resend.as_ref().map_or(0, |r| r.lines);
                    metrics
                        .shipped_lines
                        .inc_by(pending.saturating_sub(dropped + left) as u64);
                    metrics.shipped_bytes.inc_by(body.len() as u64);
                    match resend {
                        None => {
                            state.delivered(
                                pending.saturating_sub(dropped) as u64,
                                body.len() as u64,
                            );
                            return Some(attempt);
                        }
                        Some(r) => {
                            pending = r.lines;
                            body = r.body;
                            r.failure
                        }
                    }
                }
                Outcome::Rejected { status, detail } => {
                    // Halves of a batch still whole (no partial success took part of it).
                    let halves = (status == 413 && pending == lines)
                        .then(|| split_half(batch))
                        .flatten();
                    if let Some(halves) = halves {
                        tracing::warn!(sink = %s.name, lines, detail = %detail, "the log receiver refused a batch as too large; sending it in two halves");
                        for part in halves {
                            let n = part.iter().map(|c| c.records.len()).sum();
                            let Some(b) = encode_off_runtime(sink, part.clone()).await else {
                                reject(ctx, 413, "encoding half of a batch failed", n);
                                continue;
                            };
                            attempt += send_until_done(ctx, &part, b, n).await?;
                        }
                        return Some(attempt);
                    }
                    reject(ctx, status, &detail, pending);
                    return Some(attempt);
                }
                Outcome::Retry(f) => f,
            };
            state.failed(&failure.detail);
            if let Some(c) = metrics.retries.get(failure.reason as usize) {
                c.inc();
            }
            let wait = match failure.after {
                Some(after) => after.min(MAX_RETRY_AFTER),
                None => backoff.next_wait(),
            };
            // Said on attempts 1, 2, 4, 8, ...: visible, but never a flood.
            if attempt.is_power_of_two() {
                tracing::warn!(sink = %s.name, attempt, reason = ?failure.reason, detail = %failure.detail, retry_in = ?wait, "log delivery failed; retrying (nothing is dropped)");
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return None,
            }
        }
    })
}

/// Drops `lines` records refused for good: counted, logged, shown in `/logs`.
fn reject(ctx: &SendCtx<'_>, status: u16, detail: &str, lines: usize) {
    if let Some(c) = ctx.metrics.dropped_lines.get(2) {
        c.inc_by(lines as u64);
    }
    ctx.state.rejected(detail);
    tracing::error!(sink = %ctx.s.name, status, lines, detail = %detail, "the log receiver refused a batch for good (retrying cannot fix it); its lines are dropped, counted in tandem_logs_sink_dropped_lines_total (reason rejected), and the checkpoint moves past them");
}

/// `batch` cut in two halves of its records (a chunk in the middle is copied in two parts, for
/// encoding only); None for a single record.
fn split_half(batch: &[Arc<Chunk>]) -> Option<[Vec<Arc<Chunk>>; 2]> {
    let total: usize = batch.iter().map(|c| c.records.len()).sum();
    if total < 2 {
        return None;
    }
    let half = total / 2;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut seen = 0;
    for c in batch {
        let n = c.records.len();
        if seen + n <= half {
            a.push(c.clone());
        } else if seen >= half {
            b.push(c.clone());
        } else {
            let k = half - seen;
            a.push(Arc::new(c.part(0..k)));
            b.push(Arc::new(c.part(k..n)));
        }
        seen += n;
    }
    Some([a, b])
}

#[cfg(test)]
mod tests;
