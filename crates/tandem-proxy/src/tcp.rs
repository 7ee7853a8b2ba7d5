//! Opaque TCP proxying: splice two streams with an idle timeout, counting bytes; a TCP
//! listener's connection is observed (access log) from accept to close.
//!
//! Used by `protocol: tcp` listeners, by `CONNECT` tunnels and by HTTP upgrades (WebSocket).
//! Half-close is preserved: when one side shuts down its write half, the other side's write half
//! is shut down and the opposite direction keeps flowing (`copy_bidirectional` semantics).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tandem_telemetry::access_log::End;
use tandem_telemetry::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::identity::PeerIdentity;
use crate::listen::Accepted;
use crate::observe::ConnectionObserver;
use crate::stack::ListenerStack;

/// Byte counters: (received from downstream, sent to downstream).
pub type ByteCounters = (Counter, Counter);

/// How a splice ended, with the bytes moved either way however it ended.
#[derive(Debug)]
pub struct Spliced {
    /// Bytes read from downstream (and passed upstream).
    pub received: u64,
    /// Bytes read from upstream (and passed downstream).
    pub sent: u64,
    /// `Ok` when both directions ended; an idle timeout is `TimedOut`.
    pub result: io::Result<()>,
}

/// Copies both ways until both directions end, an error occurs, or neither side moved a byte for
/// `idle`. Returns (bytes from downstream, bytes to downstream).
pub async fn splice<D, U>(
    down: D,
    up: U,
    idle: Duration,
    counters: Option<ByteCounters>,
) -> io::Result<(u64, u64)>
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let s = splice_counted(down, up, idle, counters).await;
    s.result.map(|()| (s.received, s.sent))
}

/// [`splice`], keeping the byte counts when it ends in an error or a timeout too.
pub async fn splice_counted<D, U>(
    down: D,
    up: U,
    idle: Duration,
    counters: Option<ByteCounters>,
) -> Spliced
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let origin = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let (rx, tx) = match counters {
        Some((rx, tx)) => (Some(rx), Some(tx)),
        None => (None, None),
    };
    let mut down = Tracked {
        inner: down,
        origin,
        last: last.clone(),
        counter: rx,
        read: 0,
    };
    let mut up = Tracked {
        inner: up,
        origin,
        last: last.clone(),
        counter: tx,
        read: 0,
    };
    let result = {
        let copy = tokio::io::copy_bidirectional(&mut down, &mut up);
        tokio::pin!(copy);
        loop {
            let deadline = origin + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
            tokio::select! {
                r = &mut copy => break r.map(|_| ()),
                _ = tokio::time::sleep_until(deadline) => {
                    let idle_for = Instant::now() - (origin + Duration::from_millis(last.load(Ordering::Relaxed)));
                    if idle_for >= idle {
                        break Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
                    }
                }
            }
        }
    };
    Spliced {
        received: down.read,
        sent: up.read,
        result,
    }
}

/// Proxies one connection accepted on a `protocol: tcp` listener to its upstream.
pub async fn proxy(stack: Arc<ListenerStack>, accepted: Accepted) {
    proxy_with_identity(stack, accepted, None).await;
}

/// [`proxy`] for a connection whose client proved `identity` (mTLS), for the access log.
pub async fn proxy_with_identity(
    stack: Arc<ListenerStack>,
    accepted: Accepted,
    identity: Option<PeerIdentity>,
) {
    let Some(target) = stack.default.clone() else {
        return;
    };
    let mut obs = ConnectionObserver::start(&stack, &target, accepted.peer);
    if let Some(policy) = &stack.authz {
        let source = accepted.peer.map(|p| p.ip().to_canonical());
        if let Err(e) = policy.authorize_connection(identity.as_ref(), source) {
            obs.identity(identity);
            target.errors.inc(e.kind);
            obs.failed(&e);
            // Closed before connecting upstream: the client learns nothing but the close.
            return;
        }
    }
    obs.identity(identity);
    let upstream = &target.upstream;
    let (io, _slot) = match crate::forward::connect_any(upstream, None).await {
        Ok((endpoint, io, slot)) => {
            obs.connected(&endpoint);
            (io, slot)
        }
        Err(e) => {
            target.errors.inc(e.kind);
            obs.failed(&e);
            tracing::warn!(listener = %stack.name, error = %e, "tcp: no connection to the upstream");
            return;
        }
    };
    let counters = Some((
        stack.metrics.tcp_received.clone(),
        stack.metrics.tcp_sent.clone(),
    ));
    let spliced = splice_counted(accepted.io, io, stack.limits.tcp_idle_timeout, counters).await;
    let end = match &spliced.result {
        Ok(()) => End::Complete,
        Err(e) => {
            tracing::debug!(listener = %stack.name, error = %e, "tcp: connection ended");
            if e.kind() == io::ErrorKind::TimedOut {
                End::IdleTimeout
            } else {
                End::IoError
            }
        }
    };
    obs.finish(spliced.received, spliced.sent, end);
}

/// Counts bytes read and stamps activity; reads are where bytes enter the proxy.
struct Tracked<T> {
    inner: T,
    origin: Instant,
    last: Arc<AtomicU64>,
    counter: Option<Counter>,
    /// Bytes read so far.
    read: u64,
}

impl<T> Tracked<T> {
    fn touch(&self) {
        let ms = (Instant::now() - self.origin).as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.touch();
            self.read += n as u64;
            if let Some(c) = &self.counter {
                c.inc_by(n as u64);
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Bytes flow both ways and are counted; half-close reaches the other side.
    #[tokio::test]
    async fn splices_and_counts() {
        let (mut client, down) = tokio::io::duplex(64);
        let (up, mut server) = tokio::io::duplex(64);
        let rx = Counter::default();
        let tx = Counter::default();
        let task = tokio::spawn(splice(
            down,
            up,
            Duration::from_secs(5),
            Some((rx.clone(), tx.clone())),
        ));
        client.write_all(b"ping").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping");
        server.write_all(b"pong!").await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"pong!");
        assert_eq!(task.await.unwrap().unwrap(), (4, 5));
        assert_eq!((rx.get(), tx.get()), (4, 5));
    }

    /// A connection that moves nothing is closed after the idle timeout.
    #[tokio::test(start_paused = true)]
    async fn idle_timeout_closes() {
        let (_client, down) = tokio::io::duplex(64);
        let (up, _server) = tokio::io::duplex(64);
        let err = splice(down, up, Duration::from_secs(30), None)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
