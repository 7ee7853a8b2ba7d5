//! Request path normalization, applied before routing and authorization so that one resource
//! has one spelling: what a route or an authorization rule matched is exactly what the app
//! receives.
//!
//! [`normalize`] does, in one pass:
//! 1. percent-decodes the *unreserved* characters (RFC 3986 §2.3: `A-Z a-z 0-9 - . _ ~`), so
//!    `/%61dmin` is `/admin` and `%2e` / `%2E` is `.`; every other escape is kept, with its hex
//!    digits upper-cased (§6.2.2.1), so `%2f` and `%2F` are one spelling;
//! 2. merges duplicate slashes: `//admin` and `/a//b` are `/admin` and `/a/b`;
//! 3. removes dot segments (§5.2.4), after decoding, so `/x/../admin`, `/./admin`,
//!    `/%2e%2e/admin` and `/admin/.` all resolve; `..` never climbs above the root.
//!
//! Decisions, deliberately:
//! - An encoded slash `%2F` (and backslash `%5C`) stays encoded and is *not* a separator: it is
//!   data inside one segment (`/files/a%2Fb` is one segment `a%2Fb`). A segment such as
//!   `..%2F` is therefore not a dot segment. Apps that decode `%2F` into `/` before routing
//!   should not rely on path rules alone (see docs/security.md).
//! - Decoding happens once: `%252e` is `%25` followed by `2e`, i.e. the text `%2e`, never `.`.
//! - Invalid percent-encoding (`%` not followed by two hex digits) and NUL (`%00`) are refused
//!   (400): there is no safe way to interpret them.
//! - The query string is not touched; paths not starting with `/` (`*` of `OPTIONS *`) are left
//!   alone.
//!
//! The output is a fixed point (normalizing it again changes nothing), checked by a property
//! test. A path already in normal form, the common case, is returned borrowed without
//! allocating.

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `%` not followed by two hex digits.
    #[error("invalid percent-encoding in the path (a '%' must be followed by two hex digits)")]
    InvalidPercentEncoding,
    /// A NUL byte, encoded (`%00`) or raw.
    #[error("the path contains NUL (%00)")]
    Nul,
}

/// The normal form of `path` (without query). Borrowed when `path` is already normal.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Ok(Cow::Borrowed(path));
    }
    if is_normal(path.as_bytes())? {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path.as_bytes())?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

/// Whether `p` (starting with `/`) is already normal: no `%` escape to change, no empty, `.` or
/// `..` segment before the end. Refuses what [`normalize`] would refuse.
fn is_normal(p: &[u8]) -> Result<bool, PathError> {
    let mut normal = true;
    let mut i = 0;
    // Start of the current segment (just past its '/').
    let mut seg = 1;
    while i < p.len() {
        match p[i] {
            b'%' => {
                let (hi, lo) = hex_pair(p, i)?;
                let b = hi << 4 | lo;
                if b == 0 {
                    return Err(PathError::Nul);
                }
                // An unreserved character to decode, or lower-case hex digits to raise.
                if is_unreserved(b)
                    || p[i + 1].is_ascii_lowercase()
                    || p[i + 2].is_ascii_lowercase()
                {
                    normal = false;
                }
                i += 3;
                continue;
            }
            0 => return Err(PathError::Nul),
            b'/' if i > 0 => {
                if is_dot_or_empty(&p[seg..i]) {
                    normal = false;
                }
                seg = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    // The last segment may be empty (a trailing slash) but not `.` or `..`.
    let last = &p[seg.min(p.len())..];
    if last == b"." || last == b".." {
        normal = false;
    }
    Ok(normal)
}

fn is_dot_or_empty(seg: &[u8]) -> bool {
    seg.is_empty() || seg == b"." || seg == b".."
}

/// The two hex digits after the `%` at `i`, as values.
fn hex_pair(p: &[u8], i: usize) -> Result<(u8, u8), PathError> {
    let hi = p.get(i + 1).and_then(|&c| hex_value(c));
    let lo = p.get(i + 2).and_then(|&c| hex_value(c));
    match (hi, lo) {
        (Some(hi), Some(lo)) => Ok((hi, lo)),
        _ => Err(PathError::InvalidPercentEncoding),
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 §2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes unreserved escapes, upper-cases the hex of the others.
fn decode_unreserved(p: &[u8]) -> Result<String, PathError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(p.len());
    // Copy runs of plain bytes at once; `p` is valid UTF-8 (a &str), and runs end only at
    // ASCII '%', so each run is valid UTF-8 too.
    let mut run = 0;
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            b'%' => {
                out.push_str(ascii_run(&p[run..i]));
                let (hi, lo) = hex_pair(p, i)?;
                let b = hi << 4 | lo;
                if b == 0 {
                    return Err(PathError::Nul);
                }
                if is_unreserved(b) {
                    out.push(char::from(b));
                } else {
                    out.push('%');
                    out.push(char::from(HEX[usize::from(hi)]));
                    out.push(char::from(HEX[usize::from(lo)]));
                }
                i += 3;
                run = i;
            }
            0 => return Err(PathError::Nul),
            _ => i += 1,
        }
    }
    out.push_str(ascii_run(&p[run..]));
    Ok(out)
}

fn ascii_run(b: &[u8]) -> &str {
    // Cannot fail (see the caller); an empty string rather than a panic if it ever did.
    std::str::from_utf8(b).unwrap_or_default()
}

/// Merges empty segments and resolves `.` and `..` in a path starting with `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    // The first split item is the empty string before the leading '/'.
    for seg in path.split('/').skip(1) {
        match seg {
            "" | "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            s => {
                segments.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    out
}

/// Fuzzing entry point: no input may panic; an accepted path's normal form is a fixed point,
/// starts with `/` and has no dot or empty segment before its end.
#[cfg(fuzzing)]
pub fn fuzz_normalize(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(n) = normalize(s) {
        let again = normalize(&n).expect("a normal form is accepted");
        assert_eq!(again, n, "not a fixed point: {s:?}");
        if s.starts_with('/') {
            assert!(n.starts_with('/'));
            assert!(!n.contains("//"), "{s:?} -> {n:?}");
            assert!(!n.contains("/./") && !n.contains("/../"), "{s:?} -> {n:?}");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(p: &str) -> String {
        normalize(p).unwrap().into_owned()
    }

    /// Every spelling of `/admin` an attacker might try resolves to `/admin` (or `/admin/`).
    #[test]
    fn bypass_spellings_resolve() {
        for p in [
            "/admin",
            "//admin",
            "///admin",
            "/%61dmin",
            "/%61%64%6D%69%6E",
            "/x/../admin",
            "/./admin",
            "/%2e%2e/admin",
            "/%2E%2E/admin",
            "/x/%2e%2E/admin",
            "/x/.%2e/admin",
            "/../../admin",
            "/x//..//admin",
        ] {
            assert_eq!(n(p), "/admin", "{p}");
        }
        assert_eq!(n("/admin/."), "/admin/");
        assert_eq!(n("/admin/"), "/admin/");
        assert_eq!(n("/admin//"), "/admin/");
        assert_eq!(n("/admin/x/.."), "/admin/");
    }

    /// RFC 3986 §5.2.4 examples, and the root.
    #[test]
    fn dot_segments() {
        assert_eq!(n("/a/b/c/./../../g"), "/a/g");
        assert_eq!(n("/mid/content=5/../6"), "/mid/6");
        assert_eq!(n("/"), "/");
        assert_eq!(n("/."), "/");
        assert_eq!(n("/.."), "/");
        assert_eq!(n("/..."), "/...");
        assert_eq!(n("/a/.b/..c"), "/a/.b/..c");
    }

    /// Reserved escapes stay encoded (hex upper-cased) and `%2F` is no separator.
    #[test]
    fn reserved_escapes_kept() {
        assert_eq!(n("/files/a%2fb"), "/files/a%2Fb");
        assert_eq!(n("/x/..%2Fadmin"), "/x/..%2Fadmin");
        assert_eq!(n("/a%20b"), "/a%20b");
        assert_eq!(n("/%252e%252e/admin"), "/%252e%252e/admin");
        assert_eq!(n("/caf%C3%A9"), "/caf%C3%A9");
        assert_eq!(n("/%7euser"), "/~user");
    }

    /// Bad escapes and NUL are refused; normal paths are borrowed; non-paths are left alone.
    #[test]
    fn refusals_and_fast_path() {
        for p in ["/%", "/%4", "/%zz", "/a%g0", "/%0", "/a/%"] {
            assert_eq!(
                normalize(p).unwrap_err(),
                PathError::InvalidPercentEncoding,
                "{p}"
            );
        }
        assert_eq!(normalize("/a%00b").unwrap_err(), PathError::Nul);
        assert_eq!(normalize("/a\0b").unwrap_err(), PathError::Nul);
        for p in [
            "/",
            "/api/v1/users",
            "/a/",
            "/a%2Fb",
            "/.well-known/x",
            "/a..b",
        ] {
            assert!(matches!(normalize(p).unwrap(), Cow::Borrowed(_)), "{p}");
        }
        assert_eq!(n("*"), "*");
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just("%2e".to_owned()),
            Just("%2E%2e".to_owned()),
            Just("%2F".to_owned()),
            Just("%2f".to_owned()),
            Just("%41".to_owned()),
            "[a-zA-Z0-9._~%-]{0,6}",
        ]
    }

    fn path() -> impl Strategy<Value = String> {
        proptest::collection::vec(segment(), 0..8).prop_map(|s| format!("/{}", s.join("/")))
    }

    proptest! {
        /// Normal forms are fixed points, start with '/', have no empty or dot segment before
        /// the end, and the fast path agrees with the slow one.
        #[test]
        fn normal_form_is_a_fixed_point(p in path()) {
            if let Ok(out) = normalize(&p) {
                prop_assert!(out.starts_with('/'));
                let again = normalize(&out).unwrap();
                prop_assert_eq!(&again, &out);
                prop_assert!(matches!(again, Cow::Borrowed(_)));
                prop_assert!(!out.contains("//"));
                for seg in out.split('/').skip(1) {
                    prop_assert!(seg != "." && seg != "..", "{} -> {}", p, out);
                }
                let slow = remove_dot_segments(&decode_unreserved(p.as_bytes()).unwrap());
                prop_assert_eq!(out.as_ref(), slow.as_str());
            }
        }

        /// Arbitrary text never panics, and is refused only for a bad escape or NUL.
        #[test]
        fn any_input(p in "/[ -~\u{0}\u{e9}]{0,24}") {
            match normalize(&p) {
                Ok(_) => {}
                Err(PathError::Nul) => prop_assert!(p.contains('\0') || p.contains("%00")),
                Err(PathError::InvalidPercentEncoding) => prop_assert!(p.contains('%')),
            }
        }
    }
}
