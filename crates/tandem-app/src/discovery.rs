//! Wires discovery into the running app: one source per discovered upstream, whose endpoint
//! sets are applied to the upstream's live endpoint set; the app's registration in etcd.
//!
//! Each upstream with a `discovery` source gets a consumer task that applies every new set
//! ([`UpstreamHandle::set_endpoints`]: endpoints that stay keep their state and connections),
//! mirrors the source's freshness and error into `/upstreams`, and keeps the discovery metrics
//! current (the age gauge once a second). The tasks end when the source ends, i.e. never while
//! the process runs.

use std::sync::Arc;
use std::time::Duration;

use tandem_api::Readiness;
use tandem_config::{Address, Config, Discovery};
use tandem_discovery::etcd::{self, register::Registration, Instance};
use tandem_discovery::SourceState;
use tandem_proxy::stack::{discovery_source, DiscoveryStatus, UpstreamHandle, Wanted};
use tandem_proxy::Snapshot;
use tandem_telemetry::discovery::DiscoveryMetrics;
use tandem_telemetry::Metrics;
use tokio::sync::watch;
use tokio::time::Instant;

/// The discovery side of a running app.
pub(crate) struct Discoverer {
    sources: Vec<watch::Receiver<SourceState>>,
    etcd: Option<etcd::Client>,
}

// === impl Discoverer ===

impl Discoverer {
    /// Starts a source for every discovered upstream of `snapshot`. Fails when the etcd TLS
    /// files cannot be read.
    pub(crate) fn start(
        config: &Config,
        snapshot: &Snapshot,
        metrics: &Metrics,
    ) -> Result<Discoverer, etcd::Error> {
        let etcd = config.etcd.as_ref().map(etcd::Client::new).transpose()?;
        let prefix = config.etcd.as_ref().map(|e| e.prefix.clone());
        let mut sources = Vec::new();
        for u in &config.upstreams {
            if u.discovery == Discovery::Static {
                continue;
            }
            let Some(handle) = snapshot.upstreams.get(&u.name) else {
                continue;
            };
            let client = etcd.as_ref().zip(prefix.as_deref());
            let Some(rx) = tandem_discovery::spawn(&u.discovery, client) else {
                continue;
            };
            let m = metrics.discovery(&u.name, discovery_source(&u.discovery));
            tokio::spawn(apply(rx.clone(), handle.clone(), m));
            sources.push(rx);
        }
        Ok(Discoverer { sources, etcd })
    }

    /// Waits until every source answered once (or failed once), at most `limit`: the first
    /// requests then find endpoints instead of `no_endpoints`.
    pub(crate) async fn primed(&self, limit: Duration) {
        let all = async {
            for rx in &self.sources {
                let mut rx = rx.clone();
                let _ = rx
                    .wait_for(|s| s.endpoints.is_some() || s.error.is_some() && s.errors > 0)
                    .await;
            }
        };
        if tokio::time::timeout(limit, all).await.is_err() {
            tracing::warn!(
                ?limit,
                "some discovery sources have not answered yet; serving without them"
            );
        }
    }

    /// Starts the app's registration, when configured: after `readiness` says ready.
    pub(crate) fn register(
        &self,
        config: &Config,
        advertised: Option<Address>,
        readiness: Arc<Readiness>,
        metrics: &Metrics,
    ) -> Option<Registration> {
        let r = config.registration.as_ref()?;
        let etcd_config = config.etcd.as_ref()?;
        let client = self.etcd.clone()?;
        let address = match (&r.address, advertised) {
            (Some(a), _) => a.clone(),
            (None, Some(a)) => a.to_string(),
            (None, None) => {
                tracing::error!(listener = %r.listener, "registration: the listener has no address to advertise; not registering");
                return None;
            }
        };
        let id = r.id.clone().unwrap_or_else(|| address.clone());
        let key = format!(
            "{}{}",
            etcd::service_prefix(&etcd_config.prefix, &r.service),
            id
        );
        let instance = Instance {
            address,
            weight: r.weight,
            zone: r.zone.clone(),
            identity: r.identity.clone(),
            metadata: r.metadata.iter().cloned().collect(),
        };
        let ready = async move {
            while readiness.check().is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        Some(Registration::start(
            client,
            key,
            instance,
            r.ttl,
            ready,
            metrics.registration(&r.service),
        ))
    }
}

/// Applies a source's states to its upstream until the source ends.
async fn apply(
    mut rx: watch::Receiver<SourceState>,
    upstream: Arc<UpstreamHandle>,
    metrics: DiscoveryMetrics,
) {
    let mut applied: Option<Arc<Vec<tandem_discovery::Endpoint>>> = None;
    let mut errors = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // When the last applied change settles: see `release_freed_memory`.
    let mut settle: Option<Instant> = None;
    loop {
        let state = rx.borrow_and_update().clone();
        if let Some(eps) = &state.endpoints {
            if applied.as_ref().is_none_or(|a| !Arc::ptr_eq(a, eps)) {
                // Borrowed from the source's set: no copy of thousands of endpoints per change.
                let change = upstream.set_members(eps.iter().map(|e| Wanted {
                    address: &e.address,
                    weight: e.weight,
                    zone: e.zone.as_deref(),
                }));
                if !change.added.is_empty() || !change.removed.is_empty() {
                    tracing::info!(upstream = %upstream.name, source = state.source, endpoints = eps.len(), added = %Few(&change.added), removed = %Few(&change.removed), "endpoints changed");
                }
                metrics.endpoints.set(eps.len() as i64);
                metrics.updates.inc();
                applied = Some(eps.clone());
                settle = Some(Instant::now() + SETTLE);
            }
        }
        if state.errors > errors {
            metrics.errors.inc_by(state.errors - errors);
            errors = state.errors;
        }
        let age = |now: Instant| state.updated.map(|u| now.saturating_duration_since(u));
        metrics
            .age_seconds
            .set(age(Instant::now()).map_or(0.0, |a| a.as_secs_f64()));
        upstream.set_discovery_status(DiscoveryStatus {
            source: state.source,
            target: state.target.clone(),
            updated: state.updated,
            error: state.error.clone(),
        });
        let settled = async move {
            match settle {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
            () = settled => {
                settle = None;
                release_freed_memory();
            }
        }
    }
}

/// Quiet time after the last applied set before [`release_freed_memory`]: longer than
/// mimalloc's purge delay (1 s), so everything the changes freed is due for return.
const SETTLE: Duration = Duration::from_millis(1500);

/// Lets the allocator return the memory a burst of endpoint sets freed.
///
/// Each applied set of thousands of endpoints allocates its new tables and frees the old
/// ones; a burst (10,000 instances registering in a second: ~80 sets) frees tens of MiB.
/// mimalloc (the binary's allocator) gives freed pages back to the OS only after its purge
/// delay, and only when a later page is freed: in a sidecar that goes quiet after the burst,
/// that is never, and the burst's garbage stays resident (10,000 endpoints arriving through
/// the watch: +28 MiB over idle without this, +21 to +26 with it; docs/benchmarks.md).
/// Allocating and freeing one block above its largest size class (512 KiB) frees a page,
/// which purges what is due, for the whole process. Untouched, the block costs no memory; with another allocator it is one
/// allocation and free, and harmless.
fn release_freed_memory() {
    let block: Vec<u8> = Vec::with_capacity(1 << 20);
    // Kept opaque so the compiler cannot elide the allocation.
    drop(std::hint::black_box(block));
}

/// A list of endpoint labels for a log line: the first few and how many more, so a set of
/// thousands does not make a log line of thousands.
struct Few<'a>(&'a [String]);

impl std::fmt::Display for Few<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 8;
        f.write_str("[")?;
        for (i, l) in self.0.iter().take(SHOWN).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(l)?;
        }
        if self.0.len() > SHOWN {
            write!(f, ", ... {} more", self.0.len() - SHOWN)?;
        }
        f.write_str("]")
    }
}
