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
    queue: Arc<Queue>,
    fields: Box<[AccessLogField]>,
    /// The fields of HTTP lines and of TCP lines, each with its key written out.
    http: Box<[Field]>,
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
    bytes: Vec<u8>,
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
                let whole = lines
                    .bytes
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |i| i + 1);
                lines.bytes.truncate(whole);
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
        self.queue(|lines| {
            write_request(&self.inner.http, r, &mut lines.bytes, Some(&mut lines.runs))
        });
    }

    /// Queues the line for one TCP connection; drops and counts it when the queue is full.
    pub fn log_connection(&self, r: &ConnectionRecord<'_>) {
        self.queue(|lines| write_connection(&self.inner.tcp, r, &mut lines.bytes));
    }

    /// Renders a line with `write` straight into this thread's shard; a full queue (or a writer
    /// that has exited) costs this line, never a wait.
    fn queue(&self, write: impl FnOnce(&mut Lines) -> Result<(), fmt::Error>) {
        let q = &*self.inner.queue;
        if q.queued.fetch_add(1, Ordering::Relaxed) >= q.bound {
            q.queued.fetch_sub(1, Ordering::Relaxed);
            self.inner.dropped.inc();
            return;
        }
        let mut lines = q.shards[shard_index() % q.shards.len()].lock();
        let start = lines.bytes.len();
        if lines.closed || write(&mut lines).is_err() {
            lines.bytes.truncate(start);
            drop(lines);
            q.queued.fetch_sub(1, Ordering::Relaxed);
            self.inner.dropped.inc();
            return;
        }
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
                    pending.push(Taken::Lines(std::mem::take(&mut lines.bytes), count));
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
    // shards and the writer, so lines cost no allocation once they have grown.
    let mut spare = Vec::with_capacity(FILE_CHUNK);
    loop {
        let stop = q.stop.load(Ordering::SeqCst);
        let mut wrote = false;
        for shard in q.shards.iter() {
            let (pending, count) = {
                let mut pending = lock(&q.pending);
                let taken = std::mem::take(&mut *pending);
                let mut lines = shard.lock();
                std::mem::swap(&mut lines.bytes, &mut spare);
                // After the stop, nothing more is queued: whatever was logged before it is
                // taken in this round.
                lines.closed |= stop;
                (taken, std::mem::take(&mut lines.count))
            };
            wrote |= !pending.is_empty();
            out.write_taken(q, pending);
            if count > 0 {
                wrote = true;
                q.queued.fetch_sub(count, Ordering::Relaxed);
                out.write_lines(&spare, count);
            }
            spare.clear();
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
// ~50 such pieces.

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
/// request) copies a run whole instead of writing its fields one by one.
#[derive(Default)]
struct Runs(Vec<Run>);

#[derive(Default)]
struct Run {
    /// `bytes` hold the run rendered from the values below.
    filled: bool,
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
        self.filled
            && self.listener == r.listener
            && self.route.as_deref() == r.route
            && self.upstream.as_deref() == r.upstream
            && self.endpoint.as_deref() == r.endpoint
            && self.direction == r.direction
            && self.protocol == r.protocol
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
    write_request(&keyed(fields, false), r, out, None)
}

/// Appends the JSON line (with its `\n`) for `r` with `fields` to `out`; fields that only
/// HTTP lines have are left out.
pub fn format_connection(
    fields: &[AccessLogField],
    r: &ConnectionRecord<'_>,
    out: &mut Vec<u8>,
) -> Result<(), fmt::Error> {
    write_connection(&keyed(fields, true), r, out)
}

/// Up to `N` bytes built on the stack, appended with one copy of all `N` and cut back.
struct Small<const N: usize> {
    b: [u8; N],
    n: usize,
}

impl<const N: usize> Small<N> {
    #[inline(always)]
    fn new() -> Self {
        Small { b: [0; N], n: 0 }
    }

    #[inline(always)]
    fn push(&mut self, byte: u8) {
        self.b[self.n] = byte;
        self.n += 1;
    }

    /// `v` in decimal.
    #[inline(always)]
    fn uint(&mut self, v: u64) {
        let mut len = 1;
        let mut x = v;
        while x >= 10 {
            x /= 10;
            len += 1;
        }
        let mut x = v;
        for i in (self.n..self.n + len).rev() {
            self.b[i] = b'0' + (x % 10) as u8;
            x /= 10;
        }
        self.n += len;
    }

    #[inline(always)]
    fn append_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.b);
        out.truncate(out.len() - (N - self.n));
    }
}

#[inline(always)]
fn key(out: &mut Vec<u8>, f: &Field) {
    out.extend_from_slice(&f.key);
    out.truncate(out.len() - (KEY - f.len));
}

fn write_request(
    fields: &[Field],
    r: &RequestRecord<'_>,
    out: &mut Vec<u8>,
    mut runs: Option<&mut Runs>,
) -> Result<(), fmt::Error> {
    // Room for a whole line with every field: growing the buffer part way costs a copy.
    out.reserve(
        896 + r.path.len().min(MAX_PATH)
            + r.user_agent.map_or(0, |u| u.len().min(MAX_USER_AGENT))
            + r.authority.map_or(0, |a| a.len().min(MAX_AUTHORITY)),
    );
    if fields.is_empty() {
        out.push(b'{');
    }
    let mut i = 0;
    while let Some(f) = fields.get(i) {
        if let (Some((n, len)), Some(runs)) = (f.run, runs.as_deref_mut()) {
            if runs.0.len() <= n {
                runs.0.resize_with(n + 1, Run::default);
            }
            let run = &mut runs.0[n];
            if !run.matches(r) {
                // Marked as rendered only once it is.
                run.filled = false;
                run.bytes.clear();
                for f in &fields[i..i + len] {
                    request_field(&mut run.bytes, f, r)?;
                }
                run.set(r);
            }
            out.extend_from_slice(&run.bytes);
            i += len;
            continue;
        }
        request_field(out, f, r)?;
        i += 1;
    }
    out.extend_from_slice(b"}\n");
    Ok(())
}

/// One field of an HTTP line, its key included.
#[inline(always)]
fn request_field(out: &mut Vec<u8>, f: &Field, r: &RequestRecord<'_>) -> Result<(), fmt::Error> {
    use AccessLogField as F;
    key(out, f);
    match f.field {
        F::Kind => out.extend_from_slice(b"\"http\""),
        F::Time => rfc3339_micros(out, r.start),
        F::DurationMs => millis(out, r.duration),
        F::HeadMs => match r.head {
            Some(d) => millis(out, d),
            None => null(out),
        },
        F::Listener => json::push_str(out, r.listener),
        F::Direction => constant(out, r.direction),
        F::Route => opt_string(out, r.route),
        F::Upstream => opt_string(out, r.upstream),
        F::Endpoint => opt_string(out, r.endpoint),
        F::Client => client(out, r.client)?,
        F::Protocol => constant(out, r.protocol),
        F::Method => capped_str(out, r.method, 32),
        F::Path => capped_str(out, r.path, MAX_PATH),
        F::Authority => match r.authority {
            Some(a) => capped(out, a, MAX_AUTHORITY),
            None => null(out),
        },
        F::Status => match r.status {
            Some(s) => uint(out, u64::from(s)),
            None => null(out),
        },
        F::GrpcStatus => match r.grpc_status {
            Some(s) => uint(out, u64::from(s)),
            None => null(out),
        },
        F::ReceivedBytes => uint(out, r.received_bytes),
        F::SentBytes => uint(out, r.sent_bytes),
        F::Attempts => uint(out, u64::from(r.attempts)),
        F::Retries => uint(out, u64::from(r.attempts.saturating_sub(1))),
        F::Error => opt_constant(out, r.error),
        F::End => constant(out, r.end.as_str()),
        F::Completed => boolean(out, r.end == End::Complete),
        F::UserAgent => match r.user_agent {
            Some(a) => capped(out, a, MAX_USER_AGENT),
            None => null(out),
        },
        F::PeerIdentity => opt_string(out, r.peer_identity),
        F::TraceId => opt_string(out, r.trace_id),
        F::SpanId => opt_string(out, r.span_id),
    }
    Ok(())
}

fn write_connection(
    fields: &[Field],
    r: &ConnectionRecord<'_>,
    out: &mut Vec<u8>,
) -> Result<(), fmt::Error> {
    use AccessLogField as F;
    out.reserve(384);
    if fields.is_empty() {
        out.push(b'{');
    }
    for f in fields {
        key(out, f);
        match f.field {
            F::Kind | F::Protocol => out.extend_from_slice(b"\"tcp\""),
            F::Time => rfc3339_micros(out, r.start),
            F::DurationMs => millis(out, r.duration),
            F::Listener => json::push_str(out, r.listener),
            F::Direction => constant(out, r.direction),
            F::Upstream => opt_string(out, r.upstream),
            F::Endpoint => opt_string(out, r.endpoint),
            F::Client => client(out, r.client)?,
            F::ReceivedBytes => uint(out, r.received_bytes),
            F::SentBytes => uint(out, r.sent_bytes),
            F::Error => opt_constant(out, r.error),
            F::End => constant(out, r.end.as_str()),
            F::Completed => boolean(out, r.end == End::Complete),
            F::PeerIdentity => opt_string(out, r.peer_identity),
            F::TraceId => opt_string(out, r.trace_id),
            F::SpanId => opt_string(out, r.span_id),
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
    out.extend_from_slice(b"}\n");
    Ok(())
}

fn null(out: &mut Vec<u8>) {
    out.extend_from_slice(b"null");
}

fn boolean(out: &mut Vec<u8>, v: bool) {
    if v {
        out.extend_from_slice(b"true");
    } else {
        out.extend_from_slice(b"false");
    }
}

/// One of Tandem's own constant strings (directions, protocols, error reasons, ends): plain
/// ASCII with nothing to escape, written as is.
fn constant(out: &mut Vec<u8>, s: &'static str) {
    debug_assert!(
        s.bytes()
            .all(|b| (0x20..0x80).contains(&b) && b != b'"' && b != b'\\'),
        "{s}"
    );
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

fn opt_constant(out: &mut Vec<u8>, v: Option<&'static str>) {
    match v {
        Some(s) => constant(out, s),
        None => null(out),
    }
}

fn opt_string(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        Some(s) => json::push_str(out, s),
        None => null(out),
    }
}

/// Text from a client as a JSON string: more than the bound is cut at a character boundary
/// and ends in `...`.
fn capped_str(out: &mut Vec<u8>, s: &str, bound: usize) {
    if s.len() <= bound {
        return json::push_str(out, s);
    }
    let mut cut = bound;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    out.push(b'"');
    json::escape(out, &s[..cut]);
    out.extend_from_slice(b"...\"");
}

/// Bytes from a client as a JSON string: invalid UTF-8 becomes U+FFFD, and more than the
/// bound is cut at a character boundary and ends in `...`.
fn capped(out: &mut Vec<u8>, bytes: &[u8], bound: usize) {
    // Only the bound and the character across it can reach the line: look at no more. When
    // `head` is shorter than `bytes`, its text is longer than the bound (a replacement is never
    // shorter than what it replaces), so it is cut, before anything `head` cut in two.
    let head = &bytes[..bytes.len().min(bound + 4)];
    // The usual case: plain ASCII within the bound, written as it is.
    if head.len() <= bound && json::is_plain_ascii(head) {
        out.push(b'"');
        out.extend_from_slice(head);
        out.push(b'"');
        return;
    }
    match std::str::from_utf8(head) {
        Ok(text) => capped_str(out, text, bound),
        Err(_) => capped_str(out, &String::from_utf8_lossy(head), bound),
    }
}

/// A non-negative integer.
fn uint(out: &mut Vec<u8>, v: u64) {
    let mut s = Small::<24>::new();
    s.uint(v);
    s.append_to(out);
}

/// Milliseconds with microsecond resolution, as serde_json writes the `f64` `micros / 1000`:
/// the shortest decimal, `.0` when whole (at most three decimals, so exact).
fn millis(out: &mut Vec<u8>, d: Duration) {
    let micros = d
        .as_secs()
        .saturating_mul(1_000_000)
        .saturating_add(u64::from(d.subsec_micros()));
    let frac = micros % 1000;
    if micros < 10_000 {
        // Under 10 ms (most requests on a sidecar hop): one digit, the point, the fraction.
        let digit = |v: u64| b'0' + (v % 10) as u8;
        let b = [
            digit(micros / 1000),
            b'.',
            digit(frac / 100),
            digit(frac / 10),
            digit(frac),
        ];
        let len = if frac == 0 || frac % 100 == 0 {
            3
        } else if frac % 10 == 0 {
            4
        } else {
            5
        };
        out.extend_from_slice(&b);
        out.truncate(out.len() - (5 - len));
        return;
    }
    let mut s = Small::<32>::new();
    s.uint(micros / 1000);
    s.push(b'.');
    if frac == 0 {
        s.push(b'0');
    } else {
        s.push(b'0' + (frac / 100) as u8);
        if frac % 100 != 0 {
            s.push(b'0' + (frac / 10 % 10) as u8);
            if frac % 10 != 0 {
                s.push(b'0' + (frac % 10) as u8);
            }
        }
    }
    s.append_to(out);
}

/// `"1.2.3.4:5"`, `"[::1]:5"` or `null`.
fn client(out: &mut Vec<u8>, addr: Option<SocketAddr>) -> Result<(), fmt::Error> {
    match addr {
        None => null(out),
        Some(SocketAddr::V4(a)) => {
            // At most `"255.255.255.255:65535"`: 23 bytes.
            let mut s = Small::<32>::new();
            s.push(b'"');
            for o in a.ip().octets() {
                // The octet's digits and a `.`, as four bytes in one store.
                let (digits, len) = OCTETS[usize::from(o)];
                s.b[s.n..s.n + 4].copy_from_slice(&digits);
                s.n += len;
            }
            // The last octet's `.` becomes the `:`.
            s.b[s.n - 1] = b':';
            s.uint(u64::from(a.port()));
            s.push(b'"');
            s.append_to(out);
        }
        // Rare on the data path: through `Display` (only hex digits, `:`, `[]`, `%`, digits).
        Some(a @ SocketAddr::V6(_)) => {
            use std::io::Write as _;
            out.push(b'"');
            write!(out, "{a}").map_err(|_| fmt::Error)?;
            out.push(b'"');
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
        let d = [
            b'0' + (v / 100) as u8,
            b'0' + (v / 10 % 10) as u8,
            b'0' + (v % 10) as u8,
        ];
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

/// A wall-clock time as RFC 3339 in UTC with microseconds (`2025-11-24T16:00:00.123456Z`);
/// times before 1970 are written as the epoch.
fn rfc3339_micros(out: &mut Vec<u8>, t: SystemTime) {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let micros = since.subsec_micros();
    // Lines of the same second share everything up to the fraction: the calendar arithmetic
    // runs once a second per thread.
    thread_local! {
        static SECOND: Cell<(u64, [u8; 21])> = const { Cell::new((u64::MAX, [0; 21])) };
    }
    let (cached, prefix) = SECOND.get();
    if cached == secs {
        let mut b = [0; 29];
        b[..21].copy_from_slice(&prefix);
        b[21..].copy_from_slice(b"000000Z\"");
        let mut v = micros;
        for i in (21..27).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        out.extend_from_slice(&b);
        return;
    }
    let start = out.len();
    rfc3339_full(out, secs, micros);
    let mut prefix = [0; 21];
    prefix.copy_from_slice(&out[start..start + 21]);
    SECOND.set((secs, prefix));
}

/// [`rfc3339_micros`] from scratch.
fn rfc3339_full(out: &mut Vec<u8>, secs: u64, micros: u32) {
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
    out.extend_from_slice(&b);
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
