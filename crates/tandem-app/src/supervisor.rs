//! The supervised app: a child process whose stdout/stderr pass through, which receives the
//! signals Tandem receives, and whose exit code becomes Tandem's.
//!
//! With a `stdio` log source, the app's stdout and/or stderr are pipes read by log shipping
//! (`tandem_logship::source::stdio`), which passes every byte through to Tandem's own stdout
//! and stderr and ships the lines; otherwise the app inherits Tandem's streams.

use std::ffi::OsString;
use std::io;
use std::process::ExitStatus;

use nix::sys::signal::{kill, Signal as NixSignal};
use nix::unistd::Pid;
use tandem_logship::source::stdio::StdioCapture;
use tokio::process::{Child, Command};

use crate::Signal;

/// The app to run: `tandem run -- PROGRAM ARGS...`.
#[derive(Clone, Debug)]
pub struct AppCommand {
    /// Program (looked up in PATH).
    pub program: OsString,
    /// Arguments.
    pub args: Vec<OsString>,
}

/// A running app.
#[derive(Debug)]
pub struct Supervisor {
    child: Child,
    exit: Option<i32>,
}

impl Supervisor {
    /// Starts the app with Tandem's stdin, stdout and stderr, or with pipes from `capture`
    /// for the streams it captures.
    pub fn start(cmd: &AppCommand, capture: Option<&StdioCapture>) -> io::Result<Supervisor> {
        let mut command = Command::new(&cmd.program);
        command.args(&cmd.args).kill_on_drop(true);
        if let Some(c) = capture {
            // The write ends live in `command` until it is dropped below: once the app (and
            // whatever inherited them) exits, the readers see the end of the pipes.
            let pipes = c.pipes()?;
            if let Some(w) = pipes.stdout {
                command.stdout(w);
            }
            if let Some(w) = pipes.stderr {
                command.stderr(w);
            }
        }
        let child = command.spawn().map_err(|e| {
            io::Error::new(e.kind(), format!("{}: {e}", cmd.program.to_string_lossy()))
        })?;
        tracing::info!(pid = child.id(), program = %cmd.program.to_string_lossy(), "app started");
        Ok(Supervisor { child, exit: None })
    }

    /// Waits for the app to exit; returns its exit code (128 + signal number when killed by a
    /// signal, the shell convention). Cancel-safe and idempotent.
    pub async fn wait(&mut self) -> i32 {
        if let Some(code) = self.exit {
            return code;
        }
        let code = match self.child.wait().await {
            Ok(status) => exit_code(status),
            Err(e) => {
                tracing::error!(error = %e, "waiting for the app failed");
                1
            }
        };
        tracing::info!(code, "app exited");
        self.exit = Some(code);
        code
    }

    /// Forwards `signal` to the app.
    pub fn signal(&self, signal: Signal) {
        let Some(pid) = self.child.id() else { return };
        let sig = match signal {
            Signal::Terminate => NixSignal::SIGTERM,
            Signal::Interrupt => NixSignal::SIGINT,
        };
        let Ok(pid) = i32::try_from(pid) else { return };
        if let Err(e) = kill(Pid::from_raw(pid), sig) {
            tracing::warn!(error = %e, "cannot signal the app");
        }
    }

    /// Kills the app (SIGKILL) and returns its exit code.
    pub async fn kill(&mut self) -> i32 {
        if self.exit.is_none() {
            let _ = self.child.start_kill();
        }
        self.wait().await
    }
}

fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        (None, None) => 1,
    }
}
