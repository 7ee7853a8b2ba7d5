//! Checks the TLS sections: the identity's paths and reload interval, listener client-auth
//! against the presence of a trust bundle, upstream identities (SPIFFE ID syntax) and server
//! names. Pure: whether the files exist and parse is `tandem check`'s file step (`tandem-tls`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Checker;
use crate::model::{ClientAuth, ListenerTls, Tls, UpstreamTls};
use crate::raw::{RawClientAuth, RawListenerTls, RawTls, RawUpstreamTls};

/// Checks the top-level `tls`; relative paths are resolved against `source`'s directory.
pub(super) fn check_identity(c: &mut Checker, source: &str, raw: &RawTls) -> Tls {
    let base = Path::new(source).parent().map(Path::to_path_buf);
    let mut path = |key: &str, value: &str| -> PathBuf {
        if value.trim().is_empty() {
            c.err(
                format!("tls.{key}"),
                "the path is empty",
                "give the PEM file's path, e.g. certs/cert.pem (`tandem certs issue` writes one)",
            );
        }
        let p = PathBuf::from(value);
        match &base {
            Some(b) if p.is_relative() => b.join(p),
            _ => p,
        }
    };
    let cert = path("cert", &raw.cert);
    let key = path("key", &raw.key);
    let trust_bundle = raw.trust_bundle.as_deref().map(|b| path("trust_bundle", b));
    let reload_interval = c.duration(
        "tls.reload_interval",
        raw.reload_interval.as_deref(),
        Duration::from_secs(5),
    );
    Tls {
        cert,
        key,
        trust_bundle,
        reload_interval,
    }
}

/// Checks `listeners.NAME.tls` (at `key`).
pub(super) fn check_listener(
    c: &mut Checker,
    key: &str,
    raw: &RawListenerTls,
    identity: Option<&RawTls>,
) -> ListenerTls {
    let Some(identity) = identity else {
        c.err(
            key,
            "TLS on a listener needs the workload's certificate, and there is no top-level `tls`",
            "add `tls: { cert: PATH, key: PATH, trust_bundle: PATH }` at the top level (`tandem certs issue` writes the files)",
        );
        return ListenerTls {
            client_auth: ClientAuth::None,
            handshake_timeout: Duration::from_secs(10),
        };
    };
    let client_auth = match raw.client_auth {
        Some(RawClientAuth::Required) => ClientAuth::Required,
        Some(RawClientAuth::Optional) => ClientAuth::Optional,
        Some(RawClientAuth::None) => ClientAuth::None,
        None if identity.trust_bundle.is_some() => ClientAuth::Required,
        None => ClientAuth::None,
    };
    if client_auth != ClientAuth::None && identity.trust_bundle.is_none() {
        c.err(
            format!("{key}.client_auth"),
            "client certificates are verified against `tls.trust_bundle`, which is not set",
            "add `trust_bundle: PATH` (the CA certificates) to the top-level `tls`, or use `client_auth: none`",
        );
    }
    ListenerTls {
        client_auth,
        handshake_timeout: c.duration(
            &format!("{key}.handshake_timeout"),
            raw.handshake_timeout.as_deref(),
            Duration::from_secs(10),
        ),
    }
}

/// Checks `upstreams.NAME.tls` (at `key`); `hosts` are the endpoints' host names (not IPs).
pub(super) fn check_upstream(
    c: &mut Checker,
    key: &str,
    raw: &RawUpstreamTls,
    identity: Option<&RawTls>,
    all_ips: bool,
) -> UpstreamTls {
    match identity {
        None => c.err(
            key,
            "TLS to an upstream verifies it against `tls.trust_bundle`, and there is no top-level `tls`",
            "add `tls: { cert: PATH, key: PATH, trust_bundle: PATH }` at the top level (`tandem certs issue` writes the files)",
        ),
        Some(i) if i.trust_bundle.is_none() => c.err(
            key,
            "TLS to an upstream verifies it against `tls.trust_bundle`, which is not set",
            "add `trust_bundle: PATH` (the CA certificates) to the top-level `tls`",
        ),
        Some(_) => {}
    }
    let identities = raw.identities.clone().unwrap_or_default();
    if raw.identities.as_ref().is_some_and(Vec::is_empty) {
        c.err(
            format!("{key}.identities"),
            "the list is empty, so no server would be accepted",
            "list the server's SPIFFE ID(s), e.g. [spiffe://prod.example/ns/shop/sa/cart], or remove the key to verify `server_name`",
        );
    }
    for (i, id) in identities.iter().enumerate() {
        let ikey = format!("{key}.identities[{i}]");
        if id.starts_with("spiffe://") {
            if let Err(e) = check_spiffe_id(id) {
                c.err(
                    ikey,
                    format!("`{id}` is not a valid SPIFFE ID: {e}"),
                    "use spiffe://TRUST_DOMAIN/PATH, e.g. spiffe://prod.example/ns/shop/sa/cart",
                );
            }
        } else if id.contains("://") || id.is_empty() || id.contains(char::is_whitespace) {
            c.err(
                ikey,
                format!("`{id}` is neither a SPIFFE ID nor a DNS name"),
                "use spiffe://TRUST_DOMAIN/PATH or a DNS name like cart.internal",
            );
        }
    }
    if let Some(n) = &raw.server_name {
        if n.is_empty() || n.contains(char::is_whitespace) || n.contains('/') {
            c.err(
                format!("{key}.server_name"),
                format!("`{n}` is not a DNS name"),
                "use the name in the server's certificate, e.g. cart.internal",
            );
        }
    }
    if identities.is_empty() && raw.server_name.is_none() && all_ips {
        c.err(
            key,
            "the endpoints are IP addresses, so there is no name to verify the server's certificate against",
            "add `identities: [spiffe://DOMAIN/ns/NS/sa/SA]` (the server's SPIFFE ID) or `server_name: NAME` (a DNS name in its certificate)",
        );
    }
    UpstreamTls {
        identities,
        server_name: raw.server_name.clone(),
        client_cert: raw.client_cert.unwrap_or(true),
    }
}

/// SPIFFE ID syntax (kept here too: the config crate does not depend on `tandem-tls`).
fn check_spiffe_id(id: &str) -> Result<(), String> {
    let rest = id.strip_prefix("spiffe://").unwrap_or(id);
    let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
    if domain.is_empty() {
        return Err("the trust domain is empty".into());
    }
    if let Some(ch) = domain.chars().find(|ch| {
        !(ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '-' | '_'))
    }) {
        return Err(format!("`{ch}` is not allowed in a trust domain"));
    }
    if rest.contains('/') {
        for seg in path.split('/') {
            if seg.is_empty() || seg == "." || seg == ".." {
                return Err("the path has an empty, `.` or `..` segment".into());
            }
            if let Some(ch) = seg
                .chars()
                .find(|ch| !(ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-' | '_')))
            {
                return Err(format!("`{ch}` is not allowed in the path"));
            }
        }
    }
    Ok(())
}
