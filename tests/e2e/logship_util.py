"""Shared by the log shipping e2e tests: the counting receiver (backends/line_receiver.py)
driven from the test, and small readers of Tandem's metrics."""
import json
import sys
import time

import httpx
import pytest

from conftest import HERE, Proc, free_port


class Receiver:
    def __init__(self, procs):
        self.data, self.ctl = free_port(), free_port()
        self.proc = Proc([sys.executable, str(HERE / "backends" / "line_receiver.py"), str(self.data), str(self.ctl)])
        procs.append(self.proc)
        self.url = f"http://127.0.0.1:{self.data}/ingest"

    def stats(self, n):
        return httpx.get(f"http://127.0.0.1:{self.ctl}/stats", params={"n": n}, timeout=10).json()

    def control(self, **change):
        return httpx.post(f"http://127.0.0.1:{self.ctl}/control", json=change, timeout=10).json()

    def requests(self):
        return httpx.get(f"http://127.0.0.1:{self.ctl}/requests", timeout=10).json()

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


@pytest.fixture
def receiver(procs):
    return Receiver(procs)


def metrics(t):
    return httpx.get(f"{t.admin}/metrics", timeout=5).text
