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

pub mod model;

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
    todo!()
}

/// Parses and checks configuration text; `source` names it in errors (usually the file path).
pub fn parse(source: &str, text: &str) -> Result<Config, ConfigErrors> {
    todo!()
}

/// The embedded default, checked.
pub fn default_config() -> Config {
    todo!()
}

/// JSON Schema (draft 2020-12) of the YAML file, for editors.
pub fn json_schema() -> String {
    todo!()
}
