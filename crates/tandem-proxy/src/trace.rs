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
//! HTTP/1.1 request heads are serialized once and shared by every try
//! ([`crate::h1::RequestHead`]); the per-try header lines are a separate small buffer the
//! exchange writes before the head's final blank line, so the head is not serialized again.
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

use std::net::IpAddr;
use std::sync::{Arc, LazyLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, Version};
use hyper::body::Incoming;
use tandem_config::PathMatch;
use tandem_telemetry::access_log::End;
use tandem_telemetry::trace::{
    EncodedAttributes, EncodedSpans, Key, SpanContext, SpanId, SpanKind, SpanStart, Tracer,
};
use tokio::time::Instant;

use crate::error::{ErrorKind, ProxyError};
use crate::headers::Forwarded;
use crate::observe::{Observer, Seen};
use crate::route::{rsplit_colon, strip_port};
use crate::stack::{ListenerStack, RouteTarget};

/// One request's tracing state, from receipt to the response head. Boxed by the handler so that
/// a traced request costs the request future one pointer.
#[derive(Debug)]
pub struct RequestTrace {
    tracer: Arc<Tracer>,
    /// The server span's context.
    context: SpanContext,
    /// The caller's span.
    parent: Option<SpanId>,
    /// Whether the request carried a trace header of the configured formats (to strip).
    carried: bool,
    /// The try in progress: its span id and when it started.
    current: Option<(SpanId, Instant)>,
    /// What a sampled request records; `None` when the request is not sampled.
    recording: Option<Recording>,
}

/// What a sampled request's spans are made of: what it held on arrival (reference-counted
/// handles and integers, no copies), written out as OTLP protobuf only when a span ends.
#[derive(Debug)]
struct Recording {
    start_unix_nanos: u64,
    start: Instant,
    /// The method's place in [`METHOD_NAMES`].
    method: usize,
    /// The method when it is not a standard one (`method` is `_OTHER`).
    method_original: Option<Method>,
    /// The request's URI as received (`url.path`, `server.address`).
    uri: Uri,
    /// The `Host` header, when the URI has no authority (`server.address`).
    host: Option<HeaderValue>,
    port: Option<u16>,
    version: Version,
    client: Option<IpAddr>,
    user_agent: Option<HeaderValue>,
    /// The authority and path sent upstream (for `url.full`: `http://{authority}{path}`).
    upstream_url: Option<(Authority, PathAndQuery)>,
    /// The error Tandem answered with, if it did: its kind and one-line message.
    error: Option<(ErrorKind, String)>,
    /// The spans written so far. The last try's client span stays open here when it got a
    /// response: it is closed when another try starts (it was retried: it ended at its
    /// response head, `answered_end`), or with the server span when its response is the one
    /// the client gets (it ends with the body, like the server span).
    spans: EncodedSpans,
    /// When the open client span's response head arrived.
    answered_end: u64,
}

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

/// Bytes a sampled request (a server and a client span).
const SPANS_CAPACITY: usize = 1024;

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
    /// Starts the server span of `req`, received at `start`: reads the caller's context and
    /// decides sampling. What the access log's `observed` read of the request already (the wall
    /// clock, `Host`, `User-Agent`) is not read again.
    pub fn start(
        tracer: &Arc<Tracer>,
        forwarded: &Forwarded,
        req: &Request<Incoming>,
        start: Instant,
        observed: &Observer,
    ) -> Box<Self> {
        let started = tracer.start_server(req.headers());
        let recording = started
            .context
            .sampled
            .then(|| Recording::new(forwarded, req, start, observed.started(), observed.seen()));
        Box::new(RequestTrace {
            tracer: tracer.clone(),
            context: started.context,
            parent: started.parent,
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
    /// formats, and notes the URL the tries go to.
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
            r.upstream_url = Some((authority.clone(), path.clone()));
        }
    }

    /// Starts a try at `now`: a new client span id.
    pub fn start_try(&mut self, now: Instant) {
        if let Some(r) = &mut self.recording {
            if r.spans.is_open() {
                // The previous try got a response and was retried: its span ended then.
                r.spans.end(r.answered_end);
                let spans = std::mem::replace(&mut r.spans, EncodedSpans::recycled(SPANS_CAPACITY));
                self.tracer.record_encoded(spans);
            }
        }
        self.current = Some((SpanId::random(), now));
    }

    /// The current try's context in the configured formats, as HTTP/1.1 header lines.
    pub fn h1_lines(&self) -> Option<Bytes> {
        self.try_context()
            .map(|c| self.tracer.propagator().render_h1(&c))
    }

    /// Adds the current try's context to an HTTP/2 request's headers.
    pub fn inject(&self, headers: &mut HeaderMap) {
        if let Some(c) = self.try_context() {
            self.tracer.propagator().inject(&c, headers);
        }
    }

    fn try_context(&self) -> Option<SpanContext> {
        let (span_id, _) = self.current?;
        Some(SpanContext {
            span_id,
            ..self.context.clone()
        })
    }

    /// Ends the current try at `ended`; `attempt` counts from 1. Writes its client span when
    /// the request is sampled: recorded now when the try failed, else left open until the end
    /// of its response (or until it is retried).
    pub fn end_try(
        &mut self,
        attempt: u32,
        ended: Instant,
        outcome: TryOutcome<'_>,
        to: TryTarget<'_>,
    ) {
        let Some((span_id, started)) = self.current.take() else {
            return;
        };
        let Some(r) = &mut self.recording else {
            return;
        };
        let method = method_index(to.method);
        let start_unix_nanos = r.unix_nanos(started);
        let end_unix_nanos = r.unix_nanos(ended);
        let s = &mut r.spans;
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
        if let Some((authority, path)) = &r.upstream_url {
            s.str_parts_attr(&URL_FULL, &["http://", authority.as_str(), path.path()]);
        }
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
                let spans = std::mem::replace(&mut r.spans, EncodedSpans::recycled(SPANS_CAPACITY));
                self.tracer.record_encoded(spans);
            }
        }
    }

    /// Notes that Tandem answered the request itself with `err`.
    pub fn failed(&mut self, err: &ProxyError) {
        if let Some(r) = &mut self.recording {
            r.error = Some((err.kind, err.message().trim_end().to_owned()));
        }
    }

    /// Notes the response head's `status`; `target` is the route taken (`None`: no route
    /// matched). The server span ends with the response body ([`ServerSpan::end`]); `None` when
    /// the request is not sampled and there is nothing to record.
    pub fn respond(
        self: Box<Self>,
        stack: &Arc<ListenerStack>,
        target: Option<&Arc<RouteTarget>>,
        status: StatusCode,
    ) -> Option<ServerSpan> {
        self.recording.as_ref()?;
        Some(ServerSpan {
            trace: self,
            stack: stack.clone(),
            target: target.cloned(),
            status,
        })
    }
}

/// A sampled request's server span after its response head, waiting for the body's end.
#[derive(Debug)]
pub struct ServerSpan {
    trace: Box<RequestTrace>,
    stack: Arc<ListenerStack>,
    target: Option<Arc<RouteTarget>>,
    status: StatusCode,
}

// === impl ServerSpan ===

impl ServerSpan {
    /// Ends and records the span: the response body ended as `how` after `sent` bytes, at
    /// `now`.
    pub fn end(self, sent: u64, how: End, now: Instant) {
        let ServerSpan {
            trace,
            stack,
            target,
            status,
        } = self;
        // Worked on in its box: moving the request's trace out of it was a copy of ~400 bytes.
        let mut trace = trace;
        let RequestTrace {
            tracer,
            context,
            parent,
            recording,
            ..
        } = &mut *trace;
        let Some(r) = recording else {
            return;
        };
        let listener = stack.name.as_str();
        let target = target.as_deref();
        let end = r.unix_nanos(now);
        let body_size = i64::try_from(sent).unwrap_or(i64::MAX);
        let mut spans = std::mem::take(&mut r.spans);
        if spans.is_open() {
            // The try whose response the client got lasts as long as its body, too.
            spans.int_attr(&BODY_SIZE, body_size);
            spans.end(end);
        }
        let route = target.and_then(|t| t.http_route.as_deref());
        let (name, name_suffix) = match r.method {
            OTHER => ("HTTP", None),
            m => (METHOD_NAMES[m], route),
        };
        spans.begin(&SpanStart {
            trace_id: context.trace_id,
            span_id: context.span_id,
            parent: *parent,
            remote_parent: parent.is_some(),
            trace_state: context.trace_state.as_ref().map(HeaderValue::as_bytes),
            name,
            name_suffix,
            kind: SpanKind::Server,
            start_unix_nanos: r.start_unix_nanos,
        });
        r.request_attributes(&mut spans);
        spans.int_attr(&BODY_SIZE, body_size);
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
            spans.str_attr(&TANDEM_END, "client_gone");
        }
        if let Some(route) = route {
            spans.str_attr(&HTTP_ROUTE, route);
        }
        spans.int_attr(&STATUS_CODE, i64::from(status.as_u16()));
        // Tandem's own answers are errors when they are server errors (a 404 no_route is not)
        // even when a gRPC client received them as HTTP 200 with a grpc-status.
        let server_error = status.is_server_error()
            || r.error
                .as_ref()
                .is_some_and(|(kind, _)| kind.status().is_server_error());
        let error = match (server_error, r.error.take(), body_error) {
            (_, None, Some((kind, message))) => {
                spans.str_attr(&ERROR_TYPE, kind);
                Some(message.to_owned())
            }
            (true, Some((kind, message)), _) => {
                spans.str_attr(&ERROR_TYPE, kind.reason());
                Some(message)
            }
            (true, None, None) => {
                spans.str_attr(&ERROR_TYPE, status.as_str());
                Some(format!("HTTP {status}"))
            }
            (false, _, _) => None,
        };
        push_names(&mut spans, listener, target);
        if let Some(message) = error {
            spans.error(&message);
        }
        spans.end(end);
        tracer.record_encoded(spans);
    }
}

// === impl Recording ===

impl Recording {
    fn new(
        forwarded: &Forwarded,
        req: &Request<Incoming>,
        start: Instant,
        wall: Option<SystemTime>,
        seen: Option<Seen<'_>>,
    ) -> Self {
        let start_unix_nanos = wall
            .unwrap_or_else(SystemTime::now)
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let method = method_index(req.method());
        // The access log's observation holds the same two header values already.
        let (host, user_agent) = match seen {
            Some((host, user_agent)) => (host.cloned(), user_agent.cloned()),
            None => (
                match req.uri().authority() {
                    Some(_) => None,
                    None => req.headers().get(http::header::HOST).cloned(),
                },
                req.headers().get(http::header::USER_AGENT).cloned(),
            ),
        };
        let port = request_port(req.uri(), host.as_ref());
        Recording {
            start_unix_nanos,
            start,
            method,
            method_original: (method == OTHER).then(|| req.method().clone()),
            uri: req.uri().clone(),
            host,
            port,
            version: req.version(),
            client: forwarded.client_ip(),
            user_agent,
            upstream_url: None,
            error: None,
            spans: EncodedSpans::recycled(SPANS_CAPACITY),
            answered_end: 0,
        }
    }

    /// The server span's attributes that describe the request as it arrived.
    fn request_attributes(&self, s: &mut EncodedSpans) {
        s.attributes(method_attribute(self.method));
        if let Some(m) = &self.method_original {
            s.str_attr(&METHOD_ORIGINAL, m.as_str());
        }
        s.str_attr(&URL_PATH, self.uri.path());
        s.attributes(&CONSTANT_ATTRIBUTES.url_scheme_http);
        let host = match self.uri.authority() {
            Some(a) => Some(authority_address(a.as_str())),
            None => self
                .host
                .as_ref()
                .and_then(|h| h.to_str().ok())
                .map(strip_port),
        };
        if let Some(host) = host {
            s.str_attr(&SERVER_ADDRESS, host);
        }
        if let Some(port) = self.port {
            s.int_attr(&SERVER_PORT, i64::from(port));
        }
        let versions = &CONSTANT_ATTRIBUTES.protocol_version;
        s.attributes(match self.version {
            Version::HTTP_2 => &versions[2],
            Version::HTTP_10 => &versions[0],
            _ => &versions[1],
        });
        if let Some(ip) = self.client {
            let mut text = IpText::default();
            s.str_attr(&CLIENT_ADDRESS, text.of(ip));
        }
        if let Some(ua) = self.user_agent.as_ref().and_then(|v| v.to_str().ok()) {
            s.str_attr(&USER_AGENT, ua);
        }
    }

    /// `at` on the wall clock, measured from the request's start on the monotonic clock, so the
    /// spans of one request nest exactly.
    fn unix_nanos(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.start);
        self.start_unix_nanos
            .saturating_add(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
    }
}

/// An IP address as text, on the stack; IPv4 (the common case) without `fmt`, which costs
/// ~1,000 instructions per address on this path.
#[derive(Default)]
struct IpText {
    v4: [u8; 15],
    v6: String,
}

impl IpText {
    fn of(&mut self, ip: IpAddr) -> &str {
        match ip {
            IpAddr::V4(v4) => {
                let mut n = 0;
                for (i, o) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.v4[n] = b'.';
                        n += 1;
                    }
                    if o >= 100 {
                        self.v4[n] = b'0' + o / 100;
                        n += 1;
                    }
                    if o >= 10 {
                        self.v4[n] = b'0' + o / 10 % 10;
                        n += 1;
                    }
                    self.v4[n] = b'0' + o % 10;
                    n += 1;
                }
                // Digits and dots only.
                std::str::from_utf8(&self.v4[..n]).unwrap_or_default()
            }
            IpAddr::V6(v6) => {
                self.v6 = v6.to_string();
                &self.v6
            }
        }
    }
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

/// The port the client addressed: from the authority or `Host`, else the scheme's default.
/// `host` is the `Host` header, when the URI has no authority.
fn request_port(uri: &Uri, host: Option<&HeaderValue>) -> Option<u16> {
    let authority = match uri.authority() {
        Some(a) => a.as_str(),
        None => host?.to_str().ok()?,
    };
    // `[v6]` without a port ends in `]`, whose last `:` is inside the brackets.
    match rsplit_colon(authority) {
        Some((_, port)) if port.bytes().all(|b| b.is_ascii_digit()) => port.parse().ok(),
        _ => Some(80),
    }
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
        for ip in ["0.0.0.0", "10.1.20.255", "127.0.0.1", "::1", "2001:db8::7"] {
            let parsed: IpAddr = ip.parse().unwrap_or(IpAddr::from([1; 4]));
            assert_eq!(IpText::default().of(parsed), ip);
        }
        assert_eq!(
            endpoint_address("unix:/run/app.sock"),
            ("/run/app.sock", None)
        );
    }
}
