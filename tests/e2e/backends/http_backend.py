"""HTTP test backend (threaded, keep-alive) on TCP or a Unix socket. HTTP/1.1 always; with
BACKEND_H2=1 also HTTP/2 prior knowledge (h2c) on the same port, told apart by the preface.

Paths: /echo... -> JSON of what arrived (method, path, version, headers, body length, server name);
/sleep/MS -> 200 "slept" after MS ms; /__inflight -> how many sleeps (and delays) are running;
/status/N -> status N; /bytes/N -> N bytes; /reset -> close without a response (HTTP/2: RST_STREAM); /chunked -> a chunked
response (HTTP/2: the same bytes in three DATA frames); anything else -> 200 "ok".

Control, for tests that change a running backend's behaviour:
POST /__control with a JSON object of any of these keys; the answer is the whole control state as JSON.
  {"delay_ms": 50}                      hold every request 50 ms first (0 to clear)
  {"status": 503}                       answer every request 503, body "status"  (null to clear)
  {"fail_next": 3, "fail_status": 500}  the next 3 requests get 500 (fail_status: 503 unless given)
  {"reset": true}                       close every request's connection without a response
  {"health": 503}                       what /healthz answers (default 200)
  {"reset_stats": true}                 zero the /__stats counters
Precedence: the delay, then reset, fail_next, status, then the path. /healthz, /__control, /__stats
and /__inflight are never affected nor counted as requests. GET /__control returns the state.
/healthz -> the health status, body "health N"; counted as a health check, not as a request.
GET /__stats -> {"requests": N, "health_checks": M}.
Run: python http_backend.py PORT | unix:/path      (env BACKEND_NAME names it in /echo, BACKEND_H2=1,
BACKEND_HOST binds TCP to that address instead of 127.0.0.1, e.g. inside a network namespace)
"""
import json
import os
import socket
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

INFLIGHT = 0
LOCK = threading.Lock()
CONTROL = {"delay_ms": 0, "status": None, "fail_next": 0, "fail_status": 503, "reset": False, "health": 200}
STATS = {"requests": 0, "health_checks": 0}
# What each /__control key accepts: integers (not bools), and null for "status" only.
CONTROL_TYPES = {"delay_ms": (int,), "status": (int, type(None)), "fail_next": (int,), "fail_status": (int,),
                 "reset": (bool,), "health": (int,), "reset_stats": (bool,)}
H2 = os.environ.get("BACKEND_H2") == "1"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def sleep_ms(ms):
    global INFLIGHT
    with LOCK:
        INFLIGHT += 1
    try:
        time.sleep(ms / 1000)
    finally:
        with LOCK:
            INFLIGHT -= 1


def control(method, body):
    """/__control: GET shows the state; POST changes the keys given (see the module docs)."""
    if method == "POST":
        try:
            change = json.loads(body or b"{}")
            if not isinstance(change, dict):
                raise ValueError("not a JSON object")
            for key, value in change.items():
                if key not in CONTROL_TYPES:
                    raise ValueError(f"unknown key {key!r}; known: {sorted(CONTROL_TYPES)}")
                is_bool = isinstance(value, bool)
                if not isinstance(value, CONTROL_TYPES[key]) or (is_bool and bool not in CONTROL_TYPES[key]):
                    raise ValueError(f"{key}: {value!r} is not {' or '.join(t.__name__ for t in CONTROL_TYPES[key])}")
        except ValueError as e:
            return 400, "text/plain", str(e).encode()
        if "fail_next" in change:
            change.setdefault("fail_status", 503)
        with LOCK:
            if change.pop("reset_stats", False):
                STATS.update(requests=0, health_checks=0)
            CONTROL.update(change)
    with LOCK:
        state = dict(CONTROL)
    return 200, "application/json", json.dumps(state).encode()


def mode():
    """Counts a request and returns (delay in ms, the reply the control state forces or None)."""
    with LOCK:
        STATS["requests"] += 1
        forced = None
        if CONTROL["reset"]:
            forced = "reset"
        elif CONTROL["fail_next"] > 0:
            CONTROL["fail_next"] -= 1
            forced = (int(CONTROL["fail_status"]), "text/plain", b"status")
        elif CONTROL["status"] is not None:
            forced = (int(CONTROL["status"]), "text/plain", b"status")
        return CONTROL["delay_ms"], forced


def answer(method, path, version, headers, body):
    """The reply for a request: (status, content-type, body), body None for /chunked, or None for
    "reset"."""
    bare = path.split("?")[0]
    if bare == "/__inflight":
        return 200, "text/plain", str(INFLIGHT).encode()
    if bare == "/__control":
        return control(method, body)
    if bare == "/__stats":
        with LOCK:
            return 200, "application/json", json.dumps(STATS).encode()
    if bare == "/healthz":
        with LOCK:
            STATS["health_checks"] += 1
            health = int(CONTROL["health"])
        return health, "text/plain", b"health %d" % health
    delay_ms, forced = mode()
    if delay_ms:
        sleep_ms(delay_ms)
    if forced == "reset":
        return None
    if forced is not None:
        return forced
    if bare == "/chunked":
        return 200, "text/plain", None
    if bare.startswith("/slowbody/"):
        # The head at once, the body (`slow body`) after the given milliseconds.
        return 200, "text/plain", ("slow", int(bare.rsplit("/", 1)[1]))
    if "/sleep/" in bare:
        sleep_ms(int(bare.rsplit("/", 1)[1]))
        return 200, "text/plain", b"slept"
    if bare.startswith("/status/"):
        return int(bare.split("/")[2]), "text/plain", b"status"
    if bare.startswith("/bytes/"):
        return 200, "application/octet-stream", b"x" * int(bare.split("/")[2])
    if bare == "/reset":
        return None
    if bare.startswith("/echo"):
        info = {
            "method": method,
            "path": path,
            "version": version,
            "headers": headers,
            "body_len": len(body),
            "server": os.environ.get("BACKEND_NAME", ""),
        }
        return 200, "application/json", json.dumps(info).encode()
    return 200, "text/plain", b"ok"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _body(self):
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("content-length") or 0)
        return self.rfile.read(n) if n else b""

    def _handle(self):
        body = self._body()
        headers = [[k.lower(), v] for k, v in self.headers.items()]
        reply = answer(self.command, self.path, self.request_version, headers, body)
        if reply is None:
            self.close_connection = True
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.connection.close()
            return
        status, ctype, out = reply
        if isinstance(out, tuple):
            body = b"slow body"
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.flush()
            sleep_ms(out[1])
            self.wfile.write(body)
            return
        if out is None:
            self.send_response(status)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for part in (b"one,", b"two,", b"three"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


def is_h2(sock):
    """Peeks (without consuming) until the bytes either are the HTTP/2 preface or cannot be."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        head = sock.recv(len(PREFACE), socket.MSG_PEEK)
        if not head or not PREFACE.startswith(head):
            return False
        if len(head) == len(PREFACE):
            return True
        time.sleep(0.005)
    return False


def serve_h2(sock):
    """One HTTP/2 connection: each request is answered on its own thread (so /sleep overlaps)."""
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, validate_inbound_headers=False))
    wlock = threading.Lock()
    streams = {}

    def flush():
        data = conn.data_to_send()
        if data:
            sock.sendall(data)

    def respond(stream_id, req_headers, body):
        pseudo = dict((k, v) for k, v in req_headers if k.startswith(":"))
        reply = answer(pseudo.get(":method"), pseudo.get(":path"), "HTTP/2", [list(h) for h in req_headers], body)
        with wlock:
            try:
                if reply is None:
                    conn.reset_stream(stream_id)
                else:
                    status, ctype, out = reply
                    if out is None:
                        conn.send_headers(stream_id, [(":status", str(status)), ("content-type", ctype)])
                        for part in (b"one,", b"two,", b"three"):
                            conn.send_data(stream_id, part)
                        conn.end_stream(stream_id)
                    else:
                        conn.send_headers(stream_id, [(":status", str(status)), ("content-type", ctype),
                                                      ("content-length", str(len(out)))])
                        conn.send_data(stream_id, out, end_stream=True)
                flush()
            except Exception:  # noqa: BLE001 - the peer went away or reset the stream
                pass

    with wlock:
        conn.initiate_connection()
        flush()
    while True:
        try:
            data = sock.recv(65536)
        except OSError:
            return
        if not data:
            return
        with wlock:
            events = conn.receive_data(data)
            for ev in events:
                if isinstance(ev, h2.events.RequestReceived):
                    hs = [(k.decode() if isinstance(k, bytes) else k, v.decode() if isinstance(v, bytes) else v)
                          for k, v in ev.headers]
                    streams[ev.stream_id] = (hs, bytearray())
                elif isinstance(ev, h2.events.DataReceived):
                    streams[ev.stream_id][1].extend(ev.data)
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    hs, body = streams.pop(ev.stream_id)
                    threading.Thread(target=respond, args=(ev.stream_id, hs, bytes(body)), daemon=True).start()
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    flush()
                    return
            flush()


class Dispatch:
    """Hands each connection to the HTTP/2 loop or to the HTTP/1.1 handler."""

    def finish_request(self, request, client_address):
        if H2 and is_h2(request):
            serve_h2(request)
        else:
            self.RequestHandlerClass(request, client_address, self)


class TCPServer(Dispatch, ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 overflows when a test opens connections in bursts
    # (the kernel then drops SYNs and the client retries after 1 s).
    request_queue_size = 128


class UnixHTTPServer(Dispatch, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = 128

    def get_request(self):
        sock, _ = super().get_request()
        return sock, ("unix", 0)


class TcpHandler(Handler):
    # Headers and body go out in separate writes; with Nagle on, the body waits for the client's
    # delayed ACK (~40 ms per response on a reused connection). TCP only: Unix sockets refuse it.
    disable_nagle_algorithm = True


def main():
    where = sys.argv[1]
    if where.startswith("unix:"):
        path = where[5:]
        if os.path.exists(path):
            os.unlink(path)
        server = UnixHTTPServer(path, Handler)
    else:
        server = TCPServer((os.environ.get("BACKEND_HOST", "127.0.0.1"), int(where)), TcpHandler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
