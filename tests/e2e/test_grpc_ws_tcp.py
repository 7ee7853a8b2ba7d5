"""gRPC (grpcio), WebSocket (websockets), raw TCP and Unix sockets through the real binary."""
import asyncio
import socket

import grpc
import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect

from conftest import free_port, metric, run


@pytest.fixture(params=["http2", "auto"])
def grpc_via_tandem(request, tandem, start_backend):
    """A grpcio channel to Tandem, whose upstream is a grpcio server (`protocol: http2`, then `auto`)."""
    backend = free_port()
    start_backend("grpc_backend.py", backend)
    port = free_port()
    tandem(f"""
listeners:
  inbound:
    address: 127.0.0.1:{port}
    upstream: grpc
upstreams:
  grpc:
    endpoints: [127.0.0.1:{backend}]
    protocol: {request.param}
""")
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield ch
    ch.close()


def test_grpc_unary_and_status(grpc_via_tandem):
    """Unary calls pass; a non-OK status and trailing metadata come back unchanged."""
    unary = grpc_via_tandem.unary_unary("/test.Echo/Unary")
    reply, call = unary.with_call(b"hello", timeout=10)
    assert reply == b"hello"
    assert ("x-trailer", "present") in call.trailing_metadata()
    with pytest.raises(grpc.RpcError) as e:
        unary(b"x", metadata=(("fail", "PERMISSION_DENIED"),), timeout=10)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert e.value.details() == "failing as asked"
    assert ("x-why", "asked-to-fail") in e.value.trailing_metadata()


def test_grpc_streaming_kinds(grpc_via_tandem):
    """Server, client and bidirectional streaming all work through Tandem."""
    ch = grpc_via_tandem
    assert list(ch.unary_stream("/test.Echo/ServerStream")(b"5", timeout=10)) == [b"0", b"1", b"2", b"3", b"4"]
    assert ch.stream_unary("/test.Echo/ClientStream")(iter([b"a", b"b", b"c"]), timeout=10) == b"a,b,c"
    out = list(ch.stream_stream("/test.Echo/Bidi")(iter([b"x", b"yz", b"w"]), timeout=10))
    assert out == [b"X", b"YZ", b"W"]


def test_grpc_deadlines_pass_through(grpc_via_tandem):
    """The client's deadline reaches the server (grpc-timeout) and expiry is DEADLINE_EXCEEDED."""
    call = grpc_via_tandem.unary_unary("/test.Echo/Deadline")
    left_ms = int(call(b"", timeout=5))
    # Not more than the client's 5 s, give or take gRPC's own rounding: grpc-core rounds the
    # encoded timeout up and reads a cached clock, so a server reached directly (no Tandem) reports
    # up to ~5,009 ms left for a 5 s deadline (measured: 293 of 300 calls over 5,000). A deadline
    # that did not pass through reads "none"; one Tandem lengthened reads far more.
    assert 3000 < left_ms <= 5100
    with pytest.raises(grpc.RpcError) as e:
        call(b"2000", timeout=0.5)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_websocket_echo(tandem, start_backend):
    """A WebSocket upgrade goes through; messages flow both ways; close is clean."""
    backend = free_port()
    start_backend("ws_backend.py", backend)
    port = free_port()
    tandem(f"""
listeners:
  inbound:
    address: 127.0.0.1:{port}
    upstream: ws
upstreams:
  ws:
    endpoints: [127.0.0.1:{backend}]
""")

    async def go():
        async with ws_connect(f"ws://127.0.0.1:{port}/chat", open_timeout=10, close_timeout=5) as ws:
            got = []
            for msg in ["hello", "tandem", "x" * 100_000]:
                await ws.send(msg)
                got.append(await asyncio.wait_for(ws.recv(), 10))
            await ws.send(b"\x00\x01binary")
            got.append(await asyncio.wait_for(ws.recv(), 10))
            # several in flight at once, answered in order
            for i in range(10):
                await ws.send(f"burst {i}")
            for i in range(10):
                got.append(await asyncio.wait_for(ws.recv(), 10))
            await asyncio.wait_for(ws.close(), 10)
            return got, ws.close_code

    got, close_code = asyncio.run(go())
    assert got == ["hello", "tandem", "x" * 100_000, b"\x00\x01binary"] + [f"burst {i}" for i in range(10)]
    assert close_code == 1000, "the server's close frame came back through Tandem"


def test_tcp_listener_with_half_close(tandem, start_backend):
    """Raw TCP: bytes both ways, the client's half-close reaches the server, metrics count bytes."""
    backend = free_port()
    start_backend("tcp_echo.py", backend)
    port = free_port()
    t = tandem(f"""
listeners:
  db:
    address: 127.0.0.1:{port}
    protocol: tcp
    upstream: echo
upstreams:
  echo:
    endpoints: [127.0.0.1:{backend}]
""")
    payload = bytes(range(256)) * 1000
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    assert got == payload
    # A second connection: the server's reply arrives before the client half-closes.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"ping")
        assert s.recv(16) == b"ping"
        s.shutdown(socket.SHUT_WR)
        assert s.recv(16) == b"", "the server's close after our half-close reaches us"
    metrics = httpx.get(f"{t.admin}/metrics", timeout=5).text
    assert run(["promtool", "check", "metrics"], input=metrics).returncode == 0
    payload += b"ping"
    assert metric(metrics, "tandem_tcp_received_bytes_total", listener="db") == len(payload)
    assert metric(metrics, "tandem_tcp_sent_bytes_total", listener="db") == len(payload)


def test_unix_socket_listener_and_upstream(tandem, start_backend, tmp_path):
    """A Unix-socket listener (curl --unix-socket) forwards to a Unix-socket upstream."""
    app_sock = tmp_path / "app.sock"
    in_sock = tmp_path / "in.sock"
    start_backend("http_backend.py", f"unix:{app_sock}")
    tandem(f"""
listeners:
  inbound:
    address: unix:{in_sock}
    upstream: app
upstreams:
  app:
    endpoints: ["unix:{app_sock}"]
""")
    r = run(["curl", "-s", "--max-time", "10", "--unix-socket", str(in_sock), "http://app.local/echo"])
    assert r.returncode == 0, r.stderr
    info = httpx.Response(200, content=r.stdout.encode()).json()
    assert info["path"] == "/echo"
    headers = dict(info["headers"])
    assert headers["host"] == "app.local"
    assert headers["forwarded"] == "for=unknown;proto=http"
