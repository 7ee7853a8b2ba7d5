"""Log parsing and shaping through the real binary and the real counting receiver
(backends/line_receiver.py): logfmt and regex parsers, a Java stack trace joined into one
record, timestamps / levels / trace ids extracted, secrets redacted before shipping, debug lines
dropped and counted; and kill -9 in the middle of multi-line input, restarted: 0 missing, and no
record shipped in pieces.

Every record carries one `seq=N` (in its first line only), so the receiver counts records, and a
piece of a record shipped on its own (continuation lines without their first line) shows up as
a line without `seq=` (`other_lines`).
"""
import json
import signal
import threading
import time

from conftest import metric, wait_for
from logship_support import metrics, report

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TOKEN = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.Zm9vYmFy"
CARD = "4111 1111 1111 1111"


def config(tmp, rcv, sources, sink_extra=""):
    return f"""
logs:
  checkpoint: {{ dir: {tmp}/state }}
  labels: {{ service: e2e }}
  sources:
{sources}
  sinks:
    central:
      type: http
      url: {rcv.url}
      backoff: 50ms
      max_backoff: 500ms
{sink_extra}
"""


def trace(seq, depth):
    head = f"2026-11-24T10:00:{seq % 60:02d}Z ERROR [worker-{seq % 4}] order failed seq={seq} auth=Bearer {TOKEN}\n"
    body = "java.lang.IllegalStateException: card " + CARD + " declined\n"
    body += "".join(f"\tat com.example.Orders.step{i}(Orders.java:{i + 10})\n" for i in range(depth))
    return head + body + "Caused by: java.io.IOException: upstream\n\t... 3 more\n"


def lines_received(rcv):
    return [json.loads(line) for line in rcv.lines(100)]


def by_seq(records):
    out = {}
    for r in records:
        text = r["message"]
        if "seq=" in text:
            out[int(text.split("seq=")[1].split()[0])] = r
    return out


def test_parsers_multiline_extraction_redaction_and_drop(tandem, receiver, tmp_path):
    """Two sources into one sink. `kv` (logfmt): time from `ts` (rfc3339), level, trace ids from
    `traceparent`, a `password` field redacted by the default keys, debug lines dropped and
    counted. `java` (regex + multi-line): each ERROR line and its stack trace is one record with
    its level and thread; the bearer token and the card number in it are redacted. Nothing
    secret reaches the receiver; every record arrives once."""
    kv, java = tmp_path / "kv.log", tmp_path / "java.log"
    infos, debugs, traces = 30, 12, 20
    with open(kv, "w") as f:
        for i in range(infos):
            f.write(f'ts=2026-11-24T10:00:{i:02d}.250Z level=info msg="order placed seq={i}" '
                    f'password=hunter2-{i} traceparent={TRACEPARENT} user=u{i}\n')
            if i < debugs:
                f.write(f'ts=2026-11-24T10:00:{i:02d}Z level=debug msg="cache probe dbg={i}"\n')
        f.write('broken "quote seq=30\n')
    with open(java, "w") as f:
        for i in range(traces):
            f.write(trace(31 + i, depth=3 + i % 5))
            f.write(f"2026-11-24T10:01:{i:02d}Z INFO [main] ok seq={31 + traces + i}\n")
    total = 31 + 2 * traces
    sources = f"""
    kv:
      paths: ["{kv}"]
      parser: logfmt
      poll_interval: 50ms
      timestamp: {{ field: ts, format: rfc3339 }}
      drop: {{ levels: [debug] }}
    java:
      paths: ["{java}"]
      parser: regex
      pattern: '(?s)^(?P<ts>\\S+) (?P<level>[A-Z]+) \\[(?P<thread>[^\\]]+)\\] (?P<message>.*)$'
      poll_interval: 50ms
      multiline: {{ start: '^\\d{{4}}-', timeout: 300ms }}
      timestamp: {{ field: ts, format: "%Y-%m-%dT%H:%M:%SZ" }}
      redact: {{ patterns: [bearer, credit_card] }}
"""
    t = tandem(config(tmp_path, receiver, sources))
    s = receiver.wait_all(total, timeout=30)
    got = lines_received(receiver)
    text = metrics(t)
    dropped = metric(text, "tandem_logs_dropped_records_total", source="kv", reason="level")
    redacted = {src: metric(text, "tandem_logs_redactions_total", source=src) for src in ("kv", "java")}
    parse_errors = metric(text, "tandem_logs_parse_errors_total", source="kv")
    report("parse + shape", s, dropped=dropped, redacted=redacted, parse_errors=parse_errors)
    assert (s["missing"], s["duplicates"], s["other_lines"]) == (0, 0, 0)
    assert len(got) == total

    # Secrets never reach a sink; dropped lines neither.
    raw = json.dumps(got)
    for secret in ("hunter2", TOKEN, CARD, "dbg="):
        assert secret not in raw, secret
    assert dropped == debugs
    assert redacted == {"kv": infos, "java": 2 * traces}

    seqs = by_seq(got)
    r = seqs[7]
    assert r["message"] == "order placed seq=7"
    assert r["timestamp"] == "2026-11-24T10:00:07.250Z"
    assert r["level"] == "info"
    assert (r["trace_id"], r["span_id"]) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
    assert r["fields"] == {"password": "[REDACTED]", "user": "u7"}
    assert "parse_error" not in r and "timestamp_fallback" not in r
    bad = seqs[30]
    assert bad["message"] == 'broken "quote seq=30'
    assert bad["parse_error"] is True and bad["timestamp_fallback"] is True
    assert parse_errors == 1

    # A Java stack trace is one record: its lines joined, level and thread extracted.
    for i in range(traces):
        r = seqs[31 + i]
        lines = r["message"].split("\n")
        assert len(lines) == 1 + 1 + (3 + i % 5) + 2, r["message"]
        assert lines[0] == f"order failed seq={31 + i} auth=Bearer [REDACTED]"
        assert lines[1] == "java.lang.IllegalStateException: card [REDACTED] declined"
        assert lines[-1] == "\t... 3 more"
        assert r["level"] == "error"
        assert r["fields"] == {"thread": f"worker-{(31 + i) % 4}"}
        assert r["timestamp"] == f"2026-11-24T10:00:{(31 + i) % 60:02d}.000Z"
        ok = seqs[31 + traces + i]
        assert (ok["level"], ok["message"]) == ("info", f"ok seq={31 + traces + i}")


def test_kill9_in_the_middle_of_multiline_input(tandem, receiver, tmp_path):
    """A writer appends 10,000 records of 3 to 20 lines (a start line with seq=N, then a stack trace)
    in bursts of 200 every 50 ms; Tandem is killed with -9 twice while records are half written and
    half shipped, and restarted each time. Then, deterministically: a record's first lines are
    written, Tandem is killed while that record waits for the rest, the rest is written, and
    Tandem restarted. Every record arrives, whole (no piece of a record without its first line),
    and the pending record exactly once."""
    log = tmp_path / "app.log"
    log.touch()
    n = 10_000
    sources = f"""
    app:
      paths: ["{log}"]
      poll_interval: 50ms
      multiline: {{ start: '^\\d{{4}}-', timeout: 5s, max_lines: 100 }}
"""
    cfg = config(tmp_path, receiver, sources)
    t = tandem(cfg)
    wait_for(lambda: metric(metrics(t), "tandem_logs_files", source="app") == 1, 10, "tandem tails the file")

    def write():
        with open(log, "a") as f:
            for i in range(n):
                f.write(f"2026-11-24T10:00:00Z ERROR seq={i} failed\n")
                f.write("".join(f"\tat com.example.C.m{k}(C.java:{k})\n" for k in range(2 + (i * 7) % 18)))
                if i % 200 == 199:
                    f.flush()
                    time.sleep(0.05)

    w = threading.Thread(target=write)
    w.start()
    crashes = []
    for share in (0.3, 0.6):
        wait_for(lambda: receiver.stats(n)["unique"] >= share * n, 60, f"{share:.0%} shipped")
        t.p.send_signal(signal.SIGKILL)
        t.p.wait(5)
        crashes.append(receiver.stats(n)["unique"])
        t = tandem(cfg)
    w.join()
    s = receiver.wait_all(n, timeout=120)
    assert (s["missing"], s["other_lines"]) == (0, 0), s

    # The deterministic crash: the record is pending (5 s timeout) when Tandem dies.
    with open(log, "a") as f:
        f.write(f"2026-11-24T10:00:01Z ERROR seq={n} half written\n\tat first.line(A.java:1)\n")
    time.sleep(1.0)  # read, joined, held: everything before it is shipped and checkpointed
    before = receiver.stats(n + 1)
    assert before["unique"] == n, "the pending record is not shipped before its timeout"
    t.p.send_signal(signal.SIGKILL)
    t.p.wait(5)
    with open(log, "a") as f:
        f.write("\tat second.line(B.java:2)\n2026-11-24T10:00:02Z INFO seq=" + str(n + 1) + " after\n")
    t = tandem(cfg)
    s = receiver.wait_all(n + 1, timeout=30)
    report("kill -9 mid multi-line", s, crashes=crashes)
    assert (s["missing"], s["other_lines"]) == (0, 0), s
    # Duplicates come only from the mid-stream crashes (a batch each at most), not the last one.
    assert s["duplicates"] - before["duplicates"] == 0
    assert s["duplicates"] <= 2 * 1000
    assert "resuming log file" in t.log()
