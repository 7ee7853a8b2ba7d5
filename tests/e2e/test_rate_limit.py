"""Route rate limits through the real binary, measured with a real client."""
import time

import httpx

from conftest import free_port, metric


def test_rate_limit_admits_the_configured_rate(tandem, http_backend):
    """A client sending as fast as it can for 3 s at a route limited to 50 requests/s (burst 5)
    gets 5 + 50/s admitted, within 5%; every refusal is a 429 with `Retry-After` and
    `tandem-error: rate_limited`; a client on another IP-less route is unaffected; /metrics counts
    the refusals by reason."""
    port = free_port()
    t = tandem(f"""
listeners:
  inbound:
    address: 127.0.0.1:{port}
    upstream: app
    routes:
      - name: limited
        match: {{ path: {{ prefix: /limited }} }}
        upstream: app
        rate_limit: {{ requests: 50, per: 1s, burst: 5, key: client_ip }}
upstreams:
  app: {{ endpoints: [{http_backend}] }}
""")
    admitted = refused = 0
    bad = []
    with httpx.Client(timeout=5) as c:
        start = time.monotonic()
        while time.monotonic() - start < 3.0:
            r = c.get(f"http://127.0.0.1:{port}/limited")
            if r.status_code == 200:
                admitted += 1
            elif r.status_code == 429 and r.headers.get("tandem-error") == "rate_limited" and int(r.headers["retry-after"]) >= 1:
                refused += 1
            else:
                bad.append((r.status_code, dict(r.headers)))
        elapsed = time.monotonic() - start
        assert c.get(f"http://127.0.0.1:{port}/other").status_code == 200
    expected = 5 + 50 * elapsed
    print(f"admitted {admitted} in {elapsed:.2f}s (expected {expected:.0f}), refused {refused}")
    assert bad == []
    assert refused > admitted, "the client must have pushed well beyond the limit for this to measure anything"
    assert abs(admitted - expected) <= 0.05 * expected, (admitted, expected)
    m = httpx.get(f"{t.admin}/metrics").text
    assert metric(m, "tandem_proxy_errors_total", listener="inbound", upstream="app", reason="rate_limited") == refused
