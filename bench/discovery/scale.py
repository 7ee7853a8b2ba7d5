#!/usr/bin/env python3
"""Discovery at scale (issue 6): N instances of one service in etcd, one Tandem discovering them.

Against a real etcd (started here on loopback) and the release binary, in one run:

  base      idle RSS (Tandem watching an empty service), then RSS once the N instances arrive
            through the watch, and RSS of a second Tandem that lists the N at start (same config:
            the difference to idle is the endpoints' cost); list time (start -> all N in use);
            change-to-use latency (an instance put in etcd, pointing at a live backend -> the
            first request through Tandem answered by it; p50/p99 over --changes changes, one at a
            time, with --churn puts+deletes per second on the big service meanwhile); removal
            latency (deleted -> 503 on a one-instance service); etcd's CPU and RSS meanwhile.
  resync    the cost of a full resync: etcd is taken away from Tandem (restarted on another client
            port), --resync-changes instances of the big service are replaced and the history is
            compacted past Tandem's watch revision, then etcd comes back on its port. Tandem's
            watch resumes, etcd refuses it (compacted), Tandem lists the N again. Measured: etcd
            back -> compaction noticed -> the new set in use (Tandem's log timestamps), Tandem's
            CPU seconds for it, and requests through Tandem to the big service meanwhile (they
            must all succeed, against the last good set). For comparison the same cut without a
            compaction: the watch resumes from its revision and only the missed events are
            applied. One round quiet (CPU), one under request load (failures).
  watchers  --watchers simulated sidecars on the same etcd (see `sim` below), then the
            change-to-use latency at the real Tandem again, and etcd's CPU and RSS with them
            against the same phase with Tandem alone (the base phase).

The N instances are 127.1.x.y:PORT: every one is live (one backend bound to 0.0.0.0:PORT, which
answers only loopback peers, serves them all), so requests to the big service succeed whichever
endpoint the balancer picks. Change-to-use is measured on a second service, `fresh`, whose only
instance is the new one (a live backend started here), while the big service's set is held and,
with --churn, changed meanwhile: the big set's watch and rebuilds compete with the change.

Simulated sidecars (`scale.py sim`, a child process): each is what etcd sees of one Tandem
sidecar: its own HTTP/2 connection (HTTP/2 pings every 10 s), an initial range of the big
service, a watch per discovered service (big, fresh) from the next revision, and its own
registration (a lease of 10 s kept alive every third of it, a key under `sim/`). Responses are
counted, not decoded: the sidecars' own CPU would be spent on 200 other machines, and here it
would compete with etcd and the measured Tandem for the same cores. (200 real Tandems would cost
~6 GB and 200 runtimes on a 2-core machine; etcd's side of them is the same.)

Usage (release build; writes nothing outside --workdir):
  cargo build --release -p tandem
  python3 bench/discovery/scale.py --instances 10000 --changes 50 --churn 20 --watchers 200 \
      --resync-changes 100 --tandem target/release/tandem
Needs etcd on PATH (apt-get install etcd-server), httpx and grpcio
(tests/e2e/requirements.txt). Not run by CI or scripts/test.sh: a benchmark, run by hand on a
quiet machine.
"""
import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def b64(s):
    return base64.b64encode(s.encode()).decode()


def wait_until(cond, timeout, step=0.002):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return time.monotonic()
        time.sleep(step)
    raise TimeoutError("condition not met")


def status(pid):
    """VmRSS and RssAnon in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "RssAnon"):
            out[k] = int(v.split()[0]) / 1024
    return out


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def ms(xs, p):
    return pct(xs, p) * 1000


def loadavg():
    return Path("/proc/loadavg").read_text().split()[:3]


class Etcd:
    """One etcd member on loopback; can be restarted on another client port (same data)."""

    def __init__(self, work):
        self.dir = work / "etcd"
        self.log = open(work / "etcd.log", "a")
        self.peer = free_port()
        self.port = free_port()
        self.p = None

    def url(self, port=None):
        return f"http://127.0.0.1:{port or self.port}"

    def start(self, port=None):
        url = self.url(port)
        self.p = subprocess.Popen([
            "etcd", "--name", "b", "--data-dir", str(self.dir),
            "--listen-client-urls", url, "--advertise-client-urls", url,
            "--listen-peer-urls", f"http://127.0.0.1:{self.peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer}",
            "--initial-cluster", f"b=http://127.0.0.1:{self.peer}",
            "--quota-backend-bytes", str(2 << 30),
        ], stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(lambda: self._healthy(url), 30, 0.05)
        return url

    @staticmethod
    def _healthy(url):
        try:
            return httpx.get(f"{url}/health", timeout=1).json().get("health") == "true"
        except (httpx.HTTPError, ValueError):
            return False

    def stop(self):
        if self.p and self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)


class Kv:
    """etcd's v3 JSON gateway (/v3/kv/...)."""

    def __init__(self, url):
        self.c = httpx.Client(base_url=url, timeout=30)

    def put(self, key, value):
        self.c.post("/v3/kv/put", json={"key": b64(key), "value": b64(value)}).raise_for_status()

    def delete(self, key):
        self.c.post("/v3/kv/deleterange", json={"key": b64(key)}).raise_for_status()

    def txn(self, puts=(), deletes=()):
        ops = [{"requestPut": {"key": b64(k), "value": b64(v)}} for k, v in puts]
        ops += [{"requestDeleteRange": {"key": b64(k)}} for k in deletes]
        self.c.post("/v3/kv/txn", json={"success": ops}).raise_for_status()

    def revision(self):
        r = self.c.post("/v3/kv/range", json={"key": b64("/"), "count_only": True})
        return int(r.json()["header"]["revision"])

    def compact(self, revision):
        self.c.post("/v3/kv/compaction", json={"revision": str(revision), "physical": True}).raise_for_status()


def big_key(i, port):
    ip = f"127.1.{(i >> 8) & 0xff}.{i & 0xff}"
    return f"/tandem/services/big/{ip}:{port}", json.dumps({"address": f"{ip}:{port}", "zone": f"z{i % 3}"})


def populate(kv, indices, port):
    """Puts big instances in transactions of 128 (etcd's default --max-txn-ops)."""
    batch = []
    for i in indices:
        batch.append(big_key(i, port))
        if len(batch) == 128:
            kv.txn(puts=batch)
            batch = []
    if batch:
        kv.txn(puts=batch)


def backend(name, host="127.0.0.1", port=0):
    class H(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if not self.client_address[0].startswith("127."):
                self.close_connection = True
                return
            body = name.encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    ThreadingHTTPServer.daemon_threads = True
    srv = ThreadingHTTPServer((host, port), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


class Tandem:
    def __init__(self, binary, work, name, etcd_url):
        self.admin, self.out, self.out_big = free_port(), free_port(), free_port()
        cfg = work / f"{name}.yaml"
        cfg.write_text(f"""
admin: {{ address: 127.0.0.1:{self.admin} }}
etcd: {{ endpoints: [{etcd_url}] }}
listeners:
  out: {{ address: 127.0.0.1:{self.out}, direction: outbound, upstream: fresh }}
  out_big: {{ address: 127.0.0.1:{self.out_big}, direction: outbound, upstream: big }}
upstreams:
  big: {{ discovery: {{ etcd: {{ service: big }} }} }}
  fresh: {{ discovery: {{ etcd: {{ service: fresh }} }} }}
""")
        self.log_path = work / f"{name}.log"
        self.started = time.monotonic()
        self.p = subprocess.Popen([binary, "run", "-c", str(cfg), "--log", "info"],
                                  stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT)
        wait_until(self.ready, 30, 0.05)

    def ready(self):
        try:
            return httpx.get(f"http://127.0.0.1:{self.admin}/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def upstream(self, name):
        ups = httpx.get(f"http://127.0.0.1:{self.admin}/upstreams", timeout=10).json()
        return next(u for u in ups if u["name"] == name)

    def count(self, name="big"):
        return len(self.upstream(name)["endpoints"])

    def log_lines(self, since=0):
        """(offset after, [(unix time, line)]) of the log from byte `since`."""
        data = self.log_path.read_bytes()[since:]
        out = []
        for line in data.decode(errors="replace").splitlines():
            m = re.match(r"(\d{4}-\d\d-\d\dT[\d:.]+)Z", line)
            if m:
                ts = datetime.fromisoformat(m.group(1)[:26] + "+00:00").timestamp()
                out.append((ts, line))
        return since + len(data), out

    def log_size(self):
        return self.log_path.stat().st_size

    def stop(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)


def measure_changes(kv, t, changes, churn, big_port):
    """Change-to-use and removal latency on `fresh`, with churn on `big` meanwhile."""
    stop = threading.Event()

    def churner():
        i = 0
        while not stop.is_set() and churn > 0:
            key, value = big_key(60000 + i % 1000, big_port)
            kv.put(key, value)
            kv.delete(key)
            i += 1
            time.sleep(2 / churn)

    th = threading.Thread(target=churner, daemon=True)
    th.start()
    client = httpx.Client(timeout=5)
    use, removal = [], []
    for n in range(changes):
        srv = backend(f"b{n}")
        addr = f"127.0.0.1:{srv.server_address[1]}"
        key = f"/tandem/services/fresh/{addr}"
        start = time.monotonic()
        kv.put(key, json.dumps({"address": addr}))
        wait_until(lambda: client.get(f"http://127.0.0.1:{t.out}/").text == f"b{n}", 10)
        use.append(time.monotonic() - start)
        start = time.monotonic()
        kv.delete(key)
        wait_until(lambda: client.get(f"http://127.0.0.1:{t.out}/").status_code == 503, 10)
        removal.append(time.monotonic() - start)
        srv.shutdown()
        srv.server_close()
    stop.set()
    th.join()
    return use, removal


def report_changes(label, use, removal, churn, instances):
    print(f"[{label}] change-to-use: p50 {ms(use, 0.5):.1f} ms, p99 {ms(use, 0.99):.1f} ms, "
          f"max {max(use) * 1000:.1f} ms, mean {statistics.mean(use) * 1000:.1f} ms "
          f"({len(use)} changes, churn {churn}/s on {instances} instances)")
    print(f"[{label}] removal-to-503: p50 {ms(removal, 0.5):.1f} ms, p99 {ms(removal, 0.99):.1f} ms")


def phase_etcd(etcd, f):
    """Runs f(); returns (its result, etcd CPU seconds meanwhile, seconds, etcd RSS after)."""
    c0, w0 = cpu_seconds(etcd.p.pid), time.monotonic()
    r = f()
    return r, cpu_seconds(etcd.p.pid) - c0, time.monotonic() - w0, status(etcd.p.pid)["VmRSS"]


def etcd_idle(etcd, secs=10):
    """etcd's CPU share (of one core) over `secs` of quiet."""
    c0, t0 = cpu_seconds(etcd.p.pid), time.monotonic()
    time.sleep(secs)
    return (cpu_seconds(etcd.p.pid) - c0) / (time.monotonic() - t0) * 100


def resync_round(a, etcd, kv, t, big_port, replace, compact, load):
    """One cut: etcd away from Tandem, `replace` big instances replaced (and the history
    compacted), etcd back. Returns the figures of the round."""
    failures, sent = [], [0]
    done = threading.Event()

    def client():
        with httpx.Client(timeout=5) as c:
            while not done.is_set():
                try:
                    r = c.get(f"http://127.0.0.1:{t.out_big}/")
                    ok = r.status_code == 200 and r.text == "big"
                except httpx.HTTPError as e:
                    ok, r = False, e
                sent[0] += 1
                if not ok:
                    failures.append(getattr(r, "status_code", repr(r)))
                time.sleep(0.002)

    th = threading.Thread(target=client, daemon=True) if load else None
    if th:
        th.start()
        time.sleep(1)
    # The set after the round: the first `replace` instances go, as many new ones come.
    gone = list(range(resync_round.next_old, resync_round.next_old + replace))
    new = list(range(resync_round.next_new, resync_round.next_new + replace))
    resync_round.next_old += replace
    resync_round.next_new += replace
    etcd.stop()
    other = free_port()
    url = etcd.start(other)
    side = Kv(url)
    for k in range(0, replace, 64):
        side.txn(puts=[big_key(i, big_port) for i in new[k:k + 64]],
                 deletes=[big_key(i, big_port)[0] for i in gone[k:k + 64]])
    if compact:
        side.compact(side.revision())
    side.c.close()
    etcd.stop()
    offset = t.log_size()
    cpu0 = cpu_seconds(t.p.pid)
    spawned = time.time()
    etcd.start()
    back = time.time()

    def applied():
        _, lines = t.log_lines(offset)
        return [(ts, l) for ts, l in lines if "endpoints changed" in l and "upstream=big" in l]

    wait_until(lambda: applied(), 60, 0.05)
    # A resumed watch may bring the missed events in more than one answer: the last one counts.
    time.sleep(1.5)
    cpu = cpu_seconds(t.p.pid) - cpu0
    _, lines = t.log_lines(offset)
    noticed = next((ts for ts, l in lines if "listing the service again" in l and "service=big" in l), None)
    done_ts = applied()[-1][0]
    done.set()
    if th:
        th.join()
    # The set in use is exactly the expected one.
    expected = {json.loads(big_key(i, big_port)[1])["address"] for i in range(a.instances)}
    expected -= {json.loads(big_key(i, big_port)[1])["address"] for i in range(resync_round.next_old)}
    expected |= {json.loads(big_key(i, big_port)[1])["address"] for i in range(20000, resync_round.next_new)}
    got = {e["address"] for e in t.upstream("big")["endpoints"]}
    return {
        "compact": compact, "load": load, "noticed": noticed, "spawned": spawned, "back": back,
        "done": done_ts, "cpu": cpu, "consistent": got == expected, "size": len(got),
        "sent": sent[0], "failures": failures,
    }


resync_round.next_old = 0
resync_round.next_new = 20000


def run_sim(a):
    """`scale.py sim`: --watchers simulated sidecars until SIGTERM; prints a JSON summary."""
    import grpc

    def varint(n):
        out = bytearray()
        while True:
            b = n & 0x7F
            n >>= 7
            if n:
                out.append(b | 0x80)
            else:
                out.append(b)
                return bytes(out)

    def fb(no, b):
        return varint(no << 3 | 2) + varint(len(b)) + b

    def fv(no, v):
        return varint(no << 3) + varint(v)

    def fields(buf):
        i = 0
        while i < len(buf):
            key, i = read_varint(buf, i)
            no, wt = key >> 3, key & 7
            if wt == 0:
                v, i = read_varint(buf, i)
            elif wt == 2:
                n, i = read_varint(buf, i)
                v, i = buf[i:i + n], i + n
            elif wt == 1:
                v, i = buf[i:i + 8], i + 8
            else:
                v, i = buf[i:i + 4], i + 4
            yield no, v

    def read_varint(buf, i):
        n = shift = 0
        while True:
            b = buf[i]
            i += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return n, i

    def header_revision(resp):
        for no, v in fields(resp):
            if no == 1:
                for no2, v2 in fields(v):
                    if no2 == 3:
                        return v2
        return 0

    def prefix_end(p):
        return p[:-1] + bytes([p[-1] + 1])

    ident = lambda b: b  # noqa: E731

    async def requests(first):
        """The watch's request side: the create request, then open until cancelled (a closed
        request side would end the watch)."""
        yield first
        await asyncio.Event().wait()
    stats = {"watch_responses": [0] * a.watchers, "ranged": 0, "errors": 0, "leases": 0}

    async def sidecar(i, ready):
        opts = [
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.keepalive_time_ms", 10000),
            ("grpc.keepalive_timeout_ms", 5000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.max_receive_message_length", 256 << 20),
        ]
        async with grpc.aio.insecure_channel(a.etcd.removeprefix("http://"), options=opts) as ch:
            rng = ch.unary_unary("/etcdserverpb.KV/Range", request_serializer=ident, response_deserializer=ident)
            put = ch.unary_unary("/etcdserverpb.KV/Put", request_serializer=ident, response_deserializer=ident)
            grant = ch.unary_unary("/etcdserverpb.Lease/LeaseGrant", request_serializer=ident, response_deserializer=ident)
            watch = ch.stream_stream("/etcdserverpb.Watch/Watch", request_serializer=ident, response_deserializer=ident)
            keep = ch.stream_stream("/etcdserverpb.Lease/LeaseKeepAlive", request_serializer=ident, response_deserializer=ident)
            lease_resp = await grant(fv(1, 10))
            lease = next(v for no, v in fields(lease_resp) if no == 2)
            await put(fb(1, f"/tandem/services/sim/10.9.{i >> 8}.{i & 255}:80".encode())
                      + fb(2, f"10.9.{i >> 8}.{i & 255}:80".encode()) + fv(3, lease))
            stats["leases"] += 1
            streams = []
            for svc in (b"/tandem/services/big/", b"/tandem/services/fresh/"):
                resp = await rng(fb(1, svc) + fb(2, prefix_end(svc)))
                stats["ranged"] += 1
                rev = header_revision(resp)
                create = fb(1, fb(1, svc) + fb(2, prefix_end(svc)) + fv(3, rev + 1) + fv(4, 1))
                streams.append(watch(requests(create)))

            async def consume(call):
                async for _ in call:
                    stats["watch_responses"][i] += 1

            async def keepalive():
                call = keep()
                while True:
                    await call.write(fv(1, lease))
                    await call.read()
                    await asyncio.sleep(10 / 3)

            ready.set()
            await asyncio.gather(*(consume(s) for s in streams), keepalive())

    def summary(tasks):
        errs = [t for t in tasks if t.done() and not t.cancelled() and t.exception()]
        w = stats["watch_responses"]
        return {"watch_responses_min": min(w), "watch_responses_max": max(w),
                "leases": stats["leases"], "ranges": stats["ranged"], "failed_sidecars": len(errs),
                "first_error": repr(errs[0].exception()) if errs else None}

    async def main():
        readies = [asyncio.Event() for _ in range(a.watchers)]
        tasks = []
        t0 = time.monotonic()
        for i in range(a.watchers):
            tasks.append(asyncio.create_task(sidecar(i, readies[i])))
            await asyncio.sleep(a.stagger)
        await asyncio.gather(*(r.wait() for r in readies))
        print(json.dumps({"ready_after": time.monotonic() - t0}), flush=True)
        # The summary, rewritten every second until the parent kills this process (a signal
        # handler did not reliably run with 200 gRPC channels open).
        while True:
            tmp = Path(a.stats + ".tmp")
            tmp.write_text(json.dumps(summary(tasks)))
            tmp.rename(a.stats)
            await asyncio.sleep(1)

    asyncio.run(main())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", nargs="*", default=["base", "resync", "watchers"],
                    help="base, resync, watchers (default: all three, in that order); or sim")
    ap.add_argument("--instances", type=int, default=10_000)
    ap.add_argument("--changes", type=int, default=50)
    ap.add_argument("--churn", type=float, default=0, help="puts+deletes per second on the big service meanwhile")
    ap.add_argument("--resync-changes", type=int, default=100, help="big instances replaced while Tandem is cut off")
    ap.add_argument("--watchers", type=int, default=200)
    ap.add_argument("--stagger", type=float, default=0.02, help="sim: seconds between sidecar starts")
    ap.add_argument("--etcd", help="sim: etcd URL")
    ap.add_argument("--stats", help="sim: where the summary is written every second")
    ap.add_argument("--tandem", default=str(ROOT / "target" / "release" / "tandem"))
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    if a.mode == ["sim"]:
        return run_sim(a)
    print(f"load average at start: {' '.join(loadavg())}; {os.cpu_count()} CPUs")
    work = Path(a.workdir or tempfile.mkdtemp(prefix="tandem-disc-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    etcd = Etcd(work)
    tandems, sim = [], None
    big_srv = backend("big", "0.0.0.0")
    big_port = big_srv.server_address[1]
    try:
        etcd.start()
        kv = Kv(etcd.url())

        # Idle: same config, the big service still empty.
        t1 = Tandem(a.tandem, work, "t1", etcd.url())
        tandems.append(t1)
        time.sleep(3)
        idle = status(t1.p.pid)
        print(f"idle (big service empty): VmRSS {idle['VmRSS']:.1f} MiB, RssAnon {idle['RssAnon']:.1f} MiB")

        t0 = time.monotonic()
        populate(kv, range(a.instances), big_port)
        print(f"wrote {a.instances} instances in {time.monotonic() - t0:.1f}s (transactions of 128 puts)")
        wait_until(lambda: t1.count() == a.instances, 120, 0.1)
        print(f"all {a.instances} in use through the watch {time.monotonic() - t0:.2f}s after the first put")
        time.sleep(3)
        grown = status(t1.p.pid)
        print(f"RSS with {a.instances} endpoints (arrived through the watch): VmRSS {grown['VmRSS']:.1f} MiB "
              f"(+{grown['VmRSS'] - idle['VmRSS']:.1f} over idle), RssAnon {grown['RssAnon']:.1f} MiB "
              f"(+{grown['RssAnon'] - idle['RssAnon']:.1f})")
        t1.stop()
        tandems.remove(t1)

        t2 = Tandem(a.tandem, work, "t2", etcd.url())
        tandems.append(t2)
        wait_until(lambda: t2.count() == a.instances, 120, 0.05)
        print(f"second Tandem: all {a.instances} endpoints in use {time.monotonic() - t2.started:.2f}s after start")
        time.sleep(3)
        listed = status(t2.p.pid)
        print(f"RSS with {a.instances} endpoints (listed at start): VmRSS {listed['VmRSS']:.1f} MiB "
              f"(+{listed['VmRSS'] - idle['VmRSS']:.1f} over idle), RssAnon {listed['RssAnon']:.1f} MiB "
              f"(+{listed['RssAnon'] - idle['RssAnon']:.1f})")
        t = t2

        if "base" in a.mode:
            print(f"[1 watcher] etcd idle: {etcd_idle(etcd):.1f}% of a core, VmRSS {status(etcd.p.pid)['VmRSS']:.1f} MiB")
            (use, removal), cpu, secs, rss = phase_etcd(etcd, lambda: measure_changes(kv, t, a.changes, a.churn, big_port))
            report_changes("1 watcher", use, removal, a.churn, a.instances)
            print(f"[1 watcher] etcd: {cpu:.2f} CPU s over {secs:.1f} s ({cpu / secs * 100:.1f}% of a core), "
                  f"VmRSS {rss:.1f} MiB")
            print(f"Tandem RSS after the changes: VmRSS {status(t.p.pid)['VmRSS']:.1f} MiB")

        if "resync" in a.mode:
            for compact, load in ((False, False), (True, False), (True, True)):
                r = resync_round(a, etcd, kv, t, big_port, a.resync_changes, compact, load)
                kind = "compacted: list again" if r["compact"] else "not compacted: watch resumed"
                noticed = (f"; compaction noticed +{(r['noticed'] - r['back']) * 1000:.0f} ms, "
                           f"noticed -> new set in use {(r['done'] - r['noticed']) * 1000:.0f} ms") if r["noticed"] else ""
                print(f"[resync, {kind}{', under load' if load else ''}] etcd started -> healthy "
                      f"{(r['back'] - r['spawned']) * 1000:.0f} ms, healthy -> new set in use "
                      f"{(r['done'] - r['back']) * 1000:.0f} ms{noticed}; Tandem CPU {r['cpu'] * 1000:.0f} ms; "
                      f"set consistent: {r['consistent']} ({r['size']} endpoints)"
                      + (f"; requests {r['sent']}, failed {len(r['failures'])} {r['failures'][:5]}" if load else ""))
            print(f"Tandem RSS after the resyncs: VmRSS {status(t.p.pid)['VmRSS']:.1f} MiB")

        if "watchers" in a.mode:
            etcd_before = status(etcd.p.pid)["VmRSS"]
            c0 = cpu_seconds(etcd.p.pid)
            stats = work / "sim-stats.json"
            sim = subprocess.Popen([sys.executable, __file__, "sim", "--etcd", etcd.url(), "--stats", str(stats),
                                    "--watchers", str(a.watchers), "--stagger", str(a.stagger)],
                                   stdout=subprocess.PIPE, text=True)
            ready = json.loads(sim.stdout.readline())
            print(f"{a.watchers} simulated sidecars watching after {ready['ready_after']:.1f}s "
                  f"(each ranged the {a.instances} instances); etcd CPU for it {cpu_seconds(etcd.p.pid) - c0:.1f} s, "
                  f"etcd VmRSS {etcd_before:.1f} -> {status(etcd.p.pid)['VmRSS']:.1f} MiB")
            time.sleep(5)
            print(f"[{a.watchers + 1} watchers] etcd idle: {etcd_idle(etcd):.1f}% of a core (keep-alives and pings), "
                  f"VmRSS {status(etcd.p.pid)['VmRSS']:.1f} MiB")
            (use, removal), cpu, secs, rss = phase_etcd(etcd, lambda: measure_changes(kv, t, a.changes, a.churn, big_port))
            report_changes(f"{a.watchers + 1} watchers", use, removal, a.churn, a.instances)
            print(f"[{a.watchers + 1} watchers] etcd: {cpu:.2f} CPU s over {secs:.1f} s ({cpu / secs * 100:.1f}% of a core), "
                  f"VmRSS {rss:.1f} MiB")
            time.sleep(1.5)
            print(f"simulated sidecars: {stats.read_text()}")
            sim.kill()
        print(f"load average at the end: {' '.join(loadavg())}")
    finally:
        if sim and sim.poll() is None:
            sim.kill()
        for t in tandems:
            t.stop()
        etcd.stop()
        big_srv.shutdown()
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
