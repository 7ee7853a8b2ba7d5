//! The upstream connection pool (`tandem_proxy::pool`) seen from outside: real sockets, the real
//! app, a real hyper upstream or a raw TCP one that misbehaves on purpose.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tandem_test_support::upstream::Upstream;
use tandem_test_support::{assert_eventually, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

fn config(endpoint: &str, protocol: &str, pool: &str) -> String {
    format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
listeners:
  inbound:
    address: "127.0.0.1:0"
    upstream: app
upstreams:
  app:
    endpoints: ["{endpoint}"]
    protocol: {protocol}
    pool: {pool}
"#
    )
}

async fn get(client: &TestClient, url: &str) -> (StatusCode, String) {
    let res = tokio::time::timeout(Duration::from_secs(10), client.get(url.parse().unwrap()))
        .await
        .expect("response in time")
        .expect("response");
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// An upstream that answers one request per connection with keep-alive semantics and then closes
/// the connection without saying so (no `connection: close`), as an app's keep-alive timeout
/// does. Returns its address and the number of connections it accepted.
async fn closes_after_each_response() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                // Closed at once: the proxy may still have the connection in its pool.
            });
        }
    });
    (addr, accepted)
}

/// An app that closes every keep-alive connection right after its response never causes a 502:
/// a pooled connection found closed before the request was written is replaced by a new one.
#[tokio::test]
async fn upstream_closing_idle_connections_is_not_an_error() {
    let (addr, accepted) = closes_after_each_response().await;
    let proxy = TestProxy::start(&config(&addr, "http1", "{}")).await;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("http://{}/", proxy.addr("inbound"));
    for i in 0..30 {
        let (status, body) = get(&client, &url).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "ok"),
            "request {i}"
        );
        // Give the close time to arrive on some iterations only, so both the "seen closed in the
        // pool" and the "closed under the request" paths are exercised.
        if i % 3 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        30,
        "one connection per request"
    );
}

/// Idle pooled connections are closed after `pool.idle_timeout`.
#[tokio::test]
async fn idle_connections_close_after_the_idle_timeout() {
    let up = Upstream::start().await;
    let proxy = TestProxy::start(&config(
        &up.addr.to_string(),
        "http1",
        "{ idle_timeout: 300ms }",
    ))
    .await;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let (status, _) = get(&client, &format!("http://{}/", proxy.addr("inbound"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(up.open_connections(), 1, "kept for reuse");
    assert_eventually!(up.open_connections() == 0, Duration::from_secs(3));
}

/// After a burst, at most `pool.max_idle_per_endpoint` connections stay open.
#[tokio::test]
async fn at_most_max_idle_connections_stay_open() {
    let up = Upstream::start().await;
    let proxy = TestProxy::start(&config(
        &up.addr.to_string(),
        "http1",
        "{ max_idle_per_endpoint: 2 }",
    ))
    .await;
    // One client connection per request, so the burst needs ten upstream connections.
    let url = format!("http://{}/sleep/200", proxy.addr("inbound"));
    let burst = (0..10).map(|_| {
        let url = url.clone();
        async move {
            let client: TestClient = Client::builder(TokioExecutor::new()).build_http();
            get(&client, &url).await
        }
    });
    for (status, body) in futures_util::future::join_all(burst).await {
        assert_eq!((status, body.as_str()), (StatusCode::OK, "slept"));
    }
    assert_eq!(up.connections(), 10);
    assert_eventually!(up.open_connections() == 2, Duration::from_secs(3));
}

/// Concurrent HTTP/2 requests on a cold endpoint open one connection, not one each.
#[tokio::test]
async fn http2_cold_start_opens_one_connection() {
    let up = Upstream::start().await;
    let proxy = TestProxy::start(&config(&up.addr.to_string(), "http2", "{}")).await;
    let client: TestClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let url = format!("http://{}/sleep/50", proxy.addr("inbound"));
    let many = (0..32).map(|_| get(&client, &url));
    for (status, _) in futures_util::future::join_all(many).await {
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(up.connections(), 1, "one multiplexed upstream connection");
}

/// A response body dropped half-way (the client went away) closes that upstream connection
/// instead of returning it to the pool with unread bytes; the next request still works.
#[tokio::test]
async fn abandoned_response_body_does_not_poison_the_pool() {
    let up = Upstream::start().await;
    let proxy = TestProxy::start(&config(&up.addr.to_string(), "http1", "{}")).await;
    let inbound = proxy.addr("inbound");
    // A raw client that reads only the response head, then hangs up.
    let mut s = tokio::net::TcpStream::connect(inbound).await.unwrap();
    s.write_all(b"GET /sleep/0 HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let _ = s.read(&mut buf).await.unwrap();
    drop(s);
    let client: TestClient = Client::builder(TokioExecutor::new()).build_http();
    for _ in 0..5 {
        let (status, body) = get(&client, &format!("http://{inbound}/echo")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.starts_with("version HTTP/1.1"), "{body}");
    }
}
