"""A cheap OTLP/gRPC trace sink for benchmarks: accepts `TraceService/Export` calls and answers
an empty `ExportTraceServiceResponse` without decoding the request (decoding would make the sink
the bottleneck on a 2-core machine), so the proxies under test pay their full export cost and the
sink as little as possible. Counts calls and bytes; prints them to stdout on SIGTERM/SIGINT.

    python3 otlp_sink.py PORT
"""
import signal
import sys
import threading
from concurrent import futures

import grpc

METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
calls = 0
nbytes = 0
lock = threading.Lock()


def export(request, context):
    global calls, nbytes
    with lock:
        calls += 1
        nbytes += len(request)
    return b""  # an empty ExportTraceServiceResponse: every span accepted


class Handler(grpc.GenericRpcHandler):
    def service(self, details):
        if details.method != METHOD:
            return None
        return grpc.unary_unary_rpc_method_handler(
            export, request_deserializer=None, response_serializer=None)


def main():
    port = int(sys.argv[1])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         options=[("grpc.max_receive_message_length", 64 << 20)])
    server.add_generic_rpc_handlers((Handler(),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print(f"otlp sink on 127.0.0.1:{port}", flush=True)
    done.wait()
    server.stop(1)
    print(f"calls {calls} bytes {nbytes}", flush=True)


if __name__ == "__main__":
    main()
