//! Access logs: one JSON line per HTTP request or TCP connection, written by one thread from a
//! bounded queue.
//!
//! The data path fills a [`RequestRecord`] or [`ConnectionRecord`] once an exchange is over,
//! borrowing what it already holds. [`AccessLog::log_request`] renders the configured fields as
//! one JSON line on the calling task (a few hundred bytes, written by hand: see "formatting"
//! below; strings escaped as serde_json does, so hostile bytes in a path or `User-Agent` stay one
//! valid line; client-controlled strings cut to a bound) straight into the queue. When the
//! queue is full the line is dropped and counted in `tandem_access_log_dropped_total`: a slow
//! disk or a stalled stdout never holds up a request.
//!
//! The queue is a few buffers of lines ("shards"; each thread renders into one of them, under
//! a lock nobody else takes but the writer for a moment), not a channel of lines: no
//! allocation, message or copy per line. The writer swaps each shard's buffer for an empty one
//! and writes what it took. Lines of one thread stay in order; lines of different threads
//! written in the same batch are grouped by shard, so a file is in completion order only to
//! within a batch (a few milliseconds).
//!
//! The writer is a thread of its own, not a task: writes to files and pipes block, and a blocked
//! write on a runtime worker would stall every request scheduled there. It writes whole lines in
//! batches (letting lines gather for a few milliseconds between them, and sleeping while there
//! are none), reopens its file on [`Reopen::reopen`] (SIGUSR1, for logrotate's
//! rename-and-reopen: lines logged before the reopen go to the old file, later ones to the new),
//! and on [`Writer::shutdown`] writes out what is queued before it exits.
//!
//! A [`Tap`] ([`Writer::set_tap`]) sees every line the writer takes from the queue, on the
//! writer thread: log shipping's `access_log` source. It must not block (the shipper's source
//! spills to disk and drops beyond that); a slow tap fills the queue, whose overflow is dropped
//! and counted as always, so requests never wait for it.
//!
//! Non-goals: formats other than JSON lines, sampling.

use std::cell::Cell;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use tandem_config::{AccessLogField, AccessLogOutput};

use crate::json;

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
/// How long the writer lets lines gather after a batch: without it, a busy proxy wakes the
/// writer (a futex call) and writes (a `write(2)`) for almost every line; with it, a few
/// hundred lines go out per write at most every few milliseconds. Far below what the queue
/// holds at any realistic request rate.
const GATHER: Duration = Duration::from_millis(5);
/// Most shards, however many threads there are.
const MAX_SHARDS: usize = 32;

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

/// A wall-clock time in microseconds since the Unix epoch (0 for earlier times): a line's
/// `time`, kept as the plain number it is written from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnixMicros(pub u64);

impl From<Duration> for UnixMicros {
    /// The time `since` the Unix epoch.
    #[inline]
    fn from(since: Duration) -> Self {
        UnixMicros(
            since
                .as_secs()
                .saturating_mul(1_000_000)
                .saturating_add(u64::from(since.subsec_micros())),
        )
    }
}

impl From<SystemTime> for UnixMicros {
    fn from(t: SystemTime) -> Self {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .into()
    }
}

/// One HTTP request, from its arrival to its last response byte.
#[derive(Clone, Debug)]
pub struct RequestRecord<'a> {
    /// When the request arrived (wall clock; the proxy takes it from [`crate::clock`]).
    pub start: UnixMicros,
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
    /// Names `listener`, `direction`, `route`, `upstream` and `endpoint` together: records with
    /// the same `Some` key have the same five, so a line like the last one reuses its rendered
    /// names without comparing them (ids from [`context_id`], each owned by one unchanging
    /// holder of the names, e.g. a route's target and an endpoint). `None`: the names are
    /// compared.
    pub context: Option<(u64, u64)>,
}

/// A process-unique id (never handed out twice) for a holder of names a
/// [`RequestRecord::context`] key stands for.
pub fn context_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
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
    queue: Arc<Queue>,
    fields: Box<[AccessLogField]>,
    /// The fields of HTTP lines and of TCP lines, each with its key written out.
    http: Box<[Field]>,
    /// `fields` are the default ones in the default order: HTTP lines take [`write_default`].
    default: bool,
    tcp: Box<[Field]>,
    dropped: Counter,
}

/// The lines waiting for the writer, and how the writer is woken.
struct Queue {
    shards: Box<[Shard]>,
    /// Lines in the shards and in `pending`: at most `bound` (the `buffer` setting).
    queued: AtomicUsize,
    bound: usize,
    /// Lines a reopen took out of the shards, each batch followed by the reopen: written (to
    /// the old file) before anything the writer takes from the shards after them. Also held
    /// while the writer takes a shard's lines, so that the two never interleave.
    pending: Mutex<Vec<Taken>>,
    /// The writer found nothing to do and sleeps until a line (or a request) wakes it.
    idle: AtomicBool,
    stop: AtomicBool,
    writer: OnceLock<std::thread::Thread>,
}

/// One buffer of whole lines, on its own cache lines (threads write to different shards).
#[repr(align(128))]
struct Shard(Mutex<Lines>);

#[derive(Default)]
struct Lines {
    /// Whole lines in `bytes[..len]`; the rest is room for the next lines (holding whatever
    /// earlier lines left there), so that a line is written without growing the vector.
    bytes: Vec<u8>,
    len: usize,
    count: usize,
    /// The context runs of this shard's last HTTP line.
    runs: Runs,
    /// The writer has exited (or is exiting): lines are refused and counted as dropped.
    closed: bool,
}

enum Taken {
    Lines(Vec<u8>, usize),
    Reopen,
}

/// The writer thread's owner: reopen and shut down. Dropping it stops the writer without
/// waiting for it.
pub struct Writer {
    queue: Arc<Queue>,
    tap: Arc<OnceLock<Tap>>,
    done: Option<tokio::sync::oneshot::Receiver<()>>,
}

/// Sees every line the writer takes (with its `\n`), on the writer thread; must not block.
pub type Tap = Box<dyn Fn(&[u8]) + Send + Sync>;

/// Asks the writer to reopen its file (SIGUSR1). Cheap to clone.
#[derive(Clone)]
pub struct Reopen {
    queue: Arc<Queue>,
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

/// The writer's side: whole lines written in writes of at most `sink.chunk` bytes.
struct Out {
    sink: Sink,
    dropped: Counter,
    /// A write failed and no write succeeded since (the failure was logged once).
    failing: bool,
    tap: Arc<OnceLock<Tap>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shard {
    fn lock(&self) -> MutexGuard<'_, Lines> {
        match self.0.lock() {
            Ok(lines) => lines,
            // A panic while rendering a line (a bug) may have left part of it: cut back to the
            // last whole line and go on.
            Err(poisoned) => {
                let mut lines = poisoned.into_inner();
                let whole = lines.bytes[..lines.len]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |i| i + 1);
                lines.len = whole;
                self.0.clear_poison();
                lines
            }
        }
    }
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
    let shards = std::thread::available_parallelism()
        .map_or(4, |n| 2 * n.get())
        .min(MAX_SHARDS);
    let queue = Arc::new(Queue {
        shards: (0..shards)
            .map(|_| Shard(Mutex::new(Lines::default())))
            .collect(),
        queued: AtomicUsize::new(0),
        bound: buffer.max(1),
        pending: Mutex::new(Vec::new()),
        idle: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        writer: OnceLock::new(),
    });
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let tap: Arc<OnceLock<Tap>> = Arc::default();
    let out = Out {
        tap: tap.clone(),
        sink: output.0,
        dropped: dropped.clone(),
        failing: false,
    };
    let thread_queue = queue.clone();
    let thread = std::thread::Builder::new()
        .name("tandem-access-log".into())
        .spawn(move || {
            run(out, &thread_queue);
            let _ = done_tx.send(());
        })?;
    // Set before anything can be queued: the handles are returned below.
    let _ = queue.writer.set(thread.thread().clone());
    let log = AccessLog {
        inner: Arc::new(Shared {
            queue: queue.clone(),
            fields: fields.into(),
            http: keyed(fields, false),
            default: fields == AccessLogField::ALL,
            tcp: keyed(fields, true),
            dropped,
        }),
    };
    let writer = Writer {
        queue,
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
        if self.inner.default {
            return self
                .queue(|lines| write_default(r, &mut lines.bytes, lines.len, &mut lines.runs));
        }
        self.queue(|lines| {
            write_request(
                &self.inner.http,
                r,
                &mut lines.bytes,
                lines.len,
                Some(&mut lines.runs),
            )
        });
    }

    /// Queues the line for one TCP connection; drops and counts it when the queue is full.
    pub fn log_connection(&self, r: &ConnectionRecord<'_>) {
        self.queue(|lines| write_connection(&self.inner.tcp, r, &mut lines.bytes, lines.len));
    }

    /// Renders a line with `write` straight into this thread's shard (returning where it ends);
    /// a full queue (or a writer that has exited) costs this line, never a wait.
    fn queue(&self, write: impl FnOnce(&mut Lines) -> Result<usize, fmt::Error>) {
        let q = &*self.inner.queue;
        if q.queued.fetch_add(1, Ordering::Relaxed) >= q.bound {
            q.queued.fetch_sub(1, Ordering::Relaxed);
            self.inner.dropped.inc();
            return;
        }
        let mut lines = q.shards[shard_index() % q.shards.len()].lock();
        let end = match lines.closed {
            false => write(&mut lines).ok(),
            true => None,
        };
        let Some(end) = end else {
            drop(lines);
            q.queued.fetch_sub(1, Ordering::Relaxed);
            self.inner.dropped.inc();
            return;
        };
        lines.len = end;
        lines.count += 1;
        drop(lines);
        // Pairs with the writer's store before its last look at the shards (both SeqCst): either
        // it saw this line, or this sees it idle.
        if q.idle.load(Ordering::SeqCst) && q.idle.swap(false, Ordering::SeqCst) {
            q.wake();
        }
    }
}

/// This thread's shard (modulo the number of shards): threads take turns.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    INDEX.with(|i| *i)
}

impl Queue {
    fn wake(&self) {
        if let Some(t) = self.writer.get() {
            t.unpark();
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
            queue: self.queue.clone(),
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
        self.queue.stop.store(true, Ordering::SeqCst);
        self.queue.wake();
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
    /// Reopens the log file at its path (after logrotate renamed it): lines logged before this
    /// call go to the old file, later ones to a new file at the path.
    pub fn reopen(&self) {
        let q = &*self.queue;
        {
            // What the shards hold now was logged before the reopen: it goes ahead of it.
            let mut pending = lock(&q.pending);
            for shard in q.shards.iter() {
                let mut lines = shard.lock();
                if lines.count > 0 {
                    let count = std::mem::take(&mut lines.count);
                    let mut bytes = std::mem::take(&mut lines.bytes);
                    bytes.truncate(std::mem::take(&mut lines.len));
                    pending.push(Taken::Lines(bytes, count));
                }
            }
            pending.push(Taken::Reopen);
        }
        q.wake();
    }
}

impl fmt::Debug for Reopen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reopen").finish_non_exhaustive()
    }
}

// === the writer thread ===

fn run(mut out: Out, q: &Queue) {
    // The buffer swapped into a shard for the lines it takes: buffers go round between the
    // shards and the writer, so lines cost no allocation once they have grown (nor a fill:
    // a buffer keeps its length, and its bytes are overwritten by the next lines).
    let mut spare = Vec::new();
    loop {
        let stop = q.stop.load(Ordering::SeqCst);
        let mut wrote = false;
        for shard in q.shards.iter() {
            let (pending, count, len) = {
                let mut pending = lock(&q.pending);
                let taken = std::mem::take(&mut *pending);
                let mut lines = shard.lock();
                std::mem::swap(&mut lines.bytes, &mut spare);
                // After the stop, nothing more is queued: whatever was logged before it is
                // taken in this round.
                lines.closed |= stop;
                (
                    taken,
                    std::mem::take(&mut lines.count),
                    std::mem::take(&mut lines.len),
                )
            };
            wrote |= !pending.is_empty();
            out.write_taken(q, pending);
            if count > 0 {
                wrote = true;
                q.queued.fetch_sub(count, Ordering::Relaxed);
                out.write_lines(&spare[..len], count);
            }
        }
        if stop {
            // A reopen after the last shard was taken.
            let pending = std::mem::take(&mut *lock(&q.pending));
            out.write_taken(q, pending);
            return;
        }
        if wrote {
            std::thread::sleep(GATHER);
            continue;
        }
        q.idle.store(true, Ordering::SeqCst);
        let busy = q.stop.load(Ordering::SeqCst)
            || !lock(&q.pending).is_empty()
            || q.shards.iter().any(|s| s.lock().count > 0);
        if !busy {
            std::thread::park();
        }
        q.idle.store(false, Ordering::SeqCst);
    }
}

impl Out {
    /// What a reopen took, in order: its lines, then the reopen.
    fn write_taken(&mut self, q: &Queue, taken: Vec<Taken>) {
        for t in taken {
            match t {
                Taken::Lines(bytes, n) => {
                    q.queued.fetch_sub(n, Ordering::Relaxed);
                    self.write_lines(&bytes, n);
                }
                Taken::Reopen => self.reopen(),
            }
        }
    }

    /// Hands `lines` whole lines to the tap and writes them, in writes of whole lines of at most
    /// `sink.chunk` bytes (a longer line alone); lines a failed write lost are counted as
    /// dropped.
    fn write_lines(&mut self, bytes: &[u8], lines: usize) {
        if let Some(tap) = self.tap.get() {
            for line in bytes.split_inclusive(|&b| b == b'\n') {
                tap(line);
            }
        }
        if bytes.len() <= self.sink.chunk {
            return self.write(bytes, || lines);
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            let end = if rest.len() <= self.sink.chunk {
                rest.len()
            } else {
                match rest[..self.sink.chunk].iter().rposition(|&b| b == b'\n') {
                    Some(i) => i + 1,
                    None => rest
                        .iter()
                        .position(|&b| b == b'\n')
                        .map_or(rest.len(), |i| i + 1),
                }
            };
            let (piece, later) = rest.split_at(end);
            // Lines are counted only when lost: a byte loop over every line written would cost
            // the writer more than the write.
            self.write(piece, || piece.iter().filter(|&&b| b == b'\n').count());
            rest = later;
        }
    }

    /// Writes whole lines (`lines()` of them); on failure they are counted as dropped.
    fn write(&mut self, bytes: &[u8], lines: impl FnOnce() -> usize) {
        match self.sink.out.write_all(bytes) {
            Ok(()) => {
                if self.failing {
                    self.failing = false;
                    tracing::info!(output = %self.sink.name(), "access log: writing again");
                }
            }
            Err(e) => {
                self.dropped.inc_by(lines() as u64);
                if !self.failing {
                    self.failing = true;
                    tracing::warn!(output = %self.sink.name(), error = %e, "access log: cannot write; lines are dropped and counted in tandem_access_log_dropped_total");
                }
            }
        }
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
//
// Lines are written by hand into the caller's buffer rather than through serde: a line is
// ~25 fields of a handful of known shapes, and a generic serializer (a map entry per field,
// every key escaped byte by byte, numbers and addresses through `fmt`) cost ~10,000
// instructions per line, most of a request's telemetry budget. Keys are constants that need no
// escaping; names from the config and Tandem's own constants are escaped by the same
// word-at-a-time escaper as client-controlled values ([`crate::json`]), so every value is valid
// JSON whatever it holds.
//
// Short pieces (keys, numbers, addresses) are built in a fixed-size array and appended with one
// fixed-size copy, then cut back to their length: a copy whose size the compiler knows is a few
// stores, where one of a length known only at run time is a call to `memcpy`, and a line has
// ~50 such pieces. Strings up to 32 bytes go the same way, as two overlapping fixed-size copies
// ([`Cursor::slice`]); numbers below 1000 come from a table.
//
// What is the same from one line to the next is not written again: the run of context fields
// (listener to endpoint) of a shard's last line is copied when its names are the same
// (compared a word or two at a time, see [`same_text`]), and the `client` and `protocol` of the
// shard's recent clients are kept per client port slot ([`Runs`]). In the default order, the
// quotes around the client's strings and the `null`s of absent mTLS and trace ids go with the
// keys as constant text. The `time` is the wall clock of the request's monotonic start
// ([`crate::clock`]), not a clock reading of its own.

/// Room for a key as written (`,"received_bytes":` is the longest).
const KEY: usize = 24;

/// A field of a line with its key as written: `{"name":` for the first, `,"name":` after.
struct Field {
    field: AccessLogField,
    key: [u8; KEY],
    len: usize,
    /// On the first field of a run of context fields (see [`Runs`]): the run's number and
    /// how many fields it spans.
    run: Option<(usize, usize)>,
}

/// `fields` with their keys written out; only those TCP lines have when `tcp`.
fn keyed(fields: &[AccessLogField], tcp: bool) -> Box<[Field]> {
    let mut keyed = fields
        .iter()
        .filter(|f| !tcp || f.applies_to_tcp())
        .enumerate()
        .map(|(i, &field)| {
            // Field names are plain ASCII: nothing to escape.
            let text = format!("{}\"{}\":", if i == 0 { '{' } else { ',' }, field.name());
            let mut key = [0; KEY];
            // Field names are a fixed set; `keys_fit` checks every one.
            key[..text.len()].copy_from_slice(text.as_bytes());
            Field {
                field,
                key,
                len: text.len(),
                run: None,
            }
        })
        .collect::<Vec<_>>();
    if !tcp {
        // Runs of two or more context fields in a row.
        let mut runs = 0;
        let mut i = 0;
        while i < keyed.len() {
            let len = keyed[i..]
                .iter()
                .take_while(|f| is_context(f.field))
                .count();
            if len >= 2 {
                keyed[i].run = Some((runs, len));
                runs += 1;
            }
            i += len.max(1);
        }
    }
    keyed.into()
}

/// Fields whose values come from the config and the protocol alone: the same for every request
/// of a listener, route and endpoint.
fn is_context(f: AccessLogField) -> bool {
    use AccessLogField as F;
    matches!(
        f,
        F::Kind | F::Listener | F::Direction | F::Route | F::Upstream | F::Endpoint | F::Protocol
    )
}

/// The rendered runs of context fields of a shard's last line, each with the values it was
/// rendered from: a request like the last one (same listener, route, endpoint: nearly every
/// request) copies a run whole instead of writing its fields one by one. And the `client` and
/// `protocol` fields of the shard's recent clients ([`Peer`]), one slot per hash of the client
/// port ([`peer_slot`]): a thread serves many connections in turn, each with requests from one
/// client address.
struct Runs(Vec<Run>, Box<[Peer]>);

/// Slots of the client cache: enough for the connections one thread serves in turn at a time.
const PEERS: usize = 64;

impl Default for Runs {
    fn default() -> Self {
        Runs(Vec::new(), (0..PEERS).map(|_| Peer::default()).collect())
    }
}

impl Runs {
    /// The client cache slot of `client` (`None`, a Unix socket peer, has its own port 0).
    #[inline(always)]
    fn peer(&mut self, client: Option<SocketAddr>) -> &mut Peer {
        let port = client.map_or(0, |c| usize::from(c.port()));
        &mut self.1[peer_slot(port)]
    }
}

/// The client cache slot of a client port: a multiplicative hash, as clients' ports are
/// neither consecutive nor spread evenly (Linux hands out even ports for `connect` first, which
/// would leave half of the slots of `port % PEERS` unused).
#[inline(always)]
fn peer_slot(port: usize) -> usize {
    const _: () = assert!(PEERS == 64);
    ((port as u32).wrapping_mul(0x9E37_79B1) >> 26) as usize
}

/// Whether two of Tandem's constants are equal: the same constant is at the same address, which
/// spares a call to `memcmp` (the text is compared only when the addresses differ).
#[inline(always)]
fn same_constant(a: &'static str, b: &'static str) -> bool {
    (std::ptr::eq(a.as_ptr(), b.as_ptr()) && a.len() == b.len()) || a == b
}

/// Whether `a` and `b` hold the same bytes: names of a few bytes (listeners, routes,
/// endpoints) are compared as one or two words each, without a call to `memcmp`.
#[inline(always)]
fn same_text(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len()
        && match a.len() {
            0 => true,
            1..=16 => short_words(a) == short_words(b),
            _ => a == b,
        }
}

/// `s` (1 to 16 bytes) as two words that together hold every byte of it: its first and last
/// eight bytes (overlapping when shorter than 16), or its first and last four (shorter than 8),
/// or its first, middle and last byte (shorter than 4). Two strings of the same length are
/// equal exactly when their words are.
#[inline(always)]
fn short_words(s: &[u8]) -> (u64, u64) {
    let n = s.len();
    if n >= 8 {
        (word8(&s[..8]), word8(&s[n - 8..]))
    } else if n >= 4 {
        (u64::from(word4(&s[..4])), u64::from(word4(&s[n - 4..])))
    } else {
        (
            u64::from(s[0]) | u64::from(s[n / 2]) << 8,
            u64::from(s[n - 1]),
        )
    }
}

#[inline(always)]
fn word8(s: &[u8]) -> u64 {
    let mut w = [0; 8];
    w.copy_from_slice(s);
    u64::from_le_bytes(w)
}

#[inline(always)]
fn word4(s: &[u8]) -> u32 {
    let mut w = [0; 4];
    w.copy_from_slice(s);
    u32::from_le_bytes(w)
}

/// The `client` and `protocol` fields (keys included) of a shard's last line in the default
/// order, and what they were rendered from: every request of a connection has the same.
struct Peer {
    /// `bytes[..len]` hold the fields for these values.
    key: Option<(Option<SocketAddr>, &'static str)>,
    bytes: [u8; PEER],
    len: usize,
}

/// Room for the `client` and `protocol` fields; longer ones (a long IPv6 scope) are not kept.
const PEER: usize = 96;
const _: () = assert!(PEER <= SLACK);

impl Default for Peer {
    fn default() -> Self {
        Peer {
            key: None,
            bytes: [0; PEER],
            len: 0,
        }
    }
}

impl Peer {
    #[inline(always)]
    fn matches(&self, r: &RequestRecord<'_>) -> bool {
        // Protocols are constants: the same one is at the same address (a different address
        // for the same text only costs a miss).
        self.key.is_some_and(|(client, protocol)| {
            client == r.client
                && std::ptr::eq(protocol.as_ptr(), r.protocol.as_ptr())
                && protocol.len() == r.protocol.len()
        })
    }
}

#[derive(Default)]
struct Run {
    /// `bytes` hold the run rendered from the values below.
    filled: bool,
    /// The record's [`RequestRecord::context`] key of the names below.
    key: Option<(u64, u64)>,
    listener: String,
    direction: &'static str,
    route: Option<String>,
    upstream: Option<String>,
    endpoint: Option<String>,
    protocol: &'static str,
    bytes: Vec<u8>,
}

impl Run {
    fn matches(&self, r: &RequestRecord<'_>) -> bool {
        // The caller's key stands for the five names: compared instead of them.
        if let (Some(key), Some(context)) = (self.key, r.context) {
            return self.filled && key == context && same_constant(self.protocol, r.protocol);
        }
        let same = |a: Option<&String>, b: Option<&str>| match (a, b) {
            (Some(a), Some(b)) => same_text(a, b),
            (None, None) => true,
            _ => false,
        };
        self.filled
            && same_text(&self.listener, r.listener)
            && same(self.route.as_ref(), r.route)
            && same(self.upstream.as_ref(), r.upstream)
            && same(self.endpoint.as_ref(), r.endpoint)
            && same_constant(self.direction, r.direction)
            && same_constant(self.protocol, r.protocol)
    }

    fn set(&mut self, r: &RequestRecord<'_>) {
        fn copy(to: &mut Option<String>, from: Option<&str>) {
            match (to.as_mut(), from) {
                (Some(t), Some(f)) => {
                    t.clear();
                    t.push_str(f);
                }
                (_, f) => *to = f.map(str::to_owned),
            }
        }
        self.filled = true;
        self.key = r.context;
        self.listener.clear();
        self.listener.push_str(r.listener);
        self.direction = r.direction;
        copy(&mut self.route, r.route);
        copy(&mut self.upstream, r.upstream);
        copy(&mut self.endpoint, r.endpoint);
        self.protocol = r.protocol;
    }
}

/// Appends the JSON line (with its `\n`) for `r` with `fields` to `out`.
pub fn format_request(
    fields: &[AccessLogField],
    r: &RequestRecord<'_>,
    out: &mut Vec<u8>,
) -> Result<(), fmt::Error> {
    let at = out.len();
    let end = write_request(&keyed(fields, false), r, out, at, None)?;
    out.truncate(end);
    Ok(())
}

/// Appends the JSON line (with its `\n`) for `r` with `fields` to `out`; fields that only
/// HTTP lines have are left out.
pub fn format_connection(
    fields: &[AccessLogField],
    r: &ConnectionRecord<'_>,
    out: &mut Vec<u8>,
) -> Result<(), fmt::Error> {
    let at = out.len();
    let end = write_connection(&keyed(fields, true), r, out, at)?;
    out.truncate(end);
    Ok(())
}

/// A line being written into a buffer made big enough for it beforehand (see
/// [`request_bound`]): each piece is one bounds-checked copy into the slice, without the
/// capacity check, growth path and length store of every `Vec` append.
struct Cursor<'a> {
    b: &'a mut [u8],
    /// Bytes written.
    n: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at `buf[at..]`, which is first made to hold at least `need` bytes.
    #[inline(always)]
    fn reserved(buf: &'a mut Vec<u8>, at: usize, need: usize) -> Self {
        room(buf, at, need);
        Cursor {
            b: &mut buf[at..],
            n: 0,
        }
    }

    #[inline(always)]
    fn put<const N: usize>(&mut self, bytes: &[u8; N]) {
        self.b[self.n..self.n + N].copy_from_slice(bytes);
        self.n += N;
    }

    /// The first `len` bytes of `bytes`, written with one copy of all `N` (what is past `len`
    /// is overwritten by the next piece, or lies past the line's end: [`SLACK`]).
    #[inline(always)]
    fn put_cut<const N: usize>(&mut self, bytes: &[u8; N], len: usize) {
        self.b[self.n..self.n + N].copy_from_slice(bytes);
        self.n += len;
    }

    /// `bytes`, of any length. Up to 32 bytes (nearly every value: names, addresses, paths,
    /// user agents) as two overlapping fixed-size copies, each a few stores: a copy of a length
    /// known only at run time would be a call to `memcpy`, and a line has a dozen of them.
    #[inline(always)]
    fn slice(&mut self, bytes: &[u8]) {
        let n = bytes.len();
        let out = &mut self.b[self.n..self.n + n];
        if n > 32 {
            out.copy_from_slice(bytes);
        } else if n >= 16 {
            out[..16].copy_from_slice(&bytes[..16]);
            out[n - 16..].copy_from_slice(&bytes[n - 16..]);
        } else if n >= 8 {
            out[..8].copy_from_slice(&bytes[..8]);
            out[n - 8..].copy_from_slice(&bytes[n - 8..]);
        } else if n >= 4 {
            out[..4].copy_from_slice(&bytes[..4]);
            out[n - 4..].copy_from_slice(&bytes[n - 4..]);
        } else if n > 0 {
            out[0] = bytes[0];
            out[n / 2] = bytes[n / 2];
            out[n - 1] = bytes[n - 1];
        }
        self.n += n;
    }

    #[inline(always)]
    fn byte(&mut self, b: u8) {
        self.b[self.n] = b;
        self.n += 1;
    }
}

/// Room past a line's end for the whole of a fixed-size copy cut back to fewer bytes (the
/// longest is [`Peer`]'s).
const SLACK: usize = 128;

/// Room for everything of a line but its strings: every key at [`KEY`], and every number,
/// time, address, `null` or boolean at its longest (an IPv6 address with a scope and a port
/// is the longest, under 64 bytes), the line's `}\n`, and [`SLACK`].
const FIXED: usize = AccessLogField::ALL.len() * (KEY + 64) + 2 + SLACK;

/// Most bytes `s` takes as a JSON string: every byte escaped as `\u00XX`, quotes and `...`.
#[inline(always)]
const fn text_bound(len: usize) -> usize {
    6 * len + 5
}

/// Most bytes the line for `r` takes, whatever its fields (see [`FIXED`]). Client-controlled
/// bytes are looked at only up to their bound, and invalid UTF-8 at most triples in length
/// (U+FFFD for a byte) before that cut.
fn request_bound(r: &RequestRecord<'_>) -> usize {
    // Client-controlled text at its longest (within its bound, invalid UTF-8 tripled), a
    // constant: only the names from the config and the protocol are looked at per line.
    const CLIENT: usize = text_bound(METHOD)
        + text_bound(MAX_PATH)
        + text_bound(3 * MAX_AUTHORITY)
        + text_bound(3 * MAX_USER_AGENT);
    let name = |s: Option<&str>| s.map_or(0, str::len);
    let names = r.listener.len()
        + name(r.route)
        + name(r.upstream)
        + name(r.endpoint)
        + name(r.peer_identity)
        + name(r.trace_id)
        + name(r.span_id);
    FIXED
        + CLIENT
        + text_bound(names)
        + 6 * text_bound(0)
        + r.direction.len()
        + r.protocol.len()
        + r.error.map_or(0, str::len)
        + r.end.as_str().len()
}

/// [`request_bound`] of a TCP line.
fn connection_bound(r: &ConnectionRecord<'_>) -> usize {
    let name = |s: Option<&str>| text_bound(s.map_or(0, str::len));
    FIXED
        + text_bound(r.listener.len())
        + name(r.upstream)
        + name(r.endpoint)
        + name(r.peer_identity)
        + name(r.trace_id)
        + name(r.span_id)
        + r.direction.len()
        + r.error.map_or(0, str::len)
        + r.end.as_str().len()
}

/// Makes `buf[at..]` hold at least `need` bytes (zeroed when new; otherwise whatever earlier
/// lines left there, all of it overwritten before it counts).
#[inline(always)]
fn room(buf: &mut Vec<u8>, at: usize, need: usize) {
    if buf.len() < at + need {
        // Doubling: a shard's buffer grows a few times, then lines only overwrite it.
        buf.resize((at + need).max(2 * buf.len()), 0);
    }
}

/// Longest `method` kept in a line.
const METHOD: usize = 32;

/// Writes the line for `r` into `buf` from `at` (growing `buf` when it may not hold it);
/// returns where the line ends. `runs`: the shard's cache of context runs, when rendering into
/// a shard.
fn write_request(
    fields: &[Field],
    r: &RequestRecord<'_>,
    buf: &mut Vec<u8>,
    at: usize,
    mut runs: Option<&mut Runs>,
) -> Result<usize, fmt::Error> {
    let mut w = Cursor::reserved(buf, at, request_bound(r));
    if fields.is_empty() {
        w.byte(b'{');
    }
    let mut i = 0;
    while let Some(f) = fields.get(i) {
        if let (Some((n, len)), Some(runs)) = (f.run, runs.as_deref_mut()) {
            if runs.0.len() <= n {
                runs.0.resize_with(n + 1, Run::default);
            }
            let run = &mut runs.0[n];
            if run.matches(r) {
                w.slice(&run.bytes);
            } else {
                // Marked as rendered only once it is.
                run.filled = false;
                let from = w.n;
                for f in &fields[i..i + len] {
                    request_field(&mut w, f, r)?;
                }
                run.bytes.clear();
                run.bytes.extend_from_slice(&w.b[from..w.n]);
                run.set(r);
            }
            i += len;
            continue;
        }
        request_field(&mut w, f, r)?;
        i += 1;
    }
    w.put(b"}\n");
    Ok(at + w.n)
}

/// [`write_request`] for the default fields in the default order ([`AccessLogField::ALL`], the
/// usual configuration): the same bytes, written as a fixed sequence with the keys between
/// values as literals, instead of a loop matching on each field. `runs` holds the one context
/// run of that order (`listener` to `endpoint`).
fn write_default(
    r: &RequestRecord<'_>,
    buf: &mut Vec<u8>,
    at: usize,
    runs: &mut Runs,
) -> Result<usize, fmt::Error> {
    let mut w = Cursor::reserved(buf, at, request_bound(r));
    let w = &mut w;
    w.put(b"{\"kind\":\"http\",\"time\":");
    rfc3339_micros(w, r.start);
    w.put(b",\"duration_ms\":");
    millis(w, r.duration);
    w.put(b",\"head_ms\":");
    match r.head {
        Some(d) => millis(w, d),
        None => null(w),
    }
    if runs.0.is_empty() {
        runs.0.push(Run::default());
    }
    let run = &mut runs.0[0];
    if run.matches(r) {
        w.slice(&run.bytes);
    } else {
        // Marked as rendered only once it is.
        run.filled = false;
        let from = w.n;
        w.put(b",\"listener\":");
        string(w, r.listener);
        w.put(b",\"direction\":");
        constant(w, r.direction);
        w.put(b",\"route\":");
        opt_string(w, r.route);
        w.put(b",\"upstream\":");
        opt_string(w, r.upstream);
        w.put(b",\"endpoint\":");
        opt_string(w, r.endpoint);
        run.bytes.clear();
        run.bytes.extend_from_slice(&w.b[from..w.n]);
        run.set(r);
    }
    let peer = runs.peer(r.client);
    if peer.matches(r) {
        w.put_cut(&peer.bytes, peer.len);
    } else {
        let from = w.n;
        w.put(b",\"client\":");
        client(w, r.client)?;
        w.put(b",\"protocol\":");
        constant(w, r.protocol);
        let len = w.n - from;
        peer.key = None;
        if len <= PEER {
            // All of `PEER` (within the line's room: `SLACK`), in one fixed-size copy.
            peer.bytes.copy_from_slice(&w.b[from..from + PEER]);
            peer.len = len;
            peer.key = Some((r.client, r.protocol));
        }
    }
    // The quotes around strings go with the keys and punctuation between them.
    w.put(b",\"method\":\"");
    capped_str_inside(w, r.method, METHOD);
    w.put(b"\",\"path\":\"");
    capped_str_inside(w, r.path, MAX_PATH);
    match r.authority {
        Some(a) => {
            w.put(b"\",\"authority\":\"");
            capped_inside(w, a, MAX_AUTHORITY);
            w.put(b"\",\"status\":");
        }
        None => w.put(b"\",\"authority\":null,\"status\":"),
    }
    match r.status {
        Some(s) => uint(w, u64::from(s)),
        None => null(w),
    }
    match r.grpc_status {
        Some(s) => {
            w.put(b",\"grpc_status\":");
            uint(w, u64::from(s));
        }
        None => w.put(b",\"grpc_status\":null"),
    }
    w.put(b",\"received_bytes\":");
    uint(w, r.received_bytes);
    w.put(b",\"sent_bytes\":");
    uint(w, r.sent_bytes);
    w.put(b",\"attempts\":");
    uint(w, u64::from(r.attempts));
    w.put(b",\"retries\":");
    uint(w, u64::from(r.attempts.saturating_sub(1)));
    match (r.error, r.end) {
        (None, End::Complete) => w.put(b",\"error\":null,\"end\":\"complete\",\"completed\":true"),
        (error, end) => {
            w.put(b",\"error\":");
            opt_constant(w, error);
            w.put(b",\"end\":");
            constant(w, end.as_str());
            w.put(b",\"completed\":");
            boolean(w, end == End::Complete);
        }
    }
    match r.user_agent {
        Some(a) => {
            w.put(b",\"user_agent\":\"");
            capped_inside(w, a, MAX_USER_AGENT);
            w.byte(b'"');
        }
        None => w.put(b",\"user_agent\":null"),
    }
    match (r.peer_identity, r.trace_id, r.span_id) {
        // Without mTLS or tracing, the line's end is a constant.
        (None, None, None) => {
            w.put(b",\"peer_identity\":null,\"trace_id\":null,\"span_id\":null}\n");
        }
        (identity, trace_id, span_id) => {
            w.put(b",\"peer_identity\":");
            opt_string(w, identity);
            w.put(b",\"trace_id\":");
            opt_string(w, trace_id);
            w.put(b",\"span_id\":");
            opt_string(w, span_id);
            w.put(b"}\n");
        }
    }
    Ok(at + w.n)
}

/// One field of an HTTP line, its key included.
#[inline(always)]
fn request_field(w: &mut Cursor<'_>, f: &Field, r: &RequestRecord<'_>) -> Result<(), fmt::Error> {
    use AccessLogField as F;
    w.put_cut(&f.key, f.len);
    match f.field {
        F::Kind => w.put(b"\"http\""),
        F::Time => rfc3339_micros(w, r.start),
        F::DurationMs => millis(w, r.duration),
        F::HeadMs => match r.head {
            Some(d) => millis(w, d),
            None => null(w),
        },
        F::Listener => string(w, r.listener),
        F::Direction => constant(w, r.direction),
        F::Route => opt_string(w, r.route),
        F::Upstream => opt_string(w, r.upstream),
        F::Endpoint => opt_string(w, r.endpoint),
        F::Client => client(w, r.client)?,
        F::Protocol => constant(w, r.protocol),
        F::Method => capped_str(w, r.method, METHOD),
        F::Path => capped_str(w, r.path, MAX_PATH),
        F::Authority => match r.authority {
            Some(a) => capped(w, a, MAX_AUTHORITY),
            None => null(w),
        },
        F::Status => match r.status {
            Some(s) => uint(w, u64::from(s)),
            None => null(w),
        },
        F::GrpcStatus => match r.grpc_status {
            Some(s) => uint(w, u64::from(s)),
            None => null(w),
        },
        F::ReceivedBytes => uint(w, r.received_bytes),
        F::SentBytes => uint(w, r.sent_bytes),
        F::Attempts => uint(w, u64::from(r.attempts)),
        F::Retries => uint(w, u64::from(r.attempts.saturating_sub(1))),
        F::Error => opt_constant(w, r.error),
        F::End => constant(w, r.end.as_str()),
        F::Completed => boolean(w, r.end == End::Complete),
        F::UserAgent => match r.user_agent {
            Some(a) => capped(w, a, MAX_USER_AGENT),
            None => null(w),
        },
        F::PeerIdentity => opt_string(w, r.peer_identity),
        F::TraceId => opt_string(w, r.trace_id),
        F::SpanId => opt_string(w, r.span_id),
    }
    Ok(())
}

/// [`write_request`] for a TCP connection.
fn write_connection(
    fields: &[Field],
    r: &ConnectionRecord<'_>,
    buf: &mut Vec<u8>,
    at: usize,
) -> Result<usize, fmt::Error> {
    use AccessLogField as F;
    let mut w = Cursor::reserved(buf, at, connection_bound(r));
    let w = &mut w;
    if fields.is_empty() {
        w.byte(b'{');
    }
    for f in fields {
        w.put_cut(&f.key, f.len);
        match f.field {
            F::Kind | F::Protocol => w.put(b"\"tcp\""),
            F::Time => rfc3339_micros(w, r.start.into()),
            F::DurationMs => millis(w, r.duration),
            F::Listener => string(w, r.listener),
            F::Direction => constant(w, r.direction),
            F::Upstream => opt_string(w, r.upstream),
            F::Endpoint => opt_string(w, r.endpoint),
            F::Client => client(w, r.client)?,
            F::ReceivedBytes => uint(w, r.received_bytes),
            F::SentBytes => uint(w, r.sent_bytes),
            F::Error => opt_constant(w, r.error),
            F::End => constant(w, r.end.as_str()),
            F::Completed => boolean(w, r.end == End::Complete),
            F::PeerIdentity => opt_string(w, r.peer_identity),
            F::TraceId => opt_string(w, r.trace_id),
            F::SpanId => opt_string(w, r.span_id),
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
    w.put(b"}\n");
    Ok(at + w.n)
}

#[inline(always)]
fn null(w: &mut Cursor<'_>) {
    w.put(b"null");
}

#[inline(always)]
fn boolean(w: &mut Cursor<'_>, v: bool) {
    if v {
        w.put(b"true");
    } else {
        w.put(b"false");
    }
}

/// One of Tandem's own constant strings (directions, protocols, error reasons, ends): plain
/// ASCII with nothing to escape, written as is.
fn constant(w: &mut Cursor<'_>, s: &'static str) {
    debug_assert!(
        s.bytes()
            .all(|b| (0x20..0x80).contains(&b) && b != b'"' && b != b'\\'),
        "{s}"
    );
    w.byte(b'"');
    w.slice(s.as_bytes());
    w.byte(b'"');
}

fn opt_constant(w: &mut Cursor<'_>, v: Option<&'static str>) {
    match v {
        Some(s) => constant(w, s),
        None => null(w),
    }
}

fn opt_string(w: &mut Cursor<'_>, v: Option<&str>) {
    match v {
        Some(s) => string(w, s),
        None => null(w),
    }
}

/// `s` as a JSON string, quotes included.
#[inline(always)]
fn string(w: &mut Cursor<'_>, s: &str) {
    w.byte(b'"');
    escaped(w, s);
    w.byte(b'"');
}

/// `s` escaped for the inside of a JSON string.
#[inline(always)]
fn escaped(w: &mut Cursor<'_>, s: &str) {
    // Names, paths and user agents almost never hold a byte to escape: one scan, one copy.
    if !json::needs_escape(s.as_bytes()) {
        w.slice(s.as_bytes());
        return;
    }
    escaped_slow(w, s);
}

/// [`escaped`] of a string with a byte to escape.
#[cold]
#[inline(never)]
fn escaped_slow(w: &mut Cursor<'_>, s: &str) {
    let mut e = Vec::with_capacity(s.len() + 16);
    json::escape(&mut e, s);
    w.slice(&e);
}

/// Text from a client as a JSON string: more than the bound is cut at a character boundary
/// and ends in `...`.
#[inline(always)]
fn capped_str(w: &mut Cursor<'_>, s: &str, bound: usize) {
    w.byte(b'"');
    capped_str_inside(w, s, bound);
    w.byte(b'"');
}

/// [`capped_str`] without the quotes (the writers of the default order write them with the
/// keys around).
#[inline(always)]
fn capped_str_inside(w: &mut Cursor<'_>, s: &str, bound: usize) {
    if s.len() <= bound {
        escaped(w, s);
    } else {
        cut_str(w, s, bound);
    }
}

/// [`capped_str_inside`] of a string longer than `bound`.
#[inline(never)]
fn cut_str(w: &mut Cursor<'_>, s: &str, bound: usize) {
    let mut cut = bound;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    escaped(w, &s[..cut]);
    w.put(b"...");
}

/// Bytes from a client as a JSON string: invalid UTF-8 becomes U+FFFD, and more than the
/// bound is cut at a character boundary and ends in `...`.
#[inline(always)]
fn capped(w: &mut Cursor<'_>, bytes: &[u8], bound: usize) {
    w.byte(b'"');
    capped_inside(w, bytes, bound);
    w.byte(b'"');
}

/// [`capped`] without the quotes.
#[inline(always)]
fn capped_inside(w: &mut Cursor<'_>, bytes: &[u8], bound: usize) {
    // The usual case: plain ASCII within the bound, written as it is.
    if bytes.len() <= bound && json::is_plain_ascii(bytes) {
        w.slice(bytes);
    } else {
        capped_slow(w, bytes, bound);
    }
}

/// [`capped_inside`] of bytes that are not plain ASCII or longer than `bound`.
#[inline(never)]
fn capped_slow(w: &mut Cursor<'_>, bytes: &[u8], bound: usize) {
    // Only the bound and the character across it can reach the line: look at no more. When
    // `head` is shorter than `bytes`, its text is longer than the bound (a replacement is never
    // shorter than what it replaces), so it is cut, before anything `head` cut in two.
    let head = &bytes[..bytes.len().min(bound + 4)];
    match std::str::from_utf8(head) {
        Ok(text) => capped_str_inside(w, text, bound),
        Err(_) => capped_str_inside(w, &String::from_utf8_lossy(head), bound),
    }
}

/// Two decimal digits of every value below 100.
static DIGITS2: [u8; 200] = {
    let mut t = [0u8; 200];
    let mut v = 0;
    while v < 100 {
        t[2 * v] = b'0' + (v / 10) as u8;
        t[2 * v + 1] = b'0' + (v % 10) as u8;
        v += 1;
    }
    t
};

/// 10 to the power of the index.
static POW10: [u64; 20] = {
    let mut t = [1u64; 20];
    let mut i = 1;
    while i < 20 {
        t[i] = t[i - 1] * 10;
        i += 1;
    }
    t
};

/// How many decimal digits `v` has: from its bit length (`bits * 1233 >> 12` is
/// `bits * log10(2)` rounded down, within one), corrected by one comparison.
#[inline(always)]
fn digits(v: u64) -> usize {
    // `| 1`: 0 has one digit; it changes no other count (10^k is even, 10^k - 1 odd).
    let v = v | 1;
    let bits = 64 - v.leading_zeros();
    let t = ((bits * 1233) >> 12) as usize;
    t + 1 - usize::from(v < POW10[t])
}

/// A non-negative integer: below 1000 (statuses, most counts) from a table in one store;
/// larger ones with their digits two at a time, from the last.
#[inline(always)]
fn uint(w: &mut Cursor<'_>, v: u64) {
    if v < 1000 {
        let (digits, len) = DECIMAL3[v as usize];
        w.put_cut(&digits, usize::from(len));
        return;
    }
    uint_long(w, v);
}

/// [`uint`] of any value.
#[inline(never)]
fn uint_long(w: &mut Cursor<'_>, v: u64) {
    let len = digits(v);
    let end = w.n + len;
    let out = &mut w.b[w.n..end];
    let mut v = v;
    let mut i = len;
    while i >= 2 {
        let d = (v % 100) as usize * 2;
        v /= 100;
        i -= 2;
        out[i] = DIGITS2[d];
        out[i + 1] = DIGITS2[d + 1];
    }
    if i == 1 {
        out[0] = b'0' + v as u8;
    }
    w.n = end;
}

/// `v` (below 1000) as three decimal digits, leading zeros kept (for the tables below).
const fn digits3(v: usize) -> [u8; 3] {
    [
        b'0' + (v / 100) as u8,
        b'0' + (v / 10 % 10) as u8,
        b'0' + (v % 10) as u8,
    ]
}

/// Per value below 1000: its decimal digits (padded to four bytes), and how many there are.
static DECIMAL3: [([u8; 4], u8); 1000] = {
    let mut t = [([0u8; 4], 0u8); 1000];
    let mut v = 0;
    while v < 1000 {
        let d = digits3(v);
        t[v] = if v >= 100 {
            ([d[0], d[1], d[2], 0], 3)
        } else if v >= 10 {
            ([d[1], d[2], 0, 0], 2)
        } else {
            ([d[2], 0, 0, 0], 1)
        };
        v += 1;
    }
    t
};

/// Per thousandth: `.` and its digits as the shortest decimal writes them (`.0` for none,
/// `.5`, `.25`, `.125`), padded to four bytes, and how many of the bytes count.
static THOUSANDTHS: [([u8; 4], u8); 1000] = {
    let mut t = [([0u8; 4], 0u8); 1000];
    let mut v = 0;
    while v < 1000 {
        let d = digits3(v);
        t[v] = if v == 0 {
            ([b'.', b'0', 0, 0], 2)
        } else if v % 100 == 0 {
            ([b'.', d[0], 0, 0], 2)
        } else if v % 10 == 0 {
            ([b'.', d[0], d[1], 0], 3)
        } else {
            ([b'.', d[0], d[1], d[2]], 4)
        };
        v += 1;
    }
    t
};

/// Milliseconds with microsecond resolution, as serde_json writes the `f64` `micros / 1000`:
/// the shortest decimal, `.0` when whole (at most three decimals, so exact).
fn millis(w: &mut Cursor<'_>, d: Duration) {
    let micros = d
        .as_secs()
        .saturating_mul(1_000_000)
        .saturating_add(u64::from(d.subsec_micros()));
    uint(w, micros / 1000);
    let (frac, len) = THOUSANDTHS[(micros % 1000) as usize];
    w.put_cut(&frac, usize::from(len));
}

/// `"1.2.3.4:5"`, `"[::1]:5"` or `null`.
fn client(w: &mut Cursor<'_>, addr: Option<SocketAddr>) -> Result<(), fmt::Error> {
    match addr {
        None => null(w),
        Some(SocketAddr::V4(a)) => {
            w.byte(b'"');
            for o in a.ip().octets() {
                // The octet's digits and a `.`, as four bytes in one store.
                let (digits, len) = OCTETS[usize::from(o)];
                w.put_cut(&digits, len);
            }
            // The last octet's `.` becomes the `:`.
            w.b[w.n - 1] = b':';
            uint(w, u64::from(a.port()));
            w.byte(b'"');
        }
        // Rare on the data path: through `Display` (only hex digits, `:`, `[]`, `%`, digits).
        Some(a @ SocketAddr::V6(_)) => {
            use std::io::Write as _;
            w.byte(b'"');
            let mut rest = &mut w.b[w.n..];
            let room = rest.len();
            write!(rest, "{a}").map_err(|_| fmt::Error)?;
            w.n += room - rest.len();
            w.byte(b'"');
        }
    }
    Ok(())
}

/// Per octet value: its decimal digits followed by `.` (padded to four bytes), and how many
/// of the bytes count (digits and `.`).
static OCTETS: [([u8; 4], usize); 256] = {
    let mut t = [([0u8; 4], 0usize); 256];
    let mut v = 0;
    while v < 256 {
        let d = digits3(v);
        t[v] = if v >= 100 {
            ([d[0], d[1], d[2], b'.'], 4)
        } else if v >= 10 {
            ([d[1], d[2], b'.', 0], 3)
        } else {
            ([d[2], b'.', 0, 0], 2)
        };
        v += 1;
    }
    t
};

/// A wall-clock time as RFC 3339 in UTC with microseconds (`2025-11-24T16:00:00.123456Z`).
fn rfc3339_micros(w: &mut Cursor<'_>, t: UnixMicros) {
    let secs = t.0 / 1_000_000;
    let micros = (t.0 % 1_000_000) as usize;
    // Lines of the same second share everything up to the fraction: the calendar arithmetic
    // runs once a second per thread.
    thread_local! {
        static SECOND: Cell<(u64, [u8; 21])> = const { Cell::new((u64::MAX, [0; 21])) };
    }
    let (cached, prefix) = SECOND.get();
    if cached == secs {
        w.put(&prefix);
        let (a, b, c) = (micros / 10_000, micros / 100 % 100, micros % 100);
        w.put(&[
            DIGITS2[2 * a],
            DIGITS2[2 * a + 1],
            DIGITS2[2 * b],
            DIGITS2[2 * b + 1],
            DIGITS2[2 * c],
            DIGITS2[2 * c + 1],
            b'Z',
            b'"',
        ]);
        return;
    }
    let start = w.n;
    rfc3339_full(w, secs, micros as u32);
    let mut prefix = [0; 21];
    prefix.copy_from_slice(&w.b[start..start + 21]);
    SECOND.set((secs, prefix));
}

/// [`rfc3339_micros`] from scratch.
fn rfc3339_full(w: &mut Cursor<'_>, secs: u64, micros: u32) {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let mut b = *b"\"0000-00-00T00:00:00.000000Z\"";
    let put = |b: &mut [u8], at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(&mut b, 1, 4, year);
    put(&mut b, 6, 2, month);
    put(&mut b, 9, 2, day);
    put(&mut b, 12, 2, rem / 3600);
    put(&mut b, 15, 2, rem / 60 % 60);
    put(&mut b, 18, 2, rem % 60);
    put(&mut b, 21, 6, u64::from(micros));
    w.put(&b);
}

/// (year, month, day) of a day count since 1970-01-01 (proleptic Gregorian; H. Hinnant's
/// `civil_from_days`, for days >= 0).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
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
