//! Joiner tests: a Java stack trace, every way a record completes (next start, timeout,
//! max_lines, max_bytes, flush), offsets for the checkpoint, cut lines; and properties over
//! arbitrary input through the real framer (see `fuzz_join`).

use proptest::prelude::*;

use super::*;

fn rules(max_lines: usize, max_bytes: usize) -> JoinRules {
    JoinRules {
        start: Regex::new(r"^\d{4}-").unwrap(),
        timeout: Duration::from_secs(1),
        max_lines,
        max_bytes,
    }
}

/// Lines of `text` (each ending in `\n`) with their offsets, the first starting at `base`.
fn lines(text: &str, base: u64) -> Vec<Line> {
    let mut at = base;
    text.split_inclusive('\n')
        .map(|l| {
            at += l.len() as u64;
            Line {
                text: Bytes::copy_from_slice(l.trim_end_matches('\n').as_bytes()),
                end: at,
                cut: false,
            }
        })
        .collect()
}

fn feed(j: &mut Joiner, text: &str, now: Instant) -> Vec<Joined> {
    let mut out = Vec::new();
    for l in lines(text, j.offset) {
        j.push(&l, now, &mut out);
    }
    out
}

const TRACE: &str = "\
2026-11-24 10:00:00 INFO started
2026-11-24 10:00:01 ERROR request failed
java.lang.IllegalStateException: boom
\tat com.example.Orders.place(Orders.java:42)
\tat com.example.Api.handle(Api.java:7)
Caused by: java.io.IOException: disk
\t... 2 more
2026-11-24 10:00:02 INFO next
";

#[test]
fn java_stack_trace_is_one_record() {
    let t0 = Instant::now();
    let mut j = Joiner::new(rules(500, 1 << 20), 0);
    let out = feed(&mut j, TRACE, t0);
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(&out[0].text[..], b"2026-11-24 10:00:00 INFO started");
    assert_eq!((out[0].start, out[0].end, out[0].lines), (0, 33, 1));
    let trace = &out[1];
    assert_eq!(trace.lines, 6);
    assert_eq!(trace.start, 33);
    assert!(trace
        .text
        .starts_with(b"2026-11-24 10:00:01 ERROR request failed\njava.lang"));
    assert!(trace.text.ends_with(b"IOException: disk\n\t... 2 more"));
    let last_start = TRACE.rfind("2026").unwrap() as u64;
    assert_eq!(trace.end, last_start);
    // The last record is pending: the checkpoint may not pass its first line.
    assert_eq!(j.safe_offset(), last_start);
    assert_eq!(j.held(), "2026-11-24 10:00:02 INFO next".len());
    let r = j.flush().unwrap();
    assert_eq!((r.start, r.end), (last_start, TRACE.len() as u64));
    assert_eq!(j.safe_offset(), TRACE.len() as u64);
    assert!(j.flush().is_none());
}

#[test]
fn timeout_emits_the_pending_record() {
    let t0 = Instant::now();
    let mut j = Joiner::new(rules(500, 1 << 20), 100);
    assert!(feed(&mut j, "2026-01-01 a\n  more\n", t0).is_empty());
    assert_eq!(j.deadline(), Some(t0 + Duration::from_secs(1)));
    assert!(j.poll(t0 + Duration::from_millis(999)).is_none());
    // A new line restarts the wait.
    let out = feed(&mut j, "  even more\n", t0 + Duration::from_millis(900));
    assert!(out.is_empty());
    assert!(j.poll(t0 + Duration::from_millis(1500)).is_none());
    assert_eq!(j.safe_offset(), 100);
    let r = j.poll(t0 + Duration::from_millis(1900)).unwrap();
    assert_eq!(&r.text[..], b"2026-01-01 a\n  more\n  even more");
    assert_eq!((r.start, r.end), (100, 100 + 13 + 7 + 12));
    assert_eq!(j.safe_offset(), 132);
    assert_eq!(j.deadline(), None);
    assert!(j.poll(t0 + Duration::from_secs(10)).is_none());
}

#[test]
fn max_lines_and_max_bytes_bound_a_record() {
    let t0 = Instant::now();
    let mut j = Joiner::new(rules(3, 1 << 20), 0);
    let out = feed(&mut j, "2026-x\na\nb\nc\nd\n", t0);
    // Emitted as soon as it has 3 lines; the rest starts a record of its own.
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0].text[..], b"2026-x\na\nb");
    assert_eq!(&j.flush().unwrap().text[..], b"c\nd");

    let mut j = Joiner::new(rules(100, 10), 0);
    let out = feed(&mut j, "2026-abc\nde\nfghij\nk\n", t0);
    // "2026-abc\nde" is 11 bytes > 10: "de" starts the next record, which reaches exactly 10.
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0].text[..], b"2026-abc");
    assert_eq!(&j.flush().unwrap().text[..], b"de\nfghij\nk");
    // A single line over max_bytes is a record of its own.
    let mut j = Joiner::new(rules(100, 4), 0);
    let out = feed(&mut j, "2026-long line\nx\n", t0);
    assert_eq!(&out[0].text[..], b"2026-long line");
}

#[test]
fn lines_before_a_start_and_empty_lines() {
    let t0 = Instant::now();
    let mut j = Joiner::new(rules(100, 1 << 20), 0);
    let out = feed(&mut j, "\norphan 1\norphan 2\n\n2026-a\n\n  b\n", t0);
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0].text[..], b"orphan 1\norphan 2");
    assert_eq!((out[0].start, out[0].end), (1, 19));
    // Empty lines are in no record; the pending one starts after them.
    assert_eq!(j.safe_offset(), 20);
    assert_eq!(&j.flush().unwrap().text[..], b"2026-a\n  b");
    // Only empty lines: nothing pending, the safe offset moves past them.
    let mut j = Joiner::new(rules(100, 1 << 20), 0);
    assert!(feed(&mut j, "\n\n", t0).is_empty());
    assert_eq!(j.safe_offset(), 2);
}

/// Pieces of a line cut at `max_line_bytes` join without `\n`, and a piece that looks like a
/// start line does not start a record.
#[test]
fn cut_lines_continue() {
    let t0 = Instant::now();
    let mut j = Joiner::new(rules(2, 1 << 20), 0);
    let mut out = Vec::new();
    let piece = |t: &'static str, end, cut| Line {
        text: Bytes::from_static(t.as_bytes()),
        end,
        cut,
    };
    j.push(&piece("2026-aa", 7, true), t0, &mut out);
    j.push(&piece("2026-bb", 14, true), t0, &mut out);
    j.push(&piece("cc", 17, false), t0, &mut out);
    j.push(&piece("dd", 20, false), t0, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0].text[..], b"2026-aa2026-bbcc\ndd");
    assert_eq!((out[0].lines, out[0].end), (2, 20));
}

#[test]
fn fuzz_entry_holds_on_a_trace() {
    fuzz_join(TRACE.as_bytes(), 16, 3, 64);
    fuzz_join(b"1a\n~b\n\n2c\r\nd", 1, 1, 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Arbitrary bytes: no panic, and the invariants of `fuzz_join`.
    #[test]
    fn any_bytes(
        data in proptest::collection::vec(any::<u8>(), 0..400),
        max_line in 1usize..40,
        max_lines in 1usize..8,
        max_bytes in 1usize..120,
    ) {
        fuzz_join(&data, max_line, max_lines, max_bytes);
    }

    /// Log-shaped input (start lines, continuations, empty lines, timeouts).
    #[test]
    fn log_shaped(
        parts in proptest::collection::vec(
            prop_oneof!["[0-9][a-z ]{0,12}\n", "\t[a-z. ]{0,20}\n", "~[a-z]{0,3}\n", Just("\n".to_owned())],
            0..60,
        ),
        max_line in 4usize..64,
        max_lines in 1usize..10,
        max_bytes in 8usize..200,
    ) {
        fuzz_join(parts.concat().as_bytes(), max_line, max_lines, max_bytes);
    }
}
