//! A listener's authorization policy: who may send which request.
//!
//! Evaluation: every `deny` rule first (file order), the first that matches denies; then the
//! `allow` rules, the first that matches allows; a request no allow rule matches is denied by
//! `default`. A rule matches when every condition it sets holds (identity, source network,
//! method, normalized path, headers); within a condition's list any entry may match.
//!
//! Inputs are what the client cannot forge or what Tandem normalized: the peer identity comes
//! from the connection (mTLS, [`crate::identity`]), never from a header; the path is the
//! normalized one ([`crate::path`]) that the app receives. A connection without identity
//! matches no identity condition, so identity rules fail closed on plaintext.
//!
//! On a `protocol: tcp` listener the policy decides once per connection, before Tandem connects
//! upstream, on identity and source network only (`tandem check` refuses methods, paths and
//! headers there); a denied connection is closed without a byte sent.
//!
//! Every decision is an audit event on the `tandem::audit` target (denials at INFO, allows at
//! DEBUG) and every denial counts in `tandem_authz_denied_total{listener, rule}`. Rules and
//! their counters are resolved when the snapshot is built; deciding allocates nothing.

use std::net::IpAddr;

use http::{HeaderMap, Method};
use tandem_config::{Authorization, AuthzAction, AuthzPath, AuthzRule};
use tandem_telemetry::{Counter, Metrics};

use crate::error::{ErrorKind, ProxyError};
use crate::identity::PeerIdentity;

/// The tracing target of audit events.
pub const AUDIT_TARGET: &str = "tandem::audit";

/// One listener's policy, ready to decide.
#[derive(Debug)]
pub struct AuthzPolicy {
    listener: String,
    /// Deny rules, then allow rules, each in file order.
    rules: Vec<Rule>,
    default_denied: Counter,
}

#[derive(Debug)]
struct Rule {
    cfg: AuthzRule,
    denied: Counter,
}

/// What a request offers to the policy.
#[derive(Clone, Copy, Debug)]
pub struct AuthzRequest<'a> {
    /// The route it took (for the audit line).
    pub route: &'a str,
    /// The connection's verified identity.
    pub identity: Option<&'a PeerIdentity>,
    /// The client's address (`None` on a Unix socket).
    pub source: Option<IpAddr>,
    /// Method.
    pub method: &'a Method,
    /// Normalized path.
    pub path: &'a str,
    /// Headers.
    pub headers: &'a HeaderMap,
}

/// A decision: allowed or denied, and by which rule (`default` when no allow rule matched).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision<'a> {
    /// An allow rule matched and no deny rule did.
    Allowed(&'a str),
    /// A deny rule matched, or no allow rule did (`default`).
    Denied(&'a str),
}

// === impl AuthzPolicy ===

impl AuthzPolicy {
    /// Resolves `cfg` for listener `listener`, with its counters.
    pub fn new(listener: &str, cfg: &Authorization, metrics: &Metrics) -> Self {
        let (deny, allow): (Vec<&AuthzRule>, Vec<&AuthzRule>) = cfg
            .rules
            .iter()
            .partition(|r| r.action == AuthzAction::Deny);
        AuthzPolicy {
            listener: listener.to_owned(),
            rules: deny
                .into_iter()
                .chain(allow)
                .map(|r| Rule {
                    cfg: r.clone(),
                    denied: metrics.authz_denied(listener, &r.name),
                })
                .collect(),
            default_denied: metrics.authz_denied(listener, "default"),
        }
    }

    /// The decision for `req`, without side effects.
    pub fn decide(&self, req: &AuthzRequest<'_>) -> Decision<'_> {
        match self.rules.iter().find(|r| rule_matches(&r.cfg, req)) {
            Some(r) if r.cfg.action == AuthzAction::Deny => Decision::Denied(&r.cfg.name),
            Some(r) => Decision::Allowed(&r.cfg.name),
            None => Decision::Denied("default"),
        }
    }

    /// Decides, writes the audit event, counts a denial, and turns it into a 403.
    pub fn authorize(&self, req: &AuthzRequest<'_>) -> Result<(), ProxyError> {
        let decision = self.decide(req);
        let identity = req.identity.map(PeerIdentity::as_str);
        match decision {
            Decision::Allowed(rule) => {
                tracing::debug!(target: AUDIT_TARGET, listener = %self.listener, route = req.route, identity, source = ?req.source, method = %req.method, path = req.path, decision = "allow", rule, "audit: request allowed");
                Ok(())
            }
            Decision::Denied(rule) => {
                tracing::info!(target: AUDIT_TARGET, listener = %self.listener, route = req.route, identity, source = ?req.source, method = %req.method, path = req.path, decision = "deny", rule, "audit: request denied");
                Err(self.denied(rule))
            }
        }
    }

    /// Decides for a connection on a `tcp` listener: rules there name identities and source
    /// networks only. Writes the audit event and counts a denial like [`Self::authorize`].
    pub fn authorize_connection(
        &self,
        identity: Option<&PeerIdentity>,
        source: Option<IpAddr>,
    ) -> Result<(), ProxyError> {
        let rule = self
            .rules
            .iter()
            .find(|r| connection_matches(&r.cfg, identity, source));
        let id = identity.map(PeerIdentity::as_str);
        match rule {
            Some(r) if r.cfg.action == AuthzAction::Allow => {
                tracing::debug!(target: AUDIT_TARGET, listener = %self.listener, identity = id, source = ?source, decision = "allow", rule = %r.cfg.name, "audit: connection allowed");
                Ok(())
            }
            _ => {
                let rule = rule.map_or("default", |r| r.cfg.name.as_str());
                tracing::info!(target: AUDIT_TARGET, listener = %self.listener, identity = id, source = ?source, decision = "deny", rule, "audit: connection denied");
                Err(self.denied(rule))
            }
        }
    }

    /// Counts a denial by `rule` and says why, for the client and the access log.
    fn denied(&self, rule: &str) -> ProxyError {
        match self.rules.iter().find(|r| r.cfg.name == rule) {
            Some(r) => r.denied.inc(),
            None => self.default_denied.inc(),
        };
        let cause = if rule == "default" {
            format!(
                "no allow rule of listener `{}` matches this request (default deny)",
                self.listener
            )
        } else {
            format!("denied by rule `{rule}` of listener `{}`", self.listener)
        };
        ProxyError::new(ErrorKind::Forbidden, cause)
    }
}

/// Whether the connection-level conditions of `r` (identity, source network) hold.
fn connection_matches(
    r: &AuthzRule,
    identity: Option<&PeerIdentity>,
    source: Option<IpAddr>,
) -> bool {
    (r.identities.is_empty()
        || identity.is_some_and(|id| r.identities.iter().any(|m| m.matches(id.as_str()))))
        && (r.source_cidrs.is_empty()
            || source.is_some_and(|ip| r.source_cidrs.iter().any(|c| c.contains(ip))))
}

/// Whether every condition of `r` holds for `req`.
fn rule_matches(r: &AuthzRule, req: &AuthzRequest<'_>) -> bool {
    connection_matches(r, req.identity, req.source)
        && (r.methods.is_empty() || r.methods.iter().any(|m| m == req.method))
        && (r.paths.is_empty() || r.paths.iter().any(|p| path_matches(p, req.path)))
        && r.headers
            .iter()
            .all(|(name, value)| req.headers.get_all(name).iter().any(|v| v == value))
}

/// Matches a normalized path against a pattern (see [`AuthzPath`]).
pub fn path_matches(p: &AuthzPath, path: &str) -> bool {
    match p {
        AuthzPath::Exact(e) => path == e,
        AuthzPath::Prefix(pre) => path.starts_with(pre.as_str()),
        AuthzPath::Segments(base) => match path.strip_prefix(base.as_str()) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
