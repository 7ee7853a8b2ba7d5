//! A small etcd v3 client over tonic: KV range/put/delete, watch, lease grant/keep-alive/revoke
//! and password authentication, failing over between the configured members.
//!
//! One channel to one member at a time. A call that fails for transport reasons (member down,
//! unreachable, no answer within the timeout) drops the channel and the next call connects to
//! the next member, so a dead member costs one failed call. Long-lived streams (watch,
//! keep-alive) carry `hasleader: true`, so a member cut off from the cluster's leader ends them
//! instead of going quiet, and HTTP/2 keep-alive pings (every 10 s of silence, within etcd's
//! ping policy) end them when the member stops answering.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::PathAndQuery;
use tandem_config::Etcd;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status, Streaming};

use super::proto::*;

/// Largest answer accepted: a range over a service with tens of thousands of instances is
/// several MiB (tonic's default limit is 4 MiB).
const MAX_MESSAGE: usize = 256 << 20;

/// HTTP/2 ping interval on a connection that received nothing meanwhile. etcd refuses pings
/// more frequent than its `--grpc-keepalive-min-time` (default 5 s): after three it closes the
/// connection (GOAWAY `too_many_pings`), which cut every quiet watch every ~8 s when this was
/// 2 s. Twice the default leaves room for timer slack.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// How long a ping may go unanswered before the connection (and its watches) count as dead:
/// with [`KEEPALIVE_INTERVAL`], a member that stops answering is noticed within 15 s.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No member could be reached.
    #[error("no etcd member reachable ({0})")]
    Unreachable(String),
    /// A member answered with an error.
    #[error("etcd: {0}")]
    Status(String),
    /// No answer within the configured timeout.
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    /// A stream ended or carried something unexpected.
    #[error("etcd: {0}")]
    Stream(String),
    /// A TLS file could not be read.
    #[error("etcd TLS: cannot read {path}: {source}")]
    TlsFile {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A cheap-to-clone handle on the etcd cluster.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<String>,
    timeout: Duration,
    auth: Option<(String, String)>,
    tls: Option<ClientTlsConfig>,
    conn: Mutex<Conn>,
}

#[derive(Default)]
struct Conn {
    next: usize,
    current: Option<Connected>,
}

#[derive(Clone)]
struct Connected {
    channel: Channel,
    token: Option<AsciiMetadataValue>,
    url: String,
}

/// An open watch: events for a key prefix from a revision on.
pub struct Watch {
    /// Keeps the request side open (closing it ends the watch).
    _tx: mpsc::Sender<WatchRequest>,
    stream: Streaming<WatchResponse>,
}

/// An open lease keep-alive stream.
pub struct KeepAlive {
    id: i64,
    tx: mpsc::Sender<LeaseKeepAliveRequest>,
    stream: Streaming<LeaseKeepAliveResponse>,
    /// A keep-alive was sent whose answer is still to be read (the one sent at open).
    sent: bool,
}

// === impl Client ===

impl Client {
    /// A client for `config`'s members; connects on first use. The password comes from the
    /// file or from the environment variable it names; TLS files are read now.
    pub fn new(config: &Etcd) -> Result<Client, Error> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|source| Error::TlsFile {
                path: p.display().to_string(),
                source,
            })
        };
        let tls = match &config.tls {
            Some(t) => {
                let mut c =
                    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&t.ca)?));
                if let Some((cert, key)) = &t.client {
                    c = c.identity(Identity::from_pem(read(cert)?, read(key)?));
                }
                if let Some(name) = &t.server_name {
                    c = c.domain_name(name.clone());
                }
                Some(c)
            }
            None => None,
        };
        let password = config.password.clone().or_else(|| {
            config
                .password_env
                .as_deref()
                .and_then(|v| std::env::var(v).ok())
        });
        let auth = config
            .username
            .clone()
            .map(|u| (u, password.unwrap_or_default()));
        Ok(Client {
            inner: Arc::new(Inner {
                endpoints: config.endpoints.clone(),
                timeout: config.timeout,
                auth,
                tls,
                conn: Mutex::new(Conn::default()),
            }),
        })
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// The member in use, if connected.
    pub fn current(&self) -> Option<String> {
        self.lock().current.as_ref().map(|c| c.url.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Conn> {
        self.inner.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the connection to the member in use; the next call tries the next member.
    pub fn reset(&self) {
        let mut c = self.lock();
        if c.current.take().is_some() {
            c.next += 1;
        }
    }

    async fn connected(&self) -> Result<Connected, Error> {
        if let Some(c) = self.lock().current.clone() {
            return Ok(c);
        }
        let n = self.inner.endpoints.len();
        let start = self.lock().next;
        let mut last = String::from("no endpoints configured");
        for k in 0..n {
            let idx = (start + k) % n;
            let url = &self.inner.endpoints[idx];
            match self.connect(url).await {
                Ok(c) => {
                    let mut conn = self.lock();
                    conn.next = idx;
                    conn.current = Some(c.clone());
                    tracing::debug!(member = %url, "connected to etcd");
                    return Ok(c);
                }
                Err(e) => {
                    tracing::debug!(member = %url, error = %e, "etcd member unreachable");
                    last = format!("{url}: {e}");
                }
            }
        }
        self.lock().next = start + 1;
        Err(Error::Unreachable(last))
    }

    async fn connect(&self, url: &str) -> Result<Connected, Error> {
        let t = self.inner.timeout;
        let mut endpoint =
            Endpoint::from_shared(url.to_owned()).map_err(|e| Error::Unreachable(e.to_string()))?;
        if let Some(tls) = &self.inner.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| Error::Unreachable(format!("TLS: {e}")))?;
        }
        let endpoint = endpoint
            .connect_timeout(t)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let channel = tokio::time::timeout(t, endpoint.connect())
            .await
            .map_err(|_| Error::Timeout(t))?
            .map_err(|e| Error::Unreachable(e.to_string()))?;
        let token = match &self.inner.auth {
            Some((name, password)) => {
                let req = AuthenticateRequest {
                    name: name.clone(),
                    password: password.clone(),
                };
                let res: AuthenticateResponse = call(
                    channel.clone(),
                    None,
                    "/etcdserverpb.Auth/Authenticate",
                    req,
                    t,
                )
                .await?;
                Some(
                    AsciiMetadataValue::try_from(res.token.as_str())
                        .map_err(|e| Error::Status(format!("unusable auth token: {e}")))?,
                )
            }
            None => None,
        };
        Ok(Connected {
            channel,
            token,
            url: url.to_owned(),
        })
    }

    /// A unary call, on the next member when the one in use fails for transport reasons.
    async fn unary<Req, Res>(&self, path: &'static str, req: Req) -> Result<Res, Error>
    where
        Req: prost::Message + Clone + Send + Sync + 'static,
        Res: prost::Message + Default + Send + Sync + 'static,
    {
        let mut last = None;
        for _ in 0..self.inner.endpoints.len().max(1) {
            let c = self.connected().await?;
            match call(c.channel, c.token, path, req.clone(), self.inner.timeout).await {
                Ok(r) => return Ok(r),
                Err(e) if retriable(&e) => {
                    self.reset();
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Unreachable("no endpoints".into())))
    }

    /// Every key under `prefix` and the store's revision.
    pub async fn range_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), Error> {
        let req = RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix.as_bytes()),
            limit: 0,
            revision: 0,
        };
        let res: RangeResponse = self.unary("/etcdserverpb.KV/Range", req).await?;
        let rev = res.header.map_or(0, |h| h.revision);
        Ok((res.kvs, rev))
    }

    /// Puts `key = value`, attached to `lease` (0: none).
    pub async fn put(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<(), Error> {
        let req = PutRequest {
            key: key.as_bytes().to_vec(),
            value,
            lease,
        };
        let _: PutResponse = self.unary("/etcdserverpb.KV/Put", req).await?;
        Ok(())
    }

    /// Deletes `key`.
    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        let req = DeleteRangeRequest {
            key: key.as_bytes().to_vec(),
            range_end: Vec::new(),
        };
        let _: DeleteRangeResponse = self.unary("/etcdserverpb.KV/DeleteRange", req).await?;
        Ok(())
    }

    /// Grants a lease of `ttl`; returns its id.
    pub async fn lease_grant(&self, ttl: Duration) -> Result<i64, Error> {
        let req = LeaseGrantRequest {
            ttl: ttl.as_secs().max(1) as i64,
            id: 0,
        };
        let res: LeaseGrantResponse = self.unary("/etcdserverpb.Lease/LeaseGrant", req).await?;
        if !res.error.is_empty() {
            return Err(Error::Status(res.error));
        }
        Ok(res.id)
    }

    /// Revokes lease `id`, deleting the keys attached to it.
    pub async fn lease_revoke(&self, id: i64) -> Result<(), Error> {
        let req = LeaseRevokeRequest { id };
        let _: LeaseRevokeResponse = self.unary("/etcdserverpb.Lease/LeaseRevoke", req).await?;
        Ok(())
    }

    /// Watches every key under `prefix` from revision `from` on.
    pub async fn watch(&self, prefix: &str, from: i64) -> Result<Watch, Error> {
        let c = self.connected().await?;
        let (tx, rx) = mpsc::channel(1);
        let create = WatchRequest {
            create_request: Some(WatchCreateRequest {
                key: prefix.as_bytes().to_vec(),
                range_end: prefix_end(prefix.as_bytes()),
                start_revision: from,
                progress_notify: true,
            }),
        };
        let _ = tx.send(create).await;
        let stream = match self
            .streaming(&c, "/etcdserverpb.Watch/Watch", ReceiverStream::new(rx))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                self.reset();
                return Err(e);
            }
        };
        Ok(Watch { _tx: tx, stream })
    }

    /// Opens a keep-alive stream for lease `id`.
    pub async fn keep_alive(&self, id: i64) -> Result<KeepAlive, Error> {
        let c = self.connected().await?;
        let (tx, rx) = mpsc::channel(1);
        // The first keep-alive goes out with the stream: etcd answers the stream's headers only
        // with its first response, so a stream opened empty waits for headers that never come
        // (every open timed out, and each lease expired after its TTL and was replaced).
        let _ = tx.send(LeaseKeepAliveRequest { id }).await;
        let stream = match self
            .streaming(
                &c,
                "/etcdserverpb.Lease/LeaseKeepAlive",
                ReceiverStream::new(rx),
            )
            .await
        {
            Ok(s) => s,
            Err(e) => {
                self.reset();
                return Err(e);
            }
        };
        Ok(KeepAlive {
            id,
            tx,
            stream,
            sent: true,
        })
    }

    async fn streaming<Req, Res>(
        &self,
        c: &Connected,
        path: &'static str,
        requests: ReceiverStream<Req>,
    ) -> Result<Streaming<Res>, Error>
    where
        Req: prost::Message + Send + Sync + 'static,
        Res: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc =
            tonic::client::Grpc::new(c.channel.clone()).max_decoding_message_size(MAX_MESSAGE);
        let t = self.inner.timeout;
        tokio::time::timeout(t, grpc.ready())
            .await
            .map_err(|_| Error::Timeout(t))?
            .map_err(|e| Error::Unreachable(e.to_string()))?;
        let mut req = Request::new(requests);
        if let Some(token) = &c.token {
            req.metadata_mut().insert("token", token.clone());
        }
        req.metadata_mut()
            .insert("hasleader", AsciiMetadataValue::from_static("true"));
        let codec = tonic_prost::ProstCodec::<Req, Res>::default();
        let res = tokio::time::timeout(
            t,
            grpc.streaming(req, PathAndQuery::from_static(path), codec),
        )
        .await
        .map_err(|_| Error::Timeout(t))?
        .map_err(status)?;
        Ok(res.into_inner())
    }
}

// === impl Watch ===

impl Watch {
    /// The next response; `Err` when the stream ended or failed.
    pub async fn next(&mut self) -> Result<WatchResponse, Error> {
        match self.stream.message().await {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(Error::Stream("watch stream ended".into())),
            Err(e) => Err(status(e)),
        }
    }
}

// === impl KeepAlive ===

impl KeepAlive {
    /// Refreshes the lease once; returns the TTL etcd granted (0: the lease is gone).
    pub async fn refresh(&mut self, timeout: Duration) -> Result<i64, Error> {
        if !std::mem::take(&mut self.sent) {
            self.tx
                .send(LeaseKeepAliveRequest { id: self.id })
                .await
                .map_err(|_| Error::Stream("keep-alive stream closed".into()))?;
        }
        match tokio::time::timeout(timeout, self.stream.message()).await {
            Err(_) => Err(Error::Timeout(timeout)),
            Ok(Ok(Some(r))) => Ok(r.ttl),
            Ok(Ok(None)) => Err(Error::Stream("keep-alive stream ended".into())),
            Ok(Err(e)) => Err(status(e)),
        }
    }
}

async fn call<Req, Res>(
    channel: Channel,
    token: Option<AsciiMetadataValue>,
    path: &'static str,
    req: Req,
    timeout: Duration,
) -> Result<Res, Error>
where
    Req: prost::Message + Send + Sync + 'static,
    Res: prost::Message + Default + Send + Sync + 'static,
{
    let fut = async move {
        let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(MAX_MESSAGE);
        grpc.ready()
            .await
            .map_err(|e| Error::Unreachable(e.to_string()))?;
        let mut req = Request::new(req);
        if let Some(token) = token {
            req.metadata_mut().insert("token", token);
        }
        let codec = tonic_prost::ProstCodec::<Req, Res>::default();
        grpc.unary(req, PathAndQuery::from_static(path), codec)
            .await
            .map(tonic::Response::into_inner)
            .map_err(status)
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| Error::Timeout(timeout))?
}

fn status(s: Status) -> Error {
    match s.code() {
        // Unauthenticated: the auth token expired (etcd's simple tokens last 5 minutes); a new
        // connection authenticates again.
        Code::Unavailable
        | Code::Unknown
        | Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Unauthenticated => Error::Unreachable(format!("{:?}: {}", s.code(), s.message())),
        _ => Error::Status(format!("{:?}: {}", s.code(), s.message())),
    }
}

/// Whether another member might answer where this one failed.
fn retriable(e: &Error) -> bool {
    matches!(e, Error::Unreachable(_) | Error::Timeout(_))
}

/// The end of the key range of every key starting with `prefix`: the prefix with its last
/// byte below 0xff incremented (etcd's `clientv3.GetPrefixRangeEnd`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.last_mut() {
        if *last < 0xff {
            *last += 1;
            return end;
        }
        end.pop();
    }
    // Every byte 0xff (or empty): the range to the end of the key space.
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Range ends follow etcd's rule, including the all-0xff edge.
    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/tandem/services/a/"), b"/tandem/services/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
