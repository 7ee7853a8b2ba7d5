//! Dev-only support for Tandem's tests: real servers with failure knobs, an in-process
//! [`TestProxy`] running the real app on port 0, and [`assert_eventually!`].
//!
//! Everything binds 127.0.0.1 port 0 and is torn down on drop: no fixed ports, no global servers.
//!
//! # Layout
//! - [`upstream`]: [`Upstream`], an HTTP/1.1 + h2c test server whose behaviour is chosen by the
//!   request path and by whole-server modes set at runtime (delay, status, fail-next-n, reset,
//!   gRPC status, health), with per-path counters; it can be killed and restarted on its port.
//! - [`fault`]: [`FaultProxy`], a TCP proxy in front of any address adding one-way latency,
//!   partitions (blackhole) and resets of every connection; this kernel has no `tc netem`.
//! - [`TestProxy`]: the real `tandem_app::App`, built from YAML, served in a background task.
//! - [`assert_eventually!`]: polls a condition instead of sleeping.

#![allow(missing_docs, clippy::unwrap_used)]

pub mod fault;
pub mod upstream;

pub use fault::FaultProxy;
pub use upstream::Upstream;

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tandem_app::{App, Binds, RunOptions, Signal};
use tandem_config::Address;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Polls a condition until it holds or the time runs out (default 5 s), instead of sleeping.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr $(,)?) => {
        $crate::assert_eventually!($cond, std::time::Duration::from_secs(5))
    };
    ($cond:expr, $within:expr $(,)?) => {{
        let deadline = std::time::Instant::now() + $within;
        loop {
            if $cond {
                break;
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "condition not met within {:?}: {}",
                    $within,
                    stringify!($cond)
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }};
}

/// The real Tandem app, running in-process.
pub struct TestProxy {
    listeners: Vec<(String, SocketAddr)>,
    pub admin: SocketAddr,
    signals: mpsc::Sender<Signal>,
    task: JoinHandle<i32>,
}

impl TestProxy {
    /// Parses `yaml` (listeners should use port 0), binds, and starts serving.
    pub async fn start(yaml: &str) -> TestProxy {
        let config = match tandem_config::parse("test.yaml", yaml) {
            Ok(c) => c,
            Err(e) => panic!("test config invalid:\n{e}"),
        };
        let names: Vec<String> = config.listeners.iter().map(|l| l.name.clone()).collect();
        let binds = Binds::bind(&config).await.expect("bind");
        let app = App::build(config, binds);
        let listeners = names
            .into_iter()
            .filter_map(|n| match app.listener_address(&n) {
                Some(Address::Tcp(a)) => Some((n, a)),
                _ => None,
            })
            .collect();
        let admin = match app.admin_address() {
            Some(Address::Tcp(a)) => a,
            other => panic!("admin must be TCP in tests, got {other:?}"),
        };
        let (tx, rx) = mpsc::channel(4);
        let task = tokio::spawn(app.run(RunOptions::default(), rx));
        TestProxy {
            listeners,
            admin,
            signals: tx,
            task,
        }
    }

    /// The bound address of TCP listener `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no TCP listener {name}"))
    }

    /// Sends SIGTERM-equivalent and returns the exit code once drained.
    pub async fn terminate(self) -> i32 {
        self.signals.send(Signal::Terminate).await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("drained in time")
            .unwrap()
    }

    /// Starts draining without waiting.
    pub async fn start_drain(&self) {
        self.signals.send(Signal::Terminate).await.unwrap();
    }

    /// Waits for the app to finish (after [`TestProxy::start_drain`]).
    pub async fn join(self) -> i32 {
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("drained in time")
            .unwrap()
    }
}

/// Locks a test server's state; a panic elsewhere must not hide what the state says.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
