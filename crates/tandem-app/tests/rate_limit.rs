//! Route rate limits through the real app: real sockets, a real hyper upstream and client.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tandem_test_support::upstream::Upstream;
use tandem_test_support::TestProxy;

type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

async fn send(
    client: &TestClient,
    url: &str,
    key: Option<&str>,
) -> (StatusCode, http::HeaderMap, String) {
    let mut req = Request::get(url);
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    let res = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(req.body(Empty::new()).unwrap()),
    )
    .await
    .expect("response in time")
    .expect("response");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Beyond `burst`, requests get 429 with `tandem-error: rate_limited`, a `Retry-After` and a body
/// naming the route; they never reach the upstream and are counted by reason. Keys are separate,
/// and a route without a limit is not affected.
#[tokio::test]
async fn requests_beyond_the_limit_get_429() {
    let up = Upstream::start().await;
    let proxy = TestProxy::start(&format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
listeners:
  inbound:
    address: "127.0.0.1:0"
    upstream: app
    routes:
      - name: api
        match: {{ path: {{ prefix: /api }} }}
        upstream: app
        rate_limit: {{ requests: 5, per: 1m, key: "header:x-api-key" }}
upstreams:
  app: {{ endpoints: ["{}"] }}
"#,
        up.addr
    ))
    .await;
    let client: TestClient = Client::builder(TokioExecutor::new()).build_http();
    let api = format!("http://{}/api/x", proxy.addr("inbound"));

    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(send(&client, &api, Some("alice")).await.0.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    let (status, headers, body) = send(&client, &api, Some("alice")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["tandem-error"], "rate_limited");
    // 5 per minute: the next token is 12 s away.
    assert_eq!(headers["retry-after"], "12");
    assert!(
        body.contains("rate limit of route `api` exceeded"),
        "{body}"
    );
    assert_eq!(
        up.requests(),
        5,
        "refused requests never reach the upstream"
    );

    assert_eq!(
        send(&client, &api, Some("bob")).await.0,
        StatusCode::OK,
        "another key has its own bucket"
    );
    let other = format!("http://{}/other", proxy.addr("inbound"));
    for _ in 0..10 {
        assert_eq!(send(&client, &other, Some("alice")).await.0, StatusCode::OK);
    }

    let (_, _, metrics) = send(&client, &format!("http://{}/metrics", proxy.admin), None).await;
    assert!(
        metrics.contains(r#"tandem_proxy_errors_total{listener="inbound",upstream="app",reason="rate_limited"} 4"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"tandem_http_requests_total{direction="inbound",listener="inbound",route="api",upstream="app",method="GET",status_class="4xx"} 4"#),
        "{metrics}"
    );
}
