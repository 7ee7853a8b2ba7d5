//! Arbitrary bytes through every log parser (plain, json, logfmt, regex) and, framed into lines
//! with an arbitrary limit, through multi-line joining with arbitrary bounds: no panic, a failed
//! parse keeps the line whole, and joined records cover every non-empty line exactly once with
//! offsets the checkpoint can use (never inside a record).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (Vec<u8>, u16, u8, u16)| {
    let (data, max_line, max_lines, max_bytes) = input;
    tandem_logship::parse::fuzz_parse(&data);
    tandem_logship::multiline::fuzz_join(
        &data,
        usize::from(max_line),
        usize::from(max_lines),
        usize::from(max_bytes),
    );
});
