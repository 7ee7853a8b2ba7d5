//! Parsers: a line's bytes -> a [`Record`].
//!
//! `plain`: the line is the message. `json`: one JSON object per line; its `message` (or else
//! `msg`) string member becomes the message and the other members the fields. A line that is
//! not a JSON object is kept whole as the message and counted as a parse error: a parser never
//! drops a line.
//!
//! Next (issue 7): logfmt, regex with named captures, multi-line joining, timestamp and level
//! extraction, trace ids, redaction.

use bytes::Bytes;
use serde_json::{Map, Value};
use tandem_config::LogParser;

use crate::record::Record;

/// Parses `line` with `parser`; the flag says whether parsing failed (the record then holds
/// the line as its message).
pub fn parse(parser: LogParser, line: Bytes) -> (Record, bool) {
    match parser {
        LogParser::Plain => (
            Record {
                message: line,
                ..Record::default()
            },
            false,
        ),
        LogParser::Json => match serde_json::from_slice::<Map<String, Value>>(&line) {
            Ok(mut fields) => {
                let message = take_message(&mut fields, "message")
                    .or_else(|| take_message(&mut fields, "msg"))
                    .unwrap_or_default();
                let fields = (!fields.is_empty()).then(|| Box::new(fields));
                (
                    Record {
                        message,
                        fields,
                        ..Record::default()
                    },
                    false,
                )
            }
            Err(_) => (
                Record {
                    message: line,
                    ..Record::default()
                },
                true,
            ),
        },
    }
}

fn take_message(fields: &mut Map<String, Value>, key: &str) -> Option<Bytes> {
    match fields.get(key) {
        Some(Value::String(_)) => match fields.remove(key) {
            Some(Value::String(s)) => Some(Bytes::from(s)),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_keeps_the_line() {
        let (r, err) = parse(LogParser::Plain, Bytes::from_static(b"{\"a\":1} hello"));
        assert!(!err);
        assert_eq!(&r.message[..], b"{\"a\":1} hello");
        assert!(r.fields.is_none());
    }

    #[test]
    fn json_splits_message_and_fields() {
        let (r, err) = parse(
            LogParser::Json,
            Bytes::from_static(br#"{"level":"info","msg":"started","port":8080}"#),
        );
        assert!(!err);
        assert_eq!(&r.message[..], b"started");
        let f = r.fields.unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f["port"], 8080);
        // `message` wins over `msg`; a non-string `message` stays a field.
        let (r, _) = parse(
            LogParser::Json,
            Bytes::from_static(br#"{"message":"m","msg":"x","n":{"k":[1]}}"#),
        );
        assert_eq!(&r.message[..], b"m");
        assert_eq!(r.fields.unwrap()["msg"], "x");
        let (r, _) = parse(LogParser::Json, Bytes::from_static(br#"{"message":5}"#));
        assert!(r.message.is_empty());
        assert_eq!(r.fields.unwrap()["message"], 5);
    }

    #[test]
    fn json_errors_keep_the_line() {
        for line in [&b"not json"[..], b"[1,2]", b"{\"a\":", b"\"str\""] {
            let (r, err) = parse(LogParser::Json, Bytes::copy_from_slice(line));
            assert!(err, "{line:?}");
            assert_eq!(&r.message[..], line);
        }
    }
}
