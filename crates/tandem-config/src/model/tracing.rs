//! The checked `tracing` section.

use std::time::Duration;

use serde::Serialize;

use super::humantime_serde_compat;

/// Distributed tracing, when configured.
#[derive(Clone, Debug, Serialize)]
pub struct Tracing {
    /// Where spans are exported.
    pub otlp: Otlp,
    /// Share of new traces (no sampling decision in the request) that are recorded, 0 to 1.
    pub sample_ratio: f64,
    /// Formats read from requests, in order of preference; every one is written upstream.
    pub propagation: Vec<Propagation>,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// More resource attributes, in file order (none is `service.name`).
    pub resource: Vec<(String, String)>,
    /// Finished spans waiting for export at most; beyond it spans are dropped and counted.
    pub queue: usize,
    /// Most spans in one export request (at most `queue`).
    pub batch: usize,
    /// Longest time a finished span waits before it is exported.
    #[serde(with = "humantime_serde_compat")]
    pub flush_interval: Duration,
}

/// An OTLP collector.
#[derive(Clone, Debug, Serialize)]
pub struct Otlp {
    /// `http://host:port` for gRPC; `http://host:port/path` for HTTP (path `/v1/traces` when the
    /// file gave none).
    pub endpoint: String,
    /// Transport.
    pub protocol: OtlpProtocol,
    /// Bound on one export request.
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
}

/// OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum OtlpProtocol {
    /// OTLP/gRPC.
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP/HTTP, protobuf bodies.
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// A trace context format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Propagation {
    /// W3C Trace Context (`traceparent`, `tracestate`).
    W3c,
    /// B3, written as one `b3` header; both B3 forms are read.
    B3,
    /// B3, written as `X-B3-*` headers; both B3 forms are read.
    B3multi,
}
