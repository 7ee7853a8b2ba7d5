//! Access logs: one JSON line per HTTP request or TCP connection, written by one thread from a
//! bounded queue.
//!
//! The data path fills a [`RequestRecord`] or [`ConnectionRecord`] once an exchange is over,
//! borrowing what it already holds. [`AccessLog::log_request`] renders the configured fields as
//! one JSON line on the calling task (a few hundred bytes; strings escaped by serde_json, so
//! hostile bytes in a path or `User-Agent` stay one valid line; client-controlled strings cut to
//! a bound) and hands it to the writer with `try_send`. When the queue is full the line is
//! dropped and counted in `tandem_access_log_dropped_total`: a slow disk or a stalled stdout
//! never holds up a request.
//!
//! The writer is a thread of its own, not a task: writes to files and pipes block, and a blocked
//! write on a runtime worker would stall every request scheduled there. It writes whole lines in
//! batches, reopens its file on [`Reopen::reopen`] (SIGUSR1, for logrotate's rename-and-reopen:
//! lines queued before the reopen go to the old file, later ones to the new), and on
//! [`Writer::shutdown`] writes out what is queued before it exits.
//!
//! A [`Tap`] ([`Writer::set_tap`]) sees every line the writer takes from the queue, on the
//! writer thread: log shipping's `access_log` source. It must not block (the shipper's source
//! spills to disk and drops beyond that); a slow tap fills the queue, whose overflow is dropped
//! and counted as always, so requests never wait for it.
//!
//! Non-goals: formats other than JSON lines, sampling.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use tandem_config::{AccessLogField, AccessLogOutput};

#[cfg(test)]
mod tests;

/// Longest `path` kept in a line; longer ones are cut and end in `...`.
pub const MAX_PATH: usize = 2048;
/// Longest `authority` kept in a line.
pub const MAX_AUTHORITY: usize = 256;
/// Longest `user_agent` kept in a line.
pub const MAX_USER_AGENT: usize = 512;

/// Bytes handed to one `write(2)` on stdout: at most `PIPE_BUF`, so that whole lines reach a
/// pipe shared with the app's own output without interleaving inside a line.
const STDOUT_CHUNK: usize = 4096;
/// Bytes handed to one `write(2)` on a file (appends of whole lines).
const FILE_CHUNK: usize = 64 * 1024;
/// Lines taken from the queue before they are written out and the control flags looked at.
const MAX_BATCH: usize = 1024;

/// How an exchange ended (the `end` field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The whole response went out (HTTP), or both directions closed (TCP).
    Complete,
    /// The client went away before the end: closed or reset its connection, or cancelled the
    /// stream, before or during the response.
    ClientGone,
    /// The upstream's response body failed part way (reset, bad framing).
    UpstreamError,
    /// No data moved for the idle timeout (`stream_idle_timeout`, `tcp_idle_timeout`).
    IdleTimeout,
    /// A TCP connection ended with an I/O error (a reset on either side).
    IoError,
    /// A TCP connection never reached an upstream (see `error`).
    NoUpstream,
}

/// One HTTP request, from its arrival to its last response byte.
#[derive(Clone, Debug)]
pub struct RequestRecord<'a> {
    /// When the request arrived (wall clock).
    pub start: SystemTime,
    /// From arrival to the response head; `None` when no response was sent.
    pub head: Option<Duration>,
    /// From arrival to the last response byte (or to the end, however it came).
    pub duration: Duration,
    /// Listener name.
    pub listener: &'a str,
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// Route name; `None` when no route matched.
    pub route: Option<&'a str>,
    /// Upstream name; `None` when no route matched.
    pub upstream: Option<&'a str>,
    /// The endpoint that answered (or failed), as configured.
    pub endpoint: Option<&'a str>,
    /// The client's address; `None` for Unix socket clients.
    pub client: Option<SocketAddr>,
    /// `HTTP/1.0`, `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'static str,
    /// Request method.
    pub method: &'a str,
    /// Request path and query, as received.
    pub path: &'a str,
    /// The request's authority (HTTP/2, absolute form) or `Host` header.
    pub authority: Option<&'a [u8]>,
    /// Response status; `None` when the client went away before a response.
    pub status: Option<u16>,
    /// `grpc-status` from the response head or trailers.
    pub grpc_status: Option<u32>,
    /// Request body bytes read from the client.
    pub received_bytes: u64,
    /// Response body bytes handed to the client's connection.
    pub sent_bytes: u64,
    /// Tries sent upstream, the first included (0 when none was sent).
    pub attempts: u32,
    /// The `tandem-error` reason when Tandem answered itself.
    pub error: Option<&'static str>,
    /// How it ended.
    pub end: End,
    /// `User-Agent` header.
    pub user_agent: Option<&'a [u8]>,
    /// The client's verified identity (mutual TLS).
    pub peer_identity: Option<&'a str>,
    /// Trace id, when tracing is on.
    pub trace_id: Option<&'a str>,
    /// Span id of Tandem's span, when tracing is on.
    pub span_id: Option<&'a str>,
}

/// One connection on a TCP listener, from accept to close.
#[derive(Clone, Debug)]
pub struct ConnectionRecord<'a> {
    /// When the connection was accepted (wall clock).
    pub start: SystemTime,
    /// From accept to close.
    pub duration: Duration,
    /// Listener name.
    pub listener: &'a str,
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// Upstream name.
    pub upstream: Option<&'a str>,
    /// The endpoint connected to (or the last one that failed).
    pub endpoint: Option<&'a str>,
    /// The client's address; `None` for Unix socket clients.
    pub client: Option<SocketAddr>,
    /// Bytes received from the client.
    pub received_bytes: u64,
    /// Bytes sent to the client.
    pub sent_bytes: u64,
    /// The `tandem-error` reason when no upstream connection was made.
    pub error: Option<&'static str>,
    /// How it ended.
    pub end: End,
    /// The client's verified identity (mutual TLS).
    pub peer_identity: Option<&'a str>,
    /// Trace id, when tracing is on.
    pub trace_id: Option<&'a str>,
    /// Span id, when tracing is on.
    pub span_id: Option<&'a str>,
}

/// The data path's handle on the access log: renders lines and queues them. Cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    inner: Arc<Shared>,
}

struct Shared {
    tx: SyncSender<Msg>,
    fields: Box<[AccessLogField]>,
    dropped: Counter,
}

/// The writer thread's owner: reopen and shut down. Dropping it stops the writer without
/// waiting for it.
pub struct Writer {
    tx: SyncSender<Msg>,
    control: Arc<Control>,
    tap: Arc<OnceLock<Tap>>,
    done: Option<tokio::sync::oneshot::Receiver<()>>,
}

/// Sees every line the writer takes (with its `\n`), on the writer thread; must not block.
pub type Tap = Box<dyn Fn(&[u8]) + Send + Sync>;

/// Asks the writer to reopen its file (SIGUSR1). Cheap to clone.
#[derive(Clone)]
pub struct Reopen {
    tx: SyncSender<Msg>,
    control: Arc<Control>,
}

enum Msg {
    Line(Vec<u8>),
    Reopen,
    /// Look at the control flags.
    Wake,
}

/// Requests that must not be lost when the queue is full: the writer looks at these after
/// every batch.
#[derive(Default)]
struct Control {
    reopen: AtomicBool,
    stop: AtomicBool,
}

/// An opened output for [`start`]: stdout, a file, or any writer.
pub struct Output(Sink);

/// Where the writer thread writes.
struct Sink {
    out: Box<dyn Write + Send>,
    /// The file to reopen; `None` for stdout and injected writers.
    path: Option<PathBuf>,
    chunk: usize,
}

/// Whole lines gathered into writes of at most `sink.chunk` bytes.
struct Out {
    sink: Sink,
    buf: Vec<u8>,
    /// Lines in `buf`.
    lines: u64,
    dropped: Counter,
    /// A write failed and no write succeeded since (the failure was logged once).
    failing: bool,
    tap: Arc<OnceLock<Tap>>,
}

// === impl Output ===

impl Output {
    /// Opens stdout or the file (for appending, created when missing).
    pub fn open(output: &AccessLogOutput) -> io::Result<Output> {
        Ok(Output(match output {
            AccessLogOutput::Stdout => Sink {
                // A duplicate of fd 1, written directly: std's `Stdout` would add a lock and a
                // line buffer of its own.
                out: Box::new(File::from(io::stdout().as_fd().try_clone_to_owned()?)),
                path: None,
                chunk: STDOUT_CHUNK,
            },
            AccessLogOutput::File(path) => Sink {
                out: Box::new(open(path)?),
                path: Some(path.clone()),
                chunk: FILE_CHUNK,
            },
        }))
    }

    /// Any writer (tests, embedding); [`Reopen::reopen`] does nothing to it.
    pub fn writer(out: Box<dyn Write + Send>) -> Output {
        Output(Sink {
            out,
            path: None,
            chunk: FILE_CHUNK,
        })
    }
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Output").field(&self.0.name()).finish()
    }
}

// === impl AccessLog ===

/// Starts the writer thread on `output`: lines carry `fields`, and up to `buffer` of them wait
/// in the queue; `dropped` counts the lines lost.
pub fn start(
    output: Output,
    fields: &[AccessLogField],
    buffer: usize,
    dropped: Counter,
) -> io::Result<(AccessLog, Writer)> {
    let sink = output.0;
    let (tx, rx) = mpsc::sync_channel(buffer.max(1));
    let control = Arc::new(Control::default());
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let tap: Arc<OnceLock<Tap>> = Arc::default();
    let out = Out {
        tap: tap.clone(),
        sink,
        buf: Vec::with_capacity(FILE_CHUNK),
        lines: 0,
        dropped: dropped.clone(),
        failing: false,
    };
    let thread_control = control.clone();
    std::thread::Builder::new()
        .name("tandem-access-log".into())
        .spawn(move || {
            run(out, &rx, &thread_control);
            // Closed before saying done: a line logged after shutdown is refused (and counted),
            // not queued where nobody reads it.
            drop(rx);
            let _ = done_tx.send(());
        })?;
    let log = AccessLog {
        inner: Arc::new(Shared {
            tx: tx.clone(),
            fields: fields.into(),
            dropped,
        }),
    };
    let writer = Writer {
        tx,
        control,
        tap,
        done: Some(done_rx),
    };
    Ok((log, writer))
}

fn open(path: &std::path::Path) -> io::Result<File> {
    OpenOptions::new().append(true).create(true).open(path)
}

impl AccessLog {
    /// Queues the line for one HTTP request; drops and counts it when the queue is full.
    pub fn log_request(&self, r: &RequestRecord<'_>) {
        let mut line = Vec::with_capacity(512);
        if format_request(&self.inner.fields, r, &mut line).is_ok() {
            self.send(line);
        } else {
            self.inner.dropped.inc();
        }
    }

    /// Queues the line for one TCP connection; drops and counts it when the queue is full.
    pub fn log_connection(&self, r: &ConnectionRecord<'_>) {
        let mut line = Vec::with_capacity(384);
        if format_connection(&self.inner.fields, r, &mut line).is_ok() {
            self.send(line);
        } else {
            self.inner.dropped.inc();
        }
    }

    fn send(&self, line: Vec<u8>) {
        // `try_send`: a full queue (or a writer that has exited) costs this line, never a wait.
        if self.inner.tx.try_send(Msg::Line(line)).is_err() {
            self.inner.dropped.inc();
        }
    }
}

impl fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessLog")
            .field("fields", &self.inner.fields)
            .finish_non_exhaustive()
    }
}

// === impl Writer ===

impl Writer {
    /// Hands every line from now on to `tap` as well (log shipping's `access_log` source).
    /// Returns false if a tap was set already.
    pub fn set_tap(&self, tap: Tap) -> bool {
        self.tap.set(tap).is_ok()
    }

    /// A handle that asks the writer to reopen its file.
    pub fn reopener(&self) -> Reopen {
        Reopen {
            tx: self.tx.clone(),
            control: self.control.clone(),
        }
    }

    /// Writes out every queued line, then stops the writer; waits at most `within`. Returns
    /// whether the writer finished in time.
    pub async fn shutdown(mut self, within: Duration) -> bool {
        self.stop();
        match self.done.take() {
            Some(done) => matches!(tokio::time::timeout(within, done).await, Ok(Ok(()))),
            None => true,
        }
    }

    fn stop(&self) {
        self.control.stop.store(true, Ordering::Release);
        // A full queue means the writer is busy and looks at the flag after its batch.
        let _ = self.tx.try_send(Msg::Wake);
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl fmt::Debug for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

// === impl Reopen ===

impl Reopen {
    /// Reopens the log file at its path (after logrotate renamed it): lines queued before this
    /// call go to the old file, later ones to a new file at the path.
    pub fn reopen(&self) {
        // In the queue, the reopen keeps its place among the lines; when the queue is full the
        // flag does it after the writer's current batch instead.
        if self.tx.try_send(Msg::Reopen).is_err() {
            self.control.reopen.store(true, Ordering::Release);
            let _ = self.tx.try_send(Msg::Wake);
        }
    }
}

impl fmt::Debug for Reopen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reopen").finish_non_exhaustive()
    }
}

// === the writer thread ===

fn run(mut out: Out, rx: &Receiver<Msg>, control: &Control) {
    // Ends when stopped, or when every sender is gone (the `Writer` holds one until dropped).
    while let Ok(first) = rx.recv() {
        out.handle(first);
        for _ in 1..MAX_BATCH {
            match rx.try_recv() {
                Ok(m) => out.handle(m),
                Err(_) => break,
            }
        }
        out.flush();
        if control.reopen.swap(false, Ordering::AcqRel) {
            out.reopen();
        }
        if control.stop.load(Ordering::Acquire) {
            // Whatever is queued now was logged before the stop: write it out.
            while let Ok(m) = rx.try_recv() {
                out.handle(m);
            }
            out.flush();
            return;
        }
    }
    out.flush();
}

impl Out {
    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Line(line) => {
                if let Some(tap) = self.tap.get() {
                    tap(&line);
                }
                if !self.buf.is_empty() && self.buf.len() + line.len() > self.sink.chunk {
                    self.flush();
                }
                self.buf.extend_from_slice(&line);
                self.lines += 1;
            }
            Msg::Reopen => {
                self.flush();
                self.reopen();
            }
            Msg::Wake => {}
        }
    }

    /// Writes the gathered lines; on failure they are counted as dropped.
    fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        match self.sink.out.write_all(&self.buf) {
            Ok(()) => {
                if self.failing {
                    self.failing = false;
                    tracing::info!(output = %self.sink.name(), "access log: writing again");
                }
            }
            Err(e) => {
                self.dropped.inc_by(self.lines);
                if !self.failing {
                    self.failing = true;
                    tracing::warn!(output = %self.sink.name(), error = %e, "access log: cannot write; lines are dropped and counted in tandem_access_log_dropped_total");
                }
            }
        }
        self.buf.clear();
        self.lines = 0;
    }

    fn reopen(&mut self) {
        let Some(path) = &self.sink.path else {
            return;
        };
        match open(path) {
            Ok(f) => {
                self.sink.out = Box::new(f);
                tracing::info!(path = %path.display(), "access log reopened");
            }
            // The old file stays in use: lines keep going somewhere rather than nowhere.
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "access log: cannot reopen; still writing to the old file")
            }
        }
    }
}

impl Sink {
    fn name(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => "stdout".to_owned(),
        }
    }
}

// === formatting ===

/// Appends the JSON line (with its `\n`) for `r` with `fields` to `out`.
pub fn format_request(
    fields: &[AccessLogField],
    r: &RequestRecord<'_>,
    out: &mut Vec<u8>,
) -> serde_json::Result<()> {
    serde_json::to_writer(&mut *out, &RequestLine { fields, r })?;
    out.push(b'\n');
    Ok(())
}

/// Appends the JSON line (with its `\n`) for `r` with `fields` to `out`; fields that only
/// HTTP lines have are left out.
pub fn format_connection(
    fields: &[AccessLogField],
    r: &ConnectionRecord<'_>,
    out: &mut Vec<u8>,
) -> serde_json::Result<()> {
    serde_json::to_writer(&mut *out, &ConnectionLine { fields, r })?;
    out.push(b'\n');
    Ok(())
}

struct RequestLine<'a, 'r> {
    fields: &'a [AccessLogField],
    r: &'a RequestRecord<'r>,
}

struct ConnectionLine<'a, 'r> {
    fields: &'a [AccessLogField],
    r: &'a ConnectionRecord<'r>,
}

impl Serialize for RequestLine<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use AccessLogField as F;
        let r = self.r;
        let mut m = s.serialize_map(Some(self.fields.len()))?;
        for &f in self.fields {
            let k = f.name();
            match f {
                F::Kind => m.serialize_entry(k, "http")?,
                F::Time => m.serialize_entry(k, &Rfc3339(r.start))?,
                F::DurationMs => m.serialize_entry(k, &millis(r.duration))?,
                F::HeadMs => m.serialize_entry(k, &r.head.map(millis))?,
                F::Listener => m.serialize_entry(k, r.listener)?,
                F::Direction => m.serialize_entry(k, r.direction)?,
                F::Route => m.serialize_entry(k, &r.route)?,
                F::Upstream => m.serialize_entry(k, &r.upstream)?,
                F::Endpoint => m.serialize_entry(k, &r.endpoint)?,
                F::Client => m.serialize_entry(k, &r.client.map(Displayed))?,
                F::Protocol => m.serialize_entry(k, r.protocol)?,
                F::Method => m.serialize_entry(k, &Capped(r.method.as_bytes(), 32))?,
                F::Path => m.serialize_entry(k, &Capped(r.path.as_bytes(), MAX_PATH))?,
                F::Authority => {
                    m.serialize_entry(k, &r.authority.map(|a| Capped(a, MAX_AUTHORITY)))?
                }
                F::Status => m.serialize_entry(k, &r.status)?,
                F::GrpcStatus => m.serialize_entry(k, &r.grpc_status)?,
                F::ReceivedBytes => m.serialize_entry(k, &r.received_bytes)?,
                F::SentBytes => m.serialize_entry(k, &r.sent_bytes)?,
                F::Attempts => m.serialize_entry(k, &r.attempts)?,
                F::Retries => m.serialize_entry(k, &r.attempts.saturating_sub(1))?,
                F::Error => m.serialize_entry(k, &r.error)?,
                F::End => m.serialize_entry(k, r.end.as_str())?,
                F::Completed => m.serialize_entry(k, &(r.end == End::Complete))?,
                F::UserAgent => {
                    m.serialize_entry(k, &r.user_agent.map(|a| Capped(a, MAX_USER_AGENT)))?
                }
                F::PeerIdentity => m.serialize_entry(k, &r.peer_identity)?,
                F::TraceId => m.serialize_entry(k, &r.trace_id)?,
                F::SpanId => m.serialize_entry(k, &r.span_id)?,
            }
        }
        m.end()
    }
}

impl Serialize for ConnectionLine<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use AccessLogField as F;
        let r = self.r;
        let mut m = s.serialize_map(None)?;
        for &f in self.fields {
            let k = f.name();
            match f {
                F::Kind => m.serialize_entry(k, "tcp")?,
                F::Time => m.serialize_entry(k, &Rfc3339(r.start))?,
                F::DurationMs => m.serialize_entry(k, &millis(r.duration))?,
                F::Listener => m.serialize_entry(k, r.listener)?,
                F::Direction => m.serialize_entry(k, r.direction)?,
                F::Upstream => m.serialize_entry(k, &r.upstream)?,
                F::Endpoint => m.serialize_entry(k, &r.endpoint)?,
                F::Client => m.serialize_entry(k, &r.client.map(Displayed))?,
                F::Protocol => m.serialize_entry(k, "tcp")?,
                F::ReceivedBytes => m.serialize_entry(k, &r.received_bytes)?,
                F::SentBytes => m.serialize_entry(k, &r.sent_bytes)?,
                F::Error => m.serialize_entry(k, &r.error)?,
                F::End => m.serialize_entry(k, r.end.as_str())?,
                F::Completed => m.serialize_entry(k, &(r.end == End::Complete))?,
                F::PeerIdentity => m.serialize_entry(k, &r.peer_identity)?,
                F::TraceId => m.serialize_entry(k, &r.trace_id)?,
                F::SpanId => m.serialize_entry(k, &r.span_id)?,
                F::HeadMs
                | F::Route
                | F::Method
                | F::Path
                | F::Authority
                | F::Status
                | F::GrpcStatus
                | F::Attempts
                | F::Retries
                | F::UserAgent => {}
            }
        }
        m.end()
    }
}

/// Milliseconds with microsecond resolution.
fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// A wall-clock time as RFC 3339 in UTC with microseconds.
struct Rfc3339(SystemTime);

impl Serialize for Rfc3339 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_micros(self.0))
    }
}

/// A value written as a JSON string through its `Display`.
struct Displayed<T>(T);

impl<T: fmt::Display> Serialize for Displayed<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// Bytes from a client as a JSON string: invalid UTF-8 becomes U+FFFD, and more than the
/// bound is cut at a character boundary and ends in `...`.
struct Capped<'a>(&'a [u8], usize);

impl Serialize for Capped<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = String::from_utf8_lossy(self.0);
        if text.len() <= self.1 {
            return s.serialize_str(&text);
        }
        let mut cut = self.1;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        s.collect_str(&format_args!("{}...", &text[..cut]))
    }
}

// === impl End ===

impl End {
    /// The value of the `end` field.
    pub fn as_str(self) -> &'static str {
        match self {
            End::Complete => "complete",
            End::ClientGone => "client_gone",
            End::UpstreamError => "upstream_error",
            End::IdleTimeout => "idle_timeout",
            End::IoError => "io_error",
            End::NoUpstream => "no_upstream",
        }
    }
}
