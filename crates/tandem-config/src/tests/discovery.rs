//! Discovery: an upstream's `discovery` source, the `etcd` section and `registration`, their
//! defaults, and each mistake reported at its line with a fix.

use std::time::Duration;

use super::errors;
use crate::*;

/// Every source parses with its defaults; the static list keeps working unchanged.
#[test]
fn discovery_sources_parse() {
    let c = parse(
        "t.yaml",
        "\
etcd: { endpoints: [\"http://127.0.0.1:2379\", \"http://127.0.0.1:22379\"] }
listeners:
  inbound: { address: 10.0.0.5:7080, upstream: app }
  out: { address: 127.0.0.1:7001, direction: outbound, forward_proxy: true }
upstreams:
  app: { endpoints: [127.0.0.1:8080] }
  by_dns: { discovery: { dns: { name: orders.internal., port: 8080 } } }
  by_srv:
    discovery: { dns: { name: _http._tcp.orders, record: srv, nameserver: 127.0.0.1:5353, min_ttl: 500ms, max_ttl: 30s } }
  by_file: { discovery: { file: { path: /etc/tandem/orders.yaml } } }
  by_etcd: { discovery: { etcd: { service: orders } } }
registration:
  service: billing
  metadata: { version: \"1.2\" }
",
    )
    .unwrap();
    let d = |n: &str| {
        c.upstreams
            .iter()
            .find(|u| u.name == n)
            .unwrap()
            .discovery
            .clone()
    };
    assert_eq!(d("app"), Discovery::Static);
    assert_eq!(
        d("by_dns"),
        Discovery::Dns(DnsDiscovery {
            name: "orders.internal".into(),
            record: DnsRecord::Ip,
            port: Some(8080),
            nameserver: None,
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(60),
        })
    );
    let Discovery::Dns(srv) = d("by_srv") else {
        panic!()
    };
    assert_eq!(srv.record, DnsRecord::Srv);
    assert_eq!(srv.nameserver, Some("127.0.0.1:5353".parse().unwrap()));
    assert_eq!(
        (srv.min_ttl, srv.max_ttl),
        (Duration::from_millis(500), Duration::from_secs(30))
    );
    let Discovery::File(f) = d("by_file") else {
        panic!()
    };
    assert_eq!(f.interval, Duration::from_secs(1));
    assert_eq!(
        d("by_etcd"),
        Discovery::Etcd(EtcdDiscovery {
            service: "orders".into()
        })
    );
    let etcd = c.etcd.unwrap();
    assert_eq!(etcd.prefix, "/tandem/services/");
    assert_eq!(etcd.timeout, Duration::from_secs(5));
    let r = c.registration.unwrap();
    assert_eq!(r.listener, "inbound");
    assert_eq!(r.ttl, Duration::from_secs(10));
    assert_eq!(r.weight, 1);
    assert_eq!(r.metadata, [("version".to_owned(), "1.2".to_owned())]);
}

/// Each discovery mistake is reported at its line, all together.
#[test]
fn discovery_mistakes_are_reported_together() {
    let text = "\
listeners:
  inbound: { address: 0.0.0.0:7080, upstream: a }
upstreams:
  a:
    endpoints: [127.0.0.1:8080]
    discovery: { file: { path: /x.yaml } }
  b: { discovery: {} }
  c: { discovery: { dns: { name: x, port: 80 }, file: { path: y } } }
  d: { discovery: { dns: { name: x } } }
  e: { discovery: { dns: { name: _s._tcp.x, record: srv, port: 80 } } }
  f: { discovery: { dns: { name: x, port: 80, nameserver: dns.local, min_ttl: 10s, max_ttl: 1s } } }
  g: { discovery: { etcd: { service: \"a/b\" } } }
  h: { discovery: { file: { path: endpoints.yaml } } }
registration: { service: a, ttl: 1s, weight: 0 }
";
    let e = errors(text);
    let got: Vec<(Option<usize>, &str)> = e.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert_eq!(
        got,
        [
            (Some(6), "upstreams.a.discovery"),
            (Some(7), "upstreams.b.discovery"),
            (Some(8), "upstreams.c.discovery"),
            (Some(9), "upstreams.d.discovery.dns.port"),
            (Some(10), "upstreams.e.discovery.dns.port"),
            (Some(11), "upstreams.f.discovery.dns.nameserver"),
            (Some(11), "upstreams.f.discovery.dns.max_ttl"),
            (Some(12), "upstreams.g.discovery.etcd.service"),
            (Some(12), "upstreams.g.discovery.etcd"),
            (Some(13), "upstreams.h.discovery.file.path"),
            (Some(14), "registration"),
            (Some(14), "registration.address"),
            (Some(14), "registration.ttl"),
            (Some(14), "registration.weight"),
        ],
        "{e:#?}"
    );
    assert!(e[0].hint.contains("remove `endpoints`"));
    assert!(e[9].hint.contains("absolute path"));
    assert!(e[10].hint.contains("etcd: { endpoints"));
    assert!(e[11].message.contains("0.0.0.0:7080"));
}

/// A registration TTL must be whole seconds: etcd grants leases in seconds.
#[test]
fn registration_ttl_is_whole_seconds() {
    let base = "\
listeners:
  inbound: { address: 127.0.0.1:7080, upstream: a }
upstreams:
  a: { endpoints: [127.0.0.1:8080] }
etcd: { endpoints: [\"http://127.0.0.1:2379\"] }
";
    let e = errors(&format!(
        "{base}registration: {{ service: a, ttl: 2500ms }}\n"
    ));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(
        (e[0].line, e[0].key.as_str()),
        (Some(6), "registration.ttl")
    );
    assert!(e[0].message.contains("2.5s"), "{}", e[0].message);
    assert!(e[0].hint.contains("\"3s\""), "{}", e[0].hint);
    let ok = format!("{base}registration: {{ service: a, ttl: 3s }}\n");
    assert!(parse("t.yaml", &ok).is_ok());
}

/// The etcd section: URLs, credentials, prefix normalization.
#[test]
fn etcd_section_rules() {
    let base = "\
listeners:
  inbound: { address: 127.0.0.1:7080, upstream: a }
upstreams:
  a: { endpoints: [127.0.0.1:8080] }
";
    let e = errors(&format!(
        "{base}etcd: {{ endpoints: [\"127.0.0.1:2379\", \"https://e:2379\"], password: x }}\n"
    ));
    let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        ["etcd.endpoints[0]", "etcd.endpoints[1]", "etcd.username"]
    );
    assert!(e[1].hint.contains("tls: { ca:"));
    let e = errors(&format!(
        "{base}etcd: {{ endpoints: [\"http://e:2379\"], tls: {{ ca: ca.pem, cert: /c.pem }} }}\n"
    ));
    let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["etcd.endpoints[0]", "etcd.tls.ca", "etcd.tls"]);
    let c = parse(
        "t.yaml",
        &format!("{base}etcd: {{ endpoints: [\"https://e:2379\"], tls: {{ ca: /ca.pem, cert: /c.pem, key: /k.pem }} }}\n"),
    )
    .unwrap();
    let tls = c.etcd.unwrap().tls.unwrap();
    assert_eq!(tls.client.unwrap().1, std::path::PathBuf::from("/k.pem"));
    let c = parse(
        "t.yaml",
        &format!("{base}etcd: {{ endpoints: [\"http://e:2379\"], prefix: /svc }}\n"),
    )
    .unwrap();
    assert_eq!(c.etcd.unwrap().prefix, "/svc/");
}

/// `prefer_zone` takes the registration's zone by default; without any zone it is an error.
#[test]
fn prefer_zone_rules() {
    let base = "\
listeners:
  inbound: { address: 127.0.0.1:7080, upstream: a }
upstreams:
  a:
    endpoints: [{ address: 127.0.0.1:8080, zone: z1 }, { address: 127.0.0.1:8081, zone: z2 }]
    prefer_zone: {}
";
    let e = errors(base);
    assert_eq!(e[0].key, "upstreams.a.prefer_zone");
    assert!(e[0].hint.contains("registration"));
    let c = parse(
        "t.yaml",
        &format!(
            "{base}etcd: {{ endpoints: [\"http://e:2379\"] }}\nregistration: {{ service: a, zone: z1 }}\n"
        ),
    )
    .unwrap();
    let u = &c.upstreams[0];
    assert_eq!(
        u.prefer_zone,
        Some(PreferZone {
            zone: "z1".into(),
            min_eligible: 1
        })
    );
    assert_eq!(u.endpoints[1].zone.as_deref(), Some("z2"));
    let e = errors(&base.replace(
        "prefer_zone: {}",
        "prefer_zone: { zone: z1, min_eligible: 0 }",
    ));
    assert_eq!(e[0].key, "upstreams.a.prefer_zone.min_eligible");
}
