//! Arbitrary text through the configuration loader: every input gives a config or errors, never
//! a panic, and every error names a line inside the text when it names one at all.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(errors) = tandem_config::parse("fuzz.yaml", text) {
        // YAML breaks lines at \n, \r\n and a bare \r.
        let lines = text.replace("\r\n", "\n").matches(['\n', '\r']).count() + 1;
        for e in &errors.0 {
            if let Some(l) = e.line {
                assert!(l >= 1 && l <= lines, "line {l} outside 1..={lines}: {e}");
            }
        }
    }
});
