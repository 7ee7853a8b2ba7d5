//! Splits the bytes of a file into lines, each with the file offset just past it.
//!
//! Invariants:
//! - bytes are pushed in file order, with no gap; [`LineFramer::line_start`] is the offset where
//!   the next line begins, so everything before it has been emitted. Checkpoints only ever hold
//!   such offsets, and a restart from one begins at a line (or at a piece of a split line).
//! - a line without its `\n` yet is held, not emitted: the writer may be in the middle of it.
//!   [`LineFramer::finish`] emits it when the file is released and can no longer grow.
//! - a line longer than `max_line` bytes is cut into pieces of `max_line` bytes (the last piece
//!   shorter), so memory per file stays bounded; [`LineFramer::take_splits`] counts such lines.
//! - one `\r` before the `\n` is dropped (CRLF files); offsets still count it.
//!
//! Lines are `Bytes` slices of the pushed buffer: a line inside one read costs no copy. A line
//! that spans two reads is copied once, into the held buffer.

use bytes::{Bytes, BytesMut};

/// One line (or a piece of a long one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// The text, without `\n` (and without the `\r` before it).
    pub text: Bytes,
    /// The file offset just past this line (past its `\n`).
    pub end: u64,
    /// Cut at `max_line` bytes rather than ended by `\n`.
    pub cut: bool,
}

/// Line framing state of one file.
#[derive(Debug)]
pub struct LineFramer {
    held: BytesMut,
    line_start: u64,
    max_line: usize,
    /// Inside a line that was already cut at least once.
    cutting: bool,
    splits: u64,
}

impl LineFramer {
    /// A framer whose first byte is at file offset `offset`; lines longer than `max_line` bytes
    /// (at least 1) are cut.
    pub fn new(offset: u64, max_line: usize) -> LineFramer {
        LineFramer {
            held: BytesMut::new(),
            line_start: offset,
            max_line: max_line.max(1),
            cutting: false,
            splits: 0,
        }
    }

    /// The offset where the next line starts: every byte before it was emitted in a line.
    pub fn line_start(&self) -> u64 {
        self.line_start
    }

    /// The offset of the next byte to push.
    pub fn read_offset(&self) -> u64 {
        self.line_start + self.held.len() as u64
    }

    /// Bytes of an unfinished line held.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Lines split since the last call.
    pub fn take_splits(&mut self) -> u64 {
        std::mem::take(&mut self.splits)
    }

    /// Frames `data`, the bytes at [`LineFramer::read_offset`], appending complete lines to
    /// `out`.
    pub fn push(&mut self, data: &Bytes, out: &mut Vec<Line>) {
        let mut rest = data.clone();
        while !rest.is_empty() {
            match memchr::memchr(b'\n', &rest) {
                Some(i) => {
                    let seg = rest.split_to(i + 1);
                    let text = if self.held.is_empty() {
                        seg.slice(..i)
                    } else {
                        self.held.extend_from_slice(&seg[..i]);
                        self.held.split().freeze()
                    };
                    self.emit_line(text, 1, out);
                }
                None => {
                    self.held.extend_from_slice(&rest);
                    rest.clear();
                    while self.held.len() > self.max_line {
                        let piece = self.held.split_to(self.max_line).freeze();
                        self.emit_cut(piece, out);
                    }
                }
            }
        }
    }

    /// Emits the held unfinished line, if any: the file was released and will not grow.
    pub fn finish(&mut self, out: &mut Vec<Line>) {
        if !self.held.is_empty() {
            let text = self.held.split().freeze();
            self.emit_line(text, 0, out);
        }
    }

    /// Emits a line `text` followed by `terminator` bytes (1 for `\n`, 0 at the end of a file).
    fn emit_line(&mut self, mut text: Bytes, terminator: u64, out: &mut Vec<Line>) {
        let end = self.line_start + text.len() as u64 + terminator;
        if terminator == 1 && text.last() == Some(&b'\r') {
            text.truncate(text.len() - 1);
        }
        while text.len() > self.max_line {
            let piece = text.split_to(self.max_line);
            self.emit_cut(piece, out);
        }
        self.line_start = end;
        out.push(Line {
            text,
            end,
            cut: false,
        });
        self.cutting = false;
    }

    fn emit_cut(&mut self, piece: Bytes, out: &mut Vec<Line>) {
        if !self.cutting {
            self.splits += 1;
            self.cutting = true;
        }
        self.line_start += piece.len() as u64;
        out.push(Line {
            text: piece,
            end: self.line_start,
            cut: true,
        });
    }
}

/// Fuzzing entry (`fuzz/fuzz_targets/log_lines.rs`): frames `data` in the pieces `splits` gives,
/// with lines cut at `max_line`, parses each line as JSON, and checks that the lines and their
/// offsets account for every byte exactly once.
#[cfg(fuzzing)]
pub fn fuzz_frame(data: &[u8], splits: &[usize], max_line: usize) {
    let max_line = max_line.clamp(1, 4096);
    let mut f = LineFramer::new(0, max_line);
    let mut out = Vec::new();
    let mut at = 0;
    for &s in splits.iter().chain(std::iter::once(&data.len())) {
        let to = s.clamp(at, data.len());
        f.push(&Bytes::copy_from_slice(&data[at..to]), &mut out);
        at = to;
        assert!(f.held() <= max_line, "held {} > {max_line}", f.held());
    }
    assert_eq!(f.read_offset(), data.len() as u64);
    f.finish(&mut out);
    assert_eq!(f.held(), 0);
    let mut prev = 0usize;
    for line in &out {
        let end = usize::try_from(line.end).unwrap_or(usize::MAX);
        assert!(end > prev, "offsets go forward");
        assert!(line.text.len() <= max_line);
        let span = &data[prev..end];
        let body = if line.cut || !span.ends_with(b"\n") {
            span
        } else if span.ends_with(b"\r\n") {
            &span[..span.len() - 2]
        } else {
            &span[..span.len() - 1]
        };
        // Every byte of the span is in the text, or is its newline (and the `\r` before it).
        assert_eq!(&line.text[..], body, "text matches its bytes");
        let _ = crate::parse::Parser::new(&tandem_config::LogParser::Json).parse(line.text.clone());
        prev = end;
    }
    assert_eq!(prev, data.len(), "every byte is in a line");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn frame_in_pieces(input: &[u8], cuts: &[usize], max: usize) -> (Vec<Line>, LineFramer) {
        let mut f = LineFramer::new(100, max);
        let mut out = Vec::new();
        let mut at = 0;
        for &c in cuts.iter().chain(std::iter::once(&input.len())) {
            let c = c.clamp(at, input.len());
            f.push(&Bytes::copy_from_slice(&input[at..c]), &mut out);
            at = c;
        }
        (out, f)
    }

    fn texts(lines: &[Line]) -> Vec<&[u8]> {
        lines.iter().map(|l| &l.text[..]).collect()
    }

    /// Every way of splitting the input into two or three reads gives the same lines and
    /// offsets as one read: partial lines are held across reads, never emitted early.
    #[test]
    fn every_split_gives_the_same_lines() {
        let input = b"alpha\nbe\r\n\ngamma delta\nunfinished";
        let (whole, f) = frame_in_pieces(input, &[], 1024);
        assert_eq!(
            texts(&whole),
            [&b"alpha"[..], b"be", b"", b"gamma delta"],
            "{whole:?}"
        );
        assert_eq!(
            whole.iter().map(|l| l.end).collect::<Vec<_>>(),
            [106, 110, 111, 123]
        );
        assert_eq!((f.line_start(), f.held()), (123, 10));
        assert_eq!(f.read_offset(), 100 + input.len() as u64);
        for a in 0..=input.len() {
            for b in a..=input.len() {
                let (lines, f2) = frame_in_pieces(input, &[a, b], 1024);
                assert_eq!(lines, whole, "split at {a},{b}");
                assert_eq!(f2.line_start(), 123);
            }
        }
    }

    /// The held line is emitted by `finish`, with its end at the end of the data.
    #[test]
    fn finish_emits_the_unfinished_line() {
        let (mut lines, mut f) = frame_in_pieces(b"a\nbc", &[3], 16);
        f.finish(&mut lines);
        assert_eq!(texts(&lines), [&b"a"[..], b"bc"]);
        assert_eq!(lines[1].end, 104);
        assert_eq!(f.held(), 0);
        let before = lines.len();
        f.finish(&mut lines);
        assert_eq!(lines.len(), before, "nothing held, nothing emitted");
    }

    /// Lines longer than max are cut into max-sized pieces whose offsets are exact; a line of
    /// exactly max bytes is not cut, even when its `\n` arrives in a later read. Each long line
    /// counts once, however many pieces it has.
    #[test]
    fn long_lines_are_cut_and_counted() {
        let input = b"0123456789ABCD\n01234\nabcdefghij\nxy\n0123456789\n";
        for a in 0..=input.len() {
            let (lines, mut f) = frame_in_pieces(input, &[a], 5);
            assert_eq!(
                texts(&lines),
                [
                    &b"01234"[..],
                    b"56789",
                    b"ABCD",
                    b"01234",
                    b"abcde",
                    b"fghij",
                    b"xy",
                    b"01234",
                    b"56789"
                ],
                "split at {a}"
            );
            let ends: Vec<u64> = lines.iter().map(|l| l.end).collect();
            assert_eq!(
                ends,
                [105, 110, 115, 121, 126, 132, 135, 140, 146],
                "split at {a}"
            );
            let cut: Vec<bool> = lines.iter().map(|l| l.cut).collect();
            // The last piece of a long line ends at its `\n`, wherever the read splits.
            assert_eq!(
                cut,
                [true, true, false, false, true, false, false, true, false],
                "split at {a}"
            );
            assert_eq!(f.take_splits(), 3, "split at {a}");
            assert_eq!(f.take_splits(), 0);
        }
    }

    /// A line that never ends still uses at most max bytes of memory.
    #[test]
    fn endless_line_stays_bounded() {
        let mut f = LineFramer::new(0, 64);
        let mut out = Vec::new();
        for _ in 0..1000 {
            f.push(&Bytes::from_static(&[b'x'; 100]), &mut out);
            assert!(f.held() <= 64);
        }
        assert_eq!(out.len() * 64 + f.held(), 100_000);
        assert!(out.iter().all(|l| l.cut && l.text.len() == 64));
        assert_eq!(f.take_splits(), 1);
        assert_eq!(f.line_start() + f.held() as u64, 100_000);
    }

    /// Lines inside one read are slices of it, not copies.
    #[test]
    fn lines_within_a_read_share_its_buffer() {
        let data = Bytes::from_static(b"one\ntwo\n");
        let mut f = LineFramer::new(0, 1024);
        let mut out = Vec::new();
        f.push(&data, &mut out);
        assert_eq!(out[1].text.as_ptr(), data[4..].as_ptr());
    }
}
