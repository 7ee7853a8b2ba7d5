//! Shaping tests: timestamp formats and the fallback, level names and patterns, trace ids from
//! fields, traceparent and patterns, drop and sample counts, redaction by key (any depth) and
//! by pattern (bearer, Luhn-checked card numbers, custom), and that plain lines pass untouched.

use proptest::prelude::*;
use tandem_config::{
    LevelRule, LogPattern, Redact, Sample, TimestampRule, TraceRule, DEFAULT_REDACT_KEYS,
};

use super::*;

fn shaper(parser: LogParser, f: impl FnOnce(&mut Shape)) -> Shaper {
    let mut shape = Shape::default();
    f(&mut shape);
    Shaper::new(&parser, &shape)
}

fn pat(p: &str) -> LogPattern {
    LogPattern(Regex::new(p).unwrap())
}

fn one(s: &mut Shaper, line: &str) -> Record {
    s.shape(Bytes::copy_from_slice(line.as_bytes())).unwrap()
}

fn millis(t: SystemTime) -> u128 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

#[test]
fn plain_lines_pass_untouched() {
    let mut s = shaper(LogParser::Plain, |_| {});
    let r = one(&mut s, "password=hunter2 level=debug");
    assert_eq!(&r.message[..], b"password=hunter2 level=debug");
    assert_eq!(
        r,
        Record {
            message: r.message.clone(),
            ..Record::default()
        }
    );
    assert_eq!(s.take_stats(), ShapeStats::default());
}

#[test]
fn timestamps_in_every_format() {
    let cases: [(TimeFormat, &str, u128); 10] = [
        (
            TimeFormat::Rfc3339,
            r#""2026-11-24T10:00:00.123Z""#,
            1_795_514_400_123,
        ),
        (
            TimeFormat::Rfc3339,
            r#""2026-11-24T11:00:00.123+01:00""#,
            1_795_514_400_123,
        ),
        (TimeFormat::Unix, "1795514400.5", 1_795_514_400_500),
        (TimeFormat::Unix, r#""1795514400""#, 1_795_514_400_000),
        (TimeFormat::UnixMs, "1795514400123", 1_795_514_400_123),
        (
            TimeFormat::Strftime("%Y-%m-%d %H:%M:%S".into()),
            r#""2026-11-24 10:00:00""#,
            1_795_514_400_000,
        ),
        (
            TimeFormat::Strftime("%Y-%m-%d %H:%M:%S%.f".into()),
            r#""2026-11-24 10:00:00.123""#,
            1_795_514_400_123,
        ),
        (
            TimeFormat::Strftime("%Y-%m-%d %H:%M:%S%.f".into()),
            r#""2026-11-24 10:00:00""#,
            1_795_514_400_000,
        ),
        (
            TimeFormat::Strftime("%Y-%m-%d %H:%M:%S,%f".into()),
            r#""2026-11-24 10:00:00,5""#,
            1_795_514_400_500,
        ),
        (
            TimeFormat::Strftime("%d/%b/%Y:%H:%M:%S %z".into()),
            r#""24/Nov/2026:12:00:00 +0200""#,
            1_795_514_400_000,
        ),
    ];
    for (format, value, want) in cases {
        let mut s = shaper(LogParser::Json, |sh| {
            sh.timestamp = Some(TimestampRule {
                field: "ts".into(),
                format: format.clone(),
            })
        });
        let r = one(&mut s, &format!(r#"{{"ts":{value},"msg":"m"}}"#));
        assert_eq!(r.timestamp.map(millis), Some(want), "{format:?} {value}");
        assert!(!r.timestamp_fallback);
        // The field became the record's timestamp.
        assert!(r.fields.is_none(), "{:?}", r.fields);
    }
}

#[test]
fn timestamp_fallback_is_flagged_and_the_field_kept() {
    let mut s = shaper(LogParser::Json, |sh| {
        sh.timestamp = Some(TimestampRule {
            field: "ts".into(),
            format: TimeFormat::Rfc3339,
        })
    });
    for line in [
        r#"{"ts":"yesterday"}"#,
        r#"{"other":1}"#,
        r#"{"ts":-5}"#,
        "not json",
    ] {
        let r = one(&mut s, line);
        assert!(r.timestamp.is_none() && r.timestamp_fallback, "{line}");
    }
    let r = one(&mut s, r#"{"ts":"yesterday"}"#);
    assert_eq!(r.fields.unwrap()["ts"], "yesterday");
    // unix: out of range values fall back.
    let mut s = shaper(LogParser::Json, |sh| {
        sh.timestamp = Some(TimestampRule {
            field: "ts".into(),
            format: TimeFormat::Unix,
        })
    });
    for v in ["-1", "1e300", "\"abc\"", "null"] {
        assert!(
            one(&mut s, &format!(r#"{{"ts":{v}}}"#)).timestamp_fallback,
            "{v}"
        );
    }
}

#[test]
fn levels_from_fields_and_patterns() {
    let mut s = shaper(LogParser::Json, |_| {});
    for (line, want) in [
        (r#"{"level":"WARNING"}"#, Some(Level::Warn)),
        (r#"{"lvl":"err"}"#, Some(Level::Error)),
        (r#"{"severity":"Critical"}"#, Some(Level::Fatal)),
        (r#"{"level":30}"#, Some(Level::Info)),
        (r#"{"level":"verbose"}"#, Some(Level::Debug)),
        (r#"{"level":"loud"}"#, None),
    ] {
        assert_eq!(one(&mut s, line).level, want, "{line}");
    }
    // A recognised level leaves the fields; an unknown one stays.
    assert!(one(&mut s, r#"{"level":"info"}"#).fields.is_none());
    assert!(one(&mut s, r#"{"level":"loud"}"#).fields.is_some());

    let mut s = shaper(LogParser::Plain, |sh| {
        sh.level = LevelRule {
            fields: vec![],
            pattern: Some(pat(r"^\S+ (?P<level>[A-Z]+) ")),
        }
    });
    assert_eq!(
        one(&mut s, "2026-11-24 ERROR boom").level,
        Some(Level::Error)
    );
    assert_eq!(one(&mut s, "2026-11-24 NOPE boom").level, None);
    assert_eq!(one(&mut s, "no match").level, None);
    // Without a `level` group, the first group; without groups, the match.
    let mut s = shaper(LogParser::Plain, |sh| {
        sh.level.pattern = Some(pat(r"\[(\w+)\]"))
    });
    assert_eq!(one(&mut s, "x [debug] y").level, Some(Level::Debug));
    let mut s = shaper(LogParser::Plain, |sh| {
        sh.level.pattern = Some(pat(r"\bWARN\b"))
    });
    assert_eq!(one(&mut s, "a WARN b").level, Some(Level::Warn));
}

#[test]
fn trace_ids_from_fields_traceparent_and_patterns() {
    let mut s = shaper(LogParser::Logfmt, |_| {});
    let r = one(
        &mut s,
        "msg=x trace_id=4BF92F3577B34DA6A3CE929D0E0E4736 span_id=00f067aa0ba902b7",
    );
    assert_eq!(
        r.trace_id.as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!(r.span_id.as_deref(), Some("00f067aa0ba902b7"));
    assert!(r.fields.is_none());
    let r = one(&mut s, "msg=x traceId=a3ce929d0e0e4736");
    // A 64-bit id is padded to 128 bits.
    assert_eq!(
        r.trace_id.as_deref(),
        Some("0000000000000000a3ce929d0e0e4736")
    );
    let r = one(
        &mut s,
        "msg=x traceparent=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    );
    assert_eq!(
        r.trace_id.as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!(r.span_id.as_deref(), Some("00f067aa0ba902b7"));
    // Not ids: kept as fields.
    for bad in [
        "trace_id=xyz",
        "trace_id=00000000000000000000000000000000",
        "traceparent=00-zz-yy-01",
    ] {
        let r = one(&mut s, &format!("msg=x {bad}"));
        assert!(r.trace_id.is_none() && r.fields.is_some(), "{bad}");
    }
    let mut s = shaper(LogParser::Plain, |sh| {
        sh.trace = TraceRule {
            pattern: Some(pat(r"trace=(?P<trace_id>\w+)(?: span=(?P<span_id>\w+))?")),
            ..TraceRule::default()
        }
    });
    let r = one(
        &mut s,
        "GET / trace=4bf92f3577b34da6a3ce929d0e0e4736 span=00f067aa0ba902b7",
    );
    assert_eq!(
        r.trace_id.as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!(r.span_id.as_deref(), Some("00f067aa0ba902b7"));
}

#[test]
fn drop_and_sample_by_level() {
    let mut s = shaper(LogParser::Logfmt, |sh| {
        sh.drop_levels = vec![LogLevel::Debug, LogLevel::Trace];
        sh.sample = Some(Sample {
            level: LogLevel::Info,
            every: 4,
        });
    });
    let mut kept = Vec::new();
    for i in 0..12 {
        for level in ["debug", "info", "error", "trace"] {
            if let Ok(r) = s.shape(Bytes::from(format!("level={level} msg={i}"))) {
                kept.push((r.level, String::from_utf8(r.message.to_vec()).unwrap()));
            }
        }
    }
    // Errors all kept; infos one in four, the first of each four; no debug or trace.
    assert_eq!(
        kept.iter()
            .filter(|(l, _)| *l == Some(Level::Error))
            .count(),
        12
    );
    let infos: Vec<&str> = kept
        .iter()
        .filter(|(l, _)| *l == Some(Level::Info))
        .map(|(_, m)| m.as_str())
        .collect();
    assert_eq!(infos, ["0", "4", "8"]);
    let st = s.take_stats();
    assert_eq!((st.dropped_level, st.dropped_sample), (24, 9));
    // A record without a level is never dropped.
    assert!(s.shape(Bytes::from_static(b"msg=x")).is_ok());
    assert!(s.shape(Bytes::from_static(b"not logfmt")).is_ok());
    assert_eq!(s.take_stats().parse_errors, 1);
}

#[test]
fn redaction_by_key_at_any_depth() {
    let mut s = shaper(LogParser::Json, |_| {});
    let r = one(
        &mut s,
        r#"{"msg":"login","user":"ann","Password":"hunter2","req":{"headers":{"Authorization":"Basic x"},"list":[{"token":"t1"},{"ok":1}]}}"#,
    );
    let f = r.fields.unwrap();
    assert_eq!(f["Password"], "[REDACTED]");
    assert_eq!(f["req"]["headers"]["Authorization"], "[REDACTED]");
    assert_eq!(f["req"]["list"][0]["token"], "[REDACTED]");
    assert_eq!(f["req"]["list"][1]["ok"], 1);
    assert_eq!(f["user"], "ann");
    assert_eq!(s.take_stats().redacted, 3);
    let text = serde_json::to_string(&f).unwrap();
    assert!(!text.contains("hunter2") && !text.contains("Basic x") && !text.contains("t1"));
    // Objects under a secret key go whole.
    let r = one(&mut s, r#"{"secret":{"a":"b"}}"#);
    assert_eq!(r.fields.unwrap()["secret"], "[REDACTED]");
}

#[test]
fn redaction_by_pattern() {
    let mut s = shaper(LogParser::Logfmt, |sh| {
        sh.redact = Redact {
            keys: vec!["pin".into()],
            patterns: vec![
                RedactPattern::Bearer,
                RedactPattern::CreditCard,
                RedactPattern::Regex(pat(r"sk_live_[A-Za-z0-9]+")),
            ],
            marker: "***".into(),
        }
    });
    let r = one(
        &mut s,
        r#"msg="auth Bearer eyJhbGciOi.J9.x-y_z= card 4111 1111 1111 1111 order 1234567890123 key sk_live_abc123" hdr="bearer abc" pin=1234 password=p"#,
    );
    assert_eq!(
        std::str::from_utf8(&r.message).unwrap(),
        "auth Bearer *** card *** order 1234567890123 key ***"
    );
    let f = r.fields.unwrap();
    assert_eq!(f["hdr"], "bearer ***");
    assert_eq!(f["pin"], "***");
    // The key list replaces the defaults.
    assert_eq!(f["password"], "p");
    // Plain messages are redacted too, invalid UTF-8 included.
    let mut s = shaper(LogParser::Plain, |sh| {
        sh.redact.patterns = vec![RedactPattern::Bearer, RedactPattern::CreditCard]
    });
    let r = s
        .shape(Bytes::from_static(
            b"\xff Authorization: Bearer abc.def card 5500-0000-0000-0004",
        ))
        .unwrap();
    let m = String::from_utf8_lossy(&r.message).into_owned();
    assert!(!m.contains("abc.def") && !m.contains("0004"), "{m}");
    assert_eq!(s.take_stats().redacted, 2);
}

#[test]
fn luhn_tells_cards_from_other_numbers() {
    assert!(luhn("4111111111111111"));
    assert!(luhn("5500 0000 0000 0004"));
    assert!(!luhn("4111111111111112"));
    assert!(!luhn("0000000000")); // too short
}

#[test]
fn default_keys_are_the_documented_ones() {
    assert_eq!(
        Redact::default().keys,
        DEFAULT_REDACT_KEYS.map(String::from)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A secret under a redacted key never survives, wherever it is nested.
    #[test]
    fn secrets_never_survive(
        secret in "[a-zA-Z0-9]{8,20}",
        depth in 0usize..4,
        key in prop::sample::select(DEFAULT_REDACT_KEYS.to_vec()),
        upper in any::<bool>(),
    ) {
        let key = if upper { key.to_uppercase() } else { key.to_owned() };
        let mut v = serde_json::json!({ key: secret });
        for _ in 0..depth {
            v = serde_json::json!({ "outer": [v, 1] });
        }
        let mut obj = v.as_object().unwrap().clone();
        obj.insert("msg".into(), "m".into());
        let line = serde_json::to_string(&obj).unwrap();
        let mut s = shaper(LogParser::Json, |_| {});
        let r = one(&mut s, &line);
        let out = serde_json::to_string(&r.fields).unwrap();
        prop_assert!(!out.contains(&secret), "{}", out);
    }

    /// Arbitrary lines through every parser with every rule on: no panic.
    #[test]
    fn shaping_never_panics(line in proptest::collection::vec(any::<u8>(), 0..200)) {
        for parser in [LogParser::Plain, LogParser::Json, LogParser::Logfmt] {
            let mut s = shaper(parser, |sh| {
                sh.timestamp = Some(TimestampRule { field: "ts".into(), format: TimeFormat::Strftime("%Y %H".into()) });
                sh.level.pattern = Some(pat(r"(\w+)"));
                sh.trace.pattern = Some(pat(r"(?P<trace_id>[0-9a-f]+)"));
                sh.redact.patterns = vec![RedactPattern::Bearer, RedactPattern::CreditCard];
                sh.drop_levels = vec![LogLevel::Debug];
                sh.sample = Some(Sample { level: LogLevel::Info, every: 2 });
            });
            let _ = s.shape(Bytes::from(line.clone()));
        }
    }
}
