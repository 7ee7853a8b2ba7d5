"""Log shipping through the real binary: a writer process appends numbered lines to a real file
(with rename or copytruncate rotation), `tandem run` tails and ships them to a real HTTP
receiver (backends/line_receiver.py) that counts every sequence number: unique, duplicates,
missing. Failure is real too: kill -9 of Tandem and restart, the receiver closing its port,
answering 429 with Retry-After or 500, a corrupt checkpoint file.

Every test prints its numbers (`-s`). 200,000 lines per run keeps the file under two minutes;
LOGSHIP_SLOW=1 adds the 2,000,000-line runs of issue 7.
"""
import json
import os
import signal
import time

import pytest

from conftest import metric, run, wait_for, TANDEM_BIN
from logship_support import BATCH, finish, logs_config, metrics, report, wait_tailing, writer

N = 200_000
SLOW = os.environ.get("LOGSHIP_SLOW") == "1"


@pytest.mark.parametrize("glob,scan", [("app.log", "100ms"), ("app.log*", "1s")], ids=["live-name", "rotated-names"])
def test_rename_rotation(tandem, receiver, tmp_path, glob, scan):
    """200,000 lines at 100,000 lines/s with three rename rotations while Tandem lags: with a
    glob on the live name only, each renamed file is drained through its open descriptor; with
    the rotated names in the glob, renamed files are known by inode and not read again. Both:
    0 missing, 0 duplicates."""
    log = tmp_path / "app.log"
    log.touch()
    t = tandem(logs_config(tmp_path, receiver, [tmp_path / glob], scan=scan))
    wait_tailing(t)
    w = writer(log, N, 100_000, "rename", 3)
    started = time.monotonic()
    gen = finish(w)
    s = receiver.wait_all(N)
    report(f"rename rotation x3, glob {glob}", s, writer=gen, seconds=round(time.monotonic() - started, 1))
    assert gen["rotations"] == 3
    assert (s["missing"], s["duplicates"], s["received"]) == (0, 0, N)


def test_copytruncate_rotation(tandem, receiver, tmp_path):
    """200,000 lines at 100,000 lines/s with three copytruncate rotations while Tandem lags
    (the writer copies and truncates between two of its writes, so no line falls in
    copytruncate's own window). The unread tail of each truncated file is read from its copy,
    found by fingerprint, from where reading stopped; the copies are not read again: 0
    missing, 0 duplicates, no bytes counted as dropped."""
    log = tmp_path / "app.log"
    log.touch()
    t = tandem(logs_config(tmp_path, receiver, [tmp_path / "app.log*"]))
    wait_tailing(t)
    w = writer(log, N, 100_000, "copytruncate", 3)
    gen = finish(w)
    s = receiver.wait_all(N)
    text = metrics(t)
    dropped = metric(text, "tandem_logs_dropped_bytes_total", source="app", reason="truncated")
    adopted = t.log().count("log content moved or copied here")
    report("copytruncate x3", s, writer=gen, dropped_bytes=dropped, copies_followed=adopted)
    assert (s["missing"], s["duplicates"], s["received"]) == (0, 0, N)
    assert dropped == 0
    assert adopted == 3, "each copy was recognised as the truncated content"



def test_kill9_and_restart(tandem, receiver, tmp_path):
    """kill -9 of Tandem at 40% and again at 70% of 200,000 lines (written at 50,000 lines/s),
    each time restarted with the same checkpoint directory: 0 missing, and the lines shipped
    twice are at most one batch (1,000 lines) per crash."""
    log = tmp_path / "app.log"
    log.touch()
    cfg = logs_config(tmp_path, receiver, [log])
    t = tandem(cfg)
    wait_tailing(t)
    w = writer(log, N, 50_000)
    crashes = []
    for share in (0.4, 0.7):
        wait_for(lambda: receiver.stats(N)["unique"] >= share * N, 60, f"{share:.0%} shipped")
        t.p.send_signal(signal.SIGKILL)
        t.p.wait(5)
        before = receiver.stats(N)
        time.sleep(0.5)
        t = tandem(cfg)
        crashes.append({"at_unique": before["unique"], "dups_before": before["duplicates"]})
    gen = finish(w)
    s = receiver.wait_all(N)
    report("kill -9 x2 and restart", s, writer=gen, crashes=crashes, bound=2 * BATCH)
    assert s["missing"] == 0
    assert crashes[1]["dups_before"] <= BATCH, "the first crash replayed more than one batch"
    assert s["duplicates"] <= 2 * BATCH
    assert "resuming log file" in t.log(), "the restart resumed from the checkpoint"


def test_graceful_restart_ships_nothing_twice(tandem, receiver, tmp_path):
    """SIGTERM mid-stream: Tandem stops reading, delivers what it holds, writes the final
    checkpoint and exits 0; restarted, it resumes exactly there: 0 missing, 0 duplicates."""
    log = tmp_path / "app.log"
    log.touch()
    cfg = logs_config(tmp_path, receiver, [log])
    t = tandem(cfg)
    wait_tailing(t)
    w = writer(log, N, 50_000)
    wait_for(lambda: receiver.stats(N)["unique"] >= 0.4 * N, 60, "40% shipped")
    t.signal(signal.SIGTERM)
    assert t.wait(15) == 0
    assert "log shipping stopped; checkpoint written flushed=true" in t.log(), t.log()
    at_stop = receiver.stats(N)
    tandem(cfg)
    gen = finish(w)
    s = receiver.wait_all(N)
    report("SIGTERM and restart", s, writer=gen, unique_at_stop=at_stop["unique"])
    assert (s["missing"], s["duplicates"]) == (0, 0)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("down_s", [4, 120])
def test_receiver_down_then_back(tandem, receiver, tmp_path, down_s):
    """The receiver closes its port (connections refused, open ones cut) for 4 s, and for two
    minutes, while lines keep coming: Tandem retries with back-off, the sources pause when the
    memory budget is full, and once the receiver is back every line arrives: 0 missing."""
    log = tmp_path / "app.log"
    log.touch()
    t = tandem(logs_config(tmp_path, receiver, [log]))
    wait_tailing(t)
    n = 60_000
    w = writer(log, n, 15_000)
    wait_for(lambda: receiver.stats(n)["unique"] >= 10_000, 30, "10,000 shipped")
    receiver.control(down=True)
    down_at = receiver.stats(n)["unique"]
    time.sleep(1)
    lag = lambda text: metric(text, "tandem_logs_file_lag_bytes", source="app", file=str(log))
    early = lag(metrics(t))
    time.sleep(3)
    mid = metrics(t)
    time.sleep(down_s - 4)
    late = metrics(t)
    receiver.control(down=False)
    gen = finish(w)
    s = receiver.wait_all(n)
    text = metrics(t)
    retries = {r: metric(text, "tandem_logs_retries_total", sink="central", reason=r)
               for r in ("connect", "io", "timeout")}
    paused = metric(mid, "tandem_logs_source_paused", source="app")
    report(f"receiver down {down_s} s", s, writer=gen, unique_when_down=down_at, retries=retries,
           lag_after_1s=early, lag_after_4s=lag(mid), lag_at_the_end=lag(late), source_paused=paused,
           budget_used=metric(mid, "tandem_logs_budget_used_bytes"))
    assert s["missing"] == 0
    assert s["duplicates"] <= BATCH, "at most the batch cut mid-answer"
    assert retries["connect"] + retries["io"] >= 1
    assert lag(mid) > early > 0, "the lag grows while the sink is down"
    assert paused == 1, "the source waits for the budget instead of buffering without bound"
    assert metric(mid, "tandem_logs_budget_used_bytes") <= 4 * 1024 * 1024 + 64 * 1024
    assert metric(late, "tandem_logs_budget_used_bytes") <= 4 * 1024 * 1024 + 64 * 1024
    assert lag(late) >= lag(mid), "nothing confirmed while the receiver was down"
    assert lag(metrics(t)) == 0, "all confirmed once the receiver is back"


def test_429_retry_after_is_honoured(tandem, receiver, tmp_path):
    """The receiver answers 429 with `Retry-After: 2` three times: each retry comes 2 s later
    (measured at the receiver), not sooner; a 500 without Retry-After is retried on the short
    back-off. All lines arrive once."""
    log = tmp_path / "app.log"
    log.touch()
    t = tandem(logs_config(tmp_path, receiver, [log]))
    wait_tailing(t)
    receiver.control(fail_next=3, fail_status=429, retry_after="2")
    w = writer(log, 500, 0)
    finish(w)
    s = receiver.wait_all(500, timeout=30)
    reqs = receiver.requests()
    gaps = [round(b["t"] - a["t"], 3) for a, b in zip(reqs, reqs[1:]) if a["status"] == 429]
    receiver.control(fail_next=2, fail_status=500, retry_after=None)
    with open(log, "a") as f:
        f.write("".join(f"seq={i} after the 500s\n" for i in range(500, 600)))
    s = receiver.wait_all(600, timeout=30)
    reqs = receiver.requests()
    gaps_500 = [round(b["t"] - a["t"], 3) for a, b in zip(reqs, reqs[1:]) if a["status"] == 500]
    text = metrics(t)
    report("429 Retry-After: 2, then 500", s, gaps_after_429=gaps, gaps_after_500=gaps_500,
           retries_429=metric(text, "tandem_logs_retries_total", sink="central", reason="status_429"))
    assert len(gaps) == 3 and all(2.0 <= g < 2.6 for g in gaps), gaps
    assert len(gaps_500) == 2 and all(g < 1.0 for g in gaps_500), gaps_500
    assert (s["missing"], s["duplicates"]) == (0, 0)
    assert metric(text, "tandem_logs_retries_total", sink="central", reason="status_429") == 3
    assert metric(text, "tandem_logs_retries_total", sink="central", reason="status_5xx") == 2


def test_json_lines_gzip_and_record_shape(tandem, receiver, tmp_path):
    """JSON lines through the json parser and a gzip sink: every line arrives once, shaped as
    documented (timestamp, message, level (from the `level` field), file, labels with service and
    host, fields)."""
    log = tmp_path / "app.log"
    log.touch()
    t = tandem(logs_config(tmp_path, receiver, [log], source_extra="      parser: json",
                           sink_extra="      gzip: true"))
    wait_tailing(t)
    finish(writer(log, 5000, 0, fmt="json"))
    s = receiver.wait_all(5000, timeout=30)
    first = json.loads(receiver.lines(1)[0])
    report("json + gzip", s, first_record=first)
    assert (s["missing"], s["duplicates"]) == (0, 0)
    assert first["message"].startswith("request handled in ")
    assert first["fields"]["seq"].startswith("seq=") and first["level"] == "info"
    assert "level" not in first["fields"], "the level field became the record's level"
    assert first["labels"]["service"] == "e2e" and first["labels"]["host"]
    assert first["file"] == str(log)
    assert first["timestamp"].endswith("Z")
    text = metrics(t)
    assert metric(text, "tandem_logs_shipped_lines_total", sink="central") == 5000
    shipped = metric(text, "tandem_logs_shipped_bytes_total", sink="central")
    assert shipped < 5000 * 100, f"gzip: {shipped} bytes on the wire for 5000 lines"


def test_file_sink_rotates_and_writes_text(tandem, tmp_path):
    """A file sink with `rotate` and `format: text`: 20,000 lines written by the app end up,
    once each and in order, as plain lines across `out.log` and its rotated files, every file
    at most `max_bytes`, the oldest beyond `keep` deleted."""
    log, out = tmp_path / "app.log", tmp_path / "out" / "out.log"
    out.parent.mkdir()
    log.touch()
    t = tandem(f"""
logs:
  checkpoint: {{ dir: {tmp_path}/state }}
  sources:
    app: {{ paths: ["{log}"], poll_interval: 50ms }}
  sinks:
    out:
      type: file
      path: {out}
      format: text
      rotate: {{ max_bytes: 256KiB, keep: 100 }}
      batch: {{ max_bytes: 32KiB }}
""")
    wait_tailing(t)
    n = 20_000
    finish(writer(log, n, 0))

    def files():
        rotated = sorted(out.parent.glob("out.log.*"), key=lambda p: -int(p.suffix[1:]))
        return rotated + [out]

    def seqs():
        got = []
        for f in files():
            got += [int(line.split("seq=")[1].split()[0]) for line in f.read_text().splitlines()]
        return got

    wait_for(lambda: len(seqs()) >= n, 30, "every line in the files")
    got = seqs()
    sizes = [f.stat().st_size for f in files()]
    print(f"\n[file sink rotate] {len(got)} lines in {len(sizes)} files, largest {max(sizes)} bytes")
    assert got == list(range(n)), "each line once, in order, across the rotated files"
    assert max(sizes) <= 256 * 1024
    assert len(sizes) >= 10, "rotated: ~3 MB of lines in 256 KiB files"
    first = out.parent.joinpath("out.log.1").read_text().splitlines()[0]
    assert first.startswith("20") and " INFO seq=" in first, f"the raw line, not JSON: {first}"


def test_corrupt_checkpoint_refuses_to_start(tandem, receiver, tmp_path):
    """A checkpoint file that does not parse stops the start (exit 1) with a message naming the
    file and the way out; nothing is shipped (no silent restart from zero)."""
    log = tmp_path / "app.log"
    log.write_text("".join(f"seq={i}\n" for i in range(100)))
    state = tmp_path / "state"
    state.mkdir()
    (state / "checkpoints.json").write_text('{"version":1,"files":[{"source":"app",')
    t = tandem(logs_config(tmp_path, receiver, [log]), wait_ready=False)
    assert t.wait(10) == 1
    err = t.log()
    print("\n[corrupt checkpoint] " + err.strip().splitlines()[-1])
    assert str(state / "checkpoints.json") in err
    assert "corrupt" in err and "Move it away" in err
    assert receiver.stats(100)["requests"] == 0


def test_check_reports_logs_errors(tmp_path):
    """`tandem check` reports mistakes in `logs:` with file, line, key and a fix, and accepts a
    logs-only file."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("logs:\n  sources:\n    app: { paths: [var/log/app.log] }\n  sinks:\n"
                   "    c: { type: http, url: \"ftp://x\" }\n")
    r = run([TANDEM_BIN, "check", "-c", str(bad)])
    assert r.returncode == 64, r
    assert f"{bad}:1: logs: file sources need a checkpoint directory" in r.stderr, r.stderr
    assert f"{bad}:3: logs.sources.app.paths[0]:" in r.stderr, r.stderr
    assert f"{bad}:5: logs.sinks.c.url:" in r.stderr, r.stderr
    good = tmp_path / "good.yaml"
    good.write_text(f"logs:\n  checkpoint: {{ dir: {tmp_path}/s }}\n  sources:\n    app: {{ paths: [/var/log/a.log] }}\n"
                    "  sinks:\n    c: { type: console }\n")
    r = run([TANDEM_BIN, "check", "-c", str(good)])
    assert r.returncode == 0 and "1 log sources, 1 log sinks" in r.stdout, r


@pytest.mark.skipif(not SLOW, reason="2,000,000-line runs: LOGSHIP_SLOW=1")
@pytest.mark.timeout(600)
@pytest.mark.parametrize("scenario", ["rename", "copytruncate", "kill9"])
def test_two_million_lines(tandem, receiver, tmp_path, scenario):
    """Issue 7's numbers: 2,000,000 lines at 100,000 lines/s, rotated three times (rename or
    copytruncate) while Tandem lags, or with kill -9 at 40% and restart."""
    n = 2_000_000
    log = tmp_path / "app.log"
    log.touch()
    glob = "app.log*" if scenario == "copytruncate" else "app.log"
    cfg = logs_config(tmp_path, receiver, [tmp_path / glob], scan="100ms")
    t = tandem(cfg)
    wait_tailing(t)
    rotate = scenario if scenario != "kill9" else None
    w = writer(log, n, 100_000, rotate, 3 if rotate else 0)
    if scenario == "kill9":
        wait_for(lambda: receiver.stats(n)["unique"] >= 0.4 * n, 300, "40% shipped")
        t.p.send_signal(signal.SIGKILL)
        t.p.wait(5)
        time.sleep(2)
        t = tandem(cfg)
    gen = finish(w)
    s = receiver.wait_all(n, timeout=500)
    report(f"2M lines, {scenario}", s, writer=gen)
    assert s["missing"] == 0
    assert s["duplicates"] <= (BATCH if scenario == "kill9" else 0)
