//! Request-smuggling guard for HTTP/1.x connections.
//!
//! hyper, following RFC 9112 §6.3, lets `Transfer-Encoding: chunked` win over a `Content-Length`
//! in the same request, drops the `Content-Length` and closes the connection afterwards. That
//! blocks the smuggled request but still forwards an ambiguous one, and the handler cannot tell
//! (the header is gone). hyper also accepts framing that other servers read differently: the same
//! `Content-Length` twice, `Transfer-Encoding: chunked` twice, bare LF line endings, a second
//! `Host`, fields like `transfer_encoding` that some servers normalize into `transfer-encoding`,
//! an absolute-form target naming another host than `Host`. Tandem refuses all of these
//! outright with 400 (see [`Refusal`]), as the issue and most hardened proxies do: this
//! reader-side tracker follows the request framing as bytes pass to hyper and records the index
//! of the first refused request. The handler counts requests on the connection and answers that
//! one with 400 and `connection: close`, without forwarding it.
//!
//! Because the tracker sees bytes before hyper parses them, a head (and any body bytes in the
//! same read) is judged before hyper hands the request to the handler. A malformed chunk that
//! arrives in a later read, after the request was already handed over, fails the connection
//! instead (an I/O error, like hyper's own for an invalid chunk size): the upstream then sees a
//! request body cut short, never a completed or a second request.
//!
//! The tracker copies nothing but request heads (bounded by hyper's own head buffer limit, beyond
//! which hyper answers 431 and the tracker stops) and chunk-size lines (bounded), skips bodies by their
//! declared length or chunk sizes, and stops tracking on HTTP/2 (its preface is not an HTTP/1
//! head), upgrades, `CONNECT`, or a head `httparse` cannot parse: hyper (which parses with the
//! same rules) then rejects or handles the bytes itself, so a tracker gap never lets a request
//! through that hyper would refuse.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// No refused request seen.
const NONE: usize = usize::MAX;

/// Longest chunk-size line (size and extensions) the tracker accepts.
const MAX_CHUNK_LINE: usize = 1024;

/// Why a request is refused: each names a way two HTTP/1.1 parsers can disagree on where a
/// request ends or where it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Refusal {
    /// `Content-Length` and `Transfer-Encoding` together (CL.TE / TE.CL).
    LengthAndChunked = 1,
    /// `Content-Length` given twice or as a list, even with equal values.
    RepeatedLength,
    /// A `Content-Length` that is not a plain decimal number (`+5`, `0x5`, `5 5`, empty, huge).
    InvalidLength,
    /// `Transfer-Encoding` other than exactly one `chunked` (`xchunked`, `chunked, identity`,
    /// `gzip`, `chunked` twice, odd whitespace).
    InvalidTransferEncoding,
    /// `Transfer-Encoding` in an HTTP/1.0 request (RFC 9112 §6.1: framing is faulty).
    TransferEncodingOnHttp10,
    /// A field whose name only differs from `Transfer-Encoding`/`Content-Length` by `_`.
    LookalikeField,
    /// A line in the head ending in a bare LF instead of CRLF.
    BareLf,
    /// `Host` missing from an HTTP/1.1 request, or given twice.
    InvalidHost,
    /// An absolute-form target (`GET http://b/ HTTP/1.1`) naming another host than `Host`.
    HostMismatch,
    /// A malformed chunk: size, extension, line ending or data length.
    InvalidChunk,
    /// A head larger than the tracker's bound (hyper's, which answers 431 first).
    HeadTooLarge,
}

impl Refusal {
    const ALL: [Refusal; 11] = [
        Refusal::LengthAndChunked,
        Refusal::RepeatedLength,
        Refusal::InvalidLength,
        Refusal::InvalidTransferEncoding,
        Refusal::TransferEncodingOnHttp10,
        Refusal::LookalikeField,
        Refusal::BareLf,
        Refusal::InvalidHost,
        Refusal::HostMismatch,
        Refusal::InvalidChunk,
        Refusal::HeadTooLarge,
    ];

    /// The one-line reason in the 400 body: what was wrong and what to send instead.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::LengthAndChunked => {
                "conflicting Content-Length and Transfer-Encoding (request smuggling risk); send exactly one"
            }
            Refusal::RepeatedLength => {
                "Content-Length given more than once (request smuggling risk); send it once"
            }
            Refusal::InvalidLength => "invalid Content-Length; send one decimal number of bytes",
            Refusal::InvalidTransferEncoding => {
                "unsupported Transfer-Encoding (request smuggling risk); send exactly `Transfer-Encoding: chunked` or a Content-Length"
            }
            Refusal::TransferEncodingOnHttp10 => {
                "Transfer-Encoding in an HTTP/1.0 request; use HTTP/1.1 or a Content-Length"
            }
            Refusal::LookalikeField => {
                "a field named like Transfer-Encoding or Content-Length with `_` (request smuggling risk); use `-`"
            }
            Refusal::BareLf => "a request line ending in a bare LF; end every line with CRLF",
            Refusal::InvalidHost => "an HTTP/1.1 request needs exactly one Host field",
            Refusal::HostMismatch => {
                "the absolute-form request target names another host than the Host field; make them agree"
            }
            Refusal::InvalidChunk => {
                "malformed chunked body (size, extension or line ending); send RFC 9112 chunks"
            }
            Refusal::HeadTooLarge => {
                "request head too large; send a smaller one or raise limits.max_header_bytes"
            }
        }
    }

    fn from_u8(v: u8) -> Option<Refusal> {
        Refusal::ALL.into_iter().find(|r| *r as u8 == v)
    }
}

/// Shared between the reader and the connection's request handler.
#[derive(Debug)]
pub struct FramingFlag {
    refused_at: AtomicUsize,
    reason: AtomicU8,
    served: AtomicUsize,
}

impl Default for FramingFlag {
    fn default() -> Self {
        FramingFlag {
            refused_at: AtomicUsize::new(NONE),
            reason: AtomicU8::new(0),
            served: AtomicUsize::new(0),
        }
    }
}

impl FramingFlag {
    /// Called once per request, in order: why this request must be refused, if it must.
    pub fn next_request_refusal(&self) -> Option<Refusal> {
        let idx = self.served.fetch_add(1, Ordering::AcqRel);
        if self.refused_at.load(Ordering::Acquire) == idx {
            Refusal::from_u8(self.reason.load(Ordering::Acquire))
        } else {
            None
        }
    }

    /// Records the first refused request; returns whether the handler has yet to see it.
    fn refuse(&self, index: usize, why: Refusal) -> bool {
        // The reader and the handler run on the connection's one task, one after the other; the
        // reason is stored first all the same, so a handler never sees an index without it.
        if self.refused_at.load(Ordering::Acquire) == NONE {
            self.reason.store(why as u8, Ordering::Release);
            self.refused_at.store(index, Ordering::Release);
        }
        self.served.load(Ordering::Acquire) <= index
    }
}

#[derive(Debug)]
enum State {
    /// Collecting a request head.
    Head,
    /// Skipping this many body bytes.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// Skipping chunk data.
    ChunkData(u64),
    /// Reading the CRLF after chunk data.
    ChunkEnd,
    /// Reading trailer lines until an empty line.
    Trailers,
    /// No longer tracking (HTTP/2, upgrade, unparsable, or a refusal already recorded).
    Off,
    /// A request the handler already has turned out malformed: reads fail from now on.
    Poisoned,
}

/// Wraps a connection's reader and tracks HTTP/1.x request framing.
#[derive(Debug)]
pub struct FramingGuard<T> {
    inner: T,
    state: State,
    line: Vec<u8>,
    max_head: usize,
    max_headers: usize,
    heads: usize,
    /// Index of the request whose body is being skipped.
    current: usize,
    flag: Arc<FramingFlag>,
}

impl<T> FramingGuard<T> {
    /// Tracks `inner`, bounding head copies by `max_head` bytes and `max_headers` fields.
    pub fn new(inner: T, max_head: usize, max_headers: usize, flag: Arc<FramingFlag>) -> Self {
        FramingGuard {
            inner,
            state: State::Head,
            line: Vec::new(),
            max_head,
            max_headers,
            heads: 0,
            current: 0,
            flag,
        }
    }

    fn observe(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Off | State::Poisoned => return,
                State::Head => {
                    // Skip the empty lines RFC 9112 §2.2 lets a client send before a request.
                    if self.line.is_empty() {
                        let start = data
                            .iter()
                            .position(|b| *b != b'\r' && *b != b'\n')
                            .unwrap_or(data.len());
                        data = &data[start..];
                        if data.is_empty() {
                            return;
                        }
                    }
                    // Fast path: a whole head inside this read is parsed in place, uncopied.
                    if self.line.is_empty() {
                        if let Some(end) = find_head_end(data, 0) {
                            if end > self.max_head {
                                return self.too_large();
                            }
                            self.state = self.on_head(&data[..end]);
                            data = &data[end..];
                            continue;
                        }
                    }
                    let before = self.line.len();
                    self.line.extend_from_slice(data);
                    match find_head_end(&self.line, before.saturating_sub(3)) {
                        Some(end) if end > self.max_head => return self.too_large(),
                        Some(end) => {
                            let consumed = end - before;
                            data = &data[consumed..];
                            let head = std::mem::take(&mut self.line);
                            self.state = self.on_head(&head[..end]);
                        }
                        None => {
                            if self.line.len() > self.max_head {
                                self.too_large();
                            }
                            return;
                        }
                    }
                }
                State::Body(n) => {
                    let take = n.min(data.len() as u64);
                    data = &data[take as usize..];
                    self.state = if n == take {
                        State::Head
                    } else {
                        State::Body(n - take)
                    };
                }
                State::ChunkSize => match take_line(&mut self.line, &mut data) {
                    Some((line, crlf)) if line.len() + usize::from(crlf) > MAX_CHUNK_LINE => {
                        self.state = self.refuse_body();
                    }
                    Some((line, crlf)) => {
                        self.state = match chunk_size(&line) {
                            Some(0) if crlf => State::Trailers,
                            Some(n) if crlf => State::ChunkData(n),
                            _ => self.refuse_body(),
                        };
                    }
                    None if self.line.len() > MAX_CHUNK_LINE => self.state = self.refuse_body(),
                    None => return,
                },
                State::ChunkData(n) => {
                    let take = n.min(data.len() as u64);
                    data = &data[take as usize..];
                    self.state = if n == take {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(n - take)
                    };
                }
                State::ChunkEnd => match take_line(&mut self.line, &mut data) {
                    Some((line, true)) if line.is_empty() => self.state = State::ChunkSize,
                    Some(_) => self.state = self.refuse_body(),
                    None if self.line.len() > 1 => self.state = self.refuse_body(),
                    None => return,
                },
                State::Trailers => match take_line(&mut self.line, &mut data) {
                    Some((line, crlf)) if line.len() + usize::from(crlf) > self.max_head => {
                        self.off();
                    }
                    Some((line, true)) if line.is_empty() => self.state = State::Head,
                    Some((line, true)) if !line.iter().any(|b| is_ctl(*b)) => {}
                    Some(_) => self.state = self.refuse_body(),
                    None if self.line.len() > self.max_head => self.off(),
                    None => return,
                },
            }
        }
    }

    /// A malformed chunk in the body of request `current`: refused with 400 when the handler
    /// does not have it yet, else the connection fails.
    fn refuse_body(&mut self) -> State {
        self.line = Vec::new();
        if self.flag.refuse(self.current, Refusal::InvalidChunk) {
            State::Off
        } else {
            State::Poisoned
        }
    }

    fn off(&mut self) {
        self.state = State::Off;
        self.line = Vec::new();
    }

    /// A head over the bound, which is hyper's own: hyper answers 431 and never asks the
    /// handler. Refused all the same, so that a head the tracker could not judge is never
    /// forwarded should the two bounds ever differ.
    fn too_large(&mut self) {
        self.flag.refuse(self.heads, Refusal::HeadTooLarge);
        self.off();
    }

    /// Inspects one complete head and returns the body state that follows it.
    fn on_head(&mut self, head: &[u8]) -> State {
        let index = self.heads;
        self.heads += 1;
        self.current = index;
        match judge(head, self.max_headers) {
            Ok(Framing::Empty) => State::Head,
            Ok(Framing::Length(n)) => State::Body(n),
            Ok(Framing::Chunked) => State::ChunkSize,
            Ok(Framing::Untracked) => State::Off,
            Err(why) => {
                // Refused with 400 and `connection: close`: nothing after it is read.
                self.flag.refuse(index, why);
                State::Off
            }
        }
    }
}

/// How a request head says its body is framed.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Not followed further: not an HTTP/1 head httparse accepts (hyper refuses it or it is the
    /// HTTP/2 preface), `CONNECT`, or an upgrade.
    Untracked,
}

/// Judges one complete request head (request line through the empty line).
fn judge(head: &[u8], max_headers: usize) -> Result<Framing, Refusal> {
    let mut fields = [httparse::EMPTY_HEADER; 128];
    let mut spill;
    let fields: &mut [httparse::Header<'_>] = if max_headers <= fields.len() {
        &mut fields[..max_headers]
    } else {
        spill = vec![httparse::EMPTY_HEADER; max_headers.min(1024)];
        &mut spill
    };
    let mut req = httparse::Request::new(fields);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        return Ok(Framing::Untracked);
    }
    // httparse takes a bare LF as a line end; servers behind Tandem may not.
    if head
        .iter()
        .enumerate()
        .any(|(i, b)| *b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
    {
        return Err(Refusal::BareLf);
    }
    let http10 = req.version == Some(0);
    let connect = req.method == Some("CONNECT");
    let mut chunked = None;
    let mut length = None;
    let mut hosts = Vec::new();
    let mut upgrade = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("transfer-encoding") {
            if http10 {
                return Err(Refusal::TransferEncodingOnHttp10);
            }
            // Exactly one field, exactly `chunked`: anything else (another coding, `chunked`
            // twice, a list) is read differently by different servers.
            let value = trim_ows(h.value);
            if chunked.is_some() || !value.eq_ignore_ascii_case(b"chunked") {
                return Err(Refusal::InvalidTransferEncoding);
            }
            chunked = Some(());
        } else if name.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return Err(Refusal::RepeatedLength);
            }
            length = Some(parse_length(h.value)?);
        } else if name.eq_ignore_ascii_case("host") {
            hosts.push(trim_ows(h.value));
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        } else if name.contains('_') {
            let dashed = name.replace('_', "-");
            if dashed.eq_ignore_ascii_case("transfer-encoding")
                || dashed.eq_ignore_ascii_case("content-length")
            {
                return Err(Refusal::LookalikeField);
            }
        }
    }
    if chunked.is_some() && length.is_some() {
        return Err(Refusal::LengthAndChunked);
    }
    if connect {
        return Ok(Framing::Untracked);
    }
    match hosts.as_slice() {
        [] if !http10 => return Err(Refusal::InvalidHost),
        [_, _, ..] => return Err(Refusal::InvalidHost),
        _ => {}
    }
    if let (Some(target), Some(host)) = (absolute_authority(req.path.unwrap_or("")), hosts.first())
    {
        if !same_authority(target, host) {
            return Err(Refusal::HostMismatch);
        }
    }
    if upgrade {
        return Ok(Framing::Untracked);
    }
    Ok(match (chunked, length) {
        (Some(()), _) => Framing::Chunked,
        (None, Some(0) | None) => Framing::Empty,
        (None, Some(n)) => Framing::Length(n),
    })
}

/// A `Content-Length` value: 1 to 19 ASCII digits (so it fits a `u64`), nothing else.
fn parse_length(value: &[u8]) -> Result<u64, Refusal> {
    let v = trim_ows(value);
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(Refusal::InvalidLength);
    }
    std::str::from_utf8(v)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or(Refusal::InvalidLength)
}

/// The size of a chunk-size line (`1*HEXDIG [ BWS ";" extensions ]`), `None` when malformed:
/// not hex, more than 16 digits, or a control character in an extension.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return None;
    }
    let rest = trim_ows(&line[digits..]);
    if !rest.is_empty() && (rest[0] != b';' || rest.iter().any(|b| is_ctl(*b))) {
        return None;
    }
    let hex = std::str::from_utf8(&line[..digits]).ok()?;
    u64::from_str_radix(hex, 16).ok()
}

/// The authority of an absolute-form request target (`http://host:port/path`), if it is one.
fn absolute_authority(target: &str) -> Option<&str> {
    let (scheme, rest) = target.split_once("://")?;
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    // Userinfo is not part of the host.
    Some(authority.rsplit('@').next().unwrap_or(authority))
}

/// Whether an absolute-form authority and a Host value name the same host and port (a default
/// port written on one side only still matches).
fn same_authority(target: &str, host: &[u8]) -> bool {
    let Ok(host) = std::str::from_utf8(host) else {
        return false;
    };
    let strip = |a: &str| -> String {
        let a = a.to_ascii_lowercase();
        match a.strip_suffix(":80").or_else(|| a.strip_suffix(":443")) {
            Some(h) => h.to_owned(),
            None => a,
        }
    };
    strip(target) == strip(host)
}

/// `v` without leading and trailing spaces and tabs (RFC 9110 OWS).
fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| *b != b' ' && *b != b'\t')
        .map_or(start, |i| i + 1);
    &v[start..end.max(start)]
}

/// A control character other than horizontal tab.
fn is_ctl(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

/// Fuzzing entry (`fuzz/fuzz_targets/framing.rs`): feeds `data` split at `splits`, then checks the
/// tracker's invariants: it never panics, never counts more heads than `\n` bytes seen, its
/// copied head stays within the bound it was given, and the refusal it records for the stream
/// does not depend on where reads split it (as long as the handler has not started).
#[cfg(fuzzing)]
pub fn fuzz_observe(data: &[u8], splits: &[usize]) {
    let flag = Arc::new(FramingFlag::default());
    let mut g = FramingGuard::new((), 4096, 64, flag.clone());
    let mut at = 0;
    for s in splits {
        let end = (*s).clamp(at, data.len());
        g.observe(&data[at..end]);
        at = end;
        assert!(g.line.len() <= 4096 + data.len());
    }
    g.observe(&data[at..]);
    let newlines = data.iter().filter(|b| **b == b'\n').count();
    assert!(g.heads <= newlines);
    let whole = Arc::new(FramingFlag::default());
    let mut one = FramingGuard::new((), 4096, 64, whole.clone());
    one.observe(data);
    if g.line.len() <= 4096 && one.line.len() <= 4096 {
        assert_eq!(
            flag.refused_at.load(Ordering::Relaxed),
            whole.refused_at.load(Ordering::Relaxed)
        );
    }
}

/// End (exclusive) of the first `\r\n\r\n` (or bare `\n\n`) at or after `from`.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

/// Takes one line from `data`, buffering partial lines in `line`: the line without its ending,
/// and whether that ending was CRLF (else a bare LF).
fn take_line(line: &mut Vec<u8>, data: &mut &[u8]) -> Option<(Vec<u8>, bool)> {
    match data.iter().position(|b| *b == b'\n') {
        Some(i) => {
            line.extend_from_slice(&data[..i]);
            *data = &data[i + 1..];
            let mut l = std::mem::take(line);
            let crlf = l.last() == Some(&b'\r');
            if crlf {
                l.pop();
            }
            Some((l, crlf))
        }
        None => {
            line.extend_from_slice(data);
            *data = &[];
            None
        }
    }
}

fn poisoned() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, Refusal::InvalidChunk.message())
}

impl<T: AsyncRead + Unpin> AsyncRead for FramingGuard<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if matches!(this.state, State::Poisoned) {
            return Poll::Ready(Err(poisoned()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && !matches!(this.state, State::Off) {
            this.observe(&buf.filled()[before..]);
            if matches!(this.state, State::Poisoned) {
                // hyper must not see the malformed bytes: fail this read instead.
                buf.set_filled(before);
                return Poll::Ready(Err(poisoned()));
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FramingGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> (Arc<FramingFlag>, usize) {
        let flag = Arc::new(FramingFlag::default());
        let mut g = FramingGuard::new((), 65536, 100, flag.clone());
        for c in chunks {
            g.observe(c);
        }
        let heads = g.heads;
        (flag, heads)
    }

    fn conflict(flag: &FramingFlag) -> Option<usize> {
        let v = flag.refused_at.load(Ordering::Relaxed);
        (v != NONE).then_some(v)
    }

    /// Keep-alive requests with bodies of both kinds are followed to the conflicting third one,
    /// whatever the read boundaries.
    #[test]
    fn finds_the_conflicting_request_across_reads() {
        let stream: &[u8] = b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello\
POST /b HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nx-t: 1\r\n\r\n\
POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n0\r\n\r\n";
        for split in 1..stream.len() {
            let (flag, _) = run(&[&stream[..split], &stream[split..]]);
            assert_eq!(conflict(&flag), Some(2), "split at {split}");
        }
        let (flag, heads) = run(&[stream]);
        assert_eq!((conflict(&flag), heads), (Some(2), 3));
        assert_eq!(flag.next_request_refusal(), None);
        assert_eq!(flag.next_request_refusal(), None);
        assert_eq!(flag.next_request_refusal(), Some(Refusal::LengthAndChunked));
    }

    /// A Content-Length given twice is refused, with equal values too.
    #[test]
    fn content_length_rules() {
        let (flag, _) =
            run(&[b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"]);
        assert_eq!(conflict(&flag), Some(0));
        let (flag, heads) = run(&[b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\n\r\nxPOST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\nx"]);
        assert_eq!((conflict(&flag), heads), (Some(1), 2));
        assert_eq!(flag.next_request_refusal(), None);
        assert_eq!(flag.next_request_refusal(), Some(Refusal::RepeatedLength));
    }

    fn judged(head: &str) -> Result<Framing, Refusal> {
        judge(head.replace('\n', "\r\n").as_bytes(), 100)
    }

    /// Each refusal, and the framings accepted next to it.
    #[test]
    fn head_rules() {
        use Refusal::*;
        let cases: &[(&str, Result<Framing, Refusal>)] = &[
            ("GET / HTTP/1.1\nhost: a\n\n", Ok(Framing::Empty)),
            ("GET / HTTP/1.0\n\n", Ok(Framing::Empty)),
            ("POST / HTTP/1.1\nhost: a\ncontent-length: 007\n\n", Ok(Framing::Length(7))),
            ("POST / HTTP/1.1\nhost: a\ntransfer-encoding:\tChunked \n\n", Ok(Framing::Chunked)),
            ("GET http://a/x HTTP/1.1\nhost: A:80\n\n", Ok(Framing::Empty)),
            ("GET http://u@a:8080/x HTTP/1.1\nhost: a:8080\n\n", Ok(Framing::Empty)),
            ("CONNECT a:443 HTTP/1.1\n\n", Ok(Framing::Untracked)),
            ("GET / HTTP/1.1\nhost: a\nupgrade: websocket\n\n", Ok(Framing::Untracked)),
            ("GET  / HTTP/1.1\nhost: a\n\n", Ok(Framing::Untracked)),
            ("GET / HTTP/1.1\nhost: a\nx_forwarded_for: b\n\n", Ok(Framing::Empty)),
            ("POST / HTTP/1.1\nhost: a\ncontent-length: 1\ntransfer-encoding: chunked\n\n", Err(LengthAndChunked)),
            ("POST / HTTP/1.1\nhost: a\ncontent-length: 1, 1\n\n", Err(InvalidLength)),
            ("POST / HTTP/1.1\nhost: a\ncontent-length: +1\n\n", Err(InvalidLength)),
            ("POST / HTTP/1.1\nhost: a\ncontent-length: \n\n", Err(InvalidLength)),
            ("POST / HTTP/1.1\nhost: a\ncontent-length: 18446744073709551616\n\n", Err(InvalidLength)),
            ("POST / HTTP/1.1\nhost: a\ncontent-length: 99999999999999999999\n\n", Err(InvalidLength)),
            ("POST / HTTP/1.1\nhost: a\ncontent-length: 2\ncontent-length: 2\n\n", Err(RepeatedLength)),
            ("POST / HTTP/1.1\nhost: a\ntransfer-encoding: chunked, chunked\n\n", Err(InvalidTransferEncoding)),
            ("POST / HTTP/1.1\nhost: a\ntransfer-encoding: gzip, chunked\n\n", Err(InvalidTransferEncoding)),
            ("POST / HTTP/1.1\nhost: a\ntransfer-encoding: chunked\ntransfer-encoding: chunked\n\n", Err(InvalidTransferEncoding)),
            ("POST / HTTP/1.0\ntransfer-encoding: chunked\n\n", Err(TransferEncodingOnHttp10)),
            ("POST / HTTP/1.1\nhost: a\nTransfer_Encoding: chunked\n\n", Err(LookalikeField)),
            ("POST / HTTP/1.1\nhost: a\ncontent_length: 1\n\n", Err(LookalikeField)),
            ("GET / HTTP/1.1\n\n", Err(InvalidHost)),
            ("GET / HTTP/1.1\nhost: a\nhost: a\n\n", Err(InvalidHost)),
            ("GET http://b/ HTTP/1.1\nhost: a\n\n", Err(HostMismatch)),
            ("GET https://a:8443/ HTTP/1.1\nhost: a\n\n", Err(HostMismatch)),
        ];
        for (head, want) in cases {
            assert_eq!(&judged(head), want, "{head:?}");
        }
        assert_eq!(judge(b"GET / HTTP/1.1\r\nhost: a\n\r\n", 100), Err(BareLf));
        assert_eq!(judge(b"GET / HTTP/1.1\nhost: a\n\n", 100), Err(BareLf));
    }

    /// A head over the bound is refused whether it arrives in one read or in pieces.
    #[test]
    fn head_over_the_bound_is_refused() {
        let head = format!(
            "GET / HTTP/1.1\r\nhost: x\r\nx-a: {}\r\n\r\n",
            "a".repeat(100)
        );
        for split in [head.len(), 10, 90] {
            let flag = Arc::new(FramingFlag::default());
            let mut g = FramingGuard::new((), 100, 100, flag.clone());
            g.observe(&head.as_bytes()[..split]);
            g.observe(&head.as_bytes()[split..]);
            assert_eq!(flag.next_request_refusal(), Some(Refusal::HeadTooLarge));
        }
    }

    /// Chunk-size lines: hex with optional extensions, nothing else.
    #[test]
    fn chunk_size_rules() {
        assert_eq!(chunk_size(b"1a"), Some(26));
        assert_eq!(chunk_size(b"0;name=\"v\" ;x"), Some(0));
        assert_eq!(chunk_size(b"5 ;x"), Some(5));
        assert_eq!(chunk_size(b"ffffffffffffffff"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"zz",
            b"-5",
            b"0x5",
            b"+5",
            b"5 5",
            b"fffffffffffffffff",
            b"5;\x00",
            b"5;a\rb",
        ] {
            assert_eq!(chunk_size(bad), None, "{bad:?}");
        }
    }

    /// Malformed chunks in the same read as their head refuse that request; once the handler
    /// has the request, they fail the connection instead.
    #[test]
    fn malformed_chunks() {
        let head = b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
        for body in [
            &b"5\r\nhelloXX\r\n0\r\n\r\n"[..],
            b"5\nhello\r\n",
            b"zz\r\n",
            b"0\r\nx: 1\n\r\n",
        ] {
            let (flag, _) = run(&[&[&head[..], body].concat()]);
            assert_eq!(conflict(&flag), Some(0), "{body:?}");
            let flag = Arc::new(FramingFlag::default());
            let mut g = FramingGuard::new((), 65536, 100, flag.clone());
            g.observe(head);
            assert_eq!(flag.next_request_refusal(), None);
            g.observe(body);
            assert!(matches!(g.state, State::Poisoned), "{body:?}");
        }
        let (flag, heads) = run(&[
            head,
            b"5;a=b\r\nhello\r\n0\r\nx-t: 1\r\n\r\nGET / HTTP/1.1\r\nhost: x\r\n\r\n",
        ]);
        assert_eq!((conflict(&flag), heads), (None, 2));
    }

    /// HTTP/2 and upgrades are not tracked.
    #[test]
    fn stops_on_h2_and_upgrade() {
        let (flag, heads) = run(&[
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
        ]);
        assert_eq!((conflict(&flag), heads), (None, 1));
        let (flag, heads) = run(&[b"GET / HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nPOST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n"]);
        assert_eq!((conflict(&flag), heads), (None, 1));
    }
}
