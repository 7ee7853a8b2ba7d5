//! Serving a listener: accept, then per connection either HTTP (HTTP/1.1 and HTTP/2 prior
//! knowledge on one port, told apart by the HTTP/2 preface) or opaque TCP.
//!
//! Limits applied per connection: request head size and field count (431 beyond), a header read
//! timeout (slow clients are disconnected), a send timeout (clients that stop reading are
//! disconnected), HTTP/2 concurrent streams, header list size, reset stream counts and send
//! buffer (`limits.h2_*`).
//! TLS listeners run the handshake on the connection's task (bounded by `handshake_timeout`),
//! then serve the decrypted stream the same way, with the client's verified identity attached.
//! Drain: stop accepting, ask every HTTP connection to finish (HTTP/1.1 closes once idle or after
//! its in-flight response, HTTP/2 sends GOAWAY and finishes open streams), wait for TCP tunnels.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tandem_config::ListenerProtocol;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::framing::{FramingFlag, FramingGuard};
use crate::headers::Forwarded;
use crate::identity::PeerIdentity;
use crate::listen::{accept_loop, Accepted, BoundListener, DrainWatch, Io};
use crate::stack::{ListenerStack, ListenerTls};
use crate::stall::StreamExecutor;
use crate::{forward, tcp};

/// Serves `listener` until drain, then waits until its connections have finished. The caller
/// bounds the wait (`drain_timeout`).
pub async fn run_listener(listener: BoundListener, stack: Arc<ListenerStack>, drain: DrainWatch) {
    let builder = http_builder(&stack);
    // HTTP connections: tracked, and told to finish (GOAWAY / `connection: close`) on drain.
    let connections = TaskTracker::new();
    let drained = CancellationToken::new();
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
                let (conn, resets) = serve_http(&builder, &stack, accepted.io, forwarded);
                let peer = accepted.peer;
                let drained = drained.clone();
                connections.spawn(async move {
                    drive(conn, &resets, &stack, peer, &drained).await;
                    stack.metrics.active.dec();
                    drop(permit);
                });
            }
            (ListenerTls::Tls(tls), protocol) => {
                // The handshake runs on the connection's own task, never in the accept loop.
                let tls = tls.clone();
                let drained = drained.clone();
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
                                    let (conn, resets) =
                                        serve_http(&builder, &stack, io, forwarded);
                                    drive(conn, &resets, &stack, peer, &drained).await;
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
                        connections.spawn(task);
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
    tracing::info!(listener = %stack.name, open = connections.len() + tunnels.len(), "draining");
    drained.cancel();
    connections.close();
    tunnels.close();
    tokio::join!(connections.wait(), tunnels.wait());
}

/// `limits.h2_max_resets_per_second` for one connection: a token bucket holding one second's
/// worth, taken from by each request the client cancels before its response starts.
///
/// h2's own rapid-reset defence counts only streams reset before hyper accepts them; a client
/// that waits for the accept, then cancels, costs the app a request each time while never
/// holding more than `h2_max_concurrent_streams`. This bounds that rate per connection.
#[derive(Debug)]
struct ResetBudget {
    rate: f64,
    /// Tokens left and when they were counted. Touched only on cancellations.
    bucket: std::sync::Mutex<(f64, tokio::time::Instant)>,
    exceeded: tokio::sync::Notify,
}

/// Alive while a request's handler runs; dropped with `Some` inside, the client cancelled it.
struct Cancelled(Option<Arc<ResetBudget>>);

// === impl ResetBudget ===

impl ResetBudget {
    fn new(per_second: u32) -> Self {
        let rate = f64::from(per_second.max(1));
        ResetBudget {
            rate,
            bucket: std::sync::Mutex::new((rate, tokio::time::Instant::now())),
            exceeded: tokio::sync::Notify::new(),
        }
    }

    /// Counts one cancellation; wakes the connection's task when the budget is spent.
    fn cancelled(&self) {
        let Ok(mut b) = self.bucket.lock() else {
            return;
        };
        let now = tokio::time::Instant::now();
        let refill = (now - b.1).as_secs_f64() * self.rate;
        b.0 = (b.0 + refill).min(self.rate) - 1.0;
        b.1 = now;
        if b.0 < 0.0 {
            self.exceeded.notify_one();
        }
    }
}

impl Drop for Cancelled {
    fn drop(&mut self) {
        if let Some(budget) = self.0.take() {
            budget.cancelled();
        }
    }
}

/// `limits.send_timeout`: a connection whose client accepts no bytes for this long while Tandem
/// has some to write fails with `TimedOut` (slow readers: a response nobody reads would otherwise
/// hold its upstream request forever). Armed only while a write is blocked; the sleep is
/// allocated once, on the first blocked write.
struct SendTimeout<T> {
    inner: T,
    timeout: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

// === impl SendTimeout ===

impl<T> SendTimeout<T> {
    fn new(inner: T, timeout: Duration) -> Self {
        SendTimeout {
            inner,
            timeout,
            sleep: None,
            armed: false,
        }
    }

    /// After a write attempt: disarms on progress; on `Pending`, arms (if not yet) and reports
    /// whether the client has not read for the whole timeout.
    fn check<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            self.armed = false;
            return polled;
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            self.armed = true;
            sleep.as_mut().reset(deadline);
        }
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing for limits.send_timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SendTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SendTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// hyper's read buffer limit, the largest head it accepts (it needs at least 8 KiB): the framing
/// guard judges every head up to the same size.
fn head_buffer(limits: &tandem_config::Limits) -> usize {
    limits.max_header_bytes.max(8192)
}

/// One HTTP connection (HTTP/1.1 or HTTP/2, told apart by the preface) on `io`, and the reset
/// budget [`drive`] watches it with.
fn serve_http(
    builder: &auto::Builder<StreamExecutor>,
    stack: &Arc<ListenerStack>,
    io: Io,
    forwarded: Forwarded,
) -> (
    impl hyper_util::server::graceful::GracefulConnection<
        Error = Box<dyn std::error::Error + Send + Sync>,
    >,
    Arc<ResetBudget>,
) {
    let forwarded = Arc::new(forwarded);
    let svc_stack = stack.clone();
    let flag = Arc::new(FramingFlag::default());
    let io = FramingGuard::new(
        SendTimeout::new(io, stack.limits.send_timeout),
        head_buffer(&stack.limits),
        stack.limits.max_headers,
        flag.clone(),
    );
    let resets = Arc::new(ResetBudget::new(stack.limits.h2.max_resets_per_second));
    let svc_resets = resets.clone();
    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let stack = svc_stack.clone();
        let forwarded = forwarded.clone();
        let h2 = req.version() == http::Version::HTTP_2;
        let refusal = (!h2).then(|| flag.next_request_refusal()).flatten();
        // hyper drops this future when the client resets the stream.
        let cancelled = h2.then(|| Cancelled(Some(svc_resets.clone())));
        async move {
            if let Some(why) = refusal {
                return Ok::<_, Infallible>(forward::reject_framing(&stack, &forwarded, &req, why));
            }
            let res = forward::handle(stack, &forwarded, req).await;
            if let Some(mut c) = cancelled {
                c.0 = None;
            }
            Ok(res)
        }
    });
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .into_owned();
    (conn, resets)
}

/// How long a connection told to go away for cancelling too many requests may take to finish
/// its open streams before it is closed.
const CALM_DOWN: Duration = Duration::from_secs(1);

/// Runs a served connection to its end. On drain it is told to finish (HTTP/2 GOAWAY, HTTP/1
/// `connection: close`) and its open requests complete. A client cancelling requests faster
/// than `limits.h2_max_resets_per_second` gets a GOAWAY too, and the connection is dropped with
/// whatever is still open after [`CALM_DOWN`].
async fn drive<C>(
    conn: C,
    resets: &ResetBudget,
    stack: &ListenerStack,
    peer: impl std::fmt::Debug,
    drained: &CancellationToken,
) where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    let mut conn = std::pin::pin!(conn);
    let log = |r: Result<(), C::Error>| {
        if let Err(e) = r {
            tracing::debug!(listener = %stack.name, error = %e, "connection error");
        }
    };
    tokio::select! {
        r = conn.as_mut() => return log(r),
        () = drained.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                r = conn.as_mut() => return log(r),
                () = resets.exceeded.notified() => {}
            }
        }
        () = resets.exceeded.notified() => {}
    }
    // Only the reset budget gets here.
    tracing::warn!(
        listener = %stack.name,
        peer = ?peer,
        limit = stack.limits.h2.max_resets_per_second,
        "closing an HTTP/2 connection cancelling more requests per second than limits.h2_max_resets_per_second (rapid reset)"
    );
    conn.as_mut().graceful_shutdown();
    if let Ok(r) = tokio::time::timeout(CALM_DOWN, conn.as_mut()).await {
        log(r);
    }
}

fn http_builder(stack: &ListenerStack) -> auto::Builder<StreamExecutor> {
    let limits = &stack.limits;
    // HTTP/2 streams run in tasks that reset them once stalled by the client (crate::stall).
    let mut b = auto::Builder::new(StreamExecutor::new(limits.send_timeout));
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(head_buffer(limits))
        .max_headers(limits.max_headers)
        .keep_alive(true)
        .half_close(false);
    // Flood limits, set explicitly rather than inherited from hyper's defaults (docs/security.md,
    // "Hardening"): the header list bound also caps CONTINUATION frames per header block (h2
    // allows about max_header_list_size / max_frame_size of them), rapid reset is bounded by
    // the pending-accept reset count, and a client that stops reading (zero window) holds at
    // most max_send_buf_size per open stream.
    let h2 = &limits.h2;
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(h2.max_concurrent_streams)
        .max_pending_accept_reset_streams(h2.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(h2.max_local_error_reset_streams)
        .max_send_buf_size(h2.max_send_buf_size)
        .adaptive_window(true)
        .enable_connect_protocol();
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A burst of one second's worth passes; one more within the second trips the budget, and
    /// cancellations spread at the allowed rate never do.
    #[tokio::test(start_paused = true)]
    async fn reset_budget_allows_its_rate() {
        let b = ResetBudget::new(10);
        for _ in 0..10 {
            b.cancelled();
        }
        let tripped = tokio::time::timeout(Duration::ZERO, b.exceeded.notified());
        assert!(tripped.await.is_err(), "tripped within the burst");
        b.cancelled();
        let tripped = tokio::time::timeout(Duration::ZERO, b.exceeded.notified());
        assert!(tripped.await.is_ok(), "not tripped past the burst");

        let b = ResetBudget::new(10);
        for _ in 0..100 {
            tokio::time::advance(Duration::from_millis(100)).await;
            b.cancelled();
        }
        let tripped = tokio::time::timeout(Duration::ZERO, b.exceeded.notified());
        assert!(tripped.await.is_err(), "tripped at the allowed rate");
    }
}
