"""Network partitions through the real binary. Three HTTP backends, each in a network namespace
of its own behind a veth pair (a /30 each in a free 198.18.X.0/24; 198.18.0.0/15 is reserved for
network tests), Tandem in the root namespace balancing over them round robin (so the cut-off
backend keeps being picked until Tandem takes it out), and an iptables rule in one backend's
namespace cutting it off while eight clients keep sending:

- DROP: a black hole. New connections get no SYN-ACK and pooled keep-alive connections no answer;
  the connect timeout and the per-try timeout end those tries and the retry goes elsewhere.
- REJECT --reject-with tcp-reset: every packet to the port is answered with a RST, on new and
  pooled connections alike; refused and reset tries are retried elsewhere.

Each partition asserts: no client request fails, none takes longer than its tries can; within
PARTITION_BOUND seconds Tandem no longer picks the backend (eligible=false in /upstreams, the
retry counters stop moving, and the only SYNs the backend's namespace still sees are health
probes); and once the rule is deleted traffic returns within HEAL_BOUND seconds, to its round-robin
third. Numbers are printed (pytest -s / -rA).

Needs root for namespaces, veths and iptables: skipped when not root or when `ip netns add` is
refused (an unprivileged container), and without an iptables binary (scripts/test.sh installs
it). `iptables` (nft) is tried first, then `iptables-legacy`. Everything it made is removed at
teardown, also after a failure; leftovers of a crashed earlier run (names carry the pid) are
removed first."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from conftest import HERE, Proc, free_port

BACKEND_PORT = 8080  # inside each backend's own namespace: nothing else listens there
NS_RE = re.compile(r"tdm-(\d+)-b\d")
LINK_RE = re.compile(r"tdm(\d+)h\d")

CONNECT_TIMEOUT = 0.2
PER_TRY_TIMEOUT = 0.4
ATTEMPTS = 3
MAX_BACKOFF = 0.05
HC_INTERVAL = 0.25
HC_TIMEOUT = 0.15
HC_HEALTHY = 2

WORKERS = 8
RATE_PER_WORKER = 12  # requests per second per client: ~100 req/s in all
PARTITION_SECONDS = 3.0
# The partitioned backend is out of rotation within this (the breaker's 3 consecutive failures
# take one per-try timeout; the health checks' 2 failing probes take 2 intervals).
PARTITION_BOUND = 2.0
# Once healed, traffic returns within this: 2 passing probes (interval + 10 % jitter each) and the
# half-open request, with room for a busy machine.
HEAL_BOUND = 1.5
# No request can take longer than all its tries and back-offs (plus scheduling slack).
LATENCY_BOUND = ATTEMPTS * PER_TRY_TIMEOUT + (ATTEMPTS - 1) * MAX_BACKOFF + 0.3


def config(port, endpoints):
    eps = ", ".join(f'"{e}"' for e in endpoints)
    ms = lambda secs: f"{round(secs * 1000)}ms"  # noqa: E731
    return f"""
listeners:
  inbound:
    address: 127.0.0.1:{port}
    upstream: app
upstreams:
  app:
    endpoints: [{eps}]
    balancer: round_robin
    connect_timeout: {ms(CONNECT_TIMEOUT)}
    request_timeout: 3s
    health_check:
      http: {{ path: /healthz }}
      interval: {ms(HC_INTERVAL)}
      timeout: {ms(HC_TIMEOUT)}
      healthy_threshold: {HC_HEALTHY}
      unhealthy_threshold: 2
    circuit_breaker: {{ consecutive_failures: 3, base_ejection: 1s, max_ejection: 2s }}
    retry: {{ attempts: {ATTEMPTS}, per_try_timeout: {ms(PER_TRY_TIMEOUT)}, backoff: 10ms, max_backoff: {ms(MAX_BACKOFF)} }}
"""


def sh(*args, check=True, timeout=15):
    args = [str(a) for a in args]
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"`{' '.join(args)}` exited {r.returncode}: {r.stderr.strip()}")
    return r


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(own_pid):
    """Namespaces (with the backends still running in them) and host-side veths of earlier runs
    whose pytest process is gone, or of this pid (a crashed run whose pid was reused)."""
    for line in sh("ip", "netns", "list").stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = NS_RE.fullmatch(name)
        if m and (int(m.group(1)) == own_pid or not alive(int(m.group(1)))):
            for pid in sh("ip", "netns", "pids", name, check=False).stdout.split():
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", name, check=False)
    for link in json.loads(sh("ip", "-j", "link", "show").stdout or "[]"):
        m = LINK_RE.fullmatch(link.get("ifname", ""))
        if m and (int(m.group(1)) == own_pid or not alive(int(m.group(1)))):
            sh("ip", "link", "del", link["ifname"], check=False)


def free_subnet(pid):
    """A 198.18.X.0/24 that no local address or route touches."""
    used = sh("ip", "-4", "addr").stdout + sh("ip", "-4", "route").stdout
    for k in range(250):
        x = (pid + k) % 250 + 1
        if f"198.18.{x}." not in used:
            return f"198.18.{x}"
    pytest.skip("no free 198.18.X.0/24 for the test network")


class Backend:
    """http_backend.py in namespace `ns`, reached from the root namespace over veth `host_if`."""

    def __init__(self, ns, host_if, ns_if, host_ip, ip):
        self.ns, self.host_if, self.ns_if, self.host_ip, self.ip = ns, host_if, ns_if, host_ip, ip
        self.endpoint = f"{ip}:{BACKEND_PORT}"
        self.proc = None
        self.ipt = None

    def iptables(self, *args, check=True):
        return sh("ip", "netns", "exec", self.ns, self.ipt, "-w", "5", *args, check=check)

    def rule(self, kind):
        """The partition rule (without -A/-D): only packets arriving over the veth, so the test
        can still read /__stats from inside the namespace (over lo) during the partition."""
        base = ["INPUT", "-i", self.ns_if, "-p", "tcp", "--dport", BACKEND_PORT]
        if kind == "drop":
            return base + ["-j", "DROP"]
        return base + ["-j", "REJECT", "--reject-with", "tcp-reset"]

    def cut(self, kind):
        self.iptables("-A", *self.rule(kind))

    def heal(self, kind):
        self.iptables("-D", *self.rule(kind))

    def syns(self):
        """Packets counted by the `tdm-syn` rule: SYNs (connection attempts) to the backend port."""
        out = self.iptables("-L", "INPUT", "-n", "-v", "-x").stdout
        for line in out.splitlines():
            if "tdm-syn" in line:
                return int(line.split()[0])
        raise AssertionError(f"no tdm-syn rule in {self.ns}: {out}")

    def stats_inside(self):
        """GET /__stats from inside the namespace (not subject to the partition rule)."""
        code = ("import sys, urllib.request; "
                "print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())")
        out = sh("ip", "netns", "exec", self.ns, sys.executable, "-c", code,
                 f"http://{self.endpoint}/__stats").stdout
        return json.loads(out)["requests"]

    def stats(self):
        """GET /__stats over the veth (only while not partitioned)."""
        return httpx.get(f"http://{self.endpoint}/__stats", timeout=2).json()["requests"]


@pytest.fixture
def partition_net(request):
    """Three namespaces tdm-PID-b1..b3, each with a veth to the root namespace, a backend on
    BACKEND_PORT and a counting rule for SYNs; removed at teardown, whatever happened."""
    if os.geteuid() != 0:
        pytest.skip("network partitions need root (network namespaces, veth pairs, iptables)")
    if not shutil.which("ip"):
        pytest.skip("`ip` (iproute2) is not installed")
    tools = [t for t in ("iptables", "iptables-legacy") if shutil.which(t)]
    if not tools:
        pytest.skip("iptables is not installed (scripts/test.sh installs it: apt-get install iptables)")
    pid = os.getpid()
    remove_leftovers(pid)
    net = free_subnet(pid)
    backends = []
    request.node._procs = []  # backend logs in a failing test's report (conftest's hook)
    try:
        for i in (1, 2, 3):
            ns = f"tdm-{pid}-b{i}"
            r = sh("ip", "netns", "add", ns, check=False)
            if r.returncode != 0:
                pytest.skip(f"`ip netns add` refused ({r.stderr.strip()}): no network namespaces here")
            b = Backend(ns, f"tdm{pid}h{i}", f"tdm{pid}n{i}", f"{net}.{4 * i - 3}", f"{net}.{4 * i - 2}")
            backends.append(b)
            sh("ip", "link", "add", b.host_if, "type", "veth", "peer", "name", b.ns_if, "netns", ns)
            sh("ip", "addr", "add", f"{b.host_ip}/30", "dev", b.host_if)
            sh("ip", "link", "set", b.host_if, "up")
            sh("ip", "-n", ns, "addr", "add", f"{b.ip}/30", "dev", b.ns_if)
            sh("ip", "-n", ns, "link", "set", b.ns_if, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            b.proc = Proc(["ip", "netns", "exec", ns, sys.executable, str(HERE / "backends" / "http_backend.py"),
                           str(BACKEND_PORT)], env=dict(os.environ, BACKEND_HOST=b.ip, BACKEND_NAME=f"b{i}"))
            request.node._procs.append(b.proc)
        pick_iptables(backends, tools)
        for b in backends:
            b.iptables("-A", "INPUT", "-i", b.ns_if, "-p", "tcp", "--dport", BACKEND_PORT, "--syn",
                       "-m", "comment", "--comment", "tdm-syn")
        yield backends
    finally:
        for b in backends:
            if b.proc is not None:
                b.proc.stop()
            # Deleting the namespace drops its rules; deleting one end of a veth deletes both.
            sh("ip", "link", "del", b.host_if, check=False)
            sh("ip", "netns", "del", b.ns, check=False)


def connect_result(endpoint, timeout=0.3):
    host, port = endpoint.rsplit(":", 1)
    s = socket.socket()
    s.settimeout(timeout)
    try:
        s.connect((host, int(port)))
        return "connected"
    except socket.timeout:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except OSError as e:
        return repr(e)
    finally:
        s.close()


def pick_iptables(backends, tools):
    """The first iptables variant whose DROP and tcp-reset rules take effect in a namespace
    (checked on backend 1 with a plain connect), set on every backend."""
    b = backends[0]
    tried = []
    for tool in tools:
        b.ipt = tool
        try:
            assert connect_result(b.endpoint) == "connected", f"{b.endpoint} not reachable before any rule"
            got = {}
            for kind in ("drop", "reset"):
                b.cut(kind)
                try:
                    got[kind] = connect_result(b.endpoint)
                finally:
                    b.heal(kind)
            if got == {"drop": "timeout", "reset": "refused"}:
                for x in backends:
                    x.ipt = tool
                print(f"\n[partition] using {tool} ({sh(tool, '--version').stdout.strip()})")
                return
            tried.append(f"{tool}: rules had no effect ({got})")
        except (RuntimeError, AssertionError) as e:
            tried.append(f"{tool}: {e}")
    pytest.fail("no working iptables in a network namespace: " + "; ".join(tried))


class Load:
    """WORKERS clients, each with its own keep-alive connection, each sending GET / at
    RATE_PER_WORKER per second until stopped; every request recorded as (start, end, ok, what)."""

    def __init__(self, url):
        self.url = url
        self.records = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(WORKERS)]
        for t in self.threads:
            t.start()

    def run(self):
        with httpx.Client(timeout=5) as c:
            nxt = time.monotonic()
            while not self.stopping.is_set():
                t0 = time.monotonic()
                try:
                    r = c.get(self.url)
                    ok = r.status_code == 200
                    what = "200" if ok else f"{r.status_code} {r.headers.get('tandem-error')}: {r.text.strip()}"
                except httpx.HTTPError as e:
                    ok, what = False, repr(e)
                with self.lock:
                    self.records.append((t0, time.monotonic(), ok, what))
                nxt = max(nxt + 1 / RATE_PER_WORKER, time.monotonic() - 1)
                self.stopping.wait(max(0.0, nxt - time.monotonic()))

    def between(self, a, b):
        with self.lock:
            return [r for r in self.records if a <= r[0] < b]

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(10)


class Monitor:
    """Samples Tandem's /metrics and /upstreams every 25 ms: (time, retries of upstream `app` by
    reason, failed health checks per endpoint, eligible per endpoint)."""

    def __init__(self, admin, endpoints):
        self.admin, self.endpoints = admin, endpoints
        self.samples = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def sample(self, c):
        text = c.get(f"{self.admin}/metrics").text
        retries, hc_fail = {}, {}
        for line in text.splitlines():
            if line.startswith("tandem_retries_total{") and 'upstream="app"' in line:
                reason = re.search(r'reason="([^"]+)"', line).group(1)
                retries[reason] = float(line.rsplit(" ", 1)[1])
            elif line.startswith("tandem_health_checks_total{") and 'result="fail"' in line:
                ep = re.search(r'endpoint="([^"]+)"', line).group(1)
                hc_fail[ep] = float(line.rsplit(" ", 1)[1])
        ups = c.get(f"{self.admin}/upstreams").json()
        eligible = {e["address"]: e for e in ups[0]["endpoints"]}
        return time.monotonic(), retries, hc_fail, eligible

    def run(self):
        with httpx.Client(timeout=2) as c:
            while not self.stopping.is_set():
                try:
                    s = self.sample(c)
                    with self.lock:
                        self.samples.append(s)
                except httpx.HTTPError:
                    pass
                self.stopping.wait(0.025)

    def now(self):
        with httpx.Client(timeout=2) as c:
            return self.sample(c)

    def between(self, a, b):
        with self.lock:
            return [s for s in self.samples if a <= s[0] < b]

    def stop(self):
        self.stopping.set()
        self.thread.join(5)


def poll(cond, timeout, what):
    """Polls every 10 ms; returns the time it took, fails after `timeout`."""
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < timeout:
        try:
            if cond():
                return time.monotonic() - t0
        except Exception as e:  # noqa: BLE001 - polling tolerates transient failures
            last = e
        time.sleep(0.01)
    raise AssertionError(f"{what} not within {timeout}s (last error: {last!r})")


def summary(records):
    lat = sorted(r[1] - r[0] for r in records)
    if not lat:
        return "no requests"
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000  # noqa: E731
    fails = [r[3] for r in records if not r[2]]
    return (f"{len(records)} requests, {len(fails)} failed, latency p50 {p(0.5):.1f} ms, "
            f"p99 {p(0.99):.1f} ms, max {lat[-1] * 1000:.1f} ms")


@pytest.mark.parametrize("kind, victim", [("drop", 0), ("reset", 1)], ids=["drop", "reset"])
def test_partition_moves_traffic_and_heals(kind, victim, partition_net, tandem):
    backends = partition_net
    b = backends[victim]
    port = free_port()
    t = tandem(config(port, [x.endpoint for x in backends]))
    mon = Monitor(t.admin, [x.endpoint for x in backends])
    load = Load(f"http://127.0.0.1:{port}/")
    try:
        # Warm up: every backend serves (pools hold keep-alive connections to each) and every
        # endpoint has passed its health checks.
        poll(lambda: all(x.stats() >= 10 for x in backends), 10, "every backend serving")
        poll(lambda: all(e["health"] == "healthy" for e in mon.now()[3].values()), 5, "every endpoint healthy")
        ups = mon.now()[3]
        assert all(e["eligible"] and e["breaker"] == "closed" for e in ups.values()), ups

        # --- partition ---------------------------------------------------------------------
        before = b.stats_inside()
        syn_start = b.syns()
        t0 = time.monotonic()
        b.cut(kind)
        print(f"\n[{kind}] {b.endpoint} ({b.ns}) cut off with "
              f"`{b.ipt} -A {' '.join(map(str, b.rule(kind)))}`")
        time.sleep(max(0.0, t0 + PARTITION_BOUND - time.monotonic()))
        settled = mon.now()
        syn_settled = b.syns()
        served_settled = b.stats_inside()
        time.sleep(max(0.0, t0 + PARTITION_SECONDS - time.monotonic()))
        end = mon.now()
        syn_end = b.syns()
        t_end = time.monotonic()
        during = b.stats_inside()

        # When Tandem took it out of rotation, and when the last client request tried it (each
        # try at the cut-off backend fails and is retried: the retry counters move).
        samples = mon.between(t0, t_end)
        t_out = next((s[0] - t0 for s in samples if not s[3][b.endpoint]["eligible"]), None)
        total = lambda s: sum(s[1].values())  # noqa: E731
        base = mon.between(0, t0)[-1]
        t_last_try, prev = None, total(base)
        for s in samples:
            if total(s) > prev:
                t_last_try = s[0] - t0
            prev = total(s)
        by_reason = {k: int(v - base[1].get(k, 0)) for k, v in end[1].items() if v - base[1].get(k, 0)}
        recs = load.between(t0, t_end)
        quiet = load.between(settled[0], end[0])
        quiet_retries = total(end) - total(settled)
        quiet_syns = syn_end - syn_settled
        quiet_probes = end[2].get(b.endpoint, 0) - settled[2].get(b.endpoint, 0)
        state = end[3][b.endpoint]
        print(f"[{kind}] clients during the {PARTITION_SECONDS:.0f} s partition: {summary(recs)}")
        print(f"[{kind}] out of rotation (eligible=false) after "
              f"{'never' if t_out is None else f'{t_out:.3f} s'}; last failed try at it "
              f"{'none' if t_last_try is None else f'{t_last_try:.3f} s'} after the cut; "
              f"retries {by_reason}; at the end: health={state['health']} breaker={state['breaker']} "
              f"reason={state.get('ejection_reason')}")
        print(f"[{kind}] from +{PARTITION_BOUND:.1f} s to +{PARTITION_SECONDS:.1f} s: {len(quiet)} requests, "
              f"{quiet_retries:.0f} retries; {quiet_syns} SYNs reached its namespace, "
              f"{quiet_probes:.0f} health probes failed; SYNs in all: {syn_end - syn_start}; "
              f"requests it served: {during - served_settled} (and {served_settled - before} between reading "
              f"its counter before the cut and +{PARTITION_BOUND:.1f} s, the cut's own latency included)")

        fails = [r[3] for r in recs if not r[2]]
        assert not fails, f"{len(fails)} client requests failed during the partition: {fails[:5]}"
        slowest = max(r[1] - r[0] for r in recs)
        assert slowest <= LATENCY_BOUND, f"a request took {slowest:.3f} s (bound {LATENCY_BOUND:.2f} s)"
        assert during == served_settled, "requests reached the cut-off backend: the partition leaks"
        if kind == "drop":
            # New connections into the black hole end at the connect timeout (200 ms), before the
            # per-try timeout (400 ms) would: counted as connect_failed, not timeout.
            assert by_reason.get("connect_failed", 0) >= 1, f"no connect ended at the connect timeout: {by_reason}"
        else:
            # Refused and reset tries fail at once: none may wait for a timeout.
            assert "timeout" not in by_reason, f"tries at a resetting backend timed out: {by_reason}"
        assert t_out is not None and t_out <= PARTITION_BOUND, f"still eligible after {t_out} s: {state}"
        assert t_last_try is not None, "no try ever went to the cut-off backend: the test proved nothing"
        assert t_last_try <= PARTITION_BOUND, f"tries at the cut-off backend until +{t_last_try:.3f} s"
        assert len(quiet) >= 50, f"only {len(quiet)} requests in the settled window: the load did not run"
        assert quiet_retries == 0, f"{quiet_retries} retries after +{PARTITION_BOUND} s"
        # Every probe opens one connection (one SYN; it gives up before SYN retransmission);
        # a probe straddling either end of the window can count on one side only.
        assert quiet_syns <= quiet_probes + 1, (
            f"{quiet_syns} SYNs but {quiet_probes} failed probes: requests still try to connect")
        assert not state["eligible"], state

        # --- heal ---------------------------------------------------------------------------
        t_heal = time.monotonic()
        b.heal(kind)
        t_back = poll(lambda: b.stats() > during, 5, "a request reaching the healed backend")
        poll(lambda: (lambda e: e["eligible"] and e["breaker"] == "closed")(mon.now()[3][b.endpoint]),
             5, "healed endpoint eligible with its breaker closed")
        t_rot = time.monotonic() - t_heal
        counts0 = [x.stats() for x in backends]
        ta = time.monotonic()
        time.sleep(1.0)
        counts1 = [x.stats() for x in backends]
        tb = time.monotonic()
        served = [c1 - c0 for c0, c1 in zip(counts0, counts1)]
        share = served[victim] / max(1, sum(served))
        after = load.between(t_heal, tb)
        print(f"[{kind}] healed: first request reached it {t_back:.3f} s after the rule went "
              f"(eligible, breaker closed by {t_rot:.3f} s); in the next {tb - ta:.1f} s the three "
              f"backends served {served} (its share {share:.2f}); clients since the heal: {summary(after)}")
        assert t_back <= HEAL_BOUND, f"traffic came back after {t_back:.3f} s (bound {HEAL_BOUND} s)"
        assert 0.28 <= share <= 0.39, f"round robin share of the healed backend {share:.2f}: {served}"
        fails = [r[3] for r in after if not r[2]]
        assert not fails, f"{len(fails)} client requests failed after the heal: {fails[:5]}"
    finally:
        load.stop()
        mon.stop()
    every = load.records
    print(f"[{kind}] whole run: {summary(every)}")
    assert all(r[2] for r in every), [r[3] for r in every if not r[2]][:5]
