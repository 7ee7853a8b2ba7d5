"""A log sink that counts every line by its sequence number: unique, duplicate, missing.

Accepts POSTs on the data port, gzip-encoded or not, in one of four wire formats (--format):
  ndjson         NDJSON (or any text: one record per line), answered 200 "ok";
  loki           Loki's push API JSON ({"streams":[{"stream":{labels},"values":[[ns, line]]}]}),
                 or with Content-Type application/x-protobuf a snappy-compressed
                 logproto.PushRequest (decoded by hand: labels `{k="v"}`, entries of timestamp
                 and line), answered 204 like Loki; a stream whose values are not in time order,
                 a value that is not [string nanoseconds, string], or a stream without labels
                 is a 400;
  elasticsearch  the bulk API: NDJSON pairs of action ({"index"|"create": {"_index": ...}}) and
                 document, answered 200 with per-item results as Elasticsearch writes them
                 (`errors`, `items[].<op>.status/error`); `filter_path` on the URL shortens a
                 clean answer to {"errors":false} as Elasticsearch does. Per-item failures can
                 be injected (see /control); a failed item's document is not counted;
  otlp           OTLP logs over HTTP: a protobuf ExportLogsServiceRequest (or OTLP/JSON when the
                 content type is application/json), decoded with the official
                 opentelemetry-proto package; each record's string body is a line.
                 Answered with an ExportLogsServiceResponse, with partial_success when records
                 are rejected on purpose (see /control; rejected records are not counted).
  otlp-grpc      the same over gRPC (grpcio): the LogsService/Export method, plain HTTP/2;
                 `fail_next`/`status` answer UNAVAILABLE (INVALID_ARGUMENT for 400). grpcio
                 decompresses gzipped frames (and refuses a compressed frame whose
                 grpc-encoding it was not told).
Every `seq=NNN` token in a line counts that sequence number once. A second port takes control
requests and serves the counts, and keeps working while the data port is "down".

Run: python line_receiver.py DATA_PORT CONTROL_PORT [--format F] [--tls CERT KEY [--client-ca CA]]
(prints "ready" once both listen). --tls serves HTTPS with that certificate; --client-ca also
requires a client certificate signed by CA (mTLS).

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
                      {"tls_reload": true}        read --tls CERT KEY again (new handshakes use
                                                  them) and close every open connection
                      {"answer_lost": true}       a POST answered with a failure (`status`,
                                                  `fail_next`) is still decoded and counted,
                                                  as if stored and the answer lost
                      {"max_request_lines": 300}  ndjson: a POST of more lines gets 413 (not
                                                  counted), as a receiver's body size limit
                      {"down": true}              close the data port and every open connection
                                                  (connections refused); false: listen again
                      {"reset": true}             forget all counts
                      {"item_retry_every": 7, "item_retry_status": 429, "item_retry_times": 2}
                                      elasticsearch: items whose seq is a multiple of 7 fail
                                      with 429 the first 2 times they are sent
                      {"item_reject_every": 1000} elasticsearch: items whose seq is a multiple
                                      of 1000 fail with 400 mapper_parsing_exception, always;
                                      otlp: such records are rejected (partial_success)
A failed POST's lines are not counted: the sender must send them again. /stats also has
"formats" (checks of the wire format: "loki_streams" label sets seen, "es_indices" index names,
"otlp_resources" resource attributes, "tls_clients" client certificate subjects) and
"item_failures" (injected per-item failures answered, by status).
"""
import argparse
import gzip
import json
import re
import socket
import ssl
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
CONTROL = {"status": None, "fail_next": 0, "fail_status": 500, "retry_after": None, "down": False,
           "item_retry_every": 0, "item_retry_status": 429, "item_retry_times": 0, "item_reject_every": 0,
           "max_request_lines": 0, "answer_lost": False}
ES_IDS = {}  # elasticsearch: seq -> set of the `_id`s (None: no _id) its documents carried
CONNS = set()
DATA = {"server": None, "port": None, "format": "ndjson", "tls": None, "tls_files": None}
FORMATS = {"loki_streams": [], "es_indices": [], "otlp_resources": [], "tls_clients": []}
ITEM_FAILURES = {}
ATTEMPTS = {}  # seq -> times an elasticsearch item carrying it was sent


class Refused(Exception):
    """A request the real API would refuse (400), with its message."""


def seq_of(text):
    m = SEQ.search(text.encode() if isinstance(text, str) else text)
    return int(m.group(1)) if m else None


def remember(kind, value):
    with LOCK:
        if value not in FORMATS[kind] and len(FORMATS[kind]) < 100:
            FORMATS[kind].append(value)


def pb_fields(b):
    """A protobuf message's fields: [(tag, int or bytes)] (varint and length-delimited only)."""
    out, i = [], 0

    def varint():
        nonlocal i
        shift = value = 0
        while True:
            byte = b[i]
            i += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
    while i < len(b):
        key = varint()
        tag, wire = key >> 3, key & 7
        if wire == 0:
            out.append((tag, varint()))
        elif wire == 2:
            n = varint()
            out.append((tag, bytes(b[i:i + n])))
            i += n
        else:
            raise Refused(f"unexpected wire type {wire}")
    return out


LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def decode_loki_protobuf(body):
    """Loki's snappy-compressed logproto.PushRequest, as Promtail sends it: streams (1) of
    labels (1, `{k="v", ...}`) and entries (2) of timestamp (1: seconds 1, nanos 2) and line (2)."""
    import cramjam
    try:
        raw = bytes(cramjam.snappy.decompress_raw(body))
    except Exception as e:  # noqa: BLE001 - any decode error is a 400
        raise Refused(f"not snappy (block format): {e}")
    lines = []
    for tag, stream in pb_fields(raw):
        if tag != 1:
            continue
        labels, last = None, -1
        for ftag, v in pb_fields(stream):
            if ftag == 1:
                text = v.decode()
                labels = dict(LABEL.findall(text))
                if not labels or not text.startswith("{") or not text.endswith("}"):
                    raise Refused(f"unreadable labels {text!r}")
                remember("loki_streams", labels)
            elif ftag == 2:
                entry = dict(pb_fields(v))
                ts = dict(pb_fields(entry.get(1, b"")))
                t = ts.get(1, 0) * 1_000_000_000 + ts.get(2, 0)
                if t < last:
                    raise Refused(f"entry out of order for stream {labels}")
                last = t
                lines.append(entry.get(2, b""))
        if labels is None:
            raise Refused("error at least one label pair is required per stream")
    return lines, 204, b"", "text/plain"


def decode_loki(body, content_type=""):
    """Loki push JSON (or snappy protobuf) -> (lines, status, answer bytes, content type)."""
    if content_type.startswith("application/x-protobuf"):
        return decode_loki_protobuf(body)
    try:
        doc = json.loads(body)
        streams = doc["streams"]
    except (ValueError, KeyError, TypeError) as e:
        raise Refused(f"not a push request: {e}")
    lines = []
    for s in streams:
        labels = s.get("stream")
        if not isinstance(labels, dict) or not labels:
            raise Refused("error at least one label pair is required per stream")
        remember("loki_streams", labels)
        last = -1
        for v in s.get("values", []):
            if not (isinstance(v, list) and len(v) in (2, 3) and isinstance(v[0], str) and isinstance(v[1], str)):
                raise Refused(f"a value is not [\"<ns>\", \"<line>\"]: {v!r}")
            ts = int(v[0])
            if ts < last:
                raise Refused(f"entry out of order for stream {labels}")
            last = ts
            lines.append(v[1].encode())
    return lines, 204, b"", "text/plain"


def decode_elasticsearch(body, query):
    """Bulk NDJSON -> (counted lines, 200, per-item answer, content type)."""
    raw = [l for l in body.split(b"\n") if l.strip()]
    if len(raw) % 2:
        raise Refused("The bulk request must be terminated by a newline and have action/document pairs")
    items, lines, errors = [], [], False
    with LOCK:
        ctl = dict(CONTROL)
    for i in range(0, len(raw), 2):
        action = json.loads(raw[i])
        (op, meta), = action.items()
        if op not in ("index", "create") or "_index" not in meta:
            raise Refused(f"unexpected action {action!r}")
        remember("es_indices", f"{op}:{meta['_index']}")
        doc = json.loads(raw[i + 1])
        if "@timestamp" not in doc:
            raise Refused("a document without @timestamp")
        seq = seq_of(raw[i + 1])
        with LOCK:
            attempt = ATTEMPTS[seq] = ATTEMPTS.get(seq, 0) + 1 if seq is not None else 1
            if seq is not None:
                ES_IDS.setdefault(seq, set()).add(meta.get("_id"))
        result = {"_index": meta["_index"], "status": 201, "result": "created"}
        if seq is not None and ctl["item_reject_every"] and seq % ctl["item_reject_every"] == 0:
            result = {"_index": meta["_index"], "status": 400, "error": {
                "type": "mapper_parsing_exception",
                "reason": f"failed to parse field [seq] of type [long] in document (seq={seq})"}}
        elif (seq is not None and ctl["item_retry_every"] and seq % ctl["item_retry_every"] == 0
              and attempt <= ctl["item_retry_times"]):
            st = ctl["item_retry_status"]
            result = {"_index": meta["_index"], "status": st, "error": {
                "type": "es_rejected_execution_exception" if st == 429 else "unavailable_shards_exception",
                "reason": "rejected execution (injected)"}}
        if result["status"] >= 300:
            errors = True
            with LOCK:
                ITEM_FAILURES[str(result["status"])] = ITEM_FAILURES.get(str(result["status"]), 0) + 1
        else:
            lines.append(raw[i + 1])
        items.append({op: result})
    if "filter_path" in query and not errors:
        answer = {"errors": False}
    else:
        answer = {"took": 1, "errors": errors, "items": items}
    return lines, 200, json.dumps(answer).encode(), "application/json"


def decode_otlp(body, content_type):
    """OTLP protobuf, or OTLP/JSON (content type application/json: the protobuf JSON mapping,
    parsed by protobuf's own json_format, except ids, which OTLP/JSON writes in hex)."""
    from google.protobuf import json_format
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
    req = logs_service_pb2.ExportLogsServiceRequest()
    as_json = content_type.startswith("application/json")
    try:
        if as_json:
            doc = json.loads(body)
            for rl in doc.get("resourceLogs", []):
                for sl in rl.get("scopeLogs", []):
                    for rec in sl.get("logRecords", []):
                        for k, n in (("traceId", 32), ("spanId", 16)):
                            v = rec.pop(k, None)
                            if v is not None and not re.fullmatch(f"[0-9a-f]{{{n}}}", v):
                                raise Refused(f"{k} {v!r} is not {n} hex digits")
            json_format.ParseDict(doc, req)
        else:
            req.ParseFromString(body)
    except Refused:
        raise
    except Exception as e:  # noqa: BLE001 - any decode error is a 400
        raise Refused(f"not an ExportLogsServiceRequest: {e}")
    with LOCK:
        reject_every = CONTROL["item_reject_every"]
    lines, rejected = [], 0
    for rl in req.resource_logs:
        remember("otlp_resources", {a.key: a.value.string_value for a in rl.resource.attributes})
        for sl in rl.scope_logs:
            for rec in sl.log_records:
                if rec.body.WhichOneof("value") != "string_value":
                    raise Refused("a log record without a string body")
                line = rec.body.string_value.encode()
                seq = seq_of(line)
                if seq is not None and reject_every and seq % reject_every == 0:
                    rejected += 1
                    continue
                lines.append(line)
    resp = logs_service_pb2.ExportLogsServiceResponse()
    if rejected:
        resp.partial_success.rejected_log_records = rejected
        resp.partial_success.error_message = f"{rejected} records rejected on purpose"
        with LOCK:
            ITEM_FAILURES["rejected"] = ITEM_FAILURES.get("rejected", 0) + rejected
    if as_json:
        return lines, 200, json_format.MessageToJson(resp).encode(), "application/json"
    return lines, 200, resp.SerializeToString(), "application/x-protobuf"


def count(body):
    return count_lines([l for l in body.split(b"\n") if l.strip()])



def count_lines(lines):
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
        if DATA["tls"] is not None:
            peer = self.connection.getpeercert()
            if peer:
                remember("tls_clients", dict(x[0] for x in peer.get("subject", ())))
        with LOCK:
            status = CONTROL["status"] or 200
            if CONTROL["fail_next"] > 0:
                CONTROL["fail_next"] -= 1
                status = CONTROL["fail_status"]
            retry_after = CONTROL["retry_after"]
            STATE["requests"] += 1
            STATE["bytes"] += len(body)
        lines = 0
        answer, ctype = (b"ok", "text/plain") if status // 100 == 2 else (b"refused on purpose", "text/plain")
        forced = status
        lost = status // 100 != 2 and CONTROL["answer_lost"]
        if status // 100 == 2 or lost:
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            fmt = DATA["format"]
            try:
                limit = CONTROL["max_request_lines"]
                if fmt == "ndjson" and limit and sum(1 for l in body.split(b"\n") if l.strip()) > limit:
                    status, answer = 413, b"request entity too large"
                elif fmt == "ndjson":
                    lines = count(body)
                else:
                    if fmt == "loki":
                        decoded, status, answer, ctype = decode_loki(body, self.headers.get("Content-Type", ""))
                    elif fmt == "elasticsearch":
                        decoded, status, answer, ctype = decode_elasticsearch(body, urlparse(self.path).query)
                    else:
                        decoded, status, answer, ctype = decode_otlp(body, self.headers.get("Content-Type", ""))
                    lines = count_lines(decoded)
            except Refused as e:
                status, answer, ctype, lines = 400, str(e).encode(), "text/plain", 0
            if lost:
                status, answer, ctype = forced, b"refused on purpose (stored, answer lost)", "text/plain"
        with LOCK:
            STATE["statuses"][str(status)] = STATE["statuses"].get(str(status), 0) + 1
            REQUESTS.append({"t": time.time(), "status": status, "lines": lines})
        self.send_response(status)
        if status // 100 != 2 and retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


def grpc_export(request, context):
    """`LogsService/Export` (format otlp-grpc, grpcio): the request's raw bytes decoded as
    OTLP/HTTP's are; `fail_next`/`status` answer UNAVAILABLE (INVALID_ARGUMENT for a 400)."""
    import grpc
    with LOCK:
        status = CONTROL["status"] or 200
        if CONTROL["fail_next"] > 0:
            CONTROL["fail_next"] -= 1
            status = CONTROL["fail_status"]
        STATE["requests"] += 1
        STATE["bytes"] += len(request)
    code, answer, lines = None, b"", 0
    if status // 100 != 2:
        code = grpc.StatusCode.INVALID_ARGUMENT if status == 400 else grpc.StatusCode.UNAVAILABLE
    else:
        try:
            decoded, _, answer, _ = decode_otlp(request, "application/x-protobuf")
            lines = count_lines(decoded)
        except Refused as e:
            code, answer = grpc.StatusCode.INVALID_ARGUMENT, str(e).encode()
    with LOCK:
        name = "OK" if code is None else code.name
        STATE["statuses"][name] = STATE["statuses"].get(name, 0) + 1
        REQUESTS.append({"t": time.time(), "status": name, "lines": lines})
    if code is not None:
        context.abort(code, "refused on purpose")
    return answer


def start_data():
    if DATA["format"] == "otlp-grpc":
        import grpc
        from concurrent import futures
        srv = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        srv.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.logs.v1.LogsService",
            {"Export": grpc.unary_unary_rpc_method_handler(grpc_export)}),))
        srv.add_insecure_port(f"127.0.0.1:{DATA['port']}")
        srv.start()
        DATA["server"] = srv
        return
    srv = ThreadingHTTPServer(("127.0.0.1", DATA["port"]), Data)
    srv.daemon_threads = True
    if DATA["tls"] is not None:
        srv.socket = DATA["tls"].wrap_socket(srv.socket, server_side=True)
    DATA["server"] = srv
    threading.Thread(target=srv.serve_forever, daemon=True).start()


def stop_data():
    srv = DATA["server"]
    if srv is None:
        return
    if DATA["format"] == "otlp-grpc":
        srv.stop(0).wait()
        DATA["server"] = None
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
    with LOCK:
        out["formats"] = json.loads(json.dumps(FORMATS))
        out["item_failures"] = dict(ITEM_FAILURES)
        ids = list(ES_IDS.values())
        out["es_ids"] = {
            "seqs": len(ids),
            "without_id": sum(1 for v in ids if None in v),
            "seqs_with_several_ids": sum(1 for v in ids if len(v) > 1),
            "distinct_ids": len({i for v in ids for i in v if i is not None}),
        }
    return out


def missing_list(n, limit):
    """The sequence numbers below n that never arrived (at most `limit`)."""
    with LOCK:
        counts = bytes(COUNTS)
    out = []
    for i in range(n):
        if i >= len(counts) or counts[i] == 0:
            out.append(i)
            if len(out) >= limit:
                break
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
        elif u.path == "/missing":
            self.reply(missing_list(int(q["n"][0]), int(q.get("limit", ["100000"])[0])))
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
        if change.pop("tls_reload", False) and DATA["tls"] is not None:
            DATA["tls"].load_cert_chain(*DATA["tls_files"])
            with LOCK:
                conns = list(CONNS)
            for c in conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if change.pop("reset", False):
            with LOCK:
                COUNTS = bytearray()
                STATE.update(received=0, other_lines=0, requests=0, bytes=0, statuses={}, max_seq=-1)
                REQUESTS.clear()
                ATTEMPTS.clear()
                ITEM_FAILURES.clear()
                ES_IDS.clear()
                for v in FORMATS.values():
                    v.clear()
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
    ap = argparse.ArgumentParser()
    ap.add_argument("data_port", type=int)
    ap.add_argument("control_port", type=int)
    ap.add_argument("--format", default="ndjson", choices=["ndjson", "loki", "elasticsearch", "otlp", "otlp-grpc"])
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    ap.add_argument("--client-ca")
    ap.add_argument("--no-tickets", action="store_true",
                    help="issue no TLS session tickets: every connection verifies the certificate "
                         "served now (no resumption), as after a restart with new keys")
    a = ap.parse_args()
    DATA["port"] = a.data_port
    DATA["format"] = a.format
    if a.tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.tls[0], a.tls[1])
        if a.no_tickets:
            ctx.num_tickets = 0
            ctx.options |= ssl.OP_NO_TICKET
        if a.client_ca:
            ctx.load_verify_locations(a.client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        DATA["tls"] = ctx
        DATA["tls_files"] = a.tls
    start_data()
    ctl = ThreadingHTTPServer(("127.0.0.1", a.control_port), Control)
    ctl.daemon_threads = True
    print("ready", flush=True)
    ctl.serve_forever()


if __name__ == "__main__":
    main()
