//! Checks the `tracing` section: the collector URL against the chosen protocol, the sampling
//! ratio, the propagation list, resource attributes and the export queue's bounds.

use std::time::Duration;

use super::{fmt_duration, Checker};
use crate::model::{Otlp, OtlpProtocol, Propagation, Tracing};
use crate::raw::{RawOtlp, RawOtlpProtocol, RawPropagation, RawTracing};

/// Most spans a queue may hold: each waiting span holds a few hundred bytes.
const MAX_QUEUE: usize = 1 << 20;

/// The OTLP/gRPC and OTLP/HTTP ports registered with IANA.
const GRPC_PORT: u16 = 4317;
const HTTP_PORT: u16 = 4318;

/// Checks `raw` (the section at `tracing`).
pub(super) fn check_tracing(c: &mut Checker, raw: &RawTracing) -> Tracing {
    let key = "tracing";
    let sample_ratio = match raw.sample_ratio {
        None => 1.0,
        Some(r) if (0.0..=1.0).contains(&r) => r,
        Some(r) => {
            c.err(
                format!("{key}.sample_ratio"),
                format!("{r} is not a ratio from 0 to 1"),
                "use 0.0 (record only traces a caller sampled) to 1.0 (every request), e.g. 0.1",
            );
            1.0
        }
    };
    let propagation = match &raw.propagation {
        None => vec![Propagation::W3c],
        Some(list) if list.is_empty() => {
            c.err(
                format!("{key}.propagation"),
                "the propagation list is empty, so no trace would reach or leave Tandem",
                "remove `propagation` for the default [w3c], or list formats: [w3c, b3]",
            );
            vec![Propagation::W3c]
        }
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for (i, p) in list.iter().enumerate() {
                let p = match p {
                    RawPropagation::W3c => Propagation::W3c,
                    RawPropagation::B3 => Propagation::B3,
                    RawPropagation::B3multi => Propagation::B3multi,
                };
                if out.contains(&p) {
                    c.err(
                        format!("{key}.propagation[{i}]"),
                        "this format is listed twice",
                        "list each format once",
                    );
                } else {
                    out.push(p);
                }
            }
            out
        }
    };
    let service_name = match raw.service_name.as_deref().map(str::trim) {
        None => "tandem".to_owned(),
        Some("") => {
            c.err(
                format!("{key}.service_name"),
                "the service name is empty",
                "name the service the spans belong to, e.g. orders-sidecar, or remove the key \
                 for \"tandem\"",
            );
            "tandem".to_owned()
        }
        Some(name) => name.to_owned(),
    };
    let mut resource = Vec::with_capacity(raw.resource.len());
    for (name, value) in &raw.resource {
        let rkey = format!("{key}.resource.{name}");
        if name.trim().is_empty() {
            c.err(
                &rkey,
                "a resource attribute needs a name",
                "use a dotted name, e.g. deployment.environment",
            );
        } else if name == "service.name" {
            c.err(
                &rkey,
                "service.name is set by `service_name`",
                format!("remove it here and write `service_name: {value}` under `tracing`"),
            );
        } else {
            resource.push((name.clone(), value.clone()));
        }
    }
    let queue = match raw.queue {
        None => 2048,
        Some(q) if (1..=MAX_QUEUE).contains(&q) => q,
        Some(q) => {
            c.err(
                format!("{key}.queue"),
                format!("a queue of {q} spans is out of range"),
                format!("use 1 to {MAX_QUEUE} (default 2048)"),
            );
            2048
        }
    };
    let batch = match raw.batch {
        None => 512.min(queue),
        Some(0) => {
            c.err(
                format!("{key}.batch"),
                "a batch of 0 spans would export nothing",
                "use at least 1 (default 512)",
            );
            512.min(queue)
        }
        Some(b) if b > queue => {
            c.err(
                format!("{key}.batch"),
                format!("a batch of {b} spans is larger than the queue of {queue}"),
                format!("use a batch up to the queue size ({queue}), or raise `queue`"),
            );
            queue
        }
        Some(b) => b,
    };
    Tracing {
        otlp: check_otlp(c, &format!("{key}.otlp"), &raw.otlp),
        sample_ratio,
        propagation,
        service_name,
        resource,
        queue,
        batch,
        flush_interval: c.duration(
            &format!("{key}.flush_interval"),
            raw.flush_interval.as_deref(),
            Duration::from_secs(1),
        ),
    }
}

fn check_otlp(c: &mut Checker, key: &str, raw: &RawOtlp) -> Otlp {
    let protocol = match raw.protocol {
        Some(RawOtlpProtocol::Grpc) => OtlpProtocol::Grpc,
        Some(RawOtlpProtocol::HttpProtobuf) | None => OtlpProtocol::HttpProtobuf,
    };
    let timeout = c.duration(
        &format!("{key}.timeout"),
        raw.timeout.as_deref(),
        Duration::from_secs(10),
    );
    let ekey = format!("{key}.endpoint");
    let text = raw.endpoint.trim();
    let example = match protocol {
        OtlpProtocol::Grpc => "http://127.0.0.1:4317",
        OtlpProtocol::HttpProtobuf => "http://127.0.0.1:4318",
    };
    let fallback = Otlp {
        endpoint: example.to_owned(),
        protocol,
        timeout,
    };
    let uri = match text.parse::<http::Uri>() {
        Ok(u) => u,
        Err(e) => {
            c.err(
                &ekey,
                format!("`{text}` is not a URL ({e})"),
                format!("use http://HOST:PORT, e.g. {example}"),
            );
            return fallback;
        }
    };
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            c.err(
                &ekey,
                "TLS to the collector is not supported yet",
                format!(
                    "use http:// with a collector on this host or a trusted network (e.g. a \
                     local OpenTelemetry Collector agent): {}",
                    text.replacen("https://", "http://", 1)
                ),
            );
            return fallback;
        }
        Some(other) => {
            c.err(
                &ekey,
                format!("`{other}` is not a collector URL scheme"),
                format!("use http://HOST:PORT, e.g. {example}"),
            );
            return fallback;
        }
        None => {
            c.err(
                &ekey,
                format!("`{text}` has no scheme"),
                format!("write it as http://{text}"),
            );
            return fallback;
        }
    }
    let Some(authority) = uri.authority().filter(|a| !a.host().is_empty()) else {
        c.err(
            &ekey,
            format!("`{text}` names no host"),
            format!("use http://HOST:PORT, e.g. {example}"),
        );
        return fallback;
    };
    if uri.query().is_some() {
        c.err(
            &ekey,
            "a collector URL has no query string",
            "remove the part from '?'",
        );
    }
    let path = uri.path();
    let endpoint = match protocol {
        OtlpProtocol::Grpc if path.is_empty() || path == "/" => format!("http://{authority}"),
        OtlpProtocol::Grpc => {
            c.err(
                &ekey,
                format!("`{path}`: an OTLP/gRPC collector is addressed without a path"),
                format!(
                    "write http://{authority}; or, if the collector takes OTLP over HTTP at \
                     this path, set `protocol: http/protobuf`"
                ),
            );
            format!("http://{authority}")
        }
        OtlpProtocol::HttpProtobuf if path.is_empty() || path == "/" => {
            format!("http://{authority}/v1/traces")
        }
        OtlpProtocol::HttpProtobuf => format!("http://{authority}{path}"),
    };
    // The most common mistake: the gRPC port with the default protocol, which would send HTTP
    // requests a gRPC server cannot answer.
    if raw.protocol.is_none() && authority.port_u16() == Some(GRPC_PORT) {
        c.err(
            format!("{key}.protocol"),
            format!(
                "port {GRPC_PORT} is OTLP/gRPC's, but the protocol is http/protobuf (the default)"
            ),
            format!("add `protocol: grpc`, or use port {HTTP_PORT} for OTLP over HTTP"),
        );
    }
    if timeout > Duration::from_secs(60) {
        c.err(
            format!("{key}.timeout"),
            format!(
                "an export timeout of {} lets one stuck request hold a batch that long while \
                 new spans are dropped",
                fmt_duration(timeout)
            ),
            "use up to 60s (default 10s)",
        );
    }
    Otlp {
        endpoint,
        protocol,
        timeout,
    }
}
