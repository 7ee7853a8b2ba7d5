//! Access log through the real app in-process: one JSON line per HTTP/1.1 and HTTP/2 request
//! and per TCP connection, with the values each exchange had (bytes, route, endpoint, retries,
//! Tandem's error, how it ended), and none for a listener that opted out.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tandem_test_support::upstream::Upstream;
use tandem_test_support::TestProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client(http2: bool) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .build_http()
}

fn temp_dir() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("tandem-access-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The one line whose `path` (HTTP) or `kind` (TCP) is `key`.
fn line<'a>(all: &'a [Value], key: &str) -> &'a Value {
    let found: Vec<&Value> = all
        .iter()
        .filter(|l| l["path"] == key || (l["kind"] == "tcp" && key == "tcp"))
        .collect();
    assert_eq!(found.len(), 1, "one line for {key}: {all:#?}");
    found[0]
}

async fn send(c: &HttpClient, req: Request<Full<Bytes>>) -> (StatusCode, Bytes) {
    let res = tokio::time::timeout(Duration::from_secs(10), c.request(req))
        .await
        .unwrap()
        .unwrap();
    let status = res.status();
    (status, res.into_body().collect().await.unwrap().to_bytes())
}

fn get(url: String) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::default()).unwrap()
}

/// HTTP/1.1, HTTP/2, a retried request, Tandem's own 502, a client that leaves mid-body, an
/// upstream that breaks mid-body and a TCP connection: one line each with its real values.
#[tokio::test]
async fn every_exchange_is_one_line() {
    let up = Upstream::start().await;
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
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
    let dir = temp_dir();
    let path = dir.join("access.log");
    let yaml = format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
access_log: {{ path: "{}", buffer: 1000 }}
listeners:
  inbound:
    address: "127.0.0.1:0"
    upstream: app
    routes:
      - name: api
        match: {{ path: {{ prefix: /body-len }} }}
        upstream: app
      - name: broken
        match: {{ path: {{ prefix: /broken }} }}
        upstream: refused
  quiet:
    address: "127.0.0.1:0"
    upstream: app
    access_log: false
  db:
    address: "127.0.0.1:0"
    protocol: tcp
    upstream: echo
upstreams:
  app: {{ endpoints: ["{}"] }}
  refused: {{ endpoints: ["{closed}"], retry: {{ attempts: 2 }} }}
  echo: {{ endpoints: ["{echo_addr}"] }}
"#,
        path.display(),
        up.addr
    );
    let proxy = TestProxy::start(&yaml).await;
    let base = format!("http://{}", proxy.addr("inbound"));
    let h1 = client(false);
    let h2 = client(true);

    let req = Request::post(format!("{base}/body-len/x"))
        .header("user-agent", "test-agent/1.0")
        .body(Full::new(Bytes::from(vec![b'x'; 1000])))
        .unwrap();
    assert_eq!(send(&h1, req).await, (StatusCode::OK, Bytes::from("1000")));

    let (status, body) = send(&h2, get(format!("{base}/stream/3/10"))).await;
    assert_eq!((status, body.len()), (StatusCode::OK, 24));

    up.fail_next(1, 503);
    assert_eq!(
        send(&h1, get(format!("{base}/retried"))).await.0,
        StatusCode::OK
    );

    assert_eq!(
        send(&h1, get(format!("{base}/broken/x"))).await.0,
        StatusCode::BAD_GATEWAY
    );

    let quiet = format!("http://{}/quiet", proxy.addr("quiet"));
    assert_eq!(send(&h1, get(quiet)).await.0, StatusCode::OK);

    // The client reads the head and the first chunk of a slow body, then goes away.
    let res = h1
        .request(get(format!("{base}/stream/20/100")))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.data_ref().unwrap().as_ref(), b"chunk 0\n");
    drop(body);

    // The upstream sends 4 KiB of a 100000-byte body, then closes.
    let res = h1
        .request(get(format!("{base}/close-mid-body")))
        .await
        .unwrap();
    assert!(res.into_body().collect().await.is_err());

    let mut s = TcpStream::connect(proxy.addr("db")).await.unwrap();
    s.write_all(b"hello tandem").await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"hello tandem");

    // Lines are complete once each exchange has ended: wait for the last two to end.
    tandem_test_support::assert_eventually!(std::fs::read_to_string(&path)
        .map(|t| t.contains("/stream/20/100") && t.contains("\"kind\":\"tcp\""))
        .unwrap_or(false));
    assert_eq!(proxy.terminate().await, 0);

    let all = lines(&path);
    assert_eq!(all.len(), 7, "{all:#?}");
    for l in &all {
        assert!(l["time"].as_str().unwrap().ends_with('Z'), "{l}");
        assert!(l["duration_ms"].as_f64().unwrap() >= 0.0, "{l}");
        assert_ne!(l["listener"], "quiet", "an opted-out listener logs nothing");
    }

    let post = line(&all, "/body-len/x");
    assert_eq!(post["kind"], "http");
    assert_eq!(post["protocol"], "HTTP/1.1");
    assert_eq!(post["method"], "POST");
    assert_eq!(
        (post["route"].as_str(), post["upstream"].as_str()),
        (Some("api"), Some("app"))
    );
    assert_eq!(post["endpoint"], up.addr.to_string());
    assert_eq!(post["status"], 200);
    assert_eq!(post["received_bytes"], 1000);
    assert_eq!(post["sent_bytes"], 4);
    assert_eq!(
        (post["attempts"].as_u64(), post["retries"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(post["user_agent"], "test-agent/1.0");
    assert_eq!(post["error"], Value::Null);
    assert_eq!(
        (post["end"].as_str(), post["completed"].as_bool()),
        (Some("complete"), Some(true))
    );
    assert!(
        post["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{post}"
    );
    assert_eq!(post["direction"], "inbound");
    assert_eq!(post["listener"], "inbound");
    assert!(post["head_ms"].as_f64().unwrap() <= post["duration_ms"].as_f64().unwrap());

    let stream = line(&all, "/stream/3/10");
    assert_eq!(stream["protocol"], "HTTP/2");
    assert_eq!(stream["route"], "default");
    assert_eq!(stream["sent_bytes"], 24);
    assert_eq!(stream["received_bytes"], 0);
    assert_eq!(stream["end"], "complete");
    // The body took at least two 10 ms gaps after the head.
    let (head, total) = (
        stream["head_ms"].as_f64().unwrap(),
        stream["duration_ms"].as_f64().unwrap(),
    );
    assert!(total - head >= 15.0, "head {head} ms, total {total} ms");

    let retried = line(&all, "/retried");
    assert_eq!(retried["status"], 200);
    assert_eq!(
        (retried["attempts"].as_u64(), retried["retries"].as_u64()),
        (Some(2), Some(1))
    );

    let broken = line(&all, "/broken/x");
    assert_eq!(broken["status"], 502);
    assert_eq!(broken["error"], "connect_failed");
    assert_eq!(broken["route"], "broken");
    assert_eq!(broken["upstream"], "refused");
    assert_eq!(broken["endpoint"], closed.to_string());
    assert_eq!(broken["attempts"], 2);
    assert_eq!(broken["end"], "complete");
    assert!(
        broken["sent_bytes"].as_u64().unwrap() > 0,
        "Tandem's one-line body"
    );

    let gone = line(&all, "/stream/20/100");
    assert_eq!(gone["status"], 200);
    assert_eq!(
        (gone["end"].as_str(), gone["completed"].as_bool()),
        (Some("client_gone"), Some(false))
    );
    let sent = gone["sent_bytes"].as_u64().unwrap();
    assert!((8..160).contains(&sent), "{gone}");

    let cut = line(&all, "/close-mid-body");
    assert_eq!(
        (cut["status"].as_u64(), cut["end"].as_str()),
        (Some(200), Some("upstream_error"))
    );
    assert_eq!(cut["sent_bytes"], 4096);

    let tcp = line(&all, "tcp");
    assert_eq!(tcp["listener"], "db");
    assert_eq!(tcp["protocol"], "tcp");
    assert_eq!(tcp["upstream"], "echo");
    assert_eq!(tcp["endpoint"], echo_addr.to_string());
    assert_eq!(
        (tcp["received_bytes"].as_u64(), tcp["sent_bytes"].as_u64()),
        (Some(12), Some(12))
    );
    assert_eq!(tcp["end"], "complete");
    assert!(
        tcp.get("status").is_none() && tcp.get("method").is_none(),
        "{tcp}"
    );

    std::fs::remove_dir_all(&dir).unwrap();
}

/// A request abandoned before its response head (the client closes while the upstream is
/// slow) is logged too: no status, `client_gone`.
#[tokio::test]
async fn abandoned_request_is_logged() {
    let up = Upstream::start().await;
    let dir = temp_dir();
    let path = dir.join("access.log");
    let yaml = format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
access_log: {{ path: "{}", fields: [path, status, end, head_ms] }}
listeners:
  inbound:
    address: "127.0.0.1:0"
    upstream: app
upstreams:
  app: {{ endpoints: ["{}"] }}
"#,
        path.display(),
        up.addr
    );
    let proxy = TestProxy::start(&yaml).await;
    let mut s = TcpStream::connect(proxy.addr("inbound")).await.unwrap();
    s.write_all(b"GET /sleep/3000 HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    tandem_test_support::assert_eventually!(up.requests() == 1);
    drop(s);
    tandem_test_support::assert_eventually!(std::fs::read_to_string(&path)
        .map(|t| !t.is_empty())
        .unwrap_or(false));
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "{\"path\":\"/sleep/3000\",\"status\":null,\"end\":\"client_gone\",\"head_ms\":null}\n"
    );
    assert_eq!(proxy.terminate().await, 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A request refused for ambiguous framing (request smuggling) is logged with its reason.
#[tokio::test]
async fn refused_framing_is_logged() {
    let up = Upstream::start().await;
    let dir = temp_dir();
    let path = dir.join("access.log");
    let yaml = format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
access_log: {{ path: "{}", fields: [method, path, status, error, route, attempts] }}
listeners:
  inbound:
    address: "127.0.0.1:0"
    upstream: app
upstreams:
  app: {{ endpoints: ["{}"] }}
"#,
        path.display(),
        up.addr
    );
    let proxy = TestProxy::start(&yaml).await;
    let mut s = TcpStream::connect(proxy.addr("inbound")).await.unwrap();
    s.write_all(
        b"POST /smuggle HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert!(reply.starts_with(b"HTTP/1.1 400"));
    assert_eq!(proxy.terminate().await, 0);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "{\"method\":\"POST\",\"path\":\"/smuggle\",\"status\":400,\"error\":\"bad_request\",\"route\":null,\"attempts\":0}\n"
    );
    assert_eq!(up.requests(), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}
