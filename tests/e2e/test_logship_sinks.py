"""Log shipping to each sink API through the real binary: Loki push, Elasticsearch bulk and
OTLP logs over HTTP, each received by backends/line_receiver.py speaking that API's wire format
(Loki's JSON with its ordering rule, Elasticsearch's per-item bulk results, OTLP protobuf decoded
by the official opentelemetry-proto package) and counting every sequence number: unique,
duplicates, missing. Failure is real: Elasticsearch items failing with 429 (retried) and 400
(dropped and counted), OTLP partial success, TLS to an HTTPS receiver with the right CA, a
client certificate (mTLS), and a wrong CA (nothing lost; everything arrives once fixed).

Every test prints its numbers (`-s`).
"""
import signal
import time

import pytest

from conftest import TANDEM_BIN, metric, run, wait_for
from logship_support import Receiver, finish, logs_config, metrics, report, wait_tailing, writer

N = 50_000
DOMAIN = "logs.test"


@pytest.fixture
def pki(tmp_path):
    """A CA and a server certificate for `localhost` made by `tandem certs`, a client
    certificate, and a second, unrelated CA."""
    root = tmp_path / "pki"

    def certs(*args):
        r = run([TANDEM_BIN, "certs", *map(str, args)])
        assert r.returncode == 0, r.stderr
    certs("init", "--trust-domain", DOMAIN, "--out", root / "ca")
    certs("init", "--trust-domain", "other.test", "--out", root / "other-ca")
    certs("issue", "--ca", root / "ca", "--identity", f"spiffe://{DOMAIN}/ns/logs/sa/receiver",
          "--dns", "localhost", "--out", root / "server")
    certs("issue", "--ca", root / "ca", "--identity", f"spiffe://{DOMAIN}/ns/app/sa/shipper",
          "--out", root / "client")
    return root


def sink_keys(extra=""):
    return "      gzip: true\n      concurrency: 4\n" + extra


@pytest.mark.parametrize("fmt", ["loki", "loki-protobuf", "elasticsearch", "otlp", "otlp-json"])
def test_each_api_ships_every_line_once(tandem, procs, tmp_path, fmt):
    """50,000 numbered lines to each API (Loki in JSON and snappy protobuf, OTLP in protobuf
    and JSON), gzip on (snappy for Loki's protobuf), 4 deliveries in flight (acknowledged out of
    order; the checkpoint keeps to the confirmed prefix): 0 missing, 0 duplicates, every file
    confirmed, and the wire format as the API expects it (Loki label sets, index names,
    OTLP resources)."""
    sink_type = fmt.removesuffix("-json").removesuffix("-protobuf")
    rcv = Receiver(procs, fmt=sink_type)
    log = tmp_path / "app.log"
    log.touch()
    extra = {"loki": "      stream_labels: [service, host]\n",
             "loki-protobuf": "      stream_labels: [service, host]\n      encoding: protobuf\n",
             "elasticsearch": "", "otlp": "", "otlp-json": "      encoding: json\n"}[fmt]
    keys = sink_keys(extra)
    if fmt == "loki-protobuf":
        keys = keys.replace("      gzip: true\n", "")  # snappy already
    t = tandem(logs_config(tmp_path, rcv, [log], sink_type=sink_type, sink_extra=keys))
    wait_tailing(t)
    started = time.monotonic()
    gen = finish(writer(log, N, 0))
    s = rcv.wait_all(N)
    text = metrics(t)
    report(f"{fmt}, {'snappy' if fmt == 'loki-protobuf' else 'gzip'}, concurrency 4", s, writer=gen, seconds=round(time.monotonic() - started, 1),
           formats=s["formats"], shipped_bytes=metric(text, "tandem_logs_shipped_bytes_total", sink="central"))
    assert (s["missing"], s["duplicates"], s["received"]) == (0, 0, N)
    assert s["statuses"].get("400", 0) == 0, s["statuses"]
    assert metric(text, "tandem_logs_shipped_lines_total", sink="central") == N
    wait_for(lambda: metric(metrics(t), "tandem_logs_file_lag_bytes", source="app", file=str(log)) == 0, 10,
             "every line confirmed and checkpointed")
    f = s["formats"]
    if sink_type == "loki":
        assert len(f["loki_streams"]) == 1 and f["loki_streams"][0]["service"] == "e2e"
        assert set(f["loki_streams"][0]) == {"service", "host"}
    elif fmt == "elasticsearch":
        day = time.strftime("%Y.%m.%d", time.gmtime())
        assert all(i.startswith("index:logs-") for i in f["es_indices"]), f["es_indices"]
        assert f"index:logs-{day}" in f["es_indices"], f["es_indices"]
    else:
        res = f["otlp_resources"]
        assert len(res) == 1 and res[0]["service.name"] == "e2e" and res[0]["host.name"], res


@pytest.mark.parametrize("retry_status", [429, 503])
def test_elasticsearch_partial_failures(tandem, procs, tmp_path, retry_status):
    """Bulk answers with `errors: true`: items whose seq is a multiple of 7 fail twice with
    429 (or 503) and are sent again, alone, until indexed; multiples of 1,000 fail with 400
    mapper_parsing_exception and are dropped, counted in /metrics and logged with the error's
    type. Missing: exactly the 400s. Duplicates: 0. Every batch is confirmed (lag 0)."""
    n = 20_000
    rcv = Receiver(procs, fmt="elasticsearch")
    rcv.control(item_retry_every=7, item_retry_status=retry_status, item_retry_times=2, item_reject_every=1000)
    log = tmp_path / "app.log"
    log.touch()
    t = tandem(logs_config(tmp_path, rcv, [log], sink_type="elasticsearch", sink_extra=sink_keys()))
    wait_tailing(t)
    gen = finish(writer(log, n, 0))
    rejected = set(range(0, n, 1000))
    retried = [i for i in range(0, n, 7) if i not in rejected]

    def arrived():
        return rcv.stats(n)["unique"] >= n - len(rejected)
    wait_for(arrived, 90, "every accepted item indexed")
    time.sleep(1.0)
    s = rcv.stats(n)
    missing = set(rcv.missing(n))
    text = metrics(t)
    dropped = metric(text, "tandem_logs_sink_dropped_lines_total", sink="central", reason="item_rejected")
    reason = "status_429" if retry_status == 429 else "status_5xx"
    retries = metric(text, "tandem_logs_retries_total", sink="central", reason=reason)
    report(f"elasticsearch partial failures ({retry_status} x2 for seq%7, 400 for seq%1000)", s, writer=gen,
           dropped=dropped, retries=retries, item_failures=s["item_failures"], retried_items=len(retried))
    assert missing == rejected, sorted(missing ^ rejected)[:20]
    assert s["duplicates"] == 0
    assert s["item_failures"][str(retry_status)] == 2 * len(retried)
    assert s["item_failures"]["400"] == len(rejected)
    assert dropped == len(rejected)
    assert retries >= 2
    assert metric(text, "tandem_logs_shipped_lines_total", sink="central") == n - len(rejected)
    wait_for(lambda: metric(metrics(t), "tandem_logs_file_lag_bytes", source="app", file=str(log)) == 0, 10,
             "batches with dropped items confirmed")
    assert "mapper_parsing_exception" in t.log() and "dropped and counted" in t.log()


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_otlp_partial_success_is_counted(tandem, procs, tmp_path, encoding):
    """An OTLP receiver rejecting every 1,000th record (partial_success.rejected_log_records):
    those are counted as dropped, the rest arrive once, and every batch is confirmed."""
    n = 20_000
    rcv = Receiver(procs, fmt="otlp")
    rcv.control(item_reject_every=1000)
    log = tmp_path / "app.log"
    log.touch()
    t = tandem(logs_config(tmp_path, rcv, [log], sink_type="otlp",
                           sink_extra=sink_keys(f"      encoding: {encoding}\n")))
    wait_tailing(t)
    finish(writer(log, n, 0))
    rejected = set(range(0, n, 1000))
    wait_for(lambda: rcv.stats(n)["unique"] >= n - len(rejected), 60, "every accepted record")
    time.sleep(1.0)
    s = rcv.stats(n)
    text = metrics(t)
    dropped = metric(text, "tandem_logs_sink_dropped_lines_total", sink="central", reason="partial_success")
    report(f"otlp ({encoding}) partial success (every 1000th rejected)", s, dropped=dropped)
    assert set(rcv.missing(n)) == rejected
    assert s["duplicates"] == 0 and dropped == len(rejected)
    wait_for(lambda: metric(metrics(t), "tandem_logs_file_lag_bytes", source="app", file=str(log)) == 0, 10,
             "confirmed")


@pytest.mark.parametrize("mtls", [False, True], ids=["tls", "mtls"])
def test_tls_to_the_sink(tandem, procs, tmp_path, pki, mtls):
    """An HTTPS receiver with a certificate from `tandem certs`; the sink verifies it against
    `tls.ca` (and presents a client certificate when the receiver requires one): every line
    arrives once."""
    rcv = Receiver(procs, fmt="ndjson", tls=(pki / "server/cert.pem", pki / "server/key.pem"),
                   client_ca=pki / "ca/ca.pem" if mtls else None)
    client = f", cert: {pki}/client/cert.pem, key: {pki}/client/key.pem" if mtls else ""
    log = tmp_path / "app.log"
    log.touch()
    t = tandem(logs_config(tmp_path, rcv, [log], sink_extra=f"      tls: {{ ca: {pki}/ca/ca.pem{client} }}\n"
                                                            "      gzip: true\n"))
    wait_tailing(t)
    finish(writer(log, 10_000, 0))
    s = rcv.wait_all(10_000)
    report("tls" + (" + client certificate" if mtls else ""), s, clients=s["formats"]["tls_clients"])
    assert (s["missing"], s["duplicates"]) == (0, 0)
    if mtls:
        assert s["formats"]["tls_clients"], "the receiver saw the client certificate"


def test_wrong_ca_loses_nothing(tandem, procs, tmp_path, pki):
    """The sink trusts the wrong CA: no line is delivered, the log says why (the certificate,
    and which keys to check), retries are counted, nothing is checkpointed. Fixed (right CA)
    and restarted, every line arrives, none twice."""
    n = 5000
    rcv = Receiver(procs, fmt="elasticsearch", tls=(pki / "server/cert.pem", pki / "server/key.pem"))
    log = tmp_path / "app.log"
    log.touch()
    cfg = logs_config(tmp_path, rcv, [log], sink_type="elasticsearch",
                      sink_extra=f"      tls: {{ ca: {pki}/other-ca/ca.pem }}\n")
    t = tandem(cfg)
    wait_tailing(t)
    finish(writer(log, n, 0))
    wait_for(lambda: (metric(metrics(t), "tandem_logs_retries_total", sink="central", reason="connect") or 0) >= 3,
             20, "retries")
    log_text = t.log()
    assert rcv.stats(n)["received"] == 0
    assert "certificate" in log_text and "tls.ca" in log_text, log_text[-2000:]
    assert metric(metrics(t), "tandem_logs_file_lag_bytes", source="app", file=str(log)) > 0
    t.signal(signal.SIGTERM)
    assert t.wait(30) == 0
    t2 = tandem(cfg.replace(f"{pki}/other-ca/ca.pem", f"{pki}/ca/ca.pem"))
    s = rcv.wait_all(n, timeout=60)
    report("wrong CA, then fixed", s, first_error=[l for l in log_text.splitlines() if "certificate" in l][:1])
    assert (s["missing"], s["duplicates"]) == (0, 0)
    assert metric(metrics(t2), "tandem_logs_shipped_lines_total", sink="central") == n


def test_unusable_tls_files_stop_the_start(tandem, procs, tmp_path, pki):
    """A CA file that does not exist, or a client key that is not the certificate's: Tandem
    refuses to start (exit 1) and names the sink, the file and the fix; `tandem check` reports
    them at their keys."""
    rcv = Receiver(procs, fmt="otlp", tls=(pki / "server/cert.pem", pki / "server/key.pem"))
    log = tmp_path / "app.log"
    log.touch()
    cfg = logs_config(tmp_path, rcv, [log], sink_type="otlp",
                      sink_extra=f"      tls: {{ ca: {tmp_path}/nope.pem }}\n")
    t = tandem(cfg, wait_ready=False)
    assert t.wait(15) == 1
    assert "log sink `central`" in t.log() and "nope.pem" in t.log(), t.log()
    r = run([TANDEM_BIN, "check", "-c", str(t.config)])
    assert r.returncode == 64, r.stderr
    assert "logs.sinks.central.tls.ca" in r.stderr and "nope.pem" in r.stderr, r.stderr
    cfg = logs_config(tmp_path, rcv, [log], sink_type="otlp", sink_extra=(
        f"      tls: {{ ca: {pki}/ca/ca.pem, cert: {pki}/client/cert.pem, key: {pki}/server/key.pem }}\n"))
    t = tandem(cfg, wait_ready=False)
    assert t.wait(15) == 1
    assert "does not belong to the certificate" in t.log(), t.log()
    r = run([TANDEM_BIN, "check", "-c", str(t.config)])
    assert r.returncode == 64 and "logs.sinks.central.tls.key" in r.stderr, r.stderr
