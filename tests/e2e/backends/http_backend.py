"""HTTP/1.1 test backend (threaded, keep-alive) on TCP or a Unix socket.

Paths: /echo... -> JSON of what arrived (method, path, version, headers, body length);
/sleep/MS -> 200 "slept" after MS ms; /__inflight -> how many sleeps are running; /status/N -> status N; /reset -> close without a response;
/chunked -> a chunked response; anything else -> 200 "ok".
Run: python http_backend.py PORT | unix:/path
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

    def _send(self, status, body, ctype="text/plain"):
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self):
        path = self.path.split("?")[0]
        body = self._body()
        global INFLIGHT
        if path == "/__inflight":
            return self._send(200, str(INFLIGHT).encode())
        if "/sleep/" in path:
            with LOCK:
                INFLIGHT += 1
            try:
                time.sleep(int(path.rsplit("/", 1)[1]) / 1000)
            finally:
                with LOCK:
                    INFLIGHT -= 1
            return self._send(200, b"slept")
        if path.startswith("/status/"):
            return self._send(int(path.split("/")[2]), b"status")
        if path == "/reset":
            self.close_connection = True
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.connection.close()
            return
        if path == "/chunked":
            self.send_response(200)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for part in (b"one,", b"two,", b"three"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        if path.startswith("/echo"):
            info = {
                "method": self.command,
                "path": self.path,
                "version": self.request_version,
                "headers": [[k.lower(), v] for k, v in self.headers.items()],
                "body_len": len(body),
                "server": os.environ.get("BACKEND_NAME", ""),
            }
            return self._send(200, json.dumps(info).encode(), "application/json")
        return self._send(200, b"ok")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):
        sock, _ = super().get_request()
        return sock, ("unix", 0)


def main():
    where = sys.argv[1]
    if where.startswith("unix:"):
        path = where[5:]
        if os.path.exists(path):
            os.unlink(path)
        server = UnixHTTPServer(path, Handler)
    else:
        ThreadingHTTPServer.daemon_threads = True
        server = ThreadingHTTPServer(("127.0.0.1", int(where)), Handler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
