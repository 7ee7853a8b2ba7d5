"""TLS and mTLS through the real binary: certificates from `tandem certs`, real TLS clients (curl,
openssl s_client, sslyze), two Tandem sidecars (A originates mTLS, B terminates it) carrying
HTTP/1.1, HTTP/2 and gRPC, identity checks, and certificate rotation under load."""
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import httpx
import pytest

from conftest import TANDEM_BIN, free_port, metric, run, wait_for

DOMAIN = "e2e.test"
ID_A = f"spiffe://{DOMAIN}/ns/shop/sa/a"
ID_B = f"spiffe://{DOMAIN}/ns/shop/sa/b"


class Pki:
    """A development CA (and a foreign one) with workload certificates, made by `tandem certs`."""

    def __init__(self, root: Path):
        self.root = root
        self.certs("init", "--trust-domain", DOMAIN, "--out", root / "ca")
        self.certs("init", "--trust-domain", "evil.test", "--out", root / "evil-ca")
        self.issue("a", ID_A)
        self.issue("b", ID_B, "--dns", "b.e2e.test")
        self.issue("evil", ID_A, ca="evil-ca")

    def certs(self, *args):
        r = run([TANDEM_BIN, "certs", *map(str, args)])
        assert r.returncode == 0, r.stderr
        return r

    def issue(self, name, identity, *extra, ca="ca", out=None):
        self.certs("issue", "--ca", self.root / ca, "--identity", identity, *extra, "--out", out or self.root / name)

    def dir(self, name):
        return self.root / name

    def tls_section(self, name):
        d = self.dir(name)
        return f"tls: {{ cert: {d}/cert.pem, key: {d}/key.pem, trust_bundle: {self.root}/ca/ca.pem, reload_interval: 200ms }}\n"


@pytest.fixture
def pki(tmp_path):
    return Pki(tmp_path)


def sidecar_b(tandem, pki, backend, *, access_log=None, extra=""):
    """Sidecar B: an mTLS inbound listener in front of `backend`. Returns (tandem, port)."""
    port = free_port()
    log = f"access_log: {{ path: {access_log} }}\n" if access_log else ""
    t = tandem(pki.tls_section("b") + log + f"""
listeners:
  inbound:
    address: 127.0.0.1:{port}
    upstream: app
    tls: {{ client_auth: required }}
upstreams:
  app:
    endpoints: [{backend}]
    {extra}
""")
    return t, port


def sidecar_a(tandem, pki, b_port, identities=(ID_B,), pool=""):
    """Sidecar A: a plaintext outbound listener whose upstream is B over mTLS. Returns (tandem, port)."""
    port = free_port()
    ids = ", ".join(identities)
    t = tandem(pki.tls_section("a") + f"""
listeners:
  outbound:
    address: 127.0.0.1:{port}
    direction: outbound
    upstream: b
upstreams:
  b:
    endpoints: [127.0.0.1:{b_port}]
    tls: {{ identities: [{ids}] }}
    {pool}
""")
    return t, port


def curl(port, *args, path="/echo"):
    """curl to B by its DNS SAN (so curl's own server check passes and only B can refuse)."""
    return run(["curl", "-sS", "--max-time", "5", "--resolve", f"b.e2e.test:{port}:127.0.0.1", "--cacert", args[0],
                *args[1:], f"https://b.e2e.test:{port}{path}"])


def test_mtls_listener_with_curl(tandem, pki, h2_backend, tmp_path):
    """No client certificate -> refused; a certificate from another CA -> refused; the right one
    -> 200, the app gets the verified identity in x-tandem-peer-identity (a client-sent copy is
    replaced, never passed on), the access log has it, and the handshake metrics count each case."""
    log = tmp_path / "access.log"
    b, port = sidecar_b(tandem, pki, h2_backend, access_log=log)
    ca = str(pki.dir("ca") / "ca.pem")

    r = curl(port, ca)
    assert r.returncode != 0 and r.stdout == "", (r.returncode, r.stdout)
    # Why B refused is asserted below from its handshake metrics (curl's wording varies with
    # when it notices the alert).
    evil = pki.dir("evil")
    r = curl(port, ca, "--cert", str(evil / "cert.pem"), "--key", str(evil / "key.pem"))
    assert r.returncode != 0 and r.stdout == "", (r.returncode, r.stdout)

    a = pki.dir("a")
    for http in ("--http1.1", "--http2"):
        r = curl(port, ca, http, "--cert", str(a / "cert.pem"), "--key", str(a / "key.pem"),
                 "-H", "x-tandem-peer-identity: spiffe://e2e.test/ns/admin/sa/root", "-w", "\n%{http_code} %{http_version}")
        body, status = r.stdout.rsplit("\n", 1)
        assert status == ("200 1.1" if http == "--http1.1" else "200 2"), r.stderr
        headers = json.loads(body)["headers"]
        ids = [v for k, v in headers if k == "x-tandem-peer-identity"]
        assert ids == [ID_A]
        assert ("x-forwarded-proto", "https") in [tuple(h) for h in headers]

    wait_for(lambda: len(log.read_text().splitlines()) >= 2, what="access log lines")
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert {line["peer_identity"] for line in lines} == {ID_A}

    text = httpx.get(f"{b.admin}/metrics").text
    check = run(["promtool", "check", "metrics"], input=text)
    assert check.returncode == 0, check.stdout + check.stderr
    hs = lambda result: metric(text, "tandem_tls_handshakes_total", listener="inbound", result=result)
    assert hs("ok") == 2
    assert hs("no_client_cert") == 1
    assert hs("unknown_ca") == 1
    expiry = metric(text, "tandem_tls_cert_expiry_timestamp_seconds", certificate="workload")
    assert time.time() + 80 * 86400 < expiry < time.time() + 91 * 86400


@pytest.mark.parametrize("version,accepted", [("-tls1", False), ("-tls1_1", False), ("-tls1_2", True), ("-tls1_3", True)])
def test_protocol_versions_with_openssl(tandem, pki, http_backend, version, accepted):
    """openssl s_client: TLS 1.0 and 1.1 are refused by the server (an alert, not a client-side
    refusal: the client is allowed every version via SECLEVEL=0); 1.2 and 1.3 complete with h2 via
    ALPN."""
    _, port = sidecar_b(tandem, pki, http_backend)
    a = pki.dir("a")
    r = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", version, "-cipher", "DEFAULT@SECLEVEL=0",
         "-cert", str(a / "cert.pem"), "-key", str(a / "key.pem"), "-CAfile", str(pki.dir("ca") / "ca.pem"),
         "-alpn", "h2,http/1.1"],
        input="", capture_output=True, text=True, timeout=20)
    out = r.stdout + r.stderr
    if accepted:
        assert "Verify return code: 0 (ok)" in out and "ALPN protocol: h2" in out, out
        assert f"Protocol  : TLSv1.{version[-1]}" in out or f"TLSv1.{version[-1]}" in out, out
    else:
        assert r.returncode != 0, out
        assert "alert" in out and ("protocol version" in out or "handshake failure" in out), out


def test_sslyze_finds_no_weak_protocol_or_cipher(tandem, pki, http_backend, tmp_path):
    """sslyze's scan of an mTLS listener (with a client certificate): no SSL 2/3, TLS 1.0/1.1;
    TLS 1.2 only with forward-secret AEAD suites; TLS 1.3 on; no compression, no insecure
    renegotiation, not vulnerable to Heartbleed, ROBOT or CCS injection."""
    _, port = sidecar_b(tandem, pki, http_backend)
    a = pki.dir("a")
    out = tmp_path / "scan.json"
    r = run([sys.executable, "-m", "sslyze", f"127.0.0.1:{port}", "--cert", str(a / "cert.pem"), "--key", str(a / "key.pem"),
             "--sslv2", "--sslv3", "--tlsv1", "--tlsv1_1", "--tlsv1_2", "--tlsv1_3", "--compression", "--reneg",
             "--heartbleed", "--robot", "--openssl_ccs", f"--json_out={out}"], timeout=180)
    assert out.exists(), r.stdout + r.stderr
    scan = json.loads(out.read_text())["server_scan_results"][0]
    assert scan["scan_status"] == "COMPLETED", scan.get("connectivity_error_trace")
    s = scan["scan_result"]
    accepted = lambda k: [c["cipher_suite"]["name"] for c in s[k]["result"]["accepted_cipher_suites"]]
    for weak in ("ssl_2_0_cipher_suites", "ssl_3_0_cipher_suites", "tls_1_0_cipher_suites", "tls_1_1_cipher_suites"):
        assert s[weak]["status"] == "COMPLETED" and accepted(weak) == [], weak
    tls12 = accepted("tls_1_2_cipher_suites")
    assert tls12, "TLS 1.2 is offered"
    for name in tls12:
        assert name.startswith("TLS_ECDHE_") and ("_GCM_" in name or "CHACHA20_POLY1305" in name), name
    assert accepted("tls_1_3_cipher_suites")
    assert s["tls_compression"]["result"]["supports_compression"] is False
    assert s["session_renegotiation"]["result"]["is_vulnerable_to_client_renegotiation_dos"] is False
    assert s["session_renegotiation"]["result"]["supports_secure_renegotiation"] in (True, False)
    assert s["heartbleed"]["result"]["is_vulnerable_to_heartbleed"] is False
    assert s["openssl_ccs_injection"]["result"]["is_vulnerable_to_ccs_injection"] is False
    assert s["robot"]["result"]["robot_result"] in ("NOT_VULNERABLE_NO_ORACLE", "NOT_VULNERABLE_RSA_NOT_SUPPORTED")


def test_two_sidecars_http1_http2(tandem, pki, h2_backend):
    """App -> A (plaintext) -> mTLS -> B -> app: HTTP/1.1 and HTTP/2 both arrive, with A's
    identity verified by B and handed to the app; a fake identity the calling app sends is gone."""
    b, b_port = sidecar_b(tandem, pki, h2_backend)
    a, a_port = sidecar_a(tandem, pki, b_port, pool="health_check: { http: { path: /healthz }, interval: 200ms, timeout: 150ms }")
    with httpx.Client(timeout=5) as c:
        r = c.get(f"http://127.0.0.1:{a_port}/echo", headers={"x-tandem-peer-identity": "spiffe://fake/x"})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["version"] == "HTTP/1.1"
    assert [v for k, v in got["headers"] if k == "x-tandem-peer-identity"] == [ID_A]
    with httpx.Client(http1=False, http2=True, timeout=5) as c:
        r = c.get(f"http://127.0.0.1:{a_port}/echo")
    assert r.status_code == 200 and r.http_version == "HTTP/2"
    assert r.json()["version"] == "HTTP/2"
    assert [v for k, v in r.json()["headers"] if k == "x-tandem-peer-identity"] == [ID_A]
    text = httpx.get(f"{a.admin}/metrics").text
    up = metric(text, "tandem_tls_handshakes_total", upstream="b", result="ok")
    assert up >= 2  # one HTTP/1.1 and one HTTP/2 connection (ALPN http/1.1, h2)
    # A's active health checks reach the app through B over mTLS too.
    wait_for(lambda: (metric(httpx.get(f"{a.admin}/metrics").text, "tandem_health_checks_total",
                             upstream="b", endpoint=f"127.0.0.1:{b_port}", result="pass") or 0) >= 2,
             what="health checks passing over mTLS")


def test_two_sidecars_grpc(tandem, pki, start_backend):
    """gRPC unary and bidirectional streaming through A -> mTLS -> B."""
    backend = free_port()
    start_backend("grpc_backend.py", backend)
    _, b_port = sidecar_b(tandem, pki, f"127.0.0.1:{backend}", extra="protocol: http2")
    _, a_port = sidecar_a(tandem, pki, b_port)
    ch = grpc.insecure_channel(f"127.0.0.1:{a_port}")
    try:
        reply, call = ch.unary_unary("/test.Echo/Unary").with_call(b"hello", timeout=10)
        assert reply == b"hello"
        assert ("x-trailer", "present") in call.trailing_metadata()
        out = list(ch.stream_stream("/test.Echo/Bidi")(iter([b"x", b"yz"]), timeout=10))
        assert out == [b"X", b"YZ"]
    finally:
        ch.close()


def test_outbound_refuses_an_unexpected_server_identity(tandem, pki, http_backend):
    """A expects spiffe://.../sa/c but B presents sa/b: 502 upstream_tls naming both, counted as
    identity_mismatch; B's certificate from the right CA is not enough."""
    _, b_port = sidecar_b(tandem, pki, http_backend)
    a, a_port = sidecar_a(tandem, pki, b_port, identities=(f"spiffe://{DOMAIN}/ns/shop/sa/c",))
    r = httpx.get(f"http://127.0.0.1:{a_port}/echo", timeout=5)
    assert r.status_code == 502
    assert r.headers["tandem-error"] == "upstream_tls"
    assert "sa/c" in r.text and ID_B in r.text and "not the expected" in r.text, r.text
    text = httpx.get(f"{a.admin}/metrics").text
    assert metric(text, "tandem_tls_handshakes_total", upstream="b", result="identity_mismatch") >= 1


def test_outbound_refuses_a_server_from_another_ca(tandem, pki, http_backend, tmp_path):
    """B serving a certificate from a foreign CA (same SPIFFE ID) is refused by A: unknown_ca."""
    # B trusts both CAs (so A's handshake gets as far as verifying B), but serves the foreign cert.
    bundle = tmp_path / "both.pem"
    bundle.write_text((pki.dir("ca") / "ca.pem").read_text() + (pki.dir("evil-ca") / "ca.pem").read_text())
    port = free_port()
    evil = pki.dir("evil")
    tandem(f"""
tls: {{ cert: {evil}/cert.pem, key: {evil}/key.pem, trust_bundle: {bundle} }}
listeners:
  inbound: {{ address: 127.0.0.1:{port}, upstream: app, tls: {{}} }}
upstreams:
  app: {{ endpoints: [{http_backend}] }}
""")
    _, a_port = sidecar_a(tandem, pki, port, identities=(ID_A,))
    r = httpx.get(f"http://127.0.0.1:{a_port}/echo", timeout=5)
    assert r.status_code == 502 and r.headers["tandem-error"] == "upstream_tls"
    assert "trust bundle" in r.text, r.text


def replace_pair(pki, name, identity, serial_dir, ca="ca"):
    """Issues a new pair for `identity` elsewhere (from CA directory `ca`), then moves it over
    `name`'s files (key first, each by rename), as cert-manager or SPIRE helpers do."""
    pki.issue(name, identity, ca=ca, out=serial_dir)
    target = pki.dir(name)
    for f in ("key.pem", "cert.pem"):
        shutil.copy(serial_dir / f, target / f"{f}.new")
        os.rename(target / f"{f}.new", target / f)


def served_cert(port, pki):
    """The PEM of the certificate a TLS server presents now (a new handshake)."""
    a = pki.dir("a")
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-cert", str(a / "cert.pem"),
                        "-key", str(a / "key.pem"), "-showcerts"], input="", capture_output=True, text=True, timeout=10)
    out = r.stdout
    return out[out.index("-----BEGIN CERTIFICATE-----"):out.index("-----END CERTIFICATE-----")]


def test_rotation_under_load_drops_nothing(tandem, pki, h2_backend, tmp_path):
    """Clients loop requests through A -> B (a new mTLS connection per request, and through a
    second A, one HTTP/2 mTLS connection kept open throughout) while B's and then A's
    certificates are replaced by new ones from the same CA, and once B's by a broken file: zero failed requests; new handshakes present the new
    certificates; the broken file is refused (reload error counted) and the last good pair
    keeps serving; then a good pair is picked up again."""
    b, b_port = sidecar_b(tandem, pki, h2_backend)
    a, a_port = sidecar_a(tandem, pki, b_port, pool="pool: { max_idle_per_endpoint: 0 }")
    # A second A keeps one HTTP/2 connection to B for the whole test: established connections
    # must outlive every rotation.
    a_h2, a_h2_port = sidecar_a(tandem, pki, b_port)
    stop = threading.Event()
    results = {"ok": 0, "failed": []}

    def loop(kind):
        with httpx.Client(timeout=10, http1=kind != "h2", http2=kind == "h2") as c:
            while not stop.is_set():
                try:
                    if kind == "h2":
                        r = c.get(f"http://127.0.0.1:{a_h2_port}/echo")
                    elif kind == "keep-alive":
                        r = c.get(f"http://127.0.0.1:{a_port}/echo")
                    else:
                        r = httpx.get(f"http://127.0.0.1:{a_port}/echo", timeout=10)
                    if r.status_code == 200:
                        results["ok"] += 1
                    else:
                        results["failed"].append((r.status_code, r.text))
                except httpx.HTTPError as e:
                    results["failed"].append(repr(e))

    threads = [threading.Thread(target=loop, args=(k,)) for k in ("new", "keep-alive", "new", "h2")]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: results["ok"] > 50, what="traffic flowing")
        before_b = served_cert(b_port, pki)
        reloads = lambda t, result: metric(httpx.get(f"{t.admin}/metrics").text, "tandem_tls_cert_reload_total", result=result)

        replace_pair(pki, "b", ID_B, tmp_path / "b2")
        wait_for(lambda: reloads(b, "ok") == 1, what="B reloaded")
        after_b = served_cert(b_port, pki)
        assert after_b != before_b and after_b == served_cert(b_port, pki)
        assert (tmp_path / "b2" / "cert.pem").read_text().startswith(after_b)
        n = results["ok"]
        wait_for(lambda: results["ok"] > n + 50, what="traffic after B's rotation")

        replace_pair(pki, "a", ID_A, tmp_path / "a2")
        wait_for(lambda: reloads(a, "ok") == 1, what="A reloaded")
        n = results["ok"]
        wait_for(lambda: results["ok"] > n + 50, what="traffic after A's rotation")

        # A broken certificate: refused, counted, and B keeps serving the last good pair.
        good = (pki.dir("b") / "cert.pem").read_text()
        (pki.dir("b") / "cert.pem.new").write_text(good[: len(good) // 2])
        os.rename(pki.dir("b") / "cert.pem.new", pki.dir("b") / "cert.pem")
        wait_for(lambda: reloads(b, "error") == 1, what="B refused the broken file")
        assert served_cert(b_port, pki) == after_b
        assert "TLS certificate reload refused" in b.log()
        n = results["ok"]
        wait_for(lambda: results["ok"] > n + 50, what="traffic with a broken file on disk")

        replace_pair(pki, "b", ID_B, tmp_path / "b3")
        wait_for(lambda: reloads(b, "ok") == 2, what="B reloaded after the broken file")
        assert served_cert(b_port, pki) != after_b
        n = results["ok"]
        wait_for(lambda: results["ok"] > n + 50, what="traffic after the last rotation")
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    print(f"rotation under load: {results['ok']} requests through A -> B, {len(results['failed'])} failed")
    assert results["failed"] == [], results["failed"][:5]
    assert results["ok"] > 250
    # The HTTP/2 connection from the second A was opened once and carried on through it all.
    h2_handshakes = metric(httpx.get(f"{a_h2.admin}/metrics").text, "tandem_tls_handshakes_total", upstream="b", result="ok")
    assert h2_handshakes == 1


def test_check_names_the_bad_file_and_key(pki, tmp_path):
    """`tandem check` loads the configured files: a key from another pair, a missing file and an
    expired-looking garbage cert each name the key, the file and a fix (exit 64); good files pass."""
    a, b = pki.dir("a"), pki.dir("b")
    def check(cert, key, bundle):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"""
tls:
  cert: {cert}
  key: {key}
  trust_bundle: {bundle}
listeners:
  inbound: {{ address: 127.0.0.1:7080, upstream: app, tls: {{}} }}
upstreams:
  app: {{ endpoints: [127.0.0.1:8080] }}
""")
        return run([TANDEM_BIN, "check", "-c", str(cfg)])

    ok = check(a / "cert.pem", a / "key.pem", a / "ca.pem")
    assert ok.returncode == 0, ok.stderr
    r = check(a / "cert.pem", b / "key.pem", a / "ca.pem")
    assert r.returncode == 64
    assert "c.yaml:4: tls.key:" in r.stderr and str(b / "key.pem") in r.stderr and "does not belong" in r.stderr, r.stderr
    assert "hint:" in r.stderr
    r = check(a / "missing.pem", a / "key.pem", a / "ca.pem")
    assert r.returncode == 64 and "c.yaml:3: tls.cert:" in r.stderr and "missing.pem" in r.stderr, r.stderr
    (tmp_path / "junk.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    r = check(a / "cert.pem", a / "key.pem", tmp_path / "junk.pem")
    assert r.returncode == 64 and "c.yaml:5: tls.trust_bundle:" in r.stderr, r.stderr


def test_run_refuses_to_start_with_a_bad_pair(tandem, pki, http_backend):
    """`tandem run` with a mismatched pair exits at start with the key named, never serving TLS
    listeners without their certificate."""
    a, b = pki.dir("a"), pki.dir("b")
    port = free_port()
    t = tandem(f"""
tls: {{ cert: {a}/cert.pem, key: {b}/key.pem, trust_bundle: {a}/ca.pem }}
listeners:
  inbound: {{ address: 127.0.0.1:{port}, upstream: app, tls: {{}} }}
upstreams:
  app: {{ endpoints: [{http_backend}] }}
""", wait_ready=False)
    assert t.wait(10) != 0
    assert "tls.key" in t.log() and "does not belong" in t.log()


def test_tcp_listeners_over_mtls(tandem, pki, start_backend, tmp_path):
    """Opaque TCP through A (plaintext TCP listener, mTLS upstream) -> B (mTLS TCP listener) ->
    an echo server: bytes and the half-close come back, B logs the connection with A's identity;
    a direct client without a certificate is refused by B."""
    import socket

    backend = free_port()
    start_backend("tcp_echo.py", backend)
    b_port, a_port = free_port(), free_port()
    log = tmp_path / "access.log"
    b = tandem(pki.tls_section("b") + f"""
access_log: {{ path: {log} }}
listeners:
  inbound: {{ address: 127.0.0.1:{b_port}, protocol: tcp, upstream: echo, tls: {{}} }}
upstreams:
  echo: {{ endpoints: [127.0.0.1:{backend}] }}
""")
    tandem(pki.tls_section("a") + f"""
listeners:
  outbound: {{ address: 127.0.0.1:{a_port}, protocol: tcp, direction: outbound, upstream: b }}
upstreams:
  b:
    endpoints: [127.0.0.1:{b_port}]
    tls: {{ identities: [{ID_B}] }}
""")
    payload = os.urandom(200_000)
    with socket.create_connection(("127.0.0.1", a_port), timeout=10) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    assert got == payload
    wait_for(lambda: log.read_text().strip(), what="access log line")
    assert json.loads(log.read_text().splitlines()[0])["peer_identity"] == ID_A

    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{b_port}", "-CAfile", str(pki.dir("ca") / "ca.pem")],
                       input="hello\n", capture_output=True, text=True, timeout=10)
    assert "hello" not in r.stdout
    wait_for(lambda: metric(httpx.get(f"{b.admin}/metrics").text, "tandem_tls_handshakes_total",
                            listener="inbound", result="no_client_cert") == 1, what="refusal counted")


def test_upstream_refusing_our_certificate_is_upstream_tls(tandem, pki, h2_backend):
    """A presents a certificate from a CA that B does not trust: B refuses it (after A's side of
    the TLS 1.3 handshake) and A answers 502 upstream_tls saying the upstream refused its
    certificate, over HTTP/1.1 and HTTP/2 to the upstream."""
    b, b_port = sidecar_b(tandem, pki, h2_backend)
    # A trusts B's CA (so B passes A's check) but holds the foreign CA's certificate.
    evil = pki.dir("evil")
    port = free_port()
    tandem(f"""
tls: {{ cert: {evil}/cert.pem, key: {evil}/key.pem, trust_bundle: {pki.root}/ca/ca.pem }}
listeners:
  outbound: {{ address: 127.0.0.1:{port}, direction: outbound, upstream: b }}
upstreams:
  b:
    endpoints: [127.0.0.1:{b_port}]
    tls: {{ identities: [{ID_B}] }}
""")
    for http2 in (False, True, False, True):
        with httpx.Client(http1=not http2, http2=http2, timeout=5) as c:
            r = c.get(f"http://127.0.0.1:{port}/echo")
        assert r.status_code == 502, r.text
        assert r.headers["tandem-error"] == "upstream_tls", (http2, r.text)
        assert "refused" in r.text and "client certificate" in r.text, r.text
    text = httpx.get(f"{b.admin}/metrics").text
    assert metric(text, "tandem_tls_handshakes_total", listener="inbound", result="unknown_ca") >= 4


@pytest.mark.parametrize("name,ok", [("b.e2e.test", True), ("c.e2e.test", False)])
def test_outbound_verifies_a_dns_server_name(tandem, pki, http_backend, name, ok):
    """Without `identities`, `server_name` is sent as SNI and B's certificate must carry it as a
    DNS SAN: b.e2e.test passes, c.e2e.test is refused (502 upstream_tls, identity_mismatch)."""
    _, b_port = sidecar_b(tandem, pki, http_backend)
    port = free_port()
    a = tandem(pki.tls_section("a") + f"""
listeners:
  outbound: {{ address: 127.0.0.1:{port}, direction: outbound, upstream: b }}
upstreams:
  b:
    endpoints: [127.0.0.1:{b_port}]
    tls: {{ server_name: {name} }}
""")
    r = httpx.get(f"http://127.0.0.1:{port}/echo", timeout=5)
    text = httpx.get(f"{a.admin}/metrics").text
    if ok:
        assert r.status_code == 200, r.text
        assert [v for k, v in r.json()["headers"] if k == "x-tandem-peer-identity"] == [ID_A]
    else:
        assert r.status_code == 502 and r.headers["tandem-error"] == "upstream_tls", r.text
        assert metric(text, "tandem_tls_handshakes_total", upstream="b", result="identity_mismatch") >= 1


def test_certs_cli_refuses_mistakes(tmp_path):
    """`tandem certs`: a second init over an existing CA, an invalid trust domain or SPIFFE ID,
    and an issue without any identity are refused with exit 64 and a message naming the flag;
    nothing is overwritten; private keys are written mode 0600."""
    ca = tmp_path / "ca"
    assert run([TANDEM_BIN, "certs", "init", "--trust-domain", "d.test", "--out", str(ca)]).returncode == 0
    key = (ca / "ca-key.pem").read_text()
    r = run([TANDEM_BIN, "certs", "init", "--trust-domain", "d.test", "--out", str(ca)])
    assert r.returncode == 64 and "exists" in r.stderr, r.stderr
    assert (ca / "ca-key.pem").read_text() == key
    r = run([TANDEM_BIN, "certs", "init", "--trust-domain", "Bad Domain", "--out", str(tmp_path / "x")])
    assert r.returncode == 64 and "--trust-domain" in r.stderr, r.stderr
    r = run([TANDEM_BIN, "certs", "issue", "--ca", str(ca), "--identity", "spiffe://d.test/a//b", "--out", str(tmp_path / "w")])
    assert r.returncode == 64 and "--identity" in r.stderr, r.stderr
    r = run([TANDEM_BIN, "certs", "issue", "--ca", str(ca), "--out", str(tmp_path / "w")])
    assert r.returncode == 64 and "--identity" in r.stderr and "--dns" in r.stderr, r.stderr
    assert not (tmp_path / "w").exists()
    r = run([TANDEM_BIN, "certs", "issue", "--ca", str(tmp_path / "nope"), "--identity", "spiffe://d.test/a", "--out", str(tmp_path / "w")])
    assert r.returncode == 1 and "ca.pem" in r.stderr, r.stderr
    r = run([TANDEM_BIN, "certs", "issue", "--ca", str(ca), "--identity", "spiffe://d.test/a", "--out", str(tmp_path / "w")])
    assert r.returncode == 0, r.stderr
    assert os.stat(tmp_path / "w" / "key.pem").st_mode & 0o777 == 0o600
    assert os.stat(ca / "ca-key.pem").st_mode & 0o777 == 0o600



def test_ca_rotation_with_an_overlapping_bundle(tandem, pki, http_backend, tmp_path):
    """CA rotation under load, the way the docs describe it: the shared trust bundle gets the new
    CA beside the old one, B then A are reissued from the new CA, then the old CA leaves the
    bundle. Requests loop through A -> B (a new mTLS connection each) the whole time: zero fail,
    and at the end a certificate from the old CA is refused."""
    pki.certs("init", "--trust-domain", DOMAIN, "--out", tmp_path / "ca2")
    bundle = pki.dir("ca") / "ca.pem"
    old_ca = bundle.read_text()
    new_ca = (tmp_path / "ca2" / "ca.pem").read_text()
    b, b_port = sidecar_b(tandem, pki, http_backend)
    a, a_port = sidecar_a(tandem, pki, b_port, pool="pool: { max_idle_per_endpoint: 0 }")
    stop = threading.Event()
    results = {"ok": 0, "failed": []}

    def loop():
        while not stop.is_set():
            try:
                r = httpx.get(f"http://127.0.0.1:{a_port}/echo", timeout=10)
                if r.status_code == 200:
                    results["ok"] += 1
                else:
                    results["failed"].append((r.status_code, r.text))
            except httpx.HTTPError as e:
                results["failed"].append(repr(e))

    def write_bundle(text):
        (bundle.parent / "ca.pem.new").write_text(text)
        os.rename(bundle.parent / "ca.pem.new", bundle)

    def reloads(t):
        return metric(httpx.get(f"{t.admin}/metrics").text, "tandem_tls_cert_reload_total", result="ok")

    def traffic_goes_on():
        n = results["ok"]
        wait_for(lambda: results["ok"] > n + 30, what="traffic")

    threads = [threading.Thread(target=loop) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        traffic_goes_on()
        write_bundle(old_ca + new_ca)
        wait_for(lambda: reloads(a) == 1 and reloads(b) == 1, what="both trust both CAs")
        traffic_goes_on()
        replace_pair(pki, "b", ID_B, tmp_path / "b2", ca=tmp_path / "ca2")
        wait_for(lambda: reloads(b) == 2, what="B on the new CA")
        traffic_goes_on()
        replace_pair(pki, "a", ID_A, tmp_path / "a2", ca=tmp_path / "ca2")
        wait_for(lambda: reloads(a) == 2, what="A on the new CA")
        traffic_goes_on()
        write_bundle(new_ca)
        wait_for(lambda: reloads(a) == 3 and reloads(b) == 3, what="the old CA gone")
        traffic_goes_on()
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    print(f"CA rotation under load: {results['ok']} requests through A -> B, {len(results['failed'])} failed")
    assert results["failed"] == [], results["failed"][:5]
    # The old CA is no longer trusted: a workload certificate from it is refused by B.
    pki.issue("old", ID_A)
    old = pki.dir("old")
    r = curl(b_port, str(bundle), "--cert", str(old / "cert.pem"), "--key", str(old / "key.pem"))
    assert r.returncode != 0 and r.stdout == ""
    text = httpx.get(f"{b.admin}/metrics").text
    assert metric(text, "tandem_tls_handshakes_total", listener="inbound", result="unknown_ca") == 1


def test_authorization_by_peer_identity_over_mtls(tandem, pki, h2_backend):
    """Identity rules with real client certificates (curl): the allowed identity gets 200 on
    /admin, another identity from the same CA gets 403 `forbidden` naming the rule, a prefix
    rule admits the whole namespace elsewhere, and a forged identity header changes nothing;
    requests are counted per peer only for identities the rules name exactly."""
    pki.issue("c", f"spiffe://{DOMAIN}/ns/shop/sa/c")
    pki.issue("ops", f"spiffe://{DOMAIN}/ns/ops/sa/admin")
    port = free_port()
    b = tandem(pki.tls_section("b") + f"""
listeners:
  inbound:
    address: 127.0.0.1:{port}
    upstream: app
    tls: {{ client_auth: required }}
    authorization:
      rules:
        - {{ name: admin-only-ops, action: deny, paths: [/admin/*], identities: ["spiffe://{DOMAIN}/ns/shop/*"] }}
        - {{ name: ops, action: allow, identities: ["spiffe://{DOMAIN}/ns/ops/sa/admin"] }}
        - {{ name: shop, action: allow, identities: ["spiffe://{DOMAIN}/ns/shop/*"], paths: [/echo/*] }}
upstreams:
  app:
    endpoints: [{h2_backend}]
""")
    ca = str(pki.dir("ca") / "ca.pem")

    def call(who, path, *extra):
        d = pki.dir(who)
        r = curl(port, ca, "--cert", str(d / "cert.pem"), "--key", str(d / "key.pem"), *extra,
                 "-D", "-", "-w", "\n%{http_code}", path=path)
        assert r.returncode == 0, (who, r.returncode, r.stderr)
        head, _, rest = r.stdout.partition("\n\n")
        body, _, status = rest.rpartition("\n")
        return int(status), head.lower(), body

    status, head, body = call("ops", "/admin/users")
    assert status == 200, body
    for who in ("a", "c"):
        status, head, body = call(who, "/admin/users")
        assert status == 403, (who, body)
        assert "tandem-error: forbidden" in head
        assert "admin-only-ops" in body
    # Same identity, allowed path; another path no rule allows -> default deny.
    status, _, body = call("c", "/echo/x")
    assert status == 200, body
    status, _, body = call("c", "/other")
    assert status == 403 and "default" in body, body
    # A forged identity header is no identity: the rule reads the certificate only.
    status, _, body = call("a", "/admin/users", "-H", f"x-tandem-peer-identity: spiffe://{DOMAIN}/ns/ops/sa/admin")
    assert status == 403, body
    text = httpx.get(f"{b.admin}/metrics").text
    assert metric(text, "tandem_authz_denied_total", listener="inbound", rule="admin-only-ops") == 3
    # Requests by peer: the identity a rule names exactly is a label value, any other is `other`.
    peers = lambda who: metric(text, "tandem_http_peer_requests_total", listener="inbound", peer_identity=who)
    assert peers(f"spiffe://{DOMAIN}/ns/ops/sa/admin") == 1
    assert peers("other") == 5
    assert peers("none") == 0
    assert "sa/c" not in text and "sa/a\"" not in text, "an unnamed identity became a label value"


def test_tcp_listener_authorizes_connections_by_identity(tandem, pki, start_backend, tmp_path):
    """A `protocol: tcp` mTLS listener with an authorization policy: a client whose certificate
    names an allowed identity gets its bytes echoed; a valid certificate with another identity
    is closed without a byte from the upstream, logged as `forbidden` and counted."""
    import socket
    import ssl

    id_c = f"spiffe://{DOMAIN}/ns/web/sa/c"
    pki.issue("c", id_c)
    backend = free_port()
    start_backend("tcp_echo.py", backend)
    port = free_port()
    log = tmp_path / "access.log"
    b = tandem(pki.tls_section("b") + f"""
access_log: {{ path: {log} }}
listeners:
  inbound:
    address: 127.0.0.1:{port}
    protocol: tcp
    upstream: echo
    tls: {{}}
    authorization:
      rules:
        - {{ action: allow, name: shop, identities: ["spiffe://{DOMAIN}/ns/shop/*"] }}
upstreams:
  echo: {{ endpoints: [127.0.0.1:{backend}] }}
""")

    def exchange(name):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(str(pki.dir("ca") / "ca.pem"))
        ctx.load_cert_chain(str(pki.dir(name) / "cert.pem"), str(pki.dir(name) / "key.pem"))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="b.e2e.test") as s:
                try:
                    s.sendall(b"hello")
                    got = b""
                    while len(got) < 5 and (chunk := s.recv(100)):
                        got += chunk
                    return got
                except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
                    return b""

    assert exchange("a") == b"hello"
    assert exchange("c") == b""
    wait_for(lambda: len(log.read_text().splitlines()) == 2, what="two access log lines")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    by_identity = {line["peer_identity"]: line for line in lines}
    assert by_identity[ID_A]["error"] is None, by_identity
    assert by_identity[id_c]["error"] == "forbidden", by_identity
    assert by_identity[id_c]["endpoint"] is None, "denied before connecting upstream"
    text = httpx.get(f"{b.admin}/metrics").text
    assert metric(text, "tandem_authz_denied_total", listener="inbound", rule="default") == 1
    assert "audit: connection denied" in b.log()


def test_routes_and_rate_limits_by_peer_identity(tandem, pki, h2_backend, tmp_path):
    """`match.peer_identities` routes by the client certificate's identity and `rate_limit.key:
    peer_identity` gives each identity its own bucket (curl with real client certificates; the
    access log names the route each request took)."""
    pki.issue("web", f"spiffe://{DOMAIN}/ns/web/sa/ui")
    port = free_port()
    log = tmp_path / "access.log"
    tandem(pki.tls_section("b") + f"""
access_log: {{ path: {log} }}
listeners:
  inbound:
    address: 127.0.0.1:{port}
    upstream: app
    tls: {{ client_auth: required }}
    routes:
      - name: shop
        match: {{ peer_identities: ["spiffe://{DOMAIN}/ns/shop/*"] }}
        upstream: app
        rate_limit: {{ requests: 2, per: 1m, key: peer_identity }}
      - name: rest
        upstream: app
upstreams:
  app:
    endpoints: [{h2_backend}]
""")
    ca = str(pki.dir("ca") / "ca.pem")

    def status(who):
        d = pki.dir(who)
        r = curl(port, ca, "--cert", str(d / "cert.pem"), "--key", str(d / "key.pem"),
                 "-o", "/dev/null", "-w", "%{http_code}")
        assert r.returncode == 0, (who, r.stderr)
        return int(r.stdout)

    # a and b are in ns/shop: own buckets of 2; web takes the other route, unlimited.
    assert [status("a") for _ in range(3)] == [200, 200, 429]
    assert [status("b") for _ in range(3)] == [200, 200, 429]
    assert [status("web") for _ in range(3)] == [200, 200, 200]
    wait_for(lambda: len(log.read_text().splitlines()) == 9, what="nine access log lines")
    routes = {}
    for line in map(json.loads, log.read_text().splitlines()):
        routes.setdefault(line["peer_identity"], set()).add(line["route"])
    assert routes == {ID_A: {"shop"}, ID_B: {"shop"}, f"spiffe://{DOMAIN}/ns/web/sa/ui": {"rest"}}, routes
