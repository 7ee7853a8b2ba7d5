//! The tailer on real files in a temp directory, driven scan by scan and round by round: lines
//! with exact offsets, partial lines, rename rotation, copytruncate (copy seen after or before
//! the truncation, regrowth past the old offset), inode reuse, checkpoint resume, start_at, and
//! the memory budget.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::mpsc::Receiver;

use tokio::sync::mpsc::UnboundedReceiver;

use super::*;

struct Harness {
    dir: tempfile::TempDir,
    tailer: FileTailer,
    chunks: UnboundedReceiver<Arc<Chunk>>,
    ctl: Receiver<Msg>,
    /// Every generation registered: key -> start offset.
    registered: Vec<(u64, u64)>,
}

fn config(dir: &Path, pattern: &str, start_at: StartAt) -> TailerConfig {
    TailerConfig {
        name: "app".into(),
        patterns: vec![dir.join(pattern).to_string_lossy().into_owned()],
        start_at,
        parser: LogParser::Plain,
        multiline: None,
        shape: tandem_config::Shape::default(),
        max_line: 4096,
        labels: Arc::from(Vec::new()),
        poll_interval: Duration::from_millis(10),
        scan_interval: Duration::from_millis(10),
        chunk_lines: 1000,
        chunk_bytes: 1 << 20,
    }
}

impl Harness {
    fn new(pattern: &str) -> Harness {
        Harness::with(pattern, StartAt::Beginning, Vec::new(), 64 << 20, None)
    }

    fn with(
        pattern: &str,
        start_at: StartAt,
        checkpointed: Vec<Entry>,
        budget: usize,
        dir: Option<tempfile::TempDir>,
    ) -> Harness {
        let dir = dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
        let cfg = config(dir.path(), pattern, start_at);
        Harness::build(cfg, checkpointed, budget, dir)
    }

    /// A harness whose source `shape` changes (parser, multi-line, rules).
    fn shaped(pattern: &str, shape: impl FnOnce(&mut TailerConfig)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), pattern, StartAt::Beginning);
        shape(&mut cfg);
        Harness::build(cfg, Vec::new(), 64 << 20, dir)
    }

    fn build(
        cfg: TailerConfig,
        checkpointed: Vec<Entry>,
        budget: usize,
        dir: tempfile::TempDir,
    ) -> Harness {
        Harness::build_on(
            cfg,
            checkpointed,
            Budget::new(budget, Gauge::default()),
            dir,
        )
    }

    /// A harness reading within `budget` (a window of a shared budget, say).
    fn build_on(
        cfg: TailerConfig,
        checkpointed: Vec<Entry>,
        budget: Budget,
        dir: tempfile::TempDir,
    ) -> Harness {
        let (tx, chunks) = tokio::sync::mpsc::unbounded_channel();
        let (ctl_tx, ctl) = std::sync::mpsc::channel();
        let keys = Arc::new(AtomicU64::new(1000));
        let checkpointed = checkpointed
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                let c = Arc::new(AtomicU64::new(e.offset));
                (i as u64 + 1, e, c)
            })
            .collect();
        let tailer = FileTailer::new(
            cfg,
            checkpointed,
            keys,
            Outputs {
                sinks: vec![tx],
                committer: ctl_tx,
            },
            budget,
            Arc::new(Metrics::new()),
        );
        Harness {
            dir,
            tailer,
            chunks,
            ctl,
            registered: Vec::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn append(&self, name: &str, text: &str) {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(name))
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    /// One scan and rounds until caught up; returns the messages read, in order, each with
    /// the generation key and the chunk's end offset.
    fn step(&mut self) -> Vec<(u64, String)> {
        self.tailer.scan(Instant::now());
        while self.tailer.round() == Progress::More {}
        self.drain()
    }

    fn drain(&mut self) -> Vec<(u64, String)> {
        while let Ok(m) = self.ctl.try_recv() {
            if let Msg::Register { key, entry, .. } = m {
                self.registered.push((key, entry.offset));
            }
        }
        let mut out = Vec::new();
        while let Ok(c) = self.chunks.try_recv() {
            let (key, _, _) = c.range();
            for r in &c.records {
                out.push((key, String::from_utf8_lossy(&r.message).into_owned()));
            }
        }
        out
    }

    fn messages(&mut self) -> Vec<String> {
        self.step().into_iter().map(|(_, m)| m).collect()
    }
}

fn numbered(from: usize, to: usize) -> String {
    (from..=to)
        .map(|i| format!("line {i:05} {}\n", "x".repeat(40)))
        .collect()
}

fn expect_numbered(got: &[String], from: usize, to: usize) {
    let want: Vec<String> = numbered(from, to).lines().map(str::to_owned).collect();
    assert_eq!(got, want);
}

/// Lines come out once each with exact chunk ranges; an unfinished line waits for its `\n`.
#[test]
fn appended_lines_and_partial_lines() {
    let mut h = Harness::new("app.log");
    h.append("app.log", "one\ntwo\nthr");
    assert_eq!(h.messages(), ["one", "two"]);
    assert_eq!(h.registered, [(1000, 0)]);
    assert!(h.messages().is_empty(), "the partial line is held");
    h.append("app.log", "ee\n\nfour\n");
    assert_eq!(h.messages(), ["three", "four"], "empty lines are skipped");
}

/// Chunks cover contiguous ranges of the file, so acknowledging all of them commits the end.
#[test]
fn chunk_ranges_are_contiguous() {
    let mut h = Harness::new("app.log");
    let text = numbered(1, 5000);
    h.append("app.log", &text);
    h.tailer.scan(Instant::now());
    while h.tailer.round() == Progress::More {}
    let mut next = 0;
    let mut n = 0;
    while let Ok(c) = h.chunks.try_recv() {
        let (_, start, end) = c.range();
        assert_eq!(start, next);
        assert!(end - start <= READ_SIZE as u64);
        next = end;
        n += c.records.len();
    }
    assert_eq!((next, n), (text.len() as u64, 5000));
}

/// Chunks stay within the smallest batch of the sinks (lines and bytes), ranges still
/// contiguous, so a batch never has to grow past its bounds to take a chunk.
#[test]
fn chunks_fit_the_smallest_batch() {
    let mut h = Harness::new("app.log");
    h.tailer.cfg.chunk_lines = 7;
    h.tailer.cfg.chunk_bytes = 300;
    h.append(
        "app.log",
        &(numbered(1, 100) + "\n\n" + &"y".repeat(500) + "\n"),
    );
    h.tailer.scan(Instant::now());
    while h.tailer.round() == Progress::More {}
    let (mut next, mut n, mut sizes) = (0, 0, Vec::new());
    while let Ok(c) = h.chunks.try_recv() {
        let (_, start, end) = c.range();
        assert_eq!(start, next);
        next = end;
        n += c.records.len();
        sizes.push((c.records.len(), c.bytes));
    }
    assert_eq!(n, 101);
    // 52-byte lines: 5 fit in 300 bytes; the 500-byte line goes alone.
    assert!(
        sizes[..sizes.len() - 1]
            .iter()
            .all(|&(l, b)| l <= 5 && b <= 300),
        "{sizes:?}"
    );
    assert_eq!(sizes.last(), Some(&(1, 500)));
    // The empty lines' range is acknowledged directly (no record, nothing to ship).
    assert_eq!(next, h.tailer.files[0].framer.line_start());
}

/// Rename rotation with a glob that matches only the live name: the renamed file keeps being
/// read through its open descriptor (lines written to it after the rename included), the new
/// file is read from its start, and the renamed one is released once drained and idle.
#[test]
fn rename_rotation_reads_both_files_once() {
    let mut h = Harness::new("app.log");
    h.append("app.log", &numbered(1, 30));
    expect_numbered(&h.messages(), 1, 30);
    h.append("app.log", &numbered(31, 40));
    std::fs::rename(h.path("app.log"), h.path("app.log.1")).unwrap();
    h.append("app.log.1", &numbered(41, 50));
    h.append("app.log", &numbered(51, 60));
    let mut got = h.step();
    got.sort_by_key(|(_, m)| m.clone());
    let msgs: Vec<String> = got.iter().map(|(_, m)| m.clone()).collect();
    expect_numbered(&msgs, 31, 60);
    assert_eq!(h.tailer.paths().len(), 2, "the renamed file is still read");
    h.tailer.age_orphans(RELEASE_AFTER);
    assert!(h.messages().is_empty());
    assert_eq!(h.tailer.paths(), [h.path("app.log")]);
    let released =
        std::iter::from_fn(|| h.ctl.try_recv().ok()).any(|m| matches!(m, Msg::Release { .. }));
    assert!(
        !released,
        "a released file stays an orphan for a while first"
    );
}

/// With a glob matching the rotated names, a rename is followed by identity (not read again).
#[test]
fn rename_within_the_glob_is_not_a_new_file() {
    let mut h = Harness::new("app.log*");
    h.append("app.log", &numbered(1, 30));
    expect_numbered(&h.messages(), 1, 30);
    for i in (1..=3).rev() {
        let from = if i == 1 {
            "app.log".to_owned()
        } else {
            format!("app.log.{}", i - 1)
        };
        if h.path(&from).exists() {
            std::fs::rename(h.path(&from), h.path(&format!("app.log.{i}"))).unwrap();
        }
    }
    h.append("app.log", &numbered(31, 40));
    expect_numbered(&h.messages(), 31, 40);
    assert_eq!(h.registered.len(), 2);
}

/// Copytruncate while the reader lags: the copy is found by its fingerprint and read from where
/// the original was left; the truncated file is a new generation read from 0. Every line once.
#[test]
fn copytruncate_resumes_in_the_copy() {
    let mut h = Harness::new("app.log*");
    h.append("app.log", &numbered(1, 50));
    expect_numbered(&h.messages(), 1, 50);
    h.append("app.log", &numbered(51, 100)); // not read yet: the reader lags
    std::fs::copy(h.path("app.log"), h.path("app.log.1")).unwrap();
    OpenOptions::new()
        .write(true)
        .open(h.path("app.log"))
        .unwrap()
        .set_len(0)
        .unwrap();
    h.append("app.log", &numbered(101, 110));
    let got = h.step();
    let first_key = h.registered[0].0;
    let old: Vec<String> = got
        .iter()
        .filter(|(k, _)| *k == first_key)
        .map(|(_, m)| m.clone())
        .collect();
    let new: Vec<String> = got
        .iter()
        .filter(|(k, _)| *k != first_key)
        .map(|(_, m)| m.clone())
        .collect();
    expect_numbered(&old, 51, 100);
    expect_numbered(&new, 101, 110);
    assert_eq!(
        h.registered.len(),
        2,
        "one new generation: the truncated file"
    );
}

/// The truncated file grows past the old read offset before the reader looks: the changed
/// first bytes give it away, and nothing of the new content is taken for the old.
#[test]
fn truncation_that_regrows_past_the_offset() {
    let mut h = Harness::new("app.log*");
    h.append("app.log", &numbered(1, 40));
    expect_numbered(&h.messages(), 1, 40);
    std::fs::copy(h.path("app.log"), h.path("app.log.1")).unwrap();
    OpenOptions::new()
        .write(true)
        .open(h.path("app.log"))
        .unwrap()
        .set_len(0)
        .unwrap();
    h.append("app.log", &numbered(41, 120));
    let got = h.step();
    let msgs: Vec<String> = got.into_iter().map(|(_, m)| m).collect();
    expect_numbered(&msgs, 41, 120);
}

/// The copy shows up before the truncation: it waits (it starts like the file being read),
/// and once the truncation shows, it is the old content and is read from the old offset.
#[test]
fn copy_seen_before_the_truncation() {
    let mut h = Harness::new("app.log*");
    h.append("app.log", &numbered(1, 50));
    expect_numbered(&h.messages(), 1, 50);
    h.append("app.log", &numbered(51, 60));
    std::fs::copy(h.path("app.log"), h.path("app.log.1")).unwrap();
    // The scan sees the copy first: held back, while the original is read on.
    expect_numbered(&h.messages(), 51, 60);
    assert_eq!(h.tailer.paths(), [h.path("app.log")]);
    OpenOptions::new()
        .write(true)
        .open(h.path("app.log"))
        .unwrap()
        .set_len(0)
        .unwrap();
    h.append("app.log", &numbered(61, 70));
    let msgs: Vec<String> = h.step().into_iter().map(|(_, m)| m).collect();
    expect_numbered(&msgs, 61, 70);
    assert_eq!(
        h.tailer.paths().len(),
        2,
        "the copy is followed from the old offset"
    );
}

/// A file that starts like one being read but is no copy (the original is never truncated) is
/// read on its own after the grace period, from its start: held back, never lost.
#[test]
fn lookalike_is_read_after_the_grace() {
    let mut h = Harness::new("*.log");
    let header = "=== banner ".repeat(100) + "\n";
    h.append("a.log", &(header.clone() + "a1\n"));
    assert_eq!(h.messages().len(), 2);
    h.append("b.log", &(header + "b1\n"));
    assert!(h.messages().is_empty(), "held during the grace");
    h.tailer.lookalikes.values_mut().for_each(|t| {
        *t = t.checked_sub(COPY_GRACE).unwrap();
    });
    let msgs = h.messages();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[1], "b1");
}

/// A checkpoint entry resumes its file at the checkpointed offset; an entry whose inode now
/// holds other content (inode reuse) does not: that file is read from 0.
#[test]
fn checkpoint_resume_and_inode_reuse() {
    let dir = tempfile::tempdir().unwrap();
    let text = numbered(1, 20);
    std::fs::write(dir.path().join("app.log"), &text).unwrap();
    let meta = std::fs::metadata(dir.path().join("app.log")).unwrap();
    let offset = numbered(1, 12).len() as u64;
    let entry = |fp: Fingerprint| Entry {
        source: "app".into(),
        path: "/old/name".into(),
        dev: meta.dev(),
        ino: meta.ino(),
        fingerprint: fp.hash,
        fingerprint_bytes: fp.len,
        offset,
    };
    let same = Fingerprint::of(&text.as_bytes()[..FINGERPRINT_BYTES.min(text.len())]);
    let mut h = Harness::with(
        "app.log",
        StartAt::Beginning,
        vec![entry(same)],
        64 << 20,
        Some(dir),
    );
    expect_numbered(&h.messages(), 13, 20);
    assert!(
        h.registered.is_empty(),
        "resumed in the checkpointed generation"
    );

    let dir = h.dir;
    let other = Fingerprint::of(b"some other content that was here before the inode was reused");
    let mut h = Harness::with(
        "app.log",
        StartAt::Beginning,
        vec![entry(other)],
        64 << 20,
        Some(dir),
    );
    expect_numbered(&h.messages(), 1, 20);
    assert_eq!(h.registered.len(), 1);
}

/// `start_at: end` skips what files hold at the first start, not files that appear later, and
/// not files at a later start (with a checkpoint).
#[test]
fn start_at_end_applies_to_the_first_start_only() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.log"), numbered(1, 5)).unwrap();
    let mut h = Harness::with("*.log", StartAt::End, Vec::new(), 64 << 20, Some(dir));
    assert!(h.messages().is_empty());
    h.append("a.log", &numbered(6, 7));
    h.append("b.log", &numbered(1, 2));
    assert_eq!(h.messages().len(), 4);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.log"), numbered(1, 5)).unwrap();
    let unrelated = Entry {
        source: "app".into(),
        path: "/gone.log".into(),
        dev: 0,
        ino: 0,
        fingerprint: 0,
        fingerprint_bytes: 0,
        offset: 0,
    };
    let mut h = Harness::with("*.log", StartAt::End, vec![unrelated], 64 << 20, Some(dir));
    expect_numbered(&h.messages(), 1, 5);
}

/// With the budget spent, a round pauses; once chunks are dropped (confirmed), reading goes on
/// and nothing is skipped.
#[test]
fn budget_pauses_and_resumes() {
    let mut h = Harness::with("app.log", StartAt::Beginning, Vec::new(), 200_000, None);
    h.append("app.log", &numbered(1, 10_000));
    h.tailer.scan(Instant::now());
    let mut got = Vec::new();
    let mut pauses = 0;
    loop {
        match h.tailer.round() {
            Progress::More => {}
            Progress::Paused => {
                pauses += 1;
                while let Ok(c) = h.chunks.try_recv() {
                    got.extend(
                        c.records
                            .iter()
                            .map(|r| String::from_utf8_lossy(&r.message).into_owned()),
                    );
                }
            }
            Progress::CaughtUp => break,
        }
    }
    got.extend(h.messages());
    assert!(pauses > 5, "{pauses}");
    expect_numbered(&got, 1, 10_000);
}

/// Within its window, a source pauses once it has the window's lines in flight (over by at most
/// one read), though the shared budget has plenty of room; as chunks are confirmed it goes on,
/// nothing is skipped, and at the end the window and the budget are whole again.
#[test]
fn window_pauses_and_resumes_before_the_budget_is_spent() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "app.log", StartAt::Beginning);
    let shared = Budget::new(64 << 20, Gauge::default());
    let window = shared.window(1 << 20, 500);
    let mut h = Harness::build_on(cfg, Vec::new(), window.clone(), dir);
    h.append("app.log", &numbered(1, 10_000));
    h.tailer.scan(Instant::now());
    // Lines of 52 bytes: one read of READ_SIZE bytes brings at most this many.
    let one_read = READ_SIZE / 52 + 1;
    let mut got = Vec::new();
    let mut pauses = 0;
    loop {
        match h.tailer.round() {
            Progress::More => {}
            Progress::Paused => {
                pauses += 1;
                let (_, lines) = window.window_used().unwrap();
                assert!(lines >= 500 && lines < 500 + one_read, "{lines}");
                assert!(shared.used() < 4 << 20, "{}", shared.used());
                // The sink confirms what it has: the chunks are dropped.
                while let Ok(c) = h.chunks.try_recv() {
                    got.extend(
                        c.records
                            .iter()
                            .map(|r| String::from_utf8_lossy(&r.message).into_owned()),
                    );
                }
            }
            Progress::CaughtUp => break,
        }
    }
    got.extend(h.messages());
    assert!(pauses >= 5, "{pauses}");
    expect_numbered(&got, 1, 10_000);
    assert_eq!(window.window_used(), Some((0, 0)));
    assert_eq!(shared.used(), 0);
}

/// A deleted file is drained and released; its last line, without `\n`, goes out with it.
#[test]
fn deleted_file_is_drained_with_its_last_line() {
    let mut h = Harness::new("app.log");
    h.append("app.log", "a\nb");
    assert_eq!(h.messages(), ["a"]);
    std::fs::remove_file(h.path("app.log")).unwrap();
    assert!(h.messages().is_empty());
    h.tailer.age_orphans(RELEASE_AFTER);
    assert_eq!(h.messages(), ["b"]);
    assert!(h.tailer.paths().is_empty());
}

/// Multi-line records and dropped lines with a real file: chunks end where the pending record
/// starts (never inside it), the pending record is shipped whole after its timeout, dropped
/// lines ship nothing but their bytes are acknowledged, and consecutive ranges cover the file
/// exactly once.
#[test]
fn multiline_records_and_dropped_lines_are_acknowledged_whole() {
    let mut h = Harness::shaped("app.log", |c| {
        c.multiline = Some(tandem_config::Multiline {
            start: tandem_config::LogPattern(regex::Regex::new(r"^\d{4}-").unwrap()),
            timeout: Duration::from_millis(50),
            max_lines: 100,
            max_bytes: 1 << 20,
        });
        c.shape.level.pattern = Some(tandem_config::LogPattern(
            regex::Regex::new(r"^\S+ (?P<level>[A-Z]+)").unwrap(),
        ));
        c.shape.drop_levels = vec![tandem_config::LogLevel::Debug];
    });
    let first = "2026-01-01 INFO a\n\tat x\n\tat y\n2026-01-01 DEBUG b\n  more b\n";
    let pending = "2026-01-01 ERROR c\n\tat z\n";
    h.append("app.log", &format!("{first}{pending}"));
    h.tailer.scan(Instant::now());
    while h.tailer.round() == Progress::More {}
    let mut ranges = Vec::new();
    let mut messages = Vec::new();
    fn collect(h: &mut Harness, ranges: &mut Vec<(u64, u64)>, messages: &mut Vec<String>) {
        while let Ok(c) = h.chunks.try_recv() {
            let (_, s, e) = c.range();
            ranges.push((s, e));
            messages.extend(
                c.records
                    .iter()
                    .map(|r| String::from_utf8_lossy(&r.message).into_owned()),
            );
        }
        while let Ok(m) = h.ctl.try_recv() {
            if let Msg::Ack { start, end, .. } = m {
                ranges.push((start, end));
            }
        }
    }
    collect(&mut h, &mut ranges, &mut messages);
    // The DEBUG record is dropped, but its bytes are in the chunk; the ERROR record is held.
    assert_eq!(messages, ["2026-01-01 INFO a\n\tat x\n\tat y"]);
    assert_eq!(ranges, [(0, first.len() as u64)]);
    // A continuation arriving later joins the held record.
    h.append("app.log", "\tat w\n");
    while h.tailer.round() == Progress::More {}
    collect(&mut h, &mut ranges, &mut messages);
    assert_eq!(messages.len(), 1);
    std::thread::sleep(Duration::from_millis(60));
    h.tailer.round();
    collect(&mut h, &mut ranges, &mut messages);
    assert_eq!(messages[1], "2026-01-01 ERROR c\n\tat z\n\tat w");
    let total = (first.len() + pending.len() + "\tat w\n".len()) as u64;
    assert_eq!(
        ranges,
        [(0, first.len() as u64), (first.len() as u64, total)]
    );
}
