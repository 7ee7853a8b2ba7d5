//! Multi-line joining (stack traces): lines -> records of one or more lines. Pure: no I/O, no
//! clock of its own (the caller passes `now`), so every case is tested without files or sleeps.
//!
//! A record starts at a line matching the `start` pattern; the lines after it that do not match
//! join it, separated by `\n`. It is complete, and emitted, when:
//! - the next start line comes (that line begins the next record);
//! - `timeout` passes with no new line ([`Joiner::poll`]): the writer may still be writing the
//!   trace, so a record is held that long;
//! - it has `max_lines` lines, or adding a line would take it past `max_bytes` (the line then
//!   begins the next record);
//! - the file is released ([`Joiner::flush`]).
//!
//! Lines before any start line, with no record pending, form a record of their own the same
//! way. Empty lines belong to no record (as without joining). A piece of a line longer than
//! `max_line_bytes` continues its line: it joins without `\n` and is never a start line.
//!
//! Offsets, for the checkpoint: each record carries `[start, end)`, from the start of its first
//! line to past its last line. [`Joiner::safe_offset`] is where the pending record starts (or,
//! with none pending, past the last line pushed): the source never acknowledges beyond it, so a
//! checkpoint never lands inside a record, and after a crash reading resumes at the first line
//! of the record that was pending — it is joined again whole.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use regex::bytes::Regex;

use crate::framer::Line;

/// How lines are joined.
#[derive(Clone, Debug)]
pub struct JoinRules {
    /// The first line of a record.
    pub start: Regex,
    /// A pending record is emitted this long after its last line.
    pub timeout: Duration,
    /// Most lines in a record (at least 1).
    pub max_lines: usize,
    /// Most bytes in a record, `\n` separators included (a single longer line is a record).
    pub max_bytes: usize,
}

impl JoinRules {
    /// The rules of a source's `multiline` section. The pattern was checked with the `str`
    /// engine; the same syntax compiles for bytes.
    pub fn from_config(m: &tandem_config::Multiline) -> Option<JoinRules> {
        Some(JoinRules {
            start: Regex::new(m.start.0.as_str()).ok()?,
            timeout: m.timeout,
            max_lines: m.max_lines.max(1),
            max_bytes: m.max_bytes,
        })
    }
}

/// A complete record: its text and the file range of its lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Joined {
    /// The lines, joined by `\n`.
    pub text: Bytes,
    /// Offset of its first line.
    pub start: u64,
    /// Offset just past its last line.
    pub end: u64,
    /// Lines in it (the pieces of a cut line count as one).
    pub lines: usize,
}

#[derive(Debug)]
struct Pending {
    /// The first line, while it is the only one: no copy for a one-line record.
    first: Bytes,
    /// The joined text once there is a second line.
    joined: Option<BytesMut>,
    len: usize,
    lines: usize,
    start: u64,
    end: u64,
    last: Instant,
    /// The last line was cut at `max_line_bytes`: the next piece continues it.
    cut: bool,
}

/// The joining state of one file.
#[derive(Debug)]
pub struct Joiner {
    rules: JoinRules,
    pending: Option<Pending>,
    /// Past the last line pushed.
    offset: u64,
}

impl Joiner {
    /// A joiner whose first line starts at `offset`.
    pub fn new(rules: JoinRules, offset: u64) -> Joiner {
        Joiner {
            rules,
            pending: None,
            offset,
        }
    }

    /// Where the pending record starts, or past the last line when none is pending: everything
    /// before it was emitted (or was empty lines).
    pub fn safe_offset(&self) -> u64 {
        self.pending.as_ref().map_or(self.offset, |p| p.start)
    }

    /// Bytes held in the pending record.
    pub fn held(&self) -> usize {
        self.pending.as_ref().map_or(0, |p| p.len)
    }

    /// Takes `line` (the next one of the file, read at `now`), appending completed records to
    /// `out`.
    pub fn push(&mut self, line: &Line, now: Instant, out: &mut Vec<Joined>) {
        let start = self.offset;
        self.offset = line.end;
        let text = &line.text;
        let continues_cut = self.pending.as_ref().is_some_and(|p| p.cut);
        if text.is_empty() && !continues_cut {
            return;
        }
        if let Some(p) = &mut self.pending {
            let sep = usize::from(!p.cut);
            let fits = p.len + sep + text.len() <= self.rules.max_bytes;
            // A piece of a cut line always continues it (within max_bytes); a line joins when
            // there is room and it does not start a record.
            let joins = if p.cut {
                fits
            } else {
                fits && p.lines < self.rules.max_lines && !self.rules.start.is_match(text)
            };
            if joins {
                let joined = p.joined.get_or_insert_with(|| {
                    let mut b = BytesMut::with_capacity((p.len + 1 + text.len()).max(256));
                    b.extend_from_slice(&p.first);
                    b
                });
                if sep == 1 {
                    joined.extend_from_slice(b"\n");
                }
                joined.extend_from_slice(text);
                p.len += sep + text.len();
                p.lines += sep;
                p.end = line.end;
                p.last = now;
                p.cut = line.cut;
                if p.lines >= self.rules.max_lines && !p.cut {
                    out.extend(self.take());
                }
                return;
            }
            out.extend(self.take());
        }
        self.pending = Some(Pending {
            first: text.clone(),
            joined: None,
            len: text.len(),
            lines: 1,
            start,
            end: line.end,
            last: now,
            cut: line.cut,
        });
        if self.rules.max_lines == 1 && !line.cut {
            out.extend(self.take());
        }
    }

    /// The pending record, if no line came for `timeout` before `now`.
    pub fn poll(&mut self, now: Instant) -> Option<Joined> {
        match &self.pending {
            Some(p) if now.saturating_duration_since(p.last) >= self.rules.timeout => self.take(),
            _ => None,
        }
    }

    /// When the pending record times out, if one is pending.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending.as_ref().map(|p| p.last + self.rules.timeout)
    }

    /// The pending record, whatever its age: the file will not grow.
    pub fn flush(&mut self) -> Option<Joined> {
        self.take()
    }

    fn take(&mut self) -> Option<Joined> {
        let p = self.pending.take()?;
        Some(Joined {
            text: match p.joined {
                Some(b) => b.freeze(),
                None => p.first,
            },
            start: p.start,
            end: p.end,
            lines: p.lines,
        })
    }
}

/// Fuzzing and property entry: frames `data` with lines cut at `max_line`, joins them (a line
/// starting with a digit starts a record; a line starting with `~` is followed by a timeout),
/// flushes, and checks the invariants the checkpoint relies on:
/// - records come in file order, each `[start, end)` non-empty, after the previous one;
/// - every non-empty line is in exactly one record, and a record's text is its lines joined by
///   `\n` (pieces of a cut line without one): joining then splitting gives the lines back;
/// - records respect `max_lines`, and `max_bytes` unless they hold one line or piece;
/// - the safe offset never goes back, and no record emitted later starts before it.
#[doc(hidden)]
pub fn fuzz_join(data: &[u8], max_line: usize, max_lines: usize, max_bytes: usize) {
    use crate::framer::LineFramer;
    let max_line = max_line.clamp(1, 4096);
    static START: std::sync::OnceLock<Option<Regex>> = std::sync::OnceLock::new();
    let Some(start) = START.get_or_init(|| Regex::new(r"^\d").ok()) else {
        return;
    };
    let rules = JoinRules {
        start: start.clone(),
        timeout: Duration::from_millis(5),
        max_lines: max_lines.clamp(1, 64),
        max_bytes: max_bytes.clamp(1, 1 << 16),
    };
    let mut framer = LineFramer::new(0, max_line);
    let mut lines = Vec::new();
    framer.push(&Bytes::copy_from_slice(data), &mut lines);
    framer.finish(&mut lines);

    let mut j = Joiner::new(rules.clone(), 0);
    let mut out: Vec<Joined> = Vec::new();
    let t0 = Instant::now();
    let mut safe = 0;
    let mut check_safe = |j: &Joiner, out: &[Joined], emitted_before: usize| {
        let s = j.safe_offset();
        assert!(s >= safe, "safe offset went back: {s} < {safe}");
        safe = s;
        // Records emitted so far end at or before it; the pending one starts at it.
        assert!(out[..emitted_before].iter().all(|r| r.end <= s));
    };
    for (i, line) in lines.iter().enumerate() {
        let now = t0 + Duration::from_millis(i as u64);
        j.push(line, now, &mut out);
        check_safe(&j, &out, out.len());
        if line.text.first() == Some(&b'~') {
            out.extend(j.poll(now + rules.timeout));
            check_safe(&j, &out, out.len());
        }
    }
    out.extend(j.flush());
    assert_eq!(j.safe_offset(), framer.line_start());

    // Lines with their starts.
    let mut at = 0;
    let spans: Vec<(u64, &Line)> = lines
        .iter()
        .map(|l| {
            let s = at;
            at = l.end;
            (s, l)
        })
        .collect();
    let mut prev_end = 0;
    let mut li = 0;
    for r in &out {
        assert!(
            r.start < r.end && r.start >= prev_end,
            "order: {r:?} after {prev_end}"
        );
        assert!(r.lines >= 1 && r.lines <= rules.max_lines);
        prev_end = r.end;
        // Lines before the record are empty ones (no record holds them).
        while spans[li].0 < r.start {
            assert!(spans[li].1.text.is_empty(), "a line outside every record");
            li += 1;
        }
        assert_eq!(spans[li].0, r.start, "a record starts at a line");
        let mut want = Vec::new();
        let mut units = 0;
        let mut after_cut = false;
        while li < spans.len() && spans[li].1.end <= r.end {
            let l = spans[li].1;
            if !l.text.is_empty() || after_cut {
                if units > 0 && !after_cut {
                    want.push(b'\n');
                }
                want.extend_from_slice(&l.text);
                units += 1;
            }
            after_cut = l.cut;
            li += 1;
        }
        assert_eq!(spans[li - 1].1.end, r.end, "a record ends at a line");
        assert_eq!(&r.text[..], &want[..], "joined text is its lines");
        assert!(
            r.text.len() <= rules.max_bytes || units == 1,
            "max_bytes: {r:?}"
        );
    }
    assert!(spans[li..].iter().all(|(_, l)| l.text.is_empty()));
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
