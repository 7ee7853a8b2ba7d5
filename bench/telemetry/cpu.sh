#!/usr/bin/env bash
# CPU time per proxied HTTP/1.1 request (perf stat task-clock of all Tandem threads, user +
# kernel), Tandem pinned to CPU 0 and h2load + backend + OTLP sink on CPU 1 as in run.sh: an
# A/B measure of telemetry's cost that holds up better than req/s on a busy machine (noise
# ~0.3 µs a run: interleave configs and repeat).
#
#   bench/telemetry/cpu.sh TANDEM_BIN PORTBASE N CONFIG...
#     CONFIG: off (per-request metrics off) | met (metrics, the default) | log (+ access log file)
#             | trace (+ 100% tracing, OTLP/gRPC) | all (metrics + tracing + access log)
#     PORTBASE: three digits, e.g. 391 (listeners PORTBASE01/03/09, backend PORTBASE80, sink PORTBASE60)
#   e.g. bench/telemetry/cpu.sh target/profiling/tandem 391 100000 met log met log
#   LOAD=h2c (h2load -c16 -m16 h2c prior knowledge -> HTTP/1.1 backend) or LOAD=h2up (h2c -> h2c
#   backend) instead of the default LOAD=h1 (h2load --h1 -c16): the run.sh columns' shapes.
# Prints "config req/s µs_per_request". Needs perf, h2load, curl, the harness backend (BACKEND_BIN).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=$1 pb=$2 n=$3
shift 3
backend=${BACKEND_BIN:-/tmp/tb/backend/target/release/bench-backend}
python=${PYTHON:-$repo/.venv/bin/python}
work=$(mktemp -d /tmp/telcpu.XXXXXX)
be=${pb}80 sink=${pb}60 h1=${pb}01
case ${LOAD:-h1} in
  h1) load=(--h1 -c16) url=http://127.0.0.1:${pb}01/ ;;
  h2c) load=(-c16 -m16) url=http://127.0.0.1:${pb}01/ ;;
  h2up) load=(-c16 -m16) url=http://127.0.0.1:${pb}03/ ;;
  *) echo "unknown LOAD ${LOAD} (h1 h2c h2up)" >&2; exit 2 ;;
esac
taskset -c 1 "$backend" 127.0.0.1:$be >/dev/null 2>&1 &
bp=$!
# The grpcio sink, as run.sh; SINK=rust for the Rust one (~0.2 instead of ~1.9 µs of CPU 1 per
# traced request: at -c16 the grpcio sink leaves Tandem's core ~10% idle with tracing on).
if [ "${SINK:-python}" = python ]; then
  taskset -c 1 "$python" "$here/otlp_sink.py" $sink >"$work/sink.out" 2>&1 &
else
  (cd "$repo" && cargo build -q --release -p tandem-telemetry --example otlp_sink)
  taskset -c 1 "$repo/target/release/examples/otlp_sink" $sink >"$work/sink.out" 2>&1 &
fi
sp=$!
trap 'kill $bp $sp 2>/dev/null; rm -rf "$work"' EXIT
sleep 1
for c in "$@"; do
  cfg=$work/$c.yaml
  sed "s/285\([0-9][0-9]\)/${pb}\1/g; s/28080/$be/" "$repo/bench/tandem-bench.yaml" >"$cfg"
  tracing="tracing:
  otlp: { endpoint: \"http://127.0.0.1:$sink\", protocol: grpc }
  sample_ratio: 1
  service_name: tandem-bench
  queue: 65536
  batch: 512"
  log="access_log:
  path: $work/access.log"
  case $c in
    off) echo 'metrics: { requests: false }' >>"$cfg" ;;
    met) ;;
    log) echo "$log" >>"$cfg" ;;
    trace) echo "$tracing" >>"$cfg" ;;
    all) printf '%s\n%s\n' "$tracing" "$log" >>"$cfg" ;;
    *) echo "unknown config $c (off met log trace all)" >&2; exit 2 ;;
  esac
  rm -f "$work/access.log"
  taskset -c 0 "$bin" run -c "$cfg" >/dev/null 2>"$work/tandem.err" &
  tp=$!
  for _ in $(seq 100); do curl -s -m1 http://127.0.0.1:$h1/ | grep -q Hello && break; sleep 0.1; done
  taskset -c 1 h2load "${load[@]}" -n 20000 "$url" >/dev/null
  perf stat -e task-clock -p $tp -o "$work/ps.txt" &
  pp=$!
  sleep 0.2
  rps=$(taskset -c 1 h2load "${load[@]}" -n "$n" "$url" | awk '/finished in/ {print $4}')
  kill -INT $pp; wait $pp || true
  kill -INT $tp; wait $tp || true
  ms=$(awk '/task-clock/ {gsub(",","",$1); print $1}' "$work/ps.txt")
  echo "$c $rps $(python3 -c "print(round($ms*1000/$n,2))")"
done
