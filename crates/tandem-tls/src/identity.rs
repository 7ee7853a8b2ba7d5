//! Workload identities: a SPIFFE ID in a certificate's URI SAN (`spiffe://trust-domain/path`) or,
//! for peers without one, a DNS SAN.
//!
//! A certificate's identity is its first `spiffe://` URI SAN, else its first DNS SAN, else it has
//! none. What an upstream expects ([`Expected`]) is either a list of identities (any one of them
//! must be among the certificate's SANs) or a DNS name checked the usual web PKI way.

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// The subject alternative names of a certificate that carry identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sans {
    /// URI SANs, in certificate order.
    pub uris: Vec<String>,
    /// DNS SANs, in certificate order.
    pub dns: Vec<String>,
}

/// What the server of an upstream must prove to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expected {
    /// One of these identities (SPIFFE IDs or DNS names) among its SANs.
    Identities(Vec<String>),
    /// Valid for this DNS name (also the SNI sent).
    DnsName(String),
}

/// Why a certificate could not be read.
#[derive(Debug, thiserror::Error)]
#[error("not a valid X.509 certificate: {0}")]
pub struct BadCertificate(String);

impl Sans {
    /// Reads the SANs of a DER certificate.
    pub fn of(cert: &CertificateDer<'_>) -> Result<Sans, BadCertificate> {
        let (_, x509) = x509_parser::certificate::X509Certificate::from_der(cert.as_ref())
            .map_err(|e| BadCertificate(e.to_string()))?;
        let mut sans = Sans::default();
        let ext = x509
            .subject_alternative_name()
            .map_err(|e| BadCertificate(e.to_string()))?;
        if let Some(ext) = ext {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::URI(u) => sans.uris.push((*u).to_owned()),
                    GeneralName::DNSName(d) => sans.dns.push((*d).to_owned()),
                    _ => {}
                }
            }
        }
        Ok(sans)
    }

    /// The identity these SANs give: the first SPIFFE ID, else the first DNS name.
    pub fn identity(&self) -> Option<&str> {
        self.uris
            .iter()
            .find(|u| u.starts_with("spiffe://"))
            .or_else(|| self.dns.first())
            .map(String::as_str)
    }

    /// Whether one of `expected` is among these SANs (SPIFFE IDs against URI SANs, anything else
    /// against DNS SANs, case-insensitively as DNS is).
    pub fn matches_any(&self, expected: &[String]) -> bool {
        expected.iter().any(|e| {
            if e.starts_with("spiffe://") {
                self.uris.iter().any(|u| u == e)
            } else {
                self.dns.iter().any(|d| d.eq_ignore_ascii_case(e))
            }
        })
    }

    /// The identities presented, for error messages: `spiffe://a/b, dns:x.example`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self.uris.clone();
        parts.extend(self.dns.iter().map(|d| format!("dns:{d}")));
        if parts.is_empty() {
            "no URI or DNS SAN".to_owned()
        } else {
            parts.join(", ")
        }
    }
}

/// The identity of a peer certificate (see [`Sans::identity`]); `None` when it has none or does
/// not parse (a verified chain always parses).
pub fn identity_of(cert: &CertificateDer<'_>) -> Option<String> {
    Sans::of(cert).ok()?.identity().map(str::to_owned)
}

/// Checks the form of a SPIFFE ID: `spiffe://`, a trust domain of lower-case letters, digits,
/// `.`, `-` and `_`, then an optional path of non-empty segments without `.`/`..`, no query or
/// fragment (SPIFFE ID spec, section 2).
pub fn check_spiffe_id(id: &str) -> Result<(), String> {
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return Err("a SPIFFE ID starts with spiffe://".into());
    };
    let (domain, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    check_trust_domain(domain)?;
    if path.is_empty() {
        return Ok(());
    }
    for seg in path[1..].split('/') {
        if seg.is_empty() {
            return Err("the path has an empty segment (`//` or a trailing `/`)".into());
        }
        if seg == "." || seg == ".." {
            return Err("the path may not contain `.` or `..` segments".into());
        }
        if let Some(c) = seg
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            return Err(format!(
                "`{c}` is not allowed in a path segment (letters, digits, `.`, `-`, `_`)"
            ));
        }
    }
    Ok(())
}

/// Checks a SPIFFE trust domain: non-empty, lower-case letters, digits, `.`, `-`, `_`.
pub fn check_trust_domain(domain: &str) -> Result<(), String> {
    if domain.is_empty() {
        return Err("the trust domain is empty".into());
    }
    if let Some(c) = domain
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "`{c}` is not allowed in a trust domain (lower-case letters, digits, `.`, `-`, `_`)"
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cert(sans: &[&str]) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::default();
        for s in sans {
            params.subject_alt_names.push(match s.strip_prefix("dns:") {
                Some(d) => rcgen::SanType::DnsName(d.try_into().unwrap()),
                None => rcgen::SanType::URI((*s).try_into().unwrap()),
            });
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    /// The SPIFFE URI SAN wins over DNS SANs and over other URIs, wherever it sits.
    #[test]
    fn spiffe_uri_is_the_identity() {
        let c = cert(&[
            "dns:cart.internal",
            "https://example.com/x",
            "spiffe://prod.example/ns/shop/sa/cart",
        ]);
        assert_eq!(
            identity_of(&c).as_deref(),
            Some("spiffe://prod.example/ns/shop/sa/cart")
        );
    }

    /// Without a SPIFFE ID the first DNS SAN is the identity; with neither there is none.
    #[test]
    fn dns_san_is_the_fallback() {
        let c = cert(&["https://example.com/x", "dns:a.internal", "dns:b.internal"]);
        assert_eq!(identity_of(&c).as_deref(), Some("a.internal"));
        assert_eq!(identity_of(&cert(&[])), None);
    }

    /// Garbage is an error, not an identity.
    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(Sans::of(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])).is_err());
    }

    /// Expected identities match URI SANs exactly and DNS SANs case-insensitively; a SPIFFE
    /// ID never matches a DNS SAN, nor a prefix of another ID.
    #[test]
    fn matching_expected_identities() {
        let sans = Sans::of(&cert(&["spiffe://d/ns/a/sa/b", "dns:B.internal"])).unwrap();
        assert!(sans.matches_any(&["spiffe://d/ns/a/sa/b".into()]));
        assert!(sans.matches_any(&["spiffe://x/y".into(), "b.internal".into()]));
        assert!(!sans.matches_any(&["spiffe://d/ns/a/sa".into()]));
        assert!(!sans.matches_any(&["spiffe://d/ns/a/sa/b/c".into()]));
        assert!(!sans.matches_any(&["spiffe://B.internal".into()]));
        assert_eq!(sans.describe(), "spiffe://d/ns/a/sa/b, dns:B.internal");
    }

    /// SPIFFE ID syntax per the spec.
    #[test]
    fn spiffe_id_syntax() {
        for ok in [
            "spiffe://d",
            "spiffe://prod.example/ns/x/sa/y",
            "spiffe://a-b_c.d/x.y",
        ] {
            assert!(check_spiffe_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://d/x",
            "spiffe://",
            "spiffe://Upper/x",
            "spiffe://d/",
            "spiffe://d//x",
            "spiffe://d/../x",
            "spiffe://d/x?y",
            "spiffe://d:80/x",
        ] {
            assert!(check_spiffe_id(bad).is_err(), "{bad}");
        }
    }
}
