//! Active health checks: one task per endpoint of an upstream with `health_check`, probing it
//! every `interval` (plus up to `jitter`, so endpoints are not probed in step) over a connection
//! of its own, never a pooled one.
//!
//! Probes: HTTP `GET path` over HTTP/1.1 (passes on a status in `expect`), a TCP connect, or
//! `grpc.health.v1.Health/Check` over h2c (passes on `SERVING`). `unhealthy_threshold` failures
//! in a row make an endpoint unhealthy (the balancer skips it); `healthy_threshold` passes in a
//! row make it healthy again. Until the first verdict an endpoint counts as eligible, so a
//! starting sidecar serves at once.
//!
//! Active and passive results combine: an unhealthy endpoint is skipped whatever its breaker
//! says, and a passing probe of an endpoint its breaker ejected ends the ejection early (the next
//! request is the half-open probe) rather than waiting out the back-off.
//!
//! The tasks hold the upstream weakly and end when the snapshot that owns it is dropped.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tandem_tls::client::Alpn;

use bytes::{Buf, Bytes};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tandem_config::{HealthCheck, HealthProbe};
use tandem_telemetry::EndpointMetrics;
use tokio::time::Instant;

use crate::balance::{EndpointState, Health};
use crate::pool::Endpoint;
use crate::stack::{Members, Snapshot, UpstreamHandle};

/// Starts the health-check tasks of every upstream in `snapshot` that has a health check.
/// Must be called inside a tokio runtime. Endpoints that discovery adds later get their task
/// when they join (`UpstreamHandle::set_endpoints` starts them).
pub fn spawn_all(snapshot: &Snapshot) {
    for upstream in snapshot.upstreams.values() {
        let Some(check) = upstream.health_check.clone() else {
            continue;
        };
        // Under the upstream's update lock: a set applied concurrently is either seen here
        // or sees the flag and starts its joiners' checkers itself.
        upstream.with_update_lock(|| {
            if upstream.health_started.swap(true, Ordering::AcqRel) {
                return;
            }
            let members = upstream.members();
            for i in 0..members.len() {
                spawn_one(upstream, &members, i, check.clone());
            }
        });
    }
}

/// Starts the health-check task of endpoint `i` of `members`, an endpoint set of `upstream`.
pub(crate) fn spawn_one(
    upstream: &Arc<UpstreamHandle>,
    members: &Members,
    i: usize,
    check: HealthCheck,
) {
    let (Some(endpoint), Some(state), Some(metrics)) = (
        members.endpoints.get(i),
        members.states.get(i),
        members.metrics.get(i),
    ) else {
        return;
    };
    tokio::spawn(run(
        Arc::downgrade(upstream),
        Arc::downgrade(endpoint),
        Arc::downgrade(state),
        metrics.clone(),
        check,
    ));
}

/// Probes one endpoint until it leaves its upstream (no endpoint set holds it any more) or the
/// upstream is gone.
async fn run(
    upstream: Weak<UpstreamHandle>,
    endpoint: Weak<Endpoint>,
    state: Weak<EndpointState>,
    metrics: EndpointMetrics,
    check: HealthCheck,
) {
    let mut passes = 0u32;
    let mut failures = 0u32;
    // The first probe goes out within the first jitter, so a verdict comes quickly.
    let mut wait = jitter(check.jitter);
    loop {
        tokio::time::sleep(wait).await;
        wait = check.interval + jitter(check.jitter);
        let Some(up) = upstream.upgrade() else { return };
        let Some(ep) = endpoint.upgrade() else { return };
        let connector = ep.connector().clone();
        let label = ep.label.clone();
        // Not holding the upstream or the endpoint while probing: a reload or a discovery
        // change must be able to drop them.
        drop(ep);
        drop(up);
        let result = tokio::time::timeout(check.timeout, probe(&connector, &label, &check.probe))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", check.timeout)));

        let Some(up) = upstream.upgrade() else { return };
        let Some(state) = state.upgrade() else {
            return;
        };
        let m = &metrics;
        match result {
            Ok(()) => {
                m.checks_passed.inc();
                failures = 0;
                passes += 1;
                if state.health() != Health::Healthy
                    && (state.health() == Health::Unknown || passes >= check.healthy_threshold)
                {
                    if state.health() == Health::Unhealthy {
                        tracing::info!(upstream = %up.name, endpoint = %label, "endpoint healthy again (active health check)");
                    }
                    state.set_health(Health::Healthy);
                    m.healthy.set(1);
                }
                state.outlier.half_open_now(Instant::now());
            }
            Err(why) => {
                m.checks_failed.inc();
                passes = 0;
                failures += 1;
                if state.health() != Health::Unhealthy && failures >= check.unhealthy_threshold {
                    tracing::warn!(upstream = %up.name, endpoint = %label, reason = %why, failures, "endpoint unhealthy (active health check)");
                    state.set_health(Health::Unhealthy);
                    m.healthy.set(0);
                } else {
                    tracing::debug!(upstream = %up.name, endpoint = %label, reason = %why, "health check failed");
                }
            }
        }
    }
}

fn jitter(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    Duration::from_nanos(fastrand::u64(
        ..=max.as_nanos().min(u128::from(u64::MAX)) as u64,
    ))
}

/// One probe; `Err` says why it failed.
async fn probe(
    connector: &crate::pool::Connector,
    authority: &str,
    probe: &HealthProbe,
) -> Result<(), String> {
    // Over TLS, ALPN names the protocol the probe speaks (gRPC servers insist on `h2`).
    let alpn = match probe {
        HealthProbe::Tcp => Alpn::None,
        HealthProbe::Http { .. } => Alpn::Http1,
        HealthProbe::Grpc { .. } => Alpn::H2,
    };
    let io = connector
        .connect_alpn(alpn)
        .await
        .map_err(|e| e.to_string())?;
    match probe {
        HealthProbe::Tcp => Ok(()),
        HealthProbe::Http { path, expect } => {
            let (mut tx, conn) = http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let req = Request::get(path.as_str())
                .header(http::header::HOST, authority)
                .header(http::header::USER_AGENT, "tandem-health-check")
                .header(http::header::CONNECTION, "close")
                .body(Empty::new())
                .map_err(|e| e.to_string())?;
            let res = tx.send_request(req).await.map_err(|e| e.to_string())?;
            let status = res.status().as_u16();
            if expect.iter().any(|(lo, hi)| (*lo..=*hi).contains(&status)) {
                Ok(())
            } else {
                Err(format!("status {status}"))
            }
        }
        HealthProbe::Grpc { service } => {
            let (mut tx, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let req = Request::post(format!("http://{authority}/grpc.health.v1.Health/Check"))
                .header(http::header::CONTENT_TYPE, "application/grpc")
                .header("te", "trailers")
                .header(http::header::USER_AGENT, "tandem-health-check")
                .body(Full::new(grpc_check_request(service)))
                .map_err(|e| e.to_string())?;
            let res = tx.send_request(req).await.map_err(|e| e.to_string())?;
            if res.status() != StatusCode::OK {
                return Err(format!("HTTP status {}", res.status().as_u16()));
            }
            // A trailers-only error answer carries grpc-status in the head.
            if let Some(code) = res.headers().get("grpc-status").filter(|v| *v != "0") {
                return Err(format!(
                    "grpc-status {}",
                    String::from_utf8_lossy(code.as_bytes())
                ));
            }
            let collected = res.into_body().collect().await.map_err(|e| e.to_string())?;
            if let Some(code) = collected
                .trailers()
                .and_then(|t| t.get("grpc-status"))
                .filter(|v| *v != "0")
            {
                return Err(format!(
                    "grpc-status {}",
                    String::from_utf8_lossy(code.as_bytes())
                ));
            }
            match grpc_serving_status(collected.to_bytes()) {
                Some(1) => Ok(()),
                Some(s) => Err(format!("health status {s} (1 is SERVING)")),
                None => Err("undecodable HealthCheckResponse".into()),
            }
        }
    }
}

/// A length-prefixed `HealthCheckRequest { service }` (field 1, string).
fn grpc_check_request(service: &str) -> Bytes {
    let mut msg = Vec::with_capacity(service.len() + 3);
    if !service.is_empty() {
        msg.push(0x0a);
        push_varint(&mut msg, service.len() as u64);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut out = Vec::with_capacity(5 + msg.len());
    out.push(0);
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(&msg);
    Bytes::from(out)
}

fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn read_varint(b: &mut Bytes) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        if !b.has_remaining() {
            return None;
        }
        let byte = b.get_u8();
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The `status` (field 1) of a length-prefixed `HealthCheckResponse`; 0 (UNKNOWN) when absent.
fn grpc_serving_status(mut body: Bytes) -> Option<u64> {
    if body.len() < 5 || body[0] != 0 {
        return None;
    }
    body.advance(1);
    let len = body.get_u32() as usize;
    if body.len() < len {
        return None;
    }
    let mut msg = body.split_to(len);
    let mut status = 0;
    while msg.has_remaining() {
        let key = read_varint(&mut msg)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = read_varint(&mut msg)?,
            (_, 0) => {
                read_varint(&mut msg)?;
            }
            (_, 2) => {
                let n = read_varint(&mut msg)? as usize;
                if msg.len() < n {
                    return None;
                }
                msg.advance(n);
            }
            (_, 1) if msg.len() >= 8 => msg.advance(8),
            (_, 5) if msg.len() >= 4 => msg.advance(4),
            _ => return None,
        }
    }
    Some(status)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The request is `0x0a len service` behind a 5-byte prefix; responses decode their status,
    /// skipping unknown fields; junk is rejected.
    #[test]
    fn grpc_health_messages() {
        assert_eq!(&grpc_check_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &grpc_check_request("orders")[..],
            &[0, 0, 0, 0, 8, 0x0a, 6, b'o', b'r', b'd', b'e', b'r', b's']
        );
        assert_eq!(
            grpc_serving_status(Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 1])),
            Some(1)
        );
        assert_eq!(
            grpc_serving_status(Bytes::from_static(&[0, 0, 0, 0, 5, 0x12, 1, b'x', 0x08, 2])),
            Some(2)
        );
        assert_eq!(
            grpc_serving_status(Bytes::from_static(&[0, 0, 0, 0, 0])),
            Some(0)
        );
        assert_eq!(
            grpc_serving_status(Bytes::from_static(&[0, 0, 0, 0, 9, 0x08])),
            None
        );
        assert_eq!(
            grpc_serving_status(Bytes::from_static(&[1, 0, 0, 0, 0])),
            None
        );
    }
}
