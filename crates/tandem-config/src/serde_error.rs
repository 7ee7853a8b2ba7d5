//! Turns a serde_yaml_ng error into a [`ConfigError`] a person can act on.
//!
//! serde_yaml_ng renders errors as `path: message at line L column C`, where `path` is the mapping
//! or value being deserialized (`listeners.inbound`). This module splits that apart, makes the key
//! point at the offending key itself (`listeners.inbound.adress`), picks the most useful line, and
//! writes a hint specific to the kind of mistake: the closest known key for a typo, the allowed
//! values for an enum, an example of the expected type.
//!
//! serde stops at its first error. For an unknown key, [`skip_unknown_key`] gives a copy of the
//! text with that key renamed to the one it resembles or cut out, every line number unchanged, so
//! the caller can parse again and collect the next error; any other error ends the list.

use crate::lines::Lines;
use crate::{check, ConfigError};

/// Builds the error for `e`, raised while deserializing `yaml` from `source`.
pub(crate) fn translate(source: &str, yaml: &str, e: &serde_yaml_ng::Error) -> ConfigError {
    let full = e.to_string();
    let text = match full.find(" at line ") {
        Some(i) => &full[..i],
        None => full.as_str(),
    };
    // A path never contains a space, while libyaml's syntax messages ("did not find expected
    // key") have one before any ": ".
    let (path, message) = match text.split_once(": ") {
        Some((k, m)) if !k.contains(' ') => (k.to_owned(), m.to_owned()),
        _ => (String::new(), text.to_owned()),
    };
    // The parser places errors at end of input on the line after the last one; point at the last
    // line instead (found by the `config` fuzz target). YAML breaks lines at \n, \r\n and \r.
    let located = e.location().map(|l| {
        let last = yaml.replace("\r\n", "\n").matches(['\n', '\r']).count() + 1;
        l.line().min(last)
    });

    let (key, message, hint, line) = if let Some(field) = quoted_after(&message, "unknown field `")
    {
        let key = join(&path, field);
        let expected = backticked(after(&message, "expected "));
        let hint = match check::closest(field, expected.iter().copied()) {
            Some(s) => format!(
                "did you mean \"{s}\"? known keys here: {}",
                expected.join(", ")
            ),
            None if expected.is_empty() => "remove it; this mapping takes no keys".to_owned(),
            None => format!("remove it; known keys here: {}", expected.join(", ")),
        };
        (key, format!("unknown field `{field}`"), hint, located)
    } else if let Some(field) = quoted_after(&message, "missing field `") {
        // serde points at the first key of the mapping; the mapping's own key (`inbound:`) is
        // where the missing one belongs.
        let line = Lines::index(yaml).line(&path).or(located);
        let hint = format!("add `{field}:` {}", missing_example(field));
        let key = join(&path, field);
        (key, format!("missing required key `{field}`"), hint, line)
    } else if let Some(field) = quoted_after(&message, "duplicate field `")
        .or_else(|| quoted_after(&message, "duplicate name `"))
    {
        // The second occurrence is the one to remove or rename.
        let key = join(&path, field);
        let line = Lines::index(yaml).line(&key).or(located);
        let hint = format!("keep one `{field}` entry: remove or rename the other");
        (key, format!("`{field}` is given twice"), hint, line)
    } else if let Some(value) = quoted_after(&message, "unknown variant `") {
        let expected = backticked(after(&message, "expected "));
        let hint = match check::closest(value, expected.iter().copied()) {
            Some(s) => format!("did you mean \"{s}\"? use one of: {}", expected.join(", ")),
            None => format!("use one of: {}", expected.join(", ")),
        };
        (path, format!("unknown value `{value}`"), hint, located)
    } else if message.starts_with("invalid type") || message.starts_with("invalid value") {
        let hint = type_hint(&path, after(&message, "expected "));
        (path, friendly_types(&message), hint, located)
    } else if message.contains("more than one document") {
        let hint = "keep one YAML document: remove the `---` line and what follows it".to_owned();
        (
            path,
            message,
            hint,
            located.or_else(|| second_document(yaml)),
        )
    } else {
        let hint = syntax_hint(yaml, located);
        (path, message, hint, located)
    };
    ConfigError {
        file: source.to_owned(),
        line,
        key,
        message,
        hint,
    }
}

/// A fix for a value of the wrong type, from serde's "expected ..." text.
fn type_hint(path: &str, expected: &str) -> String {
    let last = path.rsplit('.').next().unwrap_or(path);
    if expected.starts_with("a YAML tag") {
        // serde_yaml_ng's wording when an enum gets a list or a mapping.
        let values = match (path.starts_with("upstreams."), last) {
            (_, "direction") => "inbound or outbound",
            _ if path == "tracing.otlp.protocol" => "grpc or http/protobuf",
            (true, "protocol") => "http1, http2 or auto",
            (false, "protocol") => "http or tcp",
            _ => "one of the values listed in docs/config.md",
        };
        return format!("use a single word: {values}");
    }
    if let Some(name) = expected.strip_prefix("struct ") {
        return format!(
            "{} is a mapping of keys; check the indentation: nested keys go on their own lines, \
             indented further than `{last}:`",
            section_name(name)
        );
    }
    match expected {
        "usize" | "u16" | "u32" | "u64" => "use a whole number, e.g. 100".to_owned(),
        "a boolean" => "use true or false".to_owned(),
        "a sequence" => "use a list: [a, b], or one `- item` per line".to_owned(),
        "a string" => {
            "use a single value; quote it if it contains \": \" or starts with *, &, ! or {"
                .to_owned()
        }
        "a string or a list of strings" => "use one value (GET) or a list ([GET, HEAD])".to_owned(),
        "a map of names to values" => "use a mapping of `name:` entries".to_owned(),
        "an address or a mapping with `address` and `weight`" => {
            "use an address (127.0.0.1:8080) or a mapping: { address: 127.0.0.1:8080, weight: 3 }"
                .to_owned()
        }
        "`off` or a mapping of retry keys" => {
            "use `retry: off`, or a mapping of the keys to change, e.g. { attempts: 2 }".to_owned()
        }
        "a number or a string" if last.starts_with("on_grpc") => {
            "use a gRPC code name (unavailable) or a number from 1 to 16".to_owned()
        }
        "a number or a string" if last.starts_with("expect") => {
            "use a status (200) or a range (\"200-299\")".to_owned()
        }
        other => format!("use {other}"),
    }
}

/// serde's messages name the Rust types (`struct RawListener`, `usize`); say what the user wrote.
fn friendly_types(message: &str) -> String {
    let mut m = message.replace("usize", "a whole number of 0 or more");
    if let Some(name) = m.split("struct ").nth(1).map(str::to_owned) {
        m = m.replace(&format!("struct {name}"), section_name(&name));
    }
    m
}

/// The user-facing name of a raw section type.
fn section_name(raw_type: &str) -> &'static str {
    match raw_type {
        "RawConfig" => "the configuration",
        "RawAdmin" => "`admin`",
        "RawApp" => "`app`",
        "RawLimits" => "`limits`",
        "RawListener" => "a listener",
        "RawRoute" => "a route",
        "RawMatch" => "`match`",
        "RawPathMatch" => "`path`",
        "RawUpstream" => "an upstream",
        "RawPool" => "`pool`",
        "RawWeightedEndpoint" => "an endpoint",
        "RawHealthCheck" => "`health_check`",
        "RawHttpProbe" => "`http`",
        "RawTcpProbe" => "`tcp`",
        "RawGrpcProbe" => "`grpc`",
        "RawCircuitBreaker" => "`circuit_breaker`",
        "RawUpstreamLimits" => "`limits`",
        "RawRetry" => "`retry`",
        "RawRetryBudget" => "`retry_budget`",
        "RawAccessLog" => "`access_log`",
        "RawLogs" => "`logs`",
        "RawCheckpoint" => "`checkpoint`",
        "RawLogSource" => "a log source",
        "RawLogSink" => "a log sink",
        "RawLogBatch" => "`batch`",
        _ => "this section",
    }
}

/// An example value for a required key that is missing.
fn missing_example(field: &str) -> &'static str {
    match field {
        "address" => "with an IP:port or unix:/path, e.g. `address: 127.0.0.1:7080`",
        "upstream" => "naming one of `upstreams`, e.g. `upstream: app`",
        "path" => "with the path to probe, e.g. `path: /healthz`",
        "dir" => "with an absolute directory, e.g. `dir: /var/lib/tandem/logs`",
        "type" => "naming the kind, e.g. `type: http` (http, file or console)",
        _ => "to this mapping (see docs/config.md)",
    }
}

/// A hint for a YAML syntax error: tabs are the classic cause, otherwise layout in general.
fn syntax_hint(yaml: &str, line: Option<usize>) -> String {
    let has_tab = line
        .and_then(|l| yaml.lines().nth(l.saturating_sub(1)))
        .is_some_and(|l| l.trim_start_matches(' ').starts_with('\t'));
    if has_tab {
        "indent with spaces; YAML does not allow tabs for indentation".to_owned()
    } else {
        "check the YAML syntax around this line: indentation, a space after each `:`, closing \
         brackets and quotes"
            .to_owned()
    }
}

/// The line of the `---` that starts a second document: the first one after any content.
fn second_document(yaml: &str) -> Option<usize> {
    let mut seen_content = false;
    for (i, line) in yaml.lines().enumerate() {
        if line.starts_with("---") && seen_content {
            return Some(i + 1);
        }
        let t = line.trim();
        seen_content |=
            !(t.is_empty() || t.starts_with('#') || t.starts_with('%') || t.starts_with("---"));
    }
    None
}

/// The text between `prefix` and the next backtick, when `message` starts with `prefix`.
fn quoted_after<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    message.strip_prefix(prefix)?.split('`').next()
}

/// The text after the first `marker`, or "".
fn after<'a>(message: &'a str, marker: &str) -> &'a str {
    message.split_once(marker).map_or("", |(_, rest)| rest)
}

/// Every `backticked` word in `text`.
fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// A copy of `yaml` with the unknown key `e` complains about corrected or cut out, every other
/// line where it was, so that parsing can resume and report later errors at their true lines.
///
/// With a close known key (`adress` -> `address`) that the mapping does not already have, the key
/// is renamed: the value is then checked as the user meant it, and the misspelt key does not also
/// surface as a missing one. Otherwise a block-style key on its own line is removed with its
/// value's indented lines; when it was the only key of its mapping, `{}` takes its place so the
/// mapping stays a mapping (an empty `limits:` would be null, a type error of its own). A key
/// that can be neither renamed nor removed (say in a flow mapping) ends parsing.
pub(crate) fn skip_unknown_key(yaml: &str, e: &serde_yaml_ng::Error) -> Option<String> {
    let full = e.to_string();
    let (path, message) = match full.split_once(": ") {
        Some((k, m)) if !k.contains(' ') => (k, m),
        _ => ("", full.as_str()),
    };
    let field = quoted_after(message, "unknown field `")?;
    let loc = e.location()?;
    // A bare \r breaks lines for YAML but not for `split_inclusive('\n')`; line numbers would
    // drift, so leave such files alone.
    if yaml.replace("\r\n", "").contains('\r') {
        return None;
    }
    let mut lines: Vec<String> = yaml.split_inclusive('\n').map(str::to_owned).collect();
    let idx = loc.line().checked_sub(1)?;
    let target = lines.get(idx)?;
    // The parser counts columns in characters.
    let start = target
        .char_indices()
        .nth(loc.column().checked_sub(1)?)
        .map(|(b, _)| b)?;
    let quote = target[start..]
        .chars()
        .next()
        .filter(|c| *c == '"' || *c == '\'')
        .map_or(0, char::len_utf8);
    let name_at = start + quote;
    if !target[name_at..].starts_with(field) {
        return None;
    }

    let expected = backticked(after(message, "expected "));
    if let Some(better) = check::closest(field, expected.iter().copied()) {
        if !Lines::index(yaml).contains(&join(path, better)) {
            let line = &mut lines[idx];
            line.replace_range(name_at..name_at + field.len(), better);
            return Some(lines.concat());
        }
    }
    remove_block_key(lines, idx, start)
}

/// Removes the block-style key starting at byte `indent` of line `idx`, with its value's lines.
fn remove_block_key(mut lines: Vec<String>, idx: usize, indent: usize) -> Option<String> {
    if !lines[idx].as_bytes()[..indent].iter().all(|b| *b == b' ') {
        return None;
    }
    let meaningful = |l: &str| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#')
    };
    let indent_of = |l: &str| l.len() - l.trim_start_matches(' ').len();
    // Where a line's first key starts, past any `- ` sequence markers.
    let key_col = |l: &str| {
        let mut col = indent_of(l);
        let mut t = l.trim_start_matches(' ');
        while let Some(after_dash) = t.strip_prefix("- ") {
            let trimmed = after_dash.trim_start_matches(' ');
            col += t.len() - trimmed.len();
            t = trimmed;
        }
        col
    };
    // The value's lines: deeper-indented ones, blank ones, and a block sequence written at the
    // key's own indentation (`routes:` then `- a` in the same column).
    let mut end = idx + 1;
    while let Some(l) = lines.get(end) {
        let t = l.trim_start_matches(' ');
        let seq_item = indent_of(l) == indent && (t.starts_with("- ") || t.trim_end() == "-");
        if !meaningful(l) || indent_of(l) > indent || seq_item {
            end += 1;
        } else {
            break;
        }
    }
    let sibling_before = lines[..idx]
        .iter()
        .rev()
        .find(|l| meaningful(l))
        .is_some_and(|l| key_col(l) >= indent);
    let sibling_after = lines[end..]
        .iter()
        .find(|l| meaningful(l))
        .is_some_and(|l| indent_of(l) == indent);
    let only_key = !sibling_before && !sibling_after;

    for (i, line) in lines.iter_mut().enumerate().take(end).skip(idx) {
        let eol = if line.ends_with("\r\n") {
            "\r\n"
        } else if line.ends_with('\n') {
            "\n"
        } else {
            ""
        };
        *line = if i == idx && only_key {
            format!("{}{{}}{eol}", " ".repeat(indent))
        } else {
            eol.to_owned()
        };
    }
    Some(lines.concat())
}
