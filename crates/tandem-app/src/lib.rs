//! Wiring: turns a checked [`Config`] into a running Tandem.
//!
//! [`Binds::bind`] opens every socket first (so a port conflict fails fast with the listener's
//! name), [`App::build`] resolves the data-path snapshot beside them, and [`App::run`] walks the
//! lifecycle documented in `docs/lifecycle.md`:
//!
//! ```text
//! bind -> serve listeners + admin -> start the app (when supervising) -> app accepts -> ready
//! signal: not ready -> inbound stops accepting and finishes in-flight -> signal the app
//!         -> app exits (or drain_timeout, then SIGKILL) -> outbound drains
//!         -> access log written out -> exit(app's code)
//! app exits by itself: not ready -> everything drains -> exit(app's code)
//! ```
//!
//! Listeners are injectable: tests bind port 0 and read the real addresses back, so they run the
//! real app in-process.
//!
//! # Layout
//! - this file: [`Binds`], [`App`], the lifecycle;
//! - [`supervisor`]: the app child process (start, signal, wait, exit code).
//!
//! Log shipping (`logs:`, `tandem-logship`) starts before anything serves, so a corrupt
//! checkpoint stops the start; it stops last, after the app exited and the listeners drained,
//! so the app's final lines are shipped, and gets `logs.flush_timeout` to deliver them.

mod discovery;
pub mod supervisor;

use std::sync::Arc;
use std::time::Duration;

use tandem_api::{AdminState, Readiness};
use tandem_config::{Address, Config, Direction};
use tandem_proxy::{BoundListener, Drain, Snapshot};
use tandem_telemetry::access_log;
use tandem_telemetry::trace::{Exporter, Tracer};
use tandem_telemetry::Metrics;
use tandem_tls::store::Identity;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use supervisor::{AppCommand, Supervisor};
pub use tandem_telemetry::access_log::Reopen as AccessLogReopen;

/// A socket that could not be bound, or an output that could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// A listener's or the admin API's socket.
    #[error("cannot bind {what} on {address}: {source}")]
    Socket {
        /// `listener "inbound"` or `admin`.
        what: String,
        /// The address.
        address: Address,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS identity's files (`tls`): missing, unparsable, mismatched or expired.
    #[error("cannot load the TLS identity ({key}): {source}\n  hint: {hint}")]
    Tls {
        /// The config key naming the file.
        key: &'static str,
        /// Why.
        #[source]
        source: tandem_tls::pair::LoadError,
        /// How to fix it.
        hint: &'static str,
    },
    /// The access log's file (or stdout).
    #[error("cannot open the access log {output}: {source}")]
    AccessLog {
        /// The configured path.
        output: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Every socket of one config, bound, and the access log's output, opened.
#[derive(Debug)]
pub struct Binds {
    listeners: Vec<BoundListener>,
    admin: BoundListener,
    access_log: Option<access_log::Output>,
    identity: Option<Arc<Identity>>,
}

/// A signal Tandem reacts to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: drain and exit.
    Terminate,
    /// SIGINT: same as SIGTERM.
    Interrupt,
}

/// A built Tandem, ready to run.
pub struct App {
    config: Arc<Config>,
    snapshot: Arc<Snapshot>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    binds: Binds,
    access_log: Option<access_log::Writer>,
    /// Sends finished spans to the collector once running (tracing on).
    exporter: Option<Exporter>,
}

/// Longest wait at exit for the last spans to reach the collector.
const FINAL_FLUSH: Duration = Duration::from_secs(2);

/// Longest wait at start for discovery sources' first answers.
const DISCOVERY_PRIMING: Duration = Duration::from_secs(3);

/// Longest wait at drain for etcd to confirm the registration's withdrawal.
const WITHDRAW_TIMEOUT: Duration = Duration::from_secs(2);

/// Time peers get to see the withdrawal (an etcd watch delivers it in milliseconds) before the
/// inbound listeners close.
const WITHDRAW_GRACE: Duration = Duration::from_millis(500);

/// How to run.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// The app to start and supervise, if any.
    pub supervise: Option<AppCommand>,
}

// === impl Binds ===

impl Binds {
    /// Binds every listener and the admin socket of `config`.
    pub async fn bind(config: &Config) -> Result<Binds, BindError> {
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            let b = BoundListener::bind(&l.address)
                .await
                .map_err(|source| BindError::Socket {
                    what: format!("listener \"{}\"", l.name),
                    address: l.address.clone(),
                    source,
                })?;
            listeners.push(b);
        }
        let admin = BoundListener::bind(&config.admin.address)
            .await
            .map_err(|source| BindError::Socket {
                what: "admin".into(),
                address: config.admin.address.clone(),
                source,
            })?;
        let access_log = match &config.access_log {
            Some(a) => Some(access_log::Output::open(&a.output).map_err(|source| {
                BindError::AccessLog {
                    output: a.output.to_string(),
                    source,
                }
            })?),
            None => None,
        };
        // The identity loads before anything serves: a TLS listener never starts without it.
        let identity = match &config.tls {
            Some(t) => {
                let files = tandem_tls::pair::Files {
                    cert: t.cert.clone(),
                    key: t.key.clone(),
                    trust_bundle: t.trust_bundle.clone(),
                };
                match Identity::load(files.clone()) {
                    Ok(i) => Some(i),
                    Err(source) => {
                        let key = if source.path() == files.key {
                            "tls.key"
                        } else if files.trust_bundle.as_deref() == Some(source.path()) {
                            "tls.trust_bundle"
                        } else {
                            "tls.cert"
                        };
                        return Err(BindError::Tls {
                            key,
                            hint: source.hint(),
                            source,
                        });
                    }
                }
            }
            None => None,
        };
        Ok(Binds {
            listeners,
            admin,
            access_log,
            identity,
        })
    }
}

// === impl App ===

impl App {
    /// Resolves the snapshot for `config` beside its bound sockets, and starts the access log's
    /// writer.
    pub fn build(config: Config, mut binds: Binds) -> App {
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::with_request_metrics(config.metrics.requests));
        let (log, writer) = match (&config.access_log, binds.access_log.take()) {
            (Some(a), Some(output)) => {
                match access_log::start(output, &a.fields, a.buffer, metrics.access_log_dropped()) {
                    Ok((log, writer)) => (Some(log), Some(writer)),
                    // Only when the OS refuses a thread: run on, without the access log.
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the access log writer; running without an access log");
                        (None, None)
                    }
                }
            }
            _ => (None, None),
        };
        let (tracer, exporter) = match &config.tracing {
            Some(t) => {
                let (tracer, exporter) = Tracer::new(t, metrics.trace());
                (Some(tracer), Some(exporter))
            }
            None => (None, None),
        };
        let identity = binds.identity.take();
        if let (Some(id), Some(t)) = (&identity, &config.tls) {
            id.attach_metrics(metrics.tls_certs());
            id.spawn_watcher(t.reload_interval);
        }
        let snapshot = Arc::new(Snapshot::build_tls(
            config.clone(),
            &metrics,
            log.as_ref(),
            tracer,
            identity.as_ref(),
        ));
        App {
            config,
            snapshot,
            metrics,
            readiness: Arc::new(Readiness::default()),
            binds,
            access_log: writer,
            exporter,
        }
    }

    /// What reopens the access log file (SIGUSR1); `None` without an access log.
    pub fn access_log_reopener(&self) -> Option<AccessLogReopen> {
        self.access_log.as_ref().map(access_log::Writer::reopener)
    }

    /// The bound address of listener `name` (real port when configured with port 0).
    pub fn listener_address(&self, name: &str) -> Option<Address> {
        let idx = self.config.listeners.iter().position(|l| l.name == name)?;
        self.binds.listeners.get(idx)?.local_address().ok()
    }

    /// The bound admin address.
    pub fn admin_address(&self) -> Option<Address> {
        self.binds.admin.local_address().ok()
    }

    /// Readiness flags (shared with `/ready`).
    pub fn readiness(&self) -> Arc<Readiness> {
        self.readiness.clone()
    }

    /// Runs until a signal (from `signals`) or the supervised app's exit, then drains. Returns the
    /// process exit code: the app's when supervising, else 0.
    pub async fn run(self, opts: RunOptions, mut signals: mpsc::Receiver<Signal>) -> i32 {
        let App {
            config,
            snapshot,
            metrics,
            readiness,
            binds,
            access_log,
            exporter,
        } = self;
        let exporter = exporter.map(|e| {
            if let Some(t) = &config.tracing {
                tracing::info!(endpoint = %t.otlp.endpoint, protocol = ?t.otlp.protocol, sample_ratio = t.sample_ratio, "tracing on");
            }
            e.spawn()
        });
        // Discovery first (an unreadable etcd TLS file stops the start); health checks later
        // cover the endpoints it found.
        let discoverer = match discovery::Discoverer::start(&config, &snapshot, &metrics) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!("cannot start discovery: {e}");
                return 1;
            }
        };
        // Before anything serves: a checkpoint that cannot be trusted must stop the start.
        let logs = match &config.logs {
            Some(l) => match tandem_logship::LogShipper::start(l, metrics.clone()) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!("cannot start log shipping: {e}");
                    return 1;
                }
            },
            None => None,
        };
        // The access log's lines into the pipeline, and the app's output through it.
        if let (Some(shipper), Some(w)) = (&logs, &access_log) {
            if let Some(tap) = shipper.access_log_tap() {
                w.set_tap(tap);
            }
        }
        let stdio = logs.as_ref().and_then(tandem_logship::LogShipper::stdio);
        if stdio.is_some() && opts.supervise.is_none() {
            tracing::warn!("a stdio log source is configured but Tandem supervises no app (`tandem run -- APP ARGS`): it captures nothing");
        }
        let logs_status = logs.as_ref().map(|l| {
            let board = l.status();
            let f: tandem_api::LogsStatus =
                Arc::new(move || serde_json::to_value(board.snapshot()).unwrap_or_default());
            f
        });
        let inbound = Drain::new();
        let outbound = Drain::new();
        let admin_stop = Drain::new();
        discoverer.primed(DISCOVERY_PRIMING).await;
        tandem_proxy::health::spawn_all(&snapshot);
        snapshot.spawn_jwks_refresh();
        let advertised = config
            .registration
            .as_ref()
            .and_then(|r| config.listeners.iter().position(|l| l.name == r.listener))
            .and_then(|i| binds.listeners.get(i))
            .and_then(|b| b.local_address().ok());
        let metrics_for_registration = metrics.clone();

        let admin = tokio::spawn(serve_admin(
            binds.admin,
            AdminState {
                metrics,
                readiness: readiness.clone(),
                config: config.clone(),
                snapshot: snapshot.clone(),
                logs: logs_status,
            },
            admin_stop.clone(),
        ));

        let mut listeners = JoinSet::new();
        for (bound, stack) in binds.listeners.into_iter().zip(snapshot.listeners.iter()) {
            let drain = match stack.direction {
                Direction::Inbound => inbound.watch(),
                Direction::Outbound => outbound.watch(),
            };
            listeners.spawn(tandem_proxy::server::run_listener(
                bound,
                stack.clone(),
                drain,
            ));
        }
        readiness.set_listeners_bound();
        tracing::info!(listeners = config.listeners.len(), source = %config.source, "listening");
        let registration = discoverer.register(
            &config,
            advertised,
            readiness.clone(),
            &metrics_for_registration,
        );

        let mut app = match opts.supervise {
            Some(cmd) => match Supervisor::start(&cmd, stdio.as_ref()) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the app");
                    admin_stop.start();
                    return 127;
                }
            },
            None => None,
        };
        let probe = match (&app, app_address(&config)) {
            (Some(_), Some(addr)) => Some(tokio::spawn(probe_app(addr, readiness.clone()))),
            _ => {
                readiness.set_app_ready();
                None
            }
        };

        // Wait for the first of: a signal, the app's own exit.
        let mut code = 0;
        let mut app_exited = false;
        let signal = tokio::select! {
            s = signals.recv() => s,
            c = async { match app.as_mut() { Some(a) => a.wait().await, None => std::future::pending().await } } => {
                code = c;
                app_exited = true;
                None
            }
        };
        if let Some(p) = probe {
            p.abort();
        }
        readiness.set_draining();
        let deadline = Instant::now() + config.drain_timeout;
        tracing::info!(?signal, app_exited, drain_timeout = ?config.drain_timeout, "draining");
        // Peers stop sending before the listeners close: withdraw, give their watches a moment
        // to deliver the deletion, then close.
        if let Some(r) = registration {
            let budget = config.drain_timeout / 2;
            if r.withdraw(WITHDRAW_TIMEOUT.min(budget)).await {
                tokio::time::sleep(WITHDRAW_GRACE.min(budget)).await;
            }
        }
        inbound.start();

        if let (Some(a), false) = (app.as_mut(), app_exited) {
            a.signal(signal.unwrap_or(Signal::Terminate));
            code = tokio::select! {
                c = a.wait() => c,
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!("app did not exit within drain_timeout; killing it");
                    a.kill().await
                }
                _ = signals.recv() => {
                    tracing::warn!("second signal; killing the app");
                    a.kill().await
                }
            };
        }
        outbound.start();

        let all_drained = async { while listeners.join_next().await.is_some() {} };
        tokio::select! {
            _ = all_drained => tracing::info!("drained"),
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!("drain_timeout reached; closing remaining connections");
            }
            _ = signals.recv() => tracing::warn!("second signal; exiting without waiting"),
        }
        listeners.abort_all();
        // Write out the lines of everything that finished; a connection still open past
        // drain_timeout is cut when the process exits, unlogged.
        if let Some(w) = access_log {
            if !w.shutdown(Duration::from_secs(2)).await {
                tracing::warn!(
                    "access log: the writer did not finish within 2s; lines still queued are lost"
                );
            }
        }
        if let Some(e) = exporter {
            // The spans of the last requests, bounded: a collector that is down costs at most
            // this at exit.
            let grace = config
                .tracing
                .as_ref()
                .map_or(FINAL_FLUSH, |t| t.otlp.timeout.min(FINAL_FLUSH));
            e.shutdown(grace).await;
        }
        if let (Some(shipper), Some(l)) = (logs, &config.logs) {
            shipper.shutdown(l.flush_timeout).await;
        }
        admin_stop.start();
        let _ = tokio::time::timeout(Duration::from_secs(1), admin).await;
        code
    }
}

/// The first endpoint of the app's upstream: where readiness probes connect.
fn app_address(config: &Config) -> Option<Address> {
    let name = &config.app.as_ref()?.upstream;
    config
        .upstreams
        .iter()
        .find(|u| &u.name == name)?
        .endpoints
        .first()
        .map(|e| e.address.clone())
}

async fn probe_app(address: Address, readiness: Arc<Readiness>) {
    let connector = tandem_proxy::pool::Connector::new(address.clone(), Duration::from_secs(1));
    loop {
        if connector.connect().await.is_ok() {
            tracing::info!(%address, "app accepts connections; ready");
            readiness.set_app_ready();
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn serve_admin(bound: BoundListener, state: AdminState, stop: Drain) {
    let router = tandem_api::router(state);
    let mut w = stop.watch();
    let shutdown = async move { tandem_proxy::listen::drained(&mut w).await };
    let result = match bound {
        BoundListener::Tcp(l) => {
            axum::serve(l, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
        BoundListener::Unix(l, _guard) => {
            axum::serve(l, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "admin server failed");
    }
}
