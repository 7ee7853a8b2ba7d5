//! The file sink (NDJSON appended to a file) and the console sink (NDJSON on stdout).
//!
//! A batch is delivered once `write` returned for all of it: it is then in the kernel, safe
//! from a crash of Tandem (not from one of the machine: the file is not fsynced per batch). A
//! write that fails half-way (a full disk) is cut back to where it started before it is
//! retried, so a retry never leaves half a line behind. Writes happen off the async runtime.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

use super::{encode, BoxFuture, Failure, Outcome, RetryReason, Sink};
use crate::record::Chunk;

/// NDJSON appended to a file.
pub struct FileSink {
    path: PathBuf,
    file: Arc<Mutex<File>>,
}

impl FileSink {
    /// Opens (creates) `path` for appending.
    pub fn open(path: &Path) -> io::Result<FileSink> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(FileSink {
            path: path.to_owned(),
            file: Arc::new(Mutex::new(file)),
        })
    }
}

impl Sink for FileSink {
    fn encode(&self, batch: &[Arc<Chunk>], out: &mut Vec<u8>) {
        encode::ndjson(batch, out);
    }

    fn send(&self, body: Bytes) -> BoxFuture<'_, Outcome> {
        let file = self.file.clone();
        let path = self.path.clone();
        Box::pin(async move {
            let written = tokio::task::spawn_blocking(move || {
                let f = file.lock().unwrap_or_else(PoisonError::into_inner);
                append_whole(&f, &body)
            })
            .await;
            match written {
                Ok(Ok(())) => Outcome::Delivered,
                Ok(Err(e)) => io_failure(format!("{}: {e}", path.display())),
                Err(e) => io_failure(format!("{}: the write task failed: {e}", path.display())),
            }
        })
    }
}

/// Appends `body` to `f`, or on error cuts the file back to its length before.
fn append_whole(mut f: &File, body: &[u8]) -> io::Result<()> {
    let before = f.metadata()?.len();
    let result = f.write_all(body);
    if result.is_err() {
        let _ = f.set_len(before);
    }
    result
}

/// NDJSON on Tandem's stdout.
pub struct ConsoleSink;

impl Sink for ConsoleSink {
    fn encode(&self, batch: &[Arc<Chunk>], out: &mut Vec<u8>) {
        encode::ndjson(batch, out);
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
