//! Trace context on the wire: ids, and the W3C Trace Context and B3 header formats, read from a
//! request and written to an upstream request.
//!
//! - W3C Trace Context (<https://www.w3.org/TR/trace-context/>): `traceparent` version `00`
//!   exactly (55 characters) or a later version's first 55 characters followed by `-`; lower-case
//!   hex only; all-zero ids and version `ff` are invalid; a second `traceparent` makes it invalid.
//!   An invalid `traceparent` is ignored as if absent, which starts a new trace. `tracestate` is
//!   kept only beside a valid `traceparent`, and bounded as the spec allows: at most 32 members
//!   and 512 bytes (members past either bound are cut from the end); a malformed member drops
//!   the whole header rather than forwarding something another vendor would have to reject.
//! - B3 (<https://github.com/openzipkin/b3-propagation>): the single `b3` header
//!   (`traceid-spanid[-sampled[-parentspanid]]`, or a bare `0`, `1`, `d`) and the multi-header
//!   form (`X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled`, `X-B3-Flags`). A 64-bit trace id is
//!   widened to 128 bits with leading zeros. `X-B3-Sampled: true|false` (older tracers) is read
//!   as `1|0`; debug (`d`, `X-B3-Flags: 1`) is read as sampled.
//!
//! Reading is strict (any doubt means "no parent") and never allocates for well-formed input;
//! writing produces exactly one form per configured format. Hostile input can only cost a bounded
//! scan: every header Tandem reads here is length-checked before it is parsed.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use tandem_config::Propagation;

/// A 128-bit trace id, never zero.
///
/// Held as two halves rather than a `u128`: a `u128` aligns whatever holds it to 16 bytes and
/// pads it to a multiple of 16, and a traced request's boxed state has to stay within 256
/// bytes (see `tandem_proxy::trace`: mimalloc's slow path for other sizes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceId {
    high: u64,
    low: u64,
}

/// A 64-bit span id, never zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpanId(u64);

/// A span's identity as it travels between processes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanContext {
    /// The trace.
    pub trace_id: TraceId,
    /// The span.
    pub span_id: SpanId,
    /// Whether the trace is recorded (W3C `sampled` flag, B3 `X-B3-Sampled`).
    pub sampled: bool,
    /// W3C `tracestate`, carried unchanged (already bounded).
    pub trace_state: Option<HeaderValue>,
}

/// The caller's span, as read from a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parent {
    /// The caller's trace.
    pub trace_id: TraceId,
    /// The caller's span: the parent of Tandem's server span.
    pub span_id: SpanId,
    /// W3C `tracestate` beside a valid `traceparent`.
    pub trace_state: Option<HeaderValue>,
}

/// What a request carried: a parent span, a sampling decision, both or neither.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extracted {
    /// The caller's span.
    pub parent: Option<Parent>,
    /// The caller's sampling decision; `None`: none was made (no headers, or B3 with the
    /// decision deferred), so Tandem decides.
    pub sampled: Option<bool>,
}

/// Reads and writes the configured formats.
#[derive(Clone, Debug)]
pub struct Propagator {
    /// Formats read, in order of preference (the first that yields anything wins).
    read: Vec<Propagation>,
    w3c: bool,
    b3_single: bool,
    b3_multi: bool,
    /// Whether any B3 form is configured (then both forms are read and removed).
    b3: bool,
}

/// Longest `tracestate` forwarded (the spec's minimum that vendors must propagate).
pub const MAX_TRACE_STATE: usize = 512;
/// Most `tracestate` members forwarded (the spec's limit).
pub const MAX_TRACE_STATE_MEMBERS: usize = 32;

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const B3: HeaderName = HeaderName::from_static("b3");
const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// `x` as 16 lower-case hex digits, most significant first. Every nibble is spread into a
/// byte of one `u128` and all sixteen become digits at once: a few word-wide operations instead
/// of two table look-ups and stores per byte (ids are written for every try and every access
/// log line).
fn hex64(x: u64) -> [u8; 16] {
    const ONES: u128 = 0x0101_0101_0101_0101_0101_0101_0101_0101;
    const LO32: u128 = 0xffff_ffff;
    const LO16: u128 = 0x0000_0000_0000_ffff_0000_0000_0000_ffff;
    const LO8: u128 = 0x0000_00ff_0000_00ff_0000_00ff_0000_00ff;
    const LO4: u128 = 0x000f_000f_000f_000f_000f_000f_000f_000f;
    let mut v = u128::from(x);
    // Halve the pieces each step, moving every upper half up by its own width: in the end,
    // byte `i` (from the least significant) holds nibble `i` of `x`.
    v = (v & LO32) | ((v & (LO32 << 32)) << 32);
    v = (v & LO16) | ((v & (LO16 << 16)) << 16);
    v = (v & LO8) | ((v & (LO8 << 8)) << 8);
    v = (v & LO4) | ((v & (LO4 << 4)) << 4);
    // A nibble of 10 or more carries into bit 4 when 6 is added (no byte overflows: <= 21).
    let letters = ((v + ONES * 6) >> 4) & ONES;
    // '0' + d, and 'a' - '0' - 10 = 39 more for a letter (each byte stays below 0x80).
    let digits = v + ONES * u128::from(b'0') + letters * 39;
    digits.to_be_bytes()
}

// === impl TraceId ===

impl TraceId {
    /// A random id (never zero).
    pub fn random() -> Self {
        Self::split(fastrand::u128(1..))
    }

    /// The id from its value; `None` for zero, which is invalid everywhere.
    pub fn from_u128(v: u128) -> Option<Self> {
        (v != 0).then(|| Self::split(v))
    }

    fn split(v: u128) -> Self {
        TraceId {
            high: (v >> 64) as u64,
            low: v as u64,
        }
    }

    /// The value.
    pub fn to_u128(self) -> u128 {
        u128::from(self.high) << 64 | u128::from(self.low)
    }

    /// Big-endian bytes, as OTLP carries them.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.high.to_be_bytes());
        out[8..].copy_from_slice(&self.low.to_be_bytes());
        out
    }

    /// 32 lower-case hex digits.
    pub fn to_hex(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out[..16].copy_from_slice(&hex64(self.high));
        out[16..].copy_from_slice(&hex64(self.low));
        out
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.to_u128())
    }
}

// === impl SpanId ===

impl SpanId {
    /// A random id (never zero).
    pub fn random() -> Self {
        SpanId(fastrand::u64(1..))
    }

    /// The id from its value; `None` for zero.
    pub fn from_u64(v: u64) -> Option<Self> {
        (v != 0).then_some(SpanId(v))
    }

    /// The value.
    pub fn to_u64(self) -> u64 {
        self.0
    }

    /// Big-endian bytes, as OTLP carries them.
    pub fn to_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }

    /// 16 lower-case hex digits.
    pub fn to_hex(self) -> [u8; 16] {
        hex64(self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

// === impl Propagator ===

impl Propagator {
    /// Reads `formats` in their order and writes all of them.
    pub fn new(formats: &[Propagation]) -> Self {
        let has = |p| formats.contains(&p);
        Propagator {
            read: formats.to_vec(),
            w3c: has(Propagation::W3c),
            b3_single: has(Propagation::B3),
            b3_multi: has(Propagation::B3multi),
            b3: has(Propagation::B3) || has(Propagation::B3multi),
        }
    }

    /// The parent and sampling decision `headers` carry, in the first configured format that
    /// has either.
    pub fn extract(&self, headers: &HeaderMap) -> Extracted {
        // Most requests carry no trace header: a scan of the names settles that for less than
        // one hashed look-up per header of each format.
        if !self.carried(headers) {
            return Extracted::default();
        }
        self.extract_carried(headers)
    }

    /// [`Propagator::extract`] once [`Propagator::carried`] said `headers` has a trace header.
    pub(crate) fn extract_carried(&self, headers: &HeaderMap) -> Extracted {
        for p in &self.read {
            let found = match p {
                Propagation::W3c => extract_w3c(headers),
                // Both B3 forms are read whichever one is written: a caller may use either.
                Propagation::B3 | Propagation::B3multi => extract_b3(headers),
            };
            if found.parent.is_some() || found.sampled.is_some() {
                return found;
            }
        }
        Extracted::default()
    }

    /// Removes every header of the configured formats, so what goes upstream is Tandem's own
    /// context and not a stale copy of the caller's.
    pub fn strip(&self, headers: &mut HeaderMap) {
        // The usual request has none: a scan of the names instead of a hashed removal of each.
        if !self.carried(headers) {
            return;
        }
        if self.w3c {
            headers.remove(TRACEPARENT);
            headers.remove(TRACESTATE);
        }
        if self.b3 {
            for name in [
                B3,
                B3_TRACE_ID,
                B3_SPAN_ID,
                B3_PARENT_SPAN_ID,
                B3_SAMPLED,
                B3_FLAGS,
            ] {
                headers.remove(name);
            }
        }
    }

    /// Whether `headers` has any header of the configured formats (a scan of the names, each
    /// compared by length first).
    pub fn carried(&self, headers: &HeaderMap) -> bool {
        headers.keys().any(|name| {
            let n = name.as_str();
            match n.len() {
                10 => (self.w3c && n == TRACESTATE.as_str()) || (self.b3 && n == B3_FLAGS.as_str()),
                11 => {
                    (self.w3c && n == TRACEPARENT.as_str()) || (self.b3 && n == B3_SPAN_ID.as_str())
                }
                2 => self.b3 && n == B3.as_str(),
                12 => self.b3 && (n == B3_TRACE_ID.as_str() || n == B3_SAMPLED.as_str()),
                17 => self.b3 && n == B3_PARENT_SPAN_ID.as_str(),
                _ => false,
            }
        })
    }

    /// Adds `ctx` to `headers` in every configured format (HTTP/2 requests).
    pub fn inject(&self, ctx: &SpanContext, headers: &mut HeaderMap) {
        self.each_field(ctx, |name, value| {
            // Every value written here is hex digits and dashes, or a `tracestate` that was a
            // valid header value when it arrived.
            if let Ok(mut v) = HeaderValue::from_maybe_shared(value) {
                // A value new on every request (it carries this try's span id, or the trace's
                // id) is sent as an HPACK "never indexed" literal: indexed, each request's value
                // would take a slot of the connection's dynamic table and evict the entries
                // that repeat (authority, user-agent, ...), which then go out in full again.
                if name != B3_SAMPLED && name != TRACESTATE {
                    v.set_sensitive(true);
                }
                headers.append(name, v);
            }
        });
    }

    /// `ctx` in every configured format as HTTP/1.1 header lines (`name: value\r\n` each), for
    /// a request head serialized without them.
    pub fn render_h1(&self, ctx: &SpanContext) -> Bytes {
        let trace_state = ctx.trace_state.as_ref().map_or(0, |v| v.len());
        let mut out = BytesMut::with_capacity(128 + trace_state);
        self.write_h1(ctx, &mut out);
        out.freeze()
    }

    /// [`Propagator::render_h1`] written at the end of `out` (a request head being put
    /// together).
    pub fn write_h1(&self, ctx: &SpanContext, out: &mut BytesMut) {
        // The same fields as `each_field`, written straight into one buffer (no value of its
        // own per field): this runs for every try of every traced request. Each fixed-length
        // line is put together in an array first: copies of a known size are a few moves, one
        // of each part a call to `memcpy`.
        let trace = ctx.trace_id.to_hex();
        let span = ctx.span_id.to_hex();
        let sampled = if ctx.sampled { b'1' } else { b'0' };
        let trace_state = ctx.trace_state.as_ref().map_or(&[][..], |v| v.as_bytes());
        if self.w3c {
            let mut line =
                *b"traceparent: 00-________________________________-________________-0_\r\n";
            line[16..48].copy_from_slice(&trace);
            line[49..65].copy_from_slice(&span);
            line[67] = sampled;
            out.put_slice(&line);
            if ctx.trace_state.is_some() {
                out.put_slice(b"tracestate: ");
                out.put_slice(trace_state);
                out.put_slice(b"\r\n");
            }
        }
        if self.b3_single {
            let mut line = *b"b3: ________________________________-________________-_\r\n";
            line[4..36].copy_from_slice(&trace);
            line[37..53].copy_from_slice(&span);
            line[54] = sampled;
            out.put_slice(&line);
        }
        if self.b3_multi {
            let mut line = *b"x-b3-traceid: ________________________________\r\nx-b3-spanid: ________________\r\nx-b3-sampled: _\r\n";
            line[14..46].copy_from_slice(&trace);
            line[61..77].copy_from_slice(&span);
            line[93] = sampled;
            out.put_slice(&line);
        }
    }

    /// Calls `f` with each header field of `ctx` in the configured formats.
    fn each_field(&self, ctx: &SpanContext, mut f: impl FnMut(HeaderName, Bytes)) {
        let trace = ctx.trace_id.to_hex();
        let span = ctx.span_id.to_hex();
        let sampled: &[u8] = if ctx.sampled { b"1" } else { b"0" };
        if self.w3c {
            let mut v = BytesMut::with_capacity(55);
            v.put_slice(b"00-");
            v.put_slice(&trace);
            v.put_u8(b'-');
            v.put_slice(&span);
            v.put_slice(if ctx.sampled { b"-01" } else { b"-00" });
            f(TRACEPARENT, v.freeze());
            if let Some(ts) = &ctx.trace_state {
                f(TRACESTATE, Bytes::copy_from_slice(ts.as_bytes()));
            }
        }
        if self.b3_single {
            let mut v = BytesMut::with_capacity(51);
            v.put_slice(&trace);
            v.put_u8(b'-');
            v.put_slice(&span);
            v.put_u8(b'-');
            v.put_slice(sampled);
            f(B3, v.freeze());
        }
        if self.b3_multi {
            f(B3_TRACE_ID, Bytes::copy_from_slice(&trace));
            f(B3_SPAN_ID, Bytes::copy_from_slice(&span));
            f(B3_SAMPLED, Bytes::from_static(sampled));
        }
    }
}

// === W3C ===

/// Parses one `traceparent` value: `(trace id, parent id, sampled)`.
pub fn parse_traceparent(v: &[u8]) -> Option<(TraceId, SpanId, bool)> {
    if v.len() < 55 {
        return None;
    }
    let version = hex_lower(&v[0..2])?;
    match version {
        0xff => return None,
        0 if v.len() != 55 => return None,
        // A later version may append fields after a dash; its first 55 bytes follow version 00.
        _ if v.len() > 55 && v[55] != b'-' => return None,
        _ => {}
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace_id = TraceId::from_u128(hex_lower(&v[3..35])?)?;
    let span_id = SpanId::from_u64(u64::try_from(hex_lower(&v[36..52])?).ok()?)?;
    let flags = hex_lower(&v[53..55])?;
    Some((trace_id, span_id, flags & 1 == 1))
}

fn extract_w3c(headers: &HeaderMap) -> Extracted {
    let mut values = headers.get_all(TRACEPARENT).iter();
    let (Some(tp), None) = (values.next(), values.next()) else {
        // Absent, or sent twice (ambiguous: which one is the parent?).
        return Extracted::default();
    };
    let Some((trace_id, span_id, sampled)) = parse_traceparent(tp.as_bytes()) else {
        return Extracted::default();
    };
    Extracted {
        parent: Some(Parent {
            trace_id,
            span_id,
            trace_state: bounded_trace_state(headers),
        }),
        sampled: Some(sampled),
    }
}

/// The request's `tracestate` headers as one bounded value: `None` when absent, empty or
/// malformed. The common case (one well-formed header within bounds) is the header itself.
fn bounded_trace_state(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut values = headers.get_all(TRACESTATE).iter();
    let first = values.next()?;
    let mut more = values.peekable();
    if more.peek().is_none() && first.len() <= MAX_TRACE_STATE {
        let s = first.to_str().ok()?;
        let mut members = 0;
        for m in s.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            if !valid_member(m) {
                return None;
            }
            members += 1;
        }
        return match members {
            0 => None,
            n if n <= MAX_TRACE_STATE_MEMBERS => Some(first.clone()),
            _ => rebuild_trace_state(std::iter::once(first)),
        };
    }
    rebuild_trace_state(std::iter::once(first).chain(more))
}

/// Joins `values` into one list of at most [`MAX_TRACE_STATE_MEMBERS`] members and
/// [`MAX_TRACE_STATE`] bytes, cutting members from the end; `None` if any member is malformed.
/// Reads at most a bounded amount whatever the input size.
fn rebuild_trace_state<'a>(values: impl Iterator<Item = &'a HeaderValue>) -> Option<HeaderValue> {
    let mut out = String::new();
    let mut members = 0;
    // Scanning stops at the first member that would not fit; what follows is cut anyway. A
    // header of megabytes costs the scan of its first few hundred bytes.
    'values: for v in values {
        let s = v.to_str().ok()?;
        for m in s.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            if !valid_member(m) {
                return None;
            }
            let extra = if out.is_empty() { m.len() } else { m.len() + 1 };
            if members == MAX_TRACE_STATE_MEMBERS || out.len() + extra > MAX_TRACE_STATE {
                break 'values;
            }
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(m);
            members += 1;
        }
    }
    if out.is_empty() {
        return None;
    }
    HeaderValue::from_str(&out).ok()
}

/// A `tracestate` list member: `key=value`, key `[a-z0-9][a-z0-9_\-*/]{0,255}` with at most one
/// `@` (multi-tenant keys), value up to 256 printable characters other than `,` and `=`, not
/// ending in a space.
fn valid_member(m: &str) -> bool {
    let Some((key, value)) = m.split_once('=') else {
        return false;
    };
    let key_ok = !key.is_empty()
        && key.len() <= 256
        && key
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && key.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'_' | b'-' | b'*' | b'/' | b'@')
        })
        && key.bytes().filter(|&b| b == b'@').count() <= 1;
    let value_ok = !value.is_empty()
        && value.len() <= 256
        && value
            .bytes()
            .all(|b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
        && !value.ends_with(' ');
    key_ok && value_ok
}

// === B3 ===

/// Parses one single-header `b3` value.
pub fn parse_b3_single(v: &[u8]) -> Extracted {
    match v {
        b"0" => {
            return Extracted {
                parent: None,
                sampled: Some(false),
            }
        }
        b"1" | b"d" => {
            return Extracted {
                parent: None,
                sampled: Some(true),
            }
        }
        _ => {}
    }
    // trace id (16 or 32) - span id (16) [- sampling (1) [- parent span id (16)]]: at most 68.
    if v.len() > 68 {
        return Extracted::default();
    }
    let mut parts = v.split(|&b| b == b'-');
    let (Some(trace), Some(span)) = (parts.next(), parts.next()) else {
        return Extracted::default();
    };
    let sampled = match parts.next() {
        None => None,
        Some(b"1" | b"d") => Some(true),
        Some(b"0") => Some(false),
        Some(_) => return Extracted::default(),
    };
    match parts.next() {
        None => {}
        Some(p) if p.len() == 16 && hex_lower(p).is_some_and(|x| x != 0) => {}
        Some(_) => return Extracted::default(),
    }
    if parts.next().is_some() {
        return Extracted::default();
    }
    match b3_ids(trace, span) {
        Some((trace_id, span_id)) => Extracted {
            parent: Some(Parent {
                trace_id,
                span_id,
                trace_state: None,
            }),
            sampled,
        },
        None => Extracted::default(),
    }
}

fn extract_b3(headers: &HeaderMap) -> Extracted {
    if let Some(v) = headers.get(B3) {
        let found = parse_b3_single(v.as_bytes());
        if found.parent.is_some() || found.sampled.is_some() {
            return found;
        }
    }
    let debug = headers.get(B3_FLAGS).is_some_and(|v| v == "1");
    let sampled = if debug {
        Some(true)
    } else {
        match headers.get(B3_SAMPLED).map(HeaderValue::as_bytes) {
            Some(b"1" | b"true") => Some(true),
            Some(b"0" | b"false") => Some(false),
            _ => None,
        }
    };
    let ids = headers
        .get(B3_TRACE_ID)
        .zip(headers.get(B3_SPAN_ID))
        .and_then(|(t, s)| b3_ids(t.as_bytes(), s.as_bytes()));
    Extracted {
        parent: ids.map(|(trace_id, span_id)| Parent {
            trace_id,
            span_id,
            trace_state: None,
        }),
        sampled,
    }
}

/// A B3 trace id (16 or 32 hex digits) and span id (16).
fn b3_ids(trace: &[u8], span: &[u8]) -> Option<(TraceId, SpanId)> {
    if !(trace.len() == 16 || trace.len() == 32) || span.len() != 16 {
        return None;
    }
    let trace_id = TraceId::from_u128(hex_lower(trace)?)?;
    let span_id = SpanId::from_u64(u64::try_from(hex_lower(span)?).ok()?)?;
    Some((trace_id, span_id))
}

/// Lower-case hex digits (at most 32) as a number.
fn hex_lower(s: &[u8]) -> Option<u128> {
    if s.is_empty() || s.len() > 32 {
        return None;
    }
    s.iter().try_fold(0u128, |acc, &b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u128::from(d))
    })
}

/// Fuzzing entry (`fuzz/fuzz_targets/trace_context.rs`): `values` as one request's trace
/// headers (assigned to the W3C and B3 header names in turn), read in every format. Nothing may
/// panic; what is accepted has non-zero ids and a bounded `tracestate`, and, written again,
/// reads back as itself.
#[cfg(fuzzing)]
pub fn fuzz_headers(values: &[Vec<u8>]) {
    const NAMES: [HeaderName; 7] = [
        TRACEPARENT,
        TRACESTATE,
        B3,
        B3_TRACE_ID,
        B3_SPAN_ID,
        B3_SAMPLED,
        B3_FLAGS,
    ];
    let mut headers = HeaderMap::new();
    for (i, v) in values.iter().enumerate() {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            headers.append(NAMES[i % NAMES.len()].clone(), v);
        }
    }
    let formats = [
        &[Propagation::W3c][..],
        &[Propagation::B3],
        &[Propagation::B3multi],
        &[Propagation::B3, Propagation::W3c, Propagation::B3multi],
    ];
    for f in formats {
        let p = Propagator::new(f);
        let found = p.extract(&headers);
        let Some(parent) = found.parent else {
            continue;
        };
        assert!(parent.trace_id.to_u128() != 0 && parent.span_id.to_u64() != 0);
        if let Some(ts) = &parent.trace_state {
            assert!(ts.len() <= MAX_TRACE_STATE);
        }
        let ctx = SpanContext {
            trace_id: parent.trace_id,
            span_id: parent.span_id,
            sampled: found.sampled.unwrap_or(false),
            trace_state: parent.trace_state.clone(),
        };
        let mut out = HeaderMap::new();
        p.inject(&ctx, &mut out);
        let again = p.extract(&out);
        let back = again.parent.expect("written context reads back");
        assert_eq!((back.trace_id, back.span_id), (ctx.trace_id, ctx.span_id));
        assert_eq!(again.sampled, Some(ctx.sampled));
        if f[0] == Propagation::W3c {
            assert_eq!(back.trace_state, ctx.trace_state);
        }
    }
}

#[cfg(test)]
mod tests;
