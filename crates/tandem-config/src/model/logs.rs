//! The checked `logs:` section: what `tandem-logship` runs.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::humantime_serde_compat;

/// The name of the checkpoint file in `logs.checkpoint.dir`.
pub const CHECKPOINT_FILE: &str = "checkpoints.json";

/// Log shipping, checked.
#[derive(Clone, Debug, Serialize)]
pub struct Logs {
    /// Directory of the checkpoint file (absolute).
    pub checkpoint_dir: PathBuf,
    /// How often the checkpoint file is fsynced (it is rewritten after every delivery).
    #[serde(with = "humantime_serde_compat")]
    pub sync_interval: Duration,
    /// Bytes of lines in flight at once across all sources and sinks.
    pub memory_budget: usize,
    /// On shutdown, how long sinks may take to deliver what they hold.
    #[serde(with = "humantime_serde_compat")]
    pub flush_timeout: Duration,
    /// Labels added to every record, in file order (sources may add or override some).
    pub labels: Vec<(String, String)>,
    /// Sources in file order; names are unique.
    pub sources: Vec<LogSource>,
    /// Sinks in file order; names are unique.
    pub sinks: Vec<LogSink>,
}

/// A log source.
#[derive(Clone, Debug, Serialize)]
pub struct LogSource {
    /// Unique name, used in metrics and checkpoints.
    pub name: String,
    /// Where lines come from.
    pub kind: LogSourceKind,
    /// How a line becomes a record.
    pub parser: LogParser,
    /// Longest line in bytes; longer lines are split into pieces of this size.
    pub max_line_bytes: usize,
    /// The source's own labels (over `logs.labels`), in file order.
    pub labels: Vec<(String, String)>,
    /// Multi-line joining, when configured.
    pub multiline: Option<Multiline>,
    /// Extraction, redaction and filtering of records.
    pub shape: Shape,
}

/// A regular expression compiled once, when the config is checked; shown as its source.
#[derive(Clone, Debug)]
pub struct LogPattern(pub regex::Regex);

impl PartialEq for LogPattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for LogPattern {}

impl Serialize for LogPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

/// Multi-line joining: a record starts at a line matching `start`; following lines that do not
/// match join it.
#[derive(Clone, Debug, Serialize)]
pub struct Multiline {
    /// The first line of a record.
    pub start: LogPattern,
    /// A record is shipped this long after its last line when no new line came.
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
    /// Most lines in a record.
    pub max_lines: usize,
    /// Most bytes in a record (lines and the `\n` joining them).
    pub max_bytes: usize,
}

/// What happens to a record after parsing, in this order: extraction, redaction, filtering.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Shape {
    /// Timestamp extraction.
    pub timestamp: Option<TimestampRule>,
    /// Level extraction (fields `level`, `lvl`, `severity` when not configured).
    pub level: LevelRule,
    /// Trace and span id extraction.
    pub trace: TraceRule,
    /// Redaction.
    pub redact: Redact,
    /// Levels never shipped.
    pub drop_levels: Vec<LogLevel>,
    /// Records of `level` shipped one in `every`.
    pub sample: Option<Sample>,
}

/// Where the event time is.
#[derive(Clone, Debug, Serialize)]
pub struct TimestampRule {
    /// The field (removed from the fields once read).
    pub field: String,
    /// Its format.
    pub format: TimeFormat,
}

/// A timestamp format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    /// RFC 3339 (`2026-11-24T10:00:00.123Z`).
    Rfc3339,
    /// Seconds since the epoch (fractions allowed), a number or a string.
    Unix,
    /// Milliseconds since the epoch.
    UnixMs,
    /// A strftime pattern; UTC unless it has `%z`.
    Strftime(String),
}

/// Where the level is.
#[derive(Clone, Debug, Serialize)]
pub struct LevelRule {
    /// Fields looked up in order (removed once read).
    pub fields: Vec<String>,
    /// A pattern over the message: its `level` capture, else its first group, else the match.
    pub pattern: Option<LogPattern>,
}

impl Default for LevelRule {
    fn default() -> Self {
        LevelRule {
            fields: ["level", "lvl", "severity"].map(String::from).to_vec(),
            pattern: None,
        }
    }
}

/// Where trace and span ids are.
#[derive(Clone, Debug, Serialize)]
pub struct TraceRule {
    /// Trace id fields looked up in order (removed once read); `traceparent` is always read.
    pub fields: Vec<String>,
    /// Span id fields.
    pub span_fields: Vec<String>,
    /// A pattern over the message with `trace_id` (and `span_id`) captures.
    pub pattern: Option<LogPattern>,
}

impl Default for TraceRule {
    fn default() -> Self {
        TraceRule {
            fields: ["trace_id", "traceId", "traceid", "trace.id"]
                .map(String::from)
                .to_vec(),
            span_fields: ["span_id", "spanId", "spanid", "span.id"]
                .map(String::from)
                .to_vec(),
            pattern: None,
        }
    }
}

/// Redaction, before any sink sees a record.
#[derive(Clone, Debug, Serialize)]
pub struct Redact {
    /// Field names (lower case) whose values are replaced, at any depth.
    pub keys: Vec<String>,
    /// Patterns replaced in the message and string values.
    pub patterns: Vec<RedactPattern>,
    /// The replacement.
    pub marker: String,
}

/// The field names redacted when `redact.keys` is not given.
pub const DEFAULT_REDACT_KEYS: [&str; 10] = [
    "password",
    "passwd",
    "secret",
    "token",
    "access_token",
    "refresh_token",
    "api_key",
    "apikey",
    "authorization",
    "cookie",
];

impl Default for Redact {
    fn default() -> Self {
        Redact {
            keys: DEFAULT_REDACT_KEYS.map(String::from).to_vec(),
            patterns: Vec::new(),
            marker: "[REDACTED]".into(),
        }
    }
}

/// A redaction pattern.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RedactPattern {
    /// `Bearer <token>` (the token is replaced, the word kept).
    Bearer,
    /// 13 to 19 digits, optionally grouped by spaces or dashes, passing the Luhn check.
    CreditCard,
    /// A regular expression; every match is replaced.
    Regex(LogPattern),
}

/// Sampling of one level.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// The level sampled.
    pub level: LogLevel,
    /// One record in `every` is shipped (the first, then every `every`-th).
    pub every: u64,
}

/// A log level, as configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
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

/// Where a source's lines come from.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogSourceKind {
    /// Files matching glob patterns.
    File(FileSource),
    /// The supervised app's stdout and/or stderr, through pipes.
    Stdio(StdioSource),
    /// Tandem's access log lines, in process.
    AccessLog(StreamBuffer),
}

impl LogSourceKind {
    /// The file source's settings, for a file source.
    pub fn file(&self) -> Option<&FileSource> {
        match self {
            LogSourceKind::File(f) => Some(f),
            _ => None,
        }
    }
}

/// The supervised app's output streams.
#[derive(Clone, Debug, Serialize)]
pub struct StdioSource {
    /// Capture the app's stdout.
    pub stdout: bool,
    /// Capture the app's stderr.
    pub stderr: bool,
    /// The disk buffer.
    pub buffer: StreamBuffer,
}

/// How a source that cannot wait (the app's output, the access log) holds lines the sinks have
/// not taken yet: memory within `logs.memory_budget`, then a bounded disk buffer.
#[derive(Clone, Debug, Serialize)]
pub struct StreamBuffer {
    /// Most bytes of spilled lines on disk; beyond it lines are dropped and counted.
    pub disk_buffer: u64,
}

/// Files matching glob patterns.
#[derive(Clone, Debug, Serialize)]
pub struct FileSource {
    /// Absolute paths or glob patterns.
    pub paths: Vec<String>,
    /// Where to start in files found at the first start (no checkpoint for this source yet).
    pub start_at: StartAt,
    /// How often files are checked for new data once read to the end.
    #[serde(with = "humantime_serde_compat")]
    pub poll_interval: Duration,
    /// How often the patterns are expanded again to find new files.
    #[serde(with = "humantime_serde_compat")]
    pub scan_interval: Duration,
}

/// Where to start in a file found at the first start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StartAt {
    /// The whole file.
    Beginning,
    /// Only what is written from now on.
    End,
}

/// How a line becomes a record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogParser {
    /// The line is the message.
    Plain,
    /// One JSON object per line: `message` or `msg` is the message, the other members fields.
    Json,
    /// `key=value` pairs (values may be double-quoted): `msg` or `message` is the message.
    Logfmt,
    /// Named captures of a pattern are fields; a `message` (or `msg`) capture is the message.
    Regex(LogPattern),
}

/// A log sink.
#[derive(Clone, Debug, Serialize)]
pub struct LogSink {
    /// Unique name, used in metrics and logs.
    pub name: String,
    /// The sources it receives (every source when the file names none).
    pub sources: Vec<String>,
    /// Where the records go.
    pub kind: LogSinkKind,
    /// How records are grouped into deliveries.
    pub batch: LogBatch,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// First wait before retrying a failed delivery; doubles per retry, with jitter.
    #[serde(with = "humantime_serde_compat")]
    pub backoff: Duration,
    /// Longest wait between retries.
    #[serde(with = "humantime_serde_compat")]
    pub max_backoff: Duration,
}

/// Where a sink's records go.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogSinkKind {
    /// An HTTP sink: NDJSON, Loki, Elasticsearch or OTLP (boxed: far larger than the others).
    Http(Box<HttpLogSink>),
    /// Records appended to a file.
    File {
        /// Absolute path of the file.
        path: PathBuf,
        /// Size-based rotation; `None`: the file grows (rotated by an outside tool, if at all).
        rotate: Option<FileRotate>,
        /// What is written per record.
        format: LineFormat,
    },
    /// Records written to Tandem's stdout.
    Console {
        /// What is written per record.
        format: LineFormat,
    },
}

/// Size-based rotation of a file sink's file.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct FileRotate {
    /// Rotate before a batch would take the file past this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept: `PATH.1` (newest) to `PATH.keep`.
    pub keep: u32,
}

/// What a file or console sink writes per record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LineFormat {
    /// One JSON object per record.
    #[default]
    Ndjson,
    /// The record's message alone, one per line.
    Text,
}

/// An HTTP sink: NDJSON, Loki, Elasticsearch or OTLP.
#[derive(Clone, Debug, Serialize)]
pub struct HttpLogSink {
    /// What is sent, and how answers are read.
    pub api: HttpApi,
    /// `http(s)://host:port/path`, the API's path included.
    #[serde(serialize_with = "ser_uri")]
    pub url: http::Uri,
    /// Headers sent with every request (values are not shown by `GET /config`).
    #[serde(serialize_with = "ser_redacted_headers")]
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Gzip request bodies.
    pub gzip: bool,
    /// Bound on one request, from sending it to the end of the response.
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
    /// TLS settings for an `https` URL (`None` for `http`).
    pub tls: Option<SinkTls>,
}

/// The API an HTTP sink speaks.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpApi {
    /// NDJSON records.
    Ndjson,
    /// Loki's push API (JSON).
    Loki {
        /// The record labels that make a stream, in order; `None`: all of them.
        stream_labels: Option<Vec<String>>,
        /// Snappy-compressed protobuf `PushRequest` instead of JSON.
        protobuf: bool,
    },
    /// Elasticsearch's bulk API.
    Elasticsearch {
        /// Index (or data stream) name pattern: `%Y`, `%m`, `%d`, `%H` (UTC), `%%`.
        index: String,
        /// `create` operations into a data stream instead of `index` operations.
        data_stream: bool,
        /// Give each document a deterministic `_id` (from its source, file and offset).
        document_id: bool,
    },
    /// OTLP logs over HTTP: an `ExportLogsServiceRequest`.
    Otlp {
        /// OTLP/JSON instead of binary protobuf.
        json: bool,
        /// OTLP/gRPC (HTTP/2, the `LogsService/Export` method) instead of OTLP/HTTP.
        grpc: bool,
    },
}

/// TLS to a sink.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SinkTls {
    /// CA bundle (PEM); `None`: the system's.
    pub ca: Option<PathBuf>,
    /// Client certificate chain and key (PEM), for mTLS.
    pub client: Option<(PathBuf, PathBuf)>,
    /// Server name to verify and send as SNI; `None`: the URL's host.
    pub server_name: Option<String>,
}

/// When a batch is delivered: at `max_lines` or `max_bytes`, or `timeout` after its first line.
#[derive(Clone, Debug, Serialize)]
pub struct LogBatch {
    /// Lines in a batch.
    pub max_lines: usize,
    /// Bytes of lines in a batch (a single longer line makes a batch of its own).
    pub max_bytes: usize,
    /// Longest wait for a batch to fill.
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
}

impl Default for LogBatch {
    fn default() -> Self {
        LogBatch {
            max_lines: 1000,
            max_bytes: 1024 * 1024,
            timeout: Duration::from_secs(1),
        }
    }
}

fn ser_uri<S: serde::Serializer>(u: &http::Uri, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(u)
}

/// Header values often carry credentials (`authorization`); `GET /config` shows only the names.
fn ser_redacted_headers<S: serde::Serializer>(
    h: &[(http::HeaderName, http::HeaderValue)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(h.iter().map(|(k, _)| (k.as_str(), "<redacted>")))
}

/// Compiles a strftime pattern for parsing log timestamps: the `time` crate's strftime, plus
/// fractional seconds, which it lacks and logs are full of: `%f` (digits, required) and `%.f`
/// (a `.` and digits, optional, as in chrono). `%%` is a literal `%`.
pub fn strftime_format(pattern: &str) -> Result<time::format_description::OwnedFormatItem, String> {
    use time::format_description::{modifier, Component, OwnedFormatItem};
    let fraction =
        || OwnedFormatItem::Component(Component::Subsecond(modifier::Subsecond::default()));
    let mut items: Vec<OwnedFormatItem> = Vec::new();
    let mut piece = String::new();
    let flush = |piece: &mut String, items: &mut Vec<OwnedFormatItem>| -> Result<(), String> {
        if !piece.is_empty() {
            let item =
                time::format_description::parse_strftime_owned(piece).map_err(|e| e.to_string())?;
            items.push(item);
            piece.clear();
        }
        Ok(())
    };
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            piece.push(c);
            continue;
        }
        match chars.peek() {
            Some('f') => {
                chars.next();
                flush(&mut piece, &mut items)?;
                items.push(fraction());
            }
            Some('.') => {
                chars.next();
                if chars.peek() == Some(&'f') {
                    chars.next();
                    flush(&mut piece, &mut items)?;
                    items.push(OwnedFormatItem::Optional(Box::new(
                        OwnedFormatItem::Compound(Box::new([
                            OwnedFormatItem::StringLiteral(".".into()),
                            fraction(),
                        ])),
                    )));
                } else {
                    piece.push_str("%.");
                }
            }
            Some(&n) => {
                chars.next();
                piece.push('%');
                piece.push(n);
            }
            None => piece.push('%'),
        }
    }
    flush(&mut piece, &mut items)?;
    Ok(OwnedFormatItem::Compound(items.into_boxed_slice()))
}
