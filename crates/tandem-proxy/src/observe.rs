//! Observing one HTTP request or TCP connection from its arrival to its last byte: the
//! outermost phase, so it sees the final outcome (retries done, errors mapped, body streamed).
//!
//! An [`Observer`] is started in [`crate::forward::handle`] and filled as the request goes: the
//! route, each try, the endpoint that answered, the error Tandem answered with. Its response
//! head is noted by [`Observer::respond`], which moves it into the response body
//! ([`ProxyBody::observed`]); the body counts the bytes it hands downstream, reads `grpc-status`
//! from the trailers, and finishes the observation when it ends, fails, or is dropped because the
//! client went away. A request cancelled before its response (the client closed the
//! connection) finishes when its observer is dropped. A [`ConnectionObserver`] does the same for
//! a TCP listener's connection, finished at close.
//!
//! The completion point is one function, `Observation::finish` (and
//! `ConnectionObservation::finish` for TCP), called exactly once: it writes the access log line.
//! The response size histogram and the request's server span finish at the same moment but
//! without an observer (they exist when the listener has no access log): the response body
//! records them (`ProxyBody::sized`, `ProxyBody::traced`).
//!
//! Cost: with nothing to observe (no access log on the listener) an observer is `None` and
//! every call on it is a branch; no record is allocated. With an access log, one box per
//! request holds the observation, copying only reference-counted handles (method, URI, a few
//! header values) from the request: `Host` and `User-Agent` found in one walk over a short
//! header map, the arrival's wall-clock time derived from its monotonic start
//! ([`clock`]) rather than read.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, Method, Request, Response, Version};
use http_body::Frame;
use tandem_config::Direction;
use tandem_telemetry::access_log::{AccessLog, ConnectionRecord, End, RequestRecord};
use tandem_telemetry::clock;
use tandem_telemetry::trace::{SpanContext, SpanId, TraceId};
use tokio::time::Instant;

use crate::body::{ProxyBody, StreamIdle};
use crate::error::{ErrorKind, ProxyError};
use crate::identity::PeerIdentity;
use crate::pool::Endpoint;
use crate::stack::{ListenerStack, RouteTarget};

/// A request's `Host` header (when its URI has no authority) and `User-Agent`.
pub type Seen<'a> = (Option<&'a HeaderValue>, Option<&'a HeaderValue>);

/// One request's observation, or nothing when the listener observes nothing. Finishes when
/// dropped unfinished (the client went away).
pub struct Observer(Option<Box<Observation>>);

/// What is known about one request so far.
pub struct Observation {
    /// The listener, whose access log the line goes to (no handle of its own: one reference
    /// count less to take and drop per request).
    stack: Arc<ListenerStack>,
    target: Option<Arc<RouteTarget>>,
    endpoint: Answered,
    /// When the request arrived: its wall-clock time since the Unix epoch.
    started: Duration,
    start: Instant,
    head: Option<Duration>,
    client: Option<SocketAddr>,
    version: Version,
    method: Method,
    /// The URI's path and query, and its authority (HTTP/2, absolute form): the parts a line
    /// shows, not the whole URI (one handle fewer to take and drop).
    path: Option<PathAndQuery>,
    authority: Option<Authority>,
    host: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    status: Option<u16>,
    grpc_status: Option<u32>,
    /// Request body bytes, counted by the request body wherever it is polled; `None` when the
    /// request came without a body (most requests: no counter to allocate, nothing to count).
    received: Option<Arc<AtomicU64>>,
    sent: u64,
    attempts: u32,
    error: Option<ErrorKind>,
    /// The trace and this sidecar's server span, when tracing is on.
    trace: Option<(TraceId, SpanId)>,
    /// The client's verified identity (mTLS).
    identity: Option<PeerIdentity>,
}

/// The endpoint a request ended on.
enum Answered {
    None,
    /// The endpoint the answer came from.
    Endpoint(Arc<Endpoint>),
    /// The label an error named.
    Label(String),
}

/// One TCP connection's observation, or nothing.
pub struct ConnectionObserver(Option<Box<ConnectionObservation>>);

/// What is known about one TCP connection so far.
pub struct ConnectionObservation {
    log: AccessLog,
    stack: Arc<ListenerStack>,
    target: Arc<RouteTarget>,
    started: SystemTime,
    start: Instant,
    client: Option<SocketAddr>,
    endpoint: Answered,
    error: Option<ErrorKind>,
    /// The client's verified identity (mTLS).
    identity: Option<PeerIdentity>,
}

// === impl Observer ===

impl Observer {
    /// An observer that observes nothing.
    pub fn none() -> Observer {
        Observer(None)
    }

    /// Starts observing `req`, received at `start` from `client` on `stack`'s listener;
    /// nothing when the listener has no access log.
    pub fn start<B: http_body::Body>(
        stack: &Arc<ListenerStack>,
        client: Option<SocketAddr>,
        req: &Request<B>,
        start: Instant,
    ) -> Observer {
        if stack.access_log.is_none() {
            return Observer(None);
        }
        let authority = req.uri().authority().cloned();
        let (host, user_agent) = host_and_agent(req.headers(), authority.is_none());
        Observer(Some(Box::new(Observation {
            stack: stack.clone(),
            target: None,
            endpoint: Answered::None,
            // The process clock's Unix time of `start` (no wall-clock read per request; the
            // same clock the request's spans take their times from).
            started: Duration::from_nanos(clock::clock().unix_nanos(start.into_std())),
            start,
            head: None,
            client,
            version: req.version(),
            method: req.method().clone(),
            path: req.uri().path_and_query().cloned(),
            authority,
            host,
            user_agent,
            status: None,
            grpc_status: None,
            // An ended body stays ended: it never has bytes to count.
            received: (!req.body().is_end_stream()).then(|| Arc::new(AtomicU64::new(0))),
            sent: 0,
            attempts: 0,
            error: None,
            trace: None,
            identity: None,
        })))
    }

    /// Whether anything is observed.
    pub fn is_active(&self) -> bool {
        self.0.is_some()
    }

    /// The route (and so the upstream) the request took.
    pub fn route(&mut self, target: &Arc<RouteTarget>) {
        if let Some(o) = &mut self.0 {
            o.target = Some(target.clone());
        }
    }

    /// The counter the request body adds the bytes it reads to, when observed.
    pub fn request_bytes(&self) -> Option<Arc<AtomicU64>> {
        self.0.as_ref().and_then(|o| o.received.clone())
    }

    /// The client's verified identity (mTLS), for the `peer_identity` field.
    pub fn identity(&mut self, identity: Option<&PeerIdentity>) {
        if let Some(o) = &mut self.0 {
            o.identity = identity.cloned();
        }
    }

    /// The request's trace and server span (tracing on), so its line joins the trace.
    pub fn trace(&mut self, ctx: &SpanContext) {
        if let Some(o) = &mut self.0 {
            o.trace = Some((ctx.trace_id, ctx.span_id));
        }
    }

    /// Try number `n` (1 for the first) is being sent.
    pub fn attempt(&mut self, n: u32) {
        if let Some(o) = &mut self.0 {
            o.attempts = n;
        }
    }

    /// The response came from `endpoint` of the route's upstream.
    pub fn answered_by(&mut self, endpoint: &Arc<Endpoint>) {
        if let Some(o) = &mut self.0 {
            o.endpoint = Answered::Endpoint(endpoint.clone());
        }
    }

    /// Tandem answers the request itself because of `err`.
    pub fn failed(&mut self, err: &ProxyError) {
        if let Some(o) = &mut self.0 {
            o.error = Some(err.kind);
            if let Some(e) = &err.endpoint {
                o.endpoint = Answered::Label(e.clone());
            }
        }
    }

    /// Notes the response head and moves the observation into the response body, which
    /// finishes it when the body ends.
    pub fn respond(self, res: Response<ProxyBody>) -> Response<ProxyBody> {
        let head = self.0.as_ref().map(|o| o.start.elapsed());
        self.respond_after(res, head.unwrap_or_default(), true)
    }

    /// [`Observer::respond`] with the response head `head` after the request's start (as the
    /// caller measured it already); `grpc`: the request is a gRPC call (its content type is
    /// `application/grpc*`, gRPC-Web included).
    pub fn respond_after(
        mut self,
        mut res: Response<ProxyBody>,
        head: Duration,
        grpc: bool,
    ) -> Response<ProxyBody> {
        let Some(o) = &mut self.0 else {
            return res;
        };
        o.head = Some(head);
        o.status = Some(res.status().as_u16());
        // Only a gRPC call has a `grpc-status` (the field is documented as such): the lookup of
        // a custom header name (hashing it) is skipped for every other response.
        if grpc {
            o.grpc_status = grpc_status(res.headers());
        }
        res.body_mut().observe(self);
        res
    }

    /// Follows one poll of the response body (`sent`: its bytes so far): reads trailers, and
    /// finishes on the last frame (`at_end`: the body has nothing more after this one), on the
    /// end, or on an error.
    #[allow(clippy::type_complexity)]
    pub(crate) fn frame(
        &mut self,
        polled: &Poll<Option<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>>>,
        at_end: bool,
        sent: u64,
        now: Option<Instant>,
    ) {
        let Some(o) = &mut self.0 else {
            return;
        };
        // The body counts its bytes once, for every record that needs them.
        o.sent = sent;
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    if let Some(s) = grpc_status(trailers) {
                        o.grpc_status = Some(s);
                    }
                }
                if at_end {
                    self.finish_at(End::Complete, now);
                }
            }
            Poll::Ready(Some(Err(e))) => {
                let end = if e.is::<StreamIdle>() {
                    End::IdleTimeout
                } else {
                    End::UpstreamError
                };
                self.finish_at(end, now);
            }
            Poll::Ready(None) => self.finish_at(End::Complete, now),
            Poll::Pending => {}
        }
    }

    /// Finishes the observation (once; later calls do nothing).
    pub(crate) fn finish(&mut self, end: End) {
        self.finish_at(end, None);
    }

    /// [`Observer::finish`] at `now` (read now when `None`).
    fn finish_at(&mut self, end: End, now: Option<Instant>) {
        if let Some(o) = self.0.take() {
            o.finish(end, now.unwrap_or_else(Instant::now));
        }
    }

    /// The request's `Host` (when its URI has no authority) and `User-Agent`, when observed.
    pub fn seen(&self) -> Option<Seen<'_>> {
        self.0
            .as_ref()
            .map(|o| (o.host.as_ref(), o.user_agent.as_ref()))
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        // Unfinished: the client went away before the response ended (or before it began),
        // or Tandem closed the connection at the end of its drain.
        self.finish(End::ClientGone);
    }
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Observer").field(&self.is_active()).finish()
    }
}

// === impl Observation ===

impl Observation {
    /// The completion point of one request's access log line; `now`: its end.
    fn finish(&self, end: End, now: Instant) {
        let target = self.target.as_deref();
        let endpoint = match &self.endpoint {
            Answered::None => None,
            Answered::Endpoint(e) => Some(e.label.as_str()),
            Answered::Label(l) => Some(l.as_str()),
        };
        let authority = match &self.authority {
            Some(a) => Some(a.as_str().as_bytes()),
            None => self.host.as_ref().map(HeaderValue::as_bytes),
        };
        let ids = self.trace.map(|(t, s)| (t.to_hex(), s.to_hex()));
        let (trace_id, span_id) = match &ids {
            Some((t, s)) => (std::str::from_utf8(t).ok(), std::str::from_utf8(s).ok()),
            None => (None, None),
        };
        let record = RequestRecord {
            start: self.started.into(),
            head: self.head,
            duration: now.saturating_duration_since(self.start),
            listener: &self.stack.name,
            direction: direction(self.stack.direction),
            route: target.map(|t| t.name.as_str()),
            upstream: target.map(|t| t.upstream.name.as_str()),
            endpoint,
            client: self.client,
            protocol: protocol(self.version),
            method: self.method.as_str(),
            path: self.path.as_ref().map_or("/", PathAndQuery::as_str),
            authority,
            status: self.status,
            grpc_status: self.grpc_status,
            received_bytes: self
                .received
                .as_ref()
                .map_or(0, |r| r.load(Ordering::Relaxed)),
            sent_bytes: self.sent,
            attempts: self.attempts,
            error: self.error.map(ErrorKind::reason),
            end,
            user_agent: self.user_agent.as_ref().map(HeaderValue::as_bytes),
            peer_identity: self.identity.as_ref().map(PeerIdentity::as_str),
            trace_id,
            span_id,
            // A route target is its listener's (direction included) and never changes, nor
            // does an endpoint's label.
            context: match (target, &self.endpoint) {
                (Some(t), Answered::Endpoint(e)) => Some((t.log_id, e.log_id)),
                _ => None,
            },
        };
        if let Some(log) = &self.stack.access_log {
            log.log_request(&record);
        }
    }
}

// === impl ConnectionObserver ===

impl ConnectionObserver {
    /// Starts observing a connection from `client` to `target` on `stack`'s TCP listener;
    /// nothing when the listener has no access log.
    pub fn start(
        stack: &Arc<ListenerStack>,
        target: &Arc<RouteTarget>,
        client: Option<SocketAddr>,
    ) -> ConnectionObserver {
        let Some(log) = &stack.access_log else {
            return ConnectionObserver(None);
        };
        ConnectionObserver(Some(Box::new(ConnectionObservation {
            log: log.clone(),
            stack: stack.clone(),
            target: target.clone(),
            started: SystemTime::now(),
            start: Instant::now(),
            client,
            endpoint: Answered::None,
            error: None,
            identity: None,
        })))
    }

    /// The client's verified identity (mTLS), for the `peer_identity` field.
    pub fn identity(&mut self, identity: Option<PeerIdentity>) {
        if let Some(o) = &mut self.0 {
            o.identity = identity;
        }
    }

    /// Connected to `endpoint` of the upstream.
    pub fn connected(&mut self, endpoint: &Arc<Endpoint>) {
        if let Some(o) = &mut self.0 {
            o.endpoint = Answered::Endpoint(endpoint.clone());
        }
    }

    /// No upstream connection because of `err`.
    pub fn failed(&mut self, err: &ProxyError) {
        if let Some(o) = &mut self.0 {
            o.error = Some(err.kind);
            if let Some(e) = &err.endpoint {
                o.endpoint = Answered::Label(e.clone());
            }
        }
    }

    /// The connection closed after `received` bytes from the client and `sent` to it.
    pub fn finish(mut self, received: u64, sent: u64, end: End) {
        if let Some(o) = self.0.take() {
            o.finish(received, sent, end);
        }
    }
}

impl Drop for ConnectionObserver {
    fn drop(&mut self) {
        if let Some(o) = self.0.take() {
            // Never connected (see `error`), or cut off at the end of the drain.
            let end = match o.error {
                Some(_) => End::NoUpstream,
                None => End::ClientGone,
            };
            o.finish(0, 0, end);
        }
    }
}

impl std::fmt::Debug for ConnectionObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ConnectionObserver")
            .field(&self.0.is_some())
            .finish()
    }
}

// === impl ConnectionObservation ===

impl ConnectionObservation {
    /// The completion point of one TCP connection.
    fn finish(&self, received: u64, sent: u64, end: End) {
        let upstream = &self.target.upstream;
        let endpoint = match &self.endpoint {
            Answered::None => None,
            Answered::Endpoint(e) => Some(e.label.as_str()),
            Answered::Label(l) => Some(l.as_str()),
        };
        let record = ConnectionRecord {
            start: self.started,
            duration: self.start.elapsed(),
            listener: &self.stack.name,
            direction: direction(self.stack.direction),
            upstream: Some(&upstream.name),
            endpoint,
            client: self.client,
            received_bytes: received,
            sent_bytes: sent,
            error: self.error.map(ErrorKind::reason),
            end,
            peer_identity: self.identity.as_ref().map(PeerIdentity::as_str),
            trace_id: None,
            span_id: None,
        };
        self.log.log_connection(&record);
    }
}

fn direction(d: Direction) -> &'static str {
    match d {
        Direction::Inbound => "inbound",
        Direction::Outbound => "outbound",
    }
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP",
    }
}

/// A request's `Host` header (when `host`: its URI has no authority) and `User-Agent`.
fn host_and_agent(headers: &HeaderMap, host: bool) -> (Option<HeaderValue>, Option<HeaderValue>) {
    // A request has a handful of headers: one walk over them, comparing standard names (a
    // comparison of two small numbers), costs less than two hashed lookups. Beyond a few, the
    // lookups.
    const WALK: usize = 12;
    if headers.len() > WALK {
        let found = host.then(|| headers.get(header::HOST).cloned()).flatten();
        return (found, headers.get(header::USER_AGENT).cloned());
    }
    let (mut found, mut agent) = (None, None);
    // The first value of each name, as `get` returns it.
    for (name, value) in headers {
        if *name == header::HOST {
            if host && found.is_none() {
                found = Some(value.clone());
            }
        } else if *name == header::USER_AGENT && agent.is_none() {
            agent = Some(value.clone());
        }
        // Both found (they usually come first): the rest cannot change them.
        if agent.is_some() && (found.is_some() || !host) {
            break;
        }
    }
    (found, agent)
}

/// `grpc-status` as a number, when present and numeric.
fn grpc_status(h: &HeaderMap) -> Option<u32> {
    // A constant name: looking up by `&str` parses the name on every response.
    const GRPC_STATUS: header::HeaderName = header::HeaderName::from_static("grpc-status");
    std::str::from_utf8(h.get(GRPC_STATUS)?.as_bytes())
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The walk finds what `get` finds (the first value of each name), or nothing, whatever
    /// the order, repeats and number of headers, with and without `Host` wanted.
    #[test]
    fn host_and_agent_match_lookups() {
        let names = ["host", "user-agent", "accept", "x-a", "x-b"];
        for n in 0..16usize {
            for seed in 0..40usize {
                let mut h = HeaderMap::new();
                for i in 0..n {
                    let name = names[(i * 7 + seed * 3 + i / 3) % names.len()];
                    h.append(name, HeaderValue::from_str(&format!("{name}-{i}")).unwrap());
                }
                for host in [true, false] {
                    let want = (
                        host.then(|| h.get(header::HOST).cloned()).flatten(),
                        h.get(header::USER_AGENT).cloned(),
                    );
                    assert_eq!(host_and_agent(&h, host), want, "{h:?} {host}");
                }
            }
        }
    }
}
