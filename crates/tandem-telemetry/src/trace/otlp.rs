//! Span records to OTLP's protobuf wire format (`ExportTraceServiceRequest`), and the resource
//! that describes this Tandem. Runs on the exporter task, never on the request path.
//!
//! Spans are written straight into the request's bytes with prost's wire-format primitives,
//! rather than first converted to `opentelemetry-proto`'s generated structs: those would cost a
//! heap allocation per attribute key and value and per id, about 1.5 µs per span, which at
//! 100% sampling is a noticeable share of a request's CPU when the exporter shares a core with
//! the proxy. The generated types remain the reference: the resource and scope are encoded with
//! them once at start, and the tests decode what [`Encoder`] writes with them and compare it to
//! the same spans converted field by field.
//!
//! Field numbers are those of `opentelemetry/proto/trace/v1/trace.proto`,
//! `common/v1/common.proto` and `collector/trace/v1/trace_service.proto`.

use bytes::Bytes;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use tandem_config::Tracing;

use super::span::{SpanKind, SpanRecord, Status, Value};

/// OTLP span flags: the W3C sampled flag (bits 0-7 carry trace flags), and whether the parent is
/// known to be remote (bit 8) and is (bit 9).
const FLAG_SAMPLED: u32 = 0x01;
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
const FLAG_IS_REMOTE: u32 = 0x200;

/// `Span.SpanKind` and `Status.StatusCode` values.
const KIND_SERVER: u64 = 2;
const KIND_CLIENT: u64 = 3;
const STATUS_ERROR: u64 = 2;

/// The instrumentation scope of every span: Tandem itself.
const SCOPE: &str = "tandem";

/// Writes export requests for one resource; reuses its buffers from batch to batch.
#[derive(Debug)]
pub struct Encoder {
    /// `ResourceSpans.resource` (field 1), key and length included.
    resource: Bytes,
    /// `ScopeSpans.scope` (field 1), key and length included.
    scope: Bytes,
    /// The spans of the batch being written, each as `ScopeSpans.spans` (field 2).
    spans: Vec<u8>,
    /// One span's fields.
    span: Vec<u8>,
}

/// The resource of this process: `service.name`, `service.instance.id` (a random UUID per
/// start, as the semantic conventions recommend), `service.version` (Tandem's), then the
/// configured attributes, which may replace the last two.
pub fn resource(config: &Tracing) -> Resource {
    let mut attributes = vec![kv("service.name", config.service_name.clone())];
    let configured = |key: &str| config.resource.iter().any(|(k, _)| k == key);
    if !configured("service.instance.id") {
        attributes.push(kv("service.instance.id", uuid_v4()));
    }
    if !configured("service.version") {
        attributes.push(kv("service.version", env!("CARGO_PKG_VERSION").to_owned()));
    }
    attributes.extend(config.resource.iter().map(|(k, v)| kv(k, v.clone())));
    Resource {
        attributes,
        ..Default::default()
    }
}

// === impl Encoder ===

impl Encoder {
    /// An encoder for spans of `resource`.
    pub fn new(resource: &Resource) -> Self {
        let scope = InstrumentationScope {
            name: SCOPE.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        };
        Encoder {
            resource: field_bytes(1, &resource.encode_to_vec()),
            scope: field_bytes(1, &scope.encode_to_vec()),
            spans: Vec::with_capacity(64 * 1024),
            span: Vec::with_capacity(1024),
        }
    }

    /// One `ExportTraceServiceRequest` carrying `spans`, as protobuf bytes.
    pub fn encode(&mut self, spans: impl IntoIterator<Item = SpanRecord>) -> Bytes {
        self.spans.clear();
        for s in spans {
            self.span.clear();
            write_span(&mut self.span, &s);
            len_field(&mut self.spans, 2, &self.span);
        }
        // ExportTraceServiceRequest { resource_spans (1): ResourceSpans {
        //   resource (1), scope_spans (2): ScopeSpans { scope (1), spans (2)... } } }
        let scope_spans = self.scope.len() + self.spans.len();
        let resource_spans = self.resource.len() + 1 + varint_len(scope_spans as u64) + scope_spans;
        let mut out = Vec::with_capacity(1 + varint_len(resource_spans as u64) + resource_spans);
        key(&mut out, 1, LEN);
        varint(&mut out, resource_spans as u64);
        out.extend_from_slice(&self.resource);
        key(&mut out, 2, LEN);
        varint(&mut out, scope_spans as u64);
        out.extend_from_slice(&self.scope);
        out.extend_from_slice(&self.spans);
        Bytes::from(out)
    }
}

/// Protobuf wire types used here.
const VARINT: u32 = 0;
const I64: u32 = 1;
const LEN: u32 = 2;
const I32: u32 = 5;

/// `Span`'s fields (without the span's own key and length).
fn write_span(buf: &mut Vec<u8>, s: &SpanRecord) {
    len_field(buf, 1, &s.trace_id.to_bytes());
    len_field(buf, 2, &s.span_id.to_bytes());
    if let Some(ts) = &s.trace_state {
        len_field(buf, 3, ts.as_bytes());
    }
    if let Some(p) = s.parent {
        len_field(buf, 4, &p.to_bytes());
    }
    len_field(buf, 5, s.name.as_bytes());
    varint_field(
        buf,
        6,
        match s.kind {
            SpanKind::Server => KIND_SERVER,
            SpanKind::Client => KIND_CLIENT,
        },
    );
    key(buf, 7, I64);
    buf.extend_from_slice(&s.start_unix_nanos.to_le_bytes());
    key(buf, 8, I64);
    buf.extend_from_slice(&s.end_unix_nanos.to_le_bytes());
    for (k, value) in &s.attributes {
        // KeyValue { key (1), value (2): AnyValue { string_value (1) | int_value (3) } }
        let any_len = match value {
            Value::Static(v) => 1 + varint_len(v.len() as u64) + v.len(),
            Value::String(v) => 1 + varint_len(v.len() as u64) + v.len(),
            Value::Shared(v) => 1 + varint_len(v.len() as u64) + v.len(),
            Value::Int(i) => 1 + varint_len(*i as u64),
        };
        let kv_len =
            1 + varint_len(k.len() as u64) + k.len() + 1 + varint_len(any_len as u64) + any_len;
        key(buf, 9, LEN);
        varint(buf, kv_len as u64);
        len_field(buf, 1, k.as_bytes());
        key(buf, 2, LEN);
        varint(buf, any_len as u64);
        match value {
            Value::Static(v) => len_field(buf, 1, v.as_bytes()),
            Value::String(v) => len_field(buf, 1, v.as_bytes()),
            Value::Shared(v) => len_field(buf, 1, v.as_bytes()),
            // int64: two's complement as a varint.
            Value::Int(i) => varint_field(buf, 3, *i as u64),
        }
    }
    if let Status::Error(message) = &s.status {
        // Status { message (2), code (3) }
        let len = 1 + varint_len(message.len() as u64) + message.len() + 2;
        key(buf, 15, LEN);
        varint(buf, len as u64);
        len_field(buf, 2, message.as_bytes());
        varint_field(buf, 3, STATUS_ERROR);
    }
    let mut flags = FLAG_SAMPLED;
    if s.parent.is_some() {
        flags |= FLAG_HAS_IS_REMOTE;
        if s.remote_parent {
            flags |= FLAG_IS_REMOTE;
        }
    }
    key(buf, 16, I32);
    buf.extend_from_slice(&flags.to_le_bytes());
}

// Wire-format primitives on a `Vec<u8>`: prost's generic `BufMut` versions cost several times
// as much per call, and a span makes dozens of calls.

/// A field key: field number and wire type.
fn key(buf: &mut Vec<u8>, tag: u32, wire_type: u32) {
    varint(buf, u64::from(tag << 3 | wire_type));
}

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Bytes [`varint`] writes for `v`.
fn varint_len(v: u64) -> usize {
    // 1 byte per started 7 bits; zero takes one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// A length-delimited field: key, length, bytes.
fn len_field(buf: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    key(buf, tag, LEN);
    varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

fn varint_field(buf: &mut Vec<u8>, tag: u32, v: u64) {
    key(buf, tag, VARINT);
    varint(buf, v);
}

/// A length-delimited field as its own bytes.
fn field_bytes(tag: u32, bytes: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(bytes.len() + 6);
    len_field(&mut b, tag, bytes);
    Bytes::from(b)
}

fn kv(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
        ..Default::default()
    }
}

/// A random (version 4) UUID in its usual text form.
fn uuid_v4() -> String {
    let mut v = fastrand::u128(..);
    v = (v & !(0xf << 76)) | (0x4 << 76); // version 4
    v = (v & !(0x3 << 62)) | (0x2 << 62); // RFC 9562 variant
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{span, status, ResourceSpans, ScopeSpans, Span};

    use super::*;
    use crate::trace::context::{SpanId, TraceId};

    /// The reference: the same spans converted to the generated types field by field.
    fn reference(resource: &Resource, spans: Vec<SpanRecord>) -> ExportTraceServiceRequest {
        let to_span = |s: SpanRecord| {
            let mut flags = FLAG_SAMPLED;
            if s.parent.is_some() {
                flags |= FLAG_HAS_IS_REMOTE | if s.remote_parent { FLAG_IS_REMOTE } else { 0 };
            }
            Span {
                trace_id: s.trace_id.to_bytes().to_vec(),
                span_id: s.span_id.to_bytes().to_vec(),
                trace_state: s
                    .trace_state
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default(),
                parent_span_id: s.parent.map(|p| p.to_bytes().to_vec()).unwrap_or_default(),
                flags,
                name: s.name.into_owned(),
                kind: match s.kind {
                    SpanKind::Server => span::SpanKind::Server,
                    SpanKind::Client => span::SpanKind::Client,
                } as i32,
                start_time_unix_nano: s.start_unix_nanos,
                end_time_unix_nano: s.end_unix_nanos,
                attributes: s
                    .attributes
                    .into_iter()
                    .map(|(k, v)| KeyValue {
                        key: k.to_owned(),
                        value: Some(AnyValue {
                            value: Some(match v {
                                Value::Static(s) => any_value::Value::StringValue(s.to_owned()),
                                Value::String(s) => any_value::Value::StringValue(s),
                                Value::Shared(s) => any_value::Value::StringValue(s.to_string()),
                                Value::Int(i) => any_value::Value::IntValue(i),
                            }),
                        }),
                        ..Default::default()
                    })
                    .collect(),
                status: match s.status {
                    Status::Unset => None,
                    Status::Error(message) => Some(opentelemetry_proto::tonic::trace::v1::Status {
                        message,
                        code: status::StatusCode::Error as i32,
                    }),
                },
                ..Default::default()
            }
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: SCOPE.to_owned(),
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                        ..Default::default()
                    }),
                    spans: spans.into_iter().map(to_span).collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    fn spans() -> Vec<SpanRecord> {
        let server = SpanRecord {
            trace_id: TraceId::from_u128(0x0af7651916cd43dd8448eb211c80319c).unwrap(),
            span_id: SpanId::from_u64(0xb7ad6b7169203331).unwrap(),
            parent: Some(SpanId::from_u64(1).unwrap()),
            remote_parent: true,
            trace_state: Some(http::HeaderValue::from_static("a=1")),
            name: "GET /api/*".into(),
            kind: SpanKind::Server,
            start_unix_nanos: 1_700_000_000_000_000_000,
            end_unix_nanos: u64::MAX,
            attributes: vec![
                ("http.request.method", Value::Static("GET")),
                ("url.path", Value::String("/ä/".repeat(100))),
                ("http.response.status_code", Value::Int(503)),
                ("negative", Value::Int(-1)),
                ("empty", Value::String(String::new())),
                ("tandem.route", Value::Shared("api".into())),
            ],
            status: Status::Error("x".repeat(300)),
        };
        let client = SpanRecord {
            trace_id: TraceId::from_u128(u128::MAX).unwrap(),
            span_id: SpanId::from_u64(u64::MAX).unwrap(),
            parent: Some(SpanId::from_u64(2).unwrap()),
            remote_parent: false,
            trace_state: None,
            name: "GET".into(),
            kind: SpanKind::Client,
            start_unix_nanos: 0,
            end_unix_nanos: 1,
            attributes: Vec::new(),
            status: Status::Unset,
        };
        let root = SpanRecord {
            parent: None,
            remote_parent: false,
            status: Status::Error(String::new()),
            ..client.clone()
        };
        vec![server, client, root]
    }

    /// What the encoder writes decodes, with the generated types, to exactly the reference
    /// conversion: ids, flags, kinds, times, every attribute type, status, resource and scope.
    #[test]
    fn encoder_matches_the_generated_types() {
        let config = tandem_config::parse(
            "t.yaml",
            "listeners:\n  a: { address: 127.0.0.1:1, upstream: u }\nupstreams:\n  u: {}\n\
             tracing:\n  otlp: { endpoint: \"http://c:4318\" }\n  resource: { k: v }\n",
        )
        .unwrap();
        let resource = resource(config.tracing.as_ref().unwrap());
        let mut encoder = Encoder::new(&resource);
        // Twice: buffers reused between batches leave nothing behind.
        for _ in 0..2 {
            let bytes = encoder.encode(spans());
            let decoded = ExportTraceServiceRequest::decode(bytes).unwrap();
            assert_eq!(decoded, reference(&resource, spans()));
        }
        let empty = ExportTraceServiceRequest::decode(encoder.encode(Vec::new())).unwrap();
        assert_eq!(empty, reference(&resource, Vec::new()));
        let flags: Vec<u32> = reference(&resource, spans()).resource_spans[0].scope_spans[0]
            .spans
            .iter()
            .map(|s| s.flags)
            .collect();
        assert_eq!(flags, [0x301, 0x101, 0x001]);
    }

    /// Varints and their lengths agree with prost's at every size boundary.
    #[test]
    fn varints_match_prost() {
        for shift in 0..64 {
            for v in [
                (1u64 << shift) - 1,
                1u64 << shift,
                (1u64 << shift) + 1,
                u64::MAX,
            ] {
                let mut ours = Vec::new();
                varint(&mut ours, v);
                let mut theirs = Vec::new();
                prost::encoding::encode_varint(v, &mut theirs);
                assert_eq!(ours, theirs, "{v}");
                assert_eq!(varint_len(v), prost::encoding::encoded_len_varint(v), "{v}");
            }
        }
    }

    /// UUIDs have the v4 shape and differ between calls.
    #[test]
    fn uuid_shape() {
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
        assert_ne!(u, uuid_v4());
    }
}
