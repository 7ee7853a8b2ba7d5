//! The committer: turns sink confirmations into checkpoints.
//!
//! One thread owns the checkpoint [`Store`] and an [`AckTracker`] per file generation. Sources
//! tell it about generations ([`Msg::Register`], [`Msg::Update`], [`Msg::Release`]); a chunk
//! sends [`Msg::Ack`] once the last sink that received it confirmed it. After each batch of
//! messages that moved an offset, the offsets go to the checkpoint journal (one write, not
//! fsynced), so a crash of the process replays only what was in flight; every `sync_interval`
//! the checkpoint file itself is replaced (temp file, fsync, rename). The channel closes when
//! every source and every chunk is gone; the committer then writes a last, fsynced checkpoint
//! file and ends.
//!
//! Messages from one generation arrive in order (a generation is registered before any of its
//! chunks exists), so an ack never precedes its registration.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tandem_telemetry::logs::{Counter, Gauge};

use crate::ack::AckTracker;
use crate::checkpoint::{Entry, Store};
use crate::identity::Fingerprint;

/// What sources and chunks tell the committer.
#[derive(Debug)]
pub(crate) enum Msg {
    /// A file generation starts (or a checkpointed one is found again) at `entry.offset`.
    Register {
        key: u64,
        entry: Entry,
        committed: Arc<AtomicU64>,
    },
    /// A generation's file moved or grew its fingerprint.
    Update {
        key: u64,
        path: Option<String>,
        dev_ino: Option<(u64, u64)>,
        fingerprint: Option<Fingerprint>,
    },
    /// Nothing past `end` will be read from this generation: forget it once `end` is confirmed.
    Release { key: u64, end: u64 },
    /// Every sink confirmed `[start, end)` of generation `key`.
    Ack { key: u64, start: u64, end: u64 },
    /// A delivery's confirmations (see [`crate::record::confirm_batch`]), and a barrier:
    /// `reply` is answered once they (and everything sent before) are in the checkpoint. A
    /// sink waits for it before its next delivery, so a crash replays at most the deliveries
    /// in flight. One message per delivery: one wake-up and one write, where an ack per chunk
    /// then a barrier woke the committer, and made it write, up to once per message.
    Confirmed {
        /// `(key, start, end)` per chunk whose last sink confirmed it.
        acks: Vec<(u64, u64, u64)>,
        /// Answered once they are in the checkpoint.
        reply: tokio::sync::oneshot::Sender<()>,
    },
}

struct Generation {
    entry: Entry,
    tracker: AckTracker,
    committed: Arc<AtomicU64>,
    release_at: Option<u64>,
}

/// The committer's state (runs on its own thread, see [`Committer::run`]).
pub(crate) struct Committer {
    store: Store,
    generations: BTreeMap<u64, Generation>,
    sync_interval: Duration,
    last_sync: Instant,
    unsynced: bool,
    failing: bool,
    errors: Counter,
    entries: Vec<Entry>,
    barriers: Vec<tokio::sync::oneshot::Sender<()>>,
    /// Since when the file lacks a confirmation (None: it holds every one).
    dirty_since: Option<Instant>,
    /// The first change since the checkpoint file was last replaced (None: it holds them
    /// all): what the file lacks when replacing it fails.
    unsynced_since: Option<(Instant, SystemTime)>,
    age: Gauge,
    state: Arc<CheckpointState>,
}

/// What the committer keeps up to date for `/logs`.
#[derive(Debug, Default)]
pub(crate) struct CheckpointState {
    inner: Mutex<CheckpointInfo>,
}

#[derive(Debug, Default)]
struct CheckpointInfo {
    path: String,
    last_write: Option<SystemTime>,
    dirty_since: Option<SystemTime>,
    failing: bool,
    last_error: Option<(String, SystemTime)>,
}

/// The checkpoint's state for `/logs`: where, how old, whether writes fail.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CheckpointView {
    /// The checkpoint file.
    pub path: String,
    /// The last successful write (RFC 3339).
    pub last_write_at: Option<String>,
    /// 0 when the file holds every confirmation, else seconds since the oldest it lacks.
    pub age_seconds: u64,
    /// Writes fail now.
    pub failing: bool,
    /// The last failed write's error, and when.
    pub last_error: Option<String>,
    /// See `last_error`.
    pub last_error_at: Option<String>,
}

impl CheckpointState {
    fn lock(&self) -> std::sync::MutexGuard<'_, CheckpointInfo> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A snapshot.
    pub(crate) fn view(&self) -> CheckpointView {
        let fmt = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
        let i = self.lock();
        CheckpointView {
            path: i.path.clone(),
            last_write_at: i.last_write.map(fmt),
            age_seconds: i
                .dirty_since
                .and_then(|t| t.elapsed().ok())
                .map_or(0, |d| d.as_secs()),
            failing: i.failing,
            last_error: i.last_error.as_ref().map(|e| e.0.clone()),
            last_error_at: i.last_error.as_ref().map(|e| fmt(e.1)),
        }
    }
}

impl Committer {
    /// A committer over `store`, starting with the checkpointed generations `loaded`.
    pub(crate) fn new(
        store: Store,
        loaded: Vec<(u64, Entry, Arc<AtomicU64>)>,
        sync_interval: Duration,
        errors: Counter,
    ) -> Committer {
        let generations = loaded
            .into_iter()
            .map(|(key, entry, committed)| {
                let tracker = AckTracker::new(entry.offset);
                (
                    key,
                    Generation {
                        entry,
                        tracker,
                        committed,
                        release_at: None,
                    },
                )
            })
            .collect();
        Committer {
            store,
            generations,
            sync_interval,
            last_sync: Instant::now(),
            unsynced: false,
            failing: false,
            errors,
            entries: Vec::new(),
            barriers: Vec::new(),
            dirty_since: None,
            unsynced_since: None,
            age: Gauge::default(),
            state: Arc::default(),
        }
    }

    /// Reports the checkpoint's age on `age` and its state on `state`.
    pub(crate) fn with_state(mut self, age: Gauge, state: Arc<CheckpointState>) -> Committer {
        state.lock().path = self.store.path().display().to_string();
        self.age = age;
        self.state = state;
        self
    }

    /// Applies messages until the channel closes, writing checkpoints as offsets move; then
    /// writes a final, fsynced checkpoint.
    pub(crate) fn run(mut self, rx: Receiver<Msg>) {
        loop {
            let wait = if self.unsynced {
                self.sync_interval.saturating_sub(self.last_sync.elapsed())
            } else {
                self.sync_interval
            };
            let mut changed = match rx.recv_timeout(wait) {
                Ok(m) => self.apply(m),
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            // Everything queued goes into one write.
            while let Ok(m) = rx.try_recv() {
                changed |= self.apply(m);
            }
            if changed && self.dirty_since.is_none() {
                self.dirty_since = Some(Instant::now());
                self.state.lock().dirty_since = Some(SystemTime::now());
            }
            if changed && self.unsynced_since.is_none() {
                self.unsynced_since = Some((Instant::now(), SystemTime::now()));
            }
            let sync_due = self.last_sync.elapsed() >= self.sync_interval;
            if changed || (self.unsynced && sync_due) {
                self.write(sync_due);
            }
            self.age.set(self.dirty_since.map_or(0, |t| {
                i64::try_from(t.elapsed().as_secs()).unwrap_or(i64::MAX)
            }));
            for b in self.barriers.drain(..) {
                let _ = b.send(());
            }
        }
        self.write(true);
        tracing::debug!(path = %self.store.path().display(), "final log checkpoint written");
    }

    /// Applies one message; returns whether the checkpoint's content changed.
    pub(crate) fn apply(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Register {
                key,
                entry,
                committed,
            } => {
                committed.store(entry.offset, Ordering::Relaxed);
                let tracker = AckTracker::new(entry.offset);
                self.generations.insert(
                    key,
                    Generation {
                        entry,
                        tracker,
                        committed,
                        release_at: None,
                    },
                );
                true
            }
            Msg::Update {
                key,
                path,
                dev_ino,
                fingerprint,
            } => {
                let Some(g) = self.generations.get_mut(&key) else {
                    return false;
                };
                if let Some(p) = path {
                    g.entry.path = p;
                }
                if let Some((dev, ino)) = dev_ino {
                    g.entry.dev = dev;
                    g.entry.ino = ino;
                }
                if let Some(fp) = fingerprint {
                    g.entry.fingerprint = fp.hash;
                    g.entry.fingerprint_bytes = fp.len;
                }
                true
            }
            Msg::Release { key, end } => {
                let Some(g) = self.generations.get_mut(&key) else {
                    return false;
                };
                if g.tracker.committed() >= end {
                    self.generations.remove(&key);
                    return true;
                }
                g.release_at = Some(end);
                false
            }
            Msg::Confirmed { acks, reply } => {
                let mut changed = false;
                for (key, start, end) in acks {
                    changed |= self.apply(Msg::Ack { key, start, end });
                }
                self.barriers.push(reply);
                changed
            }
            Msg::Ack { key, start, end } => {
                let Some(g) = self.generations.get_mut(&key) else {
                    return false;
                };
                if !g.tracker.ack(start, end) {
                    return false;
                }
                let committed = g.tracker.committed();
                g.committed.store(committed, Ordering::Relaxed);
                if g.release_at.is_some_and(|r| committed >= r) {
                    self.generations.remove(&key);
                }
                true
            }
        }
    }

    fn write(&mut self, sync: bool) {
        self.entries.clear();
        self.entries
            .extend(self.generations.values().map(|g| Entry {
                offset: g.tracker.committed(),
                ..g.entry.clone()
            }));
        match self.store.write(&self.entries, sync) {
            Ok(()) => {
                // A journal write holds every confirmation, but while the checkpoint file
                // cannot be replaced, the age keeps growing and the failure stays shown: a
                // crash of the machine would lose more than `sync_interval`.
                if sync && self.failing {
                    tracing::info!(path = %self.store.path().display(), "log checkpoint written again");
                    self.failing = false;
                }
                let mut st = self.state.lock();
                st.last_write = Some(SystemTime::now());
                if !self.failing {
                    self.dirty_since = None;
                    st.dirty_since = None;
                    st.failing = false;
                }
                drop(st);
                if sync {
                    self.last_sync = Instant::now();
                    self.unsynced = false;
                    self.unsynced_since = None;
                } else {
                    self.unsynced = true;
                }
            }
            Err(e) => {
                self.errors.inc();
                {
                    let mut st = self.state.lock();
                    st.failing = true;
                    st.last_error = Some((e.to_string(), SystemTime::now()));
                    // The journal may hold every confirmation, but the checkpoint file lacks
                    // those since its last replacement: that is the age shown.
                    if sync && self.dirty_since.is_none() {
                        if let Some((at, wall)) = self.unsynced_since {
                            self.dirty_since = Some(at);
                            st.dirty_since = Some(wall);
                        }
                    }
                }
                // Offsets on disk stay behind: a crash now replays more, loses nothing.
                if sync {
                    // Tried again in `sync_interval` (or at the next change), not in a loop.
                    self.last_sync = Instant::now();
                }
                if !self.failing {
                    tracing::error!(
                        path = %self.store.path().display(),
                        error = %e,
                        "cannot write the log checkpoint; shipping goes on and the write is \
                         retried (a crash before it succeeds re-reads more lines)"
                    );
                    self.failing = true;
                }
                self.unsynced = true;
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn committed(&self, key: u64) -> Option<u64> {
        self.generations.get(&key).map(|g| g.tracker.committed())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::checkpoint::load_state;

    /// What a restart would resume from in `dir` (the checkpoint file and its journal), read
    /// while the committer may be writing: a read racing a write of the only journal record
    /// so far is read again.
    fn resumed(dir: &std::path::Path) -> Vec<Entry> {
        for _ in 0..100 {
            if let Ok(s) = load_state(dir) {
                return s.entries;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        load_state(dir).unwrap().entries
    }

    fn entry(offset: u64) -> Entry {
        Entry {
            source: "app".into(),
            path: "/l/app.log".into(),
            dev: 1,
            ino: 2,
            fingerprint: 3,
            fingerprint_bytes: 10,
            offset,
        }
    }

    /// Out-of-order acks reach the checkpoint file only as a contiguous prefix; a released
    /// generation leaves the file once its last range is confirmed.
    #[test]
    fn acks_become_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let path = dir.path().to_owned();
        let committed = Arc::new(AtomicU64::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let c = Committer::new(
            store,
            Vec::new(),
            Duration::from_secs(3600),
            Counter::default(),
        );
        let t = std::thread::spawn(move || c.run(rx));
        tx.send(Msg::Register {
            key: 7,
            entry: entry(100),
            committed: committed.clone(),
        })
        .unwrap();
        tx.send(Msg::Ack {
            key: 7,
            start: 150,
            end: 200,
        })
        .unwrap();
        let offset = || resumed(&path).first().map(|e| e.offset);
        let wait = |want: Option<u64>| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while offset() != want {
                assert!(
                    Instant::now() < deadline,
                    "checkpoint {:?} != {want:?}",
                    offset()
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        wait(Some(100));
        tx.send(Msg::Ack {
            key: 7,
            start: 100,
            end: 150,
        })
        .unwrap();
        wait(Some(200));
        assert_eq!(committed.load(Ordering::Relaxed), 200);
        tx.send(Msg::Release { key: 7, end: 250 }).unwrap();
        tx.send(Msg::Update {
            key: 7,
            path: Some("/l/app.log.1".into()),
            dev_ino: None,
            fingerprint: None,
        })
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while resumed(&path)[0].path != "/l/app.log.1" {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        }
        tx.send(Msg::Ack {
            key: 7,
            start: 200,
            end: 250,
        })
        .unwrap();
        wait(None);
        drop(tx);
        t.join().unwrap();
    }

    /// A barrier is answered only after the acks sent before it are in the file.
    #[test]
    fn barrier_waits_for_the_write() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let path = dir.path().to_owned();
        let (tx, rx) = std::sync::mpsc::channel();
        let c = Committer::new(
            store,
            vec![(1, entry(0), Arc::new(AtomicU64::new(0)))],
            Duration::from_secs(3600),
            Counter::default(),
        );
        let t = std::thread::spawn(move || c.run(rx));
        for i in 0..50 {
            let (reply, wait) = tokio::sync::oneshot::channel();
            tx.send(Msg::Confirmed {
                acks: vec![(1, i * 10, i * 10 + 10)],
                reply,
            })
            .unwrap();
            wait.blocking_recv().unwrap();
            assert_eq!(resumed(&path)[0].offset, i * 10 + 10);
        }
        drop(tx);
        t.join().unwrap();
    }

    /// Acks for unknown generations (released, or never registered) change nothing.
    #[test]
    fn unknown_keys_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let mut c = Committer::new(
            store,
            vec![(1, entry(10), Arc::new(AtomicU64::new(10)))],
            Duration::from_secs(1),
            Counter::default(),
        );
        assert!(!c.apply(Msg::Ack {
            key: 9,
            start: 0,
            end: 5
        }));
        assert!(c.apply(Msg::Ack {
            key: 1,
            start: 10,
            end: 20
        }));
        assert_eq!(c.committed(1), Some(20));
    }
}
