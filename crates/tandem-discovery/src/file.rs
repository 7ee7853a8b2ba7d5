//! File discovery: a YAML or JSON file listing endpoints, polled for changes.
//!
//! The file is a list of endpoints, or a map with the list under `endpoints`; an endpoint is
//! `"IP:port"` / `"host:port"` or `{ address, weight, zone }`. JSON is YAML, so both parse.
//! Change detection compares modification time, size and inode every `interval`; writers
//! should rename a complete new file over the old one (atomic), but a file caught half-written
//! only fails to parse: the last good set stays until the next poll reads a whole one.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Deserialize;
use tandem_config::{Address, FileDiscovery};

use crate::{Endpoint, Publisher};

#[derive(Deserialize)]
#[serde(untagged)]
enum FileDoc {
    List(Vec<FileEndpoint>),
    Map { endpoints: Vec<FileEndpoint> },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum FileEndpoint {
    Address(String),
    Full {
        address: String,
        #[serde(default)]
        weight: Option<u32>,
        #[serde(default)]
        zone: Option<String>,
    },
}

/// Parses an endpoint file's contents; errors name the entry and what is wrong.
pub fn parse(text: &str) -> Result<Vec<Endpoint>, String> {
    let doc: FileDoc = serde_yaml_ng::from_str(text).map_err(|e| {
        format!("{e} (expected a list of \"IP:port\" or {{address, weight, zone}} entries, or `endpoints:` with that list)")
    })?;
    let list = match doc {
        FileDoc::List(l) | FileDoc::Map { endpoints: l } => l,
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, e) in list.into_iter().enumerate() {
        let (address, weight, zone) = match e {
            FileEndpoint::Address(a) => (a, None, None),
            FileEndpoint::Full {
                address,
                weight,
                zone,
            } => (address, weight, zone),
        };
        let weight = weight.unwrap_or(1);
        if !(1..=10_000).contains(&weight) {
            return Err(format!(
                "endpoints[{i}] ({address}): weight {weight} is not 1 to 10000"
            ));
        }
        let address = match address.parse::<Address>() {
            Ok(a) => a,
            Err(e) => return Err(format!("endpoints[{i}]: {e}")),
        };
        out.push(Endpoint {
            address,
            weight,
            zone: zone.map(Arc::from),
        });
    }
    Ok(out)
}

fn fingerprint(path: &Path) -> std::io::Result<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok((m.modified()?, m.len(), m.ino()))
}

/// Polls the file until nobody listens.
pub(crate) async fn run(config: FileDiscovery, publisher: Publisher) {
    let mut last = None;
    let mut failing = false;
    loop {
        if publisher.closed() {
            return;
        }
        let result = match fingerprint(&config.path) {
            Ok(fp) if Some(fp) == last && !failing => {
                publisher.confirm();
                Ok(())
            }
            Ok(fp) => match tokio::fs::read_to_string(&config.path).await {
                Ok(text) => match parse(&text) {
                    Ok(endpoints) => {
                        last = Some(fp);
                        publisher.publish(endpoints);
                        Ok(())
                    }
                    Err(e) => Err(format!("{}: {e}", config.path.display())),
                },
                Err(e) => Err(format!("cannot read {}: {e}", config.path.display())),
            },
            Err(e) => Err(format!("cannot read {}: {e}", config.path.display())),
        };
        match result {
            Ok(()) => {
                if failing {
                    tracing::info!(path = %config.path.display(), "endpoint file readable again");
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "endpoint file unusable; keeping the last endpoints");
                }
                failing = true;
                publisher.failed(e);
            }
        }
        tokio::time::sleep(config.interval).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Lists, maps, JSON and YAML parse; bad weights and addresses are named.
    #[test]
    fn endpoint_files() {
        let yaml = "- 10.0.0.1:80\n- { address: 10.0.0.2:80, weight: 3, zone: a }\n";
        let e = parse(yaml).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].weight, 3);
        assert_eq!(e[1].zone.as_deref(), Some("a"));
        let json = r#"{"endpoints": ["localhost:8080", {"address": "[::1]:81"}]}"#;
        let e = parse(json).unwrap();
        assert_eq!(e[0].address.to_string(), "localhost:8080");
        assert_eq!(e[1].weight, 1);
        assert!(parse("[]").unwrap().is_empty());
        let err = parse("- { address: 10.0.0.1:80, weight: 0 }").unwrap_err();
        assert!(
            err.contains("endpoints[0]") && err.contains("weight 0"),
            "{err}"
        );
        let err = parse("- 10.0.0.1\n").unwrap_err();
        assert!(err.contains("endpoints[0]"), "{err}");
        assert!(parse("{ nope: 1 }").is_err());
        assert!(parse("- [1, 2").is_err());
    }

    /// A replaced file is picked up; a broken one keeps the last set and reports the error.
    #[tokio::test]
    async fn watches_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("eps.yaml");
        std::fs::write(&path, "- 10.0.0.1:80\n").unwrap();
        let (p, mut rx) = Publisher::new("file", "t".into());
        let task = tokio::spawn(run(
            FileDiscovery {
                path: path.clone(),
                interval: std::time::Duration::from_millis(20),
            },
            p,
        ));
        rx.wait_for(|s| s.endpoints.is_some()).await.unwrap();
        let tmp = dir.path().join("eps.tmp");
        std::fs::write(&tmp, "- 10.0.0.1:80\n- 10.0.0.2:80\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        rx.wait_for(|s| s.endpoints.as_ref().is_some_and(|e| e.len() == 2))
            .await
            .unwrap();
        std::fs::write(&tmp, "- not valid: [").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let s = rx.wait_for(|s| s.error.is_some()).await.unwrap().clone();
        assert_eq!(s.endpoints.unwrap().len(), 2);
        task.abort();
    }
}
