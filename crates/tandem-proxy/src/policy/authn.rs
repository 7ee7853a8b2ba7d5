//! JWT authentication of a route's requests: the bearer token is verified by the route's
//! [`Verifier`] (`tandem-tls`), and selected claims become request headers for the app.
//!
//! Headers that carry claims are removed from every request of the route first, whatever the
//! outcome, so a client can never hand the app its own `x-user`: the app sees either the
//! verified claim or nothing. The `Authorization` header itself is forwarded unchanged.

use http::HeaderMap;
use tandem_tls::jwt::{bearer_token, claim_value, JwtError, Verifier};

use crate::error::{ErrorKind, ProxyError};

/// Verifies the request's bearer token and writes the forwarded claims into `headers`; a
/// failure is a 401 with a `WWW-Authenticate` challenge.
pub async fn authenticate(
    verifier: &Verifier,
    route: &str,
    headers: &mut HeaderMap,
) -> Result<(), ProxyError> {
    for (_, h) in verifier.forward_claims() {
        headers.remove(h);
    }
    let verified = match bearer_token(headers) {
        Some(token) => verifier.verify(token).await,
        None => Err(JwtError::Missing),
    };
    let claims = verified.map_err(|e| {
        tracing::debug!(route, error = %e, "request not authenticated");
        let mut err = ProxyError::new(
            ErrorKind::Unauthenticated,
            format!("route `{route}` requires a valid bearer token: {e}"),
        );
        err.challenge = Some(Box::new(e.challenge()));
        err
    })?;
    for (claim, h) in verifier.forward_claims() {
        if let Some(v) = claims.get(claim).and_then(claim_value) {
            headers.insert(h.clone(), v);
        }
    }
    Ok(())
}
