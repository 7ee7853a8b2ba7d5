"""Resilience through the real binary against real backend processes: a backend killed with
SIGKILL, a backend failing with 503 (set over its /__control endpoint), breakers and retries seen
by httpx, /upstreams and /metrics."""
import time

import httpx

from conftest import free_port, metric


def config(port, endpoints, extra=""):
    eps = ", ".join(f'"{e}"' for e in endpoints)
    return f"""
listeners:
  inbound:
    address: 127.0.0.1:{port}
    upstream: app
upstreams:
  app:
    endpoints: [{eps}]
{extra}
"""


def test_failing_backend_is_retried_and_ejected(tandem, start_backend):
    """One of two backends answers 503 to everything: clients still get 200 (retried on the
    other), its breaker opens after 3 failures (/upstreams says why), and once it recovers a
    half-open probe puts it back in rotation."""
    a, b = free_port(), free_port()
    start_backend("http_backend.py", a)
    start_backend("http_backend.py", b)
    port = free_port()
    t = tandem(config(port, [f"127.0.0.1:{a}", f"127.0.0.1:{b}"],
                      "    balancer: round_robin\n"
                      "    circuit_breaker: { consecutive_failures: 3, base_ejection: 500ms }"))
    with httpx.Client(timeout=5) as c:
        assert c.post(f"http://127.0.0.1:{b}/__control", json={"status": 503}).status_code == 200
        statuses = [c.get(f"http://127.0.0.1:{port}/").status_code for _ in range(40)]
        assert statuses == [200] * 40
        assert c.get(f"http://127.0.0.1:{b}/__stats").json()["requests"] == 3
        ups = c.get(f"{t.admin}/upstreams").json()
        bad = ups[0]["endpoints"][1]
        assert bad["breaker"] == "open" and bad["ejection_reason"] == "consecutive_failures", ups
        text = c.get(f"{t.admin}/metrics").text
        assert metric(text, "tandem_retries_total", upstream="app", reason="status") == 3
        assert metric(text, "tandem_endpoint_ejected", upstream="app", endpoint=f"127.0.0.1:{b}") == 1

        c.post(f"http://127.0.0.1:{b}/__control", json={"status": None})
        time.sleep(0.6)
        for _ in range(10):
            assert c.get(f"http://127.0.0.1:{port}/").status_code == 200
        ups = c.get(f"{t.admin}/upstreams").json()
        assert ups[0]["endpoints"][1]["breaker"] == "closed", ups
        assert c.get(f"http://127.0.0.1:{b}/__stats").json()["requests"] > 3


def test_backend_killed_with_sigkill(tandem, start_backend):
    """A backend process killed with SIGKILL under traffic (round robin, so it keeps being
    picked): no client request fails (connect failures go to the other backend), and after the
    breaker's 5 consecutive failures the dead one is ejected and no longer tried."""
    a, b = free_port(), free_port()
    start_backend("http_backend.py", a)
    victim = start_backend("http_backend.py", b)
    port = free_port()
    t = tandem(config(port, [f"127.0.0.1:{a}", f"127.0.0.1:{b}"], "    balancer: round_robin"))
    with httpx.Client(timeout=5) as c:
        for _ in range(20):
            assert c.get(f"http://127.0.0.1:{port}/").status_code == 200
        victim.p.kill()
        victim.p.wait()
        statuses = [c.get(f"http://127.0.0.1:{port}/").status_code for _ in range(200)]
        text = c.get(f"{t.admin}/metrics").text
        tries = metric(text, "tandem_retries_total", upstream="app", reason="connect_failed")
        print(f"SIGKILLed 1 of 2: {statuses.count(200)}/200 ok; {tries} tries at the dead backend")
        assert statuses == [200] * 200
        assert tries == 5, "five connect failures, then ejected"
        ups = c.get(f"{t.admin}/upstreams").json()
        assert ups[0]["endpoints"][1]["breaker"] == "open", ups
