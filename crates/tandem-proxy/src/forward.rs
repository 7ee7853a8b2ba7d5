//! The HTTP request handler: route, rewrite, balance, send, and map every failure to a
//! [`ProxyError`] response. Phase order is documented in [`crate::stack`].
//!
//! Also handled here, because they start as HTTP requests:
//! - upgrades (`Connection: upgrade`, e.g. WebSocket): the request goes to the upstream with its
//!   upgrade fields; on `101` both sides are spliced with [`crate::tcp::splice`];
//! - `CONNECT NAME:port` on a forward-proxy listener: a tunnel to an endpoint of upstream `NAME`
//!   (only configured upstreams: Tandem is never an open proxy).

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tandem_config::{Direction, HashKey, UpstreamProtocol};
use tokio::time::Instant;

use crate::balance;
use crate::body::{ProxyBody, RequestBody, RequestBodyError};
use crate::error::{ErrorKind, ProxyError};
use crate::h1;
use crate::headers;
use crate::identity::PeerIdentity;
use crate::observe::Observer;
use crate::policy::authn;
use crate::policy::authz::AuthzRequest;
use crate::policy::limit::Refused;
use crate::policy::retry::RetryReason;
use crate::pool::Endpoint;
use crate::pool::{ConnSlot, ConnectError, SendError};
use crate::route::{request_host, RequestFacts};
use crate::stack::{InFlight, ListenerStack, Members, RouteTarget, UpstreamHandle};
use crate::tcp;
use crate::trace::{RequestTrace, TryOutcome, TryTarget};
use tandem_tls::handshake::HandshakeError;

/// Handles one request received on `stack`'s listener; `forwarded` describes the client
/// connection (rendered once per connection).
pub async fn handle(
    stack: Arc<ListenerStack>,
    forwarded: &headers::Forwarded,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let start = Instant::now();
    let method = tandem_telemetry::method_class(req.method().as_str());
    if let Some(p) = &stack.peers {
        p.count(forwarded.identity());
    }
    let mut obs = Observer::start(&stack, forwarded.client_addr(), &req, start);
    obs.identity(forwarded.identity());
    // The server span starts first, so it covers routing and every refusal too.
    let mut trace = stack
        .tracer
        .as_ref()
        .map(|t| RequestTrace::start(t, forwarded, &req, start, &obs));
    if let Some(t) = &trace {
        obs.trace(t.context());
    }
    // Routing, authorization and the app all see the normalized path (see `crate::path`).
    if let Err(err) = normalize_path(&stack, &mut req) {
        return refuse_unrouted(&stack, err, obs, trace, method, start);
    }
    let target = {
        let host = request_host(req.uri(), req.headers());
        let facts = RequestFacts {
            host,
            path: req.uri().path(),
            method: req.method(),
            headers: req.headers(),
            identity: forwarded.identity().map(PeerIdentity::as_str),
        };
        select_target(&stack, &facts).cloned()
    };
    let Some(target) = target else {
        let err = ProxyError::new(
            ErrorKind::NoRoute,
            format!(
                "no route for {} {}{} on listener `{}`",
                req.method(),
                request_host(req.uri(), req.headers()).unwrap_or(""),
                req.uri().path(),
                stack.name
            ),
        );
        return refuse_unrouted(&stack, err, obs, trace, method, start);
    };
    obs.route(&target);

    let grpc = is_grpc(req.headers());
    let admitted = admit(&stack, &target, forwarded, &mut req, start).await;
    let result = if let Err(err) = admitted {
        Err(err)
    } else if req.method() == Method::CONNECT {
        // Boxed: tunnels are rare and their state would otherwise widen every request's future.
        Box::pin(connect_tunnel(&stack, &target, req, &mut obs)).await
    } else {
        proxy(
            &stack,
            &target,
            forwarded,
            req,
            start,
            grpc,
            &mut obs,
            trace.as_deref_mut(),
        )
        .await
    };
    let res = match result {
        Ok(res) => res,
        Err(err) => {
            target.errors.inc(err.kind);
            obs.failed(&err);
            if let Some(t) = trace.as_deref_mut() {
                t.failed(&err);
            }
            tracing::debug!(listener = %stack.name, route = %target.name, error = %err, "request failed");
            if grpc {
                err.to_grpc_response()
            } else {
                err.to_response()
            }
        }
    };
    // One clock reading for the latency histogram and the access log's head time.
    let head = start.elapsed();
    target.metrics.record(method, res.status().as_u16(), head);
    let span = trace.and_then(|t| t.respond(&stack, Some(&target), res.status()));
    obs.respond_after(
        res.map(|b| b.sized(target.metrics.response_size()).traced(span)),
        head,
        grpc,
    )
}

/// The answer to a request refused before it had a route (bad path, no route).
fn refuse_unrouted(
    stack: &Arc<ListenerStack>,
    err: ProxyError,
    mut obs: Observer,
    trace: Option<Box<RequestTrace>>,
    method: usize,
    start: Instant,
) -> Response<ProxyBody> {
    stack.no_route_errors.inc(err.kind);
    obs.failed(&err);
    let res = err.to_response();
    stack
        .no_route
        .record(method, res.status().as_u16(), start.elapsed());
    let span = trace.and_then(|mut t| {
        t.failed(&err);
        t.respond(stack, None, res.status())
    });
    obs.respond(res.map(|b| b.sized(stack.no_route.response_size()).traced(span)))
}

/// Replaces the request's path with its normal form (query untouched) when the listener
/// normalizes; 400 when the path cannot be normalized. CONNECT's authority-form target has no
/// path.
fn normalize_path(stack: &ListenerStack, req: &mut Request<Incoming>) -> Result<(), ProxyError> {
    if !stack.normalize_path || req.method() == Method::CONNECT {
        return Ok(());
    }
    let normal = match crate::path::normalize(req.uri().path()) {
        Ok(std::borrow::Cow::Borrowed(_)) => return Ok(()),
        Ok(std::borrow::Cow::Owned(p)) => p,
        Err(e) => return Err(ProxyError::new(ErrorKind::BadRequest, e.to_string())),
    };
    let target = match req.uri().query() {
        Some(q) => format!("{normal}?{q}"),
        None => normal,
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(
        PathAndQuery::try_from(target)
            .map_err(|e| ProxyError::new(ErrorKind::BadRequest, format!("invalid path: {e}")))?,
    );
    *req.uri_mut() = Uri::from_parts(parts)
        .map_err(|e| ProxyError::new(ErrorKind::BadRequest, format!("invalid path: {e}")))?;
    Ok(())
}

/// The admission phases between routing and forwarding, in order: authenticate (the route's
/// JWT), authorize (the listener's policy), rate limit (the route's).
async fn admit(
    stack: &ListenerStack,
    target: &RouteTarget,
    forwarded: &headers::Forwarded,
    req: &mut Request<Incoming>,
    start: Instant,
) -> Result<(), ProxyError> {
    if let Some(v) = &target.jwt {
        // Boxed: verification may wait for a JWKS fetch, state every other request's future
        // would otherwise carry.
        Box::pin(authn::authenticate(v, &target.name, req.headers_mut())).await?;
    }
    if let Some(policy) = &stack.authz {
        policy.authorize(&AuthzRequest {
            route: &target.name,
            identity: forwarded.identity(),
            source: forwarded.client_ip(),
            method: req.method(),
            path: req.uri().path(),
            headers: req.headers(),
        })?;
    }
    if let Some(limiter) = &target.rate_limit {
        limiter
            .check(
                forwarded.client_ip(),
                forwarded.identity().map(PeerIdentity::as_str),
                req.headers(),
                start,
            )
            .map_err(|wait| rate_limited(&target.name, wait))?;
    }
    Ok(())
}

/// The refusal of a request over its route's rate limit; `wait` becomes `Retry-After`.
fn rate_limited(route: &str, wait: std::time::Duration) -> ProxyError {
    let mut err = ProxyError::new(
        ErrorKind::RateLimited,
        format!("rate limit of route `{route}` exceeded; retry in {wait:.1?}"),
    );
    err.retry_after = Some(wait);
    err
}

/// Answers a request whose HTTP/1.x framing was ambiguous (see [`crate::framing`]) with 400 and
/// `connection: close`, without forwarding it.
pub fn reject_framing(
    stack: &Arc<ListenerStack>,
    forwarded: &headers::Forwarded,
    req: &Request<Incoming>,
    why: crate::framing::Refusal,
) -> Response<ProxyBody> {
    let mut obs = Observer::start(stack, forwarded.client_addr(), req, Instant::now());
    let err = ProxyError::new(ErrorKind::BadRequest, why.message());
    stack.no_route_errors.inc(err.kind);
    obs.failed(&err);
    let res = err.to_response();
    stack.no_route.record(
        tandem_telemetry::method_class(req.method().as_str()),
        res.status().as_u16(),
        std::time::Duration::ZERO,
    );
    obs.respond(res)
}

/// Routes first (file order), then, on a forward proxy, the upstream named by the host, then the
/// listener's default.
fn select_target<'a>(
    stack: &'a ListenerStack,
    facts: &RequestFacts<'_>,
) -> Option<&'a Arc<RouteTarget>> {
    if facts.method == Method::CONNECT {
        // A tunnel goes to the upstream it names or nowhere; routes and defaults do not apply.
        return facts
            .host
            .and_then(|h| stack.forward.get(&h.to_ascii_lowercase()));
    }
    stack
        .routes
        .find(facts)
        .or_else(|| {
            facts
                .host
                .filter(|_| !stack.forward.is_empty())
                .and_then(|h| stack.forward.get(&h.to_ascii_lowercase()))
        })
        .or(stack.default.as_ref())
}

// The request, its route and its two observers (access log record, trace) are what every phase
// below reads or fills; bundling them in a struct would only rename the same borrows.
#[allow(clippy::too_many_arguments)]
async fn proxy(
    stack: &ListenerStack,
    target: &RouteTarget,
    forwarded: &headers::Forwarded,
    mut req: Request<Incoming>,
    start: Instant,
    grpc: bool,
    obs: &mut Observer,
    mut trace: Option<&mut RequestTrace>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let upstream = &target.upstream;
    let policy = &*target.retry;
    let upgrade = req.version() == Version::HTTP_11 && headers::is_upgrade_request(req.headers());
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    // The whole request's deadline for a response head, all tries included; a gRPC client's
    // own deadline (`grpc-timeout`) shortens it.
    let timeout = match grpc_timeout(req.headers()) {
        Some(t) => t.min(target.timeout),
        None => target.timeout,
    };
    let deadline = start + timeout;
    let hash = upstream
        .hash_key
        .as_ref()
        .and_then(|k| request_hash(k, req.headers(), forwarded));

    let use_h2 = !upgrade
        && match upstream.protocol {
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::Http2 => true,
            UpstreamProtocol::Auto => req.version() == Version::HTTP_2,
        };

    let (mut parts, body) = req.into_parts();
    let authority = downstream_authority(&parts.uri, &parts.headers, &upstream.name)
        .map_err(|e| ProxyError::new(ErrorKind::BadRequest, e).at(&upstream.name, None))?;
    headers::remove_hop_by_hop(&mut parts.headers, upgrade);
    // Tandem's server side already answered `100 Continue` when it started reading the body;
    // the upstream sees a plain request.
    parts.headers.remove(header::EXPECT);
    // Only Tandem vouches for a peer's identity: a client-sent header is dropped on every
    // listener, and an inbound one carries the identity its mTLS handshake verified.
    parts.headers.remove(headers::PEER_IDENTITY);
    if stack.direction == Direction::Inbound {
        forwarded.apply(&mut parts.headers);
        if let Some(id) = forwarded.identity() {
            if let Ok(v) = http::HeaderValue::from_str(id.as_str()) {
                parts.headers.insert(headers::PEER_IDENTITY, v);
            }
        }
    }
    // Reuse the parsed path and query. HTTP/1.1 upstreams get origin form (`/path?query`) with
    // `Host`; HTTP/2 carries scheme and authority in the URI (`:scheme`, `:authority`).
    let path = std::mem::take(&mut parts.uri)
        .into_parts()
        .path_and_query
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if let Some(t) = trace.as_deref_mut() {
        t.outgoing(&mut parts.headers, &authority, &path);
    }
    if use_h2 {
        parts.version = Version::HTTP_2;
        parts.headers.remove(header::HOST);
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(authority);
        uri.path_and_query = Some(path);
        parts.uri = Uri::from_parts(uri).map_err(|e| {
            ProxyError::new(
                ErrorKind::BadRequest,
                format!("invalid request target: {e}"),
            )
            .at(&upstream.name, None)
        })?;
    } else {
        parts.version = Version::HTTP_11;
        parts.uri = Uri::from(path);
        if !parts.headers.contains_key(header::HOST) {
            if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                parts.headers.insert(header::HOST, v);
            }
        }
    }

    let retries = policy.enabled() && !upgrade;
    let body = RequestBody::counted(
        body,
        retries,
        policy.replay_buffer,
        obs.request_bytes(),
        target.metrics.request_size(),
    )
    .with_read_timeout(stack.limits.body_read_timeout);
    let slot = upstream
        .limit
        .admit(deadline)
        .await
        .map_err(|r| overloaded(upstream, r))?;
    if retries {
        upstream.budget.deposit();
    }

    // Each try gets the head and a replay of the body; the last possible try takes the
    // originals. An HTTP/1.1 head is serialized once and its bytes shared by every try (a
    // traced try writes a copy with its trace lines); an HTTP/2 head is copied for each try but
    // the last.
    let method = parts.method.clone();
    let (h1_head, mut h2_parts) = if use_h2 {
        (None, Some(parts))
    } else {
        (
            Some(h1::RequestHead::new(
                &parts,
                !http_body::Body::is_end_stream(&body),
            )),
            None,
        )
    };
    let mut body = Some(body);
    let mut attempt = 1u32;
    let mut avoid = None;
    // The first try starts now, as far as the clock is concerned: one reading fewer per request.
    let mut now = start;
    loop {
        if attempt > 1 {
            now = Instant::now();
        }
        let members = upstream.members();
        let Some(i) = upstream.pick(&members, hash, avoid.as_ref(), now) else {
            return Err(
                ProxyError::new(ErrorKind::NoEndpoints, "no endpoints").at(&upstream.name, None)
            );
        };
        let endpoint = members.endpoints[i].clone();
        obs.attempt(attempt);
        let at = |e: ProxyError| e.at(&upstream.name, Some(endpoint.label.clone()));
        let (try_body, can_retry) = match &body {
            Some(b) if retries && attempt < policy.attempts => match b.try_clone() {
                Some(copy) => (copy, true),
                None => (take(&mut body)?, false),
            },
            _ => (take(&mut body)?, false),
        };
        // With tracing, each try carries its own client span's context.
        if let Some(t) = trace.as_deref_mut() {
            t.start_try(now);
        }
        let outgoing = match &h1_head {
            Some(head) => match trace.as_deref() {
                Some(t) => Outgoing::Http1(head.with_lines(|out| t.write_h1_lines(out)), try_body),
                None => Outgoing::Http1(head.clone(), try_body),
            },
            None => {
                let mut p = match &h2_parts {
                    Some(p) if can_retry => clone_head(p),
                    _ => take(&mut h2_parts)?,
                };
                if let Some(t) = trace.as_deref() {
                    t.inject(&mut p.headers);
                }
                Outgoing::Http2(Request::from_parts(p, try_body))
            }
        };

        let mut tried = Try::start(upstream, members, i, now);
        let try_deadline = match policy.per_try_timeout {
            Some(t) => (now + t).min(deadline),
            None => deadline,
        };
        let send = async {
            match outgoing {
                Outgoing::Http1(head, body) => endpoint.send_http1(head, body).await,
                Outgoing::Http2(req) => endpoint.send_http2(req).await,
            }
        };
        let outcome = tokio::time::timeout_at(try_deadline, send).await;
        let ended = Instant::now();
        let elapsed = ended - now;
        let to = TryTarget {
            method: &method,
            endpoint: &endpoint.span_address,
            http2: use_h2,
            listener: &stack.name,
            target,
        };

        // Decide: a response, or an error, and whether to go again.
        let (failure, reason) = match outcome {
            Ok(Ok(res)) => {
                if let Some(t) = trace.as_deref_mut() {
                    t.end_try(attempt, ended, TryOutcome::Response(res.status()), to);
                }
                let failed = is_failure(res.status(), res.headers(), grpc);
                tried.record(elapsed, !failed, ended);
                let reason = can_retry
                    .then(|| policy.on_response(res.status(), res.headers(), &method, grpc))
                    .flatten();
                let wait = reason.and_then(|_| policy.backoff(attempt, Some(res.headers())));
                if let (Some(reason), Some(wait)) = (reason, wait) {
                    // Replayability only ever goes from yes to no, and dropping this response
                    // stops the try from reading more of the body: checked now, it holds.
                    if replayable(&body) && retry_allowed(upstream, reason, wait, deadline) {
                        tracing::debug!(upstream = %upstream.name, endpoint = %endpoint.label, status = res.status().as_u16(), attempt, "retrying");
                        drop(res);
                        drop(tried);
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                        avoid = Some(endpoint);
                        continue;
                    }
                }
                let guard = tried.into_in_flight(upstream.clone(), slot);
                obs.answered_by(&endpoint);
                return finish(res, guard, downstream_upgrade, stack).map_err(at);
            }
            Ok(Err(e)) => {
                // A try the client broke (its body stalled or failed) says nothing about the
                // endpoint: recording it would let a client eject healthy endpoints.
                if !client_fault(&e) {
                    tried.record(elapsed, false, ended);
                }
                let unseen = e.unseen();
                let err = at(classify(&e));
                let reason = can_retry
                    .then(|| policy.on_error(err.kind, unseen, &method))
                    .flatten();
                (err, reason)
            }
            Err(_) => {
                tried.record(elapsed, false, ended);
                let per_try = try_deadline < deadline;
                let err = at(ProxyError::new(
                    ErrorKind::UpstreamTimeout,
                    if per_try {
                        format!(
                            "no response within the per-try timeout of {:?}",
                            try_deadline - now
                        )
                    } else {
                        format!("no response within {timeout:?}")
                    },
                ));
                let reason = (can_retry && per_try)
                    .then(|| policy.on_error(ErrorKind::UpstreamTimeout, false, &method))
                    .flatten();
                (err, reason)
            }
        };
        drop(tried);
        if let Some(t) = trace.as_deref_mut() {
            t.end_try(attempt, ended, TryOutcome::Failed(&failure), to);
        }
        let Some(reason) = reason else {
            return Err(failure);
        };
        match policy.backoff(attempt, None) {
            Some(wait) if replayable(&body) && retry_allowed(upstream, reason, wait, deadline) => {
                tracing::debug!(upstream = %upstream.name, error = %failure, attempt, "retrying");
                tokio::time::sleep(wait).await;
                attempt += 1;
                avoid = Some(endpoint);
            }
            _ => return Err(failure),
        }
    }
}

/// Turns an upstream response into the downstream one: hop-by-hop fields removed, the in-flight
/// hold moved into the body, and a `101` spliced with the downstream connection.
fn finish(
    res: Response<ProxyBody>,
    guard: InFlight,
    downstream_upgrade: Option<hyper::upgrade::OnUpgrade>,
    stack: &ListenerStack,
) -> Result<Response<ProxyBody>, ProxyError> {
    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
        // A tunnel is not a request in flight: the hold ends here.
        drop(guard);
        let Some(down) = downstream_upgrade else {
            return Err(ProxyError::new(
                ErrorKind::UpstreamProtocol,
                "101 Switching Protocols to a request that did not ask to upgrade",
            ));
        };
        let (mut parts, body) = res.into_parts();
        let Some(up) = body.into_upgraded() else {
            return Err(ProxyError::new(
                ErrorKind::UpstreamProtocol,
                "101 Switching Protocols on a connection that cannot switch",
            ));
        };
        let idle = stack.limits.tcp_idle_timeout;
        tokio::spawn(async move {
            match down.await {
                Ok(d) => {
                    let _ = tcp::splice(TokioIo::new(d), up, idle, None).await;
                }
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        });
        headers::remove_hop_by_hop(&mut parts.headers, true);
        return Ok(Response::from_parts(parts, ProxyBody::empty()));
    }
    let (mut parts, body) = res.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers, false);
    let idle = guard.upstream().stream_idle_timeout;
    Ok(Response::from_parts(
        parts,
        body.guarded(guard).idle_timeout(idle),
    ))
}

/// One try on one endpoint: counted in flight from start; its outcome feeds the endpoint's
/// latency estimate and breaker. Dropped without an outcome (the client went away), it still
/// counts out and gives back a half-open probe claim.
struct Try<'a> {
    upstream: &'a UpstreamHandle,
    members: Arc<Members>,
    endpoint: usize,
    probe: bool,
    recorded: bool,
    open: bool,
}

impl<'a> Try<'a> {
    fn start(
        upstream: &'a UpstreamHandle,
        members: Arc<Members>,
        endpoint: usize,
        now: Instant,
    ) -> Self {
        let probe = upstream.start(&members, endpoint, now);
        Try {
            upstream,
            members,
            endpoint,
            probe,
            recorded: false,
            open: true,
        }
    }

    fn record(&mut self, elapsed: std::time::Duration, success: bool, now: Instant) {
        self.recorded = true;
        self.upstream.record(
            &self.members,
            self.endpoint,
            elapsed,
            success,
            self.probe,
            now,
        );
    }

    fn into_in_flight(
        mut self,
        upstream: Arc<UpstreamHandle>,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) -> InFlight {
        self.open = false;
        InFlight::new(upstream, self.members.clone(), self.endpoint, Some(slot))
    }
}

impl Drop for Try<'_> {
    fn drop(&mut self) {
        if self.open {
            self.upstream.finish(&self.members, self.endpoint);
        }
        if self.probe && !self.recorded {
            if let Some(s) = self.members.states.get(self.endpoint) {
                s.outlier.release_probe();
            }
        }
    }
}

/// Whether a retry for `reason` after waiting `wait` may go: it must end before the deadline
/// and the upstream's budget must have a token. Counts the retry or the refusal.
fn retry_allowed(
    upstream: &UpstreamHandle,
    reason: RetryReason,
    wait: std::time::Duration,
    deadline: Instant,
) -> bool {
    if Instant::now() + wait >= deadline {
        return false;
    }
    if !upstream.budget.withdraw() {
        upstream.metrics.budget_exhausted.inc();
        return false;
    }
    if let Some(c) = upstream.metrics.retries.get(reason as usize) {
        c.inc();
    }
    true
}

/// What the breaker counts as a failed response: the gateway statuses (the endpoint or
/// something behind it is unavailable) and, to a gRPC request, UNAVAILABLE in a trailers-only
/// response.
fn is_failure(status: StatusCode, headers: &http::HeaderMap, grpc: bool) -> bool {
    matches!(status.as_u16(), 502..=504)
        || (grpc && headers.get(GRPC_STATUS).is_some_and(|v| v == "14"))
}

/// One request's head and body for one try, in the upstream's protocol.
enum Outgoing {
    Http1(h1::RequestHead, RequestBody),
    Http2(Request<RequestBody>),
}

const GRPC_STATUS: header::HeaderName = header::HeaderName::from_static("grpc-status");

fn replayable(body: &Option<RequestBody>) -> bool {
    body.as_ref().is_some_and(RequestBody::can_replay)
}

fn take<T>(slot: &mut Option<T>) -> Result<T, ProxyError> {
    // Unreachable by construction (the last try takes the originals and returns); an error
    // rather than a panic keeps a logic slip from taking the process down.
    slot.take().ok_or_else(|| {
        ProxyError::new(
            ErrorKind::UpstreamReset,
            "internal: request already sent and not replayable",
        )
    })
}

/// A copy of a request head for another try (extensions are not needed upstream).
fn clone_head(p: &http::request::Parts) -> http::request::Parts {
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = p.method.clone();
    parts.uri = p.uri.clone();
    parts.version = p.version;
    parts.headers = p.headers.clone();
    parts
}

fn overloaded(upstream: &UpstreamHandle, r: Refused) -> ProxyError {
    let cause = match r {
        Refused::Full {
            max_requests,
            max_pending,
        } => format!(
            "{max_requests} requests in flight and {max_pending} waiting (limits.max_requests, limits.max_pending)"
        ),
        Refused::Deadline => {
            "waited for a free slot (limits.max_requests) until the request's deadline".to_owned()
        }
    };
    ProxyError::new(ErrorKind::Overloaded, cause).at(&upstream.name, None)
}

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(h: &http::HeaderMap) -> Option<std::time::Duration> {
    let v = h.get("grpc-timeout")?.as_bytes();
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    use std::time::Duration as D;
    Some(match unit {
        b"H" => D::from_secs(n * 3600),
        b"M" => D::from_secs(n * 60),
        b"S" => D::from_secs(n),
        b"m" => D::from_millis(n),
        b"u" => D::from_micros(n),
        b"n" => D::from_nanos(n),
        _ => return None,
    })
}

/// The hash of what a hash balancer keys on, `None` when the request does not carry it.
fn request_hash(
    key: &HashKey,
    headers: &http::HeaderMap,
    forwarded: &headers::Forwarded,
) -> Option<u64> {
    match key {
        HashKey::Header(name) => headers
            .get(name.as_str())
            .map(|v| balance::hash_key(v.as_bytes())),
        HashKey::Cookie(name) => headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| balance::hash_key(v.as_bytes())),
        HashKey::ClientIp => forwarded.client_ip().map(|ip| match ip {
            std::net::IpAddr::V4(a) => balance::hash_key(&a.octets()),
            std::net::IpAddr::V6(a) => balance::hash_key(&a.octets()),
        }),
    }
}

/// `CONNECT NAME:port`: open a raw connection to an endpoint of the named upstream and splice it
/// with the client once the client's side is upgraded.
async fn connect_tunnel(
    stack: &ListenerStack,
    target: &RouteTarget,
    mut req: Request<Incoming>,
    obs: &mut Observer,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (endpoint, io, slot) = connect_any(&target.upstream, None).await?;
    obs.answered_by(&endpoint);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let idle = stack.limits.tcp_idle_timeout;
    let counters = Some((
        stack.metrics.tcp_received.clone(),
        stack.metrics.tcp_sent.clone(),
    ));
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(down) => {
                let _ = tcp::splice(TokioIo::new(down), io, idle, counters).await;
                drop(slot);
            }
            Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
        }
    });
    Ok(Response::new(ProxyBody::empty()))
}

/// Opens a raw connection to an endpoint of `upstream` (CONNECT tunnels, TCP listeners): the
/// balancer picks, a failed connect feeds the endpoint's breaker and moves on to another
/// endpoint (the upstream has seen nothing, so this is always safe), up to the retry policy's
/// attempts.
pub async fn connect_any(
    upstream: &UpstreamHandle,
    hash: Option<u64>,
) -> Result<(Arc<Endpoint>, crate::listen::Io, Option<ConnSlot>), ProxyError> {
    let mut avoid: Option<Arc<Endpoint>> = None;
    let mut attempt = 1;
    loop {
        let now = Instant::now();
        let members = upstream.members();
        let Some(i) = upstream.pick(&members, hash, avoid.as_ref(), now) else {
            return Err(
                ProxyError::new(ErrorKind::NoEndpoints, "no endpoints").at(&upstream.name, None)
            );
        };
        let endpoint = members.endpoints[i].clone();
        let several = members.len() > 1;
        let slot = endpoint.connection_slot().map_err(|e| {
            ProxyError::new(ErrorKind::Overloaded, e.to_string()).at(&upstream.name, None)
        })?;
        let mut tried = Try::start(upstream, members, i, now);
        let connected = endpoint.connector().connect().await;
        let ended = Instant::now();
        match connected {
            Ok(io) => {
                tried.record(ended - now, true, ended);
                return Ok((endpoint, io, slot));
            }
            Err(e) => {
                tried.record(ended - now, false, ended);
                let kind = connect_error_kind(&e);
                let err = ProxyError::new(kind, e.to_string())
                    .at(&upstream.name, Some(endpoint.label.clone()));
                let retry =
                    attempt < upstream.retry.attempts && several && upstream.budget.withdraw();
                if !retry {
                    return Err(err);
                }
                if let Some(c) = upstream
                    .metrics
                    .retries
                    .get(RetryReason::ConnectFailed as usize)
                {
                    c.inc();
                }
                tracing::debug!(error = %err, attempt, "connect failed; trying another endpoint");
                attempt += 1;
                avoid = Some(endpoint);
            }
        }
    }
}

/// Whether a request is gRPC (its errors are answered in gRPC's own terms).
fn is_grpc(h: &http::HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The authority the upstream should see: the request's own (absolute-form or HTTP/2), else
/// `Host`, else the upstream's name.
fn downstream_authority(
    uri: &Uri,
    headers: &http::HeaderMap,
    upstream: &str,
) -> Result<Authority, String> {
    if let Some(a) = uri.authority() {
        return Ok(a.clone());
    }
    match headers.get(header::HOST) {
        Some(h) => Authority::try_from(h.as_bytes()).map_err(|_| {
            format!(
                "invalid Host header {:?}",
                String::from_utf8_lossy(h.as_bytes())
            )
        }),
        None => Authority::try_from(upstream)
            .map_err(|_| format!("upstream name `{upstream}` is not a valid authority")),
    }
}

fn connect_error_kind(e: &ConnectError) -> ErrorKind {
    match e {
        ConnectError::Timeout(_) => ErrorKind::ConnectTimeout,
        ConnectError::Io(_) => ErrorKind::ConnectFailed,
        ConnectError::Tls(_) => ErrorKind::UpstreamTls,
    }
}

/// Whether a try failed because of the client: its request body broke or stalled.
fn client_fault(e: &SendError) -> bool {
    use std::error::Error as _;
    let by_client = |b: &RequestBodyError| {
        matches!(
            b,
            RequestBodyError::Downstream(_) | RequestBodyError::ClientTimeout(_)
        )
    };
    match e {
        SendError::Http1(h1::Error::RequestBody(b))
        | SendError::Unsent(h1::Error::RequestBody(b)) => by_client(b),
        SendError::Http2(he) => {
            let mut source = he.source();
            while let Some(s) = source {
                if let Some(b) = s.downcast_ref::<RequestBodyError>() {
                    return by_client(b);
                }
                source = s.source();
            }
            false
        }
        _ => false,
    }
}

/// Maps a failed exchange with an endpoint to the [`ErrorKind`] the user sees.
fn classify(e: &SendError) -> ProxyError {
    use std::error::Error as _;
    let he = match e {
        SendError::Connect(ce) => {
            let kind = connect_error_kind(ce);
            return ProxyError::new(kind, ce.to_string());
        }
        SendError::Http1(h1e) | SendError::Unsent(h1e) => {
            if let Some(refused) = upstream_tls_refusal(h1e) {
                return refused;
            }
            let kind = match h1e {
                h1::Error::Protocol(_) => ErrorKind::UpstreamProtocol,
                h1::Error::RequestBody(RequestBodyError::ClientTimeout(_)) => {
                    ErrorKind::ClientTimeout
                }
                h1::Error::RequestBody(RequestBodyError::Downstream(_)) => ErrorKind::BadRequest,
                h1::Error::Io(_) | h1::Error::ClosedBeforeResponse | h1::Error::RequestBody(_) => {
                    ErrorKind::UpstreamReset
                }
            };
            return ProxyError::new(kind, h1e.to_string());
        }
        SendError::Http2(he) => he,
        SendError::Limit(_) => return ProxyError::new(ErrorKind::Overloaded, e.to_string()),
    };
    if let Some(refused) = crate::pool::tls_refusal(he) {
        return ProxyError::new(ErrorKind::UpstreamTls, refused.detail);
    }
    // An HTTP/2 framing error Tandem detected (not one the upstream reported) means the upstream
    // does not speak HTTP/2 at all: usually an HTTP/1.1-only app behind `protocol: auto`.
    let mut source = he.source();
    while let Some(s) = source {
        match s.downcast_ref::<RequestBodyError>() {
            Some(RequestBodyError::ClientTimeout(_)) => {
                return ProxyError::new(ErrorKind::ClientTimeout, s.to_string());
            }
            Some(RequestBodyError::Downstream(_)) => {
                return ProxyError::new(
                    ErrorKind::BadRequest,
                    format!("the request body failed: {s}"),
                );
            }
            _ => {}
        }
        if let Some(h2e) = s.downcast_ref::<h2::Error>() {
            let framing = matches!(
                h2e.reason(),
                Some(h2::Reason::FRAME_SIZE_ERROR | h2::Reason::PROTOCOL_ERROR)
            );
            if framing && !h2e.is_remote() {
                return ProxyError::new(
                    ErrorKind::UpstreamProtocol,
                    format!(
                        "the upstream did not answer in HTTP/2 ({h2e}); if it speaks only HTTP/1.1, set `protocol: http1` on this upstream"
                    ),
                );
            }
        }
        source = s.source();
    }
    let kind = if he.is_parse() || he.is_parse_status() {
        ErrorKind::UpstreamProtocol
    } else {
        ErrorKind::UpstreamReset
    };
    ProxyError::new(kind, describe(he))
}

/// An upstream that refused Tandem's client certificate after the handshake (TLS 1.3): the
/// first read returns its alert.
fn upstream_tls_refusal(e: &h1::Error) -> Option<ProxyError> {
    match e {
        h1::Error::Io(io) => HandshakeError::peer_refused(io)
            .map(|r| ProxyError::new(ErrorKind::UpstreamTls, r.detail)),
        _ => None,
    }
}

fn describe(e: &hyper::Error) -> String {
    use std::error::Error as _;
    match e.source() {
        Some(s) => format!("{e}: {s}"),
        None => e.to_string(),
    }
}
