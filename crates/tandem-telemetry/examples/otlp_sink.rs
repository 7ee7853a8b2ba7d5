//! A cheap OTLP trace sink for benchmarks: accepts OTLP/gRPC `TraceService/Export` calls (h2c)
//! and OTLP/HTTP posts (HTTP/1.1 or h2c), reads each request body to its end without decoding
//! it, and answers with an empty `ExportTraceServiceResponse` (every span accepted).
//!
//! The Python sink (`bench/telemetry/otlp_sink.py`, grpcio) shares the load generator's core in
//! the benchmarks and takes ~1.9 µs of it per proxied request (two spans); this one takes
//! ~0.2 µs (`SINK=rust` in `bench/telemetry/run.sh` and `cpu.sh`).
//!
//! ```text
//! cargo run --release -p tandem-telemetry --example otlp_sink -- PORT
//! ```
//! Prints `calls N bytes M` on SIGINT or SIGTERM.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

/// HTTP/2's largest frame.
const MAX_FRAME: u32 = (1 << 24) - 1;
/// Flow-control window: room for several batches in flight.
const WINDOW: u32 = 64 << 20;

#[derive(Default)]
struct Counts {
    calls: AtomicU64,
    bytes: AtomicU64,
}

/// The reply: for gRPC an empty message (a 5-byte frame of length 0) and `grpc-status: 0`
/// trailers; for OTLP/HTTP an empty protobuf body.
struct Reply {
    grpc: bool,
    step: u8,
}

impl Body for Reply {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let step = self.step;
        self.step = step.saturating_add(1);
        Poll::Ready(match (self.grpc, step) {
            (true, 0) => Some(Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0])))),
            (true, 1) => {
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
                Some(Ok(Frame::trailers(trailers)))
            }
            _ => None,
        })
    }

    fn is_end_stream(&self) -> bool {
        !self.grpc || self.step >= 2
    }
}

async fn export(
    req: Request<Incoming>,
    counts: Arc<Counts>,
) -> Result<Response<Reply>, Infallible> {
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let mut body = req.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    counts.calls.fetch_add(1, Ordering::Relaxed);
    counts.bytes.fetch_add(n, Ordering::Relaxed);
    let content_type = if grpc {
        "application/grpc"
    } else {
        "application/x-protobuf"
    };
    let mut res = Response::new(Reply { grpc, step: 0 });
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    Ok(res)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = match std::env::args().nth(1).map(|p| p.parse()) {
        Some(Ok(p)) => p,
        _ => return Err("usage: otlp_sink PORT".into()),
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(SocketAddr::from(([127, 0, 0, 1], port))))
}

async fn run(addr: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(addr).await?;
    let counts = Arc::new(Counts::default());
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    println!("otlp sink on {addr}");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let counts = counts.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| export(req, counts.clone()));
                    let mut builder = auto::Builder::new(TokioExecutor::new());
                    // Frames and windows as large as a batch, as grpcio's server allows: with
                    // h2's 16 KiB frames the exporter writes a 200 KiB batch in a dozen
                    // writes, each waking this sink (measured: +1 µs per proxied request).
                    builder
                        .http2()
                        .max_frame_size(MAX_FRAME)
                        .initial_stream_window_size(WINDOW)
                        .initial_connection_window_size(WINDOW);
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            _ = int.recv() => break,
            _ = term.recv() => break,
        }
    }
    println!(
        "calls {} bytes {}",
        counts.calls.load(Ordering::Relaxed),
        counts.bytes.load(Ordering::Relaxed)
    );
    Ok(())
}
