"""A DNS server under test control (dnslib), on UDP and TCP 127.0.0.1:PORT.

Answers from a JSON zone file re-read on every query, so a test changes the answers by rewriting
it (atomically: write a temp file, rename). The file maps names to record lists:
  {"orders.test.": [{"type": "A", "value": "127.0.0.1", "ttl": 1}],
   "_http._tcp.orders.test.": [{"type": "SRV", "target": "127.0.0.1.", "port": 8080,
                                "weight": 1, "priority": 0, "ttl": 1}]}
Names not in the file get NXDOMAIN. Every query is counted: GET the count by sending a TXT query
for `queries.` (answer: the number). Run: python dns_server.py PORT ZONE_FILE
"""
import json
import sys
import threading
import time

from dnslib import AAAA, QTYPE, RCODE, RR, SRV, TXT, A
from dnslib.server import BaseResolver, DNSServer

QUERIES = 0
LOCK = threading.Lock()


class ZoneResolver(BaseResolver):
    def __init__(self, path):
        self.path = path

    def resolve(self, request, handler):
        global QUERIES
        reply = request.reply()
        qname = str(request.q.qname)
        qtype = QTYPE[request.q.qtype]
        if qname == "queries." and qtype == "TXT":
            with LOCK:
                n = QUERIES
            reply.add_answer(RR(qname, QTYPE.TXT, rdata=TXT(str(n)), ttl=0))
            return reply
        with LOCK:
            QUERIES += 1
        try:
            with open(self.path) as f:
                zone = json.load(f)
        except (OSError, ValueError):
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        records = zone.get(qname)
        if records is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for r in records:
            if r["type"] != qtype:
                continue
            ttl = r.get("ttl", 1)
            if qtype == "A":
                rdata = A(r["value"])
            elif qtype == "AAAA":
                rdata = AAAA(r["value"])
            elif qtype == "SRV":
                rdata = SRV(priority=r.get("priority", 0), weight=r.get("weight", 1), port=r["port"], target=r["target"])
            else:
                continue
            reply.add_answer(RR(qname, getattr(QTYPE, qtype), rdata=rdata, ttl=ttl))
        return reply


def main():
    port = int(sys.argv[1])
    resolver = ZoneResolver(sys.argv[2])
    udp = DNSServer(resolver, port=port, address="127.0.0.1")
    tcp = DNSServer(resolver, port=port, address="127.0.0.1", tcp=True)
    udp.start_thread()
    tcp.start_thread()
    print("ready", flush=True)
    while udp.isAlive():
        time.sleep(0.5)


if __name__ == "__main__":
    main()
