//! Trace context formats: the spec examples, every way a header can be wrong, and properties
//! over random and hostile input.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use tandem_config::Propagation;

use super::*;

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const SPAN: &str = "b7ad6b7169203331";

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn all() -> Propagator {
    Propagator::new(&[Propagation::W3c, Propagation::B3, Propagation::B3multi])
}

fn parent_of(e: &Extracted) -> Option<(String, String)> {
    e.parent
        .as_ref()
        .map(|p| (p.trace_id.to_string(), p.span_id.to_string()))
}

/// `traceparent`: the spec's valid forms are read, and every malformed one is refused.
#[test]
fn traceparent_table() {
    let ok = |v: &str| parse_traceparent(v.as_bytes());
    let (t, s, sampled) = ok(&format!("00-{TRACE}-{SPAN}-01")).unwrap();
    assert_eq!(
        (t.to_string(), s.to_string(), sampled),
        (TRACE.into(), SPAN.into(), true)
    );
    assert!(!ok(&format!("00-{TRACE}-{SPAN}-00")).unwrap().2);
    // Only the sampled bit is read; other flags do not make it sampled.
    assert!(!ok(&format!("00-{TRACE}-{SPAN}-02")).unwrap().2);
    assert!(ok(&format!("00-{TRACE}-{SPAN}-03")).unwrap().2);
    // A later version: its first 55 bytes are read, more fields after a dash are allowed.
    assert!(ok(&format!("01-{TRACE}-{SPAN}-01")).is_some());
    assert!(ok(&format!("cc-{TRACE}-{SPAN}-01-what-the-future-holds")).is_some());

    let bad = [
        format!("ff-{TRACE}-{SPAN}-01"),             // version ff is invalid
        format!("00-{TRACE}-{SPAN}-01-extra"),       // version 00 is exactly 55 bytes
        format!("cc-{TRACE}-{SPAN}-01extra"),        // later version: a dash must follow
        format!("00-{}-{SPAN}-01", "0".repeat(32)),  // all-zero trace id
        format!("00-{TRACE}-{}-01", "0".repeat(16)), // all-zero span id
        format!("00-{}-{SPAN}-01", TRACE.to_uppercase()), // upper-case hex
        format!("00-{TRACE}-{}-01", SPAN.to_uppercase()),
        format!("0-{TRACE}-{SPAN}-01"),  // short version
        format!("00_{TRACE}-{SPAN}-01"), // wrong separators
        format!("00-{TRACE}_{SPAN}-01"),
        format!("00-{TRACE}-{SPAN}_01"),
        format!("00-{}g-{SPAN}-01", &TRACE[..31]), // not hex
        format!("00-{TRACE}-{SPAN}-0x"),
        format!("0g-{TRACE}-{SPAN}-01"),
        format!("00-{TRACE}-{SPAN}-1"),           // short flags
        format!("00-{TRACE}-{SPAN}"),             // no flags
        format!("00-{}-{SPAN}-01", &TRACE[..30]), // short trace id
        " 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
        String::new(),
    ];
    for v in &bad {
        assert_eq!(ok(v), None, "{v:?} must be refused");
    }
}

/// An invalid or doubled `traceparent` is ignored (a new trace starts), and its `tracestate`
/// with it.
#[test]
fn w3c_extract_rules() {
    let p = Propagator::new(&[Propagation::W3c]);
    let good = format!("00-{TRACE}-{SPAN}-01");
    let e = p.extract(&headers(&[
        ("traceparent", &good),
        ("tracestate", "a=1,b=2"),
    ]));
    assert_eq!(parent_of(&e), Some((TRACE.into(), SPAN.into())));
    assert_eq!(e.sampled, Some(true));
    assert_eq!(e.parent.unwrap().trace_state.unwrap(), "a=1,b=2");

    let e = p.extract(&headers(&[("traceparent", &good), ("traceparent", &good)]));
    assert_eq!(
        e,
        Extracted::default(),
        "two traceparent headers are ambiguous"
    );
    let e = p.extract(&headers(&[
        ("traceparent", "garbage"),
        ("tracestate", "a=1"),
    ]));
    assert_eq!(e, Extracted::default());
    // B3 headers are not read when only w3c is configured.
    let e = p.extract(&headers(&[("b3", &format!("{TRACE}-{SPAN}-1"))]));
    assert_eq!(e, Extracted::default());
}

/// `tracestate` is forwarded as sent when valid and small; joined, cut to 32 members and 512
/// bytes from the end; dropped whole when a member is malformed.
#[test]
fn tracestate_bounds() {
    let tp = format!("00-{TRACE}-{SPAN}-01");
    let state = |values: &[&str]| {
        let mut pairs = vec![("traceparent", tp.as_str())];
        pairs.extend(values.iter().map(|v| ("tracestate", *v)));
        Propagator::new(&[Propagation::W3c])
            .extract(&headers(&pairs))
            .parent
            .unwrap()
            .trace_state
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(state(&[]), None);
    assert_eq!(
        state(&["congo=t61rcWkgMzE"]).as_deref(),
        Some("congo=t61rcWkgMzE")
    );
    assert_eq!(
        state(&["rojo=00f067aa0ba902b7", "congo=t61rcWkgMzE"]).as_deref(),
        Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
    );
    assert_eq!(
        state(&["tenant@vendor=x , b=2"]).as_deref(),
        Some("tenant@vendor=x , b=2")
    );
    assert_eq!(state(&[" , "]), None, "empty list");
    for bad in ["novalue", "=x", "UPPER=1", "a=b=c", "a@b@c=1", "a=1,bad"] {
        assert_eq!(state(&[bad]), None, "{bad:?}");
    }
    // 40 members: the first 32 survive.
    let many: Vec<String> = (0..40).map(|i| format!("k{i}=v")).collect();
    let kept = state(&[&many.join(",")]).unwrap();
    assert_eq!(kept.split(',').count(), 32);
    assert!(
        kept.starts_with("k0=v,k1=v") && kept.ends_with("k31=v"),
        "{kept}"
    );
    // Long members: cut at a member boundary within 512 bytes.
    let long: Vec<String> = (0..10)
        .map(|i| format!("k{i}={}", "x".repeat(100)))
        .collect();
    let kept = state(&[&long.join(",")]).unwrap();
    assert!(kept.len() <= MAX_TRACE_STATE, "{}", kept.len());
    assert_eq!(kept.split(',').count(), 4);
    assert!(kept.split(',').all(|m| m.len() == 103), "{kept}");
    // A megabyte of it costs a bounded scan and yields the bounded prefix.
    let huge = format!("a=1,{}", "b=2,".repeat(250_000));
    assert_eq!(state(&[&huge]).unwrap().split(',').count(), 32);
}

/// B3, single header: ids with and without sampling and parent, 64-bit trace ids widened, the
/// decision-only forms, and malformed values refused.
#[test]
fn b3_single_table() {
    let e = parse_b3_single(format!("{TRACE}-{SPAN}-1-{}", "05e3ac9a4f6e3b90").as_bytes());
    assert_eq!(parent_of(&e), Some((TRACE.into(), SPAN.into())));
    assert_eq!(e.sampled, Some(true));
    let e = parse_b3_single(format!("{TRACE}-{SPAN}").as_bytes());
    assert_eq!(e.sampled, None, "no sampling state: deferred");
    assert!(e.parent.is_some());
    assert_eq!(
        parse_b3_single(format!("{TRACE}-{SPAN}-0").as_bytes()).sampled,
        Some(false)
    );
    assert_eq!(
        parse_b3_single(format!("{TRACE}-{SPAN}-d").as_bytes()).sampled,
        Some(true)
    );
    let e = parse_b3_single(format!("{}-{SPAN}-1", &TRACE[16..]).as_bytes());
    assert_eq!(
        parent_of(&e).unwrap().0,
        format!("0000000000000000{}", &TRACE[16..]),
        "a 64-bit trace id is widened with leading zeros"
    );
    for (v, sampled) in [("0", false), ("1", true), ("d", true)] {
        let e = parse_b3_single(v.as_bytes());
        assert_eq!((e.parent, e.sampled), (None, Some(sampled)), "{v}");
    }
    let bad = [
        format!("{TRACE}-{SPAN}-2"),
        format!("{TRACE}-{SPAN}-1-{}", "0".repeat(16)),
        format!("{TRACE}-{SPAN}-1-abc"),
        format!("{TRACE}-{SPAN}-1-{SPAN}-more"),
        format!("{}-{SPAN}-1", "0".repeat(32)),
        format!("{TRACE}-{}-1", "0".repeat(16)),
        format!("{}-{SPAN}", &TRACE[..20]),
        format!("{}-{SPAN}", TRACE.to_uppercase()),
        TRACE.to_string(),
        format!("{TRACE}-{SPAN}-1-{SPAN}{}", "0".repeat(100)),
        "-".to_owned(),
        String::new(),
    ];
    for v in &bad {
        assert_eq!(parse_b3_single(v.as_bytes()), Extracted::default(), "{v:?}");
    }
}

/// B3, multiple headers: ids, `1|0|true|false`, the debug flag, a decision without ids, and
/// the single header preferred when both are present.
#[test]
fn b3_multi_rules() {
    let p = Propagator::new(&[Propagation::B3multi]);
    let e = p.extract(&headers(&[
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
        ("x-b3-sampled", "1"),
    ]));
    assert_eq!(parent_of(&e), Some((TRACE.into(), SPAN.into())));
    assert_eq!(e.sampled, Some(true));
    let e = p.extract(&headers(&[
        ("x-b3-traceid", &TRACE[16..]),
        ("x-b3-spanid", SPAN),
        ("x-b3-sampled", "false"),
    ]));
    assert_eq!(
        parent_of(&e).unwrap().0,
        format!("{}{}", "0".repeat(16), &TRACE[16..])
    );
    assert_eq!(e.sampled, Some(false));
    let e = p.extract(&headers(&[
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
        ("x-b3-sampled", "0"),
        ("x-b3-flags", "1"),
    ]));
    assert_eq!(e.sampled, Some(true), "debug means sampled");
    let e = p.extract(&headers(&[("x-b3-sampled", "0")]));
    assert_eq!((e.parent, e.sampled), (None, Some(false)));
    let e = p.extract(&headers(&[("x-b3-traceid", TRACE), ("x-b3-sampled", "1")]));
    assert_eq!(e.parent, None, "a trace id without a span id is no parent");
    let e = p.extract(&headers(&[
        ("b3", &format!("{TRACE}-{SPAN}-1")),
        ("x-b3-traceid", &"1".repeat(32)),
        ("x-b3-spanid", &"2".repeat(16)),
    ]));
    assert_eq!(parent_of(&e), Some((TRACE.into(), SPAN.into())));
}

/// Formats are tried in the configured order; the first with anything wins.
#[test]
fn extraction_order() {
    let other = "1".repeat(32);
    let h = headers(&[
        ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
        ("b3", &format!("{other}-{SPAN}-0")),
    ]);
    let w3c_first = Propagator::new(&[Propagation::W3c, Propagation::B3]).extract(&h);
    assert_eq!(parent_of(&w3c_first).unwrap().0, TRACE);
    let b3_first = Propagator::new(&[Propagation::B3, Propagation::W3c]).extract(&h);
    assert_eq!(parent_of(&b3_first).unwrap().0, other);
    assert_eq!(b3_first.sampled, Some(false));
    // A broken first format falls through to the next.
    let h = headers(&[
        ("traceparent", "nonsense"),
        ("b3", &format!("{TRACE}-{SPAN}-1")),
    ]);
    assert!(Propagator::new(&[Propagation::W3c, Propagation::B3])
        .extract(&h)
        .parent
        .is_some());
}

/// What is written is what the formats specify, byte for byte, for HTTP/2 (header map) and
/// HTTP/1.1 (lines); `strip` removes every configured format's headers and nothing else.
#[test]
fn inject_strip_and_render() {
    let ctx = SpanContext {
        trace_id: TraceId::from_u128(u128::from_str_radix(TRACE, 16).unwrap()).unwrap(),
        span_id: SpanId::from_u64(u64::from_str_radix(SPAN, 16).unwrap()).unwrap(),
        sampled: true,
        trace_state: Some(HeaderValue::from_static("a=1")),
    };
    let mut h = HeaderMap::new();
    all().inject(&ctx, &mut h);
    assert_eq!(h["traceparent"], format!("00-{TRACE}-{SPAN}-01"));
    assert_eq!(h["tracestate"], "a=1");
    assert_eq!(h["b3"], format!("{TRACE}-{SPAN}-1"));
    assert_eq!(h["x-b3-traceid"], TRACE);
    assert_eq!(h["x-b3-spanid"], SPAN);
    assert_eq!(h["x-b3-sampled"], "1");
    assert_eq!(h.len(), 6);
    // Values new on every request go out as HPACK "never indexed" literals (HTTP/2); the
    // sampled flag and a tracestate repeat and stay indexable.
    for name in ["traceparent", "b3", "x-b3-traceid", "x-b3-spanid"] {
        assert!(h[name].is_sensitive(), "{name}");
    }
    for name in ["tracestate", "x-b3-sampled"] {
        assert!(!h[name].is_sensitive(), "{name}");
    }

    let lines = Propagator::new(&[Propagation::W3c]).render_h1(&SpanContext {
        sampled: false,
        trace_state: None,
        ..ctx.clone()
    });
    assert_eq!(
        &lines[..],
        format!("traceparent: 00-{TRACE}-{SPAN}-00\r\n").as_bytes()
    );

    let mut h = headers(&[
        ("traceparent", "x"),
        ("tracestate", "x"),
        ("b3", "x"),
        ("x-b3-traceid", "x"),
        ("x-b3-spanid", "x"),
        ("x-b3-parentspanid", "x"),
        ("x-b3-sampled", "x"),
        ("x-b3-flags", "x"),
        ("x-app", "kept"),
    ]);
    Propagator::new(&[Propagation::W3c]).strip(&mut h);
    assert!(h.get("traceparent").is_none() && h.get("tracestate").is_none());
    assert_eq!(h.len(), 7, "b3 headers stay when B3 is not configured");
    Propagator::new(&[Propagation::B3multi]).strip(&mut h);
    assert_eq!(h.len(), 1);
    assert_eq!(h["x-app"], "kept");
}

/// Every header of a format is found on its own, whatever else the request carries (the
/// names are scanned before anything is looked up): `strip` removes it, and `extract` reads the
/// decisions that a single header carries.
#[test]
fn each_trace_header_alone_is_found() {
    let names = [
        ("traceparent", Propagation::W3c),
        ("tracestate", Propagation::W3c),
        ("b3", Propagation::B3),
        ("x-b3-traceid", Propagation::B3multi),
        ("x-b3-spanid", Propagation::B3multi),
        ("x-b3-parentspanid", Propagation::B3multi),
        ("x-b3-sampled", Propagation::B3multi),
        ("x-b3-flags", Propagation::B3multi),
        // B3's two forms are read and removed together.
        ("x-b3-sampled", Propagation::B3),
        ("b3", Propagation::B3multi),
    ];
    for (name, format) in names {
        let mut h = headers(&[
            ("x-app", "kept"),
            (name, "x"),
            ("user-agent", "u"),
            ("traceparenx", "kept"),
        ]);
        Propagator::new(&[format]).strip(&mut h);
        assert!(h.get(name).is_none(), "{name} under {format:?}");
        assert_eq!(h.len(), 3, "{name} under {format:?}");
    }
    let sampled = |name: &str, value: &str, format| {
        Propagator::new(&[format])
            .extract(&headers(&[("accept", "*/*"), (name, value)]))
            .sampled
    };
    assert_eq!(sampled("b3", "1", Propagation::B3multi), Some(true));
    assert_eq!(sampled("x-b3-sampled", "0", Propagation::B3), Some(false));
    assert_eq!(sampled("x-b3-flags", "1", Propagation::B3multi), Some(true));
    assert_eq!(
        sampled(
            "traceparent",
            &format!("00-{TRACE}-{SPAN}-01"),
            Propagation::W3c
        ),
        Some(true)
    );
    // Only the configured formats count.
    assert_eq!(sampled("b3", "1", Propagation::W3c), None);
    assert_eq!(
        sampled(
            "traceparent",
            &format!("00-{TRACE}-{SPAN}-01"),
            Propagation::B3
        ),
        None
    );
}

/// Property: any context written in any format reads back as itself.
#[test]
fn round_trip_random_contexts() {
    for _ in 0..2000 {
        let ctx = SpanContext {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            sampled: fastrand::bool(),
            trace_state: None,
        };
        for p in [Propagation::W3c, Propagation::B3, Propagation::B3multi] {
            let prop = Propagator::new(&[p]);
            let mut h = HeaderMap::new();
            prop.inject(&ctx, &mut h);
            let e = prop.extract(&h);
            let parent = e.parent.unwrap();
            assert_eq!(
                (parent.trace_id, parent.span_id),
                (ctx.trace_id, ctx.span_id),
                "{p:?}"
            );
            assert_eq!(e.sampled, Some(ctx.sampled), "{p:?}");
        }
        assert_eq!(
            ctx.trace_id.to_hex(),
            ctx.trace_id.to_string().as_bytes(),
            "hex and Display agree"
        );
        assert_eq!(ctx.span_id.to_hex(), ctx.span_id.to_string().as_bytes());
    }
}

/// Property: random bytes and mutations of valid headers never panic, and whatever is accepted
/// has non-zero ids.
#[test]
fn hostile_input_never_panics() {
    let valid_tp = format!("00-{TRACE}-{SPAN}-01").into_bytes();
    let valid_b3 = format!("{TRACE}-{SPAN}-1-{SPAN}").into_bytes();
    let alphabet = b"0123456789abcdefABCDEF-_ xg=,@\t";
    for i in 0..20_000 {
        let mut v = if i % 2 == 0 {
            valid_tp.clone()
        } else {
            valid_b3.clone()
        };
        match fastrand::u8(0..4) {
            0 => {
                let at = fastrand::usize(..v.len());
                v[at] = alphabet[fastrand::usize(..alphabet.len())];
            }
            1 => v.truncate(fastrand::usize(..v.len())),
            2 => v.extend(
                (0..fastrand::usize(..80)).map(|_| alphabet[fastrand::usize(..alphabet.len())]),
            ),
            _ => {
                v = (0..fastrand::usize(..120))
                    .map(|_| fastrand::u8(..))
                    .collect()
            }
        }
        if let Some((t, s, _)) = parse_traceparent(&v) {
            assert!(t.to_u128() != 0 && s.to_u64() != 0);
        }
        if let Some(p) = parse_b3_single(&v).parent {
            assert!(p.trace_id.to_u128() != 0 && p.span_id.to_u64() != 0);
        }
        if let Ok(value) = HeaderValue::from_bytes(&v) {
            let mut h = HeaderMap::new();
            for name in [
                "traceparent",
                "tracestate",
                "b3",
                "x-b3-traceid",
                "x-b3-spanid",
                "x-b3-sampled",
            ] {
                h.append(HeaderName::from_static(name), value.clone());
            }
            let _ = all().extract(&h);
        }
    }
}

/// HTTP/1.1 lines carry exactly the fields `inject` adds to an HTTP/2 header map, in the same
/// order, for every combination of formats, sampled or not, with and without tracestate.
#[test]
fn render_h1_matches_inject() {
    let formats = [Propagation::W3c, Propagation::B3, Propagation::B3multi];
    for mask in 1..8u8 {
        let chosen: Vec<Propagation> = (0..3)
            .filter(|i| mask & (1 << i) != 0)
            .map(|i| formats[i])
            .collect();
        let p = Propagator::new(&chosen);
        for (sampled, trace_state) in [(true, Some("a=1,b=2")), (false, None)] {
            let ctx = SpanContext {
                trace_id: TraceId::from_u128(0x0af7651916cd43dd8448eb211c80319c).unwrap(),
                span_id: SpanId::from_u64(0xb7ad6b7169203331).unwrap(),
                sampled,
                trace_state: trace_state.map(HeaderValue::from_static),
            };
            let mut expected = String::new();
            p.each_field(&ctx, |name, value| {
                expected.push_str(name.as_str());
                expected.push_str(": ");
                expected.push_str(std::str::from_utf8(&value).unwrap());
                expected.push_str("\r\n");
            });
            let mut map = HeaderMap::new();
            p.inject(&ctx, &mut map);
            assert_eq!(expected.matches("\r\n").count(), map.len(), "{chosen:?}");
            assert_eq!(p.render_h1(&ctx), expected.as_bytes(), "{chosen:?}");
        }
    }
}

/// The table-per-nibble encoder `hex64` replaced, as reference.
fn hex_by_table(bytes: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]])
        .collect()
}

#[test]
fn hex_ids_match_the_per_nibble_encoder_and_fmt() {
    let mut values: Vec<u64> = vec![
        1,
        9,
        10,
        15,
        16,
        0x0123_4567_89ab_cdef,
        0xfedc_ba98_7654_3210,
        0xa0a0_a0a0_9f9f_9f9f,
        u64::MAX,
        u64::MAX - 1,
        1 << 63,
    ];
    values.extend((0..64).map(|i| 1u64 << i));
    let mut rng = fastrand::Rng::with_seed(7);
    values.extend((0..2000).map(|_| rng.u64(1..)));
    for v in values {
        let span = SpanId::from_u64(v).expect("non-zero").to_hex();
        assert_eq!(span.to_vec(), hex_by_table(&v.to_be_bytes()), "{v:#x}");
        assert_eq!(span.to_vec(), format!("{v:016x}").into_bytes(), "{v:#x}");
        for w in [
            u128::from(v),
            u128::from(v) << 64 | u128::from(!v),
            u128::from(v) << 64,
        ] {
            let trace = TraceId::from_u128(w).expect("non-zero").to_hex();
            assert_eq!(trace.to_vec(), hex_by_table(&w.to_be_bytes()), "{w:#x}");
            assert_eq!(trace.to_vec(), format!("{w:032x}").into_bytes(), "{w:#x}");
        }
    }
}

/// Trace ids keep their value through every form (halves, bytes, hex, text), and do not align
/// what holds them to 16 bytes (see `TraceId`).
#[test]
fn trace_id_forms_and_alignment() {
    for v in [
        1u128,
        u64::MAX as u128,
        1 << 64,
        u128::MAX,
        0x0af7651916cd43dd8448eb211c80319c,
    ] {
        let id = TraceId::from_u128(v).unwrap();
        assert_eq!(id.to_u128(), v);
        assert_eq!(id.to_bytes(), v.to_be_bytes());
        assert_eq!(id.to_hex(), *format!("{v:032x}").as_bytes());
        assert_eq!(id.to_string(), format!("{v:032x}"));
    }
    assert!(TraceId::from_u128(0).is_none());
    assert_eq!(std::mem::align_of::<TraceId>(), 8);
    assert_eq!(std::mem::align_of::<SpanContext>(), 8);
}
