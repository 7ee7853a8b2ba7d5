//! The authenticated identity of the peer on a connection.
//!
//! Set once per connection by the TLS handshake (mTLS: the SPIFFE ID in the client certificate's
//! URI SAN, else its first DNS SAN) and read by every phase that needs it: authorization, rate
//! limiting, the forwarded identity header, access logs and metrics. A plaintext connection has
//! none. It is a value, not a request header, so a client cannot forge it.

use std::fmt;
use std::sync::Arc;

/// A verified peer identity, e.g. `spiffe://prod.example/ns/shop/sa/cart`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity(Arc<str>);

impl PeerIdentity {
    /// Wraps an identity that the caller has already verified.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        PeerIdentity(id.into())
    }

    /// The identity as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
