//! Raw YAML of service discovery: an upstream's `discovery` source, the top-level `etcd`
//! connection and the top-level `registration` of this sidecar's app (docs/discovery.md).

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;

/// Where an upstream's endpoints come from, instead of a static `endpoints` list: exactly one
/// of `dns`, `file` or `etcd`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDiscovery {
    /// DNS: A/AAAA records (with `port`) or SRV records, re-resolved by TTL.
    #[serde(default)]
    pub dns: Option<RawDnsDiscovery>,
    /// A YAML or JSON file listing endpoints, re-read when it changes (replace it atomically
    /// by renaming a new file over it).
    #[serde(default)]
    pub file: Option<RawFileDiscovery>,
    /// The instances registered in etcd under a service name (needs the top-level `etcd`).
    #[serde(default)]
    pub etcd: Option<RawEtcdDiscovery>,
}

/// DNS discovery.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDnsDiscovery {
    /// The name to resolve, e.g. `orders.internal` or `_http._tcp.orders.internal` (SRV).
    pub name: String,
    /// `a` (IPv4), `aaaa` (IPv6), `ip` (both, the default) or `srv` (host, port and weight
    /// from SRV records).
    #[serde(default)]
    pub record: Option<RawDnsRecord>,
    /// Port of every endpoint (required for `a`, `aaaa`, `ip`; not allowed with `srv`).
    #[serde(default)]
    pub port: Option<u16>,
    /// DNS server `IP:port` to ask (default: the system's resolv.conf).
    #[serde(default)]
    pub nameserver: Option<String>,
    /// Re-resolve at least this long after an answer, whatever its TTL (default "1s").
    #[serde(default)]
    pub min_ttl: Option<String>,
    /// Re-resolve at most this long after an answer, whatever its TTL (default "60s").
    #[serde(default)]
    pub max_ttl: Option<String>,
}

/// A DNS record type.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawDnsRecord {
    /// IPv4 addresses.
    A,
    /// IPv6 addresses.
    Aaaa,
    /// IPv4 and IPv6 addresses.
    Ip,
    /// SRV records: target host, port and weight.
    Srv,
}

/// File discovery.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFileDiscovery {
    /// Absolute path of a YAML or JSON file: a list of endpoints, each `"IP:port"` or
    /// `{ address, weight, zone }`, or a map with that list under `endpoints`.
    pub path: String,
    /// How often the file is checked for changes (default "1s").
    #[serde(default)]
    pub interval: Option<String>,
}

/// etcd discovery.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEtcdDiscovery {
    /// The service name: instances are the keys under `<etcd.prefix><service>/`.
    pub service: String,
}

/// The etcd cluster Tandem reads services from and registers its app in.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEtcd {
    /// Members' client URLs, e.g. `http://10.0.0.1:2379`; Tandem fails over between them.
    pub endpoints: Vec<String>,
    /// Key prefix of the service registry (default "/tandem/services/").
    #[serde(default)]
    pub prefix: Option<String>,
    /// User name when etcd has authentication on.
    #[serde(default)]
    pub username: Option<String>,
    /// Password of `username`; better, `password_env`.
    #[serde(default)]
    pub password: Option<String>,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Bound on each request to etcd (default "5s").
    #[serde(default)]
    pub timeout: Option<String>,
    /// TLS to etcd (`https://` endpoints): the CA that signed the members' certificates and,
    /// for client-certificate authentication, a certificate and key.
    #[serde(default)]
    pub tls: Option<RawEtcdTls>,
}

/// TLS to etcd.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEtcdTls {
    /// PEM file of the CA(s) the members' certificates must chain to (absolute path).
    pub ca: String,
    /// PEM client certificate (absolute path), with `key`.
    #[serde(default)]
    pub cert: Option<String>,
    /// PEM private key of `cert` (absolute path).
    #[serde(default)]
    pub key: Option<String>,
    /// Name the members' certificates must carry (default: each endpoint's host).
    #[serde(default)]
    pub server_name: Option<String>,
}

/// Registration of this sidecar's app in etcd, under a lease.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRegistration {
    /// The service name peers discover the app by.
    pub service: String,
    /// The inbound listener peers reach the app through (default: the first inbound listener).
    #[serde(default)]
    pub listener: Option<String>,
    /// The address peers connect to, `host:port` (default: the listener's address; required
    /// when it is a wildcard like 0.0.0.0).
    #[serde(default)]
    pub address: Option<String>,
    /// Instance id, the last key segment (default: the advertised address).
    #[serde(default)]
    pub id: Option<String>,
    /// Lease TTL: after a crash, peers drop the instance this long after the last keep-alive
    /// (default "10s", at least "2s").
    #[serde(default)]
    pub ttl: Option<String>,
    /// Relative share of traffic peers give this instance (default 1).
    #[serde(default)]
    pub weight: Option<u32>,
    /// Zone (for zone-aware peers).
    #[serde(default)]
    pub zone: Option<String>,
    /// The instance's identity, e.g. a SPIFFE ID.
    #[serde(default)]
    pub identity: Option<String>,
    /// Free-form metadata published with the instance.
    #[serde(default)]
    pub metadata: IndexMap<String, String>,
}

/// Zone-aware preference.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPreferZone {
    /// The local zone (default: `registration.zone`).
    #[serde(default)]
    pub zone: Option<String>,
    /// Prefer the local zone while at least this many of its endpoints are eligible (not
    /// ejected, not failing health checks); fewer, and every zone shares (default 1).
    #[serde(default)]
    pub min_eligible: Option<usize>,
}
