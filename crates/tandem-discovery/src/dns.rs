//! DNS discovery: A/AAAA records (with the configured port) or SRV records (target, port and
//! weight), re-resolved when the answer's TTL runs out, clamped to `[min_ttl, max_ttl]`.
//!
//! SRV targets are resolved to addresses with the same resolver; a target that does not
//! resolve is left out (the others still serve). Only the lowest SRV priority present is used,
//! as RFC 2782 asks (higher priorities are fallbacks). An empty answer (NXDOMAIN, no records)
//! is an error, not an empty set: a DNS hiccup must not take every endpoint away.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ProtocolConfig, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use tandem_config::{Address, DnsDiscovery, DnsRecord};

use crate::{Endpoint, Publisher};

/// Builds the resolver: the configured nameserver, else the system's configuration.
fn resolver(config: &DnsDiscovery) -> Result<TokioResolver, String> {
    let mut builder = match config.nameserver {
        Some(addr) => {
            let conn = |protocol| {
                let mut c = ConnectionConfig::new(protocol);
                c.port = addr.port();
                c
            };
            let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
            ns.connections = vec![conn(ProtocolConfig::Udp), conn(ProtocolConfig::Tcp)];
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], vec![ns]),
                TokioRuntimeProvider::default(),
            )
        }
        None => TokioResolver::builder_tokio().map_err(|e| format!("system resolver: {e}"))?,
    };
    let opts = builder.options_mut();
    // Tandem schedules re-resolution itself; a cache would serve an old answer to a
    // re-resolution that max_ttl brings forward.
    opts.cache_size = 0;
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    builder.build().map_err(|e| e.to_string())
}

/// One resolution: the endpoints and the smallest TTL among the records used.
async fn resolve(
    r: &TokioResolver,
    config: &DnsDiscovery,
) -> Result<(Vec<Endpoint>, Duration), String> {
    let name = format!("{}.", config.name.trim_end_matches('.'));
    match config.record {
        DnsRecord::Srv => {
            let lookup = r
                .lookup(name.as_str(), RecordType::SRV)
                .await
                .map_err(|e| format!("SRV {name}: {e}"))?;
            let mut ttl = u32::MAX;
            let mut srvs = Vec::new();
            for rec in lookup.answers() {
                if let RData::SRV(srv) = &rec.data {
                    ttl = ttl.min(rec.ttl);
                    srvs.push((srv.priority, srv.weight, srv.port, srv.target.to_string()));
                }
            }
            let Some(best) = srvs.iter().map(|s| s.0).min() else {
                return Err(format!("SRV {name}: no records"));
            };
            let mut out = Vec::new();
            for (_, weight, port, target) in srvs.into_iter().filter(|s| s.0 == best) {
                let ips: Vec<IpAddr> = match target.trim_end_matches('.').parse::<IpAddr>() {
                    Ok(ip) => vec![ip],
                    Err(_) => match r.lookup_ip(target.as_str()).await {
                        Ok(l) => {
                            if let Some(t) = l
                                .valid_until()
                                .checked_duration_since(std::time::Instant::now())
                            {
                                ttl = ttl.min(t.as_secs() as u32);
                            }
                            l.iter().collect()
                        }
                        Err(e) => {
                            tracing::debug!(target = %target, error = %e, "SRV target does not resolve; left out");
                            Vec::new()
                        }
                    },
                };
                for ip in ips {
                    out.push(Endpoint {
                        address: Address::Tcp(SocketAddr::new(ip, port)),
                        // SRV weight 0 means "rarely"; Tandem's least share is 1.
                        weight: u32::from(weight).clamp(1, 10_000),
                        zone: None,
                    });
                }
            }
            if out.is_empty() {
                return Err(format!("SRV {name}: no target resolves to an address"));
            }
            Ok((out, Duration::from_secs(u64::from(ttl))))
        }
        DnsRecord::A | DnsRecord::Aaaa | DnsRecord::Ip => {
            let port = config.port.unwrap_or(80);
            let types: &[RecordType] = match config.record {
                DnsRecord::A => &[RecordType::A],
                DnsRecord::Aaaa => &[RecordType::AAAA],
                _ => &[RecordType::A, RecordType::AAAA],
            };
            let mut out = Vec::new();
            let mut ttl = u32::MAX;
            let mut errors = Vec::new();
            for t in types {
                match r.lookup(name.as_str(), *t).await {
                    Ok(lookup) => {
                        for rec in lookup.answers() {
                            let ip = match &rec.data {
                                RData::A(a) => IpAddr::V4(a.0),
                                RData::AAAA(a) => IpAddr::V6(a.0),
                                _ => continue,
                            };
                            ttl = ttl.min(rec.ttl);
                            out.push(Endpoint {
                                address: Address::Tcp(SocketAddr::new(ip, port)),
                                weight: 1,
                                zone: None,
                            });
                        }
                    }
                    Err(e) => errors.push(format!("{t} {name}: {e}")),
                }
            }
            if out.is_empty() {
                return Err(if errors.is_empty() {
                    format!("{name}: no address records")
                } else {
                    errors.join("; ")
                });
            }
            Ok((out, Duration::from_secs(u64::from(ttl))))
        }
    }
}

/// The wait before the next resolution: the TTL within the floor and ceiling.
pub fn next_wait(ttl: Duration, min: Duration, max: Duration) -> Duration {
    ttl.clamp(min, max.max(min))
}

/// Resolves until nobody listens.
pub(crate) async fn run(config: DnsDiscovery, publisher: Publisher) {
    let r = match resolver(&config) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(name = %config.name, error = %e, "cannot build the DNS resolver");
            publisher.failed(e);
            return;
        }
    };
    let mut failing = false;
    loop {
        if publisher.closed() {
            return;
        }
        let wait = match resolve(&r, &config).await {
            Ok((endpoints, ttl)) => {
                if failing {
                    tracing::info!(name = %config.name, "DNS answers again");
                }
                failing = false;
                publisher.publish(endpoints);
                next_wait(ttl, config.min_ttl, config.max_ttl)
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(name = %config.name, error = %e, "DNS discovery failed; keeping the last endpoints");
                }
                failing = true;
                publisher.failed(e);
                config.min_ttl
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = publisher.wait_closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The TTL decides, within the floor and the ceiling.
    #[test]
    fn ttl_floor_and_ceiling() {
        let s = Duration::from_secs;
        assert_eq!(next_wait(s(0), s(1), s(60)), s(1));
        assert_eq!(next_wait(s(30), s(1), s(60)), s(30));
        assert_eq!(next_wait(s(3600), s(1), s(60)), s(60));
    }
}
