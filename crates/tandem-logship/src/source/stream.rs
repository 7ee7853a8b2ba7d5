//! Stream sources: lines that come whether or not the sinks keep up — the supervised app's
//! stdout and stderr, Tandem's access log — and must never make their writer wait.
//!
//! ```text
//!  writer thread (pipe reader, access log writer) --push(lines)--> [nothing unread on disk and
//!      the memory budget has room]  -> chunks straight to the sinks (memory)
//!                                   otherwise -> append to the disk buffer (spill.rs)
//!                                   disk buffer full / failing -> drop, count, log
//!  pump thread: disk buffer -> chunks (within the budget, in order) -> sinks
//!               confirmations -> contiguous prefix -> delete wholly confirmed segments
//! ```
//!
//! [`StreamInput::push`] never blocks on the sinks: it takes budget with `try_acquire`, and
//! otherwise writes to a local file (page cache). Once anything is on disk unread, every new
//! line goes to disk behind it, so lines reach each sink in the order they came; the pump
//! switches back to the memory path when it has read the disk buffer to its end.
//!
//! What a crash of Tandem loses: the lines on their way in memory (at most
//! `logs.memory_budget` of them, and only while the sinks have not confirmed them) and, for
//! the app's output, what sat in the pipe. Spilled lines survive: their segments are deleted
//! only once every sink confirmed every line in them, and a restart reads the segments left
//! from their start (so up to one segment may be shipped twice).
//!
//! Multi-line joining (`multiline`, [`crate::multiline`]) happens in [`StreamInput::push`],
//! before the memory-or-disk choice, with one joiner per stream (stdout and stderr each make
//! their own records): what goes to memory or to disk is always a whole record, so a record is
//! never split at the spill boundary. On disk a joined record is one buffer record per line, all
//! in one append (so in one segment): every line but the last carries its stream's tag in upper
//! case ("more of this record follows"), the last the usual lower-case tag. The pump reads
//! whole records back (never ending a read inside one), joins their lines again, and a record's
//! chunk covers all its buffer bytes, so its segment is deleted only once the whole record is
//! confirmed. A pending record is shipped `timeout` after its last line (the pump polls the
//! joiners), when its stream closes (the app exited), and at shutdown; from shutdown on, each
//! push is joined and flushed at once, so no line waits in a joiner that nobody polls. A crash
//! loses a pending record (at most `timeout` old; like the pipe's bytes, never on disk).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde_json::{Map, Value};
use tandem_config::{LogParser, Multiline, Shape};
use tandem_telemetry::logs::{LogSourceMetrics, StreamSourceMetrics};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::ack::AckTracker;
use crate::budget::{Budget, BudgetPermit};
use crate::committer::Msg;
use crate::framer::Line;
use crate::multiline::{JoinRules, Joiner};
use crate::record::{Chunk, Origin, Record};
use crate::shape::Shaper;
use crate::spill::{read_records, AppendError, DiskBuffer};

/// Bytes read from the disk buffer at once (more when a line is longer).
const READ_SIZE: usize = 64 * 1024;

/// Budget charged per record and per chunk on top of line bytes (as the file source does).
const RECORD_OVERHEAD: usize = std::mem::size_of::<Record>();
const CHUNK_OVERHEAD: usize = 256;

/// Generation keys of stream chunks: memory chunks need no confirmation tracking, disk chunks
/// carry buffer offsets.
const MEMORY_KEY: u64 = 0;
const DISK_KEY: u64 = 1;

/// How often drops are reported in the log, at most.
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

/// Where a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// The app's standard output.
    Stdout,
    /// The app's standard error.
    Stderr,
    /// Tandem's access log.
    AccessLog,
}

impl Stream {
    fn tag(self) -> u8 {
        match self {
            Stream::Stdout => b'o',
            Stream::Stderr => b'e',
            Stream::AccessLog => b'a',
        }
    }

    fn from_tag(t: u8) -> Option<Stream> {
        match t {
            b'o' => Some(Stream::Stdout),
            b'e' => Some(Stream::Stderr),
            b'a' => Some(Stream::AccessLog),
            _ => None,
        }
    }

    /// The tag of a buffer record that is a joined record's line with more of it following.
    fn more_tag(self) -> u8 {
        self.tag().to_ascii_uppercase()
    }

    /// `stdout`, `stderr`, `access_log`: the record's `file` and `stream`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::AccessLog => "access_log",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What a stream source is configured to do.
#[derive(Clone, Debug)]
pub struct StreamConfig {
    /// The source's name.
    pub name: Arc<str>,
    /// Line parser.
    pub parser: LogParser,
    /// Extraction, redaction and filtering.
    pub shape: Shape,
    /// Multi-line joining, per stream.
    pub multiline: Option<Multiline>,
    /// Labels for every record.
    pub labels: Arc<[(String, String)]>,
    /// Most records in a chunk (the smallest `batch.max_lines` of its sinks).
    pub chunk_lines: usize,
    /// Most line bytes in a chunk (the smallest `batch.max_bytes`).
    pub chunk_bytes: usize,
    /// Longest line (records read back from disk are at most this plus two bytes).
    pub max_line: usize,
    /// Add `stream: stdout|stderr` to each record's fields.
    pub stream_field: bool,
    /// The disk buffer's directory.
    pub dir: PathBuf,
    /// The disk buffer's limit in bytes.
    pub disk_limit: u64,
}

/// The writer side of a stream source: cheap to clone, never blocks on the sinks.
#[derive(Clone)]
pub struct StreamInput {
    shared: Arc<Shared>,
}

/// The pump: drains the disk buffer and deletes confirmed segments (its own thread).
pub struct StreamPump {
    shared: Arc<Shared>,
    acks: Receiver<Msg>,
    tracker: AckTracker,
    hard_stop: CancellationToken,
    /// Reading the disk buffer fails (said once until it works again).
    read_failing: bool,
    /// Shutdown flushed the joiners.
    joiners_closed: bool,
}

/// A stream source's state, for `/logs`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StreamStatus {
    /// Lines taken in.
    pub lines: u64,
    /// Lines written to the disk buffer.
    pub spilled_lines: u64,
    /// Lines dropped because the disk buffer was full.
    pub dropped_disk_full: u64,
    /// Lines dropped because writing the disk buffer failed.
    pub dropped_disk_error: u64,
    /// The last drop's reason and error, and its time (RFC 3339).
    pub last_drop: Option<(String, String)>,
    /// Bytes on disk.
    pub disk_buffer_used: u64,
    /// The disk buffer's limit.
    pub disk_buffer_limit: u64,
    /// Segment files on disk.
    pub disk_buffer_segments: usize,
    /// Buffer offsets: end of what every sink confirmed, of what was read, of what was written.
    pub disk_acked: u64,
    /// See `disk_acked`.
    pub disk_read: u64,
    /// See `disk_acked`.
    pub disk_written: u64,
}

struct Shared {
    cfg: StreamConfig,
    /// Writers of both streams and the pump shape lines; never held while waiting.
    shaper: Mutex<Shaper>,
    state: Mutex<State>,
    budget: Budget,
    acks: Sender<Msg>,
    origins: [Arc<Origin>; 3],
    metrics: LogSourceMetrics,
    stream_metrics: StreamSourceMetrics,
    acked: AtomicU64,
    lines: AtomicU64,
    /// One joiner per stream ([`Stream::index`]) when `multiline` is configured.
    joiners: Option<[Mutex<Joining>; 3]>,
    /// Most bytes one record takes in the disk buffer: a read of this size holds at least one.
    max_record_disk: usize,
    /// Positions of memory-path records (with the top bit set, apart from buffer offsets):
    /// from a random start each run, so two runs' records do not share names.
    memory_positions: AtomicU64,
}

/// A stream's joiner; `closed` from shutdown on (every push is flushed at once).
struct Joining {
    joiner: Joiner,
    closed: bool,
}

struct State {
    disk: DiskBuffer,
    /// Disk buffer offset up to which lines were made into chunks.
    read: u64,
    /// The sinks' queues; emptied at shutdown (later lines go to disk).
    sinks: Vec<UnboundedSender<Arc<Chunk>>>,
    drops_since_log: u64,
    last_drop_log: Option<Instant>,
    last_drop: Option<(String, String)>,
    spilling_logged: bool,
}

// === impl StreamInput ===

/// Opens the disk buffer of a stream source and returns its input and pump.
pub fn open(
    cfg: StreamConfig,
    sinks: Vec<UnboundedSender<Arc<Chunk>>>,
    budget: Budget,
    metrics: LogSourceMetrics,
    stream_metrics: StreamSourceMetrics,
    hard_stop: CancellationToken,
) -> std::io::Result<(StreamInput, StreamPump)> {
    let disk = DiskBuffer::open(&cfg.dir, cfg.disk_limit)?;
    if disk.used() > 0 {
        tracing::info!(source = %cfg.name, bytes = disk.used(), segments = disk.segments(), dir = %cfg.dir.display(), "log disk buffer holds lines not confirmed before the last stop; shipping them first");
    }
    stream_metrics
        .disk_buffer_used
        .set(i64::try_from(disk.used()).unwrap_or(i64::MAX));
    let start = disk.start();
    let origins = [Stream::Stdout, Stream::Stderr, Stream::AccessLog].map(|s| {
        // Records are named by their place in the disk buffer (offsets only grow, across
        // restarts), or by a number drawn for this run on the memory path (never replayed).
        let mut id = b"buffer\0".to_vec();
        id.extend_from_slice(cfg.name.as_bytes());
        id.push(s.tag());
        Arc::new(
            Origin::new(cfg.name.clone(), s.as_str().into(), cfg.labels.clone())
                .with_identity(xxhash_rust::xxh3::xxh3_64(&id).max(1)),
        )
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let rules = cfg.multiline.as_ref().and_then(JoinRules::from_config);
    // A record on disk: its text (a single line may pass max_bytes), a tag and `\n` per line.
    let max_record_disk = match &rules {
        Some(r) => cfg.max_line.max(r.max_bytes) + 2 * r.max_lines + 2,
        None => cfg.max_line + 2,
    };
    let joiners = rules.map(|r| {
        [(); 3].map(|()| {
            Mutex::new(Joining {
                joiner: Joiner::new(r.clone(), 0),
                closed: false,
            })
        })
    });
    let shared = Arc::new(Shared {
        shaper: Mutex::new(Shaper::new(&cfg.parser, &cfg.shape)),
        cfg,
        state: Mutex::new(State {
            disk,
            read: start,
            sinks,
            drops_since_log: 0,
            last_drop_log: None,
            last_drop: None,
            spilling_logged: false,
        }),
        budget,
        acks: tx,
        origins,
        metrics,
        stream_metrics,
        acked: AtomicU64::new(start),
        lines: AtomicU64::new(0),
        joiners,
        max_record_disk,
        memory_positions: AtomicU64::new(fastrand::u64(..) >> 1),
    });
    let pump = StreamPump {
        shared: shared.clone(),
        acks: rx,
        tracker: AckTracker::new(start),
        hard_stop,
        read_failing: false,
        joiners_closed: false,
    };
    Ok((StreamInput { shared }, pump))
}

impl StreamInput {
    /// Takes `lines` of `stream`: to the sinks if the memory budget has room and nothing waits
    /// on disk, else to the disk buffer, else dropped and counted. Never waits for the sinks.
    /// With `multiline`, lines are joined first and whole records take that way.
    pub fn push(&self, stream: Stream, lines: &[Line]) {
        let s = &*self.shared;
        let (mut n, mut bytes) = (0u64, 0usize);
        for l in lines.iter().filter(|l| !l.text.is_empty()) {
            n += 1;
            bytes += l.text.len();
        }
        if n > 0 {
            s.lines.fetch_add(n, Ordering::Relaxed);
            s.metrics.read_lines.inc_by(n);
            s.metrics.read_bytes.inc_by(bytes as u64 + n);
        }
        let Some(joiners) = &s.joiners else {
            if n > 0 {
                let records: Vec<Bytes> = lines
                    .iter()
                    .filter(|l| !l.text.is_empty())
                    .map(|l| l.text.clone())
                    .collect();
                s.take_in(stream, &records);
            }
            return;
        };
        // The joiner stays locked while its records are taken in: the pump's timeout flush of
        // the same stream cannot overtake them.
        let mut j = joiners[stream.index()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let mut out = Vec::new();
        for l in lines {
            j.joiner.push(l, now, &mut out);
        }
        if j.closed {
            out.extend(j.joiner.flush());
        }
        if !out.is_empty() {
            let records: Vec<Bytes> = out.into_iter().map(|r| r.text).collect();
            s.take_in(stream, &records);
        }
    }

    /// The source's state, for `/logs`.
    pub fn status(&self) -> StreamStatus {
        let s = &*self.shared;
        let st = s.lock();
        StreamStatus {
            lines: s.lines.load(Ordering::Relaxed),
            spilled_lines: s.stream_metrics.spilled_lines.get(),
            dropped_disk_full: s.stream_metrics.dropped_lines[0].get(),
            dropped_disk_error: s.stream_metrics.dropped_lines[1].get(),
            last_drop: st.last_drop.clone(),
            disk_buffer_used: st.disk.used(),
            disk_buffer_limit: st.disk.limit(),
            disk_buffer_segments: st.disk.segments(),
            disk_acked: s.acked.load(Ordering::Relaxed),
            disk_read: st.read,
            disk_written: st.disk.end(),
        }
    }

    /// The source's name.
    pub fn name(&self) -> &str {
        &self.shared.cfg.name
    }

    /// Longest line.
    pub fn max_line(&self) -> usize {
        self.shared.cfg.max_line
    }

    /// Counts bytes of the app's output not passed through.
    pub(crate) fn passthrough_dropped(&self, bytes: u64) {
        self.shared.stream_metrics.passthrough_dropped.inc_by(bytes);
    }

    /// Ships the record pending on `stream`, whatever its age: the stream was closed (the app
    /// exited).
    pub fn flush(&self, stream: Stream) {
        self.shared.flush_joiner(stream, None);
    }
}

// === impl Shared ===

impl Shared {
    /// Ships the pending record of `stream` if it is older than its timeout at `now` (or any
    /// age without `now`).
    fn flush_joiner(&self, stream: Stream, now: Option<Instant>) {
        let Some(joiners) = &self.joiners else { return };
        let mut j = joiners[stream.index()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let rec = match now {
            Some(now) => j.joiner.poll(now),
            None => j.joiner.flush(),
        };
        if let Some(r) = rec {
            self.take_in(stream, &[r.text]);
        }
    }

    /// Shutdown: ships every pending record, and from now on each push is flushed at once.
    fn close_joiners(&self) {
        let Some(joiners) = &self.joiners else { return };
        for stream in [Stream::Stdout, Stream::Stderr, Stream::AccessLog] {
            let mut j = joiners[stream.index()]
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            j.closed = true;
            if let Some(r) = j.joiner.flush() {
                self.take_in(stream, &[r.text]);
            }
        }
    }

    /// Ships records whose timeout passed; returns when the next one is due.
    fn poll_joiners(&self, now: Instant) -> Option<Instant> {
        let joiners = self.joiners.as_ref()?;
        let mut next: Option<Instant> = None;
        for stream in [Stream::Stdout, Stream::Stderr, Stream::AccessLog] {
            self.flush_joiner(stream, Some(now));
            let d = joiners[stream.index()]
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .joiner
                .deadline();
            next = match (next, d) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        next
    }

    /// Takes whole `records` (joined ones hold `\n`) of `stream`: to the sinks
    /// if the memory budget has room and nothing waits on disk, else to the disk buffer, else
    /// dropped and counted.
    fn take_in(&self, stream: Stream, records: &[Bytes]) {
        let s = self;
        if records.is_empty() {
            return;
        }
        let n = records.len() as u64;
        let bytes: usize = records.iter().map(Bytes::len).sum();
        let mut st = s.lock();
        if st.read == st.disk.end() && !st.sinks.is_empty() {
            let need = bytes + records.len() * RECORD_OVERHEAD + CHUNK_OVERHEAD;
            if let Some(permit) = s.budget.try_acquire(need).filter(|p| p.bytes() == need) {
                let records = records.iter().map(|r| (stream, r.clone(), 0));
                s.send_chunks(&st.sinks, records, (MEMORY_KEY, 0), permit);
                return;
            }
        }
        // Spill: the budget is full, or older lines wait on disk (order), or shutting down.
        // A joined record is one buffer record per line, all but the last tagged "more".
        let (tag, more) = (stream.tag(), stream.more_tag());
        let pieces = records.iter().flat_map(|r| {
            let mut rest: &[u8] = r;
            std::iter::from_fn(move || {
                if rest.is_empty() {
                    return None;
                }
                Some(match memchr::memchr(b'\n', rest) {
                    Some(i) => {
                        let piece = (more, &rest[..i]);
                        rest = &rest[i + 1..];
                        piece
                    }
                    None => {
                        let piece = (tag, rest);
                        rest = &[];
                        piece
                    }
                })
            })
        });
        match st.disk.append(pieces) {
            Ok(_) => {
                s.stream_metrics.spilled_lines.inc_by(n);
                s.stream_metrics
                    .disk_buffer_used
                    .set(i64::try_from(st.disk.used()).unwrap_or(i64::MAX));
                if !st.spilling_logged {
                    st.spilling_logged = true;
                    tracing::warn!(source = %s.cfg.name, dir = %s.cfg.dir.display(), limit = st.disk.limit(), "log sinks are slower than the lines come: spilling to the disk buffer (shipped in order once they catch up)");
                }
            }
            Err(e) => {
                let reason = match e {
                    AppendError::Full { .. } => 0,
                    AppendError::Io { .. } => 1,
                };
                if let Some(c) = s.stream_metrics.dropped_lines.get(reason) {
                    c.inc_by(n);
                }
                st.drops_since_log += n;
                st.last_drop = Some((e.to_string(), rfc3339(SystemTime::now())));
                let due = st
                    .last_drop_log
                    .is_none_or(|t| t.elapsed() >= DROP_LOG_EVERY);
                if due {
                    tracing::error!(source = %s.cfg.name, dropped_lines = st.drops_since_log, error = %e, "log lines dropped: the sinks are behind and the disk buffer cannot take more (counted in tandem_logs_dropped_lines_total; said at most every 10s)");
                    st.drops_since_log = 0;
                    st.last_drop_log = Some(Instant::now());
                }
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent at every await-free step; a panic elsewhere leaves it usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Parses `lines` into chunks (split at the chunk bounds and where the stream changes) and
    /// hands them to every sink. `(key, start)`: disk chunks carry their buffer offsets, each
    /// line (or joined record) its bytes in the buffer (tag bytes and `\n`s included); memory
    /// chunks none.
    fn send_chunks(
        &self,
        sinks: &[UnboundedSender<Arc<Chunk>>],
        lines: impl Iterator<Item = (Stream, Bytes, u64)>,
        (key, mut start): (u64, u64),
        read_permit: BudgetPermit,
    ) {
        let observed = SystemTime::now();
        let mut records = Vec::new();
        let (mut bytes, mut end) = (0usize, start);
        let mut shaper = self.shaper.lock().unwrap_or_else(PoisonError::into_inner);
        let mut current: Option<Stream> = None;
        for (stream, text, disk_len) in lines {
            let len = text.len();
            if !records.is_empty()
                && (current != Some(stream)
                    || records.len() >= self.cfg.chunk_lines
                    || bytes + len > self.cfg.chunk_bytes)
            {
                if let Some(c) = current {
                    let full = std::mem::take(&mut records);
                    self.send_chunk(sinks, c, full, bytes, (key, start, end), observed);
                }
                (start, bytes) = (end, 0);
            }
            current = Some(stream);
            if key == DISK_KEY {
                end += disk_len;
            }
            let Ok(mut record) = shaper.shape(text) else {
                // Dropped by level or sampling: its bytes still count as read (and confirmed
                // with the chunk around it).
                continue;
            };
            record.position = if key == DISK_KEY {
                end
            } else {
                self.memory_positions.fetch_add(1, Ordering::Relaxed) | 1 << 63
            };
            bytes += len;
            if self.cfg.stream_field {
                record
                    .fields
                    .get_or_insert_with(|| Box::new(Map::new()))
                    .insert("stream".into(), Value::String(stream.as_str().into()));
            }
            records.push(record);
        }
        let stats = shaper.take_stats();
        drop(shaper);
        stats.count(&self.metrics);
        if let Some(c) = current {
            self.send_chunk(sinks, c, records, bytes, (key, start, end), observed);
        }
        drop(read_permit);
    }

    fn send_chunk(
        &self,
        sinks: &[UnboundedSender<Arc<Chunk>>],
        stream: Stream,
        records: Vec<Record>,
        bytes: usize,
        range: (u64, u64, u64),
        observed: SystemTime,
    ) {
        if records.is_empty() {
            // Every line was dropped by level or sampling: nothing to ship; lines read back
            // from disk are done all the same.
            let (key, start, end) = range;
            if key == DISK_KEY {
                let _ = self.acks.send(Msg::Ack { key, start, end });
            }
            return;
        }
        let mut permit = self.budget.empty_permit();
        permit.resize(bytes + records.len() * RECORD_OVERHEAD + CHUNK_OVERHEAD);
        let chunk = Arc::new(Chunk::new(
            records,
            bytes,
            observed,
            self.origins[stream.index()].clone(),
            range,
            sinks.len(),
            self.acks.clone(),
            Some(permit),
        ));
        for s in sinks {
            // A closed sink is shutting down: the chunk stays unconfirmed (on disk: read again).
            let _ = s.send(chunk.clone());
        }
    }
}

// === impl StreamPump ===

impl StreamPump {
    /// Drains the disk buffer into chunks and deletes confirmed segments until `stop`; then
    /// stops handing out lines (later ones go to disk) and waits for the confirmations of what
    /// it handed out, until they are all in or `hard_stop`.
    pub fn run(mut self, stop: &AtomicBool) {
        let mut paused = false;
        loop {
            let stopping = stop.load(Ordering::Acquire);
            if stopping && !self.joiners_closed {
                // Pending records go out before the sinks' queues close.
                self.shared.close_joiners();
                self.joiners_closed = true;
            }
            if stopping {
                let sinks = std::mem::take(&mut self.shared.lock().sinks);
                drop(sinks);
                let read = self.shared.lock().read;
                if self.tracker.committed() >= read || self.hard_stop.is_cancelled() {
                    break;
                }
            }
            let unread = {
                let st = self.shared.lock();
                st.read < st.disk.end() && !st.sinks.is_empty()
            };
            let mut wait = match (unread, paused) {
                (true, false) => Duration::ZERO,
                (true, true) => Duration::from_millis(10),
                (false, _) => Duration::from_millis(50),
            };
            if !stopping {
                let now = Instant::now();
                if let Some(due) = self.shared.poll_joiners(now) {
                    wait = wait.min(due.saturating_duration_since(now));
                }
            }
            match self.acks.recv_timeout(wait) {
                Ok(m) => self.apply(m),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while let Ok(m) = self.acks.try_recv() {
                self.apply(m);
            }
            self.release();
            if unread && !stopping {
                paused = !self.drain_some();
            }
        }
        self.release();
    }

    fn apply(&mut self, m: Msg) {
        match m {
            Msg::Ack { key, start, end } if key == DISK_KEY => {
                self.tracker.ack(start, end);
            }
            // Chunks from memory need no tracking; a sink's barrier has nothing to wait for.
            Msg::Confirmed { acks, reply } => {
                for (key, start, end) in acks {
                    if key == DISK_KEY {
                        self.tracker.ack(start, end);
                    }
                }
                let _ = reply.send(());
            }
            _ => {}
        }
    }

    /// Deletes the segments every sink confirmed.
    fn release(&mut self) {
        let committed = self.tracker.committed();
        if self.shared.acked.swap(committed, Ordering::Relaxed) == committed {
            return;
        }
        let mut st = self.shared.lock();
        if st.disk.release_before(committed) > 0 {
            self.shared
                .stream_metrics
                .disk_buffer_used
                .set(i64::try_from(st.disk.used()).unwrap_or(i64::MAX));
            if st.disk.used() == 0 && st.read == st.disk.end() {
                st.spilling_logged = false;
                tracing::info!(source = %self.shared.cfg.name, "log disk buffer drained: every spilled line was delivered");
            }
        }
    }

    /// Reads one piece of the disk buffer into chunks. False when the budget is full.
    fn drain_some(&mut self) -> bool {
        let s = self.shared.clone();
        let (located, read) = {
            let st = s.lock();
            (st.disk.locate(st.read), st.read)
        };
        let Some((path, pos, len)) = located else {
            return true;
        };
        let max = READ_SIZE.max(s.max_record_disk);
        let Some(permit) = s.budget.try_acquire(max) else {
            return false;
        };
        let data = match read_records(&path, pos, len, max) {
            Ok(d) => {
                self.read_failing = false;
                d
            }
            Err(e) => {
                if !self.read_failing {
                    tracing::error!(source = %s.cfg.name, path = %path.display(), error = %e, "cannot read the log disk buffer; retrying every 100ms (its lines wait, later ones keep spilling behind them)");
                    self.read_failing = true;
                }
                std::thread::sleep(Duration::from_millis(100));
                return true;
            }
        };
        let at_end = data.len() as u64 == len;
        let (records, consumed) = match split_records(Bytes::from(data), at_end) {
            Some(r) => r,
            None => {
                // No whole record within `max`: not written by this Tandem's framing. Skip it.
                tracing::error!(source = %s.cfg.name, path = %path.display(), "the log disk buffer holds a record longer than this source's lines and records can be; skipping the rest of the segment");
                (Vec::new(), len)
            }
        };
        let st = s.lock();
        if records.is_empty() {
            drop(st);
            self.tracker.ack(read, read + consumed);
        } else {
            s.send_chunks(&st.sinks, records.into_iter(), (DISK_KEY, read), permit);
            drop(st);
        }
        let mut st = s.lock();
        st.read = read + consumed;
        true
    }
}

/// A record read back from the disk buffer: its stream, text, and bytes in the buffer.
type BufferRecord = (Stream, Bytes, u64);

/// The whole records in `data` (buffer records read from the disk buffer), joined records put
/// together again, each with its bytes in the buffer; and the bytes they take. A joined record
/// cut off at the end is left for the next read, unless `at_end` (`data` reaches the end of
/// what was written: the record was torn by a crash, and its lines are shipped as they are).
/// None when `data` holds no whole record.
fn split_records(data: Bytes, at_end: bool) -> Option<(Vec<BufferRecord>, u64)> {
    let mut out = Vec::new();
    // The record being put together: its stream, text, and where it starts in `data`.
    let mut open: Option<(Stream, Vec<u8>, usize)> = None;
    let mut whole = 0;
    let mut at = 0;
    for r in data.split(|b| *b == b'\n') {
        let start = at;
        at += r.len() + 1;
        if at > data.len() {
            // Past the last `\n`: the empty remainder after it.
            break;
        }
        let Some((&tag, text)) = r.split_first() else {
            continue;
        };
        let more = tag.is_ascii_uppercase();
        // Every record was written with a tag; an unknown one still ships its line.
        let stream = Stream::from_tag(tag.to_ascii_lowercase()).unwrap_or(Stream::Stdout);
        match (&mut open, more) {
            (None, false) => {
                out.push((
                    stream,
                    data.slice(start + 1..start + r.len()),
                    (at - start) as u64,
                ));
                whole = at;
            }
            (None, true) => open = Some((stream, text.to_vec(), start)),
            (Some((_, joined, _)), more) => {
                joined.push(b'\n');
                joined.extend_from_slice(text);
                if !more {
                    if let Some((stream, joined, from)) = open.take() {
                        out.push((stream, Bytes::from(joined), (at - from) as u64));
                    }
                    whole = at;
                }
            }
        }
    }
    if let (Some((stream, joined, from)), true) = (open, at_end) {
        out.push((stream, Bytes::from(joined), (data.len() - from) as u64));
        whole = data.len();
    }
    (whole > 0).then_some((out, whole as u64))
}

/// RFC 3339 (UTC, seconds) for status output.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod multiline_tests;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tandem_telemetry::logs::Gauge;
    use tandem_telemetry::Metrics;

    fn line(i: usize) -> Line {
        Line {
            text: Bytes::from(format!("line {i:04} {}", "x".repeat(80))),
            end: 0,
            cut: false,
        }
    }

    struct Rig {
        input: StreamInput,
        rx: tokio::sync::mpsc::UnboundedReceiver<Arc<Chunk>>,
        stop: Arc<AtomicBool>,
        pump: Option<std::thread::JoinHandle<()>>,
        metrics: StreamSourceMetrics,
    }

    fn rig(dir: &std::path::Path, budget: usize, disk: u64) -> Rig {
        rig_with(dir, budget, disk, LogParser::Plain, Shape::default()).0
    }

    fn rig_with(
        dir: &std::path::Path,
        budget: usize,
        disk: u64,
        parser: LogParser,
        shape: Shape,
    ) -> (Rig, Metrics) {
        let m = Metrics::new();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let cfg = StreamConfig {
            name: "out".into(),
            parser,
            shape,
            multiline: None,
            labels: Arc::new([]),
            chunk_lines: 10,
            chunk_bytes: 1 << 20,
            max_line: 1024,
            stream_field: true,
            dir: dir.to_owned(),
            disk_limit: disk,
        };
        let (input, pump) = open(
            cfg,
            vec![tx],
            Budget::new(budget, Gauge::default()),
            m.log_source("out"),
            m.log_stream_source("out"),
            CancellationToken::new(),
        )
        .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let pump = std::thread::spawn(move || pump.run(&s));
        let metrics = m.log_stream_source("out");
        (
            Rig {
                input,
                rx,
                stop,
                pump: Some(pump),
                metrics,
            },
            m,
        )
    }

    /// Lines of a stream source are parsed, redacted and filtered like a file's, on the memory
    /// path and when read back from the disk buffer; dropped lines still free their segments.
    #[test]
    fn lines_are_shaped_on_both_paths() {
        let cfg = tandem_config::parse(
            "t.yaml",
            "logs:\n  checkpoint: { dir: /var/lib/tandem/logs }\n  sources:\n    app: { type: stdio, parser: json, drop: { levels: [debug] } }\n  sinks:\n    c: { type: console }\n",
        )
        .unwrap();
        let src = cfg.logs.unwrap().sources.remove(0);
        let dir = tempfile::tempdir().unwrap();
        let (mut r, m) = rig_with(dir.path(), 4096, 1 << 20, src.parser, src.shape);
        let json = |level: &str, i: usize| Line {
            text: Bytes::from(format!(
                r#"{{"level":"{level}","message":"m{i}","password":"hunter2","pad":"{}"}}"#,
                "x".repeat(200)
            )),
            end: 0,
            cut: false,
        };
        // 4 KiB of budget: most of these spill to disk and come back through the pump.
        for i in 0..60 {
            let level = if i % 3 == 0 { "info" } else { "debug" };
            r.input.push(Stream::Stderr, &[json(level, i)]);
        }
        let mut got = Vec::new();
        while got.len() < 20 {
            let c = r.rx.blocking_recv().unwrap();
            for rec in &c.records {
                assert_eq!(rec.level, Some(crate::record::Level::Info));
                let f = rec.fields.as_ref().unwrap();
                assert_eq!(f["password"], Value::String("[REDACTED]".into()), "{f:?}");
                got.push(String::from_utf8_lossy(&rec.message).into_owned());
            }
            c.confirm();
        }
        let want: Vec<String> = (0..60).step_by(3).map(|i| format!("m{i}")).collect();
        assert_eq!(got, want);
        assert!(
            r.input.status().spilled_lines > 30,
            "{:?}",
            r.input.status()
        );
        wait("segments deleted", || {
            r.input.status().disk_buffer_used == 0
        });
        let text = m.encode();
        assert!(
            text.contains(r#"tandem_logs_dropped_records_total{source="out",reason="level"} 40"#),
            "{text}"
        );
        r.stop();
    }

    impl Rig {
        /// Receives chunks (confirming each) until `n` records came; returns their messages.
        fn take(&mut self, n: usize) -> Vec<String> {
            let mut out = Vec::new();
            while out.len() < n {
                let c = self.rx.blocking_recv().unwrap();
                for r in &c.records {
                    out.push(String::from_utf8_lossy(&r.message)[..9].to_owned());
                    assert_eq!(
                        r.fields.as_ref().unwrap()["stream"],
                        Value::String("stderr".into())
                    );
                }
                c.confirm();
            }
            out
        }

        fn stop(&mut self) {
            self.stop.store(true, Ordering::Release);
            if let Some(p) = self.pump.take() {
                p.join().unwrap();
            }
        }
    }

    fn wait(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// With a small budget and nobody taking chunks, lines spill to disk; once chunks are taken
    /// and confirmed, every line arrives once and in order, and the segments are deleted.
    #[test]
    fn spills_then_drains_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rig(dir.path(), 4096, 1 << 20);
        for i in 0..300 {
            r.input.push(Stream::Stderr, &[line(i)]);
        }
        let st = r.input.status();
        assert!(st.spilled_lines > 250, "{st:?}");
        assert_eq!(st.lines, 300);
        let got = r.take(300);
        let want: Vec<String> = (0..300).map(|i| format!("line {i:04}")).collect();
        assert_eq!(got, want);
        wait("segments deleted", || {
            r.input.status().disk_buffer_used == 0
        });
        assert_eq!(r.input.status().disk_buffer_segments, 0);
        // Back on the memory path.
        r.input.push(Stream::Stderr, &[line(300)]);
        assert_eq!(r.take(1), ["line 0300"]);
        assert_eq!(r.input.status().spilled_lines, st.spilled_lines);
        r.stop();
    }

    /// Beyond the disk buffer lines are dropped and counted; what was kept still arrives.
    #[test]
    fn full_disk_buffer_drops_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rig(dir.path(), 4096, 64 * 1024);
        for i in 0..2000 {
            r.input.push(Stream::Stderr, &[line(i)]);
        }
        let st = r.input.status();
        let dropped = r.metrics.dropped_lines[0].get();
        assert!(dropped > 1000, "{st:?}");
        assert_eq!(st.dropped_disk_full, dropped);
        assert!(st.disk_buffer_used <= 64 * 1024);
        assert!(st.last_drop.unwrap().0.contains("disk buffer is full"));
        let kept = 2000 - usize::try_from(dropped).unwrap();
        let got = r.take(kept);
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(got, sorted, "in order");
        assert!(r.rx.try_recv().is_err(), "nothing more");
        r.stop();
    }

    /// Spilled lines not confirmed before a stop are shipped after the restart.
    #[test]
    fn restart_ships_unconfirmed_spilled_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rig(dir.path(), 4096, 1 << 20);
        for i in 0..100 {
            r.input.push(Stream::Stderr, &[line(i)]);
        }
        let spilled = r.input.status().spilled_lines;
        drop(r.rx.try_recv());
        // Nothing confirmed: stop with the pump's hard stop (it would wait for confirmations).
        r.stop.store(true, Ordering::Release);
        r.pump.take();
        drop(r);
        let mut r = rig(dir.path(), 1 << 20, 1 << 20);
        let got = r.take(usize::try_from(spilled).unwrap());
        assert_eq!(got.last().unwrap(), "line 0099");
        wait("segments deleted", || {
            r.input.status().disk_buffer_used == 0
        });
        r.stop();
    }
}
