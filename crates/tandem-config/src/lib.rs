//! Tandem's configuration: one YAML file, small for the common case.
//!
//! The pipeline is `YAML text -> raw::RawConfig (serde, unknown keys rejected) -> check() -> Config`.
//! [`check`] is pure: it reads no files, binds no sockets and loads no certificates, and it collects
//! every error before failing. Each [`ConfigError`] names the file, the line, the key path and a fix.
//!
//! # Layout
//! - [`model`]: the checked types the rest of Tandem uses ([`Config`] and friends).
//! - `raw`: the serde types that mirror the YAML, with a doc comment on every field (these become
//!   the JSON Schema descriptions).
//! - `check`: raw -> model, collecting errors.
//! - `lines`: maps a key path (`listeners.inbound.routes[0].upstream`) to its line in the file.
//!
//! The embedded default ([`DEFAULT_CONFIG`]) is what `tandem run` uses without `-c`.

mod check;
mod lines;
pub mod model;
pub mod raw;

pub use model::*;

/// The embedded default configuration: inbound `0.0.0.0:7080` -> app `127.0.0.1:8080`,
/// outbound forward proxy `127.0.0.1:7001`, admin `127.0.0.1:7901`.
pub const DEFAULT_CONFIG: &str = include_str!("default.yaml");

/// The source name used for the embedded default in errors and `GET /config`.
pub const DEFAULT_SOURCE: &str = "<embedded default>";

/// One problem found in a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or `<embedded default>`).
    pub file: String,
    /// 1-based line of the offending key, when known.
    pub line: Option<usize>,
    /// Dotted key path, e.g. `listeners.inbound.routes[0].upstream`; empty for the whole document.
    pub key: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: String,
}

/// Every problem found in a configuration, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// Reads, parses and checks a configuration file.
pub fn load_file(path: &std::path::Path) -> Result<Config, ConfigErrors> {
    let source = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&source, &text),
        Err(e) => Err(ConfigErrors(vec![ConfigError {
            file: source,
            line: None,
            key: String::new(),
            message: format!("cannot read the file: {e}"),
            hint: "check the path and its permissions".into(),
        }])),
    }
}

/// Parses and checks configuration text; `source` names it in errors (usually the file path).
pub fn parse(source: &str, text: &str) -> Result<Config, ConfigErrors> {
    let raw: raw::RawConfig = if text.trim().is_empty() {
        raw::RawConfig::default()
    } else {
        serde_yaml_ng::from_str(text)
            .map_err(|e| ConfigErrors(vec![serde_error(source, text, &e)]))?
    };
    check::check(source, raw).map_err(|problems| {
        let lines = lines::Lines::index(text);
        let mut errors: Vec<ConfigError> = problems
            .into_iter()
            .map(|p| ConfigError {
                file: source.to_owned(),
                line: lines.line(&p.key),
                key: p.key,
                message: p.message,
                hint: p.hint,
            })
            .collect();
        errors.sort_by_key(|e| e.line.unwrap_or(0));
        ConfigErrors(errors)
    })
}

/// The embedded default, checked.
pub fn default_config() -> Config {
    match parse(DEFAULT_SOURCE, DEFAULT_CONFIG) {
        Ok(c) => c,
        // The default is a constant covered by a unit test; failing here is a build defect.
        Err(e) => panic!("the embedded default configuration is invalid:\n{e}"),
    }
}

/// JSON Schema (draft 2020-12) of the YAML file, for editors.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(raw::RawConfig);
    serde_json::to_string_pretty(&schema).unwrap_or_else(|_| "{}".into())
}

/// Turns serde_yaml_ng's error (`path: message at line L column C`) into a [`ConfigError`] with a
/// hint; unknown keys get the closest known key.
fn serde_error(source: &str, yaml: &str, e: &serde_yaml_ng::Error) -> ConfigError {
    let full = e.to_string();
    let text = match full.find(" at line ") {
        Some(i) => &full[..i],
        None => full.as_str(),
    };
    let (key, message) = match text.split_once(": ") {
        Some((k, m)) if !k.contains(' ') => (k.to_owned(), m.to_owned()),
        _ => (String::new(), text.to_owned()),
    };
    let hint = if let Some(rest) = message.strip_prefix("unknown field `") {
        let unknown = rest.split('`').next().unwrap_or("");
        let expected: Vec<&str> = message
            .split("expected ")
            .nth(1)
            .unwrap_or("")
            .split('`')
            .skip(1)
            .step_by(2)
            .collect();
        match check::closest(unknown, expected.iter().copied()) {
            Some(s) => format!(
                "did you mean \"{s}\"? known keys here: {}",
                expected.join(", ")
            ),
            None => format!("remove it; known keys here: {}", expected.join(", ")),
        }
    } else if message.starts_with("missing field") {
        "add the missing key".to_owned()
    } else if message.starts_with("unknown variant") {
        "use one of the listed values".to_owned()
    } else if message.starts_with("invalid type") {
        "check the value's type against docs/config.md".to_owned()
    } else {
        "check the YAML syntax (indentation, colons, quotes) around this line".to_owned()
    };
    let key = if key.is_empty() {
        key
    } else if let Some(field) = message
        .strip_prefix("unknown field `")
        .and_then(|r| r.split('`').next())
    {
        format!("{key}.{field}")
    } else {
        key
    };
    ConfigError {
        file: source.to_owned(),
        // The parser places errors at end of input on the line after the last one; point at the
        // last line instead (found by the `config` fuzz target). YAML breaks lines at \n, \r\n, \r.
        line: e.location().map(|l| {
            let last = yaml.replace("\r\n", "\n").matches(['\n', '\r']).count() + 1;
            l.line().min(last)
        }),
        key,
        message,
        hint,
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if self.key.is_empty() {
            writeln!(f, ": {}", self.message)?;
        } else {
            writeln!(f, ": {}: {}", self.key, self.message)?;
        }
        write!(f, "  hint: {}", self.hint)
    }
}

impl std::error::Error for ConfigError {}

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for e in &self.0 {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[cfg(test)]
mod tests;
