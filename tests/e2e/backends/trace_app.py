"""An app for `tandem run --` that throws: writes N Java-style stack traces (a start line with
`seq=N`, then 2 to 19 `\tat` lines and a `Caused by:` line) to stdout, every tenth one to stderr,
one os.write() per line (so a trace is cut across pipe reads), in bursts with short pauses.

Run: python trace_app.py N RESULT_JSON STOP_FILE
Writes {"pid": P, "traces": N, "lines": L, "max_write_ms": m} to RESULT_JSON once done, then
waits (up to 300 s) for STOP_FILE to exist before exiting 0: the last trace is followed by no
start line, so only the joiner's timeout (or the stream's end) completes it.
"""
import json
import os
import sys
import time


def trace(i):
    fd = 2 if i % 10 == 9 else 1
    out = [f"2026-11-24T10:00:{i % 60:02d}Z ERROR [worker-{i % 4}] request failed seq={i}\n"]
    out.append("java.lang.IllegalStateException: boom\n")
    out += [f"\tat com.example.Orders.step{k}(Orders.java:{k + 10})\n" for k in range(2 + (i * 7) % 18)]
    out.append("Caused by: java.io.IOException: upstream\n")
    return fd, out


def main():
    n, result, stop = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    max_write, lines = 0.0, 0
    for i in range(n):
        fd, out = trace(i)
        for line in out:
            data = line.encode()
            t0 = time.perf_counter()
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            max_write = max(max_write, time.perf_counter() - t0)
            lines += 1
        if i % 500 == 499:
            time.sleep(0.02)
    doc = {"pid": os.getpid(), "traces": n, "lines": lines, "max_write_ms": round(max_write * 1000, 3)}
    with open(result + ".tmp", "w") as f:
        json.dump(doc, f)
    os.rename(result + ".tmp", result)
    deadline = time.monotonic() + 300
    while not os.path.exists(stop) and time.monotonic() < deadline:
        time.sleep(0.05)


if __name__ == "__main__":
    main()
