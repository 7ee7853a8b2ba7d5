//! The checkpoint file: how far each file was shipped, written atomically, read strictly.
//!
//! One JSON file, `<dir>/checkpoints.json`, lists every file generation a source reads or read
//! recently: source name, path, device, inode, content fingerprint and the offset up to which
//! every sink confirmed the lines. Every `sync_interval` (and at shutdown) it is written to
//! `checkpoints.json.tmp`, fsynced, and renamed over the old one (then the directory is
//! fsynced), so a reader sees the old or the new file, never a mix, and a crash of the machine
//! loses at most that much progress.
//!
//! Between two of those, each delivery's progress goes to the journal,
//! `<dir>/checkpoints.journal`: the same JSON, overwritten in place (one `pwrite` into a file
//! kept open, no fsync), so a crash of the process (`kill -9`) replays only the deliveries in
//! flight. Creating, renaming and evicting a file per delivery cost a third of log shipping's
//! CPU at 10,000 lines/s (ext4 flushes a file renamed over another, and frees, and with
//! `discard` trims, the replaced one's blocks); one `pwrite` costs a few microseconds.
//!
//! The journal has two slots, written in turn, each a header (magic, xxh3 hash, sequence
//! number, the hash of the `checkpoints.json` it extends, length) and the JSON. A restart takes
//! the slot with the highest sequence number whose hash holds and that extends the
//! `checkpoints.json` actually on disk; a torn write (a crash in the middle of one) fails its
//! hash and leaves the other slot, one delivery older. Records that extend an older checkpoint
//! (written before the last rename) or a checkpoint moved away are ignored: the checkpoint
//! file is newer, or the user asked to start over. A journal record too large for a slot is
//! written as a checkpoint file instead.
//!
//! A checkpoint that cannot be read or parsed is an error that stops Tandem from starting: it
//! never silently means "start from zero" (which would ship everything again) or "start from
//! the end" (which would lose what was not shipped). The message names the file and the fix.
//! So is a journal holding neither a valid record nor zeros when there is no checkpoint file
//! to fall back to; with one, a journal without a valid record is reported and the checkpoint
//! file used (what a crash of the machine in the middle of a write can leave).
//!
//! A lock file (`<dir>/lock`, `flock`) keeps two Tandems from sharing a directory; the kernel
//! drops the lock when the process dies, `kill -9` included.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
pub use tandem_config::CHECKPOINT_FILE;

/// The format version this Tandem writes and reads.
const VERSION: u32 = 1;

/// The journal's name, in the checkpoint directory.
pub const JOURNAL_FILE: &str = "checkpoints.journal";

/// Bytes of one journal slot, header included; slot 1 starts here.
pub const JOURNAL_SLOT: usize = 64 * 1024;

const JOURNAL_MAGIC: &[u8; 8] = b"tdmjrnl1";

/// magic, hash (of everything after it), sequence number, base (hash of the checkpoint file
/// extended, 0: none), length of the JSON.
const JOURNAL_HEADER: usize = 8 + 8 + 8 + 8 + 4;

/// One file generation's checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The source (config name) that reads it.
    pub source: String,
    /// Where the file was last seen (informational: identity is device, inode, fingerprint).
    pub path: String,
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// xxh3 of the first `fingerprint_bytes` bytes.
    pub fingerprint: u64,
    /// How many leading bytes `fingerprint` covers (0: the file was empty).
    pub fingerprint_bytes: u32,
    /// Every line before this offset was confirmed by every sink that received it.
    pub offset: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    version: u32,
    files: Vec<Entry>,
}

/// Why the checkpoint directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The directory cannot be created or opened.
    #[error(
        "cannot use the log checkpoint directory {dir}: {source}; create it or fix its \
         permissions (Tandem needs to write files in it)"
    )]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Another process holds the lock.
    #[error(
        "the log checkpoint directory {dir} is in use by another Tandem; give each Tandem its \
         own `logs.checkpoint.dir`"
    )]
    Locked {
        /// The directory.
        dir: PathBuf,
    },
    /// The file exists but cannot be read.
    #[error(
        "cannot read the log checkpoint {path}: {source}; fix its permissions, or move it away \
         to start over (files are then read again per `start_at`, and lines shipped before are \
         shipped again)"
    )]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file is not a checkpoint this Tandem can read.
    #[error(
        "the log checkpoint {path} is corrupt ({reason}); Tandem will not guess how far each \
         file was shipped. Move it away to start over (`mv {path} {path}.bad`): files are then \
         read again per `start_at`, and lines shipped before are shipped again"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// The checkpoint directory, locked for this process.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    path: PathBuf,
    tmp: PathBuf,
    _lock: Flock<File>,
    buf: Vec<u8>,
    journal: File,
    journal_path: PathBuf,
    /// The next journal record's sequence number (its slot: `seq % 2`).
    seq: u64,
    /// [`base_of`] the checkpoint file on disk.
    base: u64,
    record: Vec<u8>,
}

impl Store {
    /// Creates `dir` when missing, locks it, and reads the checkpoint in it (none yet: empty).
    pub fn open(dir: &Path) -> Result<(Store, Vec<Entry>), CheckpointError> {
        let dir_err = |source| CheckpointError::Dir {
            dir: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(dir_err)?;
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .map_err(dir_err)?;
        let lock = match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(CheckpointError::Locked {
                    dir: dir.to_owned(),
                })
            }
            Err((_, e)) => return Err(dir_err(io::Error::from(e))),
        };
        let state = load_state(dir)?;
        let journal_path = dir.join(JOURNAL_FILE);
        let journal = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&journal_path)
            .map_err(dir_err)?;
        let store = Store {
            dir: dir.to_owned(),
            tmp: dir.join(format!("{CHECKPOINT_FILE}.tmp")),
            path: dir.join(CHECKPOINT_FILE),
            _lock: lock,
            buf: Vec::new(),
            journal,
            journal_path,
            seq: state.next_seq,
            base: state.base,
            record: Vec::new(),
        };
        Ok((store, state.entries))
    }

    /// The checkpoint file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records `entries`. With `sync`: replaces the checkpoint file (temp file, fsync, rename,
    /// fsync of the directory); on error the old one stays. Without: writes them to the
    /// journal's next slot (no fsync), which a restart reads on top of the checkpoint file; on
    /// error the other slot stays.
    pub fn write(&mut self, entries: &[Entry], sync: bool) -> io::Result<()> {
        self.buf.clear();
        self.buf
            .extend_from_slice(format!("{{\"version\":{VERSION},\"files\":[").as_bytes());
        for (i, e) in entries.iter().enumerate() {
            if i > 0 {
                self.buf.push(b',');
            }
            self.buf.push(b'\n');
            serde_json::to_writer(&mut self.buf, e).map_err(io::Error::other)?;
        }
        self.buf.extend_from_slice(b"\n]}\n");
        if !sync && JOURNAL_HEADER + self.buf.len() <= JOURNAL_SLOT {
            return self.append_journal();
        }
        let result = self.replace(sync);
        match &result {
            Ok(()) => self.base = base_of(&self.buf),
            // A partial temp file is useless; the next write recreates it.
            Err(_) => {
                let _ = std::fs::remove_file(&self.tmp);
            }
        }
        result
    }

    /// Writes `self.buf` into the journal slot of `self.seq`.
    fn append_journal(&mut self) -> io::Result<()> {
        let r = &mut self.record;
        r.clear();
        r.extend_from_slice(JOURNAL_MAGIC);
        r.extend_from_slice(&[0; 8]);
        r.extend_from_slice(&self.seq.to_le_bytes());
        r.extend_from_slice(&self.base.to_le_bytes());
        let len = u32::try_from(self.buf.len()).map_err(io::Error::other)?;
        r.extend_from_slice(&len.to_le_bytes());
        r.extend_from_slice(&self.buf);
        let hash = xxhash_rust::xxh3::xxh3_64(&r[16..]);
        r[8..16].copy_from_slice(&hash.to_le_bytes());
        let slot = (self.seq % 2) * JOURNAL_SLOT as u64;
        self.journal.write_all_at(r, slot).map_err(|e| {
            io::Error::new(e.kind(), format!("{}: {e}", self.journal_path.display()))
        })?;
        // On failure the same slot is written again: the other one holds the last record.
        self.seq += 1;
        Ok(())
    }

    fn replace(&self, sync: bool) -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&self.tmp)?;
        f.write_all(&self.buf)?;
        if sync {
            f.sync_all()?;
        }
        drop(f);
        std::fs::rename(&self.tmp, &self.path)?;
        if sync {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// What a restart reads from a checkpoint directory.
#[derive(Debug)]
pub struct State {
    /// The entries: the journal's latest record when it extends the checkpoint file, else the
    /// checkpoint file's.
    pub entries: Vec<Entry>,
    /// Whether they came from the journal.
    pub from_journal: bool,
    /// [`base_of`] the checkpoint file (0: none).
    base: u64,
    /// The sequence number after every journal record seen.
    next_seq: u64,
}

/// The hash that ties journal records to the checkpoint file they extend (never 0: that is
/// "no checkpoint file").
fn base_of(checkpoint: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(checkpoint).max(1)
}

/// Reads what a restart would resume from in `dir`: the checkpoint file, and the journal on top
/// of it (see the module's documentation). Takes no lock.
pub fn load_state(dir: &Path) -> Result<State, CheckpointError> {
    let path = dir.join(CHECKPOINT_FILE);
    let (entries, base) = match read_file(&path)? {
        None => (Vec::new(), 0),
        Some(text) => (parse(&text, &path)?, base_of(&text)),
    };
    let journal_path = dir.join(JOURNAL_FILE);
    let journal = match read_file(&journal_path)? {
        Some(j) => j,
        None => {
            return Ok(State {
                entries,
                from_journal: false,
                base,
                next_seq: 0,
            })
        }
    };
    let slots: Vec<(u64, u64, &[u8])> = (0..2)
        .filter_map(|k| journal_slot(journal.get(k * JOURNAL_SLOT..)?))
        .collect();
    let next_seq = slots.iter().map(|s| s.0 + 1).max().unwrap_or(0);
    let latest = slots.iter().filter(|s| s.1 == base).max_by_key(|s| s.0);
    if let Some((seq, _, body)) = latest {
        let entries = parse(body, &journal_path)?;
        tracing::debug!(journal = %journal_path.display(), seq, "log checkpoint: resuming from the journal");
        return Ok(State {
            entries,
            from_journal: true,
            base,
            next_seq,
        });
    }
    if slots.is_empty() && journal.iter().any(|b| *b != 0) {
        if base == 0 {
            return Err(CheckpointError::Corrupt {
                path: journal_path,
                reason: "no record in it is whole, and there is no checkpoint file to fall back to"
                    .into(),
            });
        }
        tracing::warn!(journal = %journal_path.display(), checkpoint = %path.display(), "the log checkpoint journal has no whole record (a crash in the middle of a write?); resuming from the checkpoint file, so lines shipped since it was written are shipped again");
    }
    Ok(State {
        entries,
        from_journal: false,
        base,
        next_seq,
    })
}

/// A journal slot's (sequence number, base, JSON) when its record is whole.
fn journal_slot(slot: &[u8]) -> Option<(u64, u64, &[u8])> {
    let word = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(slot.get(at..at + 8)?.try_into().ok()?))
    };
    if slot.get(..8)? != JOURNAL_MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(slot.get(32..36)?.try_into().ok()?) as usize;
    if JOURNAL_HEADER + len > JOURNAL_SLOT {
        return None;
    }
    let record = slot.get(16..JOURNAL_HEADER + len)?;
    if xxhash_rust::xxh3::xxh3_64(record) != word(8)? {
        return None;
    }
    Some((
        word(16)?,
        word(24)?,
        slot.get(JOURNAL_HEADER..JOURNAL_HEADER + len)?,
    ))
}

/// A file's bytes; None when it does not exist.
fn read_file(path: &Path) -> Result<Option<Vec<u8>>, CheckpointError> {
    let mut text = Vec::new();
    match File::open(path).and_then(|mut f| f.read_to_end(&mut text)) {
        Ok(_) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CheckpointError::Unreadable {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Reads a checkpoint file alone (not the journal): absent is empty; anything unreadable or
/// malformed is an error. Tests only: a restart reads both ([`load_state`]).
#[cfg(test)]
fn load(path: &Path) -> Result<Vec<Entry>, CheckpointError> {
    match read_file(path)? {
        None => Ok(Vec::new()),
        Some(text) => parse(&text, path),
    }
}

/// Parses a checkpoint (the file's, or a journal record's) read from `path`.
fn parse(text: &[u8], path: &Path) -> Result<Vec<Entry>, CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    if text.is_empty() {
        return Err(corrupt("the file is empty".into()));
    }
    let parsed: FileFormat = serde_json::from_slice(text).map_err(|e| corrupt(e.to_string()))?;
    if parsed.version != VERSION {
        return Err(corrupt(format!(
            "format version {} is not {VERSION}, the one this Tandem reads",
            parsed.version
        )));
    }
    Ok(parsed.files)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(n: u64) -> Entry {
        Entry {
            source: "app".into(),
            path: format!("/var/log/app.log.{n}"),
            dev: 2049,
            ino: 100 + n,
            fingerprint: u64::MAX - n,
            fingerprint_bytes: 1024,
            offset: n * 1000,
        }
    }

    /// What is written is read back exactly, u64 values included.
    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, loaded) = Store::open(dir.path()).unwrap();
        assert!(loaded.is_empty(), "no file yet: nothing to resume");
        let entries = vec![entry(1), entry(2)];
        store.write(&entries, true).unwrap();
        assert_eq!(load(store.path()).unwrap(), entries);
        store.write(&entries[..1], false).unwrap();
        assert_eq!(
            load(store.path()).unwrap(),
            entries,
            "the file waits for a sync"
        );
        assert_eq!(load_state(dir.path()).unwrap().entries, &entries[..1]);
        drop(store);
        let (_, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(loaded, &entries[..1]);
    }

    fn entries(n: u64) -> Vec<Entry> {
        (1..=n).map(entry).collect()
    }

    /// Between syncs, each write goes to the journal; a restart (a new store) resumes from the
    /// latest, and keeps numbering after it (its first write is newer than the last record).
    #[test]
    fn journal_holds_writes_between_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path()).unwrap();
        store.write(&entries(1), false).unwrap();
        let state = load_state(dir.path()).unwrap();
        assert!(state.from_journal);
        assert_eq!(
            state.entries,
            entries(1),
            "no checkpoint file yet: the journal alone"
        );
        store.write(&entries(1), true).unwrap();
        for n in 2..6 {
            store.write(&entries(n), false).unwrap();
            assert_eq!(load_state(dir.path()).unwrap().entries, entries(n));
        }
        drop(store);
        let (mut store, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(loaded, entries(5));
        store.write(&entries(6), false).unwrap();
        assert_eq!(load_state(dir.path()).unwrap().entries, entries(6));
        assert_eq!(load(store.path()).unwrap(), entries(1));
    }

    /// A torn journal write (a crash in the middle of it) fails its slot's hash: a restart
    /// takes the other slot, one write older.
    #[test]
    fn torn_journal_write_falls_back_one_write() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path()).unwrap();
        store.write(&entries(1), true).unwrap();
        for n in 2..=4 {
            store.write(&entries(n), false).unwrap();
        }
        drop(store);
        let journal = dir.path().join(JOURNAL_FILE);
        let mut bytes = std::fs::read(&journal).unwrap();
        // Records 0, 1, 2 went to slots 0, 1, 0: the latest (entries(4)) is in slot 0.
        bytes[JOURNAL_HEADER + 20] ^= 0x20;
        std::fs::write(&journal, &bytes).unwrap();
        let (_, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(loaded, entries(3));
    }

    /// Journal records extend the checkpoint file they were written after: once the file is
    /// replaced they are stale, and when it is moved away (to start over) they are not used.
    #[test]
    fn journal_of_another_checkpoint_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path()).unwrap();
        store.write(&entries(1), true).unwrap();
        store.write(&entries(3), false).unwrap();
        store.write(&entries(2), true).unwrap();
        assert_eq!(load_state(dir.path()).unwrap().entries, entries(2));
        store.write(&entries(4), false).unwrap();
        drop(store);
        let path = dir.path().join(CHECKPOINT_FILE);
        std::fs::rename(&path, dir.path().join("moved")).unwrap();
        let (_, loaded) = Store::open(dir.path()).unwrap();
        assert!(
            loaded.is_empty(),
            "checkpoint moved away: start over, {loaded:?}"
        );
    }

    /// A journal without a whole record: with a checkpoint file, that file is used; without
    /// one, Tandem refuses to start, naming the journal. A journal of zeros (what a crash of
    /// the machine can leave of a file never flushed) is no journal.
    #[test]
    fn journal_without_a_whole_record() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join(JOURNAL_FILE);
        std::fs::write(&journal, vec![0u8; 300]).unwrap();
        let (mut store, loaded) = Store::open(dir.path()).unwrap();
        assert!(loaded.is_empty());
        store.write(&entries(1), false).unwrap();
        drop(store);
        let mut bytes = std::fs::read(&journal).unwrap();
        bytes[40] ^= 1;
        std::fs::write(&journal, &bytes).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, CheckpointError::Corrupt { .. }), "{msg}");
        assert!(msg.contains(&journal.display().to_string()), "{msg}");
        std::fs::remove_file(&journal).unwrap();
        let (mut store, _) = Store::open(dir.path()).unwrap();
        store.write(&entries(2), true).unwrap();
        drop(store);
        std::fs::write(&journal, b"garbage, not a record").unwrap();
        let (_, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(loaded, entries(2), "the checkpoint file is used");
    }

    /// A record larger than a journal slot is written as a checkpoint file instead.
    #[test]
    fn large_record_goes_to_the_checkpoint_file() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path()).unwrap();
        let many = entries(600);
        store.write(&many, false).unwrap();
        assert_eq!(load(store.path()).unwrap(), many);
        assert_eq!(load_state(dir.path()).unwrap().entries, many);
        store.write(&entries(2), false).unwrap();
        assert_eq!(load_state(dir.path()).unwrap().entries, entries(2));
    }

    /// A write that fails (here: the temp path is a directory) leaves the old checkpoint intact
    /// and no temp file behind once the obstacle is gone.
    #[test]
    fn failed_write_keeps_the_old_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path()).unwrap();
        store.write(&[entry(1)], true).unwrap();
        let tmp = dir.path().join(format!("{CHECKPOINT_FILE}.tmp"));
        std::fs::create_dir(&tmp).unwrap();
        std::fs::write(tmp.join("x"), b"blocks removal").unwrap();
        assert!(store.write(&[entry(2)], true).is_err());
        assert_eq!(load(store.path()).unwrap(), [entry(1)]);
        std::fs::remove_dir_all(&tmp).unwrap();
        store.write(&[entry(3)], true).unwrap();
        assert_eq!(load(store.path()).unwrap(), [entry(3)]);
        assert!(!tmp.exists());
    }

    /// Garbage, an empty file, a truncated file and an unknown version are all refused with
    /// the file's path and the way out in the message; none reads as "no checkpoint".
    #[test]
    fn corrupt_checkpoints_are_refused_loudly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CHECKPOINT_FILE);
        let (mut store, _) = Store::open(dir.path()).unwrap();
        store.write(&[entry(1), entry(2)], true).unwrap();
        let good = std::fs::read(&path).unwrap();
        drop(store);
        let cases: [(&str, Vec<u8>); 4] = [
            ("garbage", b"\x00\x01not json".to_vec()),
            ("empty", Vec::new()),
            ("cut short", good[..good.len() / 2].to_vec()),
            ("version", b"{\"version\":2,\"files\":[]}".to_vec()),
        ];
        for (what, bytes) in cases {
            std::fs::write(&path, &bytes).unwrap();
            let err = Store::open(dir.path()).unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, CheckpointError::Corrupt { .. }),
                "{what}: {msg}"
            );
            assert!(msg.contains(&path.display().to_string()), "{what}: {msg}");
            assert!(msg.contains("Move it away"), "{what}: {msg}");
        }
    }

    /// A second store on the same directory is refused while the first holds it.
    #[test]
    fn one_tandem_per_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _) = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, CheckpointError::Locked { .. }), "{err}");
        drop(first);
        Store::open(dir.path()).unwrap();
    }
}
