//! JWT verification for a route: bearer tokens checked against a key set (JWKS) or an explicit
//! HS256 secret, with issuer, audience and time claims.
//!
//! Invariants (each one closes a known JWT attack):
//! - the accepted algorithms come from the config, never from the token; `alg: none` cannot even
//!   be represented (the token is refused as malformed);
//! - a key is used only for the algorithm family it belongs to: RSA keys for RS*/PS*, P-256/384
//!   keys for ES*, Ed25519 for EdDSA. HS256 uses only the configured secret file, never a key
//!   from the JWKS, so an RSA public key can never be replayed as an HMAC secret (algorithm
//!   confusion);
//! - keys named in the token itself (`jwk`, `jku`, `x5u` headers) are ignored;
//! - `exp`, `iss` and `aud` are required; `nbf` is checked when present; `leeway` applies to both
//!   times.
//!
//! Key sets: a file is loaded when the verifier is built and re-read every `refresh`; an
//! `http://` or `https://` URL is fetched by [`Verifier::spawn_refresh`]'s task at start and every `refresh`.
//! A token whose `kid` is unknown triggers one reload, at most once per `min_refresh_interval`
//! (concurrent requests share it), so a key rotated in at the issuer is picked up at once while
//! a stream of made-up `kid`s cannot turn into a stream of fetches. A failed reload keeps the
//! last good set.
//!
//! An `https://` URL is verified like a browser would (WebPKI, the URL's host as the name)
//! against `jwks.ca` or, without it, the system's trust store, loaded once when the verifier is
//! built: a JWKS fetched from an unauthenticated server would let whoever sits on the path mint
//! tokens.
//!
//! Non-goals: token introspection, encrypted JWTs.

use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Empty, Limited};
use jsonwebtoken::errors::ErrorKind as JwtKind;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Header, Validation};
use serde_json::Value;
use tandem_config::{JwksSource, Jwt, JwtAlgorithm};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// The claims of a verified token.
pub type Claims = serde_json::Map<String, Value>;

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// Bound on one JWKS fetch (connect, request and body).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Keys tried for a token without `kid`: enough for a rotation overlap, bounded so a token
/// cannot make Tandem run many signature checks.
const MAX_KEYS_WITHOUT_KID: usize = 4;

/// Why a request was not authenticated. [`JwtError::description`] is safe to send to the client.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token")]
    Missing,
    /// Not three base64url parts with a JSON header naming a known algorithm.
    #[error("malformed token, or an unsupported algorithm (alg none is never accepted)")]
    Malformed,
    /// The header's `alg` is not accepted on this route.
    #[error("algorithm {0} is not accepted")]
    AlgorithmNotAccepted(&'static str),
    /// No key has the token's `kid` (after a reload, when one was allowed).
    #[error("unknown key id")]
    UnknownKid,
    /// No key for the token's algorithm is loaded.
    #[error("no key to verify the token")]
    NoKey,
    /// The signature does not verify with any candidate key.
    #[error("invalid signature")]
    BadSignature,
    /// `exp` is past (beyond the leeway).
    #[error("the token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `aud` names none of the route's audiences.
    #[error("wrong audience")]
    WrongAudience,
    /// `iss` is not the route's issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// A required claim (`exp`, `iss`, `aud`) is absent.
    #[error("missing claim {0}")]
    MissingClaim(String),
    /// A claim has the wrong type (e.g. a string `exp`).
    #[error("invalid claims")]
    InvalidClaims,
}

/// One verification key from a JWKS.
#[derive(Clone)]
struct Key {
    kid: Option<String>,
    /// The JWK's own `alg`, when it names one: the key is then used for that algorithm only.
    alg: Option<Algorithm>,
    family: AlgorithmFamily,
    key: DecodingKey,
}

/// A parsed JWKS: the usable signature keys, in document order.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

/// One route's token verifier. Built once per snapshot; shared by every request of the route.
pub struct Verifier {
    route: String,
    /// One validation per accepted algorithm: jsonwebtoken wants every algorithm of a
    /// validation in the key's family, and this also pins each check to the one algorithm.
    validations: Vec<(Algorithm, Validation)>,
    accepted: Vec<Algorithm>,
    hs256: Option<DecodingKey>,
    keys: ArcSwap<KeySet>,
    /// TLS for an `https://` JWKS URL (see [`https_config`]).
    https: Option<Result<Arc<rustls::ClientConfig>, String>>,
    source: Option<JwksSource>,
    refresh: Duration,
    min_refresh_interval: Duration,
    /// When the last reload started; held across a reload so concurrent requests share it.
    reload: Mutex<Option<Instant>>,
    forward_claims: Vec<(String, HeaderName)>,
}

// === impl KeySet ===

impl KeySet {
    /// Parses a JWKS document (`{"keys": [...]}`). Keys Tandem cannot use are skipped: symmetric
    /// (`oct`) keys, encryption keys (`use: enc`) and unknown key types; a document that is
    /// not a JWKS at all is an error.
    pub fn parse(doc: &[u8]) -> Result<KeySet, String> {
        let v: Value = serde_json::from_slice(doc).map_err(|e| format!("not JSON: {e}"))?;
        let Some(list) = v.get("keys").and_then(Value::as_array) else {
            return Err("not a JWKS: no `keys` array".into());
        };
        let mut keys = Vec::with_capacity(list.len());
        for k in list {
            let Ok(jwk) = serde_json::from_value::<Jwk>(k.clone()) else {
                continue;
            };
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            let family = key.family();
            if family == AlgorithmFamily::Hmac {
                continue;
            }
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| Algorithm::from_str(&a.to_string()).ok());
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                alg,
                family,
                key,
            });
        }
        Ok(KeySet { keys })
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set has no usable key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Keys that may verify `alg` with `kid`.
    fn candidates<'a>(
        &'a self,
        alg: Algorithm,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Key> + 'a {
        self.keys.iter().filter(move |k| {
            k.family == alg.family()
                && k.alg.is_none_or(|a| a == alg)
                && kid.is_none_or(|kid| k.kid.as_deref() == Some(kid))
        })
    }
}

// === impl Verifier ===

impl Verifier {
    /// The verifier of route `route`. Reads the HS256 secret and a JWKS file now; a failure is
    /// logged and leaves the verifier without those keys (tokens then fail: closed, not open),
    /// and the file is retried every `refresh`.
    pub fn new(route: &str, cfg: &Jwt) -> Verifier {
        let accepted: Vec<Algorithm> = cfg.algorithms.iter().map(|a| algorithm(*a)).collect();
        let validations = accepted
            .iter()
            .map(|alg| {
                let mut v = Validation::new(*alg);
                v.leeway = cfg.leeway.as_secs();
                v.validate_exp = true;
                v.validate_nbf = true;
                v.validate_aud = true;
                v.set_issuer(&[cfg.issuer.as_str()]);
                v.set_audience(&cfg.audiences);
                v.set_required_spec_claims(&["exp", "iss", "aud"]);
                (*alg, v)
            })
            .collect();
        let hs256 = cfg
            .hs256_secret_file
            .as_deref()
            .and_then(|p| match read_secret(p) {
                Ok(s) => Some(DecodingKey::from_secret(&s)),
                Err(e) => {
                    tracing::error!(route, file = %p.display(), error = %e, "cannot read the HS256 secret; HS256 tokens will be refused");
                    None
                }
            });
        let (source, refresh, min_refresh_interval) = match &cfg.jwks {
            Some(j) => (Some(j.source.clone()), j.refresh, j.min_refresh_interval),
            None => (None, Duration::MAX, Duration::MAX),
        };
        let keys = match &source {
            Some(JwksSource::File(p)) => match load_file(p) {
                Ok(k) => k,
                Err(e) => {
                    tracing::error!(route, file = %p.display(), error = %e, "cannot load the JWKS; tokens will be refused until it loads");
                    KeySet::default()
                }
            },
            _ => KeySet::default(),
        };
        Verifier {
            route: route.to_owned(),
            validations,
            accepted,
            hs256,
            keys: ArcSwap::from_pointee(keys),
            https: https_config(route, cfg.jwks.as_ref()),
            source,
            refresh,
            min_refresh_interval,
            reload: Mutex::new(None),
            forward_claims: cfg
                .forward_claims
                .iter()
                .filter_map(|(c, h)| Some((c.clone(), HeaderName::from_bytes(h.as_bytes()).ok()?)))
                .collect(),
        }
    }

    /// Claims forwarded as headers: (claim, header).
    pub fn forward_claims(&self) -> &[(String, HeaderName)] {
        &self.forward_claims
    }

    /// The keys loaded now.
    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.load_full()
    }

    /// Verifies `token`; an unknown `kid` may reload the key set once (see the module docs).
    pub async fn verify(&self, token: &str) -> Result<Claims, JwtError> {
        let header = self.header(token)?;
        let keys = self.keys.load_full();
        match self.verify_with(&keys, &header, token) {
            Err(JwtError::UnknownKid | JwtError::NoKey) if header.alg != Algorithm::HS256 => {}
            other => return other,
        }
        // Unknown key: reload if allowed, then try once more with whatever is loaded.
        self.reload_for_unknown_kid(&keys).await;
        self.verify_with(&self.keys.load_full(), &header, token)
    }

    /// Verifies `token` with the keys loaded now, without I/O.
    pub fn verify_now(&self, token: &str) -> Result<Claims, JwtError> {
        let header = self.header(token)?;
        self.verify_with(&self.keys.load_full(), &header, token)
    }

    fn header(&self, token: &str) -> Result<Header, JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
        if !self.accepted.contains(&header.alg) {
            return Err(JwtError::AlgorithmNotAccepted(alg_name(header.alg)));
        }
        Ok(header)
    }

    fn verify_with(&self, keys: &KeySet, header: &Header, token: &str) -> Result<Claims, JwtError> {
        if header.alg == Algorithm::HS256 {
            let key = self.hs256.as_ref().ok_or(JwtError::NoKey)?;
            return self.decode(token, header.alg, key);
        }
        let kid = header.kid.as_deref();
        let mut last = None;
        let limit = if kid.is_some() {
            usize::MAX
        } else {
            MAX_KEYS_WITHOUT_KID
        };
        for k in keys.candidates(header.alg, kid).take(limit) {
            match self.decode(token, header.alg, &k.key) {
                Ok(c) => return Ok(c),
                // Another key without kid may still verify it.
                Err(JwtError::BadSignature) if kid.is_none() => last = Some(JwtError::BadSignature),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(if kid.is_some() {
            JwtError::UnknownKid
        } else {
            JwtError::NoKey
        }))
    }

    fn decode(&self, token: &str, alg: Algorithm, key: &DecodingKey) -> Result<Claims, JwtError> {
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == alg) else {
            return Err(JwtError::AlgorithmNotAccepted(alg_name(alg)));
        };
        jsonwebtoken::decode::<Claims>(token, key, validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                JwtKind::InvalidSignature => JwtError::BadSignature,
                JwtKind::ExpiredSignature => JwtError::Expired,
                JwtKind::ImmatureSignature => JwtError::NotYetValid,
                JwtKind::InvalidAudience => JwtError::WrongAudience,
                JwtKind::InvalidIssuer => JwtError::WrongIssuer,
                JwtKind::MissingRequiredClaim(c) => JwtError::MissingClaim(c.clone()),
                JwtKind::InvalidClaimFormat(_) | JwtKind::Json(_) => JwtError::InvalidClaims,
                JwtKind::InvalidAlgorithm => JwtError::AlgorithmNotAccepted("(key mismatch)"),
                // A key that does not fit the algorithm, a bad base64 part, bad UTF-8.
                _ => JwtError::Malformed,
            })
    }

    async fn reload_for_unknown_kid(&self, seen: &Arc<KeySet>) {
        if self.source.is_none() {
            return;
        }
        let mut last = self.reload.lock().await;
        // Someone else reloaded while this request waited: use their result.
        if !Arc::ptr_eq(seen, &self.keys.load_full()) {
            return;
        }
        let now = Instant::now();
        if last.is_some_and(|t| now.saturating_duration_since(t) < self.min_refresh_interval) {
            return;
        }
        *last = Some(now);
        self.reload_now().await;
    }

    /// Loads the key set from its source now; keeps the old set on failure.
    async fn reload_now(&self) {
        let Some(source) = &self.source else { return };
        let loaded = match source {
            JwksSource::File(p) => {
                let p = p.clone();
                tokio::task::spawn_blocking(move || load_file(&p))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()))
            }
            JwksSource::Url(u) => fetch(u, self.https.as_ref())
                .await
                .and_then(|b| KeySet::parse(&b)),
        };
        match loaded {
            Ok(keys) => {
                tracing::debug!(route = %self.route, keys = keys.len(), "JWKS loaded");
                if keys.is_empty() {
                    tracing::warn!(route = %self.route, "the JWKS has no usable signature key");
                }
                self.keys.store(Arc::new(keys));
            }
            Err(e) => {
                tracing::warn!(route = %self.route, source = ?source, error = %e, "JWKS reload failed; keeping the previous keys");
            }
        }
    }

    /// Starts the task that loads the key set (URL: now) and reloads it every `refresh`. The
    /// task ends when the verifier is dropped (the snapshot it belongs to is gone).
    pub fn spawn_refresh(self: &Arc<Self>) {
        let Some(source) = &self.source else { return };
        let first_now = matches!(source, JwksSource::Url(_));
        let weak: Weak<Verifier> = Arc::downgrade(self);
        let every = self.refresh;
        tokio::spawn(async move {
            let mut first = first_now;
            loop {
                if !first {
                    tokio::time::sleep(every).await;
                }
                first = false;
                let Some(v) = weak.upgrade() else { return };
                {
                    let mut last = v.reload.lock().await;
                    *last = Some(Instant::now());
                    v.reload_now().await;
                }
            }
        });
    }
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("route", &self.route)
            .field("accepted", &self.accepted)
            .field("keys", &self.keys.load().len())
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

// === impl JwtError ===

impl JwtError {
    /// The `WWW-Authenticate` value for this failure (RFC 6750 §3): a request without a token
    /// gets a bare challenge; a bad token gets `error="invalid_token"` and a description.
    pub fn challenge(&self) -> HeaderValue {
        match self {
            JwtError::Missing => HeaderValue::from_static("Bearer"),
            other => {
                // The description is our own text; quotes and backslashes cannot occur, but
                // strip them anyway so the quoted-string stays well formed.
                let desc: String = other
                    .to_string()
                    .chars()
                    .filter(|c| *c != '"' && *c != '\\' && (' '..='~').contains(c))
                    .collect();
                HeaderValue::from_str(&format!(
                    "Bearer error=\"invalid_token\", error_description=\"{desc}\""
                ))
                .unwrap_or_else(|_| HeaderValue::from_static("Bearer error=\"invalid_token\""))
            }
        }
    }
}

// === helpers ===

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// A claim as a header value: strings as they are, numbers and booleans as text, arrays and
/// objects as compact JSON. `None` when the result is not a valid header value.
pub fn claim_value(v: &Value) -> Option<HeaderValue> {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Null => return None,
        other => other.to_string(),
    };
    HeaderValue::from_str(&text).ok()
}

fn algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::RS384 => Algorithm::RS384,
        JwtAlgorithm::RS512 => Algorithm::RS512,
        JwtAlgorithm::PS256 => Algorithm::PS256,
        JwtAlgorithm::PS384 => Algorithm::PS384,
        JwtAlgorithm::PS512 => Algorithm::PS512,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::ES384 => Algorithm::ES384,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
        JwtAlgorithm::HS256 => Algorithm::HS256,
    }
}

fn alg_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
        // `Algorithm` is non-exhaustive; a new one is never accepted anyway.
        _ => "unknown",
    }
}

/// The secret file's bytes, without one trailing newline (editors add one).
fn read_secret(p: &Path) -> Result<Vec<u8>, String> {
    let mut s = std::fs::read(p).map_err(|e| e.to_string())?;
    if s.ends_with(b"\n") {
        s.pop();
        if s.ends_with(b"\r") {
            s.pop();
        }
    }
    if s.len() < 32 {
        return Err(format!(
            "the secret has {} bytes; HS256 needs at least 32 (RFC 7518 §3.2)",
            s.len()
        ));
    }
    Ok(s)
}

fn load_file(p: &Path) -> Result<KeySet, String> {
    let doc = std::fs::read(p).map_err(|e| e.to_string())?;
    KeySet::parse(&doc)
}

/// The TLS client config for an `https://` JWKS URL: `jwks.ca`'s CAs or the system's trust
/// store. `None` for other sources; `Some(Err)` (logged here, repeated by each fetch) when no
/// usable CA could be loaded.
fn https_config(
    route: &str,
    jwks: Option<&tandem_config::Jwks>,
) -> Option<Result<Arc<rustls::ClientConfig>, String>> {
    let jwks = jwks?;
    match &jwks.source {
        JwksSource::Url(u) if u.starts_with("https://") => {}
        _ => return None,
    }
    let built = jwks_roots(jwks.ca.as_deref()).and_then(|roots| {
        rustls::ClientConfig::builder_with_provider(crate::pair::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map(|b| {
                let mut c = b.with_root_certificates(roots).with_no_client_auth();
                c.alpn_protocols = vec![b"http/1.1".to_vec()];
                Arc::new(c)
            })
            .map_err(|e| e.to_string())
    });
    if let Err(e) = &built {
        tracing::error!(route, error = %e, "no CA to verify the JWKS server with; tokens will be refused until this is fixed");
    }
    Some(built)
}

/// The CAs trusted for an `https://` JWKS server.
fn jwks_roots(ca: Option<&Path>) -> Result<rustls::RootCertStore, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(p) => {
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(p)
                .map_err(|e| format!("jwks.ca `{}`: {e}", p.display()))?;
            for c in certs {
                let c = c.map_err(|e| format!("jwks.ca `{}`: {e}", p.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("jwks.ca `{}`: {e}", p.display()))?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "jwks.ca `{}` holds no certificate (expected PEM `CERTIFICATE` blocks)",
                    p.display()
                ));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                return Err(format!(
                    "the system trust store has no CA certificate{why}; install ca-certificates or set `jwks.ca`"
                ));
            }
        }
    }
    Ok(roots)
}

/// GETs an `http://` or `https://` URL, bounded in time and size; only 200 is success.
async fn fetch(
    url: &str,
    https: Option<&Result<Arc<rustls::ClientConfig>, String>>,
) -> Result<Bytes, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let tls = match (uri.scheme_str(), https) {
        (Some("https"), Some(Ok(c))) => Some(c.clone()),
        (Some("https"), Some(Err(e))) => return Err(e.clone()),
        (Some("https"), None) => return Err("no TLS configuration for an https URL".into()),
        _ => None,
    };
    let host = uri.host().ok_or("the URL has no host")?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let get = async move {
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let req = http::Request::get(path)
            .header(http::header::HOST, authority)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        match tls {
            Some(config) => {
                let name = rustls_pki_types::ServerName::try_from(host.clone())
                    .map_err(|_| format!("`{host}` is not a valid TLS server name"))?;
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, stream)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                get_on(stream, req).await
            }
            None => get_on(stream, req).await,
        }
    };
    tokio::time::timeout(FETCH_TIMEOUT, get)
        .await
        .map_err(|_| format!("no complete answer within {FETCH_TIMEOUT:?}"))?
}

/// Sends `req` over HTTP/1.1 on `io`; the body of a 200, at most [`MAX_JWKS_BYTES`].
async fn get_on<IO>(io: IO, req: http::Request<Empty<Bytes>>) -> Result<Bytes, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
    if res.status() != http::StatusCode::OK {
        return Err(format!("HTTP {}", res.status()));
    }
    Limited::new(res.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| format!("body: {e}"))
}

/// Fuzzing entry point: arbitrary bytes as an `Authorization` value through token extraction,
/// header and claims decoding and key selection, against a fixed HS256 secret and RSA/EC keys.
/// Nothing may panic, and no arbitrary input may verify.
#[cfg(fuzzing)]
pub fn fuzz_token(data: &[u8]) {
    use std::sync::OnceLock;
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    let v = VERIFIER.get_or_init(|| {
        let mut v = Verifier::new(
            "fuzz",
            &Jwt {
                issuer: "https://issuer.test".into(),
                audiences: vec!["aud".into()],
                jwks: None,
                algorithms: JwtAlgorithm::ALL.to_vec(),
                leeway: Duration::from_secs(60),
                forward_claims: vec![("sub".into(), "x-user".into())],
                hs256_secret_file: None,
            },
        );
        v.hs256 = Some(DecodingKey::from_secret(
            b"fuzzing-secret-fuzzing-secret-32b",
        ));
        v.keys = ArcSwap::from_pointee(
            KeySet::parse(tests_support::JWKS.as_bytes()).unwrap_or_default(),
        );
        v
    });
    let mut headers = HeaderMap::new();
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    headers.insert(http::header::AUTHORIZATION, value);
    if let Some(token) = bearer_token(&headers) {
        assert!(v.verify_now(token).is_err(), "an arbitrary token verified");
    }
    let _ = KeySet::parse(data);
}

/// A public JWKS (one RSA and one P-256 key) for tests and fuzzing; the private halves are not
/// kept anywhere.
#[cfg(any(test, fuzzing))]
mod tests_support {
    pub(crate) const JWKS: &str = r#"{"keys":[
      {"kty":"RSA","kid":"rsa1","use":"sig","alg":"RS256","e":"AQAB",
       "n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw"},
      {"kty":"EC","kid":"ec1","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
       "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
      {"kty":"oct","kid":"sym","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}
    ]}"#;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
