"""Statuses a log receiver answers that retrying cannot fix, through the real binary and the
counting receiver (backends/line_receiver.py):

- 400 for one batch (Loki's "entry out of order" / "too old", a malformed request), in the
  NDJSON and Loki formats: that batch is dropped — counted in
  `tandem_logs_sink_dropped_lines_total{reason="rejected"}`, logged with the receiver's answer —
  and the checkpoint moves past it: everything after it arrives, nothing twice, and a restart
  does not send it again. Before this, the batch was retried forever and stalled the pipeline.
- 413 for bodies over 300 lines (a receiver's size limit): batches of up to 1,000 lines are
  split in halves until they fit; every line arrives once, nothing is dropped.

Each test prints its numbers (`-s`).
"""
import time

import pytest

from conftest import metric, wait_for
from logship_support import Receiver, finish, logs_config, metrics, report, wait_shipped_or_refused, wait_tailing, writer

N = 20_000


@pytest.mark.parametrize("fmt", ["ndjson", "loki"])
def test_400_drops_one_batch_and_moves_on(tandem, procs, tmp_path, fmt):
    rcv = Receiver(procs, fmt=fmt)
    rcv.control(fail_next=1, fail_status=400)
    log = tmp_path / "app.log"
    log.touch()
    sink_type = "http" if fmt == "ndjson" else "loki"
    cfg = logs_config(tmp_path, rcv, [log], sink_type=sink_type)
    t = tandem(cfg)
    wait_tailing(t)
    gen = finish(writer(log, N, 0))
    wait_shipped_or_refused(t, rcv, log, N, 60)
    text = metrics(t)
    dropped = int(metric(text, "tandem_logs_sink_dropped_lines_total", sink="central", reason="rejected") or 0)
    s = rcv.stats(N)
    report(f"{fmt}: one batch answered 400", s, writer=gen, dropped=dropped)
    assert s["statuses"].get("400") == 1, s["statuses"]
    assert 0 < dropped <= 1000, dropped
    assert (s["duplicates"], s["received"] + dropped, s["missing"]) == (0, N, dropped), s
    # The refused batch is the first one: one range of lines from seq 0.
    assert s["missing_ranges"] == [[0, dropped - 1]], s["missing_ranges"]
    assert metric(text, "tandem_logs_sink_retries_total", sink="central", reason="status_other") in (None, 0)
    log_text = t.log()
    assert "refused a batch for good" in log_text and "refused on purpose" in log_text, log_text[-2000:]

    # The checkpoint is past the refused batch: a restart sends nothing again.
    t.signal()
    assert t.wait(15) == 0
    t = tandem(cfg)
    wait_tailing(t)
    time.sleep(2)
    s2 = rcv.stats(N)
    assert (s2["received"], s2["duplicates"]) == (s["received"], 0), s2


def test_413_splits_batches_until_they_fit(tandem, procs, tmp_path):
    rcv = Receiver(procs)
    rcv.control(max_request_lines=300)
    log = tmp_path / "app.log"
    log.touch()
    t = tandem(logs_config(tmp_path, rcv, [log]))
    wait_tailing(t)
    gen = finish(writer(log, N, 0))
    s = rcv.wait_all(N, timeout=90)
    text = metrics(t)
    report("413 over 300 lines, batches of 1000 split", s, writer=gen)
    assert (s["missing"], s["duplicates"], s["received"]) == (0, 0, N), s
    assert s["statuses"].get("413", 0) > 0, s["statuses"]
    assert metric(text, "tandem_logs_sink_dropped_lines_total", sink="central", reason="rejected") == 0
    assert max(r["lines"] for r in rcv.requests()) <= 300
    assert "sending it in two halves" in t.log()
