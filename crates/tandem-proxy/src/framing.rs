//! Request-smuggling guard for HTTP/1.x connections.
//!
//! hyper, following RFC 9112 §6.3, lets `Transfer-Encoding: chunked` win over a `Content-Length`
//! in the same request, drops the `Content-Length` and closes the connection afterwards. That
//! blocks the smuggled request but still forwards an ambiguous one, and the handler cannot tell
//! (the header is gone). Tandem refuses such requests outright with 400, as the issue and most
//! hardened proxies do, so this reader-side tracker follows the request framing as bytes pass to
//! hyper and records the index of the first request whose head carries both fields (or
//! `Content-Length` twice with different values). The handler counts requests on the connection
//! and answers that one with 400 and `connection: close`.
//!
//! The tracker copies nothing but request heads (bounded by `max_header_bytes`, beyond which hyper
//! answers 431 and the tracker stops), skips bodies by their declared length or chunk sizes, and
//! stops tracking on HTTP/2 (its preface is not an HTTP/1 head), upgrades, `CONNECT`, or anything it cannot parse: hyper
//! then rejects or handles the bytes itself, so a tracker gap never lets a request through that
//! hyper would refuse.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// No conflicting request seen.
const NONE: usize = usize::MAX;

/// Shared between the reader and the connection's request handler.
#[derive(Debug)]
pub struct FramingFlag {
    conflict_at: AtomicUsize,
    served: AtomicUsize,
}

impl Default for FramingFlag {
    fn default() -> Self {
        FramingFlag {
            conflict_at: AtomicUsize::new(NONE),
            served: AtomicUsize::new(0),
        }
    }
}

impl FramingFlag {
    /// Called once per request, in order: whether this request's head had conflicting framing.
    pub fn next_request_conflicts(&self) -> bool {
        let idx = self.served.fetch_add(1, Ordering::Relaxed);
        self.conflict_at.load(Ordering::Acquire) == idx
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
    /// Skipping chunk data, then its CRLF.
    ChunkData(u64),
    /// Reading trailer lines until an empty line.
    Trailers,
    /// No longer tracking (HTTP/2, upgrade, unparsable, or a conflict already found).
    Off,
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
            flag,
        }
    }

    fn observe(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Off => return,
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
                            self.state = self.on_head(&data[..end]);
                            data = &data[end..];
                            continue;
                        }
                    }
                    let before = self.line.len();
                    self.line.extend_from_slice(data);
                    match find_head_end(&self.line, before.saturating_sub(3)) {
                        Some(end) => {
                            let consumed = end - before;
                            data = &data[consumed..];
                            let head = std::mem::take(&mut self.line);
                            self.state = self.on_head(&head[..end]);
                        }
                        None => {
                            if self.line.len() > self.max_head {
                                self.off();
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
                    Some(line) => {
                        let hex = line.split(|b| *b == b';').next().unwrap_or(&[]);
                        let hex = std::str::from_utf8(hex).unwrap_or("").trim();
                        self.state = match u64::from_str_radix(hex, 16) {
                            Ok(0) => State::Trailers,
                            Ok(n) => State::ChunkData(n.saturating_add(2)),
                            Err(_) => State::Off,
                        };
                    }
                    None if self.line.len() > 1024 => self.off(),
                    None => return,
                },
                State::ChunkData(n) => {
                    let take = n.min(data.len() as u64);
                    data = &data[take as usize..];
                    self.state = if n == take {
                        State::ChunkSize
                    } else {
                        State::ChunkData(n - take)
                    };
                }
                State::Trailers => match take_line(&mut self.line, &mut data) {
                    Some(line) if line.is_empty() => self.state = State::Head,
                    Some(_) => {}
                    None if self.line.len() > self.max_head => self.off(),
                    None => return,
                },
            }
        }
    }

    fn off(&mut self) {
        self.state = State::Off;
        self.line = Vec::new();
    }

    /// Inspects one complete head and returns the body state that follows it.
    fn on_head(&mut self, head: &[u8]) -> State {
        let index = self.heads;
        self.heads += 1;
        let mut fields = [httparse::EMPTY_HEADER; 128];
        let mut spill;
        let fields: &mut [httparse::Header<'_>] = if self.max_headers <= fields.len() {
            &mut fields[..self.max_headers]
        } else {
            spill = vec![httparse::EMPTY_HEADER; self.max_headers.min(1024)];
            &mut spill
        };
        let mut req = httparse::Request::new(fields);
        if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
            return State::Off;
        }
        if req.method == Some("CONNECT") {
            return State::Off;
        }
        let mut te_chunked = None;
        let mut lengths: Vec<u64> = Vec::new();
        let mut upgrade = false;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                let v = String::from_utf8_lossy(h.value);
                let last = v
                    .rsplit(',')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                te_chunked = Some(last == "chunked");
            } else if h.name.eq_ignore_ascii_case("content-length") {
                match std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                {
                    Some(n) => lengths.push(n),
                    None => return State::Off,
                }
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        let conflicting_lengths = lengths.windows(2).any(|w| w[0] != w[1]);
        if (te_chunked.is_some() && !lengths.is_empty()) || conflicting_lengths {
            // hyper closes the connection after this request; nothing after it is read.
            let _ = self.flag.conflict_at.compare_exchange(
                NONE,
                index,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            return State::Off;
        }
        if upgrade {
            return State::Off;
        }
        match (te_chunked, lengths.first()) {
            (Some(true), _) => State::ChunkSize,
            (Some(false), _) => State::Off,
            (None, Some(0)) | (None, None) => State::Head,
            (None, Some(n)) => State::Body(*n),
        }
    }
}

/// End (exclusive) of the first `\r\n\r\n` (or bare `\n\n`) at or after `from`.
/// Fuzzing entry (`fuzz/fuzz_targets/framing.rs`): feeds `data` split at `splits`, then checks the
/// tracker's invariants: it never panics, never counts more heads than `\n` bytes seen, and its
/// copied head stays within the bound it was given.
#[cfg(fuzzing)]
pub fn fuzz_observe(data: &[u8], splits: &[usize]) {
    let flag = Arc::new(FramingFlag::default());
    let mut g = FramingGuard::new((), 4096, 64, flag);
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
}

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

/// Takes one line (without its line ending) from `data`, buffering partial lines in `line`.
fn take_line(line: &mut Vec<u8>, data: &mut &[u8]) -> Option<Vec<u8>> {
    match data.iter().position(|b| *b == b'\n') {
        Some(i) => {
            line.extend_from_slice(&data[..i]);
            *data = &data[i + 1..];
            let mut l = std::mem::take(line);
            if l.last() == Some(&b'\r') {
                l.pop();
            }
            Some(l)
        }
        None => {
            line.extend_from_slice(data);
            *data = &[];
            None
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FramingGuard<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && !matches!(this.state, State::Off) {
            this.observe(&buf.filled()[before..]);
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
        let v = flag.conflict_at.load(Ordering::Relaxed);
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
        assert!(!flag.next_request_conflicts());
        assert!(!flag.next_request_conflicts());
        assert!(flag.next_request_conflicts());
    }

    /// Different Content-Length values conflict; equal ones and plain requests do not.
    #[test]
    fn content_length_rules() {
        let (flag, _) =
            run(&[b"POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"]);
        assert_eq!(conflict(&flag), Some(0));
        let (flag, heads) = run(&[b"POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\nxGET / HTTP/1.1\r\n\r\n"]);
        assert_eq!((conflict(&flag), heads), (None, 2));
    }

    /// HTTP/2 and upgrades are not tracked.
    #[test]
    fn stops_on_h2_and_upgrade() {
        let (flag, heads) = run(&[
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
        ]);
        assert_eq!((conflict(&flag), heads), (None, 1));
        let (flag, heads) = run(&[b"GET / HTTP/1.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nPOST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n"]);
        assert_eq!((conflict(&flag), heads), (None, 1));
    }
}
