//! The development CA behind `tandem certs`: `init` makes a self-signed CA for a SPIFFE trust
//! domain, `issue` signs workload certificates with a SPIFFE ID (URI SAN) and/or DNS names,
//! usable for both ends of mTLS (server and client auth).
//!
//! For development and tests: keys are ECDSA P-256 written unencrypted (mode 0600). Production
//! identities come from a real CA (SPIRE, cert-manager, Vault) as files Tandem watches.
//!
//! Layout: the CA directory holds `ca.pem` and `ca-key.pem`; a workload directory gets
//! `cert.pem`, `key.pem` and a copy of the CA as `ca.pem` (its trust bundle).

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

use crate::identity::{check_spiffe_id, check_trust_domain};

/// What `tandem certs issue` asks for.
#[derive(Clone, Debug)]
pub struct IssueRequest {
    /// The CA directory (`ca.pem`, `ca-key.pem`).
    pub ca_dir: PathBuf,
    /// Where `cert.pem`, `key.pem` and `ca.pem` go (created if missing).
    pub out_dir: PathBuf,
    /// SPIFFE ID for the URI SAN.
    pub identity: Option<String>,
    /// DNS SANs.
    pub dns: Vec<String>,
    /// Validity in days.
    pub days: u32,
}

/// Why a CA or certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Bad input (trust domain, SPIFFE ID, DNS name, days).
    #[error("{0}")]
    Input(String),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The CA files do not parse, or signing failed.
    #[error("{0}")]
    Crypto(String),
}

/// Creates a CA for `trust_domain` in `dir`: `ca.pem` and `ca-key.pem`. Refuses to overwrite an
/// existing CA key (that would orphan every certificate it issued).
pub fn init(dir: &Path, trust_domain: &str, days: u32) -> Result<PathBuf, CaError> {
    check_trust_domain(trust_domain)
        .map_err(|e| CaError::Input(format!("--trust-domain {trust_domain}: {e}")))?;
    check_days(days)?;
    let key_path = dir.join("ca-key.pem");
    if key_path.exists() {
        return Err(CaError::Input(format!(
            "{} exists; remove the directory or pick another --out to make a new CA",
            key_path.display()
        )));
    }
    let key = KeyPair::generate().map_err(crypto)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("Tandem dev CA {trust_domain}"));
    dn.push(DnType::OrganizationName, trust_domain);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // The trust domain is the CA's SPIFFE ID (spec: a CA may carry its trust domain's ID).
    params.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{trust_domain}")
            .try_into()
            .map_err(|_| CaError::Input(format!("bad trust domain {trust_domain}")))?,
    )];
    set_validity(&mut params, days);
    let cert = params.self_signed(&key).map_err(crypto)?;
    create_dir(dir)?;
    write(&dir.join("ca.pem"), cert.pem().as_bytes(), false)?;
    write(&key_path, key.serialize_pem().as_bytes(), true)?;
    Ok(dir.join("ca.pem"))
}

/// Issues a workload certificate signed by the CA in `req.ca_dir`.
pub fn issue(req: &IssueRequest) -> Result<PathBuf, CaError> {
    check_days(req.days)?;
    if req.identity.is_none() && req.dns.is_empty() {
        return Err(CaError::Input(
            "give the workload an identity: --identity spiffe://DOMAIN/ns/NS/sa/SA and/or --dns NAME"
                .into(),
        ));
    }
    let mut sans = Vec::new();
    if let Some(id) = &req.identity {
        check_spiffe_id(id).map_err(|e| CaError::Input(format!("--identity {id}: {e}")))?;
        sans.push(SanType::URI(id.as_str().try_into().map_err(|_| {
            CaError::Input(format!("--identity {id}: not ASCII"))
        })?));
    }
    for d in &req.dns {
        sans.push(SanType::DnsName(d.as_str().try_into().map_err(|_| {
            CaError::Input(format!("--dns {d}: not a DNS name"))
        })?));
    }
    let ca_pem = read(&req.ca_dir.join("ca.pem"))?;
    let ca_key_pem = read(&req.ca_dir.join("ca-key.pem"))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| {
        CaError::Crypto(format!("{}: {e}", req.ca_dir.join("ca-key.pem").display()))
    })?;
    let ca_params = CertificateParams::from_ca_cert_pem(&ca_pem)
        .map_err(|e| CaError::Crypto(format!("{}: {e}", req.ca_dir.join("ca.pem").display())))?;
    // Re-signing the CA's own parameters yields an issuer with the same name and key, which is
    // all that signing a leaf needs from it.
    let ca_cert = ca_params.self_signed(&ca_key).map_err(crypto)?;

    let key = KeyPair::generate().map_err(crypto)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    let cn = req
        .identity
        .clone()
        .or_else(|| req.dns.first().cloned())
        .unwrap_or_default();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, req.days);
    let cert = params.signed_by(&key, &ca_cert, &ca_key).map_err(crypto)?;

    create_dir(&req.out_dir)?;
    // Key first, certificate last: a watcher that sees the new certificate finds its key.
    write(
        &req.out_dir.join("key.pem"),
        key.serialize_pem().as_bytes(),
        true,
    )?;
    write(&req.out_dir.join("ca.pem"), ca_pem.as_bytes(), false)?;
    write(&req.out_dir.join("cert.pem"), cert.pem().as_bytes(), false)?;
    Ok(req.out_dir.join("cert.pem"))
}

fn check_days(days: u32) -> Result<(), CaError> {
    if days == 0 || days > 3650 * 3 {
        return Err(CaError::Input(format!(
            "--days {days}: use 1 to {}",
            3650 * 3
        )));
    }
    Ok(())
}

fn set_validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks behind ours.
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(i64::from(days));
}

fn crypto(e: rcgen::Error) -> CaError {
    CaError::Crypto(e.to_string())
}

fn create_dir(dir: &Path) -> Result<(), CaError> {
    std::fs::create_dir_all(dir).map_err(|source| CaError::Io {
        path: dir.to_owned(),
        source,
    })
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| CaError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes through a temporary file and a rename, so a watcher never reads half a file.
fn write(path: &Path, data: &[u8], private: bool) -> Result<(), CaError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| CaError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("pem.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
