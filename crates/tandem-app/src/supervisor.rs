//! The supervised app: a child process whose stdout/stderr pass through, which receives the
//! signals Tandem receives, and whose exit code becomes Tandem's.
//!
//! With a `stdio` log source, the app's stdout and/or stderr are pipes read by log shipping
//! (`tandem_logship::source::stdio`), which passes every byte through to Tandem's own stdout
//! and stderr and ships the lines; otherwise the app inherits Tandem's streams.
//!
//! The app never outlives Tandem: if Tandem dies without shutting down (SIGKILL, the OOM
//! killer, a crash), the kernel sends the app SIGTERM (`PR_SET_PDEATHSIG`). An orphaned app
//! would keep serving with no sidecar in front of it, write into pipes nobody reads, and hold
//! its port against the app that Tandem's restart starts. The death signal has to be set in the
//! child between fork and exec; rather than an `unsafe` `pre_exec` hook, the child is Tandem
//! itself re-executed as `tandem __exec-app PARENT PROGRAM ARGS...` ([`exec_app`]), which sets
//! it and then executes the app (the setting survives `execve`).

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
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

/// `argv[1]` of the re-executed Tandem that becomes the app (see [`exec_app`]).
pub const EXEC_APP: &str = "__exec-app";

impl Supervisor {
    /// Starts the app with Tandem's stdin, stdout and stderr, or with pipes from `capture`
    /// for the streams it captures. The program is looked up in `PATH` here, so a missing or
    /// non-executable one is an error now rather than an exit code later.
    ///
    /// Must be called on a thread that lives as long as Tandem (the runtime's main or worker
    /// threads, not a blocking-pool thread): the kernel sends the death signal when the thread
    /// that forked the child ends, not only when the process does.
    pub fn start(cmd: &AppCommand, capture: Option<&StdioCapture>) -> io::Result<Supervisor> {
        let program = resolve(&cmd.program).map_err(|e| {
            io::Error::new(e.kind(), format!("{}: {e}", cmd.program.to_string_lossy()))
        })?;
        let mut command = Command::new("/proc/self/exe");
        command
            .arg(EXEC_APP)
            .arg(std::process::id().to_string())
            .arg(&program)
            .args(&cmd.args)
            .kill_on_drop(true);
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

/// The program's path: as given when it names a path, else the first executable file of that
/// name in `PATH` (what `execvp` would run).
fn resolve(program: &OsStr) -> io::Result<PathBuf> {
    let executable = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.as_bytes().contains(&b'/') {
        let p = PathBuf::from(program);
        return match p.metadata() {
            Err(e) => Err(e),
            Ok(_) if executable(&p) => Ok(p),
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "not an executable file",
            )),
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not found in PATH"))
}

/// The child side of [`Supervisor::start`], run by `main` when `argv[1]` is [`EXEC_APP`]:
/// `args` are `PARENT PROGRAM ARGS...`. Asks for SIGTERM when the parent dies, then replaces
/// itself with the app; returns only on failure, with the exit code to use (127: cannot
/// execute, the shell convention; 143: the parent died before the death signal was set, as
/// if the signal had come).
pub fn exec_app(args: &[OsString]) -> i32 {
    let [parent, program, rest @ ..] = args else {
        eprintln!("tandem: {EXEC_APP} is internal: PARENT PROGRAM ARGS...");
        return 2;
    };
    if let Err(e) = nix::sys::prctl::set_pdeathsig(NixSignal::SIGTERM) {
        eprintln!("tandem: cannot tie the app to Tandem's life: {e}");
        return 127;
    }
    // The parent may have died between fork and the call above: then nobody will signal us.
    let parent: Option<u32> = parent.to_str().and_then(|p| p.parse().ok());
    let ppid = u32::try_from(nix::unistd::getppid().as_raw()).ok();
    if parent.is_none() || parent != ppid {
        return 128 + NixSignal::SIGTERM as i32;
    }
    let cstr = |s: &OsString| CString::new(s.as_bytes());
    let argv: Result<Vec<CString>, _> = std::iter::once(program).chain(rest).map(cstr).collect();
    let (Ok(path), Ok(argv)) = (cstr(program), argv) else {
        eprintln!("tandem: the app's command line contains a NUL byte");
        return 127;
    };
    let e = match nix::unistd::execv(&path, &argv) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    eprintln!("tandem: cannot execute {}: {e}", program.to_string_lossy());
    127
}

fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        (None, None) => 1,
    }
}
