//! Resilience through the real app with fault injection: killed backends, slow links (a fault
//! proxy), failing statuses, resets, slow responses. Each test prints its numbers
//! (`cargo nextest run --no-capture -p tandem-app --test resilience` shows them).

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tandem_test_support::fault::FaultProxy;
use tandem_test_support::upstream::Upstream;
use tandem_test_support::{assert_eventually, TestProxy};

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;
type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn empty() -> Body {
    Full::new(Bytes::new()).boxed()
}

/// Sends `req`, returning status, headers and body text.
async fn send(c: &TestClient, req: Request<Body>) -> (StatusCode, http::HeaderMap, String) {
    let res = tokio::time::timeout(Duration::from_secs(10), c.request(req))
        .await
        .expect("response in time")
        .expect("response");
    let (parts, body) = res.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

async fn get(c: &TestClient, url: &str) -> (StatusCode, http::HeaderMap, String) {
    send(c, Request::get(url).body(empty()).unwrap()).await
}

/// The admin API's `/upstreams` as JSON.
async fn upstreams(c: &TestClient, proxy: &TestProxy) -> serde_json::Value {
    let (_, _, body) = get(c, &format!("http://{}/upstreams", proxy.admin)).await;
    serde_json::from_str(&body).unwrap()
}

async fn metrics(c: &TestClient, proxy: &TestProxy) -> String {
    get(c, &format!("http://{}/metrics", proxy.admin)).await.2
}

/// The value of the first sample line starting with `prefix` (name and labels), 0 if none.
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn endpoints_yaml(ups: &[&Upstream]) -> String {
    ups.iter()
        .map(|u| format!("\"{}\"", u.addr))
        .collect::<Vec<_>>()
        .join(", ")
}

fn config(endpoints: &str, upstream_extra: &str) -> String {
    format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
listeners:
  inbound: {{ address: "127.0.0.1:0", upstream: app }}
upstreams:
  app:
    endpoints: [{endpoints}]
{upstream_extra}
"#
    )
}

/// Runs `clients` loops of GET `url` (about one request per millisecond each) until `stop`,
/// counting statuses.
fn load(
    c: &TestClient,
    url: String,
    clients: usize,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|_| {
            let (c, url, ok, failed, stop) = (
                c.clone(),
                url.clone(),
                ok.clone(),
                failed.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let req = Request::get(url.as_str()).body(empty()).unwrap();
                    match tokio::time::timeout(Duration::from_secs(5), c.request(req)).await {
                        Ok(Ok(res)) if res.status() == StatusCode::OK => {
                            let _ = res.into_body().collect().await;
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    // Paced, so the load shares the test's two worker threads with the timers
                    // that measure it (a closed loop would starve them).
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        })
        .collect()
}

/// One of three backends is killed under load: connect failures are retried on the others (the
/// clients see no failure), the balancer stops trying it within a few requests (a failed try
/// costs it a 250 ms failure penalty), from 1 s after the kill on it gets at most an occasional
/// try, and once restarted on the same address it has traffic again within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_under_load() {
    let ups = [
        Upstream::start().await,
        Upstream::start().await,
        Upstream::start().await,
    ];
    let proxy = TestProxy::start(&config(
        &endpoints_yaml(&ups.iter().collect::<Vec<_>>()),
        "",
    ))
    .await;
    let c = client();
    let url = format!("http://{}/", proxy.addr("inbound"));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks = load(&c, url, 8, ok.clone(), failed.clone(), stop.clone());

    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_kill = ups[2].requests();
    assert!(before_kill > 20, "the victim had its share: {before_kill}");
    let served_before = ok.load(Ordering::Relaxed);
    let killed_at = Instant::now();
    ups[2].kill().await;
    // Every try at the dead endpoint fails to connect and is retried elsewhere: the retry
    // counter counts the tries it still gets.
    let tries = |m: &str| {
        sample(
            m,
            "tandem_retries_total{upstream=\"app\",reason=\"connect_failed\"}",
        )
    };
    tokio::time::sleep_until((killed_at + Duration::from_secs(1)).into()).await;
    let tries_first_second = tries(&metrics(&c, &proxy).await);
    let served_first_second = ok.load(Ordering::Relaxed) - served_before;
    let first = killed_at.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tries_after = tries(&metrics(&c, &proxy).await) - tries_first_second;
    assert!(first < Duration::from_millis(1200), "measured at {first:?}");

    // The backend comes back on the same address: it has its share again within seconds
    // (the failure penalty decays in seconds; a dead endpoint's occasional try is what finds
    // it alive).
    ups[2].restart().await;
    let restarted = Instant::now();
    let at_restart = ups[2].requests();
    // Its fifth failed try in a row (the occasional try, or tries in flight at the kill)
    // ejects it for the breaker's `base_ejection` (5 s): whether that happened before the
    // restart depends on timing, so the bound on its return is measured from when the
    // ejection ends, if there is one.
    let v = upstreams(&c, &proxy).await;
    let ejected_for = Duration::from_millis(
        v[0]["endpoints"][2]["ejected_for_ms"]
            .as_u64()
            .unwrap_or_default(),
    );
    let breaker = v[0]["endpoints"][2]["breaker"].to_string();
    let mut back = None;
    while restarted.elapsed() < ejected_for + Duration::from_secs(8) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if ups[2].requests() >= at_restart + 100 {
            back = Some(restarted.elapsed());
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "killed 1 of 3 under 8 clients: {ok} ok, {failed} failed; tries at the dead endpoint: \
         {tries_first_second} in the first second ({served_first_second} requests served), \
         {tries_after} in the next; survivors served {} and {}; restarted (breaker {breaker}, \
         ejected for {ejected_for:?} more), it served 100 requests again after {back:?}",
        ups[0].requests(),
        ups[1].requests()
    );
    assert_eq!(failed, 0, "connect failures are retried elsewhere");
    assert!(tries_first_second >= 1.0, "the dead endpoint was tried");
    assert!(
        tries_first_second <= 10.0,
        "traffic moved off within a few requests: {tries_first_second}"
    );
    // A dead endpoint keeps getting an occasional real try (its failure penalty decays in
    // seconds, so a restarted endpoint is found again): at most a couple in the next second.
    assert!(
        tries_after <= 2.0,
        "at most an occasional try after the first second: {tries_after}"
    );
    let back = back.expect("the restarted backend gets traffic again");
    // Not ejected: the penalty decays in seconds; ejected: the probe that ends the ejection
    // succeeds, closes the breaker and drops the penalty, so traffic is back at once.
    let bound = if ejected_for.is_zero() {
        Duration::from_secs(5)
    } else {
        ejected_for + Duration::from_secs(2)
    };
    assert!(
        back < bound,
        "traffic back after {back:?} (breaker {breaker}, ejected for {ejected_for:?})"
    );
    assert!(served_first_second > 500, "the survivors took the load");
}

/// P2C over peak-EWMA: an endpoint behind a link with +50 ms round trip (a fault proxy adding
/// 25 ms each way) gets under 20% of the traffic of three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_endpoint_gets_little_traffic_under_p2c() {
    let ups = [
        Upstream::start().await,
        Upstream::start().await,
        Upstream::start().await,
    ];
    let slow_link = FaultProxy::start(ups[2].addr).await;
    slow_link.set_latency(Duration::from_millis(25));
    let proxy = TestProxy::start(&config(
        &format!(
            "\"{}\", \"{}\", \"{}\"",
            ups[0].addr, ups[1].addr, slow_link.addr
        ),
        "",
    ))
    .await;
    let c = client();
    let url = format!("http://{}/", proxy.addr("inbound"));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks = load(&c, url, 4, ok.clone(), failed.clone(), stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let counts = [ups[0].requests(), ups[1].requests(), ups[2].requests()];
    let total: usize = counts.iter().sum();
    let share = counts[2] as f64 / total as f64;
    println!(
        "P2C with one endpoint +50 ms: requests {counts:?}, slow share {:.1}%",
        share * 100.0
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(total > 200, "enough traffic to judge: {total}");
    assert!(share < 0.20, "slow endpoint share {share:.3}");
    let v = upstreams(&c, &proxy).await;
    let slow_ewma = v[0]["endpoints"][2]["ewma_ms"].as_f64().unwrap();
    assert!(slow_ewma > 20.0, "the estimate sees the slow link: {v}");
}

/// A breaker opens after consecutive failures (the client sees none of them: they are retried
/// on the other endpoint), stays open, lets one probe through when the ejection ends, and
/// closes when it succeeds; a failed probe doubles the ejection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_probes_and_closes() {
    let (good, bad) = (Upstream::start().await, Upstream::start().await);
    bad.set_status(Some(503));
    let proxy = TestProxy::start(&config(
        &endpoints_yaml(&[&good, &bad]),
        "    balancer: round_robin\n    circuit_breaker: { consecutive_failures: 3, base_ejection: 300ms, max_ejected_percent: 50 }",
    ))
    .await;
    let c = client();
    let url = format!("http://{}/", proxy.addr("inbound"));
    for _ in 0..10 {
        assert_eq!(get(&c, &url).await.0, StatusCode::OK);
    }
    assert_eq!(bad.requests(), 3, "three failures, then ejected");
    let v = upstreams(&c, &proxy).await;
    assert_eq!(v[0]["endpoints"][1]["breaker"], "open", "{v}");
    assert_eq!(
        v[0]["endpoints"][1]["ejection_reason"],
        "consecutive_failures"
    );
    assert_eq!(v[0]["ejected"], 1);

    // Still failing when the ejection ends: the probe fails, the next ejection is 600 ms.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        upstreams(&c, &proxy).await[0]["endpoints"][1]["breaker"],
        "half_open"
    );
    for _ in 0..4 {
        assert_eq!(get(&c, &url).await.0, StatusCode::OK);
    }
    assert_eq!(bad.requests(), 4, "exactly one probe");
    let v = upstreams(&c, &proxy).await;
    assert_eq!(v[0]["endpoints"][1]["ejection_reason"], "probe_failed");
    let left = v[0]["endpoints"][1]["ejected_for_ms"].as_u64().unwrap();
    assert!(
        (400..=600).contains(&left),
        "doubled ejection: {left} ms left"
    );

    // Recovered: the probe succeeds and traffic returns.
    bad.set_status(None);
    tokio::time::sleep(Duration::from_millis(650)).await;
    for _ in 0..10 {
        assert_eq!(get(&c, &url).await.0, StatusCode::OK);
    }
    let v = upstreams(&c, &proxy).await;
    assert_eq!(v[0]["endpoints"][1]["breaker"], "closed", "{v}");
    assert!(
        bad.requests() >= 4 + 4,
        "back in rotation: {}",
        bad.requests()
    );
    let m = metrics(&c, &proxy).await;
    println!(
        "breaker: ejections consecutive={} probe_failed={}; retries on status={}",
        sample(
            &m,
            "tandem_endpoint_ejections_total{upstream=\"app\",reason=\"consecutive_failures\"}"
        ),
        sample(
            &m,
            "tandem_endpoint_ejections_total{upstream=\"app\",reason=\"probe_failed\"}"
        ),
        sample(
            &m,
            "tandem_retries_total{upstream=\"app\",reason=\"status\"}"
        ),
    );
    assert_eq!(
        sample(
            &m,
            "tandem_endpoint_ejections_total{upstream=\"app\",reason=\"probe_failed\"}"
        ),
        1.0
    );
}

/// A 100%-failing upstream under retries (3 attempts) sees at most (1 + 20%) × the client's
/// requests plus the budget's small reserve, not 3×.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_bounds_load_on_a_failing_upstream() {
    let up = Upstream::start().await;
    up.set_status(Some(503));
    let proxy = TestProxy::start(&config(
        &endpoints_yaml(&[&up]),
        "    retry: { attempts: 3, backoff: 1ms, max_backoff: 2ms }\n    retry_budget: { percent: 20, min_per_second: 1, window: 10s }",
    ))
    .await;
    let c = client();
    let url = format!("http://{}/", proxy.addr("inbound"));
    let n = 300;
    for _ in 0..n {
        assert_eq!(get(&c, &url).await.0, StatusCode::SERVICE_UNAVAILABLE);
    }
    let seen = up.requests();
    let ratio = seen as f64 / n as f64;
    let m = metrics(&c, &proxy).await;
    let exhausted = sample(&m, "tandem_retry_budget_exhausted_total{upstream=\"app\"}");
    println!(
        "100% failing upstream, {n} client requests, 3 attempts: upstream saw {seen} ({ratio:.2}x); \
         budget refused {exhausted} retries"
    );
    // 20% of requests plus the reserve of 1/s over the 10 s window.
    assert!(seen <= n + n / 5 + 10, "{seen}");
    assert!(seen > n, "some retries were allowed: {seen}");
    assert!(exhausted >= 200.0, "{exhausted}");
}

/// Request bodies: replayed on retry when they fit the replay buffer (the upstream receives the
/// same bytes twice); a streamed body larger than the buffer is not retried once sent; a POST
/// is not retried after a reset unless the route allows all methods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_and_retries() {
    let up = Upstream::start().await;
    let proxy = TestProxy::start(&config(
        &endpoints_yaml(&[&up]),
        "    retry: { all_methods: true, replay_buffer: 1024, backoff: 1ms }",
    ))
    .await;
    let c = client();
    let url = format!("http://{}/body-len", proxy.addr("inbound"));

    // Small body, first try 503: replayed.
    up.fail_next(1, 503);
    let body = Bytes::from(vec![b'x'; 700]);
    let req = Request::post(url.as_str())
        .body(Full::new(body.clone()).boxed())
        .unwrap();
    let (status, _, text) = send(&c, req).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(text.trim(), "700");
    let bodies = up.bodies();
    assert_eq!(up.requests(), 2);
    assert_eq!(bodies, [body.clone(), body], "the same bytes both times");

    // Streamed body over the buffer (8 KiB in 1 KiB chunks): not retried after it was sent.
    up.fail_next(1, 503);
    let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = (0..8)
        .map(|_| Ok(Frame::data(Bytes::from(vec![b'y'; 1024]))))
        .collect();
    let stream = futures_util::stream::iter(chunks);
    let req = Request::post(url.as_str())
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap();
    let before = up.requests();
    let (status, _, _) = send(&c, req).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(up.requests() - before, 1, "not retried");

    // A reset POST: retried only because this route allows all methods (no body here).
    up.fail_next(0, 503);
    up.set_reset(true);
    let before = up.requests();
    let (status, headers, _) = send(
        &c,
        Request::post(format!("http://{}/", proxy.addr("inbound")))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["tandem-error"], "upstream_reset");
    assert_eq!(up.requests() - before, 3, "three attempts");
}

/// By default a POST is never retried after it reached the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_not_retried_by_default() {
    let up = Upstream::start().await;
    up.set_reset(true);
    let proxy = TestProxy::start(&config(&endpoints_yaml(&[&up]), "")).await;
    let c = client();
    let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = (0..4)
        .map(|_| Ok(Frame::data(Bytes::from_static(b"part"))))
        .collect();
    let req = Request::post(format!("http://{}/body-len", proxy.addr("inbound")))
        .body(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
            chunks,
        ))))
        .unwrap();
    let (status, _, _) = send(&c, req).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(up.requests(), 1);
    // A GET is retried (idempotent) on the same failure.
    let (status, _, _) = get(&c, &format!("http://{}/", proxy.addr("inbound"))).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(up.requests(), 1 + 3);
}

/// A per-try timeout moves a slow try to another endpoint well before the route's deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeout_moves_to_another_endpoint() {
    let (slow, fast) = (Upstream::start().await, Upstream::start().await);
    slow.set_delay(Duration::from_secs(2));
    let proxy = TestProxy::start(&config(
        &endpoints_yaml(&[&slow, &fast]),
        "    balancer: round_robin\n    retry: { per_try_timeout: 100ms, backoff: 1ms }",
    ))
    .await;
    let c = client();
    let url = format!("http://{}/", proxy.addr("inbound"));
    let mut worst = Duration::ZERO;
    for _ in 0..4 {
        let t = Instant::now();
        assert_eq!(get(&c, &url).await.0, StatusCode::OK);
        worst = worst.max(t.elapsed());
    }
    println!("per-try timeout 100 ms with one endpoint hanging 2 s: worst request {worst:?}");
    assert!(worst < Duration::from_millis(600), "{worst:?}");
    assert!(slow.requests() >= 1);
}

/// Over `max_requests` + `max_pending`, requests are refused at once with 503 `overloaded`,
/// while the admitted ones take what the upstream takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_fast() {
    let up = Upstream::start().await;
    up.set_delay(Duration::from_millis(300));
    let proxy = TestProxy::start(&config(
        &endpoints_yaml(&[&up]),
        "    limits: { max_requests: 4, max_pending: 2 }",
    ))
    .await;
    let c = client();
    let url = format!("http://{}/", proxy.addr("inbound"));
    let results: Vec<(StatusCode, String, Duration)> =
        futures_util::future::join_all((0..20).map(|_| {
            let (c, url) = (c.clone(), url.clone());
            async move {
                let t = Instant::now();
                let (s, h, _) = get(&c, &url).await;
                let reason = h
                    .get("tandem-error")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                (s, reason, t.elapsed())
            }
        }))
        .await;
    let admitted: Vec<_> = results.iter().filter(|r| r.0 == StatusCode::OK).collect();
    let refused: Vec<_> = results
        .iter()
        .filter(|r| r.0 == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    let slowest_refusal = refused.iter().map(|r| r.2).max().unwrap();
    let slowest_admitted = admitted.iter().map(|r| r.2).max().unwrap();
    println!(
        "20 concurrent, max_requests 4 + max_pending 2, upstream 300 ms: {} admitted (slowest {slowest_admitted:?}), {} refused (slowest refusal {slowest_refusal:?})",
        admitted.len(),
        refused.len()
    );
    assert_eq!(admitted.len(), 6, "4 at once and 2 queued");
    assert_eq!(refused.len(), 14);
    assert!(refused.iter().all(|r| r.1 == "overloaded"));
    assert!(
        slowest_refusal < Duration::from_millis(150),
        "{slowest_refusal:?}"
    );
    assert!(
        slowest_admitted < Duration::from_millis(900),
        "queued ones wait one turn: {slowest_admitted:?}"
    );
}

/// Active HTTP health checks take a failing endpoint out of rotation and bring it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_health_checks() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let proxy = TestProxy::start(&config(
        &endpoints_yaml(&[&a, &b]),
        "    health_check: { http: { path: /healthz }, interval: 50ms, jitter: 10ms, timeout: 40ms, healthy_threshold: 2, unhealthy_threshold: 2 }",
    ))
    .await;
    let c = client();
    let url = format!("http://{}/", proxy.addr("inbound"));
    assert_eventually!(upstreams(&c, &proxy).await[0]["endpoints"][1]["health"] == "healthy");
    b.set_health(503);
    assert_eventually!(upstreams(&c, &proxy).await[0]["endpoints"][1]["health"] == "unhealthy");
    let before = b.requests();
    for _ in 0..50 {
        assert_eq!(get(&c, &url).await.0, StatusCode::OK);
    }
    assert_eq!(b.requests(), before, "no traffic to the unhealthy endpoint");
    b.set_health(200);
    assert_eventually!(upstreams(&c, &proxy).await[0]["endpoints"][1]["health"] == "healthy");
    for _ in 0..50 {
        get(&c, &url).await;
    }
    assert!(b.requests() > before, "back in rotation");
    let m = metrics(&c, &proxy).await;
    let fails = sample(
        &m,
        &format!(
            "tandem_health_checks_total{{upstream=\"app\",endpoint=\"{}\",result=\"fail\"}}",
            b.addr
        ),
    );
    assert!(fails >= 2.0, "{m}");
    assert!(b.health_checks() >= 4);
}

/// gRPC health checks (h2c, grpc.health.v1) and TCP checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_tcp_health_checks() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let proxy = TestProxy::start(&format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
listeners:
  inbound: {{ address: "127.0.0.1:0", upstream: grpc }}
upstreams:
  grpc:
    endpoints: [{}]
    protocol: http2
    health_check: {{ grpc: {{ service: "" }}, interval: 50ms, jitter: 0s, timeout: 40ms, healthy_threshold: 1, unhealthy_threshold: 1 }}
  tcp:
    endpoints: [{}]
    health_check: {{ tcp: {{}}, interval: 50ms, jitter: 0s, timeout: 40ms, healthy_threshold: 1, unhealthy_threshold: 1 }}
"#,
        endpoints_yaml(&[&a]),
        endpoints_yaml(&[&b])
    ))
    .await;
    let c = client();
    assert_eventually!(upstreams(&c, &proxy).await[0]["endpoints"][0]["health"] == "healthy");
    a.set_grpc_serving(false);
    assert_eventually!(upstreams(&c, &proxy).await[0]["endpoints"][0]["health"] == "unhealthy");
    a.set_grpc_serving(true);
    assert_eventually!(upstreams(&c, &proxy).await[0]["endpoints"][0]["health"] == "healthy");

    assert_eventually!(upstreams(&c, &proxy).await[1]["endpoints"][0]["health"] == "healthy");
    b.kill().await;
    assert_eventually!(upstreams(&c, &proxy).await[1]["endpoints"][0]["health"] == "unhealthy");
    b.restart().await;
    assert_eventually!(upstreams(&c, &proxy).await[1]["endpoints"][0]["health"] == "healthy");
}

/// `grpc-timeout` shortens the deadline; a gRPC client gets DEADLINE_EXCEEDED in gRPC's own
/// terms (trailers-only, HTTP 200), not an HTTP 504.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_is_honoured() {
    let up = Upstream::start().await;
    up.set_delay(Duration::from_secs(3));
    let proxy = TestProxy::start(&config(&endpoints_yaml(&[&up]), "")).await;
    let c = client();
    let t = Instant::now();
    let (status, headers, _) = send(
        &c,
        Request::post(format!("http://{}/pkg.Svc/Method", proxy.addr("inbound")))
            .header("content-type", "application/grpc")
            .header("grpc-timeout", "150m")
            .body(empty())
            .unwrap(),
    )
    .await;
    let took = t.elapsed();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["grpc-status"], "4");
    assert_eq!(headers["tandem-error"], "upstream_timeout");
    assert!(
        took >= Duration::from_millis(150) && took < Duration::from_millis(1000),
        "{took:?}"
    );
}

/// Consistent hashing on a header: a user always reaches the same endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_balancer_is_sticky() {
    let ups = [
        Upstream::start().await,
        Upstream::start().await,
        Upstream::start().await,
    ];
    let proxy = TestProxy::start(&config(
        &endpoints_yaml(&ups.iter().collect::<Vec<_>>()),
        "    balancer: hash:header:x-user",
    ))
    .await;
    let c = client();
    let url = format!("http://{}/", proxy.addr("inbound"));
    let mut spread = 0u32;
    // The ring's points hash the endpoints' addresses, whose ports are random here: with six
    // users all six fell on one endpoint in about 1 run of 250 (3 * 3^-6). With 24 users that
    // is 3 * 3^-24, about 1 in 10^11.
    for i in 0..24 {
        let user = format!("user-{i}");
        let before: Vec<usize> = ups.iter().map(|u| u.requests()).collect();
        for _ in 0..5 {
            let req = Request::get(url.as_str())
                .header("x-user", user.as_str())
                .body(empty())
                .unwrap();
            assert_eq!(send(&c, req).await.0, StatusCode::OK);
        }
        let got: Vec<usize> = ups
            .iter()
            .zip(&before)
            .map(|(u, b)| u.requests() - b)
            .collect();
        assert!(got.contains(&5), "{user}: all to one endpoint: {got:?}");
        spread |= 1 << got.iter().position(|&n| n == 5).unwrap();
    }
    assert!(spread.count_ones() >= 2, "users spread over endpoints");
}

/// A response body that stalls longer than `stream_idle_timeout` is cut off; one that keeps
/// moving streams to the end however long it takes in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_idle_timeout_cuts_stalled_bodies() {
    let up = Upstream::start().await;
    let proxy = TestProxy::start(&config(
        &endpoints_yaml(&[&up]),
        "    stream_idle_timeout: 200ms",
    ))
    .await;
    let c = client();
    let base = format!("http://{}", proxy.addr("inbound"));
    // 6 chunks 100 ms apart: 500 ms in all, never idle for 200 ms.
    let t = Instant::now();
    let (status, _, body) = get(&c, &format!("{base}/stream/6/100")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        t.elapsed() >= Duration::from_millis(450),
        "{:?}",
        t.elapsed()
    );
    let moving = body.len();
    // 3 chunks 600 ms apart: the first arrives, then the body is aborted.
    let res = c
        .request(
            Request::get(format!("{base}/stream/3/600"))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let t = Instant::now();
    let collected = res.into_body().collect().await;
    println!(
        "stream idle 200 ms: a moving stream of {moving} bytes completed; a stalled one ended after {:?} with {}",
        t.elapsed(),
        if collected.is_err() { "an error" } else { "no error" }
    );
    assert!(collected.is_err(), "the stalled body is cut off");
    assert!(
        t.elapsed() < Duration::from_millis(1100),
        "{:?}",
        t.elapsed()
    );
}

/// `max_connections` bounds open upstream connections: beyond it (none idle to close) a
/// request gets 503 `overloaded` at once; idle connections are reused, and one idle at another
/// endpoint is closed to make room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_bounds_upstream_connections() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    a.set_delay(Duration::from_millis(300));
    let proxy = TestProxy::start(&format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
listeners:
  inbound:
    address: "127.0.0.1:0"
    upstream: a
    routes:
      - {{ match: {{ path: {{ prefix: /b }} }}, upstream: a-and-b, name: b }}
upstreams:
  a:
    endpoints: ["{}"]
    limits: {{ max_connections: 2 }}
  a-and-b:
    endpoints: ["{}", "{}"]
    balancer: round_robin
    limits: {{ max_connections: 1 }}
"#,
        a.addr, a.addr, b.addr
    ))
    .await;
    let c = client();
    let url = format!("http://{}/", proxy.addr("inbound"));
    let results: Vec<(StatusCode, String)> = futures_util::future::join_all((0..4).map(|_| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let (s, _, body) = get(&c, &url).await;
            (s, body)
        }
    }))
    .await;
    let ok = results.iter().filter(|r| r.0 == StatusCode::OK).count();
    let refused: Vec<_> = results
        .iter()
        .filter(|r| r.0 == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert_eq!(ok, 2, "{results:?}");
    assert_eq!(refused.len(), 2);
    assert!(refused[0].1.contains("max_connections"), "{}", refused[0].1);
    // Sequential requests reuse the idle connections: never refused, never a third one.
    a.set_delay(Duration::ZERO);
    for _ in 0..10 {
        assert_eq!(get(&c, &url).await.0, StatusCode::OK);
    }
    assert!(
        a.connections() <= 2,
        "connections opened: {}",
        a.connections()
    );
    // One connection for two endpoints, alternating: each request closes the other endpoint's
    // idle connection to make room, and none is refused.
    let before = a.connections();
    for _ in 0..6 {
        assert_eq!(get(&c, &format!("{url}b")).await.0, StatusCode::OK);
    }
    assert_eq!((a.connections() - before, b.connections()), (3, 3));
    assert!(b.open_connections() + a.open_connections() <= 3);
}
