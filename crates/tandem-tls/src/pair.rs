//! Reading and validating the workload's files: certificate chain (PEM, leaf first), private key
//! (PEM: PKCS#8, PKCS#1 or SEC1) and trust bundle (PEM, one or more CA certificates: several
//! overlap while a CA rotates).
//!
//! A pair is accepted only when the chain parses, the key parses and matches the leaf, and the
//! leaf is within its validity period. A bundle is accepted when it holds at least one CA that
//! rustls can use. Errors name the file and say how to fix it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::FromDer;

use crate::identity::Sans;

/// The files of a workload identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Files {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// The leaf's private key.
    pub key: PathBuf,
    /// CA certificates peers are verified against; `None`: peers are not verified (server-only
    /// TLS on listeners; upstream TLS then needs one).
    pub trust_bundle: Option<PathBuf>,
}

/// A validated identity, ready for handshakes.
#[derive(Debug)]
pub struct Material {
    /// Chain and signing key.
    pub key: Arc<CertifiedKey>,
    /// The trust bundle (empty when none is configured).
    pub roots: Arc<RootCertStore>,
    /// Verifies client certificates against `roots`; `None` without a trust bundle.
    pub client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// The leaf's identity (SPIFFE ID or DNS name).
    pub identity: Option<String>,
    /// The leaf's `notAfter`, Unix seconds.
    pub not_after: i64,
    /// The earliest `notAfter` among the bundle's CAs, Unix seconds.
    pub bundle_not_after: Option<i64>,
    /// Hash of the files' contents, to tell a rotation from an unchanged poll.
    pub fingerprint: u64,
}

/// Why the files were refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no PEM block of the expected kind.
    #[error("{} holds no {what}", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
        /// `PEM certificate` or `PEM private key`.
        what: &'static str,
    },
    /// A file's contents do not parse.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key is not the leaf certificate's key.
    #[error("the key in {} does not belong to the certificate in {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The leaf certificate is outside its validity period.
    #[error("the certificate in {} {when}", path.display())]
    Validity {
        /// The certificate file.
        path: PathBuf,
        /// `expired at ...` or `is not valid before ...`.
        when: String,
    },
}

impl LoadError {
    /// The file the error is about (the key file for a mismatch).
    pub fn path(&self) -> &Path {
        match self {
            LoadError::Read { path, .. }
            | LoadError::Missing { path, .. }
            | LoadError::Invalid { path, .. }
            | LoadError::Validity { path, .. } => path,
            LoadError::KeyMismatch { key, .. } => key,
        }
    }

    /// How to fix it.
    pub fn hint(&self) -> &'static str {
        match self {
            LoadError::Read { .. } => {
                "check the path (relative paths are from the config file's directory) and that Tandem may read it"
            }
            LoadError::Missing { .. } | LoadError::Invalid { .. } => {
                "use PEM files: the chain as `-----BEGIN CERTIFICATE-----` blocks (leaf first), the key as `-----BEGIN PRIVATE KEY-----`; `tandem certs issue` writes both"
            }
            LoadError::KeyMismatch { .. } => {
                "point `key` at the key the certificate was issued for (files written together by `tandem certs issue` belong together)"
            }
            LoadError::Validity { .. } => {
                "issue a new certificate, e.g. `tandem certs issue --identity spiffe://DOMAIN/ns/NS/sa/SA --ca DIR --out DIR`"
            }
        }
    }
}

/// The crypto provider every Tandem TLS config uses (ring), built once.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Reads and validates `files` at time `now` (Unix seconds).
pub fn load(files: &Files, now: i64) -> Result<Material, LoadError> {
    let cert_pem = read(&files.cert)?;
    let key_pem = read(&files.key)?;
    let bundle_pem = files.trust_bundle.as_deref().map(read).transpose()?;

    let chain = certs(&files.cert, &cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => LoadError::Missing {
            path: files.key.clone(),
            what: "PEM private key",
        },
        e => LoadError::Invalid {
            path: files.key.clone(),
            reason: format!("not a valid private key: {e}"),
        },
    })?;
    let (not_before, not_after) = validity(&files.cert, &chain[0])?;
    if now > not_after {
        return Err(LoadError::Validity {
            path: files.cert.clone(),
            when: format!("expired at {}", rfc3339(not_after)),
        });
    }
    if now < not_before {
        return Err(LoadError::Validity {
            path: files.cert.clone(),
            when: format!("is not valid before {}", rfc3339(not_before)),
        });
    }
    let identity = Sans::of(&chain[0])
        .map_err(|e| LoadError::Invalid {
            path: files.cert.clone(),
            reason: e.to_string(),
        })?
        .identity()
        .map(str::to_owned);
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => LoadError::KeyMismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        },
        e => LoadError::Invalid {
            path: files.key.clone(),
            reason: format!("unusable private key: {e}"),
        },
    })?;

    let mut roots = RootCertStore::empty();
    let mut bundle_not_after = None;
    if let (Some(path), Some(pem)) = (&files.trust_bundle, &bundle_pem) {
        for (i, ca) in certs(path, pem)?.into_iter().enumerate() {
            let (_, ca_not_after) = validity(path, &ca)?;
            bundle_not_after =
                Some(bundle_not_after.map_or(ca_not_after, |b: i64| b.min(ca_not_after)));
            roots.add(ca).map_err(|e| LoadError::Invalid {
                path: path.clone(),
                reason: format!(
                    "CA certificate #{} is not usable as a trust anchor: {e}",
                    i + 1
                ),
            })?;
        }
    }

    let roots = Arc::new(roots);
    let client_verifier = match &files.trust_bundle {
        Some(path) => Some(
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| LoadError::Invalid {
                    path: path.clone(),
                    reason: format!("unusable as a trust bundle: {e}"),
                })?,
        ),
        None => None,
    };

    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&cert_pem);
    h.update(&[0]);
    h.update(&key_pem);
    h.update(&[0]);
    h.update(bundle_pem.as_deref().unwrap_or_default());
    Ok(Material {
        key: Arc::new(certified),
        roots,
        client_verifier,
        identity,
        not_after,
        bundle_not_after,
        fingerprint: h.digest(),
    })
}

/// Hash of the files' current contents (`None` when one cannot be read), the cheap test of
/// whether a poll found anything new.
pub fn fingerprint(files: &Files) -> Option<u64> {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&std::fs::read(&files.cert).ok()?);
    h.update(&[0]);
    h.update(&std::fs::read(&files.key).ok()?);
    h.update(&[0]);
    if let Some(b) = &files.trust_bundle {
        h.update(&std::fs::read(b).ok()?);
    }
    Some(h.digest())
}

/// Reads a trust bundle alone (for `tandem check`).
pub fn load_bundle(path: &Path) -> Result<usize, LoadError> {
    let pem = read(path)?;
    let list = certs(path, &pem)?;
    let mut roots = RootCertStore::empty();
    let n = list.len();
    for (i, ca) in list.into_iter().enumerate() {
        roots.add(ca).map_err(|e| LoadError::Invalid {
            path: path.to_owned(),
            reason: format!(
                "CA certificate #{} is not usable as a trust anchor: {e}",
                i + 1
            ),
        })?;
    }
    Ok(n)
}

fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })
}

fn certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    let list = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| LoadError::Invalid {
            path: path.to_owned(),
            reason: format!("not a valid PEM certificate list: {e}"),
        })?;
    if list.is_empty() {
        return Err(LoadError::Missing {
            path: path.to_owned(),
            what: "PEM certificate",
        });
    }
    Ok(list)
}

/// `(notBefore, notAfter)` in Unix seconds.
fn validity(path: &Path, cert: &CertificateDer<'_>) -> Result<(i64, i64), LoadError> {
    let (_, x509) =
        x509_parser::certificate::X509Certificate::from_der(cert.as_ref()).map_err(|e| {
            LoadError::Invalid {
                path: path.to_owned(),
                reason: format!("not a valid X.509 certificate: {e}"),
            }
        })?;
    let v = x509.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// A Unix time as RFC 3339 UTC, for messages.
pub fn rfc3339(unix: i64) -> String {
    x509_parser::time::ASN1Time::from_timestamp(unix)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("@{unix}"))
}

/// Now, in Unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::dev_ca;

    struct Dir {
        dir: tempfile::TempDir,
    }

    impl Dir {
        fn new() -> Dir {
            let dir = tempfile::tempdir().unwrap();
            dev_ca::init(dir.path().join("ca").as_path(), "d.test", 365).unwrap();
            let d = Dir { dir };
            d.issue("w", "spiffe://d.test/ns/a/sa/w");
            d
        }
        fn path(&self, p: &str) -> PathBuf {
            self.dir.path().join(p)
        }
        fn issue(&self, out: &str, id: &str) {
            dev_ca::issue(&dev_ca::IssueRequest {
                ca_dir: self.path("ca"),
                out_dir: self.path(out),
                identity: Some(id.to_owned()),
                dns: vec![],
                days: 30,
            })
            .unwrap();
        }
        fn files(&self, dir: &str) -> Files {
            Files {
                cert: self.path(&format!("{dir}/cert.pem")),
                key: self.path(&format!("{dir}/key.pem")),
                trust_bundle: Some(self.path("ca/ca.pem")),
            }
        }
    }

    /// A pair written by `tandem certs issue` loads, with its identity and expiry.
    #[test]
    fn a_good_pair_loads() {
        let d = Dir::new();
        let m = load(&d.files("w"), now()).unwrap();
        assert_eq!(m.identity.as_deref(), Some("spiffe://d.test/ns/a/sa/w"));
        assert!(m.not_after > now() + 29 * 86400);
        assert_eq!(m.roots.len(), 1);
        assert!(m.bundle_not_after.unwrap() > m.not_after);
    }

    /// A key from another pair is refused as a mismatch naming both files.
    #[test]
    fn a_foreign_key_is_refused() {
        let d = Dir::new();
        d.issue("other", "spiffe://d.test/ns/a/sa/other");
        let mut f = d.files("w");
        f.key = d.path("other/key.pem");
        let e = load(&f, now()).unwrap_err();
        assert!(matches!(e, LoadError::KeyMismatch { .. }), "{e}");
        assert_eq!(e.path(), d.path("other/key.pem"));
    }

    /// Past its notAfter (or before its notBefore) the certificate is refused.
    #[test]
    fn an_expired_pair_is_refused() {
        let d = Dir::new();
        let e = load(&d.files("w"), now() + 31 * 86400).unwrap_err();
        assert!(matches!(e, LoadError::Validity { .. }), "{e}");
        assert!(e.to_string().contains("expired at"), "{e}");
        let e = load(&d.files("w"), now() - 86400).unwrap_err();
        assert!(e.to_string().contains("not valid before"), "{e}");
    }

    /// Truncated, empty or swapped files are refused with the file named.
    #[test]
    fn broken_files_are_refused() {
        let d = Dir::new();
        let f = d.files("w");
        let pem = std::fs::read_to_string(&f.cert).unwrap();
        std::fs::write(&f.cert, &pem[..pem.len() / 2]).unwrap();
        let e = load(&f, now()).unwrap_err();
        assert_eq!(e.path(), f.cert.as_path(), "{e}");

        std::fs::write(&f.cert, "").unwrap();
        assert!(matches!(
            load(&f, now()).unwrap_err(),
            LoadError::Missing { .. }
        ));

        std::fs::write(&f.cert, pem).unwrap();
        let key = std::fs::read(&f.key).unwrap();
        std::fs::write(&f.key, b"garbage").unwrap();
        let e = load(&f, now()).unwrap_err();
        assert_eq!(e.path(), f.key.as_path(), "{e}");
        std::fs::write(&f.key, key).unwrap();
        std::fs::remove_file(d.path("ca/ca.pem")).unwrap();
        assert!(matches!(
            load(&f, now()).unwrap_err(),
            LoadError::Read { .. }
        ));
    }

    /// A bundle of two CAs (overlap during a CA rotation) keeps both, and its expiry is the
    /// earlier one.
    #[test]
    fn a_bundle_holds_several_cas() {
        let d = Dir::new();
        dev_ca::init(d.path("ca2").as_path(), "d.test", 10).unwrap();
        let mut both = std::fs::read_to_string(d.path("ca/ca.pem")).unwrap();
        both.push_str(&std::fs::read_to_string(d.path("ca2/ca.pem")).unwrap());
        std::fs::write(d.path("bundle.pem"), both).unwrap();
        let mut f = d.files("w");
        f.trust_bundle = Some(d.path("bundle.pem"));
        let m = load(&f, now()).unwrap();
        assert_eq!(m.roots.len(), 2);
        assert!(m.bundle_not_after.unwrap() < now() + 11 * 86400);
    }
}
