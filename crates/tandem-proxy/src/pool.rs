//! Upstream connections: a connector per endpoint (TCP or Unix socket, bounded by the connect
//! timeout) and the endpoint's pooled connections on top of it.
//!
//! Each endpoint keeps, per protocol (the pool key is (endpoint, protocol); TLS settings are the
//! upstream's, so every connection of an endpoint has the same ones, made by its [`Connector`]):
//! - HTTP/1.1: a stack of idle keep-alive connections, newest on top (a warm connection is the
//!   likeliest to still be open), spoken by Tandem's own client side ([`crate::h1`]): a pooled
//!   connection is a socket and a read buffer, with no task of its own. It goes back on the stack
//!   when the response body has been read to the end, so the common case costs one uncontended
//!   mutex push and pop. Idle connections are closed after `idle_timeout` by a reaper task per
//!   endpoint, and beyond `max_idle_per_endpoint` on return.
//! - HTTP/2: one multiplexed connection shared by all requests, opened on first use by one
//!   request while the others wait for it (no connection storm on a cold start), replaced when it
//!   closes, and dropped by the reaper after `idle_timeout` without a request (open streams on it
//!   still finish: hyper closes an HTTP/2 connection only once its last stream ends).
//!
//! The keep-alive race: an upstream may close an idle connection just as Tandem reuses it. A
//! connection that received anything while idle (its EOF) is not reused; one that fails under a
//! request is replaced by a new connection and the request sent once more when that is safe:
//! nothing of it was written, or it is idempotent, bodiless and not a byte of response arrived
//! (see [`crate::h1::Failure`]). Any other resend is the retry policy's decision, not the pool's.
//!
//! Non-goals: connection limits and queueing (the resilience policies bound in-flight requests).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::{Request, Response};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tandem_config::{Address, Pool};
use tandem_telemetry::trace::EncodedAttributes;
use tokio::time::Instant;

use crate::body::{ProxyBody, RequestBody};
use crate::h1;
use crate::listen::Io;
use tandem_tls::client::{Alpn, ClientTls};
use tandem_tls::handshake::HandshakeError;

/// How long a failed first request on a new TLS HTTP/2 connection waits for the connection's
/// own error, which says whether the server refused Tandem's certificate.
const REFUSAL_WAIT: Duration = Duration::from_millis(100);

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No connection within the connect timeout.
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    /// The OS refused or failed the connection.
    #[error("connect failed: {0}")]
    Io(#[from] io::Error),
    /// The TLS handshake failed (or the upstream's TLS settings are unusable).
    #[error("{0}")]
    Tls(#[from] tandem_tls::handshake::HandshakeError),
}

/// Why sending a request to an endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// An HTTP/1.1 exchange failed after the request was (partly) written.
    #[error(transparent)]
    Http1(#[from] h1::Error),
    /// An HTTP/1.1 exchange failed before a byte of the request was written.
    #[error(transparent)]
    Unsent(h1::Error),
    /// The HTTP/2 handshake or stream failed (see [`hyper::Error`]'s predicates and source).
    #[error(transparent)]
    Http2(#[from] hyper::Error),
    /// The upstream has `max_connections` open and none idle to close.
    #[error("{0} connections open to the upstream (limits.max_connections), none idle")]
    Limit(usize),
}

/// The open connections of one upstream against its `limits.max_connections`. At the limit, an
/// idle HTTP/1.1 connection of any of its endpoints is closed to make room; with none idle, the
/// new connection is refused (503 `overloaded`) rather than queued.
#[derive(Debug)]
pub struct ConnLimit {
    open: AtomicUsize,
    max: usize,
    pools: Mutex<Vec<Weak<Http1Pool>>>,
}

/// One open connection's place under a [`ConnLimit`].
#[derive(Debug)]
pub struct ConnSlot(Arc<ConnLimit>);

impl SendError {
    /// Whether the upstream cannot have received the request: no connection, nothing written,
    /// or an HTTP/2 stream the upstream refused before processing it (`REFUSED_STREAM`).
    pub fn unseen(&self) -> bool {
        match self {
            SendError::Connect(_) | SendError::Unsent(_) | SendError::Limit(_) => true,
            SendError::Http1(_) => false,
            SendError::Http2(e) => {
                use std::error::Error as _;
                let mut source = e.source();
                while let Some(s) = source {
                    if let Some(h2e) = s.downcast_ref::<h2::Error>() {
                        return h2e.reason() == Some(h2::Reason::REFUSED_STREAM);
                    }
                    source = s.source();
                }
                false
            }
        }
    }
}

// === impl ConnLimit ===

impl ConnLimit {
    /// A limit of `max` open connections.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(ConnLimit {
            open: AtomicUsize::new(0),
            max: max.max(1),
            pools: Mutex::new(Vec::new()),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn try_take(self: &Arc<Self>) -> Option<ConnSlot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnSlot(self.clone()))
    }

    /// A slot for a new connection, closing an idle one of the upstream if that makes room.
    fn acquire(self: &Arc<Self>) -> Result<ConnSlot, SendError> {
        if let Some(s) = self.try_take() {
            return Ok(s);
        }
        let pools: Vec<Arc<Http1Pool>> = self
            .pools
            .lock()
            .map(|p| p.iter().filter_map(Weak::upgrade).collect())
            .unwrap_or_default();
        for pool in pools {
            let evicted = pool.idle.lock().ok().and_then(|mut idle| {
                // The oldest: the likeliest to be closed by the upstream anyway.
                (!idle.is_empty()).then(|| idle.remove(0))
            });
            if let Some(conn) = evicted {
                drop(conn);
                if let Some(s) = self.try_take() {
                    return Ok(s);
                }
            }
        }
        Err(SendError::Limit(self.max))
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Connects to one fixed endpoint.
#[derive(Clone, Debug)]
pub struct Connector {
    address: Arc<Address>,
    timeout: Duration,
    /// TLS origination, when the upstream has `tls` (`Err`: configured but unusable).
    tls: Option<Result<Arc<ClientTls>, Arc<str>>>,
}

/// One endpoint of an upstream with its pooled connections.
#[derive(Debug)]
pub struct Endpoint {
    /// Where it is.
    pub address: Address,
    /// Printable address for errors and logs.
    pub label: String,
    /// `server.address` and `server.port` of client spans to it, encoded once.
    pub span_address: EncodedAttributes,
    /// Its label's id in access log records (`RequestRecord::context`).
    pub log_id: u64,
    connector: Connector,
    http1: Arc<Http1Pool>,
    http2: Arc<Http2Slot>,
    limit: Option<Arc<ConnLimit>>,
}

/// Idle HTTP/1.1 connections of one endpoint.
#[derive(Debug)]
struct Http1Pool {
    /// Itself, for the reaper it starts (which must not keep it alive).
    me: Weak<Http1Pool>,
    idle: Mutex<Vec<IdleConn>>,
    max_idle: usize,
    idle_timeout: Duration,
    reaper: AtomicBool,
}

#[derive(Debug)]
struct IdleConn {
    conn: h1::Conn,
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
    tx: http2::SendRequest<RequestBody>,
    last_used: Instant,
}

// === impl Connector ===

impl Connector {
    /// A connector for `address` bounded by `timeout`.
    pub fn new(address: Address, timeout: Duration) -> Self {
        Connector {
            address: Arc::new(address),
            timeout,
            tls: None,
        }
    }

    /// Opens a new connection (also used for TCP proxying, CONNECT tunnels and health probes):
    /// over TLS when the upstream has `tls`, offering no ALPN protocol.
    pub async fn connect(&self) -> Result<Io, ConnectError> {
        self.connect_alpn(Alpn::None).await
    }

    /// Opens a new connection, offering `alpn` when it is a TLS one. TCP connect and TLS
    /// handshake together are bounded by the connect timeout.
    pub async fn connect_alpn(&self, alpn: Alpn) -> Result<Io, ConnectError> {
        let tls = match &self.tls {
            None => return self.connect_plain().await,
            Some(Ok(tls)) => tls,
            Some(Err(why)) => return Err(ConnectError::Tls(HandshakeError::setup(why))),
        };
        let fut = async {
            let io = self.connect_plain().await?;
            let host = match &*self.address {
                Address::Tcp(sa) => sa.ip().to_string(),
                Address::Host { host, .. } => host.clone(),
                Address::Unix(_) => "localhost".to_owned(),
            };
            let s = tls.connect(io, &host, alpn).await?;
            Ok::<_, ConnectError>(Io::TlsClient(Box::new(s)))
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Timeout(self.timeout)),
        }
    }

    async fn connect_plain(&self) -> Result<Io, ConnectError> {
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
    /// The endpoint at `address`; opens no connection yet. `limit`: the upstream's
    /// `max_connections`, shared by its endpoints.
    pub fn new(
        address: Address,
        connect_timeout: Duration,
        pool: &Pool,
        limit: Option<Arc<ConnLimit>>,
    ) -> Self {
        let label = address.to_string();
        let endpoint = Endpoint {
            span_address: crate::trace::endpoint_attributes(&label),
            log_id: tandem_telemetry::access_log::context_id(),
            label,
            connector: Connector::new(address.clone(), connect_timeout),
            address,
            http1: Arc::new_cyclic(|me| Http1Pool {
                me: me.clone(),
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
            limit,
        };
        if let Some(l) = &endpoint.limit {
            if let Ok(mut pools) = l.pools.lock() {
                pools.push(Arc::downgrade(&endpoint.http1));
            }
        }
        endpoint
    }

    /// Connects over TLS with `tls` (origination; the upstream's `tls`).
    pub fn with_tls(mut self, tls: Option<Result<Arc<ClientTls>, Arc<str>>>) -> Self {
        self.connector.tls = tls;
        self
    }

    /// A slot for a new connection under the upstream's `max_connections` (none without one).
    pub fn connection_slot(&self) -> Result<Option<ConnSlot>, SendError> {
        self.limit.as_ref().map(ConnLimit::acquire).transpose()
    }

    /// The raw connector (TCP proxying, CONNECT tunnels).
    pub fn connector(&self) -> &Connector {
        &self.connector
    }

    /// Sends a request over HTTP/1.1 on a pooled or new connection: `head` serialized by
    /// [`h1::RequestHead::new`] (origin form, `Host` set by the caller), then `body`.
    pub async fn send_http1(
        &self,
        head: h1::RequestHead,
        body: RequestBody,
    ) -> Result<Response<ProxyBody>, SendError> {
        let mut exchange = h1::Exchange::with_head(head, body);
        let recycle: Arc<dyn h1::Recycle> = self.http1.clone();
        if let Some(conn) = self.http1.checkout() {
            match exchange.send(conn, true, recycle.clone()).await {
                Ok(res) => return Ok(res.map(ProxyBody::http1)),
                Err(failure) => match failure.retry {
                    Some(again) => exchange = again,
                    None => return Err(SendError::Http1(failure.error)),
                },
            }
        }
        // Boxed: connecting is the rare path, and inline it would widen every request's future
        // (moved on creation and kept per connection by hyper's server side).
        let slot = self.connection_slot()?;
        let io = Box::pin(self.connector.connect_alpn(Alpn::Http1)).await?;
        match exchange
            .send(h1::Conn::with_slot(io, slot), false, recycle)
            .await
        {
            Ok(res) => Ok(res.map(ProxyBody::http1)),
            Err(failure) if failure.unsent => Err(SendError::Unsent(failure.error)),
            Err(failure) => Err(SendError::Http1(failure.error)),
        }
    }

    /// Sends `req` over the endpoint's HTTP/2 connection, opening it when there is none. The URI
    /// must carry scheme and authority (they become `:scheme` and `:authority`).
    pub async fn send_http2(
        &self,
        req: Request<RequestBody>,
    ) -> Result<Response<ProxyBody>, SendError> {
        let (mut tx, refusal) = match self.http2.current() {
            Some(tx) => (tx, None),
            None => Box::pin(self.connect_http2()).await?,
        };
        match tx.send_request(req).await {
            Ok(res) => Ok(res.map(ProxyBody::http2)),
            Err(e) => {
                // A TLS 1.3 server refuses a client certificate after the client's handshake
                // finished; the alert reaches the connection task, not this request. Ask it.
                if let Some(rx) = refusal {
                    // Boxed: the rare path stays out of every request's future.
                    if let Ok(Ok(refused)) = Box::pin(tokio::time::timeout(REFUSAL_WAIT, rx)).await
                    {
                        return Err(SendError::Connect(ConnectError::Tls(refused)));
                    }
                }
                Err(SendError::Http2(e))
            }
        }
    }

    /// Opens the endpoint's HTTP/2 connection (or returns the one another request just opened);
    /// over TLS, the receiver says whether the server refused Tandem's certificate.
    async fn connect_http2(
        &self,
    ) -> Result<
        (
            http2::SendRequest<RequestBody>,
            Option<tokio::sync::oneshot::Receiver<HandshakeError>>,
        ),
        SendError,
    > {
        let _connecting = self.http2.connecting.lock().await;
        // Another request may have connected while this one waited.
        if let Some(tx) = self.http2.current() {
            return Ok((tx, None));
        }
        let slot = self.connection_slot()?;
        let io = self.connector.connect_alpn(Alpn::H2).await?;
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .adaptive_window(true)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(false)
            .handshake(TokioIo::new(io))
            .await?;
        let label = self.label.clone();
        let (refused_tx, refused_rx) = match &self.connector.tls {
            Some(_) => {
                let (t, r) = tokio::sync::oneshot::channel();
                (Some(t), Some(r))
            }
            None => (None, None),
        };
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(endpoint = %label, error = %e, "upstream HTTP/2 connection ended");
                if let (Some(t), Some(refused)) = (refused_tx, tls_refusal(&e)) {
                    let _ = t.send(refused);
                }
            }
            drop(slot);
        });
        self.http2.store(tx.clone());
        Ok((tx, refused_rx))
    }

    /// Idle HTTP/1.1 connections and whether an HTTP/2 connection is open (admin, tests).
    pub fn pooled(&self) -> (usize, bool) {
        let idle = self.http1.idle.lock().map(|v| v.len()).unwrap_or(0);
        (idle, self.http2.current().is_some())
    }
}

/// The TLS alert behind a failed HTTP/2 connection, if that is what ended it.
pub(crate) fn tls_refusal(e: &hyper::Error) -> Option<HandshakeError> {
    use std::error::Error as _;
    let mut source = e.source();
    while let Some(s) = source {
        // h2 keeps the I/O error of a failed connection behind `get_io`, not `source`.
        let io = s
            .downcast_ref::<io::Error>()
            .or_else(|| s.downcast_ref::<h2::Error>().and_then(h2::Error::get_io));
        if let Some(r) = io.and_then(HandshakeError::peer_refused) {
            return Some(r);
        }
        source = s.source();
    }
    None
}

// === impl Http1Pool ===

impl Http1Pool {
    /// The newest idle connection that is still open and within the idle timeout.
    fn checkout(&self) -> Option<h1::Conn> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(c) = idle.pop() {
            if c.since.elapsed() < self.idle_timeout && c.conn.is_usable() {
                return Some(c.conn);
            }
            // Closed or stale: dropped, which closes it.
        }
        None
    }

    fn put(&self, conn: h1::Conn) {
        if self.max_idle == 0 {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() >= self.max_idle {
                // The oldest is the likeliest to be closed by the upstream soon.
                idle.remove(0);
            }
            idle.push(IdleConn {
                conn,
                since: Instant::now(),
            });
        }
        if !self.reaper.swap(true, Ordering::Relaxed) {
            spawn_reaper(self.me.clone(), self.idle_timeout, |pool: &Self| {
                if let Ok(mut idle) = pool.idle.lock() {
                    // Oldest first: once one is fresh, so is every one above it.
                    let stale = idle
                        .iter()
                        .position(|c| c.since.elapsed() < pool.idle_timeout)
                        .unwrap_or(idle.len());
                    idle.drain(..stale);
                    idle.retain(|c| c.conn.is_usable());
                }
            });
        }
    }
}

impl h1::Recycle for Http1Pool {
    fn recycle(&self, conn: h1::Conn) {
        self.put(conn);
    }
}

// === impl Http2Slot ===

impl Http2Slot {
    fn current(&self) -> Option<http2::SendRequest<RequestBody>> {
        let mut slot = self.conn.lock().ok()?;
        match slot.as_mut() {
            Some(c) if !c.tx.is_closed() => {
                c.last_used = Instant::now();
                Some(c.tx.clone())
            }
            _ => None,
        }
    }

    fn store(self: &Arc<Self>, tx: http2::SendRequest<RequestBody>) {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Full};
    use hyper::client::conn::http1;
    use hyper::service::service_fn;
    use tokio::net::{TcpListener, TcpStream};

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

    /// A GET whose body is an [`Incoming`] (the only body type the pool sends; hyper makes those
    /// only for received messages): the body of a response from `via`.
    async fn get(via: std::net::SocketAddr) -> Request<RequestBody> {
        let io = TcpStream::connect(via).await.unwrap();
        let (mut tx, conn) = http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get("/")
            .header("host", "a")
            .body(Empty::new())
            .unwrap();
        let body = tx.send_request(req).await.unwrap().into_body();
        Request::get("/")
            .header("host", "a")
            .body(RequestBody::new(body, false, 0))
            .unwrap()
    }

    /// An endpoint whose upstream answers `fresh`, and a connection (`near`, with its upstream end
    /// `far`) to somewhere else, to be put in its pool as if idle.
    async fn endpoint_and_a_connection() -> (Endpoint, TcpStream, TcpStream) {
        let pool = Pool {
            idle_timeout: Duration::from_secs(60),
            max_idle_per_endpoint: 8,
        };
        let endpoint = Endpoint::new(
            Address::Tcp(server("fresh").await),
            Duration::from_secs(1),
            &pool,
            None,
        );
        let closing = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = TcpStream::connect(closing.local_addr().unwrap())
            .await
            .unwrap();
        let (far, _) = closing.accept().await.unwrap();
        (endpoint, near, far)
    }

    /// The keep-alive race, made deterministic: the upstream closes an idle pooled connection
    /// and Tandem reuses it before the close is seen (the runtime's reactor has not run since).
    /// The GET is written into the closed connection, nothing comes back, and since it is
    /// idempotent and bodiless it goes out again on a new connection: the caller gets the
    /// response, not an error.
    #[tokio::test]
    async fn get_on_a_connection_closed_while_idle_goes_out_on_a_new_one() {
        let (endpoint, near, far) = endpoint_and_a_connection().await;
        endpoint.http1.put(h1::Conn::new(Io::Tcp(near)));
        let req = get(server("").await).await;

        drop(far);
        let (parts, body) = req.into_parts();
        let head = h1::RequestHead::new(&parts, !http_body::Body::is_end_stream(&body));
        let res = endpoint
            .send_http1(head, body)
            .await
            .expect("sent on a new connection");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"fresh");
        assert_eq!(
            endpoint.pooled().0,
            1,
            "the new connection went back to the pool"
        );
    }

    /// A connection whose upstream closed while it sat idle (and the close was seen) is never
    /// handed out: the request goes straight to a new connection.
    #[tokio::test]
    async fn an_idle_connection_seen_closed_is_not_reused() {
        let (endpoint, near, far) = endpoint_and_a_connection().await;
        drop(far);
        let conn = h1::Conn::new(Io::Tcp(near));
        // Let the reactor deliver the close.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!conn.is_usable());
        endpoint.http1.put(conn);
        assert!(endpoint.http1.checkout().is_none());
    }
}
