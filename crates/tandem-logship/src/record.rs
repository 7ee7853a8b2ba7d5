//! Records and chunks: what flows from sources to sinks.
//!
//! A [`Record`] is one log line after parsing: a message, structured fields, and the event time
//! and level when a parser found them. It is built to take the parsers still to come (logfmt,
//! regex captures, multi-line joining, timestamp and level extraction, trace ids) without
//! changing shape: those fill `fields`, `timestamp` and `level`.
//!
//! A [`Chunk`] is the unit of acknowledgement: the records of one file between two offsets,
//! shared (`Arc`) by every sink that receives it. When the last of them confirms it, the chunk
//! tells the committer that its byte range may be checkpointed; when the last reference goes,
//! its bytes go back to the memory budget.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::budget::BudgetPermit;
use crate::committer::Msg;

/// One log record.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Record {
    /// The message: the whole line (plain), or the message member of a structured line. May
    /// hold invalid UTF-8; encoders replace it.
    pub message: Bytes,
    /// Structured fields, when the parser found any.
    pub fields: Option<Box<Map<String, Value>>>,
    /// The event time, when a parser extracted one (else the time the line was read is used).
    pub timestamp: Option<SystemTime>,
    /// The severity, when a parser extracted one.
    pub level: Option<Level>,
    /// The W3C trace id (32 lower-case hex digits), when one was found: logs join traces.
    pub trace_id: Option<Box<str>>,
    /// The span id (16 lower-case hex digits), when one was found.
    pub span_id: Option<Box<str>>,
    /// The parser could not parse the line: `message` is the whole line.
    pub parse_error: bool,
    /// A timestamp rule is configured but found no valid time: the read time is used.
    pub timestamp_fallback: bool,
    /// Where the record is within its origin, stable across retries, restarts and replays:
    /// the offset just past its last line in the file, or in a stream source's disk buffer;
    /// 0 when it has none. With [`Origin::identity`] it names the record (Elasticsearch `_id`).
    pub position: u64,
}

/// A log severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Finest detail.
    Trace,
    /// Debugging.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected, handled.
    Warn,
    /// An operation failed.
    Error,
    /// The process cannot go on.
    Fatal,
}

impl Level {
    /// The level a name stands for, without case: the usual names and abbreviations
    /// (`WARNING`, `ERR`, `CRITICAL`, `SEVERE`, `FINE`, ...) and the numeric levels of pino and
    /// bunyan (10 to 60).
    pub fn from_name(name: &str) -> Option<Level> {
        let n = name.trim();
        if n.len() > 11 {
            return None;
        }
        let mut buf = [0u8; 11];
        let b = &mut buf[..n.len()];
        b.copy_from_slice(n.as_bytes());
        b.make_ascii_lowercase();
        Some(match &*b {
            b"trace" | b"trc" | b"finest" | b"finer" | b"10" => Level::Trace,
            b"debug" | b"dbg" | b"fine" | b"config" | b"verbose" | b"20" => Level::Debug,
            b"info" | b"inf" | b"information" | b"informational" | b"notice" | b"30" => Level::Info,
            b"warn" | b"warning" | b"wrn" | b"40" => Level::Warn,
            b"error" | b"err" | b"eror" | b"severe" | b"50" => Level::Error,
            b"fatal" | b"crit" | b"critical" | b"alert" | b"emerg" | b"emergency" | b"panic"
            | b"60" => Level::Fatal,
            _ => return None,
        })
    }

    /// Lower-case name, as encoders write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
            Level::Fatal => "fatal",
        }
    }
}

/// Where a chunk's records come from: the same for every chunk of one file.
#[derive(Clone, Debug)]
pub struct Origin {
    /// The source's name.
    pub source: Arc<str>,
    /// The path the file had when Tandem found it.
    pub file: String,
    /// Labels: `logs.labels`, then the source's own (overriding by name), `host` included.
    pub labels: Arc<[(String, String)]>,
    /// `"file":...,"labels":{...}` rendered once as JSON, for NDJSON encoders.
    pub(crate) json_tail: String,
    /// What the records' positions are positions in, stable across restarts (a hash of the
    /// source and the file's device, inode, creation time and first line, or of the source
    /// and its disk buffer); 0:
    /// records have no stable name.
    pub identity: u64,
}

impl Origin {
    /// An origin; renders its JSON members once.
    pub fn new(source: Arc<str>, file: String, labels: Arc<[(String, String)]>) -> Origin {
        let mut tail = String::from("\"file\":");
        push_json_str(&mut tail, &file);
        tail.push_str(",\"labels\":{");
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                tail.push(',');
            }
            push_json_str(&mut tail, k);
            tail.push(':');
            push_json_str(&mut tail, v);
        }
        tail.push('}');
        Origin {
            source,
            file,
            labels,
            json_tail: tail,
            identity: 0,
        }
    }

    /// The same origin, its records named within `identity` (see [`Origin::identity`]).
    pub fn with_identity(mut self, identity: u64) -> Origin {
        self.identity = identity;
        self
    }

    /// A stable name for the record at `position` of this origin; None without one.
    pub fn record_id(&self, position: u64) -> Option<u64> {
        if self.identity == 0 || position == 0 {
            return None;
        }
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.identity.to_le_bytes());
        b[8..].copy_from_slice(&position.to_le_bytes());
        Some(xxhash_rust::xxh3::xxh3_64(&b))
    }
}

fn push_json_str(out: &mut String, s: &str) {
    // Serializing a &str into a String cannot fail.
    if let Ok(q) = serde_json::to_string(s) {
        out.push_str(&q);
    }
}

/// The records of one file between two offsets.
#[derive(Debug)]
pub struct Chunk {
    /// The records, in file order.
    pub records: Vec<Record>,
    /// Bytes of the lines these records came from.
    pub bytes: usize,
    /// When the lines were read.
    pub observed: SystemTime,
    /// Where they come from.
    pub origin: Arc<Origin>,
    ack: Ack,
    _permit: Option<BudgetPermit>,
}

#[derive(Debug)]
struct Ack {
    key: u64,
    start: u64,
    end: u64,
    pending: AtomicUsize,
    tx: Sender<Msg>,
}

impl Chunk {
    /// A chunk covering `[start, end)` of generation `key`, to be confirmed by `sinks` sinks.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        records: Vec<Record>,
        bytes: usize,
        observed: SystemTime,
        origin: Arc<Origin>,
        (key, start, end): (u64, u64, u64),
        sinks: usize,
        tx: Sender<Msg>,
        permit: Option<BudgetPermit>,
    ) -> Chunk {
        Chunk {
            records,
            bytes,
            observed,
            origin,
            ack: Ack {
                key,
                start,
                end,
                pending: AtomicUsize::new(sinks),
                tx,
            },
            _permit: permit,
        }
    }

    /// The byte range `(generation, start, end)` this chunk covers.
    pub fn range(&self) -> (u64, u64, u64) {
        (self.ack.key, self.ack.start, self.ack.end)
    }

    /// A copy of `records` of this chunk, for encoding only (a sink splitting a batch its
    /// receiver found too large): confirming it does nothing; the whole chunk is confirmed.
    pub(crate) fn part(&self, records: std::ops::Range<usize>) -> Chunk {
        let records = self.records.get(records).unwrap_or_default().to_vec();
        let bytes = records.iter().map(|r| r.message.len()).sum();
        Chunk::new(
            records,
            bytes,
            self.observed,
            self.origin.clone(),
            self.range(),
            0,
            std::sync::mpsc::channel().0,
            None,
        )
    }

    /// One sink confirmed delivery; the last confirmation acknowledges the range.
    pub fn confirm(&self) {
        if let Some(ack) = self.take_ack() {
            // The committer outlives every chunk; a send error means it is gone, at exit.
            let _ = self.ack.tx.send(Msg::Ack {
                key: ack.0,
                start: ack.1,
                end: ack.2,
            });
        }
    }

    /// One sink confirmed delivery: the range to acknowledge when it was the last.
    fn take_ack(&self) -> Option<(u64, u64, u64)> {
        (self.ack.pending.fetch_sub(1, Ordering::AcqRel) == 1).then(|| self.range())
    }
}

/// One sink confirmed every chunk of `batch`: the ranges they complete go to their source's
/// committer (or stream buffer) in one message per source, each with a barrier. Returns the
/// barriers' answers: each comes once that source's confirmations are in its checkpoint (or
/// at once if it is gone). Chunks of one source share one channel, chunks of two sources never
/// do (a file source's go to the committer, a stream source's to its own buffer).
pub(crate) fn confirm_batch(batch: &[Arc<Chunk>]) -> Vec<tokio::sync::oneshot::Receiver<()>> {
    // Per source: its first chunk (the channel), the ranges to acknowledge.
    type Range = (u64, u64, u64);
    let mut groups: Vec<(&Chunk, Vec<Range>)> = Vec::new();
    for c in batch {
        let i = match groups
            .iter()
            .position(|(first, _)| first.origin.source == c.origin.source)
        {
            Some(i) => i,
            None => {
                groups.push((c, Vec::new()));
                groups.len() - 1
            }
        };
        if let Some(ack) = c.take_ack() {
            groups[i].1.push(ack);
        }
    }
    groups
        .into_iter()
        .map(|(first, acks)| {
            let (reply, done) = tokio::sync::oneshot::channel();
            let _ = first.ack.tx.send(Msg::Confirmed { acks, reply });
            done
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod confirm_tests {
    use super::*;

    fn chunk(source: &str, range: (u64, u64, u64), sinks: usize, tx: &Sender<Msg>) -> Arc<Chunk> {
        let origin = Arc::new(Origin::new(source.into(), "/f".into(), Arc::from(vec![])));
        Arc::new(Chunk::new(
            vec![Record::default()],
            1,
            SystemTime::now(),
            origin,
            range,
            sinks,
            tx.clone(),
            None,
        ))
    }

    /// A batch's confirmations reach each source's channel in one message with its barrier;
    /// a chunk another sink has yet to confirm is not acknowledged, but its source still gets
    /// the barrier.
    #[test]
    fn one_message_per_source_and_delivery() {
        let (files, files_rx) = std::sync::mpsc::channel();
        let (stream, stream_rx) = std::sync::mpsc::channel();
        let batch = vec![
            chunk("app", (1, 0, 10), 1, &files),
            chunk("stdio", (9, 0, 5), 1, &stream),
            chunk("app", (1, 10, 20), 1, &files),
            chunk("app", (2, 0, 7), 2, &files),
            chunk("stdio", (9, 5, 8), 2, &stream),
        ];
        let replies = confirm_batch(&batch);
        assert_eq!(replies.len(), 2);
        let take = |rx: &std::sync::mpsc::Receiver<Msg>| {
            let msgs: Vec<Msg> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
            assert_eq!(msgs.len(), 1, "{msgs:?}");
            match msgs.into_iter().next().unwrap() {
                Msg::Confirmed { acks, reply } => {
                    reply.send(()).unwrap();
                    acks
                }
                m => panic!("{m:?}"),
            }
        };
        assert_eq!(take(&files_rx), [(1, 0, 10), (1, 10, 20)]);
        assert_eq!(take(&stream_rx), [(9, 0, 5)]);
        for r in replies {
            r.blocking_recv().unwrap();
        }
        // The second sink confirms the last two: now they are acknowledged.
        let _replies = confirm_batch(&batch[3..]);
        assert_eq!(take(&files_rx), [(2, 0, 7)]);
        assert_eq!(take(&stream_rx), [(9, 5, 8)]);
    }
}
