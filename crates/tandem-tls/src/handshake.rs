//! Why a handshake failed, as one of a few bounded reasons (metric label values, the start of
//! an error message) plus the detail for logs and `tandem-error` bodies.

use std::fmt;

use rustls::{AlertDescription, CertificateError, Error as TlsError};
pub use tandem_telemetry::tls::HANDSHAKE_RESULTS;

/// A failed handshake.
#[derive(Debug)]
pub struct HandshakeError {
    /// Index into [`HANDSHAKE_RESULTS`] (never 0, `ok`).
    pub reason: usize,
    /// What happened, for logs and error bodies.
    pub detail: String,
}

/// The server's identity is not the one the upstream expects (raised by Tandem's verifier).
#[derive(Debug)]
pub struct IdentityMismatch {
    /// What the config expects.
    pub expected: String,
    /// What the certificate holds.
    pub presented: String,
}

const NO_CLIENT_CERT: usize = 1;
const UNKNOWN_CA: usize = 2;
const EXPIRED: usize = 3;
const IDENTITY_MISMATCH: usize = 4;
const BAD_CERTIFICATE: usize = 5;
const PROTOCOL: usize = 6;
const PEER_REJECTED: usize = 7;
const TIMEOUT: usize = 8;
const IO: usize = 9;

impl HandshakeError {
    /// The handshake did not finish in time.
    pub fn timeout(after: std::time::Duration) -> Self {
        HandshakeError {
            reason: TIMEOUT,
            detail: format!("TLS handshake timed out after {after:?}"),
        }
    }

    /// TLS is configured but cannot be used (reported per connection attempt).
    pub fn setup(why: &str) -> Self {
        HandshakeError {
            reason: BAD_CERTIFICATE,
            detail: format!("TLS to this upstream is not usable: {why}"),
        }
    }

    /// Classifies the I/O error a tokio-rustls handshake returned (rustls errors come wrapped).
    pub fn from_io(e: &std::io::Error) -> Self {
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<TlsError>())
        {
            Some(tls) => Self::from_tls(tls),
            None => HandshakeError {
                reason: IO,
                detail: format!("connection failed during the TLS handshake: {e}"),
            },
        }
    }

    /// A TLS alert the peer sent after the handshake looked complete: under TLS 1.3 a server
    /// refuses a client certificate only after the client's side of the handshake finished, so
    /// the refusal surfaces on the first read. `None` for any other I/O error.
    pub fn peer_refused(e: &std::io::Error) -> Option<Self> {
        let detail = |alert: &dyn fmt::Debug| {
            format!(
                "the upstream refused the TLS connection ({alert:?} alert): it does not accept Tandem's client certificate"
            )
        };
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<TlsError>())
        {
            Some(tls @ TlsError::AlertReceived(a)) => {
                let mut h = Self::from_tls(tls);
                h.detail = detail(a);
                Some(h)
            }
            Some(_) => None,
            // h2 keeps only the kind and text of a connection's I/O error: rustls's wording of a
            // received alert is all that is left of it.
            None if e.kind() == std::io::ErrorKind::InvalidData => {
                let text = e.to_string();
                let alert = text.strip_prefix("received fatal alert: ")?;
                Some(HandshakeError {
                    reason: if alert == "CertificateRequired" {
                        NO_CLIENT_CERT
                    } else {
                        PEER_REJECTED
                    },
                    detail: detail(&format_args!("{alert}")),
                })
            }
            None => None,
        }
    }

    /// Classifies a rustls error.
    pub fn from_tls(e: &TlsError) -> Self {
        let reason = match e {
            TlsError::NoCertificatesPresented => NO_CLIENT_CERT,
            TlsError::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => UNKNOWN_CA,
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => EXPIRED,
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => IDENTITY_MISMATCH,
                CertificateError::Other(o) if o.0.downcast_ref::<IdentityMismatch>().is_some() => {
                    IDENTITY_MISMATCH
                }
                _ => BAD_CERTIFICATE,
            },
            TlsError::AlertReceived(a) => match a {
                AlertDescription::CertificateRequired => NO_CLIENT_CERT,
                AlertDescription::ProtocolVersion | AlertDescription::HandshakeFailure => PROTOCOL,
                _ => PEER_REJECTED,
            },
            TlsError::PeerIncompatible(_)
            | TlsError::PeerMisbehaved(_)
            | TlsError::InappropriateMessage { .. }
            | TlsError::InappropriateHandshakeMessage { .. }
            | TlsError::InvalidMessage(_)
            | TlsError::NoApplicationProtocol
            | TlsError::DecryptError => PROTOCOL,
            _ => BAD_CERTIFICATE,
        };
        let detail = match e {
            TlsError::NoCertificatesPresented => {
                "the client presented no certificate (this listener requires mTLS)".to_owned()
            }
            TlsError::AlertReceived(AlertDescription::CertificateRequired) => {
                "the server requires a client certificate and none was sent".to_owned()
            }
            TlsError::AlertReceived(a) => format!("the peer refused the handshake ({a:?} alert)"),
            TlsError::InvalidCertificate(CertificateError::UnknownIssuer) => {
                "the peer's certificate is not signed by a CA in the trust bundle".to_owned()
            }
            TlsError::InvalidCertificate(CertificateError::Other(o)) => o.0.to_string(),
            e => format!("TLS handshake failed: {e}"),
        };
        HandshakeError { reason, detail }
    }

    /// The reason's label value.
    pub fn reason_str(&self) -> &'static str {
        HANDSHAKE_RESULTS.get(self.reason).copied().unwrap_or("io")
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for HandshakeError {}

impl fmt::Display for IdentityMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the upstream's certificate identity ({}) is not the expected {}",
            self.presented, self.expected
        )
    }
}

impl std::error::Error for IdentityMismatch {}

#[cfg(test)]
mod tests {
    use super::*;

    /// An alert is recognised both as the rustls error tokio-rustls returns and as the text h2
    /// keeps of it; other I/O errors are not refusals.
    #[test]
    fn peer_refusals() {
        let typed = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            TlsError::AlertReceived(AlertDescription::UnknownCA),
        );
        let h = HandshakeError::peer_refused(&typed).expect("a refusal");
        assert_eq!(h.reason_str(), "peer_rejected");
        assert!(h.detail.contains("UnknownCA alert"), "{}", h.detail);

        let text = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "received fatal alert: CertificateRequired",
        );
        let h = HandshakeError::peer_refused(&text).expect("a refusal");
        assert_eq!(h.reason_str(), "no_client_cert");
        assert!(
            h.detail.contains("CertificateRequired alert"),
            "{}",
            h.detail
        );

        let other = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert!(HandshakeError::peer_refused(&other).is_none());
    }
}
