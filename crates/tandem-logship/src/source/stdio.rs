//! The supervised app's stdout and stderr: captured through pipes, passed through unchanged to
//! Tandem's own stdout and stderr (so `kubectl logs` still shows them), and shipped as lines
//! with `stream: stdout|stderr`.
//!
//! One reader thread per captured stream reads the pipe (64 KiB at a time) and never waits on
//! anything slow, so the app never blocks on its output:
//! - the bytes go, unchanged and in order, to a pass-through thread through a buffer of at
//!   most [`PASSTHROUGH_BYTES`], which that thread writes out in one go. If Tandem's own stdout
//!   is slower than the app (a stalled terminal or log collector), reads that do not fit are
//!   not passed through, counted in `tandem_logs_passthrough_dropped_bytes_total`; shipping is
//!   not affected;
//! - the lines go to the stream source ([`super::stream`]): memory, then the disk buffer, then
//!   dropped and counted.
//!
//! A line the app leaves without `\n` is held until its `\n` arrives (or the app closes the
//! stream); pass-through does not wait for it. So is a multi-line record (`multiline`) until
//! it completes, times out, or the app closes the stream.

use std::fs::File;
use std::io::{self, PipeWriter, Read, Write};
use std::os::fd::AsFd;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use bytes::Bytes;

use super::stream::{Stream, StreamInput};
use crate::framer::LineFramer;

/// Bytes of the app's output waiting to be passed through, at most.
pub const PASSTHROUGH_BYTES: usize = 4 * 1024 * 1024;

/// Bytes asked of one pipe read.
const PIPE_READ: usize = 64 * 1024;

/// What captures the app's output: hand its pipes to the app's process.
#[derive(Clone)]
pub struct StdioCapture {
    input: StreamInput,
    stdout: bool,
    stderr: bool,
    /// Reader and pass-through threads: waited for at shutdown, so the app's last bytes reach
    /// Tandem's stdout and the pipeline before Tandem exits.
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

/// The write ends for the app (`None`: the app inherits Tandem's own stream).
pub struct AppPipes {
    /// For the app's stdout.
    pub stdout: Option<PipeWriter>,
    /// For the app's stderr.
    pub stderr: Option<PipeWriter>,
}

impl StdioCapture {
    pub(crate) fn new(input: StreamInput, stdout: bool, stderr: bool) -> StdioCapture {
        StdioCapture {
            input,
            stdout,
            stderr,
            threads: Arc::default(),
        }
    }

    /// Waits until the app's streams are closed and everything read was passed through and
    /// handed to the pipeline (the app has exited), at most `within`.
    pub async fn wait_closed(&self, within: std::time::Duration) -> bool {
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        if threads.is_empty() {
            return true;
        }
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        matches!(tokio::time::timeout(within, joined).await, Ok(Ok(())))
    }

    /// Creates the pipes and starts their reader and pass-through threads.
    pub fn pipes(&self) -> io::Result<AppPipes> {
        let mut out = AppPipes {
            stdout: None,
            stderr: None,
        };
        if self.stdout {
            out.stdout = Some(self.capture(Stream::Stdout)?);
        }
        if self.stderr {
            out.stderr = Some(self.capture(Stream::Stderr)?);
        }
        Ok(out)
    }

    fn capture(&self, stream: Stream) -> io::Result<PipeWriter> {
        let (reader, writer) = io::pipe()?;
        // A duplicate of Tandem's own fd 1 or 2, written directly (no std lock or buffer).
        let own = match stream {
            Stream::Stderr => io::stderr().as_fd().try_clone_to_owned()?,
            _ => io::stdout().as_fd().try_clone_to_owned()?,
        };
        let pass = Arc::new(Pass::default());
        let name = self.input.name().to_owned();
        let p = pass.clone();
        let passing = std::thread::Builder::new()
            .name(format!("logs-{}-pass", stream.as_str()))
            .spawn(move || passthrough(File::from(own), &p, stream, &name))?;
        let input = self.input.clone();
        let handle = std::thread::Builder::new()
            .name(format!("logs-{}", stream.as_str()))
            .spawn(move || {
                read_pipe(reader, stream, &input, &pass);
                pass.close();
            })?;
        let mut threads = self.threads.lock().unwrap_or_else(PoisonError::into_inner);
        threads.push(handle);
        threads.push(passing);
        Ok(writer)
    }
}

/// Bytes waiting to be passed through, bounded by [`PASSTHROUGH_BYTES`].
#[derive(Default)]
struct Pass {
    state: Mutex<(Vec<u8>, bool)>,
    ready: Condvar,
}

impl Pass {
    /// Queues `data` unless that would pass the bound; false if it did not fit.
    fn offer(&self, data: &[u8]) -> bool {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if st.0.len() + data.len() > PASSTHROUGH_BYTES {
            return false;
        }
        st.0.extend_from_slice(data);
        drop(st);
        self.ready.notify_one();
        true
    }

    fn close(&self) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).1 = true;
        self.ready.notify_one();
    }

    /// Everything queued (waiting for some), or None once closed and empty.
    fn take(&self, spare: Vec<u8>) -> Option<Vec<u8>> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        while st.0.is_empty() && !st.1 {
            st = self.ready.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        if st.0.is_empty() {
            return None;
        }
        Some(std::mem::replace(&mut st.0, spare))
    }
}

fn read_pipe(mut reader: io::PipeReader, stream: Stream, input: &StreamInput, pass: &Pass) {
    let mut framer = LineFramer::new(0, input.max_line());
    let mut lines = Vec::new();
    let mut buf = vec![0u8; PIPE_READ];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(stream = stream.as_str(), error = %e, "cannot read the app's output; it is no longer captured");
                break;
            }
        };
        let data = &buf[..n];
        if !pass.offer(data) {
            input.passthrough_dropped(n as u64);
        }
        framer.push(&Bytes::copy_from_slice(data), &mut lines);
        input.push(stream, &lines);
        lines.clear();
    }
    framer.finish(&mut lines);
    input.push(stream, &lines);
    // The app closed the stream: its last record is complete.
    input.flush(stream);
}

fn passthrough(mut out: File, pass: &Pass, stream: Stream, source: &str) {
    let mut failing = false;
    let mut spare = Vec::new();
    while let Some(mut data) = pass.take(spare) {
        let result = out.write_all(&data);
        data.clear();
        spare = data;
        match result {
            Ok(()) => failing = false,
            Err(e) => {
                if !failing {
                    tracing::warn!(source, stream = stream.as_str(), error = %e, "cannot pass the app's output through to Tandem's own; it is still shipped");
                }
                failing = true;
            }
        }
    }
}
