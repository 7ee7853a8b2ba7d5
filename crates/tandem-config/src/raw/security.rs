//! The security sections as serde sees them: a listener's `authorization` policy and a route's
//! `jwt` authentication (docs/security.md).

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;

use super::unique_map;

/// An authorization policy: deny rules are checked first, then allow rules; a request no allow
/// rule matches is denied (403).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAuthorization {
    /// The rules. A rule matches when every condition it sets holds; within one condition's
    /// list, any entry may match.
    #[serde(default)]
    pub rules: Vec<RawAuthzRule>,
}

/// One authorization rule.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAuthzRule {
    /// Name in 403 bodies, audit lines and `tandem_authz_denied_total` (default `rules[N]`).
    #[serde(default)]
    pub name: Option<String>,
    /// `allow` or `deny`.
    pub action: RawAuthzAction,
    /// Peer identities (mTLS): exact (`spiffe://prod/ns/shop/sa/cart`), a prefix ending in `*`
    /// (`spiffe://prod/ns/shop/*`), or `*` for any verified identity. A connection without an
    /// identity matches none.
    #[serde(default)]
    pub identities: Option<Vec<String>>,
    /// Client addresses: `10.0.0.0/8`, `::1/128`, or one address (`192.0.2.7`).
    #[serde(default)]
    pub source_cidrs: Option<Vec<String>>,
    /// HTTP methods, e.g. [GET, HEAD].
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Normalized request paths: exact (`/admin`), a segment prefix (`/admin/*` matches
    /// `/admin` and everything under it) or a plain prefix (`/admin*` also matches `/admins`).
    #[serde(default)]
    pub paths: Option<Vec<String>>,
    /// Headers that must be present with exactly these values.
    #[serde(default, deserialize_with = "unique_map")]
    pub headers: IndexMap<String, String>,
}

/// What a matching rule decides.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawAuthzAction {
    /// Let the request through (when no deny rule matched).
    Allow,
    /// Refuse it with 403.
    Deny,
}

/// JWT authentication of a route's requests (`Authorization: Bearer <token>`); requests without
/// a valid token get 401.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    /// The required `iss` claim.
    pub issuer: String,
    /// Accepted `aud` values; the token's `aud` must contain one of them.
    pub audiences: Vec<String>,
    /// Where the public keys come from (needed for every algorithm but HS256).
    #[serde(default)]
    pub jwks: Option<RawJwks>,
    /// Accepted `alg` values: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA,
    /// and HS256 only with `hs256_secret_file` (default [RS256, ES256, EdDSA]).
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// Clock skew allowed on `exp` and `nbf` (default "60s").
    #[serde(default)]
    pub leeway: Option<String>,
    /// Claims sent to the upstream as headers, e.g. `{ sub: x-user }`. Copies of these headers
    /// sent by the client are always removed.
    #[serde(default, deserialize_with = "unique_map")]
    pub forward_claims: IndexMap<String, String>,
    /// A file holding the HS256 shared secret; HS256 must also be listed in `algorithms`.
    #[serde(default)]
    pub hs256_secret_file: Option<String>,
}

/// A JSON Web Key Set: exactly one of `file` or `url`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawJwks {
    /// A JWKS file, re-read every `refresh`.
    #[serde(default)]
    pub file: Option<String>,
    /// An `http://` or `https://` URL serving the JWKS, fetched at start and every `refresh`.
    #[serde(default)]
    pub url: Option<String>,
    /// For an `https://` URL: a PEM bundle of the CAs trusted to sign the server's certificate
    /// (default: the system's trust store).
    #[serde(default)]
    pub ca: Option<String>,
    /// Time between reloads (default "5m").
    #[serde(default)]
    pub refresh: Option<String>,
    /// A token whose `kid` is not in the set triggers a reload, at most this often
    /// (default "10s").
    #[serde(default)]
    pub min_refresh_interval: Option<String>,
}
