"""An app for `tandem run --`: writes N numbered lines as fast as it can, alternating stdout
and stderr every `--stderr-every` lines, one os.write() per line, and records the longest
time one write() took (it blocks only if the pipe is full: Tandem not reading).

Run: python stdout_app.py N RESULT_JSON STOP_FILE [--stderr-every K]
Writes {"pid": P, "lines": N, "stdout_lines": a, "stderr_lines": b, "max_write_ms": m, "seconds": s} to
RESULT_JSON once done, then waits (up to 60 s) for STOP_FILE to exist before exiting 0, so
Tandem keeps running while the test looks at it.
"""
import json
import os
import sys
import time


def main():
    n, result, stop = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    every = int(sys.argv[sys.argv.index("--stderr-every") + 1]) if "--stderr-every" in sys.argv else 0
    pad = "x" * 40
    max_write = 0.0
    counts = [0, 0]
    started = time.perf_counter()
    for i in range(n):
        fd = 2 if every and i % every == every - 1 else 1
        line = f"app line seq={i} {pad}\n".encode()
        t0 = time.perf_counter()
        written = 0
        while written < len(line):
            written += os.write(fd, line[written:])
        max_write = max(max_write, time.perf_counter() - t0)
        counts[fd - 1] += 1
    doc = {"pid": os.getpid(), "lines": n, "stdout_lines": counts[0], "stderr_lines": counts[1],
           "max_write_ms": round(max_write * 1000, 3), "seconds": round(time.perf_counter() - started, 3)}
    with open(result + ".tmp", "w") as f:
        json.dump(doc, f)
    os.rename(result + ".tmp", result)
    deadline = time.monotonic() + 60
    while not os.path.exists(stop) and time.monotonic() < deadline:
        time.sleep(0.05)


if __name__ == "__main__":
    main()
