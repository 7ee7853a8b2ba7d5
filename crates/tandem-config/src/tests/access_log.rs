//! `access_log`: defaults, field selection, per-listener switches, and each mistake reported at
//! its line with a fix.

use super::*;

const BASE: &str = "\
listeners:
  inbound:
    address: 127.0.0.1:7080
    upstream: app
  db:
    address: 127.0.0.1:7081
    protocol: tcp
    upstream: app
upstreams:
  app: { endpoints: [127.0.0.1:8080] }
";

/// Without the section there is no access log and no listener logs.
#[test]
fn off_by_default() {
    let c = parse("t.yaml", BASE).unwrap();
    assert!(c.access_log.is_none());
    assert!(c.listeners.iter().all(|l| !l.access_log));
    assert!(default_config().access_log.is_none());
}

/// `access_log: {}`: stdout, every field in the documented order, 8192 lines of buffer, every
/// listener on.
#[test]
fn defaults_when_present() {
    let c = parse("t.yaml", &format!("{BASE}access_log: {{}}\n")).unwrap();
    let a = c.access_log.unwrap();
    assert_eq!(a.output, AccessLogOutput::Stdout);
    assert_eq!(a.fields, AccessLogField::ALL.to_vec());
    assert_eq!(a.buffer, 8192);
    assert!(c.listeners.iter().all(|l| l.access_log));
    let names: Vec<&str> = a.fields.iter().map(|f| f.name()).collect();
    assert_eq!(&names[..4], ["kind", "time", "duration_ms", "head_ms"]);
}

/// A file path, a chosen field list in the order written, a buffer, and a listener opting out.
#[test]
fn keys_parse() {
    let text = BASE.replace(
        "    protocol: tcp\n",
        "    protocol: tcp\n    access_log: false\n",
    ) + "access_log:\n  path: /var/log/tandem/access.log\n  fields: [status, time, route, user_agent]\n  buffer: 100\n";
    let c = parse("t.yaml", &text).unwrap();
    let a = c.access_log.unwrap();
    assert_eq!(
        a.output,
        AccessLogOutput::File("/var/log/tandem/access.log".into())
    );
    assert_eq!(
        a.fields,
        [
            AccessLogField::Status,
            AccessLogField::Time,
            AccessLogField::Route,
            AccessLogField::UserAgent
        ]
    );
    assert_eq!(a.buffer, 100);
    assert_eq!(
        c.listeners
            .iter()
            .map(|l| (l.name.as_str(), l.access_log))
            .collect::<Vec<_>>(),
        [("inbound", true), ("db", false)]
    );
    // `GET /config` shows the path as written.
    let json = serde_json::to_value(&c.listeners).unwrap();
    assert_eq!(json[1]["access_log"], false);
}

/// Every field name maps back to its field, and names are unique.
#[test]
fn field_names_round_trip() {
    let mut seen = std::collections::HashSet::new();
    for f in AccessLogField::ALL {
        assert_eq!(AccessLogField::from_name(f.name()), Some(f));
        assert!(seen.insert(f.name()), "{} twice", f.name());
        // The serde name (GET /config) is the same name.
        assert_eq!(
            serde_json::to_value(f).unwrap(),
            serde_json::json!(f.name())
        );
    }
    assert_eq!(AccessLogField::from_name("nope"), None);
}

/// Bad values: an unknown field (with the closest name and the allowed ones), a field twice,
/// a buffer of 0, stderr as the path, and a listener asking for a log that does not exist.
#[test]
fn mistakes_are_reported_with_fixes() {
    let text =
        format!("{BASE}access_log:\n  path: stderr\n  fields: [time, stauts, time]\n  buffer: 0\n");
    let e = errors(&text);
    let got: Vec<(Option<usize>, &str)> = e.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert_eq!(
        got,
        [
            (Some(12), "access_log.path"),
            (Some(13), "access_log.fields[1]"),
            (Some(13), "access_log.fields[2]"),
            (Some(14), "access_log.buffer"),
        ],
        "{e:?}"
    );
    assert!(
        e[1].message.contains("`stauts` is not an access log field"),
        "{}",
        e[1]
    );
    assert!(e[1].hint.contains("did you mean \"status\"?"), "{}", e[1]);
    assert!(e[1].hint.contains("duration_ms, head_ms"), "{}", e[1]);
    assert!(e[2].message.contains("listed twice"), "{}", e[2]);
    assert!(e[3].hint.contains("at least 1"), "{}", e[3]);

    let e = errors(&BASE.replace(
        "    upstream: app\n  db:",
        "    upstream: app\n    access_log: true\n  db:",
    ));
    assert_eq!(
        (e[0].line, e[0].key.as_str()),
        (Some(5), "listeners.inbound.access_log")
    );
    assert!(
        e[0].hint.contains("access_log: { path: stdout }"),
        "{}",
        e[0]
    );

    let e = errors(&format!("{BASE}access_log:\n  fields: []\n"));
    assert_eq!(e[0].key, "access_log.fields");
    let e = errors(&format!("{BASE}access_log:\n  path: /var/log/\n"));
    assert!(e[0].hint.contains("/var/log/access.log"), "{}", e[0]);
    let e = errors(&format!("{BASE}access_log:\n  buffer: 2000000\n"));
    assert!(e[0].message.contains("above the maximum"), "{}", e[0]);
}

/// A typo inside `access_log` is an unknown key with a suggestion, like everywhere else.
#[test]
fn unknown_key_inside_access_log() {
    let e = errors(&format!("{BASE}access_log:\n  feilds: [time]\n"));
    assert_eq!(
        (e[0].line, e[0].key.as_str()),
        (Some(12), "access_log.feilds")
    );
    assert!(e[0].hint.contains("did you mean \"fields\"?"), "{}", e[0]);
}

/// The example in docs/config.md's "Access logs" section is valid and means what it says.
#[test]
fn docs_example_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/config.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let section = &doc[doc.find("## Access logs").unwrap()..];
    let start = section.find("```yaml\n").unwrap() + "```yaml\n".len();
    let end = start + section[start..].find("```").unwrap();
    let c = parse("config.md", &section[start..end]).unwrap_or_else(|e| panic!("{e}"));
    let a = c.access_log.unwrap();
    assert_eq!(
        a.output,
        AccessLogOutput::File("/var/log/tandem/access.log".into())
    );
    assert_eq!(a.fields.len(), 12);
    assert_eq!(
        c.listeners.iter().map(|l| l.access_log).collect::<Vec<_>>(),
        [true, false]
    );
}

/// The field table in docs/config.md lists every field, in the default order.
#[test]
fn docs_list_every_field_in_order() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/config.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let section = &doc[doc.find("### Fields").unwrap()..];
    let documented: Vec<&str> = section
        .lines()
        .skip_while(|l| !l.starts_with("| field |"))
        .skip(2)
        .take_while(|l| l.starts_with("| `"))
        .filter_map(|l| l.split('`').nth(1))
        .collect();
    let names: Vec<&str> = AccessLogField::ALL.iter().map(|f| f.name()).collect();
    assert_eq!(documented, names);
}
