//! Serving a listener: accept, then per connection either HTTP (HTTP/1.1 and HTTP/2 prior
//! knowledge on one port, told apart by the HTTP/2 preface) or opaque TCP.
//!
//! Limits applied per connection: request head size and field count (431 beyond), a header read
//! timeout (slow clients are disconnected), HTTP/2 concurrent streams and header list size.
//! TLS listeners run the handshake on the connection's task (bounded by `handshake_timeout`),
//! then serve the decrypted stream the same way, with the client's verified identity attached.
//! Drain: stop accepting, ask every HTTP connection to finish (HTTP/1.1 closes once idle or after
//! its in-flight response, HTTP/2 sends GOAWAY and finishes open streams), wait for TCP tunnels.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tandem_config::ListenerProtocol;
use tokio_util::task::TaskTracker;

use crate::framing::{FramingFlag, FramingGuard};
use crate::headers::Forwarded;
use crate::identity::PeerIdentity;
use crate::listen::{accept_loop, Accepted, BoundListener, DrainWatch, Io};
use crate::stack::{ListenerStack, ListenerTls};
use crate::{forward, tcp};

/// Serves `listener` until drain, then waits until its connections have finished. The caller
/// bounds the wait (`drain_timeout`).
pub async fn run_listener(listener: BoundListener, stack: Arc<ListenerStack>, drain: DrainWatch) {
    let builder = http_builder(&stack);
    let graceful = GracefulShutdown::new();
    let tunnels = TaskTracker::new();
    let max = stack.limits.max_connections;

    accept_loop(&listener, max, drain, |accepted, permit| {
        let stack = stack.clone();
        stack.metrics.accepted.inc();
        stack.metrics.active.inc();
        match (&stack.tls, stack.protocol) {
            (ListenerTls::Plain, ListenerProtocol::Tcp) => {
                tunnels.spawn(async move {
                    tcp::proxy(stack.clone(), accepted).await;
                    stack.metrics.active.dec();
                    drop(permit);
                });
            }
            (ListenerTls::Plain, ListenerProtocol::Http) => {
                let forwarded = Forwarded::new(accepted.peer, "http");
                let conn = serve_http(&builder, &stack, accepted.io, forwarded);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(listener = %stack.name, error = %e, "connection error");
                    }
                    stack.metrics.active.dec();
                    drop(permit);
                });
            }
            (ListenerTls::Tls(tls), protocol) => {
                // The handshake runs on the connection's own task, never in the accept loop.
                let tls = tls.clone();
                let watcher = graceful.watcher();
                let builder = builder.clone();
                let task = async move {
                    let peer = accepted.peer;
                    match tls.accept(accepted.io).await {
                        Ok((io, identity)) => {
                            let io = Io::TlsServer(Box::new(io));
                            let identity = identity.map(PeerIdentity::new);
                            match protocol {
                                ListenerProtocol::Tcp => {
                                    let accepted = Accepted { io, peer };
                                    tcp::proxy_with_identity(stack.clone(), accepted, identity)
                                        .await;
                                }
                                ListenerProtocol::Http => {
                                    let forwarded =
                                        Forwarded::new(peer, "https").with_identity(identity);
                                    let conn = serve_http(&builder, &stack, io, forwarded);
                                    if let Err(e) = watcher.watch(conn).await {
                                        tracing::debug!(listener = %stack.name, error = %e, "connection error");
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            tracing::debug!(listener = %stack.name, client = ?peer, reason = e.reason_str(), error = %e, "TLS handshake failed");
                        }
                    }
                    stack.metrics.active.dec();
                    drop(permit);
                };
                match protocol {
                    ListenerProtocol::Tcp => {
                        tunnels.spawn(task);
                    }
                    ListenerProtocol::Http => {
                        tokio::spawn(task);
                    }
                }
            }
            (ListenerTls::Broken(why), _) => {
                tracing::warn!(listener = %stack.name, reason = %why, "TLS is not usable on this listener; connection closed");
                drop(accepted);
                stack.metrics.active.dec();
                drop(permit);
            }
        }
    })
    .await;

    // Closing the socket first makes new connections fail fast instead of queueing.
    drop(listener);
    tracing::info!(listener = %stack.name, open = graceful.count(), "draining");
    tunnels.close();
    tokio::join!(graceful.shutdown(), tunnels.wait());
}

/// One HTTP connection (HTTP/1.1 or HTTP/2, told apart by the preface) on `io`.
fn serve_http(
    builder: &auto::Builder<TokioExecutor>,
    stack: &Arc<ListenerStack>,
    io: Io,
    forwarded: Forwarded,
) -> impl hyper_util::server::graceful::GracefulConnection<
    Error = Box<dyn std::error::Error + Send + Sync>,
> {
    let forwarded = Arc::new(forwarded);
    let svc_stack = stack.clone();
    let flag = Arc::new(FramingFlag::default());
    let io = FramingGuard::new(
        io,
        stack.limits.max_header_bytes,
        stack.limits.max_headers,
        flag.clone(),
    );
    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let stack = svc_stack.clone();
        let forwarded = forwarded.clone();
        let ambiguous = req.version() != http::Version::HTTP_2 && flag.next_request_conflicts();
        async move {
            if ambiguous {
                return Ok::<_, Infallible>(forward::reject_framing(&stack, &forwarded, &req));
            }
            Ok(forward::handle(stack, &forwarded, req).await)
        }
    });
    builder
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .into_owned()
}

fn http_builder(stack: &ListenerStack) -> auto::Builder<TokioExecutor> {
    let limits = &stack.limits;
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers)
        .keep_alive(true)
        .half_close(false);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .adaptive_window(true)
        .enable_connect_protocol();
    b
}
