//! The HTTP sink: NDJSON batches POSTed to a URL, over pooled HTTP/1.1 keep-alive connections
//! (hyper's client).
//!
//! A 2xx answer is a delivery. 429 and 503 are retried after their `Retry-After` (seconds or an
//! HTTP date) when they carry one; every other failure (no connection, a timeout, any other
//! status) is retried after the driver's back-off. The answer's body is read (at most 64 KiB,
//! for the log line of a failure) so the connection can be reused.

use std::io::Write;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use http::header::{HeaderMap, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tandem_config::HttpLogSink;

use super::{encode, BoxFuture, Failure, Outcome, RetryReason, Sink};
use crate::record::Chunk;

/// Bytes of an answer's body read (for the log) before giving up on it.
const MAX_ANSWER: usize = 64 * 1024;

/// NDJSON over HTTP.
pub struct HttpSink {
    client: Client<HttpConnector, Full<Bytes>>,
    url: Uri,
    headers: HeaderMap,
    gzip: bool,
    timeout: Duration,
}

impl HttpSink {
    /// A sink for `cfg` (no connection is made until the first batch).
    pub fn new(cfg: &HttpLogSink) -> HttpSink {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(cfg.timeout.min(Duration::from_secs(10))));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(8)
            .build(connector);
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        if cfg.gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        for (k, v) in &cfg.headers {
            headers.insert(k.clone(), v.clone());
        }
        HttpSink {
            client,
            url: cfg.url.clone(),
            headers,
            gzip: cfg.gzip,
            timeout: cfg.timeout,
        }
    }

    async fn post(&self, body: Bytes) -> Outcome {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.url.clone();
        *req.headers_mut() = self.headers.clone();
        let exchange = async {
            let resp = self.client.request(req).await?;
            let (parts, body) = resp.into_parts();
            // Reading the body lets the connection be reused; its text goes into the log.
            let text = Limited::new(body, MAX_ANSWER)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok::<_, hyper_util::client::legacy::Error>((parts.status, parts.headers, text))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => retry(
                RetryReason::Timeout,
                None,
                format!(
                    "no complete answer within {}",
                    humantime::format_duration(self.timeout)
                ),
            ),
            Ok(Err(e)) => {
                let reason = if e.is_connect() {
                    RetryReason::Connect
                } else {
                    RetryReason::Io
                };
                retry(reason, None, error_chain(&e))
            }
            Ok(Ok((status, headers, text))) => classify(status, &headers, &text, SystemTime::now()),
        }
    }
}

impl Sink for HttpSink {
    fn encode(&self, batch: &[std::sync::Arc<Chunk>], out: &mut Vec<u8>) {
        if !self.gzip {
            encode::ndjson(batch, out);
            return;
        }
        let mut raw = Vec::with_capacity(batch.iter().map(|c| c.bytes).sum::<usize>() * 2);
        encode::ndjson(batch, &mut raw);
        // Fast compression: log lines compress well even at level 1, and CPU per line matters
        // more in a sidecar than the last few percent of bytes.
        let mut gz = GzEncoder::new(out, Compression::fast());
        // Writing into a Vec cannot fail.
        let _ = gz.write_all(&raw);
        let _ = gz.finish();
    }

    fn send(&self, body: Bytes) -> BoxFuture<'_, Outcome> {
        Box::pin(self.post(body))
    }
}

/// What an answer means for the batch: 2xx delivered; else retried, after `Retry-After` when a
/// 429 or 503 carries one.
pub fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Outcome {
    if status.is_success() {
        return Outcome::Delivered;
    }
    let snippet = String::from_utf8_lossy(&body[..body.len().min(200)]);
    let detail = format!("status {status}: {}", snippet.trim());
    let after = || headers.get(RETRY_AFTER).and_then(|v| retry_after(v, now));
    match status.as_u16() {
        429 => retry(RetryReason::Status429, after(), detail),
        503 => retry(RetryReason::Status5xx, after(), detail),
        500..=599 => retry(RetryReason::Status5xx, None, detail),
        _ => retry(RetryReason::StatusOther, None, detail),
    }
}

/// A `Retry-After` value: delay-seconds, or an HTTP date (a date in the past means now).
pub fn retry_after(v: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let s = v.to_str().ok()?.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(s).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn retry(reason: RetryReason, after: Option<Duration>, detail: String) -> Outcome {
    Outcome::Retry(Failure {
        reason,
        after,
        detail,
    })
}

/// An error with its causes, `a: b: c` (hyper's own message is often just "client error").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, retry: Option<&str>) -> Outcome {
        let mut h = HeaderMap::new();
        if let Some(r) = retry {
            h.insert(
                RETRY_AFTER,
                HeaderValue::from_str(r).unwrap_or(HeaderValue::from_static("x")),
            );
        }
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        classify(
            StatusCode::from_u16(code).unwrap_or(StatusCode::OK),
            &h,
            b"busy",
            now,
        )
    }

    fn failure(o: Outcome) -> Failure {
        match o {
            Outcome::Retry(f) => f,
            Outcome::Delivered => panic!("expected a retry"),
        }
    }

    /// 2xx is delivery; 429 and 503 honour Retry-After in both forms; other statuses retry on
    /// the back-off, with the status and body in the detail.
    #[test]
    fn answers_are_classified() {
        assert!(matches!(status(200, None), Outcome::Delivered));
        assert!(matches!(status(204, Some("5")), Outcome::Delivered));
        let f = failure(status(429, Some("2")));
        assert_eq!(
            (f.reason, f.after),
            (RetryReason::Status429, Some(Duration::from_secs(2)))
        );
        assert!(
            f.detail.contains("429") && f.detail.contains("busy"),
            "{}",
            f.detail
        );
        // 1_700_000_000 is Tue, 14 Nov 2023 22:13:20 GMT.
        let f = failure(status(503, Some("Tue, 14 Nov 2023 22:13:50 GMT")));
        assert_eq!(
            (f.reason, f.after),
            (RetryReason::Status5xx, Some(Duration::from_secs(30)))
        );
        let f = failure(status(503, Some("Tue, 14 Nov 2023 22:00:00 GMT")));
        assert_eq!(f.after, Some(Duration::ZERO), "a past date means now");
        let f = failure(status(500, Some("9")));
        assert_eq!(
            (f.reason, f.after),
            (RetryReason::Status5xx, None),
            "only 429/503 say when"
        );
        let f = failure(status(429, Some("soon")));
        assert_eq!(
            f.after, None,
            "an unreadable Retry-After falls back to the back-off"
        );
        assert_eq!(failure(status(400, None)).reason, RetryReason::StatusOther);
        assert_eq!(failure(status(302, None)).reason, RetryReason::StatusOther);
    }
}
