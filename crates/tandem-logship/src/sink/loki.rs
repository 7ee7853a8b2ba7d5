//! Loki's push API (`POST /loki/api/v1/push`), JSON:
//!
//! ```text
//! {"streams":[{"stream":{"host":"h","service":"orders"},"values":[["1700000000123000000","line"],...]},...]}
//! ```
//!
//! A stream is a set of labels, and Loki indexes every distinct set: labels must be few and of
//! bounded values. So streams are made only of the record labels (`logs.labels`, the source's,
//! `host`: fixed per source) — all of them, or the `stream_labels` named — and optionally
//! `level` (six values). Nothing taken from a line's content is ever a label. A set that comes
//! out empty gets `source="<source name>"` (Loki refuses a stream without labels).
//!
//! Loki wants each stream's entries in time order; entries are sorted per stream (stable, so
//! lines with one timestamp keep their file order) when they are not in order already. The
//! line is the message, or for a record with fields a JSON object of `message`, `level` and the
//! fields, which Loki's `| json` reads back.
//!
//! With `encoding: protobuf`, the same streams as Loki's `logproto.PushRequest` (what Promtail
//! sends), snappy-compressed: `streams (1): { labels (1): "{k=\"v\", ...}", entries (2):
//! { timestamp (1): { seconds (1), nanos (2) }, line (2) } }`. Cheaper to write and to read
//! than JSON, and snappy costs a fraction of gzip's CPU — for about twice gzip's bytes
//! (measured: 735 KB against 362 KB of gzipped JSON for 50,000 150-byte lines).
//!
//! Cost: label sets are rendered once per chunk, and a batch's entries are gathered as indexes
//! into the batch, not copies; the only per-line work is escaping and copying the message.

use std::sync::Arc;

use bytes::BufMut;
use prost::encoding::{encode_key, encode_varint, WireType};

use super::encode::{push_json_str, push_u64, unix_nanos};
use crate::record::{Chunk, Level, Record};

/// The Loki encoder of one sink.
#[derive(Debug)]
pub struct Loki {
    /// Label names making a stream; `None`: every record label.
    stream_labels: Option<Vec<String>>,
    /// Whether `level` is one of them.
    by_level: bool,
    /// Snappy-compressed protobuf instead of JSON.
    protobuf: bool,
}

/// One stream of a batch: its labels (JSON, or Prometheus' `{k="v"}` for protobuf), and its
/// entries (timestamp, chunk, record).
struct Stream {
    labels: Vec<u8>,
    entries: Vec<(u64, u32, u32)>,
}

impl Loki {
    /// An encoder making streams of `stream_labels` (every record label when `None`), in JSON
    /// or (`protobuf`) snappy-compressed protobuf.
    pub fn new(stream_labels: Option<Vec<String>>, protobuf: bool) -> Loki {
        let by_level = stream_labels
            .as_ref()
            .is_some_and(|l| l.iter().any(|n| n == "level"));
        Loki {
            stream_labels,
            by_level,
            protobuf,
        }
    }

    /// The request's `Content-Type`.
    pub fn content_type(&self) -> &'static str {
        if self.protobuf {
            "application/x-protobuf"
        } else {
            "application/json"
        }
    }

    /// Appends the push request of `batch` to `out`.
    pub fn encode(&self, batch: &[Arc<Chunk>], out: &mut Vec<u8>) {
        let mut streams: Vec<Stream> = Vec::new();
        let mut labels = Vec::with_capacity(256);
        // Per chunk and level: the index of its stream (7 slots: no level, then each level).
        for (ci, chunk) in batch.iter().enumerate() {
            let mut slots = [usize::MAX; 7];
            let observed = unix_nanos(chunk.observed);
            for (ri, r) in chunk.records.iter().enumerate() {
                let slot = if self.by_level {
                    level_slot(r.level)
                } else {
                    0
                };
                if slots[slot] == usize::MAX {
                    labels.clear();
                    self.render_labels(chunk, r.level, &mut labels);
                    slots[slot] = match streams.iter().position(|s| s.labels == labels) {
                        Some(i) => i,
                        None => {
                            streams.push(Stream {
                                labels: labels.clone(),
                                entries: Vec::with_capacity(chunk.records.len()),
                            });
                            streams.len() - 1
                        }
                    };
                }
                let ts = r.timestamp.map_or(observed, unix_nanos);
                // Batches hold at most a million lines: indexes fit in u32.
                streams[slots[slot]]
                    .entries
                    .push((ts, ci as u32, ri as u32));
            }
        }
        for s in &mut streams {
            if !s.entries.is_sorted_by_key(|e| e.0) {
                s.entries.sort_by_key(|e| e.0);
            }
        }
        if self.protobuf {
            write_protobuf(batch, &streams, out);
            return;
        }
        let mut scratch = Vec::new();
        out.extend_from_slice(b"{\"streams\":[");
        for (si, s) in streams.iter().enumerate() {
            if si > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"stream\":");
            out.extend_from_slice(&s.labels);
            out.extend_from_slice(b",\"values\":[");
            for (ei, &(ts, ci, ri)) in s.entries.iter().enumerate() {
                if ei > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"[\"");
                push_u64(out, ts);
                out.extend_from_slice(b"\",");
                let r = &batch[ci as usize].records[ri as usize];
                line(r, &mut scratch, out);
                out.push(b']');
            }
            out.extend_from_slice(b"]}");
        }
        out.extend_from_slice(b"]}");
    }

    /// The stream's labels as a JSON object, or for protobuf as Prometheus writes them
    /// (`{k="v", k2="v2"}`, what Loki parses).
    fn render_labels(&self, chunk: &Chunk, level: Option<Level>, out: &mut Vec<u8>) {
        out.push(b'{');
        let start = out.len();
        let protobuf = self.protobuf;
        let pair = |out: &mut Vec<u8>, k: &str, v: &str| {
            if protobuf {
                if out.len() > start {
                    out.extend_from_slice(b", ");
                }
                out.extend_from_slice(k.as_bytes());
                out.extend_from_slice(b"=\"");
                for b in v.bytes() {
                    match b {
                        b'\\' => out.extend_from_slice(b"\\\\"),
                        b'"' => out.extend_from_slice(b"\\\""),
                        b'\n' => out.extend_from_slice(b"\\n"),
                        b => out.push(b),
                    }
                }
                out.push(b'"');
                return;
            }
            if out.len() > start {
                out.push(b',');
            }
            push_json_str(out, k);
            out.push(b':');
            push_json_str(out, v);
        };
        let labels = &chunk.origin.labels;
        match &self.stream_labels {
            None => {
                for (k, v) in labels.iter() {
                    pair(out, k, v);
                }
            }
            Some(names) => {
                for n in names {
                    if n == "level" {
                        if let Some(l) = level {
                            pair(out, "level", l.as_str());
                        }
                    } else if let Some((k, v)) = labels.iter().find(|(k, _)| k == n) {
                        pair(out, k, v);
                    }
                }
            }
        }
        if out.len() == start {
            pair(out, "source", &chunk.origin.source);
        }
        out.push(b'}');
    }
}

/// The streams as a snappy-compressed `logproto.PushRequest`.
fn write_protobuf(batch: &[Arc<Chunk>], streams: &[Stream], out: &mut Vec<u8>) {
    let mut req: Vec<u8> = Vec::with_capacity(batch.iter().map(|c| c.bytes).sum::<usize>() + 1024);
    let mut entries: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut entry: Vec<u8> = Vec::with_capacity(1024);
    let mut ts: Vec<u8> = Vec::with_capacity(16);
    let mut scratch: Vec<u8> = Vec::new();
    for s in streams {
        entries.clear();
        for &(nanos, ci, ri) in &s.entries {
            let r = &batch[ci as usize].records[ri as usize];
            // Timestamp { seconds (1), nanos (2) }; zeros left out, as proto3 does.
            ts.clear();
            let (secs, sub) = (nanos / 1_000_000_000, nanos % 1_000_000_000);
            if secs != 0 {
                encode_key(1, WireType::Varint, &mut ts);
                encode_varint(secs, &mut ts);
            }
            if sub != 0 {
                encode_key(2, WireType::Varint, &mut ts);
                encode_varint(sub, &mut ts);
            }
            // EntryAdapter { timestamp (1), line (2) }
            entry.clear();
            len_field(&mut entry, 1, &ts);
            len_field(&mut entry, 2, raw_line(r, &mut scratch).as_bytes());
            len_field(&mut entries, 2, &entry);
        }
        // StreamAdapter { labels (1), entries (2)... }
        let labels_len =
            1 + prost::encoding::encoded_len_varint(s.labels.len() as u64) + s.labels.len();
        encode_key(1, WireType::LengthDelimited, &mut req);
        encode_varint((labels_len + entries.len()) as u64, &mut req);
        len_field(&mut req, 1, &s.labels);
        req.put_slice(&entries);
    }
    // Loki reads the snappy block format (not the framed one).
    let start = out.len();
    out.resize(start + snap::raw::max_compress_len(req.len()), 0);
    match snap::raw::Encoder::new().compress(&req, &mut out[start..]) {
        Ok(n) => out.truncate(start + n),
        // Only a body over 4 GiB can fail; batches are at most 64 MiB.
        Err(_) => out.truncate(start),
    }
}

fn len_field(buf: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.put_slice(bytes);
}

/// The entry's line as text: the message, or with fields the JSON object of [`line`].
fn raw_line<'a>(r: &'a Record, scratch: &'a mut Vec<u8>) -> std::borrow::Cow<'a, str> {
    if r.fields.is_none() {
        return String::from_utf8_lossy(&r.message);
    }
    scratch.clear();
    object(r, scratch);
    String::from_utf8_lossy(scratch)
}

fn level_slot(l: Option<Level>) -> usize {
    match l {
        None => 0,
        Some(Level::Trace) => 1,
        Some(Level::Debug) => 2,
        Some(Level::Info) => 3,
        Some(Level::Warn) => 4,
        Some(Level::Error) => 5,
        Some(Level::Fatal) => 6,
    }
}

/// The entry's line as a JSON string: the message, or with fields an object of message, level
/// and fields (rendered into `scratch`, then escaped).
fn line(r: &Record, scratch: &mut Vec<u8>, out: &mut Vec<u8>) {
    if r.fields.is_none() {
        message(&r.message, out);
        return;
    }
    scratch.clear();
    object(r, scratch);
    // The object is valid UTF-8: it was written from strings.
    push_json_str(out, &String::from_utf8_lossy(scratch));
}

/// A record with fields as one JSON object: message, level, fields.
fn object(r: &Record, scratch: &mut Vec<u8>) {
    scratch.extend_from_slice(b"{\"message\":");
    message(&r.message, scratch);
    if let Some(l) = r.level {
        scratch.extend_from_slice(b",\"level\":\"");
        scratch.extend_from_slice(l.as_str().as_bytes());
        scratch.push(b'"');
    }
    for (k, v) in r.fields.iter().flat_map(|f| f.iter()) {
        scratch.push(b',');
        push_json_str(scratch, k);
        scratch.push(b':');
        // Writing a JSON value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *scratch, v);
    }
    scratch.push(b'}');
}

fn message(m: &[u8], out: &mut Vec<u8>) {
    match std::str::from_utf8(m) {
        Ok(s) => push_json_str(out, s),
        Err(_) => push_json_str(out, &String::from_utf8_lossy(m)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::{Duration, SystemTime};

    use bytes::Bytes;
    use prost::encoding::WireType;

    use super::*;
    use crate::record::Origin;

    fn chunk(source: &str, labels: &[(&str, &str)], records: Vec<Record>) -> Arc<Chunk> {
        let labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let origin = Arc::new(Origin::new(
            source.into(),
            "/var/log/a.log".into(),
            labels.into(),
        ));
        let (tx, _rx) = std::sync::mpsc::channel();
        Arc::new(Chunk::new(
            records,
            0,
            SystemTime::UNIX_EPOCH + Duration::from_secs(10),
            origin,
            (1, 0, 10),
            1,
            tx,
            None,
        ))
    }

    fn rec(msg: &'static str, ms: Option<u64>, level: Option<Level>) -> Record {
        Record {
            message: Bytes::from_static(msg.as_bytes()),
            timestamp: ms.map(|m| SystemTime::UNIX_EPOCH + Duration::from_millis(m)),
            level,
            ..Record::default()
        }
    }

    /// The golden body: one stream per label set (two chunks of one source share theirs),
    /// entries sorted by time within a stream (ties in file order), the observed time for
    /// records without one, escapes, and a record with fields as a JSON line.
    #[test]
    fn golden_body() {
        let mut fields = serde_json::Map::new();
        fields.insert("port".into(), 8080.into());
        let with_fields = Record {
            fields: Some(Box::new(fields)),
            ..rec("up \"now\"", Some(5), Some(Level::Info))
        };
        let a = [("service", "orders"), ("host", "h1")];
        let batch = vec![
            chunk(
                "app",
                &a,
                vec![rec("b", Some(2000), None), rec("a", Some(1000), None)],
            ),
            chunk(
                "other",
                &[("service", "pay")],
                vec![rec("x\ty", None, None)],
            ),
            chunk("app", &a, vec![rec("c", Some(1000), None), with_fields]),
        ];
        let mut out = Vec::new();
        Loki::new(None, false).encode(&batch, &mut out);
        let want = concat!(
            r#"{"streams":["#,
            r#"{"stream":{"service":"orders","host":"h1"},"values":["#,
            r#"["5000000","{\"message\":\"up \\\"now\\\"\",\"level\":\"info\",\"port\":8080}"],"#,
            r#"["1000000000","a"],["1000000000","c"],["2000000000","b"]]},"#,
            r#"{"stream":{"service":"pay"},"values":[["10000000000","x\ty"]]}"#,
            r#"]}"#
        );
        assert_eq!(String::from_utf8(out.clone()).unwrap(), want);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["streams"][0]["values"].as_array().unwrap().len(), 4);
    }

    /// `stream_labels` picks labels in its order, `level` splits streams by level, and a set
    /// that comes out empty falls back to the source name.
    #[test]
    fn stream_labels_and_level() {
        let batch = vec![chunk(
            "app",
            &[("service", "orders"), ("host", "h1")],
            vec![
                rec("1", Some(1), Some(Level::Error)),
                rec("2", Some(2), None),
                rec("3", Some(3), Some(Level::Error)),
            ],
        )];
        let mut out = Vec::new();
        Loki::new(Some(vec!["level".into(), "host".into()]), false).encode(&batch, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let streams = v["streams"].as_array().unwrap();
        assert_eq!(streams.len(), 2);
        assert_eq!(
            streams[0]["stream"],
            serde_json::json!({"level": "error", "host": "h1"})
        );
        assert_eq!(streams[0]["values"].as_array().unwrap().len(), 2);
        assert_eq!(streams[1]["stream"], serde_json::json!({"host": "h1"}));
        let mut out = Vec::new();
        Loki::new(Some(vec!["team".into()]), false).encode(&batch, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["streams"][0]["stream"],
            serde_json::json!({"source": "app"})
        );
    }

    /// A protobuf message's fields.
    type Fields = Vec<(u32, Vec<u8>)>;

    /// Length-delimited fields of a protobuf message: (tag, bytes), varints as their value's
    /// decimal text.
    fn fields(mut b: &[u8]) -> Fields {
        use prost::encoding::{decode_key, decode_varint};
        let mut out = Vec::new();
        while !b.is_empty() {
            let (tag, wire) = decode_key(&mut b).unwrap();
            match wire {
                WireType::Varint => {
                    out.push((tag, decode_varint(&mut b).unwrap().to_string().into_bytes()))
                }
                WireType::LengthDelimited => {
                    let n = decode_varint(&mut b).unwrap() as usize;
                    out.push((tag, b[..n].to_vec()));
                    b = &b[n..];
                }
                w => panic!("unexpected wire type {w:?}"),
            }
        }
        out
    }

    /// The protobuf body: snappy block format around a `PushRequest` whose streams carry
    /// Prometheus-style labels (escaped) and time-ordered entries with seconds and nanos.
    #[test]
    fn protobuf_body() {
        let batch = vec![
            chunk(
                "app",
                &[("service", "a\"b"), ("host", "h1")],
                vec![
                    rec("second", Some(2500), None),
                    rec("first", Some(1000), None),
                ],
            ),
            chunk("other", &[("service", "pay")], vec![rec("x", None, None)]),
        ];
        let loki = Loki::new(None, true);
        assert_eq!(loki.content_type(), "application/x-protobuf");
        let mut out = Vec::new();
        loki.encode(&batch, &mut out);
        let raw = snap::raw::Decoder::new().decompress_vec(&out).unwrap();
        let streams = fields(&raw);
        assert_eq!(streams.len(), 2);
        let s0 = fields(&streams[0].1);
        assert_eq!(s0[0], (1, br#"{service="a\"b", host="h1"}"#.to_vec()));
        let entries: Vec<(Fields, Vec<u8>)> = s0[1..]
            .iter()
            .map(|(tag, e)| {
                assert_eq!(*tag, 2);
                let e = fields(e);
                (fields(&e[0].1), e[1].1.clone())
            })
            .collect();
        assert_eq!(
            entries,
            [
                (vec![(1, b"1".to_vec())], b"first".to_vec()),
                (
                    vec![(1, b"2".to_vec()), (2, b"500000000".to_vec())],
                    b"second".to_vec()
                ),
            ]
        );
        let s1 = fields(&streams[1].1);
        assert_eq!(s1[0], (1, br#"{service="pay"}"#.to_vec()));
        let e = fields(&s1[1].1);
        assert_eq!(fields(&e[0].1), [(1, b"10".to_vec())]);
    }
}
