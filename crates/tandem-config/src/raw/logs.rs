//! The `logs:` section as serde sees it: log sources, sinks, checkpoints and the memory budget.
//! Checked into [`crate::model::Logs`] by `check::logs`.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;

use super::{unique_map, NumberOrString};

/// Log shipping: tail files, parse and enrich their lines, ship them to sinks, and checkpoint a
/// file's offset only once every sink that received its lines confirmed them.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLogs {
    /// Where read offsets are kept between runs. Required with file sources.
    #[serde(default)]
    pub checkpoint: Option<RawCheckpoint>,
    /// Bytes of log lines in flight at once, in every source and sink together: a number of
    /// bytes or a size such as "16MiB" (default "4MiB", at least "1MiB"). When it is full, file
    /// sources pause: the file is the buffer.
    #[serde(default)]
    pub memory_budget: Option<NumberOrString>,
    /// On shutdown, how long sinks may take to deliver what they hold (default "5s"); lines not
    /// delivered by then are read again on the next start.
    #[serde(default)]
    pub flush_timeout: Option<String>,
    /// Labels added to every record, e.g. `{ service: orders, env: prod }`. `host` is added
    /// with the machine's host name unless given here, and so are `service` (the tracing service
    /// name, else the registered service) and `instance` (the registered instance id, else its
    /// address) when those are configured.
    #[serde(default, deserialize_with = "unique_map")]
    pub labels: IndexMap<String, String>,
    /// Log sources by name.
    #[serde(default, deserialize_with = "unique_map")]
    pub sources: IndexMap<String, RawLogSource>,
    /// Log sinks by name.
    #[serde(default, deserialize_with = "unique_map")]
    pub sinks: IndexMap<String, RawLogSink>,
}

/// Where read offsets are kept.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCheckpoint {
    /// An absolute directory, created when missing; one Tandem at a time may use it.
    pub dir: String,
    /// The checkpoint is rewritten after every delivery and fsynced at most this often (default
    /// "1s"): a crash of the process replays at most the batches in flight, a crash of the
    /// machine at most this much more.
    #[serde(default)]
    pub sync_interval: Option<String>,
}

/// A log source.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLogSource {
    /// `file` (the default): files matching `paths`; `stdio`: the stdout and stderr of the app
    /// Tandem supervises (`tandem run -- app`); `access_log`: Tandem's own access log lines.
    #[serde(default, rename = "type")]
    pub kind: Option<RawLogSourceType>,
    /// `stdio`: which of the app's streams to capture, `[stdout, stderr]` (the default) or one
    /// of them. Both are passed through to Tandem's own stdout and stderr either way.
    #[serde(default)]
    pub streams: Option<Vec<RawStdStream>>,
    /// `stdio` and `access_log`: bytes of lines kept on disk (under `checkpoint.dir`) while
    /// the sinks are slower than the lines come, a number or a size such as "256MiB" (the
    /// default; at least "64KiB"). Beyond it, lines are dropped and counted.
    #[serde(default)]
    pub disk_buffer: Option<NumberOrString>,
    /// Absolute paths or glob patterns (`/var/log/app/*.log`); new matching files are found by
    /// rescanning. Include the rotated names (`app.log*`) to pick up copytruncate copies.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Where to start in files found at the first start (no checkpoint yet): `beginning` (the
    /// default) or `end`. Files that appear later are always read from the beginning.
    #[serde(default)]
    pub start_at: Option<RawStartAt>,
    /// How a line becomes a record: `plain` (the default; the line is the message), `json`
    /// (an object per line: its `message` or `msg` is the message, the rest are fields),
    /// `logfmt` (`key=value` pairs; `msg` or `message` is the message) or `regex` (the named
    /// captures of `pattern` are fields; a `message` capture is the message).
    #[serde(default)]
    pub parser: Option<RawLogParser>,
    /// `regex` parser: the pattern, with named captures, e.g.
    /// `'^(?P<ts>\S+) (?P<level>\w+) (?P<message>.*)$'`.
    #[serde(default)]
    pub pattern: Option<String>,
    /// Joins lines into one record (stack traces): a record starts at a line matching `start`.
    #[serde(default)]
    pub multiline: Option<RawMultiline>,
    /// Where the event time is: a field and its format. Without it (or when the field is
    /// missing or malformed) the time the line was read is used.
    #[serde(default)]
    pub timestamp: Option<RawTimestamp>,
    /// Where the severity is: a field, or a pattern over the message.
    #[serde(default)]
    pub level: Option<RawLevelRule>,
    /// Where trace and span ids are: fields, or a pattern over the message.
    #[serde(default)]
    pub trace: Option<RawTraceRule>,
    /// What is replaced before any sink sees a record.
    #[serde(default)]
    pub redact: Option<RawRedact>,
    /// Records not shipped, by level.
    #[serde(default)]
    pub drop: Option<RawDrop>,
    /// Records of one level shipped one in N.
    #[serde(default)]
    pub sample: Option<RawSample>,
    /// Longest line in bytes (default 65536, at least 256); longer lines are split into pieces
    /// of this size and counted.
    #[serde(default)]
    pub max_line_bytes: Option<usize>,
    /// How often files are checked for new data when all are read to the end (default "250ms").
    #[serde(default)]
    pub poll_interval: Option<String>,
    /// How often `paths` are expanded again to find new files (default "1s").
    #[serde(default)]
    pub scan_interval: Option<String>,
    /// Labels added to this source's records, over `logs.labels`.
    #[serde(default, deserialize_with = "unique_map")]
    pub labels: IndexMap<String, String>,
}

/// A log source type.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawLogSourceType {
    /// Files matching glob patterns.
    File,
    /// The supervised app's stdout and stderr.
    Stdio,
    /// Tandem's access log.
    AccessLog,
}

/// One of the app's output streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawStdStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Where to start in a file found at the first start.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawStartAt {
    /// Read the whole file.
    Beginning,
    /// Read only what is written from now on.
    End,
}

/// A line parser.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawLogParser {
    /// The line is the message.
    Plain,
    /// One JSON object per line.
    Json,
    /// `key=value` pairs.
    Logfmt,
    /// Named captures of a regular expression.
    Regex,
}

/// A log sink.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLogSink {
    /// `http` (NDJSON POST), `loki` (Loki push API), `elasticsearch` (bulk API), `otlp` (OTLP
    /// logs over HTTP, protobuf), `file` (NDJSON appended to a file) or `console` (NDJSON on
    /// stdout).
    #[serde(rename = "type")]
    pub kind: RawLogSinkType,
    /// The sources this sink receives (default: all of them).
    #[serde(default)]
    pub sources: Option<Vec<String>>,
    /// HTTP sinks: where batches are POSTed, `http://host:port/path` or `https://...`. `loki`,
    /// `elasticsearch` and `otlp` add their API's path (`/loki/api/v1/push`, `/_bulk`,
    /// `/v1/logs`) to a URL without one.
    #[serde(default)]
    pub url: Option<String>,
    /// `http`: headers sent with every request, e.g. `{ authorization: "Bearer ..." }`.
    #[serde(default, deserialize_with = "unique_map")]
    pub headers: IndexMap<String, String>,
    /// `http`: gzip request bodies (default false).
    #[serde(default)]
    pub gzip: Option<bool>,
    /// `http`: bound on one request, from sending to the end of the response (default "30s").
    #[serde(default)]
    pub timeout: Option<String>,
    /// HTTP sinks with an `https` URL: how the sink's certificate is verified, and the client
    /// certificate to present.
    #[serde(default)]
    pub tls: Option<RawSinkTls>,
    /// `loki`: the tenant, sent as `X-Scope-OrgID`.
    #[serde(default)]
    pub tenant: Option<String>,
    /// `loki`: the record labels that make a Loki stream (default: all of them, `host` and the
    /// configured ones). `level` may be named too (one stream per level).
    #[serde(default)]
    pub stream_labels: Option<Vec<String>>,
    /// `elasticsearch`: the index, with `%Y`, `%m`, `%d`, `%H` from each record's time in UTC
    /// (default "logs-%Y.%m.%d"); with `data_stream: true`, the data stream's name.
    #[serde(default)]
    pub index: Option<String>,
    /// `elasticsearch`: write to a data stream (`create` operations; default false: `index`).
    #[serde(default)]
    pub data_stream: Option<bool>,
    /// `elasticsearch`: each document's `_id` — `auto` (default): derived from where its line
    /// is (source, file, offset), so a retried or replayed line is the same document; `none`:
    /// Elasticsearch picks one (a replay indexes a second copy).
    #[serde(default)]
    pub document_id: Option<RawDocumentId>,
    /// `elasticsearch`: basic authentication user (with `password`).
    #[serde(default)]
    pub username: Option<String>,
    /// `elasticsearch`: basic authentication password.
    #[serde(default)]
    pub password: Option<String>,
    /// `elasticsearch`: an API key (the base64 `encoded` form), sent as `Authorization: ApiKey`.
    #[serde(default)]
    pub api_key: Option<String>,
    /// `otlp`: `protobuf` (the default) or `json`. `loki`: `json` (the default) or `protobuf`
    /// (snappy-compressed, as Promtail sends).
    #[serde(default)]
    pub encoding: Option<RawOtlpEncoding>,
    /// `otlp`: `http` (the default: `POST /v1/logs`) or `grpc` (the `LogsService/Export`
    /// method over HTTP/2, port 4317 by convention).
    #[serde(default)]
    pub protocol: Option<RawLogOtlpProtocol>,
    /// `file`: the absolute path NDJSON lines are appended to.
    #[serde(default)]
    pub path: Option<String>,
    /// `file`: rotate the file by size, keeping a number of old files.
    #[serde(default)]
    pub rotate: Option<RawFileRotate>,
    /// `file` and `console`: `ndjson` (the default: one JSON object per record, with its
    /// fields and labels) or `text` (the record's message alone, one per line).
    #[serde(default)]
    pub format: Option<RawLineFormat>,
    /// How lines are grouped into one delivery.
    #[serde(default)]
    pub batch: Option<RawLogBatch>,
    /// Deliveries in flight at once (default 1, at most 64). Each may be replayed after a crash.
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// Wait before the first retry of a failed delivery, doubling per retry with jitter (default
    /// "100ms").
    #[serde(default)]
    pub backoff: Option<String>,
    /// Longest wait between retries (default "30s"). A `Retry-After` is honoured up to "5m".
    #[serde(default)]
    pub max_backoff: Option<String>,
}

/// A log sink type.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawLogSinkType {
    /// NDJSON POSTed over HTTP.
    Http,
    /// Loki's push API.
    Loki,
    /// Elasticsearch's bulk API.
    Elasticsearch,
    /// OTLP logs over HTTP (protobuf).
    Otlp,
    /// NDJSON appended to a file.
    File,
    /// NDJSON written to Tandem's stdout.
    Console,
}

/// How an OTLP sink sends.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawLogOtlpProtocol {
    /// OTLP/HTTP: `POST /v1/logs`.
    Http,
    /// OTLP/gRPC: `opentelemetry.proto.collector.logs.v1.LogsService/Export` over HTTP/2.
    Grpc,
}

/// How an Elasticsearch sink names documents.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawDocumentId {
    /// Derived from the line's place: retries and replays overwrite (or, in a data stream,
    /// are refused as conflicts, which counts as indexed) instead of duplicating.
    Auto,
    /// Chosen by Elasticsearch.
    None,
}

/// Size-based rotation of a file sink's file.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFileRotate {
    /// The file is rotated before a batch would take it past this size: a number or a size
    /// such as "100MiB" (default "100MiB", 64KiB to 1TiB).
    #[serde(default)]
    pub max_bytes: Option<NumberOrString>,
    /// Rotated files kept, `PATH.1` (newest) to `PATH.N` (default 5, 1 to 1000).
    #[serde(default)]
    pub keep: Option<u32>,
}

/// What a file or console sink writes per record.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawLineFormat {
    /// One JSON object per record (message, time, level, fields, labels).
    Ndjson,
    /// The record's message alone.
    Text,
}

/// How an OTLP or Loki sink encodes its requests.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawOtlpEncoding {
    /// Binary protobuf (`application/x-protobuf`; snappy-compressed for Loki).
    Protobuf,
    /// JSON (`application/json`): OTLP's JSON mapping, Loki's JSON push body.
    Json,
}

/// TLS to a sink.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSinkTls {
    /// PEM CA certificates the sink's certificate must chain to (absolute path). Default: the
    /// system's bundle (`SSL_CERT_FILE`, else /etc/ssl/certs/ca-certificates.crt and the usual
    /// places).
    #[serde(default)]
    pub ca: Option<String>,
    /// PEM client certificate chain to present (mTLS; absolute path, with `key`).
    #[serde(default)]
    pub cert: Option<String>,
    /// PEM private key of `cert` (absolute path).
    #[serde(default)]
    pub key: Option<String>,
    /// The name the sink's certificate is verified against and sent as SNI (default: the URL's
    /// host).
    #[serde(default)]
    pub server_name: Option<String>,
}

/// Batching: a batch is delivered when it reaches `max_lines` or `max_bytes`, or `timeout` after
/// its first line.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLogBatch {
    /// Lines in a batch (default 1000, at least 1).
    #[serde(default)]
    pub max_lines: Option<usize>,
    /// Bytes of lines in a batch: a number or a size such as "1MiB" (default "1MiB", 1KiB to
    /// 64MiB). A single line longer than this makes a batch of its own.
    #[serde(default)]
    pub max_bytes: Option<NumberOrString>,
    /// Longest wait for a batch to fill (default "1s").
    #[serde(default)]
    pub timeout: Option<String>,
}

/// Multi-line joining: a record starts at a line matching `start`; the lines that follow and do
/// not match join it. It is shipped when the next start line comes, `timeout` after its last
/// line, or at `max_lines` or `max_bytes`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMultiline {
    /// A regular expression matching the first line of a record, e.g. `'^\d{4}-'`.
    pub start: String,
    /// How long a record waits for more lines (default "1s").
    #[serde(default)]
    pub timeout: Option<String>,
    /// Most lines in a record (default 500).
    #[serde(default)]
    pub max_lines: Option<usize>,
    /// Most bytes in a record (default "256KiB").
    #[serde(default)]
    pub max_bytes: Option<NumberOrString>,
}

/// Timestamp extraction.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTimestamp {
    /// The field holding the time (default `timestamp`).
    #[serde(default)]
    pub field: Option<String>,
    /// `rfc3339` (the default), `unix` (seconds, fractions allowed), `unix_ms`, or a strftime
    /// pattern such as `"%Y-%m-%d %H:%M:%S%.f"` (UTC unless it has `%z`; `%f` is fractional
    /// digits, `%.f` an optional `.` and digits).
    #[serde(default)]
    pub format: Option<String>,
}

/// Level extraction.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLevelRule {
    /// The field holding the level (default: `level`, else `lvl`, else `severity`).
    #[serde(default)]
    pub field: Option<String>,
    /// A regular expression over the message whose `level` capture (else first group) is the
    /// level, e.g. `'^\S+ (?P<level>[A-Z]+) '`.
    #[serde(default)]
    pub pattern: Option<String>,
}

/// Trace and span id extraction.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTraceRule {
    /// Fields holding the trace id (default `trace_id`, `traceId`, `traceid`, `trace.id`); a
    /// `traceparent` field is always read.
    #[serde(default)]
    pub fields: Option<Vec<String>>,
    /// Fields holding the span id (default `span_id`, `spanId`, `spanid`, `span.id`).
    #[serde(default)]
    pub span_fields: Option<Vec<String>>,
    /// A regular expression over the message with a `trace_id` capture (and optionally
    /// `span_id`), e.g. `'trace=(?P<trace_id>[0-9a-f]{32})'`.
    #[serde(default)]
    pub pattern: Option<String>,
}

/// Redaction.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRedact {
    /// Field names whose values are replaced, at any depth, compared without case (default:
    /// password, passwd, secret, token, access_token, refresh_token, api_key, apikey,
    /// authorization, cookie).
    #[serde(default)]
    pub keys: Option<Vec<String>>,
    /// Patterns replaced in the message and in string values: `bearer`, `credit_card` (13 to
    /// 19 digits passing the Luhn check), or a regular expression.
    #[serde(default)]
    pub patterns: Vec<String>,
    /// What replaces a secret (default `[REDACTED]`).
    #[serde(default)]
    pub marker: Option<String>,
}

/// Dropping by level.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDrop {
    /// Levels not shipped, e.g. `[trace, debug]`.
    pub levels: Vec<RawLevel>,
}

/// Sampling by level.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSample {
    /// The level sampled.
    pub level: RawLevel,
    /// Share shipped, above 0 and at most 1: one record in round(1/rate), counted per source.
    pub rate: f64,
}

/// A log level.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawLevel {
    /// trace
    Trace,
    /// debug
    Debug,
    /// info
    Info,
    /// warn
    Warn,
    /// error
    Error,
    /// fatal
    Fatal,
}
