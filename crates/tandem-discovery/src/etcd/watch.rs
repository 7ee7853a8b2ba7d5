//! The etcd endpoint source: lists `<prefix><service>/`, then watches it from the list's
//! revision, publishing the instance set after every change.
//!
//! A watch that ends (member down, stream cut, GOAWAY) resumes from the last revision it saw,
//! so a reconnect costs the events missed meanwhile, not a relist: with thousands of instances
//! and hundreds of sidecars, a relist per reconnect would have every sidecar fetch the whole
//! service whenever one etcd member restarts. Only when etcd has compacted that revision away
//! (the watch answers with `compact_revision`) does the source list again, at once and without
//! reporting a failure. Throughout, the last published set keeps serving.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::client::{Client, Error, Watch};
use super::proto::WatchResponse;
use super::{service_prefix, Instance};
use crate::{Endpoint, Publisher};

/// Longest back-off between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What the source knows of the service between attempts.
#[derive(Default)]
struct View {
    /// Instances by etcd key. Parsed once per put: a change to one instance of thousands costs
    /// one parse.
    instances: BTreeMap<Box<str>, Endpoint>,
    /// Every event up to this revision is in `instances`; 0 before the first list (or after a
    /// compaction): the next attempt lists.
    revision: i64,
    /// One string per distinct zone, shared by the instances in it.
    zones: HashSet<Arc<str>>,
}

/// Why an attempt ended.
enum Ended {
    /// Nobody listens any more.
    Closed,
    /// etcd compacted the revision the watch resumed from: list again.
    Compacted(i64),
}

/// Watches `service` until the publisher's receivers are gone.
pub(crate) async fn run(client: Client, prefix: String, service: String, publisher: Publisher) {
    let key_prefix = service_prefix(&prefix, &service);
    let mut view = View::default();
    let mut backoff = Duration::from_millis(100);
    loop {
        if publisher.closed() {
            return;
        }
        let attempt = tokio::time::Instant::now();
        match sync(&client, &key_prefix, &publisher, &mut view).await {
            Ok(Ended::Closed) => return,
            Ok(Ended::Compacted(compacted)) => {
                // Not a failure: the history the watch needed is gone, so the set is fetched
                // whole. The last set serves until the list answers.
                tracing::info!(service = %service, revision = view.revision, compacted, "etcd compacted the watched revision; listing the service again");
                view.revision = 0;
                continue;
            }
            Err(e) => {
                // A watch that ran a while before failing starts the back-off over.
                if attempt.elapsed() > Duration::from_secs(10) {
                    backoff = Duration::from_millis(100);
                }
                tracing::warn!(service = %service, error = %e, revision = view.revision, "etcd discovery failed; keeping the last endpoints");
                publisher.failed(e.to_string());
                client.reset();
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Lists (when `view` has no revision), then watches from `view`'s revision on.
async fn sync(
    client: &Client,
    key_prefix: &str,
    publisher: &Publisher,
    view: &mut View,
) -> Result<Ended, Error> {
    if view.revision == 0 {
        let (kvs, revision) = client.range_prefix(key_prefix).await?;
        // The old map is not published (the publisher holds its own copy): drop it before the
        // new one is built, so a relist never holds two. Built by `collect` (the range is
        // sorted by key), its nodes are full: a third smaller than inserted one by one.
        view.instances = BTreeMap::new();
        view.zones.clear();
        let zones = &mut view.zones;
        view.instances = kvs
            .into_iter()
            .filter_map(|kv| parse(key_prefix, &kv.key, &kv.value, zones))
            .collect();
        view.revision = revision;
        publisher.publish(view.instances.values().cloned().collect());
    }
    // From the last revision already applied, not the one after it: its events come again
    // (applying them twice changes nothing), and a compaction at exactly the next revision is
    // refused as such. etcd before 3.4.34/3.5.15 serves a watch from the compaction revision
    // itself but has dropped the deletes made at that revision (etcd-io/etcd#18089), so a watch
    // resumed there would keep a deleted instance forever.
    let mut watch = client.watch(key_prefix, view.revision).await?;
    // An open watch is a current view: HTTP/2 pings end a stream whose member stopped answering
    // (see `client`), so while it is open the set counts as confirmed (the age metric then
    // measures staleness, not quiet).
    let mut fresh = tokio::time::interval(Duration::from_secs(1));
    loop {
        let res = tokio::select! {
            r = watch.next() => r?,
            _ = fresh.tick() => {
                publisher.confirm();
                continue;
            }
            _ = publisher.wait_closed() => return Ok(Ended::Closed),
        };
        // Responses that arrived while the last set was being built are applied together and
        // published once: a burst (thousands of instances registering, a deploy) costs one
        // set and one rebuild per batch the source could not keep up with, not one per etcd
        // transaction. Only what is already received is taken, so nothing waits.
        let mut changed = false;
        let mut next = Some(Ok(res));
        let ended = loop {
            let Some(r) = next.take() else { break None };
            match r.and_then(|res| apply(res, key_prefix, view)) {
                Ok(Applied::Changed) => changed = true,
                Ok(Applied::Nothing) => {}
                Ok(Applied::Ended(e)) => break Some(Ok(e)),
                Err(e) => break Some(Err(e)),
            }
            next = now(&mut watch).await;
        };
        // Applied events are published even when the watch then ended: the next attempt
        // resumes after them, so they would not come again.
        if changed {
            publisher.publish(view.instances.values().cloned().collect());
        } else if ended.is_none() {
            publisher.confirm();
        }
        if let Some(ended) = ended {
            return ended;
        }
    }
}

/// What one watch response did to the view.
enum Applied {
    /// Instances changed.
    Changed,
    /// A progress notification or the `created` answer.
    Nothing,
    /// The watch cannot go on from here.
    Ended(Ended),
}

/// Applies one watch response to `view`.
fn apply(res: WatchResponse, key_prefix: &str, view: &mut View) -> Result<Applied, Error> {
    if res.compact_revision > 0 {
        return Ok(Applied::Ended(Ended::Compacted(res.compact_revision)));
    }
    if res.canceled {
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
        // A progress notification says every event up to its header's revision was sent,
        // so a later resume may start there. (The `created` answer's header is the store's
        // revision, not the watch's: events before it may still be on their way.)
        if !res.created {
            if let Some(h) = &res.header {
                view.revision = view.revision.max(h.revision);
            }
        }
        return Ok(Applied::Nothing);
    }
    for ev in res.events {
        let Some(kv) = ev.kv else { continue };
        view.revision = view.revision.max(kv.mod_revision);
        let key = String::from_utf8_lossy(&kv.key);
        view.instances.remove(&*key);
        if ev.r#type != 1 {
            if let Some((key, e)) = parse(key_prefix, &kv.key, &kv.value, &mut view.zones) {
                view.instances.insert(key, e);
            }
        }
    }
    Ok(Applied::Changed)
}

/// The watch's next response if it has already arrived; `None` without waiting otherwise.
async fn now(watch: &mut Watch) -> Option<Result<WatchResponse, Error>> {
    tokio::select! {
        biased;
        r = watch.next() => Some(r),
        () = std::future::ready(()) => None,
    }
}

/// The endpoint of one stored instance, keyed by its etcd key; `None` for keys that are not
/// direct children of the service (`<prefix><service>/<id>`) and, with a warning, for values
/// that do not parse (one bad key must not empty the service). Its zone string is the one of
/// `zones` when another instance has that zone.
fn parse(
    key_prefix: &str,
    key: &[u8],
    value: &[u8],
    zones: &mut HashSet<Arc<str>>,
) -> Option<(Box<str>, Endpoint)> {
    let key = String::from_utf8_lossy(key);
    let id = key.strip_prefix(key_prefix).unwrap_or(&key);
    if id.is_empty() || id.contains('/') {
        return None;
    }
    match Instance::parse(value).and_then(|i| i.endpoint()) {
        Ok(mut e) => {
            if let Some(z) = e.zone.take() {
                let shared = match zones.get(&z) {
                    Some(s) => s.clone(),
                    None => {
                        zones.insert(z.clone());
                        z
                    }
                };
                e.zone = Some(shared);
            }
            Some((key.into(), e))
        }
        Err(why) => {
            tracing::warn!(key = %key, reason = %why, "ignoring an unreadable instance in etcd");
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::proto::{Event, KeyValue, ResponseHeader};
    use super::*;

    const PREFIX: &str = "/tandem/services/orders/";

    fn event(delete: bool, id: &str, value: &str, revision: i64) -> Event {
        Event {
            r#type: i32::from(delete),
            kv: Some(KeyValue {
                key: format!("{PREFIX}{id}").into_bytes(),
                mod_revision: revision,
                value: value.as_bytes().to_vec(),
                ..Default::default()
            }),
        }
    }

    fn response(events: Vec<Event>) -> WatchResponse {
        WatchResponse {
            events,
            ..Default::default()
        }
    }

    fn addresses(view: &View) -> Vec<String> {
        view.instances
            .values()
            .map(|e| e.address.to_string())
            .collect()
    }

    /// Responses applied one after another (as a burst is, before one publish) leave the
    /// view where they would have one at a time: puts, replacements and deletes in order,
    /// the revision at the last event, keys outside the service and unreadable values skipped.
    #[test]
    fn responses_apply_in_order() {
        let mut view = View::default();
        let first = response(vec![
            event(false, "a", "10.0.0.1:80", 5),
            event(false, "b", r#"{"address":"10.0.0.2:80","zone":"z1"}"#, 5),
            event(false, "nested/c", "10.0.0.3:80", 5),
            event(false, "d", "not an address", 5),
        ]);
        let second = response(vec![
            event(true, "a", "", 6),
            event(false, "b", r#"{"address":"10.0.0.4:80","zone":"z1"}"#, 7),
        ]);
        assert!(matches!(
            apply(first, PREFIX, &mut view).unwrap(),
            Applied::Changed
        ));
        assert!(matches!(
            apply(second, PREFIX, &mut view).unwrap(),
            Applied::Changed
        ));
        assert_eq!(addresses(&view), ["10.0.0.4:80"]);
        assert_eq!(view.revision, 7);
        assert_eq!(view.zones.len(), 1);
    }

    /// A progress notification moves the resume revision on, the `created` answer does not;
    /// a compaction ends the watch for a relist, a cancellation is an error.
    #[test]
    fn progress_created_compacted_cancelled() {
        let mut view = View {
            revision: 10,
            ..View::default()
        };
        let header = Some(ResponseHeader {
            revision: 20,
            ..Default::default()
        });
        let created = WatchResponse {
            created: true,
            header: header.clone(),
            ..Default::default()
        };
        assert!(matches!(
            apply(created, PREFIX, &mut view).unwrap(),
            Applied::Nothing
        ));
        assert_eq!(view.revision, 10);
        let progress = WatchResponse {
            header,
            ..Default::default()
        };
        assert!(matches!(
            apply(progress, PREFIX, &mut view).unwrap(),
            Applied::Nothing
        ));
        assert_eq!(view.revision, 20);
        let compacted = WatchResponse {
            compact_revision: 15,
            ..Default::default()
        };
        assert!(matches!(
            apply(compacted, PREFIX, &mut view).unwrap(),
            Applied::Ended(Ended::Compacted(15))
        ));
        let cancelled = WatchResponse {
            canceled: true,
            cancel_reason: "no space".into(),
            ..Default::default()
        };
        let err = apply(cancelled, PREFIX, &mut view).err().unwrap();
        assert!(err.to_string().contains("no space"), "{err}");
    }
}
