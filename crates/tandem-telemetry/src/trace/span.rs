//! A finished span as plain data, for callers that build one ([`super::Tracer::record`] writes
//! it as protobuf). The proxy does not: it writes its spans straight to protobuf
//! ([`super::otlp::EncodedSpans`]), with the same attribute shapes as here.
//!
//! Attribute keys are `&'static str` (semantic-convention names are constants) and values are a
//! small enum, so a span is one `Vec` of attributes plus the strings that vary per request.

use std::borrow::Cow;
use std::sync::Arc;

use http::HeaderValue;

use super::context::{SpanId, TraceId};

/// One finished span.
#[derive(Clone, Debug)]
pub struct SpanRecord {
    /// The trace.
    pub trace_id: TraceId,
    /// This span.
    pub span_id: SpanId,
    /// The parent span, if any.
    pub parent: Option<SpanId>,
    /// Whether the parent lives in another process (it came in a request header).
    pub remote_parent: bool,
    /// W3C `tracestate` of the trace at this span.
    pub trace_state: Option<HeaderValue>,
    /// Span name, e.g. `GET /api/*` (a method alone is a constant).
    pub name: Cow<'static, str>,
    /// Server or client.
    pub kind: SpanKind,
    /// Start, in nanoseconds since the Unix epoch.
    pub start_unix_nanos: u64,
    /// End, in nanoseconds since the Unix epoch.
    pub end_unix_nanos: u64,
    /// Attributes, keys from the semantic conventions or `tandem.*`.
    pub attributes: Vec<(&'static str, Value)>,
    /// Outcome.
    pub status: Status,
}

/// What a span describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// A request Tandem received.
    Server,
    /// A request Tandem sent upstream (one per try).
    Client,
}

/// An attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A constant string.
    Static(&'static str),
    /// A string made for this span.
    String(String),
    /// A string many spans share (listener, route and upstream names): a reference count
    /// instead of a copy per span.
    Shared(Arc<str>),
    /// An integer.
    Int(i64),
}

/// A span's status (OpenTelemetry: unset unless the span describes an error).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Status {
    /// No error.
    #[default]
    Unset,
    /// An error, with a description.
    Error(String),
}

impl From<&'static str> for Value {
    fn from(s: &'static str) -> Self {
        Value::Static(s)
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
