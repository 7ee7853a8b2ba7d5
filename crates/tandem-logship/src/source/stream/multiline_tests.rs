//! Multi-line joining on stream sources: records whole on the memory path, through the disk
//! buffer, across a restart, at a timeout and at shutdown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use tandem_config::{LogParser, LogPattern, Multiline, Shape};
use tandem_telemetry::logs::Gauge;
use tandem_telemetry::Metrics;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::framer::Line;

/// A Java-style trace: a start line and `depth` `\tat` lines.
fn trace(i: usize, depth: usize) -> Vec<String> {
    let mut v = vec![format!(
        "E{i:05} java.lang.IllegalStateException: boom {}",
        "x".repeat(40)
    )];
    v.extend((0..depth).map(|d| format!("\tat com.example.C{i}.m{d}(C.java:{d})")));
    v
}

fn lines(texts: &[String]) -> Vec<Line> {
    texts
        .iter()
        .map(|t| Line {
            text: Bytes::from(t.clone()),
            end: 0,
            cut: false,
        })
        .collect()
}

struct Rig {
    input: StreamInput,
    rx: tokio::sync::mpsc::UnboundedReceiver<Arc<Chunk>>,
    stop: Arc<AtomicBool>,
    hard_stop: CancellationToken,
    pump: Option<std::thread::JoinHandle<()>>,
}

fn rig(dir: &std::path::Path, budget: usize, timeout: Duration) -> Rig {
    let m = Metrics::new();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let cfg = StreamConfig {
        name: "app".into(),
        parser: LogParser::Plain,
        shape: Shape::default(),
        multiline: Some(Multiline {
            start: LogPattern(regex::Regex::new(r"^\S").unwrap()),
            timeout,
            max_lines: 500,
            max_bytes: 256 * 1024,
        }),
        labels: Arc::new([]),
        chunk_lines: 7,
        chunk_bytes: 1 << 20,
        max_line: 1024,
        stream_field: true,
        dir: dir.to_owned(),
        disk_limit: 1 << 24,
    };
    let hard_stop = CancellationToken::new();
    let (input, pump) = open(
        cfg,
        vec![tx],
        Budget::new(budget, Gauge::default()),
        m.log_source("app"),
        m.log_stream_source("app"),
        hard_stop.clone(),
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let pump = std::thread::spawn(move || pump.run(&s));
    Rig {
        input,
        rx,
        stop,
        hard_stop,
        pump: Some(pump),
    }
}

impl Rig {
    /// Receives chunks (confirming each unless `confirm` is false) until `n` records came, at
    /// most 10 s; returns (stream, message) of each.
    fn take(&mut self, n: usize, confirm: bool) -> Vec<(String, String)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut out = Vec::new();
        while out.len() < n {
            match self.rx.try_recv() {
                Ok(c) => {
                    for r in &c.records {
                        let stream = match &r.fields.as_ref().unwrap()["stream"] {
                            Value::String(s) => s.clone(),
                            other => panic!("{other:?}"),
                        };
                        out.push((stream, String::from_utf8_lossy(&r.message).into_owned()));
                    }
                    if confirm {
                        c.confirm();
                    }
                }
                Err(_) => {
                    assert!(
                        Instant::now() < deadline,
                        "{} of {n} records came: {out:?}",
                        out.len()
                    );
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
        out
    }

    fn nothing_more(&mut self, within: Duration) {
        std::thread::sleep(within);
        if let Ok(c) = self.rx.try_recv() {
            panic!("unexpected records: {:?}", c.records);
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(p) = self.pump.take() {
            p.join().unwrap();
        }
    }
}

/// Traces come whole on the memory path, stdout and stderr each joined on their own even when
/// their lines interleave; the last record goes out at the timeout, not before.
#[test]
fn joins_per_stream_and_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = rig(dir.path(), 1 << 20, Duration::from_millis(300));
    let (a, b) = (trace(1, 3), trace(2, 2));
    // Interleaved line by line, as two pipes would.
    for i in 0..4 {
        r.input.push(Stream::Stdout, &lines(&a[i..=i]));
        if i < 3 {
            r.input.push(Stream::Stderr, &lines(&b[i..=i]));
        }
    }
    r.input.push(Stream::Stdout, &lines(&trace(3, 0)));
    let got = r.take(1, true);
    assert_eq!(got, [("stdout".to_owned(), a.join("\n"))]);
    let t0 = Instant::now();
    let got = r.take(2, true);
    let waited = t0.elapsed();
    let mut got = got;
    got.sort();
    assert_eq!(
        got,
        [
            ("stderr".to_owned(), b.join("\n")),
            ("stdout".to_owned(), trace(3, 0).join("\n"))
        ]
    );
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    r.stop();
}

/// Stopping ships the pending record; a push after the stop is flushed at once (to the disk
/// buffer: the sinks are closed), and the next start ships it, whole.
#[test]
fn shutdown_flushes_pending_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = rig(dir.path(), 1 << 20, Duration::from_secs(3600));
    let t = trace(7, 4);
    r.input.push(Stream::Stdout, &lines(&t));
    r.nothing_more(Duration::from_millis(100));
    r.stop.store(true, Ordering::Release);
    let got = r.take(1, true);
    assert_eq!(got, [("stdout".to_owned(), t.join("\n"))]);
    r.stop();
    let late = trace(8, 2);
    r.input.push(Stream::Stderr, &lines(&late));
    assert!(r.input.status().disk_written > 0, "{:?}", r.input.status());
    drop(r);
    let mut r = rig(dir.path(), 1 << 20, Duration::from_secs(3600));
    assert_eq!(r.take(1, true), [("stderr".to_owned(), late.join("\n"))]);
    r.stop();
}

/// Spilled joined records not confirmed before a stop come back whole after the restart, and
/// their segments go once they are confirmed.
#[test]
fn spilled_records_survive_a_restart_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = rig(dir.path(), 4096, Duration::from_secs(3600));
    let traces: Vec<Vec<String>> = (0..60).map(|i| trace(i, 1 + i % 5)).collect();
    for t in &traces {
        r.input.push(Stream::Stdout, &lines(t));
    }
    r.input.flush(Stream::Stdout);
    let st = r.input.status();
    assert!(st.spilled_lines > 40, "{st:?}");
    // Nothing confirmed; a hard stop.
    r.hard_stop.cancel();
    r.stop();
    drop(r);
    let mut r = rig(dir.path(), 1 << 20, Duration::from_secs(3600));
    let n = usize::try_from(st.spilled_lines).unwrap();
    let got = r.take(n, true);
    let want: Vec<(String, String)> = traces[60 - n..]
        .iter()
        .map(|t| ("stdout".to_owned(), t.join("\n")))
        .collect();
    assert_eq!(got, want);
    let deadline = Instant::now() + Duration::from_secs(5);
    while r.input.status().disk_buffer_used > 0 {
        assert!(Instant::now() < deadline, "{:?}", r.input.status());
        std::thread::sleep(Duration::from_millis(5));
    }
    r.stop();
}

/// Reading the disk buffer back never ends inside a joined record; a record torn by a crash at
/// the very end is shipped as it is.
#[test]
fn disk_records_split_at_whole_records() {
    let data = Bytes::from_static(b"oa\nOb1\nOb2\nob3\neerr\nOc1\nOc2\n");
    let (recs, used) = split_records(data.clone(), false).unwrap();
    let texts: Vec<(Stream, &[u8], u64)> = recs.iter().map(|(s, t, n)| (*s, &t[..], *n)).collect();
    assert_eq!(
        texts,
        [
            (Stream::Stdout, &b"a"[..], 3),
            (Stream::Stdout, &b"b1\nb2\nb3"[..], 12),
            (Stream::Stderr, &b"err"[..], 5),
        ]
    );
    assert_eq!(used, 20);
    let (recs, used) = split_records(data.clone(), true).unwrap();
    assert_eq!(used, data.len() as u64);
    assert_eq!(&recs[3].1[..], b"c1\nc2");
    assert_eq!(recs[3].2, 8);
    assert!(split_records(Bytes::from_static(b"Oa\nOb\n"), false).is_none());
    assert!(split_records(Bytes::new(), true).is_none());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any traces, pushed in any pieces, with a budget small enough to spill part of them and
    /// a receiver that confirms late: every trace arrives once, whole, in order, and the disk
    /// buffer empties.
    #[test]
    fn any_traces_arrive_whole_in_order(
        depths in proptest::collection::vec(0usize..6, 1..60),
        cuts in proptest::collection::vec(1usize..9, 1..20),
        budget in prop_oneof![Just(2048usize), Just(8192), Just(1 << 20)],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rig(dir.path(), budget, Duration::from_secs(3600));
        let all: Vec<String> = depths.iter().enumerate().flat_map(|(i, d)| trace(i, *d)).collect();
        let mut at = 0;
        let mut k = 0;
        while at < all.len() {
            let n = cuts[k % cuts.len()].min(all.len() - at);
            r.input.push(Stream::Stderr, &lines(&all[at..at + n]));
            at += n;
            k += 1;
        }
        r.input.flush(Stream::Stderr);
        let got = r.take(depths.len(), true);
        let want: Vec<(String, String)> = depths
            .iter()
            .enumerate()
            .map(|(i, d)| ("stderr".to_owned(), trace(i, *d).join("\n")))
            .collect();
        prop_assert_eq!(got, want);
        let deadline = Instant::now() + Duration::from_secs(5);
        while r.input.status().disk_buffer_used > 0 {
            prop_assert!(Instant::now() < deadline, "{:?}", r.input.status());
            std::thread::sleep(Duration::from_millis(2));
        }
        r.stop();
    }
}

/// Records read back from the disk buffer are named by their buffer offsets: the same after
/// another restart (so a replay carries the same Elasticsearch `_id`s), distinct per record;
/// memory-path records get positions apart from every buffer offset.
#[test]
fn disk_records_keep_their_positions_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = rig(dir.path(), 2048, Duration::from_secs(3600));
    for i in 0..40 {
        r.input.push(Stream::Stdout, &lines(&trace(i, 2)));
    }
    r.input.flush(Stream::Stdout);
    let spilled = usize::try_from(r.input.status().spilled_lines).unwrap();
    assert!(spilled > 20);
    r.hard_stop.cancel();
    r.stop();
    drop(r);
    let positions = |r: &mut Rig, n: usize| {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while out.len() < n {
            assert!(Instant::now() < deadline, "{} of {n}", out.len());
            match r.rx.try_recv() {
                Ok(c) => {
                    let id = c.origin.identity;
                    out.extend(c.records.iter().map(|rec| (id, rec.position)));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        out
    };
    // Twice read back, never confirmed.
    let mut first = None;
    for _ in 0..2 {
        let mut r = rig(dir.path(), 1 << 20, Duration::from_secs(3600));
        let got = positions(&mut r, spilled);
        r.hard_stop.cancel();
        r.stop();
        drop(r);
        match &first {
            None => first = Some(got),
            Some(f) => assert_eq!(&got, f, "same names after a restart"),
        }
    }
    let first = first.unwrap();
    assert!(first
        .iter()
        .all(|(id, p)| *id != 0 && *p != 0 && *p < 1 << 63));
    let mut distinct: Vec<u64> = first.iter().map(|(_, p)| *p).collect();
    distinct.dedup();
    assert_eq!(distinct.len(), spilled, "one position per record");
    // The memory path.
    let mut r = rig(dir.path(), 1 << 20, Duration::from_secs(3600));
    let _ = positions(&mut r, spilled);
    r.input.push(Stream::Stdout, &lines(&trace(99, 1)));
    r.input.flush(Stream::Stdout);
    let mem = positions(&mut r, 1);
    assert!(mem[0].1 >= 1 << 63, "{mem:?}");
    r.stop.store(true, Ordering::Release);
    r.hard_stop.cancel();
    r.stop();
}
