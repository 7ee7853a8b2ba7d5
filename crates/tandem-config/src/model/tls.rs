//! Checked TLS settings: the workload identity's files, listener termination and upstream
//! origination. Files are paths only here; `tandem-tls` reads and validates them.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// The workload identity (top-level `tls`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tls {
    /// Certificate chain file (resolved against the config file's directory).
    pub cert: PathBuf,
    /// Private key file.
    pub key: PathBuf,
    /// Trust bundle file.
    pub trust_bundle: Option<PathBuf>,
    /// Poll period of the files.
    pub reload_interval: Duration,
}

/// TLS termination on a listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ListenerTls {
    /// Client certificate policy.
    pub client_auth: ClientAuth,
    /// Bound on the handshake.
    pub handshake_timeout: Duration,
}

/// Client certificate policy of a TLS listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// mTLS: a verified client certificate is required.
    Required,
    /// Verified when presented.
    Optional,
    /// Server-only TLS.
    None,
}

/// TLS origination to an upstream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UpstreamTls {
    /// Accepted server identities; empty: verify the DNS name (`server_name` or the host).
    pub identities: Vec<String>,
    /// SNI / verified DNS name.
    pub server_name: Option<String>,
    /// Present the workload certificate.
    pub client_cert: bool,
}
