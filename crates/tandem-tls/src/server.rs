//! TLS termination on a listener: TLS 1.2 and 1.3 only, ALPN `h2` and `http/1.1` (so one
//! listener serves both over TLS), the workload certificate from the live [`Identity`], and
//! client certificates verified against its trust bundle when the listener asks for them.
//!
//! The verified client's identity (SPIFFE ID, else DNS SAN) comes back with the stream.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};
use tandem_telemetry::tls::HandshakeMetrics;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

use crate::handshake::HandshakeError;
use crate::identity::identity_of;
use crate::pair::provider;
use crate::store::Identity;

/// Whether a listener asks for client certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client must present a certificate from the trust bundle (mTLS).
    Required,
    /// A client may present one; if it does, it must verify.
    Optional,
    /// Server-only TLS.
    None,
}

/// TLS termination for one listener.
#[derive(Clone, Debug)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    timeout: Duration,
    metrics: Option<HandshakeMetrics>,
}

/// Serves the current workload certificate, whatever the SNI (one identity per workload).
#[derive(Debug)]
struct CurrentCert(Arc<Identity>);

/// Verifies client certificates against the current trust bundle.
#[derive(Debug)]
struct BundleVerifier {
    identity: Arc<Identity>,
    mandatory: bool,
    schemes: Vec<SignatureScheme>,
}

// === impl ServerTls ===

impl ServerTls {
    /// A terminator using `identity`, asking for client certificates per `auth`, bounding each
    /// handshake by `timeout`.
    pub fn new(
        identity: Arc<Identity>,
        auth: ClientAuth,
        timeout: Duration,
        metrics: Option<HandshakeMetrics>,
    ) -> Result<ServerTls, rustls::Error> {
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let builder = match auth {
            ClientAuth::None => builder.with_no_client_auth(),
            ClientAuth::Required | ClientAuth::Optional => {
                builder.with_client_cert_verifier(Arc::new(BundleVerifier {
                    identity: identity.clone(),
                    mandatory: auth == ClientAuth::Required,
                    schemes: provider
                        .signature_verification_algorithms
                        .supported_schemes(),
                }))
            }
        };
        let mut config = builder.with_cert_resolver(Arc::new(CurrentCert(identity)));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // Sidecar peers keep connections open; session tickets would only add bytes that a
        // client reads after the handshake.
        config.send_tls13_tickets = 0;
        Ok(ServerTls {
            config: Arc::new(config),
            timeout,
            metrics,
        })
    }

    /// Runs the handshake on `io`: the stream and the client's verified identity (`None`
    /// without a client certificate).
    pub async fn accept<IO>(
        &self,
        io: IO,
    ) -> Result<(TlsStream<IO>, Option<String>), HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.clone());
        let accept = acceptor.accept(io).into_fallible();
        let result = match tokio::time::timeout(self.timeout, accept).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err((e, io))) => {
                lingering_close(io).await;
                Err(HandshakeError::from_io(&e))
            }
            Err(_) => Err(HandshakeError::timeout(self.timeout)),
        };
        if let Some(m) = &self.metrics {
            m.record(result.as_ref().map_or_else(|e| e.reason, |_| 0));
        }
        let stream = result?;
        let identity = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(identity_of);
        Ok((stream, identity))
    }
}

/// Closes a refused connection so that the client reads the alert rustls wrote: FIN first,
/// then whatever the client had already sent is read and dropped (bounded). Closing with unread
/// bytes would send a RST, and a client (under TLS 1.3, already writing its request) could lose
/// the alert and see only a reset.
async fn lingering_close<IO: AsyncRead + AsyncWrite + Unpin>(mut io: IO) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const LINGER: Duration = Duration::from_millis(500);
    let drain = async {
        let _ = io.shutdown().await;
        let mut buf = [0u8; 4096];
        while let Ok(n) = io.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

// === impl CurrentCert ===

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().key.clone())
    }
}

// === impl BundleVerifier ===

impl ClientCertVerifier for BundleVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The bundle changes at runtime and the hints are only hints: send none, clients then
        // offer the certificate they have.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // The current bundle's verifier, so a rotated bundle applies to the next handshake.
        match &self.identity.current().client_verifier {
            Some(v) => v.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::General(
                "no trust bundle to verify client certificates with".into(),
            )),
        }
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
