//! The sink driver with a scripted sink: batching by lines and time, flushing when the input
//! closes, retrying until delivered, honouring Retry-After, confirming only what was
//! delivered, and leaving everything unconfirmed on a hard stop.

#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::sync::mpsc::Receiver;
use std::sync::Mutex;
use std::time::SystemTime;

use tandem_telemetry::Metrics;

use super::*;
use crate::committer::Msg;
use crate::record::{Origin, Record};

#[derive(Default)]
struct Scripted {
    outcomes: Mutex<VecDeque<Outcome>>,
    sends: Mutex<Vec<(Instant, usize)>>,
    /// Sends whose body holds this text take this long (the others: no time).
    slow: Option<(&'static str, Duration)>,
    /// A receiver with a request size limit: bodies of more lines get 413 (after the scripted
    /// outcomes).
    max_body_lines: Option<usize>,
    /// Bodies answered as delivered.
    delivered: Mutex<Vec<Bytes>>,
}

impl Sink for Scripted {
    fn encode(&self, batch: &[Arc<Chunk>], out: &mut Vec<u8>) {
        encode::ndjson(batch, out);
    }

    fn send(&self, body: Bytes) -> BoxFuture<'_, Outcome> {
        let lines = body.iter().filter(|b| **b == b'\n').count();
        self.sends.lock().unwrap().push((Instant::now(), lines));
        let o = self
            .outcomes
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(match self.max_body_lines {
                Some(max) if lines > max => Outcome::Rejected {
                    status: 413,
                    detail: "status 413 Payload Too Large: too big".into(),
                },
                _ => Outcome::Delivered,
            });
        if matches!(o, Outcome::Delivered) {
            self.delivered.lock().unwrap().push(body.clone());
        }
        let delay = self
            .slow
            .and_then(|(text, d)| memchr::memmem::find(&body, text.as_bytes()).map(|_| d));
        Box::pin(async move {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            o
        })
    }
}

fn retry(reason: RetryReason, after: Option<Duration>) -> Outcome {
    Outcome::Retry(Failure {
        reason,
        after,
        detail: "scripted".into(),
    })
}

struct Rig {
    sink: Arc<Scripted>,
    tx: Option<tokio::sync::mpsc::UnboundedSender<Arc<Chunk>>>,
    acks: Receiver<(u64, u64)>,
    ack_tx: std::sync::mpsc::Sender<Msg>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    metrics: LogSinkMetrics,
    next: u64,
}

fn rig(outcomes: Vec<Outcome>, max_lines: usize, timeout: Duration) -> Rig {
    rig_with(outcomes, max_lines, timeout, Duration::ZERO)
}

/// A rig whose stand-in committer answers checkpoint barriers after `barrier_delay`.
fn rig_with(
    outcomes: Vec<Outcome>,
    max_lines: usize,
    timeout: Duration,
    barrier_delay: Duration,
) -> Rig {
    rig_full(outcomes, max_lines, timeout, barrier_delay, 1, None)
}

/// A rig with `concurrency` deliveries in flight, where sends holding `slow`'s text are slow.
fn rig_full(
    outcomes: Vec<Outcome>,
    max_lines: usize,
    timeout: Duration,
    barrier_delay: Duration,
    concurrency: usize,
    slow: Option<(&'static str, Duration)>,
) -> Rig {
    let sink = Arc::new(Scripted {
        outcomes: Mutex::new(outcomes.into()),
        slow,
        ..Scripted::default()
    });
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (ack_tx, ctl) = std::sync::mpsc::channel::<Msg>();
    let (acked, acks) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        while let Ok(m) = ctl.recv() {
            match m {
                Msg::Ack { start, end, .. } => {
                    let _ = acked.send((start, end));
                }
                Msg::Confirmed { acks, reply } => {
                    for (_, start, end) in acks {
                        let _ = acked.send((start, end));
                    }
                    std::thread::sleep(barrier_delay);
                    let _ = reply.send(());
                }
                _ => {}
            }
        }
    });
    let stop = CancellationToken::new();
    let metrics = Metrics::new().log_sink("s");
    let task = tokio::spawn(drive(
        sink.clone(),
        rx,
        DriverSettings {
            name: "s".into(),
            batch: LogBatch {
                max_lines,
                max_bytes: 1 << 20,
                timeout,
            },
            concurrency,
            backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(40),
        },
        metrics.clone(),
        stop.clone(),
    ));
    Rig {
        sink,
        tx: Some(tx),
        acks,
        ack_tx,
        stop,
        task,
        metrics,
        next: 0,
    }
}

impl Rig {
    /// Sends a chunk of one record covering the next 10 bytes.
    fn chunk(&mut self) {
        self.chunk_of(1);
    }

    /// Sends a chunk of `n` records covering the next 10 bytes.
    fn chunk_of(&mut self, n: usize) {
        let origin = Arc::new(Origin::new(
            "app".into(),
            "/a.log".into(),
            Arc::from(vec![]),
        ));
        let start = self.next;
        self.next += 10;
        let records = (0..n)
            .map(|i| Record {
                message: format!("m{start}.{i}").into(),
                ..Record::default()
            })
            .collect();
        let c = Chunk::new(
            records,
            9 * n,
            SystemTime::now(),
            origin,
            (1, start, start + 10),
            1,
            self.ack_tx.clone(),
            None,
        );
        self.tx.as_ref().unwrap().send(Arc::new(c)).unwrap();
    }

    fn acked(&self) -> Vec<(u64, u64)> {
        std::iter::from_fn(|| self.acks.try_recv().ok()).collect()
    }

    fn sends(&self) -> Vec<(Instant, usize)> {
        self.sink.sends.lock().unwrap().clone()
    }

    async fn wait_sends(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.sends().len() < n {
            assert!(
                Instant::now() < deadline,
                "{} sends, want {n}",
                self.sends().len()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Full batches go at once; the rest goes when the batch timeout passes.
#[tokio::test]
async fn batches_by_lines_then_by_time() {
    let mut r = rig(vec![], 3, Duration::from_millis(150));
    let t0 = Instant::now();
    for _ in 0..7 {
        r.chunk();
    }
    r.wait_sends(2).await;
    assert!(
        t0.elapsed() < Duration::from_millis(120),
        "{:?}",
        t0.elapsed()
    );
    r.wait_sends(3).await;
    let sends = r.sends();
    assert_eq!(sends.iter().map(|s| s.1).collect::<Vec<_>>(), [3, 3, 1]);
    assert!(sends[2].0 - t0 >= Duration::from_millis(150));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(r.acked().len(), 7);
    assert_eq!(r.metrics.shipped_lines.get(), 7);
}

/// A chunk that would push a batch past `max_lines` starts the next batch instead: batches
/// stay within their bounds (what a crash can replay).
#[tokio::test]
async fn batches_never_exceed_their_bounds() {
    let mut r = rig(vec![], 4, Duration::from_millis(50));
    for _ in 0..4 {
        r.chunk_of(3);
    }
    r.wait_sends(4).await;
    assert_eq!(
        r.sends().iter().map(|s| s.1).collect::<Vec<_>>(),
        [3, 3, 3, 3]
    );
}

/// When the input closes, a partial batch goes at once and the driver returns after it.
#[tokio::test]
async fn closing_flushes_the_partial_batch() {
    let mut r = rig(vec![], 100, Duration::from_secs(60));
    r.chunk();
    r.chunk();
    r.tx = None;
    tokio::time::timeout(Duration::from_secs(2), &mut r.task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.sends().iter().map(|s| s.1).collect::<Vec<_>>(), [2]);
    assert_eq!(r.acked(), [(0, 10), (10, 20)]);
}

/// Failures are retried on the back-off until delivered; chunks are confirmed only then, and
/// every retry is counted by reason.
#[tokio::test]
async fn retries_until_delivered_then_confirms() {
    let mut r = rig(
        vec![
            retry(RetryReason::Status5xx, None),
            retry(RetryReason::Connect, None),
            retry(RetryReason::Connect, None),
        ],
        1,
        Duration::from_secs(1),
    );
    r.chunk();
    r.wait_sends(2).await;
    assert!(r.acked().is_empty(), "not confirmed while failing");
    r.wait_sends(4).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(r.acked(), [(0, 10)]);
    let counts: Vec<u64> = r.metrics.retries.iter().map(|c| c.get()).collect();
    assert_eq!(counts, [2, 0, 0, 1, 0, 0]);
    let s = r.sends();
    for w in s.windows(2) {
        let gap = w[1].0 - w[0].0;
        assert!(gap >= Duration::from_millis(10), "back-off waits: {gap:?}");
        assert!(
            gap < Duration::from_millis(200),
            "and no more than the max: {gap:?}"
        );
    }
}

/// A Retry-After is waited out exactly (not the shorter back-off).
#[tokio::test]
async fn retry_after_is_honoured() {
    let mut r = rig(
        vec![retry(
            RetryReason::Status429,
            Some(Duration::from_millis(400)),
        )],
        1,
        Duration::from_secs(1),
    );
    r.chunk();
    r.wait_sends(2).await;
    let s = r.sends();
    let gap = s[1].0 - s[0].0;
    assert!(gap >= Duration::from_millis(400), "{gap:?}");
    assert!(gap < Duration::from_millis(600), "{gap:?}");
}

/// A hard stop ends the driver while a delivery keeps failing: nothing is confirmed.
#[tokio::test]
async fn hard_stop_confirms_nothing() {
    let outcomes = (0..1000)
        .map(|_| retry(RetryReason::Timeout, None))
        .collect();
    let mut r = rig(outcomes, 1, Duration::from_secs(1));
    r.chunk();
    r.chunk();
    r.wait_sends(3).await;
    r.stop.cancel();
    tokio::time::timeout(Duration::from_secs(2), &mut r.task)
        .await
        .unwrap()
        .unwrap();
    assert!(r.acked().is_empty());
}

/// The next delivery starts only once the checkpoint recorded the last one: that is what
/// bounds replays after a crash to the deliveries in flight.
#[tokio::test]
async fn next_delivery_waits_for_the_checkpoint() {
    let mut r = rig_with(
        vec![],
        1,
        Duration::from_secs(1),
        Duration::from_millis(300),
    );
    r.chunk();
    r.chunk();
    r.wait_sends(2).await;
    let s = r.sends();
    let gap = s[1].0 - s[0].0;
    assert!(gap >= Duration::from_millis(300), "{gap:?}");
}

/// The back-off doubles with jitter between half and all of each step, capped at the max.
#[test]
fn backoff_doubles_with_jitter_to_the_cap() {
    let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
    let steps = [100u64, 200, 400, 800, 1000, 1000];
    for ms in steps {
        let w = b.next_wait();
        assert!(
            w >= Duration::from_millis(ms / 2) && w <= Duration::from_millis(ms),
            "{w:?} for {ms}"
        );
    }
}

/// A partial success: the records refused for good are not counted as shipped, only the
/// resend body is sent again (after the back-off, counted by its reason), and the batch is
/// confirmed once it is delivered; a partial success with nothing to resend confirms at once.
#[tokio::test]
async fn partial_success_resends_only_the_rest() {
    let partial = Outcome::Partial {
        dropped: 1,
        resend: Some(Resend {
            body: Bytes::from_static(b"x\ny\n"),
            lines: 2,
            failure: Failure {
                reason: RetryReason::Status429,
                after: None,
                detail: "scripted".into(),
            },
        }),
    };
    let done = Outcome::Partial {
        dropped: 3,
        resend: None,
    };
    let mut r = rig(
        vec![partial, Outcome::Delivered, done],
        5,
        Duration::from_secs(1),
    );
    r.chunk_of(5);
    r.wait_sends(2).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        r.sends().iter().map(|s| s.1).collect::<Vec<_>>(),
        [5, 2],
        "the second send is the resend body"
    );
    assert_eq!(r.acked(), [(0, 10)]);
    assert_eq!(r.metrics.shipped_lines.get(), 4, "5 lines, 1 dropped");
    assert_eq!(r.metrics.retries[RetryReason::Status429 as usize].get(), 1);
    r.chunk_of(5);
    r.wait_sends(3).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(r.acked(), [(10, 20)]);
    assert_eq!(r.metrics.shipped_lines.get(), 6, "then 5 more, 3 dropped");
}

/// With several deliveries in flight, a slow first delivery does not hold the others: they are
/// confirmed as they finish, out of order (the committer keeps the checkpoint to the confirmed
/// prefix), and the slow one is confirmed when it finishes.
#[tokio::test]
async fn concurrent_deliveries_confirm_out_of_order() {
    let mut r = rig_full(
        vec![],
        1,
        Duration::from_secs(1),
        Duration::ZERO,
        3,
        // The first chunk's record: `m0.0`.
        Some(("\"m0.0\"", Duration::from_millis(300))),
    );
    r.chunk();
    r.chunk();
    r.chunk();
    r.wait_sends(3).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut first = r.acked();
    // The two fast ones finish in either order (each is encoded on its own blocking thread).
    first.sort_unstable();
    assert_eq!(
        first,
        [(10, 20), (20, 30)],
        "the fast ones, while the first is in flight"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(r.acked(), [(0, 10)]);
    assert_eq!(r.metrics.shipped_lines.get(), 3);
}

/// A batch refused for good (400) is sent once, dropped, counted, and confirmed, so the
/// checkpoint moves past it; the next batch goes through as usual.
#[tokio::test]
async fn rejected_batch_is_dropped_counted_and_confirmed() {
    let mut r = rig(
        vec![Outcome::Rejected {
            status: 400,
            detail: "status 400 Bad Request: entry out of order".into(),
        }],
        2,
        Duration::from_millis(20),
    );
    r.chunk_of(2);
    r.wait_sends(1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(r.acked(), [(0, 10)], "confirmed though dropped");
    assert_eq!(r.metrics.dropped_lines[2].get(), 2);
    assert!(
        r.metrics.retries.iter().all(|c| c.get() == 0),
        "not retried"
    );
    r.chunk_of(2);
    r.wait_sends(2).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(r.acked(), [(10, 20)]);
    assert_eq!(r.metrics.shipped_lines.get(), 2);
    assert_eq!(r.sends().len(), 2);
}

/// Drives chunks of `sizes` records (one batch) into a sink that refuses bodies of more than
/// `max_body_lines` with 413, until the input closes; returns the sink, the confirmed ranges
/// and the metrics.
async fn drive_split(
    max_body_lines: usize,
    sizes: &[usize],
) -> (Arc<Scripted>, Vec<(u64, u64)>, LogSinkMetrics, Vec<String>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let sink = Arc::new(Scripted {
        max_body_lines: Some(max_body_lines),
        ..Scripted::default()
    });
    let (ack_tx, acks) = std::sync::mpsc::channel::<Msg>();
    let metrics = Metrics::new().log_sink("s");
    let task = tokio::spawn(drive(
        sink.clone(),
        rx,
        DriverSettings {
            name: "s".into(),
            batch: LogBatch {
                max_lines: 100,
                max_bytes: 1 << 20,
                timeout: Duration::from_millis(20),
            },
            concurrency: 1,
            backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(40),
        },
        metrics.clone(),
        CancellationToken::new(),
    ));
    let origin = Arc::new(Origin::new(
        "app".into(),
        "/a.log".into(),
        Arc::from(vec![]),
    ));
    let mut want = Vec::new();
    for (i, n) in sizes.iter().copied().enumerate() {
        let records: Vec<Record> = (0..n)
            .map(|k| Record {
                message: format!("r{i}.{k}").into(),
                ..Record::default()
            })
            .collect();
        want.extend(
            records
                .iter()
                .map(|r| String::from_utf8_lossy(&r.message).into_owned()),
        );
        let start = i as u64 * 10;
        tx.send(Arc::new(Chunk::new(
            records,
            5 * n,
            SystemTime::now(),
            origin.clone(),
            (1, start, start + 10),
            1,
            ack_tx.clone(),
            None,
        )))
        .unwrap();
    }
    drop(tx);
    let chunks = sizes.len();
    // The stand-in committer: acks collected, barriers answered.
    let acked = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        while let Ok(m) = acks.recv_timeout(Duration::from_secs(5)) {
            match m {
                Msg::Ack { start, end, .. } => {
                    out.push((start, end));
                    if out.len() == chunks {
                        break;
                    }
                }
                Msg::Confirmed { acks, reply } => {
                    out.extend(acks.into_iter().map(|(_, start, end)| (start, end)));
                    let _ = reply.send(());
                    if out.len() == chunks {
                        break;
                    }
                }
                _ => {}
            }
        }
        out
    });
    let mut acked = acked.await.unwrap();
    task.await.unwrap();
    acked.sort_unstable();
    (sink, acked, metrics, want)
}

/// Messages of the bodies a scripted sink delivered, in order; each body at most `max` lines.
fn delivered_messages(sink: &Scripted, max: usize) -> Vec<String> {
    let mut got = Vec::new();
    for b in sink.delivered.lock().unwrap().iter() {
        let lines: Vec<&[u8]> = b.split(|c| *c == b'\n').filter(|l| !l.is_empty()).collect();
        assert!(lines.len() <= max, "{}", lines.len());
        for l in lines {
            let v: serde_json::Value = serde_json::from_slice(l).unwrap();
            got.push(v["message"].as_str().unwrap().to_owned());
        }
    }
    got
}

/// A 413 splits the batch in halves (a chunk cut in the middle too), again until each part
/// fits: every record is delivered exactly once, in order, and every chunk confirmed.
#[tokio::test]
async fn too_large_batch_is_split_until_it_fits() {
    let (sink, acked, metrics, want) = drive_split(4, &[5, 6, 2]).await;
    assert_eq!(acked, [(0, 10), (10, 20), (20, 30)]);
    assert_eq!(
        delivered_messages(&sink, 4),
        want,
        "every record once, in order"
    );
    // 13 -> 6 + 7 -> 3 + 3 + 3 + 4: 3 refused sends, 4 delivered.
    assert_eq!(sink.sends.lock().unwrap().len(), 7);
    assert_eq!(metrics.dropped_lines[2].get(), 0);
    assert_eq!(metrics.shipped_lines.get(), 13);
}

/// A receiver that takes no record at all: the batch is split down to single records, each
/// dropped and counted; the chunks are confirmed all the same.
#[tokio::test]
async fn too_large_single_records_are_dropped() {
    let (sink, acked, metrics, _) = drive_split(0, &[2, 1]).await;
    assert_eq!(acked, [(0, 10), (10, 20)]);
    assert!(sink.delivered.lock().unwrap().is_empty());
    // 3 -> 1 + 2 -> 1 + 1: 5 sends, all refused.
    assert_eq!(sink.sends.lock().unwrap().len(), 5);
    assert_eq!(metrics.dropped_lines[2].get(), 3);
    assert_eq!(metrics.shipped_lines.get(), 0);
}
