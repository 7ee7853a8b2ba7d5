"""Multi-line joining on the supervised app's stdout/stderr (`type: stdio` with `multiline`),
through the real binary: `tandem run -- python backends/trace_app.py` prints Java stack traces
line by line (one write() per line, so traces are cut across pipe reads, and stdout and stderr
interleave); the counting receiver (backends/line_receiver.py) gets them.

Every trace carries one `seq=N`, in its first line only: the receiver counts traces, and a piece
of a trace shipped on its own shows up as a record without `seq=` (`other_lines`).

Each test prints its numbers (`-s`).
"""
import json
import sys
import time

from conftest import HERE, metric, wait_for
from logship_support import metrics, report

APP = HERE / "backends" / "trace_app.py"


def config(tmp, rcv, timeout):
    return f"""
logs:
  checkpoint: {{ dir: {tmp}/state }}
  memory_budget: 1MiB
  sources:
    app:
      type: stdio
      multiline: {{ start: '^\\d{{4}}-', timeout: {timeout}, max_lines: 100 }}
  sinks:
    central:
      type: http
      url: {rcv.url}
      backoff: 50ms
      max_backoff: 300ms
"""


def app_trace(i):
    """The record trace_app.py's trace i must arrive as: its lines joined by \\n."""
    lines = [f"2026-11-24T10:00:{i % 60:02d}Z ERROR [worker-{i % 4}] request failed seq={i}",
             "java.lang.IllegalStateException: boom"]
    lines += [f"\tat com.example.Orders.step{k}(Orders.java:{k + 10})" for k in range(2 + (i * 7) % 18)]
    lines.append("Caused by: java.io.IOException: upstream")
    return "\n".join(lines)


def start(tandem, tmp, cfg, n):
    result, stop = tmp / "result.json", tmp / "stop"
    t = tandem(cfg, args=["--", sys.executable, str(APP), str(n), str(result), str(stop)], separate_stdout=True)
    wait_for(result.exists, 60, "the app wrote all its traces")
    return t, json.loads(result.read_text()), stop


def check_records(receiver):
    """The first records received are whole traces, with the right stream."""
    first = [json.loads(l) for l in receiver.lines(100)]
    assert first
    for r in first:
        seq = int(r["message"].split("seq=")[1].split()[0])
        assert r["message"] == app_trace(seq), r
        assert r["fields"]["stream"] == ("stderr" if seq % 10 == 9 else "stdout"), r


def test_stdout_traces_joined(tandem, receiver, tmp_path):
    """5,000 traces (about 60,000 lines) with the sink up: every trace arrives once as one record;
    the last one, followed by no start line while the app still runs, at the 500 ms timeout."""
    n = 5_000
    t, app, stop = start(tandem, tmp_path, config(tmp_path, receiver, "500ms"), n)
    s = receiver.wait_all(n, timeout=60)
    report("stdio multi-line, sink up", s, app=app)
    assert (s["missing"], s["duplicates"], s["other_lines"], s["received"]) == (0, 0, 0, n), s
    check_records(receiver)
    text = metrics(t)
    assert metric(text, "tandem_logs_read_lines_total", source="app") == app["lines"]
    assert app["max_write_ms"] < 100, f"the app was blocked: {app}"
    stop.touch()
    assert t.wait(15) == 0


def test_stdout_traces_joined_sink_down(tandem, receiver, tmp_path):
    """20,000 traces (about 240,000 lines, 11 MB) while the sink is down: past the 1 MiB memory
    budget, whole traces go to the disk buffer. The joiner's timeout is an hour, so the last trace
    of each stream is completed only by the app closing its stdout and stderr. The sink comes back: every trace arrives
    once, whole; the disk buffer empties; the app was never blocked."""
    n = 20_000
    receiver.control(down=True)
    t, app, stop = start(tandem, tmp_path, config(tmp_path, receiver, "1h"), n)
    wait_for(lambda: metric(metrics(t), "tandem_logs_read_lines_total", source="app") == app["lines"], 20,
             "every line taken in")
    spilled = metric(metrics(t), "tandem_logs_spilled_lines_total", source="app")
    assert spilled > 0, "the sink was down: traces went to the disk buffer"
    receiver.control(down=False)
    # The last trace of each stream (stdout's seq n-2, stderr's n-1) waits for more lines.
    wait_for(lambda: receiver.stats(n)["unique"] >= n - 2, 120, "every trace but the pending ones delivered")
    time.sleep(1)
    s = receiver.stats(n)
    assert (s["unique"], receiver.missing(n)) == (n - 2, [n - 2, n - 1]), "pending until the stream's end"
    wait_for(lambda: metric(metrics(t), "tandem_logs_disk_buffer_used_bytes", source="app") == 0, 10,
             "disk buffer emptied")
    stop.touch()  # the app exits: its stdout closes, and the last trace is complete
    assert t.wait(15) == 0
    s = receiver.wait_all(n, timeout=10)
    report("stdio multi-line, sink down then back", s, app=app, spilled_records=spilled)
    assert (s["missing"], s["duplicates"], s["other_lines"], s["received"]) == (0, 0, 0, n), s
    assert app["max_write_ms"] < 100, f"the app was blocked: {app}"
    check_records(receiver)
