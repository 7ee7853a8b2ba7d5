//! Arbitrary bytes from an upstream, split at arbitrary points, through Tandem's HTTP/1.1 client
//! side: the response head parser and the body decoders (`tandem-proxy/src/h1.rs`). An upstream
//! is not trusted either: no input may panic or make it buffer without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (Vec<u8>, Vec<u16>, bool)| {
    let (data, splits, head_request) = input;
    let splits: Vec<usize> = splits.into_iter().map(usize::from).collect();
    tandem_proxy::h1::fuzz_response(&data, &splits, head_request);
});
