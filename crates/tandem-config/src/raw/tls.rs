//! The TLS sections as serde sees them: the workload identity (top-level `tls`), TLS
//! termination on a listener (`listeners.NAME.tls`) and origination to an upstream
//! (`upstreams.NAME.tls`).

use schemars::JsonSchema;
use serde::Deserialize;

/// The workload's identity: its certificate, key and the CAs it trusts. Files are watched and
/// rotated without dropping connections.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// Certificate chain (PEM, leaf first); its SPIFFE ID (URI SAN) or DNS SAN is the
    /// workload's identity. Relative paths are from the config file's directory.
    pub cert: String,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// CA certificates (PEM, one or more) peers are verified against. Needed for client
    /// certificates on listeners and for every upstream `tls`.
    #[serde(default)]
    pub trust_bundle: Option<String>,
    /// How often the files are checked for a new version (default "5s").
    #[serde(default)]
    pub reload_interval: Option<String>,
}

/// TLS termination on a listener (TLS 1.2+, ALPN h2 and http/1.1).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    /// Client certificates: `required` (mTLS; the default when `tls.trust_bundle` is set),
    /// `optional` (verified when sent) or `none` (server-only TLS).
    #[serde(default)]
    pub client_auth: Option<RawClientAuth>,
    /// Time a client has to finish the TLS handshake (default "10s").
    #[serde(default)]
    pub handshake_timeout: Option<String>,
}

/// Client certificate policy.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawClientAuth {
    /// Every client presents a certificate from the trust bundle.
    Required,
    /// Verified when presented.
    Optional,
    /// Not asked for.
    None,
}

/// TLS origination to an upstream's endpoints (TLS 1.2+), verified against `tls.trust_bundle`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// Identities the server may have: SPIFFE IDs (`spiffe://domain/ns/x/sa/y`, matched against
    /// its URI SANs) or DNS names (matched against its DNS SANs). Absent: the server must be
    /// valid for `server_name` (or the endpoint's host name).
    #[serde(default)]
    pub identities: Option<Vec<String>>,
    /// SNI sent, and the DNS name verified when `identities` is absent. Default: the endpoint's
    /// host (an IP address sends no SNI).
    #[serde(default)]
    pub server_name: Option<String>,
    /// Present the workload certificate as the client certificate (mTLS). Default true.
    #[serde(default)]
    pub client_cert: Option<bool>,
}
