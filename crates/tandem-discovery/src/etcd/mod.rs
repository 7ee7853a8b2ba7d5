//! etcd: the service registry's data model ([`Instance`] under `<prefix><service>/<id>`), the
//! client, the watching endpoint source and the app's registration under a lease.
//!
//! # Data model (docs/discovery.md)
//!
//! ```text
//! key:   <prefix><service>/<id>        e.g. /tandem/services/orders/10.0.0.5:7080
//! value: {"address":"10.0.0.5:7080","weight":1,"zone":"eu-1a",
//!         "identity":"spiffe://example.org/orders","metadata":{"version":"1.4.2"}}
//!        or just "10.0.0.5:7080"
//! lease: registrations attach the key to a lease; hand-written keys may have none
//! ```

pub mod client;
mod proto;
pub mod register;
pub mod watch;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tandem_config::Address;

pub use client::{Client, Error};

use crate::Endpoint;

/// One instance of a service, as stored in etcd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    /// Where peers connect: `IP:port` or `host:port`.
    pub address: String,
    /// Relative share of traffic, 1 to 10000 (default 1).
    #[serde(default = "one")]
    pub weight: u32,
    /// Zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Identity, e.g. a SPIFFE ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

/// One registry entry, as `tandem services` lists it.
#[derive(Clone, Debug, Serialize)]
pub struct Listed {
    /// Service name.
    pub service: String,
    /// Instance id (the last key segment).
    pub id: String,
    /// The stored instance, or why it does not parse.
    pub instance: Result<Instance, String>,
    /// The lease it is attached to (0: none, it stays until deleted).
    pub lease: i64,
}

/// What the registry holds: every service's instances, or `service`'s only.
pub async fn list(
    client: &Client,
    prefix: &str,
    service: Option<&str>,
) -> Result<Vec<Listed>, Error> {
    let scan = match service {
        Some(s) => service_prefix(prefix, s),
        None => prefix.to_owned(),
    };
    let (kvs, _) = client.range_prefix(&scan).await?;
    let mut out = Vec::with_capacity(kvs.len());
    for kv in kvs {
        let key = String::from_utf8_lossy(&kv.key).into_owned();
        let rest = key.strip_prefix(prefix).unwrap_or(&key);
        let Some((service, id)) = rest.split_once('/') else {
            continue;
        };
        if id.is_empty() || id.contains('/') {
            continue;
        }
        out.push(Listed {
            service: service.to_owned(),
            id: id.to_owned(),
            instance: Instance::parse(&kv.value),
            lease: kv.lease,
        });
    }
    Ok(out)
}

/// The key prefix of `service`'s instances.
pub fn service_prefix(prefix: &str, service: &str) -> String {
    format!("{prefix}{service}/")
}

// === impl Instance ===

impl Instance {
    /// Parses a stored value: a JSON object, or a bare `host:port`.
    pub fn parse(value: &[u8]) -> Result<Instance, String> {
        let text = std::str::from_utf8(value).map_err(|_| "value is not UTF-8".to_owned())?;
        let text = text.trim();
        let instance = if text.starts_with('{') {
            serde_json::from_str::<Instance>(text).map_err(|e| format!("invalid JSON: {e}"))?
        } else {
            Instance {
                address: text.trim_matches('"').to_owned(),
                weight: 1,
                zone: None,
                identity: None,
                metadata: BTreeMap::new(),
            }
        };
        if !(1..=10_000).contains(&instance.weight) {
            return Err(format!("weight {} is not 1 to 10000", instance.weight));
        }
        Ok(instance)
    }

    /// The endpoint it describes.
    pub fn endpoint(&self) -> Result<Endpoint, String> {
        match self.address.parse::<Address>() {
            Ok(Address::Unix(_)) => Err(format!(
                "`{}` is a Unix socket, not reachable from peers",
                self.address
            )),
            Ok(address) => Ok(Endpoint {
                address,
                weight: self.weight,
                zone: self.zone.as_deref().map(std::sync::Arc::from),
            }),
            Err(e) => Err(format!("address `{}`: {e}", self.address)),
        }
    }

    /// The stored form.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Values parse as JSON objects or bare addresses; bad ones say what is wrong.
    #[test]
    fn instance_values() {
        let i = Instance::parse(
            br#"{"address":"10.0.0.5:7080","weight":3,"zone":"a","metadata":{"v":"1"}}"#,
        )
        .unwrap();
        assert_eq!(i.weight, 3);
        assert_eq!(i.zone.as_deref(), Some("a"));
        let e = i.endpoint().unwrap();
        assert_eq!(e.address.to_string(), "10.0.0.5:7080");
        assert_eq!(e.weight, 3);

        let bare = Instance::parse(b"10.0.0.6:7080\n").unwrap();
        assert_eq!(bare.weight, 1);
        assert_eq!(
            bare.endpoint().unwrap().address.to_string(),
            "10.0.0.6:7080"
        );

        assert!(Instance::parse(br#"{"address":"x:1","wieght":2}"#)
            .unwrap_err()
            .contains("wieght"));
        assert!(Instance::parse(br#"{"address":"x:1","weight":0}"#)
            .unwrap_err()
            .contains("weight 0"));
        assert!(Instance::parse(b"not an address")
            .unwrap()
            .endpoint()
            .is_err());
        // Round trip.
        assert_eq!(Instance::parse(&i.to_json()).unwrap(), i);
    }
}
