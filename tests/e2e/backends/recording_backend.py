"""A raw HTTP/1.1 backend that records every byte it receives, for smuggling tests.

It answers each request it can frame (Content-Length or chunked body) with `200` and the body
`ok METHOD PATH`, keeps connections alive, and appends every byte read on every connection to a
record kept in memory. Bytes it cannot frame get a `400` and a closed connection: a smuggled
request that reached the backend is then visible both in the record and in the answer.

Every connection is recorded from its first byte, even one that never completes a head;
control connections (whose first request targets `/__`) are dropped from the record.
  GET  /__recorded  -> JSON {"connections": [base64 of each connection's bytes, ...]}: connections
                       with at least one byte since the last reset
  POST /__reset     -> forget every byte so far (connections kept open go on being recorded)
Run: python recording_backend.py PORT
"""
import base64
import json
import socket
import sys
import threading

LOCK = threading.Lock()
RECORD = []  # one bytearray per recorded connection, in accept order


class Unframeable(Exception):
    pass


def read_head(conn, buf):
    """Returns (head, rest) once buf holds a full head, reading more as needed; None on EOF."""
    while b"\r\n\r\n" not in buf:
        data = conn.recv(65536)
        if not data:
            return None
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head, rest


class Conn:
    """A client connection and its record, listed in RECORD from the start."""

    def __init__(self, sock):
        self.sock = sock
        self.record = bytearray()
        with LOCK:
            RECORD.append(self.record)

    def recv(self, n):
        data = self.sock.recv(n)
        with LOCK:
            self.record.extend(data)
        return data

    def forget(self):
        with LOCK:
            RECORD[:] = [r for r in RECORD if r is not self.record]

    def sendall(self, data):
        self.sock.sendall(data)

    def close(self):
        self.sock.close()


def need(conn, buf, n):
    while len(buf) < n:
        data = conn.recv(65536)
        if not data:
            raise Unframeable("eof in body")
        buf += data
    return buf


def read_line(conn, buf):
    while b"\r\n" not in buf:
        data = conn.recv(65536)
        if not data:
            raise Unframeable("eof in chunked body")
        buf += data
    line, rest = buf.split(b"\r\n", 1)
    return line, rest


def read_body(conn, fields, rest):
    """Consumes the body; returns what follows it."""
    te = fields.get(b"transfer-encoding")
    cl = fields.get(b"content-length")
    if te is not None:
        if te.strip().lower() != b"chunked" or cl is not None:
            raise Unframeable(f"transfer-encoding {te!r}")
        while True:
            line, rest = read_line(conn, rest)
            size = int(line.split(b";")[0], 16)
            if size == 0:
                while True:
                    line, rest = read_line(conn, rest)
                    if line == b"":
                        return rest
            rest = need(conn, rest, size + 2)
            rest = rest[size + 2:]
    if cl is not None:
        n = int(cl)
        rest = need(conn, rest, n)
        return rest[n:]
    return rest


def serve(conn):
    buf = b""
    first = True
    try:
        while True:
            got = read_head(conn, buf)
            if got is None:
                return
            head, rest = got
            lines = head.split(b"\r\n")
            parts = lines[0].split(b" ")
            if len(parts) != 3:
                raise Unframeable(f"request line {lines[0]!r}")
            method, path, _ = parts
            if first:
                first = False
                if path.startswith(b"/__"):
                    conn.forget()
                    return control(conn, method, path)
            fields = {}
            for line in lines[1:]:
                name, sep, value = line.partition(b":")
                if not sep:
                    raise Unframeable(f"field line {line!r}")
                key = name.lower()
                if key in fields:
                    raise Unframeable(f"{name!r} twice")
                fields[key] = value.strip()
            buf = read_body(conn, fields, rest)
            body = b"ok " + method + b" " + path
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    except (Unframeable, ValueError) as e:
        msg = str(e).encode()
        try:
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(msg), msg))
        except OSError:
            pass
    except OSError:
        pass
    finally:
        conn.close()


def control(conn, method, path):
    if method == b"POST" and path == b"/__reset":
        with LOCK:
            for r in RECORD:
                del r[:]
        body = b"{}"
    elif path == b"/__recorded":
        with LOCK:
            seen = [base64.b64encode(bytes(r)).decode() for r in RECORD if r]
        body = json.dumps({"connections": seen}).encode()
    else:
        body = b"unknown control path"
    conn.sendall(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-type: application/json\r\n"
                 b"content-length: %d\r\n\r\n%s" % (len(body), body))
    conn.close()


def main():
    port = int(sys.argv[1])
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(128)
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(Conn(conn),), daemon=True).start()


if __name__ == "__main__":
    main()
