//! Span records to OTLP's protobuf messages (`opentelemetry.proto.trace.v1`), and the resource
//! that describes this Tandem. Runs on the exporter task, never on the request path.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, status, ResourceSpans, ScopeSpans, Span};
use tandem_config::Tracing;

use super::span::{SpanKind, SpanRecord, Status, Value};

/// OTLP span flags: the W3C sampled flag (bits 0-7 carry trace flags), and whether the parent is
/// known to be remote (bit 8) and is (bit 9).
const FLAG_SAMPLED: u32 = 0x01;
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
const FLAG_IS_REMOTE: u32 = 0x200;

/// The instrumentation scope of every span: Tandem itself.
const SCOPE: &str = "tandem";

/// The resource of this process: `service.name`, `service.instance.id` (a random UUID per
/// start, as the semantic conventions recommend), `service.version` (Tandem's), then the
/// configured attributes, which may replace the last two.
pub(crate) fn resource(config: &Tracing) -> Resource {
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

/// One export request carrying `spans`.
pub(crate) fn request(resource: &Resource, spans: Vec<SpanRecord>) -> ExportTraceServiceRequest {
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

fn to_span(s: SpanRecord) -> Span {
    let mut flags = FLAG_SAMPLED;
    if s.parent.is_some() {
        flags |= FLAG_HAS_IS_REMOTE;
        if s.remote_parent {
            flags |= FLAG_IS_REMOTE;
        }
    }
    Span {
        trace_id: s.trace_id.to_bytes().to_vec(),
        span_id: s.span_id.to_bytes().to_vec(),
        trace_state: s
            .trace_state
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
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
                value: Some(any(v)),
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
}

fn any(v: Value) -> AnyValue {
    let value = match v {
        Value::Static(s) => any_value::Value::StringValue(s.to_owned()),
        Value::String(s) => any_value::Value::StringValue(s),
        Value::Int(i) => any_value::Value::IntValue(i),
    };
    AnyValue { value: Some(value) }
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
    use super::*;
    use crate::trace::context::{SpanId, TraceId};

    /// Ids, flags, kind, attributes and status land in the OTLP fields the collector reads.
    #[test]
    fn span_fields() {
        let s = SpanRecord {
            trace_id: TraceId::from_u128(0x0af7651916cd43dd8448eb211c80319c).unwrap(),
            span_id: SpanId::from_u64(0xb7ad6b7169203331).unwrap(),
            parent: Some(SpanId::from_u64(1).unwrap()),
            remote_parent: true,
            trace_state: Some(http::HeaderValue::from_static("a=1")),
            name: "GET /api/*".into(),
            kind: SpanKind::Server,
            start_unix_nanos: 10,
            end_unix_nanos: 20,
            attributes: vec![
                ("http.request.method", Value::Static("GET")),
                ("http.response.status_code", Value::Int(503)),
            ],
            status: Status::Error("503".into()),
        };
        let p = to_span(s);
        assert_eq!(hex(&p.trace_id), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(hex(&p.span_id), "b7ad6b7169203331");
        assert_eq!(hex(&p.parent_span_id), "0000000000000001");
        assert_eq!(p.flags, 0x301);
        assert_eq!(p.kind, span::SpanKind::Server as i32);
        assert_eq!(p.trace_state, "a=1");
        assert_eq!((p.start_time_unix_nano, p.end_time_unix_nano), (10, 20));
        assert_eq!(p.attributes[1].key, "http.response.status_code");
        assert_eq!(
            p.attributes[1].value.as_ref().unwrap().value,
            Some(any_value::Value::IntValue(503))
        );
        assert_eq!(p.status.unwrap().code, status::StatusCode::Error as i32);
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

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }
}
