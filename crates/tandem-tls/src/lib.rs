//! Tandem's identities and peer verification; here, JWT verification for routes (`jwt`).

pub mod jwt;
