//! Upstream connections: a connector per endpoint (TCP or Unix socket, bounded by the connect
//! timeout) and the endpoint's pooled connections on top of it.
//!
//! Each endpoint keeps, per protocol (the pool key is (endpoint, protocol); TLS identity joins it
//! later):
//! - HTTP/1.1: a stack of idle keep-alive connections, newest on top (a warm connection is the
//!   likeliest to still be open). A connection goes back on the stack when its response body has
//!   been read to the end ([`PooledBody`]), so the common case costs no extra task or lock beyond
//!   one uncontended mutex push and pop. Idle connections are closed after `idle_timeout` by a
//!   reaper task per endpoint, and beyond `max_idle_per_endpoint` on return.
//! - HTTP/2: one multiplexed connection shared by all requests, opened on first use by one
//!   request while the others wait for it (no connection storm on a cold start), replaced when it
//!   closes, and dropped by the reaper after `idle_timeout` without a request (open streams on it
//!   still finish: hyper closes an HTTP/2 connection only once its last stream ends).
//!
//! A pooled HTTP/1.1 connection the upstream closed while idle (the keep-alive race) fails before
//! a byte of the request is written; hyper hands the request back and it is sent once more on a
//! new connection. A request that was written is never re-sent here: that is the retry policy's
//! decision, not the pool's.
//!
//! Non-goals: connection limits and queueing (the resilience policies bound in-flight requests).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tandem_config::{Address, Pool};
use tokio::time::Instant;

use crate::listen::Io;

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No connection within the connect timeout.
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    /// The OS refused or failed the connection.
    #[error("connect failed: {0}")]
    Io(#[from] io::Error),
}

/// Why sending a request to an endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The HTTP handshake or the exchange failed (see [`hyper::Error`]'s predicates and source).
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// Connects to one fixed endpoint.
#[derive(Clone, Debug)]
pub struct Connector {
    address: Arc<Address>,
    timeout: Duration,
}

/// One endpoint of an upstream with its pooled connections.
#[derive(Debug)]
pub struct Endpoint {
    /// Where it is.
    pub address: Address,
    /// Printable address for errors and logs.
    pub label: String,
    connector: Connector,
    http1: Arc<Http1Pool>,
    http2: Arc<Http2Slot>,
}

/// Idle HTTP/1.1 connections of one endpoint.
#[derive(Debug)]
struct Http1Pool {
    idle: Mutex<Vec<IdleConn>>,
    max_idle: usize,
    idle_timeout: Duration,
    reaper: AtomicBool,
}

#[derive(Debug)]
struct IdleConn {
    tx: http1::SendRequest<Incoming>,
    since: Instant,
}

/// The shared HTTP/2 connection of one endpoint.
#[derive(Debug)]
struct Http2Slot {
    conn: Mutex<Option<SharedH2>>,
    /// Held while connecting, so one request opens the connection and the others wait for it.
    connecting: tokio::sync::Mutex<()>,
    idle_timeout: Duration,
    reaper: AtomicBool,
}

#[derive(Debug)]
struct SharedH2 {
    tx: http2::SendRequest<Incoming>,
    last_used: Instant,
}

/// An upstream response body. For HTTP/1.1 it carries the connection, which goes back to the
/// pool when the body has been read to the end and is closed if the body is dropped before.
#[derive(Debug)]
pub struct PooledBody {
    body: Incoming,
    release: Option<Release>,
}

#[derive(Debug)]
struct Release {
    tx: http1::SendRequest<Incoming>,
    pool: Arc<Http1Pool>,
}

// === impl Connector ===

impl Connector {
    /// A connector for `address` bounded by `timeout`.
    pub fn new(address: Address, timeout: Duration) -> Self {
        Connector {
            address: Arc::new(address),
            timeout,
        }
    }

    /// Opens a new connection (also used for TCP proxying and CONNECT tunnels).
    pub async fn connect(&self) -> Result<Io, ConnectError> {
        let fut = async {
            match &*self.address {
                Address::Tcp(sa) => {
                    let s = tokio::net::TcpStream::connect(sa).await?;
                    s.set_nodelay(true)?;
                    Ok::<_, io::Error>(Io::Tcp(s))
                }
                Address::Host { host, port } => {
                    let s = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                    s.set_nodelay(true)?;
                    Ok(Io::Tcp(s))
                }
                Address::Unix(path) => Ok(Io::Unix(tokio::net::UnixStream::connect(path).await?)),
            }
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map_err(ConnectError::Io),
            Err(_) => Err(ConnectError::Timeout(self.timeout)),
        }
    }
}

// === impl Endpoint ===

impl Endpoint {
    /// The endpoint at `address`; opens no connection yet.
    pub fn new(address: Address, connect_timeout: Duration, pool: &Pool) -> Self {
        Endpoint {
            label: address.to_string(),
            connector: Connector::new(address.clone(), connect_timeout),
            address,
            http1: Arc::new(Http1Pool {
                idle: Mutex::new(Vec::new()),
                max_idle: pool.max_idle_per_endpoint,
                idle_timeout: pool.idle_timeout,
                reaper: AtomicBool::new(false),
            }),
            http2: Arc::new(Http2Slot {
                conn: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
                idle_timeout: pool.idle_timeout,
                reaper: AtomicBool::new(false),
            }),
        }
    }

    /// The raw connector (TCP proxying, CONNECT tunnels).
    pub fn connector(&self) -> &Connector {
        &self.connector
    }

    /// Sends `req` over HTTP/1.1 on a pooled or new connection. The URI is written as it is, so
    /// the caller passes origin form (`/path?query`) and a `Host` header.
    pub async fn send_http1(
        &self,
        req: Request<Incoming>,
    ) -> Result<Response<PooledBody>, SendError> {
        let mut req = req;
        if let Some(mut tx) = self.http1.checkout() {
            match tx.try_send_request(req).await {
                Ok(res) => return Ok(PooledBody::wrap(res, tx, &self.http1)),
                Err(mut e) => match e.take_message() {
                    // Not written: the connection closed while idle. A new one gets it.
                    Some(back) => req = back,
                    None => return Err(SendError::Http(e.into_error())),
                },
            }
        }
        // Boxed: connecting is the rare path, and inline it would triple the size of every
        // request's future (moved on creation and kept per connection by hyper).
        let mut tx = Box::pin(self.connect_http1()).await?;
        let res = tx.send_request(req).await?;
        Ok(PooledBody::wrap(res, tx, &self.http1))
    }

    async fn connect_http1(&self) -> Result<http1::SendRequest<Incoming>, SendError> {
        let io = self.connector.connect().await?;
        let (tx, conn) = http1::Builder::new().handshake(TokioIo::new(io)).await?;
        let label = self.label.clone();
        tokio::spawn(async move {
            // `with_upgrades`: a 101 response hands the connection to the WebSocket splice.
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(endpoint = %label, error = %e, "upstream HTTP/1.1 connection ended");
            }
        });
        Ok(tx)
    }

    /// Sends `req` over the endpoint's HTTP/2 connection, opening it when there is none. The URI
    /// must carry scheme and authority (they become `:scheme` and `:authority`).
    pub async fn send_http2(
        &self,
        req: Request<Incoming>,
    ) -> Result<Response<PooledBody>, SendError> {
        let mut tx = match self.http2.current() {
            Some(tx) => tx,
            None => Box::pin(self.connect_http2()).await?,
        };
        let res = tx.send_request(req).await?;
        Ok(res.map(PooledBody::plain))
    }

    async fn connect_http2(&self) -> Result<http2::SendRequest<Incoming>, SendError> {
        let _connecting = self.http2.connecting.lock().await;
        // Another request may have connected while this one waited.
        if let Some(tx) = self.http2.current() {
            return Ok(tx);
        }
        let io = self.connector.connect().await?;
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .adaptive_window(true)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(false)
            .handshake(TokioIo::new(io))
            .await?;
        let label = self.label.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(endpoint = %label, error = %e, "upstream HTTP/2 connection ended");
            }
        });
        self.http2.store(tx.clone());
        Ok(tx)
    }

    /// Idle HTTP/1.1 connections and whether an HTTP/2 connection is open (admin, tests).
    pub fn pooled(&self) -> (usize, bool) {
        let idle = self.http1.idle.lock().map(|v| v.len()).unwrap_or(0);
        (idle, self.http2.current().is_some())
    }
}

// === impl Http1Pool ===

impl Http1Pool {
    /// The newest idle connection that is still open and within the idle timeout.
    fn checkout(&self) -> Option<http1::SendRequest<Incoming>> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(c) = idle.pop() {
            if c.tx.is_ready() && c.since.elapsed() < self.idle_timeout {
                return Some(c.tx);
            }
            // Closed or stale: dropping the sender closes the connection.
        }
        None
    }

    fn put(self: &Arc<Self>, tx: http1::SendRequest<Incoming>) {
        if self.max_idle == 0 {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() >= self.max_idle {
                // The oldest is the likeliest to be closed by the upstream soon.
                idle.remove(0);
            }
            idle.push(IdleConn {
                tx,
                since: Instant::now(),
            });
        }
        if !self.reaper.swap(true, Ordering::Relaxed) {
            spawn_reaper(Arc::downgrade(self), self.idle_timeout, |pool: &Self| {
                if let Ok(mut idle) = pool.idle.lock() {
                    // Oldest first: once one is fresh, so is every one above it.
                    let stale = idle
                        .iter()
                        .position(|c| c.since.elapsed() < pool.idle_timeout)
                        .unwrap_or(idle.len());
                    idle.drain(..stale);
                    idle.retain(|c| !c.tx.is_closed());
                }
            });
        }
    }

    /// Returns `tx` to the pool once its connection can take the next request. Usually it can at
    /// once (hyper's connection task has already finished the exchange); otherwise, e.g. while
    /// the request body is still being sent after an early response, a small task waits.
    fn release(self: Arc<Self>, mut tx: http1::SendRequest<Incoming>) {
        match tx.poll_ready(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => self.put(tx),
            Poll::Ready(Err(_)) => {}
            Poll::Pending => {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        if tx.ready().await.is_ok() {
                            self.put(tx);
                        }
                    });
                }
            }
        }
    }
}

// === impl Http2Slot ===

impl Http2Slot {
    fn current(&self) -> Option<http2::SendRequest<Incoming>> {
        let mut slot = self.conn.lock().ok()?;
        match slot.as_mut() {
            Some(c) if !c.tx.is_closed() => {
                c.last_used = Instant::now();
                Some(c.tx.clone())
            }
            _ => None,
        }
    }

    fn store(self: &Arc<Self>, tx: http2::SendRequest<Incoming>) {
        if let Ok(mut slot) = self.conn.lock() {
            *slot = Some(SharedH2 {
                tx,
                last_used: Instant::now(),
            });
        }
        if !self.reaper.swap(true, Ordering::Relaxed) {
            spawn_reaper(Arc::downgrade(self), self.idle_timeout, |s: &Self| {
                if let Ok(mut slot) = s.conn.lock() {
                    let idle = slot.as_ref().is_some_and(|c| {
                        c.tx.is_closed() || c.last_used.elapsed() >= s.idle_timeout
                    });
                    if idle {
                        *slot = None;
                    }
                }
            });
        }
    }
}

/// Runs `reap` on `target` every half idle timeout until the target (the endpoint, replaced on
/// reload) is gone.
fn spawn_reaper<T: Send + Sync + 'static>(target: Weak<T>, idle_timeout: Duration, reap: fn(&T)) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let period = (idle_timeout / 2).max(Duration::from_millis(100));
    rt.spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            match target.upgrade() {
                Some(t) => reap(&t),
                None => return,
            }
        }
    });
}

// === impl PooledBody ===

impl PooledBody {
    fn plain(body: Incoming) -> Self {
        PooledBody {
            body,
            release: None,
        }
    }

    fn wrap(
        res: Response<Incoming>,
        tx: http1::SendRequest<Incoming>,
        pool: &Arc<Http1Pool>,
    ) -> Response<PooledBody> {
        let (parts, body) = res.into_parts();
        let mut body = PooledBody {
            body,
            release: Some(Release {
                tx,
                pool: pool.clone(),
            }),
        };
        // No body to read (HEAD, 204, 304, `content-length: 0`): the exchange is over already.
        // A 101 keeps its connection: it becomes the upgraded stream.
        if parts.status == http::StatusCode::SWITCHING_PROTOCOLS {
            body.release = None;
        } else if body.body.is_end_stream() {
            body.done();
        }
        Response::from_parts(parts, body)
    }

    fn done(&mut self) {
        if let Some(r) = self.release.take() {
            r.pool.release(r.tx);
        }
    }

    /// Unwraps the upstream body (the connection, if any, is then closed with it).
    pub fn into_inner(self) -> Incoming {
        self.body
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.done(),
            // The downstream side stops polling once the body reports its end, so the last
            // frame is where the connection goes back.
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.done(),
            Poll::Ready(Some(Err(_))) => self.release = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use http_body_util::{BodyExt, Empty, Full};
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    use super::*;

    /// A hyper HTTP/1.1 server on 127.0.0.1:0 answering every request with `body`.
    async fn server(body: &'static str) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                    TokioIo::new(s),
                    service_fn(move |_req| async move {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            Bytes::from_static(body.as_bytes()),
                        )))
                    }),
                ));
            }
        });
        addr
    }

    /// A request whose body is an (empty) [`Incoming`], the only body type the pool sends; hyper
    /// makes those only for received messages, so one is received first.
    async fn request(to: std::net::SocketAddr) -> Request<Incoming> {
        let io = tokio::net::TcpStream::connect(to).await.unwrap();
        let (mut tx, conn) = http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get("/")
            .header("host", "a")
            .body(Empty::new())
            .unwrap();
        let res = tx.send_request(req).await.unwrap();
        let body = res.into_body();
        Request::get("/").header("host", "a").body(body).unwrap()
    }

    /// The keep-alive race, made deterministic: the upstream closes an idle pooled connection
    /// after Tandem checked it out but before hyper's connection task noticed. hyper hands the
    /// unsent request back and the pool sends it on a new connection: the caller sees the
    /// response, not an error.
    #[tokio::test]
    async fn request_on_a_connection_closed_while_idle_goes_out_on_a_new_one() {
        let fresh = server("fresh").await;
        let pool = Pool {
            idle_timeout: Duration::from_secs(60),
            max_idle_per_endpoint: 8,
        };
        let endpoint = Endpoint::new(Address::Tcp(fresh), Duration::from_secs(1), &pool);

        let (near, far) = tokio::io::duplex(4096);
        let (tx, conn) = http1::handshake::<_, Incoming>(TokioIo::new(near))
            .await
            .unwrap();
        tokio::spawn(conn);
        // Let the connection task run once, so it asks for a request like any idle connection.
        while !tx.is_ready() {
            tokio::task::yield_now().await;
        }
        endpoint.http1.put(tx);
        let req = request(fresh).await;
        // Closed now; the connection task only learns it when next polled, after the checkout.
        drop(far);
        let res = endpoint
            .send_http1(req)
            .await
            .expect("sent on a new connection");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"fresh");
    }
}
