//! Arbitrary `Authorization` values through bearer extraction, JWT header and claims decoding
//! and key selection (`tandem-tls/src/jwt.rs`), and arbitrary bytes as a JWKS document: nothing
//! may panic, and no arbitrary token may verify.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tandem_tls::jwt::fuzz_token(data);
});
