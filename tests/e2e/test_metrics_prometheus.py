"""Tandem's /metrics read by the real Prometheus tools: `promtool check metrics` after mixed traffic,
and a Prometheus server started here scraping Tandem, queried with PromQL over its HTTP API."""
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from conftest import free_port, metric, run, wait_for

PROMETHEUS = shutil.which("prometheus")


class Prometheus:
    """A Prometheus server scraping `target` every second, with its own temporary storage."""

    def __init__(self, target):
        self.dir = Path(tempfile.mkdtemp(prefix="prometheus-e2e-"))
        self.port = free_port()
        (self.dir / "prometheus.yml").write_text(f"""
global: {{ scrape_interval: 1s, evaluation_interval: 1s }}
scrape_configs:
  - job_name: tandem
    static_configs: [{{ targets: ["{target}"] }}]
""")
        self.log = open(self.dir / "log", "w+")
        self.p = subprocess.Popen(
            [PROMETHEUS, f"--config.file={self.dir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.dir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--log.level=warn"],
            stdout=self.log, stderr=self.log)
        wait_for(lambda: httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200, 30, "prometheus ready")

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def query(self, promql):
        """The single value of an instant query, or None when it has no result yet."""
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5).json()
        assert r["status"] == "success", r
        result = r["data"]["result"]
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    def log_text(self):
        self.log.flush()
        return (self.dir / "log").read_text()[-5000:]

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (scripts/test.sh installs it)")
def test_prometheus_scrapes_and_promql_counts(tandem, h2_backend):
    port = free_port()
    t = tandem(f"""
listeners:
  inbound:
    address: 127.0.0.1:{port}
    routes:
      - name: api
        match: {{ path: {{ prefix: /api }} }}
        upstream: app
      - name: status
        match: {{ path: {{ prefix: /status }} }}
        upstream: app
upstreams:
  app: {{ endpoints: [{h2_backend}], protocol: auto }}
""")
    base = f"http://127.0.0.1:{port}"
    # Mixed traffic: HTTP/1.1 GETs, HTTP/2 (prior knowledge) GETs, POSTs the backend answers 503,
    # requests matching no route (404 from Tandem) with distinct paths.
    counts = {"h1": 37, "h2": 23, "post503": 11, "noroute": 13}
    with httpx.Client(timeout=5) as c:
        for i in range(counts["h1"]):
            assert c.get(f"{base}/api/h1/{i}").status_code == 200
        for i in range(counts["post503"]):
            assert c.post(f"{base}/status/503", content=b"x" * i).status_code == 503
        for i in range(counts["noroute"]):
            assert c.get(f"{base}/elsewhere/{i}").status_code == 404
    with httpx.Client(http1=False, http2=True, timeout=5) as c:
        for i in range(counts["h2"]):
            r = c.get(f"{base}/api/h2/{i}")
            assert r.status_code == 200 and r.http_version == "HTTP/2"

    text = httpx.get(f"{t.admin}/metrics", timeout=5).text
    r = run(["promtool", "check", "metrics"], input=text)
    assert r.returncode == 0, r.stdout + r.stderr
    api = {"direction": "inbound", "listener": "inbound", "route": "api", "upstream": "app"}
    assert metric(text, "tandem_http_requests_total", **api, method="GET", status_class="2xx") == counts["h1"] + counts["h2"]
    assert metric(text, "tandem_http_requests_total", **dict(api, route="status"), method="POST",
                  status_class="5xx") == counts["post503"]
    assert metric(text, "process_resident_memory_bytes") > 1 << 20
    assert metric(text, "process_open_fds") > 0

    prom = Prometheus(f"127.0.0.1:{t.admin_port}")
    try:
        queries = {
            'up{job="tandem"}': 1,
            'sum(tandem_http_requests_total{route="api",method="GET",status_class="2xx"})': counts["h1"] + counts["h2"],
            'sum(tandem_http_requests_total{method="POST",status_class="5xx"})': counts["post503"],
            'sum(tandem_http_requests_total{route="",status_class="4xx"})': counts["noroute"],
            'sum(tandem_http_request_duration_seconds_count{route=~"api|status"})': counts["h1"] + counts["h2"] + counts["post503"],
            'count(process_start_time_seconds < time() and process_start_time_seconds > time() - 600)': 1,
        }
        got = {}

        def all_answered():
            for q, want in queries.items():
                got[q] = prom.query(q)
            return all(got[q] == want for q, want in queries.items())

        started = time.monotonic()
        try:
            wait_for(all_answered, 30, "PromQL answers")
        except AssertionError as e:
            raise AssertionError(f"PromQL answers: wanted {queries}, last got {got}\n{prom.log_text()}\n{e}") from None
        print(f"Prometheus answered every query {time.monotonic() - started:.1f}s after starting: {got}")
        # The p99 of the api route from Tandem's histogram, computed by Prometheus: a real number
        # within the bucket range (loopback requests land well under a second).
        p99 = prom.query('histogram_quantile(0.99, sum by (le) (tandem_http_request_duration_seconds_bucket{route="api"}))')
        print(f"p99 of route api per Prometheus: {p99 * 1000:.2f} ms")
        assert p99 is not None and 0 < p99 < 1
    finally:
        prom.stop()
