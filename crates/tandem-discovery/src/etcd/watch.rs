//! The etcd endpoint source: lists `<prefix><service>/`, then watches it from the next
//! revision, publishing the instance set after every change. On any failure (member down,
//! stream cut, compaction) it reports the error, keeps the last set, backs off and lists again.

use std::collections::BTreeMap;
use std::time::Duration;

use super::client::{Client, Error};
use super::{service_prefix, Instance};
use crate::{Endpoint, Publisher};

/// Longest back-off between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Watches `service` until the publisher's receivers are gone.
pub(crate) async fn run(client: Client, prefix: String, service: String, publisher: Publisher) {
    let key_prefix = service_prefix(&prefix, &service);
    let mut backoff = Duration::from_millis(100);
    loop {
        if publisher.closed() {
            return;
        }
        let attempt = tokio::time::Instant::now();
        match list_and_watch(&client, &key_prefix, &publisher).await {
            Ok(()) => return,
            Err(e) => {
                // A watch that ran a while before failing starts the back-off over.
                if attempt.elapsed() > Duration::from_secs(10) {
                    backoff = Duration::from_millis(100);
                }
                tracing::warn!(service = %service, error = %e, "etcd discovery failed; keeping the last endpoints");
                publisher.failed(e.to_string());
                client.reset();
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Lists then watches; returns `Ok` only when nobody listens any more.
async fn list_and_watch(
    client: &Client,
    key_prefix: &str,
    publisher: &Publisher,
) -> Result<(), Error> {
    let (kvs, revision) = client.range_prefix(key_prefix).await?;
    // Parsed once per put: a change to one instance of thousands costs one parse.
    let mut instances: BTreeMap<String, Endpoint> = kvs
        .into_iter()
        .filter_map(|kv| parse(key_prefix, &kv.key, &kv.value))
        .collect();
    publisher.publish(instances.values().cloned().collect());
    let mut watch = client.watch(key_prefix, revision + 1).await?;
    // An open watch is a current view: HTTP/2 pings end a stream whose member stopped answering
    // within seconds, so while it is open the set counts as confirmed (the age metric then
    // measures staleness, not quiet).
    let mut fresh = tokio::time::interval(Duration::from_secs(1));
    loop {
        let res = tokio::select! {
            r = watch.next() => r?,
            _ = fresh.tick() => {
                publisher.confirm();
                continue;
            }
            _ = publisher.wait_closed() => return Ok(()),
        };
        if res.canceled || res.compact_revision > 0 {
            return Err(Error::Stream(format!(
                "watch cancelled{}",
                if res.cancel_reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", res.cancel_reason)
                }
            )));
        }
        if res.events.is_empty() {
            // Created or a progress notification: the set is confirmed current.
            publisher.confirm();
            continue;
        }
        for ev in res.events {
            let Some(kv) = ev.kv else { continue };
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            instances.remove(&key);
            if ev.r#type != 1 {
                if let Some((key, e)) = parse(key_prefix, &kv.key, &kv.value) {
                    instances.insert(key, e);
                }
            }
        }
        publisher.publish(instances.values().cloned().collect());
    }
}

/// The endpoint of one stored instance, keyed by its etcd key; `None` for keys that are not
/// direct children of the service (`<prefix><service>/<id>`) and, with a warning, for values
/// that do not parse (one bad key must not empty the service).
fn parse(key_prefix: &str, key: &[u8], value: &[u8]) -> Option<(String, Endpoint)> {
    let key = String::from_utf8_lossy(key).into_owned();
    let id = key.strip_prefix(key_prefix).unwrap_or(&key);
    if id.is_empty() || id.contains('/') {
        return None;
    }
    match Instance::parse(value).and_then(|i| i.endpoint()) {
        Ok(e) => Some((key, e)),
        Err(why) => {
            tracing::warn!(key = %key, reason = %why, "ignoring an unreadable instance in etcd");
            None
        }
    }
}
