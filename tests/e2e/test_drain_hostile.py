"""Graceful drain under load and hostile input on raw sockets, against the real binary."""
import signal
import socket
import subprocess
import threading
import time

import httpx

from conftest import free_port, wait_for


def config(port, backend, extra=""):
    return f"""
drain_timeout: 20s
{extra}
listeners:
  inbound:
    address: 127.0.0.1:{port}
    upstream: app
upstreams:
  app:
    endpoints: [{backend}]
    protocol: http1
"""


def inflight(backend):
    return int(httpx.get(f"http://{backend}/__inflight", timeout=2).text)


def test_drain_finishes_in_flight_http1(tandem, http_backend):
    """SIGTERM while 20 requests are in flight: all complete 200, /ready turns 503, new
    connections are refused, and Tandem exits 0."""
    port = free_port()
    t = tandem(config(port, http_backend))
    results = []

    def call():
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/sleep/1500", timeout=20)
            results.append((r.status_code, r.text))
        except Exception as e:  # noqa: BLE001 - recorded and asserted below
            results.append(("error", repr(e)))

    threads = [threading.Thread(target=call) for _ in range(20)]
    for th in threads:
        th.start()
    wait_for(lambda: inflight(http_backend) == 20, 10, "20 requests at the app")
    t.signal(signal.SIGTERM)
    wait_for(lambda: httpx.get(f"{t.admin}/ready", timeout=1).status_code == 503, 5, "/ready 503 while draining")

    def refused():
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex(("127.0.0.1", port)) != 0

    wait_for(refused, 5, "new connections refused")
    for th in threads:
        th.join(30)
    assert results == [(200, "slept")] * 20
    assert t.wait(30) == 0


def test_drain_finishes_in_flight_http2_streams(tandem, http_backend):
    """An HTTP/2 connection with 10 open streams gets GOAWAY on SIGTERM and every stream still
    completes. The client is h2load (nghttp2): Python's h2 library treats the PING that follows a
    graceful GOAWAY (RFC 9113 §6.8) as a protocol error, and curl 7.88 drops parallel transfers
    queued behind a prior-knowledge connection, so neither can judge this."""
    port = free_port()
    t = tandem(config(port, http_backend))
    h2load = subprocess.Popen(
        ["timeout", "20", "h2load", "-n", "10", "-c", "1", "-m", "10", f"http://127.0.0.1:{port}/sleep/1500"],
        stdout=subprocess.PIPE, text=True)
    wait_for(lambda: inflight(http_backend) == 10, 10, "10 streams at the app")
    t.signal(signal.SIGTERM)
    out, _ = h2load.communicate(timeout=30)
    assert "requests: 10 total, 10 started, 10 done, 10 succeeded, 0 failed" in out, out
    assert "status codes: 10 2xx" in out, out
    assert t.wait(30) == 0


def raw(port, data, read_timeout=5):
    """Sends bytes, returns everything read until the server closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        except socket.timeout:
            out += b"<timeout>"
        return out


def test_hostile_input_is_refused_and_tandem_keeps_serving(tandem, http_backend):
    """Oversized heads, too many fields, smuggling framing and garbage get 4xx and a closed
    connection; a slow client is cut off; Tandem serves normally afterwards."""
    port = free_port()
    t = tandem(config(port, http_backend, extra="limits: { max_header_bytes: 8192, max_headers: 50, header_read_timeout: 1s }"))

    def refused(data, status):
        out = raw(port, data, read_timeout=3)
        assert out.startswith(b"HTTP/1.1 %d" % status), out[:200]
        assert not out.endswith(b"<timeout>"), f"connection left open after {status}: {out[:200]!r}"
        return out

    refused(b"GET / HTTP/1.1\r\nhost: a\r\nx-big: " + b"a" * 20000 + b"\r\n\r\n", 431)
    refused(b"GET / HTTP/1.1\r\nhost: a\r\n" + b"".join(b"x-h%d: 1\r\n" % i for i in range(80)) + b"\r\n", 431)
    smuggle = (b"POST /echo HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n"
               b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: a\r\n\r\n")
    out = refused(smuggle, 400)
    assert b"tandem-error: bad_request" in out
    assert out.count(b"HTTP/1.1") == 1, "the smuggled request got no response"
    refused(b"POST /echo HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!", 400)
    refused(b"\x16\x03\x01\x02\x00garbage\r\n\r\n", 400)
    start = time.monotonic()
    slow = raw(port, b"GET / HTTP/1.1\r\nhost: a\r\nx-slow: ", read_timeout=5)
    took = time.monotonic() - start
    assert b"<timeout>" not in slow, "a slow client is disconnected by header_read_timeout"
    assert 0.8 < took < 4, f"closed after {took:.2f}s with header_read_timeout 1s"
    r = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
    assert (r.status_code, r.text) == (200, "ok")
    assert t.p.poll() is None


def test_connection_bound_queues_extra_connections(tandem, http_backend):
    """With max_connections: 2, a third connection is not served while two are open, and is
    served as soon as one closes (it waited in the backlog, nothing was dropped)."""
    port = free_port()
    tandem(config(port, http_backend, extra="limits: { max_connections: 2 }"))
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
    for s in held:
        s.sendall(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
    third = socket.create_connection(("127.0.0.1", port), timeout=5)
    third.sendall(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
    third.settimeout(0.7)
    try:
        early = third.recv(4096)
    except socket.timeout:
        early = b""
    assert early == b"", "served beyond max_connections"
    held[0].close()
    third.settimeout(5)
    assert third.recv(4096).startswith(b"HTTP/1.1 200")
    third.close()
    held[1].close()


def test_upstream_speaking_garbage_is_502_upstream_protocol(tandem, start_backend):
    """An upstream that answers with something that is not HTTP gets 502 upstream_protocol."""
    echo = free_port()
    start_backend("tcp_echo.py", echo)  # echoes the request line back: not a status line
    port = free_port()
    tandem(config(port, f"127.0.0.1:{echo}"))
    r = httpx.get(f"http://127.0.0.1:{port}/x", timeout=10)
    assert (r.status_code, r.headers["tandem-error"]) == (502, "upstream_protocol"), r.text
    assert f"upstream `app` (127.0.0.1:{echo})" in r.text
