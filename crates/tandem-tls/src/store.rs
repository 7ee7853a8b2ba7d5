//! The live workload identity: the current validated [`Material`] behind an `ArcSwap`, and the
//! task that watches its files.
//!
//! Rotation: every `reload_interval` the watcher hashes the files; when the hash changed it loads
//! and validates them and swaps the new material in. Handshakes read the material when they
//! start, so new connections use the new pair and established ones keep theirs: nothing is
//! dropped. A refused load is logged and counted (`tandem_tls_cert_reload_total{result="error"}`)
//! and the last good pair stays; the same broken contents are not retried until they change.
//!
//! Writers rarely replace the cert and key in one atomic step, so a poll may see a new
//! certificate beside the old key. A refused load is therefore tried again after a short settle
//! delay while the files keep changing, and only then counted as an error.

use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tandem_telemetry::tls::CertMetrics;

use crate::pair::{self, Files, LoadError, Material};

/// How long a refused load waits for the files to settle before trying once more.
const SETTLE: Duration = Duration::from_millis(300);
/// Settle attempts before a refused load is reported.
const SETTLE_TRIES: usize = 3;

/// The workload identity and its reload state.
#[derive(Debug)]
pub struct Identity {
    files: Files,
    current: ArcSwap<Material>,
    /// Fingerprint of the last contents tried (good or bad), so a bad file is reported once.
    last_seen: std::sync::atomic::AtomicU64,
    metrics: std::sync::OnceLock<CertMetrics>,
}

impl Identity {
    /// Loads `files`; fails if they are not a valid pair (the caller refuses to start).
    pub fn load(files: Files) -> Result<Arc<Identity>, LoadError> {
        let material = pair::load(&files, pair::now())?;
        Ok(Arc::new(Identity {
            last_seen: material.fingerprint.into(),
            files,
            current: ArcSwap::from_pointee(material),
            metrics: std::sync::OnceLock::new(),
        }))
    }

    /// Reports expiry and reloads into `metrics` from now on (the first call wins).
    pub fn attach_metrics(&self, metrics: CertMetrics) {
        let _ = self.metrics.set(metrics);
        self.publish_expiry();
    }

    /// The material in use now.
    pub fn current(&self) -> Arc<Material> {
        self.current.load_full()
    }

    /// The files it watches.
    pub fn files(&self) -> &Files {
        &self.files
    }

    /// Checks the files once: `Ok(true)` when a new pair was swapped in, `Ok(false)` when
    /// nothing changed (or the change was already refused), `Err` when the new contents were
    /// refused (the current pair stays).
    pub async fn reload(&self) -> Result<bool, LoadError> {
        use std::sync::atomic::Ordering;
        let mut tries = 0;
        loop {
            let Some(seen) = pair::fingerprint(&self.files) else {
                // A file missing mid-rename: look again on the next poll... unless it stays so.
                tries += 1;
                if tries < SETTLE_TRIES {
                    tokio::time::sleep(SETTLE).await;
                    continue;
                }
                return match pair::load(&self.files, pair::now()) {
                    Ok(_) => Ok(false),
                    Err(e) => self.refused(e, 0),
                };
            };
            if seen == self.last_seen.load(Ordering::Relaxed) {
                return Ok(false);
            }
            match pair::load(&self.files, pair::now()) {
                Ok(m) => {
                    self.last_seen.store(m.fingerprint, Ordering::Relaxed);
                    tracing::info!(
                        cert = %self.files.cert.display(),
                        identity = m.identity.as_deref().unwrap_or("-"),
                        not_after = %pair::rfc3339(m.not_after),
                        "TLS certificate reloaded; new handshakes use it"
                    );
                    self.current.store(Arc::new(m));
                    self.publish_expiry();
                    if let Some(m) = self.metrics.get() {
                        m.reload_ok.inc();
                    }
                    return Ok(true);
                }
                Err(e) => {
                    tries += 1;
                    tokio::time::sleep(SETTLE).await;
                    if tries < SETTLE_TRIES && pair::fingerprint(&self.files) != Some(seen) {
                        // Still being written: judge the next version.
                        continue;
                    }
                    return self.refused(e, seen);
                }
            }
        }
    }

    fn refused(&self, e: LoadError, seen: u64) -> Result<bool, LoadError> {
        self.last_seen
            .store(seen, std::sync::atomic::Ordering::Relaxed);
        tracing::error!(
            error = %e,
            hint = e.hint(),
            "TLS certificate reload refused; still serving the last good certificate"
        );
        if let Some(m) = self.metrics.get() {
            m.reload_error.inc();
        }
        Err(e)
    }

    /// Polls the files every `interval` until the identity is dropped.
    pub fn spawn_watcher(self: &Arc<Self>, interval: Duration) {
        let weak: Weak<Identity> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(id) = weak.upgrade() else { return };
                let _ = id.reload().await;
            }
        });
    }

    fn publish_expiry(&self) {
        if let Some(metrics) = self.metrics.get() {
            let m = self.current.load();
            metrics.workload_expiry.set(m.not_after);
            if let Some(b) = m.bundle_not_after {
                metrics.bundle_expiry.set(b);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::dev_ca;

    fn issue(root: &std::path::Path, out: &str, id: &str) {
        dev_ca::issue(&dev_ca::IssueRequest {
            ca_dir: root.join("ca"),
            out_dir: root.join(out),
            identity: Some(id.to_owned()),
            dns: vec![],
            days: 30,
        })
        .unwrap();
    }

    /// Unchanged files change nothing; a new pair is swapped in; a broken one is refused once
    /// (the last good pair stays, and the same bad contents are not reported again); a good pair
    /// after it is picked up.
    #[tokio::test]
    async fn reload_swaps_good_pairs_and_keeps_the_last_one_on_bad() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        dev_ca::init(&root.join("ca"), "d.test", 30).unwrap();
        issue(root, "w", "spiffe://d.test/w/1");
        let files = Files {
            cert: root.join("w/cert.pem"),
            key: root.join("w/key.pem"),
            trust_bundle: Some(root.join("ca/ca.pem")),
        };
        let id = Identity::load(files.clone()).unwrap();
        assert!(!id.reload().await.unwrap());

        issue(root, "w", "spiffe://d.test/w/2");
        assert!(id.reload().await.unwrap());
        assert_eq!(
            id.current().identity.as_deref(),
            Some("spiffe://d.test/w/2")
        );

        let good = std::fs::read(&files.cert).unwrap();
        std::fs::write(&files.cert, &good[..good.len() / 2]).unwrap();
        assert!(id.reload().await.is_err());
        assert_eq!(
            id.current().identity.as_deref(),
            Some("spiffe://d.test/w/2")
        );
        assert!(
            !id.reload().await.unwrap(),
            "the same bad file is refused once"
        );

        issue(root, "w", "spiffe://d.test/w/3");
        assert!(id.reload().await.unwrap());
        assert_eq!(
            id.current().identity.as_deref(),
            Some("spiffe://d.test/w/3")
        );
    }
}
