//! Checked security settings: a listener's authorization policy and a route's JWT
//! authentication.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::{humantime_serde_compat, ser_headers, ser_methods};

/// A listener's authorization policy: deny rules first, then allow rules, default deny.
#[derive(Clone, Debug, Serialize)]
pub struct Authorization {
    /// Rules in file order (evaluation order is deny rules, then allow rules, each in file order).
    pub rules: Vec<AuthzRule>,
}

/// One rule: it matches when every condition it sets holds (an empty list is no condition).
#[derive(Clone, Debug, Serialize)]
pub struct AuthzRule {
    /// Unique within the policy; `rules[N]` when not given.
    pub name: String,
    /// Allow or deny.
    pub action: AuthzAction,
    /// Any of these peer identities.
    pub identities: Vec<IdentityMatch>,
    /// Any of these client networks.
    pub source_cidrs: Vec<Cidr>,
    /// Any of these methods.
    #[serde(serialize_with = "ser_methods")]
    pub methods: Vec<http::Method>,
    /// Any of these normalized paths.
    pub paths: Vec<AuthzPath>,
    /// Every one of these headers with exactly this value.
    #[serde(serialize_with = "ser_headers")]
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// What a matching rule decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthzAction {
    /// Let the request through.
    Allow,
    /// Refuse it (403).
    Deny,
}

/// A peer identity pattern.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityMatch {
    /// Any verified identity (`*`).
    Any,
    /// Exactly this identity.
    Exact(String),
    /// Identities starting with this (written with a trailing `*`).
    Prefix(String),
}

impl IdentityMatch {
    /// Whether the verified identity `id` matches.
    pub fn matches(&self, id: &str) -> bool {
        match self {
            IdentityMatch::Any => true,
            IdentityMatch::Exact(e) => id == e,
            IdentityMatch::Prefix(p) => id.starts_with(p.as_str()),
        }
    }
}

/// A normalized path pattern.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthzPath {
    /// The path equals this.
    Exact(String),
    /// `/admin/*`: the path is `/admin` or starts with `/admin/` (stored without `/*`; `/*`
    /// itself is stored as an empty string and matches every path).
    Segments(String),
    /// `/admin*`: the path starts with `/admin` (stored without `*`).
    Prefix(String),
}

/// An IP network: an address and a prefix length; host bits are zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Cidr {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length (0-32 for IPv4, 0-128 for IPv6).
    pub prefix: u8,
}

/// JWT authentication of a route.
#[derive(Clone, Debug, Serialize)]
pub struct Jwt {
    /// Required `iss`.
    pub issuer: String,
    /// Accepted `aud` values (at least one).
    pub audiences: Vec<String>,
    /// The key set, when an asymmetric algorithm is accepted.
    pub jwks: Option<Jwks>,
    /// Accepted algorithms.
    pub algorithms: Vec<JwtAlgorithm>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "humantime_serde_compat")]
    pub leeway: Duration,
    /// Claim name -> header name (lower case).
    pub forward_claims: Vec<(String, String)>,
    /// The HS256 secret's file, when HS256 is accepted.
    pub hs256_secret_file: Option<PathBuf>,
}

/// Where a JWKS comes from and how often it is reloaded.
#[derive(Clone, Debug, Serialize)]
pub struct Jwks {
    /// A file or an URL.
    pub source: JwksSource,
    /// For an `https://` URL: the CAs trusted for its server; `None`: the system's trust store.
    pub ca: Option<PathBuf>,
    /// Time between reloads.
    #[serde(with = "humantime_serde_compat")]
    pub refresh: Duration,
    /// Least time between reloads triggered by an unknown `kid`.
    #[serde(with = "humantime_serde_compat")]
    pub min_refresh_interval: Duration,
}

/// A JWKS location.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JwksSource {
    /// A local file.
    File(PathBuf),
    /// An `http://` or `https://` URL.
    Url(String),
}

/// A JWS algorithm Tandem verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum JwtAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// ECDSA P-384 with SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
    /// HMAC with SHA-256 (a shared secret; only when configured explicitly).
    HS256,
}

// === impl Cidr ===

impl Cidr {
    /// Whether `ip` is in the network. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, what a
    /// dual-stack socket reports) count as their IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    /// `ADDR/LEN` or one address; host bits must be zero (the error names the network meant).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{addr}` is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match len {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("`/{l}` is not a prefix length (0-{max})")),
            },
        };
        let network = Cidr { addr, prefix }.network();
        if network != addr {
            return Err(format!(
                "`{s}` has host bits set; the network is {network}/{prefix}"
            ));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

// === impl JwtAlgorithm ===

impl JwtAlgorithm {
    /// Every algorithm, for parsing and hints.
    pub const ALL: [JwtAlgorithm; 10] = [
        JwtAlgorithm::RS256,
        JwtAlgorithm::RS384,
        JwtAlgorithm::RS512,
        JwtAlgorithm::PS256,
        JwtAlgorithm::PS384,
        JwtAlgorithm::PS512,
        JwtAlgorithm::ES256,
        JwtAlgorithm::ES384,
        JwtAlgorithm::EdDSA,
        JwtAlgorithm::HS256,
    ];

    /// The `alg` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::RS256 => "RS256",
            JwtAlgorithm::RS384 => "RS384",
            JwtAlgorithm::RS512 => "RS512",
            JwtAlgorithm::PS256 => "PS256",
            JwtAlgorithm::PS384 => "PS384",
            JwtAlgorithm::PS512 => "PS512",
            JwtAlgorithm::ES256 => "ES256",
            JwtAlgorithm::ES384 => "ES384",
            JwtAlgorithm::EdDSA => "EdDSA",
            JwtAlgorithm::HS256 => "HS256",
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Networks contain their addresses (IPv4-mapped IPv6 as IPv4), and host bits are refused.
    #[test]
    fn cidr() {
        let net: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.255.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        let one: Cidr = "::1".parse().unwrap();
        assert_eq!(one.prefix, 128);
        assert!(one.contains("::1".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        let e = "10.0.0.1/8".parse::<Cidr>().unwrap_err();
        assert!(e.contains("10.0.0.0/8"), "{e}");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("ten/8".parse::<Cidr>().is_err());
    }
}
