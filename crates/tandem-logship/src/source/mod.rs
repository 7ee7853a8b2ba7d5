//! Log sources: where lines come from.
//!
//! # Layout
//! - [`file`](mod@file): files by glob, followed through rotation ([`file::FileTailer`]).
//!
//! Next (issue 7): the supervised app's stdout/stderr (with a disk buffer so the app never
//! blocks), and Tandem's access log.

pub mod file;

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
