//! Where upstream endpoints come from, at run time: DNS, a watched file or etcd, each as a live
//! endpoint set; and the app's own registration in etcd.
//!
//! One task per discovered upstream publishes a [`SourceState`] on a `tokio::sync::watch`
//! channel: the last good endpoint set, when the source last answered, and its error while it
//! fails. A failing source never empties its upstream: the last good set keeps serving and its
//! age shows the staleness. Consumers (the proxy, via `tandem-app`) read the latest state; the
//! request path never waits on a source.
//!
//! # Layout
//! - this file: [`Endpoint`], [`SourceState`], [`Publisher`], [`spawn`];
//! - [`mod@file`]: YAML/JSON endpoint files (parsing, polling for changes);
//! - [`dns`]: A/AAAA/SRV resolution with TTL floor and ceiling;
//! - [`etcd`]: the registry data model, the etcd client, the watching source and the
//!   registration under a lease.

pub mod dns;
pub mod etcd;
pub mod file;

use std::sync::Arc;

use tandem_config::{Address, Discovery, UpstreamEndpoint};
use tokio::sync::watch;
use tokio::time::Instant;

/// One endpoint a source provides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Where it is.
    pub address: Address,
    /// Relative share of traffic (at least 1).
    pub weight: u32,
    /// Zone, when the source knows it (sources share one string per distinct zone).
    pub zone: Option<Arc<str>>,
}

/// What a source has published so far.
#[derive(Clone, Debug)]
pub struct SourceState {
    /// `dns`, `file` or `etcd`.
    pub source: &'static str,
    /// What it watches: a DNS name, a path or an etcd key prefix.
    pub target: String,
    /// The last good endpoint set; `None` before the first successful answer.
    pub endpoints: Option<Arc<Vec<Endpoint>>>,
    /// When the source last answered successfully (changed or not).
    pub updated: Option<Instant>,
    /// The last error, while the source fails; cleared by the next success.
    pub error: Option<String>,
    /// Failures since start.
    pub errors: u64,
    /// Endpoint sets published since start (changes only).
    pub updates: u64,
}

/// The sending side of a source, used by the source tasks.
#[derive(Clone, Debug)]
pub struct Publisher {
    tx: Arc<watch::Sender<SourceState>>,
}

// === impl Endpoint ===

impl Endpoint {
    /// The proxy's form of it.
    pub fn to_upstream(&self) -> UpstreamEndpoint {
        UpstreamEndpoint {
            address: self.address.clone(),
            weight: self.weight.max(1),
            zone: self.zone.as_deref().map(str::to_owned),
        }
    }
}

// === impl Publisher ===

impl Publisher {
    /// A publisher for a `source` watching `target`, and the receiver consumers read.
    pub fn new(source: &'static str, target: String) -> (Publisher, watch::Receiver<SourceState>) {
        let (tx, rx) = watch::channel(SourceState {
            source,
            target,
            endpoints: None,
            updated: None,
            error: None,
            errors: 0,
            updates: 0,
        });
        (Publisher { tx: Arc::new(tx) }, rx)
    }

    /// A successful answer: publishes `endpoints` if they differ from the last set (order
    /// does not matter), and marks the source fresh and healthy.
    pub fn publish(&self, mut endpoints: Vec<Endpoint>) {
        // Sorted and without duplicates (two ids may name one address: the first wins), so
        // equal sets compare equal whatever order the source produced.
        endpoints.sort_by(|a, b| address_order(&a.address, &b.address));
        endpoints.dedup_by(|a, b| a.address == b.address);
        self.tx.send_modify(|s| {
            if s.endpoints.as_deref() != Some(&endpoints) {
                s.endpoints = Some(Arc::new(endpoints));
                s.updates += 1;
            }
            s.updated = Some(Instant::now());
            s.error = None;
        });
    }

    /// A successful answer that changed nothing.
    pub fn confirm(&self) {
        self.tx.send_modify(|s| {
            s.updated = Some(Instant::now());
            s.error = None;
        });
    }

    /// A failure: the last set stays.
    pub fn failed(&self, error: String) {
        self.tx.send_modify(|s| {
            s.error = Some(error);
            s.errors += 1;
        });
    }

    /// Whether every receiver is gone (the source task should end).
    pub fn closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Completes when every receiver is gone.
    pub async fn wait_closed(&self) {
        self.tx.closed().await;
    }
}

/// A total order of addresses (IPs numerically), cheap enough to sort thousands per change:
/// no address is formatted.
fn address_order(a: &Address, b: &Address) -> std::cmp::Ordering {
    let rank = |a: &Address| match a {
        Address::Tcp(_) => 0,
        Address::Host { .. } => 1,
        Address::Unix(_) => 2,
    };
    match (a, b) {
        (Address::Tcp(x), Address::Tcp(y)) => x.cmp(y),
        (Address::Host { host: h, port: p }, Address::Host { host: g, port: q }) => {
            (h, p).cmp(&(g, q))
        }
        (Address::Unix(x), Address::Unix(y)) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)),
    }
}

/// Starts the source task of an upstream with a run-time `discovery` source; `None` for the
/// static list. `etcd` is the client for etcd sources (`None`: etcd sources report an error).
pub fn spawn(
    discovery: &Discovery,
    etcd: Option<(&etcd::Client, &str)>,
) -> Option<watch::Receiver<SourceState>> {
    match discovery {
        Discovery::Static => None,
        Discovery::Dns(d) => {
            let (p, rx) = Publisher::new("dns", d.name.clone());
            tokio::spawn(dns::run(d.clone(), p));
            Some(rx)
        }
        Discovery::File(f) => {
            let (p, rx) = Publisher::new("file", f.path.display().to_string());
            tokio::spawn(file::run(f.clone(), p));
            Some(rx)
        }
        Discovery::Etcd(e) => {
            let prefix = etcd.map_or("/tandem/services/", |(_, p)| p);
            let (p, rx) = Publisher::new("etcd", etcd::service_prefix(prefix, &e.service));
            match etcd {
                Some((client, prefix)) => {
                    tokio::spawn(etcd::watch::run(
                        client.clone(),
                        prefix.to_owned(),
                        e.service.clone(),
                        p,
                    ));
                }
                None => p.failed("no etcd cluster configured".into()),
            }
            Some(rx)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ep(a: &str, w: u32) -> Endpoint {
        Endpoint {
            address: a.parse().unwrap(),
            weight: w,
            zone: None,
        }
    }

    /// Publishing the same set in another order is not an update; a failure keeps the set and
    /// the next success clears the error.
    #[tokio::test]
    async fn publish_only_changes_and_keep_the_last_good_set() {
        let (p, mut rx) = Publisher::new("file", "x".into());
        p.publish(vec![ep("10.0.0.1:80", 1), ep("10.0.0.2:80", 1)]);
        assert!(rx.has_changed().unwrap());
        let s = rx.borrow_and_update().clone();
        assert_eq!(s.updates, 1);
        p.publish(vec![ep("10.0.0.2:80", 1), ep("10.0.0.1:80", 1)]);
        assert_eq!(rx.borrow_and_update().updates, 1);
        p.failed("boom".into());
        let s = rx.borrow_and_update().clone();
        assert_eq!(s.endpoints.unwrap().len(), 2);
        assert_eq!(s.error.as_deref(), Some("boom"));
        p.publish(vec![ep("10.0.0.1:80", 2)]);
        let s = rx.borrow_and_update().clone();
        assert_eq!(s.updates, 2);
        assert!(s.error.is_none());
        assert_eq!(s.endpoints.unwrap()[0].weight, 2);
    }
}
