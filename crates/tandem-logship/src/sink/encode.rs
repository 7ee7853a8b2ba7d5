//! NDJSON encoding: one JSON object per record and line.
//!
//! ```text
//! {"timestamp":"2026-11-24T10:00:00.123Z","message":"...","level":"info","file":"/var/log/app.log","labels":{"host":"h","service":"orders"},"fields":{...}}
//! ```
//!
//! `timestamp` is the event time when a parser found one, else when the line was read (one
//! clock reading per chunk); `level`, `trace_id`, `span_id` and `fields` appear when present,
//! `parse_error: true` when the parser could not parse the line, and `timestamp_fallback: true`
//! when a timestamp rule found no valid time. Labels and fields are
//! nested so that a field never collides with a label. Invalid UTF-8 in a message becomes
//! U+FFFD. The file and labels part is rendered once per file (`Origin`), so the per-line cost
//! is the message's escaping and copying.

use std::sync::Arc;
use std::time::SystemTime;

use crate::record::{Chunk, Record};

/// Appends the NDJSON lines of every record of `batch` to `out`.
pub fn ndjson(batch: &[Arc<Chunk>], out: &mut Vec<u8>) {
    for chunk in batch {
        let observed = rfc3339(chunk.observed);
        for r in &chunk.records {
            record(r, &observed, &chunk.origin.json_tail, out);
        }
    }
}

fn record(r: &Record, observed: &str, tail: &str, out: &mut Vec<u8>) {
    record_as(r, b"timestamp", observed, tail, out);
}

/// One record as a JSON object and `\n`, its time under `ts_key` (`@timestamp` for
/// Elasticsearch).
pub(crate) fn record_as(r: &Record, ts_key: &[u8], observed: &str, tail: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"");
    out.extend_from_slice(ts_key);
    out.extend_from_slice(b"\":\"");
    match r.timestamp {
        // Formatted straight into the body: no string per record.
        Some(t) => {
            use std::io::Write;
            // Writing into a Vec cannot fail.
            let _ = write!(out, "{}", humantime::format_rfc3339_millis(t));
        }
        None => out.extend_from_slice(observed.as_bytes()),
    }
    out.extend_from_slice(b"\",\"message\":");
    match std::str::from_utf8(&r.message) {
        Ok(s) => push_json_str(out, s),
        Err(_) => push_json_str(out, &String::from_utf8_lossy(&r.message)),
    }
    if let Some(level) = r.level {
        out.extend_from_slice(b",\"level\":\"");
        out.extend_from_slice(level.as_str().as_bytes());
        out.push(b'"');
    }
    // Ids are hex digits (checked when extracted): no escaping needed.
    if let Some(id) = &r.trace_id {
        out.extend_from_slice(b",\"trace_id\":\"");
        out.extend_from_slice(id.as_bytes());
        out.push(b'"');
    }
    if let Some(id) = &r.span_id {
        out.extend_from_slice(b",\"span_id\":\"");
        out.extend_from_slice(id.as_bytes());
        out.push(b'"');
    }
    if r.parse_error {
        out.extend_from_slice(b",\"parse_error\":true");
    }
    if r.timestamp_fallback {
        out.extend_from_slice(b",\"timestamp_fallback\":true");
    }
    out.push(b',');
    out.extend_from_slice(tail.as_bytes());
    if let Some(fields) = &r.fields {
        out.extend_from_slice(b",\"fields\":");
        // Writing a JSON value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, fields);
    }
    out.extend_from_slice(b"}\n");
}

/// Nanoseconds since the Unix epoch (0 before it).
pub(crate) fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Appends `n` in decimal.
pub(crate) fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Appends `s` as a JSON string (quotes, backslashes and control characters escaped as
/// serde_json does): the escaper the access log uses too.
pub use tandem_telemetry::json::push_str as push_json_str;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use serde_json::Value;

    use super::*;
    use crate::record::{Level, Origin};

    /// Every line is a JSON object that reads back to the record: message (escapes and invalid
    /// UTF-8 included), level, file, labels and fields.
    #[test]
    fn lines_read_back() {
        let origin = Arc::new(Origin::new(
            "app".into(),
            "/var/log/a \"b\".log".into(),
            Arc::from(vec![("host".to_owned(), "h1".to_owned())]),
        ));
        let mut fields = serde_json::Map::new();
        fields.insert("port".into(), 8080.into());
        let records = vec![
            Record {
                message: Bytes::from_static(b"tab\there \"q\" \\ \x01 \xe2\x80\xa8 \xff end"),
                ..Record::default()
            },
            Record {
                message: Bytes::from_static(b"started"),
                fields: Some(Box::new(fields)),
                level: Some(Level::Warn),
                timestamp: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_500)),
                trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
                span_id: Some("00f067aa0ba902b7".into()),
                parse_error: false,
                timestamp_fallback: false,
                position: 0,
            },
            Record {
                message: Bytes::from_static(b"k=v \"unterminated"),
                parse_error: true,
                timestamp_fallback: true,
                ..Record::default()
            },
        ];
        let (tx, _rx) = std::sync::mpsc::channel();
        let chunk = Arc::new(Chunk::new(
            records,
            0,
            SystemTime::UNIX_EPOCH + Duration::from_secs(86_400),
            origin,
            (1, 0, 10),
            1,
            tx,
            None,
        ));
        let mut out = Vec::new();
        ndjson(&[chunk], &mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(
            lines[0]["message"],
            "tab\there \"q\" \\ \u{1} \u{2028} \u{fffd} end"
        );
        assert_eq!(lines[0]["timestamp"], "1970-01-02T00:00:00.000Z");
        assert_eq!(lines[0]["file"], "/var/log/a \"b\".log");
        assert_eq!(lines[0]["labels"]["host"], "h1");
        assert!(lines[0].get("fields").is_none() && lines[0].get("level").is_none());
        assert_eq!(lines[1]["timestamp"], "1970-01-01T00:00:01.500Z");
        assert_eq!(lines[1]["level"], "warn");
        assert_eq!(lines[1]["fields"]["port"], 8080);
        assert_eq!(lines[1]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(lines[1]["span_id"], "00f067aa0ba902b7");
        assert!(lines[1].get("parse_error").is_none());
        assert!(lines[0].get("trace_id").is_none() && lines[0].get("timestamp_fallback").is_none());
        assert_eq!(lines[2]["message"], "k=v \"unterminated");
        assert_eq!(lines[2]["parse_error"], true);
        assert_eq!(lines[2]["timestamp_fallback"], true);
    }

    // `push_json_str` is `tandem_telemetry::json::push_str`: its tests (every escape at every
    // position, proptest against serde_json) live there.
}
