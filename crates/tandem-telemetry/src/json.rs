//! JSON string escaping for the hand-written JSON encoders: the access log's lines and log
//! shipping's NDJSON, Loki and OTLP/JSON bodies (`tandem-logship` uses this one).
//!
//! The output is what serde_json writes for the same string: `"` and `\` escaped, the control
//! characters as `\b`, `\t`, `\n`, `\f`, `\r` or `\u00XX`, everything else (non-ASCII and DEL
//! included) as is. It is the per-line hot spot of every such encoder, so it goes eight bytes
//! at a time: each word is stored whole and, when it holds a byte to escape, cut back to that
//! byte; no call per run of plain bytes (a JSON log line has a quote every few bytes).

/// Appends `s` as a JSON string, quotes included.
#[inline]
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    escape(out, s);
    out.push(b'"');
}

/// Appends `s` escaped for the inside of a JSON string (no quotes).
pub fn escape(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    // Most values (names, paths, user agents) have nothing to escape: one scan, one copy.
    if !needs_escape(bytes) {
        out.extend_from_slice(bytes);
        return;
    }
    let mut i = 0;
    while let Some(word) = bytes.get(i..i + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        let flagged = escape_mask(u64::from_le_bytes(w));
        // The whole word in one store; when a byte needs escaping, cut back to it (the lowest
        // flag is exact: the bytes before it need no escape) and escape it.
        out.extend_from_slice(&w);
        if flagged == 0 {
            i += 8;
            continue;
        }
        let plain = (flagged.trailing_zeros() / 8) as usize;
        out.truncate(out.len() - (8 - plain));
        push_escaped(out, w[plain]);
        i += plain + 1;
    }
    for &b in &bytes[i..] {
        if ESCAPES[usize::from(b)] == 0 {
            out.push(b);
        } else {
            push_escaped(out, b);
        }
    }
}

/// Whether any byte of `s` needs an escape.
#[inline]
pub fn needs_escape(s: &[u8]) -> bool {
    any_flagged(s, escape_mask)
}

/// Whether `s` is all ASCII with nothing to escape: it can be written into a JSON string as it
/// is, without looking for UTF-8 sequences (the usual path, authority, user agent).
#[inline]
pub fn is_plain_ascii(s: &[u8]) -> bool {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    !any_flagged(s, |w| escape_mask(w) | (w & HIGH))
}

/// Whether `flags` flags a byte of `s`, looked at eight bytes at a time: whole words, then the
/// last eight bytes (overlapping the words before); strings shorter than a word are two
/// overlapping halves (or quarters) put together. Every byte is looked at, none made up, and
/// no loop runs for a short string.
#[inline(always)]
fn any_flagged(s: &[u8], flags: impl Fn(u64) -> u64) -> bool {
    let n = s.len();
    if n >= 8 {
        let mut words = s.chunks_exact(8);
        for w in &mut words {
            if flags(word(w)) != 0 {
                return true;
            }
        }
        !words.remainder().is_empty() && flags(word(&s[n - 8..])) != 0
    } else if n >= 4 {
        let mut lo = [0u8; 4];
        let mut hi = [0u8; 4];
        lo.copy_from_slice(&s[..4]);
        hi.copy_from_slice(&s[n - 4..]);
        let w = u64::from(u32::from_le_bytes(lo)) | u64::from(u32::from_le_bytes(hi)) << 32;
        flags(w) != 0
    } else if n >= 2 {
        let mut lo = [0u8; 2];
        let mut hi = [0u8; 2];
        lo.copy_from_slice(&s[..2]);
        hi.copy_from_slice(&s[n - 2..]);
        let half = u64::from(u16::from_le_bytes(lo)) | u64::from(u16::from_le_bytes(hi)) << 16;
        flags(half | half << 32) != 0
    } else if n == 1 {
        flags(u64::from(s[0]) * 0x0101_0101_0101_0101) != 0
    } else {
        false
    }
}

/// The first eight bytes of `s`, little-endian.
#[inline(always)]
fn word(s: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&s[..8]);
    u64::from_le_bytes(w)
}

/// Appends the escape of `b`, one of the bytes [`escape_mask`] flags.
#[inline]
fn push_escaped(out: &mut Vec<u8>, b: u8) {
    match ESCAPES[usize::from(b)] {
        b'u' => push_control(out, b),
        short => out.extend_from_slice(&[b'\\', short]),
    }
}

/// Per byte: 0 when it needs no escape, else the letter after `\` (`u` for `\u00XX`), as
/// serde_json escapes.
static ESCAPES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = b'u';
        b += 1;
    }
    t[0x08] = b'b';
    t[0x0c] = b'f';
    t[b'\n' as usize] = b'n';
    t[b'\r' as usize] = b'r';
    t[b'\t' as usize] = b't';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// A control character without a short escape, as `\u00XX`.
#[cold]
fn push_control(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(&[
        b'\\',
        b'u',
        b'0',
        b'0',
        HEX[usize::from(b >> 4)],
        HEX[usize::from(b & 0xf)],
    ]);
}

/// The high bit of each byte of `w` (eight bytes, little-endian) that is a control character,
/// `"` or `\`, and possibly of bytes after such a byte: the classic "byte less than n" and
/// "zero byte" word tests, whose borrows only ever flag bytes above a true match. Zero: no
/// byte needs escaping; else the lowest flag is exact.
#[inline]
fn escape_mask(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    control | zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\')))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Written as serde_json writes it, and read back by serde_json to the same string.
    fn check(s: &str) {
        let mut out = b"x".to_vec();
        push_str(&mut out, s);
        let out = std::str::from_utf8(&out[1..]).unwrap();
        assert_eq!(out, serde_json::to_string(s).unwrap(), "{s:?}");
        assert_eq!(serde_json::from_str::<String>(out).unwrap(), s);
    }

    /// Every byte that may need an escape (and some neighbours that must not), at every
    /// position in and across eight-byte words and the padded tail, alone and several in a word.
    #[test]
    fn escapes_like_serde_json_at_any_position() {
        let mut specials: Vec<char> = (0u8..0x20).map(char::from).collect();
        specials.extend([
            '"', '\\', '\u{7f}', '\u{80}', '\u{2028}', 'é', '😀', ' ', '!', '#', '[', ']', '~',
        ]);
        for c in &specials {
            for pos in 0..20 {
                for len in [pos + 1, pos + 3, 24] {
                    let mut s: String = "abcdefghijklmnopqrstuvwxyz".chars().take(len).collect();
                    s.replace_range(pos..=pos, &c.to_string());
                    check(&s);
                    check(&s.replace('a', &c.to_string()));
                }
            }
        }
        check("");
        check(r#"{"ts":"2026-11-24T01:02:03.000000Z","level":"INFO","msg":"a\"b"}"#);
        let all: String = (0u8..0x80).map(char::from).collect();
        check(&all);
    }

    /// `is_plain_ascii` agrees with a byte loop: every byte value at every position of every
    /// short length (the overlapping reads) and across words.
    #[test]
    fn plain_ascii_agrees_with_a_byte_loop() {
        let naive = |s: &[u8]| {
            s.iter()
                .all(|&b| (0x20..0x80).contains(&b) && b != b'"' && b != b'\\')
        };
        for len in 0..=20 {
            for at in 0..len {
                for b in 0..=255u8 {
                    for fill in [b'a', b' ', 0x7f] {
                        let mut s = vec![fill; len];
                        s[at] = b;
                        assert_eq!(is_plain_ascii(&s), naive(&s), "{s:?}");
                        assert_eq!(
                            needs_escape(&s),
                            s.iter().any(|&b| ESCAPES[usize::from(b)] != 0),
                            "{s:?}"
                        );
                    }
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_string_escapes_like_serde_json(
            s in "\\PC{0,80}",
            any in ".{0,80}",
            q in "[\"\\\\\\x00-\\x1f a\\x7f]{0,40}",
        ) {
            check(&s);
            check(&any);
            check(&q);
            check(&format!("{s}{q}{any}{q}"));
        }
    }
}
