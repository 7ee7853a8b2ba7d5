//! The `tracing` section as serde sees it: distributed tracing with OTLP export.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;

use super::unique_map;

/// Distributed tracing: a server span per request, a client span per upstream try, trace
/// context read from requests and written to upstream requests, spans exported over OTLP.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    /// Where spans go: an OpenTelemetry collector.
    pub otlp: RawOtlp,
    /// Share of new traces that are recorded, 0.0 to 1.0 (default 1.0). A request that carries a
    /// sampling decision (a sampled or unsampled parent) keeps it.
    #[serde(default)]
    pub sample_ratio: Option<f64>,
    /// Trace context formats read from requests (first valid one wins) and all written to
    /// upstream requests: `w3c` (traceparent, tracestate), `b3` (one `b3` header), `b3multi`
    /// (`X-B3-*` headers). Default `[w3c]`.
    #[serde(default)]
    pub propagation: Option<Vec<RawPropagation>>,
    /// The `service.name` resource attribute of Tandem's spans (default "tandem").
    #[serde(default)]
    pub service_name: Option<String>,
    /// More resource attributes, e.g. `deployment.environment: prod`.
    #[serde(default, deserialize_with = "unique_map")]
    pub resource: IndexMap<String, String>,
    /// Finished spans waiting for export at most (default 2048); beyond it spans are dropped
    /// and counted, never waited for.
    #[serde(default)]
    pub queue: Option<usize>,
    /// Most spans in one export request (default 512), at most `queue`.
    #[serde(default)]
    pub batch: Option<usize>,
    /// Longest time a finished span waits before it is exported (default "1s").
    #[serde(default)]
    pub flush_interval: Option<String>,
}

/// An OTLP collector.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawOtlp {
    /// The collector's URL: `http://HOST:4317` for gRPC, `http://HOST:4318` (the path
    /// defaults to /v1/traces) for HTTP.
    pub endpoint: String,
    /// `grpc` or `http/protobuf` (default `http/protobuf`, as in the OpenTelemetry SDKs).
    #[serde(default)]
    pub protocol: Option<RawOtlpProtocol>,
    /// Bound on one export request (default "10s"); spans of a request that fails are dropped.
    #[serde(default)]
    pub timeout: Option<String>,
}

/// OTLP transport.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
pub enum RawOtlpProtocol {
    /// OTLP/gRPC (`TraceService/Export`).
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (`POST /v1/traces`).
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// A trace context format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawPropagation {
    /// W3C Trace Context: `traceparent` and `tracestate`.
    W3c,
    /// B3, written as the single `b3` header (both B3 forms are read).
    B3,
    /// B3, written as `X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled` (both B3 forms are read).
    B3multi,
}
