#!/usr/bin/env python3
"""Discovery at scale (issue 6): N instances of one service in etcd, one Tandem discovering them.

Measures, against a real etcd (started here on loopback) and the release binary:
  - list time: Tandem start -> /upstreams shows all N endpoints;
  - change-to-use latency: an instance put in etcd (pointing at a live backend) -> the first
    request through Tandem answered by it (p50/p99 over --changes changes, one at a time);
  - removal latency: an instance deleted -> gone from /upstreams;
  - RSS of Tandem with 0 and with N endpoints (VmRSS from /proc).
The N instances are fake addresses in 198.18.0.0/15 (nothing connects to them: no request goes
to upstream `big`). Change-to-use is measured on a second service, `fresh`, whose only instance is
the new one (a live backend started here), while the big service's set is held and, with --churn,
rebuilt by puts and deletes meanwhile: the big set's watch and rebuilds compete with the change.

Usage (release build; writes nothing outside --workdir):
  cargo build --release -p tandem
  python3 bench/discovery/scale.py --instances 10000 --changes 50 --churn 100
Needs etcd on PATH (apt-get install etcd-server) and httpx (tests/e2e/requirements.txt).
Not run by CI or scripts/test.sh: a benchmark, run by hand on a quiet machine.
"""
import argparse
import base64
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def b64(s):
    return base64.b64encode(s.encode()).decode()


class EtcdHttp:
    """etcd's v3 JSON gateway (/v3/kv/...), so the bench needs no gRPC client."""

    def __init__(self, url):
        self.c = httpx.Client(base_url=url, timeout=10)

    def put(self, key, value):
        self.c.post("/v3/kv/put", json={"key": b64(key), "value": b64(value)}).raise_for_status()

    def delete(self, key):
        self.c.post("/v3/kv/deleterange", json={"key": b64(key)}).raise_for_status()


def wait_until(cond, timeout, step=0.002):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return time.monotonic()
        time.sleep(step)
    raise TimeoutError("condition not met")


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def backend(name):
    class H(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = name.encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=10_000)
    ap.add_argument("--changes", type=int, default=50)
    ap.add_argument("--churn", type=float, default=0, help="puts+deletes per second on the big service meanwhile")
    ap.add_argument("--tandem", default=str(ROOT / "target" / "release" / "tandem"))
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    work = Path(a.workdir or tempfile.mkdtemp(prefix="tandem-disc-bench-"))
    etcd_port, peer_port = free_port(), free_port()
    etcd_url = f"http://127.0.0.1:{etcd_port}"
    etcd = subprocess.Popen([
        "etcd", "--name", "b", "--data-dir", str(work / "etcd"),
        "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
        "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
        "--initial-cluster", f"b=http://127.0.0.1:{peer_port}", "--quota-backend-bytes", str(2 << 30),
    ], stdout=open(work / "etcd.log", "w"), stderr=subprocess.STDOUT)
    tandem = None
    try:
        kv = EtcdHttp(etcd_url)
        wait_until(lambda: httpx.get(f"{etcd_url}/health", timeout=1).status_code == 200, 15, 0.1)
        t0 = time.monotonic()
        for i in range(a.instances):
            ip = f"198.18.{(i >> 8) & 0xff}.{i & 0xff}"
            kv.put(f"/tandem/services/big/{ip}:8080", json.dumps({"address": f"{ip}:8080", "zone": f"z{i % 3}"}))
        print(f"wrote {a.instances} instances in {time.monotonic() - t0:.1f}s")

        admin, out = free_port(), free_port()
        cfg = work / "tandem.yaml"
        cfg.write_text(f"""
admin: {{ address: 127.0.0.1:{admin} }}
etcd: {{ endpoints: [{etcd_url}] }}
listeners:
  out: {{ address: 127.0.0.1:{out}, direction: outbound, upstream: fresh }}
upstreams:
  big: {{ discovery: {{ etcd: {{ service: big }} }} }}
  fresh: {{ discovery: {{ etcd: {{ service: fresh }} }} }}
""")
        started = time.monotonic()
        tandem = subprocess.Popen([a.tandem, "run", "-c", str(cfg), "--log", "warn"],
                                  stdout=open(work / "tandem.log", "w"), stderr=subprocess.STDOUT)

        def count():
            ups = httpx.get(f"http://127.0.0.1:{admin}/upstreams", timeout=5).json()
            return len(next(u for u in ups if u["name"] == "big")["endpoints"])

        wait_until(lambda: count() == a.instances, 120, 0.05)
        print(f"all {a.instances} endpoints in use {time.monotonic() - started:.2f}s after start; "
              f"RSS {rss_kib(tandem.pid) / 1024:.1f} MiB")

        stop = threading.Event()

        def churn():
            i = 0
            while not stop.is_set() and a.churn > 0:
                key = f"/tandem/services/big/churn-{i}"
                kv.put(key, json.dumps({"address": f"198.19.{(i >> 8) & 0xff}.{i & 0xff}:8080"}))
                kv.delete(key)
                i += 1
                time.sleep(2 / a.churn)

        churner = threading.Thread(target=churn, daemon=True)
        churner.start()
        client = httpx.Client(timeout=5)
        use, removal = [], []
        for n in range(a.changes):
            srv = backend(f"b{n}")
            addr = f"127.0.0.1:{srv.server_address[1]}"
            key = f"/tandem/services/fresh/{addr}"
            t = time.monotonic()
            kv.put(key, json.dumps({"address": addr}))
            wait_until(lambda: client.get(f"http://127.0.0.1:{out}/").text == f"b{n}", 10)
            use.append(time.monotonic() - t)
            t = time.monotonic()
            kv.delete(key)
            wait_until(lambda: client.get(f"http://127.0.0.1:{out}/").status_code == 503, 10)
            removal.append(time.monotonic() - t)
            srv.shutdown()
        stop.set()
        ms = lambda xs, p: pct(xs, p) * 1000  # noqa: E731
        print(f"change-to-use: p50 {ms(use, 0.5):.1f} ms, p99 {ms(use, 0.99):.1f} ms, max {max(use) * 1000:.1f} ms "
              f"({a.changes} changes, churn {a.churn}/s on {a.instances} instances)")
        print(f"removal-to-503: p50 {ms(removal, 0.5):.1f} ms, p99 {ms(removal, 0.99):.1f} ms")
        print(f"RSS at the end {rss_kib(tandem.pid) / 1024:.1f} MiB")
        print(f"mean change-to-use {statistics.mean(use) * 1000:.1f} ms")
    finally:
        if tandem:
            tandem.kill()
        etcd.kill()
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
