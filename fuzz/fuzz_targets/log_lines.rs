//! Arbitrary bytes, split at arbitrary points, through the log line framer (with an arbitrary
//! line limit) and the JSON parser: no panic, the held partial line stays within the limit, and
//! the lines and their offsets account for every byte exactly once.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (Vec<u8>, Vec<u16>, u16)| {
    let (data, splits, max_line) = input;
    let splits: Vec<usize> = splits.into_iter().map(usize::from).collect();
    tandem_logship::framer::fuzz_frame(&data, &splits, usize::from(max_line));
});
