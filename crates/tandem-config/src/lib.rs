//! Tandem's configuration: one YAML file, small for the common case.
//!
//! The pipeline is `YAML text -> raw::RawConfig (serde, unknown keys rejected) -> check() -> Config`.
//! `check()` is pure: it reads no files, binds no sockets and loads no certificates, and it collects
//! every error before failing. Each [`ConfigError`] names the file, the line, the key path and a fix.
//!
//! # Layout
//! - [`model`]: the checked types the rest of Tandem uses ([`Config`] and friends).
//! - `raw`: the serde types that mirror the YAML, with a doc comment on every field (these become
//!   the JSON Schema descriptions).
//! - `check`: raw -> model, collecting errors.
//! - `lines`: maps a key path (`listeners.inbound.routes[0].upstream`) to its line in the file.
//! - `serde_error`: turns YAML syntax and type errors into [`ConfigError`]s with hints, and steps
//!   over unknown keys so that checking can go on.
//!
//! The embedded default ([`DEFAULT_CONFIG`]) is what `tandem run` uses without `-c`.

mod check;
mod lines;
pub mod model;
pub mod raw;
mod serde_error;

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
///
/// serde stops at the first error. An unknown key is the most common one and the easiest to step
/// over, so in a copy of the text it is renamed to the known key it resembles, or cut out, with
/// every other line kept where it was; then parsing resumes. A typo and, say, a bad upstream
/// reference are reported in one run. Any other syntax or type error ends parsing there.
pub fn parse(source: &str, text: &str) -> Result<Config, ConfigErrors> {
    // Bounds the work on a file made of nothing but typos; each pass fixes one key.
    const MAX_SKIPPED_KEYS: usize = 50;
    let mut errors = Vec::new();
    let mut current = text.to_owned();
    let mut raw = None;
    for _ in 0..=MAX_SKIPPED_KEYS {
        if current.trim().is_empty() {
            raw = Some(raw::RawConfig::default());
            break;
        }
        match serde_yaml_ng::from_str::<raw::RawConfig>(&current) {
            Ok(r) => {
                raw = Some(r);
                break;
            }
            Err(e) => {
                errors.push(serde_error::translate(source, &current, &e));
                match serde_error::skip_unknown_key(&current, &e) {
                    Some(next) => current = next,
                    None => break,
                }
            }
        }
    }
    let checked = raw.map(|raw| check::check(source, raw));
    match checked {
        Some(Ok(config)) if errors.is_empty() => return Ok(config),
        Some(Err(problems)) => {
            let lines = lines::Lines::index(&current);
            errors.extend(problems.into_iter().map(|p| ConfigError {
                file: source.to_owned(),
                line: lines.line(&p.key),
                key: p.key,
                message: p.message,
                hint: p.hint,
            }));
        }
        // Checked fine but keys were skipped, or serde stopped for good: only serde's errors.
        Some(Ok(_)) | None => {}
    }
    errors.sort_by_key(|e| e.line.unwrap_or(0));
    Err(ConfigErrors(errors))
}

/// An error found after `check()`, by a step that reads the environment (e.g. `tandem check`
/// loading certificate files): located at `key`'s line in the file at `path`.
pub fn environment_error(
    path: &std::path::Path,
    key: &str,
    message: String,
    hint: String,
) -> ConfigError {
    let line = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| lines::Lines::index(&text).line(key));
    ConfigError {
        file: path.display().to_string(),
        line,
        key: key.to_owned(),
        message,
        hint,
    }
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
