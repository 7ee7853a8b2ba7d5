"""A log sink that counts every line by its sequence number: unique, duplicate, missing.

Accepts POSTs of NDJSON (or any text: one record per line), gzip-encoded or not, on the data
port; every `seq=NNN` token in a line counts that sequence number once. Answers 200 unless told
otherwise. A second port takes control requests and serves the counts, and keeps working while
the data port is "down".

Run: python line_receiver.py DATA_PORT CONTROL_PORT       (prints "ready" once both listen)

Control port:
  GET  /stats?n=N   {"received", "unique", "duplicates", "missing" (of 0..N-1), "missing_ranges"
                     (first 10 [from, to] ranges), "other_lines", "requests", "bytes",
                     "max_seq", "statuses": {"200": k, ...}}
  GET  /requests    every data request: [{"t": unix time, "status": S, "lines": L}, ...]
  GET  /lines?limit=K  the first K lines received, as strings (to check the record format)
  POST /control     JSON with any of:
                      {"status": 500}             answer every POST with 500 (null: back to 200)
                      {"fail_next": 3}            the next 3 POSTs get `fail_status` (default 500)
                      {"fail_status": 429}
                      {"retry_after": "2"}        send this Retry-After with every failure
                      {"down": true}              close the data port and every open connection
                                                  (connections refused); false: listen again
                      {"reset": true}             forget all counts
A failed POST's lines are not counted: the sender must send them again.
"""
import gzip
import json
import re
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

SEQ = re.compile(rb"seq=(\d+)")
LOCK = threading.Lock()
COUNTS = bytearray()  # per sequence number, saturating at 255
STATE = {"received": 0, "other_lines": 0, "requests": 0, "bytes": 0, "statuses": {}, "max_seq": -1}
REQUESTS = []
FIRST_LINES = []
CONTROL = {"status": None, "fail_next": 0, "fail_status": 500, "retry_after": None, "down": False}
CONNS = set()
DATA = {"server": None, "port": None}


def count(body):
    global COUNTS
    lines = [l for l in body.split(b"\n") if l.strip()]
    seqs = []
    other = 0
    for line in lines:
        m = SEQ.search(line)
        if m:
            seqs.append(int(m.group(1)))
        else:
            other += 1
    with LOCK:
        if len(FIRST_LINES) < 100:
            FIRST_LINES.extend(l.decode("utf-8", "replace") for l in lines[: 100 - len(FIRST_LINES)])
        if seqs:
            top = max(seqs)
            if top >= len(COUNTS):
                COUNTS.extend(bytes(max(top + 1 - len(COUNTS), len(COUNTS))))
            for s in seqs:
                if COUNTS[s] < 255:
                    COUNTS[s] += 1
            STATE["max_seq"] = max(STATE["max_seq"], top)
        STATE["received"] += len(seqs)
        STATE["other_lines"] += other
    return len(lines)


class Data(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        with LOCK:
            CONNS.add(self.connection)

    def finish(self):
        with LOCK:
            CONNS.discard(self.connection)
        super().finish()

    def log_message(self, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        with LOCK:
            status = CONTROL["status"] or 200
            if CONTROL["fail_next"] > 0:
                CONTROL["fail_next"] -= 1
                status = CONTROL["fail_status"]
            retry_after = CONTROL["retry_after"]
            STATE["requests"] += 1
            STATE["bytes"] += len(body)
            STATE["statuses"][str(status)] = STATE["statuses"].get(str(status), 0) + 1
        lines = 0
        if status // 100 == 2:
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            lines = count(body)
        with LOCK:
            REQUESTS.append({"t": time.time(), "status": status, "lines": lines})
        answer = b"ok" if status // 100 == 2 else b"refused on purpose"
        self.send_response(status)
        if status // 100 != 2 and retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


def start_data():
    srv = ThreadingHTTPServer(("127.0.0.1", DATA["port"]), Data)
    srv.daemon_threads = True
    DATA["server"] = srv
    threading.Thread(target=srv.serve_forever, daemon=True).start()


def stop_data():
    srv = DATA["server"]
    if srv is None:
        return
    srv.shutdown()
    srv.server_close()
    DATA["server"] = None
    with LOCK:
        conns = list(CONNS)
    for c in conns:
        try:
            c.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def stats(n):
    with LOCK:
        counts = bytes(COUNTS)
        out = dict(STATE)
        out["statuses"] = dict(STATE["statuses"])
    n = n if n is not None else len(counts)
    present = counts[:n]
    unique = sum(1 for c in present if c)
    dups = sum(c - 1 for c in counts if c > 1)
    missing = n - unique
    ranges = []
    start = None
    for i in range(n):
        if (i >= len(present) or present[i] == 0):
            if start is None:
                start = i
        elif start is not None:
            ranges.append([start, i - 1])
            start = None
            if len(ranges) >= 10:
                break
    if start is not None and len(ranges) < 10:
        ranges.append([start, n - 1])
    out.update(unique=unique, duplicates=dups, missing=missing, missing_ranges=ranges)
    return out


class Control(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, obj, status=200):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        u = urlparse(self.path)
        q = parse_qs(u.query)
        if u.path == "/stats":
            self.reply(stats(int(q["n"][0]) if "n" in q else None))
        elif u.path == "/requests":
            with LOCK:
                self.reply(list(REQUESTS))
        elif u.path == "/lines":
            with LOCK:
                self.reply(FIRST_LINES[: int(q.get("limit", ["100"])[0])])
        else:
            self.reply({"error": "unknown path"}, 404)

    def do_POST(self):
        global COUNTS
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        change = json.loads(body or b"{}")
        down = change.pop("down", None)
        if change.pop("reset", False):
            with LOCK:
                COUNTS = bytearray()
                STATE.update(received=0, other_lines=0, requests=0, bytes=0, statuses={}, max_seq=-1)
                REQUESTS.clear()
                FIRST_LINES.clear()
        with LOCK:
            CONTROL.update(change)
        if down is True and not CONTROL["down"]:
            stop_data()
            CONTROL["down"] = True
        elif down is False and CONTROL["down"]:
            start_data()
            CONTROL["down"] = False
        with LOCK:
            self.reply(dict(CONTROL))


def main():
    DATA["port"] = int(sys.argv[1])
    start_data()
    ctl = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Control)
    ctl.daemon_threads = True
    print("ready", flush=True)
    ctl.serve_forever()


if __name__ == "__main__":
    main()
