//! Metrics through the real app: label values come only from config names and bounded sets, so
//! what clients send (paths, methods, hosts) never creates a series.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tandem_test_support::upstream::Upstream;
use tandem_test_support::TestProxy;

type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

async fn send(client: &TestClient, method: &str, url: &str) -> u16 {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .header("user-agent", format!("agent-{url}"))
        .body(Empty::new())
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("response in time")
        .expect("response");
    let status = res.status().as_u16();
    res.into_body().collect().await.unwrap();
    status
}

/// Every series in an exposition: name plus label set, values dropped.
fn series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s.to_owned()))
        .collect()
}

/// The sum of every sample of `name` whose labels contain all of `labels`.
fn sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// 10,000 requests with distinct paths, a spread of methods (extension methods included), hosts
/// and statuses, some matching a route, some the default, some nothing: the set of series on
/// /metrics is the same before and after, and the counters add up to exactly what was sent.
#[tokio::test]
async fn distinct_paths_do_not_grow_the_series_count() {
    let up = Upstream::start().await;
    let proxy = TestProxy::start(&format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
listeners:
  inbound:
    address: "127.0.0.1:0"
    routes:
      - name: api
        match: {{ path: {{ prefix: /api }} }}
        upstream: app
      - name: web
        match: {{ path: {{ prefix: /web }} }}
        upstream: app
upstreams:
  app: {{ endpoints: ["{}"] }}
"#,
        up.addr
    ))
    .await;
    let client: TestClient = Client::builder(TokioExecutor::new()).build_http();
    let metrics_url = format!("http://{}/metrics", proxy.admin);
    let base = format!("http://{}", proxy.addr("inbound"));

    let fetch = |c: TestClient, url: String| async move {
        let res = c
            .request(Request::get(url).body(Empty::new()).unwrap())
            .await
            .unwrap();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    };
    let before = fetch(client.clone(), metrics_url.clone()).await;

    const N: usize = 10_000;
    const METHODS: [&str; 6] = ["GET", "POST", "DELETE", "BREW", "PROPFIND", "X-CUSTOM-1"];
    let mut tasks = tokio::task::JoinSet::new();
    let workers = 16;
    for w in 0..workers {
        let client = client.clone();
        let base = base.clone();
        tasks.spawn(async move {
            let mut statuses = Vec::new();
            for i in (w..N).step_by(workers) {
                let prefix = ["api", "web", "nowhere"][i % 3];
                let method = METHODS[i % METHODS.len()];
                let url = format!("{base}/{prefix}/item-{i}/{:x}?q={i}", i * 7919);
                statuses.push((prefix, send(&client, method, &url).await));
            }
            statuses
        });
    }
    let mut routed = 0usize;
    let mut unrouted = 0usize;
    while let Some(done) = tasks.join_next().await {
        for (prefix, status) in done.unwrap() {
            if prefix == "nowhere" {
                assert_eq!(status, 404, "no route for /nowhere");
                unrouted += 1;
            } else {
                assert_eq!(status, 200, "{prefix}");
                routed += 1;
            }
        }
    }
    assert_eq!(routed + unrouted, N);

    let after = fetch(client.clone(), metrics_url).await;
    let (b, a) = (series(&before), series(&after));
    let grown: Vec<&String> = a.difference(&b).collect();
    println!(
        "series before {} after {} (new: {})",
        b.len(),
        a.len(),
        grown.len()
    );
    assert!(
        grown.is_empty(),
        "{} requests created series: {grown:#?}",
        N
    );
    assert!(!after.contains("item-"), "a path leaked into a label");
    assert!(
        !after.contains("BREW"),
        "an extension method leaked into a label"
    );

    // Every request is counted once, under its route and method class.
    let total = sum(&after, "tandem_http_requests_total", &[]);
    assert_eq!(total as usize, N, "all requests counted");
    let api_get = sum(
        &after,
        "tandem_http_requests_total",
        &[r#"route="api""#, r#"method="GET""#, r#"status_class="2xx""#],
    );
    let expected_api_get = (0..N).filter(|i| i % 3 == 0 && i % 6 == 0).count();
    assert_eq!(api_get as usize, expected_api_get);
    let other = sum(&after, "tandem_http_requests_total", &[r#"method="other""#]);
    let expected_other = (0..N).filter(|i| i % 6 >= 3).count();
    assert_eq!(other as usize, expected_other, "BREW, PROPFIND, X-CUSTOM-1");
    let unrouted_counted = sum(
        &after,
        "tandem_http_requests_total",
        &[r#"route="""#, r#"status_class="4xx""#],
    );
    assert_eq!(unrouted_counted as usize, unrouted);
}

/// Request and response body sizes per route: a retried request's body counts once (what the
/// client sent, not what the tries replayed), a request without a body counts 0, a streamed
/// response counts every chunk, and with `metrics: { requests: false }` nothing is recorded.
#[tokio::test]
async fn body_sizes_are_recorded_once_per_request() {
    use http_body_util::Full;
    let up = Upstream::start().await;
    let config = |requests: bool| {
        format!(
            r#"
admin: {{ address: "127.0.0.1:0" }}
metrics: {{ requests: {requests} }}
listeners:
  inbound: {{ address: "127.0.0.1:0", upstream: app }}
upstreams:
  app:
    endpoints: ["{}"]
    retry: {{ attempts: 2, backoff: 1ms }}
"#,
            up.addr
        )
    };
    for requests in [true, false] {
        let proxy = TestProxy::start(&config(requests)).await;
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let base = format!("http://{}", proxy.addr("inbound"));
        let call = |method: &str, path: &str, body: Vec<u8>| {
            let req = Request::builder()
                .method(method)
                .uri(format!("{base}{path}"))
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let client = client.clone();
            async move {
                let res = client.request(req).await.unwrap();
                let status = res.status().as_u16();
                let body = res.into_body().collect().await.unwrap().to_bytes();
                (status, body)
            }
        };
        // The first try of the PUT gets a 503 and is retried with the replayed body.
        up.fail_next(1, 503);
        let tries = up.requests_to("/body-len");
        assert_eq!(
            call("PUT", "/body-len", vec![7; 3000]).await,
            (200, Bytes::from("3000"))
        );
        assert_eq!(
            up.requests_to("/body-len") - tries,
            2,
            "the PUT was retried"
        );
        assert_eq!(call("GET", "/stream/5/1", vec![]).await.1.len(), 40);
        assert_eq!(call("GET", "/", vec![]).await, (200, Bytes::from("ok")));

        let text = {
            let res = client
                .request(
                    Request::get(format!("http://{}/metrics", proxy.admin))
                        .body(Full::default())
                        .unwrap(),
                )
                .await
                .unwrap();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8_lossy(&body).into_owned()
        };
        let route = r#"listener="inbound""#;
        let value = |name: &str| sum(&text, name, &[route]);
        if requests {
            assert_eq!(value("tandem_http_request_size_bytes_count"), 3.0, "{text}");
            assert_eq!(
                value("tandem_http_request_size_bytes_sum"),
                3000.0,
                "{text}"
            );
            assert_eq!(
                value("tandem_http_response_size_bytes_count"),
                3.0,
                "{text}"
            );
            assert_eq!(value("tandem_http_response_size_bytes_sum"), 46.0, "{text}");
            // 0-byte bodies (two requests) land in the first bucket, 3000 bytes under 4 KiB.
            let first = sum(
                &text,
                "tandem_http_request_size_bytes_bucket",
                &[route, r#"le="64.0""#],
            );
            assert_eq!(first, 2.0, "{text}");
        } else {
            assert!(
                !text.contains("tandem_http_request_size_bytes_count{"),
                "{text}"
            );
            assert!(!text.contains("tandem_http_requests_total{"), "{text}");
            assert!(
                text.contains(r#"tandem_connections_accepted_total{listener="inbound"}"#),
                "{text}"
            );
        }
        drop(proxy);
    }
}
