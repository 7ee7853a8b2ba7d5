//! Tandem's HTTP/1.1 client side: one request and its response over one upstream connection,
//! driven by the task serving the downstream request.
//!
//! Why not hyper's client here: hyper runs every client connection as its own task fed through a
//! channel, so each upstream exchange costs two task hand-offs, and each idle connection holds a
//! task, a dispatch channel (tokio allocates its slots in blocks of 32 requests: ~10–20 KiB) and
//! 8–16 KiB read and write buffers. A proxy holds one upstream connection per concurrent request;
//! here a connection is a socket and one read buffer that starts at 4 KiB. Parsing is
//! `httparse`'s; what this module owns is framing and connection reuse.
//!
//! What it does, per RFC 9112:
//! - writes the request head as given (origin form, `Host` set by the caller) and the body framed
//!   by its `content-length` or, when the length is unknown, `transfer-encoding: chunked`
//!   (trailers included);
//! - sends the body while it reads the response, so an upstream may answer early (413) or stream
//!   its answer while still reading (full duplex); the response body keeps pumping the request
//!   body as it is read;
//! - skips 1xx responses other than 101; hands a 101 connection over as an [`Upgraded`] stream;
//! - frames the response body by §6.3: none for `HEAD`, 1xx, 204 and 304; chunked when
//!   `transfer-encoding` ends in `chunked` (a `content-length` beside it is ignored and the
//!   connection is not reused); `content-length` (several differing values are a protocol error);
//!   otherwise until the upstream closes;
//! - reuses the connection only when both messages were complete, nothing was left unread and
//!   neither side asked to close.
//!
//! Limits: a response head over [`MAX_HEAD`] bytes or [`MAX_HEADERS`] fields, a chunk-size line
//! over 4 KiB and a trailer section over [`MAX_HEAD`] are protocol errors. Nothing else is
//! buffered: body bytes are handed on as they arrive.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::body::{RequestBody, RequestBodyError};
use crate::listen::Io;
use crate::pool::ConnSlot;

/// Largest response head (and trailer section) accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most fields in a response head.
pub const MAX_HEADERS: usize = 128;
const MAX_CHUNK_LINE: usize = 4096;
const READ_SIZE: usize = 4096;
/// Reads grow up to this while a body keeps filling them.
const MAX_READ_SIZE: usize = 64 * 1024;

/// An upstream connection between exchanges.
#[derive(Debug)]
pub struct Conn {
    io: Io,
    rbuf: BytesMut,
    /// Its place under the upstream's `max_connections`, given back when the connection closes.
    _slot: Option<ConnSlot>,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The upstream closed the connection before a response began.
    #[error("the upstream closed the connection before responding")]
    ClosedBeforeResponse,
    /// The upstream broke HTTP/1.1.
    #[error("{0}")]
    Protocol(String),
    /// The downstream request body failed while it was being sent.
    #[error("the request body failed: {0}")]
    RequestBody(#[source] RequestBodyError),
}

/// A failed exchange. `retry` holds the request when it can safely go out again on a new
/// connection: nothing of it was written, or it is idempotent, has no body and no byte of a
/// response arrived (the keep-alive race: the upstream closed an idle connection just as it was
/// reused).
#[derive(Debug)]
pub struct Failure {
    /// What went wrong.
    pub error: Error,
    /// The request, when resending it is safe.
    pub retry: Option<Exchange>,
    /// Not a byte of the request was written.
    pub unsent: bool,
}

/// A request head serialized for the wire, with what its exchange needs to know of it. Cheap to
/// clone: every try of a request writes the same bytes, so retries do not copy the header map.
#[derive(Debug, Clone)]
pub struct RequestHead {
    bytes: Bytes,
    has_body: bool,
    chunked: bool,
    idempotent: bool,
    head_request: bool,
}

/// A request ready to be written: its head serialized once, its body still to be read.
#[derive(Debug)]
pub struct Exchange {
    head: RequestHead,
    body: Option<RequestBody>,
}

/// Takes connections back for reuse (the pool).
pub trait Recycle: Send + Sync {
    /// `conn` finished an exchange cleanly and may carry the next request.
    fn recycle(&self, conn: Conn);
}

/// An upstream response body read from the connection; it also finishes sending the request
/// body, and hands the connection to its [`Recycle`] when both messages ended cleanly.
pub struct ResponseBody {
    io: Option<Conn>,
    writer: Writer,
    decoder: Decoder,
    reusable: bool,
    next_read: usize,
    recycle: Option<Arc<dyn Recycle>>,
}

/// A connection switched to another protocol by a 101 response: reads first return the bytes
/// the upstream sent right behind the 101 head, then the socket's.
#[derive(Debug)]
pub struct Upgraded {
    io: Io,
    read_ahead: Bytes,
}

/// The request body and head still to be written.
#[derive(Debug)]
struct Writer {
    pending: VecDeque<Bytes>,
    body: Option<RequestBody>,
    chunked: bool,
    written: u64,
    done: bool,
}

#[derive(Debug)]
enum Decoder {
    Empty,
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Upgrade,
    Done,
}

#[derive(Debug, Clone, Copy)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

// === impl Conn ===

impl Conn {
    /// A freshly connected socket.
    pub fn new(io: Io) -> Self {
        Conn {
            io,
            rbuf: BytesMut::new(),
            _slot: None,
        }
    }

    /// A freshly connected socket holding a connection slot.
    pub fn with_slot(io: Io, slot: Option<ConnSlot>) -> Self {
        Conn {
            io,
            rbuf: BytesMut::new(),
            _slot: slot,
        }
    }

    /// Whether an idle connection still looks usable: nothing arrived on it while idle (an EOF
    /// or stray bytes both make it unusable). Costs a syscall only when the socket polled
    /// readable.
    pub fn is_usable(&self) -> bool {
        socket_idle(&self.io)
    }
}

/// Whether nothing arrived on an idle socket (TLS: on the socket under it; a record there, even
/// a close_notify, makes the connection unusable, which is the safe answer).
fn socket_idle(io: &Io) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut probe = [0u8; 1];
    match io {
        Io::Tcp(s) => match s.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                matches!(s.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        },
        Io::Unix(s) => match s.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                matches!(s.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        },
        Io::TlsServer(s) => socket_idle(s.get_ref().0),
        Io::TlsClient(s) => socket_idle(s.get_ref().0),
    }
}

// === impl RequestHead ===

impl RequestHead {
    /// Serializes `parts` (the URI is written as it is: origin form expected). Framing follows
    /// `has_body`: a body without `content-length` goes chunked, and
    /// `transfer-encoding: chunked` is written for it.
    pub fn new(parts: &http::request::Parts, has_body: bool) -> Self {
        let chunked = has_body && !parts.headers.contains_key(header::CONTENT_LENGTH);
        let mut head = Vec::with_capacity(256);
        head.extend_from_slice(parts.method.as_str().as_bytes());
        head.push(b' ');
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        head.extend_from_slice(target.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in &parts.headers {
            // The caller removed hop-by-hop fields; a chunked body gets exactly one of these.
            if chunked && name == header::TRANSFER_ENCODING {
                continue;
            }
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        if chunked {
            head.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        head.extend_from_slice(b"\r\n");
        RequestHead {
            bytes: Bytes::from(head),
            has_body,
            chunked,
            idempotent: parts.method.is_idempotent(),
            head_request: parts.method == Method::HEAD,
        }
    }
}

impl RequestHead {
    /// This head with the lines `write_lines` writes (`name: value\r\n` each) added after its
    /// fields, for one try (trace context). One buffer: a copy of the head (a few hundred bytes
    /// typically; as large as the client's header fields, up to the configured limits) cost
    /// ~400 instructions less than the lines in a buffer of their own written between two
    /// slices of the shared head (three buffers to count, write and drop per try).
    pub fn with_lines(&self, write_lines: impl FnOnce(&mut BytesMut)) -> RequestHead {
        // `bytes` ends with the blank line ending the head: the lines go before it.
        let fields = self
            .bytes
            .get(..self.bytes.len().saturating_sub(2))
            .unwrap_or_default();
        let mut out = BytesMut::with_capacity(self.bytes.len() + 160);
        out.extend_from_slice(fields);
        write_lines(&mut out);
        out.extend_from_slice(b"\r\n");
        RequestHead {
            bytes: out.freeze(),
            ..*self
        }
    }

    /// The bytes to write, in order.
    fn wire(&self) -> VecDeque<Bytes> {
        VecDeque::from([self.bytes.clone()])
    }
}

// === impl Exchange ===

impl Exchange {
    /// Serializes `req`'s head (see [`RequestHead::new`]); framing follows the body: its
    /// `content-length` when it has one, else chunked.
    pub fn new(req: Request<RequestBody>) -> Self {
        let (parts, body) = req.into_parts();
        let head = RequestHead::new(&parts, !body.is_end_stream());
        Self::with_head(head, body)
    }

    /// `body` sent after an already serialized `head`; the head decides whether a body goes
    /// out at all (a body the head did not announce is not sent).
    pub fn with_head(head: RequestHead, body: RequestBody) -> Self {
        let body = head.has_body.then_some(body);
        Exchange { head, body }
    }

    /// Writes the request on `conn` (`reused`: it came from the pool) and reads the response
    /// head. `recycle` gets the connection back once the exchange has ended cleanly.
    pub async fn send(
        mut self,
        conn: Conn,
        reused: bool,
        recycle: Arc<dyn Recycle>,
    ) -> Result<Response<ResponseBody>, Failure> {
        let mut st = HeadState {
            conn,
            writer: Writer {
                pending: self.head.wire(),
                done: self.body.is_none(),
                body: self.body.take(),
                chunked: self.head.chunked,
                written: 0,
            },
            received: 0,
            head_request: self.head.head_request,
        };
        match std::future::poll_fn(|cx| st.poll(cx)).await {
            Ok(head) => Ok(head.into_response(st.conn, st.writer, recycle)),
            Err(error) => {
                // Nothing written: safe for any request. Written but not a byte back: the
                // upstream may have seen it, so only an idempotent request without a body.
                let safe = reused
                    && !matches!(error, Error::Protocol(_) | Error::RequestBody(_))
                    && (st.writer.written == 0
                        || (st.received == 0 && self.head.idempotent && !self.head.has_body));
                let retry = safe.then(|| {
                    self.body = st.writer.body.take();
                    self
                });
                let unsent = st.writer.written == 0;
                Err(Failure {
                    error,
                    retry,
                    unsent,
                })
            }
        }
    }
}

/// The request in flight until the response head is read.
struct HeadState {
    conn: Conn,
    writer: Writer,
    received: usize,
    head_request: bool,
}

/// A parsed response head.
struct Head {
    response: Response<()>,
    decoder: Decoder,
    reusable: bool,
}

impl HeadState {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Head, Error>> {
        let conn = &mut self.conn;
        let head_request = self.head_request;
        loop {
            // Write as far as the socket takes it; a response may come before the body is sent.
            if let Poll::Ready(Err(e)) = self.writer.poll_write(&mut conn.io, cx) {
                return Poll::Ready(Err(e));
            }
            if let Some(head) = parse_head(&mut conn.rbuf, head_request)? {
                return Poll::Ready(Ok(head));
            }
            if conn.rbuf.len() > MAX_HEAD {
                return Poll::Ready(Err(Error::Protocol(format!(
                    "response head larger than {} KiB",
                    MAX_HEAD / 1024
                ))));
            }
            let n = ready!(poll_read(&mut conn.io, &mut conn.rbuf, READ_SIZE, cx))?;
            if n == 0 {
                return Poll::Ready(Err(if self.received == 0 {
                    Error::ClosedBeforeResponse
                } else {
                    Error::Protocol(
                        "the upstream closed the connection inside the response head".into(),
                    )
                }));
            }
            self.received += n;
        }
    }
}

impl Head {
    fn into_response(
        self,
        conn: Conn,
        writer: Writer,
        recycle: Arc<dyn Recycle>,
    ) -> Response<ResponseBody> {
        let mut body = ResponseBody {
            io: Some(conn),
            writer,
            decoder: self.decoder,
            reusable: self.reusable,
            next_read: READ_SIZE,
            recycle: Some(recycle),
        };
        body.finish_if_done();
        self.response.map(|()| body)
    }
}

/// Parses a complete response head off the front of `buf`, skipping 1xx other than 101.
fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, Error> {
    loop {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut fields);
        let len = match res.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(Error::Protocol(format!("invalid response head: {e}"))),
        };
        let code = res.code.unwrap_or(0);
        let status = StatusCode::from_u16(code)
            .map_err(|_| Error::Protocol(format!("invalid status code {code}")))?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            buf.advance(len);
            continue;
        }
        let version = if res.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        // Field positions, so values can share the head's bytes instead of copying them.
        let base = buf.as_ptr() as usize;
        let mut spans = Vec::with_capacity(res.headers.len());
        for h in res.headers.iter() {
            spans.push((
                h.name.as_ptr() as usize - base,
                h.name.len(),
                h.value.as_ptr() as usize - base,
                h.value.len(),
            ));
        }
        let bytes = buf.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(spans.len());
        for (n, nl, v, vl) in spans {
            let name = HeaderName::from_bytes(&bytes[n..n + nl])
                .map_err(|_| Error::Protocol("invalid header name in the response".into()))?;
            let value = HeaderValue::from_maybe_shared(bytes.slice(v..v + vl)).map_err(|_| {
                Error::Protocol(format!("invalid value of response header `{name}`"))
            })?;
            headers.append(name, value);
        }

        let mut reusable = connection_allows_reuse(&headers, version);
        let decoder = if status == StatusCode::SWITCHING_PROTOCOLS {
            reusable = false;
            Decoder::Upgrade
        } else if head_request
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            Decoder::Empty
        } else if let Some(chunked) =
            last_transfer_coding(&headers).map(|te| te.eq_ignore_ascii_case(b"chunked"))
        {
            if headers.contains_key(header::CONTENT_LENGTH) {
                // Both framings (RFC 9112 §6.3 rule 3): chunked wins, the connection is not
                // trusted for another request.
                reusable = false;
                headers.remove(header::CONTENT_LENGTH);
            }
            if chunked {
                Decoder::Chunked(Chunk::Size)
            } else {
                reusable = false;
                Decoder::UntilClose
            }
        } else if let Some(len) = content_length(&headers)? {
            Decoder::Length(len)
        } else {
            reusable = false;
            Decoder::UntilClose
        };
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        return Ok(Some(Head {
            response,
            decoder,
            reusable,
        }));
    }
}

fn connection_allows_reuse(headers: &HeaderMap, version: Version) -> bool {
    let mut close = false;
    let mut keep_alive = false;
    for v in headers.get_all(header::CONNECTION) {
        for token in v.as_bytes().split(|b| *b == b',') {
            let token = token.trim_ascii();
            close |= token.eq_ignore_ascii_case(b"close");
            keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
        }
    }
    !close && (version == Version::HTTP_11 || keep_alive)
}

/// The last coding of `transfer-encoding`, if the field is present.
fn last_transfer_coding(headers: &HeaderMap) -> Option<&[u8]> {
    let last = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()?;
    Some(
        last.as_bytes()
            .rsplit(|b| *b == b',')
            .next()
            .unwrap_or_default()
            .trim_ascii(),
    )
}

fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Error> {
    let mut found: Option<u64> = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            let n = std::str::from_utf8(part)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| Error::Protocol("invalid content-length in the response".into()))?;
            if found.is_some_and(|f| f != n) {
                return Err(Error::Protocol(
                    "conflicting content-length values in the response".into(),
                ));
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// Reads into the spare capacity of `buf`, reserving `size` first when it is short.
fn poll_read(
    io: &mut Io,
    buf: &mut BytesMut,
    size: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < size / 2 {
        buf.reserve(size);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

// === impl Writer ===

impl Writer {
    /// Writes pending bytes and pulls more from the body until the socket or the body would
    /// block. `Ready(Ok)` once everything is written.
    fn poll_write(&mut self, io: &mut Io, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            if !self.pending.is_empty() {
                let mut slices = [IoSlice::new(&[]); 8];
                let n = self
                    .pending
                    .iter()
                    .zip(slices.iter_mut())
                    .map(|(b, s)| *s = IoSlice::new(b))
                    .count();
                let wrote = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..n]))?;
                if wrote == 0 {
                    return Poll::Ready(Err(Error::Io(io::ErrorKind::WriteZero.into())));
                }
                self.written += wrote as u64;
                let mut left = wrote;
                while left > 0 {
                    let Some(front) = self.pending.front_mut() else {
                        break;
                    };
                    if front.len() <= left {
                        left -= front.len();
                        self.pending.pop_front();
                    } else {
                        front.advance(left);
                        left = 0;
                    }
                }
                continue;
            }
            if self.done {
                return Poll::Ready(Ok(()));
            }
            let Some(body) = self.body.as_mut() else {
                self.done = true;
                continue;
            };
            match ready!(Pin::new(body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) => {
                        if self.chunked {
                            let mut line = String::with_capacity(10);
                            let _ = write!(line, "{:x}\r\n", data.len());
                            self.pending.push_back(Bytes::from(line));
                            self.pending.push_back(data);
                            self.pending.push_back(Bytes::from_static(b"\r\n"));
                        } else {
                            self.pending.push_back(data);
                        }
                    }
                    Err(frame) => {
                        if let (Ok(trailers), true) = (frame.into_trailers(), self.chunked) {
                            let mut end = b"0\r\n".to_vec();
                            for (name, value) in &trailers {
                                end.extend_from_slice(name.as_str().as_bytes());
                                end.extend_from_slice(b": ");
                                end.extend_from_slice(value.as_bytes());
                                end.extend_from_slice(b"\r\n");
                            }
                            end.extend_from_slice(b"\r\n");
                            self.pending.push_back(Bytes::from(end));
                            self.chunked = false;
                        }
                    }
                },
                Some(Err(e)) => return Poll::Ready(Err(Error::RequestBody(e))),
                None => {
                    if self.chunked {
                        self.pending.push_back(Bytes::from_static(b"0\r\n\r\n"));
                    }
                    self.body = None;
                    self.done = true;
                }
            }
        }
    }
}

// === impl ResponseBody ===

impl ResponseBody {
    /// For a 101 response: the connection, now carrying the upgraded protocol.
    pub fn into_upgraded(mut self) -> Option<Upgraded> {
        if !matches!(self.decoder, Decoder::Upgrade) {
            return None;
        }
        let conn = self.io.take()?;
        Some(Upgraded {
            io: conn.io,
            read_ahead: conn.rbuf.freeze(),
        })
    }

    /// Hands the connection back when the exchange ended cleanly and it may be reused.
    fn finish_if_done(&mut self) {
        if !matches!(self.decoder, Decoder::Done | Decoder::Empty) {
            return;
        }
        self.decoder = Decoder::Done;
        if !self.writer.done || !self.writer.pending.is_empty() {
            // The request body is still going out (an early response): try to finish it now
            // without waiting; otherwise the connection is not reused.
            if let Some(conn) = self.io.as_mut() {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                if !matches!(
                    self.writer.poll_write(&mut conn.io, &mut cx),
                    Poll::Ready(Ok(()))
                ) {
                    self.reusable = false;
                }
            }
        }
        let conn = self.io.take();
        if let (Some(mut conn), true, Some(recycle)) = (conn, self.reusable, self.recycle.take()) {
            // Bytes beyond the response are a protocol error by the upstream: not reused.
            if conn.rbuf.is_empty() {
                if conn.rbuf.capacity() > MAX_READ_SIZE {
                    conn.rbuf = BytesMut::new();
                }
                recycle.recycle(conn);
            }
        }
    }

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        // Keep the request body moving: the upstream may need it to finish this response.
        if !self.writer.done || !self.writer.pending.is_empty() {
            if let Some(conn) = self.io.as_mut() {
                if let Poll::Ready(Err(e)) = self.writer.poll_write(&mut conn.io, cx) {
                    tracing::debug!(error = %e, "request body not completed after the response began");
                    self.reusable = false;
                    self.writer.done = true;
                    self.writer.pending.clear();
                    self.writer.body = None;
                }
            }
        }
        loop {
            let Some(conn) = self.io.as_mut() else {
                return Poll::Ready(None);
            };
            match self.decoder {
                Decoder::Empty | Decoder::Done | Decoder::Upgrade => return Poll::Ready(None),
                Decoder::Length(0) => {
                    self.decoder = Decoder::Done;
                    return Poll::Ready(None);
                }
                Decoder::Length(left) => {
                    if conn.rbuf.is_empty() {
                        let n = ready!(self.read(cx))?;
                        if n == 0 {
                            return Poll::Ready(Some(Err(Error::Protocol(format!(
                                "the upstream closed the connection {left} bytes before the end of the body"
                            )))));
                        }
                        continue;
                    }
                    let take = left.min(conn.rbuf.len() as u64);
                    let data = conn.rbuf.split_to(take as usize).freeze();
                    self.decoder = Decoder::Length(left - take);
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decoder::UntilClose => {
                    if conn.rbuf.is_empty() {
                        let n = ready!(self.read(cx))?;
                        if n == 0 {
                            self.decoder = Decoder::Done;
                            return Poll::Ready(None);
                        }
                        continue;
                    }
                    let data = conn.rbuf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decoder::Chunked(state) => match decode_chunk(&mut conn.rbuf, state)? {
                    Step::Frame(frame, next) => {
                        self.decoder = next;
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    Step::Next(next) => self.decoder = next,
                    Step::NeedMore => {
                        let n = ready!(self.read(cx))?;
                        if n == 0 {
                            return Poll::Ready(Some(Err(Error::Protocol(
                                "the upstream closed the connection inside a chunked body".into(),
                            ))));
                        }
                    }
                },
            }
        }
    }

    fn read(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, Error>> {
        let Some(conn) = self.io.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        let n = ready!(poll_read(&mut conn.io, &mut conn.rbuf, self.next_read, cx))?;
        // A body that keeps filling reads gets larger ones (fewer syscalls for big bodies).
        if n >= self.next_read {
            self.next_read = (self.next_read * 2).min(MAX_READ_SIZE);
        }
        Poll::Ready(Ok(n))
    }
}

enum Step {
    Frame(Frame<Bytes>, Decoder),
    Next(Decoder),
    NeedMore,
}

/// One step of the chunked decoder over the bytes at hand.
fn decode_chunk(buf: &mut BytesMut, state: Chunk) -> Result<Step, Error> {
    match state {
        Chunk::Size => {
            let Some(end) = find_crlf(buf) else {
                return if buf.len() > MAX_CHUNK_LINE {
                    Err(Error::Protocol("chunk-size line too long".into()))
                } else {
                    Ok(Step::NeedMore)
                };
            };
            let line = &buf[..end];
            let digits = line
                .split(|b| *b == b';')
                .next()
                .unwrap_or_default()
                .trim_ascii_end();
            if digits.is_empty() || digits.len() > 16 || !digits.iter().all(u8::is_ascii_hexdigit) {
                return Err(Error::Protocol(format!(
                    "invalid chunk size {:?}",
                    String::from_utf8_lossy(&line[..line.len().min(32)])
                )));
            }
            let size = digits
                .iter()
                .fold(0u64, |acc, d| (acc << 4) | u64::from(hex_value(*d)));
            buf.advance(end + 2);
            Ok(Step::Next(Decoder::Chunked(if size == 0 {
                Chunk::Trailers
            } else {
                Chunk::Data(size)
            })))
        }
        Chunk::Data(left) => {
            if buf.is_empty() {
                return Ok(Step::NeedMore);
            }
            let take = left.min(buf.len() as u64);
            let data = buf.split_to(take as usize).freeze();
            let next = if take == left {
                Chunk::DataEnd
            } else {
                Chunk::Data(left - take)
            };
            Ok(Step::Frame(Frame::data(data), Decoder::Chunked(next)))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(Step::NeedMore);
            }
            if &buf[..2] != b"\r\n" {
                return Err(Error::Protocol("chunk data not followed by CRLF".into()));
            }
            buf.advance(2);
            Ok(Step::Next(Decoder::Chunked(Chunk::Size)))
        }
        Chunk::Trailers => {
            if buf.starts_with(b"\r\n") {
                buf.advance(2);
                return Ok(Step::Next(Decoder::Done));
            }
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                return if buf.len() > MAX_HEAD {
                    Err(Error::Protocol("trailer section too large".into()))
                } else {
                    Ok(Step::NeedMore)
                };
            };
            let section = buf.split_to(end + 4);
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut trailers = HeaderMap::new();
            match httparse::parse_headers(&section, &mut fields) {
                Ok(httparse::Status::Complete((_, parsed))) => {
                    for f in parsed {
                        if let (Ok(n), Ok(v)) = (
                            HeaderName::from_bytes(f.name.as_bytes()),
                            HeaderValue::from_bytes(f.value),
                        ) {
                            trailers.append(n, v);
                        }
                    }
                }
                _ => return Err(Error::Protocol("invalid trailer section".into())),
            }
            Ok(Step::Frame(Frame::trailers(trailers), Decoder::Done))
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

fn hex_value(d: u8) -> u8 {
    match d {
        b'0'..=b'9' => d - b'0',
        b'a'..=b'f' => d - b'a' + 10,
        _ => d - b'A' + 10,
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        let polled = this.poll_data(cx);
        match &polled {
            Poll::Ready(None) => this.finish_if_done(),
            Poll::Ready(Some(Ok(_))) => {
                if matches!(this.decoder, Decoder::Length(0) | Decoder::Done) {
                    this.decoder = Decoder::Done;
                    this.finish_if_done();
                }
            }
            Poll::Ready(Some(Err(_))) => {
                this.reusable = false;
                this.io = None;
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        matches!(
            self.decoder,
            Decoder::Empty | Decoder::Done | Decoder::Length(0) | Decoder::Upgrade
        )
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder {
            Decoder::Length(n) => SizeHint::with_exact(n),
            Decoder::Empty | Decoder::Done | Decoder::Upgrade => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("decoder", &self.decoder)
            .field("reusable", &self.reusable)
            .finish_non_exhaustive()
    }
}

// === impl Upgraded ===

impl AsyncRead for Upgraded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.read_ahead.is_empty() {
            let n = this.read_ahead.len().min(buf.remaining());
            buf.put_slice(&this.read_ahead.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Fuzzing entry (`fuzz/fuzz_targets/h1_response.rs`): `data` as an upstream's bytes arriving in
/// the given splits, through the response head parser and the body decoders. Must never panic,
/// and never hold more than the limits plus one read.
#[cfg(fuzzing)]
pub fn fuzz_response(data: &[u8], splits: &[usize], head_request: bool) {
    let mut buf = BytesMut::new();
    let mut at = 0;
    let mut feed = |buf: &mut BytesMut| -> bool {
        let next = splits
            .get(buf.len() % splits.len().max(1))
            .copied()
            .unwrap_or(1)
            .max(1);
        let end = (at + next).min(data.len());
        buf.extend_from_slice(&data[at..end]);
        let fed = end > at;
        at = end;
        fed
    };
    let head = loop {
        match parse_head(&mut buf, head_request) {
            Ok(Some(head)) => break head,
            Ok(None) if buf.len() > MAX_HEAD => return,
            Ok(None) => {
                if !feed(&mut buf) {
                    return;
                }
            }
            Err(_) => return,
        }
    };
    let mut decoder = head.decoder;
    loop {
        assert!(buf.len() <= MAX_HEAD + data.len());
        match decoder {
            Decoder::Length(left) if left > 0 => {
                let take = left.min(buf.len() as u64);
                buf.advance(take as usize);
                decoder = Decoder::Length(left - take);
                if take == 0 && !feed(&mut buf) {
                    return;
                }
            }
            Decoder::Chunked(chunk) => match decode_chunk(&mut buf, chunk) {
                Ok(Step::Frame(_, next) | Step::Next(next)) => decoder = next,
                Ok(Step::NeedMore) => {
                    if !feed(&mut buf) {
                        return;
                    }
                }
                Err(_) => return,
            },
            Decoder::UntilClose => {
                buf.clear();
                if !feed(&mut buf) {
                    return;
                }
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests;
