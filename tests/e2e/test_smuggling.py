"""HTTP/1.x request smuggling and framing attacks against the real binary.

Each probe goes over a raw socket to Tandem in front of `backends/recording_backend.py`, which
records every byte it receives. A probe passes when Tandem answers exactly one `400`, closes the
connection, and the backend received nothing at all; a legitimate request on a new connection
right after must still work (and be the only thing the backend saw). Slow clients (slowloris
heads and bodies) are cut off by `header_read_timeout` and `body_read_timeout`.
"""
import base64
import re
import socket
import time

import httpx
import pytest

from conftest import free_port

# Every probe targets /probe; anything smuggled targets /smuggled. The backend must see neither.
POST = b"POST /probe HTTP/1.1\r\nhost: a\r\n"
GET = b"GET /probe HTTP/1.1\r\nhost: a\r\n"
CHUNKED = b"transfer-encoding: chunked\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nhost: a\r\n\r\n"

PROBES = {
    # Content-Length and Transfer-Encoding together, in both orders (CL.TE, TE.CL).
    "cl_te": POST + b"content-length: 6\r\n" + CHUNKED + b"\r\n0\r\n\r\nG",
    "te_cl": POST + CHUNKED + b"content-length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
    "cl_te_smuggled_request": POST + CHUNKED + b"content-length: 40\r\n\r\n0\r\n\r\n" + SMUGGLED,
    # Content-Length given twice, as a list, or malformed.
    "cl_twice_same": POST + b"content-length: 5\r\ncontent-length: 5\r\n\r\nhello",
    "cl_twice_different": POST + b"content-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
    "cl_list": POST + b"content-length: 5, 5\r\n\r\nhello",
    "cl_plus": POST + b"content-length: +5\r\n\r\nhello",
    "cl_two_numbers": POST + b"content-length: 5 5\r\n\r\nhello",
    "cl_hex": POST + b"content-length: 0x5\r\n\r\nhello",
    "cl_empty": POST + b"content-length: \r\n\r\nhello",
    "cl_negative": POST + b"content-length: -1\r\n\r\nhello",
    "cl_huge": POST + b"content-length: 99999999999999999999999999\r\n\r\nhello",
    # Obfuscated Transfer-Encoding.
    "te_xchunked": POST + b"transfer-encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te_chunked_identity": POST + b"transfer-encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "te_identity": POST + b"transfer-encoding: identity\r\ncontent-length: 5\r\n\r\nhello",
    "te_gzip_only": POST + b"transfer-encoding: gzip\r\n\r\n0\r\n\r\n",
    "te_vertical_tab": POST + b"transfer-encoding:\x0bchunked\r\n\r\n0\r\n\r\n",
    "te_form_feed": POST + b"transfer-encoding: \x0cchunked\r\n\r\n0\r\n\r\n",
    "te_space_before_colon": POST + b"transfer-encoding : chunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n",
    "te_underscore": POST + b"content-length: 5\r\ntransfer_encoding: chunked\r\n\r\n0\r\n\r\n",
    "cl_underscore": POST + CHUNKED + b"content_length: 5\r\n\r\n0\r\n\r\n",
    "te_twice": POST + CHUNKED + CHUNKED + b"\r\n0\r\n\r\n",
    "te_chunked_chunked": POST + b"transfer-encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    "te_http10": b"POST /probe HTTP/1.0\r\nhost: a\r\n" + CHUNKED + b"\r\n0\r\n\r\n",
    "te_obs_fold": POST + b"transfer-encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    # Control characters in field values, line folding, bare LF line endings.
    "nul_in_value": GET + b"x-a: a\x00b\r\n\r\n",
    "cr_in_value": GET + b"x-a: a\rb\r\n\r\n",
    "obs_fold": GET + b"x-a: a\r\n b\r\n\r\n",
    "bare_lf_head": b"GET /probe HTTP/1.1\nhost: a\n\n",
    "bare_lf_mixed": GET + b"x-a: b\n\r\n",
    "space_in_name": GET + b"x a: b\r\n\r\n",
    # Invalid chunk framing.
    "chunk_size_not_hex": POST + CHUNKED + b"\r\nzz\r\nhello\r\n0\r\n\r\n",
    "chunk_size_overflow": POST + CHUNKED + b"\r\nfffffffffffffffff1\r\nhello\r\n0\r\n\r\n",
    "chunk_size_0x": POST + CHUNKED + b"\r\n0x5\r\nhello\r\n0\r\n\r\n",
    "chunk_size_negative": POST + CHUNKED + b"\r\n-5\r\nhello\r\n0\r\n\r\n",
    "chunk_ext_bare_lf": POST + CHUNKED + b"\r\n5;a=b\nhello\r\n0\r\n\r\n",
    "chunk_ext_control": POST + CHUNKED + b"\r\n5;a=\x00\r\nhello\r\n0\r\n\r\n",
    "chunk_data_too_long": POST + CHUNKED + b"\r\n5\r\nhelloXX\r\n0\r\n\r\n",
    "chunk_bare_lf": POST + CHUNKED + b"\r\n5\nhello\n0\n\n",
    # Request line oddities and host confusion.
    "double_space": b"GET  /probe HTTP/1.1\r\nhost: a\r\n\r\n",
    "tab_in_request_line": b"GET\t/probe HTTP/1.1\r\nhost: a\r\n\r\n",
    "absolute_form_other_host": b"GET http://evil.example/probe HTTP/1.1\r\nhost: a\r\n\r\n",
    "host_twice": b"GET /probe HTTP/1.1\r\nhost: a\r\nhost: evil.example\r\n\r\n",
    "http_1_1_without_host": b"GET /probe HTTP/1.1\r\n\r\n",
}


def config(port, backend, extra=""):
    return f"""
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


def raw(port, data, timeout=3):
    """Sends bytes at once, returns everything read until the server closes, or `<timeout>`."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return out
                out += chunk
        except socket.timeout:
            return out + b"<timeout>"
        except ConnectionResetError:
            return out + b"<reset>"


def recorded(backend):
    r = httpx.get(f"http://{backend}/__recorded", timeout=5)
    return [base64.b64decode(c) for c in r.json()["connections"]]


def reset(backend):
    httpx.post(f"http://{backend}/__reset", timeout=5)


@pytest.fixture
def proxy(tandem, start_backend):
    b = free_port()
    start_backend("recording_backend.py", b)
    backend = f"127.0.0.1:{b}"
    port = free_port()
    tandem(config(port, backend))
    return port, backend


@pytest.mark.parametrize("name", list(PROBES))
def test_probe_is_refused_and_never_forwarded(proxy, name):
    """The probe gets one 400 and a closed connection; the backend receives none of its bytes; a
    legitimate request right after, on a new connection, is served and is all the backend saw."""
    port, backend = proxy
    reset(backend)
    out = raw(port, PROBES[name])
    assert out.startswith(b"HTTP/1.1 400 "), f"{name}: {out[:300]!r}"
    assert not out.endswith((b"<timeout>", b"<reset>")), f"{name}: connection left open: {out[:300]!r}"
    assert len(re.findall(rb"HTTP/1\.1 \d{3} ", out)) == 1, f"{name}: more than one response: {out!r}"
    # hyper's own refusals carry no body; Tandem's name the reason (`tandem-error: bad_request`).
    print(name, "refused by", "tandem" if b"tandem-error: bad_request" in out else "hyper")
    r = httpx.get(f"http://127.0.0.1:{port}/after", timeout=5)
    assert (r.status_code, r.text) == (200, "ok GET /after")
    seen = b"".join(recorded(backend))
    assert b"/probe" not in seen and b"/smuggled" not in seen, f"{name} reached the backend: {seen!r}"
    assert seen.startswith(b"GET /after HTTP/1.1\r\n") and seen.count(b"HTTP/1.1") == 1, seen


def wait_recorded(backend, needle, timeout=5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = b"".join(recorded(backend))
        if needle in seen:
            return seen
        time.sleep(0.02)
    raise AssertionError(f"{needle!r} never reached the backend")


def test_malformed_chunk_after_forwarding_fails_the_connection(proxy):
    """A malformed chunk that arrives after the request was handed to the upstream cannot get a
    400 any more: the client connection fails instead, and the upstream sees a body cut short,
    never its end nor what followed it."""
    port, backend = proxy
    reset(backend)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(POST + CHUNKED + b"\r\n5\r\nhello\r\n")
        wait_recorded(backend, b"hello")
        s.sendall(b"5\nworld\r\n0\r\n\r\n" + SMUGGLED)
        s.settimeout(3)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except socket.timeout:
            out += b"<timeout>"
        except ConnectionResetError:
            pass
    assert b"<timeout>" not in out, f"connection left open: {out!r}"
    assert not out.startswith(b"HTTP/1.1 200"), out
    time.sleep(0.2)
    seen = b"".join(recorded(backend))
    assert b"world" not in seen and b"/smuggled" not in seen and not seen.endswith(b"0\r\n\r\n"), seen


def test_slow_head_and_slow_body_are_cut_off(tandem, start_backend):
    """Slowloris: a head trickled a byte at a time is cut off by header_read_timeout (nothing
    forwarded); a body that stops arriving gets 408 `client_timeout` after body_read_timeout and
    the upstream request is abandoned before its body ends."""
    b = free_port()
    start_backend("recording_backend.py", b)
    backend = f"127.0.0.1:{b}"
    port = free_port()
    tandem(config(port, backend, extra="limits: { header_read_timeout: 1s, body_read_timeout: 1s }"))

    reset(backend)
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        closed = False
        for byte in GET:
            try:
                s.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.1)
            if time.monotonic() - start > 4:
                break
        if not closed:
            s.settimeout(3)
            try:
                closed = s.recv(65536) is not None
            except (socket.timeout, ConnectionResetError):
                closed = False
    took = time.monotonic() - start
    print(f"slow head cut off after {took:.2f}s")
    assert closed and took < 3.5, f"slow head not cut off ({took:.2f}s)"
    assert recorded(backend) == []

    reset(backend)
    start = time.monotonic()
    out = raw(port, POST + b"content-length: 100\r\n\r\n" + b"x" * 10, timeout=5)
    took = time.monotonic() - start
    print(f"stalled body answered after {took:.2f}s: {out[:60]!r}")
    assert out.startswith(b"HTTP/1.1 408 "), out
    assert b"tandem-error: client_timeout" in out and not out.endswith(b"<timeout>"), out
    assert 0.9 < took < 3, took
    seen = b"".join(recorded(backend))
    assert seen.endswith(b"\r\n\r\n" + b"x" * 10), seen
    r = httpx.get(f"http://127.0.0.1:{port}/after", timeout=5)
    assert (r.status_code, r.text) == (200, "ok GET /after")


def test_client_faults_do_not_eject_endpoints(tandem, start_backend):
    """Requests whose bodies stall (408) or break off are the client's fault: they must not count
    as endpoint failures, or any client could eject healthy endpoints (here two failures in a
    row would). Both endpoints stay in rotation."""
    backends = []
    for _ in range(2):
        b = free_port()
        start_backend("recording_backend.py", b)
        backends.append(f"127.0.0.1:{b}")
    port = free_port()
    t = tandem(f"""
limits: {{ body_read_timeout: 500ms }}
listeners:
  inbound: {{ address: 127.0.0.1:{port}, upstream: app }}
upstreams:
  app:
    endpoints: [{backends[0]}, {backends[1]}]
    protocol: http1
    balancer: round_robin
    circuit_breaker: {{ consecutive_failures: 2 }}
""")
    stalled = [raw(port, POST + b"content-length: 100\r\n\r\nabc", timeout=5) for _ in range(3)]
    assert all(s.startswith(b"HTTP/1.1 408 ") for s in stalled), stalled
    for i in range(3):
        # Break off mid-body, once the upstream has the request.
        marker = b"broken-%d" % i
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(POST + b"content-length: 100\r\n\r\n" + marker)
            deadline = time.monotonic() + 5
            while not any(marker in c for b in backends for c in recorded(b)):
                assert time.monotonic() < deadline, "the broken request never reached a backend"
                time.sleep(0.02)
    view = httpx.get(f"{t.admin}/upstreams", timeout=5).json()
    endpoints = view[0]["endpoints"]
    assert [(e["breaker"], e["eligible"]) for e in endpoints] == [("closed", True)] * 2, endpoints


def test_client_that_stops_reading_is_disconnected(tandem, http_backend):
    """Slow read: a client asks for 50 MB and never reads. Once the socket buffers are full,
    send_timeout (1 s here) closes the connection, so the response cannot hold its upstream
    request forever; what the client finally reads ends well short of 50 MB."""
    port = free_port()
    tandem(config(port, http_backend, extra="limits: { send_timeout: 1s }"))
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /bytes/50000000 HTTP/1.1\r\nhost: a\r\n\r\n")
    time.sleep(3)  # the client reads nothing
    got, ended = 0, None
    start = time.monotonic()
    try:
        while time.monotonic() - start < 5:
            chunk = s.recv(1 << 20)
            if not chunk:
                ended = "eof"
                break
            got += len(chunk)
    except ConnectionResetError:
        ended = "reset"
    except socket.timeout:
        ended = None
    s.close()
    print(f"slow reader got {got} bytes before the connection ended ({ended})")
    assert ended is not None and got < 50_000_000, (got, ended)
    r = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
    assert r.status_code == 200
