//! `tandem check`'s file step: the identity's files exist, parse and belong together, and the
//! trust bundle holds usable CAs. Separate from `tandem_config::check` (which is pure) because
//! it reads files; errors carry the config key of the offending path and a fix.

use tandem_config::Config;

use crate::pair::{self, Files, LoadError};

/// A problem with a configured file.
#[derive(Debug)]
pub struct FileProblem {
    /// The config key naming the file, e.g. `tls.key`.
    pub key: &'static str,
    /// What is wrong (names the file).
    pub message: String,
    /// How to fix it.
    pub hint: String,
}

/// Checks the files of `config.tls` (nothing to do without it).
pub fn check_files(config: &Config) -> Vec<FileProblem> {
    let Some(tls) = &config.tls else {
        return Vec::new();
    };
    let files = Files {
        cert: tls.cert.clone(),
        key: tls.key.clone(),
        trust_bundle: tls.trust_bundle.clone(),
    };
    match pair::load(&files, pair::now()) {
        Ok(_) => Vec::new(),
        Err(e) => {
            let key = key_of(&files, &e);
            vec![FileProblem {
                key,
                message: e.to_string(),
                hint: e.hint().to_owned(),
            }]
        }
    }
}

/// Which key names the file an error is about.
fn key_of(files: &Files, e: &LoadError) -> &'static str {
    let path = e.path();
    if path == files.key {
        "tls.key"
    } else if files.trust_bundle.as_deref() == Some(path) && path != files.cert {
        "tls.trust_bundle"
    } else {
        "tls.cert"
    }
}
