//! The disk buffer of a stream source (the app's stdout/stderr, the access log): where lines go
//! while the sinks are slower than they come, since such a source cannot pause its writer.
//!
//! Lines are appended to segment files in one directory (`<checkpoint dir>/buffer/<source>/`),
//! each record one tag byte (which stream), the line, and `\n` — lines never hold a `\n`, the
//! framer cut them there. Every record has a *buffer offset*: its segment's start (the file
//! name, 20 digits) plus its position in the segment. Offsets only grow, across segments and
//! across restarts, so acknowledgements ([`crate::ack::AckTracker`]) work as for a file.
//!
//! Invariants:
//! - the bytes on disk never exceed the limit: an append that would pass it is refused whole
//!   (the caller drops and counts the lines);
//! - a segment is deleted only once every byte in it was confirmed by every sink
//!   ([`DiskBuffer::release_before`]); after a restart, the segments left are read again from
//!   their start, so what was spilled and not confirmed is shipped again (at least once;
//!   duplicates bounded by one segment);
//! - a failed append (a full disk) is cut back to the last whole record, so the file holds only
//!   whole records; a crash in the middle of an append leaves a partial record at the end of the
//!   last segment, which [`DiskBuffer::open`] cuts off.
//!
//! Appends are not fsynced: a crash of the process loses nothing the kernel holds; a crash of
//! the machine can lose what the page cache had not written yet.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Suffix of segment files.
const SEGMENT_SUFFIX: &str = ".seg";

/// Smallest and largest segment: the limit is cut into about eight, so deleting one frees an
/// eighth, and at most one segment is shipped again after a restart.
const MIN_SEGMENT: u64 = 16 * 1024;
const MAX_SEGMENT: u64 = 8 * 1024 * 1024;

/// Why an append did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The buffer holds its limit.
    #[error("the disk buffer is full ({used} of {limit} bytes)")]
    Full {
        /// Bytes on disk.
        used: u64,
        /// The limit.
        limit: u64,
    },
    /// The write failed (a full file system, an I/O error).
    #[error("cannot write the disk buffer {path}: {source}")]
    Io {
        /// The segment.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// One segment file.
#[derive(Debug)]
struct Segment {
    start: u64,
    len: u64,
    path: PathBuf,
}

/// Segments in offset order, the last one open for appending.
#[derive(Debug)]
pub struct DiskBuffer {
    dir: PathBuf,
    limit: u64,
    segment_size: u64,
    segments: VecDeque<Segment>,
    /// The last segment, open for appending (None until the first append after a roll).
    writer: Option<File>,
    /// Offset just past the last record.
    end: u64,
    used: u64,
    buf: Vec<u8>,
}

impl DiskBuffer {
    /// Opens (creating) `dir` and recovers the segments in it, cutting a partial record off the
    /// last one. `limit` bounds the bytes on disk.
    pub fn open(dir: &Path, limit: u64) -> io::Result<DiskBuffer> {
        std::fs::create_dir_all(dir)?;
        let mut found: Vec<(u64, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if let Some(start) = name
                .strip_suffix(SEGMENT_SUFFIX)
                .and_then(|s| s.parse::<u64>().ok())
            {
                found.push((start, path));
            }
        }
        found.sort();
        let mut segments = VecDeque::with_capacity(found.len());
        let mut end = 0;
        let count = found.len();
        for (i, (start, path)) in found.into_iter().enumerate() {
            let mut len = std::fs::metadata(&path)?.len();
            if i + 1 == count {
                len = cut_partial(&path, len)?;
            }
            if len == 0 {
                std::fs::remove_file(&path)?;
                end = end.max(start);
                continue;
            }
            end = start + len;
            segments.push_back(Segment { start, len, path });
        }
        let used = segments.iter().map(|s| s.len).sum();
        Ok(DiskBuffer {
            dir: dir.to_owned(),
            limit,
            segment_size: (limit / 8).clamp(MIN_SEGMENT, MAX_SEGMENT),
            segments,
            writer: None,
            end,
            used,
            buf: Vec::new(),
        })
    }

    /// Bytes on disk.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// The limit on bytes on disk.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Segment files on disk.
    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// The offset of the first byte still on disk (or [`DiskBuffer::end`] when empty).
    pub fn start(&self) -> u64 {
        self.segments.front().map_or(self.end, |s| s.start)
    }

    /// The offset just past the last record.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Appends `lines` (each with its stream tag) in one write, all or none; returns the end
    /// offset after them.
    pub fn append<'a>(
        &mut self,
        lines: impl Iterator<Item = (u8, &'a [u8])>,
    ) -> Result<u64, AppendError> {
        self.buf.clear();
        for (tag, line) in lines {
            self.buf.push(tag);
            self.buf.extend_from_slice(line);
            self.buf.push(b'\n');
        }
        let n = self.buf.len() as u64;
        if n == 0 {
            return Ok(self.end);
        }
        if self.used + n > self.limit {
            return Err(AppendError::Full {
                used: self.used,
                limit: self.limit,
            });
        }
        let roll = self
            .segments
            .back()
            .is_none_or(|s| s.len >= self.segment_size)
            || self.writer.is_none();
        if roll {
            self.roll().map_err(|source| AppendError::Io {
                path: self.segment_path(self.end),
                source,
            })?;
        }
        let (Some(seg), Some(f)) = (self.segments.back_mut(), self.writer.as_mut()) else {
            return Err(AppendError::Io {
                path: self.dir.clone(),
                source: io::Error::other("no segment open"),
            });
        };
        if let Err(source) = f.write_all(&self.buf) {
            // Keep only whole records: cut back what part of the write went through.
            let _ = f.set_len(seg.len);
            return Err(AppendError::Io {
                path: seg.path.clone(),
                source,
            });
        }
        seg.len += n;
        self.end += n;
        self.used += n;
        Ok(self.end)
    }

    /// Starts a new segment at the end (or reopens the last one if it has room, after a
    /// restart).
    fn roll(&mut self) -> io::Result<()> {
        if let Some(last) = self.segments.back() {
            if last.len < self.segment_size && self.writer.is_none() {
                self.writer = Some(OpenOptions::new().append(true).open(&last.path)?);
                return Ok(());
            }
        }
        let path = self.segment_path(self.end);
        let f = OpenOptions::new()
            .append(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        // A file left at this name by a failed roll holds no record yet.
        f.set_len(0)?;
        self.writer = Some(f);
        self.segments.push_back(Segment {
            start: self.end,
            len: 0,
            path,
        });
        Ok(())
    }

    fn segment_path(&self, start: u64) -> PathBuf {
        self.dir.join(format!("{start:020}{SEGMENT_SUFFIX}"))
    }

    /// Where the bytes at `offset` are: the segment's path and the range `[offset, end)` of
    /// whole records readable in it. `None` when `offset` is at the end.
    pub fn locate(&self, offset: u64) -> Option<(PathBuf, u64, u64)> {
        let seg = self
            .segments
            .iter()
            .find(|s| offset < s.start + s.len && s.len > 0)?;
        let from = offset.max(seg.start);
        Some((
            seg.path.clone(),
            from - seg.start,
            seg.start + seg.len - from,
        ))
    }

    /// Deletes the segments every byte of which is before `offset` (confirmed by every sink);
    /// returns how many. The last segment goes too once it is wholly confirmed: the next
    /// append starts a new one.
    pub fn release_before(&mut self, offset: u64) -> usize {
        let mut n = 0;
        while let Some(seg) = self.segments.front() {
            if seg.start + seg.len > offset || seg.len == 0 {
                break;
            }
            if self.segments.len() == 1 {
                self.writer = None;
            }
            if let Err(e) = std::fs::remove_file(&seg.path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %seg.path.display(), error = %e, "cannot delete a disk buffer segment whose lines were all delivered; retrying later");
                    break;
                }
            }
            self.used -= seg.len;
            self.segments.pop_front();
            n += 1;
        }
        n
    }
}

/// Reads up to `max` bytes of whole records from `path` at `pos` (past the end of the file is
/// empty); records cut by `max` are left for the next read.
pub fn read_records(path: &Path, pos: u64, len: u64, max: usize) -> io::Result<Vec<u8>> {
    let want = usize::try_from(len).unwrap_or(usize::MAX).min(max);
    let mut buf = vec![0; want];
    let f = File::open(path)?;
    let mut got = 0;
    while got < want {
        match f.read_at(&mut buf[got..], pos + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    let whole = memchr::memrchr(b'\n', &buf).map_or(0, |i| i + 1);
    buf.truncate(whole);
    Ok(buf)
}

/// Cuts a partial last record (a crash during an append) off a segment; returns its length.
fn cut_partial(path: &Path, len: u64) -> io::Result<u64> {
    if len == 0 {
        return Ok(0);
    }
    let f = OpenOptions::new().read(true).write(true).open(path)?;
    let tail = len.min(32 << 20);
    let mut buf = vec![0; usize::try_from(tail).unwrap_or(0)];
    f.read_exact_at(&mut buf, len - tail)?;
    let keep = match memchr::memrchr(b'\n', &buf) {
        Some(i) => len - tail + i as u64 + 1,
        None if tail == len => 0,
        None => len,
    };
    if keep != len {
        tracing::warn!(path = %path.display(), cut = len - keep, "the disk buffer's last segment ends in a partial record (a crash during a write); cutting it off");
        f.set_len(keep)?;
    }
    Ok(keep)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn lines(n: std::ops::Range<u32>) -> Vec<Vec<u8>> {
        n.map(|i| format!("line {i:05}").into_bytes()).collect()
    }

    fn append(b: &mut DiskBuffer, ls: &[Vec<u8>]) -> Result<u64, AppendError> {
        b.append(ls.iter().map(|l| (b'o', l.as_slice())))
    }

    /// Reads every record from `from` to the end, as (tag, line).
    fn read_all(b: &DiskBuffer, mut from: u64) -> Vec<(u8, String)> {
        let mut out = Vec::new();
        while let Some((path, pos, len)) = b.locate(from) {
            let data = read_records(&path, pos, len, 100).unwrap();
            assert!(!data.is_empty());
            from += data.len() as u64;
            for r in data.split(|c| *c == b'\n').filter(|r| !r.is_empty()) {
                out.push((r[0], String::from_utf8(r[1..].to_vec()).unwrap()));
            }
        }
        out
    }

    /// Appends roll to a new segment at the segment size; records read back in order across
    /// segments, in reads cut at whole records.
    #[test]
    fn segments_roll_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = DiskBuffer::open(dir.path(), 128 * 1024).unwrap();
        assert_eq!(b.segment_size, MIN_SEGMENT);
        let ls = lines(0..5000);
        for chunk in ls.chunks(100) {
            append(&mut b, chunk).unwrap();
        }
        // 5000 records of 12 bytes: 60000 bytes in 16 KiB segments.
        assert_eq!((b.end(), b.used()), (60000, 60000));
        assert_eq!(b.segments(), 4);
        let back = read_all(&b, 0);
        assert_eq!(back.len(), 5000);
        assert!(back.iter().all(|(t, _)| *t == b'o'));
        assert_eq!(back[4999].1, "line 04999");
    }

    /// A segment is deleted only once every byte of it is confirmed; the space comes back.
    #[test]
    fn ack_then_delete() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = DiskBuffer::open(dir.path(), 128 * 1024).unwrap();
        for chunk in lines(0..3000).chunks(100) {
            append(&mut b, chunk).unwrap();
        }
        let first_end = {
            let (_, _, len) = b.locate(0).unwrap();
            len
        };
        assert_eq!(b.release_before(first_end - 1), 0, "one byte unconfirmed");
        assert_eq!(b.segments(), 3);
        assert_eq!(b.release_before(first_end), 1);
        assert_eq!(b.used(), 36000 - first_end);
        assert_eq!(b.start(), first_end);
        assert_eq!(b.release_before(b.end()), 2, "the last one too");
        assert_eq!((b.used(), b.segments()), (0, 0));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // Appending goes on at the same offsets.
        let end = append(&mut b, &lines(0..1)).unwrap();
        assert_eq!(end, 36012);
        assert_eq!(read_all(&b, 36000), [(b'o', "line 00000".to_owned())]);
    }

    /// After a restart the unconfirmed segments are found again at their offsets, a torn last
    /// record is cut off, and appends continue after them.
    #[test]
    fn restart_recovers_unconfirmed_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = DiskBuffer::open(dir.path(), 128 * 1024).unwrap();
        for chunk in lines(0..3000).chunks(100) {
            append(&mut b, chunk).unwrap();
        }
        let first_end = b.locate(0).unwrap().2;
        b.release_before(first_end);
        let (end, used) = (b.end(), b.used());
        drop(b);
        // A crash in the middle of a write.
        let last = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .max()
            .unwrap();
        let mut f = OpenOptions::new().append(true).open(&last).unwrap();
        f.write_all(b"oline 9999").unwrap();
        drop(f);

        let mut b = DiskBuffer::open(dir.path(), 128 * 1024).unwrap();
        assert_eq!((b.start(), b.end(), b.used()), (first_end, end, used));
        let back = read_all(&b, b.start());
        assert_eq!(back.len() as u64, (end - first_end) / 12);
        assert_eq!(back.last().unwrap().1, "line 02999");
        append(&mut b, &lines(3000..3001)).unwrap();
        assert_eq!(read_all(&b, end), [(b'o', "line 03000".to_owned())]);
    }

    /// At the limit an append is refused whole and nothing is written; after a release it
    /// fits again.
    #[test]
    fn full_refuses_whole_appends() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = DiskBuffer::open(dir.path(), 64 * 1024).unwrap();
        let mut refused = 0;
        for chunk in lines(0..10000).chunks(50) {
            match append(&mut b, chunk) {
                Ok(_) => {}
                Err(AppendError::Full { used, limit }) => {
                    assert!(used + 600 > limit, "{used} {limit}");
                    refused += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(b.used() <= 64 * 1024);
        assert_eq!(refused, 200 - b.used() / 600);
        let on_disk: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert_eq!(on_disk, b.used());
        let first_end = b.locate(0).unwrap().2;
        b.release_before(first_end);
        append(&mut b, &lines(0..50)).unwrap();
    }
}
