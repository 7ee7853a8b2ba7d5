"""The command line: check, config default/schema, --version, and the embedded default running a
real app child (signals forwarded, exit code propagated)."""
import json
import signal
import socket
import sys
import textwrap

import httpx

from conftest import ROOT, TANDEM_BIN, free_port, run, wait_for


def test_check_accepts_every_example():
    """Every shipped example passes `tandem check`."""
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    assert len(examples) >= 5
    for f in examples:
        r = run([TANDEM_BIN, "check", "-c", str(f)])
        assert r.returncode == 0, (f, r.stderr)
        assert ": ok (" in r.stdout


def test_check_reports_every_error_with_its_line(tmp_path):
    """A bad file exits 64 and lists each error with file, exact line, key and a hint."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent("""\
        listeners:
          inbound:
            address: 127.0.0.1:7080
            upstream: ap
            routes:
              - match: { path: { prefix: api } }
                upstream: app
        upstreams:
          app:
            endpoints: [127.0.0.1:8080]
            request_timeout: fast
        """))
    r = run([TANDEM_BIN, "check", "-c", str(bad)])
    assert r.returncode == 64
    lines = r.stderr.splitlines()
    assert lines[0] == f"{bad}:4: listeners.inbound.upstream: unknown upstream `ap`"
    assert lines[1].startswith("  hint: did you mean \"app\"?")
    assert lines[2] == f"{bad}:6: listeners.inbound.routes[0].match.path: `api` does not start with '/'"
    assert lines[4].startswith(f"{bad}:11: upstreams.app.request_timeout: `fast` is not a duration")
    assert lines[-1] == f"{bad}: 3 error(s)"


def test_check_unknown_key_suggests_the_right_one(tmp_path):
    """A typo in a key is reported at its line with the key it probably meant."""
    bad = tmp_path / "typo.yaml"
    bad.write_text("listeners:\n  inbound:\n    address: 127.0.0.1:7080\n    upstrem: app\n")
    r = run([TANDEM_BIN, "check", "-c", str(bad)])
    assert r.returncode == 64
    assert f"{bad}:4: listeners.inbound.upstrem: unknown field `upstrem`" in r.stderr, r.stderr
    assert 'did you mean "upstream"?' in r.stderr


def test_check_reports_unknown_key_and_unknown_upstream_together(tmp_path):
    """One file with a misspelt key (line 11) and a reference to a missing upstream (line 6):
    `check` exits 64 and reports both, each at its own line, in one run."""
    bad = tmp_path / "both.yaml"
    bad.write_text(textwrap.dedent("""\
        admin:
          address: 127.0.0.1:7901
        listeners:
          inbound:
            address: 127.0.0.1:7080
            upstream: billing
            routes:
              - name: api
                match: { path: { prefix: /api } }
                upstream: app
                timout: 5s
        upstreams:
          app:
            endpoints: [127.0.0.1:8080]
        """))
    r = run([TANDEM_BIN, "check", "-c", str(bad)])
    assert r.returncode == 64
    assert f"{bad}:11: listeners.inbound.routes[0].timout: unknown field `timout`" in r.stderr, r.stderr
    assert f"{bad}:6: listeners.inbound.upstream: unknown upstream `billing`" in r.stderr, r.stderr
    assert r.stderr.splitlines()[-1] == f"{bad}: 2 error(s)", r.stderr


def test_config_default_passes_check_through_a_pipe():
    """`tandem config default | tandem check -c /dev/stdin` exits 0."""
    r = run(["bash", "-o", "pipefail", "-c", f"'{TANDEM_BIN}' config default | '{TANDEM_BIN}' check -c /dev/stdin"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("/dev/stdin: ok ("), r.stdout


def test_config_default_checks_and_schema_is_json(tmp_path):
    """`config default` prints a file `check` accepts; `config schema` is a JSON Schema."""
    r = run([TANDEM_BIN, "config", "default"])
    assert r.returncode == 0
    f = tmp_path / "default.yaml"
    f.write_text(r.stdout)
    assert run([TANDEM_BIN, "check", "-c", str(f)]).returncode == 0
    schema = json.loads(run([TANDEM_BIN, "config", "schema"]).stdout)
    assert {"listeners", "upstreams", "admin"} <= set(schema["properties"])
    v = run([TANDEM_BIN, "--version"])
    assert v.returncode == 0 and v.stdout.startswith("tandem ")


def alive(pid):
    """True while `pid` exists and is not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def supervise(tandem, app_port, app_command):
    """`tandem run` with the embedded default on free ports, supervising `app_command`.
    Returns the Tandem and its (inbound, outbound) ports; the admin URL is `t.admin`."""
    admin, inbound, outbound = free_port(), free_port(), free_port()
    t = tandem("", args=[
        "--app-port", str(app_port), "--inbound", f"127.0.0.1:{inbound}", "--outbound", f"127.0.0.1:{outbound}",
        "--admin", f"127.0.0.1:{admin}", "--", *app_command], wait_ready=False)
    t.admin_port = admin
    return t, inbound, outbound


def test_embedded_default_runs_a_real_app(tandem, tmp_path):
    """`tandem run --app-port P -- python3 -m http.server P`: /ready waits for the app, curl gets
    through, SIGTERM reaches the app, and Tandem exits with the app's code."""
    (tmp_path / "hello.txt").write_text("hello from the app\n")
    app = free_port()
    t, inbound, outbound = supervise(tandem, app, [
        sys.executable, "-m", "http.server", str(app), "--bind", "127.0.0.1", "--directory", str(tmp_path)])
    t.wait_ready(15)
    r = run(["curl", "-s", "--max-time", "10", f"http://127.0.0.1:{inbound}/hello.txt"])
    assert r.stdout == "hello from the app\n"
    r = run(["curl", "-s", "--max-time", "10", "--proxy", f"http://127.0.0.1:{outbound}", "http://app/hello.txt"])
    assert r.stdout == "hello from the app\n", "the outbound forward proxy reaches the app upstream"
    children = open(f"/proc/{t.p.pid}/task/{t.p.pid}/children").read().split()
    assert len(children) == 1, f"one app child under tandem, found {children}"
    t.signal(signal.SIGTERM)
    # python's http.server dies of SIGTERM: 128 + 15.
    assert t.wait(20) == 143
    wait_for(lambda: not alive(int(children[0])), 5, "the app child gone too")


def test_exit_code_of_the_app_propagates(tandem):
    """When the app exits on its own, Tandem drains and exits with the app's code."""
    t, _, _ = supervise(tandem, free_port(), [sys.executable, "-c", "import time; time.sleep(0.5); raise SystemExit(3)"])
    assert t.wait(20) == 3


def test_ready_waits_for_the_app(tandem):
    """Supervising an app that never listens: /live is 200, /ready stays 503 naming the app."""
    t, _, _ = supervise(tandem, free_port(), [sys.executable, "-c", "import time; time.sleep(30)"])
    wait_for(lambda: httpx.get(f"{t.admin}/live", timeout=1).status_code == 200, 10, "/live")
    r = httpx.get(f"{t.admin}/ready", timeout=1)
    assert (r.status_code, r.text) == (503, "not ready: app not accepting connections yet\n")
    t.signal(signal.SIGTERM)
    assert t.wait(20) == 143


def test_app_does_not_outlive_a_killed_tandem(tandem, tmp_path):
    """Tandem killed with SIGKILL (nothing of it runs): the kernel sends the app SIGTERM, so no
    orphan keeps serving without its sidecar. The child is the app itself (Tandem re-executed
    only to set the death signal), so signals and its exit code are its own."""
    flag, ready = tmp_path / "got-sigterm", tmp_path / "handler-installed"
    app_code = (
        "import signal, sys, time\n"
        f"def bye(*_):\n    open({str(flag)!r}, 'w').write('SIGTERM')\n    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        f"open({str(ready)!r}, 'w').close()\n"
        "time.sleep(60)\n"
    )
    t, _, _ = supervise(tandem, free_port(), [sys.executable, "-c", app_code])
    wait_for(ready.exists, 10, "the app started and handles SIGTERM")
    child = int(open(f"/proc/{t.p.pid}/task/{t.p.pid}/children").read().split()[0])
    assert b"time.sleep(60)" in open(f"/proc/{child}/cmdline", "rb").read(), "the child is the app"
    t.p.kill()
    t.p.wait(5)
    wait_for(lambda: not alive(child), 5, "the app gone after Tandem was killed")
    assert flag.read_text() == "SIGTERM", "the app was told with SIGTERM, not killed outright"


def test_an_app_that_cannot_start_exits_127(tmp_path):
    """A missing or non-executable program: Tandem exits 127 at once, naming it."""
    for program, why in [(str(tmp_path / "no-such-app"), "No such file"), ("no-such-app-in-path", "not found in PATH")]:
        r = run([TANDEM_BIN, "run", "--app-port", str(free_port()), "--inbound", f"127.0.0.1:{free_port()}",
                 "--outbound", f"127.0.0.1:{free_port()}", "--admin", f"127.0.0.1:{free_port()}", "--", program])
        assert r.returncode == 127, r.stderr
        assert "cannot start the app" in r.stderr and program in r.stderr and why in r.stderr, r.stderr
    script = tmp_path / "not-executable.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    r = run([TANDEM_BIN, "run", "--app-port", str(free_port()), "--inbound", f"127.0.0.1:{free_port()}",
             "--outbound", f"127.0.0.1:{free_port()}", "--admin", f"127.0.0.1:{free_port()}", "--", str(script)])
    assert r.returncode == 127 and "not an executable file" in r.stderr, r.stderr


def test_bad_config_exits_64_and_port_conflict_exits_1(tmp_path):
    """A broken file stops `run` with the same errors as `check`; a taken port names the listener."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("listeners: {}\n")
    r = run([TANDEM_BIN, "run", "-c", str(bad)])
    assert r.returncode == 64 and "listeners: no listeners" in r.stderr
    taken = free_port()
    s = socket.socket()
    s.bind(("127.0.0.1", taken))
    s.listen(1)
    cfg = tmp_path / "conflict.yaml"
    cfg.write_text(f"admin: {{ address: 127.0.0.1:{free_port()} }}\nlisteners:\n  inbound: {{ address: 127.0.0.1:{taken}, upstream: app }}\nupstreams:\n  app: {{ endpoints: [127.0.0.1:1] }}\n")
    r = run([TANDEM_BIN, "run", "-c", str(cfg)])
    s.close()
    assert r.returncode == 1
    assert f'cannot bind listener "inbound" on 127.0.0.1:{taken}' in r.stderr, r.stderr
