//! Checked service-discovery settings: an upstream's endpoint source, the etcd connection and
//! the app's registration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::humantime_serde_compat;

/// Where an upstream's endpoints come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Discovery {
    /// The `endpoints` list of the config file.
    Static,
    /// DNS records, re-resolved by TTL.
    Dns(DnsDiscovery),
    /// A watched YAML/JSON file.
    File(FileDiscovery),
    /// Instances registered in etcd.
    Etcd(EtcdDiscovery),
}

/// DNS discovery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DnsDiscovery {
    /// Name to resolve.
    pub name: String,
    /// Record type.
    pub record: DnsRecord,
    /// Endpoint port for address records (`None` with SRV).
    pub port: Option<u16>,
    /// DNS server to ask; `None`: the system's.
    pub nameserver: Option<SocketAddr>,
    /// Shortest time between resolutions.
    #[serde(with = "humantime_serde_compat")]
    pub min_ttl: Duration,
    /// Longest time between resolutions.
    #[serde(with = "humantime_serde_compat")]
    pub max_ttl: Duration,
}

/// A DNS record type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DnsRecord {
    /// IPv4.
    A,
    /// IPv6.
    Aaaa,
    /// IPv4 and IPv6.
    Ip,
    /// SRV: host, port and weight.
    Srv,
}

/// File discovery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileDiscovery {
    /// The endpoint file.
    pub path: PathBuf,
    /// How often it is checked for changes.
    #[serde(with = "humantime_serde_compat")]
    pub interval: Duration,
}

/// etcd discovery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EtcdDiscovery {
    /// Service name (keys under `<prefix><service>/`).
    pub service: String,
}

/// The etcd connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Etcd {
    /// Member client URLs (`http://host:port`).
    pub endpoints: Vec<String>,
    /// Registry key prefix, ending in `/`.
    pub prefix: String,
    /// User name, when etcd authentication is on.
    pub username: Option<String>,
    /// Password (never serialized).
    #[serde(skip)]
    pub password: Option<String>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// Bound on each request.
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
    /// TLS to the members, with `https://` endpoints.
    pub tls: Option<EtcdTls>,
}

/// TLS to etcd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EtcdTls {
    /// CA bundle (PEM).
    pub ca: PathBuf,
    /// Client certificate and key (PEM), for client-certificate authentication.
    pub client: Option<(PathBuf, PathBuf)>,
    /// Name to verify instead of each endpoint's host.
    pub server_name: Option<String>,
}

/// Registration of the app in etcd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Registration {
    /// Service name.
    pub service: String,
    /// The inbound listener whose address is advertised (and whose readiness is awaited).
    pub listener: String,
    /// Advertised `host:port`; `None`: the listener's bound address.
    pub address: Option<String>,
    /// Instance id; `None`: the advertised address.
    pub id: Option<String>,
    /// Lease TTL.
    #[serde(with = "humantime_serde_compat")]
    pub ttl: Duration,
    /// Relative share of traffic.
    pub weight: u32,
    /// Zone.
    pub zone: Option<String>,
    /// Identity, e.g. a SPIFFE ID.
    pub identity: Option<String>,
    /// Metadata, in file order.
    pub metadata: Vec<(String, String)>,
}

/// Zone-aware preference of an upstream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PreferZone {
    /// The local zone.
    pub zone: String,
    /// Prefer it while at least this many of its endpoints are eligible.
    pub min_eligible: usize,
}
