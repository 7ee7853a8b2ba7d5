//! Arbitrary bytes, split at arbitrary points, through the HTTP/1.x request-smuggling guard: the
//! only hand-written parser on Tandem's network path. It must never panic or buffer unboundedly.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (Vec<u8>, Vec<u16>)| {
    let (data, splits) = input;
    let splits: Vec<usize> = splits.into_iter().map(usize::from).collect();
    tandem_proxy::framing::fuzz_observe(&data, &splits);
});
