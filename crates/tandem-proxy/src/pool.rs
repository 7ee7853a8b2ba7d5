//! Upstream connections: a connector per endpoint (TCP or Unix socket, bounded by the connect
//! timeout) and pooled clients on top of it.
//!
//! Each endpoint owns one HTTP/1.1 client (keep-alive pool) and one HTTP/2 client (one multiplexed
//! connection), so the pool key is effectively (endpoint, protocol). Connections are created
//! lazily on first use. The clients come from `hyper-util`'s pooled client; this module only
//! decides where to connect and how to report failures.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tandem_config::{Address, Pool};

use crate::listen::Io;

/// A pooled HTTP client bound to one endpoint.
pub type EndpointClient = Client<Connector, Incoming>;

/// Why a connection attempt failed; the error source the client hands back on `is_connect()`.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No connection within the connect timeout.
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    /// The OS refused or failed the connection.
    #[error("connect failed: {0}")]
    Io(#[from] io::Error),
}

/// Connects to one fixed endpoint, whatever URI the client asks for.
#[derive(Clone, Debug)]
pub struct Connector {
    address: Arc<Address>,
    timeout: Duration,
}

/// One endpoint of an upstream with its pooled clients.
#[derive(Debug)]
pub struct Endpoint {
    /// Where it is.
    pub address: Address,
    /// Printable address for errors and logs.
    pub label: String,
    /// HTTP/1.1 keep-alive pool.
    pub http1: EndpointClient,
    /// HTTP/2 (prior knowledge) multiplexed connection.
    pub http2: EndpointClient,
    connector: Connector,
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

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Io>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<TokioIo<Io>, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _dst: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect().await.map(TokioIo::new) })
    }
}

impl Connection for Io {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

// === impl Endpoint ===

impl Endpoint {
    /// Builds the clients for one endpoint; opens no connection yet.
    pub fn new(address: Address, connect_timeout: Duration, pool: &Pool) -> Self {
        let connector = Connector::new(address.clone(), connect_timeout);
        let mut b = Client::builder(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(pool.idle_timeout)
            .pool_max_idle_per_host(pool.max_idle_per_endpoint)
            // Tandem writes Host itself from the downstream request; the URI authority only keys
            // the pool.
            .set_host(false);
        let http1 = b.clone().build(connector.clone());
        let mut b2 = b;
        b2.http2_only(true)
            .http2_adaptive_window(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .http2_keep_alive_while_idle(false);
        let http2 = b2.build(connector.clone());
        Endpoint {
            label: address.to_string(),
            address,
            http1,
            http2,
            connector,
        }
    }

    /// The raw connector (TCP proxying, CONNECT tunnels).
    pub fn connector(&self) -> &Connector {
        &self.connector
    }
}
