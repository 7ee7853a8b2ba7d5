"""HTTP/1.1 and HTTP/2 through the real binary, driven by curl and httpx."""
import json

import httpx
import pytest

from conftest import free_port, run


def inbound_config(port, backend, protocol="auto", extra=""):
    return f"""
listeners:
  inbound:
    address: 127.0.0.1:{port}
    upstream: app
upstreams:
  app:
    endpoints: [{backend}]
    protocol: {protocol}
{extra}
"""


def echo(text):
    return json.loads(text)


def test_http1_keepalive_reuses_the_connection(tandem, http_backend):
    """curl fetching two URLs in one run reuses its connection to Tandem; both reach the app."""
    port = free_port()
    tandem(inbound_config(port, http_backend))
    r = run(["curl", "-sv", "--max-time", "10", f"http://127.0.0.1:{port}/a", f"http://127.0.0.1:{port}/b"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "okok"
    assert "Re-using existing connection" in r.stderr or "Reusing existing" in r.stderr, r.stderr


def test_chunked_request_and_response(tandem, http_backend, tmp_path):
    """A chunked upload arrives whole; a chunked response streams back whole."""
    port = free_port()
    tandem(inbound_config(port, http_backend))
    body = tmp_path / "body"
    body.write_bytes(b"x" * 100_000)
    r = run(["curl", "-s", "--max-time", "10", "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{body}",
             f"http://127.0.0.1:{port}/echo"])
    assert r.returncode == 0, r.stderr
    assert echo(r.stdout)["body_len"] == 100_000
    r = run(["curl", "-s", "--max-time", "10", f"http://127.0.0.1:{port}/chunked"])
    assert r.stdout == "one,two,three"


def test_expect_100_continue(tandem, http_backend, tmp_path):
    """curl's Expect: 100-continue upload gets its 100 from Tandem and the app gets the body."""
    port = free_port()
    tandem(inbound_config(port, http_backend))
    body = tmp_path / "big"
    body.write_bytes(b"y" * 2_000_000)
    r = run(["curl", "-sv", "--max-time", "10", "-H", "Expect: 100-continue", "--data-binary", f"@{body}",
             f"http://127.0.0.1:{port}/echo"])
    assert r.returncode == 0, r.stderr
    assert "HTTP/1.1 100 Continue" in r.stderr, r.stderr
    info = echo(r.stdout)
    assert info["body_len"] == 2_000_000
    assert "expect" not in dict(info["headers"])


def test_hop_by_hop_removed_and_forwarded_added(tandem, http_backend):
    """Hop-by-hop fields never reach the app; inbound adds forwarded/x-forwarded-*."""
    port = free_port()
    tandem(inbound_config(port, http_backend))
    r = run(["curl", "-s", "--max-time", "10",
             "-H", "Connection: keep-alive, X-Hop", "-H", "X-Hop: secret", "-H", "Keep-Alive: timeout=5",
             "-H", "Proxy-Connection: keep-alive", "-H", "TE: gzip", "-H", "Trailer: X-Checksum",
             "-H", "Upgrade: foo/1", "-H", "X-End-To-End: kept",
             f"http://127.0.0.1:{port}/echo"])
    headers = dict(echo(r.stdout)["headers"])
    leaked = [h for h in ("x-hop", "keep-alive", "proxy-connection", "te", "upgrade") if h in headers]
    assert leaked == [], headers
    # RFC 9110 dropped `Trailer` from the hop-by-hop list (RFC 2616 had it): it announces trailer
    # fields end to end, and HTTP/1 senders such as hyper only emit trailers it declares.
    assert headers["trailer"] == "X-Checksum", headers
    assert "x-hop" not in headers.get("connection", "").lower(), headers
    assert headers["x-end-to-end"] == "kept"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["forwarded"] == "for=127.0.0.1;proto=http"


def test_http2_prior_knowledge_with_curl(tandem, http_backend):
    """curl --http2-prior-knowledge speaks h2c to Tandem, which speaks HTTP/1.1 to an http1 upstream."""
    port = free_port()
    tandem(inbound_config(port, http_backend, protocol="http1"))
    r = run(["curl", "-s", "--max-time", "10", "--http2-prior-knowledge", "-w", "%{http_version}",
             f"http://127.0.0.1:{port}/echo"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("2"), r.stdout
    info = echo(r.stdout[:-1])
    assert info["version"] == "HTTP/1.1"
    assert dict(info["headers"])["host"] == f"127.0.0.1:{port}"


def test_http2_multiplexed_with_httpx(tandem, http_backend):
    """httpx over one h2c connection runs many concurrent streams through Tandem."""
    import asyncio

    port = free_port()
    tandem(inbound_config(port, http_backend, protocol="http1"))

    async def go():
        async with httpx.AsyncClient(http1=False, http2=True, timeout=10) as c:
            rs = await asyncio.gather(*[c.get(f"http://127.0.0.1:{port}/sleep/200") for _ in range(20)])
            return rs

    rs = asyncio.run(go())
    assert all(r.status_code == 200 and r.text == "slept" for r in rs)
    assert {r.http_version for r in rs} == {"HTTP/2"}


def test_routes_match_host_path_method_header(tandem, start_backend):
    """Routes pick upstreams by host, path, method and header; first match wins; default catches the rest."""
    a, b, c = free_port(), free_port(), free_port()
    start_backend("http_backend.py", a, {"BACKEND_NAME": "a"})
    start_backend("http_backend.py", b, {"BACKEND_NAME": "b"})
    start_backend("http_backend.py", c, {"BACKEND_NAME": "c"})
    port = free_port()
    tandem(f"""
listeners:
  inbound:
    address: 127.0.0.1:{port}
    upstream: a
    routes:
      - match: {{ headers: {{ x-canary: "1" }} }}
        upstream: c
      - match: {{ host: "*.example.com", path: {{ prefix: /echo }}, method: [POST] }}
        upstream: b
upstreams:
  a: {{ endpoints: [127.0.0.1:{a}] }}
  b: {{ endpoints: [127.0.0.1:{b}] }}
  c: {{ endpoints: [127.0.0.1:{c}] }}
""")
    url = f"http://127.0.0.1:{port}/echo/x"
    with httpx.Client(timeout=10) as h:
        assert h.post(url, headers={"host": "api.example.com"}).json()["server"] == "b"
        assert h.get(url, headers={"host": "api.example.com"}).json()["server"] == "a"
        assert h.post(url, headers={"host": "example.com"}).json()["server"] == "a"
        assert h.post(url, headers={"host": "api.example.com", "x-canary": "1"}).json()["server"] == "c"


def test_http2_client_to_http1_only_app_explains_the_fix(tandem, http_backend):
    """With `protocol: auto`, an h2c client makes Tandem speak HTTP/2 to the app; an HTTP/1.1-only
    app then gets 502 upstream_protocol with a body that names the setting to change."""
    port = free_port()
    tandem(inbound_config(port, http_backend, protocol="auto"))
    r = run(["curl", "-s", "-i", "--max-time", "10", "--http2-prior-knowledge", f"http://127.0.0.1:{port}/x"])
    assert r.stdout.startswith("HTTP/2 502"), r.stdout
    assert "tandem-error: upstream_protocol" in r.stdout
    assert "set `protocol: http1` on this upstream" in r.stdout


@pytest.mark.parametrize("upstream_protocol, client, app_sees", [
    ("http1", "http1.1", "HTTP/1.1"),
    ("http1", "http2-prior-knowledge", "HTTP/1.1"),
    ("http2", "http1.1", "HTTP/2"),
    ("http2", "http2-prior-knowledge", "HTTP/2"),
    ("auto", "http1.1", "HTTP/1.1"),
    ("auto", "http2-prior-knowledge", "HTTP/2"),
])
def test_upstream_protocol_choice(tandem, h2_backend, upstream_protocol, client, app_sees):
    """`protocol` on the upstream picks the version the app receives; `auto` follows the client.
    The client keeps the version it spoke, and the body and headers arrive either way."""
    port = free_port()
    tandem(inbound_config(port, h2_backend, protocol=upstream_protocol))
    r = run(["curl", "-s", "--max-time", "10", f"--{client}", "-w", "\n%{http_version}", "-d", "z" * 70_000,
             "-H", "x-end-to-end: kept", f"http://127.0.0.1:{port}/echo/v?q=1"])
    assert r.returncode == 0, r.stderr
    body, _, client_version = r.stdout.rpartition("\n")
    assert client_version == ("2" if client.startswith("http2") else "1.1")
    info = echo(body)
    assert (info["version"], info["method"], info["path"], info["body_len"]) == (app_sees, "POST", "/echo/v?q=1", 70_000)
    headers = dict(info["headers"])
    assert headers["x-end-to-end"] == "kept"
    authority = headers.get(":authority") if app_sees == "HTTP/2" else headers.get("host")
    assert authority == f"127.0.0.1:{port}", headers


def test_http2_upstream_multiplexes_concurrent_streams(tandem, h2_backend):
    """20 concurrent HTTP/2 streams that each wait 1s at an HTTP/2 app all finish in about 1s:
    Tandem does not serialise them on the way in or out."""
    import asyncio
    import time

    port = free_port()
    tandem(inbound_config(port, h2_backend, protocol="http2"))

    async def go():
        async with httpx.AsyncClient(http1=False, http2=True, timeout=10) as c:
            return await asyncio.gather(*[c.get(f"http://127.0.0.1:{port}/sleep/1000") for _ in range(20)])

    start = time.monotonic()
    rs = asyncio.run(go())
    took = time.monotonic() - start
    assert [(r.status_code, r.text, r.http_version) for r in rs] == [(200, "slept", "HTTP/2")] * 20
    assert took < 3, f"20 concurrent 1s streams took {took:.1f}s"
