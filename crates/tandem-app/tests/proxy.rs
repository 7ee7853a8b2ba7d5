//! In-process integration tests: the real `App` on port 0, real sockets, a real hyper upstream
//! and a hyper client. End-to-end tests with curl, grpcio, httpx and websockets against the real
//! binary live in `tests/e2e/`.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tandem_test_support::upstream::Upstream;
use tandem_test_support::{assert_eventually, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type H1Client = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

fn h1() -> H1Client {
    Client::builder(TokioExecutor::new()).build_http()
}

fn h2() -> H1Client {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

async fn get(client: &H1Client, url: String) -> (StatusCode, http::HeaderMap, String) {
    let res = tokio::time::timeout(Duration::from_secs(10), client.get(url.parse().unwrap()))
        .await
        .expect("response in time")
        .expect("response");
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn config(upstream: &str, extra_upstreams: &str) -> String {
    format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
drain_timeout: 10s
listeners:
  inbound:
    address: "127.0.0.1:0"
    direction: inbound
    upstream: app
    routes:
      - name: slow
        match: {{ path: {{ prefix: /slowroute }} }}
        upstream: app
        timeout: 300ms
      - name: api
        match: {{ path: {{ prefix: /api }} }}
        upstream: app
  outbound:
    address: "127.0.0.1:0"
    direction: outbound
    forward_proxy: true
    routes:
      - match: {{ path: {{ exact: /only }} }}
        upstream: app
upstreams:
  app:
    endpoints: ["{upstream}"]
    protocol: auto
    connect_timeout: 500ms
{extra_upstreams}
"#
    )
}

/// HTTP/1.1 requests reach the upstream over one pooled keep-alive connection.
#[tokio::test]
async fn http1_forwards_and_pools() {
    let up = Upstream::start().await;
    let proxy = TestProxy::start(&config(&up.addr.to_string(), "")).await;
    let client = h1();
    for _ in 0..20 {
        let (status, _, body) =
            get(&client, format!("http://{}/api/x", proxy.addr("inbound"))).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    }
    assert_eq!(up.requests(), 20);
    assert_eq!(up.connections(), 1, "upstream connection is reused");
    assert_eq!(proxy.terminate().await, 0);
}

/// `auto` keeps the downstream version; HTTP/2 streams are multiplexed on one connection.
#[tokio::test]
async fn http2_downstream_uses_http2_upstream_with_auto() {
    let up = Upstream::start().await;
    let proxy = TestProxy::start(&config(&up.addr.to_string(), "")).await;
    let client = h2();
    let url = format!("http://{}/echo", proxy.addr("inbound"));
    let (status, _, body) = get(&client, url.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("version HTTP/2.0"), "{body}");
    let many = (0..32).map(|_| get(&client, url.clone()));
    for (status, _, _) in futures_util::future::join_all(many).await {
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(up.connections(), 1, "h2 upstream multiplexes");
    let (_, _, body) = get(&h1(), url).await;
    assert!(body.contains("version HTTP/1.1"), "{body}");
}

/// Inbound requests carry forwarded headers and lose hop-by-hop ones.
#[tokio::test]
async fn rewrites_headers() {
    let up = Upstream::start().await;
    let proxy = TestProxy::start(&config(&up.addr.to_string(), "")).await;
    let req = Request::get(format!("http://{}/echo", proxy.addr("inbound")))
        .header("connection", "x-drop-me")
        .header("x-drop-me", "1")
        .header("keep-alive", "timeout=5")
        .header("x-keep", "yes")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = h1().request(req).await.unwrap();
    let body =
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(body.contains("x-keep: yes"), "{body}");
    assert!(!body.contains("x-drop-me"), "{body}");
    assert!(!body.contains("keep-alive"), "{body}");
    assert!(body.contains("x-forwarded-for: 127.0.0.1"), "{body}");
    assert!(body.contains("x-forwarded-proto: http"), "{body}");
    assert!(
        body.contains("forwarded: for=127.0.0.1;proto=http"),
        "{body}"
    );
}

/// Every failure gets its status, a `tandem-error` reason and a body naming the upstream.
#[tokio::test]
async fn failures_are_explicit() {
    let up = Upstream::start().await;
    // A port nothing listens on: bind, read the port, close.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let extra = format!(
        r#"  refused:
    endpoints: ["{closed}"]
  empty:
    endpoints: []
"#
    );
    let proxy = TestProxy::start(&config(&up.addr.to_string(), &extra)).await;
    let inbound = proxy.addr("inbound");
    let outbound = proxy.addr("outbound");
    let client = h1();

    let (s, h, b) = get(&client, format!("http://{inbound}/reset")).await;
    assert_eq!(
        (s, h["tandem-error"].to_str().unwrap()),
        (StatusCode::BAD_GATEWAY, "upstream_reset")
    );
    assert!(b.contains("upstream `app`"), "{b}");

    let (s, h, _) = get(&client, format!("http://{inbound}/slowroute/sleep/3000")).await;
    assert_eq!(
        (s, h["tandem-error"].to_str().unwrap()),
        (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout")
    );

    // Through the forward proxy: absolute-form requests name the upstream.
    let mut raw = TcpStream::connect(outbound).await.unwrap();
    raw.write_all(b"GET http://refused/x HTTP/1.1\r\nhost: refused\r\n\r\n")
        .await
        .unwrap();
    let text = read_response(&mut raw).await;
    assert!(text.starts_with("HTTP/1.1 502"), "{text}");
    assert!(text.contains("tandem-error: connect_failed"), "{text}");
    assert!(
        text.contains(&format!("upstream `refused` ({closed})")),
        "{text}"
    );

    let mut raw = TcpStream::connect(outbound).await.unwrap();
    raw.write_all(b"GET http://empty/x HTTP/1.1\r\nhost: empty\r\n\r\n")
        .await
        .unwrap();
    let text = read_response(&mut raw).await;
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("tandem-error: no_endpoints"), "{text}");

    let mut raw = TcpStream::connect(outbound).await.unwrap();
    raw.write_all(b"GET http://nowhere/x HTTP/1.1\r\nhost: nowhere\r\n\r\n")
        .await
        .unwrap();
    let text = read_response(&mut raw).await;
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    assert!(text.contains("tandem-error: no_route"), "{text}");

    // Metrics saw all of it.
    let (_, _, metrics) = get(&client, format!("http://{}/metrics", proxy.admin)).await;
    assert!(metrics.contains(r#"tandem_proxy_errors_total{listener="outbound",upstream="refused",reason="connect_failed"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"tandem_http_requests_total{direction="inbound",listener="inbound",route="slow",upstream="app",method="GET",status_class="5xx"} 1"#), "{metrics}");
}

/// Conflicting framing (request smuggling) is refused with 400 and the connection closed.
#[tokio::test]
async fn rejects_smuggling() {
    let up = Upstream::start().await;
    let proxy = TestProxy::start(&config(&up.addr.to_string(), "")).await;
    let mut raw = TcpStream::connect(proxy.addr("inbound")).await.unwrap();
    raw.write_all(
        b"POST /echo HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: a\r\n\r\n",
    )
    .await
    .unwrap();
    let text = read_to_close(&mut raw).await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert_eq!(up.requests(), 0, "nothing reached the upstream");
}

/// Drain: in-flight requests finish, new connections are refused, exit code 0.
#[tokio::test]
async fn drain_finishes_in_flight() {
    let up = Upstream::start().await;
    let proxy = TestProxy::start(&config(&up.addr.to_string(), "")).await;
    let inbound = proxy.addr("inbound");
    let client = h1();
    let in_flight: Vec<_> = (0..10)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { get(&c, format!("http://{inbound}/sleep/700")).await })
        })
        .collect();
    assert_eventually!(up.requests() == 10);
    proxy.start_drain().await;
    assert_eventually!(TcpStream::connect(inbound).await.is_err());
    for r in in_flight {
        let (status, _, body) = r.await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "slept"));
    }
    assert_eq!(proxy.join().await, 0);
}

/// A `protocol: tcp` listener copies bytes both ways and counts them.
#[tokio::test]
async fn tcp_listener_proxies_bytes() {
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let yaml = format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
listeners:
  db:
    address: "127.0.0.1:0"
    protocol: tcp
    upstream: echo
upstreams:
  echo:
    endpoints: ["{echo_addr}"]
"#
    );
    let proxy = TestProxy::start(&yaml).await;
    let mut s = TcpStream::connect(proxy.addr("db")).await.unwrap();
    s.write_all(b"hello tandem").await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, b"hello tandem");
    let (_, _, metrics) = get(&h1(), format!("http://{}/metrics", proxy.admin)).await;
    assert!(
        metrics.contains(r#"tandem_tcp_received_bytes_total{listener="db"} 12"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"tandem_tcp_sent_bytes_total{listener="db"} 12"#),
        "{metrics}"
    );
}

async fn read_response(s: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

async fn read_to_close(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}
