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

/// Appends `s` as a JSON string: quotes, backslashes and control characters escaped.
///
/// The per-line hot spot of every JSON encoding, so it goes eight bytes at a time: each word is
/// copied whole and, when it holds a byte to escape, cut back to that byte; no call per run of
/// plain bytes (a JSON log line has a quote every few bytes).
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut i = 0;
    while let Some(word) = bytes.get(i..i + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        let flagged = escape_mask(u64::from_le_bytes(w));
        // The whole word in one store; when a byte needs escaping, cut back to it (the lowest
        // flag is exact: the bytes before it need no escape) and escape it.
        out.extend_from_slice(&w);
        if flagged == 0 {
            i += 8;
            continue;
        }
        let plain = (flagged.trailing_zeros() / 8) as usize;
        out.truncate(out.len() - (8 - plain));
        push_json_byte(out, w[plain]);
        i += plain + 1;
    }
    for &b in &bytes[i..] {
        push_json_byte(out, b);
    }
    out.push(b'"');
}

/// Appends one byte of a JSON string, escaped if it must be.
#[inline]
fn push_json_byte(out: &mut Vec<u8>, b: u8) {
    match ESCAPES[usize::from(b)] {
        0 => out.push(b),
        b'u' => push_control(out, b),
        short => out.extend_from_slice(&[b'\\', short]),
    }
}

/// Per byte: 0 when it needs no escape, else the letter after `\` (`u` for `\u00XX`).
static ESCAPES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = b'u';
        b += 1;
    }
    t[b'\n' as usize] = b'n';
    t[b'\r' as usize] = b'r';
    t[b'\t' as usize] = b't';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// A control character without a short escape, as `\u00XX`.
#[cold]
fn push_control(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(&[
        b'\\',
        b'u',
        b'0',
        b'0',
        HEX[usize::from(b >> 4)],
        HEX[usize::from(b & 0xf)],
    ]);
}

/// The high bit of each byte of `w` (eight bytes, little-endian) that is a control character,
/// `"` or `\`, and possibly of bytes after such a byte: the classic "byte less than n" and
/// "zero byte" word tests, whose borrows only ever flag bytes above a true match. Zero: no
/// byte needs escaping; else the lowest flag is exact.
fn escape_mask(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    control | zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\')))
}

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

    /// The byte-at-a-time escaping that `push_json_str` speeds up: the reference.
    fn escaped_bytewise(s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    /// Escaped as the reference, and read back by serde_json to the same string.
    fn check_escape(s: &str) {
        let mut out = Vec::new();
        push_json_str(&mut out, s);
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out, escaped_bytewise(s), "{s:?}");
        assert_eq!(serde_json::from_str::<String>(&out).unwrap(), s);
    }

    /// The word-at-a-time escaping: every byte that may need an escape, at every position in
    /// and across eight-byte words, several in a word.
    #[test]
    fn strings_escape_at_any_position() {
        let mut specials: Vec<char> = (0u8..0x20).map(char::from).collect();
        specials.extend([
            '"', '\\', '\u{7f}', '\u{2028}', 'é', ' ', '!', '#', '[', ']', '~',
        ]);
        for c in &specials {
            for pos in 0..20 {
                for len in [pos + 1, pos + 3, 24] {
                    let mut s: String = "abcdefghijklmnopqrstuvwxyz".chars().take(len).collect();
                    s.replace_range(pos..=pos, &c.to_string());
                    check_escape(&s);
                    let twice = s.replace('a', &c.to_string());
                    check_escape(&twice);
                }
            }
        }
        check_escape("");
        check_escape(r#"{"ts":"2026-11-24T01:02:03.000000Z","level":"INFO","msg":"a\"b"}"#);
    }

    proptest::proptest! {
        #[test]
        fn any_string_escapes_like_the_reference(s in ".{0,80}", q in "[\"\\\\\\x00-\\x1f a]{0,40}") {
            check_escape(&s);
            check_escape(&q);
            check_escape(&format!("{s}{q}{s}"));
        }
    }
}
