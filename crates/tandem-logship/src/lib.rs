//! Log shipping: tail the app's log files, parse and enrich their lines, ship them to sinks, and
//! never lose or silently replay them.
//!
//! ```text
//!  files --(thread per source: glob scan, fstat/fingerprint, pread, frame, parse)--> chunks
//!  chunks --(Arc, one unbounded queue per sink)--> sink driver: batch -> encode -> send, retry
//!  sink confirms a batch --> each chunk: last sink to confirm --> committer: ack [start, end)
//!  committer (thread): contiguous prefix per file --> checkpoints.journal (one pwrite per
//!    delivery) and checkpoints.json (temp, fsync, rename: every sync_interval)
//! ```
//!
//! The guarantee, end to end: a file offset is checkpointed only after every sink that received
//! the lines before it confirmed them (HTTP 2xx, a completed write). After a crash, reading
//! resumes at the checkpoint: nothing is lost, and what is shipped twice is bounded by the
//! batches in flight (one per sink with the default `concurrency: 1`), because every
//! confirmation is written to the checkpoint journal before the sink's next delivery. Files are known by device, inode and a fingerprint of
//! their first bytes, so rename rotation and copytruncate neither lose nor duplicate lines
//! (within the limits in `source::file`). Memory is bounded by one budget ([`budget`]): when
//! sinks fall behind, sources pause and the files are the buffer.
//!
//! # Layout
//! - [`framer`]: bytes -> lines with offsets; partial lines held; long lines cut.
//! - [`identity`]: content fingerprints.
//! - [`parse`], [`record`]: lines -> records; chunks (the unit of acknowledgement).
//! - [`multiline`]: lines -> multi-line records (a pure state machine; offsets for the
//!   checkpoint never inside a record).
//! - [`shape`]: extraction (time, level, trace ids), drop/sample by level, redaction.
//! - [`source`]: the file tailer (discovery, rotation, truncation, reading); stream sources
//!   (the app's stdout/stderr, the access log) with their disk buffer ([`spill`]).
//! - [`budget`]: the memory budget.
//! - [`sink`]: the sink trait, the shared driver (batching, retries, confirmation), and the
//!   http (NDJSON), Loki, Elasticsearch, OTLP, file and console sinks.
//! - [`ack`], `committer`, [`checkpoint`]: confirmations -> contiguous offsets -> an atomically
//!   written checkpoint file, strictly read back.
//! - [`status`]: what `tandem logs status` and `GET /logs` show.
//! - this file: [`LogShipper`], which starts and stops all of it.
//!
//! What is not built yet: docs/logship.md, "Status".

pub mod ack;
pub mod budget;
pub mod checkpoint;
mod committer;
pub use committer::CheckpointView;
pub mod framer;
pub mod identity;
pub mod multiline;
pub mod parse;
pub mod record;
pub mod shape;
pub mod sink;
pub mod source;
pub mod spill;
pub mod status;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tandem_config::{LogSinkKind, LogSourceKind, Logs};
use tandem_telemetry::Metrics;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::budget::Budget;
use crate::checkpoint::{CheckpointError, Entry, Store};
use crate::committer::Committer;
use crate::sink::file::{ConsoleSink, FileSink};
use crate::sink::http::HttpSink;
use crate::sink::{DriverSettings, Sink};
use crate::source::file::{FileTailer, Outputs, TailerConfig};
use crate::source::stdio::StdioCapture;
use crate::source::stream::{StreamConfig, StreamInput};
use crate::status::StatusBoard;

/// Why log shipping could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The checkpoint directory or file cannot be used.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A file sink's file cannot be opened.
    #[error(
        "cannot open {path} for log sink `{sink}`: {source}; create its directory or fix its \
         permissions"
    )]
    SinkFile {
        /// The sink.
        sink: String,
        /// Its file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A stdio or access_log source's disk buffer cannot be opened.
    #[error(
        "cannot open the disk buffer {dir} of log source `{source_name}`: {source}; fix the \
         permissions of `logs.checkpoint.dir`"
    )]
    DiskBuffer {
        /// The source.
        source_name: String,
        /// Its directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An HTTP sink's TLS files cannot be used.
    #[error("log sink `{sink}`: {source}")]
    SinkTls {
        /// The sink.
        sink: String,
        /// Why (names the file and the fix).
        #[source]
        source: sink::tls::TlsError,
    },
    /// A thread could not be started.
    #[error("cannot start the thread of {what}: {source}")]
    Thread {
        /// Which.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Longest wait at shutdown for the app's stdout/stderr to be read to their end.
const STDIO_CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Takes the access log's lines into the `access_log` source (`tandem_telemetry::access_log::Tap`).
pub type AccessLogTap = Box<dyn Fn(&[u8]) + Send + Sync>;

/// Running log shipping: sources, sinks and the committer.
pub struct LogShipper {
    stop: Arc<AtomicBool>,
    hard_stop: CancellationToken,
    sources: Vec<JoinHandle<()>>,
    sinks: JoinSet<()>,
    committer: Option<JoinHandle<()>>,
    stdio: Option<StdioCapture>,
    access_log: Option<StreamInput>,
    status: StatusBoard,
}

impl LogShipper {
    /// Opens the checkpoint (refusing a corrupt one), opens the sinks, and starts a thread per
    /// source, a task per sink and the committer thread. Must be called inside a Tokio
    /// runtime.
    pub fn start(cfg: &Logs, metrics: Arc<Metrics>) -> Result<LogShipper, StartError> {
        let (store, entries) = Store::open(&cfg.checkpoint_dir)?;
        // Generation keys are unique per run; checkpointed generations get theirs first.
        let keys = Arc::new(AtomicU64::new(1));
        let mut per_source: HashMap<String, Vec<(u64, Entry, Arc<AtomicU64>)>> = HashMap::new();
        let mut loaded = Vec::with_capacity(entries.len());
        let mut dropped: Vec<String> = Vec::new();
        for e in entries {
            if !cfg.sources.iter().any(|s| s.name == e.source) {
                if !dropped.contains(&e.source) {
                    dropped.push(e.source.clone());
                }
                continue;
            }
            let key = keys.fetch_add(1, Ordering::Relaxed);
            let committed = Arc::new(AtomicU64::new(e.offset));
            per_source.entry(e.source.clone()).or_default().push((
                key,
                e.clone(),
                committed.clone(),
            ));
            loaded.push((key, e, committed));
        }
        for name in dropped {
            tracing::warn!(source = %name, "the log checkpoint has files of a source that is no longer configured; forgetting them");
        }

        // Sinks are opened before anything starts, so a bad one stops the start cleanly.
        let mut built: Vec<(Arc<dyn Sink>, &tandem_config::LogSink)> = Vec::new();
        for s in &cfg.sinks {
            let sink: Arc<dyn Sink> = match &s.kind {
                LogSinkKind::Http(h) => {
                    let sink = Arc::new(
                        HttpSink::new(&s.name, h, metrics.log_sink(&s.name)).map_err(|source| {
                            StartError::SinkTls {
                                sink: s.name.clone(),
                                source,
                            }
                        })?,
                    );
                    // Certificate rotation without a restart.
                    sink.spawn_tls_watcher(sink::http::TLS_RELOAD_INTERVAL);
                    sink
                }
                LogSinkKind::File {
                    path,
                    rotate,
                    format,
                } => Arc::new(FileSink::open(path, *rotate, *format).map_err(|source| {
                    StartError::SinkFile {
                        sink: s.name.clone(),
                        path: path.clone(),
                        source,
                    }
                })?),
                LogSinkKind::Console { format } => Arc::new(ConsoleSink { format: *format }),
            };
            built.push((sink, s));
        }

        let (ctl_tx, ctl_rx) = std::sync::mpsc::channel();
        let checkpoint_state = Arc::new(committer::CheckpointState::default());
        let committer = Committer::new(
            store,
            loaded,
            cfg.sync_interval,
            metrics.log_checkpoint_errors(),
        )
        .with_state(metrics.log_checkpoint_age(), checkpoint_state.clone());
        let budget = Budget::new(cfg.memory_budget, metrics.log_budget_used());
        let mut status = StatusBoard::new(budget.clone(), cfg.memory_budget, checkpoint_state);
        let committer = std::thread::Builder::new()
            .name("logs-checkpoint".into())
            .spawn(move || committer.run(ctl_rx))
            .map_err(|source| StartError::Thread {
                what: "the log checkpoint".into(),
                source,
            })?;

        let hard_stop = CancellationToken::new();
        let mut shipper = LogShipper {
            stop: Arc::new(AtomicBool::new(false)),
            hard_stop: hard_stop.clone(),
            sources: Vec::new(),
            sinks: JoinSet::new(),
            committer: Some(committer),
            stdio: None,
            access_log: None,
            status: StatusBoard::new(budget.clone(), 0, Arc::default()),
        };
        let mut inputs: Vec<(&[String], tokio::sync::mpsc::UnboundedSender<_>)> = Vec::new();
        for (sink, s) in built {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            inputs.push((&s.sources, tx));
            let state = status.add_sink(&s.name);
            shipper.sinks.spawn(sink::drive_with_state(
                sink,
                rx,
                DriverSettings {
                    name: s.name.as_str().into(),
                    batch: s.batch.clone(),
                    concurrency: s.concurrency,
                    backoff: s.backoff,
                    max_backoff: s.max_backoff,
                },
                metrics.log_sink(&s.name),
                hard_stop.clone(),
                state,
            ));
        }

        let host = hostname();
        for src in &cfg.sources {
            let receiving = || cfg.sinks.iter().filter(|k| k.sources.contains(&src.name));
            let chunk_lines = receiving().map(|k| k.batch.max_lines).min().unwrap_or(1000);
            let chunk_bytes = receiving()
                .map(|k| k.batch.max_bytes)
                .min()
                .unwrap_or(1 << 20);
            let sinks: Vec<_> = inputs
                .iter()
                .filter(|(names, _)| names.contains(&src.name))
                .map(|(_, tx)| tx.clone())
                .collect();
            let f = match &src.kind {
                LogSourceKind::File(f) => f,
                LogSourceKind::Stdio(_) | LogSourceKind::AccessLog(_) => {
                    let (disk_limit, kind) = match &src.kind {
                        LogSourceKind::Stdio(s) => (s.buffer.disk_buffer, "stdio"),
                        LogSourceKind::AccessLog(b) => (b.disk_buffer, "access_log"),
                        LogSourceKind::File(_) => (0, "file"),
                    };
                    let dir = cfg.checkpoint_dir.join("buffer").join(&src.name);
                    let (input, pump) = source::stream::open(
                        StreamConfig {
                            name: src.name.as_str().into(),
                            parser: src.parser.clone(),
                            shape: src.shape.clone(),
                            multiline: src.multiline.clone(),
                            labels: labels(&cfg.labels, &src.labels, host.as_deref()),
                            chunk_lines,
                            chunk_bytes,
                            max_line: src.max_line_bytes,
                            stream_field: kind == "stdio",
                            dir: dir.clone(),
                            disk_limit,
                        },
                        sinks,
                        budget.clone(),
                        metrics.log_source(&src.name),
                        metrics.log_stream_source(&src.name),
                        hard_stop.clone(),
                    )
                    .map_err(|source| StartError::DiskBuffer {
                        source_name: src.name.clone(),
                        dir,
                        source,
                    })?;
                    let handle = source::spawn_pump(pump, &src.name, shipper.stop.clone())
                        .map_err(|source| StartError::Thread {
                            what: format!("log source `{}`", src.name),
                            source,
                        })?;
                    shipper.sources.push(handle);
                    status.add_stream(kind, input.clone());
                    match &src.kind {
                        LogSourceKind::Stdio(s) => {
                            shipper.stdio = Some(StdioCapture::new(input, s.stdout, s.stderr));
                        }
                        _ => shipper.access_log = Some(input),
                    }
                    continue;
                }
            };
            let out = Outputs {
                sinks,
                committer: ctl_tx.clone(),
            };
            // A file source reads no further ahead than its sinks take in their next
            // deliveries (two rounds of `concurrency` batches): more would only sit in memory.
            let (window_bytes, window_lines) = receiving()
                .map(|k| file_window(k.batch.max_bytes, k.batch.max_lines, k.concurrency))
                .fold((0, 0), |(b, l), (kb, kl)| (b.max(kb), l.max(kl)));
            let window = budget.window(window_bytes, window_lines);
            let file_rows = status.add_files(&src.name);
            let tailer = FileTailer::new(
                TailerConfig {
                    name: src.name.as_str().into(),
                    patterns: f.paths.clone(),
                    start_at: f.start_at,
                    parser: src.parser.clone(),
                    multiline: src.multiline.clone(),
                    shape: src.shape.clone(),
                    max_line: src.max_line_bytes,
                    labels: labels(&cfg.labels, &src.labels, host.as_deref()),
                    poll_interval: f.poll_interval,
                    scan_interval: f.scan_interval,
                    chunk_lines,
                    chunk_bytes,
                },
                per_source.remove(&src.name).unwrap_or_default(),
                keys.clone(),
                out,
                window,
                metrics.clone(),
            )
            .with_status(file_rows);
            let handle =
                source::spawn(tailer, &src.name, shipper.stop.clone()).map_err(|source| {
                    StartError::Thread {
                        what: format!("log source `{}`", src.name),
                        source,
                    }
                })?;
            shipper.sources.push(handle);
        }
        shipper.status = status;
        tracing::info!(
            sources = cfg.sources.len(),
            sinks = cfg.sinks.len(),
            checkpoint = %cfg.checkpoint_dir.display(),
            "log shipping started"
        );
        Ok(shipper)
    }

    /// The capture of the supervised app's stdout/stderr, when a `stdio` source is configured:
    /// give its pipes to the app.
    pub fn stdio(&self) -> Option<StdioCapture> {
        self.stdio.clone()
    }

    /// The tap for the access log's writer, when an `access_log` source is configured: every
    /// line it is handed goes into the pipeline (memory, then disk buffer, then dropped and
    /// counted), without ever blocking.
    pub fn access_log_tap(&self) -> Option<AccessLogTap> {
        let input = self.access_log.clone()?;
        Some(Box::new(move |line: &[u8]| {
            let mut framer = framer::LineFramer::new(0, input.max_line());
            let mut lines = Vec::with_capacity(1);
            framer.push(&bytes::Bytes::copy_from_slice(line), &mut lines);
            framer.finish(&mut lines);
            input.push(source::stream::Stream::AccessLog, &lines);
        }))
    }

    /// What `tandem logs status` and `GET /logs` show.
    pub fn status(&self) -> StatusBoard {
        self.status.clone()
    }

    /// Stops reading, lets the sinks deliver what they hold for up to `flush_timeout`, then
    /// writes the final checkpoint. What was not delivered is read again on the next start.
    pub async fn shutdown(mut self, flush_timeout: Duration) {
        // The app has exited: its last bytes are passed through and taken in (through memory
        // when there is room) before the sources stop. Bounded: a child of the app may hold
        // the pipes open.
        if let Some(c) = &self.stdio {
            if !c.wait_closed(STDIO_CLOSE_WAIT).await {
                tracing::warn!("the app's stdout/stderr are still open (a child process holds them?); not waiting for them");
            }
        }
        self.stop.store(true, Ordering::Release);
        for h in &self.sources {
            h.thread().unpark();
        }
        let sources = std::mem::take(&mut self.sources);
        let join_sources = tokio::task::spawn_blocking(move || {
            for h in sources {
                if h.join().is_err() {
                    tracing::error!("a log source thread panicked");
                }
            }
        });
        let mut sinks = std::mem::take(&mut self.sinks);
        let flushed = tokio::time::timeout(flush_timeout, async {
            while sinks.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        if !flushed {
            tracing::warn!(
                flush_timeout = ?flush_timeout,
                "log sinks did not deliver everything in time; the rest is read again on the next start"
            );
            self.hard_stop.cancel();
            while sinks.join_next().await.is_some() {}
        }
        let _ = join_sources.await;
        if let Some(c) = self.committer.take() {
            let _ = tokio::task::spawn_blocking(move || c.join()).await;
        }
        tracing::info!(flushed, "log shipping stopped; checkpoint written");
    }
}

impl Drop for LogShipper {
    /// Dropped without [`LogShipper::shutdown`] (an aborted start): stop everything now.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.hard_stop.cancel();
        for h in &self.sources {
            h.thread().unpark();
        }
    }
}

/// `logs.labels`, then the source's labels (overriding by name), then `host` unless given.
fn labels(
    global: &[(String, String)],
    own: &[(String, String)],
    host: Option<&str>,
) -> Arc<[(String, String)]> {
    let mut out: Vec<(String, String)> = global.to_vec();
    for (k, v) in own {
        match out.iter_mut().find(|(name, _)| name == k) {
            Some(slot) => slot.1 = v.clone(),
            None => out.push((k.clone(), v.clone())),
        }
    }
    if let Some(h) = host {
        if !out.iter().any(|(k, _)| k == "host") {
            out.push(("host".into(), h.to_owned()));
        }
    }
    out.into()
}

fn hostname() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .map(|h| h.to_string_lossy().into_owned())
        .filter(|h| !h.is_empty())
}

/// The window of a file source for one of its sinks: what that sink takes in two rounds of
/// `concurrency` batches, in budget bytes (line bytes plus each record's cost) and lines.
pub fn file_window(max_bytes: usize, max_lines: usize, concurrency: usize) -> (usize, usize) {
    let rounds = 2 * concurrency.max(1);
    let batch_bytes = max_bytes
        .saturating_add(max_lines.saturating_mul(source::file::RECORD_OVERHEAD))
        .saturating_add(source::file::READ_SIZE);
    (
        rounds.saturating_mul(batch_bytes),
        rounds.saturating_mul(max_lines),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file source's window is two rounds of `concurrency` batches of its sink, each batch
    /// charged as the budget charges it (lines plus each record's cost, plus one read).
    #[test]
    fn file_window_is_two_rounds_of_deliveries() {
        let batch = (1 << 20) + 1000 * source::file::RECORD_OVERHEAD + source::file::READ_SIZE;
        assert_eq!(file_window(1 << 20, 1000, 1), (2 * batch, 2000));
        assert_eq!(file_window(1 << 20, 1000, 4), (8 * batch, 8000));
        assert_eq!(file_window(1 << 20, 1000, 0), (2 * batch, 2000));
        assert_eq!(file_window(usize::MAX, usize::MAX, 64).1, usize::MAX);
    }

    #[test]
    fn labels_merge_in_order() {
        let g = vec![
            ("service".into(), "a".into()),
            ("env".into(), "prod".into()),
        ];
        let own = vec![("env".into(), "canary".into()), ("team".into(), "x".into())];
        let l = labels(&g, &own, Some("h1"));
        let names: Vec<(&str, &str)> = l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            names,
            [
                ("service", "a"),
                ("env", "canary"),
                ("team", "x"),
                ("host", "h1")
            ]
        );
        let own = vec![("host".into(), "mine".into())];
        assert_eq!(labels(&[], &own, Some("h1")).len(), 1);
    }
}
