"""Service discovery and registration through the real binary, against a real etcd (Debian's
`etcd-server`, `etcdctl` from `etcd-client`; scripts/test.sh installs them) and a real DNS server
(tests/e2e/backends/dns_server.py, dnslib) on loopback.

Shape of most tests: "app" sidecars (an inbound listener in front of an HTTP backend, registered in
etcd as service `orders` under a short lease) and one "peer" sidecar whose outbound listener routes
to upstream `orders` discovered from etcd. Requests go through the peer; the backend's name in
`/echo` says which instance answered.

Proves: registration -> the peer sees the endpoint within 1 s and traffic flows; SIGKILL -> the
instance is gone within TTL + 1 s and no longer picked; SIGTERM -> withdrawn before the listener
closes, no failed request at the peer; etcd down -> the last endpoints keep serving (and
/upstreams says so), registration restored when etcd is back; a 3-member cluster survives its
leader's death; DNS A and SRV answers that change during the test; an endpoint file replaced by
rename; `tandem services` lists the registry."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import HERE, TANDEM_BIN, Proc, free_port, metric, run, wait_for

ETCD = shutil.which("etcd")
ETCDCTL = shutil.which("etcdctl")
pytestmark = pytest.mark.skipif(
    not ETCD or not ETCDCTL, reason="etcd/etcdctl not installed (apt-get install etcd-server etcd-client)"
)

TTL = 2  # seconds: the registrations' lease TTL


class Etcd:
    """One etcd member (or a member of a cluster) on loopback, with its own data dir."""

    def __init__(self, name, client_port, peer_port, cluster, state="new", data_dir=None):
        self.name = name
        self.client_port = client_port
        self.peer_port = peer_port
        self.cluster = cluster
        self.state = state
        self.dir = data_dir or Path(tempfile.mkdtemp(prefix=f"etcd-{name}-"))
        self.log = open(self.dir.parent / f"{self.dir.name}.log", "a+")
        self.p = None
        self.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.client_port}"

    def start(self):
        self.p = subprocess.Popen(
            [
                ETCD,
                "--name", self.name,
                "--data-dir", str(self.dir),
                "--listen-client-urls", self.url,
                "--advertise-client-urls", self.url,
                "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_port}",
                "--initial-cluster", self.cluster,
                "--initial-cluster-state", self.state,
                "--heartbeat-interval", "50",
                "--election-timeout", "500",
            ],
            stdout=self.log,
            stderr=self.log,
        )

    def kill(self):
        if self.p and self.p.poll() is None:
            self.p.kill()
            self.p.wait(5)

    def cleanup(self):
        self.kill()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def etcdctl(endpoints, *args, timeout=10):
    env = dict(os.environ, ETCDCTL_API="3")
    return subprocess.run(
        [ETCDCTL, "--endpoints", ",".join(endpoints), "--dial-timeout", "2s", *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )


def wait_healthy(endpoints, timeout=15):
    wait_for(lambda: etcdctl(endpoints, "endpoint", "health").returncode == 0, timeout, "etcd healthy")


@pytest.fixture
def etcd_cluster():
    """etcd_cluster(n) -> list of running members, healthy."""
    made = []

    def start(n=1):
        ports = [(free_port(), free_port()) for _ in range(n)]
        cluster = ",".join(f"m{i}=http://127.0.0.1:{p}" for i, (_, p) in enumerate(ports))
        members = [Etcd(f"m{i}", c, p, cluster) for i, (c, p) in enumerate(ports)]
        made.extend(members)
        wait_healthy([m.url for m in members])
        return members

    yield start
    for m in made:
        m.cleanup()


def etcd_section(members):
    urls = ", ".join(m.url for m in members)
    return f"etcd: {{ endpoints: [{urls}], timeout: 1s }}\n"


def app_sidecar(tandem, start_backend, members, name):
    """A backend named `name` behind a sidecar registered as an instance of `orders`."""
    bport = free_port()
    start_backend("http_backend.py", bport, {"BACKEND_NAME": name})
    port = free_port()
    t = tandem(
        etcd_section(members)
        + f"""
drain_timeout: 5s
listeners:
  inbound: {{ address: 127.0.0.1:{port}, upstream: app }}
upstreams:
  app: {{ endpoints: [127.0.0.1:{bport}] }}
registration:
  service: orders
  ttl: {TTL}s
  zone: z1
  metadata: {{ name: {name} }}
"""
    )
    t.inbound = f"127.0.0.1:{port}"
    t.name = name
    return t


def peer_sidecar(tandem, members, extra=""):
    port = free_port()
    t = tandem(
        etcd_section(members)
        + f"""
listeners:
  outbound: {{ address: 127.0.0.1:{port}, direction: outbound, upstream: orders }}
upstreams:
  orders:
    discovery: {{ etcd: {{ service: orders }} }}
    connect_timeout: 300ms
    balancer: round_robin   # every instance gets its turn: the tests count who answers
{extra}"""
    )
    t.url = f"http://127.0.0.1:{port}"
    return t


def endpoints_of(t, upstream="orders", client=httpx):
    ups = client.get(f"{t.admin}/upstreams", timeout=2).json()
    u = next(u for u in ups if u["name"] == upstream)
    return u


def addresses(t, upstream="orders", client=httpx):
    """`client`: an httpx.Client to reuse one connection (a new one per call costs ~20 ms, far
    more under load: it builds a TLS context); by default a new one."""
    return sorted(e["address"] for e in endpoints_of(t, upstream, client)["endpoints"])


def who(url, client=httpx):
    r = client.get(f"{url}/echo", timeout=5)
    return r.status_code, (r.json()["server"] if r.status_code == 200 else r.headers.get("tandem-error"))


def test_register_then_a_peer_routes_to_it_within_a_second(tandem, start_backend, etcd_cluster):
    """A registered app is visible to a peer within 1 s of its readiness, and traffic flows."""
    members = etcd_cluster(1)
    peer = peer_sidecar(tandem, members)
    assert addresses(peer) == []
    assert who(peer.url) == (503, "no_endpoints")

    t0 = time.monotonic()
    a = app_sidecar(tandem, start_backend, members, "a")
    ready_at = time.monotonic()
    wait_for(lambda: addresses(peer) == [a.inbound], 5, "peer sees a")
    seen = time.monotonic() - ready_at
    print(f"registration visible at the peer {seen * 1000:.0f} ms after /ready ({(time.monotonic() - t0):.2f}s from start)")
    assert seen < 1.0
    assert who(peer.url) == (200, "a")

    # The registry holds what the data model documents, readable with etcdctl.
    out = etcdctl([m.url for m in members], "get", "--prefix", "/tandem/services/orders/")
    key, value = out.stdout.split("\n")[:2]
    assert key == f"/tandem/services/orders/{a.inbound}"
    assert json.loads(value) == {"address": a.inbound, "weight": 1, "zone": "z1", "metadata": {"name": "a"}}

    # /upstreams names the source; the metrics count the endpoints.
    d = endpoints_of(peer)["discovery"]
    assert d["source"] == "etcd" and d["error"] is None and d["target"] == "/tandem/services/orders/"
    # A quiet but open watch is current: the age stays small (it grows only when the source fails).
    time.sleep(2.5)
    assert endpoints_of(peer)["discovery"]["last_update_age_seconds"] < 1.5
    text = httpx.get(f"{peer.admin}/metrics").text
    assert metric(text, "tandem_discovery_endpoints", upstream="orders", source="etcd") == 1
    text = httpx.get(f"{a.admin}/metrics").text
    assert metric(text, "tandem_registration_registered", service="orders") == 1

    # A hand-written instance (etcdctl, no lease) joins too, and leaves when deleted.
    other = free_port()
    etcdctl([m.url for m in members], "put", "/tandem/services/orders/manual", f"127.0.0.1:{other}")
    wait_for(lambda: len(addresses(peer)) == 2, 2, "manual instance seen")
    etcdctl([m.url for m in members], "del", "/tandem/services/orders/manual")
    wait_for(lambda: addresses(peer) == [a.inbound], 2, "manual instance gone")


def test_sigkill_instance_leaves_after_ttl(tandem, start_backend, etcd_cluster):
    """A killed instance's lease expires: it is gone from the peer within TTL + 1 s and no
    request goes to it after that."""
    members = etcd_cluster(1)
    a = app_sidecar(tandem, start_backend, members, "a")
    b = app_sidecar(tandem, start_backend, members, "b")
    peer = peer_sidecar(tandem, members)
    wait_for(lambda: addresses(peer) == sorted([a.inbound, b.inbound]), 3, "both seen")
    names = {who(peer.url)[1] for _ in range(40)}
    assert names == {"a", "b"}

    # One kept-alive client for the polls: a new client per poll costs ~20 ms, up to ~1 s on a
    # loaded machine, which would blur when the removal was seen.
    with httpx.Client() as c:
        addresses(peer, client=c)
        a.kill()
        killed = time.monotonic()
        wait_for(lambda: addresses(peer, client=c) == [b.inbound], TTL + 3, "a removed")
        gone = time.monotonic() - killed
        print(f"killed instance removed after {gone:.2f}s (TTL {TTL}s)")
        assert gone <= TTL + 1.0
        for _ in range(40):
            assert who(peer.url, client=c) == (200, "b")


def test_registration_is_kept_alive_past_its_ttl(tandem, start_backend, etcd_cluster):
    """A live instance keeps its registration: over several TTLs the key stays under the same
    lease, the peer never loses it, and no lease is lost. (Keep-alive streams used to open
    empty and time out, as etcd answers a stream's headers only with its first response: each
    lease expired after its TTL and was replaced, and peers briefly lost the instance.)"""
    members = etcd_cluster(1)
    urls = [m.url for m in members]
    a = app_sidecar(tandem, start_backend, members, "a")
    peer = peer_sidecar(tandem, members)
    wait_for(lambda: addresses(peer) == [a.inbound], 3, "peer sees a")

    def lease():
        out = etcdctl(urls, "get", f"/tandem/services/orders/{a.inbound}", "-w", "json")
        kvs = json.loads(out.stdout).get("kvs", [])
        return kvs[0].get("lease") if kvs else None

    first = lease()
    assert first
    seen = set()
    until = time.monotonic() + 3 * TTL
    while time.monotonic() < until:
        seen.add(tuple(addresses(peer)))
        time.sleep(0.05)
    assert seen == {(a.inbound,)}
    assert lease() == first
    text = httpx.get(f"{a.admin}/metrics").text
    assert metric(text, "tandem_registration_lease_lost_total", service="orders") == 0
    assert "registration lost" not in a.log()


def test_sigterm_withdraws_before_closing_without_failed_requests(tandem, start_backend, etcd_cluster):
    """SIGTERM: the registration is withdrawn first, the peer stops sending, then the listener
    closes; continuous traffic through the peer sees no failure."""
    members = etcd_cluster(1)
    a = app_sidecar(tandem, start_backend, members, "a")
    b = app_sidecar(tandem, start_backend, members, "b")
    # No retries: a request sent to a closing listener would fail visibly.
    peer = peer_sidecar(tandem, members, "    retry: { attempts: 1 }\n")
    wait_for(lambda: addresses(peer) == sorted([a.inbound, b.inbound]), 3, "both seen")

    failures, served, stop = [], {"a": 0, "b": 0}, threading.Event()

    def client():
        with httpx.Client(timeout=5) as c:
            while not stop.is_set():
                try:
                    r = c.get(f"{peer.url}/echo")
                    if r.status_code == 200:
                        served[r.json()["server"]] += 1
                    else:
                        failures.append(r.status_code)
                except httpx.HTTPError as e:
                    failures.append(repr(e))

    workers = [threading.Thread(target=client) for _ in range(4)]
    for w in workers:
        w.start()
    time.sleep(0.5)
    a.signal(signal.SIGTERM)
    assert a.wait(10) == 0
    time.sleep(0.5)
    stop.set()
    for w in workers:
        w.join()
    print(f"served {served}, failures {failures[:5]} ({len(failures)})")
    assert failures == []
    assert served["a"] > 0 and served["b"] > 0
    assert addresses(peer) == [b.inbound]
    log = a.log()
    assert log.index("registration withdrawn") < log.index("drained")


def test_etcd_down_keeps_the_last_endpoints_and_registration_returns(tandem, start_backend, etcd_cluster):
    """With etcd gone the peer keeps routing to the last known endpoints (and says the source
    fails); once etcd is back the app is registered again and the peer's watch resumes."""
    members = etcd_cluster(1)
    m = members[0]
    a = app_sidecar(tandem, start_backend, members, "a")
    peer = peer_sidecar(tandem, members)
    wait_for(lambda: addresses(peer) == [a.inbound], 3, "a seen")

    m.kill()
    time.sleep(TTL + 1)
    for _ in range(20):
        assert who(peer.url) == (200, "a")
    wait_for(lambda: endpoints_of(peer)["discovery"]["error"] is not None, 5, "source error shown")
    d = endpoints_of(peer)["discovery"]
    assert d["last_update_age_seconds"] >= TTL
    text = httpx.get(f"{peer.admin}/metrics").text
    assert metric(text, "tandem_discovery_errors_total", upstream="orders", source="etcd") >= 1
    assert metric(text, "tandem_discovery_snapshot_age_seconds", upstream="orders", source="etcd") >= 1

    # Down longer than the TTL: when etcd is back the old lease has expired (etcd restores a
    # lease with a fresh TTL, so the instance stays registered or is registered again).
    down_for = 2 * TTL
    time.sleep(down_for)
    m.start()
    wait_healthy([m.url])
    back = time.monotonic()
    wait_for(lambda: endpoints_of(peer)["discovery"]["error"] is None, 10, "source healthy again")
    wait_for(lambda: etcdctl([m.url], "get", "--prefix", "/tandem/services/orders/", "--keys-only").stdout.strip()
             == f"/tandem/services/orders/{a.inbound}", 10, "registered again")
    # Stays registered past a TTL (the keep-alive runs on the new or restored lease).
    time.sleep(TTL + 1)
    assert addresses(peer) == [a.inbound]
    text = httpx.get(f"{a.admin}/metrics").text
    assert metric(text, "tandem_registration_registered", service="orders") == 1
    assert metric(text, "tandem_registration_lease_lost_total", service="orders") >= 1
    assert who(peer.url) == (200, "a")
    print(f"registration and watch back {time.monotonic() - back:.2f}s after etcd")


def test_three_member_cluster_survives_leader_death(tandem, start_backend, etcd_cluster):
    """Killing the etcd leader: the registration's keep-alive and the peer's watch move to the
    other members; a new instance registered after the kill is still seen."""
    members = etcd_cluster(3)
    urls = [m.url for m in members]
    a = app_sidecar(tandem, start_backend, members, "a")
    peer = peer_sidecar(tandem, members)
    wait_for(lambda: addresses(peer) == [a.inbound], 3, "a seen")

    found = []

    def leader_known():
        # Every member answers and agrees on one leader; matched to a member by its endpoint.
        status = json.loads(etcdctl(urls, "endpoint", "status", "-w", "json").stdout)
        leaders = {s["Status"]["leader"] for s in status}
        if len(status) != 3 or len(leaders) != 1 or 0 in leaders:
            return False
        (lid,) = leaders
        found[:] = [m for m in members for s in status
                    if s["Endpoint"] == m.url and s["Status"]["header"]["member_id"] == lid]
        return len(found) == 1

    wait_for(leader_known, 10, "a leader all members agree on")
    leader = found[0]
    leader.kill()
    alive = [m.url for m in members if m is not leader]
    wait_healthy(alive)
    # Past several TTLs the registration is alive (keep-alives reach the new leader).
    time.sleep(2 * TTL + 1)
    assert addresses(peer) == [a.inbound]
    out = etcdctl(alive, "get", "--prefix", "/tandem/services/orders/", "--keys-only").stdout.strip()
    assert out == f"/tandem/services/orders/{a.inbound}"
    # The peer's watch still delivers.
    b = app_sidecar(tandem, start_backend, members, "b")
    wait_for(lambda: addresses(peer) == sorted([a.inbound, b.inbound]), 3, "b seen after the leader died")
    assert {who(peer.url)[1] for _ in range(40)} == {"a", "b"}


def test_tandem_services_lists_the_registry(tandem, start_backend, etcd_cluster):
    """`tandem services` prints what the registry holds, as a table or JSON."""
    members = etcd_cluster(1)
    a = app_sidecar(tandem, start_backend, members, "a")
    cfg = a.dir / "tandem.yaml"
    wait_for(lambda: etcdctl([m.url for m in members], "get", "--prefix", "/tandem/services/", "--keys-only").stdout.strip() != "",
             3, "registered")
    out = run([TANDEM_BIN, "services", "-c", str(cfg)])
    assert out.returncode == 0, out.stderr
    assert "orders" in out.stdout and a.inbound in out.stdout and "z1" in out.stdout
    out = run([TANDEM_BIN, "services", "-c", str(cfg), "orders", "--json"])
    listed = json.loads(out.stdout)
    assert listed[0]["address"] == a.inbound and listed[0]["metadata"] == {"name": "a"} and listed[0]["lease"] > 0
    assert json.loads(run([TANDEM_BIN, "services", "-c", str(cfg), "nothing", "--json"]).stdout) == []


# === DNS and file sources ===


def test_dns_a_and_srv_records_that_change(tandem, start_backend, tmp_path):
    """A records (with the configured port) and SRV records (host, port, weight) from a DNS
    server under test control; changed answers are used after their TTL; a failing server
    leaves the last set in place."""
    zone = tmp_path / "zone.json"

    def set_zone(records):
        tmp = tmp_path / "zone.tmp"
        tmp.write_text(json.dumps(records))
        tmp.rename(zone)

    set_zone({})
    dport = free_port()
    dns_proc = Proc([sys.executable, str(HERE / "backends" / "dns_server.py"), dport, zone])
    try:
        ports = {}
        for name in ("x", "y", "z"):
            ports[name] = free_port()
            start_backend("http_backend.py", ports[name], {"BACKEND_NAME": name})
        # A records carry only the IP: A-record endpoints use the configured port (x's).
        set_zone({
            "orders.test.": [{"type": "A", "value": "127.0.0.1", "ttl": 1}],
            "_http._tcp.orders.test.": [
                {"type": "SRV", "target": "127.0.0.1.", "port": ports["y"], "weight": 3, "ttl": 1},
            ],
        })
        port, srv_port = free_port(), free_port()
        t = tandem(f"""
listeners:
  a: {{ address: 127.0.0.1:{port}, direction: outbound, upstream: by_a }}
  srv: {{ address: 127.0.0.1:{srv_port}, direction: outbound, upstream: by_srv }}
upstreams:
  by_a:
    discovery: {{ dns: {{ name: orders.test, record: a, port: {ports['x']}, nameserver: 127.0.0.1:{dport}, min_ttl: 200ms, max_ttl: 2s }} }}
  by_srv:
    discovery: {{ dns: {{ name: _http._tcp.orders.test, record: srv, nameserver: 127.0.0.1:{dport}, min_ttl: 200ms, max_ttl: 2s }} }}
""")
        wait_for(lambda: addresses(t, "by_a") == [f"127.0.0.1:{ports['x']}"], 5, "A record used")
        assert who(f"http://127.0.0.1:{port}") == (200, "x")
        wait_for(lambda: addresses(t, "by_srv") == [f"127.0.0.1:{ports['y']}"], 5, "SRV record used")
        e = endpoints_of(t, "by_srv")["endpoints"][0]
        assert e["weight"] == 3
        assert who(f"http://127.0.0.1:{srv_port}") == (200, "y")

        # The SRV answer changes: y leaves, z joins with its own port; within TTL (1s) + slack.
        set_zone({
            "orders.test.": [{"type": "A", "value": "127.0.0.1", "ttl": 1}],
            "_http._tcp.orders.test.": [
                {"type": "SRV", "target": "127.0.0.1.", "port": ports["z"], "weight": 1, "ttl": 1},
            ],
        })
        changed = time.monotonic()
        wait_for(lambda: addresses(t, "by_srv") == [f"127.0.0.1:{ports['z']}"], 4, "SRV change used")
        print(f"SRV change used after {time.monotonic() - changed:.2f}s (TTL 1s)")
        assert who(f"http://127.0.0.1:{srv_port}") == (200, "z")

        # The name vanishes (NXDOMAIN): the last set keeps serving, the error is shown.
        set_zone({})
        wait_for(lambda: endpoints_of(t, "by_srv")["discovery"]["error"] is not None, 4, "DNS error shown")
        assert addresses(t, "by_srv") == [f"127.0.0.1:{ports['z']}"]
        assert who(f"http://127.0.0.1:{srv_port}") == (200, "z")
    finally:
        dns_proc.stop()


def test_endpoint_file_replaced_by_rename(tandem, start_backend, tmp_path):
    """A file source: replacing the file (rename) moves traffic; a broken file keeps the last
    set; connections to an endpoint that stays are kept across the change."""
    ports = {}
    for name in ("x", "y"):
        ports[name] = free_port()
        start_backend("http_backend.py", ports[name], {"BACKEND_NAME": name})
    f = tmp_path / "orders.yaml"

    def write(text):
        tmp = tmp_path / "orders.tmp"
        tmp.write_text(text)
        tmp.rename(f)

    write(f"- 127.0.0.1:{ports['x']}\n")
    port = free_port()
    t = tandem(f"""
listeners:
  out: {{ address: 127.0.0.1:{port}, direction: outbound, upstream: orders }}
upstreams:
  orders:
    discovery: {{ file: {{ path: {f}, interval: 100ms }} }}
    balancer: round_robin
""")
    url = f"http://127.0.0.1:{port}"
    assert who(url) == (200, "x")
    before = endpoints_of(t)["endpoints"][0]
    assert before["idle_connections"] >= 1

    write(json.dumps({"endpoints": [f"127.0.0.1:{ports['x']}", {"address": f"127.0.0.1:{ports['y']}", "weight": 2}]}))
    wait_for(lambda: len(addresses(t)) == 2, 3, "y joined")
    x = next(e for e in endpoints_of(t)["endpoints"] if e["address"].endswith(str(ports["x"])))
    assert x["idle_connections"] >= 1, "the pooled connection to x survived the change"
    assert {who(url)[1] for _ in range(40)} == {"x", "y"}

    write("- [not yaml")
    wait_for(lambda: endpoints_of(t)["discovery"]["error"] is not None, 3, "file error shown")
    assert len(addresses(t)) == 2

    write(f"- 127.0.0.1:{ports['y']}\n")
    wait_for(lambda: addresses(t) == [f"127.0.0.1:{ports['y']}"], 3, "x left")
    for _ in range(20):
        assert who(url) == (200, "y")
    # The endpoint that left took its series with it (no health checks here: one per endpoint).
    text = httpx.get(f"{t.admin}/metrics").text
    assert metric(text, "tandem_endpoint_ejected", upstream="orders", endpoint=f"127.0.0.1:{ports['x']}") is None
    assert metric(text, "tandem_endpoint_ejected", upstream="orders", endpoint=f"127.0.0.1:{ports['y']}") == 0
    assert metric(text, "tandem_endpoint_healthy", upstream="orders", endpoint=f"127.0.0.1:{ports['y']}") is None


def test_zone_preference(tandem, start_backend, tmp_path):
    """`prefer_zone`: traffic stays in the local zone while it has an eligible endpoint, and
    moves to the other zone when the local one dies, without failed requests."""
    procs, ports = {}, {}
    for name in ("x", "y"):
        ports[name] = free_port()
        procs[name] = start_backend("http_backend.py", ports[name], {"BACKEND_NAME": name})
    f = tmp_path / "orders.yaml"
    f.write_text(f"- {{ address: 127.0.0.1:{ports['x']}, zone: a }}\n- {{ address: 127.0.0.1:{ports['y']}, zone: b }}\n")
    port = free_port()
    t = tandem(f"""
listeners:
  out: {{ address: 127.0.0.1:{port}, direction: outbound, upstream: orders }}
upstreams:
  orders:
    discovery: {{ file: {{ path: {f}, interval: 100ms }} }}
    prefer_zone: {{ zone: a }}
""")
    url = f"http://127.0.0.1:{port}"
    assert {who(url)[1] for _ in range(40)} == {"x"}
    zones = {e["address"]: e.get("zone") for e in endpoints_of(t)["endpoints"]}
    assert zones == {f"127.0.0.1:{ports['x']}": "a", f"127.0.0.1:{ports['y']}": "b"}
    procs["x"].p.kill()  # the fixture's teardown still cleans up after it
    procs["x"].p.wait(5)
    answers = [who(url) for _ in range(40)]
    assert answers == [(200, "y")] * 40


def make_certs(d):
    """A CA, an etcd server certificate for 127.0.0.1 and a client certificate (openssl CLI)."""
    def ossl(*args):
        r = run(["openssl", *map(str, args)])
        assert r.returncode == 0, r.stderr

    ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
         "-subj", "/CN=test etcd CA", "-keyout", d / "ca.key", "-out", d / "ca.pem")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
                      ("client", "extendedKeyUsage=clientAuth")):
        (d / f"{name}.ext").write_text(ext + "\n")
        ossl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}",
             "-keyout", d / f"{name}.key", "-out", d / f"{name}.csr")
        ossl("x509", "-req", "-in", d / f"{name}.csr", "-CA", d / "ca.pem", "-CAkey", d / "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", d / f"{name}.ext", "-out", d / f"{name}.pem")


def test_etcd_over_tls_with_client_certificates(tandem, start_backend, tmp_path):
    """etcd with TLS and client-certificate authentication: registration and discovery work over
    https with `etcd.tls`; a missing TLS file stops the start with the path named."""
    if not shutil.which("openssl"):
        pytest.skip("openssl CLI not installed")
    make_certs(tmp_path)
    cport, pport = free_port(), free_port()
    url = f"https://127.0.0.1:{cport}"
    log = open(tmp_path / "etcd.log", "w")
    etcd = subprocess.Popen([
        ETCD, "--name", "t", "--data-dir", str(tmp_path / "data"),
        "--listen-client-urls", url, "--advertise-client-urls", url,
        "--cert-file", str(tmp_path / "server.pem"), "--key-file", str(tmp_path / "server.key"),
        "--client-cert-auth", "--trusted-ca-file", str(tmp_path / "ca.pem"),
        "--listen-peer-urls", f"http://127.0.0.1:{pport}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
        "--initial-cluster", f"t=http://127.0.0.1:{pport}",
    ], stdout=log, stderr=log)
    tls_args = ["--cacert", tmp_path / "ca.pem", "--cert", tmp_path / "client.pem", "--key", tmp_path / "client.key"]
    try:
        wait_for(lambda: etcdctl([url], *map(str, tls_args), "endpoint", "health").returncode == 0, 15, "etcd (TLS) healthy")
        section = (f"etcd: {{ endpoints: [{url}], timeout: 1s, tls: {{ ca: {tmp_path / 'ca.pem'}, "
                   f"cert: {tmp_path / 'client.pem'}, key: {tmp_path / 'client.key'} }} }}\n")

        bport = free_port()
        start_backend("http_backend.py", bport, {"BACKEND_NAME": "a"})
        port = free_port()
        tandem(section + f"""
listeners:
  inbound: {{ address: 127.0.0.1:{port}, upstream: app }}
upstreams:
  app: {{ endpoints: [127.0.0.1:{bport}] }}
registration: {{ service: orders, ttl: 2s }}
""")
        pport2 = free_port()
        peer = tandem(section + f"""
listeners:
  out: {{ address: 127.0.0.1:{pport2}, direction: outbound, upstream: orders }}
upstreams:
  orders: {{ discovery: {{ etcd: {{ service: orders }} }} }}
""")
        wait_for(lambda: addresses(peer) == [f"127.0.0.1:{port}"], 5, "registered and discovered over TLS")
        assert who(f"http://127.0.0.1:{pport2}") == (200, "a")
        out = etcdctl([url], *map(str, tls_args), "get", "--prefix", "/tandem/services/orders/", "--keys-only")
        assert out.stdout.strip() == f"/tandem/services/orders/127.0.0.1:{port}"

        bad = tandem(section.replace("client.key", "missing.key") + f"""
listeners:
  out: {{ address: 127.0.0.1:{free_port()}, direction: outbound, upstream: orders }}
upstreams:
  orders: {{ discovery: {{ etcd: {{ service: orders }} }} }}
""", wait_ready=False)
        assert bad.wait(10) == 1
        assert "missing.key" in bad.log()
    finally:
        etcd.kill()
        etcd.wait(5)
        log.close()


def test_etcd_with_authentication(tandem, start_backend, etcd_cluster):
    """etcd with authentication on: a user with a role on the registry prefix registers and
    discovers with `username` and `password_env`; a wrong password leaves the registration
    retrying (and the peer's source failing) instead of crashing."""
    members = etcd_cluster(1)
    urls = [m.url for m in members]
    for args in (["user", "add", "root:rootpw"], ["user", "add", "tandem:s3cret"], ["role", "add", "registry"],
                 ["role", "grant-permission", "registry", "--prefix=true", "readwrite", "/tandem/services/"],
                 ["user", "grant-role", "tandem", "registry"], ["auth", "enable"]):
        r = etcdctl(urls, *args)  # auth is enabled last: no credentials needed until then
        assert r.returncode == 0, (args, r.stderr)
    section = f"etcd: {{ endpoints: [{urls[0]}], timeout: 1s, username: tandem, password_env: ETCD_PW }}\n"
    bport, port, oport = free_port(), free_port(), free_port()
    start_backend("http_backend.py", bport, {"BACKEND_NAME": "a"})
    tandem(section + f"""
listeners:
  inbound: {{ address: 127.0.0.1:{port}, upstream: app }}
upstreams:
  app: {{ endpoints: [127.0.0.1:{bport}] }}
registration: {{ service: orders, ttl: 2s }}
""", env={"ETCD_PW": "s3cret"})
    peer_config = section + f"""
listeners:
  out: {{ address: 127.0.0.1:{oport}, direction: outbound, upstream: orders }}
upstreams:
  orders: {{ discovery: {{ etcd: {{ service: orders }} }} }}
"""
    peer = tandem(peer_config, env={"ETCD_PW": "s3cret"})
    wait_for(lambda: addresses(peer) == [f"127.0.0.1:{port}"], 5, "registered and discovered with auth")
    assert who(f"http://127.0.0.1:{oport}") == (200, "a")

    wrong = tandem(peer_config.replace(str(oport), str(free_port())), env={"ETCD_PW": "nope"})
    wait_for(lambda: (endpoints_of(wrong)["discovery"]["error"] or "").find("auth") >= 0, 5, "auth failure shown")
    assert addresses(wrong) == []


def test_registration_waits_for_the_supervised_app(tandem, etcd_cluster):
    """With a supervised app, the instance is registered only once the app accepts connections
    (its readiness), not when the listeners are bound."""
    members = etcd_cluster(1)
    urls = [m.url for m in members]
    bport, port = free_port(), free_port()
    delay = 1.5
    app = ["sh", "-c", f"sleep {delay}; exec {sys.executable} {HERE / 'backends' / 'http_backend.py'} {bport}"]
    t = tandem(etcd_section(members) + f"""
app: {{ upstream: app }}
listeners:
  inbound: {{ address: 127.0.0.1:{port}, upstream: app }}
upstreams:
  app: {{ endpoints: [127.0.0.1:{bport}] }}
registration: {{ service: orders, ttl: 2s }}
""", args=["--", *app], wait_ready=False)
    started = time.monotonic()

    def keys():
        return etcdctl(urls, "get", "--prefix", "/tandem/services/orders/", "--keys-only").stdout.split()

    wait_for(lambda: httpx.get(f"{t.admin}/live", timeout=1).status_code == 200, 5, "tandem serving")
    assert httpx.get(f"{t.admin}/ready", timeout=1).status_code == 503
    assert keys() == []
    wait_for(lambda: keys() != [], delay + 5, "registered")
    at = time.monotonic() - started
    print(f"registered {at:.2f}s after start (app listening after {delay}s)")
    assert at >= delay
    # By the time peers can see it, the app answers.
    assert httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200


def etcd_revision(url):
    out = etcdctl([url], "get", "/", "-w", "json")
    assert out.returncode == 0, out.stderr
    return int(json.loads(out.stdout)["header"]["revision"])


def test_quiet_watch_is_not_cut_by_etcd_ping_policy(tandem, start_backend, etcd_cluster):
    """A watch on a service that does not change stays open: the client's HTTP/2 pings respect
    etcd's keep-alive policy (no GOAWAY `too_many_pings`, which cut every quiet watch about every
    8 s and made the source list the whole service again each time)."""
    members = etcd_cluster(1)
    port = free_port()
    start_backend("http_backend.py", port, {"BACKEND_NAME": "a"})
    assert etcdctl([members[0].url], "put", f"/tandem/services/orders/127.0.0.1:{port}", f"127.0.0.1:{port}").returncode == 0
    peer = peer_sidecar(tandem, members)
    wait_for(lambda: addresses(peer) == [f"127.0.0.1:{port}"], 3, "instance seen")
    time.sleep(20)
    text = httpx.get(f"{peer.admin}/metrics").text
    assert metric(text, "tandem_discovery_errors_total", upstream="orders", source="etcd") == 0, peer.log()
    assert "etcd discovery failed" not in peer.log()
    assert endpoints_of(peer)["discovery"]["error"] is None


def test_watch_resumes_from_its_revision_and_lists_again_after_compaction(tandem, start_backend, etcd_cluster):
    """A live watch survives a compaction of etcd's history; a watch cut while instances change
    resumes from its revision (the missed puts and deletes applied, no list); a watch whose
    revision etcd compacted meanwhile lists the service again, also when the compaction is at
    exactly the revision after the watch's and that revision is a delete. The set ends right each
    time, and requests keep succeeding throughout against the last good set."""
    members = etcd_cluster(1)
    m = members[0]
    addr = {}
    for name in "abcd":
        port = free_port()
        start_backend("http_backend.py", port, {"BACKEND_NAME": name})
        addr[name] = f"127.0.0.1:{port}"
    key = lambda n: f"/tandem/services/orders/{addr[n]}"  # noqa: E731

    def put(url, n):
        assert etcdctl([url], "put", key(n), addr[n]).returncode == 0

    def delete(url, n):
        assert etcdctl([url], "del", key(n)).returncode == 0

    def expect(names, what):
        wait_for(lambda: addresses(peer) == sorted(addr[n] for n in names), 5, what)

    put(m.url, "a")
    put(m.url, "b")
    peer = peer_sidecar(tandem, members)
    expect("ab", "a and b")

    failures, done = [], threading.Event()

    def client():
        with httpx.Client(timeout=5) as c:
            while not done.is_set():
                r = c.get(f"{peer.url}/echo")
                if r.status_code != 200:
                    failures.append((r.status_code, r.headers.get("tandem-error")))
                time.sleep(0.01)

    load = threading.Thread(target=client)
    load.start()
    try:
        # 1. Compaction under a live watch: etcd keeps a watch that is up to date, changes
        # after it still arrive.
        assert etcdctl([m.url], "compact", str(etcd_revision(m.url))).returncode == 0
        put(m.url, "c")
        expect("abc", "c seen after a compaction")

        def offline(change):
            """etcd restarted on another client port (Tandem cannot reach it) for `change`,
            then back on its own port."""
            m.kill()
            other = Etcd(m.name, free_port(), m.peer_port, m.cluster, data_dir=m.dir)
            try:
                wait_healthy([other.url])
                change(other.url)
            finally:
                other.kill()
            m.start()
            wait_healthy([m.url])

        # 2. Cut, changes meanwhile: the watch resumes and applies them.
        offline(lambda url: (delete(url, "a"), put(url, "d")))
        expect("bcd", "missed delete and put applied")
        assert "listing the service again" not in peer.log()

        # 3. Cut, changes and a compaction meanwhile: the resumed watch is refused, the
        # source lists again.
        def change_and_compact(url):
            delete(url, "c")
            put(url, "a")
            assert etcdctl([url], "compact", str(etcd_revision(url))).returncode == 0

        offline(change_and_compact)
        expect("abd", "set right after the compacted watch listed again")
        wait_for(lambda: "etcd compacted the watched revision; listing the service again" in peer.log(), 5,
                 "the compaction seen")
        put(m.url, "c")
        expect("abcd", "watching again after the list")

        # 4. Cut, one delete meanwhile, compacted at exactly its revision: etcd (before
        # 3.4.34) would serve a watch from that revision but without the delete
        # (etcd-io/etcd#18089); Tandem resumes from the revision before it, so etcd refuses and
        # Tandem lists again.
        def delete_and_compact(url):
            delete(url, "a")
            assert etcdctl([url], "compact", str(etcd_revision(url))).returncode == 0

        offline(delete_and_compact)
        expect("bcd", "a delete at the compaction revision applied")
    finally:
        done.set()
        load.join()
    assert failures == [], failures[:5]
