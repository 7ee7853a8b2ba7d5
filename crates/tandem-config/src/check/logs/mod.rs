//! Checks the `logs:` section: sources, sinks, checkpoint directory, memory budget.
//!
//! Like the rest of `check`, pure: paths are checked for form (absolute, a valid glob), never
//! looked up; creating the checkpoint directory and reading the checkpoint belong to
//! `tandem-logship` at start.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};

use super::{check_name, closest, fmt_duration, Checker};
use crate::model::*;
use crate::raw::*;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
const GIB: usize = 1024 * MIB;

/// Room for a few 1 MiB batches in flight; more buys no throughput (measured in
/// docs/benchmarks.md), only resident memory.
const DEFAULT_BUDGET: usize = 4 * MIB;

/// Headers the HTTP sink sets itself from the body it sends.
const RESERVED_HEADERS: [&str; 4] = [
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "host",
];

pub(super) fn check_logs(c: &mut Checker, raw: &RawLogs, has_access_log: bool) -> Logs {
    let labels = check_labels(c, "logs.labels", &raw.labels);

    let memory_budget = match &raw.memory_budget {
        None => DEFAULT_BUDGET,
        Some(v) => byte_size(c, "logs.memory_budget", v)
            .map(|n| bounded_size(c, "logs.memory_budget", n, MIB, 64 * GIB, DEFAULT_BUDGET))
            .unwrap_or(DEFAULT_BUDGET),
    };
    let flush_timeout = c.duration(
        "logs.flush_timeout",
        raw.flush_timeout.as_deref(),
        Duration::from_secs(5),
    );

    if raw.sources.is_empty() {
        c.err(
            "logs.sources",
            "no log sources",
            "add one, e.g. sources: { app: { paths: [/var/log/app/*.log] } }",
        );
    }
    let mut sources = Vec::with_capacity(raw.sources.len());
    for (name, s) in &raw.sources {
        sources.push(check_source(c, name, s));
    }
    check_stream_sources(c, &sources, has_access_log);

    let checkpoint_dir = match &raw.checkpoint {
        Some(cp) => absolute(c, "logs.checkpoint.dir", &cp.dir, "/var/lib/tandem/logs"),
        None => {
            if !sources.is_empty() {
                let message = if sources.iter().all(|s| s.kind.file().is_some()) {
                    "file sources need a checkpoint directory to remember how far each file was \
                     shipped"
                } else {
                    "log sources need a checkpoint directory: file sources keep their offsets \
                     there, stdio and access_log sources their disk buffer"
                };
                c.err(
                    "logs",
                    message,
                    "add `checkpoint: { dir: /var/lib/tandem/logs }` under `logs`",
                );
            }
            PathBuf::new()
        }
    };
    let sync_interval = c.duration(
        "logs.checkpoint.sync_interval",
        raw.checkpoint
            .as_ref()
            .and_then(|cp| cp.sync_interval.as_deref()),
        Duration::from_secs(1),
    );
    let checkpoint_file = checkpoint_dir.join(CHECKPOINT_FILE);
    for s in &sources {
        let Some(f) = s.kind.file() else { continue };
        if let Some(p) = f
            .paths
            .iter()
            .find(|p| pattern_matches(p, &checkpoint_file))
        {
            c.err(
                "logs.checkpoint.dir",
                format!(
                    "the checkpoint file {} matches `{p}` of source `{}`, so Tandem would ship \
                     its own checkpoints",
                    checkpoint_file.display(),
                    s.name
                ),
                "keep the checkpoint directory outside the log paths, e.g. /var/lib/tandem/logs",
            );
        }
    }

    if raw.sinks.is_empty() {
        c.err(
            "logs.sinks",
            "no log sinks",
            "add one, e.g. sinks: { central: { type: http, url: http://logs.internal:8080/ingest } }",
        );
    }
    let source_names: Vec<&str> = raw.sources.keys().map(String::as_str).collect();
    let mut sinks = Vec::with_capacity(raw.sinks.len());
    for (name, s) in &raw.sinks {
        sinks.push(check_sink(c, name, s, &source_names, &sources));
    }
    if !sinks.is_empty() {
        for s in &sources {
            if !sinks.iter().any(|k| k.sources.contains(&s.name)) {
                c.err(
                    format!("logs.sources.{}", s.name),
                    format!("no sink receives source `{}`", s.name),
                    "add it to a sink's `sources`, or remove `sources` from a sink to send it \
                     every source",
                );
            }
        }
    }

    Logs {
        checkpoint_dir,
        sync_interval,
        memory_budget,
        flush_timeout,
        labels,
        sources,
        sinks,
    }
}

/// Adds `service` and `instance` to `logs.labels` unless they are given there, so that logs join
/// traces and the service registry: `service` is `tracing.service_name`, else the registered
/// service; `instance` is the registered instance id, else its advertised address.
pub(super) fn identity_labels(
    logs: &mut Logs,
    tracing: Option<&Tracing>,
    registration: Option<&Registration>,
) {
    let service = tracing
        .map(|t| t.service_name.as_str())
        .or(registration.map(|r| r.service.as_str()));
    let instance = registration.and_then(|r| r.id.as_deref().or(r.address.as_deref()));
    for (key, value) in [("service", service), ("instance", instance)] {
        if let Some(v) = value {
            if !logs.labels.iter().any(|(k, _)| k == key) {
                logs.labels.push((key.to_owned(), v.to_owned()));
            }
        }
    }
}

fn check_source(c: &mut Checker, name: &str, s: &RawLogSource) -> LogSource {
    let key = format!("logs.sources.{name}");
    check_name(c, &key, name);
    let kind = s.kind.unwrap_or(RawLogSourceType::File);
    if !matches!(kind, RawLogSourceType::File) {
        return check_stream_source(c, &key, name, s, kind);
    }
    for (field, present) in [
        ("streams", s.streams.is_some()),
        ("disk_buffer", s.disk_buffer.is_some()),
    ] {
        if present {
            c.err(
                format!("{key}.{field}"),
                format!("`{field}` does not apply to a file source"),
                "remove it; it is a key of `type: stdio` (and, for disk_buffer, `type: \
                 access_log`) sources: a file source needs no buffer, the file is one",
            );
        }
    }
    if s.paths.is_empty() {
        c.err(
            &key,
            "a file source needs `paths`",
            "add `paths: [/var/log/app/*.log]` (absolute paths or glob patterns)",
        );
    }
    for (i, p) in s.paths.iter().enumerate() {
        let pkey = format!("{key}.paths[{i}]");
        if !Path::new(p).is_absolute() {
            c.err(
                &pkey,
                format!("`{p}` is not an absolute path"),
                format!(
                    "start it at the root, e.g. /var/log/app/{}; a relative path would depend \
                     on the directory Tandem was started in",
                    p.trim_start_matches("./")
                ),
            );
        } else if let Err(e) = glob::Pattern::new(p) {
            c.err(
                &pkey,
                format!(
                    "`{p}` is not a valid glob pattern: {} at character {}",
                    e.msg, e.pos
                ),
                "use * and ? within a name, ** for any depth, [abc] for a set, e.g. \
                 /var/log/app/*.log",
            );
        }
    }
    let max_line_bytes = check_max_line_bytes(c, &key, s);
    LogSource {
        name: name.to_owned(),
        kind: LogSourceKind::File(FileSource {
            paths: s.paths.clone(),
            start_at: match s.start_at {
                Some(RawStartAt::End) => StartAt::End,
                Some(RawStartAt::Beginning) | None => StartAt::Beginning,
            },
            poll_interval: c.duration(
                &format!("{key}.poll_interval"),
                s.poll_interval.as_deref(),
                Duration::from_millis(250),
            ),
            scan_interval: c.duration(
                &format!("{key}.scan_interval"),
                s.scan_interval.as_deref(),
                Duration::from_secs(1),
            ),
        }),
        parser: check_parser(c, &key, s),
        max_line_bytes,
        labels: check_labels(c, &format!("{key}.labels"), &s.labels),
        multiline: s
            .multiline
            .as_ref()
            .and_then(|m| check_multiline(c, &format!("{key}.multiline"), m)),
        shape: check_shape(c, &key, s),
    }
}

/// Default `disk_buffer` of stdio and access_log sources.
const DEFAULT_DISK_BUFFER: usize = 256 * MIB;

/// A `stdio` or `access_log` source: lines that come whether or not the sinks keep up.
fn check_stream_source(
    c: &mut Checker,
    key: &str,
    name: &str,
    s: &RawLogSource,
    kind: RawLogSourceType,
) -> LogSource {
    let type_name = match kind {
        RawLogSourceType::Stdio => "stdio",
        _ => "access_log",
    };
    for (field, present) in [
        ("paths", !s.paths.is_empty()),
        ("start_at", s.start_at.is_some()),
        ("poll_interval", s.poll_interval.is_some()),
        ("scan_interval", s.scan_interval.is_some()),
        (
            "streams",
            s.streams.is_some() && !matches!(kind, RawLogSourceType::Stdio),
        ),
    ] {
        if present {
            c.err(
                format!("{key}.{field}"),
                format!("`{field}` does not apply to a {type_name} source"),
                "remove it; it is a key of file sources (`type: file`)",
            );
        }
    }
    let dkey = format!("{key}.disk_buffer");
    let disk_buffer = match &s.disk_buffer {
        None => DEFAULT_DISK_BUFFER,
        Some(v) => byte_size(c, &dkey, v)
            .map(|n| bounded_size(c, &dkey, n, 64 * KIB, 1024 * GIB, DEFAULT_DISK_BUFFER))
            .unwrap_or(DEFAULT_DISK_BUFFER),
    };
    let buffer = StreamBuffer {
        disk_buffer: disk_buffer as u64,
    };
    let kind = match kind {
        RawLogSourceType::Stdio => {
            let streams = s
                .streams
                .clone()
                .unwrap_or_else(|| vec![RawStdStream::Stdout, RawStdStream::Stderr]);
            if streams.is_empty() {
                c.err(
                    format!("{key}.streams"),
                    "the list is empty, so this source would capture nothing",
                    "remove `streams` to capture both, or name one: [stdout] or [stderr]",
                );
            }
            LogSourceKind::Stdio(StdioSource {
                stdout: streams.contains(&RawStdStream::Stdout),
                stderr: streams.contains(&RawStdStream::Stderr),
                buffer,
            })
        }
        _ => LogSourceKind::AccessLog(buffer),
    };
    let max_line_bytes = check_max_line_bytes(c, key, s);
    // Access log lines are JSON objects: parsed by default, so their members become fields.
    let parser = match (&kind, s.parser) {
        (LogSourceKind::AccessLog(_), None) => LogParser::Json,
        _ => check_parser(c, key, s),
    };
    LogSource {
        name: name.to_owned(),
        kind,
        parser,
        max_line_bytes,
        labels: check_labels(c, &format!("{key}.labels"), &s.labels),
        // Joined per stream (stdout and stderr each have their own records), in memory before
        // the disk buffer: see tandem-logship's source/stream.rs.
        multiline: s
            .multiline
            .as_ref()
            .and_then(|m| check_multiline(c, &format!("{key}.multiline"), m)),
        shape: check_shape(c, key, s),
    }
}

/// A source's `max_line_bytes`: 256 bytes to 16 MiB, default 64 KiB.
fn check_max_line_bytes(c: &mut Checker, key: &str, s: &RawLogSource) -> usize {
    match s.max_line_bytes {
        None => 64 * KIB,
        Some(n) => bounded_size(
            c,
            &format!("{key}.max_line_bytes"),
            n,
            256,
            16 * MIB,
            64 * KIB,
        ),
    }
}

/// At most one stdio and one access_log source (each stream has one reader); an access_log
/// source needs the access log on.
fn check_stream_sources(c: &mut Checker, sources: &[LogSource], has_access_log: bool) {
    let stdio: Vec<&str> = sources
        .iter()
        .filter(|s| matches!(s.kind, LogSourceKind::Stdio(_)))
        .map(|s| s.name.as_str())
        .collect();
    if let [_, second, ..] = stdio.as_slice() {
        c.err(
            format!("logs.sources.{second}"),
            format!("a second stdio source (`{}` is the first)", stdio[0]),
            "keep one stdio source; it captures both streams, and its records carry \
             `stream: stdout|stderr`",
        );
    }
    let access: Vec<&str> = sources
        .iter()
        .filter(|s| matches!(s.kind, LogSourceKind::AccessLog(_)))
        .map(|s| s.name.as_str())
        .collect();
    if let [_, second, ..] = access.as_slice() {
        c.err(
            format!("logs.sources.{second}"),
            format!("a second access_log source (`{}` is the first)", access[0]),
            "keep one access_log source",
        );
    }
    if let (Some(first), false) = (access.first(), has_access_log) {
        c.err(
            format!("logs.sources.{first}.type"),
            "an access_log source needs the access log on",
            "add a top-level `access_log: {}` (its lines go to its own output too: stdout, or \
             `path: /var/log/tandem/access.log`)",
        );
    }
}

fn check_parser(c: &mut Checker, key: &str, s: &RawLogSource) -> LogParser {
    let parser = s.parser.unwrap_or(RawLogParser::Plain);
    if let (Some(_), false) = (&s.pattern, matches!(parser, RawLogParser::Regex)) {
        c.err(
            format!("{key}.pattern"),
            "`pattern` is only used by the regex parser",
            "add `parser: regex`, or remove `pattern`",
        );
    }
    match parser {
        RawLogParser::Plain => LogParser::Plain,
        RawLogParser::Json => LogParser::Json,
        RawLogParser::Logfmt => LogParser::Logfmt,
        RawLogParser::Regex => {
            let Some(p) = &s.pattern else {
                c.err(
                    key,
                    "the regex parser needs a `pattern`",
                    "add e.g. `pattern: '^(?P<ts>\\S+) (?P<level>\\w+) (?P<message>.*)$'` (named \
                     captures become fields)",
                );
                return LogParser::Plain;
            };
            let Some(re) = pattern(c, &format!("{key}.pattern"), p) else {
                return LogParser::Plain;
            };
            if re.0.capture_names().flatten().next().is_none() {
                c.err(
                    format!("{key}.pattern"),
                    format!("`{p}` has no named capture, so it would extract nothing"),
                    "name the parts to keep, e.g. `(?P<level>\\w+)`; `(?P<message>...)` is the \
                     message",
                );
            }
            LogParser::Regex(re)
        }
    }
}

/// Compiles a regular expression, or reports it at `key` with the compiler's reason.
fn pattern(c: &mut Checker, key: &str, raw: &str) -> Option<LogPattern> {
    match regex::Regex::new(raw) {
        Ok(re) => Some(LogPattern(re)),
        Err(e) => {
            let why = match &e {
                regex::Error::Syntax(s) => s.lines().last().unwrap_or("syntax error").to_owned(),
                other => other.to_string(),
            };
            c.err(
                key,
                format!("`{raw}` is not a valid regular expression: {why}"),
                "use Rust regex syntax (https://docs.rs/regex/#syntax); in YAML, single-quote it \
                 so backslashes stay as written: '^\\d{4}-'",
            );
            None
        }
    }
}

/// None when `start` is not a valid pattern (reported).
fn check_multiline(c: &mut Checker, key: &str, m: &RawMultiline) -> Option<Multiline> {
    let start = pattern(c, &format!("{key}.start"), &m.start);
    let max_lines = match m.max_lines {
        None => 500,
        Some(n) if (1..=100_000).contains(&n) => n,
        Some(n) => {
            c.err(
                format!("{key}.max_lines"),
                format!("{n} is out of range"),
                "use 1 to 100000 (default 500)",
            );
            500
        }
    };
    let max_bytes = match &m.max_bytes {
        None => 256 * KIB,
        Some(v) => byte_size(c, &format!("{key}.max_bytes"), v)
            .map(|n| bounded_size(c, &format!("{key}.max_bytes"), n, 256, 16 * MIB, 256 * KIB))
            .unwrap_or(256 * KIB),
    };
    let timeout = c.duration(
        &format!("{key}.timeout"),
        m.timeout.as_deref(),
        Duration::from_secs(1),
    );
    Some(Multiline {
        start: start?,
        timeout,
        max_lines,
        max_bytes,
    })
}

fn level(l: RawLevel) -> LogLevel {
    match l {
        RawLevel::Trace => LogLevel::Trace,
        RawLevel::Debug => LogLevel::Debug,
        RawLevel::Info => LogLevel::Info,
        RawLevel::Warn => LogLevel::Warn,
        RawLevel::Error => LogLevel::Error,
        RawLevel::Fatal => LogLevel::Fatal,
    }
}

fn check_shape(c: &mut Checker, key: &str, s: &RawLogSource) -> Shape {
    let mut shape = Shape::default();
    if let Some(t) = &s.timestamp {
        let fkey = format!("{key}.timestamp.format");
        let format = match t.format.as_deref().map(str::trim) {
            None | Some("rfc3339") => TimeFormat::Rfc3339,
            Some("unix") => TimeFormat::Unix,
            Some("unix_ms") => TimeFormat::UnixMs,
            Some(f) if f.contains('%') => {
                if let Err(e) = strftime_format(f) {
                    c.err(
                        &fkey,
                        format!("`{f}` is not a valid strftime pattern: {e}"),
                        "use e.g. \"%Y-%m-%d %H:%M:%S%.f\" or \"%d/%b/%Y:%H:%M:%S %z\"",
                    );
                }
                TimeFormat::Strftime(f.to_owned())
            }
            Some(f) => {
                c.err(
                    &fkey,
                    format!("unknown timestamp format `{f}`"),
                    "use rfc3339, unix, unix_ms, or a strftime pattern with % (e.g. \
                     \"%Y-%m-%d %H:%M:%S\")",
                );
                TimeFormat::Rfc3339
            }
        };
        shape.timestamp = Some(TimestampRule {
            field: t.field.clone().unwrap_or_else(|| "timestamp".into()),
            format,
        });
    }
    if let Some(l) = &s.level {
        if let Some(f) = &l.field {
            shape.level.fields = vec![f.clone()];
        }
        if let Some(p) = &l.pattern {
            shape.level.pattern = pattern(c, &format!("{key}.level.pattern"), p);
        }
    }
    if let Some(t) = &s.trace {
        if let Some(f) = &t.fields {
            shape.trace.fields = f.clone();
        }
        if let Some(f) = &t.span_fields {
            shape.trace.span_fields = f.clone();
        }
        if let Some(p) = &t.pattern {
            let pkey = format!("{key}.trace.pattern");
            shape.trace.pattern = pattern(c, &pkey, p);
            if let Some(re) = &shape.trace.pattern {
                if !re.0.capture_names().flatten().any(|n| n == "trace_id") {
                    c.err(
                        &pkey,
                        format!("`{p}` has no `trace_id` capture"),
                        "name the id, e.g. 'trace=(?P<trace_id>[0-9a-f]{32})'",
                    );
                }
            }
        }
    }
    if let Some(r) = &s.redact {
        if let Some(keys) = &r.keys {
            shape.redact.keys = keys.iter().map(|k| k.to_ascii_lowercase()).collect();
        }
        for (i, p) in r.patterns.iter().enumerate() {
            let pkey = format!("{key}.redact.patterns[{i}]");
            match p.as_str() {
                "bearer" => shape.redact.patterns.push(RedactPattern::Bearer),
                "credit_card" => shape.redact.patterns.push(RedactPattern::CreditCard),
                _ => {
                    if let Some(re) = pattern(c, &pkey, p) {
                        if re.0.is_match("") {
                            c.err(
                                &pkey,
                                format!(
                                    "`{p}` matches the empty string, so it would mark every \
                                         position"
                                ),
                                "make it match at least one character",
                            );
                        }
                        shape.redact.patterns.push(RedactPattern::Regex(re));
                    }
                }
            }
        }
        if let Some(m) = &r.marker {
            shape.redact.marker = m.clone();
        }
    }
    if let Some(d) = &s.drop {
        shape.drop_levels = d.levels.iter().map(|l| level(*l)).collect();
    }
    if let Some(smp) = &s.sample {
        let skey = format!("{key}.sample.rate");
        let every = if smp.rate > 0.0 && smp.rate <= 1.0 {
            // One in round(1/rate): 0.1 -> 10, 0.3 -> 3.
            (1.0 / smp.rate).round().max(1.0) as u64
        } else {
            c.err(
                &skey,
                format!("{} is not a share", smp.rate),
                "use a number above 0 and at most 1, e.g. 0.1 to ship one record in ten",
            );
            1
        };
        if s.drop
            .as_ref()
            .is_some_and(|d| d.levels.contains(&smp.level))
        {
            c.err(
                format!("{key}.sample.level"),
                "this level is also in `drop.levels`, so sampling it does nothing",
                "remove it from one of them",
            );
        }
        shape.sample = Some(Sample {
            level: level(smp.level),
            every,
        });
    }
    shape
}

fn check_sink(
    c: &mut Checker,
    name: &str,
    s: &RawLogSink,
    source_names: &[&str],
    sources: &[LogSource],
) -> LogSink {
    let key = format!("logs.sinks.{name}");
    check_name(c, &key, name);
    let type_name = sink_type_name(s.kind);
    // Keys that belong to another sink type are mistakes, not settings to ignore.
    const HTTP: &[RawLogSinkType] = &[
        RawLogSinkType::Http,
        RawLogSinkType::Loki,
        RawLogSinkType::Elasticsearch,
        RawLogSinkType::Otlp,
    ];
    const ES: &[RawLogSinkType] = &[RawLogSinkType::Elasticsearch];
    let given: &[(&str, bool, &[RawLogSinkType])] = &[
        ("url", s.url.is_some(), HTTP),
        ("headers", !s.headers.is_empty(), HTTP),
        ("gzip", s.gzip.is_some(), HTTP),
        ("timeout", s.timeout.is_some(), HTTP),
        ("tls", s.tls.is_some(), HTTP),
        ("tenant", s.tenant.is_some(), &[RawLogSinkType::Loki]),
        (
            "stream_labels",
            s.stream_labels.is_some(),
            &[RawLogSinkType::Loki],
        ),
        ("index", s.index.is_some(), ES),
        ("data_stream", s.data_stream.is_some(), ES),
        ("document_id", s.document_id.is_some(), ES),
        ("username", s.username.is_some(), ES),
        ("password", s.password.is_some(), ES),
        ("api_key", s.api_key.is_some(), ES),
        (
            "encoding",
            s.encoding.is_some(),
            &[RawLogSinkType::Otlp, RawLogSinkType::Loki],
        ),
        ("path", s.path.is_some(), &[RawLogSinkType::File]),
        ("rotate", s.rotate.is_some(), &[RawLogSinkType::File]),
        (
            "format",
            s.format.is_some(),
            &[RawLogSinkType::File, RawLogSinkType::Console],
        ),
        ("protocol", s.protocol.is_some(), &[RawLogSinkType::Otlp]),
    ];
    for &(field, present, types) in given {
        if present && !types.iter().any(|t| same_type(*t, s.kind)) {
            c.err(
                format!("{key}.{field}"),
                format!("`{field}` does not apply to a {type_name} sink"),
                format!(
                    "remove it; `{field}` is a key of {} sinks",
                    types
                        .iter()
                        .map(|t| sink_type_name(*t))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
    }

    let kind = match s.kind {
        RawLogSinkType::Http
        | RawLogSinkType::Loki
        | RawLogSinkType::Elasticsearch
        | RawLogSinkType::Otlp => LogSinkKind::Http(Box::new(check_http_sink(c, &key, s))),
        RawLogSinkType::File => {
            let path = match &s.path {
                Some(p) => absolute(c, &format!("{key}.path"), p, "/var/log/tandem/out.ndjson"),
                None => {
                    c.err(
                        &key,
                        "a file sink needs a `path`",
                        "add `path: /var/log/tandem/out.ndjson`",
                    );
                    PathBuf::new()
                }
            };
            for src in sources {
                let Some(f) = src.kind.file() else { continue };
                if let Some(p) = f.paths.iter().find(|p| pattern_matches(p, &path)) {
                    c.err(
                        format!("{key}.path"),
                        format!(
                            "{} matches `{p}` of source `{}`: Tandem would read back what it \
                             writes, without end",
                            path.display(),
                            src.name
                        ),
                        "write the sink's file outside the paths the sources read",
                    );
                }
            }
            let rotate = s.rotate.as_ref().map(|r| {
                let rkey = format!("{key}.rotate");
                let max_bytes = match &r.max_bytes {
                    None => 100 * MIB,
                    Some(v) => byte_size(c, &format!("{rkey}.max_bytes"), v)
                        .map(|n| {
                            bounded_size(
                                c,
                                &format!("{rkey}.max_bytes"),
                                n,
                                64 * KIB,
                                1 << 40,
                                100 * MIB,
                            )
                        })
                        .unwrap_or(100 * MIB),
                };
                let keep = match r.keep {
                    None => 5,
                    Some(n) if (1..=1000).contains(&n) => n,
                    Some(n) => {
                        c.err(
                            format!("{rkey}.keep"),
                            format!("{n} is out of range"),
                            "keep 1 to 1000 rotated files (default 5)",
                        );
                        5
                    }
                };
                FileRotate {
                    max_bytes: max_bytes as u64,
                    keep,
                }
            });
            LogSinkKind::File {
                path,
                rotate,
                format: line_format(s.format),
            }
        }
        RawLogSinkType::Console => LogSinkKind::Console {
            format: line_format(s.format),
        },
    };

    let sink_sources = match &s.sources {
        None => source_names.iter().map(|s| (*s).to_owned()).collect(),
        Some(list) => {
            if list.is_empty() {
                c.err(
                    format!("{key}.sources"),
                    "the list is empty, so this sink would receive nothing",
                    "remove `sources` to receive every source, or name some",
                );
            }
            let mut seen = HashSet::new();
            for (i, src) in list.iter().enumerate() {
                let skey = format!("{key}.sources[{i}]");
                if !source_names.contains(&src.as_str()) {
                    let suggestion = closest(src, source_names.iter().copied())
                        .map(|s| format!("did you mean \"{s}\"? "))
                        .unwrap_or_default();
                    let known = if source_names.is_empty() {
                        "there are no sources; add one under `logs.sources`".to_owned()
                    } else {
                        format!("known sources: {}", source_names.join(", "))
                    };
                    c.err(
                        &skey,
                        format!("unknown source `{src}`"),
                        format!("{suggestion}{known}"),
                    );
                } else if !seen.insert(src.as_str()) {
                    c.err(&skey, format!("`{src}` is listed twice"), "remove one");
                }
            }
            let mut out: Vec<String> = Vec::new();
            for src in list {
                if source_names.contains(&src.as_str()) && !out.contains(src) {
                    out.push(src.clone());
                }
            }
            out
        }
    };

    let rb = s.batch.as_ref();
    let d = LogBatch::default();
    let max_lines = match rb.and_then(|b| b.max_lines) {
        Some(0) => {
            c.err(
                format!("{key}.batch.max_lines"),
                "a batch of 0 lines holds nothing",
                format!("use 1 to 1000000 (default {})", d.max_lines),
            );
            d.max_lines
        }
        Some(n) if n > 1_000_000 => {
            c.err(
                format!("{key}.batch.max_lines"),
                format!("{n} lines is more than the maximum of 1000000"),
                "use a smaller batch; `max_bytes` bounds a batch's memory anyway",
            );
            d.max_lines
        }
        Some(n) => n,
        None => d.max_lines,
    };
    let bkey = format!("{key}.batch.max_bytes");
    let max_bytes = match rb.and_then(|b| b.max_bytes.as_ref()) {
        None => d.max_bytes,
        Some(v) => byte_size(c, &bkey, v)
            .map(|n| bounded_size(c, &bkey, n, KIB, 64 * MIB, d.max_bytes))
            .unwrap_or(d.max_bytes),
    };
    let batch = LogBatch {
        max_lines,
        max_bytes,
        timeout: c.duration(
            &format!("{key}.batch.timeout"),
            rb.and_then(|b| b.timeout.as_deref()),
            d.timeout,
        ),
    };

    let concurrency = match s.concurrency {
        Some(n @ 1..=64) => n,
        Some(n) => {
            c.err(
                format!("{key}.concurrency"),
                format!("{n} is out of range"),
                "use 1 to 64 deliveries in flight (default 1); each one in flight may be sent \
                 again after a crash",
            );
            1
        }
        None => 1,
    };
    let backoff = c.duration(
        &format!("{key}.backoff"),
        s.backoff.as_deref(),
        Duration::from_millis(100),
    );
    let max_backoff = c.duration(
        &format!("{key}.max_backoff"),
        s.max_backoff.as_deref(),
        Duration::from_secs(30),
    );
    if max_backoff < backoff {
        let which = if s.max_backoff.is_some() {
            "max_backoff"
        } else {
            "backoff"
        };
        c.err(
            format!("{key}.{which}"),
            format!(
                "max_backoff {} is shorter than backoff {}",
                fmt_duration(max_backoff),
                fmt_duration(backoff)
            ),
            "waits start at `backoff` and double up to `max_backoff`: make max_backoff at least \
             backoff",
        );
    }

    LogSink {
        name: name.to_owned(),
        sources: sink_sources,
        kind,
        batch,
        concurrency,
        backoff,
        max_backoff,
    }
}

fn same_type(a: RawLogSinkType, b: RawLogSinkType) -> bool {
    std::mem::discriminant(&a) == std::mem::discriminant(&b)
}

fn sink_type_name(t: RawLogSinkType) -> &'static str {
    match t {
        RawLogSinkType::Http => "http",
        RawLogSinkType::Loki => "loki",
        RawLogSinkType::Elasticsearch => "elasticsearch",
        RawLogSinkType::Otlp => "otlp",
        RawLogSinkType::File => "file",
        RawLogSinkType::Console => "console",
    }
}

/// The URL of an OTLP/gRPC sink: `http(s)://host:port`, to which the method's path is added.
fn grpc_url(c: &mut Checker, key: &str, url: Uri) -> Uri {
    if !matches!(url.path(), "" | "/") || url.query().is_some() {
        c.err(
            key,
            format!("`{url}` has a path; an OTLP/gRPC endpoint is a host and port"),
            "use e.g. http://otel-collector.internal:4317 (the LogsService/Export method is \
             added)",
        );
    }
    let mut parts = url.clone().into_parts();
    parts.path_and_query = Some(http::uri::PathAndQuery::from_static(
        "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    ));
    Uri::from_parts(parts).unwrap_or(url)
}

fn check_url(c: &mut Checker, key: &str, raw: Option<&str>, example: &str) -> Uri {
    let fallback = Uri::from_static("http://127.0.0.1/");
    let Some(raw) = raw else {
        c.err(
            key,
            "this sink needs a `url`",
            format!("add `url: {example}`"),
        );
        return fallback;
    };
    let uri = match raw.trim().parse::<Uri>() {
        Ok(u) => u,
        Err(e) => {
            c.err(
                key,
                format!("`{raw}` is not a URL ({e})"),
                "use http://host:port/path, e.g. http://127.0.0.1:9880/ingest",
            );
            return fallback;
        }
    };
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            c.err(
                key,
                format!("`{raw}` has no http:// scheme"),
                format!(
                    "write it as http://{0} (or https://{0})",
                    raw.trim().trim_start_matches("//")
                ),
            );
            return fallback;
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        c.err(
            key,
            format!("`{raw}` has no host"),
            "use http://host:port/path",
        );
        return fallback;
    }
    uri
}

/// The keys of the HTTP-based sinks: url (with the API's path), headers (with the tenant or
/// credentials), gzip, timeout, TLS.
fn check_http_sink(c: &mut Checker, key: &str, s: &RawLogSink) -> HttpLogSink {
    let (example, api_path) = match s.kind {
        RawLogSinkType::Loki => ("http://loki.internal:3100", "/loki/api/v1/push"),
        RawLogSinkType::Elasticsearch => ("https://es.internal:9200", "/_bulk"),
        RawLogSinkType::Otlp => ("http://otel-collector.internal:4318", "/v1/logs"),
        _ => ("http://logs.internal:8080/ingest", ""),
    };
    let grpc =
        matches!(s.kind, RawLogSinkType::Otlp) && s.protocol == Some(RawLogOtlpProtocol::Grpc);
    let example = if grpc {
        "http://otel-collector.internal:4317"
    } else {
        example
    };
    let url = check_url(c, &format!("{key}.url"), s.url.as_deref(), example);
    let url = if grpc {
        grpc_url(c, &format!("{key}.url"), url)
    } else {
        with_api_path(url, s.kind, api_path)
    };
    let mut headers = check_headers(c, &format!("{key}.headers"), s);

    let api = match s.kind {
        RawLogSinkType::Loki => {
            if let Some(t) = &s.tenant {
                match HeaderValue::from_str(t.trim()) {
                    Ok(v) if !t.trim().is_empty() => {
                        headers.push((HeaderName::from_static("x-scope-orgid"), v));
                    }
                    _ => c.err(
                        format!("{key}.tenant"),
                        "the tenant is empty or has characters not allowed in a header",
                        "use the Loki tenant ID, e.g. tenant: team-a",
                    ),
                }
            }
            let stream_labels = s.stream_labels.as_ref().map(|list| {
                if list.is_empty() {
                    c.err(
                        format!("{key}.stream_labels"),
                        "the list is empty: every record would go to one stream without labels, \
                         which Loki refuses",
                        "remove `stream_labels` to use every record label, or name some, e.g. \
                         [service, host]",
                    );
                }
                let mut out: Vec<String> = Vec::new();
                for (i, l) in list.iter().enumerate() {
                    if !valid_label(l) {
                        c.err(
                            format!("{key}.stream_labels[{i}]"),
                            format!("`{l}` is not a valid label name"),
                            "use letters, digits and '_', starting with a letter, e.g. service",
                        );
                    } else if out.contains(l) {
                        c.err(
                            format!("{key}.stream_labels[{i}]"),
                            format!("`{l}` is listed twice"),
                            "remove one",
                        );
                    } else {
                        out.push(l.clone());
                    }
                }
                out
            });
            let protobuf = matches!(s.encoding, Some(RawOtlpEncoding::Protobuf));
            if protobuf && s.gzip == Some(true) {
                c.err(
                    format!("{key}.gzip"),
                    "Loki's protobuf pushes are snappy-compressed; gzip cannot be added to them",
                    "remove `gzip`, or use `encoding: json` to gzip JSON pushes",
                );
            }
            HttpApi::Loki {
                stream_labels,
                protobuf,
            }
        }
        RawLogSinkType::Elasticsearch => {
            let data_stream = s.data_stream.unwrap_or(false);
            let index = s
                .index
                .clone()
                .unwrap_or_else(|| "logs-%Y.%m.%d".to_owned());
            check_index(c, &format!("{key}.index"), &index);
            let header_given = s
                .headers
                .keys()
                .any(|k| k.trim().eq_ignore_ascii_case("authorization"));
            match (&s.username, &s.password, &s.api_key) {
                (None, None, None) => {}
                _ if header_given => c.err(
                    format!("{key}.headers.authorization"),
                    "an `authorization` header and Elasticsearch credentials are both given",
                    "keep one: the header, or `api_key` / `username` and `password`",
                ),
                (None, None, Some(k)) => {
                    match HeaderValue::from_str(&format!("ApiKey {}", k.trim())) {
                        Ok(mut v) if !k.trim().is_empty() => {
                            v.set_sensitive(true);
                            headers.push((http::header::AUTHORIZATION, v));
                        }
                        _ => c.err(
                            format!("{key}.api_key"),
                            "the API key is empty or has characters not allowed in a header",
                            "use the `encoded` value Elasticsearch returned when the key was \
                             created",
                        ),
                    }
                }
                (Some(u), Some(p), None) => {
                    let basic = format!("Basic {}", base64(format!("{u}:{p}").as_bytes()));
                    // Base64 is always a valid header value.
                    if let Ok(mut v) = HeaderValue::from_str(&basic) {
                        v.set_sensitive(true);
                        headers.push((http::header::AUTHORIZATION, v));
                    }
                }
                (_, _, Some(_)) => c.err(
                    format!("{key}.api_key"),
                    "both an API key and a user name/password are given",
                    "keep one: `api_key`, or `username` and `password`",
                ),
                (Some(_), None, None) => c.err(
                    format!("{key}.username"),
                    "a user name without a password",
                    "add `password`",
                ),
                (None, Some(_), None) => c.err(
                    format!("{key}.password"),
                    "a password without a user name",
                    "add `username`",
                ),
            }
            HttpApi::Elasticsearch {
                index,
                data_stream,
                document_id: s.document_id != Some(RawDocumentId::None),
            }
        }
        RawLogSinkType::Otlp => HttpApi::Otlp {
            json: {
                let json = matches!(s.encoding, Some(RawOtlpEncoding::Json));
                if json && grpc {
                    c.err(
                        format!("{key}.encoding"),
                        "OTLP/gRPC carries protobuf only; `encoding: json` is for OTLP/HTTP",
                        "remove `encoding`, or use `protocol: http` to send OTLP/JSON",
                    );
                }
                json && !grpc
            },
            grpc,
        },
        _ => HttpApi::Ndjson,
    };

    let https = url.scheme_str() == Some("https");
    let tls = match (&s.tls, https) {
        (Some(_), false) => {
            c.err(
                format!("{key}.tls"),
                "`tls` is given but the URL is http://",
                "use an https:// URL, or remove `tls`",
            );
            None
        }
        (None, true) => Some(SinkTls::default()),
        (None, false) => None,
        (Some(t), true) => Some(check_sink_tls(c, &format!("{key}.tls"), t)),
    };
    HttpLogSink {
        api,
        url,
        headers,
        gzip: s.gzip.unwrap_or(false),
        timeout: c.duration(
            &format!("{key}.timeout"),
            s.timeout.as_deref(),
            Duration::from_secs(30),
        ),
        tls,
    }
}

/// `url` with `api_path` as its path when it has none (just `/`); Elasticsearch's `/_bulk` is
/// also added after a path prefix (a proxy's `/es`).
fn with_api_path(url: Uri, kind: RawLogSinkType, api_path: &str) -> Uri {
    if api_path.is_empty() {
        return url;
    }
    let path = url.path();
    let new_path = if path.is_empty() || path == "/" {
        api_path.to_owned()
    } else if matches!(kind, RawLogSinkType::Elasticsearch) && !path.ends_with("/_bulk") {
        format!("{}{api_path}", path.trim_end_matches('/'))
    } else {
        return url;
    };
    let pq = match url.query() {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    };
    let mut parts = url.clone().into_parts();
    match pq.parse() {
        Ok(p) => {
            parts.path_and_query = Some(p);
            Uri::from_parts(parts).unwrap_or(url)
        }
        Err(_) => url,
    }
}

fn check_sink_tls(c: &mut Checker, key: &str, t: &RawSinkTls) -> SinkTls {
    let mut file = |name: &str, v: &str| -> PathBuf {
        absolute(c, &format!("{key}.{name}"), v, "/etc/tandem/sink-ca.pem")
    };
    let ca = t.ca.as_deref().map(|v| file("ca", v));
    let client = match (&t.cert, &t.key) {
        (Some(cert), Some(k)) => Some((file("cert", cert), file("key", k))),
        (Some(_), None) => {
            c.err(
                format!("{key}.cert"),
                "a client certificate without its `key`",
                "add `key: /path/to/client-key.pem` (or remove `cert` for TLS without a client \
                 certificate)",
            );
            None
        }
        (None, Some(_)) => {
            c.err(
                format!("{key}.key"),
                "a client key without its `cert`",
                "add `cert: /path/to/client-cert.pem`",
            );
            None
        }
        (None, None) => None,
    };
    let server_name = t.server_name.as_ref().map(|n| n.trim().to_owned());
    if let Some(n) = &server_name {
        let ok = !n.is_empty()
            && (n.parse::<std::net::IpAddr>().is_ok()
                || n.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                }));
        if !ok {
            c.err(
                format!("{key}.server_name"),
                format!("`{n}` is not a DNS name or IP address"),
                "use the name in the sink's certificate, e.g. logs.internal",
            );
        }
    }
    SinkTls {
        ca,
        client,
        server_name,
    }
}

/// An index pattern: a valid Elasticsearch index name once `%Y`, `%m`, `%d`, `%H` are replaced.
fn check_index(c: &mut Checker, key: &str, pattern: &str) {
    let mut rest = pattern;
    let mut sample = String::new();
    while let Some(i) = rest.find('%') {
        sample.push_str(&rest[..i]);
        match rest[i + 1..].chars().next() {
            Some('Y') => sample.push_str("2026"),
            Some('m' | 'd' | 'H') => sample.push_str("01"),
            Some('%') => sample.push('%'),
            other => {
                c.err(
                    key,
                    format!(
                        "`%{}` is not a date field this index pattern can use",
                        other.map(String::from).unwrap_or_default()
                    ),
                    "use %Y, %m, %d, %H (UTC) or %% for a literal %, e.g. logs-%Y.%m.%d",
                );
                return;
            }
        }
        rest = &rest[i + 2..];
    }
    sample.push_str(rest);
    let bad = sample.is_empty()
        || sample.starts_with(['-', '_', '+'])
        || sample == "."
        || sample == ".."
        || sample.len() > 255
        || sample
            .bytes()
            .any(|b| b.is_ascii_uppercase() || b" \\/*?\"<>|,#:%".contains(&b) || b < 0x20);
    if bad {
        c.err(
            key,
            format!("`{pattern}` does not make a valid Elasticsearch index name"),
            "use lower case letters, digits, '-', '_', '.', not starting with '-', '_' or '+', \
             e.g. logs-%Y.%m.%d",
        );
    }
}

fn valid_label(name: &str) -> bool {
    name.bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Standard base64 with padding (for basic authentication).
fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(char::from(T[(n >> 18) as usize & 63]));
        out.push(char::from(T[(n >> 12) as usize & 63]));
        out.push(if chunk.len() > 1 {
            char::from(T[(n >> 6) as usize & 63])
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            char::from(T[n as usize & 63])
        } else {
            '='
        });
    }
    out
}

fn check_headers(c: &mut Checker, key: &str, s: &RawLogSink) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::with_capacity(s.headers.len());
    for (name, value) in &s.headers {
        let hkey = format!("{key}.{name}");
        let n = HeaderName::from_bytes(name.trim().as_bytes());
        let v = HeaderValue::from_str(value);
        match (n, v) {
            (Ok(n), _) if RESERVED_HEADERS.contains(&n.as_str()) => c.err(
                &hkey,
                format!("`{n}` is set by the sink itself"),
                "remove it; the sink sets it from the body it sends (`gzip: true` for \
                 content-encoding)",
            ),
            (Ok(n), Ok(v)) => out.push((n, v)),
            (Err(_), _) => c.err(
                &hkey,
                format!("`{name}` is not a valid header name"),
                "use letters, digits and '-', e.g. authorization",
            ),
            (_, Err(_)) => c.err(
                &hkey,
                "the value has characters not allowed in a header",
                "use visible ASCII characters",
            ),
        }
    }
    out
}

fn check_labels(
    c: &mut Checker,
    key: &str,
    raw: &indexmap::IndexMap<String, String>,
) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(raw.len());
    for (name, value) in raw {
        let valid = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            c.err(
                format!("{key}.{name}"),
                format!("`{name}` is not a valid label name"),
                "use letters, digits and '_', starting with a letter (Loki and Prometheus label \
                 rules), e.g. service",
            );
        } else {
            out.push((name.clone(), value.clone()));
        }
    }
    out
}

/// An absolute path; `example` shows the form in the hint.
fn absolute(c: &mut Checker, key: &str, raw: &str, example: &str) -> PathBuf {
    let p = PathBuf::from(raw);
    if !p.is_absolute() {
        c.err(
            key,
            format!("`{raw}` is not an absolute path"),
            format!(
                "use an absolute path, e.g. {example}; a relative one would depend on the \
                 directory Tandem was started in"
            ),
        );
    }
    p
}

/// Whether glob `pattern` matches `path` (`*` stays within one directory, as when expanding).
fn pattern_matches(pattern: &str, path: &Path) -> bool {
    let opts = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    glob::Pattern::new(pattern).is_ok_and(|p| p.matches_path_with(path, opts))
}

/// A size: a whole number of bytes, or a number with a unit (`512KiB`, `16MiB`, `1GiB`, or the
/// decimal `KB`, `MB`, `GB`).
fn byte_size(c: &mut Checker, key: &str, raw: &NumberOrString) -> Option<usize> {
    const HINT: &str = "use a number of bytes (1048576) or a size like \"512KiB\", \"16MiB\", \
                        \"1GiB\"";
    let parsed = match raw {
        NumberOrString::Number(n) => usize::try_from(*n).ok(),
        NumberOrString::String(s) => parse_size(s),
    };
    if parsed.is_none() {
        let text = match raw {
            NumberOrString::Number(n) => n.to_string(),
            NumberOrString::String(s) => s.clone(),
        };
        c.err(key, format!("`{text}` is not a size"), HINT);
    }
    parsed
}

fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|ch: char| !ch.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().ok()?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" => KIB,
        "MiB" => MIB,
        "GiB" => GIB,
        "KB" | "kB" => 1000,
        "MB" => 1000 * 1000,
        "GB" => 1000 * 1000 * 1000,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn line_format(f: Option<RawLineFormat>) -> LineFormat {
    match f {
        None | Some(RawLineFormat::Ndjson) => LineFormat::Ndjson,
        Some(RawLineFormat::Text) => LineFormat::Text,
    }
}

fn bounded_size(
    c: &mut Checker,
    key: &str,
    n: usize,
    min: usize,
    max: usize,
    default: usize,
) -> usize {
    if (min..=max).contains(&n) {
        return n;
    }
    c.err(
        key,
        format!(
            "{} is {}",
            show_size(n),
            if n < min { "too small" } else { "too large" }
        ),
        format!(
            "use {} to {} (default {})",
            show_size(min),
            show_size(max),
            show_size(default)
        ),
    );
    default
}

fn show_size(n: usize) -> String {
    match n {
        n if n >= GIB && n % GIB == 0 => format!("{}GiB", n / GIB),
        n if n >= MIB && n % MIB == 0 => format!("{}MiB", n / MIB),
        n if n >= KIB && n % KIB == 0 => format!("{}KiB", n / KIB),
        n => format!("{n} bytes"),
    }
}

#[cfg(test)]
mod tests;
