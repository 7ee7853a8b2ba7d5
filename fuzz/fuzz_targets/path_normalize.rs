//! Arbitrary request paths through Tandem's path normalization (`tandem-proxy/src/path.rs`):
//! no input may panic, and an accepted path's normal form is a fixed point without `//`, `.` or
//! `..` segments (so a rule matched on it cannot be bypassed by re-normalizing).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tandem_proxy::path::fuzz_normalize(data);
});
