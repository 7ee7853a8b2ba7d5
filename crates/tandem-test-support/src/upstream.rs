//! A real HTTP/1.1 + h2c upstream for tests, with behaviour chosen by the path:
//!
//! | path | behaviour |
//! |---|---|
//! | `/echo...` | 200; body lists `version`, `method`, `uri` and each received header, one per line |
//! | `.../sleep/MS` | waits MS milliseconds, then 200 `slept` |
//! | `/status/N` | responds with status N |
//! | `/reset` | closes the connection without a response |
//! | anything else | 200 `ok` |
//!
//! It counts accepted and still-open connections and requests so tests can check pooling.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running test upstream; stops on drop.
pub struct Upstream {
    pub addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct Reset;

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reset requested")
    }
}

impl std::error::Error for Reset {}

impl Upstream {
    /// Starts the server on 127.0.0.1:0.
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (c, r, o) = (conns.clone(), requests.clone(), open.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let (r, o) = (r.clone(), o.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        r.fetch_add(1, Ordering::SeqCst);
                        handle(req)
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Upstream {
            addr,
            conns,
            open,
            requests,
            task,
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }

    /// Connections open now (accepted and not yet closed by either side).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Reset> {
    let path = req.uri().path().to_owned();
    if path == "/reset" {
        return Err(Reset);
    }
    if let Some(ms) = path.find("/sleep/").map(|i| &path[i + "/sleep/".len()..]) {
        let ms: u64 = ms.parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return Ok(Response::new(Full::new(Bytes::from_static(b"slept"))));
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        let mut res = Response::new(Full::new(Bytes::from(format!("status {status}"))));
        *res.status_mut() = status;
        return Ok(res);
    }
    if path.starts_with("/echo") {
        let mut out = format!(
            "version {:?}\nmethod {}\nuri {}\n",
            req.version(),
            req.method(),
            req.uri()
        );
        for (k, v) in req.headers() {
            out.push_str(&format!(
                "{}: {}\n",
                k,
                String::from_utf8_lossy(v.as_bytes())
            ));
        }
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        out.push_str(&format!("body-len {}\n", body.len()));
        return Ok(Response::new(Full::new(Bytes::from(out))));
    }
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}
