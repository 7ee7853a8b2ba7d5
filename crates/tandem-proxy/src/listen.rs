//! Listening sockets: bind TCP or Unix addresses, accept under a connection bound, and stop
//! accepting when draining.
//!
//! The accept loop holds one semaphore permit per open connection, so at `max_connections` new
//! connections wait in the kernel's backlog instead of consuming memory. On drain the listening
//! socket is closed first (new connections are refused), then open connections are asked to
//! finish (see [`crate::server`]).

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tandem_config::Address;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};

/// A connected stream, TCP or Unix.
#[derive(Debug)]
pub enum Io {
    /// TCP.
    Tcp(TcpStream),
    /// Unix domain socket.
    Unix(UnixStream),
    /// TLS terminated by Tandem (an accepted connection on a TLS listener).
    TlsServer(Box<tokio_rustls::server::TlsStream<Io>>),
    /// TLS originated by Tandem (a connection to a TLS upstream).
    TlsClient(Box<tokio_rustls::client::TlsStream<Io>>),
}

/// A bound listening socket.
#[derive(Debug)]
pub enum BoundListener {
    /// TCP.
    Tcp(TcpListener),
    /// Unix; the path is removed when the listener is dropped.
    Unix(UnixListener, UnixPathGuard),
}

/// Removes a Unix socket path when dropped, so a restart can bind it again.
#[derive(Debug)]
pub struct UnixPathGuard(PathBuf);

/// One accepted connection.
#[derive(Debug)]
pub struct Accepted {
    /// The stream.
    pub io: Io,
    /// The client's address (`None` for Unix sockets).
    pub peer: Option<SocketAddr>,
}

/// Signals drain to every listener and connection. Cloning shares the signal.
#[derive(Clone, Debug)]
pub struct Drain {
    tx: Arc<watch::Sender<bool>>,
}

/// A receiver of the drain signal.
pub type DrainWatch = watch::Receiver<bool>;

// === impl Drain ===

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    /// A drain signal not yet raised.
    pub fn new() -> Self {
        Drain {
            tx: Arc::new(watch::channel(false).0),
        }
    }

    /// Raises the signal (idempotent).
    pub fn start(&self) {
        self.tx.send_replace(true);
    }

    /// Whether the signal was raised.
    pub fn is_draining(&self) -> bool {
        *self.tx.borrow()
    }

    /// A receiver to wait on.
    pub fn watch(&self) -> DrainWatch {
        self.tx.subscribe()
    }
}

/// Waits until the drain signal is raised (or its sender is gone).
pub async fn drained(w: &mut DrainWatch) {
    let _ = w.wait_for(|d| *d).await;
}

// === impl BoundListener ===

impl BoundListener {
    /// Binds `address`. A stale Unix socket file (nothing listening) is replaced; a live one is an
    /// error, so two processes never steal each other's socket.
    pub async fn bind(address: &Address) -> io::Result<Self> {
        match address {
            Address::Tcp(sa) => {
                let sock = match sa {
                    SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                    SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
                };
                sock.set_reuseaddr(true)?;
                sock.set_nodelay(true)?;
                sock.bind(*sa)?;
                Ok(BoundListener::Tcp(sock.listen(1024)?))
            }
            Address::Host { host, port } => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot listen on host name {host}:{port}; use an IP address"),
            )),
            Address::Unix(path) => {
                if path.exists() {
                    if UnixStream::connect(path).await.is_ok() {
                        return Err(io::Error::new(
                            io::ErrorKind::AddrInUse,
                            format!("{} is in use by a live process", path.display()),
                        ));
                    }
                    std::fs::remove_file(path)?;
                }
                let l = UnixListener::bind(path)?;
                Ok(BoundListener::Unix(l, UnixPathGuard(path.clone())))
            }
        }
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn local_address(&self) -> io::Result<Address> {
        match self {
            BoundListener::Tcp(l) => Ok(Address::Tcp(l.local_addr()?)),
            BoundListener::Unix(_, g) => Ok(Address::Unix(g.0.clone())),
        }
    }

    /// Accepts one connection.
    pub async fn accept(&self) -> io::Result<Accepted> {
        match self {
            BoundListener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                s.set_nodelay(true)?;
                Ok(Accepted {
                    io: Io::Tcp(s),
                    peer: Some(peer),
                })
            }
            BoundListener::Unix(l, _) => {
                let (s, _) = l.accept().await?;
                Ok(Accepted {
                    io: Io::Unix(s),
                    peer: None,
                })
            }
        }
    }
}

impl Drop for UnixPathGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Accepts connections until drain, handing each to `handle` with its permit; returns when the
/// drain signal is raised (the listening socket is then dropped by the caller).
pub async fn accept_loop<F>(
    listener: &BoundListener,
    max_connections: usize,
    mut drain: DrainWatch,
    mut handle: F,
) where
    F: FnMut(Accepted, tokio::sync::OwnedSemaphorePermit),
{
    let permits = Arc::new(Semaphore::new(max_connections));
    loop {
        let permit = tokio::select! {
            biased;
            _ = drained(&mut drain) => return,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            biased;
            _ = drained(&mut drain) => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok(a) => handle(a, permit),
            Err(e) => {
                // EMFILE/ENFILE and friends: back off instead of spinning; the listener stays up.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

// === impl Io ===

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Io::TlsServer(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::TlsClient(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Io::TlsServer(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Io::TlsClient(s) => with_alert(s, cx, |s, cx| Pin::new(s).poll_write(cx, buf)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::TlsServer(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Io::TlsClient(s) => {
                with_alert(s, cx, |s, cx| Pin::new(s).poll_write_vectored(cx, bufs))
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tcp(s) => s.is_write_vectored(),
            Io::Unix(s) => s.is_write_vectored(),
            Io::TlsServer(s) => s.is_write_vectored(),
            Io::TlsClient(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Unix(s) => Pin::new(s).poll_flush(cx),
            Io::TlsServer(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::TlsClient(s) => with_alert(s, cx, |s, cx| Pin::new(s).poll_flush(cx)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Io::TlsServer(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::TlsClient(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Runs a write on a TLS client stream; when it fails because the server closed the connection,
/// the server's TLS alert (if it sent one before closing) replaces the bare "broken pipe". Under
/// TLS 1.3 a server that refuses the client certificate says so only after the client finished
/// its handshake, so the alert is what explains the failure.
fn with_alert<T>(
    s: &mut tokio_rustls::client::TlsStream<Io>,
    cx: &mut Context<'_>,
    write: impl FnOnce(
        &mut tokio_rustls::client::TlsStream<Io>,
        &mut Context<'_>,
    ) -> Poll<io::Result<T>>,
) -> Poll<io::Result<T>> {
    match write(s, cx) {
        Poll::Ready(Err(e))
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) =>
        {
            // The connection is dead either way: reading what is left costs nothing.
            let mut scratch = [0u8; 256];
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(s).poll_read(cx, &mut buf) {
                Poll::Ready(Err(alert)) if alert.get_ref().is_some() => Poll::Ready(Err(alert)),
                _ => Poll::Ready(Err(e)),
            }
        }
        other => other,
    }
}
