//! The access log's checked settings and the names of the fields a line can carry.
//!
//! The field names are part of the file format (`access_log.fields`) and of each JSON line, so
//! they live here, next to the other names users write; `tandem-telemetry` formats lines from
//! them. `docs/config.md` ("Access logs") documents each one; keep the two in step.

use std::path::PathBuf;

use serde::Serialize;

/// The access log: one JSON line per HTTP request or TCP connection.
#[derive(Clone, Debug, Serialize)]
pub struct AccessLog {
    /// Where lines go.
    pub output: AccessLogOutput,
    /// The fields of each line, in this order (no field twice).
    pub fields: Vec<AccessLogField>,
    /// Lines queued for the writer; when it is full, new lines are dropped and counted.
    pub buffer: usize,
}

/// Where access log lines are written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub enum AccessLogOutput {
    /// Tandem's standard output.
    Stdout,
    /// A file, opened for appending (created when missing) and reopened on SIGUSR1.
    File(PathBuf),
}

/// One field of an access log line. Fields that do not apply to a line's kind (`method` on a
/// TCP connection) are left out of that line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogField {
    /// `http` or `tcp`.
    Kind,
    /// When the request arrived or the connection was accepted (RFC 3339, UTC, microseconds).
    Time,
    /// From arrival to the last response byte (HTTP) or to the close (TCP), in milliseconds.
    DurationMs,
    /// From arrival to the response head, in milliseconds (HTTP).
    HeadMs,
    /// The listener's name.
    Listener,
    /// The listener's direction: `inbound` or `outbound`.
    Direction,
    /// The route's name (HTTP).
    Route,
    /// The upstream's name.
    Upstream,
    /// The endpoint that answered (or failed), as configured.
    Endpoint,
    /// The client's address, `IP:port`.
    Client,
    /// `HTTP/1.0`, `HTTP/1.1`, `HTTP/2` or `tcp`.
    Protocol,
    /// The request method (HTTP).
    Method,
    /// The request path and query (HTTP), cut at 2048 bytes.
    Path,
    /// The request's authority or `Host` (HTTP), cut at 256 bytes.
    Authority,
    /// The response status sent (HTTP).
    Status,
    /// `grpc-status` of the response, from its head or trailers (HTTP).
    GrpcStatus,
    /// Body bytes received from the client (HTTP), or bytes (TCP).
    ReceivedBytes,
    /// Body bytes sent to the client (HTTP), or bytes (TCP).
    SentBytes,
    /// Tries sent to the upstream, the first included (HTTP).
    Attempts,
    /// Tries after the first (HTTP).
    Retries,
    /// The `tandem-error` reason when Tandem answered or closed itself.
    Error,
    /// How the exchange ended: `complete`, `client_gone`, `upstream_error`, `idle_timeout`,
    /// `io_error` or `no_upstream`.
    End,
    /// Whether the exchange ran to its end (`end` is `complete`).
    Completed,
    /// The `User-Agent` header (HTTP), cut at 512 bytes.
    UserAgent,
    /// The client's verified identity (set by mutual TLS).
    PeerIdentity,
    /// The trace id (set when tracing is on).
    TraceId,
    /// The span id of Tandem's span (set when tracing is on).
    SpanId,
}

// === impl AccessLogField ===

impl AccessLogField {
    /// Every field, in the default order of a line.
    pub const ALL: [AccessLogField; 27] = [
        AccessLogField::Kind,
        AccessLogField::Time,
        AccessLogField::DurationMs,
        AccessLogField::HeadMs,
        AccessLogField::Listener,
        AccessLogField::Direction,
        AccessLogField::Route,
        AccessLogField::Upstream,
        AccessLogField::Endpoint,
        AccessLogField::Client,
        AccessLogField::Protocol,
        AccessLogField::Method,
        AccessLogField::Path,
        AccessLogField::Authority,
        AccessLogField::Status,
        AccessLogField::GrpcStatus,
        AccessLogField::ReceivedBytes,
        AccessLogField::SentBytes,
        AccessLogField::Attempts,
        AccessLogField::Retries,
        AccessLogField::Error,
        AccessLogField::End,
        AccessLogField::Completed,
        AccessLogField::UserAgent,
        AccessLogField::PeerIdentity,
        AccessLogField::TraceId,
        AccessLogField::SpanId,
    ];

    /// The name in `access_log.fields` and in each line.
    pub fn name(self) -> &'static str {
        match self {
            AccessLogField::Kind => "kind",
            AccessLogField::Time => "time",
            AccessLogField::DurationMs => "duration_ms",
            AccessLogField::HeadMs => "head_ms",
            AccessLogField::Listener => "listener",
            AccessLogField::Direction => "direction",
            AccessLogField::Route => "route",
            AccessLogField::Upstream => "upstream",
            AccessLogField::Endpoint => "endpoint",
            AccessLogField::Client => "client",
            AccessLogField::Protocol => "protocol",
            AccessLogField::Method => "method",
            AccessLogField::Path => "path",
            AccessLogField::Authority => "authority",
            AccessLogField::Status => "status",
            AccessLogField::GrpcStatus => "grpc_status",
            AccessLogField::ReceivedBytes => "received_bytes",
            AccessLogField::SentBytes => "sent_bytes",
            AccessLogField::Attempts => "attempts",
            AccessLogField::Retries => "retries",
            AccessLogField::Error => "error",
            AccessLogField::End => "end",
            AccessLogField::Completed => "completed",
            AccessLogField::UserAgent => "user_agent",
            AccessLogField::PeerIdentity => "peer_identity",
            AccessLogField::TraceId => "trace_id",
            AccessLogField::SpanId => "span_id",
        }
    }

    /// The field called `name`.
    pub fn from_name(name: &str) -> Option<AccessLogField> {
        AccessLogField::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Whether the field appears on TCP connection lines too (otherwise HTTP lines only).
    pub fn applies_to_tcp(self) -> bool {
        !matches!(
            self,
            AccessLogField::HeadMs
                | AccessLogField::Route
                | AccessLogField::Method
                | AccessLogField::Path
                | AccessLogField::Authority
                | AccessLogField::Status
                | AccessLogField::GrpcStatus
                | AccessLogField::Attempts
                | AccessLogField::Retries
                | AccessLogField::UserAgent
        )
    }
}

// === impl AccessLogOutput ===

impl std::fmt::Display for AccessLogOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccessLogOutput::Stdout => f.write_str("stdout"),
            AccessLogOutput::File(p) => write!(f, "{}", p.display()),
        }
    }
}

impl From<AccessLogOutput> for String {
    fn from(o: AccessLogOutput) -> String {
        o.to_string()
    }
}

/// Default `access_log.buffer`: lines queued before new ones are dropped (a few MiB at most).
pub const DEFAULT_ACCESS_LOG_BUFFER: usize = 8192;

/// Largest `access_log.buffer`: a queue this long already holds hundreds of MiB of lines.
pub const MAX_ACCESS_LOG_BUFFER: usize = 1 << 20;
