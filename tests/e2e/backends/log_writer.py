"""An app that writes numbered log lines fast, with optional rotation.

Run: python log_writer.py PATH N [--rate LINES_PER_S] [--rotate rename|copytruncate]
                                 [--rotations K] [--keep 5] [--block 200] [--format plain|json]

Writes lines seq=0..N-1 to PATH in blocks of `block` lines, one write(2) per block, through an
O_APPEND descriptor (as loggers do). Each line is about 150 bytes:
  plain: `2026-11-24T10:00:00.123456Z INFO seq=000000042 worker=3 request handled pad...`
  json:  `{"ts":...,"level":"info","seq":"seq=000000042","msg":"request handled ..."}`

Rotation, K times, evenly spread over the N lines:
- rename: PATH.{keep-1} -> PATH.{keep} ... PATH -> PATH.1, then a new PATH is opened (the
  writer reopens its log, as after logrotate's postrotate signal).
- copytruncate: the same shift of the older copies, then PATH is copied to PATH.1 and truncated
  in place, the writer keeping its descriptor. The writer itself rotates, between two blocks,
  so no line is written between the copy and the truncation: logrotate cannot coordinate like
  that, and lines written in that window are lost by logrotate itself, whatever the shipper.

Prints one JSON line at the end: {"lines", "seconds", "rotations"}.
"""
import json
import os
import shutil
import sys
import time


def arg(name, default, cast=str):
    if name in sys.argv:
        return cast(sys.argv[sys.argv.index(name) + 1])
    return default


def shift(path, keep):
    for i in range(keep - 1, 0, -1):
        if os.path.exists(f"{path}.{i}"):
            os.replace(f"{path}.{i}", f"{path}.{i + 1}")


def line(i, fmt):
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    if fmt == "json":
        return ('{"ts":"%sZ","level":"info","seq":"seq=%09d","msg":"request handled in %d us by worker %d",'
                '"pad":"%s"}\n' % (ts, i, i % 977, i % 8, "p" * 40))
    return "%sZ INFO seq=%09d worker=%d request handled in %d us %s\n" % (ts, i, i % 8, i % 977, "p" * 60)


def main():
    path = sys.argv[1]
    n = int(sys.argv[2])
    rate = arg("--rate", 0, float)
    mode = arg("--rotate", "")
    rotations = arg("--rotations", 0, int)
    keep = arg("--keep", 5, int)
    block = arg("--block", 200, int)
    fmt = arg("--format", "plain")
    every = n // (rotations + 1) if mode and rotations else 0
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    start = time.time()
    done_rot = 0
    i = 0
    while i < n:
        if every and done_rot < rotations and i >= every * (done_rot + 1):
            shift(path, keep)
            if mode == "rename":
                os.close(fd)
                os.replace(path, f"{path}.1")
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            else:
                shutil.copyfile(path, f"{path}.1")
                os.ftruncate(fd, 0)
            done_rot += 1
        end = min(n, i + block)
        if every:
            end = min(end, every * (done_rot + 1)) if done_rot < rotations else end
        os.write(fd, "".join(line(k, fmt) for k in range(i, end)).encode())
        i = end
        if rate:
            ahead = i / rate - (time.time() - start)
            if ahead > 0:
                time.sleep(ahead)
    os.close(fd)
    print(json.dumps({"lines": n, "seconds": round(time.time() - start, 3), "rotations": done_rot}), flush=True)


if __name__ == "__main__":
    main()
