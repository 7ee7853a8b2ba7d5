"""Shared pieces of the log shipping end-to-end tests (test_logship.py, test_logship_sinks.py):
the counting receiver (backends/line_receiver.py) and its client, the numbered-line writer
(backends/log_writer.py), the `logs:` config, and the numbers each test prints.
"""
import json
import subprocess
import sys
import time

import httpx

from conftest import HERE, Proc, free_port, metric, wait_for

BATCH = 1000  # the sink's default batch.max_lines

# The API path each sink type POSTs to (added by the sink to a bare URL).
API_PATHS = {"http": "/ingest", "loki": "/loki/api/v1/push", "elasticsearch": "/_bulk", "otlp": "/v1/logs"}


class Receiver:
    """backends/line_receiver.py in one wire format (`fmt`: ndjson, loki, elasticsearch, otlp),
    over HTTPS with `tls=(cert, key)` (and required client certificates with `client_ca`)."""

    def __init__(self, procs, fmt="ndjson", tls=None, client_ca=None, no_tickets=False):
        self.data, self.ctl = free_port(), free_port()
        args = [sys.executable, str(HERE / "backends" / "line_receiver.py"), str(self.data), str(self.ctl),
                "--format", fmt]
        if tls:
            args += ["--tls", str(tls[0]), str(tls[1])]
        if client_ca:
            args += ["--client-ca", str(client_ca)]
        if no_tickets:
            args += ["--no-tickets"]
        self.proc = Proc(args)
        procs.append(self.proc)
        self.fmt = fmt
        scheme = "https" if tls else "http"
        # The NDJSON sink needs its path; the API sinks add theirs to a bare URL.
        self.base = f"{scheme}://localhost:{self.data}" if tls else f"{scheme}://127.0.0.1:{self.data}"
        self.url = self.base + ("/ingest" if fmt == "ndjson" else "")

    def stats(self, n):
        return httpx.get(f"http://127.0.0.1:{self.ctl}/stats", params={"n": n}, timeout=10).json()

    def control(self, **change):
        return httpx.post(f"http://127.0.0.1:{self.ctl}/control", json=change, timeout=10).json()

    def requests(self):
        return httpx.get(f"http://127.0.0.1:{self.ctl}/requests", timeout=10).json()

    def missing(self, n, limit=100_000):
        return httpx.get(f"http://127.0.0.1:{self.ctl}/missing", params={"n": n, "limit": limit}, timeout=30).json()

    def lines(self, limit=5):
        return httpx.get(f"http://127.0.0.1:{self.ctl}/lines", params={"limit": limit}, timeout=10).json()

    def wait_all(self, n, timeout=90, quiet=1.0):
        """Waits until all n sequence numbers arrived and nothing more arrived for `quiet` s."""
        deadline = time.monotonic() + timeout
        last, since = None, time.monotonic()
        while time.monotonic() < deadline:
            s = self.stats(n)
            if s["received"] != last:
                last, since = s["received"], time.monotonic()
            if s["unique"] == n and time.monotonic() - since >= quiet:
                return s
            time.sleep(0.1)
        s = self.stats(n)
        raise AssertionError(f"not all lines arrived within {timeout}s: {summary(s)}")


def summary(s):
    return {k: s[k] for k in ("received", "unique", "duplicates", "missing", "missing_ranges", "requests",
                              "statuses")}


def report(name, s, **extra):
    print(f"\n[{name}] " + json.dumps({**summary(s), **extra}))


def logs_config(tmp, rcv, paths, scan="1s", source_extra="", sink_extra="", sink_type="http"):
    paths_yaml = ", ".join(f'"{p}"' for p in paths)
    return f"""
logs:
  checkpoint: {{ dir: {tmp}/state }}
  labels: {{ service: e2e }}
  sources:
    app:
      paths: [{paths_yaml}]
      scan_interval: {scan}
      poll_interval: 50ms
{source_extra}
  sinks:
    central:
      type: {sink_type}
      url: {rcv.url}
      backoff: 50ms
      max_backoff: 500ms
{sink_extra}
"""


def writer(path, n, rate, rotate=None, rotations=0, fmt="plain"):
    args = [sys.executable, str(HERE / "backends" / "log_writer.py"), str(path), str(n), "--rate", str(rate),
            "--format", fmt]
    if rotate:
        args += ["--rotate", rotate, "--rotations", str(rotations)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, text=True)


def metrics(t):
    return httpx.get(f"{t.admin}/metrics", timeout=5).text


def wait_tailing(t, files=1):
    wait_for(lambda: metric(metrics(t), "tandem_logs_files", source="app") == files, 10, "tandem tails the file")


def finish(w):
    out, _ = w.communicate(timeout=120)
    assert w.returncode == 0
    return json.loads(out)


def wait_shipped_or_refused(t, rcv, log, n, timeout):
    """Waits until the receiver holds every one of the `n` lines of `log` but those Tandem
    dropped as refused for good, then until the file is checkpointed to its end. (The lag gauge
    alone is no signal: it is 0 as well before the tailer has seen the file grow.)"""
    def settled():
        refused = metric(metrics(t), "tandem_logs_sink_dropped_lines_total", sink="central", reason="rejected") or 0
        return rcv.stats(n)["unique"] + int(refused) >= n

    wait_for(settled, timeout, f"all {n} lines shipped or refused")
    wait_for(lambda: metric(metrics(t), "tandem_logs_file_lag_bytes", source="app", file=str(log)) == 0,
             timeout, "every line checkpointed")
