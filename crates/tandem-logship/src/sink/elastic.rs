//! Elasticsearch's bulk API (`POST /_bulk`): NDJSON pairs of an action and a document.
//!
//! ```text
//! {"index":{"_index":"logs-2026.11.24"}}
//! {"@timestamp":"2026-11-24T10:00:00.123Z","message":"...","file":"...","labels":{...},"fields":{...}}
//! ```
//!
//! The index name comes from a pattern with `%Y`, `%m`, `%d`, `%H` taken from each record's
//! time (UTC); the action line is rendered again only when the hour changes. With
//! `data_stream: true` the action is `create` (what data streams accept) and the name is the
//! data stream's.
//!
//! # Document ids
//! With `document_id: auto` (the default) each action names its document:
//! `{"index":{"_index":"...","_id":"<16 hex digits>"}}`, a hash of the record's origin identity
//! and position ([`crate::record::Origin::record_id`]): the source and the file (device, inode,
//! creation time, first line) with the offset past the record's last line, or a stream
//! source's disk buffer offset. A batch sent again after a lost answer, and lines read again after a crash, carry the
//! same ids, so Elasticsearch overwrites instead of indexing a second copy (`index`), or refuses
//! the copy with 409 `version_conflict_engine_exception` (`create`, data streams), which the
//! sink counts as indexed. Records without a stable place (the memory path of a stream source,
//! an empty file's first lines) get an id unique to this run, or none.
//!
//! # Partial failures
//! A bulk answer can be 200 with `"errors": true`: then each item has its own status. Items
//! with 429 or 5xx are sent again (only them: their pairs are cut out of the body that was
//! sent); items with any other failing status (400 `mapper_parsing_exception`, 404, 409, ...)
//! can never succeed as they are, so they are dropped, counted by reason and logged with
//! Elasticsearch's error type and reason. The batch is confirmed (and its offsets may be
//! checkpointed) once every item is indexed or dropped that way. [`parse_response`] reads the
//! answer; the sink asks for only the fields it reads (`filter_path`).

use std::sync::Arc;
use std::time::SystemTime;

use serde::Deserialize;

use super::encode::{push_json_str, record_as, rfc3339};
use crate::record::Chunk;

/// The `filter_path` the sink adds to its URL: the answer carries only what is read.
pub const FILTER_PATH: &str =
    "filter_path=errors,items.*.status,items.*.error.type,items.*.error.reason";

/// A piece of an index pattern.
#[derive(Clone, Debug, PartialEq)]
enum Piece {
    Lit(String),
    Year,
    Month,
    Day,
    Hour,
}

/// The bulk encoder of one sink.
#[derive(Debug)]
pub struct Bulk {
    pattern: Vec<Piece>,
    op: &'static str,
    /// Seconds per distinct index name: 3600 with `%H`, 86400 with a date, 0 for a fixed name.
    period: u64,
    /// Name documents (`_id`) after their records' places.
    ids: bool,
}

impl Bulk {
    /// An encoder for index `pattern` (checked by the config: only `%Y %m %d %H %%`).
    pub fn new(pattern: &str, data_stream: bool) -> Bulk {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                lit.push(c);
                continue;
            }
            let p = match chars.next() {
                Some('Y') => Piece::Year,
                Some('m') => Piece::Month,
                Some('d') => Piece::Day,
                Some('H') => Piece::Hour,
                Some(other) => {
                    if other != '%' {
                        lit.push('%');
                    }
                    lit.push(other);
                    continue;
                }
                None => {
                    lit.push('%');
                    continue;
                }
            };
            if !lit.is_empty() {
                pieces.push(Piece::Lit(std::mem::take(&mut lit)));
            }
            pieces.push(p);
        }
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        let period = if pieces.contains(&Piece::Hour) {
            3600
        } else if pieces.iter().any(|p| !matches!(p, Piece::Lit(_))) {
            86_400
        } else {
            0
        };
        Bulk {
            pattern: pieces,
            op: if data_stream { "create" } else { "index" },
            period,
            ids: false,
        }
    }

    /// The same encoder, naming documents after their records' places when `ids`.
    pub fn with_ids(mut self, ids: bool) -> Bulk {
        self.ids = ids;
        self
    }

    /// Appends the bulk body of `batch` to `out`: one action line and one document line per
    /// record.
    pub fn encode(&self, batch: &[Arc<Chunk>], out: &mut Vec<u8>) {
        let mut action: Vec<u8> = Vec::with_capacity(64);
        let mut action_period = u64::MAX;
        let mut name = String::new();
        for chunk in batch {
            let observed = rfc3339(chunk.observed);
            let observed_secs = unix_secs(chunk.observed);
            for r in &chunk.records {
                let secs = r.timestamp.map_or(observed_secs, unix_secs);
                let period = secs.checked_div(self.period).unwrap_or(0);
                if period != action_period {
                    action_period = period;
                    name.clear();
                    self.index_name(secs, &mut name);
                    action.clear();
                    action.extend_from_slice(b"{\"");
                    action.extend_from_slice(self.op.as_bytes());
                    action.extend_from_slice(b"\":{\"_index\":");
                    push_json_str(&mut action, &name);
                    action.extend_from_slice(b"}}\n");
                }
                match self
                    .ids
                    .then(|| chunk.origin.record_id(r.position))
                    .flatten()
                {
                    // The action without its closing `}}\n`, then the id.
                    Some(id) => {
                        out.extend_from_slice(&action[..action.len() - 3]);
                        out.extend_from_slice(format!(",\"_id\":\"{id:016x}\"}}}}\n").as_bytes());
                    }
                    None => out.extend_from_slice(&action),
                }
                record_as(r, b"@timestamp", &observed, &chunk.origin.json_tail, out);
            }
        }
    }

    /// The index name for a record at `secs` (Unix seconds, UTC).
    fn index_name(&self, secs: u64, out: &mut String) {
        use std::fmt::Write;
        let (y, m, d) = civil_from_days(secs / 86_400);
        let h = (secs % 86_400) / 3600;
        for p in &self.pattern {
            // Writing into a String cannot fail.
            let _ = match p {
                Piece::Lit(s) => {
                    out.push_str(s);
                    Ok(())
                }
                Piece::Year => write!(out, "{y:04}"),
                Piece::Month => write!(out, "{m:02}"),
                Piece::Day => write!(out, "{d:02}"),
                Piece::Hour => write!(out, "{h:02}"),
            };
        }
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// (year, month, day) of a count of days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (i64, u32, u32) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// What a 2xx bulk answer says about the items of the request.
#[derive(Debug, Default, PartialEq)]
pub struct BulkResult {
    /// Items to send again (429, 5xx), by position in the request.
    pub retry: Vec<usize>,
    /// The status that made most of them retryable (429 wins), for the retry metric.
    pub retry_status: u16,
    /// Items refused for good: position, status, error type and reason.
    pub dropped: Vec<Rejected>,
}

/// One item Elasticsearch refused for good.
#[derive(Debug, PartialEq)]
pub struct Rejected {
    /// Position in the request.
    pub item: usize,
    /// The item's status.
    pub status: u16,
    /// `error.type`, e.g. `mapper_parsing_exception`.
    pub kind: String,
    /// `error.reason`.
    pub reason: String,
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    errors: bool,
    #[serde(default)]
    items: Vec<Item>,
}

/// `{"index": {...}}` or `{"create": {...}}` (any one operation).
#[derive(Deserialize)]
struct Item {
    #[serde(alias = "create", alias = "update", alias = "delete")]
    index: ItemResult,
}

#[derive(Deserialize)]
struct ItemResult {
    status: u16,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// Whether a 2xx bulk answer says every item was indexed, from its first bytes alone
/// (`{"errors":false}` with `filter_path`, `{"took":3,"errors":false,...}` without).
pub fn all_indexed(body: &[u8]) -> bool {
    let head = &body[..body.len().min(64)];
    memchr::memmem::find(head, b"\"errors\":false").is_some()
}

/// Reads a 2xx bulk answer to a request of `sent` items: `Ok(None)` when every item was
/// indexed, the failed items otherwise, `Err` when the answer cannot be read (or does not
/// account for every item), in which case the whole request is sent again.
pub fn parse_response(body: &[u8], sent: usize) -> Result<Option<BulkResult>, String> {
    // The common answer, `{"errors":false}` (with `filter_path`), needs no parse.
    if all_indexed(body) {
        return Ok(None);
    }
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|e| format!("the bulk answer is not the expected JSON: {e}"))?;
    if !answer.errors {
        return Ok(None);
    }
    if answer.items.len() != sent {
        return Err(format!(
            "the bulk answer lists {} items for {sent} sent",
            answer.items.len()
        ));
    }
    let mut out = BulkResult::default();
    for (i, item) in answer.items.into_iter().enumerate() {
        let r = item.index;
        match r.status {
            200..=299 => {}
            429 | 500..=599 => {
                if r.status == 429 || out.retry_status == 0 {
                    out.retry_status = r.status;
                }
                out.retry.push(i);
            }
            status => {
                let (kind, reason) = match &r.error {
                    Some(serde_json::Value::Object(e)) => (
                        e.get("type")
                            .and_then(|v| v.as_str())
                            .unwrap_or("unknown")
                            .to_owned(),
                        e.get("reason")
                            .and_then(|v| v.as_str())
                            .unwrap_or("")
                            .to_owned(),
                    ),
                    Some(serde_json::Value::String(s)) => ("unknown".to_owned(), s.clone()),
                    _ => ("unknown".to_owned(), String::new()),
                };
                if status == 409 && kind == "version_conflict_engine_exception" {
                    // `create` of an id that is there: this document was indexed by an
                    // earlier attempt (a lost answer, a replay after a crash).
                    continue;
                }
                out.dropped.push(Rejected {
                    item: i,
                    status,
                    kind,
                    reason,
                });
            }
        }
    }
    Ok(Some(out))
}

/// The bulk body of only the items `keep` (positions, ascending) of `body`: each item is two
/// lines, its action and its document.
pub fn select_items(body: &[u8], keep: &[usize], out: &mut Vec<u8>) {
    let mut want = keep.iter().copied().peekable();
    let mut start = 0;
    for (line, end) in memchr::memchr_iter(b'\n', body).enumerate() {
        let Some(&next) = want.peek() else { break };
        if line / 2 == next {
            out.extend_from_slice(&body[start..=end]);
            if line % 2 == 1 {
                want.next();
            }
        }
        start = end + 1;
    }
}

/// Items in a bulk body (two lines each).
pub fn count_items(body: &[u8]) -> usize {
    memchr::memchr_iter(b'\n', body).count() / 2
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::record::{Origin, Record};

    fn batch(times: &[Option<u64>]) -> Vec<Arc<Chunk>> {
        let origin = Arc::new(Origin::new(
            "app".into(),
            "/var/log/a.log".into(),
            Arc::from(vec![("host".to_owned(), "h1".to_owned())]),
        ));
        let records = times
            .iter()
            .enumerate()
            .map(|(i, t)| Record {
                message: Bytes::from(format!("m{i}")),
                timestamp: t.map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s)),
                ..Record::default()
            })
            .collect();
        let (tx, _rx) = std::sync::mpsc::channel();
        vec![Arc::new(Chunk::new(
            records,
            0,
            // 2026-11-24T10:00:00Z
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_514_400),
            origin,
            (1, 0, 10),
            1,
            tx,
            None,
        ))]
    }

    /// The golden body: index names per record time (the observed time without one), `%H`,
    /// a literal `%`, a data stream's `create`, and `@timestamp` documents.
    #[test]
    fn golden_body() {
        let b = batch(&[None, Some(0), Some(951_782_400 + 3600 * 13)]);
        let mut out = Vec::new();
        Bulk::new("logs-%Y.%m.%d-%H%%", false).encode(&b, &mut out);
        let want = concat!(
            "{\"index\":{\"_index\":\"logs-2026.11.24-10%\"}}\n",
            "{\"@timestamp\":\"2026-11-24T10:00:00.000Z\",\"message\":\"m0\",\"file\":\"/var/log/a.log\",\"labels\":{\"host\":\"h1\"}}\n",
            "{\"index\":{\"_index\":\"logs-1970.01.01-00%\"}}\n",
            "{\"@timestamp\":\"1970-01-01T00:00:00.000Z\",\"message\":\"m1\",\"file\":\"/var/log/a.log\",\"labels\":{\"host\":\"h1\"}}\n",
            "{\"index\":{\"_index\":\"logs-2000.02.29-13%\"}}\n",
            "{\"@timestamp\":\"2000-02-29T13:00:00.000Z\",\"message\":\"m2\",\"file\":\"/var/log/a.log\",\"labels\":{\"host\":\"h1\"}}\n",
        );
        assert_eq!(String::from_utf8(out).unwrap(), want);
        let mut out = Vec::new();
        Bulk::new("logs-app", true).encode(&b[..1], &mut out);
        assert!(out.starts_with(b"{\"create\":{\"_index\":\"logs-app\"}}\n{\"@timestamp\""));
        assert_eq!(count_items(&out), 3);
    }

    /// With ids on, each action names its document by the record's origin identity and
    /// position: the same for the same record encoded again (a retry, a half of a split batch,
    /// a replay), different for another position or origin; none without a stable place.
    #[test]
    fn document_ids() {
        let chunk = |identity: u64, positions: &[u64]| {
            let origin = Arc::new(
                Origin::new("app".into(), "/var/log/a.log".into(), Arc::from(vec![]))
                    .with_identity(identity),
            );
            let records = positions
                .iter()
                .map(|p| Record {
                    message: Bytes::from(format!("at {p}")),
                    position: *p,
                    ..Record::default()
                })
                .collect();
            let (tx, _rx) = std::sync::mpsc::channel();
            Arc::new(Chunk::new(
                records,
                0,
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_514_400),
                origin,
                (1, 0, 10),
                1,
                tx,
                None,
            ))
        };
        let ids = |bulk: &Bulk, batch: &[Arc<Chunk>]| -> Vec<Option<String>> {
            let mut out = Vec::new();
            bulk.encode(batch, &mut out);
            out.split(|b| *b == b'\n')
                .step_by(2)
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_slice(l).unwrap();
                    let (_, a) = v.as_object().unwrap().iter().next().unwrap();
                    assert_eq!(a["_index"], "logs-2026.11.24");
                    a.get("_id").map(|i| i.as_str().unwrap().to_owned())
                })
                .collect()
        };
        let bulk = Bulk::new("logs-%Y.%m.%d", false).with_ids(true);
        let a = ids(&bulk, &[chunk(7, &[100, 250, 0])]);
        assert!(
            a[0].as_ref().unwrap().len() == 16 && a[1].is_some(),
            "{a:?}"
        );
        assert_ne!(a[0], a[1]);
        assert_eq!(a[2], None, "no stable place, no id");
        // Encoded again, or as the second half of a split batch: the same ids.
        assert_eq!(ids(&bulk, &[chunk(7, &[100, 250, 0])]), a);
        let whole = chunk(7, &[100, 250, 0]);
        assert_eq!(ids(&bulk, &[Arc::new(whole.part(1..3))]), a[1..]);
        // Another origin (another file, source or buffer): other ids.
        let b = ids(&bulk, &[chunk(8, &[100, 250])]);
        assert!(b[0] != a[0] && b[1] != a[1]);
        // No identity, or ids off: Elasticsearch chooses.
        assert_eq!(ids(&bulk, &[chunk(0, &[100])]), [None]);
        let off = Bulk::new("logs-%Y.%m.%d", true);
        let mut out = Vec::new();
        off.encode(&[chunk(7, &[100])], &mut out);
        assert!(out.starts_with(b"{\"create\":{\"_index\":\"logs-2026.11.24\"}}\n"));
        let mut out = Vec::new();
        Bulk::new("logs-%Y.%m.%d", true)
            .with_ids(true)
            .encode(&[chunk(7, &[100])], &mut out);
        let want = format!(
            "{{\"create\":{{\"_index\":\"logs-2026.11.24\",\"_id\":\"{}\"}}}}\n",
            a[0].as_ref().unwrap()
        );
        assert!(
            out.starts_with(want.as_bytes()),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }

    /// A `create` refused as a version conflict is a document an earlier attempt indexed: not
    /// dropped, not retried.
    #[test]
    fn version_conflicts_count_as_indexed() {
        let body = br#"{"errors":true,"items":[
            {"create":{"status":409,"error":{"type":"version_conflict_engine_exception","reason":"[abc]: version conflict, document already exists"}}},
            {"create":{"status":201}}
        ]}"#;
        let r = parse_response(body, 2).unwrap().unwrap();
        assert!(r.dropped.is_empty() && r.retry.is_empty(), "{r:?}");
    }

    /// Dates across leap years and centuries.
    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        assert_eq!(civil_from_days(47_541), (2100, 3, 1));
        assert_eq!(civil_from_days(20_781), (2026, 11, 24));
    }

    /// The answer parser: all indexed (with and without a parse), per-item 429/5xx to retry,
    /// 4xx dropped with type and reason, a count that does not match, garbage.
    #[test]
    fn bulk_answers() {
        assert_eq!(parse_response(br#"{"errors":false}"#, 3), Ok(None));
        assert!(all_indexed(br#"{"errors":false}"#));
        assert!(!all_indexed(br#"{"took":1,"errors":true,"items":[]}"#));
        assert_eq!(
            parse_response(
                br#"{"took":3,"errors":false,"items":[{"index":{"status":201}}]}"#,
                1
            ),
            Ok(None)
        );
        let body = br#"{"took":1,"errors":true,"items":[
            {"index":{"_index":"l","status":201}},
            {"index":{"status":503,"error":{"type":"unavailable_shards_exception","reason":"r"}}},
            {"create":{"status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [status]"}}},
            {"index":{"status":429,"error":{"type":"es_rejected_execution_exception","reason":"queue full"}}},
            {"index":{"status":409,"error":"conflict"}}
        ]}"#;
        let r = parse_response(body, 5).unwrap().unwrap();
        assert_eq!(r.retry, [1, 3]);
        assert_eq!(r.retry_status, 429);
        assert_eq!(
            r.dropped,
            [
                Rejected {
                    item: 2,
                    status: 400,
                    kind: "mapper_parsing_exception".into(),
                    reason: "failed to parse field [status]".into()
                },
                Rejected {
                    item: 4,
                    status: 409,
                    kind: "unknown".into(),
                    reason: "conflict".into()
                }
            ]
        );
        assert!(parse_response(body, 4)
            .unwrap_err()
            .contains("5 items for 4"));
        assert!(parse_response(b"<html>", 1).is_err());
    }

    /// Cutting items out of a body keeps their action and document lines together.
    #[test]
    fn select_items_keeps_pairs() {
        let body = b"a0\nd0\na1\nd1\na2\nd2\na3\nd3\n";
        let mut out = Vec::new();
        select_items(body, &[1, 3], &mut out);
        assert_eq!(out, b"a1\nd1\na3\nd3\n");
        out.clear();
        select_items(body, &[], &mut out);
        assert!(out.is_empty());
        out.clear();
        select_items(body, &[0, 1, 2, 3], &mut out);
        assert_eq!(out, body);
    }
}
