//! The admin API: health, readiness, metrics, effective config and upstreams, on loopback or a
//! Unix socket.
//!
//! | path | answer |
//! |---|---|
//! | `GET /live` | `200 live` while the process runs |
//! | `GET /ready` | `200 ready`, or `503` naming what is missing (listeners, app, draining) |
//! | `GET /metrics` | every Tandem metric: OpenMetrics when `Accept` asks for it, else Prometheus text 0.0.4 |
//! | `GET /config` | the effective configuration as JSON |
//! | `GET /upstreams` | upstreams and their endpoints' live state (health, breaker, EWMA latency, in flight, pool) as JSON |
//! | `GET /logs` | log shipping: sources (files with offsets and lag, disk buffers), sinks (state, queue, last error, deliveries), checkpoint, memory budget, as JSON; `404` without `logs:` |
//!
//! Every endpoint is a read-only `GET`; any other method gets `405` with an `Allow` header (axum's
//! method router). An endpoint that changes state must be routed with `post()` only, so a
//! cross-site `GET` (an `<img>` tag, a prefetch) can never trigger it. The address is loopback or
//! a Unix socket unless `admin.allow_remote` is set (`tandem_config::Admin::exposure_error`).
//!
//! The router is a plain function of [`AdminState`] so tests drive it with `oneshot` or a socket.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tandem_config::Config;
use tandem_proxy::Snapshot;
use tandem_telemetry::Metrics;

/// What `/ready` reports: each condition flips once, from the lifecycle in `tandem-app`.
#[derive(Debug, Default)]
pub struct Readiness {
    listeners_bound: AtomicBool,
    app_ready: AtomicBool,
    draining: AtomicBool,
}

/// Log shipping's status as JSON, for `GET /logs` (`tandem_logship::status`).
pub type LogsStatus = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// Shared state of the admin API.
#[derive(Clone)]
pub struct AdminState {
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// Readiness flags.
    pub readiness: Arc<Readiness>,
    /// The effective configuration.
    pub config: Arc<Config>,
    /// The data path's live state (upstreams: health, breakers, load).
    pub snapshot: Arc<Snapshot>,
    /// Log shipping's status, when `logs:` is configured.
    pub logs: Option<LogsStatus>,
}

// === impl Readiness ===

impl Readiness {
    /// Every listener is bound and serving.
    pub fn set_listeners_bound(&self) {
        self.listeners_bound.store(true, Ordering::Release);
    }

    /// The app accepts connections (or Tandem does not supervise one).
    pub fn set_app_ready(&self) {
        self.app_ready.store(true, Ordering::Release);
    }

    /// Draining started; readiness never comes back.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// `Ok` when ready, else what is missing.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.draining.load(Ordering::Acquire) {
            Err("draining")
        } else if !self.listeners_bound.load(Ordering::Acquire) {
            Err("listeners not bound yet")
        } else if !self.app_ready.load(Ordering::Acquire) {
            Err("app not accepting connections yet")
        } else {
            Ok(())
        }
    }
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/live", get(|| async { "live\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/config", get(config))
        .route("/upstreams", get(upstreams))
        .route("/logs", get(logs))
        .with_state(state)
}

async fn ready(State(s): State<AdminState>) -> Response {
    match s.readiness.check() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

/// OpenMetrics when the scraper asks for it (Prometheus does), else Prometheus text 0.0.4.
async fn metrics(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    let wants_openmetrics = headers.get_all(header::ACCEPT).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.contains("application/openmetrics-text"))
    });
    if wants_openmetrics {
        (
            [(header::CONTENT_TYPE, tandem_telemetry::CONTENT_TYPE)],
            s.metrics.encode(),
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                tandem_telemetry::PROMETHEUS_CONTENT_TYPE,
            )],
            s.metrics.encode_prometheus(),
        )
            .into_response()
    }
}

async fn config(State(s): State<AdminState>) -> Response {
    Json(&*s.config).into_response()
}

/// Every upstream with its endpoints' live state: health, breaker, latency estimate, load and
/// pooled connections (see `tandem_proxy::stack::EndpointView`).
async fn upstreams(State(s): State<AdminState>) -> Response {
    Json(s.snapshot.upstreams_view()).into_response()
}

/// Log shipping's live state (`tandem logs status` reads it).
async fn logs(State(s): State<AdminState>) -> Response {
    match &s.logs {
        Some(status) => Json(status()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(
                serde_json::json!({"error": "log shipping is not configured (no `logs:` section)"}),
            ),
        )
            .into_response(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn state() -> AdminState {
        let config = Arc::new(tandem_config::default_config());
        let metrics = Arc::new(Metrics::new());
        AdminState {
            snapshot: Arc::new(Snapshot::build(config.clone(), &metrics)),
            metrics,
            readiness: Arc::new(Readiness::default()),
            config,
            logs: None,
        }
    }

    async fn get(r: &Router, path: &str) -> (StatusCode, String) {
        let res = r
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    /// `/ready` walks through its states; it never returns once draining.
    #[tokio::test]
    async fn readiness_states() {
        let s = state();
        let r = router(s.clone());
        assert_eq!(get(&r, "/live").await.0, StatusCode::OK);
        assert_eq!(
            get(&r, "/ready").await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: listeners not bound yet\n".into()
            )
        );
        s.readiness.set_listeners_bound();
        assert_eq!(
            get(&r, "/ready").await.1,
            "not ready: app not accepting connections yet\n"
        );
        s.readiness.set_app_ready();
        assert_eq!(get(&r, "/ready").await, (StatusCode::OK, "ready\n".into()));
        s.readiness.set_draining();
        assert_eq!(get(&r, "/ready").await.0, StatusCode::SERVICE_UNAVAILABLE);
    }

    /// `/upstreams` and `/config` describe the effective configuration.
    #[tokio::test]
    async fn config_views() {
        let r = router(state());
        let (status, body) = get(&r, "/upstreams").await;
        assert_eq!(status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v[0]["name"], "app");
        assert_eq!(v[0]["endpoints"][0]["address"], "127.0.0.1:8080");
        assert_eq!(v[0]["endpoints"][0]["breaker"], "closed");
        assert_eq!(v[0]["endpoints"][0]["health"], "unknown");
        assert_eq!(v[0]["endpoints"][0]["eligible"], true);
        assert_eq!(v[0]["endpoints"][0]["in_flight"], 0);
        let (status, body) = get(&r, "/logs").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("not configured"), "{body}");
        let (_, body) = get(&r, "/config").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            v["listeners"].as_array().is_some_and(|l| l.len() == 2),
            "{v}"
        );
    }
}
