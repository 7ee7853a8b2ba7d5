"""Access log through the real binary: every line parses as JSON with the documented fields, for
HTTP/1.1 (httpx), HTTP/2 (httpx, h2c), gRPC (grpcio) and TCP; values match what the clients saw
(status, exact body sizes, route and upstream names, a retry, Tandem's error reasons); SIGUSR1
reopens the file after logrotate renames it, losing nothing; `path: stdout` works too."""
import json
import signal
import socket
import time

import grpc
import httpx

from conftest import free_port, metric, wait_for

# docs/config.md, "Access logs": the default field set, in order.
HTTP_FIELDS = ["kind", "time", "duration_ms", "head_ms", "listener", "direction", "route", "upstream",
               "endpoint", "client", "protocol", "method", "path", "authority", "status", "grpc_status",
               "received_bytes", "sent_bytes", "attempts", "retries", "error", "end", "completed",
               "user_agent", "peer_identity", "trace_id", "span_id"]
HTTP_ONLY = {"head_ms", "route", "method", "path", "authority", "status", "grpc_status", "attempts", "retries",
             "user_agent"}
TCP_FIELDS = [f for f in HTTP_FIELDS if f not in HTTP_ONLY]


def read_lines(path):
    """Every line of the file, parsed; each must be one JSON object."""
    if not path.exists():
        return []
    out = []
    for raw in path.read_text().splitlines():
        line = json.loads(raw)
        assert isinstance(line, dict), raw
        out.append(line)
    return out


def wait_lines(path, n, timeout=10):
    wait_for(lambda: len(read_lines(path)) >= n, timeout, f"{n} access log lines in {path}")
    return read_lines(path)


def by_path(lines, path):
    found = [l for l in lines if l.get("path") == path]
    assert len(found) == 1, (path, lines)
    return found[0]


def check_shape(line):
    """Keys in the documented order with values of the documented types."""
    want = HTTP_FIELDS if line["kind"] == "http" else TCP_FIELDS
    assert list(line) == want, line
    assert time.strptime(line["time"][:19], "%Y-%m-%dT%H:%M:%S") and line["time"].endswith("Z"), line
    assert len(line["time"]) == len("2026-01-01T00:00:00.000000Z"), line
    assert isinstance(line["duration_ms"], (int, float)) and line["duration_ms"] >= 0, line
    assert isinstance(line["received_bytes"], int) and isinstance(line["sent_bytes"], int), line
    assert line["completed"] == (line["end"] == "complete"), line
    assert line["peer_identity"] is None and line["trace_id"] is None and line["span_id"] is None, line
    if line["kind"] == "http":
        assert line["head_ms"] is None or 0 <= line["head_ms"] <= line["duration_ms"], line
        assert line["retries"] == max(line["attempts"] - 1, 0), line


def test_http1_http2_errors_and_retries(tandem, start_backend, tmp_path):
    """HTTP/1.1 and HTTP/2 requests, a 503 retried once, a 502 and a 503 Tandem answered itself:
    one line each, with the bytes, names, tries and reasons the clients saw."""
    backend = free_port()
    start_backend("http_backend.py", backend, {"BACKEND_H2": "1"})
    closed = free_port()
    port = free_port()
    log = tmp_path / "access.log"
    t = tandem(f"""
access_log:
  path: {log}
listeners:
  inbound:
    address: 127.0.0.1:{port}
    upstream: app
    routes:
      - name: echo
        match: {{ path: {{ prefix: /echo }} }}
        upstream: app
      - name: refused
        match: {{ path: {{ prefix: /refused }} }}
        upstream: refused
      - name: empty
        match: {{ path: {{ prefix: /empty }} }}
        upstream: empty
upstreams:
  app: {{ endpoints: [127.0.0.1:{backend}] }}
  refused: {{ endpoints: [127.0.0.1:{closed}], retry: {{ attempts: 1 }} }}
  empty: {{ endpoints: [] }}
""")
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(timeout=10) as c:
        body = b"z" * 3000
        r1 = c.post(f"{base}/echo/h1?q=%22x%22", content=body, headers={"user-agent": "e2e-agent/1"})
        assert r1.status_code == 200 and r1.json()["body_len"] == 3000
        r_chunked = c.get(f"{base}/chunked")
        assert r_chunked.content == b"one,two,three"
        assert c.post(f"http://127.0.0.1:{backend}/__control", json={"fail_next": 1}).status_code == 200
        retried = c.get(f"{base}/echo/retried")
        assert retried.status_code == 200
        bad = c.get(f"{base}/refused/x")
        assert (bad.status_code, bad.headers["tandem-error"]) == (502, "connect_failed")
        empty = c.get(f"{base}/empty/x")
        assert (empty.status_code, empty.headers["tandem-error"]) == (503, "no_endpoints")
    with httpx.Client(http1=False, http2=True, timeout=10) as c:
        r2 = c.get(f"{base}/echo/h2")
        assert r2.http_version == "HTTP/2" and r2.status_code == 200

    lines = wait_lines(log, 6)
    assert len(lines) == 6, lines
    for line in lines:
        check_shape(line)
        assert (line["listener"], line["direction"]) == ("inbound", "inbound"), line
        assert line["client"].startswith("127.0.0.1:"), line

    h1 = by_path(lines, '/echo/h1?q=%22x%22')
    assert (h1["protocol"], h1["method"], h1["status"]) == ("HTTP/1.1", "POST", 200)
    assert (h1["route"], h1["upstream"], h1["endpoint"]) == ("echo", "app", f"127.0.0.1:{backend}")
    assert h1["received_bytes"] == 3000
    assert h1["sent_bytes"] == len(r1.content)
    assert (h1["attempts"], h1["retries"], h1["error"]) == (1, 0, None)
    assert (h1["end"], h1["completed"]) == ("complete", True)
    assert h1["user_agent"] == "e2e-agent/1"
    assert h1["authority"] == f"127.0.0.1:{port}"

    chunked = by_path(lines, "/chunked")
    assert (chunked["route"], chunked["sent_bytes"]) == ("default", len(b"one,two,three"))

    r = by_path(lines, "/echo/retried")
    assert (r["status"], r["attempts"], r["retries"], r["error"]) == (200, 2, 1, None)
    assert r["sent_bytes"] == len(retried.content)

    b = by_path(lines, "/refused/x")
    assert (b["status"], b["error"], b["route"], b["upstream"]) == (502, "connect_failed", "refused", "refused")
    assert (b["endpoint"], b["attempts"]) == (f"127.0.0.1:{closed}", 1)
    assert b["sent_bytes"] == len(bad.content)

    e = by_path(lines, "/empty/x")
    assert (e["status"], e["error"], e["upstream"], e["endpoint"], e["attempts"]) == (503, "no_endpoints", "empty", None, 0)
    assert e["sent_bytes"] == len(empty.content)

    h2 = by_path(lines, "/echo/h2")
    assert (h2["protocol"], h2["method"], h2["status"]) == ("HTTP/2", "GET", 200)
    assert h2["sent_bytes"] == len(r2.content) and h2["received_bytes"] == 0
    assert h2["authority"] == f"127.0.0.1:{port}"

    text = httpx.get(f"{t.admin}/metrics", timeout=5).text
    assert metric(text, "tandem_access_log_dropped_total") == 0


def test_grpc_calls(tandem, start_backend, tmp_path):
    """gRPC through Tandem (grpcio both sides): the status from the trailers, message bytes both
    ways, and a Tandem-made gRPC error with its reason."""
    backend = free_port()
    start_backend("grpc_backend.py", backend)
    port = free_port()
    log = tmp_path / "access.log"
    tandem(f"""
access_log: {{ path: {log} }}
listeners:
  inbound:
    address: 127.0.0.1:{port}
    upstream: grpc
    routes:
      - name: nowhere
        match: {{ path: {{ prefix: /test.Missing }} }}
        upstream: nowhere
upstreams:
  grpc: {{ endpoints: [127.0.0.1:{backend}], protocol: http2 }}
  nowhere: {{ endpoints: [] }}
""")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        assert ch.unary_unary("/test.Echo/Unary")(b"hello", timeout=10) == b"hello"
        try:
            ch.unary_unary("/test.Echo/Unary")(b"x", metadata=(("fail", "PERMISSION_DENIED"),), timeout=10)
            raise AssertionError("expected PERMISSION_DENIED")
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert list(ch.unary_stream("/test.Echo/ServerStream")(b"3", timeout=10)) == [b"0", b"1", b"2"]
        try:
            ch.unary_unary("/test.Missing/Call")(b"", timeout=10)
            raise AssertionError("expected UNAVAILABLE")
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE

    lines = wait_lines(log, 4)
    assert len(lines) == 4, lines
    for line in lines:
        check_shape(line)
        assert (line["protocol"], line["method"], line["status"]) == ("HTTP/2", "POST", 200), line
    ok, failed = [l for l in lines if l["path"] == "/test.Echo/Unary"]
    # A gRPC message is a 5-byte prefix and the payload.
    assert (ok["grpc_status"], ok["received_bytes"], ok["sent_bytes"]) == (0, 5 + 5, 5 + 5)
    assert (ok["upstream"], ok["endpoint"], ok["end"]) == ("grpc", f"127.0.0.1:{backend}", "complete")
    assert (failed["grpc_status"], failed["received_bytes"], failed["sent_bytes"]) == (7, 5 + 1, 0)
    stream = by_path(lines, "/test.Echo/ServerStream")
    assert (stream["grpc_status"], stream["sent_bytes"]) == (0, 3 * (5 + 1))
    missing = by_path(lines, "/test.Missing/Call")
    assert (missing["grpc_status"], missing["error"], missing["route"]) == (14, "no_endpoints", "nowhere")


def test_tcp_connection(tandem, start_backend, tmp_path):
    """One line per TCP connection at close: bytes each way, upstream, endpoint; none of the HTTP
    fields. A connection with nowhere to go says why."""
    backend = free_port()
    start_backend("tcp_echo.py", backend)
    closed = free_port()
    port, dead = free_port(), free_port()
    log = tmp_path / "access.log"
    tandem(f"""
access_log: {{ path: {log} }}
listeners:
  db:
    address: 127.0.0.1:{port}
    protocol: tcp
    direction: outbound
    upstream: echo
  dead:
    address: 127.0.0.1:{dead}
    protocol: tcp
    upstream: refused
upstreams:
  echo: {{ endpoints: [127.0.0.1:{backend}] }}
  refused: {{ endpoints: [127.0.0.1:{closed}] }}
""")
    payload = bytes(range(256)) * 40
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    assert got == payload
    with socket.create_connection(("127.0.0.1", dead), timeout=10) as s:
        assert s.recv(16) == b"", "closed without an upstream"

    lines = wait_lines(log, 2)
    assert len(lines) == 2, lines
    for line in lines:
        check_shape(line)
        assert line["kind"] == "tcp" and line["protocol"] == "tcp", line
    ok = next(l for l in lines if l["listener"] == "db")
    assert (ok["received_bytes"], ok["sent_bytes"]) == (len(payload), len(payload))
    assert (ok["direction"], ok["upstream"], ok["endpoint"]) == ("outbound", "echo", f"127.0.0.1:{backend}")
    assert (ok["end"], ok["completed"], ok["error"]) == ("complete", True, None)
    no = next(l for l in lines if l["listener"] == "dead")
    assert (no["error"], no["end"], no["endpoint"]) == ("connect_failed", "no_upstream", f"127.0.0.1:{closed}")
    assert (no["received_bytes"], no["sent_bytes"]) == (0, 0)


def test_sigusr1_reopens_after_rename(tandem, start_backend, tmp_path):
    """logrotate's rename-and-reopen: after the rename, lines keep going to the renamed file until
    SIGUSR1; then a new file appears at the configured path and later lines go there. Every
    request is in exactly one of the two files."""
    backend = free_port()
    start_backend("http_backend.py", backend)
    port = free_port()
    log = tmp_path / "access.log"
    rotated = tmp_path / "access.log.1"
    t = tandem(f"""
access_log: {{ path: {log}, fields: [path, status] }}
listeners:
  inbound:
    address: 127.0.0.1:{port}
    upstream: app
upstreams:
  app: {{ endpoints: [127.0.0.1:{backend}] }}
""")
    with httpx.Client(timeout=10) as c:
        for i in range(5):
            assert c.get(f"http://127.0.0.1:{port}/before/{i}").status_code == 200
        wait_lines(log, 5)
        log.rename(rotated)
        for i in range(3):
            assert c.get(f"http://127.0.0.1:{port}/between/{i}").status_code == 200
        wait_lines(rotated, 8)
        assert not log.exists()
        t.signal(signal.SIGUSR1)
        wait_for(log.exists, 10, "a new file at the configured path")
        for i in range(4):
            assert c.get(f"http://127.0.0.1:{port}/after/{i}").status_code == 200
        new = wait_lines(log, 4)

    old = read_lines(rotated)
    assert [l["path"] for l in old] == [f"/before/{i}" for i in range(5)] + [f"/between/{i}" for i in range(3)]
    assert [l["path"] for l in new] == [f"/after/{i}" for i in range(4)]
    assert all(l == {"path": l["path"], "status": 200} for l in old + new)
    assert t.p.poll() is None, "SIGUSR1 did not stop Tandem"
    assert "access log reopened" in t.log()


def test_stdout_and_flush_on_exit(tandem, start_backend):
    """`path: stdout`: lines go to Tandem's standard output, and requests answered just before
    SIGTERM are written out before Tandem exits."""
    backend = free_port()
    start_backend("http_backend.py", backend)
    port = free_port()
    t = tandem(f"""
access_log: {{ path: stdout, fields: [kind, path, status, sent_bytes] }}
listeners:
  inbound:
    address: 127.0.0.1:{port}
    upstream: app
upstreams:
  app: {{ endpoints: [127.0.0.1:{backend}] }}
""")
    with httpx.Client(timeout=10) as c:
        for i in range(20):
            assert c.get(f"http://127.0.0.1:{port}/out/{i}").status_code == 200
    t.signal(signal.SIGTERM)
    assert t.wait(30) == 0
    # The fixture captures stdout and stderr in one file: the access lines are the JSON ones.
    json_lines = [json.loads(l) for l in t.log().splitlines() if l.startswith("{")]
    assert json_lines == [{"kind": "http", "path": f"/out/{i}", "status": 200, "sent_bytes": 2} for i in range(20)]


def test_hostile_request_stays_one_line(tandem, start_backend, tmp_path):
    """A 60 KiB path and a User-Agent with quotes, a backslash and invalid UTF-8: still one valid
    JSON line, short, with the values cut and the bad bytes replaced."""
    backend = free_port()
    start_backend("http_backend.py", backend)
    port = free_port()
    log = tmp_path / "access.log"
    tandem(f"""
access_log: {{ path: {log}, fields: [path, user_agent, status] }}
listeners:
  inbound:
    address: 127.0.0.1:{port}
    upstream: app
upstreams:
  app: {{ endpoints: [127.0.0.1:{backend}] }}
""")
    path = "/" + "a" * 60_000
    ua = b'evil "agent" \\ \xff\xfe end'
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n".encode()
                  + b"user-agent: " + ua + b"\r\n\r\n")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200"), reply[:100]
    lines = wait_lines(log, 1)
    raw = log.read_text()
    assert raw.count("\n") == 1 and len(raw) < 3000, len(raw)
    line = lines[0]
    assert line["path"] == path[:2048] + "..."
    assert line["user_agent"] == 'evil "agent" \\ \ufffd\ufffd end'
    assert line["status"] == 200
