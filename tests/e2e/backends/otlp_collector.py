"""A test OTLP trace collector built on the official OpenTelemetry protobuf definitions
(`opentelemetry-proto`): an OTLP/gRPC TraceService (grpcio) and an OTLP/HTTP endpoint (protobuf
bodies, `POST /v1/traces`), both decoding ExportTraceServiceRequest with the generated classes.

Received spans are kept in memory and served as JSON for the tests:
  GET /spans  -> [{"protocol": "grpc" | "http", "resource": {...}, "scope": "tandem",
                   "trace_id": hex, "span_id": hex, "parent_span_id": hex or "", "name": ...,
                   "kind": "server" | "client" | ..., "flags": int, "trace_state": str,
                   "start": ns, "end": ns, "attributes": {...}, "status": {"code": "UNSET" | "OK" |
                   "ERROR", "message": str}}, ...]
  GET /requests -> {"grpc": N, "http": M}: export requests received per protocol
POST /v1/traces answers 415 to a content type other than application/x-protobuf and 400 to a body
that does not decode, so a wrong exporter fails the tests instead of passing silently.

Run: python otlp_collector.py HTTP_PORT      (env OTLP_GRPC_PORT: also serve gRPC on that port)
Prints "ready" once both listen.
"""
import json
import os
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

LOCK = threading.Lock()
SPANS = []
REQUESTS = {"grpc": 0, "http": 0}
KINDS = {
    trace_pb2.Span.SPAN_KIND_SERVER: "server",
    trace_pb2.Span.SPAN_KIND_CLIENT: "client",
    trace_pb2.Span.SPAN_KIND_INTERNAL: "internal",
    trace_pb2.Span.SPAN_KIND_PRODUCER: "producer",
    trace_pb2.Span.SPAN_KIND_CONSUMER: "consumer",
}
STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}


def value(v):
    """An AnyValue as a plain Python value."""
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, which)


def attributes(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


def keep(request, protocol):
    spans = []
    for rs in request.resource_spans:
        resource = attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                spans.append({
                    "protocol": protocol,
                    "resource": resource,
                    "scope": ss.scope.name,
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(),
                    "name": s.name,
                    "kind": KINDS.get(s.kind, str(s.kind)),
                    "flags": s.flags,
                    "trace_state": s.trace_state,
                    "start": s.start_time_unix_nano,
                    "end": s.end_time_unix_nano,
                    "attributes": attributes(s.attributes),
                    "status": {"code": STATUS.get(s.status.code, str(s.status.code)), "message": s.status.message},
                })
    with LOCK:
        SPANS.extend(spans)
        REQUESTS[protocol] += 1


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):  # noqa: N802 - the generated name
        keep(request, "grpc")
        return trace_service_pb2.ExportTraceServiceResponse()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body, content_type="application/json"):
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        with LOCK:
            if self.path == "/spans":
                body = json.dumps(SPANS).encode()
            elif self.path == "/requests":
                body = json.dumps(REQUESTS).encode()
            else:
                return self.reply(404, b"not found", "text/plain")
        self.reply(200, body)

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path != "/v1/traces":
            return self.reply(404, b"not found", "text/plain")
        if self.headers.get("content-type") != "application/x-protobuf":
            return self.reply(415, b"want application/x-protobuf", "text/plain")
        request = trace_service_pb2.ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
        except DecodeError as e:
            return self.reply(400, str(e).encode(), "text/plain")
        keep(request, "http")
        self.reply(200, trace_service_pb2.ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")


def main():
    http_port = int(sys.argv[1])
    grpc_port = os.environ.get("OTLP_GRPC_PORT")
    server = None
    if grpc_port:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
        server.add_insecure_port(f"127.0.0.1:{grpc_port}")
        server.start()
    httpd = ThreadingHTTPServer(("127.0.0.1", http_port), Handler)
    httpd.daemon_threads = True
    print("ready", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
