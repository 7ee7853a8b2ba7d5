"""Distributed tracing through the real binary: spans exported over OTLP/gRPC and OTLP/HTTP to a
collector built on the official OpenTelemetry protos (backends/otlp_collector.py), trace context
in W3C and B3 formats checked where it arrives (the echo backend shows the headers it got), and
a collector that is down or hangs never slowing or failing a request."""
import json
import socket
import time

import httpx
import pytest

from conftest import TANDEM_BIN, free_port, metric, run, wait_for

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
HTTP_PROTO = {"grpc": "grpc", "http/protobuf": "http"}


class Collector:
    """The test collector process: OTLP/gRPC on `grpc_port`, OTLP/HTTP and the JSON views on
    `http_port`."""

    def __init__(self, start_backend):
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.proc = start_backend("otlp_collector.py", self.http_port, {"OTLP_GRPC_PORT": str(self.grpc_port)})

    def endpoint(self, protocol):
        port = self.grpc_port if protocol == "grpc" else self.http_port
        return f"http://127.0.0.1:{port}"

    def spans(self):
        return httpx.get(f"http://127.0.0.1:{self.http_port}/spans", timeout=5).json()

    def trace(self, trace_id, count, timeout=10):
        """Waits until `count` spans of `trace_id` arrived; returns them."""
        found = []

        def arrived():
            found[:] = [s for s in self.spans() if s["trace_id"] == trace_id]
            return len(found) >= count

        wait_for(arrived, timeout, f"{count} spans of trace {trace_id}")
        return found

    def kill(self):
        self.proc.p.kill()
        self.proc.p.wait(5)


@pytest.fixture
def collector(start_backend):
    return Collector(start_backend)


def tracing(endpoint, protocol, service, extra=""):
    return f"""
tracing:
  otlp: {{ endpoint: "{endpoint}", protocol: {protocol}, timeout: 2s }}
  service_name: {service}
  resource: {{ deployment.environment: e2e }}
  flush_interval: 100ms
{extra}"""


def echo(c, url, **kw):
    """GET through Tandem to the echo backend: (response, headers the backend received)."""
    r = c.get(url, **kw)
    assert r.status_code == 200, r.text
    return r, dict(r.json()["headers"])


def one(spans, **match):
    """The single span whose fields (and attributes, under `attr_*`) match."""
    def ok(s):
        for k, v in match.items():
            if k.startswith("attr_"):
                if s["attributes"].get(k[5:].replace("_", ".")) != v:
                    return False
            elif s[k] != v:
                return False
        return True

    got = [s for s in spans if ok(s)]
    assert len(got) == 1, f"{match}: {len(got)} of {spans}"
    return got[0]


def single_sidecar(tandem, endpoint, backend, protocol="grpc", extra="", routes=""):
    """One Tandem (inbound -> backend; upstream `dead` has nothing listening) exporting to
    `endpoint`: (its URL, the Tandem)."""
    port = free_port()
    t = tandem(f"""
listeners:
  inbound:
    address: 127.0.0.1:{port}
    upstream: app
{routes}
upstreams:
  app:
    endpoints: [{backend}]
  dead:
    endpoints: [127.0.0.1:{free_port()}]
{tracing(endpoint, protocol, "solo", extra)}""")
    return f"http://127.0.0.1:{port}", t


@pytest.mark.parametrize("a_protocol,b_protocol", [("grpc", "http/protobuf"), ("http/protobuf", "grpc")])
def test_two_chained_sidecars_make_one_trace(tandem, collector, http_backend, a_protocol, b_protocol):
    """client -> sidecar A (outbound) -> sidecar B (inbound, route /echo) -> backend: four spans in
    one trace, linked A server -> A client -> B server -> B client, with the semantic-convention
    attributes, each sidecar's resource, over the protocol each one was given; the backend gets
    B's client span as its parent."""
    b_port, a_port = free_port(), free_port()
    tandem(f"""
listeners:
  inbound:
    address: 127.0.0.1:{b_port}
    upstream: app
    routes:
      - name: echo
        match: {{ path: {{ prefix: /echo }} }}
        upstream: app
upstreams:
  app:
    endpoints: [{http_backend}]
{tracing(collector.endpoint(b_protocol), b_protocol, "sidecar-b")}""")
    tandem(f"""
listeners:
  outbound:
    address: 127.0.0.1:{a_port}
    direction: outbound
    upstream: b
upstreams:
  b:
    endpoints: [127.0.0.1:{b_port}]
{tracing(collector.endpoint(a_protocol), a_protocol, "sidecar-a")}""")
    with httpx.Client(timeout=10) as c:
        r, got = echo(c, f"http://127.0.0.1:{a_port}/echo?token=secret", headers={"user-agent": "e2e-client"})
    version, trace_id, parent_id, flags = got["traceparent"].split("-")
    assert (version, flags) == ("00", "01")
    spans = collector.trace(trace_id, 4)
    assert len(spans) == 4, spans

    a_server = one(spans, kind="server", attr_tandem_listener="outbound")
    a_client = one(spans, kind="client", attr_tandem_listener="outbound")
    b_server = one(spans, kind="server", attr_tandem_listener="inbound")
    b_client = one(spans, kind="client", attr_tandem_listener="inbound")
    # The links: a new trace at A, each span the child of the one before it.
    assert a_server["parent_span_id"] == ""
    assert a_client["parent_span_id"] == a_server["span_id"]
    assert b_server["parent_span_id"] == a_client["span_id"]
    assert b_client["parent_span_id"] == b_server["span_id"]
    assert parent_id == b_client["span_id"], "the backend hangs under B's client span"
    # OTLP span flags: sampled; B's server span has a remote parent, A's client a local one.
    assert b_server["flags"] == 0x301 and a_client["flags"] == 0x101 and a_server["flags"] == 0x01

    for s in (a_server, a_client):
        assert s["resource"]["service.name"] == "sidecar-a"
        assert s["protocol"] == HTTP_PROTO[a_protocol]
    for s in (b_server, b_client):
        assert s["resource"]["service.name"] == "sidecar-b"
        assert s["protocol"] == HTTP_PROTO[b_protocol]
    version_out = run([TANDEM_BIN, "--version"]).stdout.split()[-1]
    for s in spans:
        assert s["scope"] == "tandem"
        assert s["resource"]["service.version"] == version_out
        assert s["resource"]["deployment.environment"] == "e2e"
        assert len(s["resource"]["service.instance.id"]) == 36
        assert s["status"]["code"] == "UNSET", s
        assert s["start"] <= s["end"]
    assert a_server["resource"]["service.instance.id"] != b_server["resource"]["service.instance.id"]

    assert a_server["name"] == "GET"
    assert a_server["attributes"] == {
        "http.request.method": "GET",
        "url.path": "/echo",
        "url.scheme": "http",
        "server.address": "127.0.0.1",
        "server.port": a_port,
        "network.protocol.version": "1.1",
        "client.address": "127.0.0.1",
        "user_agent.original": "e2e-client",
        "http.response.status_code": 200,
        "http.response.body.size": len(r.content),
        "tandem.listener": "outbound",
        "tandem.route": "default",
        "tandem.upstream": "b",
    }
    assert a_client["name"] == "GET"
    assert a_client["attributes"] == {
        "http.request.method": "GET",
        "url.full": f"http://127.0.0.1:{a_port}/echo",
        "server.address": "127.0.0.1",
        "server.port": b_port,
        "network.protocol.version": "1.1",
        "http.response.status_code": 200,
        "tandem.listener": "outbound",
        "tandem.route": "default",
        "tandem.upstream": "b",
        "http.response.body.size": len(r.content),
    }
    assert b_server["name"] == "GET /echo/*"
    assert b_server["attributes"]["http.route"] == "/echo/*"
    assert b_server["attributes"]["tandem.route"] == "echo"
    assert b_client["attributes"]["server.port"] == int(http_backend.rsplit(":", 1)[1])
    assert not any("secret" in str(s["attributes"]) for s in spans), "query strings stay out of spans"
    # One clock on one host: each span lies within its parent.
    for child, parent in ((a_client, a_server), (b_server, a_client), (b_client, b_server)):
        assert parent["start"] <= child["start"] and child["end"] <= parent["end"], (child, parent)


def test_errors_and_retries_are_visible(tandem, collector, http_backend):
    """A 500 marks the server and client spans ERROR; a 503 retried into a 200 shows as two client
    spans (the second with http.request.resend_count 1) under an UNSET server span; a request
    Tandem answers itself (connect_failed) carries Tandem's reason as error.type."""
    url, _ = single_sidecar(tandem, collector.endpoint("grpc"), http_backend, routes="""    routes:
      - name: dead
        match: { path: { prefix: /dead } }
        upstream: dead""")
    with httpx.Client(timeout=10) as c:
        r = c.get(f"{url}/status/500")
        assert r.status_code == 500
        assert c.post(f"http://{http_backend}/__control", json={"fail_next": 1, "fail_status": 503}).status_code == 200
        _, got = echo(c, f"{url}/echo")
        r = c.get(f"{url}/dead")
        assert (r.status_code, r.headers["tandem-error"]) == (502, "connect_failed")

    # 2 spans for the 500, 3 for the retried request, 4 for connect_failed (3 tries).
    wait_for(lambda: len(collector.spans()) >= 9, 10, "9 spans")
    spans = collector.spans()
    assert len(spans) == 9, spans
    servers = [s for s in spans if s["kind"] == "server"]

    def trace_of(path):
        return one(servers, attr_url_path=path)["trace_id"]

    # 500: ERROR with the status as error.type, on both spans.
    t500 = trace_of("/status/500")
    s500 = [s for s in spans if s["trace_id"] == t500]
    assert len(s500) == 2
    for s in s500:
        assert s["status"]["code"] == "ERROR", s
        assert s["attributes"]["error.type"] == "500"
        assert s["attributes"]["http.response.status_code"] == 500

    # 503 then 200: two client spans, siblings under the server span.
    techo = trace_of("/echo")
    server = one(spans, trace_id=techo, kind="server")
    tries = sorted((s for s in spans if s["trace_id"] == techo and s["kind"] == "client"), key=lambda s: s["start"])
    assert [t["attributes"]["http.response.status_code"] for t in tries] == [503, 200]
    assert [t["parent_span_id"] for t in tries] == [server["span_id"]] * 2
    assert tries[0]["status"]["code"] == "ERROR" and tries[0]["attributes"]["error.type"] == "503"
    assert "http.request.resend_count" not in tries[0]["attributes"]
    assert tries[1]["attributes"]["http.request.resend_count"] == 1
    assert tries[1]["status"]["code"] == "UNSET"
    assert server["status"]["code"] == "UNSET" and server["attributes"]["http.response.status_code"] == 200
    assert got["traceparent"] == f"00-{techo}-{tries[1]['span_id']}-01", "each try sends its own span id"

    # connect_failed: Tandem's reason on the server span and on every try.
    tdead = trace_of("/dead")
    server = one(spans, trace_id=tdead, kind="server")
    assert server["status"]["code"] == "ERROR"
    assert server["attributes"]["error.type"] == "connect_failed"
    assert server["attributes"]["http.response.status_code"] == 502
    assert "connect_failed" in server["status"]["message"]
    assert server["name"] == "GET /dead/*"
    tries = [s for s in spans if s["trace_id"] == tdead and s["kind"] == "client"]
    assert len(tries) == 3, tries
    assert {t["attributes"]["error.type"] for t in tries} == {"connect_failed"}
    assert sorted(t["attributes"].get("http.request.resend_count", 0) for t in tries) == [0, 1, 2]
    assert all("http.response.status_code" not in t["attributes"] for t in tries)


def test_incoming_traceparent_is_continued(tandem, collector, http_backend):
    """A client's traceparent is continued: same trace id, the client's span as parent (marked
    remote), its tracestate passed on; the upstream gets Tandem's span, not a copy of the
    client's header."""
    url, _ = single_sidecar(tandem, collector.endpoint("http/protobuf"), http_backend, protocol="http/protobuf")
    with httpx.Client(timeout=10) as c:
        r, got = echo(c, f"{url}/echo", headers={
            "traceparent": f"00-{TRACE}-{PARENT}-01",
            "tracestate": "vendor=abc,other=1",
        })
    spans = collector.trace(TRACE, 2)
    server = one(spans, kind="server")
    client = one(spans, kind="client")
    assert server["parent_span_id"] == PARENT
    assert server["flags"] == 0x301
    assert server["trace_state"] == "vendor=abc,other=1"
    assert got["traceparent"] == f"00-{TRACE}-{client['span_id']}-01"
    assert got["tracestate"] == "vendor=abc,other=1"
    received = [(k, v) for k, v in r.json()["headers"] if k in ("traceparent", "tracestate")]
    assert len(received) == 2, f"one of each, the client's own not forwarded beside it: {received}"


def test_server_span_ends_with_the_response_body(tandem, collector, http_backend):
    """The server span lasts until the last response byte (the body arrives 400 ms after the
    head) and carries the body's size; so does the client span of the try that answered, while
    a try that was retried ends at its response head."""
    url, _ = single_sidecar(tandem, collector.endpoint("grpc"), http_backend)
    ctl = f"http://{http_backend}/__control"
    httpx.post(ctl, json={"fail_next": 1}, timeout=5).raise_for_status()
    with httpx.Client(timeout=10) as c:
        r = c.get(f"{url}/slowbody/400", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
    assert (r.status_code, r.text) == (200, "slow body")
    spans = collector.trace(TRACE, 3)
    server = one(spans, kind="server")
    by_status = {s["attributes"]["http.response.status_code"]: s for s in spans if s["kind"] == "client"}
    retried, answered = by_status[503], by_status[200]
    ms = lambda s: (s["end"] - s["start"]) / 1e6
    assert ms(server) >= 390, f"server span {ms(server):.0f} ms ended before the body did"
    assert ms(answered) >= 390, f"answering try {ms(answered):.0f} ms ended before the body did"
    assert answered["end"] <= server["end"]
    assert ms(retried) < 300, f"retried try {ms(retried):.0f} ms: it ends at its response head"
    assert "http.response.body.size" not in retried["attributes"]
    assert server["attributes"]["http.response.body.size"] == len("slow body")
    assert answered["attributes"]["http.response.body.size"] == len("slow body")
    assert server["status"]["code"] == "UNSET", server


def test_http2_tries_carry_their_own_context(tandem, collector, h2_backend):
    """HTTP/2 end to end with a retry: each try's header map gets its own span id (the backend
    sees exactly one traceparent, the second try's), and the spans say HTTP/2."""
    url, _ = single_sidecar(tandem, collector.endpoint("grpc"), h2_backend)
    with httpx.Client(timeout=10) as c:
        assert c.post(f"http://{h2_backend}/__control", json={"fail_next": 1, "fail_status": 503}).status_code == 200
    with httpx.Client(http1=False, http2=True, timeout=10) as c:
        r = c.get(f"{url}/echo", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
    assert (r.status_code, r.http_version) == (200, "HTTP/2")
    assert r.json()["version"] == "HTTP/2"
    received = [v for k, v in r.json()["headers"] if k == "traceparent"]
    spans = collector.trace(TRACE, 3)
    server = one(spans, kind="server")
    tries = sorted((s for s in spans if s["kind"] == "client"), key=lambda s: s["start"])
    assert received == [f"00-{TRACE}-{tries[1]['span_id']}-01"]
    assert server["attributes"]["network.protocol.version"] == "2"
    assert [t["attributes"]["network.protocol.version"] for t in tries] == ["2", "2"]
    assert [t["attributes"]["http.response.status_code"] for t in tries] == [503, 200]


def test_b3_single_and_multi(tandem, collector, http_backend):
    """B3: a single `b3` header and X-B3-* headers (a 64-bit trace id widened to 128 bits) are
    both read; with propagation [b3, w3c] the upstream gets `b3` and `traceparent`, with
    [b3multi] it gets X-B3-* only."""
    single, _ = single_sidecar(tandem, collector.endpoint("grpc"), http_backend, extra="  propagation: [b3, w3c]")
    multi, _ = single_sidecar(tandem, collector.endpoint("grpc"), http_backend, extra="  propagation: [b3multi]")
    short = TRACE[16:]
    with httpx.Client(timeout=10) as c:
        _, got_single = echo(c, f"{single}/echo", headers={"b3": f"{TRACE}-{PARENT}-1"})
        _, got_multi = echo(c, f"{multi}/echo", headers={
            "x-b3-traceid": short, "x-b3-spanid": PARENT, "x-b3-sampled": "1",
        })
    spans = collector.trace(TRACE, 2)
    assert one(spans, kind="server")["parent_span_id"] == PARENT
    client = one(spans, kind="client")
    assert got_single["b3"] == f"{TRACE}-{client['span_id']}-1"
    assert got_single["traceparent"] == f"00-{TRACE}-{client['span_id']}-01"

    wide = "0" * 16 + short
    spans = collector.trace(wide, 2)
    assert one(spans, kind="server")["parent_span_id"] == PARENT
    client = one(spans, kind="client")
    assert (got_multi["x-b3-traceid"], got_multi["x-b3-spanid"], got_multi["x-b3-sampled"]) == (
        wide, client["span_id"], "1")
    assert "b3" not in got_multi and "traceparent" not in got_multi


def test_unsampled_requests_propagate_without_spans(tandem, collector, http_backend):
    """sample_ratio 0: an unsampled parent and a request without context both go upstream with
    the sampled flag off (a new trace for the latter) and record nothing, while a sampled
    parent is still honoured (the positive control that spans would have arrived)."""
    url, _ = single_sidecar(tandem, collector.endpoint("grpc"), http_backend, extra="  sample_ratio: 0")
    with httpx.Client(timeout=10) as c:
        _, unsampled = echo(c, f"{url}/echo", headers={"traceparent": f"00-{TRACE}-{PARENT}-00"})
        _, fresh = echo(c, f"{url}/echo")
        control = "1" * 32
        echo(c, f"{url}/echo", headers={"traceparent": f"00-{control}-{PARENT}-01"})
    _, t, span, flags = unsampled["traceparent"].split("-")
    assert (t, flags) == (TRACE, "00")
    assert span != PARENT, "Tandem's own span id goes upstream even when not recording"
    _, fresh_trace, _, fresh_flags = fresh["traceparent"].split("-")
    assert fresh_flags == "00" and fresh_trace not in (TRACE, "0" * 32)
    # Spans leave in the order they were recorded, and each request's are recorded before its
    # response: had the first two requests recorded anything, it would be here by now.
    collector.trace(control, 2)
    ids = {s["trace_id"] for s in collector.spans()}
    assert ids == {control}, ids


def p99(latencies):
    ordered = sorted(latencies)
    return ordered[int(len(ordered) * 0.99) - 1]


def timed_requests(url, n=200):
    """Sends `n` requests one after another; returns their latencies in seconds."""
    latencies = []
    with httpx.Client(timeout=10) as c:
        for _ in range(n):
            started = time.monotonic()
            echo(c, f"{url}/echo")
            latencies.append(time.monotonic() - started)
    return latencies


def dropped(t, reason):
    text = httpx.get(f"{t.admin}/metrics", timeout=5).text
    return metric(text, "tandem_trace_spans_dropped_total", reason=reason) or 0


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_collector_killed_loses_spans_not_requests(tandem, collector, http_backend, protocol):
    """The collector dies under traffic: every request still succeeds, p99 stays low, and the
    spans that could not be exported are counted (export_failed)."""
    url, t = single_sidecar(tandem, collector.endpoint(protocol), http_backend, protocol=protocol,
                            extra="  queue: 32\n  batch: 8")
    timed_requests(url, 5)

    def exported():
        return metric(httpx.get(f"{t.admin}/metrics", timeout=5).text, "tandem_trace_spans_exported_total")

    wait_for(lambda: exported() == 10, 10, "the first 10 spans exported")
    assert len(collector.spans()) == 10
    collector.kill()
    latencies = timed_requests(url)
    assert p99(latencies) < 0.25, f"p99 {p99(latencies) * 1000:.1f} ms with the collector down"
    wait_for(lambda: dropped(t, "export_failed") > 0, 10, "export_failed drops counted")
    text = httpx.get(f"{t.admin}/metrics", timeout=5).text
    assert exported() == 10
    assert metric(text, "tandem_trace_export_failures_total") >= 1


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_hung_collector_never_slows_requests(tandem, http_backend, protocol):
    """A collector that accepts connections and never answers (export timeout 2 s): 200
    requests stay fast, far below the timeout a request waiting on telemetry would show, and
    the spans beyond the small queue are dropped and counted (queue_full)."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)
    try:
        url, t = single_sidecar(tandem, f"http://127.0.0.1:{hung.getsockname()[1]}", http_backend,
                                protocol=protocol, extra="  queue: 16\n  batch: 8")
        latencies = timed_requests(url)
        assert p99(latencies) < 0.25, f"p99 {p99(latencies) * 1000:.1f} ms with a hung collector"
        assert max(latencies) < 1.0, f"max {max(latencies) * 1000:.1f} ms"
        assert dropped(t, "queue_full") > 0
        text = httpx.get(f"{t.admin}/metrics", timeout=5).text
        assert metric(text, "tandem_trace_spans_exported_total") == 0
    finally:
        hung.close()


def test_access_log_lines_join_the_trace(tandem, collector, http_backend, tmp_path):
    """With tracing and the access log both on, a request's line carries its trace id and the
    id of this sidecar's server span, so a log search lands on the trace."""
    log = tmp_path / "access.log"
    port = free_port()
    t = tandem(f"""
access_log: {{ path: {log} }}
listeners:
  inbound:
    address: 127.0.0.1:{port}
    upstream: app
upstreams:
  app:
    endpoints: [{http_backend}]
{tracing(collector.endpoint("grpc"), "grpc", "joined")}""")
    with httpx.Client(timeout=10) as c:
        echo(c, f"http://127.0.0.1:{port}/echo", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
    spans = collector.trace(TRACE, 2)
    server = one(spans, kind="server")
    wait_for(lambda: log.exists() and log.read_text().strip(), 10, "access log line")
    line = json.loads(log.read_text().splitlines()[-1])
    assert line["trace_id"] == TRACE
    assert line["span_id"] == server["span_id"]
