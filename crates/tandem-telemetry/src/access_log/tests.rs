//! Access log lines: escaping and caps, field selection, the writer's batching, drop-and-count
//! with a stalled writer, reopen and shutdown.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::*;

fn request() -> RequestRecord<'static> {
    RequestRecord {
        start: UnixMicros(1_764_000_000_123_456),
        head: Some(Duration::from_micros(1_250)),
        duration: Duration::from_micros(3_500),
        listener: "inbound",
        direction: "inbound",
        route: Some("api"),
        upstream: Some("app"),
        endpoint: Some("127.0.0.1:8080"),
        client: Some("10.1.2.3:40000".parse().unwrap()),
        protocol: "HTTP/1.1",
        method: "GET",
        path: "/api/x?q=1",
        authority: Some(b"example.com"),
        status: Some(200),
        grpc_status: None,
        received_bytes: 5,
        sent_bytes: 42,
        attempts: 2,
        error: None,
        end: End::Complete,
        user_agent: Some(b"curl/8.0"),
        peer_identity: None,
        trace_id: None,
        span_id: None,
        context: None,
    }
}

fn connection() -> ConnectionRecord<'static> {
    ConnectionRecord {
        start: SystemTime::UNIX_EPOCH,
        duration: Duration::from_millis(20),
        listener: "db",
        direction: "outbound",
        upstream: Some("pg"),
        endpoint: Some("10.0.0.20:5432"),
        client: None,
        received_bytes: 7,
        sent_bytes: 9,
        error: None,
        end: End::IdleTimeout,
        peer_identity: None,
        trace_id: None,
        span_id: None,
    }
}

fn line(fields: &[AccessLogField], r: &RequestRecord<'_>) -> String {
    let mut out = Vec::new();
    format_request(fields, r, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

/// One line: ends in exactly one `\n`, has no other, parses as a JSON object.
fn parse(line: &str) -> serde_json::Map<String, serde_json::Value> {
    assert!(line.ends_with('\n'), "{line:?}");
    assert!(!line[..line.len() - 1].contains(['\n', '\r']), "{line:?}");
    match serde_json::from_str(line).unwrap() {
        serde_json::Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

/// Every field of the default set, with the values of the record, in the documented order.
#[test]
fn request_line_has_every_field() {
    let text = line(&AccessLogField::ALL, &request());
    let m = parse(&text);
    let names: Vec<&str> = AccessLogField::ALL.iter().map(|f| f.name()).collect();
    let mut keys: Vec<&str> = m.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(keys, sorted);
    // The line keeps the order of `fields` (serde_json's map above does not).
    let positions: Vec<usize> = names
        .iter()
        .map(|n| text.find(&format!("\"{n}\":")).unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");

    let v = serde_json::Value::Object(m);
    assert_eq!(v["kind"], "http");
    assert_eq!(v["time"], "2025-11-24T16:00:00.123456Z");
    assert_eq!(v["duration_ms"], 3.5);
    assert_eq!(v["head_ms"], 1.25);
    assert_eq!(v["client"], "10.1.2.3:40000");
    assert_eq!(v["authority"], "example.com");
    assert_eq!(v["status"], 200);
    assert_eq!(v["grpc_status"], serde_json::Value::Null);
    assert_eq!(
        (v["received_bytes"].as_u64(), v["sent_bytes"].as_u64()),
        (Some(5), Some(42))
    );
    assert_eq!(
        (v["attempts"].as_u64(), v["retries"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(
        (v["end"].as_str(), v["completed"].as_bool()),
        (Some("complete"), Some(true))
    );
    assert_eq!(v["user_agent"], "curl/8.0");
    assert_eq!(v["trace_id"], serde_json::Value::Null);
}

/// A chosen list gives exactly those keys, in the order given.
#[test]
fn fields_are_selected_in_order() {
    use AccessLogField as F;
    let text = line(&[F::Status, F::Path, F::Retries], &request());
    assert_eq!(
        text,
        "{\"status\":200,\"path\":\"/api/x?q=1\",\"retries\":1}\n"
    );
    let mut r = request();
    r.attempts = 0;
    r.status = None;
    r.end = End::ClientGone;
    let text = line(&[F::Status, F::Retries, F::Completed, F::End], &r);
    assert_eq!(
        text,
        "{\"status\":null,\"retries\":0,\"completed\":false,\"end\":\"client_gone\"}\n"
    );
}

/// A TCP line has the fields that apply to connections and none of the HTTP ones.
#[test]
fn connection_line_leaves_out_http_fields() {
    let mut out = Vec::new();
    format_connection(&AccessLogField::ALL, &connection(), &mut out).unwrap();
    let m = parse(std::str::from_utf8(&out).unwrap());
    let mut keys: Vec<&str> = m.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want: Vec<&str> = AccessLogField::ALL
        .iter()
        .filter(|f| f.applies_to_tcp())
        .map(|f| f.name())
        .collect();
    want.sort_unstable();
    assert_eq!(keys, want);
    assert_eq!(m["kind"], "tcp");
    assert_eq!(m["protocol"], "tcp");
    assert_eq!(m["client"], serde_json::Value::Null);
    assert_eq!(m["time"], "1970-01-01T00:00:00.000000Z");
    assert_eq!(
        (m["end"].as_str(), m["completed"].as_bool()),
        (Some("idle_timeout"), Some(false))
    );
    assert_eq!(
        (m["received_bytes"].as_u64(), m["sent_bytes"].as_u64()),
        (Some(7), Some(9))
    );
}

/// Quotes, backslashes, control characters, line breaks, invalid UTF-8 and a 64 KiB path:
/// still one valid line, each value as sent (escaped), invalid bytes as U+FFFD, long values cut.
#[test]
fn hostile_bytes_stay_one_valid_line() {
    let nasty = "/a\"b\\c\n\r\t\u{1}\u{7f}\u{2028}</script>";
    let long = format!("/{}", "é".repeat(32 * 1024));
    let mut r = request();
    r.path = nasty;
    r.user_agent = Some(b"bad \xff\xfe bytes \"\n");
    r.authority = Some(b"h\x00st");
    let m = parse(&line(&AccessLogField::ALL, &r));
    assert_eq!(m["path"], nasty);
    assert_eq!(m["user_agent"], "bad \u{fffd}\u{fffd} bytes \"\n");
    assert_eq!(m["authority"], "h\u{0}st");

    r.path = &long;
    let ua = vec![b'x'; 70_000];
    r.user_agent = Some(&ua);
    let text = line(&AccessLogField::ALL, &r);
    assert!(
        text.len() < 4096,
        "a hostile request makes a short line: {}",
        text.len()
    );
    let m = parse(&text);
    let path = m["path"].as_str().unwrap();
    assert!(path.ends_with("...") && long.starts_with(&path[..path.len() - 3]));
    assert!(path.len() <= MAX_PATH + 3, "{}", path.len());
    assert_eq!(m["user_agent"].as_str().unwrap().len(), MAX_USER_AGENT + 3);
}

/// A `Write` that records what it got, shared with the test.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn lines(&self) -> Vec<String> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Lines logged before shutdown are all written, in order, each whole.
#[tokio::test]
async fn shutdown_writes_out_every_line() {
    let sink = Shared::default();
    let dropped = Counter::default();
    let (log, writer) = start(
        Output::writer(Box::new(sink.clone())),
        &[AccessLogField::SentBytes],
        10_000,
        dropped.clone(),
    )
    .unwrap();
    for i in 0..5000 {
        let mut r = request();
        r.sent_bytes = i;
        log.log_request(&r);
    }
    assert!(writer.shutdown(Duration::from_secs(10)).await);
    let lines = sink.lines();
    assert_eq!(lines.len(), 5000);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l, &format!("{{\"sent_bytes\":{i}}}"));
    }
    assert_eq!(dropped.get(), 0);
    // After shutdown the writer is gone: lines are dropped and counted, never blocked on.
    log.log_request(&request());
    assert_eq!(dropped.get(), 1);
}

/// A writer stuck in `write` (a stalled disk or pipe): the queue fills, later lines are dropped
/// and counted at once, and logging never waits. Once the writer moves again, what was queued
/// is written.
#[tokio::test]
async fn full_queue_drops_and_counts() {
    struct Stalled {
        entered: std::sync::mpsc::Sender<()>,
        release: std::sync::mpsc::Receiver<()>,
        got: Shared,
    }
    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.entered.send(());
            let _ = self.release.recv();
            self.got.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    let got = Shared::default();
    let sink = Stalled {
        entered: entered_tx,
        release: release_rx,
        got: got.clone(),
    };
    let dropped = Counter::default();
    let (log, writer) = start(
        Output::writer(Box::new(sink)),
        &[AccessLogField::SentBytes],
        4,
        dropped.clone(),
    )
    .unwrap();

    let mut r = request();
    r.sent_bytes = 0;
    log.log_request(&r);
    // The writer took line 0 and is now stuck writing it.
    entered.recv_timeout(Duration::from_secs(5)).unwrap();
    let started = std::time::Instant::now();
    for i in 1..=10 {
        r.sent_bytes = i;
        log.log_request(&r);
    }
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "logging waited for the writer"
    );
    assert_eq!(dropped.get(), 6, "4 lines fit the queue; 6 were dropped");

    // Unstick it: the 4 queued lines follow line 0.
    for _ in 0..10 {
        let _ = release.send(());
    }
    assert!(writer.shutdown(Duration::from_secs(10)).await);
    assert_eq!(
        got.lines(),
        (0..=4)
            .map(|i| format!("{{\"sent_bytes\":{i}}}"))
            .collect::<Vec<_>>()
    );
}

/// Write failures (a full disk) count the lost lines as dropped; the writer keeps going.
#[tokio::test]
async fn write_errors_count_as_dropped() {
    struct Full;
    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("no space left on device"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let dropped = Counter::default();
    let (log, writer) = start(
        Output::writer(Box::new(Full)),
        &[AccessLogField::Status],
        100,
        dropped.clone(),
    )
    .unwrap();
    for _ in 0..3 {
        log.log_request(&request());
    }
    assert!(writer.shutdown(Duration::from_secs(10)).await);
    assert_eq!(dropped.get(), 3);

    // Batches larger than one write (64 KiB): each failed piece counts its own lines.
    let dropped = Counter::default();
    let (log, writer) = start(
        Output::writer(Box::new(Full)),
        &AccessLogField::ALL,
        100_000,
        dropped.clone(),
    )
    .unwrap();
    for _ in 0..5000 {
        log.log_request(&request());
    }
    assert!(writer.shutdown(Duration::from_secs(10)).await);
    assert_eq!(dropped.get(), 5000);
}

/// logrotate's rename-and-reopen: lines before the reopen stay in the renamed file, lines after
/// it go to a new file at the configured path; none is lost.
#[tokio::test]
async fn reopen_starts_a_new_file_at_the_path() {
    let dir = std::env::temp_dir().join(format!(
        "tandem-access-log-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("access.log");
    std::fs::write(&path, "earlier\n").unwrap();
    let config = tandem_config::AccessLog {
        output: AccessLogOutput::File(path.clone()),
        fields: vec![AccessLogField::SentBytes],
        buffer: 100,
    };
    let dropped = Counter::default();
    let output = Output::open(&config.output).unwrap();
    let (log, writer) = start(output, &config.fields, config.buffer, dropped.clone()).unwrap();
    let reopen = writer.reopener();
    let mut r = request();
    r.sent_bytes = 1;
    log.log_request(&r);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(&path).unwrap().lines().count() < 2 {
        assert!(std::time::Instant::now() < deadline, "line 1 not written");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    std::fs::rename(&path, dir.join("access.log.1")).unwrap();
    r.sent_bytes = 2;
    log.log_request(&r);
    reopen.reopen();
    r.sent_bytes = 3;
    log.log_request(&r);
    assert!(writer.shutdown(Duration::from_secs(10)).await);
    assert_eq!(
        std::fs::read_to_string(dir.join("access.log.1")).unwrap(),
        "earlier\n{\"sent_bytes\":1}\n{\"sent_bytes\":2}\n",
        "appended to what was there; line 2 was queued before the reopen"
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "{\"sent_bytes\":3}\n"
    );
    assert_eq!(dropped.get(), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Lines from many threads at once: every one written exactly once and whole, each thread's
/// in the order it logged them; a reopen in the middle loses none.
#[tokio::test]
async fn lines_from_many_threads_are_all_written_in_thread_order() {
    let sink = Shared::default();
    let dropped = Counter::default();
    let (log, writer) = start(
        Output::writer(Box::new(sink.clone())),
        &[AccessLogField::ReceivedBytes, AccessLogField::SentBytes],
        1 << 20,
        dropped.clone(),
    )
    .unwrap();
    let reopen = writer.reopener();
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let log = log.clone();
            let reopen = reopen.clone();
            std::thread::spawn(move || {
                for i in 0..5000 {
                    let mut r = request();
                    r.received_bytes = t;
                    r.sent_bytes = i;
                    log.log_request(&r);
                    if t == 0 && i % 1000 == 0 {
                        reopen.reopen();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(writer.shutdown(Duration::from_secs(10)).await);
    let mut next = [0u64; 8];
    for l in sink.lines() {
        let m = parse(&format!("{l}\n"));
        let t = m["received_bytes"].as_u64().unwrap() as usize;
        assert_eq!(m["sent_bytes"].as_u64().unwrap(), next[t], "thread {t}");
        next[t] += 1;
    }
    assert_eq!(next, [5000; 8]);
    assert_eq!(dropped.get(), 0);
}

/// On stdout, lines go out in writes of whole lines of at most 4 KiB (a longer line alone),
/// so that they do not interleave with other writers of the same pipe.
#[tokio::test]
async fn stdout_writes_are_whole_lines_within_pipe_buf() {
    #[derive(Clone, Default)]
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);
    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let writes = Writes::default();
    let output = Output(Sink {
        out: Box::new(writes.clone()),
        path: None,
        chunk: STDOUT_CHUNK,
    });
    let (log, writer) = start(output, &AccessLogField::ALL, 10_000, Counter::default()).unwrap();
    let long = format!("/{}", "\"".repeat(MAX_PATH));
    for i in 0..2000 {
        let mut r = request();
        r.sent_bytes = i;
        if i == 1000 {
            r.path = &long;
        }
        log.log_request(&r);
    }
    assert!(writer.shutdown(Duration::from_secs(10)).await);
    let writes = writes.0.lock().unwrap();
    let mut lines = 0;
    for w in writes.iter() {
        assert!(w.ends_with(b"\n"));
        let n = w.iter().filter(|&&b| b == b'\n').count();
        assert!(
            w.len() <= STDOUT_CHUNK || n == 1,
            "{} bytes, {n} lines",
            w.len()
        );
        lines += n;
    }
    assert_eq!(lines, 2000);
    assert!(
        writes.iter().any(|w| w.len() > STDOUT_CHUNK),
        "the long line alone"
    );
}

/// Runs of context fields are copied from the last line when its listener, route, upstream,
/// endpoint, direction and protocol are the same, and rendered again when any differs: every
/// line is what `format_request` writes for its record, for several field orders.
#[tokio::test]
async fn cached_context_runs_match_fresh_lines() {
    use AccessLogField as F;
    let orders: [&[AccessLogField]; 3] = [
        &AccessLogField::ALL,
        &[
            F::Listener,
            F::Route,
            F::Status,
            F::Endpoint,
            F::Upstream,
            F::Protocol,
            F::Kind,
        ],
        &[F::Direction, F::Listener, F::Method, F::Upstream, F::Route],
    ];
    let names = ["a", "b", "a\"b", "", "é\n"];
    let same_slot: Vec<u16> = (40_003..u16::MAX)
        .filter(|&p| peer_slot(usize::from(p)) == peer_slot(40_002))
        .take(2)
        .collect();
    let mut records = Vec::new();
    let mut keys = std::collections::HashMap::new();
    let mut r = request();
    for i in 0..300usize {
        // One of the six values changes from one record to the next (the others stay).
        let name = names[i / 6 % 5];
        match i % 6 {
            0 => r.listener = name,
            1 => r.route = (i % 4 != 1).then_some(name),
            2 => r.upstream = (i % 4 != 2).then_some(name),
            3 => r.endpoint = (i % 4 != 3).then_some(name),
            4 => {
                r.direction = if r.direction == "inbound" {
                    "outbound"
                } else {
                    "inbound"
                }
            }
            _ => {
                r.protocol = if r.protocol == "HTTP/2" {
                    "HTTP/1.1"
                } else {
                    "HTTP/2"
                }
            }
        }
        r.sent_bytes = i as u64;
        // A key for the five names (the same key for the same names, as callers promise), on
        // most records: keyed ones follow and precede unkeyed ones.
        r.context = (i % 5 != 0).then(|| {
            let names = (r.listener, r.direction, r.route, r.upstream, r.endpoint);
            let next = keys.len() as u64;
            (*keys.entry(names).or_insert(next), 7)
        });
        // The client changes on a cadence of its own (a connection's requests share it), among
        // clients whose ports share a slot of the client cache with 10.0.0.2:40002's and ones
        // that do not.
        r.client = match i / 4 % 7 {
            0 => None,
            1 => Some("[fe80::1%7]:443".parse().unwrap()),
            5 => Some(SocketAddr::from(([10, 0, 0, 9], same_slot[0]))),
            6 => Some(SocketAddr::from(([10, 0, 0, 2], same_slot[1]))),
            n => Some(SocketAddr::from(([10, 0, 0, n as u8], 40_000 + n as u16))),
        };
        // A connection of another thread's turn comes and goes in between.
        if i % 11 == 0 {
            let mut other = r.clone();
            other.client = Some(SocketAddr::from(([192, 168, 0, 1], 40_003)));
            records.push(other);
        }
        // Equal records too, which take the cached copy.
        for _ in 0..=(i % 2) {
            records.push(r.clone());
        }
    }
    for fields in orders {
        let sink = Shared::default();
        let (log, writer) = start(
            Output::writer(Box::new(sink.clone())),
            fields,
            100_000,
            Counter::default(),
        )
        .unwrap();
        for r in &records {
            log.log_request(r);
        }
        assert!(writer.shutdown(Duration::from_secs(10)).await);
        let want: Vec<String> = records
            .iter()
            .map(|r| line(fields, r).trim_end().to_owned())
            .collect();
        assert_eq!(sink.lines(), want, "{fields:?}");
    }
}

/// A file that cannot be opened fails at start, naming the reason.
#[test]
fn unopenable_file_fails_at_start() {
    let config = tandem_config::AccessLog {
        output: AccessLogOutput::File("/nonexistent-dir-for-tandem/access.log".into()),
        fields: AccessLogField::ALL.to_vec(),
        buffer: 10,
    };
    let err = Output::open(&config.output).err().unwrap();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
}

/// The drop counter is `tandem_access_log_dropped_total` in the registry.
#[test]
fn dropped_counter_is_exported() {
    let m = crate::Metrics::new();
    m.access_log_dropped().inc_by(3);
    let text = m.encode_prometheus();
    assert!(
        text.contains("# TYPE tandem_access_log_dropped_total counter\n"),
        "{text}"
    );
    assert!(
        text.contains("\ntandem_access_log_dropped_total 3\n"),
        "{text}"
    );
}

/// A tap sees every line written after it was set, whole and in order, and only once.
#[tokio::test]
async fn tap_sees_every_line() {
    let sink = Shared::default();
    let (log, writer) = start(
        Output::writer(Box::new(sink.clone())),
        &[AccessLogField::SentBytes],
        10_000,
        Counter::default(),
    )
    .unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let s = seen.clone();
    assert!(writer.set_tap(Box::new(move |l: &[u8]| {
        s.lock()
            .unwrap()
            .push(String::from_utf8_lossy(l).into_owned());
    })));
    assert!(!writer.set_tap(Box::new(|_: &[u8]| {})), "one tap");
    for i in 0..100 {
        let mut r = request();
        r.sent_bytes = i;
        log.log_request(&r);
    }
    assert!(writer.shutdown(Duration::from_secs(10)).await);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 100);
    for (i, l) in seen.iter().enumerate() {
        assert_eq!(l, &format!("{{\"sent_bytes\":{i}}}\n"));
    }
    assert_eq!(sink.lines().len(), 100);
}

/// The hand-written JSON is what serde_json writes for the same values: every escape, the
/// milliseconds as `f64`, addresses; and the time is humantime's RFC 3339 with microseconds.
#[test]
fn hand_written_json_matches_serde_json() {
    let mut all: Vec<u8> = (0u8..0x80).collect();
    all.extend_from_slice("é\u{2028}\u{fffd}😀".as_bytes());
    let text = std::str::from_utf8(&all).unwrap();
    let mut out = Vec::new();
    json::push_str(&mut out, text);
    assert_eq!(
        std::str::from_utf8(&out).unwrap(),
        serde_json::to_string(text).unwrap()
    );
    // Every value below 20 ms (both sides of the short form's 10 ms), and some beyond.
    for micros in (0u64..20_000).chain([123_456_789, 1 << 40]) {
        let out = render(|w| millis(w, Duration::from_micros(micros)));
        let want = serde_json::to_string(&(micros as f64 / 1000.0)).unwrap();
        assert_eq!(std::str::from_utf8(&out).unwrap(), want, "{micros}");
    }
    for addr in [
        "10.1.2.3:40000",
        "0.0.0.0:0",
        "255.255.255.255:65535",
        "[::1]:8080",
    ] {
        let out = render(|w| client(w, Some(addr.parse().unwrap())).unwrap());
        assert_eq!(std::str::from_utf8(&out).unwrap(), format!("\"{addr}\""));
    }
    // Across leap years, month ends and the far future.
    for secs in [
        0u64,
        951_782_400,
        951_868_799,
        1_709_251_199,
        1_764_000_000,
        4_102_444_800,
    ] {
        for micros in [0u32, 7, 999_999] {
            let t = SystemTime::UNIX_EPOCH + Duration::new(secs, micros * 1000);
            let out = render(|w| rfc3339_micros(w, t.into()));
            assert_eq!(
                std::str::from_utf8(&out).unwrap(),
                format!("\"{}\"", humantime::format_rfc3339_micros(t))
            );
        }
    }
}

/// Lines in the same second reuse the cached date; a new second (or an earlier one) is
/// written from scratch, and both agree with the full computation.
#[test]
fn rfc3339_cache_matches_the_full_form() {
    for micros in [
        1_764_000_000_123_456u64,
        1_764_000_000_999_999,
        1_764_000_001_000_000,
        1_764_000_000_000_001,
        0,
        951_782_400_000_000, // 2000-02-29
    ] {
        let t = UnixMicros(micros);
        let cached = render(|w| {
            rfc3339_micros(w, t);
            rfc3339_micros(w, t);
        });
        let full = render(|w| rfc3339_full(w, micros / 1_000_000, (micros % 1_000_000) as u32));
        assert_eq!(cached, [full.clone(), full].concat());
    }
}

/// What `f` writes into a cursor.
fn render(f: impl FnOnce(&mut Cursor<'_>)) -> Vec<u8> {
    let mut b = vec![0; 256];
    let mut w = Cursor { b: &mut b, n: 0 };
    f(&mut w);
    let n = w.n;
    b.truncate(n);
    b
}

/// Every number's digits, around each power of ten and at the ends.
#[test]
fn integers_are_written_in_decimal() {
    let mut values = vec![0u64, 1, 9, u64::MAX, u64::MAX - 1];
    for p in 1..20u32 {
        let t = 10u64.pow(p);
        values.extend([t - 1, t, t + 1, t.saturating_mul(2) - 1]);
    }
    values.extend(0..2_000);
    values.extend((0..100_000).map(|v| v * 7919));
    for v in values {
        assert_eq!(render(|w| uint(w, v)), v.to_string().into_bytes(), "{v}");
    }
}

/// Every key fits the room keys have.
#[test]
fn keys_fit() {
    for f in AccessLogField::ALL {
        assert!(f.name().len() + 4 <= KEY, "{}", f.name());
    }
}

/// A straightforward serde_json rendering of `r` with every field: what a line must parse to.
fn reference(r: &RequestRecord<'_>) -> serde_json::Value {
    use serde_json::{json, Value};
    let text = |b: Option<&[u8]>, bound: usize| match b {
        None => Value::Null,
        Some(b) => {
            let s = String::from_utf8_lossy(b);
            if s.len() <= bound {
                Value::from(s.as_ref())
            } else {
                let mut cut = bound;
                while !s.is_char_boundary(cut) {
                    cut -= 1;
                }
                Value::from(format!("{}...", &s[..cut]))
            }
        }
    };
    let ms = |d: Duration| d.as_micros() as f64 / 1000.0;
    json!({
        "kind": "http",
        "time": humantime::format_rfc3339_micros(
            SystemTime::UNIX_EPOCH + Duration::from_micros(r.start.0)
        )
        .to_string(),
        "duration_ms": ms(r.duration),
        "head_ms": r.head.map(ms),
        "listener": r.listener,
        "direction": r.direction,
        "route": r.route,
        "upstream": r.upstream,
        "endpoint": r.endpoint,
        "client": r.client.map(|c| c.to_string()),
        "protocol": r.protocol,
        "method": text(Some(r.method.as_bytes()), 32),
        "path": text(Some(r.path.as_bytes()), MAX_PATH),
        "authority": text(r.authority, MAX_AUTHORITY),
        "status": r.status,
        "grpc_status": r.grpc_status,
        "received_bytes": r.received_bytes,
        "sent_bytes": r.sent_bytes,
        "attempts": r.attempts,
        "retries": r.attempts.saturating_sub(1),
        "error": r.error,
        "end": r.end.as_str(),
        "completed": r.end == End::Complete,
        "user_agent": text(r.user_agent, MAX_USER_AGENT),
        "peer_identity": r.peer_identity,
        "trace_id": r.trace_id,
        "span_id": r.span_id,
    })
}

proptest::proptest! {
    /// For arbitrary values (hostile strings, long ones, invalid UTF-8, any numbers and
    /// addresses), the hand-written line parses to the serde_json rendering of the same record,
    /// and is one line.
    #[test]
    fn any_record_renders_like_serde_json(
        names in proptest::collection::vec("\\PC{0,12}|[\"\\\\\\x00-\\x1f a]{0,12}", 5),
        path in ".{0,40}|/[a-z\"\\\\]{2000,2100}",
        ua in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
        authority in proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..300)),
        method in "[A-Z]{1,40}",
        micros in 0u64..(1u64 << 50),
        durations in (0u64..(1u64 << 40), proptest::option::of(0u64..(1u64 << 40))),
        client in proptest::option::of((proptest::num::u32::ANY, proptest::num::u16::ANY, proptest::bool::ANY)),
        numbers in (proptest::option::of(100u16..1000), proptest::option::of(proptest::num::u32::ANY), proptest::num::u64::ANY, proptest::num::u64::ANY, proptest::num::u32::ANY),
        failed in proptest::bool::ANY,
        ids in (proptest::bool::ANY, proptest::option::of("[0-9a-f]{32}"), proptest::bool::ANY),
    ) {
        let client = client.map(|(ip, port, v6)| {
            if v6 {
                SocketAddr::from((std::net::Ipv6Addr::from(u128::from(ip) << 64 | 1), port))
            } else {
                SocketAddr::from((std::net::Ipv4Addr::from(ip), port))
            }
        });
        let r = RequestRecord {
            start: UnixMicros(micros),
            head: durations.1.map(Duration::from_micros),
            duration: Duration::from_micros(durations.0),
            listener: &names[0],
            direction: "outbound",
            route: Some(&names[1]),
            upstream: Some(&names[2]),
            endpoint: Some(&names[3]),
            client,
            protocol: "HTTP/2",
            method: &method,
            path: &path,
            authority: authority.as_deref(),
            status: numbers.0,
            grpc_status: numbers.1,
            received_bytes: numbers.2,
            sent_bytes: numbers.3,
            attempts: numbers.4,
            error: failed.then_some("upstream_timeout"),
            end: if failed { End::UpstreamError } else { End::Complete },
            user_agent: Some(&ua),
            peer_identity: ids.0.then_some(names[4].as_str()),
            trace_id: ids.1.as_deref(),
            span_id: ids.2.then_some("00f067aa0ba902b7"),
            context: None,
        };
        let text = line(&AccessLogField::ALL, &r);
        let m = parse(&text);
        proptest::prop_assert_eq!(serde_json::Value::Object(m), reference(&r));
        // The default order's own writer writes the same bytes, rendering the context run and
        // then copying it, after whatever an earlier line left in the buffer.
        let mut runs = Runs::default();
        let mut buf = vec![b'x'; 100];
        let end = write_default(&r, &mut buf, 3, &mut runs).unwrap();
        proptest::prop_assert_eq!(&buf[3..end], text.as_bytes());
        let again = write_default(&r, &mut buf, end, &mut runs).unwrap();
        proptest::prop_assert_eq!(&buf[end..again], text.as_bytes());
    }
}

/// `same_text` agrees with `==` for every length up to past its word forms, with one byte
/// differing at every position, and for equal strings.
#[test]
fn same_text_agrees_with_eq() {
    let base: String = "abcdefghijklmnopqrstuvwxyz0123456789".into();
    for len in 0..=base.len() {
        let a = &base[..len];
        assert!(same_text(a, a));
        // Equal text elsewhere in memory.
        let copy = String::from(a);
        assert!(same_text(a, &copy));
        for at in 0..len {
            let mut b = a.as_bytes().to_vec();
            b[at] = b'_';
            let b = String::from_utf8(b).unwrap();
            assert!(!same_text(a, &b), "{a:?} {b:?}");
        }
        if len > 0 {
            assert!(!same_text(a, &base[..len - 1]));
        }
        // The same length, every byte different (the letters are distinct).
        if len > 0 && len < base.len() {
            assert!(!same_text(&base[1..=len], a));
        }
    }
}

/// `Cursor::slice` writes exactly the bytes given, for every length (each of its copy forms
/// and their edges), and nothing past them.
#[test]
fn slice_writes_exactly_its_bytes() {
    let src: Vec<u8> = (0u8..80)
        .map(|b| b.wrapping_mul(37).wrapping_add(1))
        .collect();
    for at in [0, 1, 7] {
        for len in 0..=src.len() {
            let mut b = vec![0xee; 128];
            let mut w = Cursor { b: &mut b, n: at };
            w.slice(&src[..len]);
            assert_eq!(w.n, at + len);
            assert!(b[..at].iter().all(|&x| x == 0xee), "{at} {len}");
            assert_eq!(&b[at..at + len], &src[..len], "{at} {len}");
            assert!(b[at + len..].iter().all(|&x| x == 0xee), "{at} {len}");
        }
    }
}

/// The client cache's slots spread ports evenly: consecutive ports, and ports two apart (as
/// Linux hands out for `connect`), fill every slot.
#[test]
fn peer_slots_spread_ports() {
    for step in [1, 2] {
        let slots: std::collections::HashSet<usize> =
            (0..PEERS).map(|i| peer_slot(40_000 + step * i)).collect();
        assert!(slots.len() >= PEERS * 3 / 4, "{step}: {}", slots.len());
        assert!(slots.iter().all(|&s| s < PEERS));
    }
}
