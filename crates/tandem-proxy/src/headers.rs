//! Header rewriting between downstream and upstream.
//!
//! - Hop-by-hop fields (RFC 9110 §7.6.1) describe one connection and must not be forwarded:
//!   `connection`, every field `connection` names, `keep-alive`, `proxy-connection`,
//!   `transfer-encoding` (hyper re-frames the body for the next hop), `upgrade` (unless the request
//!   is an upgrade Tandem is carrying through), and `te` except the value `trailers`, which gRPC
//!   needs on HTTP/2.
//! - Inbound requests get `forwarded` (RFC 7239), `x-forwarded-for` and `x-forwarded-proto` so the
//!   app sees the real client.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::identity::PeerIdentity;

static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Whether a request asks to switch protocols (`Connection: upgrade` plus `Upgrade`).
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| connection_tokens(v).any(|t| t.eq_ignore_ascii_case("upgrade")))
}

/// Removes hop-by-hop fields in place. With `keep_upgrade`, `upgrade` and a `connection: upgrade`
/// survive so an upgrade (WebSocket) reaches the upstream.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Fields named by `connection` are hop-by-hop too. The common case is one `connection` value
    // naming no extra field (`keep-alive`, `close`), handled without allocating.
    match headers.get_all(header::CONNECTION).iter().count() {
        0 => {}
        1 => {
            if let Some(v) = headers.remove(header::CONNECTION) {
                remove_named(headers, &v, keep_upgrade);
            }
        }
        _ => {
            let values: Vec<HeaderValue> = headers
                .get_all(header::CONNECTION)
                .iter()
                .cloned()
                .collect();
            headers.remove(header::CONNECTION);
            for v in &values {
                remove_named(headers, v, keep_upgrade);
            }
        }
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::TRANSFER_ENCODING);
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
    if let Some(te) = headers.get(header::TE) {
        let trailers = te
            .to_str()
            .map(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
            .unwrap_or(false);
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(header::TE);
        }
    }
}

/// Removes the fields one `connection` value names.
fn remove_named(headers: &mut HeaderMap, connection: &HeaderValue, keep_upgrade: bool) {
    for token in connection_tokens(connection) {
        let framing =
            token.eq_ignore_ascii_case("content-length") || token.eq_ignore_ascii_case("host");
        let kept = keep_upgrade && token.eq_ignore_ascii_case("upgrade");
        // Never let a client strip the fields that frame or address the request.
        if framing
            || kept
            || token.eq_ignore_ascii_case("keep-alive")
            || token.eq_ignore_ascii_case("close")
        {
            continue;
        }
        if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
            headers.remove(name);
        }
    }
}

/// The header carrying the client's mTLS-verified identity to the app on inbound listeners.
/// Tandem removes any copy a client sent, so the app can trust it.
pub const PEER_IDENTITY: HeaderName = HeaderName::from_static("x-tandem-peer-identity");

/// The forwarding identity of one downstream connection, rendered once per connection rather
/// than per request.
#[derive(Clone, Debug)]
pub struct Forwarded {
    /// `for=...;proto=...` (RFC 7239).
    forwarded: HeaderValue,
    /// The client IP for `x-forwarded-for`; `None` for Unix socket peers.
    ip: Option<HeaderValue>,
    /// The client's address; `None` for Unix socket peers.
    peer: Option<SocketAddr>,
    proto: &'static str,
    /// The peer's verified identity (mTLS), if any.
    identity: Option<PeerIdentity>,
}

impl Forwarded {
    /// Renders the values for a connection from `peer` (`None`: a Unix socket peer).
    pub fn new(peer: Option<SocketAddr>, proto: &'static str) -> Self {
        let node = match peer {
            Some(SocketAddr::V4(a)) => a.ip().to_string(),
            Some(SocketAddr::V6(a)) => format!("\"[{}]\"", a.ip()),
            None => "unknown".to_owned(),
        };
        let forwarded = HeaderValue::from_str(&format!("for={node};proto={proto}"))
            .unwrap_or_else(|_| HeaderValue::from_static("for=unknown"));
        let ip = peer.and_then(|p| HeaderValue::from_str(&p.ip().to_string()).ok());
        Forwarded {
            forwarded,
            ip,
            peer,
            proto,
            identity: None,
        }
    }

    /// Attaches the identity the TLS handshake verified for this connection.
    pub fn with_identity(mut self, identity: Option<PeerIdentity>) -> Self {
        self.identity = identity;
        self
    }

    /// The peer's verified identity (`None` on a plaintext or server-only TLS connection).
    pub fn identity(&self) -> Option<&PeerIdentity> {
        self.identity.as_ref()
    }

    /// The client's IP address (`None` for a Unix socket peer).
    pub fn client_ip(&self) -> Option<IpAddr> {
        self.peer.map(|p| p.ip())
    }

    /// The client's address and port (`None` for a Unix socket peer).
    pub fn client_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// Adds `forwarded`, `x-forwarded-for` and `x-forwarded-proto` to a request's headers,
    /// appending to what a previous proxy set.
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.append(header::FORWARDED, self.forwarded.clone());
        if let Some(ip) = &self.ip {
            let joined = headers
                .get(&X_FORWARDED_FOR)
                .and_then(|prev| prev.to_str().ok())
                .and_then(|prev| ip.to_str().ok().map(|ip| format!("{prev}, {ip}")));
            match joined {
                Some(v) => {
                    if let Ok(v) = HeaderValue::from_str(&v) {
                        headers.insert(&X_FORWARDED_FOR, v);
                    }
                }
                None => {
                    headers.insert(&X_FORWARDED_FOR, ip.clone());
                }
            }
        }
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(self.proto));
    }
}

/// Adds `forwarded`, `x-forwarded-for` and `x-forwarded-proto` for a request received from `peer`
/// (`None` for a Unix socket peer, which has no address to report).
pub fn add_forwarded(headers: &mut HeaderMap, peer: Option<SocketAddr>, proto: &'static str) {
    Forwarded::new(peer, proto).apply(headers);
}

fn connection_tokens(v: &HeaderValue) -> impl Iterator<Item = &str> {
    v.to_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    /// Every hop-by-hop field goes, including those `connection` names; end-to-end ones stay.
    #[test]
    fn removes_hop_by_hop() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret, content-length"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "gzip"),
            ("content-length", "3"),
            ("x-app", "kept"),
        ]);
        remove_hop_by_hop(&mut h, false);
        // HeaderMap's iteration order after removals is unspecified: compare as a set.
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-length", "x-app"]);
    }

    /// `te: trailers` survives (gRPC needs it); an upgrade keeps its two fields.
    #[test]
    fn keeps_trailers_and_upgrade() {
        let mut h = map(&[
            ("te", "trailers"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert!(is_upgrade_request(&h));
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    /// Forwarded headers append to what a previous proxy set.
    #[test]
    fn forwarded_appends() {
        let mut h = map(&[("x-forwarded-for", "10.0.0.1")]);
        add_forwarded(&mut h, Some("192.0.2.7:5555".parse().unwrap()), "http");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(h["forwarded"], "for=192.0.2.7;proto=http");
        assert_eq!(h["x-forwarded-proto"], "http");
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, Some("[::1]:1".parse().unwrap()), "http");
        assert_eq!(h["forwarded"], "for=\"[::1]\";proto=http");
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, None, "http");
        assert_eq!(h["forwarded"], "for=unknown;proto=http");
        assert!(h.get("x-forwarded-for").is_none());
    }
}
