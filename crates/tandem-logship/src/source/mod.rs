//! Log sources: where lines come from.
//!
//! # Layout
//! - [`file`](mod@file): files by glob, followed through rotation ([`file::FileTailer`]).
//! - [`stream`]: sources that cannot pause their writer (memory, then a disk buffer, then
//!   drops), fed by [`stdio`] (the supervised app's stdout/stderr) and by the access log's
//!   writer thread.

pub mod file;
pub mod stdio;
pub mod stream;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;

/// Runs `tailer` on a thread of its own until `stop` is set.
pub(crate) fn spawn(
    tailer: file::FileTailer,
    name: &str,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("logs-{name}"))
        .spawn(move || tailer.run(&stop))
}

/// Runs a stream source's pump on a thread of its own until `stop` (and its confirmations).
pub(crate) fn spawn_pump(
    pump: stream::StreamPump,
    name: &str,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("logs-{name}"))
        .spawn(move || pump.run(&stop))
}
