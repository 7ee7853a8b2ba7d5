//! The upstream's paths, modes and lifecycle, seen by a real hyper client or raw TCP.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{Upstream, GRPC_HEALTH_PATH, HEALTH_PATH};
use crate::assert_eventually;

type TestClient = Client<HttpConnector, Full<Bytes>>;

fn http1() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn h2c() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

async fn send(client: &TestClient, method: Method, url: String, body: &'static [u8]) -> Answer {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::from_static(body)))
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("response in time")
        .expect("response");
    let status = res.status();
    let headers = res.headers().clone();
    let collected = res.into_body().collect().await.expect("whole body");
    let trailers = collected.trailers().cloned();
    Answer {
        status,
        headers,
        body: collected.to_bytes(),
        trailers,
    }
}

async fn get(up: &Upstream, path: &str) -> Answer {
    send(
        &http1(),
        Method::GET,
        format!("http://{}{path}", up.addr),
        b"",
    )
    .await
}

/// Writes `request` on a new connection and reads until the server closes it (or 5 s pass).
async fn raw(up: &Upstream, request: &str) -> std::io::Result<Vec<u8>> {
    let mut conn = TcpStream::connect(up.addr).await?;
    conn.write_all(request.as_bytes()).await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut out))
        .await
        .expect("server closed in time")?;
    Ok(out)
}

/// The path behaviours that predate the modes still hold.
#[tokio::test]
async fn paths_answer_as_documented() {
    let up = Upstream::start().await;
    let echo = get(&up, "/echo/x?y=1").await;
    let text = String::from_utf8_lossy(&echo.body).into_owned();
    assert!(text.contains("method GET\nuri /echo/x?y=1\n"), "{text}");
    let teapot = get(&up, "/status/418").await;
    assert_eq!(
        (teapot.status, &teapot.body[..]),
        (StatusCode::IM_A_TEAPOT, &b"status 418"[..])
    );
    assert_eq!(&get(&up, "/a/sleep/10").await.body[..], b"slept");
    assert_eq!(&get(&up, "/anything").await.body[..], b"ok");
    assert_eq!(up.requests(), 4);
}

/// `set_delay` holds every response at least that long, and clearing it stops that.
#[tokio::test]
async fn delay_holds_every_response() {
    let up = Upstream::start().await;
    up.set_delay(Duration::from_millis(200));
    for path in ["/", "/status/500"] {
        let started = Instant::now();
        get(&up, path).await;
        assert!(started.elapsed() >= Duration::from_millis(200), "{path}");
    }
    up.set_delay(Duration::ZERO);
    let started = Instant::now();
    assert_eq!(&get(&up, "/").await.body[..], b"ok");
    assert!(started.elapsed() < Duration::from_millis(200));
}

/// `set_status` overrides every path, except exempt ones, until cleared.
#[tokio::test]
async fn status_overrides_paths_until_cleared() {
    let up = Upstream::start().await;
    up.set_status(Some(503));
    for path in ["/", "/echo", "/status/200"] {
        let a = get(&up, path).await;
        assert_eq!(
            (a.status, &a.body[..]),
            (StatusCode::SERVICE_UNAVAILABLE, &b"status 503"[..])
        );
    }
    up.exempt("/status/");
    assert_eq!(get(&up, "/status/200").await.status, StatusCode::OK);
    assert_eq!(get(&up, "/").await.status, StatusCode::SERVICE_UNAVAILABLE);
    up.set_status(None);
    assert_eq!(&get(&up, "/").await.body[..], b"ok");
}

/// `fail_next(n, s)` fails exactly the next n requests, over HTTP/1.1 and HTTP/2 alike.
#[tokio::test]
async fn fail_next_fails_exactly_n() {
    let up = Upstream::start().await;
    for client in [http1(), h2c()] {
        up.fail_next(3, 502);
        let mut seen = Vec::new();
        for _ in 0..5 {
            let url = format!("http://{}/", up.addr);
            seen.push(send(&client, Method::GET, url, b"").await.status.as_u16());
        }
        assert_eq!(seen, [502, 502, 502, 200, 200]);
    }
}

/// `set_reset` closes the connection without a response, whatever the path, until cleared.
#[tokio::test]
async fn reset_closes_without_a_response() {
    let up = Upstream::start().await;
    up.set_reset(true);
    let out = raw(&up, "GET /status/200 HTTP/1.1\r\nhost: a\r\n\r\n").await;
    assert!(
        out.map_or(true, |bytes| bytes.is_empty()),
        "no response bytes"
    );
    let req = Request::get(format!("http://{}/", up.addr))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert!(http1().request(req).await.is_err());
    up.set_reset(false);
    assert_eq!(&get(&up, "/").await.body[..], b"ok");
    assert_eq!(up.requests(), 3);
}

/// `set_grpc_status` answers a trailers-only gRPC response: the status in the head, no body.
#[tokio::test]
async fn grpc_status_is_trailers_only() {
    let up = Upstream::start().await;
    up.set_grpc_status(Some(14));
    let url = format!("http://{}/pkg.Svc/Method", up.addr);
    let a = send(&h2c(), Method::POST, url, &[0, 0, 0, 0, 0]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["grpc-status"], "14");
    assert_eq!(a.headers["content-type"], "application/grpc");
    assert!(a.body.is_empty());
    up.set_grpc_status(None);
    assert!(!get(&up, "/").await.headers.contains_key("grpc-status"));
}

/// `/healthz` answers `set_health`'s status, ignores the modes, and counts apart from requests.
#[tokio::test]
async fn healthz_follows_set_health_and_is_counted_apart() {
    let up = Upstream::start().await;
    assert_eq!(get(&up, HEALTH_PATH).await.status, StatusCode::OK);
    up.set_health(503);
    up.set_status(Some(500));
    assert_eq!(
        get(&up, HEALTH_PATH).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    up.set_health(200);
    up.set_reset(true);
    assert_eq!(get(&up, HEALTH_PATH).await.status, StatusCode::OK);
    assert_eq!((up.health_checks(), up.requests()), (3, 0));
    assert_eq!(up.requests_to("/"), 0);
}

/// The gRPC health service answers a decodable `HealthCheckResponse` with `grpc-status: 0` in
/// trailers: SERVING, then NOT_SERVING after `set_grpc_serving(false)`.
#[tokio::test]
async fn grpc_health_answers_serving_then_not_serving() {
    let up = Upstream::start().await;
    let client = h2c();
    let url = format!("http://{}{GRPC_HEALTH_PATH}", up.addr);
    let mut statuses = Vec::new();
    for serving in [true, false] {
        up.set_grpc_serving(serving);
        let a = send(&client, Method::POST, url.clone(), &[0, 0, 0, 0, 0]).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.headers["content-type"], "application/grpc");
        assert_eq!(a.trailers.expect("trailers")["grpc-status"], "0");
        statuses.push(health_status(&a.body));
    }
    assert_eq!(statuses, [1, 2], "SERVING, then NOT_SERVING");
    assert_eq!((up.health_checks(), up.requests()), (2, 0));
}

/// Decodes one length-prefixed `HealthCheckResponse` and returns its `status`.
fn health_status(body: &[u8]) -> u64 {
    assert_eq!(body[0], 0, "not compressed");
    let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
    let message = &body[5..];
    assert_eq!(message.len(), len);
    assert_eq!(message[0], 0x08, "field 1, varint");
    assert!(message[1] < 0x80, "one-byte varint");
    u64::from(message[1])
}

/// `/close-mid-body` announces 100000 bytes, sends a few KiB and closes the connection.
#[tokio::test]
async fn close_mid_body_cuts_the_response() {
    let up = Upstream::start().await;
    let out = raw(&up, "GET /close-mid-body HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .expect("read");
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    let head = String::from_utf8_lossy(&out[..split]).to_lowercase();
    assert!(head.contains("content-length: 100000"), "{head}");
    let body = out.len() - split;
    assert!((4096..100_000).contains(&body), "{body} body bytes");

    let req = Request::get(format!("http://{}/close-mid-body", up.addr))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = http1().request(req).await.expect("a head");
    assert!(res.into_body().collect().await.is_err(), "the body breaks");
}

/// `/stream/N/MS` sends N chunks, MS milliseconds apart.
#[tokio::test]
async fn stream_sends_chunks_apart() {
    let up = Upstream::start().await;
    let req = Request::get(format!("http://{}/stream/3/100", up.addr))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let mut body = http1().request(req).await.unwrap().into_body();
    let mut chunks = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            chunks.push((Instant::now(), data));
        }
    }
    let text: Vec<u8> = chunks.iter().flat_map(|(_, d)| d.to_vec()).collect();
    assert_eq!(text, b"chunk 0\nchunk 1\nchunk 2\n");
    assert_eq!(chunks.len(), 3, "one frame per chunk");
    for pair in chunks.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(gap >= Duration::from_millis(90), "{gap:?} between chunks");
    }
}

/// `/body-len` answers each body's length and keeps the bodies, failed attempts included.
#[tokio::test]
async fn body_len_answers_and_records_bodies() {
    let up = Upstream::start().await;
    let url = format!("http://{}/body-len", up.addr);
    let a = send(&http1(), Method::POST, url.clone(), b"hello").await;
    assert_eq!(&a.body[..], b"5");
    up.fail_next(1, 503);
    let a = send(&h2c(), Method::POST, url.clone(), &[7; 3000]).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    let a = send(&h2c(), Method::POST, url, &[7; 3000]).await;
    assert_eq!(&a.body[..], b"3000");
    let bodies = up.bodies();
    assert_eq!(bodies.len(), 3);
    assert_eq!(&bodies[0][..], b"hello");
    assert_eq!(&bodies[1][..], &[7; 3000][..]);
    assert_eq!(bodies[1], bodies[2]);
}

/// `requests_to` counts by path prefix; together they add up to `requests`.
#[tokio::test]
async fn requests_to_counts_by_prefix() {
    let up = Upstream::start().await;
    for path in ["/a/1", "/a/2", "/a/2", "/b", HEALTH_PATH] {
        get(&up, path).await;
    }
    assert_eq!(up.requests_to("/a/"), 3);
    assert_eq!(up.requests_to("/a/2"), 2);
    assert_eq!(up.requests_to("/b"), 1);
    assert_eq!(up.requests_to("/c"), 0);
    assert_eq!(up.requests_to("/"), up.requests());
    assert_eq!(up.requests(), 4);
}

/// `kill` breaks an open connection mid-request and refuses new ones; `restart` serves again on
/// the same port at once, counters kept.
#[tokio::test]
async fn kill_breaks_connections_and_restart_serves_again() {
    let up = Upstream::start().await;
    assert_eq!(&get(&up, "/").await.body[..], b"ok");
    let mut open = TcpStream::connect(up.addr).await.unwrap();
    open.write_all(b"GET /sleep/10000 HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eventually!(up.requests() == 2);

    up.kill().await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(2), open.read(&mut buf))
        .await
        .expect("the open connection is closed, not left hanging");
    assert!(matches!(read, Ok(0) | Err(_)), "no response: {read:?}");
    let refused = TcpStream::connect(up.addr).await;
    assert_eq!(
        refused.expect_err("refused").kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    assert_eq!(up.open_connections(), 0);

    up.restart().await;
    assert_eq!(&get(&up, "/").await.body[..], b"ok");
    assert_eq!(up.requests(), 3);
    assert_eq!(up.connections(), 3);
}

/// `kill` also ends an HTTP/2 connection with a request in flight.
#[tokio::test]
async fn kill_breaks_http2_requests_in_flight() {
    let up = Upstream::start().await;
    let client = h2c();
    let req = Request::get(format!("http://{}/sleep/10000", up.addr))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let pending = tokio::spawn(client.request(req));
    assert_eventually!(up.requests() == 1);
    up.kill().await;
    let res = tokio::time::timeout(Duration::from_secs(2), pending)
        .await
        .expect("the request fails in time")
        .unwrap();
    assert!(res.is_err(), "no response");
}

/// `start_on` binds a given address, e.g. one a dropped upstream used.
#[tokio::test]
async fn start_on_reuses_an_address() {
    let first = Upstream::start().await;
    let addr = first.addr;
    assert_eq!(&get(&first, "/").await.body[..], b"ok");
    drop(first);
    let second = Upstream::start_on(addr).await;
    assert_eq!(second.addr, addr);
    assert_eq!(&get(&second, "/").await.body[..], b"ok");
    assert_eq!(second.requests(), 1, "counters start afresh");
}

/// Dropping the upstream closes its open connections.
#[tokio::test]
async fn drop_closes_open_connections() {
    let up = Upstream::start().await;
    let mut open = TcpStream::connect(up.addr).await.unwrap();
    open.write_all(b"GET /sleep/10000 HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eventually!(up.requests() == 1);
    drop(up);
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(2), open.read(&mut buf))
        .await
        .expect("closed, not left hanging");
    assert!(matches!(read, Ok(0) | Err(_)), "no response: {read:?}");
}
