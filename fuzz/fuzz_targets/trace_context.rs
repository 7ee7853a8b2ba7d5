//! Arbitrary trace headers (W3C `traceparent`/`tracestate`, B3 single and multi) through
//! Tandem's trace context reader and writer (`tandem-telemetry/src/trace/context.rs`). Callers
//! are not trusted: no input may panic, and what is accepted must write back as itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|values: Vec<Vec<u8>>| {
    tandem_telemetry::trace::context::fuzz_headers(&values);
});
