//! Parsers: a line's bytes (or a joined multi-line record's) -> a [`Record`].
//!
//! - `plain`: the line is the message. No copy, no allocation.
//! - `json`: one JSON object per line; its `message` (or else `msg`) string member becomes the
//!   message and the other members the fields.
//! - `logfmt`: `key=value` pairs separated by spaces; a value may be double-quoted with JSON
//!   escapes (`msg="a \"b\""`); a key without `=` is `true`. `msg` (or else `message`) is the
//!   message. A line needs at least one `key=value` pair, so prose is not taken for bare keys.
//! - `regex`: a pattern with named captures, compiled once when the config is checked; each
//!   named capture that took part in the match is a string field, `message` (or else `msg`) the
//!   message. Capture positions go to a buffer reused from line to line.
//!
//! A line a parser cannot parse (not an object, an unterminated quote, no match) is kept whole
//! as the message and marked `parse_error`: a parser never drops a line. The caller counts it.

use bytes::Bytes;
use regex::{CaptureLocations, Regex};
use serde_json::{Map, Value};
use tandem_config::LogParser;

use crate::record::Record;

/// A source's parser, with its per-source scratch state.
#[derive(Debug)]
pub struct Parser {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Plain,
    Json,
    Logfmt,
    Regex(RegexParser),
}

#[derive(Debug)]
struct RegexParser {
    re: Regex,
    locs: CaptureLocations,
    /// Named groups other than the message: (group index, field name).
    fields: Vec<(usize, Box<str>)>,
    /// The `message` (else `msg`) group.
    message: Option<usize>,
}

impl Parser {
    /// The parser `cfg` configures.
    pub fn new(cfg: &LogParser) -> Parser {
        let kind = match cfg {
            LogParser::Plain => Kind::Plain,
            LogParser::Json => Kind::Json,
            LogParser::Logfmt => Kind::Logfmt,
            LogParser::Regex(p) => {
                let re = p.0.clone();
                let names: Vec<(usize, &str)> = re
                    .capture_names()
                    .enumerate()
                    .filter_map(|(i, n)| n.map(|n| (i, n)))
                    .collect();
                let message = names
                    .iter()
                    .find(|(_, n)| *n == "message")
                    .or_else(|| names.iter().find(|(_, n)| *n == "msg"))
                    .map(|(i, _)| *i);
                let fields = names
                    .iter()
                    .filter(|(i, _)| Some(*i) != message)
                    .map(|(i, n)| (*i, Box::from(*n)))
                    .collect();
                Kind::Regex(RegexParser {
                    locs: re.capture_locations(),
                    re,
                    fields,
                    message,
                })
            }
        };
        Parser { kind }
    }

    /// Whether this parser takes the line as it is (`plain`).
    pub fn is_plain(&self) -> bool {
        matches!(self.kind, Kind::Plain)
    }

    /// Parses `line`. On failure the record holds the whole line and `parse_error` is set.
    pub fn parse(&mut self, line: Bytes) -> Record {
        let parsed = match &mut self.kind {
            Kind::Plain => {
                return Record {
                    message: line,
                    ..Record::default()
                }
            }
            Kind::Json => json(&line),
            Kind::Logfmt => std::str::from_utf8(&line).ok().and_then(logfmt),
            Kind::Regex(r) => r.parse(&line),
        };
        match parsed {
            Some(r) => r,
            None => Record {
                message: line,
                parse_error: true,
                ..Record::default()
            },
        }
    }
}

fn json(line: &[u8]) -> Option<Record> {
    let mut fields = serde_json::from_slice::<Map<String, Value>>(line).ok()?;
    let message = take_message(&mut fields, "message")
        .or_else(|| take_message(&mut fields, "msg"))
        .unwrap_or_default();
    Some(Record {
        message,
        fields: (!fields.is_empty()).then(|| Box::new(fields)),
        ..Record::default()
    })
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

/// Parses a logfmt line; None when it is not logfmt.
fn logfmt(line: &str) -> Option<Record> {
    let b = line.as_bytes();
    let mut fields = Map::new();
    let mut pairs = 0usize;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b' ' || b[i] == b'\t' {
            i += 1;
            continue;
        }
        let key_start = i;
        while i < b.len() && !matches!(b[i], b' ' | b'\t' | b'=' | b'"') {
            i += 1;
        }
        if i == key_start {
            // `=` or `"` where a key should start.
            return None;
        }
        let key = &line[key_start..i];
        if i == b.len() || b[i] != b'=' {
            if i < b.len() && b[i] == b'"' {
                return None;
            }
            fields.insert(key.to_owned(), Value::Bool(true));
            continue;
        }
        i += 1;
        pairs += 1;
        let value = if i < b.len() && b[i] == b'"' {
            let start = i;
            i += 1;
            let mut escaped = false;
            loop {
                if i >= b.len() {
                    return None;
                }
                match b[i] {
                    b'\\' => {
                        escaped = true;
                        i += 2;
                    }
                    b'"' => break,
                    _ => i += 1,
                }
            }
            i += 1;
            let quoted = line.get(start..i)?;
            if escaped {
                serde_json::from_str::<String>(quoted).ok()?
            } else {
                quoted[1..quoted.len() - 1].to_owned()
            }
        } else {
            let start = i;
            while i < b.len() && b[i] != b' ' && b[i] != b'\t' {
                i += 1;
            }
            line[start..i].to_owned()
        };
        fields.insert(key.to_owned(), Value::String(value));
    }
    if pairs == 0 {
        return None;
    }
    let message = take_message(&mut fields, "msg")
        .or_else(|| take_message(&mut fields, "message"))
        .unwrap_or_default();
    Some(Record {
        message,
        fields: (!fields.is_empty()).then(|| Box::new(fields)),
        ..Record::default()
    })
}

impl RegexParser {
    fn parse(&mut self, line: &Bytes) -> Option<Record> {
        let text = std::str::from_utf8(line).ok()?;
        self.re.captures_read(&mut self.locs, text)?;
        let message = match self.message.and_then(|i| self.locs.get(i)) {
            Some((s, e)) => line.slice(s..e),
            None => Bytes::new(),
        };
        let mut fields = Map::new();
        for (i, name) in &self.fields {
            if let Some((s, e)) = self.locs.get(*i) {
                fields.insert(name.to_string(), Value::String(text[s..e].to_owned()));
            }
        }
        Some(Record {
            message,
            fields: (!fields.is_empty()).then(|| Box::new(fields)),
            ..Record::default()
        })
    }
}

/// Runs every parser over each line of `data` (fuzzing): no panic, and a failed parse keeps
/// the line whole. The parsers are built once per process, as a source builds them once.
#[doc(hidden)]
pub fn fuzz_parse(data: &[u8]) {
    static PATTERN: std::sync::OnceLock<Option<Regex>> = std::sync::OnceLock::new();
    let Some(re) = PATTERN.get_or_init(|| {
        Regex::new(r"^(?P<ts>\S+) (?P<level>[A-Za-z]+)(?: (?P<message>.*))?$").ok()
    }) else {
        return;
    };
    let mut parsers = [
        LogParser::Plain,
        LogParser::Json,
        LogParser::Logfmt,
        LogParser::Regex(tandem_config::LogPattern(re.clone())),
    ]
    .map(|p| Parser::new(&p));
    let data = Bytes::copy_from_slice(data);
    for line in data.split(|&b| b == b'\n') {
        let line = data.slice_ref(line);
        for p in &mut parsers {
            let r = p.parse(line.clone());
            if r.parse_error {
                assert_eq!(r.message, line);
                assert!(r.fields.is_none());
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
