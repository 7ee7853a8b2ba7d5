//! Checks `access_log` and each listener's `access_log` switch.

use std::collections::HashSet;
use std::path::PathBuf;

use super::{closest, Checker};
use crate::model::{
    AccessLog, AccessLogField, AccessLogOutput, DEFAULT_ACCESS_LOG_BUFFER, MAX_ACCESS_LOG_BUFFER,
};
use crate::raw::RawAccessLog;

/// The top-level `access_log` section.
pub(super) fn check(c: &mut Checker, raw: &RawAccessLog) -> AccessLog {
    AccessLog {
        output: output(c, raw.path.as_deref()),
        fields: match &raw.fields {
            Some(names) => fields(c, names),
            None => AccessLogField::ALL.to_vec(),
        },
        buffer: match raw.buffer {
            Some(0) => {
                c.err(
                    "access_log.buffer",
                    "a buffer of 0 lines would drop every line",
                    format!("use at least 1 (default {DEFAULT_ACCESS_LOG_BUFFER})"),
                );
                DEFAULT_ACCESS_LOG_BUFFER
            }
            Some(n) if n > MAX_ACCESS_LOG_BUFFER => {
                c.err(
                    "access_log.buffer",
                    format!("{n} lines is above the maximum of {MAX_ACCESS_LOG_BUFFER}"),
                    format!(
                        "use at most {MAX_ACCESS_LOG_BUFFER} (default {DEFAULT_ACCESS_LOG_BUFFER}); \
                         a writer that far behind is better served by a faster disk or fewer fields"
                    ),
                );
                MAX_ACCESS_LOG_BUFFER
            }
            Some(n) => n,
            None => DEFAULT_ACCESS_LOG_BUFFER,
        },
    }
}

/// A listener's `access_log` switch: on by default when there is an access log.
pub(super) fn listener(c: &mut Checker, key: &str, raw: Option<bool>, configured: bool) -> bool {
    match raw {
        Some(true) if !configured => {
            c.err(
                format!("{key}.access_log"),
                "there is no top-level `access_log` to write to",
                "add `access_log: { path: stdout }` (or a file path) at the top level; \
                 listeners then log by default",
            );
            false
        }
        Some(on) => on && configured,
        None => configured,
    }
}

fn output(c: &mut Checker, raw: Option<&str>) -> AccessLogOutput {
    let Some(path) = raw.map(str::trim) else {
        return AccessLogOutput::Stdout;
    };
    match path {
        "stdout" | "-" => AccessLogOutput::Stdout,
        "" => {
            c.err(
                "access_log.path",
                "the path is empty",
                "use `stdout` or a file path, e.g. /var/log/tandem/access.log",
            );
            AccessLogOutput::Stdout
        }
        "stderr" => {
            c.err(
                "access_log.path",
                "stderr carries Tandem's own log; access log lines would mix with it",
                "use `stdout` or a file path, e.g. /var/log/tandem/access.log",
            );
            AccessLogOutput::Stdout
        }
        p if p.ends_with('/') => {
            c.err(
                "access_log.path",
                format!("`{p}` names a directory"),
                format!("name the file in it, e.g. {p}access.log"),
            );
            AccessLogOutput::Stdout
        }
        p => AccessLogOutput::File(PathBuf::from(p)),
    }
}

fn fields(c: &mut Checker, names: &[String]) -> Vec<AccessLogField> {
    if names.is_empty() {
        c.err(
            "access_log.fields",
            "the field list is empty, so every line would be `{}`",
            "remove `fields` for the default set, or list some: [time, status, duration_ms]",
        );
        return AccessLogField::ALL.to_vec();
    }
    let all: Vec<&str> = AccessLogField::ALL.iter().map(|f| f.name()).collect();
    let mut out = Vec::with_capacity(names.len());
    let mut seen = HashSet::new();
    for (i, name) in names.iter().enumerate() {
        let key = format!("access_log.fields[{i}]");
        let n = name.trim();
        match AccessLogField::from_name(n) {
            Some(f) if !seen.insert(f) => c.err(
                key,
                format!("`{n}` is listed twice"),
                "list each field once; a JSON line cannot carry a key twice",
            ),
            Some(f) => out.push(f),
            None => {
                let suggestion = closest(n, all.iter().copied())
                    .map(|s| format!("did you mean \"{s}\"? "))
                    .unwrap_or_default();
                c.err(
                    key,
                    format!("`{n}` is not an access log field"),
                    format!("{suggestion}use any of: {}", all.join(", ")),
                );
            }
        }
    }
    out
}
