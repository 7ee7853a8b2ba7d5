"""OTLP logs over gRPC (`type: otlp`, `protocol: grpc`) through the real binary, received by a
grpcio server implementing `LogsService/Export` (backends/line_receiver.py `--format
otlp-grpc`, decoding with the official opentelemetry-proto package) that counts every sequence
number: HTTP/2 with gzip inside the gRPC frames, four calls in flight; UNAVAILABLE retried;
INVALID_ARGUMENT dropped and counted.

Each test prints its numbers (`-s`).
"""
from conftest import metric, wait_for
from logship_support import Receiver, finish, logs_config, metrics, report, wait_shipped_or_refused, wait_tailing, writer

N = 20_000


def grpc_config(tmp, rcv, log, extra=""):
    return logs_config(tmp, rcv, [log], sink_type="otlp",
                       sink_extra="      protocol: grpc\n      gzip: true\n      concurrency: 4\n" + extra)


def test_otlp_grpc_ships_every_line_once(tandem, procs, tmp_path):
    rcv = Receiver(procs, fmt="otlp-grpc")
    rcv.control(fail_next=2, fail_status=503)
    log = tmp_path / "app.log"
    log.touch()
    t = tandem(grpc_config(tmp_path, rcv, log))
    wait_tailing(t)
    gen = finish(writer(log, N, 0))
    s = rcv.wait_all(N)
    text = metrics(t)
    report("otlp over grpc, gzip, concurrency 4", s, writer=gen, formats=s["formats"])
    assert (s["missing"], s["duplicates"], s["received"]) == (0, 0, N), s
    assert s["statuses"].get("UNAVAILABLE") == 2, s["statuses"]
    assert metric(text, "tandem_logs_retries_total", sink="central", reason="status_5xx") == 2
    # Compressed frames (flag 1, grpc-encoding: gzip) were read: grpcio refuses them otherwise.
    res = s["formats"]["otlp_resources"]
    assert len(res) == 1 and res[0]["service.name"] == "e2e" and res[0]["host.name"], res
    wait_for(lambda: metric(metrics(t), "tandem_logs_file_lag_bytes", source="app", file=str(log)) == 0, 10,
             "every line confirmed and checkpointed")


def test_otlp_grpc_invalid_argument_is_dropped(tandem, procs, tmp_path):
    rcv = Receiver(procs, fmt="otlp-grpc")
    rcv.control(fail_next=1, fail_status=400)
    log = tmp_path / "app.log"
    log.touch()
    t = tandem(grpc_config(tmp_path, rcv, log).replace("      concurrency: 4\n", ""))
    wait_tailing(t)
    finish(writer(log, 5000, 0))
    wait_shipped_or_refused(t, rcv, log, 5000, 30)
    dropped = int(metric(metrics(t), "tandem_logs_sink_dropped_lines_total", sink="central", reason="rejected") or 0)
    s = rcv.stats(5000)
    report("otlp over grpc, INVALID_ARGUMENT once", s, dropped=dropped)
    assert s["statuses"].get("INVALID_ARGUMENT") == 1, s["statuses"]
    assert 0 < dropped and s["received"] + dropped == 5000 and s["duplicates"] == 0, (s, dropped)
    assert "grpc-status 3 (INVALID_ARGUMENT)" in t.log()
