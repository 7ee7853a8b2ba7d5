//! TLS origination to an upstream: TLS 1.2 and 1.3 only, the workload certificate presented as
//! the client certificate (mTLS) from the live [`Identity`], and the server verified against the
//! trust bundle and against what the upstream expects ([`Expected`]): one of a list of SPIFFE
//! IDs (or DNS SANs), or a DNS name checked the web PKI way.
//!
//! One config per ALPN offer: `h2` for HTTP/2 connections, `http/1.1` for HTTP/1.1 ones, none for
//! raw streams (TCP, CONNECT, health probes), so the protocol spoken is never a surprise.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    verify_server_cert_signed_by_trust_anchor, verify_server_name, ResolvesClientCert,
};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, OtherError, SignatureScheme};
use tandem_telemetry::tls::HandshakeMetrics;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;

use crate::handshake::{HandshakeError, IdentityMismatch};
use crate::identity::{Expected, Sans};
use crate::pair::provider;
use crate::store::Identity;

/// The application protocol offered in the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    /// `h2`.
    H2,
    /// `http/1.1`.
    Http1,
    /// Nothing (opaque streams).
    None,
}

/// TLS origination for one upstream.
#[derive(Clone, Debug)]
pub struct ClientTls {
    h2: Arc<ClientConfig>,
    http1: Arc<ClientConfig>,
    raw: Arc<ClientConfig>,
    /// SNI and, for [`Expected::DnsName`], the name verified.
    server_name: Option<ServerName<'static>>,
    metrics: Option<HandshakeMetrics>,
}

/// Presents the current workload certificate.
#[derive(Debug)]
struct CurrentCert(Arc<Identity>);

/// Verifies the server against the current trust bundle and the expected identity.
#[derive(Debug)]
struct ExpectedServer {
    identity: Arc<Identity>,
    expected: Expected,
    schemes: Vec<SignatureScheme>,
}

// === impl ClientTls ===

impl ClientTls {
    /// An originator verifying servers per `expected`; `client_cert`: present the workload
    /// certificate. `server_name` is the SNI to send (defaults to the expected DNS name).
    pub fn new(
        identity: Arc<Identity>,
        expected: Expected,
        server_name: Option<String>,
        client_cert: bool,
        metrics: Option<HandshakeMetrics>,
    ) -> Result<ClientTls, rustls::Error> {
        let provider = provider();
        let verifier = Arc::new(ExpectedServer {
            identity: identity.clone(),
            expected: expected.clone(),
            schemes: provider
                .signature_verification_algorithms
                .supported_schemes(),
        });
        let build = |alpn: Alpn| -> Result<Arc<ClientConfig>, rustls::Error> {
            let builder = ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
                .dangerous()
                .with_custom_certificate_verifier(verifier.clone());
            let mut config = if client_cert {
                builder.with_client_cert_resolver(Arc::new(CurrentCert(identity.clone())))
            } else {
                builder.with_no_client_auth()
            };
            config.alpn_protocols = match alpn {
                Alpn::H2 => vec![b"h2".to_vec()],
                Alpn::Http1 => vec![b"http/1.1".to_vec()],
                Alpn::None => Vec::new(),
            };
            Ok(Arc::new(config))
        };
        let name = server_name.filter(|n| !n.is_empty()).or(match &expected {
            Expected::DnsName(n) if !n.is_empty() => Some(n.clone()),
            _ => None,
        });
        let server_name = name
            .map(|n| {
                ServerName::try_from(n.clone()).map_err(|_| {
                    rustls::Error::General(format!("`{n}` is not a valid server name"))
                })
            })
            .transpose()?;
        Ok(ClientTls {
            h2: build(Alpn::H2)?,
            http1: build(Alpn::Http1)?,
            raw: build(Alpn::None)?,
            server_name,
            metrics,
        })
    }

    /// Runs the handshake on `io` to an endpoint whose host is `host` (used as the server name
    /// when none is configured: a DNS name, or an IP address, which sends no SNI).
    pub async fn connect<IO>(
        &self,
        io: IO,
        host: &str,
        alpn: Alpn,
    ) -> Result<TlsStream<IO>, HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let connector = tokio_rustls::TlsConnector::from(match alpn {
            Alpn::H2 => self.h2.clone(),
            Alpn::Http1 => self.http1.clone(),
            Alpn::None => self.raw.clone(),
        });
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => ServerName::try_from(host.to_owned()).map_err(|_| HandshakeError {
                reason: 6,
                detail: format!("`{host}` is not a valid TLS server name; set `tls.server_name`"),
            })?,
        };
        // The caller bounds the whole connect (TCP and handshake) by its connect timeout.
        let result = connector
            .connect(name, io)
            .await
            .map_err(|e| HandshakeError::from_io(&e));
        if let Some(m) = &self.metrics {
            m.record(result.as_ref().map_or_else(|e| e.reason, |_| 0));
        }
        result
    }
}

// === impl CurrentCert ===

impl ResolvesClientCert for CurrentCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

// === impl ExpectedServer ===

impl ServerCertVerifier for ExpectedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let current = self.identity.current();
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &current.roots,
            intermediates,
            now,
            provider().signature_verification_algorithms.all,
        )?;
        match &self.expected {
            Expected::DnsName(_) => verify_server_name(&cert, server_name)?,
            Expected::Identities(ids) => {
                let sans = Sans::of(end_entity).map_err(|_| {
                    rustls::Error::InvalidCertificate(CertificateError::BadEncoding)
                })?;
                if !sans.matches_any(ids) {
                    return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                        OtherError(Arc::new(IdentityMismatch {
                            expected: ids.join(" or "),
                            presented: sans.describe(),
                        })),
                    )));
                }
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}
