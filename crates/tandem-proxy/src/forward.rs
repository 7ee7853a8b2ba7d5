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
use tandem_config::{Direction, UpstreamProtocol};
use tokio::time::Instant;

use crate::body::ProxyBody;
use crate::error::{ErrorKind, ProxyError};
use crate::h1;
use crate::headers;
use crate::pool::{ConnectError, SendError};
use crate::route::{request_host, RequestFacts};
use crate::stack::{ListenerStack, RouteTarget};
use crate::tcp;

/// Handles one request received on `stack`'s listener; `forwarded` describes the client
/// connection (rendered once per connection).
pub async fn handle(
    stack: Arc<ListenerStack>,
    forwarded: &headers::Forwarded,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let start = Instant::now();
    let target = {
        let host = request_host(req.uri(), req.headers());
        let facts = RequestFacts {
            host,
            path: req.uri().path(),
            method: req.method(),
            headers: req.headers(),
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
        stack.no_route_errors.inc(err.kind);
        let res = err.to_response();
        stack
            .no_route
            .record(res.status().as_u16(), start.elapsed());
        return res;
    };

    let limited = target
        .rate_limit
        .as_ref()
        .and_then(|l| l.check(forwarded.client_ip(), req.headers(), start).err());
    let result = if let Some(wait) = limited {
        Err(rate_limited(&target.name, wait))
    } else if req.method() == Method::CONNECT {
        // Boxed: tunnels are rare and their state would otherwise widen every request's future.
        Box::pin(connect_tunnel(&stack, &target, req)).await
    } else {
        proxy(&stack, &target, forwarded, req).await
    };
    let res = match result {
        Ok(res) => res,
        Err(err) => {
            target.errors.inc(err.kind);
            tracing::debug!(listener = %stack.name, route = %target.name, error = %err, "request failed");
            err.to_response()
        }
    };
    target
        .metrics
        .record(res.status().as_u16(), start.elapsed());
    res
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
pub fn reject_framing(stack: &ListenerStack) -> Response<ProxyBody> {
    let err = ProxyError::new(
        ErrorKind::BadRequest,
        "conflicting Content-Length and Transfer-Encoding (request smuggling risk); send exactly one",
    );
    stack.no_route_errors.inc(err.kind);
    let res = err.to_response();
    stack
        .no_route
        .record(res.status().as_u16(), std::time::Duration::ZERO);
    res
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

async fn proxy(
    stack: &ListenerStack,
    target: &RouteTarget,
    forwarded: &headers::Forwarded,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let upstream = &target.upstream;
    let upgrade = req.version() == Version::HTTP_11 && headers::is_upgrade_request(req.headers());
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    let endpoint = upstream.pick().ok_or_else(|| {
        ProxyError::new(ErrorKind::NoEndpoints, "no endpoints").at(&upstream.name, None)
    })?;
    let at = |e: ProxyError| e.at(&upstream.name, Some(endpoint.label.clone()));

    let use_h2 = !upgrade
        && match upstream.protocol {
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::Http2 => true,
            UpstreamProtocol::Auto => req.version() == Version::HTTP_2,
        };

    let (mut parts, body) = req.into_parts();
    let authority = downstream_authority(&parts.uri, &parts.headers, &upstream.name)
        .map_err(|e| at(ProxyError::new(ErrorKind::BadRequest, e)))?;
    headers::remove_hop_by_hop(&mut parts.headers, upgrade);
    // Tandem's server side already answered `100 Continue` when it started reading the body;
    // the upstream sees a plain request.
    parts.headers.remove(header::EXPECT);
    if stack.direction == Direction::Inbound {
        forwarded.apply(&mut parts.headers);
    }
    // Reuse the parsed path and query. HTTP/1.1 upstreams get origin form (`/path?query`) with
    // `Host`; HTTP/2 carries scheme and authority in the URI (`:scheme`, `:authority`).
    let path = std::mem::take(&mut parts.uri)
        .into_parts()
        .path_and_query
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if use_h2 {
        parts.version = Version::HTTP_2;
        parts.headers.remove(header::HOST);
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(authority);
        uri.path_and_query = Some(path);
        parts.uri = Uri::from_parts(uri).map_err(|e| {
            at(ProxyError::new(
                ErrorKind::BadRequest,
                format!("invalid request target: {e}"),
            ))
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
    let upstream_req = Request::from_parts(parts, body);
    let send = async {
        if use_h2 {
            endpoint.send_http2(upstream_req).await
        } else {
            endpoint.send_http1(upstream_req).await
        }
    };

    let res = match tokio::time::timeout(target.timeout, send).await {
        Err(_) => {
            return Err(at(ProxyError::new(
                ErrorKind::UpstreamTimeout,
                format!("no response within {:?}", target.timeout),
            )))
        }
        Ok(Err(e)) => return Err(at(classify(&e))),
        Ok(Ok(res)) => res,
    };

    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(down) = downstream_upgrade else {
            return Err(at(ProxyError::new(
                ErrorKind::UpstreamProtocol,
                "101 Switching Protocols to a request that did not ask to upgrade",
            )));
        };
        let (mut parts, body) = res.into_parts();
        let Some(up) = body.into_upgraded() else {
            return Err(at(ProxyError::new(
                ErrorKind::UpstreamProtocol,
                "101 Switching Protocols on a connection that cannot switch",
            )));
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
    Ok(Response::from_parts(parts, body))
}

/// `CONNECT NAME:port`: open a raw connection to an endpoint of the named upstream and splice it
/// with the client once the client's side is upgraded.
async fn connect_tunnel(
    stack: &ListenerStack,
    target: &RouteTarget,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let upstream = &target.upstream;
    let endpoint = upstream.pick().ok_or_else(|| {
        ProxyError::new(ErrorKind::NoEndpoints, "no endpoints").at(&upstream.name, None)
    })?;
    let io = endpoint.connector().connect().await.map_err(|e| {
        let kind = match e {
            ConnectError::Timeout(_) => ErrorKind::ConnectTimeout,
            ConnectError::Io(_) => ErrorKind::ConnectFailed,
        };
        ProxyError::new(kind, e.to_string()).at(&upstream.name, Some(endpoint.label.clone()))
    })?;
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
            }
            Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
        }
    });
    Ok(Response::new(ProxyBody::empty()))
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

/// Maps a failed exchange with an endpoint to the [`ErrorKind`] the user sees.
fn classify(e: &SendError) -> ProxyError {
    use std::error::Error as _;
    let he = match e {
        SendError::Connect(ce) => {
            let kind = match ce {
                ConnectError::Timeout(_) => ErrorKind::ConnectTimeout,
                ConnectError::Io(_) => ErrorKind::ConnectFailed,
            };
            return ProxyError::new(kind, ce.to_string());
        }
        SendError::Http1(h1e) => {
            let kind = match h1e {
                h1::Error::Protocol(_) => ErrorKind::UpstreamProtocol,
                h1::Error::Io(_) | h1::Error::ClosedBeforeResponse | h1::Error::RequestBody(_) => {
                    ErrorKind::UpstreamReset
                }
            };
            return ProxyError::new(kind, h1e.to_string());
        }
        SendError::Http2(he) => he,
    };
    // An HTTP/2 framing error Tandem detected (not one the upstream reported) means the upstream
    // does not speak HTTP/2 at all: usually an HTTP/1.1-only app behind `protocol: auto`.
    let mut source = he.source();
    while let Some(s) = source {
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

fn describe(e: &hyper::Error) -> String {
    use std::error::Error as _;
    match e.source() {
        Some(s) => format!("{e}: {s}"),
        None => e.to_string(),
    }
}
