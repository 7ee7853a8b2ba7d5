//! Tandem's TLS: the workload's identity (certificate, key, trust bundle), the rustls
//! configurations built on it, and the identity of the peer on the other end.
//!
//! One [`store::Identity`] per process holds the current certificate pair and trust bundle behind
//! an `ArcSwap`; every rustls config reads it per handshake, so a rotated pair is used by the next
//! handshake while established connections carry on untouched. A new pair is validated (parses,
//! key matches, within its validity) before it replaces the old one; a bad one is refused, logged
//! and counted, and the last good pair keeps serving.
//!
//! # Layout
//! - [`identity`]: SPIFFE IDs and DNS names: reading a certificate's identity, matching it
//!   against what an upstream expects.
//! - [`pair`]: reading and validating the cert chain, key and trust bundle files.
//! - [`store`]: the live [`store::Identity`] and its file watcher (rotation).
//! - [`server`]: TLS termination on listeners (optional or required client certificates).
//! - [`client`]: TLS origination to upstreams (client certificate, server identity check).
//! - [`handshake`]: bounded reasons a handshake failed, for metrics and errors.
//! - [`dev_ca`]: the development CA behind `tandem certs`.
//! - [`check`]: `tandem check`'s file step: the configured files exist and parse.
//! - [`jwt`]: JWT verification for routes (JWKS from a file or URL, algorithm pinning).
//!
//! Non-goals: OCSP, CRLs, SDS/SPIRE workload API (files only), TLS 1.0/1.1 (never offered).

pub mod check;
pub mod client;
pub mod dev_ca;
pub mod handshake;
pub mod identity;
pub mod jwt;
pub mod pair;
pub mod server;
pub mod store;
