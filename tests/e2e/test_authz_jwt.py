"""Path normalization, listener authorization and route JWT authentication through the real
binary: raw request targets sent with http.client and curl --path-as-is (clients that do not
normalize paths themselves), a recording backend that reports what it received, and JWTs minted
with PyJWT + cryptography, their keys served as a JWKS by an HTTP server this test runs."""
import base64
import hashlib
import hmac
import http.client
import json
import ssl
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from conftest import TANDEM_BIN, free_port, metric, run, wait_for

ISSUER = "https://issuer.test"


def raw_get(port, target, headers=None, method="GET", source="127.0.0.1"):
    """Sends `target` exactly as given (http.client does not normalize); returns
    (status, headers, body)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
    try:
        c.request(method, target, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode()
    finally:
        c.close()


def echoed(body):
    """What the recording backend received: (path with query, {header: [values]})."""
    info = json.loads(body)
    hs = {}
    for k, v in info["headers"]:
        hs.setdefault(k, []).append(v)
    return info["path"], hs


def test_encoded_path_bypasses_are_denied_and_the_app_gets_the_normalized_path(tandem, http_backend):
    """With `/admin/*` denied, every spelling of /admin (duplicate slashes, percent-encoded
    letters, dot segments, encoded and mixed-case encoded dots) gets 403 `forbidden` naming the
    rule; allowed requests reach the backend with the normalized path and the query untouched;
    bad escapes and NUL are 400; denials are counted per rule and written to the audit log."""
    port, out_port = free_port(), free_port()
    t = tandem(f"""
listeners:
  inbound:
    address: 127.0.0.1:{port}
    upstream: app
    authorization:
      rules:
        - {{ name: no-admin, action: deny, paths: ["/admin/*"] }}
        - {{ name: rest, action: allow }}
  outbound:
    address: 127.0.0.1:{out_port}
    direction: outbound
    upstream: app
upstreams:
  app: {{ endpoints: [{http_backend}], protocol: http1 }}
""")
    bypasses = ["/admin", "//admin", "///admin/", "/%61dmin", "/%61%64%6d%69%6e/x", "/x/../admin",
                "/./admin", "/admin/.", "/%2e%2e/admin", "/%2E%2E/admin", "/x/%2E%2e/admin",
                "/x/.%2E/admin/users", "/echo/..//admin"]
    for target in bypasses:
        status, headers, body = raw_get(port, target)
        assert (status, headers.get("tandem-error")) == (403, "forbidden"), (target, status, body)
        assert "rule `no-admin`" in body, (target, body)
    # The same with a different real client, over HTTP/1.1 and HTTP/2 (prior knowledge).
    for http2 in ([], ["--http2-prior-knowledge"]):
        r = run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{http_version}", "--path-as-is",
                 *http2, f"http://127.0.0.1:{port}/x/../%61dmin"])
        assert r.stdout == ("403 2" if http2 else "403 1.1"), r
    r = run(["curl", "-s", "--http2-prior-knowledge", "--path-as-is", f"http://127.0.0.1:{port}/x/..//%65cho/./h2?q=/../"])
    assert echoed(r.stdout)[0] == "/echo/h2?q=/../", r

    allowed = {
        "/echo/../echo/a?x=%2e%2e&y=/../z": "/echo/a?x=%2e%2e&y=/../z",
        "//echo//b/": "/echo/b/",
        "/%65cho/%7Euser": "/echo/~user",
        "/echo/a%2fb": "/echo/a%2Fb",
        "/echo/x/..%2Fadmin": "/echo/x/..%2Fadmin",
        "/echo/%252e%252e/": "/echo/%252e%252e/",
        "/echo/./c/.": "/echo/c/",
    }
    for sent, want in allowed.items():
        status, _, body = raw_get(port, sent)
        assert status == 200, (sent, body)
        assert echoed(body)[0] == want, (sent, body)
    # An outbound listener (the app's own requests) passes the path as sent.
    # (Not a leading `//`: Python's http.server collapses that itself.)
    status, _, body = raw_get(out_port, "/echo//%61/../b")
    assert status == 200 and echoed(body)[0] == "/echo//%61/../b", body
    for bad in ["/echo/%zz", "/echo/%4", "/echo/a%00b"]:
        status, headers, body = raw_get(port, bad)
        assert (status, headers.get("tandem-error")) == (400, "bad_request"), (bad, body)

    m = httpx.get(f"{t.admin}/metrics").text
    assert metric(m, "tandem_authz_denied_total", listener="inbound", rule="no-admin") == len(bypasses) + 2
    audit = [line for line in t.log().splitlines() if "audit: request denied" in line]
    assert len(audit) == len(bypasses) + 2, t.log()[-3000:]
    assert all("decision=\"deny\"" in line and "rule=\"no-admin\"" in line for line in audit), audit[0]
    assert any("path=\"/admin\"" in line and "source=Some(127.0.0.1)" in line for line in audit), audit


def test_source_method_and_header_rules(tandem, http_backend):
    """Rules combine source networks, methods and headers; deny beats allow; anything no allow
    rule matches is denied by `default`. The client connects from 127.0.0.1 or 127.0.0.2."""
    port = free_port()
    t = tandem(args=["--log", "info,tandem::audit=debug"], config_text=f"""
listeners:
  inbound:
    address: 127.0.0.1:{port}
    upstream: app
    authorization:
      rules:
        - {{ name: no-deletes, action: deny, methods: [DELETE] }}
        - {{ name: reads-from-2, action: allow, methods: [GET, HEAD], source_cidrs: [127.0.0.2/32, "10.0.0.0/8"] }}
        - name: tenant-writes
          action: allow
          methods: [POST]
          source_cidrs: [127.0.0.0/8]
          headers: {{ x-tenant: acme }}
upstreams:
  app: {{ endpoints: [{http_backend}] }}
""")
    cases = [
        ("GET", "127.0.0.2", {}, 200, None),
        ("GET", "127.0.0.1", {}, 403, "default"),
        ("DELETE", "127.0.0.2", {}, 403, "no-deletes"),
        ("POST", "127.0.0.1", {}, 403, "default"),
        ("POST", "127.0.0.1", {"x-tenant": "other"}, 403, "default"),
        ("POST", "127.0.0.1", {"x-tenant": "acme"}, 200, None),
        ("PUT", "127.0.0.2", {"x-tenant": "acme"}, 403, "default"),
    ]
    for method, source, headers, want, rule in cases:
        status, h, body = raw_get(port, "/echo", headers=headers, method=method, source=source)
        assert status == want, (method, source, headers, body)
        if rule:
            assert h["tandem-error"] == "forbidden"
            assert (f"rule `{rule}`" in body) if rule != "default" else ("default deny" in body), body
    m = httpx.get(f"{t.admin}/metrics").text
    assert metric(m, "tandem_authz_denied_total", listener="inbound", rule="default") == 4
    assert metric(m, "tandem_authz_denied_total", listener="inbound", rule="no-deletes") == 1
    # With tandem::audit at debug, allows are audited too.
    log = t.log()
    assert log.count("audit: request allowed") == 2, log[-3000:]
    assert 'rule="tenant-writes"' in log and 'source=Some(127.0.0.2)' in log
    assert log.count("audit: request denied") == 5


def test_check_reports_policy_and_jwt_mistakes(tmp_path):
    """`tandem check` reports authorization and jwt mistakes at their lines with a fix, and
    exits 64."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("""\
listeners:
  inbound:
    address: 127.0.0.1:7080
    upstream: app
    authorization:
      rules:
        - { action: deny, paths: ["/x/../admin"] }
        - { action: allow, source_cidrs: [10.0.0.1/8] }
    routes:
      - match: { path: { prefix: /api } }
        upstream: app
        jwt: { issuer: i, audiences: [a], algorithms: [RS256, none], jwks: { url: "http://idp/jwks", ca: /etc/ca.pem } }
upstreams:
  app: { endpoints: [127.0.0.1:8080] }
""")
    r = run([TANDEM_BIN, "check", "-c", str(bad)])
    assert r.returncode == 64, r
    err = r.stderr
    assert f"{bad}:7: listeners.inbound.authorization.rules[0].paths[0]:" in err, err
    assert f"{bad}:8: listeners.inbound.authorization.rules[1].source_cidrs[0]:" in err, err
    assert "the network is 10.0.0.0/8" in err
    assert "listeners.inbound.routes[0].jwt.algorithms[1]: `none` is not a supported algorithm" in err
    assert "never accepted" in err
    assert "listeners.inbound.routes[0].jwt.jwks.ca: `ca` only applies to an https:// JWKS URL" in err
    assert err.splitlines()[-1] == f"{bad}: 4 error(s)"


class Jwks:
    """An HTTP server on loopback serving a JWKS that the test changes; counts fetches. With
    `tls=(cert, key)` it serves HTTPS as `localhost`."""

    def __init__(self, tls=None):
        self.keys = []
        self.fetches = 0
        self.lock = threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                with outer.lock:
                    outer.fetches += 1
                    body = json.dumps({"keys": list(outer.keys)}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        port = self.server.server_address[1]
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            self.url = f"https://localhost:{port}/.well-known/jwks.json"
        else:
            self.url = f"http://127.0.0.1:{port}/.well-known/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def set(self, *jwks):
        with self.lock:
            self.keys = list(jwks)

    def count(self):
        with self.lock:
            return self.fetches

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def jwks_server():
    s = Jwks()
    yield s
    s.close()


class Key:
    def __init__(self, kind, kid):
        self.kid = kid
        if kind == "RS256":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.jwk = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        elif kind == "ES256":
            self.private = ec.generate_private_key(ec.SECP256R1())
            self.jwk = ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            self.private = ed25519.Ed25519PrivateKey.generate()
            self.jwk = OKPAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        self.alg = kind
        self.jwk.update(kid=kid, use="sig")

    def token(self, kid=None, **overrides):
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": "orders", "sub": "alice", "exp": now + 300, "iat": now}
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, self.private, algorithm=self.alg, headers={"kid": kid or self.kid})

    def public_pem(self):
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def hs256(secret, header, claims):
    """An HS256 JWT signed with `secret` by hand (PyJWT refuses a PEM as an HMAC secret, which is
    exactly the confusion this builds)."""
    signing = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    sig = hmac.new(secret, signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{b64(sig)}"


def jwt_config(port, backend, jwks_url, secret_file, refresh="2s"):
    return f"""
listeners:
  inbound:
    address: 127.0.0.1:{port}
    upstream: app
    routes:
      - name: api
        match: {{ path: {{ prefix: /echo/api }} }}
        upstream: app
        jwt:
          issuer: {ISSUER}
          audiences: [orders, billing]
          jwks: {{ url: "{jwks_url}", refresh: {refresh}, min_refresh_interval: 1s }}
          leeway: 5s
          forward_claims: {{ sub: x-user, email: x-user-email }}
      - name: hs
        match: {{ path: {{ prefix: /echo/hs }} }}
        upstream: app
        jwt:
          issuer: {ISSUER}
          audiences: [orders]
          jwks: {{ url: "{jwks_url}" }}
          algorithms: [RS256, HS256]
          hs256_secret_file: {secret_file}
          forward_claims: {{ sub: x-user }}
upstreams:
  app: {{ endpoints: [{backend}] }}
"""


def call(port, path, token=None, extra=None):
    headers = dict(extra or {})
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return raw_get(port, path, headers=headers)


def assert_401(resp, description):
    status, headers, body = resp
    assert status == 401, (status, body)
    assert headers["tandem-error"] == "unauthenticated"
    challenge = headers["www-authenticate"]
    assert challenge.startswith('Bearer error="invalid_token", error_description="'), challenge
    assert description in challenge, (description, challenge)


def test_jwt_authentication(tandem, http_backend, jwks_server, tmp_path):
    """RS256, ES256 and EdDSA tokens from the JWKS pass and their claims reach the app as headers
    (a client-sent copy is stripped); expired, not-yet-valid, wrong audience, wrong issuer,
    `alg: none`, HS256 signed with the RSA public key, unknown kid and missing tokens are 401
    with a Bearer challenge; HS256 works only where configured, with its own secret."""
    rsa_key, ec_key, ed_key = Key("RS256", "rsa-1"), Key("ES256", "ec-1"), Key("EdDSA", "ed-1")
    jwks_server.set(rsa_key.jwk, ec_key.jwk, ed_key.jwk)
    secret = b"an-hs256-secret-of-at-least-32-bytes!"
    (tmp_path / "hs256").write_bytes(secret + b"\n")
    port = free_port()
    t = tandem(jwt_config(port, http_backend, jwks_server.url, tmp_path / "hs256"))

    for key in (rsa_key, ec_key, ed_key):
        status, _, body = call(port, "/echo/api/orders", key.token(email="a@example.com"),
                               {"x-user": "mallory", "X-User-Email": "forged"})
        assert status == 200, (key.alg, body)
        path, hs = echoed(body)
        assert path == "/echo/api/orders"
        assert hs["x-user"] == ["alice"], (key.alg, hs)
        assert hs["x-user-email"] == ["a@example.com"]
        assert hs["authorization"][0].startswith("Bearer ")
    # A valid token without the claim: the client's copy is still removed.
    status, _, body = call(port, "/echo/api/x", rsa_key.token(sub=None), {"x-user": "mallory"})
    assert status == 200 and "x-user" not in echoed(body)[1], body
    # A list audience with one accepted entry passes.
    assert call(port, "/echo/api/x", ec_key.token(aud=["nobody", "billing"]))[0] == 200

    now = int(time.time())
    status, headers, body = call(port, "/echo/api/x", extra={"x-user": "mallory"})
    assert (status, headers["www-authenticate"], headers["tandem-error"]) == (401, "Bearer", "unauthenticated"), body
    assert_401(call(port, "/echo/api/x", rsa_key.token(exp=now - 60)), "expired")
    assert call(port, "/echo/api/x", rsa_key.token(exp=now - 2))[0] == 200, "within the 5 s leeway"
    assert_401(call(port, "/echo/api/x", ec_key.token(nbf=now + 120)), "not valid yet")
    assert_401(call(port, "/echo/api/x", ed_key.token(aud="someone-else")), "wrong audience")
    assert_401(call(port, "/echo/api/x", rsa_key.token(iss="https://evil.test")), "wrong issuer")
    assert_401(call(port, "/echo/api/x", rsa_key.token(exp=None)), "missing claim exp")
    none = jwt.encode({"iss": ISSUER, "aud": "orders", "sub": "alice", "exp": now + 60}, None, algorithm="none")
    assert_401(call(port, "/echo/api/x", none), "malformed")
    claims = {"iss": ISSUER, "aud": "orders", "sub": "mallory", "exp": now + 60}
    confused = hs256(rsa_key.public_pem(), {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims)
    assert_401(call(port, "/echo/api/x", confused), "algorithm HS256 is not accepted")
    # Where HS256 is accepted, only the configured secret verifies: the RSA key as secret fails.
    assert_401(call(port, "/echo/hs/x", confused), "invalid signature")
    good_hs = hs256(secret, {"alg": "HS256", "typ": "JWT"}, dict(claims, sub="svc"))
    status, _, body = call(port, "/echo/hs/x", good_hs)
    assert status == 200 and echoed(body)[1]["x-user"] == ["svc"], body
    assert_401(call(port, "/echo/api/x", good_hs), "algorithm HS256 is not accepted")
    tampered = rsa_key.token().split(".")
    tampered[1] = b64(json.dumps(dict(claims, sub="root")).encode())
    assert_401(call(port, "/echo/api/x", ".".join(tampered)), "invalid signature")
    assert_401(call(port, "/echo/api/x", Key("RS256", "rsa-unknown").token()), "unknown key id")
    # Not a route with jwt: no token needed.
    assert call(port, "/echo/open")[0] == 200

    m = httpx.get(f"{t.admin}/metrics").text
    assert metric(m, "tandem_proxy_errors_total", listener="inbound", upstream="app", reason="unauthenticated") == 12


def test_jwks_rotation_over_http(tandem, http_backend, jwks_server, tmp_path):
    """A key added to the JWKS while Tandem runs is used on its first token (the unknown kid
    triggers a reload; the periodic refresh is 1 h here); a burst of made-up kids causes at most
    one reload per `min_refresh_interval` (1 s). With a 2 s refresh, a key removed from the JWKS
    stops verifying, and a JWKS server that goes away leaves the last good keys in use."""
    old, new = Key("RS256", "old"), Key("ES256", "new")
    jwks_server.set(old.jwk)
    (tmp_path / "hs256").write_bytes(b"x" * 32)
    port = free_port()
    tandem(jwt_config(port, http_backend, jwks_server.url, tmp_path / "hs256", refresh="1h"))
    assert call(port, "/echo/api/x", old.token())[0] == 200
    assert jwks_server.count() == 2, "one fetch at start per JWT route (api, hs)"

    jwks_server.set(old.jwk, new.jwk)
    time.sleep(1.1)  # past min_refresh_interval since the startup fetch
    assert call(port, "/echo/api/x", new.token())[0] == 200, "first token with the new kid"
    assert jwks_server.count() == 3, "one reload, by the api route"
    assert call(port, "/echo/api/x", old.token())[0] == 200

    time.sleep(1.1)
    before = jwks_server.count()
    start = time.monotonic()
    sent = 0
    while time.monotonic() - start < 2.5:
        assert_401(call(port, "/echo/api/x", Key("EdDSA", str(uuid.uuid4())).token()), "unknown key id")
        sent += 1
        time.sleep(0.01)
    elapsed = time.monotonic() - start
    fetched = jwks_server.count() - before
    print(f"{sent} unknown kids in {elapsed:.2f}s -> {fetched} JWKS fetches")
    assert sent >= 50
    assert int(elapsed) <= fetched <= int(elapsed) + 1, (fetched, elapsed)

    # Periodic refresh every 2 s: rotate the old key out.
    port2 = free_port()
    tandem(jwt_config(port2, http_backend, jwks_server.url, tmp_path / "hs256", refresh="2s"))
    assert call(port2, "/echo/api/x", old.token())[0] == 200
    jwks_server.set(new.jwk)
    wait_for(lambda: call(port2, "/echo/api/x", old.token())[0] == 401, 6, "old key dropped")
    assert_401(call(port2, "/echo/api/x", old.token()), "unknown key id")
    assert call(port2, "/echo/api/x", new.token())[0] == 200

    # The JWKS server goes away: the last good keys stay in use.
    jwks_server.close()
    time.sleep(2.5)
    assert call(port2, "/echo/api/x", new.token())[0] == 200


def test_jwks_over_https_is_verified_against_the_configured_ca(tandem, http_backend, tmp_path):
    """A JWKS served over HTTPS loads when its certificate chains to `jwks.ca` (tokens pass);
    a server whose certificate comes from another CA is refused (the log says why, tokens get
    401: a JWKS from an unauthenticated server would let anyone mint tokens)."""
    for name in ("ca", "other"):
        r = run([TANDEM_BIN, "certs", "init", "--trust-domain", f"{name}.test",
                 "--out", str(tmp_path / name)])
        assert r.returncode == 0, r
    r = run([TANDEM_BIN, "certs", "issue", "--ca", str(tmp_path / "ca"), "--dns", "localhost",
             "--identity", "spiffe://ca.test/idp", "--out", str(tmp_path / "idp")])
    assert r.returncode == 0, r
    server = Jwks(tls=(str(tmp_path / "idp" / "cert.pem"), str(tmp_path / "idp" / "key.pem")))
    try:
        key = Key("RS256", "rsa-tls")
        server.set(key.jwk)
        secret = tmp_path / "hs256"
        secret.write_bytes(b"x" * 40)

        def config(port, ca):
            return jwt_config(port, http_backend, server.url, secret).replace(
                f'jwks: {{ url: "{server.url}" }}',
                f'jwks: {{ url: "{server.url}", ca: {ca} }}').replace(
                f'jwks: {{ url: "{server.url}", refresh: 2s, min_refresh_interval: 1s }}',
                f'jwks: {{ url: "{server.url}", ca: {ca}, refresh: 2s, min_refresh_interval: 1s }}')

        good = free_port()
        tandem(config(good, tmp_path / "ca" / "ca.pem"))
        deadline = time.time() + 5
        while True:
            status, _, body = call(good, "/echo/api/x", key.token())
            if status == 200 or time.time() > deadline:
                break
            time.sleep(0.1)
        assert status == 200, body
        assert server.count() >= 1

        bad = free_port()
        fetched = server.count()
        t = tandem(config(bad, tmp_path / "other" / "ca.pem"))
        deadline = time.time() + 5
        while "JWKS reload failed" not in t.log() and time.time() < deadline:
            time.sleep(0.1)
        log = t.log()
        assert "JWKS reload failed" in log, log
        assert "TLS handshake" in log and "certificate" in log.lower(), log
        assert server.count() == fetched, "no JWKS request may be sent over an unverified TLS session"
        assert_401(call(bad, "/echo/api/x", key.token()), "")
    finally:
        server.close()
