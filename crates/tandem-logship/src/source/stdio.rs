//! The supervised app's stdout and stderr: captured through pipes, passed through unchanged to
//! Tandem's own stdout and stderr (so `kubectl logs` still shows them), and shipped as lines
//! with `stream: stdout|stderr`.
//!
//! One reader thread per captured stream reads the pipe (64 KiB at a time) and never waits on
//! anything slow, so the app never blocks on its output:
//! - the bytes go, unchanged and in order, to a pass-through thread through a bounded queue
//!   ([`PASSTHROUGH_QUEUE`] reads, at most 4 MiB). If Tandem's own stdout is slower than the
//!   app (a stalled terminal or log collector), reads that do not fit are not passed through,
//!   counted in `tandem_logs_passthrough_dropped_bytes_total`; shipping is not affected;
//! - the lines go to the stream source ([`super::stream`]): memory, then the disk buffer, then
//!   dropped and counted.
//!
//! A line the app leaves without `\n` is held until its `\n` arrives (or the app closes the
//! stream); pass-through does not wait for it.

use std::fs::File;
use std::io::{self, PipeWriter, Read, Write};
use std::os::fd::AsFd;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::thread::JoinHandle;

use bytes::Bytes;

use super::stream::{Stream, StreamInput};
use crate::framer::LineFramer;

/// Reads of the app's output waiting to be passed through (64 KiB each at most).
pub const PASSTHROUGH_QUEUE: usize = 64;

/// Bytes asked of one pipe read.
const PIPE_READ: usize = 64 * 1024;

/// What captures the app's output: hand its pipes to the app's process.
#[derive(Clone)]
pub struct StdioCapture {
    input: StreamInput,
    stdout: bool,
    stderr: bool,
}

/// The write ends for the app (`None`: the app inherits Tandem's own stream), and the reader
/// threads (they end when the app and its children closed the pipes).
pub struct AppPipes {
    /// For the app's stdout.
    pub stdout: Option<PipeWriter>,
    /// For the app's stderr.
    pub stderr: Option<PipeWriter>,
    /// The reader threads.
    pub readers: Vec<JoinHandle<()>>,
}

impl StdioCapture {
    pub(crate) fn new(input: StreamInput, stdout: bool, stderr: bool) -> StdioCapture {
        StdioCapture {
            input,
            stdout,
            stderr,
        }
    }

    /// Creates the pipes and starts their reader and pass-through threads.
    pub fn pipes(&self) -> io::Result<AppPipes> {
        let mut out = AppPipes {
            stdout: None,
            stderr: None,
            readers: Vec::new(),
        };
        if self.stdout {
            let (w, h) = self.capture(Stream::Stdout)?;
            out.stdout = Some(w);
            out.readers.push(h);
        }
        if self.stderr {
            let (w, h) = self.capture(Stream::Stderr)?;
            out.stderr = Some(w);
            out.readers.push(h);
        }
        Ok(out)
    }

    fn capture(&self, stream: Stream) -> io::Result<(PipeWriter, JoinHandle<()>)> {
        let (reader, writer) = io::pipe()?;
        // A duplicate of Tandem's own fd 1 or 2, written directly (no std lock or buffer).
        let own = match stream {
            Stream::Stderr => io::stderr().as_fd().try_clone_to_owned()?,
            _ => io::stdout().as_fd().try_clone_to_owned()?,
        };
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(PASSTHROUGH_QUEUE);
        let name = self.input.name().to_owned();
        std::thread::Builder::new()
            .name(format!("logs-{}-pass", stream.as_str()))
            .spawn(move || passthrough(File::from(own), &rx, stream, &name))?;
        let input = self.input.clone();
        let handle = std::thread::Builder::new()
            .name(format!("logs-{}", stream.as_str()))
            .spawn(move || read_pipe(reader, stream, &input, &tx))?;
        Ok((writer, handle))
    }
}

fn read_pipe(
    mut reader: io::PipeReader,
    stream: Stream,
    input: &StreamInput,
    pass: &SyncSender<Vec<u8>>,
) {
    let mut framer = LineFramer::new(0, input.max_line());
    let mut lines = Vec::new();
    let mut buf = vec![0u8; PIPE_READ];
    let mut passing = true;
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
        if passing {
            match pass.try_send(data.to_vec()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => input.passthrough_dropped(n as u64),
                Err(TrySendError::Disconnected(_)) => passing = false,
            }
        }
        framer.push(&Bytes::copy_from_slice(data), &mut lines);
        input.push(stream, &lines);
        lines.clear();
    }
    framer.finish(&mut lines);
    input.push(stream, &lines);
}

fn passthrough(mut out: File, rx: &mpsc::Receiver<Vec<u8>>, stream: Stream, source: &str) {
    let mut failing = false;
    while let Ok(data) = rx.recv() {
        match out.write_all(&data) {
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
