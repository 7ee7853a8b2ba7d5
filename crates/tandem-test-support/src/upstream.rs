//! A real HTTP/1.1 + h2c upstream for tests, with behaviour chosen by the path and by whole-server
//! modes the test sets at runtime.
//!
//! # Paths
//!
//! | path | behaviour |
//! |---|---|
//! | `/echo...` | 200; body lists `version`, `method`, `uri` and each received header, one per line |
//! | `.../sleep/MS` | waits MS milliseconds, then 200 `slept` |
//! | `/status/N` | responds with status N |
//! | `/reset` | closes the connection without a response (HTTP/2: resets the stream) |
//! | `/close-mid-body` | head with `content-length: 100000`, 4 KiB of body, then closes the connection (HTTP/2: resets the stream) |
//! | `/stream/N/MS` | 200 with N chunks `chunk I\n`: the first with the head, then one every MS milliseconds |
//! | `/body-len...` | reads the request body, answers its length in decimal; the body is kept for [`Upstream::bodies`] |
//! | `/healthz` | health check: the status set by [`Upstream::set_health`] (default 200), body `health N` |
//! | `/grpc.health.v1.Health/Check` | gRPC health: `HealthCheckResponse{status}` (SERVING unless [`Upstream::set_grpc_serving`]`(false)`), `grpc-status: 0` in trailers |
//! | anything else | 200 `ok` |
//!
//! # Modes and precedence
//!
//! Whole-server modes apply to every request whatever its path, in this order:
//! 1. The two health paths answer only to [`Upstream::set_health`] and [`Upstream::set_grpc_serving`]:
//!    no mode touches them, so traffic can fail while health checks pass, or the reverse. To make
//!    a server wholly unavailable, [`Upstream::kill`] it.
//! 2. Paths under a prefix passed to [`Upstream::exempt`] skip every mode and get their path
//!    behaviour (so a test can keep `/status/200` as a control while the rest fails).
//! 3. `/body-len` reads and records its body before any mode applies, so [`Upstream::bodies`]
//!    shows every attempt a retrying proxy made, failed ones included.
//! 4. [`Upstream::set_delay`] holds the request, then the first that is set wins:
//!    [`Upstream::set_reset`], [`Upstream::fail_next`], [`Upstream::set_status`],
//!    [`Upstream::set_grpc_status`]. None set: the path behaviour.
//!
//! `fail_next` is counted down when a request arrives, before the delay.
//!
//! # Counters
//!
//! Connections accepted and open, requests, requests per path, and health checks. Health checks are
//! counted apart and not in [`Upstream::requests`], so traffic shares are not skewed by them.
//! Counters and modes survive [`Upstream::kill`] and [`Upstream::restart`].
//!
//! # Limits
//!
//! Request bodies are read up to 16 MiB; the last 1024 `/body-len` bodies are kept; per-path counts
//! keep the first 4096 distinct paths. Every connection task, and every HTTP/2 stream task, is
//! tracked, so [`Upstream::kill`] and drop end them all at once.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::{JoinHandle, JoinSet};

use crate::lock;

#[cfg(test)]
mod tests;

/// The plain-HTTP health check path.
pub const HEALTH_PATH: &str = "/healthz";
/// The gRPC health check method's path.
pub const GRPC_HEALTH_PATH: &str = "/grpc.health.v1.Health/Check";

const MAX_BODY: usize = 16 << 20;
const MAX_BODIES: usize = 1024;
const MAX_PATHS: usize = 4096;
/// `/close-mid-body` announces this many bytes ...
const MID_BODY_ANNOUNCED: usize = 100_000;
/// ... and sends this many before closing.
const MID_BODY_SENT: usize = 4096;
/// How long [`Upstream::start_on`] and [`Upstream::restart`] retry a bind refused as in use.
const REBIND_FOR: Duration = Duration::from_secs(5);

/// The response body type: whole, streamed, or cut off by an error.
type Body = BoxBody<Bytes, Abort>;

/// A running test upstream; stops on drop, closing every connection.
pub struct Upstream {
    /// Where it listens; the same after [`Upstream::restart`].
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    /// The accept loop; `None` while killed.
    accept: Mutex<Option<JoinHandle<()>>>,
}

/// What the accept loop, connections and handlers share with the test.
struct Shared {
    conns: AtomicUsize,
    open: AtomicUsize,
    requests: AtomicUsize,
    health_checks: AtomicUsize,
    knobs: Mutex<Knobs>,
    per_path: Mutex<HashMap<String, usize>>,
    bodies: Mutex<VecDeque<Bytes>>,
    /// Connection tasks and the HTTP/2 stream tasks hyper spawns for them.
    tasks: Mutex<JoinSet<()>>,
}

/// The whole-server modes (see the module docs for precedence).
struct Knobs {
    delay: Duration,
    reset: bool,
    fail_next: usize,
    fail_status: StatusCode,
    status: Option<StatusCode>,
    grpc_status: Option<u32>,
    health: StatusCode,
    grpc_serving: bool,
    exempt: Vec<String>,
}

/// What a request gets, decided when it arrives.
enum Mode {
    Path,
    Reset,
    Status(StatusCode),
    Grpc(u32),
}

/// Ends a connection (HTTP/1) or stream (HTTP/2) without a complete response.
#[derive(Debug)]
struct Abort(&'static str);

/// Spawns hyper's HTTP/2 stream tasks into [`Shared::tasks`], so they end with the server.
#[derive(Clone)]
struct Exec(Arc<Shared>);

/// Counts a connection as closed however its task ends, aborted included.
struct OpenGuard(Arc<Shared>);

// === impl Upstream ===

impl Upstream {
    /// Starts the server on 127.0.0.1:0.
    pub async fn start() -> Upstream {
        Upstream::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts the server on `addr` (e.g. the address of an upstream dropped earlier). The socket
    /// has `SO_REUSEADDR`, and a bind refused as in use is retried for a few seconds.
    pub async fn start_on(addr: SocketAddr) -> Upstream {
        let listener = bind(addr).await;
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            conns: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            health_checks: AtomicUsize::new(0),
            knobs: Mutex::new(Knobs::default()),
            per_path: Mutex::new(HashMap::new()),
            bodies: Mutex::new(VecDeque::new()),
            tasks: Mutex::new(JoinSet::new()),
        });
        let accept = accept_loop(shared.clone(), listener);
        Upstream {
            addr,
            shared,
            accept: Mutex::new(Some(accept)),
        }
    }

    /// Like a killed process: stops listening (new connections are refused) and closes every
    /// open connection at once, in-flight requests included. Returns when all of that is done.
    /// Counters and modes are kept for [`Upstream::restart`].
    pub async fn kill(&self) {
        let accept = lock(&self.accept).take();
        if let Some(accept) = accept {
            accept.abort();
            let _ = accept.await;
        }
        // A connection task being aborted may still have spawned a stream task: repeat until none.
        loop {
            let mut tasks = std::mem::take(&mut *lock(&self.shared.tasks));
            if tasks.is_empty() {
                break;
            }
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
    }

    /// Kills the server if running, then listens on the same address again.
    pub async fn restart(&self) {
        self.kill().await;
        let listener = bind(self.addr).await;
        *lock(&self.accept) = Some(accept_loop(self.shared.clone(), listener));
    }

    /// Holds every request (health checks aside) this long before answering; zero to clear.
    pub fn set_delay(&self, delay: Duration) {
        lock(&self.shared.knobs).delay = delay;
    }

    /// Answers every request with `status` (body `status N`); `None` to clear.
    pub fn set_status(&self, status: Option<u16>) {
        lock(&self.shared.knobs).status = status.map(status_code);
    }

    /// The next `n` requests get `status` (body `status N`); then behaviour is as before.
    pub fn fail_next(&self, n: usize, status: u16) {
        let mut knobs = lock(&self.shared.knobs);
        knobs.fail_next = n;
        knobs.fail_status = status_code(status);
    }

    /// Closes the connection of every request without a response (HTTP/2: resets the stream).
    pub fn set_reset(&self, on: bool) {
        lock(&self.shared.knobs).reset = on;
    }

    /// Answers every request with a trailers-only gRPC response: 200, `content-type:
    /// application/grpc` and `grpc-status: N` in the head, no body; `None` to clear.
    pub fn set_grpc_status(&self, code: Option<u32>) {
        lock(&self.shared.knobs).grpc_status = code;
    }

    /// The status `/healthz` answers (default 200).
    pub fn set_health(&self, status: u16) {
        lock(&self.shared.knobs).health = status_code(status);
    }

    /// Whether the gRPC health service answers SERVING (default) or NOT_SERVING.
    pub fn set_grpc_serving(&self, serving: bool) {
        lock(&self.shared.knobs).grpc_serving = serving;
    }

    /// Requests whose path starts with `path_prefix` skip every whole-server mode.
    pub fn exempt(&self, path_prefix: &str) {
        lock(&self.shared.knobs).exempt.push(path_prefix.to_owned());
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.conns.load(Ordering::SeqCst)
    }

    /// Connections open now (accepted and not yet closed by either side).
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Requests received so far, health checks not included.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Requests received so far whose path starts with `path_prefix`, health checks not included;
    /// `requests_to("/")` equals [`Upstream::requests`].
    pub fn requests_to(&self, path_prefix: &str) -> usize {
        lock(&self.shared.per_path)
            .iter()
            .filter(|(path, _)| path.starts_with(path_prefix))
            .map(|(_, n)| n)
            .sum()
    }

    /// Requests to `/healthz` and to the gRPC health service so far.
    pub fn health_checks(&self) -> usize {
        self.shared.health_checks.load(Ordering::SeqCst)
    }

    /// The bodies `/body-len` received, oldest first (the last 1024).
    pub fn bodies(&self) -> Vec<Bytes> {
        lock(&self.shared.bodies).iter().cloned().collect()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let accept = self
            .accept
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(accept) = accept.take() {
            accept.abort();
        }
        lock(&self.shared.tasks).abort_all();
    }
}

// === impl Shared ===

impl Shared {
    /// Spawns a tracked task, first forgetting the finished ones so the set stays small.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut tasks = lock(&self.tasks);
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    fn count(&self, path: &str) {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let mut per_path = lock(&self.per_path);
        if let Some(n) = per_path.get_mut(path) {
            *n += 1;
        } else if per_path.len() < MAX_PATHS {
            per_path.insert(path.to_owned(), 1);
        }
    }

    /// Decides a request's mode on arrival (counting `fail_next` down) and the delay before it.
    fn mode(&self, path: &str) -> (Duration, Mode) {
        let mut knobs = lock(&self.knobs);
        if knobs.exempt.iter().any(|p| path.starts_with(p.as_str())) {
            return (Duration::ZERO, Mode::Path);
        }
        let mode = if knobs.reset {
            Mode::Reset
        } else if knobs.fail_next > 0 {
            knobs.fail_next -= 1;
            Mode::Status(knobs.fail_status)
        } else if let Some(status) = knobs.status {
            Mode::Status(status)
        } else if let Some(code) = knobs.grpc_status {
            Mode::Grpc(code)
        } else {
            Mode::Path
        };
        (knobs.delay, mode)
    }

    fn record(&self, body: Bytes) {
        let mut bodies = lock(&self.bodies);
        if bodies.len() == MAX_BODIES {
            bodies.pop_front();
        }
        bodies.push_back(body);
    }
}

// === impl Knobs ===

impl Default for Knobs {
    fn default() -> Knobs {
        Knobs {
            delay: Duration::ZERO,
            reset: false,
            fail_next: 0,
            fail_status: StatusCode::SERVICE_UNAVAILABLE,
            status: None,
            grpc_status: None,
            health: StatusCode::OK,
            grpc_serving: true,
            exempt: Vec::new(),
        }
    }
}

// === impl Abort ===

impl std::fmt::Display for Abort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Abort {}

// === impl Exec ===

impl<F> hyper::rt::Executor<F> for Exec
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn(async move {
            fut.await;
        });
    }
}

// === impl OpenGuard ===

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

// === serving ===

/// Binds with `SO_REUSEADDR` (inherited by accepted sockets, so their TIME_WAIT does not block a
/// rebind), retrying a bind refused as in use.
async fn bind(addr: SocketAddr) -> TcpListener {
    let deadline = tokio::time::Instant::now() + REBIND_FOR;
    loop {
        match try_bind(addr) {
            Ok(listener) => return listener,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                if tokio::time::Instant::now() > deadline {
                    panic!("cannot bind {addr}: {e}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot bind {addr}: {e}"),
        }
    }
}

fn try_bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn accept_loop(shared: Arc<Shared>, listener: TcpListener) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // Out of file descriptors and the like: do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            shared.conns.fetch_add(1, Ordering::SeqCst);
            shared.open.fetch_add(1, Ordering::SeqCst);
            let guard = OpenGuard(shared.clone());
            let conn = shared.clone();
            shared.spawn(async move {
                let _guard = guard;
                let handler = conn.clone();
                let svc = service_fn(move |req| handle(handler.clone(), req));
                let _ = auto::Builder::new(Exec(conn))
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

async fn handle(shared: Arc<Shared>, mut req: Request<Incoming>) -> Result<Response<Body>, Abort> {
    let path = req.uri().path().to_owned();
    if path == HEALTH_PATH || path == GRPC_HEALTH_PATH {
        shared.health_checks.fetch_add(1, Ordering::SeqCst);
        return health(&shared, req).await;
    }
    shared.count(&path);
    let (delay, mode) = shared.mode(&path);
    let body_len = if path.starts_with("/body-len") {
        let body = read_body(req.body_mut()).await?;
        let len = body.len();
        shared.record(body);
        Some(len)
    } else {
        None
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match mode {
        Mode::Path => {}
        Mode::Reset => return Err(Abort("reset requested")),
        Mode::Status(status) => return Ok(status_response(status)),
        Mode::Grpc(code) => return Ok(grpc_trailers_only(code)),
    }
    if let Some(len) = body_len {
        return Ok(text(len.to_string()));
    }
    by_path(&path, req).await
}

/// The path behaviours of the table in the module docs.
async fn by_path(path: &str, req: Request<Incoming>) -> Result<Response<Body>, Abort> {
    if path == "/reset" {
        return Err(Abort("reset requested"));
    }
    if path == "/close-mid-body" {
        return Ok(close_mid_body());
    }
    if let Some(ms) = path.find("/sleep/").map(|i| &path[i + "/sleep/".len()..]) {
        let ms: u64 = ms.parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return Ok(text("slept"));
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        return Ok(status_response(status));
    }
    if let Some(spec) = path.strip_prefix("/stream/") {
        let parsed = spec
            .split_once('/')
            .and_then(|(n, ms)| Some((n.parse().ok()?, ms.parse().ok()?)));
        return Ok(match parsed {
            Some((n, ms)) => stream(n, Duration::from_millis(ms)),
            None => status_response(StatusCode::BAD_REQUEST),
        });
    }
    if path.starts_with("/echo") {
        return echo(req).await;
    }
    Ok(text("ok"))
}

async fn echo(mut req: Request<Incoming>) -> Result<Response<Body>, Abort> {
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
    let body = read_body(req.body_mut()).await.unwrap_or_default();
    out.push_str(&format!("body-len {}\n", body.len()));
    Ok(text(out))
}

async fn health(shared: &Shared, mut req: Request<Incoming>) -> Result<Response<Body>, Abort> {
    let (health, serving) = {
        let knobs = lock(&shared.knobs);
        (knobs.health, knobs.grpc_serving)
    };
    if req.uri().path() == HEALTH_PATH {
        let mut res = Response::new(full(format!("health {}", health.as_u16())));
        *res.status_mut() = health;
        return Ok(res);
    }
    // The request (a length-prefixed `HealthCheckRequest`) is read but its service name ignored.
    read_body(req.body_mut()).await?;
    // HealthCheckResponse: field 1 (`status`, varint) = SERVING (1) or NOT_SERVING (2), behind
    // gRPC's prefix: not compressed, 2 bytes long.
    let status = if serving { 1 } else { 2 };
    let message = Bytes::copy_from_slice(&[0, 0, 0, 0, 2, 0x08, status]);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames = [Frame::data(message), Frame::trailers(trailers)];
    let body = StreamBody::new(futures_util::stream::iter(frames.map(Ok)));
    let mut res = Response::new(BodyExt::boxed(body));
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    Ok(res)
}

async fn read_body(body: &mut Incoming) -> Result<Bytes, Abort> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(_) => Err(Abort("request body unreadable or over 16 MiB")),
    }
}

fn close_mid_body() -> Response<Body> {
    let frames = futures_util::stream::unfold(0u8, |step| async move {
        match step {
            0 => Some((Ok(Frame::data(Bytes::from(vec![b'x'; MID_BODY_SENT]))), 1)),
            1 => {
                // Let the data go out before the error closes the connection.
                tokio::time::sleep(Duration::from_millis(20)).await;
                Some((Err(Abort("closed mid-body")), 2))
            }
            _ => None,
        }
    });
    let mut res = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    res.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(MID_BODY_ANNOUNCED));
    res
}

fn stream(chunks: usize, every: Duration) -> Response<Body> {
    let frames = futures_util::stream::unfold(0usize, move |i| async move {
        if i == chunks {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(every).await;
        }
        let chunk = Frame::data(Bytes::from(format!("chunk {i}\n")));
        Some((Ok(chunk), i + 1))
    });
    Response::new(BodyExt::boxed(StreamBody::new(frames)))
}

fn grpc_trailers_only(code: u32) -> Response<Body> {
    let mut res = Response::new(full(Bytes::new()));
    let headers = res.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(code));
    res
}

fn status_response(status: StatusCode) -> Response<Body> {
    let mut res = Response::new(full(format!("status {}", status.as_u16())));
    *res.status_mut() = status;
    res
}

fn text(body: impl Into<Bytes>) -> Response<Body> {
    Response::new(full(body))
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// A status the test gave; a bad one is a bug in the test.
fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or_else(|_| panic!("not an HTTP status: {status}"))
}
