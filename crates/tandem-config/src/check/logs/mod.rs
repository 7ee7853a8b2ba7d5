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

pub(super) fn check_logs(c: &mut Checker, raw: &RawLogs) -> Logs {
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

    let checkpoint_dir = match &raw.checkpoint {
        Some(cp) => absolute(c, "logs.checkpoint.dir", &cp.dir, "/var/lib/tandem/logs"),
        None => {
            if !sources.is_empty() {
                c.err(
                    "logs",
                    "file sources need a checkpoint directory to remember how far each file was \
                     shipped",
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
        let LogSourceKind::File(f) = &s.kind;
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
    let RawLogSourceType::File = s.kind.unwrap_or(RawLogSourceType::File);
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
    let max_line_bytes = match s.max_line_bytes {
        None => 64 * KIB,
        Some(n) => bounded_size(
            c,
            &format!("{key}.max_line_bytes"),
            n,
            256,
            16 * MIB,
            64 * KIB,
        ),
    };
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
    let type_name = match s.kind {
        RawLogSinkType::Http => "http",
        RawLogSinkType::File => "file",
        RawLogSinkType::Console => "console",
    };
    // Keys that belong to another sink type are mistakes, not settings to ignore.
    let given: [(&str, bool, &[RawLogSinkType]); 5] = [
        ("url", s.url.is_some(), &[RawLogSinkType::Http]),
        ("headers", !s.headers.is_empty(), &[RawLogSinkType::Http]),
        ("gzip", s.gzip.is_some(), &[RawLogSinkType::Http]),
        ("timeout", s.timeout.is_some(), &[RawLogSinkType::Http]),
        ("path", s.path.is_some(), &[RawLogSinkType::File]),
    ];
    for (field, present, types) in given {
        if present && !types.iter().any(|t| same_type(*t, s.kind)) {
            c.err(
                format!("{key}.{field}"),
                format!("`{field}` does not apply to a {type_name} sink"),
                format!(
                    "remove it; `{field}` is a key of {} sinks",
                    sink_type_name(types[0])
                ),
            );
        }
    }

    let kind = match s.kind {
        RawLogSinkType::Http => LogSinkKind::Http(HttpLogSink {
            url: check_url(c, &format!("{key}.url"), s.url.as_deref()),
            headers: check_headers(c, &format!("{key}.headers"), s),
            gzip: s.gzip.unwrap_or(false),
            timeout: c.duration(
                &format!("{key}.timeout"),
                s.timeout.as_deref(),
                Duration::from_secs(30),
            ),
        }),
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
                let LogSourceKind::File(f) = &src.kind;
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
            LogSinkKind::File { path }
        }
        RawLogSinkType::Console => LogSinkKind::Console,
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
        RawLogSinkType::File => "file",
        RawLogSinkType::Console => "console",
    }
}

fn check_url(c: &mut Checker, key: &str, raw: Option<&str>) -> Uri {
    let fallback = Uri::from_static("http://127.0.0.1/");
    let Some(raw) = raw else {
        c.err(
            key,
            "an http sink needs a `url`",
            "add `url: http://logs.internal:8080/ingest`",
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
        Some("http") => {}
        Some("https") => {
            c.err(
                key,
                "https sinks are not supported yet",
                "send to an http:// URL, e.g. a local collector or a TLS-originating Tandem \
                 outbound listener",
            );
            return fallback;
        }
        _ => {
            c.err(
                key,
                format!("`{raw}` has no http:// scheme"),
                format!("write it as http://{}", raw.trim().trim_start_matches("//")),
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
