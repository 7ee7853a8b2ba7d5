//! OTLP logs over HTTP (`POST /v1/logs`): a protobuf `ExportLogsServiceRequest`.
//!
//! One `ResourceLogs` per label set in the batch (a source's records share theirs), whose
//! resource attributes are the record labels, `service` and `host` renamed to the semantic
//! conventions' `service.name` and `host.name`; one `ScopeLogs` (scope `tandem`); one
//! `LogRecord` per record:
//!
//! - `time_unix_nano`: the event time when a parser found one (else 0, "unknown", as the
//!   specification asks); `observed_time_unix_nano`: when the line was read;
//! - `severity_number` / `severity_text` from the record's level (TRACE 1, DEBUG 5, INFO 9,
//!   WARN 13, ERROR 17, FATAL 21);
//! - `body`: the message, a string;
//! - `attributes`: `log.file.path`, then the record's fields (strings, booleans, integers and
//!   doubles as such; arrays and objects as their JSON text);
//! - `trace_id` / `span_id`: see [`trace_context`].
//!
//! Records are written straight into the request's bytes with prost's wire-format primitives,
//! as Tandem's span exporter does (`tandem-telemetry`'s `trace::otlp`), rather than built as
//! `opentelemetry-proto`'s generated structs, which would allocate per record and attribute.
//! The generated types are the reference: the tests decode what is written with them.
//!
//! With `encoding: json`, the same request in OTLP/JSON (`application/json`): the protobuf JSON
//! mapping with OTLP's exceptions — lowerCamelCase names, enums as numbers, 64-bit integers as
//! decimal strings, trace and span ids as hex strings.
//!
//! A 2xx answer may carry `partial_success.rejected_log_records`: those records were refused
//! for good; they are counted and logged, and the batch is confirmed (the OTLP specification
//! says such a request must not be retried).

use std::sync::Arc;

use bytes::BufMut;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use serde_json::Value;

use super::encode::{push_json_str, push_u64, unix_nanos};
use crate::record::{Chunk, Level, Record};

/// The instrumentation scope of every record.
const SCOPE: &str = "tandem";

/// The OTLP encoder of one sink (buffers are per batch).
#[derive(Debug, Default)]
pub struct Otlp {
    json: bool,
}

/// A batch's chunks grouped by label set (one `ResourceLogs` each): the first chunk, and all.
type Groups<'a> = Vec<(&'a Arc<Chunk>, Vec<&'a Arc<Chunk>>)>;

fn groups(batch: &[Arc<Chunk>]) -> Groups<'_> {
    // Sources share one `Arc` of labels across their files: usually one group per source.
    let mut groups: Groups<'_> = Vec::new();
    for c in batch {
        match groups.iter_mut().find(|(first, _)| same_labels(first, c)) {
            Some((_, v)) => v.push(c),
            None => groups.push((c, vec![c])),
        }
    }
    groups
}

/// The resource attribute name of a record label.
fn resource_key(k: &str) -> &str {
    match k {
        "service" => "service.name",
        "host" => "host.name",
        k => k,
    }
}

impl Otlp {
    /// An encoder writing protobuf, or OTLP/JSON with `json`.
    pub fn new(json: bool) -> Otlp {
        Otlp { json }
    }

    /// The request's `Content-Type`.
    pub fn content_type(&self) -> &'static str {
        if self.json {
            "application/json"
        } else {
            "application/x-protobuf"
        }
    }

    /// Appends the `ExportLogsServiceRequest` of `batch` to `out`.
    pub fn encode(&self, batch: &[Arc<Chunk>], out: &mut Vec<u8>) {
        if self.json {
            encode_json(batch, out);
            return;
        }
        let groups = groups(batch);
        let mut records: Vec<u8> =
            Vec::with_capacity(batch.iter().map(|c| c.bytes).sum::<usize>() * 2);
        let mut rec: Vec<u8> = Vec::with_capacity(1024);
        let mut scratch: Vec<u8> = Vec::with_capacity(256);
        let mut resource: Vec<u8> = Vec::with_capacity(256);
        let scope = scope_bytes();
        for (first, chunks) in &groups {
            records.clear();
            for c in chunks {
                let observed = unix_nanos(c.observed);
                for r in &c.records {
                    rec.clear();
                    write_record(&mut rec, &mut scratch, r, observed, &c.origin.file);
                    len_field(&mut records, 2, &rec);
                }
            }
            resource.clear();
            for (k, v) in first.origin.labels.iter() {
                kv_str(&mut resource, 1, resource_key(k), v.as_bytes());
            }
            // ResourceLogs { resource (1): Resource { attributes (1) }, scope_logs (2):
            //   ScopeLogs { scope (1), log_records (2)... } }
            let scope_logs = scope.len() + records.len();
            let resource_field = 1 + encoded_len_varint(resource.len() as u64) + resource.len();
            let resource_logs =
                resource_field + 1 + encoded_len_varint(scope_logs as u64) + scope_logs;
            encode_key(1, WireType::LengthDelimited, out);
            encode_varint(resource_logs as u64, out);
            len_field(out, 1, &resource);
            encode_key(2, WireType::LengthDelimited, out);
            encode_varint(scope_logs as u64, out);
            out.put_slice(&scope);
            out.put_slice(&records);
        }
    }
}

/// The request in OTLP/JSON.
fn encode_json(batch: &[Arc<Chunk>], out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"resourceLogs\":[");
    for (gi, (first, chunks)) in groups(batch).iter().enumerate() {
        if gi > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"resource\":{\"attributes\":[");
        for (i, (k, v)) in first.origin.labels.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json_kv_str(out, resource_key(k), v);
        }
        out.extend_from_slice(b"]},\"scopeLogs\":[{\"scope\":{\"name\":\"");
        out.extend_from_slice(SCOPE.as_bytes());
        out.extend_from_slice(b"\",\"version\":\"");
        out.extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
        out.extend_from_slice(b"\"},\"logRecords\":[");
        let mut n = 0usize;
        for c in chunks {
            let observed = unix_nanos(c.observed);
            for r in &c.records {
                if n > 0 {
                    out.push(b',');
                }
                n += 1;
                json_record(out, r, observed, &c.origin.file);
            }
        }
        out.extend_from_slice(b"]}]}");
    }
    out.extend_from_slice(b"]}");
}

fn json_record(out: &mut Vec<u8>, r: &Record, observed: u64, file: &str) {
    out.push(b'{');
    if let Some(t) = r.timestamp {
        out.extend_from_slice(b"\"timeUnixNano\":\"");
        push_u64(out, unix_nanos(t));
        out.extend_from_slice(b"\",");
    }
    out.extend_from_slice(b"\"observedTimeUnixNano\":\"");
    push_u64(out, observed);
    out.push(b'"');
    if let Some(l) = r.level {
        out.extend_from_slice(b",\"severityNumber\":");
        push_u64(out, severity_number(l));
        out.extend_from_slice(b",\"severityText\":\"");
        out.extend_from_slice(severity_text(l).as_bytes());
        out.push(b'"');
    }
    out.extend_from_slice(b",\"body\":{\"stringValue\":");
    push_json_str(out, &message(&r.message));
    out.extend_from_slice(b"},\"attributes\":[");
    json_kv_str(out, "log.file.path", file);
    if let Some(fields) = &r.fields {
        for (k, v) in fields.iter() {
            out.push(b',');
            out.extend_from_slice(b"{\"key\":");
            push_json_str(out, k);
            out.extend_from_slice(b",\"value\":");
            match v {
                Value::String(s) => {
                    out.extend_from_slice(b"{\"stringValue\":");
                    push_json_str(out, s);
                    out.push(b'}');
                }
                Value::Bool(b) => {
                    out.extend_from_slice(if *b {
                        b"{\"boolValue\":true}"
                    } else {
                        b"{\"boolValue\":false}"
                    });
                }
                Value::Number(n) if n.is_i64() => {
                    out.extend_from_slice(b"{\"intValue\":\"");
                    out.extend_from_slice(n.to_string().as_bytes());
                    out.extend_from_slice(b"\"}");
                }
                Value::Number(n) => {
                    out.extend_from_slice(b"{\"doubleValue\":");
                    // serde_json writes a finite f64 as a JSON number.
                    let _ = serde_json::to_writer(&mut *out, &n.as_f64().unwrap_or(0.0));
                    out.push(b'}');
                }
                Value::Null => out.extend_from_slice(b"{}"),
                Value::Array(_) | Value::Object(_) => {
                    out.extend_from_slice(b"{\"stringValue\":");
                    push_json_str(out, &v.to_string());
                    out.push(b'}');
                }
            }
            out.push(b'}');
        }
    }
    out.push(b']');
    if let Some((trace, span)) = trace_context(r) {
        out.extend_from_slice(b",\"traceId\":\"");
        push_hex(out, &trace);
        out.extend_from_slice(b"\",\"spanId\":\"");
        push_hex(out, &span);
        out.push(b'"');
    }
    out.push(b'}');
}

fn json_kv_str(out: &mut Vec<u8>, k: &str, v: &str) {
    out.extend_from_slice(b"{\"key\":");
    push_json_str(out, k);
    out.extend_from_slice(b",\"value\":{\"stringValue\":");
    push_json_str(out, v);
    out.extend_from_slice(b"}}");
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 0xf)]);
    }
}

fn same_labels(a: &Chunk, b: &Chunk) -> bool {
    Arc::ptr_eq(&a.origin.labels, &b.origin.labels) || a.origin.labels == b.origin.labels
}

/// `ScopeLogs.scope` (field 1): `InstrumentationScope { name (1), version (2) }`.
fn scope_bytes() -> Vec<u8> {
    let mut s = Vec::new();
    len_field(&mut s, 1, SCOPE.as_bytes());
    len_field(&mut s, 2, env!("CARGO_PKG_VERSION").as_bytes());
    let mut out = Vec::with_capacity(s.len() + 2);
    len_field(&mut out, 1, &s);
    out
}

/// `LogRecord`'s fields.
fn write_record(buf: &mut Vec<u8>, scratch: &mut Vec<u8>, r: &Record, observed: u64, file: &str) {
    if let Some(t) = r.timestamp {
        encode_key(1, WireType::SixtyFourBit, buf);
        buf.put_u64_le(unix_nanos(t));
    }
    if let Some(l) = r.level {
        varint_field(buf, 2, severity_number(l));
        len_field(buf, 3, severity_text(l).as_bytes());
    }
    // body (5): AnyValue { string_value (1) }
    let msg = message(&r.message);
    let any = 1 + encoded_len_varint(msg.len() as u64) + msg.len();
    encode_key(5, WireType::LengthDelimited, buf);
    encode_varint(any as u64, buf);
    len_field(buf, 1, msg.as_bytes());
    kv_str(buf, 6, "log.file.path", file.as_bytes());
    if let Some(fields) = &r.fields {
        for (k, v) in fields.iter() {
            kv_json(buf, scratch, k, v);
        }
    }
    if let Some((trace, span)) = trace_context(r) {
        len_field(buf, 9, &trace);
        len_field(buf, 10, &span);
    }
    encode_key(11, WireType::SixtyFourBit, buf);
    buf.put_u64_le(observed);
}

/// The trace and span ids a record belongs to, so logs join traces.
///
/// The ids the source extracted (`Record::trace_id`, `span_id`: see `shape`), else the fields
/// `trace_id` (32 hex digits) and `span_id` (16) as JSON lines from OpenTelemetry-instrumented
/// apps carry them. Both must be valid and not all zero, else neither is sent.
pub fn trace_context(r: &Record) -> Option<([u8; 16], [u8; 8])> {
    let (trace, span) = match (&r.trace_id, &r.span_id) {
        (Some(t), Some(s)) => (hex::<16>(t)?, hex::<8>(s)?),
        _ => {
            let f = r.fields.as_ref()?;
            (
                hex::<16>(f.get("trace_id")?.as_str()?)?,
                hex::<8>(f.get("span_id")?.as_str()?)?,
            )
        }
    };
    (trace != [0; 16] && span != [0; 8]).then_some((trace, span))
}

fn hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != 2 * N {
        return None;
    }
    let nib = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nib(b[2 * i])? << 4) | nib(b[2 * i + 1])?;
    }
    Some(out)
}

/// `SeverityNumber`: the first of each range (TRACE 1-4, DEBUG 5-8, ...).
fn severity_number(l: Level) -> u64 {
    match l {
        Level::Trace => 1,
        Level::Debug => 5,
        Level::Info => 9,
        Level::Warn => 13,
        Level::Error => 17,
        Level::Fatal => 21,
    }
}

/// The short names the data model lists for each range.
fn severity_text(l: Level) -> &'static str {
    match l {
        Level::Trace => "TRACE",
        Level::Debug => "DEBUG",
        Level::Info => "INFO",
        Level::Warn => "WARN",
        Level::Error => "ERROR",
        Level::Fatal => "FATAL",
    }
}

fn message(m: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(m)
}

/// A `KeyValue` with a string value, as field `tag`.
fn kv_str(buf: &mut Vec<u8>, tag: u32, key: &str, value: &[u8]) {
    // KeyValue { key (1), value (2): AnyValue { string_value (1) } }
    let any = 1 + encoded_len_varint(value.len() as u64) + value.len();
    let kv = 1
        + encoded_len_varint(key.len() as u64)
        + key.len()
        + 1
        + encoded_len_varint(any as u64)
        + any;
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(kv as u64, buf);
    len_field(buf, 1, key.as_bytes());
    encode_key(2, WireType::LengthDelimited, buf);
    encode_varint(any as u64, buf);
    len_field(buf, 1, value);
}

/// A `LogRecord.attributes` entry (field 6) for a JSON field.
fn kv_json(buf: &mut Vec<u8>, scratch: &mut Vec<u8>, key: &str, v: &Value) {
    scratch.clear();
    match v {
        Value::String(s) => return kv_str(buf, 6, key, s.as_bytes()),
        Value::Bool(b) => varint_field(scratch, 2, u64::from(*b)),
        // int64: two's complement as a varint.
        Value::Number(n) if n.is_i64() => varint_field(scratch, 3, n.as_i64().unwrap_or(0) as u64),
        Value::Number(n) if n.is_u64() => match i64::try_from(n.as_u64().unwrap_or(0)) {
            Ok(i) => varint_field(scratch, 3, i as u64),
            Err(_) => double_field(scratch, n.as_f64().unwrap_or(0.0)),
        },
        Value::Number(n) => double_field(scratch, n.as_f64().unwrap_or(0.0)),
        Value::Null => {}
        Value::Array(_) | Value::Object(_) => {
            let text = v.to_string();
            return kv_str(buf, 6, key, text.as_bytes());
        }
    }
    let kv = 1
        + encoded_len_varint(key.len() as u64)
        + key.len()
        + 1
        + encoded_len_varint(scratch.len() as u64)
        + scratch.len();
    encode_key(6, WireType::LengthDelimited, buf);
    encode_varint(kv as u64, buf);
    len_field(buf, 1, key.as_bytes());
    len_field(buf, 2, scratch);
}

fn double_field(buf: &mut Vec<u8>, d: f64) {
    encode_key(4, WireType::SixtyFourBit, buf);
    buf.put_f64_le(d);
}

fn len_field(buf: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.put_slice(bytes);
}

fn varint_field(buf: &mut Vec<u8>, tag: u32, v: u64) {
    encode_key(tag, WireType::Varint, buf);
    encode_varint(v, buf);
}

/// Records an OTLP/JSON answer says were rejected, and why (`rejectedLogRecords` is a string
/// or a number: 64-bit integers are strings in OTLP/JSON, but receivers write both).
pub fn rejected_json(body: &[u8]) -> Option<(u64, String)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let p = v.get("partialSuccess")?;
    let n = match p.get("rejectedLogRecords")? {
        Value::String(s) => s.parse::<u64>().ok()?,
        Value::Number(n) => n.as_u64()?,
        _ => return None,
    };
    let why = p
        .get("errorMessage")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    (n > 0).then_some((n, why))
}

/// Records an OTLP answer says were rejected, and why (`None`: all accepted, or an answer that
/// is not an `ExportLogsServiceResponse`, which a 2xx makes a delivery anyway).
pub fn rejected(body: &[u8]) -> Option<(u64, String)> {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
    use prost::Message;
    let resp = ExportLogsServiceResponse::decode(body).ok()?;
    let p = resp.partial_success?;
    let n = u64::try_from(p.rejected_log_records)
        .ok()
        .filter(|n| *n > 0)?;
    Some((n, p.error_message))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::{Duration, SystemTime};

    use bytes::Bytes;
    use opentelemetry_proto::tonic::collector::logs::v1::{
        ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
    };
    use opentelemetry_proto::tonic::common::v1::{
        any_value, AnyValue, InstrumentationScope, KeyValue,
    };
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use prost::Message;

    use super::*;
    use crate::record::Origin;

    fn kv(k: &str, v: any_value::Value) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    fn s(v: &str) -> any_value::Value {
        any_value::Value::StringValue(v.into())
    }

    fn chunk(labels: &Arc<[(String, String)]>, file: &str, records: Vec<Record>) -> Arc<Chunk> {
        let origin = Arc::new(Origin::new("app".into(), file.into(), labels.clone()));
        let (tx, _rx) = std::sync::mpsc::channel();
        Arc::new(Chunk::new(
            records,
            0,
            SystemTime::UNIX_EPOCH + Duration::from_secs(7),
            origin,
            (1, 0, 10),
            1,
            tx,
            None,
        ))
    }

    /// What the encoder writes decodes, with the generated types, to exactly the expected
    /// request: resources per label set, renamed attributes, times, severities, body, file
    /// path, every JSON field type, trace context, invalid UTF-8.
    #[test]
    fn encoder_matches_the_generated_types() {
        let a: Arc<[(String, String)]> = Arc::from(vec![
            ("service".to_owned(), "orders".to_owned()),
            ("host".to_owned(), "h1".to_owned()),
            ("env".to_owned(), "prod".to_owned()),
        ]);
        let b: Arc<[(String, String)]> = Arc::from(vec![("service".to_owned(), "pay".to_owned())]);
        let fields: serde_json::Map<String, Value> = serde_json::from_str(
            r#"{"s":"x","t":true,"i":-3,"u":18446744073709551615,"f":1.5,"n":null,"a":[1,"b"],
                "trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"b7ad6b7169203331"}"#,
        )
        .unwrap();
        let full = Record {
            message: Bytes::from_static(b"bad \xff utf8"),
            fields: Some(Box::new(fields)),
            timestamp: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1500)),
            level: Some(Level::Warn),
            ..Record::default()
        };
        let plain = Record {
            message: Bytes::from_static(b"plain"),
            ..Record::default()
        };
        let batch = vec![
            chunk(&a, "/l/a.log", vec![full, plain.clone()]),
            chunk(&b, "/l/b.log", vec![plain.clone()]),
            chunk(&a, "/l/a2.log", vec![plain]),
        ];
        let mut out = Vec::new();
        Otlp::new(false).encode(&batch, &mut out);
        let got = ExportLogsServiceRequest::decode(out.as_slice()).unwrap();

        let scope = Some(InstrumentationScope {
            name: "tandem".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        });
        let plain_rec = |file: &str| LogRecord {
            observed_time_unix_nano: 7_000_000_000,
            body: Some(AnyValue {
                value: Some(s("plain")),
            }),
            attributes: vec![kv("log.file.path", s(file))],
            ..Default::default()
        };
        let full_rec = LogRecord {
            time_unix_nano: 1_500_000_000,
            observed_time_unix_nano: 7_000_000_000,
            severity_number: 13,
            severity_text: "WARN".into(),
            body: Some(AnyValue {
                value: Some(s("bad \u{fffd} utf8")),
            }),
            // The fields in the map's order (serde_json's: sorted by key).
            attributes: vec![
                kv("log.file.path", s("/l/a.log")),
                kv("a", s("[1,\"b\"]")),
                kv("f", any_value::Value::DoubleValue(1.5)),
                kv("i", any_value::Value::IntValue(-3)),
                KeyValue {
                    key: "n".into(),
                    value: Some(AnyValue { value: None }),
                    ..Default::default()
                },
                kv("s", s("x")),
                kv("span_id", s("b7ad6b7169203331")),
                kv("t", any_value::Value::BoolValue(true)),
                kv("trace_id", s("0af7651916cd43dd8448eb211c80319c")),
                kv("u", any_value::Value::DoubleValue(18446744073709551615.0)),
            ],
            trace_id: hex::<16>("0af7651916cd43dd8448eb211c80319c")
                .unwrap()
                .to_vec(),
            span_id: hex::<8>("b7ad6b7169203331").unwrap().to_vec(),
            ..Default::default()
        };
        let want = ExportLogsServiceRequest {
            resource_logs: vec![
                ResourceLogs {
                    resource: Some(Resource {
                        attributes: vec![
                            kv("service.name", s("orders")),
                            kv("host.name", s("h1")),
                            kv("env", s("prod")),
                        ],
                        ..Default::default()
                    }),
                    scope_logs: vec![ScopeLogs {
                        scope: scope.clone(),
                        log_records: vec![full_rec, plain_rec("/l/a.log"), plain_rec("/l/a2.log")],
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                },
                ResourceLogs {
                    resource: Some(Resource {
                        attributes: vec![kv("service.name", s("pay"))],
                        ..Default::default()
                    }),
                    scope_logs: vec![ScopeLogs {
                        scope,
                        log_records: vec![plain_rec("/l/b.log")],
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                },
            ],
        };
        assert_eq!(got, want);
    }

    /// The golden OTLP/JSON body: camelCase names, 64-bit integers as strings, severity as a
    /// number, hex ids, every field type.
    #[test]
    fn json_golden_body() {
        let a: Arc<[(String, String)]> =
            Arc::from(vec![("service".to_owned(), "orders".to_owned())]);
        let fields: serde_json::Map<String, Value> = serde_json::from_str(
            r#"{"b":false,"i":7,"f":0.5,"n":null,"o":{"x":1},
                "trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"b7ad6b7169203331"}"#,
        )
        .unwrap();
        let batch = vec![chunk(
            &a,
            "/l/a.log",
            vec![
                Record {
                    message: Bytes::from_static(b"q\"1"),
                    fields: Some(Box::new(fields)),
                    timestamp: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1500)),
                    level: Some(Level::Error),
                    ..Record::default()
                },
                Record {
                    message: Bytes::from_static(b"plain"),
                    ..Record::default()
                },
            ],
        )];
        let mut out = Vec::new();
        Otlp::new(true).encode(&batch, &mut out);
        let want = concat!(
            r#"{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"orders"}}]},"#,
            r#""scopeLogs":[{"scope":{"name":"tandem","version":""#,
            env!("CARGO_PKG_VERSION"),
            r#""},"logRecords":["#,
            r#"{"timeUnixNano":"1500000000","observedTimeUnixNano":"7000000000","severityNumber":17,"severityText":"ERROR","#,
            r#""body":{"stringValue":"q\"1"},"attributes":[{"key":"log.file.path","value":{"stringValue":"/l/a.log"}},"#,
            r#"{"key":"b","value":{"boolValue":false}},{"key":"f","value":{"doubleValue":0.5}},"#,
            r#"{"key":"i","value":{"intValue":"7"}},{"key":"n","value":{}},"#,
            r#"{"key":"o","value":{"stringValue":"{\"x\":1}"}},"#,
            r#"{"key":"span_id","value":{"stringValue":"b7ad6b7169203331"}},"#,
            r#"{"key":"trace_id","value":{"stringValue":"0af7651916cd43dd8448eb211c80319c"}}],"#,
            r#""traceId":"0af7651916cd43dd8448eb211c80319c","spanId":"b7ad6b7169203331"},"#,
            r#"{"observedTimeUnixNano":"7000000000","body":{"stringValue":"plain"},"#,
            r#""attributes":[{"key":"log.file.path","value":{"stringValue":"/l/a.log"}}]}"#,
            r#"]}]}]}"#
        );
        assert_eq!(String::from_utf8(out).unwrap(), want);
        assert_eq!(
            rejected_json(br#"{"partialSuccess":{"rejectedLogRecords":"4","errorMessage":"m"}}"#),
            Some((4, "m".into()))
        );
        assert_eq!(
            rejected_json(br#"{"partialSuccess":{"rejectedLogRecords":2}}"#),
            Some((2, String::new()))
        );
        assert_eq!(rejected_json(br#"{"partialSuccess":{}}"#), None);
        assert_eq!(rejected_json(b"{}"), None);
    }

    /// Partial success: rejected records are reported; an empty or absent one is not.
    #[test]
    fn partial_success() {
        let resp = |n: i64| {
            ExportLogsServiceResponse {
                partial_success: Some(ExportLogsPartialSuccess {
                    rejected_log_records: n,
                    error_message: "too old".into(),
                }),
            }
            .encode_to_vec()
        };
        assert_eq!(rejected(&resp(3)), Some((3, "too old".into())));
        assert_eq!(rejected(&resp(0)), None);
        assert_eq!(rejected(b""), None);
    }

    /// Trace context needs both ids, valid hex of the right length, not all zero.
    #[test]
    fn trace_context_from_fields() {
        let rec = |t: &str, s: &str| Record {
            fields: Some(Box::new(
                serde_json::from_value(serde_json::json!({"trace_id": t, "span_id": s})).unwrap(),
            )),
            ..Record::default()
        };
        assert!(
            trace_context(&rec("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")).is_some()
        );
        assert!(
            trace_context(&rec("0af7651916cd43dd8448eb211c80319", "b7ad6b7169203331")).is_none()
        );
        assert!(
            trace_context(&rec("0af7651916cd43dd8448eb211c80319g", "b7ad6b7169203331")).is_none()
        );
        assert!(trace_context(&rec(&"0".repeat(32), "b7ad6b7169203331")).is_none());
        assert!(trace_context(&Record::default()).is_none());
        // Extracted ids (the record's own) come first.
        let extracted = Record {
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
            span_id: Some("00f067aa0ba902b7".into()),
            ..rec("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
        };
        assert_eq!(trace_context(&extracted).map(|(t, _)| t[0]), Some(0x4b));
    }
}
