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

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Version};
use hyper::body::Incoming;
use tandem_config::PathMatch;
use tandem_telemetry::access_log::End;
use tandem_telemetry::trace::{SpanContext, SpanId, SpanKind, SpanRecord, Status, Tracer, Value};
use tokio::time::Instant;

use crate::error::{ErrorKind, ProxyError};
use crate::headers::Forwarded;
use crate::route::request_host;
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
    /// The try in progress: its span id and when it started.
    current: Option<(SpanId, Instant)>,
    /// The last finished try's client span when it got a response: recorded when another try
    /// starts (it was retried: it ended at its response head), or with the server span when
    /// its response is the one the client gets (it ends with the body, like the server span).
    answered: Option<SpanRecord>,
    /// What a sampled request records; `None` when the request is not sampled.
    recording: Option<Recording>,
}

/// The parts of a sampled request's spans known before its outcome.
#[derive(Debug)]
struct Recording {
    start_unix_nanos: u64,
    start: Instant,
    method: &'static str,
    attributes: Vec<(&'static str, Value)>,
    /// `http://authority/path` as sent upstream (for `url.full`).
    upstream_url: Option<Arc<str>>,
    /// The error Tandem answered with, if it did: its kind and one-line message.
    error: Option<(ErrorKind, String)>,
}

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
    /// The endpoint's address as configured.
    pub endpoint: &'a str,
    /// Whether the try used HTTP/2.
    pub http2: bool,
    /// The listener.
    pub listener: &'a str,
    /// The route.
    pub target: &'a RouteTarget,
}

// === impl RequestTrace ===

impl RequestTrace {
    /// Starts the server span of `req`: reads the caller's context and decides sampling.
    pub fn start(
        tracer: &Arc<Tracer>,
        forwarded: &Forwarded,
        req: &Request<Incoming>,
        start: Instant,
    ) -> Box<Self> {
        let started = tracer.start_server(req.headers());
        let recording = started
            .context
            .sampled
            .then(|| Recording::new(forwarded, req, start));
        Box::new(RequestTrace {
            tracer: tracer.clone(),
            context: started.context,
            parent: started.parent,
            current: None,
            answered: None,
            recording,
        })
    }

    /// The server span's context: the trace id and span id the access log shows.
    pub fn context(&self) -> &SpanContext {
        &self.context
    }

    /// Prepares the upstream request: removes the caller's trace headers of the configured
    /// formats, and notes the URL the tries go to.
    pub fn outgoing(&mut self, headers: &mut HeaderMap, authority: &str, path: &str) {
        self.tracer.propagator().strip(headers);
        if let Some(r) = &mut self.recording {
            // Concatenated rather than `format!`ed: this runs for every sampled request.
            let mut url = String::with_capacity(7 + authority.len() + path.len());
            url.push_str("http://");
            url.push_str(authority);
            url.push_str(path);
            r.upstream_url = Some(url.into());
        }
    }

    /// Starts a try at `now`: a new client span id.
    pub fn start_try(&mut self, now: Instant) {
        if let Some(span) = self.answered.take() {
            self.tracer.record(span);
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

    /// Ends the current try at `ended`; `attempt` counts from 1. Records its client span when
    /// the request is sampled.
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
        let Some(r) = &self.recording else {
            return;
        };
        let method = method_name(to.method);
        let mut attributes = Vec::with_capacity(12);
        attributes.push(("http.request.method", Value::Static(method)));
        if method == "_OTHER" {
            attributes.push((
                "http.request.method_original",
                Value::String(to.method.as_str().to_owned()),
            ));
        }
        if let Some(url) = &r.upstream_url {
            attributes.push(("url.full", Value::Shared(url.clone())));
        }
        let (address, port) = endpoint_address(to.endpoint);
        attributes.push(("server.address", Value::String(address.to_owned())));
        if let Some(p) = port {
            attributes.push(("server.port", Value::Int(p)));
        }
        attributes.push((
            "network.protocol.version",
            Value::Static(if to.http2 { "2" } else { "1.1" }),
        ));
        if attempt > 1 {
            attributes.push((
                "http.request.resend_count",
                Value::Int(i64::from(attempt - 1)),
            ));
        }
        let status = match outcome {
            TryOutcome::Response(s) => {
                attributes.push((
                    "http.response.status_code",
                    Value::Int(i64::from(s.as_u16())),
                ));
                if s.as_u16() >= 400 {
                    attributes.push(("error.type", Value::String(s.as_str().to_owned())));
                    Status::Error(format!("HTTP {s}"))
                } else {
                    Status::Unset
                }
            }
            TryOutcome::Failed(e) => {
                attributes.push(("error.type", Value::Static(e.kind.reason())));
                Status::Error(e.message().trim_end().to_owned())
            }
        };
        push_names(&mut attributes, to.listener, Some(to.target));
        let span = SpanRecord {
            trace_id: self.context.trace_id,
            span_id,
            parent: Some(self.context.span_id),
            remote_parent: false,
            trace_state: self.context.trace_state.clone(),
            name: Cow::Borrowed(if method == "_OTHER" { "HTTP" } else { method }),
            kind: SpanKind::Client,
            start_unix_nanos: r.unix_nanos(started),
            end_unix_nanos: r.unix_nanos(ended),
            attributes,
            status,
        };
        match outcome {
            TryOutcome::Response(_) => self.answered = Some(span),
            TryOutcome::Failed(_) => self.tracer.record(span),
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
    /// Ends and records the span: the response body ended as `how` after `sent` bytes.
    pub fn end(self, sent: u64, how: End) {
        let ServerSpan {
            trace,
            stack,
            target,
            status,
        } = self;
        let this = *trace;
        let Some(mut r) = this.recording else {
            return;
        };
        let listener = stack.name.as_str();
        let target = target.as_deref();
        let end = r.unix_nanos(Instant::now());
        let body_size = Value::Int(i64::try_from(sent).unwrap_or(i64::MAX));
        if let Some(mut answered) = this.answered {
            // The try whose response the client got lasts as long as its body, too.
            answered.end_unix_nanos = end;
            answered
                .attributes
                .push(("http.response.body.size", body_size.clone()));
            this.tracer.record(answered);
        }
        r.attributes.push(("http.response.body.size", body_size));
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
            r.attributes
                .push(("tandem.end", Value::Static("client_gone")));
        }
        let route = target.and_then(|t| t.http_route.as_deref());
        let name = match (r.method, route) {
            ("_OTHER", _) => Cow::Borrowed("HTTP"),
            (m, Some(route)) => {
                let mut name = String::with_capacity(m.len() + 1 + route.len());
                name.push_str(m);
                name.push(' ');
                name.push_str(route);
                Cow::Owned(name)
            }
            (m, None) => Cow::Borrowed(m),
        };
        if let Some(route) = route {
            r.attributes
                .push(("http.route", Value::String(route.to_owned())));
        }
        r.attributes.push((
            "http.response.status_code",
            Value::Int(i64::from(status.as_u16())),
        ));
        // Tandem's own answers are errors when they are server errors (a 404 no_route is not)
        // even when a gRPC client received them as HTTP 200 with a grpc-status.
        let server_error = status.is_server_error()
            || r.error
                .as_ref()
                .is_some_and(|(kind, _)| kind.status().is_server_error());
        let status = match (server_error, r.error.take(), body_error) {
            (_, None, Some((kind, message))) => {
                r.attributes.push(("error.type", Value::Static(kind)));
                Status::Error(message.to_owned())
            }
            (true, Some((kind, message)), _) => {
                r.attributes
                    .push(("error.type", Value::Static(kind.reason())));
                Status::Error(message)
            }
            (true, None, None) => {
                r.attributes
                    .push(("error.type", Value::String(status.as_str().to_owned())));
                Status::Error(format!("HTTP {status}"))
            }
            (false, _, _) => Status::Unset,
        };
        push_names(&mut r.attributes, listener, target);
        this.tracer.record(SpanRecord {
            trace_id: this.context.trace_id,
            span_id: this.context.span_id,
            parent: this.parent,
            remote_parent: this.parent.is_some(),
            trace_state: this.context.trace_state,
            name,
            kind: SpanKind::Server,
            start_unix_nanos: r.start_unix_nanos,
            end_unix_nanos: end,
            attributes: r.attributes,
            status,
        });
    }
}

// === impl Recording ===

impl Recording {
    fn new(forwarded: &Forwarded, req: &Request<Incoming>, start: Instant) -> Self {
        let start_unix_nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let method = method_name(req.method());
        let mut attributes = Vec::with_capacity(16);
        attributes.push(("http.request.method", Value::Static(method)));
        if method == "_OTHER" {
            attributes.push((
                "http.request.method_original",
                Value::String(req.method().as_str().to_owned()),
            ));
        }
        attributes.push(("url.path", Value::String(req.uri().path().to_owned())));
        attributes.push(("url.scheme", Value::Static("http")));
        if let Some(host) = request_host(req.uri(), req.headers()) {
            attributes.push(("server.address", Value::String(host.to_owned())));
        }
        if let Some(port) = request_port(req) {
            attributes.push(("server.port", Value::Int(i64::from(port))));
        }
        attributes.push((
            "network.protocol.version",
            Value::Static(match req.version() {
                Version::HTTP_2 => "2",
                Version::HTTP_10 => "1.0",
                _ => "1.1",
            }),
        ));
        if let Some(ip) = forwarded.client_ip() {
            attributes.push(("client.address", Value::String(ip_text(ip))));
        }
        if let Some(ua) = req
            .headers()
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
        {
            attributes.push(("user_agent.original", Value::String(ua.to_owned())));
        }
        Recording {
            start_unix_nanos,
            start,
            method,
            attributes,
            upstream_url: None,
            error: None,
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

/// An IP address as text; IPv4 (the common case) without `fmt`, which costs ~1,000
/// instructions per address on this path.
fn ip_text(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut s = String::with_capacity(15);
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    s.push('.');
                }
                if o >= 100 {
                    s.push(char::from(b'0' + o / 100));
                }
                if o >= 10 {
                    s.push(char::from(b'0' + o / 10 % 10));
                }
                s.push(char::from(b'0' + o % 10));
            }
            s
        }
        std::net::IpAddr::V6(v6) => v6.to_string(),
    }
}

/// `http.route` for a route's path condition: the exact path, or the prefix as `prefix/*`.
pub fn http_route(path: Option<&PathMatch>) -> Option<Arc<str>> {
    match path? {
        PathMatch::Exact(p) => Some(Arc::from(p.as_str())),
        PathMatch::Prefix(p) => Some(Arc::from(format!("{}/*", p.trim_end_matches('/')))),
    }
}

/// The method as the semantic conventions name it: the standard methods, else `_OTHER`.
fn method_name(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

/// The port the client addressed: from the authority or `Host`, else the scheme's default.
fn request_port(req: &Request<Incoming>) -> Option<u16> {
    let authority = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req.headers().get(http::header::HOST)?.to_str().ok()?,
    };
    // `[v6]` without a port ends in `]`, whose last `:` is inside the brackets.
    match authority.rsplit_once(':') {
        Some((_, port)) if port.bytes().all(|b| b.is_ascii_digit()) => port.parse().ok(),
        _ => Some(80),
    }
}

/// `server.address` and `server.port` of an endpoint label (`IP:port`, `[v6]:port`,
/// `host:port`, `unix:/path`).
fn endpoint_address(label: &str) -> (&str, Option<i64>) {
    if let Some(path) = label.strip_prefix("unix:") {
        return (path, None);
    }
    match label.rsplit_once(':') {
        Some((host, port)) => (
            host.trim_start_matches('[').trim_end_matches(']'),
            port.parse().ok(),
        ),
        None => (label, None),
    }
}

fn push_names(
    attributes: &mut Vec<(&'static str, Value)>,
    listener: &str,
    target: Option<&RouteTarget>,
) {
    match target {
        Some(t) => {
            let [listener, route, upstream] = &t.span_names;
            attributes.push(("tandem.listener", Value::Shared(listener.clone())));
            attributes.push(("tandem.route", Value::Shared(route.clone())));
            attributes.push(("tandem.upstream", Value::Shared(upstream.clone())));
        }
        // No route matched (rare): the listener's name alone.
        None => attributes.push(("tandem.listener", Value::String(listener.to_owned()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let parsed: std::net::IpAddr = ip.parse().unwrap_or(std::net::IpAddr::from([1; 4]));
            assert_eq!(ip_text(parsed), ip);
        }
        assert_eq!(
            endpoint_address("unix:/run/app.sock"),
            ("/run/app.sock", None)
        );
    }
}
