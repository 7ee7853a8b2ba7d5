"""Elasticsearch document ids (`document_id: auto`, the default), through the real binary and
the counting receiver speaking the bulk API (backends/line_receiver.py), which records every
`_id` each sequence number's documents carried.

At-least-once delivery sends some lines twice: a batch whose answer was lost is sent again, and
after a crash the lines not yet checkpointed are read again. Each document's `_id` is derived
from its line's place (source, file fingerprint, offset), so every copy of a line carries the
same `_id` — Elasticsearch stores it once — and no two lines share one.

Each test prints its numbers (`-s`).
"""
import signal
import time

from conftest import metric, wait_for
from logship_support import Receiver, finish, logs_config, metrics, report, wait_tailing, writer

N = 20_000


def es_config(tmp, rcv, log, extra=""):
    return logs_config(tmp, rcv, [log], sink_type="elasticsearch",
                       sink_extra="      concurrency: 4\n      batch: { max_lines: 500 }\n" + extra)


def test_retries_and_crash_replays_carry_the_same_ids(tandem, procs, tmp_path):
    """20,000 lines at 5,000/s. The first two answers are lost (the documents stored, a 503
    answered): those batches are sent again. At 40%, every answer is lost for 1.5 s (each
    in-flight batch stored again at every retry), then Tandem is killed with -9 and restarted
    with the receiver answering again: what was not checkpointed is read and sent again. Every
    line arrives, duplicates do, and every copy of a line carries the same `_id`."""
    rcv = Receiver(procs, fmt="elasticsearch")
    rcv.control(answer_lost=True, fail_next=2, fail_status=503)
    log = tmp_path / "app.log"
    log.touch()
    cfg = es_config(tmp_path, rcv, log)
    t = tandem(cfg)
    wait_tailing(t)
    w = writer(log, N, 5000)
    wait_for(lambda: rcv.stats(N)["unique"] >= 0.4 * N, 60, "40% shipped")
    rcv.control(status=500)
    time.sleep(1.5)
    t.p.send_signal(signal.SIGKILL)
    t.p.wait(5)
    rcv.control(status=None)
    before = rcv.stats(N)
    t = tandem(cfg)
    gen = finish(w)
    s = rcv.wait_all(N, timeout=90)
    ids = s["es_ids"]
    report("elasticsearch ids: lost answers, kill -9 and replay", s, writer=gen, ids=ids,
           duplicates_before_restart=before["duplicates"])
    assert (s["missing"], s["unique"]) == (0, N), s
    assert before["duplicates"] > 0, "lost answers made copies"
    assert s["duplicates"] > before["duplicates"], "the restart replayed lines not checkpointed"
    assert ids["seqs"] == N and ids["without_id"] == 0, ids
    assert ids["seqs_with_several_ids"] == 0, "every copy of a line carries the same _id"
    assert ids["distinct_ids"] == N, "no two lines share an _id"
    assert "resuming log file" in t.log()


def test_document_id_none_lets_elasticsearch_choose(tandem, procs, tmp_path):
    """`document_id: none`: actions carry no `_id`."""
    rcv = Receiver(procs, fmt="elasticsearch")
    log = tmp_path / "app.log"
    log.touch()
    t = tandem(es_config(tmp_path, rcv, log, "      document_id: none\n"))
    wait_tailing(t)
    finish(writer(log, 1000, 0))
    s = rcv.wait_all(1000)
    assert s["es_ids"]["without_id"] == 1000 and s["es_ids"]["distinct_ids"] == 0, s["es_ids"]
    assert metric(metrics(t), "tandem_logs_shipped_lines_total", sink="central") == 1000
