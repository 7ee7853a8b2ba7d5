//! The route table: a pure function from request facts to the first matching route.
//!
//! Matching is linear in the number of routes, in file order, because "first match wins" is what a
//! reader of the YAML expects; a sidecar has tens of routes, not thousands (see the criterion
//! bench `route_match`). Hosts are compared without port and case-insensitively.

use http::{HeaderMap, Method};
use tandem_config::{HostMatch, PathMatch, RouteMatch};

/// A route table over targets of type `T`.
#[derive(Debug)]
pub struct RouteTable<T> {
    routes: Vec<(RouteMatch, T)>,
}

/// What a request offers to the matcher.
#[derive(Clone, Copy, Debug)]
pub struct RequestFacts<'a> {
    /// Host without port, any case; `None` when the request carries none.
    pub host: Option<&'a str>,
    /// Path without query.
    pub path: &'a str,
    /// Method.
    pub method: &'a Method,
    /// Headers.
    pub headers: &'a HeaderMap,
    /// The connection's verified peer identity (mTLS), if any.
    pub identity: Option<&'a str>,
}

impl<T> RouteTable<T> {
    /// Builds a table; order is match priority.
    pub fn new(routes: Vec<(RouteMatch, T)>) -> Self {
        RouteTable { routes }
    }

    /// The first route whose every condition holds.
    pub fn find(&self, req: &RequestFacts<'_>) -> Option<&T> {
        self.routes
            .iter()
            .find(|(m, _)| matches(m, req))
            .map(|(_, t)| t)
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether the table has no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// Whether `m` matches the request.
pub fn matches(m: &RouteMatch, req: &RequestFacts<'_>) -> bool {
    if let Some(hm) = &m.host {
        let Some(host) = req.host else { return false };
        let ok = match hm {
            HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
            HostMatch::Suffix(s) => {
                host.len() > s.len()
                    && host.is_char_boundary(host.len() - s.len())
                    && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
            }
        };
        if !ok {
            return false;
        }
    }
    if let Some(pm) = &m.path {
        let ok = match pm {
            PathMatch::Exact(p) => req.path == p,
            PathMatch::Prefix(p) => prefix_matches(p, req.path),
        };
        if !ok {
            return false;
        }
    }
    if !m.methods.is_empty() && !m.methods.iter().any(|x| x == req.method) {
        return false;
    }
    if !m.peer_identities.is_empty()
        && !req
            .identity
            .is_some_and(|id| m.peer_identities.iter().any(|p| p.matches(id)))
    {
        return false;
    }
    m.headers
        .iter()
        .all(|(name, value)| req.headers.get_all(name).iter().any(|v| v == value))
}

/// Segment-aware prefix: `/api` matches `/api` and `/api/x` but not `/apix`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" || prefix.is_empty() {
        return true;
    }
    let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The host of a request without port: from the URI authority (HTTP/2, absolute-form) or `Host`.
pub fn request_host<'a>(uri: &'a http::Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    let raw = match uri.authority() {
        Some(a) => a.host(),
        None => headers.get(http::header::HOST)?.to_str().ok()?,
    };
    Some(strip_port(raw))
}

/// `authority` without its port (and an IPv6 literal without its brackets).
pub(crate) fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        // IPv6 literal: keep the brackets off, drop the port.
        return rest.split(']').next().unwrap_or(rest);
    }
    match rsplit_colon(authority) {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

/// `s` split at its last `:`. A byte search: `rsplit_once(':')` goes through the generic
/// character searcher, several times slower on these short strings (hot: every request).
pub(crate) fn rsplit_colon(s: &str) -> Option<(&str, &str)> {
    let at = s.bytes().rposition(|b| b == b':')?;
    // `:` is ASCII: both sides are at character boundaries.
    Some((s.get(..at)?, s.get(at + 1..)?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

    fn rm(host: Option<HostMatch>, path: Option<PathMatch>, methods: &[Method]) -> RouteMatch {
        RouteMatch {
            host,
            path,
            methods: methods.to_vec(),
            ..RouteMatch::default()
        }
    }

    fn facts<'a>(
        host: Option<&'a str>,
        path: &'a str,
        m: &'a Method,
        h: &'a HeaderMap,
    ) -> RequestFacts<'a> {
        RequestFacts {
            host,
            path,
            method: m,
            headers: h,
            identity: None,
        }
    }

    /// First match wins, in order, across host, path and method conditions.
    #[test]
    fn first_match_wins() {
        let t = RouteTable::new(vec![
            (
                rm(Some(HostMatch::Suffix(".example.com".into())), None, &[]),
                "wild",
            ),
            (
                rm(
                    None,
                    Some(PathMatch::Prefix("/api".into())),
                    &[Method::POST],
                ),
                "api-post",
            ),
            (
                rm(None, Some(PathMatch::Exact("/health".into())), &[]),
                "health",
            ),
            (rm(None, None, &[]), "default"),
        ]);
        let h = HeaderMap::new();
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(
            t.find(&facts(Some("A.Example.COM"), "/", &get, &h)),
            Some(&"wild")
        );
        assert_eq!(
            t.find(&facts(Some("example.com"), "/", &get, &h)),
            Some(&"default")
        );
        assert_eq!(t.find(&facts(None, "/api/x", &post, &h)), Some(&"api-post"));
        assert_eq!(t.find(&facts(None, "/api/x", &get, &h)), Some(&"default"));
        assert_eq!(t.find(&facts(None, "/apix", &post, &h)), Some(&"default"));
        assert_eq!(t.find(&facts(None, "/health", &get, &h)), Some(&"health"));
        assert_eq!(
            t.find(&facts(None, "/health/x", &get, &h)),
            Some(&"default")
        );
    }

    /// A header condition needs the exact value; no route means `None`.
    #[test]
    fn header_condition() {
        let mut m = rm(None, None, &[]);
        m.headers.push((
            HeaderName::from_static("x-canary"),
            HeaderValue::from_static("1"),
        ));
        let t = RouteTable::new(vec![(m, "canary")]);
        let mut h = HeaderMap::new();
        let get = Method::GET;
        assert_eq!(t.find(&facts(None, "/", &get, &h)), None);
        h.insert("x-canary", HeaderValue::from_static("2"));
        assert_eq!(t.find(&facts(None, "/", &get, &h)), None);
        h.append("x-canary", HeaderValue::from_static("1"));
        assert_eq!(t.find(&facts(None, "/", &get, &h)), Some(&"canary"));
    }

    /// Host is taken from the authority first, then `Host`, without port.
    #[test]
    fn host_extraction() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("api.local:8080"));
        let origin: http::Uri = "/x".parse().unwrap();
        assert_eq!(request_host(&origin, &h), Some("api.local"));
        let abs: http::Uri = "http://orders/x".parse().unwrap();
        assert_eq!(request_host(&abs, &h), Some("orders"));
        h.insert("host", HeaderValue::from_static("[::1]:80"));
        assert_eq!(request_host(&origin, &h), Some("::1"));
        assert!(prefix_matches("/api/", "/api"));
    }

    /// `peer_identities` matches the connection's verified identity (exact, prefix, any); a
    /// connection without one matches no identity condition.
    #[test]
    fn peer_identities() {
        use tandem_config::IdentityMatch;
        let admin = RouteMatch {
            peer_identities: vec![
                IdentityMatch::Exact("spiffe://p/ns/ops/sa/admin".into()),
                IdentityMatch::Prefix("spiffe://p/ns/shop/".into()),
            ],
            ..RouteMatch::default()
        };
        let any = RouteMatch {
            peer_identities: vec![IdentityMatch::Any],
            ..RouteMatch::default()
        };
        let t = RouteTable::new(vec![(admin, 1), (any, 2), (RouteMatch::default(), 3)]);
        let h = HeaderMap::new();
        let with = |id| RequestFacts {
            identity: id,
            ..facts(None, "/", &Method::GET, &h)
        };
        assert_eq!(t.find(&with(Some("spiffe://p/ns/ops/sa/admin"))), Some(&1));
        assert_eq!(t.find(&with(Some("spiffe://p/ns/shop/sa/cart"))), Some(&1));
        assert_eq!(t.find(&with(Some("spiffe://p/ns/ops/sa/admin2"))), Some(&2));
        assert_eq!(t.find(&with(None)), Some(&3));
    }
}
