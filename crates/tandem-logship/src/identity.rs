//! File identity: device and inode say which file this is; a content fingerprint says whether it
//! still holds the same content.
//!
//! The fingerprint is xxh3 of the first [`FINGERPRINT_BYTES`] bytes (or of all of them while the
//! file is shorter; it is recomputed as the file grows until it covers the full length). It
//! tells apart:
//! - an inode reused by a new file after the old one was deleted (same device and inode,
//!   different first bytes);
//! - a file truncated and written again (copytruncate: same inode, new first bytes), even when
//!   it grew past the old read offset before Tandem looked;
//! - the copy copytruncate makes (new inode, the old first bytes), so reading resumes in the copy
//!   where it stopped in the original.
//!
//! Limits: two files whose first bytes (up to 1 KiB) are identical look like copies of each
//! other; an empty file has no fingerprint and is known by device and inode alone.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use xxhash_rust::xxh3::xxh3_64;

/// How many leading bytes a full fingerprint covers.
pub const FINGERPRINT_BYTES: usize = 1024;

/// A hash of a file's first `len` bytes; `len` 0 means none yet (the file was empty).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fingerprint {
    /// xxh3-64 of the first `len` bytes.
    pub hash: u64,
    /// How many bytes it covers, up to [`FINGERPRINT_BYTES`].
    pub len: u32,
}

impl Fingerprint {
    /// The fingerprint of `prefix` (at most [`FINGERPRINT_BYTES`] are used).
    pub fn of(prefix: &[u8]) -> Fingerprint {
        let p = &prefix[..prefix.len().min(FINGERPRINT_BYTES)];
        Fingerprint {
            hash: xxh3_64(p),
            // At most FINGERPRINT_BYTES, so it fits.
            len: u32::try_from(p.len()).unwrap_or(u32::MAX),
        }
    }

    /// Whether this covers no bytes (the file was empty when it was taken).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether it covers the full [`FINGERPRINT_BYTES`].
    pub fn is_full(&self) -> bool {
        self.len as usize >= FINGERPRINT_BYTES
    }

    /// Whether `prefix` (the file's first bytes, as many as it has up to
    /// [`FINGERPRINT_BYTES`]) starts with the bytes this fingerprint was taken of. An empty
    /// fingerprint matches anything.
    pub fn matches(&self, prefix: &[u8]) -> bool {
        let n = self.len as usize;
        n == 0 || (prefix.len() >= n && xxh3_64(&prefix[..n]) == self.hash)
    }
}

/// Reads the first bytes of `file` (up to `buf.len()`), looping over short reads; returns how
/// many were read (fewer at the end of the file).
pub fn read_prefix(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_match_their_prefix_only() {
        let data = vec![7u8; 3000];
        let full = Fingerprint::of(&data);
        assert!(full.is_full());
        assert!(full.matches(&data[..1024]));
        assert!(
            !full.matches(&data[..1000]),
            "a shorter file cannot hold the same 1 KiB"
        );
        let mut other = data.clone();
        other[1023] = 8;
        assert!(!full.matches(&other[..1024]));
        other[1023] = 7;
        other[1024] = 8;
        assert!(
            full.matches(&other[..1024]),
            "bytes past 1 KiB do not count"
        );
        let small = Fingerprint::of(&data[..10]);
        assert_eq!(small.len, 10);
        assert!(
            small.matches(&data[..1024]),
            "a grown file still starts the same"
        );
        assert!(Fingerprint::default().matches(b"anything"));
    }
}
