//! TLS metrics: handshakes per listener or upstream by result, certificate expiry, and
//! certificate reloads by result.
//!
//! Results are a fixed set ([`HANDSHAKE_RESULTS`]) and names come from the config, so the series
//! are bounded by it. Handles are resolved once per listener or upstream.

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

pub use prometheus_client::metrics::{counter::Counter, gauge::Gauge};

use crate::Metrics;

/// Handshake results, in [`HandshakeMetrics`] order: `ok`, then the bounded failure reasons.
pub const HANDSHAKE_RESULTS: [&str; 10] = [
    "ok",
    "no_client_cert",
    "unknown_ca",
    "expired",
    "identity_mismatch",
    "bad_certificate",
    "protocol",
    "peer_rejected",
    "timeout",
    "io",
];

/// Which side of Tandem a handshake was on.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Side {
    /// TLS termination on a listener.
    Listener,
    /// TLS origination to an upstream.
    Upstream,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct HandshakeLabels {
    side: Side,
    name: String,
    result: &'static str,
}

// `listener="x"` or `upstream="y"`: the label name says the side, as in every other family.
impl EncodeLabelSet for HandshakeLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let side = match self.side {
            Side::Listener => "listener",
            Side::Upstream => "upstream",
        };
        [(side, self.name.as_str()), ("result", self.result)].encode(encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct CertLabels {
    certificate: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The TLS metric families (part of [`Metrics`]).
pub(crate) struct TlsFamilies {
    handshakes: Family<HandshakeLabels, Counter>,
    expiry: Family<CertLabels, Gauge>,
    reloads: Family<ResultLabels, Counter>,
}

/// Handshake counters of one listener or upstream, indexed like [`HANDSHAKE_RESULTS`].
#[derive(Clone, Debug)]
pub struct HandshakeMetrics(std::sync::Arc<[Counter; HANDSHAKE_RESULTS.len()]>);

/// The identity's certificate metrics.
#[derive(Clone, Debug)]
pub struct CertMetrics {
    /// `notAfter` of the workload certificate, Unix seconds.
    pub workload_expiry: Gauge,
    /// Earliest `notAfter` among the trust bundle's CAs, Unix seconds.
    pub bundle_expiry: Gauge,
    /// Reloads that swapped in a new pair.
    pub reload_ok: Counter,
    /// Reloads refused (the last good pair kept serving).
    pub reload_error: Counter,
}

// === impl TlsFamilies ===

impl TlsFamilies {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let handshakes = Family::<HandshakeLabels, Counter>::default();
        registry.register(
            "tls_handshakes",
            "TLS handshakes by listener (termination) or upstream (origination) and result",
            handshakes.clone(),
        );
        let expiry = Family::<CertLabels, Gauge>::default();
        registry.register(
            "tls_cert_expiry_timestamp_seconds",
            "notAfter of the certificate in use (workload) and the earliest of the trust bundle's CAs (trust_bundle), Unix seconds",
            expiry.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "tls_cert_reload",
            "Certificate reloads: ok (new pair in use) or error (refused, the last good pair kept)",
            reloads.clone(),
        );
        TlsFamilies {
            handshakes,
            expiry,
            reloads,
        }
    }
}

// === impl HandshakeMetrics ===

impl HandshakeMetrics {
    /// Counts one handshake with result `HANDSHAKE_RESULTS[result]`.
    pub fn record(&self, result: usize) {
        if let Some(c) = self.0.get(result) {
            c.inc();
        }
    }
}

impl Metrics {
    /// Resolves the handshake counters of a listener or upstream named `name`.
    pub fn tls_handshakes(&self, side: Side, name: &str) -> HandshakeMetrics {
        let tls = &self.tls;
        HandshakeMetrics(std::sync::Arc::new(HANDSHAKE_RESULTS.map(|result| {
            tls.handshakes
                .get_or_create(&HandshakeLabels {
                    side,
                    name: name.to_owned(),
                    result,
                })
                .clone()
        })))
    }

    /// The identity's certificate gauges and reload counters.
    pub fn tls_certs(&self) -> CertMetrics {
        let tls = &self.tls;
        let gauge = |certificate| {
            tls.expiry
                .get_or_create(&CertLabels { certificate })
                .clone()
        };
        let count = |result| tls.reloads.get_or_create(&ResultLabels { result }).clone();
        CertMetrics {
            workload_expiry: gauge("workload"),
            bundle_expiry: gauge("trust_bundle"),
            reload_ok: count("ok"),
            reload_error: count("error"),
        }
    }
}
