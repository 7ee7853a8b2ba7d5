"""Log sources beyond files, through the real binary, and the status views:

- `type: stdio`: `tandem run -- python backends/stdout_app.py` writes numbered lines as fast as
  it can and times each write(); the receiver (backends/line_receiver.py) is down, then comes
  back. Nothing is lost or shipped twice, the app is never blocked, and Tandem's own stdout
  holds the app's stdout byte for byte. With a tiny disk buffer: drops are counted (metrics,
  /logs, the log) and received + dropped == written.
- the checkpoint directory on a full tmpfs: the failed write is named in the log and in /logs,
  shipping goes on, the checkpoint catches up once space is freed, and a restart resumes with
  nothing missing.
- `type: access_log`: requests through a listener arrive at the receiver as records.
- `tandem logs status` and `GET /logs` against known file offsets, with the sink up and down.

Each test prints its numbers (`-s`).
"""
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from conftest import HERE, TANDEM_BIN, free_port, metric, run, wait_for
from logship_support import metrics, report

APP = HERE / "backends" / "stdout_app.py"
PAD = "x" * 40


def app_line(i):
    return f"app line seq={i} {PAD}\n".encode()


def stdio_config(tmp, rcv, disk_buffer="256MiB"):
    return f"""
logs:
  checkpoint: {{ dir: {tmp}/state }}
  memory_budget: 1MiB
  sources:
    app: {{ type: stdio, disk_buffer: {disk_buffer} }}
  sinks:
    central:
      type: http
      url: {rcv.url}
      backoff: 50ms
      max_backoff: 300ms
"""


def logs_doc(t):
    r = httpx.get(f"{t.admin}/logs", timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def source(doc, name):
    return next(s for s in doc["sources"] if s["name"] == name)


def start_app(tandem, tmp, cfg, n, every=10, run_id="", **kw):
    result, stop = tmp / f"result{run_id}.json", tmp / "stop"
    args = ["--", sys.executable, str(APP), str(n), str(result), str(stop), "--stderr-every", str(every)]
    t = tandem(cfg, args=args, **({"separate_stdout": True} | kw))
    wait_for(result.exists, 60, "the app wrote all its lines")
    return t, json.loads(result.read_text()), stop


def test_stdout_capture_sink_down(tandem, receiver, tmp_path):
    """50,000 lines (a tenth on stderr) while the sink is down: they go to memory, then to the
    disk buffer; the app's longest write() stays under 100 ms. The sink comes back: every line
    arrives once, in order per stream, the disk buffer empties, and Tandem's stdout holds the
    app's stdout byte for byte."""
    n = 50_000
    receiver.control(down=True)
    t, app, stop = start_app(tandem, tmp_path, stdio_config(tmp_path, receiver), n)
    text = metrics(t)
    spilled = metric(text, "tandem_logs_spilled_lines_total", source="app")
    doc = logs_doc(t)
    sink = doc["sinks"][0]
    assert sink["state"] in ("retrying", "down") and sink["last_error"], sink
    assert spilled > 0, "the sink was down: lines went to the disk buffer"
    wait_for(lambda: source(logs_doc(t), "app")["stream"]["lines"] == n, 10, "every line taken in")

    started = time.monotonic()
    receiver.control(down=False)
    s = receiver.wait_all(n)
    drained = time.monotonic() - started
    wait_for(lambda: source(logs_doc(t), "app")["stream"]["disk_buffer_used"] == 0, 10, "disk buffer emptied")
    st = source(logs_doc(t), "app")["stream"]
    report("stdout capture, sink down then back", s, app=app, spilled=spilled, drain_seconds=round(drained, 2))
    assert (s["missing"], s["duplicates"], s["received"]) == (0, 0, n)
    assert app["max_write_ms"] < 100, f"the app was blocked: {app}"
    assert st["dropped_disk_full"] == 0 and st["disk_buffer_segments"] == 0, st
    assert metric(metrics(t), "tandem_logs_disk_buffer_used_bytes", source="app") == 0
    assert metric(metrics(t), "tandem_logs_passthrough_dropped_bytes_total", source="app") == 0

    # Records carry the stream; every stderr line (seq % 10 == 9) arrived as stderr.
    first = [json.loads(l) for l in receiver.lines(100)]
    for r in first:
        seq = int(r["message"].split("seq=")[1].split()[0])
        assert r["fields"]["stream"] == ("stderr" if seq % 10 == 9 else "stdout"), r
        assert r["file"] == r["fields"]["stream"], r

    stop.touch()
    assert t.wait(15) == 0
    want = b"".join(app_line(i) for i in range(n) if i % 10 != 9)
    got = t.stdout_path.read_bytes()
    assert got == want, f"stdout differs: {len(got)} bytes vs {len(want)} expected"
    log = t.log()
    assert log.count("app line seq=") == n // 10, "every stderr line passed through to Tandem's stderr"


def test_stdout_capture_tiny_disk_buffer(tandem, receiver, tmp_path):
    """The same with a 64 KiB disk buffer: beyond memory and disk, lines are dropped — counted
    in tandem_logs_dropped_lines_total and /logs, reported in the log — and the app still never
    blocks. Once the sink is back: received + dropped == written, no duplicates."""
    n = 50_000
    receiver.control(down=True)
    t, app, stop = start_app(tandem, tmp_path, stdio_config(tmp_path, receiver, "64KiB"), n)
    wait_for(lambda: source(logs_doc(t), "app")["stream"]["lines"] == n, 10, "every line taken in")
    text = metrics(t)
    dropped = metric(text, "tandem_logs_dropped_lines_total", source="app", reason="disk_buffer_full")
    st = source(logs_doc(t), "app")["stream"]
    assert dropped > 0 and st["dropped_disk_full"] == dropped, (dropped, st)
    assert "disk buffer is full" in st["last_drop"][0], st
    assert st["disk_buffer_used"] <= 64 * 1024, st
    assert "log lines dropped" in t.log()

    receiver.control(down=False)
    expect = n - int(dropped)
    wait_for(lambda: receiver.stats(n)["unique"] >= expect, 60, "every kept line delivered")
    time.sleep(1)
    s = receiver.stats(n)
    report("stdout capture, 64KiB disk buffer", s, app=app, dropped=dropped)
    assert s["duplicates"] == 0
    assert s["received"] + dropped == n
    assert app["max_write_ms"] < 100, f"the app was blocked: {app}"
    assert metric(metrics(t), "tandem_logs_passthrough_dropped_bytes_total", source="app") == 0
    stop.touch()
    assert t.wait(15) == 0
    got = t.stdout_path.read_bytes()
    assert got == b"".join(app_line(i) for i in range(n) if i % 10 != 9), "pass-through lost nothing"


def test_stdout_capture_kill9_reships_spilled(tandem, receiver, tmp_path):
    """kill -9 of Tandem while the sink is down and 50,000 lines wait, most on disk: restarted
    (with an app that writes nothing more), it ships every spilled line, once. What is lost is
    what was in memory, within memory_budget (1 MiB here), as documented."""
    n = 50_000
    receiver.control(down=True)
    cfg = stdio_config(tmp_path, receiver)
    t, app, _ = start_app(tandem, tmp_path, cfg, n)
    wait_for(lambda: source(logs_doc(t), "app")["stream"]["lines"] == n, 10, "every line taken in")
    spilled = int(metric(metrics(t), "tandem_logs_spilled_lines_total", source="app"))
    t.p.send_signal(signal.SIGKILL)
    t.p.wait(5)
    os.kill(app["pid"], signal.SIGKILL)  # orphaned by the kill; its pipes are gone anyway

    t, _, stop = start_app(tandem, tmp_path, cfg, 0, run_id="2")
    assert "disk buffer holds lines not confirmed before the last stop" in t.log()
    receiver.control(down=False)
    wait_for(lambda: receiver.stats(n)["unique"] >= spilled, 60, "every spilled line delivered")
    time.sleep(1)
    s = receiver.stats(n)
    lost = n - s["unique"]
    report("stdout capture, kill -9 with the sink down, restart", s, spilled=spilled, lost_in_memory=lost)
    assert (s["received"], s["duplicates"]) == (spilled, 0)
    assert lost * len(app_line(0)) <= 1 << 20, "lost more than the memory budget holds"
    wait_for(lambda: source(logs_doc(t), "app")["stream"]["disk_buffer_used"] == 0, 10, "disk buffer emptied")
    stop.touch()
    assert t.wait(15) == 0


def test_stdout_passthrough_never_blocks(tandem, receiver, tmp_path):
    """Tandem's own stdout is a pipe nobody reads (a stalled log collector): the pass-through
    buffer fills and what does not fit is dropped from the pass-through and counted; the app
    still never blocks and every line is shipped."""
    n = 100_000
    t, app, stop = start_app(tandem, tmp_path, stdio_config(tmp_path, receiver), n, every=0,
                             separate_stdout=False, stdout_pipe=True)
    s = receiver.wait_all(n, timeout=60)
    dropped = metric(metrics(t), "tandem_logs_passthrough_dropped_bytes_total", source="app")
    report("stdout pass-through stalled", s, app=app, passthrough_dropped_bytes=dropped)
    assert (s["missing"], s["duplicates"]) == (0, 0)
    assert app["max_write_ms"] < 100, f"the app was blocked: {app}"
    written = sum(len(app_line(i)) for i in range(n))
    # The pass-through holds 4 MiB, the pipe to the test 64 KiB: the rest was dropped, whole reads.
    assert 0 < dropped <= written - 4 * 1024 * 1024, dropped
    got = t.p.stdout.read(4 * 1024 * 1024)  # unblock the pass-through so Tandem can exit
    stop.touch()
    rest = t.p.stdout.read()
    assert t.wait(15) == 0
    assert len(got) + len(rest) + dropped == written
    assert (got + rest).startswith(app_line(0) + app_line(1))


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 256 KiB tmpfs at tmp_path/state, unmounted at teardown (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (tests run as root in CI)")
    d = tmp_path / "state"
    d.mkdir()
    r = run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(d)])
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    yield d
    run(["umount", "-l", str(d)])


def append_lines(path, start, end):
    with open(path, "ab") as f:
        f.write(b"".join(f"line seq={i} {PAD}\n".encode() for i in range(start, end)))
    return path.stat().st_size


def file_config(tmp, rcv, log, state):
    return f"""
logs:
  checkpoint: {{ dir: {state}, sync_interval: 200ms }}
  sources:
    app: {{ paths: ["{log}"], poll_interval: 50ms, scan_interval: 200ms }}
  sinks:
    central:
      type: http
      url: {rcv.url}
      backoff: 50ms
      max_backoff: 300ms
"""


def on_disk_offset(state):
    doc = json.loads((state / "checkpoints.json").read_text())
    return doc["files"][0]["offset"] if doc["files"] else None


def test_checkpoint_disk_full(small_tmpfs, tandem, receiver, tmp_path):
    """The checkpoint directory's file system fills up: the failed write is logged with the path
    and the error, /logs shows it, the age metric grows, and shipping goes on. Space freed, the
    checkpoint catches up; after a restart nothing is missing or shipped twice."""
    state = small_tmpfs
    log = tmp_path / "app.log"
    size1 = append_lines(log, 0, 1000)
    cfg = file_config(tmp_path, receiver, log, state)
    t = tandem(cfg)
    wait_for(lambda: on_disk_offset(state) == size1, 10, "first checkpoint")

    filled = 0
    fd = os.open(state / "fill", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            filled += os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    size2 = append_lines(log, 1000, 2000)
    wait_for(lambda: receiver.stats(2000)["unique"] == 2000, 15, "shipping goes on with the disk full")
    wait_for(lambda: "cannot write the log checkpoint" in t.log(), 10, "the failure is logged")
    line = next(l for l in t.log().splitlines() if "cannot write the log checkpoint" in l)
    assert str(state / "checkpoints.json") in line and "No space left on device" in line, line
    wait_for(lambda: metric(metrics(t), "tandem_logs_checkpoint_age_seconds") >= 1, 5, "checkpoint age grows")
    doc = logs_doc(t)
    assert doc["checkpoint"]["failing"] is True, doc["checkpoint"]
    assert "No space left on device" in doc["checkpoint"]["last_error"], doc["checkpoint"]
    assert doc["checkpoint"]["age_seconds"] >= 1, doc["checkpoint"]
    assert metric(metrics(t), "tandem_logs_checkpoint_errors_total") >= 1
    assert on_disk_offset(state) == size1, "the checkpoint on disk stays where it was"

    os.remove(state / "fill")
    wait_for(lambda: on_disk_offset(state) == size2, 10, "the checkpoint catches up once space is freed")
    wait_for(lambda: logs_doc(t)["checkpoint"]["failing"] is False, 5, "/logs: no longer failing")
    assert metric(metrics(t), "tandem_logs_checkpoint_age_seconds") == 0
    assert "log checkpoint written again" in t.log()

    t.signal(signal.SIGTERM)
    assert t.wait(15) == 0
    append_lines(log, 2000, 3000)
    t = tandem(cfg)
    s = receiver.wait_all(3000)
    report("checkpoint disk full", s, filled_bytes=filled)
    assert (s["missing"], s["duplicates"], s["received"]) == (0, 0, 3000)


def test_access_log_source(tandem, receiver, http_backend, tmp_path):
    """200 requests through a listener: each request's access log record arrives at the receiver
    as a record with the access log's fields (the JSON parser is the default), and the access
    log file still gets every line."""
    port = free_port()
    access = tmp_path / "access.log"
    t = tandem(f"""
access_log: {{ path: {access} }}
listeners:
  inbound:
    address: 127.0.0.1:{port}
    upstream: app
upstreams:
  app: {{ endpoints: [{http_backend}] }}
logs:
  checkpoint: {{ dir: {tmp_path}/state }}
  sources:
    access: {{ type: access_log }}
  sinks:
    central: {{ type: http, url: {receiver.url}, batch: {{ timeout: 100ms }} }}
""")
    n = 200
    with httpx.Client(timeout=10) as c:
        for i in range(n):
            assert c.get(f"http://127.0.0.1:{port}/echo?seq={i}").status_code == 200
    s = receiver.wait_all(n, timeout=20)
    report("access log source", s)
    assert (s["missing"], s["duplicates"]) == (0, 0)
    r = json.loads(receiver.lines(1)[0])
    assert r["file"] == "access_log" and r["fields"]["path"].startswith("/echo?seq="), r
    assert r["fields"]["status"] == 200 and r["fields"]["listener"] == "inbound", r
    wait_for(lambda: len(access.read_text().splitlines()) == n, 5, "the file has every line too")
    st = source(logs_doc(t), "access")["stream"]
    assert st["lines"] == n and st["dropped_disk_full"] == 0, st


def test_logs_status_and_endpoint(tandem, receiver, tmp_path):
    """`tandem logs status` (table and --json) and GET /logs against a file of known size:
    caught up, every offset equals the size and the lag is 0; with the sink down and 100 more
    lines, the read offset moves to the new size, the checkpointed one stays, the lag is the
    bytes appended, and the sink shows its failure."""
    log = tmp_path / "app.log"
    size1 = append_lines(log, 0, 1000)
    state = tmp_path / "state"
    cfg = file_config(tmp_path, receiver, log, state)
    t = tandem(cfg)
    receiver.wait_all(1000, timeout=20)

    def file_row():
        return source(logs_doc(t), "app")["files"][0]

    wait_for(lambda: file_row()["checkpointed_offset"] == size1, 5, "caught up")
    row = file_row()
    assert row == {"path": str(log), "size": size1, "read_offset": size1, "checkpointed_offset": size1,
                   "lag_bytes": 0, "checkpoint_age_seconds": 0}, row
    doc = logs_doc(t)
    assert doc["sinks"][0]["name"] == "central" and doc["sinks"][0]["state"] == "ok", doc["sinks"]
    assert doc["sinks"][0]["delivered_lines"] == 1000, doc["sinks"]
    assert doc["checkpoint"]["path"] == str(state / "checkpoints.json")
    assert doc["memory"]["limit_bytes"] == 4 << 20

    cli = run([TANDEM_BIN, "logs", "status", "-c", str(t.config)])
    assert cli.returncode == 0, cli.stderr
    print("\n" + cli.stdout)
    file_line = next(l for l in cli.stdout.splitlines() if str(log) in l)
    assert file_line.split() == ["app", str(log), str(size1), str(size1), str(size1), "0", "0s"], file_line
    assert any(l.split()[:2] == ["central", "ok"] for l in cli.stdout.splitlines()), cli.stdout
    as_json = run([TANDEM_BIN, "logs", "status", "--admin", f"127.0.0.1:{t.admin_port}", "--json"])
    assert json.loads(as_json.stdout)["sources"][0]["files"][0]["size"] == size1

    receiver.control(down=True)
    size2 = append_lines(log, 1000, 1100)
    wait_for(lambda: file_row()["read_offset"] == size2, 5, "the new lines are read")
    wait_for(lambda: logs_doc(t)["sinks"][0]["state"] == "down", 10, "the sink is down")
    wait_for(lambda: file_row()["checkpoint_age_seconds"] >= 1, 5, "the file's checkpoint age grows")
    row = file_row()
    assert row == {"path": str(log), "size": size2, "read_offset": size2, "checkpointed_offset": size1,
                   "lag_bytes": size2 - size1, "checkpoint_age_seconds": row["checkpoint_age_seconds"]}, row
    sink = logs_doc(t)["sinks"][0]
    assert sink["last_error"] and sink["last_error_at"] and sink["failing_since"], sink
    assert sink["in_flight_lines"] + sink["batch_lines"] == 100, sink
    cli = run([TANDEM_BIN, "logs", "status", "-c", str(t.config)])
    sink_line = next(l for l in cli.stdout.splitlines() if l.startswith("central"))
    assert " down " in sink_line, cli.stdout
    receiver.control(down=False)
    receiver.wait_all(1100, timeout=20)
    wait_for(lambda: file_row()["lag_bytes"] == 0, 5, "caught up again")
    assert file_row()["checkpoint_age_seconds"] == 0

    # Without `logs:`, /logs says so and the CLI exits non-zero naming why.
    t2 = tandem(f"""
listeners:
  inbound: {{ address: 127.0.0.1:{free_port()}, upstream: app }}
upstreams:
  app: {{ endpoints: [127.0.0.1:{free_port()}] }}
""")
    assert httpx.get(f"{t2.admin}/logs", timeout=5).status_code == 404
    cli = run([TANDEM_BIN, "logs", "status", "--admin", f"127.0.0.1:{t2.admin_port}"])
    assert cli.returncode == 1 and "not configured" in cli.stderr, cli
    cli = run([TANDEM_BIN, "logs", "status", "--admin", f"127.0.0.1:{free_port()}"])
    assert cli.returncode == 1 and "cannot reach the admin API" in cli.stderr, cli
