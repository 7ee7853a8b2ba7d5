"""gRPC test server without code generation: raw-bytes handlers for all four streaming kinds.

/test.Echo/Unary          echoes; metadata `fail: CODE` -> aborts with that status and trailing metadata
/test.Echo/ServerStream   request b"N" -> N messages b"0".."N-1"
/test.Echo/ClientStream   joins the requests with b","
/test.Echo/Bidi           echoes each message upper-cased
/test.Echo/Deadline       replies with the remaining deadline in ms (b"none" without one), or sleeps
                          for the ms given in the request first
Run: python grpc_backend.py PORT
"""
import sys
import time
from concurrent import futures

import grpc


def unary(req, ctx):
    md = dict(ctx.invocation_metadata())
    if "fail" in md:
        ctx.set_trailing_metadata((("x-why", "asked-to-fail"),))
        ctx.abort(grpc.StatusCode[md["fail"]], "failing as asked")
    ctx.set_trailing_metadata((("x-trailer", "present"),))
    return req


def server_stream(req, ctx):
    for i in range(int(req.decode() or "0")):
        yield str(i).encode()


def client_stream(reqs, ctx):
    return b",".join(reqs)


def bidi(reqs, ctx):
    for r in reqs:
        yield r.upper()


def deadline(req, ctx):
    if req:
        time.sleep(int(req.decode()) / 1000)
    left = ctx.time_remaining()
    return b"none" if left is None else str(int(left * 1000)).encode()


def main():
    port = int(sys.argv[1])
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Deadline": grpc.unary_unary_rpc_method_handler(deadline),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
