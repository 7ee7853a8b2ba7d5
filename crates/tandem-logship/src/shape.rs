//! Shaping: a line (or joined record) -> a record ready for the sinks, or dropped. In order:
//!
//! 1. **parse** ([`crate::parse`]); a failure ships the line as plain text, marked and counted;
//! 2. **extract**: the event time from a field (`rfc3339`, `unix`, `unix_ms`, a strftime
//!    pattern; else the read time, marked `timestamp_fallback`), the level from a field or a
//!    pattern over the message (normalised to trace/debug/info/warn/error/fatal), the trace and
//!    span ids from fields (`trace_id`, `traceId`, `traceparent`, ...) or a pattern. Fields
//!    that were read are removed: they become the record's own members;
//! 3. **filter**: levels in `drop.levels` are dropped; records of `sample.level` are kept one in
//!    N by a per-source counter (deterministic: the 1st, N+1th, ... are kept). Dropped records
//!    are counted by reason; the caller still acknowledges their bytes, so the checkpoint moves
//!    past them;
//! 4. **redact**: values of fields named in `redact.keys` (any depth, case ignored) and matches
//!    of `redact.patterns` in the message and every string value become the marker. This is the
//!    last step before a record goes into a chunk, so no sink ever sees the secret.
//!
//! Every regular expression was compiled when the config was checked; nothing here compiles
//! per line, and a plain source with no rules costs one branch per step.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use regex::{CaptureLocations, Captures, Regex};
use serde_json::{Map, Value};
use tandem_config::{LogLevel, LogParser, RedactPattern, Shape, TimeFormat};
use time::format_description::OwnedFormatItem;

use crate::parse::Parser;
use crate::record::{Level, Record};

/// Why a record was not shipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Its level is in `drop.levels`.
    Level,
    /// Sampled out (`sample`).
    Sample,
}

/// What shaping did since the last [`Shaper::take_stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShapeStats {
    /// Lines the parser could not parse (shipped as plain text).
    pub parse_errors: u64,
    /// Records dropped for their level.
    pub dropped_level: u64,
    /// Records sampled out.
    pub dropped_sample: u64,
    /// Values or matches replaced by the marker.
    pub redacted: u64,
}

impl ShapeStats {
    /// Adds these counts to the source's metrics.
    pub fn count(&self, m: &tandem_telemetry::logs::LogSourceMetrics) {
        if self.parse_errors > 0 {
            m.parse_errors.inc_by(self.parse_errors);
        }
        if self.dropped_level > 0 {
            m.dropped_records[0].inc_by(self.dropped_level);
        }
        if self.dropped_sample > 0 {
            m.dropped_records[1].inc_by(self.dropped_sample);
        }
        if self.redacted > 0 {
            m.redactions.inc_by(self.redacted);
        }
    }
}

#[derive(Debug)]
enum TimeParse {
    Rfc3339,
    Unix,
    UnixMs,
    Strftime {
        items: OwnedFormatItem,
        with_offset: bool,
    },
}

#[derive(Debug)]
enum Redactor {
    /// Keeps the word `Bearer`, replaces the token.
    Bearer(Regex),
    /// Replaces digit runs that pass the Luhn check.
    CreditCard(Regex),
    Pattern(Regex),
}

/// A source's shaping rules and state. One per source thread.
#[derive(Debug)]
pub struct Shaper {
    parser: Parser,
    timestamp: Option<(String, TimeParse)>,
    level_fields: Vec<String>,
    /// The pattern, the group holding the level, and capture positions reused per line.
    level_pattern: Option<(Regex, usize, CaptureLocations)>,
    trace_fields: Vec<String>,
    span_fields: Vec<String>,
    /// The pattern, its `trace_id` and `span_id` groups, and capture positions.
    trace_pattern: Option<(Regex, usize, Option<usize>, CaptureLocations)>,
    redact_keys: Vec<String>,
    redactors: Vec<Redactor>,
    marker: String,
    drop: [bool; 6],
    sample: Option<(Level, u64)>,
    sampled: u64,
    stats: ShapeStats,
}

fn level(l: LogLevel) -> Level {
    match l {
        LogLevel::Trace => Level::Trace,
        LogLevel::Debug => Level::Debug,
        LogLevel::Info => Level::Info,
        LogLevel::Warn => Level::Warn,
        LogLevel::Error => Level::Error,
        LogLevel::Fatal => Level::Fatal,
    }
}

impl Shaper {
    /// The shaper of a source with `parser` and `shape` (both checked by `tandem-config`).
    pub fn new(parser: &LogParser, shape: &Shape) -> Shaper {
        let timestamp = shape.timestamp.as_ref().map(|t| {
            let how = match &t.format {
                TimeFormat::Rfc3339 => TimeParse::Rfc3339,
                TimeFormat::Unix => TimeParse::Unix,
                TimeFormat::UnixMs => TimeParse::UnixMs,
                // Checked when the config was loaded; an error here cannot happen, and would
                // only make every record fall back to the read time.
                TimeFormat::Strftime(f) => match tandem_config::strftime_format(f) {
                    Ok(items) => TimeParse::Strftime {
                        items,
                        with_offset: f.contains("%z"),
                    },
                    Err(_) => TimeParse::Rfc3339,
                },
            };
            (t.field.clone(), how)
        });
        let level_pattern = shape.level.pattern.as_ref().map(|p| {
            let group =
                p.0.capture_names()
                    .position(|n| n == Some("level"))
                    .unwrap_or(usize::from(p.0.captures_len() > 1));
            (p.0.clone(), group, p.0.capture_locations())
        });
        let redactors = shape
            .redact
            .patterns
            .iter()
            .filter_map(|p| {
                Some(match p {
                    RedactPattern::Bearer => Redactor::Bearer(
                        Regex::new(r"(?i)\b(bearer)\s+[A-Za-z0-9\-._~+/]+=*").ok()?,
                    ),
                    RedactPattern::CreditCard => {
                        Redactor::CreditCard(Regex::new(r"\b(?:\d[ -]?){12,18}\d\b").ok()?)
                    }
                    RedactPattern::Regex(re) => Redactor::Pattern(re.0.clone()),
                })
            })
            .collect();
        let mut drop = [false; 6];
        for l in &shape.drop_levels {
            drop[level(*l) as usize] = true;
        }
        Shaper {
            parser: Parser::new(parser),
            timestamp,
            level_fields: shape.level.fields.clone(),
            level_pattern,
            trace_fields: shape.trace.fields.clone(),
            span_fields: shape.trace.span_fields.clone(),
            trace_pattern: shape.trace.pattern.as_ref().and_then(|p| {
                let group = |name| p.0.capture_names().position(|n| n == Some(name));
                Some((
                    p.0.clone(),
                    group("trace_id")?,
                    group("span_id"),
                    p.0.capture_locations(),
                ))
            }),
            redact_keys: shape.redact.keys.clone(),
            redactors,
            marker: shape.redact.marker.clone(),
            drop,
            sample: shape.sample.as_ref().map(|s| (level(s.level), s.every)),
            sampled: 0,
            stats: ShapeStats::default(),
        }
    }

    /// The counts since the last call.
    pub fn take_stats(&mut self) -> ShapeStats {
        std::mem::take(&mut self.stats)
    }

    /// Parses, extracts, filters and redacts `text`; `Err` says why the record was dropped.
    pub fn shape(&mut self, text: Bytes) -> Result<Record, Dropped> {
        let mut r = self.parser.parse(text);
        self.stats.parse_errors += u64::from(r.parse_error);
        if let Some(fields) = r.fields.as_deref_mut() {
            if let Some((field, how)) = &self.timestamp {
                r.timestamp = take_time(fields, field, how);
            }
            r.level = take_level(fields, &self.level_fields);
            (r.trace_id, r.span_id) = take_trace(fields, &self.trace_fields, &self.span_fields);
            if fields.is_empty() {
                r.fields = None;
            }
        }
        if self.timestamp.is_some() && r.timestamp.is_none() {
            r.timestamp_fallback = true;
        }
        if r.level.is_none() {
            if let Some((re, group, locs)) = &mut self.level_pattern {
                r.level = std::str::from_utf8(&r.message).ok().and_then(|m| {
                    re.captures_read(locs, m)?;
                    let (s, e) = locs.get(*group)?;
                    Level::from_name(&m[s..e])
                });
            }
        }
        if r.trace_id.is_none() {
            if let Some((re, trace, span, locs)) = &mut self.trace_pattern {
                if let Ok(m) = std::str::from_utf8(&r.message) {
                    if re.captures_read(locs, m).is_some() {
                        let id =
                            |g: usize, len| locs.get(g).and_then(|(s, e)| hex_id(&m[s..e], len));
                        r.trace_id = id(*trace, 32);
                        r.span_id = span.and_then(|g| id(g, 16));
                    }
                }
            }
        }

        if let Some(l) = r.level {
            if self.drop[l as usize] {
                self.stats.dropped_level += 1;
                return Err(Dropped::Level);
            }
            if let Some((sl, every)) = self.sample {
                if sl == l {
                    let keep = self.sampled.is_multiple_of(every);
                    self.sampled = self.sampled.wrapping_add(1);
                    if !keep {
                        self.stats.dropped_sample += 1;
                        return Err(Dropped::Sample);
                    }
                }
            }
        }

        if let Some(fields) = r.fields.as_deref_mut() {
            self.stats.redacted +=
                redact_map(fields, &self.redact_keys, &self.redactors, &self.marker);
        }
        if !self.redactors.is_empty() {
            let (text, n) = match std::str::from_utf8(&r.message) {
                Ok(s) => redact_str(s, &self.redactors, &self.marker),
                // Invalid UTF-8 is shipped lossily anyway; redact what will be shipped.
                Err(_) => {
                    let lossy = String::from_utf8_lossy(&r.message).into_owned();
                    let (t, n) = redact_str(&lossy, &self.redactors, &self.marker);
                    (Some(t.unwrap_or(lossy)), n)
                }
            };
            if let Some(t) = text {
                r.message = Bytes::from(t);
            }
            self.stats.redacted += n;
        }
        Ok(r)
    }
}

fn take_time(fields: &mut Map<String, Value>, field: &str, how: &TimeParse) -> Option<SystemTime> {
    let t = match (fields.get(field)?, how) {
        (Value::String(s), TimeParse::Rfc3339) => {
            let t = time::OffsetDateTime::parse(
                s.trim(),
                &time::format_description::well_known::Rfc3339,
            )
            .ok()?;
            SystemTime::from(t)
        }
        (Value::String(s), TimeParse::Strftime { items, with_offset }) => {
            let t = if *with_offset {
                time::OffsetDateTime::parse(s.trim(), items).ok()?
            } else {
                time::PrimitiveDateTime::parse(s.trim(), items)
                    .ok()?
                    .assume_utc()
            };
            SystemTime::from(t)
        }
        (v, TimeParse::Unix) => epoch(number(v)?, 1.0)?,
        (v, TimeParse::UnixMs) => epoch(number(v)?, 1e-3)?,
        _ => return None,
    };
    fields.remove(field);
    Some(t)
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `n` units of `unit` seconds after the epoch, if that is a plausible time (not negative, not
/// after the year 10000).
fn epoch(n: f64, unit: f64) -> Option<SystemTime> {
    let secs = n * unit;
    if !(0.0..253_402_300_800.0).contains(&secs) {
        return None;
    }
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs_f64(secs))
}

fn take_level(fields: &mut Map<String, Value>, names: &[String]) -> Option<Level> {
    for name in names {
        let l = match fields.get(name.as_str()) {
            Some(Value::String(s)) => Level::from_name(s),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(10) => Some(Level::Trace),
                Some(20) => Some(Level::Debug),
                Some(30) => Some(Level::Info),
                Some(40) => Some(Level::Warn),
                Some(50) => Some(Level::Error),
                Some(60) => Some(Level::Fatal),
                _ => None,
            },
            _ => continue,
        };
        if l.is_some() {
            fields.remove(name.as_str());
            return l;
        }
    }
    None
}

type Ids = (Option<Box<str>>, Option<Box<str>>);

fn take_trace(fields: &mut Map<String, Value>, trace: &[String], span: &[String]) -> Ids {
    let take = |fields: &mut Map<String, Value>, names: &[String], len: usize| {
        for name in names {
            if let Some(Value::String(s)) = fields.get(name.as_str()) {
                if let Some(id) = hex_id(s, len) {
                    fields.remove(name.as_str());
                    return Some(id);
                }
            }
        }
        None
    };
    let mut trace_id = take(fields, trace, 32);
    let mut span_id = take(fields, span, 16);
    if trace_id.is_none() {
        if let Some(Value::String(tp)) = fields.get("traceparent") {
            // version-trace_id-parent_id-flags
            let mut parts = tp.trim().split('-');
            if let (Some(_), Some(t), Some(s), Some(_)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            {
                if let Some(t) = hex_id(t, 32) {
                    trace_id = Some(t);
                    if span_id.is_none() {
                        span_id = hex_id(s, 16);
                    }
                    fields.remove("traceparent");
                }
            }
        }
    }
    (trace_id, span_id)
}

/// `s` as an id of `len` hex digits (lower-cased), not all zero; a 16-digit trace id (64-bit,
/// Jaeger/Zipkin) is zero-padded to 32.
fn hex_id(s: &str, len: usize) -> Option<Box<str>> {
    let s = s.trim();
    let ok = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit()) && s.bytes().any(|b| b != b'0');
    if s.len() == len && ok(s) {
        return Some(s.to_ascii_lowercase().into_boxed_str());
    }
    if len == 32 && s.len() == 16 && ok(s) {
        return Some(format!("{:0>32}", s.to_ascii_lowercase()).into_boxed_str());
    }
    None
}

fn redact_map(
    fields: &mut Map<String, Value>,
    keys: &[String],
    redactors: &[Redactor],
    marker: &str,
) -> u64 {
    let mut n = 0;
    for (k, v) in fields.iter_mut() {
        if keys.iter().any(|key| key.eq_ignore_ascii_case(k)) {
            if !matches!(v, Value::String(s) if s == marker) {
                *v = Value::String(marker.to_owned());
                n += 1;
            }
        } else {
            n += redact_value(v, keys, redactors, marker);
        }
    }
    n
}

fn redact_value(v: &mut Value, keys: &[String], redactors: &[Redactor], marker: &str) -> u64 {
    match v {
        Value::Object(m) => redact_map(m, keys, redactors, marker),
        Value::Array(a) => a
            .iter_mut()
            .map(|v| redact_value(v, keys, redactors, marker))
            .sum(),
        Value::String(s) if !redactors.is_empty() => {
            let (t, n) = redact_str(s, redactors, marker);
            if let Some(t) = t {
                *s = t;
            }
            n
        }
        _ => 0,
    }
}

/// `s` with every match replaced, when anything matched, and how many.
fn redact_str(s: &str, redactors: &[Redactor], marker: &str) -> (Option<String>, u64) {
    let mut out: Option<String> = None;
    let mut n = 0u64;
    for r in redactors {
        let cur = out.as_deref().unwrap_or(s);
        let next = match r {
            Redactor::Bearer(re) => re.replace_all(cur, |c: &Captures| {
                n += 1;
                format!("{} {marker}", &c[1])
            }),
            Redactor::CreditCard(re) => re.replace_all(cur, |c: &Captures| {
                if luhn(&c[0]) {
                    n += 1;
                    marker.to_owned()
                } else {
                    c[0].to_owned()
                }
            }),
            Redactor::Pattern(re) => re.replace_all(cur, |_: &Captures| {
                n += 1;
                marker.to_owned()
            }),
        };
        if let std::borrow::Cow::Owned(t) = next {
            out = Some(t);
        }
    }
    (out, n)
}

/// The Luhn check over the digits of `s` (card numbers pass it; most other digit runs do not).
fn luhn(s: &str) -> bool {
    let mut sum = 0u32;
    let mut count = 0;
    for (i, d) in s
        .bytes()
        .rev()
        .filter(u8::is_ascii_digit)
        .map(|b| u32::from(b - b'0'))
        .enumerate()
    {
        count += 1;
        sum += if i % 2 == 1 {
            let x = d * 2;
            if x > 9 {
                x - 9
            } else {
                x
            }
        } else {
            d
        };
    }
    count >= 13 && sum.is_multiple_of(10)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
