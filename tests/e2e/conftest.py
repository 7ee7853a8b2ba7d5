"""Fixtures for the end-to-end suite: the real `tandem` binary (TANDEM_BIN), real backends as
subprocesses, free ports, and teardown that always kills what a test started."""
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
TANDEM_BIN = os.environ.get("TANDEM_BIN", str(ROOT / "target" / "debug" / "tandem"))


_GIVEN_PORTS = set()


def free_port():
    """A loopback port nothing listens on, never one this test session handed out before: the
    kernel may give the same port to two binds in a row once the first socket is closed (CI
    once got one port for a Tandem's admin API and its listener)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN_PORTS:
            _GIVEN_PORTS.add(port)
            return port


class GaveUp(Exception):
    """Raised inside a polled condition to stop polling at once (e.g. the process died)."""


def wait_for(cond, timeout=10.0, what="condition"):
    """Polls `cond` every 20 ms until it is true; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except GaveUp:
            raise
        except Exception as e:  # noqa: BLE001 - polling tolerates transient failures
            last = e
        time.sleep(0.02)
    raise AssertionError(f"{what} not met within {timeout}s (last error: {last!r})")


class Proc:
    """A subprocess that prints `ready` when it serves; killed at teardown."""

    def __init__(self, args, env=None):
        self.args = [str(a) for a in args]
        self.log = tempfile.NamedTemporaryFile("w+", prefix="proc-", suffix=".log", delete=False)
        self.p = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        deadline = time.monotonic() + 15
        line = ""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.p.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            line = self.p.stdout.readline()
            if "ready" in line or not line:
                break
        if "ready" not in line:
            err = self.log_text()
            self.stop()
            raise RuntimeError(f"{args} did not start within 15s: {err}")

    def log_text(self):
        self.log.flush()
        return open(self.log.name).read()

    def stop(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(5)
        self.p.stdout.close()
        self.log.close()
        os.unlink(self.log.name)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test's report carries the stderr of every Tandem and backend it started."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        for i, t in enumerate(getattr(item, "_tandems", [])):
            rep.sections.append((f"tandem #{i} stderr ({t.dir})", t.log()[-20000:]))
        for p in getattr(item, "_procs", []):
            rep.sections.append((f"backend {p.args[-1]} stderr", p.log_text()[-5000:]))


@pytest.fixture
def procs(request):
    started = []
    request.node._procs = started
    yield started
    for p in started:
        p.stop()


def _backend(procs, script, where, env=None):
    e = dict(os.environ, **(env or {}))
    p = Proc([sys.executable, str(HERE / "backends" / script), str(where)], env=e)
    procs.append(p)
    return p


@pytest.fixture
def http_backend(procs):
    port = free_port()
    _backend(procs, "http_backend.py", port)
    return f"127.0.0.1:{port}"


@pytest.fixture
def h2_backend(procs):
    """The same echo backend, also speaking HTTP/2 prior knowledge (h2c) on its port."""
    port = free_port()
    _backend(procs, "http_backend.py", port, {"BACKEND_H2": "1"})
    return f"127.0.0.1:{port}"


@pytest.fixture
def start_backend(procs):
    """start_backend(script, where, env=None) for tests that need several or unusual backends."""
    return lambda script, where, env=None: _backend(procs, script, where, env)


class Tandem:
    """`tandem run -c <config_text in a fresh temp dir>` (an admin address on a free port is added
    unless the text has one); waits for /ready unless told not to. Killed at teardown. With
    `separate_stdout`, Tandem's stdout goes to `stdout.log` in its dir (else into the stderr log);
    with `stdout_pipe`, to a pipe the test reads (`self.p.stdout`), or leaves unread."""

    def __init__(self, config_text, args=(), env=None, wait_ready=True, separate_stdout=False,
                 stdout_pipe=False):
        self.dir = Path(tempfile.mkdtemp(prefix="tandem-e2e-"))
        self.admin_port = free_port()
        self.config = self.dir / "tandem.yaml"
        text = config_text
        if "admin:" not in text and config_text:
            text = f"admin: {{ address: 127.0.0.1:{self.admin_port} }}\n" + text
        self.config.write_text(text)
        self.stderr = open(self.dir / "stderr.log", "w+")
        cmd = [TANDEM_BIN, "run"]
        if config_text:
            cmd += ["-c", str(self.config)]
        cmd += list(args)
        self.stdout_path = self.dir / "stdout.log"
        out = open(self.stdout_path, "wb") if separate_stdout else self.stderr
        if stdout_pipe:
            out = subprocess.PIPE
        self.p = subprocess.Popen(cmd, stdout=out, stderr=self.stderr, env=dict(os.environ, **(env or {})))
        if separate_stdout:
            out.close()
        if wait_ready:
            self.wait_ready()

    @property
    def admin(self):
        return f"http://127.0.0.1:{self.admin_port}"

    def wait_ready(self, timeout=10):
        def ready():
            if self.p.poll() is not None:
                raise GaveUp(f"tandem exited with {self.p.returncode} before /ready: {self.log()}")
            return httpx.get(f"{self.admin}/ready", timeout=1).status_code == 200

        wait_for(ready, timeout, "tandem /ready")

    def log(self):
        self.stderr.flush()
        return (self.dir / "stderr.log").read_text()

    def signal(self, sig=signal.SIGTERM):
        self.p.send_signal(sig)

    def wait(self, timeout=30):
        return self.p.wait(timeout)

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(5)


@pytest.fixture
def tandem(request):
    started = []
    request.node._tandems = started

    def start(config_text, **kw):
        t = Tandem(config_text, **kw)
        started.append(t)
        return t

    yield start
    for t in started:
        t.kill()
        t.stderr.close()
        shutil.rmtree(t.dir, ignore_errors=True)


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric(text, name, **labels):
    """The value of the sample `name{labels}` in a Prometheus exposition (label order free), or None."""
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and m.group(1) == name and dict(_LABEL.findall(m.group(2) or "")) == labels:
            return float(m.group(3))
    return None


def run(args, timeout=20, **kw):
    """Runs a client command (curl, promtool, tandem check) with a bound on its time."""
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture
def receiver(procs):
    """The counting log receiver (backends/line_receiver.py), NDJSON over HTTP."""
    from logship_support import Receiver

    return Receiver(procs)
