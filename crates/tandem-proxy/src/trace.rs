//! Spans of the data path: one server span per request Tandem receives and one client span per
//! upstream try, linked into the caller's trace, with OpenTelemetry's HTTP semantic conventions.
//!
//! ```text
//! caller span (traceparent / b3 in the request, or none: a new trace)
//!  '- server span   "{method} {http.route}"   request received -> last response byte sent
//!      |- client span "{method}"   try 1: sent -> failure, or the head of a response retried
//!      '- client span "{method}"   try 2 (http.request.resend_count = 1): sent -> last byte
//! ```
//!
//! Each try gets its own span id, written into that try's request (`traceparent`, `tracestate`
//! and/or B3, per `tracing.propagation`), so the upstream's spans hang under the try that reached
//! them, and retries are visible as sibling client spans. The caller's own trace headers of the
//! configured formats are removed first: the upstream sees Tandem's context, not a stale copy.
//!
//! HTTP/1.1 request heads are serialized once ([`crate::h1::RequestHead`]); a traced try
//! writes a copy of that head with its own trace header lines before the final blank line
//! (one buffer for the write), so the head is not serialized again.
//! HTTP/2 tries each get their own header map already, and the context is added to it.
//!
//! Sampling is decided once, on the server span (parent-based, see
//! [`tandem_telemetry::trace::sample`]). An unsampled request still gets ids and propagates them
//! with the sampled flag off, so downstream services agree; it builds no span record and touches
//! no string. With tracing off none of this exists: the listener has no tracer and the handler
//! checks one `Option`.
//!
//! Semantic conventions (stable HTTP conventions): server spans carry `http.request.method`,
//! `url.path`, `url.scheme`, `server.address`, `server.port`, `network.protocol.version`,
//! `client.address`, `user_agent.original`, `http.route` (a route's path condition as a
//! template: `/login`, `/api/*`) and `http.response.status_code`; client spans carry
//! `http.request.method`, `url.full`, `server.address` and `server.port` of the endpoint,
//! `network.protocol.version`, `http.response.status_code` and `http.request.resend_count`. Both
//! carry `tandem.listener`, `tandem.route` and `tandem.upstream`, and `error.type` on failure:
//! the `tandem-error` reason (`connect_failed`, `upstream_timeout`, ...) when Tandem answered,
//! else the status code. Status is ERROR for 5xx on server spans and for 4xx, 5xx and failed
//! tries on client spans, as the conventions say. Query strings are left out (`url.query`, and
//! the query of `url.full`): they often carry tokens, and spans leave the host.

use std::sync::{Arc, LazyLock};

use bytes::BytesMut;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Version};
use hyper::body::Incoming;
use tandem_config::PathMatch;
use tandem_telemetry::access_log::End;
use tandem_telemetry::clock::{self, Epoch};
use tandem_telemetry::trace::{
    EncodedAttributes, EncodedSpans, Key, SpanContext, SpanId, SpanKind, SpanStart, Tracer,
};
use tokio::time::Instant;

use crate::error::{ErrorKind, ProxyError};
use crate::headers::Forwarded;
use crate::observe::{Observer, Seen};
use crate::route::rsplit_colon;
#[cfg(test)]
use crate::route::strip_port;
use crate::stack::{ListenerStack, RouteTarget};

/// One request's tracing state, from receipt to the response head. Boxed by the handler so that
/// a traced request costs the request future one pointer.
#[derive(Debug)]
pub struct RequestTrace {
    tracer: Arc<Tracer>,
    /// The server span's context.
    context: SpanContext,
    /// Whether the request carried a trace header of the configured formats (to strip).
    carried: bool,
    /// The try in progress: its span id.
    current: Option<SpanId>,
    /// What a sampled request records; `None` when the request is not sampled.
    recording: Option<Recording>,
}

/// A sampled request's spans, written as OTLP protobuf as the request goes: the server span's
/// request-side part when the request arrives (so nothing of the request is kept for it), each
/// client span when its try ends, the rest of the server span with the response.
///
/// The server span is open from the start to the end, so client spans, which end inside it,
/// are written to a buffer of their own (a span is one length-delimited field: the open one's
/// length is written when it closes). A try that failed or was retried is recorded when it
/// ends; the last try's span, which lasts as long as the response body, is recorded with the
/// server span, both under one lock.
#[derive(Debug)]
struct Recording {
    /// The request's start and its Unix time ([`tandem_telemetry::clock`]): every time of the
    /// request is converted from it, so its spans nest exactly.
    epoch: Epoch,
    /// The server span, open.
    server: EncodedSpans,
    /// The client spans, after a preamble of `url.full` (the same for every try). The last
    /// try's span stays open here when it got a response: it is closed when another try
    /// starts (it was retried: it ended at its response head, `answered_end`), or with the
    /// server span when its response is the one the client gets (it ends with the body, like
    /// the server span).
    clients: EncodedSpans,
    /// When the open client span's response head arrived.
    answered_end: u64,
    /// When the try in progress started.
    try_start: u64,
    /// The method's place in [`METHOD_NAMES`] (the server span's name).
    method: u8,
    /// The error Tandem answered with, if it did: its kind and one-line message (boxed: rare).
    error: Option<Box<(ErrorKind, String)>>,
}

// The request's tracing state is one allocation per traced request. mimalloc, asked through
// the `mimalloc` crate's `mi_malloc_aligned`, serves a size whose class is not a power of two
// from an over-allocating slow path whenever the page's free list is empty, and that path never
// refills the page's list: ~180 instructions more on every request (measured with callgrind at
// 296 bytes, class 320). 129 to 256 bytes take the 256-byte class.
const _: () = assert!(
    std::mem::size_of::<RequestTrace>() > 128 && std::mem::size_of::<RequestTrace>() <= 256,
    "RequestTrace left 129..=256 bytes (mimalloc's 256-byte class): see the comment above"
);

/// Keys of the attributes written per request ([`Key`]: a copy of fixed size each).
const METHOD_ORIGINAL: Key = Key::new("http.request.method_original");
const URL_FULL: Key = Key::new("url.full");
const URL_PATH: Key = Key::new("url.path");
const RESEND_COUNT: Key = Key::new("http.request.resend_count");
const STATUS_CODE: Key = Key::new("http.response.status_code");
const BODY_SIZE: Key = Key::new("http.response.body.size");
const ERROR_TYPE: Key = Key::new("error.type");
const TANDEM_END: Key = Key::new("tandem.end");
const HTTP_ROUTE: Key = Key::new("http.route");
const SERVER_ADDRESS: Key = Key::new("server.address");
const SERVER_PORT: Key = Key::new("server.port");
const CLIENT_ADDRESS: Key = Key::new("client.address");
const USER_AGENT: Key = Key::new("user_agent.original");
const LISTENER: Key = Key::new("tandem.listener");

/// Bytes of a server span (a dozen attributes, a long path or user agent included).
const SERVER_CAPACITY: usize = 512;
/// Bytes of a request's client spans (one per try; a single try is the common case).
const CLIENTS_CAPACITY: usize = 512;

/// How a try ended.
#[derive(Clone, Copy, Debug)]
pub enum TryOutcome<'e> {
    /// The upstream answered with a response head.
    Response(StatusCode),
    /// The try failed before a response head.
    Failed(&'e ProxyError),
}

/// Where a try went, for its span.
#[derive(Clone, Copy, Debug)]
pub struct TryTarget<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The endpoint's `server.address` and `server.port` ([`endpoint_attributes`]).
    pub endpoint: &'a EncodedAttributes,
    /// Whether the try used HTTP/2.
    pub http2: bool,
    /// The listener.
    pub listener: &'a str,
    /// The route.
    pub target: &'a RouteTarget,
}

// === impl RequestTrace ===

impl RequestTrace {
    /// Starts the server span of `req`, received at `start`: reads the caller's context,
    /// decides sampling, and when sampled writes the span's request-side attributes. What the
    /// access log's `observed` read of the request already (`Host`, `User-Agent`) is not read
    /// again.
    pub fn start(
        tracer: &Arc<Tracer>,
        forwarded: &Forwarded,
        req: &Request<Incoming>,
        start: Instant,
        observed: &Observer,
    ) -> Box<Self> {
        let started = tracer.start_server(req.headers());
        let recording = started.context.sampled.then(|| {
            let (epoch, start_unix_nanos) = clock::clock().start(start.into_std());
            let mut server = EncodedSpans::recycled(SERVER_CAPACITY);
            // Named with the route, once there is one (`respond`).
            server.begin_unnamed(&SpanStart {
                trace_id: started.context.trace_id,
                span_id: started.context.span_id,
                parent: started.parent,
                remote_parent: started.parent.is_some(),
                trace_state: started
                    .context
                    .trace_state
                    .as_ref()
                    .map(HeaderValue::as_bytes),
                name: "",
                name_suffix: None,
                kind: SpanKind::Server,
                start_unix_nanos,
            });
            // METHOD_NAMES has ten entries.
            let method = request_attributes(&mut server, forwarded, req, observed.seen()) as u8;
            Recording {
                epoch,
                server,
                clients: EncodedSpans::default(),
                answered_end: 0,
                try_start: 0,
                method,
                error: None,
            }
        });
        Box::new(RequestTrace {
            tracer: tracer.clone(),
            context: started.context,
            carried: started.carried,
            current: None,
            recording,
        })
    }

    /// The server span's context: the trace id and span id the access log shows.
    pub fn context(&self) -> &SpanContext {
        &self.context
    }

    /// Prepares the upstream request: removes the caller's trace headers of the configured
    /// formats, and writes the URL the tries go to (`url.full` of their spans).
    pub fn outgoing(
        &mut self,
        headers: &mut HeaderMap,
        authority: &Authority,
        path: &PathAndQuery,
    ) {
        // The request's names were scanned for trace headers once, at the start.
        if self.carried {
            self.tracer.propagator().strip(headers);
        }
        if let Some(r) = &mut self.recording {
            if r.clients.spans() == 0 && !r.clients.is_open() {
                r.clients = EncodedSpans::recycled(CLIENTS_CAPACITY);
            }
            r.clients
                .preamble_str_parts_attr(&URL_FULL, &["http://", authority.as_str(), path.path()]);
        }
    }

    /// Starts a try at `now`: a new client span id.
    pub fn start_try(&mut self, now: Instant) {
        if let Some(r) = &mut self.recording {
            // The previous try got a response and was retried: its span ended then, and goes
            // out now (as a failed try's does), not when the request's response ends.
            r.clients.end(r.answered_end);
            self.tracer.record_finished(&mut r.clients);
            r.try_start = r.epoch.unix_nanos(now.into_std());
        }
        self.current = Some(SpanId::random());
    }

    /// The current try's context in the configured formats, as HTTP/1.1 header lines written
    /// at the end of `out` (nothing before a try started).
    pub fn write_h1_lines(&self, out: &mut BytesMut) {
        if let Some(c) = self.try_context() {
            self.tracer.propagator().write_h1(&c, out);
        }
    }

    /// Adds the current try's context to an HTTP/2 request's headers.
    pub fn inject(&self, headers: &mut HeaderMap) {
        if let Some(c) = self.try_context() {
            self.tracer.propagator().inject(&c, headers);
        }
    }

    fn try_context(&self) -> Option<SpanContext> {
        let span_id = self.current?;
        Some(SpanContext {
            span_id,
            ..self.context.clone()
        })
    }

    /// Ends the current try at `ended`; `attempt` counts from 1. Writes its client span when
    /// the request is sampled: closed now when the try failed, else left open until the end
    /// of its response (or until it is retried).
    pub fn end_try(
        &mut self,
        attempt: u32,
        ended: Instant,
        outcome: TryOutcome<'_>,
        to: TryTarget<'_>,
    ) {
        let Some(span_id) = self.current.take() else {
            return;
        };
        let Some(r) = &mut self.recording else {
            return;
        };
        let method = method_index(to.method);
        let start_unix_nanos = r.try_start;
        let end_unix_nanos = r.epoch.unix_nanos(ended.into_std());
        let s = &mut r.clients;
        s.begin(&SpanStart {
            trace_id: self.context.trace_id,
            span_id,
            parent: Some(self.context.span_id),
            remote_parent: false,
            trace_state: self.context.trace_state.as_ref().map(HeaderValue::as_bytes),
            name: if method == OTHER {
                "HTTP"
            } else {
                METHOD_NAMES[method]
            },
            name_suffix: None,
            kind: SpanKind::Client,
            start_unix_nanos,
        });
        s.attributes(method_attribute(method));
        if method == OTHER {
            s.str_attr(&METHOD_ORIGINAL, to.method.as_str());
        }
        // `url.full`, written once by `outgoing`.
        s.copy_preamble();
        s.attributes(to.endpoint);
        let versions = &CONSTANT_ATTRIBUTES.protocol_version;
        s.attributes(if to.http2 { &versions[2] } else { &versions[1] });
        if attempt > 1 {
            s.int_attr(&RESEND_COUNT, i64::from(attempt - 1));
        }
        let error = match outcome {
            TryOutcome::Response(st) => {
                s.int_attr(&STATUS_CODE, i64::from(st.as_u16()));
                if st.as_u16() >= 400 {
                    s.str_attr(&ERROR_TYPE, st.as_str());
                    Some(format!("HTTP {st}"))
                } else {
                    None
                }
            }
            TryOutcome::Failed(e) => {
                s.str_attr(&ERROR_TYPE, e.kind.reason());
                Some(e.message().trim_end().to_owned())
            }
        };
        push_names(s, to.listener, Some(to.target));
        if let Some(message) = error {
            s.error(&message);
        }
        match outcome {
            TryOutcome::Response(_) => r.answered_end = end_unix_nanos,
            TryOutcome::Failed(_) => {
                s.end(end_unix_nanos);
                // Recorded now: a request that goes on (a retry, a long stream) does not hold
                // a finished span back from export.
                self.tracer.record_finished(s);
            }
        }
    }

    /// Notes that Tandem answered the request itself with `err`.
    pub fn failed(&mut self, err: &ProxyError) {
        if let Some(r) = &mut self.recording {
            r.error = Some(Box::new((err.kind, err.message().trim_end().to_owned())));
        }
    }

    /// Notes the response head's `status`; `target` is the route taken (`None`: no route
    /// matched): writes the server span's name and what the route and status say. The span
    /// ends with the response body ([`ServerSpan::end`]); `None` when the request is not
    /// sampled and there is nothing to record.
    pub fn respond(
        mut self: Box<Self>,
        stack: &ListenerStack,
        target: Option<&Arc<RouteTarget>>,
        status: StatusCode,
    ) -> Option<ServerSpan> {
        let r = self.recording.as_mut()?;
        let route = target.and_then(|t| t.http_route.as_deref());
        let s = &mut r.server;
        match usize::from(r.method) {
            OTHER => s.name("HTTP", None),
            m => s.name(METHOD_NAMES[m], route),
        }
        if let Some(route) = route {
            s.str_attr(&HTTP_ROUTE, route);
        }
        s.int_attr(&STATUS_CODE, i64::from(status.as_u16()));
        push_names(s, &stack.name, target.map(|t| &**t));
        Some(ServerSpan {
            trace: self,
            status,
        })
    }
}

impl Drop for RequestTrace {
    fn drop(&mut self) {
        // A request given up before its response ended (the client left while it waited):
        // tries that ended are recorded still; the server span is not.
        if let Some(r) = &mut self.recording {
            if r.clients.spans() > 0 {
                self.tracer.record_encoded(std::mem::take(&mut r.clients));
            }
        }
    }
}

/// A sampled request's server span after its response head, waiting for the body's end.
#[derive(Debug)]
pub struct ServerSpan {
    trace: Box<RequestTrace>,
    status: StatusCode,
}

// === impl ServerSpan ===

impl ServerSpan {
    /// Ends and records the span: the response body ended as `how` after `sent` bytes, at
    /// `now`.
    pub fn end(self, sent: u64, how: End, now: Instant) {
        let ServerSpan { mut trace, status } = self;
        let RequestTrace {
            tracer, recording, ..
        } = &mut *trace;
        let Some(r) = recording else {
            return;
        };
        let end = r.epoch.unix_nanos(now.into_std());
        let body_size = i64::try_from(sent).unwrap_or(i64::MAX);
        let mut clients = std::mem::take(&mut r.clients);
        if clients.is_open() {
            // The try whose response the client got lasts as long as its body, too.
            clients.int_attr(&BODY_SIZE, body_size);
            clients.end(end);
        }
        let mut server = std::mem::take(&mut r.server);
        server.int_attr(&BODY_SIZE, body_size);
        // A body cut short is an error of this request unless the client chose to leave.
        let body_error = match how {
            End::UpstreamError => Some((
                "response_body_failed",
                "the upstream's response body failed part way",
            )),
            End::IdleTimeout => Some((
                "stream_idle_timeout",
                "no data from the upstream for the stream idle timeout",
            )),
            _ => None,
        };
        if matches!(how, End::ClientGone) {
            server.str_attr(&TANDEM_END, "client_gone");
        }
        // Tandem's own answers are errors when they are server errors (a 404 no_route is not)
        // even when a gRPC client received them as HTTP 200 with a grpc-status.
        let server_error = status.is_server_error()
            || r.error
                .as_ref()
                .is_some_and(|e| e.0.status().is_server_error());
        let error = match (server_error, r.error.take().map(|e| *e), body_error) {
            (_, None, Some((kind, message))) => {
                server.str_attr(&ERROR_TYPE, kind);
                Some(message.to_owned())
            }
            (true, Some((kind, message)), _) => {
                server.str_attr(&ERROR_TYPE, kind.reason());
                Some(message)
            }
            (true, None, None) => {
                server.str_attr(&ERROR_TYPE, status.as_str());
                Some(format!("HTTP {status}"))
            }
            (false, _, _) => None,
        };
        if let Some(message) = error {
            server.error(&message);
        }
        server.end(end);
        // The client spans first: they ended first.
        tracer.record_encoded_pair(clients, server);
    }
}

/// Writes the server span's attributes that describe the request as it arrived (from the
/// request itself: nothing of it is kept); returns the method's place in [`METHOD_NAMES`].
/// `seen` is `Host` (when the URI has no authority) and `User-Agent` when the access log read
/// them already.
fn request_attributes(
    s: &mut EncodedSpans,
    forwarded: &Forwarded,
    req: &Request<Incoming>,
    seen: Option<Seen<'_>>,
) -> usize {
    let method = method_index(req.method());
    s.attributes(method_attribute(method));
    if method == OTHER {
        s.str_attr(&METHOD_ORIGINAL, req.method().as_str());
    }
    let uri = req.uri();
    s.str_attr(&URL_PATH, uri.path());
    s.attributes(&CONSTANT_ATTRIBUTES.url_scheme_http);
    let (host, user_agent) = match seen {
        Some(seen) => seen,
        None => (
            match uri.authority() {
                Some(_) => None,
                None => req.headers().get(http::header::HOST),
            },
            req.headers().get(http::header::USER_AGENT),
        ),
    };
    // `host:port` as the client addressed it: the URI's authority, else `Host`.
    let (address, port) = match uri.authority() {
        Some(a) => (
            Some(authority_address(a.as_str()).as_bytes()),
            authority_port(a.as_str()),
        ),
        // `to_str` accepts exactly the ASCII values (a header value has no control bytes).
        None => match host.map(HeaderValue::as_bytes).filter(|h| h.is_ascii()) {
            Some(h) => {
                let (address, port) = host_address_port(h);
                (Some(address), port)
            }
            None => (None, None),
        },
    };
    if let Some(address) = address {
        s.ascii_attr(&SERVER_ADDRESS, address);
    }
    if let Some(port) = port {
        s.int_attr(&SERVER_PORT, i64::from(port));
    }
    let versions = &CONSTANT_ATTRIBUTES.protocol_version;
    s.attributes(match req.version() {
        Version::HTTP_2 => &versions[2],
        Version::HTTP_10 => &versions[0],
        _ => &versions[1],
    });
    if let Some(ip) = forwarded.client_ip() {
        s.ip_attr(&CLIENT_ADDRESS, ip);
    }
    if let Some(ua) = user_agent {
        // Left out unless ASCII, as `to_str` would.
        s.ascii_attr(&USER_AGENT, ua.as_bytes());
    }
    method
}

/// Attributes whose key and value are both constants, encoded once for the process: a copy
/// of their bytes instead of writing key and value, on every request.
struct ConstantAttributes {
    /// `url.scheme` = `http`.
    url_scheme_http: EncodedAttributes,
    /// `network.protocol.version` = `1.0`, `1.1`, `2`.
    protocol_version: [EncodedAttributes; 3],
    /// `http.request.method` = each of [`METHOD_NAMES`].
    methods: [EncodedAttributes; METHOD_NAMES.len()],
}

/// Method names as the semantic conventions have them: the standard methods, else `_OTHER`.
const METHOD_NAMES: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE", "_OTHER",
];

/// Where `_OTHER` is in [`METHOD_NAMES`].
const OTHER: usize = METHOD_NAMES.len() - 1;

/// `http.request.method` = `METHOD_NAMES[i]`, encoded (`_OTHER` past the end).
fn method_attribute(i: usize) -> &'static EncodedAttributes {
    let methods = &CONSTANT_ATTRIBUTES.methods;
    &methods[i.min(OTHER)]
}

static CONSTANT_ATTRIBUTES: LazyLock<ConstantAttributes> = LazyLock::new(|| {
    let version = |v| EncodedAttributes::strs(&[("network.protocol.version", v)]);
    ConstantAttributes {
        url_scheme_http: EncodedAttributes::strs(&[("url.scheme", "http")]),
        protocol_version: [version("1.0"), version("1.1"), version("2")],
        methods: METHOD_NAMES.map(|m| EncodedAttributes::strs(&[("http.request.method", m)])),
    }
});

/// `http.route` for a route's path condition: the exact path, or the prefix as `prefix/*`.
pub fn http_route(path: Option<&PathMatch>) -> Option<Arc<str>> {
    match path? {
        PathMatch::Exact(p) => Some(Arc::from(p.as_str())),
        PathMatch::Prefix(p) => Some(Arc::from(format!("{}/*", p.trim_end_matches('/')))),
    }
}

/// The method as the semantic conventions name it: the standard methods, else `_OTHER`.
#[cfg(test)]
fn method_name(m: &Method) -> &'static str {
    METHOD_NAMES[method_index(m)]
}

/// Where the method's name is in [`METHOD_NAMES`] (a number: compared and looked up for
/// less than a name).
fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::DELETE => 3,
        Method::HEAD => 4,
        Method::OPTIONS => 5,
        Method::PATCH => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => OTHER,
    }
}

/// `server.address` of a request whose URI has `authority`: its host without brackets, as
/// `strip_port(Authority::host())` gives it, in one scan of the bytes (those two cost ~450
/// instructions per request through the generic character searchers).
fn authority_address(authority: &str) -> &str {
    let host_port = match authority.bytes().rposition(|b| b == b'@') {
        Some(at) => authority.get(at + 1..).unwrap_or(""),
        None => authority,
    };
    if let Some(v6) = host_port.strip_prefix('[') {
        return match v6.bytes().position(|b| b == b']') {
            Some(end) => v6.get(..end).unwrap_or(v6),
            None => v6,
        };
    }
    match host_port.bytes().position(|b| b == b':') {
        Some(end) => host_port.get(..end).unwrap_or(host_port),
        None => host_port,
    }
}

/// The port the client addressed in `authority` (a URI's authority or `Host`): its port, else
/// the scheme's default (`None`: a port that is no number).
fn authority_port(authority: &str) -> Option<u16> {
    // `[v6]` without a port ends in `]`, whose last `:` is inside the brackets.
    match rsplit_colon(authority) {
        Some((_, port)) if port.bytes().all(|b| b.is_ascii_digit()) => port_number(port.as_bytes()),
        _ => Some(80),
    }
}

/// `server.address` and `server.port` of a `Host` header: what `strip_port` and
/// [`authority_port`] give, in one scan of the bytes (those two cost ~150 instructions per
/// request through the character searchers and `parse`).
fn host_address_port(host: &[u8]) -> (&[u8], Option<u16>) {
    let colon = host.iter().rposition(|&b| b == b':');
    let digits = colon
        .and_then(|c| host.get(c + 1..))
        .filter(|p| p.iter().all(u8::is_ascii_digit));
    let port = match digits {
        Some(p) => port_number(p),
        None => Some(80),
    };
    if let Some(v6) = host.strip_prefix(b"[") {
        let address = match v6.iter().position(|&b| b == b']') {
            Some(end) => v6.get(..end).unwrap_or(v6),
            None => v6,
        };
        return (address, port);
    }
    let address = match (colon, digits) {
        (Some(c), Some(_)) => host.get(..c).unwrap_or(host),
        _ => host,
    };
    (address, port)
}

/// A port number of ASCII digits (`parse::<u16>` without its generic integer parser); `None`
/// when empty or past 65535.
fn port_number(digits: &[u8]) -> Option<u16> {
    if digits.is_empty() {
        return None;
    }
    let mut n: u32 = 0;
    for &b in digits {
        n = n * 10 + u32::from(b.wrapping_sub(b'0'));
        if n > u32::from(u16::MAX) {
            return None;
        }
    }
    u16::try_from(n).ok()
}

/// A client span's `server.address` and `server.port` for the endpoint labelled `label`,
/// encoded once per endpoint (parsing the label on every try cost ~300 instructions).
pub fn endpoint_attributes(label: &str) -> EncodedAttributes {
    let (address, port) = endpoint_address(label);
    EncodedAttributes::build(|s| {
        s.str("server.address", address);
        if let Some(p) = port {
            s.int("server.port", p);
        }
    })
}

/// `server.address` and `server.port` of an endpoint label (`IP:port`, `[v6]:port`,
/// `host:port`, `unix:/path`).
fn endpoint_address(label: &str) -> (&str, Option<i64>) {
    if let Some(path) = label.strip_prefix("unix:") {
        return (path, None);
    }
    match rsplit_colon(label) {
        Some((host, port)) => (
            host.trim_start_matches('[').trim_end_matches(']'),
            port.parse().ok(),
        ),
        None => (label, None),
    }
}

fn push_names(s: &mut EncodedSpans, listener: &str, target: Option<&RouteTarget>) {
    match target {
        // The same three attributes as `str` writes them, encoded when the route was built.
        Some(t) => s.attributes(&t.span_names),
        // No route matched (rare): the listener's name alone.
        None => s.str_attr(&LISTENER, listener),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The method attributes encoded once are those `str` writes for each name `method_name`
    /// can return; the constant ones likewise.
    #[test]
    fn constant_attributes_are_the_encoded_pairs() {
        for m in [
            "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
            "PROPFIND",
        ] {
            let method = Method::from_bytes(m.as_bytes()).unwrap_or(Method::GET);
            let name = method_name(&method);
            assert_eq!(
                method_attribute(method_index(&method)),
                &EncodedAttributes::strs(&[("http.request.method", name)]),
                "{m}"
            );
        }
        let c = &CONSTANT_ATTRIBUTES;
        assert_eq!(
            c.url_scheme_http,
            EncodedAttributes::strs(&[("url.scheme", "http")])
        );
        for (v, a) in ["1.0", "1.1", "2"].iter().zip(&c.protocol_version) {
            assert_eq!(
                a,
                &EncodedAttributes::strs(&[("network.protocol.version", v)])
            );
        }
    }

    /// An endpoint's attributes, encoded once, are what writing them one by one gives: an
    /// address and a port, or a socket path alone.
    #[test]
    fn endpoint_attributes_are_the_written_pairs() {
        let written = |address: &str, port: Option<i64>| {
            EncodedAttributes::build(|s| {
                s.str("server.address", address);
                if let Some(p) = port {
                    s.int("server.port", p);
                }
            })
        };
        assert_eq!(
            endpoint_attributes("10.0.0.7:8080"),
            written("10.0.0.7", Some(8080))
        );
        assert_eq!(endpoint_attributes("[::1]:9"), written("::1", Some(9)));
        assert_eq!(
            endpoint_attributes("unix:/run/app.sock"),
            written("/run/app.sock", None)
        );
        assert_ne!(
            endpoint_attributes("10.0.0.7:8080"),
            written("10.0.0.7", None)
        );
    }

    /// `server.address` from a URI's authority is what `Authority::host` and `strip_port` give.
    #[test]
    fn authority_address_matches_host_and_strip_port() {
        for a in [
            "example.com",
            "example.com:8080",
            "127.0.0.1:39401",
            "[::1]",
            "[::1]:443",
            "[2001:db8::7]:80",
            "user@example.com",
            "user:pw@example.com:81",
            "a@b@c:1",
            "user@[::1]:9",
            "h:",
            "x",
        ] {
            let parsed: Authority = a.parse().unwrap_or_else(|e| panic!("{a}: {e}"));
            assert_eq!(
                authority_address(parsed.as_str()),
                strip_port(parsed.host()),
                "{a}"
            );
        }
    }

    /// A `Host` header's address and port in one scan are what `strip_port` and
    /// `authority_port` give (and `parse::<u16>` for the port).
    #[test]
    fn host_address_port_matches_strip_port() {
        for h in [
            "example.com",
            "example.com:8080",
            "127.0.0.1:39401",
            "[::1]",
            "[::1]:443",
            "[2001:db8::7]:80",
            "[::1",
            "h:",
            "h:x",
            "h:0080",
            "h:65536",
            "h:99999999999",
            "a:b:c",
            "a:b:1",
            "",
            ":",
            ":1",
            "x",
        ] {
            let port = match rsplit_colon(h) {
                Some((_, p)) if p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok(),
                _ => Some(80),
            };
            assert_eq!(
                host_address_port(h.as_bytes()),
                (strip_port(h).as_bytes(), port),
                "{h}"
            );
        }
    }

    /// Route templates, method names and endpoint addresses as the conventions want them.
    #[test]
    fn names() {
        assert_eq!(
            http_route(Some(&PathMatch::Prefix("/api".into()))).as_deref(),
            Some("/api/*")
        );
        assert_eq!(
            http_route(Some(&PathMatch::Prefix("/".into()))).as_deref(),
            Some("/*")
        );
        assert_eq!(
            http_route(Some(&PathMatch::Exact("/login".into()))).as_deref(),
            Some("/login")
        );
        assert_eq!(http_route(None), None);
        assert_eq!(method_name(&Method::GET), "GET");
        assert_eq!(
            method_name(&Method::from_bytes(b"PROPFIND").unwrap_or(Method::GET)),
            "_OTHER"
        );
        assert_eq!(
            endpoint_address("127.0.0.1:8080"),
            ("127.0.0.1", Some(8080))
        );
        assert_eq!(endpoint_address("[::1]:9"), ("::1", Some(9)));
        assert_eq!(endpoint_address("app.local:80"), ("app.local", Some(80)));
        assert_eq!(authority_port("example.com:8080"), Some(8080));
        assert_eq!(authority_port("example.com"), Some(80));
        assert_eq!(authority_port("[::1]"), Some(80));
        assert_eq!(authority_port("[::1]:9"), Some(9));
        assert_eq!(authority_port("h:"), None);
        assert_eq!(authority_port("h:99999"), None);
        assert_eq!(authority_port("h:0080"), Some(80));
        assert_eq!(authority_port("h:65535"), Some(65535));
        assert_eq!(authority_port("h:65536"), None);
        assert_eq!(
            endpoint_address("unix:/run/app.sock"),
            ("/run/app.sock", None)
        );
    }
}
