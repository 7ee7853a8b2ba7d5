//! The checkpoint file: how far each file was shipped, written atomically, read strictly.
//!
//! One JSON file, `<dir>/checkpoints.json`, lists every file generation a source reads or read
//! recently: source name, path, device, inode, content fingerprint and the offset up to which
//! every sink confirmed the lines. It is written to `checkpoints.json.tmp` and renamed over the
//! old one, so a reader sees the old or the new file, never a mix. The rewrite after each
//! delivery is not fsynced (a crash of the process cannot lose what the kernel already holds);
//! every `sync_interval` the rewrite is fsynced, and the directory after the rename, so a crash
//! of the machine loses at most that much progress.
//!
//! A checkpoint that cannot be read or parsed is an error that stops Tandem from starting: it
//! never silently means "start from zero" (which would ship everything again) or "start from
//! the end" (which would lose what was not shipped). The message names the file and the fix.
//!
//! A lock file (`<dir>/lock`, `flock`) keeps two Tandems from sharing a directory; the kernel
//! drops the lock when the process dies, `kill -9` included.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
pub use tandem_config::CHECKPOINT_FILE;

/// The format version this Tandem writes and reads.
const VERSION: u32 = 1;

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
        let path = dir.join(CHECKPOINT_FILE);
        let entries = load(&path)?;
        let store = Store {
            dir: dir.to_owned(),
            tmp: dir.join(format!("{CHECKPOINT_FILE}.tmp")),
            path,
            _lock: lock,
            buf: Vec::new(),
        };
        Ok((store, entries))
    }

    /// The checkpoint file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the checkpoint with `entries`: temp file, rename; with `sync`, fsync of the temp
    /// file before the rename and of the directory after it. On error the old checkpoint stays.
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
        let result = self.replace(sync);
        if result.is_err() {
            // A partial temp file is useless; the next write recreates it.
            let _ = std::fs::remove_file(&self.tmp);
        }
        result
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

/// Reads a checkpoint file: absent is empty; anything unreadable or malformed is an error.
pub fn load(path: &Path) -> Result<Vec<Entry>, CheckpointError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CheckpointError::Unreadable {
                path: path.to_owned(),
                source,
            })
        }
    };
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    if text.is_empty() {
        return Err(corrupt("the file is empty".into()));
    }
    let parsed: FileFormat = serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
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
        store.write(&entries[..1], false).unwrap();
        assert_eq!(load(store.path()).unwrap(), &entries[..1]);
        drop(store);
        let (_, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(loaded, &entries[..1]);
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
        store.write(&[entry(3)], false).unwrap();
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
