//! The file sink (records appended to a file) and the console sink (records on stdout), each
//! as NDJSON or as plain text (the message alone).
//!
//! A batch is delivered once `write` returned for all of it: it is then in the kernel, safe
//! from a crash of Tandem (not from one of the machine: the file is not fsynced per batch). A
//! write that fails half-way (a full disk) is cut back to where it started before it is
//! retried, so a retry never leaves half a line behind. Writes happen off the async runtime.
//!
//! With `rotate`, the file is renamed to `PATH.1` (older ones shifted to `PATH.2` ...
//! `PATH.keep`, the oldest deleted) before a batch would take it past `max_bytes`; a batch is
//! never split across two files. Without it, a file renamed or deleted by an outside tool
//! (logrotate without `copytruncate`) is noticed at the next batch and `PATH` is created
//! again: nothing is written into a file nobody will read.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tandem_config::{FileRotate, LineFormat};

use super::{encode, BoxFuture, Failure, Outcome, RetryReason, Sink};
use crate::record::Chunk;

/// Records appended to a file.
pub struct FileSink {
    path: PathBuf,
    format: LineFormat,
    state: Arc<Mutex<Open>>,
}

/// The file being written and what rotation needs to know of it.
struct Open {
    file: File,
    /// Device and inode of `file`, to notice it was renamed or deleted under us.
    id: (u64, u64),
    size: u64,
    rotate: Option<FileRotate>,
}

impl FileSink {
    /// Opens (creates) `path` for appending.
    pub fn open(
        path: &Path,
        rotate: Option<FileRotate>,
        format: LineFormat,
    ) -> io::Result<FileSink> {
        let (file, id, size) = open_append(path)?;
        Ok(FileSink {
            path: path.to_owned(),
            format,
            state: Arc::new(Mutex::new(Open {
                file,
                id,
                size,
                rotate,
            })),
        })
    }
}

fn open_append(path: &Path) -> io::Result<(File, (u64, u64), u64)> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let m = file.metadata()?;
    Ok((file, (m.dev(), m.ino()), m.len()))
}

impl Open {
    /// Appends `body` whole to the file at `path`, rotating first when due.
    fn append(&mut self, path: &Path, body: &[u8]) -> io::Result<()> {
        let len = body.len() as u64;
        match self.rotate {
            Some(r) if self.size > 0 && self.size.saturating_add(len) > r.max_bytes => {
                self.rotate(path, r.keep)?;
            }
            _ => {
                // Renamed or deleted by someone else: write where readers will look.
                let here = std::fs::metadata(path).map(|m| (m.dev(), m.ino())).ok();
                if here != Some(self.id) {
                    self.reopen(path)?;
                }
            }
        }
        let before = self.size;
        let result = (&self.file).write_all(body);
        match result {
            Ok(()) => self.size = before + len,
            Err(_) => {
                let _ = self.file.set_len(before);
            }
        }
        result
    }

    /// `PATH.(keep-1)` -> `PATH.keep` ... `PATH` -> `PATH.1`, then a new `PATH`.
    fn rotate(&mut self, path: &Path, keep: u32) -> io::Result<()> {
        let numbered = |n: u32| {
            let mut p = path.as_os_str().to_owned();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        for n in (1..keep).rev() {
            match std::fs::rename(numbered(n), numbered(n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        match std::fs::rename(path, numbered(1)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        self.reopen(path)
    }

    fn reopen(&mut self, path: &Path) -> io::Result<()> {
        let (file, id, size) = open_append(path)?;
        self.file = file;
        self.id = id;
        self.size = size;
        Ok(())
    }
}

impl Sink for FileSink {
    fn encode(&self, batch: &[Arc<Chunk>], out: &mut Vec<u8>) {
        lines(self.format, batch, out);
    }

    fn send(&self, body: Bytes) -> BoxFuture<'_, Outcome> {
        let state = self.state.clone();
        let path = self.path.clone();
        Box::pin(async move {
            let written = tokio::task::spawn_blocking(move || {
                let mut open = state.lock().unwrap_or_else(PoisonError::into_inner);
                open.append(&path, &body).map_err(|e| (e, path))
            })
            .await;
            match written {
                Ok(Ok(())) => Outcome::Delivered,
                Ok(Err((e, path))) => io_failure(format!("{}: {e}", path.display())),
                Err(e) => io_failure(format!("the write task failed: {e}")),
            }
        })
    }
}

/// The batch as NDJSON, or as the records' messages one per line.
fn lines(format: LineFormat, batch: &[Arc<Chunk>], out: &mut Vec<u8>) {
    match format {
        LineFormat::Ndjson => encode::ndjson(batch, out),
        LineFormat::Text => {
            for r in batch.iter().flat_map(|c| &c.records) {
                out.extend_from_slice(&r.message);
                out.push(b'\n');
            }
        }
    }
}

/// Records on Tandem's stdout.
pub struct ConsoleSink {
    /// What is written per record.
    pub format: LineFormat,
}

impl Sink for ConsoleSink {
    fn encode(&self, batch: &[Arc<Chunk>], out: &mut Vec<u8>) {
        lines(self.format, batch, out);
    }

    fn send(&self, body: Bytes) -> BoxFuture<'_, Outcome> {
        Box::pin(async move {
            let written = tokio::task::spawn_blocking(move || {
                let mut out = io::stdout().lock();
                out.write_all(&body).and_then(|()| out.flush())
            })
            .await;
            match written {
                Ok(Ok(())) => Outcome::Delivered,
                Ok(Err(e)) => io_failure(format!("stdout: {e}")),
                Err(e) => io_failure(format!("stdout: the write task failed: {e}")),
            }
        })
    }
}

fn io_failure(detail: String) -> Outcome {
    Outcome::Retry(Failure {
        reason: RetryReason::Io,
        after: None,
        detail,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::record::{Origin, Record};

    fn sink(dir: &Path, rotate: Option<FileRotate>) -> (FileSink, PathBuf) {
        let path = dir.join("out.log");
        (
            FileSink::open(&path, rotate, LineFormat::Text).unwrap(),
            path,
        )
    }

    async fn send(s: &FileSink, body: &str) {
        assert!(matches!(
            s.send(Bytes::from(body.to_owned())).await,
            Outcome::Delivered
        ));
    }

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap_or_default()
    }

    /// Rotation happens before a batch would pass `max_bytes`, never inside a batch; `keep`
    /// files are kept, newest `.1`, the oldest deleted; a batch larger than `max_bytes` gets a
    /// file of its own.
    #[tokio::test]
    async fn rotates_by_size_and_keeps_n() {
        let dir = tempfile::tempdir().unwrap();
        let (s, path) = sink(
            dir.path(),
            Some(FileRotate {
                max_bytes: 10,
                keep: 2,
            }),
        );
        let n = |i: u32| dir.path().join(format!("out.log.{i}"));
        send(&s, "aaaa\n").await;
        send(&s, "bbbb\n").await; // exactly 10: no rotation
        assert_eq!(read(&path), "aaaa\nbbbb\n");
        send(&s, "cc\n").await; // would be 13
        assert_eq!(
            (read(&path), read(&n(1))),
            ("cc\n".into(), "aaaa\nbbbb\n".into())
        );
        send(&s, "0123456789abcdef\n").await; // larger than max_bytes: a file of its own
        assert_eq!(read(&path), "0123456789abcdef\n");
        assert_eq!(
            (read(&n(1)), read(&n(2))),
            ("cc\n".into(), "aaaa\nbbbb\n".into())
        );
        send(&s, "dd\n").await;
        assert_eq!(read(&path), "dd\n");
        assert_eq!(read(&n(1)), "0123456789abcdef\n");
        assert_eq!(read(&n(2)), "cc\n", "the oldest went");
        assert!(!n(3).exists(), "keep: 2");
    }

    /// An existing file counts toward the size; without `rotate` the file grows, and a file
    /// renamed or deleted by an outside tool is created again at the next batch.
    #[tokio::test]
    async fn follows_an_outside_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.log");
        std::fs::write(&path, "old\n").unwrap();
        let s = FileSink::open(&path, None, LineFormat::Text).unwrap();
        send(&s, "one\n").await;
        assert_eq!(read(&path), "old\none\n");
        let moved = dir.path().join("out.log-20261124");
        std::fs::rename(&path, &moved).unwrap();
        send(&s, "two\n").await;
        assert_eq!(
            (read(&moved), read(&path)),
            ("old\none\n".into(), "two\n".into())
        );
        std::fs::remove_file(&path).unwrap();
        send(&s, "three\n").await;
        assert_eq!(read(&path), "three\n");

        let rotating = FileSink::open(
            &path,
            Some(FileRotate {
                max_bytes: 8,
                keep: 1,
            }),
            LineFormat::Text,
        )
        .unwrap();
        send(&rotating, "four\n").await; // 6 + 5 > 8: the existing content is rotated out
        assert_eq!(read(&path), "four\n");
        assert_eq!(read(&dir.path().join("out.log.1")), "three\n");
    }

    /// `text` writes each record's message and a newline; `ndjson` a JSON object per record.
    #[test]
    fn text_and_ndjson_formats() {
        let origin = Arc::new(Origin::new(
            "app".into(),
            "/var/log/a.log".into(),
            Vec::new().into(),
        ));
        let (tx, _rx) = std::sync::mpsc::channel();
        let rec = |m: &'static str| Record {
            message: Bytes::from_static(m.as_bytes()),
            ..Record::default()
        };
        let chunk = Arc::new(Chunk::new(
            vec![rec("plain \"line\""), rec("Exception\n\tat a.B")],
            0,
            SystemTime::UNIX_EPOCH + Duration::from_secs(10),
            origin,
            (1, 0, 10),
            1,
            tx,
            None,
        ));
        let mut out = Vec::new();
        lines(LineFormat::Text, std::slice::from_ref(&chunk), &mut out);
        assert_eq!(out, b"plain \"line\"\nException\n\tat a.B\n");
        out.clear();
        lines(LineFormat::Ndjson, &[chunk], &mut out);
        let text = String::from_utf8(out).unwrap();
        let objs: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[0]["message"], "plain \"line\"");
        assert_eq!(objs[1]["message"], "Exception\n\tat a.B");
    }
}
