"""Certificate rotation for a log sink's TLS files, without a restart, through the real binary
and the counting receiver over HTTPS (backends/line_receiver.py).

The receiver's certificate is signed by CA 1, which the sink's `tls.ca` file holds. While lines
ship, the operator rotates: the CA file becomes CA 1 + CA 2 (Tandem reloads it), then the
receiver switches to a certificate from CA 2 and drops its connections. Tandem's new
connections verify the new certificate with the reloaded CA file: every line arrives. (Without
the reload every new handshake fails and shipping stops.) Then the CA file is broken: the
reload is refused, the log says so, and the last good CA set stays in use. With mTLS, the
sink's client pair is replaced by one from another CA: new connections present it.

Prints its numbers (`-s`).
"""
import shutil
import time

from conftest import TANDEM_BIN, run, wait_for
from logship_support import Receiver, finish, logs_config, report, wait_tailing, writer

N = 20_000


def certs(*args):
    r = run([TANDEM_BIN, "certs", *map(str, args)])
    assert r.returncode == 0, r.stderr


def test_ca_rotation_during_shipping(tandem, procs, tmp_path):
    pki = tmp_path / "pki"
    for n, domain in ((1, "one.test"), (2, "two.test")):
        certs("init", "--trust-domain", domain, "--out", pki / f"ca{n}")
        certs("issue", "--ca", pki / f"ca{n}", "--identity", f"spiffe://{domain}/ns/logs/sa/receiver",
              "--dns", "localhost", "--out", pki / f"server{n}")
    served = tmp_path / "served"
    served.mkdir()
    for f in ("cert.pem", "key.pem"):
        shutil.copy(pki / "server1" / f, served / f)
    sink_ca = tmp_path / "sink-ca.pem"
    shutil.copy(pki / "ca1/ca.pem", sink_ca)

    # No session resumption: every new connection verifies the certificate served now.
    rcv = Receiver(procs, fmt="ndjson", tls=(served / "cert.pem", served / "key.pem"), no_tickets=True)
    log = tmp_path / "app.log"
    log.touch()
    t = tandem(logs_config(tmp_path, rcv, [log], sink_extra=f"      tls: {{ ca: {sink_ca} }}\n"))
    wait_tailing(t)
    w = writer(log, N, 2000)
    wait_for(lambda: rcv.stats(N)["unique"] >= N // 4, 30, "a quarter shipped")

    # Rotation, step 1: the sink trusts both CAs (written aside, renamed in: one atomic change).
    tmp = tmp_path / "sink-ca.pem.new"
    tmp.write_bytes((pki / "ca1/ca.pem").read_bytes() + (pki / "ca2/ca.pem").read_bytes())
    tmp.rename(sink_ca)
    wait_for(lambda: "log sink TLS files reloaded" in t.log(), 10, "the sink reloads its CA file")
    # Step 2: the receiver serves a certificate from CA 2 and closes every connection.
    for f in ("cert.pem", "key.pem"):
        shutil.copy(pki / "server2" / f, served / f)
    rcv.control(tls_reload=True)
    at_switch = rcv.stats(N)["unique"]
    gen = finish(w)
    s = rcv.wait_all(N, timeout=60)
    report("sink CA rotated during shipping", s, writer=gen, received_before_switch=at_switch)
    assert at_switch < N, "the switch happened while lines were still coming"
    assert s["missing"] == 0, s
    # A request cut by the receiver closing its connections may be sent again: one batch at most.
    assert s["duplicates"] <= 1000, s

    # A broken CA file: refused, said once, the last good set stays.
    sink_ca.write_text("not a certificate\n")
    wait_for(lambda: "cannot be used; still using the last good ones" in t.log(), 10, "the bad file is refused")
    time.sleep(2.5)
    assert t.log().count("cannot be used; still using the last good ones") == 1, "reported once"
    assert t.p.poll() is None, "tandem keeps running"


def test_client_certificate_rotation(tandem, procs, tmp_path):
    """mTLS: the receiver accepts client certificates of two CAs. While lines ship, the sink's
    `tls.cert`/`tls.key` are replaced by a pair from the second CA (each file by rename), and
    the receiver drops its connections: the new connections present the new certificate, and
    every line arrives."""
    pki = tmp_path / "pki"
    for n, domain in ((1, "one.test"), (2, "two.test")):
        certs("init", "--trust-domain", domain, "--out", pki / f"ca{n}")
        certs("issue", "--ca", pki / f"ca{n}", "--identity", f"spiffe://{domain}/ns/app/sa/shipper-{n}",
              "--out", pki / f"client{n}")
    certs("issue", "--ca", pki / "ca1", "--identity", "spiffe://one.test/ns/logs/sa/receiver",
          "--dns", "localhost", "--out", pki / "server")
    client_cas = tmp_path / "client-cas.pem"
    client_cas.write_bytes((pki / "ca1/ca.pem").read_bytes() + (pki / "ca2/ca.pem").read_bytes())
    mine = tmp_path / "mine"
    mine.mkdir()
    for f in ("cert.pem", "key.pem"):
        shutil.copy(pki / "client1" / f, mine / f)
    rcv = Receiver(procs, fmt="ndjson", tls=(pki / "server/cert.pem", pki / "server/key.pem"),
                   client_ca=client_cas, no_tickets=True)
    log = tmp_path / "app.log"
    log.touch()
    t = tandem(logs_config(tmp_path, rcv, [log], sink_extra=(
        f"      tls: {{ ca: {pki}/ca1/ca.pem, cert: {mine}/cert.pem, key: {mine}/key.pem }}\n")))
    wait_tailing(t)
    w = writer(log, N, 2000)
    wait_for(lambda: rcv.stats(N)["unique"] >= N // 4, 30, "a quarter shipped")
    for f in ("cert.pem", "key.pem"):
        tmp = mine / (f + ".new")
        shutil.copy(pki / "client2" / f, tmp)
        tmp.rename(mine / f)
    wait_for(lambda: "log sink TLS files reloaded" in t.log(), 10, "the sink reloads its client pair")
    rcv.control(tls_reload=True)
    gen = finish(w)
    s = rcv.wait_all(N, timeout=60)
    clients = [c.get("commonName") for c in s["formats"]["tls_clients"]]
    report("sink client certificate rotated during shipping", s, writer=gen, clients=clients)
    assert s["missing"] == 0 and s["duplicates"] <= 1000, s
    assert clients[0] == "spiffe://one.test/ns/app/sa/shipper-1", clients
    assert "spiffe://two.test/ns/app/sa/shipper-2" in clients, "new connections present the new pair"
