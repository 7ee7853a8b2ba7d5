//! The file source: finds files by glob, follows them through rotation, reads new lines, and
//! cuts them into chunks for the sinks.
//!
//! One thread per source runs [`FileTailer::run`]: file reads are blocking system calls, and on
//! their own thread they never hold up the proxy's runtime. Each iteration:
//!
//! - every `scan_interval`, [`FileTailer::scan`] expands the globs. A file already tailed is
//!   recognised by device and inode, whatever its name now (rename rotation: the renamed file
//!   keeps being read to its end). A new file is matched against generations that lost their
//!   file (see below), else it is a new generation read from offset 0 (or from its end, for
//!   `start_at: end` on a source's first start).
//! - [`FileTailer::round`] checks each file (`fstat`; before reading, the content fingerprint)
//!   and reads what was appended, at most [`MAX_ROUND_BYTES`] per file per round, each read
//!   taking its bytes from the memory budget first; when the budget is spent the source pauses.
//!   Once every file is read to the size it had, the thread sleeps `poll_interval`.
//!
//! A *generation* is one run of content at one identity, with its own acknowledgement tracker
//! and checkpoint entry. A file truncated in place (copytruncate; detected because it is shorter
//! than the read offset, or because its first bytes changed) starts a new generation at 0. The
//! old generation becomes an *orphan*: content without a file. Orphans also come from released
//! files (renamed out of the globs or deleted, read to the end and idle for [`RELEASE_AFTER`])
//! and from checkpoint entries not matched yet after a restart. A new file is matched to an
//! orphan:
//! - at the orphan's own device and inode, with its fingerprint: the same file, found again
//!   (after a restart, or back inside the globs): reading resumes at the orphan's offset;
//! - elsewhere, by fingerprint alone, only for content that can have moved: a file truncated
//!   less than [`COPY_WINDOW`] ago (copytruncate's copy), or a checkpoint entry at the first
//!   scan after a start (a copy made, or a file moved across file systems, while Tandem was
//!   away). Reading continues in the copy where it stopped in the original, and its
//!   acknowledgements continue the orphan's generation.
//!
//! A new file that starts like a file being read (copytruncate's copy, seen before the
//! truncation) waits [`COPY_GRACE`] for that truncation; if none shows, it is read as a file of
//! its own. Orphans are forgotten after [`FORGET_AFTER`]; unread bytes of a truncated file whose
//! copy never appeared are counted as dropped.
//!
//! Copytruncate has a window no reader can close: lines the writer appends between the copy
//! and the truncation are in neither file. And a file must keep its first bytes for a
//! truncation that regrows past the old offset to be noticed (see `identity`).

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use tandem_config::{LogParser, Multiline, Shape, StartAt};
use tandem_telemetry::logs::{Gauge, LogSourceMetrics};
use tandem_telemetry::Metrics;
use tokio::sync::mpsc::UnboundedSender;

use crate::budget::{Budget, BudgetPermit};
use crate::checkpoint::Entry;
use crate::committer::Msg;
use crate::framer::{Line, LineFramer};
use crate::identity::{read_prefix, Fingerprint, FINGERPRINT_BYTES};
use crate::multiline::{JoinRules, Joined, Joiner};
use crate::record::{Chunk, Origin, Record};
use crate::shape::{Dropped, Shaper};

/// Bytes asked of one `read`: one chunk at most.
pub const READ_SIZE: usize = 64 * 1024;

/// Bytes read from one file per round, so that one busy file does not starve the others.
pub const MAX_ROUND_BYTES: u64 = 1024 * 1024;

/// A file gone from the globs (renamed away or deleted) is released once read to its end and
/// not grown for this long: writers may still append to a renamed file for a moment.
pub const RELEASE_AFTER: Duration = Duration::from_secs(5);

/// Orphans (generations without a file) are forgotten after this long.
pub const FORGET_AFTER: Duration = Duration::from_secs(300);

/// A truncated file's content is looked for in a copy for this long (copytruncate makes the
/// copy just before it truncates).
pub const COPY_WINDOW: Duration = Duration::from_secs(60);

/// A new file that starts like a file being read may be copytruncate's copy made just before
/// the truncation: it waits this long (at least three scans) for the truncation to show.
pub const COPY_GRACE: Duration = Duration::from_secs(3);

/// Content is recognised at a new identity only by a fingerprint of at least this many bytes:
/// shorter prefixes (a timestamp) are too common to tell files apart.
pub const MIN_MOVE_FINGERPRINT: u32 = 64;

/// Budget charged per record and per chunk on top of line bytes, for their bookkeeping: a
/// record costs its own size (its message shares the read buffer, counted as line bytes).
pub const RECORD_OVERHEAD: usize = std::mem::size_of::<Record>();
const CHUNK_OVERHEAD: usize = 256;

/// How often a source that keeps waiting for the budget says so.
const PAUSE_LOG_EVERY: Duration = Duration::from_secs(60);

/// What a source is configured to do.
#[derive(Clone, Debug)]
pub struct TailerConfig {
    /// The source's name.
    pub name: Arc<str>,
    /// Glob patterns.
    pub patterns: Vec<String>,
    /// Where to start in files found at the first start.
    pub start_at: StartAt,
    /// Line parser.
    pub parser: LogParser,
    /// Multi-line joining.
    pub multiline: Option<Multiline>,
    /// Extraction, filtering and redaction.
    pub shape: Shape,
    /// Longest line.
    pub max_line: usize,
    /// Labels for every record.
    pub labels: Arc<[(String, String)]>,
    /// Sleep between rounds once caught up.
    pub poll_interval: Duration,
    /// Time between glob scans.
    pub scan_interval: Duration,
    /// Most records in a chunk: the smallest `batch.max_lines` of the sinks it goes to.
    pub chunk_lines: usize,
    /// Most line bytes in a chunk: the smallest `batch.max_bytes` of those sinks (a single
    /// longer line still makes a chunk of its own).
    pub chunk_bytes: usize,
}

/// Where chunks and generation events go.
#[derive(Debug)]
pub struct Outputs {
    /// One sender per sink that receives this source.
    pub sinks: Vec<UnboundedSender<Arc<Chunk>>>,
    /// The committer.
    pub(crate) committer: Sender<Msg>,
}

/// What a round did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Some file has more to read right away.
    More,
    /// Every file was read to the size it had.
    CaughtUp,
    /// The memory budget is spent: wait for sinks.
    Paused,
}

/// A file being read.
struct Tracked {
    key: u64,
    path: PathBuf,
    file: File,
    dev: u64,
    ino: u64,
    fp: Fingerprint,
    framer: LineFramer,
    /// Where the next chunk starts: the framer's line start, or with multi-line joining the
    /// start of the pending record (never acknowledged before it is emitted whole).
    emitted: u64,
    joiner: Option<Joiner>,
    /// Size at the last `fstat`.
    size: u64,
    origin: Arc<Origin>,
    committed: Arc<AtomicU64>,
    lag: Gauge,
    /// Found by the last scan.
    seen: bool,
    /// No name links to it any more.
    deleted: bool,
    last_growth: Instant,
    read_errors: u64,
}

/// Why a generation has no file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OrphanKind {
    /// Its file was truncated: the content may be in a copy (copytruncate).
    Truncated,
    /// Its file left the globs and was read to the end: it may come back under the globs.
    Released,
    /// From the checkpoint, not found yet since the start.
    Checkpointed,
}

/// A generation without a file: its content may turn up at another name.
struct Orphan {
    kind: OrphanKind,
    key: u64,
    fp: Fingerprint,
    /// Where reading resumes.
    offset: u64,
    dev: u64,
    ino: u64,
    path: String,
    committed: Arc<AtomicU64>,
    since: Instant,
    /// Bytes the file had past `offset` when it lost its content (truncation).
    unread: u64,
    origin: Option<Arc<Origin>>,
}

/// The state of one file source.
pub struct FileTailer {
    cfg: TailerConfig,
    /// No checkpoint for this source: `start_at` applies to the first scan.
    fresh: bool,
    scanned: bool,
    files: Vec<Tracked>,
    orphans: Vec<Orphan>,
    /// New files that start like a file being read, by identity, with when they were first
    /// seen (see [`COPY_GRACE`]).
    lookalikes: HashMap<(u64, u64), Instant>,
    keys: Arc<AtomicU64>,
    out: Outputs,
    budget: Budget,
    reserved: Option<BudgetPermit>,
    metrics: LogSourceMetrics,
    registry: Arc<Metrics>,
    prefix: Vec<u8>,
    lines: Vec<Line>,
    shaper: Shaper,
    join_rules: Option<JoinRules>,
    joined: Vec<Joined>,
    paused: bool,
    last_pause_log: Option<Instant>,
    status: Option<(FileRows, Option<Instant>)>,
    /// Per generation: its committed offset at the last status, and when it last moved.
    committed_moved: HashMap<u64, (u64, Instant)>,
}

/// Where a tailer publishes its files for `/logs`.
pub type FileRows = Arc<std::sync::Mutex<Vec<FileRow>>>;

/// One file being read, for `/logs`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FileRow {
    /// Its path (the name it had when found).
    pub path: String,
    /// Its size at the last look.
    pub size: u64,
    /// Read up to here.
    pub read: u64,
    /// Every sink confirmed the lines up to here (the checkpoint holds it).
    pub committed: u64,
    /// 0 when `committed` is the file's size, else how long since it last moved.
    pub checkpoint_age: Duration,
}

impl FileTailer {
    /// A tailer; `checkpointed` are this source's entries from the checkpoint file, with their
    /// generation keys and committed-offset cells (shared with the committer).
    pub fn new(
        cfg: TailerConfig,
        checkpointed: Vec<(u64, Entry, Arc<AtomicU64>)>,
        keys: Arc<AtomicU64>,
        out: Outputs,
        budget: Budget,
        registry: Arc<Metrics>,
    ) -> FileTailer {
        let now = Instant::now();
        let fresh = checkpointed.is_empty();
        let orphans = checkpointed
            .into_iter()
            .map(|(key, e, committed)| Orphan {
                kind: OrphanKind::Checkpointed,
                key,
                fp: Fingerprint {
                    hash: e.fingerprint,
                    len: e.fingerprint_bytes,
                },
                offset: e.offset,
                dev: e.dev,
                ino: e.ino,
                path: e.path,
                committed,
                since: now,
                unread: 0,
                origin: None,
            })
            .collect();
        let shaper = Shaper::new(&cfg.parser, &cfg.shape);
        let join_rules = cfg.multiline.as_ref().and_then(JoinRules::from_config);
        FileTailer {
            metrics: registry.log_source(&cfg.name),
            cfg,
            fresh,
            scanned: false,
            files: Vec::new(),
            orphans,
            lookalikes: HashMap::new(),
            keys,
            out,
            budget,
            reserved: None,
            registry,
            prefix: vec![0; FINGERPRINT_BYTES],
            lines: Vec::new(),
            shaper,
            join_rules,
            joined: Vec::new(),
            paused: false,
            last_pause_log: None,
            status: None,
            committed_moved: HashMap::new(),
        }
    }

    /// Scans and reads until `stop` is set. Wake it early with `Thread::unpark`.
    pub fn run(mut self, stop: &AtomicBool) {
        let mut next_scan = Instant::now();
        while !stop.load(Ordering::Acquire) {
            let now = Instant::now();
            if now >= next_scan {
                self.scan(now);
                next_scan = now + self.cfg.scan_interval;
            }
            let until_scan = next_scan.saturating_duration_since(Instant::now());
            match self.round() {
                Progress::More => {}
                Progress::CaughtUp => {
                    std::thread::park_timeout(self.cfg.poll_interval.min(until_scan));
                }
                Progress::Paused => {
                    let wait = self.cfg.poll_interval.min(until_scan);
                    self.reserved = self.budget.acquire_timeout(READ_SIZE, wait);
                }
            }
        }
    }

    /// Files being read now, by path.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.files.iter().map(|t| t.path.clone()).collect()
    }

    /// Expands the globs: follows renames, notices truncation, takes up new files, releases
    /// files gone and drained, forgets old orphans.
    pub fn scan(&mut self, now: Instant) {
        for t in &mut self.files {
            t.seen = false;
        }
        let mut new = Vec::new();
        for (path, meta) in self.expand() {
            let (dev, ino) = (meta.dev(), meta.ino());
            match self.files.iter_mut().find(|t| t.dev == dev && t.ino == ino) {
                Some(t) => {
                    t.seen = true;
                    if t.path != path {
                        self.renamed(dev, ino, path);
                    }
                }
                None => new.push(path),
            }
        }
        // Truncations first, so that a copytruncate copy found below meets the orphan of the
        // content it holds.
        let mut i = 0;
        while i < self.files.len() {
            self.refresh(i, true, now);
            i += 1;
        }
        // Files at the identity of an orphan (found again after a restart) before the others,
        // so that a copy never takes over the content of an original that is still there.
        new.sort_by_cached_key(|p| {
            std::fs::metadata(p).map_or(true, |m| {
                !self
                    .orphans
                    .iter()
                    .any(|o| o.dev == m.dev() && o.ino == m.ino())
            })
        });
        let mut seen_new = Vec::with_capacity(new.len());
        for path in new {
            if let Some(id) = self.discover(path, now) {
                seen_new.push(id);
            }
        }
        self.lookalikes.retain(|id, _| seen_new.contains(id));
        self.release_gone(now);
        self.expire_orphans(now);
        self.scanned = true;
        self.metrics
            .files
            .set(i64::try_from(self.files.len()).unwrap_or(i64::MAX));
    }

    /// Reads what every file gained, within the budget.
    pub fn round(&mut self) -> Progress {
        let now = Instant::now();
        let mut progress = Progress::CaughtUp;
        for i in 0..self.files.len() {
            match self.poll_file(i, now) {
                Progress::Paused => {
                    progress = Progress::Paused;
                    break;
                }
                Progress::More => progress = Progress::More,
                Progress::CaughtUp => {}
            }
        }
        self.publish_status(now);
        if self.join_rules.is_some() {
            self.flush_idle(Instant::now());
        }
        progress
    }

    /// Publishes the files' offsets for `/logs` ([`FileTailer::with_status`]), at most every
    /// 100 ms.
    fn publish_status(&mut self, now: Instant) {
        let Some((board, last)) = &mut self.status else {
            return;
        };
        if last.is_some_and(|l| now.duration_since(l) < Duration::from_millis(100)) {
            return;
        }
        *last = Some(now);
        let ages = &mut self.committed_moved;
        ages.retain(|k, _| self.files.iter().any(|t| t.key == *k));
        let rows = self
            .files
            .iter()
            .map(|t| {
                let committed = t.committed.load(Ordering::Relaxed);
                let moved = ages.entry(t.key).or_insert((committed, now));
                if moved.0 != committed {
                    *moved = (committed, now);
                }
                FileRow {
                    path: t.path.display().to_string(),
                    size: t.size,
                    read: t.framer.read_offset(),
                    committed,
                    checkpoint_age: if committed >= t.size {
                        Duration::ZERO
                    } else {
                        now.duration_since(moved.1)
                    },
                }
            })
            .collect();
        *board
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = rows;
    }

    /// Publishes the offsets of the files read on `board`, for `/logs`.
    pub fn with_status(mut self, board: FileRows) -> FileTailer {
        self.status = Some((board, None));
        self
    }

    /// Regular files matching the globs, each once (a file reachable by two names, through a
    /// link or two patterns, is read once).
    fn expand(&self) -> Vec<(PathBuf, Metadata)> {
        let mut out: Vec<(PathBuf, Metadata)> = Vec::new();
        for pattern in &self.cfg.patterns {
            let paths = match glob::glob(pattern) {
                Ok(p) => p,
                // Checked when the configuration was loaded.
                Err(e) => {
                    tracing::warn!(source = %self.cfg.name, pattern, error = %e, "bad glob");
                    continue;
                }
            };
            for entry in paths {
                let path = match entry {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::debug!(source = %self.cfg.name, error = %e, "cannot read a directory");
                        continue;
                    }
                };
                // Follows symlinks: a link to a log file is read as that file.
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                if meta.is_file()
                    && !out
                        .iter()
                        .any(|(_, m)| m.dev() == meta.dev() && m.ino() == meta.ino())
                {
                    out.push((path, meta));
                }
            }
        }
        out
    }

    fn renamed(&mut self, dev: u64, ino: u64, path: PathBuf) {
        let Some(t) = self.files.iter_mut().find(|t| t.dev == dev && t.ino == ino) else {
            return;
        };
        tracing::info!(source = %self.cfg.name, from = %t.path.display(), to = %path.display(), "log file renamed; still reading it");
        self.registry
            .forget_log_file(&self.cfg.name, &t.path.to_string_lossy());
        t.lag = self
            .registry
            .log_file_lag(&self.cfg.name, &path.to_string_lossy());
        t.path = path;
        let _ = self.out.committer.send(Msg::Update {
            key: t.key,
            path: Some(t.path.to_string_lossy().into_owned()),
            dev_ino: None,
            fingerprint: None,
        });
    }

    /// Takes up a file not read yet: found again, content moved here, a copy of a file being
    /// read, or new. Returns its identity when it exists.
    fn discover(&mut self, path: PathBuf, now: Instant) -> Option<(u64, u64)> {
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(source = %self.cfg.name, path = %path.display(), error = %e, "cannot open");
                return None;
            }
        };
        // The open file's own metadata: the name may point elsewhere by now.
        let meta = file.metadata().ok()?;
        let (dev, ino, size) = (meta.dev(), meta.ino(), meta.len());
        if self.files.iter().any(|t| t.dev == dev && t.ino == ino) {
            return Some((dev, ino));
        }
        let want = usize::try_from(size).map_or(FINGERPRINT_BYTES, |s| s.min(FINGERPRINT_BYTES));
        let n = match read_prefix(&file, &mut self.prefix[..want]) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(source = %self.cfg.name, path = %path.display(), error = %e, "cannot read");
                return Some((dev, ino));
            }
        };
        let prefix = &self.prefix[..n];

        // The same file, found again (after a restart, or back inside the globs).
        if let Some(i) = self
            .orphans
            .iter()
            .position(|o| o.dev == dev && o.ino == ino && o.fp.matches(prefix))
        {
            if self.orphans[i].offset <= size {
                let o = self.orphans.swap_remove(i);
                tracing::info!(source = %self.cfg.name, path = %path.display(), offset = o.offset, "resuming log file");
                self.adopt(o, path, file, dev, ino, size, now);
                return Some((dev, ino));
            }
            // Shorter than where reading stopped: truncated while Tandem was away. The old
            // content may be in a copy; this file starts a new generation below.
        }
        // Content that lost its file, found at a new identity: copytruncate's copy (of a file
        // truncated a moment ago, or while Tandem was away), or a move across file systems.
        let first_scan = !self.scanned;
        if let Some(i) = self.orphans.iter().position(|o| {
            (o.dev, o.ino) != (dev, ino)
                && o.fp.len >= MIN_MOVE_FINGERPRINT
                && o.fp.matches(prefix)
                && match o.kind {
                    OrphanKind::Truncated => now.duration_since(o.since) < COPY_WINDOW,
                    OrphanKind::Checkpointed => first_scan,
                    OrphanKind::Released => false,
                }
        }) {
            if self.orphans[i].offset > size {
                // A copy still being written: look again at the next scan.
                return Some((dev, ino));
            }
            let o = self.orphans.swap_remove(i);
            tracing::info!(source = %self.cfg.name, path = %path.display(), was = %o.path, offset = o.offset, "log content moved or copied here; reading on from where it was left");
            self.adopt(o, path, file, dev, ino, size, now);
            return Some((dev, ino));
        }
        // Starts like a file being read: maybe copytruncate's copy, made just before the
        // truncation shows. Wait a little for it; if none comes, it is a file of its own.
        if let Some(t) = self
            .files
            .iter()
            .find(|t| t.fp.len >= MIN_MOVE_FINGERPRINT && t.fp.matches(prefix))
        {
            let first = *self.lookalikes.entry((dev, ino)).or_insert(now);
            let grace = COPY_GRACE.max(self.cfg.scan_interval * 3);
            if now.duration_since(first) < grace {
                tracing::debug!(source = %self.cfg.name, path = %path.display(), like = %t.path.display(), "starts like a file being read; waiting for a truncation before reading it");
                return Some((dev, ino));
            }
            tracing::info!(source = %self.cfg.name, path = %path.display(), like = %t.path.display(), "starts like a file being read, but that file was not truncated: reading it as a file of its own");
        }
        self.lookalikes.remove(&(dev, ino));
        let offset = if first_scan && self.fresh && self.cfg.start_at == StartAt::End {
            size
        } else {
            0
        };
        let fp = Fingerprint::of(prefix);
        let key = self.keys.fetch_add(1, Ordering::Relaxed);
        let committed = Arc::new(AtomicU64::new(offset));
        let path_s = path.to_string_lossy().into_owned();
        let _ = self.out.committer.send(Msg::Register {
            key,
            entry: Entry {
                source: self.cfg.name.to_string(),
                path: path_s.clone(),
                dev,
                ino,
                fingerprint: fp.hash,
                fingerprint_bytes: fp.len,
                offset,
            },
            committed: committed.clone(),
        });
        tracing::info!(source = %self.cfg.name, path = %path.display(), offset, "tailing log file");
        let origin = Arc::new(Origin::new(
            self.cfg.name.clone(),
            path_s.clone(),
            self.cfg.labels.clone(),
        ));
        self.files.push(Tracked {
            key,
            lag: self.registry.log_file_lag(&self.cfg.name, &path_s),
            path,
            file,
            dev,
            ino,
            fp,
            framer: LineFramer::new(offset, self.cfg.max_line),
            emitted: offset,
            joiner: self.joiner(offset),
            size: offset,
            origin,
            committed,
            seen: true,
            deleted: false,
            last_growth: now,
            read_errors: 0,
        });
        Some((dev, ino))
    }

    /// Continues orphan `o`'s generation in `file`.
    #[allow(clippy::too_many_arguments)]
    fn adopt(
        &mut self,
        o: Orphan,
        path: PathBuf,
        file: File,
        dev: u64,
        ino: u64,
        size: u64,
        now: Instant,
    ) {
        let path_s = path.to_string_lossy().into_owned();
        let _ = self.out.committer.send(Msg::Update {
            key: o.key,
            path: Some(path_s.clone()),
            dev_ino: Some((dev, ino)),
            fingerprint: None,
        });
        let origin = o.origin.unwrap_or_else(|| {
            Arc::new(Origin::new(
                self.cfg.name.clone(),
                path_s.clone(),
                self.cfg.labels.clone(),
            ))
        });
        self.files.push(Tracked {
            key: o.key,
            lag: self.registry.log_file_lag(&self.cfg.name, &path_s),
            path,
            file,
            dev,
            ino,
            fp: o.fp,
            framer: LineFramer::new(o.offset, self.cfg.max_line),
            emitted: o.offset,
            joiner: self.joiner(o.offset),
            size: size.min(o.offset),
            origin,
            committed: o.committed,
            seen: true,
            deleted: false,
            last_growth: now,
            read_errors: 0,
        });
    }

    /// `fstat`s file `i`, starts a new generation if it was truncated (with `verify`, or when
    /// it grew, also checking its first bytes), and extends a short fingerprint. Returns the
    /// size, or None when the file cannot be examined now.
    fn refresh(&mut self, i: usize, verify: bool, now: Instant) -> Option<u64> {
        let t = &mut self.files[i];
        let meta = match t.file.metadata() {
            Ok(m) => m,
            Err(e) => {
                self.read_error(i, &e);
                return None;
            }
        };
        let size = meta.len();
        t.deleted = meta.nlink() == 0;
        let offset = t.framer.read_offset();
        if size < offset {
            self.truncated(i, now);
        } else if size > offset || verify {
            let t = &self.files[i];
            if !t.fp.is_empty() || size > 0 {
                let want =
                    usize::try_from(size).map_or(FINGERPRINT_BYTES, |s| s.min(FINGERPRINT_BYTES));
                let n = match read_prefix(&t.file, &mut self.prefix[..want]) {
                    Ok(n) => n,
                    Err(e) => {
                        self.read_error(i, &e);
                        return None;
                    }
                };
                if !self.files[i].fp.matches(&self.prefix[..n]) {
                    self.truncated(i, now);
                }
                let t = &mut self.files[i];
                if !t.fp.is_full() && n > t.fp.len as usize {
                    t.fp = Fingerprint::of(&self.prefix[..n]);
                    let _ = self.out.committer.send(Msg::Update {
                        key: t.key,
                        path: None,
                        dev_ino: None,
                        fingerprint: Some(t.fp),
                    });
                }
            }
        }
        let t = &mut self.files[i];
        if size > t.size {
            t.last_growth = now;
        }
        t.size = size;
        Some(size)
    }

    /// File `i` lost its content: its generation becomes an orphan (the content may be in a
    /// copy) and the file starts a new generation at 0.
    fn truncated(&mut self, i: usize, now: Instant) {
        let key = self.keys.fetch_add(1, Ordering::Relaxed);
        let joiner = self.joiner(0);
        let t = &mut self.files[i];
        // A pending multi-line record is read again, whole, from the copy.
        let resume = t.emitted;
        tracing::info!(source = %self.cfg.name, path = %t.path.display(), read = resume, "log file truncated (copytruncate?); reading it from the start, and its old content from a copy if one appears");
        self.orphans.push(Orphan {
            kind: OrphanKind::Truncated,
            key: t.key,
            fp: t.fp,
            offset: resume,
            dev: t.dev,
            ino: t.ino,
            path: t.path.to_string_lossy().into_owned(),
            committed: t.committed.clone(),
            since: now,
            unread: t.size.saturating_sub(resume),
            origin: Some(t.origin.clone()),
        });
        t.key = key;
        t.fp = Fingerprint::default();
        t.framer = LineFramer::new(0, self.cfg.max_line);
        t.emitted = 0;
        t.joiner = joiner;
        t.size = 0;
        t.committed = Arc::new(AtomicU64::new(0));
        let _ = self.out.committer.send(Msg::Register {
            key,
            entry: Entry {
                source: self.cfg.name.to_string(),
                path: t.path.to_string_lossy().into_owned(),
                dev: t.dev,
                ino: t.ino,
                fingerprint: 0,
                fingerprint_bytes: 0,
                offset: 0,
            },
            committed: t.committed.clone(),
        });
    }

    /// Reads what file `i` gained since the last round.
    fn poll_file(&mut self, i: usize, now: Instant) -> Progress {
        let Some(size) = self.refresh(i, false, now) else {
            return Progress::CaughtUp;
        };
        // Before reading: a paused source still shows its lag growing.
        let t = &self.files[i];
        let committed = t.committed.load(Ordering::Relaxed);
        t.lag
            .set(i64::try_from(size.saturating_sub(committed)).unwrap_or(i64::MAX));
        let mut read_this_round = 0;
        loop {
            let offset = self.files[i].framer.read_offset();
            if offset >= size {
                break;
            }
            if read_this_round >= MAX_ROUND_BYTES {
                return Progress::More;
            }
            let Some(permit) = self.permit() else {
                return Progress::Paused;
            };
            let want = usize::try_from(size - offset).map_or(READ_SIZE, |r| r.min(READ_SIZE));
            let mut buf = BytesMut::zeroed(want);
            let n = match self.files[i].file.read_at(&mut buf, offset) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.read_error(i, &e);
                    break;
                }
            };
            if n == 0 {
                // Shrunk since the fstat: the next round sees the truncation.
                break;
            }
            buf.truncate(n);
            read_this_round += n as u64;
            self.metrics.read_bytes.inc_by(n as u64);
            let t = &mut self.files[i];
            t.read_errors = 0;
            t.framer.push(&buf.freeze(), &mut self.lines);
            self.emit_file(i, false, permit);
        }
        Progress::CaughtUp
    }

    /// A joiner for a file read from `offset`, when the source joins lines.
    fn joiner(&self, offset: u64) -> Option<Joiner> {
        self.join_rules.clone().map(|r| Joiner::new(r, offset))
    }

    /// Emits the lines framed for file `i` (and with `finish`, its pending record), and moves
    /// its acknowledgement start to what was emitted.
    fn emit_file(&mut self, i: usize, finish: bool, permit: BudgetPermit) {
        let t = &mut self.files[i];
        if t.origin.identity == 0 && t.framer.line_start() > t.emitted {
            // The first records of this file: name them within its first line (see
            // `file_identity`), which is complete now.
            let id = file_identity(&self.cfg.name, &t.file);
            if id != 0 {
                t.origin = Arc::new((*t.origin).clone().with_identity(id));
            }
        }
        let mut joiner = t.joiner.take();
        let (key, start, end, splits, origin) = (
            t.key,
            t.emitted,
            t.framer.line_start(),
            t.framer.take_splits(),
            t.origin.clone(),
        );
        let emitted = self.emit(
            key,
            &origin,
            (start, end),
            joiner.as_mut(),
            finish,
            splits,
            permit,
        );
        let t = &mut self.files[i];
        t.joiner = joiner;
        t.emitted = emitted;
    }

    /// Ships the pending multi-line records that waited their timeout.
    fn flush_idle(&mut self, now: Instant) {
        for i in 0..self.files.len() {
            let due = self.files[i]
                .joiner
                .as_ref()
                .and_then(Joiner::deadline)
                .is_some_and(|d| d <= now);
            if due {
                let permit = self.budget.empty_permit();
                self.emit_file(i, false, permit);
            }
        }
    }

    /// A budget permit for one read, or None (paused).
    fn permit(&mut self) -> Option<BudgetPermit> {
        let permit = self
            .reserved
            .take()
            .or_else(|| self.budget.try_acquire(READ_SIZE));
        match (&permit, self.paused) {
            (None, false) => {
                self.paused = true;
                self.metrics.paused.set(1);
                if self.budget.shared_has_room(READ_SIZE) {
                    // Ahead of the sinks by the window: the normal state of a source that
                    // reads faster than its sinks deliver, nothing to warn about.
                    tracing::debug!(source = %self.cfg.name, "log source paused: its window is full (ahead of its sinks)");
                    return None;
                }
                let due = self
                    .last_pause_log
                    .is_none_or(|t| t.elapsed() >= PAUSE_LOG_EVERY);
                if due {
                    self.last_pause_log = Some(Instant::now());
                    tracing::warn!(source = %self.cfg.name, budget_used = self.budget.used(), "log source paused: the memory budget is full because sinks are slower than the files grow (the files are the buffer: nothing is lost)");
                }
            }
            (Some(_), true) => {
                self.paused = false;
                self.metrics.paused.set(0);
                tracing::debug!(source = %self.cfg.name, "log source resumed");
            }
            _ => {}
        }
        permit
    }

    /// Turns the framed lines (from `start` to `end` of generation `key`) into chunks for the
    /// sinks, each within the smallest batch of those sinks, so a batch never has to exceed
    /// its bounds to take a whole chunk (and a crash replays at most one batch per delivery in
    /// flight). With a `joiner`, the lines are joined into records first; the chunks then end
    /// where the pending record starts (or, with `finish`, the pending record is emitted too).
    /// Returns where the chunks end: the next chunk's start.
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        key: u64,
        origin: &Arc<Origin>,
        (start, end): (u64, u64),
        joiner: Option<&mut Joiner>,
        finish: bool,
        splits: u64,
        read_permit: BudgetPermit,
    ) -> u64 {
        if splits > 0 {
            self.metrics.split_lines.inc_by(splits);
        }
        self.metrics.read_lines.inc_by(self.lines.len() as u64);
        let mut lines = std::mem::take(&mut self.lines);
        let end = match joiner {
            None => {
                if end > start {
                    // The texts move into the records: no reference count taken and dropped
                    // per line.
                    let units = lines.drain(..).map(|l| (l.text, l.end));
                    self.cut_chunks(key, origin, (start, end), units);
                }
                end
            }
            Some(j) => {
                let mut joined = std::mem::take(&mut self.joined);
                let now = Instant::now();
                for line in &lines {
                    j.push(line, now, &mut joined);
                }
                joined.extend(if finish { j.flush() } else { j.poll(now) });
                let safe = j.safe_offset();
                if safe > start {
                    let units = joined.drain(..).map(|r| (r.text, r.end));
                    self.cut_chunks(key, origin, (start, safe), units);
                }
                joined.clear();
                self.joined = joined;
                safe.max(start)
            }
        };
        self.lines = lines;
        self.lines.clear();
        self.shaper.take_stats().count(&self.metrics);
        // Each chunk took its own share of the budget; the read's permit goes back.
        drop(read_permit);
        end
    }

    /// Shapes `units` (record texts, each with the offset past its last line) into chunks
    /// covering `[start, end)` together. Dropped records ship nothing, but their bytes are in
    /// a chunk's range, so the checkpoint moves past them.
    fn cut_chunks(
        &mut self,
        key: u64,
        origin: &Arc<Origin>,
        (start, end): (u64, u64),
        units: impl Iterator<Item = (bytes::Bytes, u64)>,
    ) {
        let observed = SystemTime::now();
        let mut records: Vec<Record> = Vec::new();
        let mut bytes = 0;
        let mut chunk_start = start;
        let mut chunk_end = start;
        for (text, unit_end) in units {
            let len = text.len();
            if !records.is_empty()
                && (records.len() >= self.cfg.chunk_lines || bytes + len > self.cfg.chunk_bytes)
            {
                let full = std::mem::take(&mut records);
                self.send_chunk(key, origin, (chunk_start, chunk_end), full, bytes, observed);
                (chunk_start, bytes) = (chunk_end, 0);
            }
            chunk_end = unit_end;
            if len == 0 {
                continue;
            }
            match self.shaper.shape(text) {
                Ok(mut record) => {
                    bytes += len;
                    record.position = unit_end;
                    records.push(record);
                }
                Err(Dropped::Level | Dropped::Sample) => {}
            }
        }
        self.send_chunk(key, origin, (chunk_start, end), records, bytes, observed);
    }

    fn send_chunk(
        &mut self,
        key: u64,
        origin: &Arc<Origin>,
        (start, end): (u64, u64),
        records: Vec<Record>,
        bytes: usize,
        observed: SystemTime,
    ) {
        if records.is_empty() {
            // Only empty lines: nothing to ship, the range is done.
            let _ = self.out.committer.send(Msg::Ack { key, start, end });
            return;
        }
        let mut permit = self.budget.empty_permit();
        permit.resize(bytes + records.len() * RECORD_OVERHEAD + CHUNK_OVERHEAD);
        permit.hold_lines(records.len());
        let chunk = Arc::new(Chunk::new(
            records,
            bytes,
            observed,
            origin.clone(),
            (key, start, end),
            self.out.sinks.len(),
            self.out.committer.clone(),
            Some(permit),
        ));
        for s in &self.out.sinks {
            // A closed sink is shutting down: the chunk stays unconfirmed, to be read again.
            let _ = s.send(chunk.clone());
        }
    }

    /// Releases files gone from the globs (renamed away, deleted) once read to their end and
    /// idle; their generations stay as orphans for a while.
    fn release_gone(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.files.len() {
            let t = &self.files[i];
            let gone = !t.seen || t.deleted;
            let drained = t.framer.read_offset() >= t.size;
            if !(gone && drained && now.duration_since(t.last_growth) >= RELEASE_AFTER) {
                i += 1;
                continue;
            }
            // The writer is done with it: a last line without `\n` is complete.
            let mut t = self.files.swap_remove(i);
            let start = t.emitted;
            t.framer.finish(&mut self.lines);
            let (end, splits) = (t.framer.line_start(), t.framer.take_splits());
            if end > start {
                let permit = self.budget.empty_permit();
                t.emitted = self.emit(
                    t.key,
                    &t.origin,
                    (start, end),
                    t.joiner.as_mut(),
                    true,
                    splits,
                    permit,
                );
            }
            tracing::info!(source = %self.cfg.name, path = %t.path.display(), read = t.framer.line_start(), "released log file (gone from the paths, read to its end)");
            self.registry
                .forget_log_file(&self.cfg.name, &t.path.to_string_lossy());
            self.orphans.push(Orphan {
                kind: OrphanKind::Released,
                key: t.key,
                fp: t.fp,
                offset: t.framer.line_start(),
                dev: t.dev,
                ino: t.ino,
                path: t.path.to_string_lossy().into_owned(),
                committed: t.committed,
                since: now,
                unread: 0,
                origin: Some(t.origin),
            });
        }
    }

    /// Forgets orphans older than [`FORGET_AFTER`]; their checkpoint entries go once their
    /// lines are confirmed.
    fn expire_orphans(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.orphans.len() {
            if now.duration_since(self.orphans[i].since) < FORGET_AFTER {
                i += 1;
                continue;
            }
            let o = self.orphans.swap_remove(i);
            if o.unread > 0 {
                self.metrics.dropped_bytes[0].inc_by(o.unread);
                tracing::warn!(source = %self.cfg.name, path = %o.path, bytes = o.unread, "a truncated log file had unread bytes and no copy of it appeared; they are lost (add the rotated name, e.g. app.log*, to `paths` so Tandem finds the copy)");
            }
            let _ = self.out.committer.send(Msg::Release {
                key: o.key,
                end: o.offset,
            });
        }
    }

    fn read_error(&mut self, i: usize, e: &io::Error) {
        let t = &mut self.files[i];
        t.read_errors += 1;
        // Said once, then every 100th time: a failing disk should not flood the log.
        if t.read_errors % 100 == 1 {
            tracing::warn!(source = %self.cfg.name, path = %t.path.display(), error = %e, "cannot read log file; trying again");
        }
    }

    /// Forces the orphan expiry clock forward (tests).
    #[cfg(test)]
    pub(crate) fn age_orphans(&mut self, by: Duration) {
        for o in &mut self.orphans {
            o.since = o.since.checked_sub(by).unwrap_or(o.since);
        }
        for t in &mut self.files {
            t.last_growth = t.last_growth.checked_sub(by).unwrap_or(t.last_growth);
        }
    }
}

/// The identity a file's records are named within (their Elasticsearch `_id`s, with their
/// offsets): its source, its device, inode and creation time, and its first line (up to
/// [`FINGERPRINT_BYTES`]), read once the file has a complete line. All of them stay the same for
/// one file across restarts and renames; two files never share them — not two files alive at
/// once (device and inode), nor a file and a later one on a reused inode (creation time, and
/// the first line where the file system keeps no creation time), even when both begin with the
/// same header line. A copytruncate copy is a new file: lines replayed in it get new names. 0
/// (no stable names) when it cannot be read.
fn file_identity(source: &str, file: &File) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = file.metadata() else {
        return 0;
    };
    let born = meta
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let mut buf = vec![0u8; FINGERPRINT_BYTES];
    let Ok(n) = read_prefix(file, &mut buf) else {
        return 0;
    };
    let first = match memchr::memchr(b'\n', &buf[..n]) {
        Some(i) => &buf[..=i],
        None => &buf[..n],
    };
    if first.is_empty() {
        return 0;
    }
    let mut b = Vec::with_capacity(source.len() + first.len() + 38);
    b.extend_from_slice(b"file\0");
    b.extend_from_slice(source.as_bytes());
    b.push(0);
    b.extend_from_slice(&meta.dev().to_le_bytes());
    b.extend_from_slice(&meta.ino().to_le_bytes());
    b.extend_from_slice(&born.to_le_bytes());
    b.extend_from_slice(first);
    xxhash_rust::xxh3::xxh3_64(&b).max(1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod identity_tests {
    use std::io::Write;
    use std::path::Path;

    use super::*;

    /// A file keeps its identity when opened again (a restart) and renamed; another file that
    /// begins with the same line, or another source, gets another one.
    #[test]
    fn file_identities() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.log");
        let b = dir.path().join("b.log");
        std::fs::write(&a, "=== started ===\nline 1\n").unwrap();
        std::fs::write(&b, "=== started ===\nline 1\n").unwrap();
        let id = |p: &Path, src: &str| file_identity(src, &File::open(p).unwrap());
        let first = id(&a, "app");
        assert_ne!(first, 0);
        assert_eq!(id(&a, "app"), first, "opened again");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&a)
            .unwrap()
            .write_all(b"line 2\n")
            .unwrap();
        assert_eq!(id(&a, "app"), first, "grown");
        let moved = dir.path().join("a.log.1");
        std::fs::rename(&a, &moved).unwrap();
        assert_eq!(id(&moved, "app"), first, "renamed");
        assert_ne!(id(&b, "app"), first, "same first line, another file");
        assert_ne!(id(&moved, "other"), first, "another source");
        let empty = dir.path().join("e.log");
        std::fs::write(&empty, "").unwrap();
        assert_eq!(id(&empty, "app"), 0);
    }
}
