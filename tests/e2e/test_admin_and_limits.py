"""Admin API exposure and per-listener connection limits, against the real binary.

- The admin API binds loopback (or a Unix socket) by default; a non-loopback address is a config
  error naming the key and the fix, from the file and from `--admin`, unless
  `admin.allow_remote: true` says it is meant.
- Admin endpoints answer their own method only: anything else gets 405 with `Allow`.
- `limits.max_connections` is a budget per listener, also settable in a listener's own `limits`:
  one listener full does not starve another.
"""
import socket

import httpx
import pytest

from conftest import TANDEM_BIN, free_port, run


def listener_config(port, backend, extra=""):
    return f"""{extra}
listeners:
  inbound:
    address: 127.0.0.1:{port}
    upstream: app
upstreams:
  app:
    endpoints: [{backend}]
"""


@pytest.mark.parametrize("address", ["0.0.0.0:{p}", "[::]:{p}"])
def test_non_loopback_admin_is_a_config_error(tmp_path, address):
    """`tandem check` and `tandem run` refuse a wildcard admin address: exit 64, the file, line
    and key, and a hint naming both fixes; nothing is bound."""
    p = free_port()
    cfg = tmp_path / "t.yaml"
    cfg.write_text(listener_config(free_port(), "127.0.0.1:1", f'admin: {{ address: "{address.format(p=p)}" }}'))
    for cmd in (["check", "-c", str(cfg)], ["run", "-c", str(cfg)]):
        r = run([TANDEM_BIN, *cmd], timeout=10)
        assert r.returncode == 64, (cmd, r.stdout, r.stderr)
        assert f"{cfg}:1: admin.address: `{address.format(p=p)}` is not a loopback address" in r.stderr, r.stderr
        assert "admin.allow_remote: true" in r.stderr and "127.0.0.1:PORT" in r.stderr, r.stderr


def test_admin_flag_cannot_expose_it_either(tmp_path):
    """`--admin 0.0.0.0:PORT` over a file that does not allow remote access is refused too."""
    cfg = tmp_path / "t.yaml"
    cfg.write_text(listener_config(free_port(), "127.0.0.1:1"))
    r = run([TANDEM_BIN, "run", "-c", str(cfg), "--admin", f"0.0.0.0:{free_port()}"], timeout=10)
    assert r.returncode != 0, r.stderr
    assert "--admin 0.0.0.0:" in r.stderr and "not a loopback address" in r.stderr, r.stderr
    assert "admin.allow_remote: true" in r.stderr, r.stderr


def test_allow_remote_binds_the_wildcard(tandem, http_backend):
    """With `allow_remote: true` the admin API listens on 0.0.0.0: reachable on a non-loopback
    address of this host when it has one, and on loopback."""
    admin = free_port()
    t = tandem(listener_config(free_port(), http_backend,
                               f'admin: {{ address: "0.0.0.0:{admin}", allow_remote: true }}'),
               wait_ready=False)
    t.admin_port = admin
    t.wait_ready()
    assert httpx.get(f"http://127.0.0.1:{admin}/live", timeout=5).text == "live\n"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: only picks the outgoing address
            own = s.getsockname()[0]
        except OSError:
            own = None
    if own and not own.startswith("127."):
        assert httpx.get(f"http://{own}:{admin}/live", timeout=5).status_code == 200


def test_admin_endpoints_refuse_other_methods(tandem, http_backend):
    """Every admin endpoint is read-only GET: POST, PUT and DELETE get 405 with an `Allow`
    header, and change nothing (/ready still answers 200)."""
    t = tandem(listener_config(free_port(), http_backend))
    for path in ["/live", "/ready", "/metrics", "/config", "/upstreams"]:
        for method in ["POST", "PUT", "DELETE", "PATCH"]:
            r = httpx.request(method, f"{t.admin}{path}", timeout=5)
            assert r.status_code == 405, (method, path, r.status_code)
            assert "GET" in r.headers.get("allow", ""), (method, path, r.headers)
    assert httpx.get(f"{t.admin}/ready", timeout=5).status_code == 200


@pytest.mark.parametrize("where", ["top_level", "listener"])
def test_max_connections_is_per_listener(tandem, http_backend, where):
    """max_connections: 1, set for every listener or in listener `a`'s own `limits`: while one
    connection holds `a`, a second one to `a` waits, and listener `b` still serves at once."""
    a, b = free_port(), free_port()
    top, own = ("limits: { max_connections: 1 }", "") if where == "top_level" else \
        ("", ", limits: { max_connections: 1 }")
    tandem(f"""
{top}
listeners:
  a: {{ address: 127.0.0.1:{a}, upstream: app{own} }}
  b: {{ address: 127.0.0.1:{b}, upstream: app }}
upstreams:
  app:
    endpoints: [{http_backend}]
""")
    held = socket.create_connection(("127.0.0.1", a), timeout=5)
    held.sendall(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
    assert held.recv(4096).startswith(b"HTTP/1.1 200")
    waiting = socket.create_connection(("127.0.0.1", a), timeout=5)
    waiting.sendall(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
    waiting.settimeout(0.7)
    with pytest.raises(socket.timeout):
        waiting.recv(4096)
    r = httpx.get(f"http://127.0.0.1:{b}/", timeout=2)
    assert (r.status_code, r.text) == (200, "ok")
    held.close()
    waiting.settimeout(5)
    assert waiting.recv(4096).startswith(b"HTTP/1.1 200")
    waiting.close()
