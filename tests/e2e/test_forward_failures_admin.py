"""Forward proxy, explicit failures and the admin API, through the real binary."""
import json
import socket

import httpx
import pytest

from conftest import free_port, metric, run


@pytest.fixture
def outbound(tandem, http_backend):
    """An outbound forward-proxy listener with upstreams `orders` (alive), `refused`, `empty`, `blackhole`."""
    refused = free_port()  # nothing listens there
    # A listening socket whose accept queue is full: further SYNs go unanswered, so connects hang.
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(0)
    fillers = []
    for _ in range(3):
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(hole.getsockname())
        fillers.append(f)
    port = free_port()
    t = tandem(f"""
listeners:
  outbound:
    address: 127.0.0.1:{port}
    direction: outbound
    forward_proxy: true
    routes:
      - name: slow
        match: {{ path: {{ prefix: /slow }} }}
        upstream: orders
        timeout: 500ms
upstreams:
  orders: {{ endpoints: [{http_backend}] }}
  refused: {{ endpoints: [127.0.0.1:{refused}] }}
  empty: {{ endpoints: [] }}
  blackhole: {{ endpoints: ["127.0.0.1:{hole.getsockname()[1]}"], connect_timeout: 300ms }}
""")
    yield t, port, refused
    for f in fillers:
        f.close()
    hole.close()


def curl_proxy(port, url, *extra):
    r = run(["curl", "-s", "-i", "--max-time", "10", "--proxy", f"http://127.0.0.1:{port}", *extra, url])
    # text mode turned CRLF into LF
    head, _, body = r.stdout.partition("\n\n")
    status = int(head.split()[1]) if head else 0
    headers = {k.lower(): v for k, v in (l.split(": ", 1) for l in head.split("\n")[1:] if ": " in l)}
    return status, headers, body


def test_forward_proxy_reaches_upstream_by_name(outbound):
    """HTTP_PROXY-style absolute-form requests reach the upstream named in the URL (curl and httpx)."""
    _, port, _ = outbound
    status, _, body = curl_proxy(port, "http://orders/echo/1")
    assert status == 200
    info = json.loads(body)
    assert info["path"] == "/echo/1"
    assert dict(info["headers"])["host"] == "orders"
    assert "forwarded" not in dict(info["headers"]), "outbound does not add forwarded headers"
    with httpx.Client(proxy=f"http://127.0.0.1:{port}", timeout=10) as c:
        r = c.get("http://orders/echo/2")
        assert r.status_code == 200 and r.json()["path"] == "/echo/2"


def test_http_proxy_environment_variable(outbound, monkeypatch):
    """An httpx client configured only by the HTTP_PROXY environment variable reaches `orders`."""
    _, port, _ = outbound
    for var in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    with httpx.Client(trust_env=True, timeout=10) as c:
        r = c.post("http://orders/echo/env", content=b"payload")
    assert r.status_code == 200
    assert (r.json()["path"], r.json()["body_len"]) == ("/echo/env", 7)


def test_raw_connect_443_tunnels_bytes_to_the_endpoint(outbound):
    """`CONNECT orders:443` (what HTTPS_PROXY clients send) answers 200 and then carries raw bytes
    to the upstream's endpoint whatever the port asked for; here an HTTP/1.1 request the app answers."""
    _, port, _ = outbound
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"CONNECT orders:443 HTTP/1.1\r\nhost: orders:443\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            assert chunk, f"closed before the CONNECT answer: {head!r}"
            head += chunk
        assert head.startswith(b"HTTP/1.1 200"), head
        rest = head.split(b"\r\n\r\n", 1)[1]
        assert rest == b"", "no bytes before the tunnel carries anything"
        s.sendall(b"GET /echo/tunnel HTTP/1.1\r\nhost: orders\r\nconnection: close\r\n\r\n")
        reply = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200"), reply
    info = json.loads(reply.split(b"\r\n\r\n", 1)[1])
    assert info["path"] == "/echo/tunnel"
    assert "forwarded" not in dict(info["headers"]), "a tunnel carries bytes untouched"


def test_connect_tunnel_to_configured_upstream(outbound):
    """CONNECT orders:80 opens a tunnel to the upstream's endpoint; unknown names are refused."""
    _, port, _ = outbound
    r = run(["curl", "-s", "--max-time", "10", "-p", "--proxy", f"http://127.0.0.1:{port}", "http://orders:80/echo"])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["path"] == "/echo"
    r = run(["curl", "-s", "-v", "--max-time", "10", "-p", "--proxy", f"http://127.0.0.1:{port}", "http://elsewhere:80/"])
    assert r.returncode != 0
    assert "404" in r.stderr, r.stderr


def test_failures_are_explicit(outbound, http_backend):
    """Each failure has its status, a tandem-error reason and a one-line body naming the upstream."""
    _, port, refused = outbound
    cases = [
        ("http://nowhere/x", 404, "no_route", "no route for GET nowhere/x"),
        ("http://refused/x", 502, "connect_failed", f"upstream `refused` (127.0.0.1:{refused})"),
        ("http://empty/x", 503, "no_endpoints", "upstream `empty`"),
        ("http://orders/reset", 502, "upstream_reset", f"upstream `orders` ({http_backend})"),
        ("http://orders/slow/sleep/3000", 504, "upstream_timeout", "no response within 500ms"),
        ("http://blackhole/x", 504, "connect_timeout", "connect timed out after 300ms"),
    ]
    for url, status, reason, text in cases:
        got_status, headers, body = curl_proxy(port, url)
        assert (got_status, headers.get("tandem-error")) == (status, reason), (url, headers, body)
        assert text in body, (url, body)
        assert body.count("\n") == 1, body


def test_admin_endpoints_and_promtool(outbound):
    """/live, /ready, /config, /upstreams answer; /metrics passes promtool and counts what happened."""
    t, port, _ = outbound
    for url in ("http://orders/a", "http://orders/b", "http://refused/c"):
        curl_proxy(port, url)
    assert httpx.get(f"{t.admin}/live", timeout=5).status_code == 200
    assert httpx.get(f"{t.admin}/ready", timeout=5).text == "ready\n"
    cfg = httpx.get(f"{t.admin}/config", timeout=5).json()
    assert cfg["listeners"][0]["name"] == "outbound" and cfg["listeners"][0]["forward_proxy"] is True
    ups = {u["name"]: u for u in httpx.get(f"{t.admin}/upstreams", timeout=5).json()}
    assert set(ups) == {"orders", "refused", "empty", "blackhole"}
    assert ups["empty"]["endpoints"] == []
    metrics = httpx.get(f"{t.admin}/metrics", timeout=5).text
    r = run(["promtool", "check", "metrics"], input=metrics)
    assert r.returncode == 0, r.stdout + r.stderr
    fwd = {"direction": "outbound", "listener": "outbound", "route": "forward", "upstream": "orders"}
    assert metric(metrics, "tandem_http_requests_total", **fwd, method="GET", status_class="2xx") == 2
    assert metric(metrics, "tandem_http_requests_total", direction="outbound", listener="outbound",
                  route="forward", upstream="refused", method="GET", status_class="5xx") == 1
    assert metric(metrics, "tandem_proxy_errors_total", listener="outbound", upstream="refused",
                  reason="connect_failed") == 1
    assert metric(metrics, "tandem_http_request_duration_seconds_count", **fwd) == 2
    assert metric(metrics, "tandem_http_request_duration_seconds_bucket", **fwd, le="+Inf") == 2
    assert 0 < metric(metrics, "tandem_http_request_duration_seconds_sum", **fwd) < 10
    assert metric(metrics, "tandem_connections_active", listener="outbound") is not None
    om = httpx.get(f"{t.admin}/metrics", headers={"accept": "application/openmetrics-text"}, timeout=5)
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.text.endswith("# EOF\n")
