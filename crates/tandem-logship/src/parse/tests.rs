//! Parser tests: each parser on typical and broken lines, and properties over arbitrary input
//! (no panic; a failed parse keeps the line whole; logfmt written from fields reads back to
//! them; regex captures are the matched text).

use proptest::prelude::*;
use tandem_config::LogPattern;

use super::*;

fn parse(p: &LogParser, line: &[u8]) -> Record {
    Parser::new(p).parse(Bytes::copy_from_slice(line))
}

fn regex(p: &str) -> LogParser {
    LogParser::Regex(LogPattern(Regex::new(p).unwrap()))
}

#[test]
fn plain_keeps_the_line() {
    let r = parse(&LogParser::Plain, b"{\"a\":1} hello");
    assert!(!r.parse_error);
    assert_eq!(&r.message[..], b"{\"a\":1} hello");
    assert!(r.fields.is_none());
}

#[test]
fn json_splits_message_and_fields() {
    let r = parse(
        &LogParser::Json,
        br#"{"level":"info","msg":"started","port":8080}"#,
    );
    assert!(!r.parse_error);
    assert_eq!(&r.message[..], b"started");
    let f = r.fields.unwrap();
    assert_eq!(f.len(), 2);
    assert_eq!(f["port"], 8080);
    // `message` wins over `msg`; a non-string `message` stays a field.
    let r = parse(
        &LogParser::Json,
        br#"{"message":"m","msg":"x","n":{"k":[1]}}"#,
    );
    assert_eq!(&r.message[..], b"m");
    assert_eq!(r.fields.unwrap()["msg"], "x");
    let r = parse(&LogParser::Json, br#"{"message":5}"#);
    assert!(r.message.is_empty());
    assert_eq!(r.fields.unwrap()["message"], 5);
}

#[test]
fn json_errors_keep_the_line() {
    for line in [&b"not json"[..], b"[1,2]", b"{\"a\":", b"\"str\""] {
        let r = parse(&LogParser::Json, line);
        assert!(r.parse_error, "{line:?}");
        assert_eq!(&r.message[..], line);
        assert!(r.fields.is_none());
    }
}

#[test]
fn logfmt_pairs_quotes_and_bare_keys() {
    let r = parse(
        &LogParser::Logfmt,
        br#"ts=2026-11-24T10:00:00Z level=warn msg="disk \"data\" almost full" pct=93 retry  path=/a=b"#,
    );
    assert!(!r.parse_error);
    assert_eq!(&r.message[..], br#"disk "data" almost full"#);
    let f = r.fields.unwrap();
    assert_eq!(f["ts"], "2026-11-24T10:00:00Z");
    assert_eq!(f["level"], "warn");
    assert_eq!(f["pct"], "93");
    assert_eq!(f["retry"], true);
    // The first `=` separates; later ones belong to the value.
    assert_eq!(f["path"], "/a=b");
    // `msg` wins over `message`; empty values are values.
    let r = parse(&LogParser::Logfmt, b"message=m msg=x e= q=\"\"");
    assert_eq!(&r.message[..], b"x");
    let f = r.fields.unwrap();
    assert_eq!(
        (&f["message"], &f["e"], &f["q"]),
        (&"m".into(), &"".into(), &"".into())
    );
}

#[test]
fn logfmt_errors_keep_the_line() {
    for line in [
        &b"just some prose"[..],
        b"a=\"unterminated",
        b"=value",
        b"k\"x\"=1",
        b"a=1 \"quoted\"",
        b"a=\"bad \\x escape\"",
        b"\xff=1",
        b"",
    ] {
        let r = parse(&LogParser::Logfmt, line);
        assert!(r.parse_error, "{:?}", String::from_utf8_lossy(line));
        assert_eq!(&r.message[..], line);
        assert!(r.fields.is_none());
    }
}

#[test]
fn regex_named_captures() {
    let p = regex(
        r"^(?P<ts>\S+) (?P<level>[A-Z]+) \[(?P<thread>[^\]]*)\](?: (?P<user>u\d+))? (?P<message>.*)$",
    );
    let r = parse(&p, b"2026-11-24T10:00:00Z INFO [main] order 7 placed");
    assert!(!r.parse_error);
    assert_eq!(&r.message[..], b"order 7 placed");
    let f = r.fields.unwrap();
    assert_eq!(f.len(), 3, "{f:?}");
    assert_eq!(f["level"], "INFO");
    assert_eq!(f["thread"], "main");
    // An optional group that did not take part is no field; one that did is.
    let r = parse(&p, b"t ERROR [w-1] u42 failed");
    assert_eq!(r.fields.unwrap()["user"], "u42");
    // No match: the whole line, marked.
    let r = parse(&p, b"garbage");
    assert!(r.parse_error);
    assert_eq!(&r.message[..], b"garbage");
    // Without a message capture, the message is empty and `msg` is used when present.
    let r = parse(&regex(r"(?P<msg>\w+)=(?P<v>\d+)"), b"x: n=5");
    assert_eq!(
        (&r.message[..], &r.fields.unwrap()["v"]),
        (&b"n"[..], &"5".into())
    );
}

/// The capture buffer is reused: a line after a longer match carries no captures of it.
#[test]
fn regex_state_does_not_leak_between_lines() {
    let mut p = Parser::new(&regex(r"^(?P<a>a+)(?P<b>b+)?$"));
    let r = p.parse(Bytes::from_static(b"aabb"));
    assert_eq!(r.fields.unwrap().len(), 2);
    let r = p.parse(Bytes::from_static(b"a"));
    assert_eq!(r.fields.unwrap().len(), 1);
}

/// Writes `fields` as logfmt, quoting where needed (JSON escapes).
fn to_logfmt(fields: &[(String, String)]) -> String {
    let mut out = String::new();
    for (k, v) in fields {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(k);
        out.push('=');
        if v.is_empty() || v.contains([' ', '"', '\t', '=', '\\']) || !v.is_ascii() {
            out.push_str(&serde_json::to_string(v).unwrap());
        } else {
            out.push_str(v);
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// No input makes a parser panic; a failed parse keeps the line whole.
    #[test]
    fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        fuzz_parse(&data);
    }

    /// Text shaped like logfmt (keys, `=`, quotes, escapes in any order) never panics either.
    #[test]
    fn logfmt_like_text_never_panics(s in r#"[a-z="\\ \t\u{e9}]{0,60}"#) {
        let r = parse(&LogParser::Logfmt, s.as_bytes());
        if r.parse_error {
            prop_assert_eq!(&r.message[..], s.as_bytes());
        }
    }

    /// Fields written as logfmt read back to the same fields.
    #[test]
    fn logfmt_round_trip(
        fields in proptest::collection::btree_map("[a-z_][a-z0-9_.]{0,8}", "\\PC{0,20}", 1..8)
    ) {
        let fields: Vec<(String, String)> = fields.into_iter().collect();
        let line = to_logfmt(&fields);
        let r = parse(&LogParser::Logfmt, line.as_bytes());
        prop_assert!(!r.parse_error, "{}", line);
        let mut got = r.fields.map(|f| *f).unwrap_or_default();
        // `msg` (else `message`) became the message.
        let has = |key: &str| fields.iter().any(|(k, _)| k == key);
        match ["msg", "message"].into_iter().find(|k| has(k)) {
            Some(k) => {
                let m = String::from_utf8(r.message.to_vec()).unwrap();
                got.insert(k.into(), Value::String(m));
            }
            None => prop_assert!(r.message.is_empty()),
        }
        prop_assert_eq!(got.len(), fields.len());
        for (k, v) in &fields {
            prop_assert_eq!(&got[k.as_str()], &Value::String(v.clone()));
        }
    }

    /// Regex captures are exactly the text of the groups that matched.
    #[test]
    fn regex_captures_are_the_matched_text(a in "[a-z]{1,10}", b in "[0-9]{0,5}", m in "\\PC{0,30}") {
        let line = format!("{a}:{b} {m}");
        let r = parse(&regex(r"^(?P<a>[a-z]+):(?P<b>[0-9]+)? (?P<message>.*)$"), line.as_bytes());
        prop_assert!(!r.parse_error);
        prop_assert_eq!(&r.message[..], m.as_bytes());
        let f = r.fields.unwrap();
        prop_assert_eq!(&f["a"], &Value::String(a));
        prop_assert_eq!(f.get("b").is_some(), !b.is_empty());
    }
}
