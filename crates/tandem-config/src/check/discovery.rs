//! Checks service discovery: an upstream's `discovery` source (one of `dns`, `file`, `etcd`,
//! and not beside a static `endpoints` list), the top-level `etcd` connection and the app's
//! `registration`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::Checker;
use crate::model::{
    Address, Direction, Discovery, DnsDiscovery, DnsRecord, Etcd, EtcdDiscovery, EtcdTls,
    FileDiscovery, Listener, PreferZone, Registration,
};
use crate::raw::{RawDiscovery, RawDnsRecord, RawEtcd, RawPreferZone, RawRegistration};

/// Most a weight may be (same bound as static endpoints).
const MAX_WEIGHT: u32 = 10_000;

/// Checks `upstreams.NAME.discovery` (`key` is the upstream's key); `has_static` says whether
/// the upstream also lists `endpoints`.
pub(super) fn check_discovery(
    c: &mut Checker,
    key: &str,
    raw: Option<&RawDiscovery>,
    has_static: bool,
    etcd: bool,
) -> Discovery {
    let Some(raw) = raw else {
        return Discovery::Static;
    };
    let key = format!("{key}.discovery");
    let given = [raw.dns.is_some(), raw.file.is_some(), raw.etcd.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if given != 1 {
        c.err(
            &key,
            if given == 0 {
                "no discovery source given".to_owned()
            } else {
                "more than one discovery source given".to_owned()
            },
            "give exactly one of `dns`, `file` or `etcd`, e.g. discovery: { dns: { name: orders.internal, port: 8080 } }",
        );
        return Discovery::Static;
    }
    if has_static {
        c.err(
            &key,
            "an upstream takes its endpoints from `endpoints` or from `discovery`, not both",
            "remove `endpoints` (the source provides them) or remove `discovery`",
        );
    }
    if let Some(d) = &raw.dns {
        let dkey = format!("{key}.dns");
        let name = d.name.trim().trim_end_matches('.');
        if name.is_empty() || name.contains(char::is_whitespace) {
            c.err(
                format!("{dkey}.name"),
                format!("`{}` is not a DNS name", d.name),
                "use a name like orders.internal or _http._tcp.orders.internal",
            );
        }
        let record = match d.record {
            Some(RawDnsRecord::A) => DnsRecord::A,
            Some(RawDnsRecord::Aaaa) => DnsRecord::Aaaa,
            Some(RawDnsRecord::Srv) => DnsRecord::Srv,
            Some(RawDnsRecord::Ip) | None => DnsRecord::Ip,
        };
        match (record, d.port) {
            (DnsRecord::Srv, Some(_)) => c.err(
                format!("{dkey}.port"),
                "SRV records carry their own port",
                "remove `port`, or use `record: a` to resolve addresses and add this port",
            ),
            (DnsRecord::Srv, None) => {}
            (_, None) | (_, Some(0)) => c.err(
                format!("{dkey}.port"),
                "address records need a port for the endpoints",
                "add the port the service listens on, e.g. port: 8080 (or use `record: srv`)",
            ),
            _ => {}
        }
        let nameserver = d.nameserver.as_deref().and_then(|n| {
            match n.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => match n.parse::<std::net::IpAddr>() {
                    Ok(ip) => Some(SocketAddr::new(ip, 53)),
                    Err(_) => {
                        c.err(
                            format!("{dkey}.nameserver"),
                            format!("`{n}` is not an IP address with an optional port"),
                            "use e.g. 10.0.0.2 or 127.0.0.1:5353, or remove it to use the system's resolver",
                        );
                        None
                    }
                },
            }
        });
        let min_ttl = c.duration(
            &format!("{dkey}.min_ttl"),
            d.min_ttl.as_deref(),
            Duration::from_secs(1),
        );
        let max_ttl = c.duration(
            &format!("{dkey}.max_ttl"),
            d.max_ttl.as_deref(),
            Duration::from_secs(60),
        );
        if max_ttl < min_ttl {
            c.err(
                format!("{dkey}.max_ttl"),
                "max_ttl is shorter than min_ttl",
                "make max_ttl at least min_ttl, e.g. min_ttl: 1s, max_ttl: 60s",
            );
        }
        return Discovery::Dns(DnsDiscovery {
            name: name.to_owned(),
            record,
            port: d.port,
            nameserver,
            min_ttl,
            max_ttl,
        });
    }
    if let Some(f) = &raw.file {
        let fkey = format!("{key}.file");
        if f.path.trim().is_empty() {
            c.err(
                format!("{fkey}.path"),
                "the path is empty",
                "name a YAML or JSON file listing endpoints, e.g. /etc/tandem/orders.yaml",
            );
        } else if !f.path.starts_with('/') {
            c.err(
                format!("{fkey}.path"),
                format!("`{}` is a relative path", f.path),
                "use an absolute path, e.g. /etc/tandem/orders.yaml; a relative one would depend \
                 on the directory Tandem starts in",
            );
        }
        return Discovery::File(FileDiscovery {
            path: PathBuf::from(&f.path),
            interval: c.duration(
                &format!("{fkey}.interval"),
                f.interval.as_deref(),
                Duration::from_secs(1),
            ),
        });
    }
    let Some(e) = &raw.etcd else {
        return Discovery::Static;
    };
    if !valid_service(&e.service) {
        c.err(
            format!("{key}.etcd.service"),
            format!("`{}` is not a service name", e.service),
            "use letters, digits, `-`, `_` and `.`, e.g. orders",
        );
    }
    if !etcd {
        c.err(
            format!("{key}.etcd"),
            "etcd discovery needs the etcd cluster's address",
            "add a top-level `etcd: { endpoints: [http://127.0.0.1:2379] }`",
        );
    }
    Discovery::Etcd(EtcdDiscovery {
        service: e.service.clone(),
    })
}

fn valid_service(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Checks the top-level `etcd`.
pub(super) fn check_etcd(c: &mut Checker, raw: &RawEtcd) -> Etcd {
    if raw.endpoints.is_empty() {
        c.err(
            "etcd.endpoints",
            "no etcd endpoints",
            "list the members' client URLs, e.g. endpoints: [http://127.0.0.1:2379]",
        );
    }
    let tls = raw.tls.is_some();
    for (i, e) in raw.endpoints.iter().enumerate() {
        let (scheme, rest) = match (e.strip_prefix("http://"), e.strip_prefix("https://")) {
            (Some(rest), _) => ("http", rest),
            (_, Some(rest)) => ("https", rest),
            _ => ("", ""),
        };
        if rest.is_empty() || !rest.contains(':') {
            c.err(
                format!("etcd.endpoints[{i}]"),
                format!("`{e}` is not an etcd client URL"),
                "use a client URL with a port, e.g. http://10.0.0.1:2379 (https:// with `tls`)",
            );
        } else if tls && scheme == "http" {
            c.err(
                format!("etcd.endpoints[{i}]"),
                format!("`{e}` is plain HTTP but `etcd.tls` is set"),
                "use https:// for every member, or remove `tls`",
            );
        } else if !tls && scheme == "https" {
            c.err(
                format!("etcd.endpoints[{i}]"),
                format!("`{e}` needs TLS settings"),
                "add `tls: { ca: /path/to/etcd-ca.pem }` under `etcd`",
            );
        }
    }
    let tls = raw.tls.as_ref().map(|t| {
        let path = |c: &mut Checker, key: &str, p: &str| {
            if !p.starts_with('/') {
                c.err(
                    format!("etcd.tls.{key}"),
                    format!("`{p}` is a relative path"),
                    "use an absolute path, e.g. /etc/tandem/etcd-ca.pem; a relative one would depend on the directory Tandem starts in",
                );
            }
            std::path::PathBuf::from(p)
        };
        let ca = path(c, "ca", &t.ca);
        let client = match (&t.cert, &t.key) {
            (Some(cert), Some(key)) => Some((path(c, "cert", cert), path(c, "key", key))),
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                c.err(
                    "etcd.tls",
                    "a client certificate needs both `cert` and `key`",
                    "give both (client-certificate authentication), or neither",
                );
                None
            }
        };
        EtcdTls {
            ca,
            client,
            server_name: t.server_name.clone(),
        }
    });
    let mut prefix = raw
        .prefix
        .clone()
        .unwrap_or_else(|| "/tandem/services/".to_owned());
    if prefix.is_empty() {
        c.err(
            "etcd.prefix",
            "the prefix is empty",
            "use a key prefix such as /tandem/services/",
        );
    }
    if !prefix.ends_with('/') {
        prefix.push('/');
    }
    if raw.password.is_some() && raw.password_env.is_some() {
        c.err(
            "etcd.password_env",
            "both `password` and `password_env` are given",
            "keep one (password_env keeps the secret out of the file)",
        );
    }
    if (raw.password.is_some() || raw.password_env.is_some()) && raw.username.is_none() {
        c.err(
            "etcd.username",
            "a password without a user name",
            "add `username`",
        );
    }
    Etcd {
        endpoints: raw.endpoints.clone(),
        prefix,
        username: raw.username.clone(),
        password: raw.password.clone(),
        password_env: raw.password_env.clone(),
        timeout: c.duration(
            "etcd.timeout",
            raw.timeout.as_deref(),
            Duration::from_secs(5),
        ),
        tls,
    }
}

/// Checks `registration` against the listeners.
pub(super) fn check_registration(
    c: &mut Checker,
    raw: &RawRegistration,
    listeners: &[Listener],
    etcd: bool,
) -> Registration {
    if !etcd {
        c.err(
            "registration",
            "registration needs the etcd cluster's address",
            "add a top-level `etcd: { endpoints: [http://127.0.0.1:2379] }`",
        );
    }
    if !valid_service(&raw.service) {
        c.err(
            "registration.service",
            format!("`{}` is not a service name", raw.service),
            "use letters, digits, `-`, `_` and `.`, e.g. orders",
        );
    }
    let listener = match &raw.listener {
        Some(name) => match listeners.iter().find(|l| &l.name == name) {
            Some(l) if l.direction == Direction::Inbound => Some(l),
            Some(_) => {
                c.err(
                    "registration.listener",
                    format!("listener `{name}` is outbound"),
                    "register the inbound listener peers reach the app through",
                );
                None
            }
            None => {
                c.err(
                    "registration.listener",
                    format!("no listener called `{name}`"),
                    "name one of the inbound listeners",
                );
                None
            }
        },
        None => {
            let l = listeners.iter().find(|l| l.direction == Direction::Inbound);
            if l.is_none() {
                c.err(
                    "registration",
                    "there is no inbound listener to register",
                    "add an inbound listener that reaches the app",
                );
            }
            l
        }
    };
    if let Some(a) = &raw.address {
        match a.parse::<Address>() {
            Ok(Address::Tcp(sa)) if sa.ip().is_unspecified() || sa.port() == 0 => c.err(
                "registration.address",
                format!("`{a}` is not an address peers can connect to"),
                "advertise this host's reachable IP and the listener's port, e.g. 10.0.0.5:7080",
            ),
            Ok(Address::Unix(_)) | Err(_) => c.err(
                "registration.address",
                format!("`{a}` is not host:port"),
                "advertise this host's reachable IP and the listener's port, e.g. 10.0.0.5:7080",
            ),
            Ok(_) => {}
        }
    } else if let Some(l) = listener {
        match &l.address {
            Address::Tcp(sa) if sa.ip().is_unspecified() => c.err(
                "registration.address",
                format!(
                    "listener `{}` listens on {sa}, which peers cannot connect to",
                    l.name
                ),
                "add `address:` with this host's reachable IP and the listener's port, e.g. 10.0.0.5:7080",
            ),
            Address::Unix(_) => c.err(
                "registration.address",
                format!("listener `{}` is a Unix socket", l.name),
                "register a TCP listener, or set `address:` to where peers reach it",
            ),
            _ => {}
        }
    }
    let ttl = c.duration(
        "registration.ttl",
        raw.ttl.as_deref(),
        Duration::from_secs(10),
    );
    if ttl < Duration::from_secs(2) {
        c.err(
            "registration.ttl",
            "a lease TTL under 2s expires between keep-alives on a busy host",
            "use at least \"2s\" (default \"10s\")",
        );
    } else if ttl.subsec_nanos() != 0 {
        // etcd grants leases in whole seconds: a fraction would be cut off silently.
        let up = ttl.as_secs() + 1;
        c.err(
            "registration.ttl",
            format!("etcd leases last whole seconds, so {ttl:?} cannot be granted"),
            format!("use whole seconds, e.g. \"{up}s\""),
        );
    }
    let weight = match raw.weight {
        None => 1,
        Some(w) if (1..=MAX_WEIGHT).contains(&w) => w,
        Some(w) => {
            c.err(
                "registration.weight",
                format!("weight {w} is out of range"),
                format!("use 1 to {MAX_WEIGHT} (default 1)"),
            );
            1
        }
    };
    if let Some(id) = &raw.id {
        if id.is_empty() || id.contains('/') {
            c.err(
                "registration.id",
                format!("`{id}` cannot be a key segment"),
                "use a non-empty id without `/`, e.g. the host name",
            );
        }
    }
    Registration {
        service: raw.service.clone(),
        listener: listener.map(|l| l.name.clone()).unwrap_or_default(),
        address: raw.address.clone(),
        id: raw.id.clone(),
        ttl,
        weight,
        zone: raw.zone.clone(),
        identity: raw.identity.clone(),
        metadata: raw
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// Checks `upstreams.NAME.prefer_zone`; the zone defaults to the registration's.
pub(super) fn check_prefer_zone(
    c: &mut Checker,
    key: &str,
    raw: &RawPreferZone,
    registered: Option<&str>,
) -> PreferZone {
    let key = format!("{key}.prefer_zone");
    let zone = match raw.zone.as_deref().or(registered).map(str::trim) {
        Some(z) if !z.is_empty() => z.to_owned(),
        _ => {
            c.err(
                &key,
                "no local zone to prefer",
                "set `zone:` here, or `zone:` under `registration`",
            );
            String::new()
        }
    };
    let min_eligible = match raw.min_eligible {
        None => 1,
        Some(0) => {
            c.err(
                format!("{key}.min_eligible"),
                "0 would keep preferring a zone with nothing left in it",
                "use at least 1 (default 1)",
            );
            1
        }
        Some(n) => n,
    };
    PreferZone { zone, min_eligible }
}
