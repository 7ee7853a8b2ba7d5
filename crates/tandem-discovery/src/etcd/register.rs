//! Registration of the app in etcd: `<prefix><service>/<id>` = [`Instance`] attached to a
//! lease of `ttl`, kept alive every third of the TTL.
//!
//! - Waits until the app is ready (the future given to [`Registration::start`]) before
//!   registering, so peers never see an instance that cannot serve.
//! - Keep-alive failures move to another member and retry until the lease would have expired;
//!   a lease etcd no longer knows (it expired during a partition or while etcd was down) is
//!   replaced by a new lease and the key written again.
//! - [`Registration::withdraw`] revokes the lease (deleting the key) before the listeners
//!   close, so peers stop sending first; it is bounded by a timeout, and a crash leaves the key
//!   to expire with its lease.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem_telemetry::discovery::RegistrationMetrics;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::client::{Client, Error};
use super::Instance;

/// Back-off between failed registration attempts, at most.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A running registration.
pub struct Registration {
    client: Client,
    key: String,
    lease: Arc<Mutex<Option<i64>>>,
    task: JoinHandle<()>,
}

// === impl Registration ===

impl Registration {
    /// Registers `instance` at `key` once `ready` completes, and keeps it registered.
    pub fn start(
        client: Client,
        key: String,
        instance: Instance,
        ttl: Duration,
        ready: impl Future<Output = ()> + Send + 'static,
        metrics: RegistrationMetrics,
    ) -> Registration {
        let lease = Arc::new(Mutex::new(None));
        let task = tokio::spawn(run(
            client.clone(),
            key.clone(),
            instance.to_json(),
            ttl,
            ready,
            lease.clone(),
            metrics,
        ));
        Registration {
            client,
            key,
            lease,
            task,
        }
    }

    /// The key registered.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether the instance is registered under a live lease now.
    pub fn registered(&self) -> bool {
        self.lease.lock().map(|l| l.is_some()).unwrap_or(false)
    }

    /// Stops keeping the lease alive and removes the registration: revokes the lease (etcd
    /// deletes the key with it) and deletes the key (in case a registration was under way and
    /// its lease not yet recorded), within `timeout`. Returns whether a registration was in place
    /// and etcd confirmed its removal.
    pub async fn withdraw(self, timeout: Duration) -> bool {
        self.task.abort();
        let lease = self.lease.lock().ok().and_then(|mut l| l.take());
        let client = self.client;
        let key = self.key;
        let done = async {
            if let Some(id) = lease {
                client.lease_revoke(id).await?;
            }
            client.delete(&key).await
        };
        match tokio::time::timeout(timeout, done).await {
            Ok(Ok(())) => {
                tracing::info!(key = %key, "registration withdrawn");
                lease.is_some()
            }
            Ok(Err(e)) => {
                tracing::warn!(key = %key, error = %e, "could not withdraw the registration; it expires with its lease");
                false
            }
            Err(_) => {
                tracing::warn!(key = %key, ?timeout, "etcd did not confirm the withdrawal in time; the registration expires with its lease");
                false
            }
        }
    }
}

async fn run(
    client: Client,
    key: String,
    value: Vec<u8>,
    ttl: Duration,
    ready: impl Future<Output = ()>,
    lease: Arc<Mutex<Option<i64>>>,
    metrics: RegistrationMetrics,
) {
    ready.await;
    let mut backoff = Duration::from_millis(100);
    let mut registered_before = false;
    loop {
        match register(&client, &key, &value, ttl).await {
            Ok(id) => {
                backoff = Duration::from_millis(100);
                if let Ok(mut l) = lease.lock() {
                    *l = Some(id);
                }
                metrics.registered.set(1);
                if registered_before {
                    metrics.lost.inc();
                    tracing::info!(key = %key, lease = id, "registered again");
                } else {
                    tracing::info!(key = %key, lease = id, ttl = ?ttl, "registered in etcd");
                }
                registered_before = true;
                let why = keep_alive(&client, id, ttl).await;
                if let Ok(mut l) = lease.lock() {
                    *l = None;
                }
                metrics.registered.set(0);
                tracing::warn!(key = %key, lease = id, reason = %why, "registration lost; registering again");
            }
            Err(e) => {
                tracing::warn!(key = %key, error = %e, "cannot register in etcd; retrying");
                client.reset();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Grants a lease and writes the key under it.
async fn register(client: &Client, key: &str, value: &[u8], ttl: Duration) -> Result<i64, Error> {
    let id = client.lease_grant(ttl).await?;
    if let Err(e) = client.put(key, value.to_vec(), id).await {
        // Best effort: do not leave an empty lease behind.
        let _ = client.lease_revoke(id).await;
        return Err(e);
    }
    Ok(id)
}

/// Keeps lease `id` alive; returns why it stopped (the lease is gone or expired).
async fn keep_alive(client: &Client, id: i64, ttl: Duration) -> String {
    let interval = ttl / 3;
    let mut expires = Instant::now() + ttl;
    let mut stream = None;
    loop {
        let now = Instant::now();
        if now >= expires {
            return format!("no keep-alive reached etcd for {ttl:?}: the lease has expired");
        }
        if stream.is_none() {
            match client.keep_alive(id).await {
                Ok(s) => stream = Some(s),
                Err(e) => {
                    tracing::debug!(error = %e, "keep-alive stream failed to open; trying another member");
                    client.reset();
                    tokio::time::sleep(Duration::from_millis(200).min(expires - now)).await;
                    continue;
                }
            }
        }
        let Some(s) = stream.as_mut() else { continue };
        let wait = client.timeout().min(expires.saturating_duration_since(now));
        match s.refresh(wait).await {
            Ok(0) => return "etcd no longer knows the lease".to_owned(),
            Ok(granted) => {
                expires = Instant::now() + Duration::from_secs(granted.max(1) as u64);
                tokio::time::sleep(interval).await;
            }
            Err(e) => {
                tracing::debug!(error = %e, "keep-alive failed; trying another member");
                stream = None;
                client.reset();
            }
        }
    }
}
