//! TLS to a sink: the rustls client config of an `https` sink URL.
//!
//! The sink's certificate is verified against `tls.ca` (PEM CA certificates), or the system's
//! bundle when none is given, and against the URL's host or `tls.server_name`. A client
//! certificate (mTLS) is read and validated by `tandem-tls` (the chain parses, the key matches
//! the leaf, the leaf is within its validity), so its errors read like the listeners' ones.
//! The files are read at start — a bad file stops the start with a message naming it — and
//! again when their contents change ([`super::http::HttpSink::spawn_tls_watcher`]): a usable
//! new set replaces the old one, an unusable one is logged and the last good set stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tandem_config::SinkTls;
use tandem_tls::pair::{self, Files};

/// Where the system's CA bundle usually is (Debian/Ubuntu/Alpine, Fedora/RHEL, openSUSE, and
/// the OpenSSL default), after `SSL_CERT_FILE`.
const SYSTEM_BUNDLES: [&str; 5] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Why a sink's TLS settings cannot be used; the message names the file and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TlsError {
    /// The key under the sink's `tls` at fault (`ca`, `cert`, `key`, `server_name`), if one.
    pub key: &'static str,
    message: String,
}

impl From<String> for TlsError {
    fn from(message: String) -> TlsError {
        TlsError { key: "", message }
    }
}

fn err(message: String) -> TlsError {
    TlsError { key: "ca", message }
}

/// `tandem check`'s file step for log sinks: the TLS files each HTTP sink names exist, parse and
/// belong together. Returns (config key, message, fix). The system's CA bundle, used without
/// `tls.ca`, is the machine's, not the file's: it is not checked here.
pub fn check_files(logs: &tandem_config::Logs) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for s in &logs.sinks {
        let tandem_config::LogSinkKind::Http(h) = &s.kind else {
            continue;
        };
        let Some(t) = &h.tls else { continue };
        let result = match &t.ca {
            Some(ca) => roots(ca).and_then(|_| client_cert(t).map(|_| ())),
            None => client_cert(t).map(|_| ()),
        };
        if let Err(e) = result {
            let text = e.to_string();
            // Messages are "what; how to fix it".
            let (message, fix) = text.split_once("; ").unwrap_or((&text, ""));
            out.push((
                format!("logs.sinks.{}.tls.{}", s.name, e.key),
                message.to_owned(),
                fix.to_owned(),
            ));
        }
    }
    out
}

/// The files of `cfg` a reload watches: the CA file, the client certificate and key.
pub fn watched_files(cfg: &SinkTls) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = cfg.ca.iter().cloned().collect();
    if let Some((cert, key)) = &cfg.client {
        out.push(cert.clone());
        out.push(key.clone());
    }
    out
}

/// A hash of the contents of `files` (a missing file hashes as such): changes when any changes.
pub fn files_hash(files: &[PathBuf]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for f in files {
        match std::fs::read(f) {
            Ok(b) => {
                h.update(&(b.len() as u64).to_le_bytes());
                h.update(&b);
            }
            Err(_) => h.update(b"\0missing"),
        }
    }
    h.digest()
}

/// The client certificate of `cfg`, read and validated, if one is configured.
fn client_cert(cfg: &SinkTls) -> Result<Option<Arc<CertifiedKey>>, TlsError> {
    let Some((cert, key)) = &cfg.client else {
        return Ok(None);
    };
    let files = Files {
        cert: cert.clone(),
        key: key.clone(),
        trust_bundle: None,
    };
    pair::load(&files, pair::now())
        .map(|m| Some(m.key))
        .map_err(|e| TlsError {
            key: if e.path() == key.as_path() {
                "key"
            } else {
                "cert"
            },
            message: format!("tls.cert/tls.key: {e}; {}", e.hint()),
        })
}

/// The rustls config for `cfg` (ALPN left empty: hyper-rustls sets `http/1.1`).
pub fn client_config(cfg: &SinkTls) -> Result<ClientConfig, TlsError> {
    let roots = match &cfg.ca {
        Some(path) => roots(path)?,
        None => system_roots()?,
    };
    let builder = ClientConfig::builder_with_provider(pair::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| err(format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots);
    Ok(match client_cert(cfg)? {
        None => builder.with_no_client_auth(),
        Some(key) => builder.with_client_cert_resolver(Arc::new(ClientCert(key))),
    })
}

/// The CA certificates in `path`, every one usable as a trust anchor.
fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let pem = std::fs::read(path).map_err(|e| {
        err(format!(
            "tls.ca: cannot read {}: {e}; check the path and that Tandem may read it",
            path.display()
        ))
    })?;
    let mut store = RootCertStore::empty();
    for (i, c) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let c = c.map_err(|e| {
            err(format!(
                "tls.ca: {} is not a valid PEM certificate list: {e}; use the CA certificates \
                 as `-----BEGIN CERTIFICATE-----` blocks",
                path.display()
            ))
        })?;
        store.add(c).map_err(|e| {
            err(format!(
                "tls.ca: certificate #{} in {} is not usable as a trust anchor: {e}",
                i + 1,
                path.display()
            ))
        })?;
    }
    if store.is_empty() {
        return Err(err(format!(
            "tls.ca: {} holds no PEM certificate; use the CA certificates as `-----BEGIN \
             CERTIFICATE-----` blocks",
            path.display()
        )));
    }
    Ok(store)
}

/// The system's bundle: `SSL_CERT_FILE`, else the first of [`SYSTEM_BUNDLES`] that exists.
fn system_roots() -> Result<RootCertStore, TlsError> {
    let candidates: Vec<PathBuf> = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from))
        .collect();
    match candidates.iter().find(|p| p.is_file()) {
        Some(p) => roots(p),
        None => Err(err(format!(
            "https sink without `tls.ca`, and no system CA bundle was found (looked at \
             SSL_CERT_FILE and {}); set `tls.ca` to the CA certificate file, or install the \
             ca-certificates package",
            SYSTEM_BUNDLES.join(", ")
        ))),
    }
}

/// Always presents the configured client certificate.
#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn message(cfg: &SinkTls) -> String {
        match client_config(cfg) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    /// The reload watches the CA file and the client pair; their hash changes with any of their
    /// contents, and a missing file hashes differently from an empty one.
    #[test]
    fn watched_files_and_their_hash() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let cfg = SinkTls {
            ca: Some(p("ca.pem")),
            client: Some((p("c.pem"), p("k.pem"))),
            ..SinkTls::default()
        };
        assert_eq!(watched_files(&cfg), [p("ca.pem"), p("c.pem"), p("k.pem")]);
        assert!(watched_files(&SinkTls::default()).is_empty());
        let files = watched_files(&cfg);
        let missing = files_hash(&files);
        for f in &files {
            std::fs::write(f, "").unwrap();
        }
        let empty = files_hash(&files);
        assert_ne!(missing, empty);
        std::fs::write(p("k.pem"), "key 1").unwrap();
        let one = files_hash(&files);
        assert_ne!(one, empty);
        assert_eq!(files_hash(&files), one, "unchanged contents, same hash");
        // Bytes moving from one file to the next still change the hash.
        std::fs::write(p("c.pem"), "key").unwrap();
        std::fs::write(p("k.pem"), " 1").unwrap();
        assert_ne!(files_hash(&files), one);
    }

    /// Unusable CA files are refused with the key, the file and the fix; a CA made by the
    /// development CA is accepted.
    #[test]
    fn ca_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ca = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            SinkTls {
                ca: Some(p),
                ..SinkTls::default()
            }
        };
        let m = message(&SinkTls {
            ca: Some(dir.path().join("missing.pem")),
            ..SinkTls::default()
        });
        assert!(
            m.starts_with("tls.ca: cannot read") && m.contains("missing.pem"),
            "{m}"
        );
        let m = message(&ca("empty.pem", "just text\n"));
        assert!(m.contains("holds no PEM certificate"), "{m}");
        let m = message(&ca(
            "bad.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        ));
        assert!(m.contains("bad.pem"), "{m}");

        tandem_tls::dev_ca::init(&dir.path().join("ca"), "d.test", 30).unwrap();
        let good = SinkTls {
            ca: Some(dir.path().join("ca/ca.pem")),
            ..SinkTls::default()
        };
        assert!(client_config(&good).is_ok());
        let m = message(&SinkTls {
            client: Some((dir.path().join("ca/ca.pem"), dir.path().join("nokey.pem"))),
            ..good
        });
        assert!(
            m.starts_with("tls.cert/tls.key:") && m.contains("nokey.pem"),
            "{m}"
        );
    }
}
