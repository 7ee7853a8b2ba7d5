//! Bodies on the data path. [`ProxyBody`]: the response body Tandem sends downstream, the
//! upstream's body (HTTP/1.1 or HTTP/2) streamed as it arrives, or a short message Tandem wrote
//! itself. [`RequestBody`]: the request body sent upstream, replayable for retries within a
//! bounded buffer. Both count their bytes for an observed request ([`crate::observe`]); the
//! response body also finishes the request's observation when it ends. Concrete enums instead
//! of boxed trait objects keep the hot path free of an allocation per message.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use tandem_telemetry::access_log::End;
use tandem_telemetry::IntHistogram;

use crate::h1;
use crate::observe::Observer;
use crate::stack::InFlight;
use crate::trace::ServerSpan;

/// A downstream response body, with what must live as long as it: the request's in-flight
/// count on its endpoint, its slot in the upstream's concurrency limit, and its observation.
#[derive(Debug)]
pub struct ProxyBody {
    kind: Kind,
    guard: Option<InFlight>,
    idle: Option<IdleTimer>,
    observer: Observer,
    /// Bytes handed downstream so far.
    sent: u64,
    /// What is recorded when the body ends, fails or is dropped unfinished.
    completion: Option<Box<Completion>>,
}

/// The response's records that wait for its last byte: the route's response size histogram
/// and the request's server span. Boxed: most responses carry none or one, and the body stays
/// small.
#[derive(Debug, Default)]
struct Completion {
    size: Option<IntHistogram>,
    span: Option<ServerSpan>,
}

/// A request body's byte count, recorded in its route's size histogram exactly once: when the
/// body ends, fails, or is dropped unfinished (then with the bytes that made it).
#[derive(Debug)]
struct SizeCount {
    histogram: IntHistogram,
    bytes: u64,
}

impl SizeCount {
    fn new(histogram: Option<&IntHistogram>) -> Option<SizeCount> {
        histogram.map(|h| SizeCount {
            histogram: h.clone(),
            bytes: 0,
        })
    }
}

impl Drop for SizeCount {
    fn drop(&mut self) {
        self.histogram.observe(self.bytes);
    }
}

/// The stream idle timeout of a proxied body: no frame for `timeout` aborts it. The timer is
/// created only once the body has to wait, and re-armed only when it fires early, so a body
/// that arrives at once costs a clock read per frame and nothing else.
#[derive(Debug)]
struct IdleTimer {
    timeout: std::time::Duration,
    last: tokio::time::Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// A body stalled longer than its stream idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("no data from the upstream for {0:?} (stream_idle_timeout)")]
pub struct StreamIdle(pub std::time::Duration);

// Not boxed: the HTTP/1.1 body is the common case, and a box would be an allocation per response.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Kind {
    /// Read from an HTTP/1.1 upstream connection by Tandem's client ([`crate::h1`]), trailers
    /// included; the connection goes back to its pool at the end.
    Http1(h1::ResponseBody),
    /// Streamed from an HTTP/2 upstream stream, trailers included (gRPC status lives there).
    Http2(Incoming),
    /// Written by Tandem (errors, tunnels' empty bodies).
    Local(Full<Bytes>),
}

impl ProxyBody {
    /// A body Tandem wrote itself.
    pub fn local(bytes: impl Into<Bytes>) -> Self {
        ProxyBody {
            kind: Kind::Local(Full::new(bytes.into())),
            guard: None,
            idle: None,
            observer: Observer::none(),
            sent: 0,
            completion: None,
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::local(Bytes::new())
    }

    /// A body read from an HTTP/1.1 upstream.
    pub fn http1(body: h1::ResponseBody) -> Self {
        ProxyBody {
            kind: Kind::Http1(body),
            guard: None,
            idle: None,
            observer: Observer::none(),
            sent: 0,
            completion: None,
        }
    }

    /// A body read from an HTTP/2 upstream stream.
    pub fn http2(body: Incoming) -> Self {
        ProxyBody {
            kind: Kind::Http2(body),
            guard: None,
            idle: None,
            observer: Observer::none(),
            sent: 0,
            completion: None,
        }
    }

    /// Keeps `guard` until the body ends or is dropped.
    pub fn guarded(mut self, guard: InFlight) -> Self {
        self.guard = Some(guard);
        self
    }

    /// Counts the bytes sent and finishes `observer` when the body ends, fails or is dropped;
    /// a body with nothing to send finishes it at once.
    pub fn observed(mut self, observer: Observer) -> Self {
        self.observe(observer);
        self
    }

    /// [`ProxyBody::observed`] in place: the body (a few hundred bytes) is not moved.
    pub fn observe(&mut self, mut observer: Observer) {
        if is_end(&self.kind) {
            observer.finish(End::Complete);
        }
        self.observer = observer;
    }

    /// Records the body's size in `histogram` (the route's response size) when it ends.
    pub fn sized(mut self, histogram: Option<&IntHistogram>) -> Self {
        if let Some(h) = histogram {
            self.completion.get_or_insert_with(Box::default).size = Some(h.clone());
        }
        self
    }

    /// Ends the request's server span when the body ends (`None`: nothing to record).
    pub fn traced(mut self, span: Option<ServerSpan>) -> Self {
        if let Some(span) = span {
            self.completion.get_or_insert_with(Box::default).span = Some(span);
        }
        self
    }

    /// Records what waits for the end of the body, once; `now`: the end, when already read.
    fn complete(&mut self, end: End, now: Option<tokio::time::Instant>) {
        if let Some(c) = self.completion.take() {
            let Completion { size, span } = *c;
            if let Some(h) = size {
                h.observe(self.sent);
            }
            if let Some(span) = span {
                span.end(
                    self.sent,
                    end,
                    now.unwrap_or_else(tokio::time::Instant::now),
                );
            }
        }
    }

    /// Aborts the body when no frame arrives for `timeout`.
    pub fn idle_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.idle = Some(IdleTimer {
            timeout,
            last: tokio::time::Instant::now(),
            sleep: None,
        });
        self
    }

    /// For a 101 response over HTTP/1.1: the connection, now carrying the upgraded protocol.
    pub fn into_upgraded(mut self) -> Option<h1::Upgraded> {
        match std::mem::replace(&mut self.kind, Kind::Local(Full::default())) {
            Kind::Http1(b) => b.into_upgraded(),
            Kind::Http2(_) | Kind::Local(_) => None,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        // Every field is `Unpin`, so no pin projection is needed.
        let this = self.get_mut();
        crate::stall::polled();
        let polled = match &mut this.kind {
            Kind::Http1(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Kind::Http2(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Kind::Local(body) => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        };
        let polled = match (polled, this.idle.as_mut()) {
            (Poll::Pending, Some(idle)) => match idle.poll_expired(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(StreamIdle(idle.timeout).into()))),
                Poll::Pending => Poll::Pending,
            },
            (Poll::Ready(Some(Ok(frame))), Some(idle)) => {
                idle.last = tokio::time::Instant::now();
                Poll::Ready(Some(Ok(frame)))
            }
            (polled, _) => polled,
        };
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.sent += data.len() as u64;
                crate::stall::handed_out();
            }
        }
        // After the poll: whether this frame was the last (hyper stops polling then).
        let at_end = matches!(polled, Poll::Ready(Some(Ok(_)))) && is_end(&this.kind);
        let ending = at_end || matches!(polled, Poll::Ready(None | Some(Err(_))));
        // One clock reading for everything that ends with the body (access log line, span).
        let now = (ending && (this.observer.is_active() || this.completion.is_some()))
            .then(tokio::time::Instant::now);
        if this.observer.is_active() {
            this.observer.frame(&polled, at_end, this.sent, now);
        }
        if ending {
            // The exchange is over: count it out now rather than when hyper drops the body.
            this.guard = None;
            this.idle = None;
            if this.completion.is_some() {
                let end = match &polled {
                    Poll::Ready(Some(Err(e))) if e.is::<StreamIdle>() => End::IdleTimeout,
                    Poll::Ready(Some(Err(_))) => End::UpstreamError,
                    _ => End::Complete,
                };
                this.complete(end, now);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        is_end(&self.kind)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Http1(body) => body.size_hint(),
            Kind::Http2(body) => body.size_hint(),
            Kind::Local(body) => body.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // Unfinished: the client went away, or the body was never sent (a HEAD, a 304, a
        // response with nothing to poll).
        let end = if is_end(&self.kind) {
            End::Complete
        } else {
            End::ClientGone
        };
        self.complete(end, None);
    }
}

fn is_end(kind: &Kind) -> bool {
    match kind {
        Kind::Http1(body) => body.is_end_stream(),
        Kind::Http2(body) => body.is_end_stream(),
        Kind::Local(body) => body.is_end_stream(),
    }
}

impl IdleTimer {
    /// Ready once the body has been idle for the whole timeout.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let deadline = self.last + self.timeout;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if sleep.deadline() != deadline {
                sleep.as_mut().reset(deadline);
            }
            ready!(sleep.as_mut().poll(cx));
            if tokio::time::Instant::now() >= self.last + self.timeout {
                return Poll::Ready(());
            }
        }
    }
}

/// The request body sent upstream: nothing, the downstream body streamed as it is, or a
/// [`ReplayBody`] that a retry can send again.
#[derive(Debug)]
pub enum RequestBody {
    /// No body (the downstream request had none).
    Empty,
    /// Streamed once; a request with it cannot be retried after it was sent.
    Stream(Downstream),
    /// Streamed, with a copy kept for retries while it fits the replay buffer.
    Replay(ReplayBody),
}

/// The body a client is sending, counting what is read of it for an observed request and for
/// the route's request size histogram.
#[derive(Debug)]
pub struct Downstream {
    body: Incoming,
    read: Option<Arc<AtomicU64>>,
    size: Option<SizeCount>,
    timer: Option<ReadTimer>,
}

/// `limits.body_read_timeout`: armed when the body has to wait for the client (not while the
/// upstream is slow to take it), disarmed by each frame; the sleep is allocated once.
#[derive(Debug)]
struct ReadTimer {
    timeout: std::time::Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

/// Why a request body could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    /// The downstream body failed (the client went away or broke framing).
    #[error(transparent)]
    Downstream(#[from] hyper::Error),
    /// The client sent no body data for this long (`limits.body_read_timeout`).
    #[error("no request body data from the client for {0:?} (limits.body_read_timeout)")]
    ClientTimeout(std::time::Duration),
    /// A retry needed bytes the replay buffer no longer holds (never sent: retries check first).
    #[error("the request body is larger than the replay buffer")]
    NotReplayable,
}

/// A request body shared by the tries of one request, after linkerd2-proxy's `ReplayBody`.
///
/// The first try reads the downstream body and keeps each chunk (a cheap `Bytes` clone) while
/// the total stays within the cap; a clone made for a retry replays the kept chunks, then goes
/// on reading the downstream body where the earlier try stopped. The downstream body itself
/// lives in shared state that the try polling it holds, and hands back when dropped: a retry
/// waits for the failed try to let go. Once the body outgrows the cap the copy is dropped and
/// [`ReplayBody::try_clone`] refuses: such requests are not retried after they started sending.
#[derive(Debug)]
pub struct ReplayBody {
    shared: Arc<Shared>,
    /// Held while this body is being read.
    state: Option<ReplayState>,
    /// Next kept chunk to replay.
    pos: usize,
    /// Bytes this body has produced.
    delivered: u64,
    trailers_sent: bool,
    size: SizeHint,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<Option<ReplayState>>,
    waiter: Mutex<Option<std::task::Waker>>,
    /// The copy was given up (too large) or the body failed.
    overflowed: AtomicBool,
    /// Bytes were read from the downstream body.
    consumed: AtomicBool,
    cap: usize,
}

#[derive(Debug)]
struct ReplayState {
    chunks: Vec<Bytes>,
    /// Bytes read from the downstream body so far.
    read: u64,
    /// The rest of the downstream body; `None` once it ended.
    rest: Option<Downstream>,
    trailers: Option<http::HeaderMap>,
}

// === impl RequestBody ===

impl RequestBody {
    /// Wraps a downstream body: replayable up to `cap` bytes when `replay`, else streamed.
    pub fn new(body: Incoming, replay: bool, cap: usize) -> Self {
        Self::counted(body, replay, cap, None, None)
    }

    /// [`RequestBody::new`], adding the bytes read from the client to `read` when given, and
    /// recording the body's size in `size` (the route's request size histogram) when it ends.
    pub fn counted(
        body: Incoming,
        replay: bool,
        cap: usize,
        read: Option<Arc<AtomicU64>>,
        size: Option<&IntHistogram>,
    ) -> Self {
        let counted = SizeCount::new(size);
        if body.is_end_stream() {
            // Dropping `size` records the empty body.
            RequestBody::Empty
        } else if replay {
            let size = body.size_hint();
            let too_big = size.lower() > cap as u64;
            let body = Downstream {
                body,
                read,
                size: counted,
                timer: None,
            };
            let shared = Arc::new(Shared {
                state: Mutex::new(Some(ReplayState {
                    chunks: Vec::new(),
                    read: 0,
                    rest: Some(body),
                    trailers: None,
                })),
                waiter: Mutex::new(None),
                overflowed: AtomicBool::new(too_big),
                consumed: AtomicBool::new(false),
                cap,
            });
            RequestBody::Replay(ReplayBody {
                shared,
                state: None,
                pos: 0,
                delivered: 0,
                trailers_sent: false,
                size,
            })
        } else {
            RequestBody::Stream(Downstream {
                body,
                read,
                size: counted,
                timer: None,
            })
        }
    }

    /// Fails the body when the client sends nothing for `timeout` while it is being read.
    pub fn with_read_timeout(self, timeout: std::time::Duration) -> Self {
        let timer = || ReadTimer {
            timeout,
            sleep: None,
            armed: false,
        };
        match self {
            RequestBody::Stream(mut d) => {
                d.timer = Some(timer());
                RequestBody::Stream(d)
            }
            RequestBody::Replay(r) => {
                if let Ok(mut state) = r.shared.state.lock() {
                    if let Some(d) = state.as_mut().and_then(|s| s.rest.as_mut()) {
                        d.timer = Some(timer());
                    }
                }
                RequestBody::Replay(r)
            }
            RequestBody::Empty => RequestBody::Empty,
        }
    }

    /// Whether another try could still send this body.
    pub fn can_replay(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Stream(_) => false,
            RequestBody::Replay(r) => {
                !(r.shared.overflowed.load(Ordering::Acquire)
                    && r.shared.consumed.load(Ordering::Acquire))
            }
        }
    }

    /// A body for another try, `None` when this one cannot be sent again.
    pub fn try_clone(&self) -> Option<RequestBody> {
        match self {
            RequestBody::Empty => Some(RequestBody::Empty),
            RequestBody::Stream(_) => None,
            RequestBody::Replay(r) => r.try_clone().map(RequestBody::Replay),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Stream(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Replay(b) => b.poll_frame_inner(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Stream(b) => b.is_end_stream(),
            RequestBody::Replay(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Stream(b) => b.size_hint(),
            RequestBody::Replay(b) => b.size,
        }
    }
}

// === impl Downstream ===

impl Body for Downstream {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body)
            .poll_frame(cx)
            .map_err(RequestBodyError::from);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let n = data.len() as u64;
                if let Some(read) = &this.read {
                    read.fetch_add(n, Ordering::Relaxed);
                }
                if let Some(size) = &mut this.size {
                    size.bytes += n;
                }
            }
        }
        if this.body.is_end_stream() || !matches!(polled, Poll::Ready(Some(Ok(_))) | Poll::Pending)
        {
            // Ended or failed: the size is final (a retry replays kept chunks, not this body).
            this.size = None;
        }
        let Some(t) = this.timer.as_mut() else {
            return polled;
        };
        if polled.is_ready() {
            t.armed = false;
        } else if t.expired(cx) {
            this.size = None;
            return Poll::Ready(Some(Err(RequestBodyError::ClientTimeout(t.timeout))));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

// === impl ReadTimer ===

impl ReadTimer {
    /// Arms the timer if it is not (the body just started waiting), then whether it fired.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            self.armed = true;
            sleep.as_mut().reset(deadline);
        }
        sleep.as_mut().poll(cx).is_ready()
    }
}

// === impl ReplayBody ===

impl ReplayBody {
    /// A body replaying from the start, `None` when the copy was given up (too large) or the
    /// downstream body failed.
    pub fn try_clone(&self) -> Option<ReplayBody> {
        // Too large to keep, but nothing read yet (e.g. the connect failed): a retry can still
        // take the body over from its start.
        if self.shared.overflowed.load(Ordering::Acquire)
            && self.shared.consumed.load(Ordering::Acquire)
        {
            return None;
        }
        Some(ReplayBody {
            shared: self.shared.clone(),
            state: None,
            pos: 0,
            delivered: 0,
            trailers_sent: false,
            size: self.size,
        })
    }

    fn poll_frame_inner(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        if self.state.is_none() {
            let taken = self.shared.state.lock().ok().and_then(|mut s| s.take());
            match taken {
                Some(s) => self.state = Some(s),
                None => {
                    // An earlier try still holds the body: wait until it lets go.
                    if let Ok(mut w) = self.shared.waiter.lock() {
                        *w = Some(cx.waker().clone());
                    }
                    // It may have let go between the two locks.
                    match self.shared.state.lock().ok().and_then(|mut s| s.take()) {
                        Some(s) => self.state = Some(s),
                        None => return Poll::Pending,
                    }
                }
            }
        }
        let Some(state) = self.state.as_mut() else {
            return Poll::Pending;
        };
        if self.pos < state.chunks.len() {
            let chunk = state.chunks[self.pos].clone();
            self.pos += 1;
            self.delivered += chunk.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if self.delivered != state.read {
            // Bytes this try has not sent were read by an earlier one and not kept.
            return Poll::Ready(Some(Err(RequestBodyError::NotReplayable)));
        }
        let Some(rest) = state.rest.as_mut() else {
            if let (Some(t), false) = (&state.trailers, self.trailers_sent) {
                self.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(t.clone()))));
            }
            return Poll::Ready(None);
        };
        match ready!(Pin::new(rest).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    self.shared.consumed.store(true, Ordering::Release);
                    state.read += data.len() as u64;
                    self.delivered = state.read;
                    if !self.shared.overflowed.load(Ordering::Acquire) {
                        if state.read > self.shared.cap as u64 {
                            self.shared.overflowed.store(true, Ordering::Release);
                            state.chunks = Vec::new();
                        } else {
                            state.chunks.push(data.clone());
                        }
                    }
                    self.pos = state.chunks.len();
                } else if let Some(t) = frame.trailers_ref() {
                    state.trailers = Some(t.clone());
                    self.trailers_sent = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                state.rest = None;
                // A body that failed downstream cannot be sent again.
                self.shared.consumed.store(true, Ordering::Release);
                self.shared.overflowed.store(true, Ordering::Release);
                Poll::Ready(Some(Err(e)))
            }
            None => {
                state.rest = None;
                Poll::Ready(None)
            }
        }
    }
}

impl Drop for ReplayBody {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            if let Ok(mut s) = self.shared.state.lock() {
                *s = Some(state);
            }
            if let Some(w) = self.shared.waiter.lock().ok().and_then(|mut w| w.take()) {
                w.wake();
            }
        }
    }
}
