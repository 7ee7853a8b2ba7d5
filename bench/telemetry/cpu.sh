#!/usr/bin/env bash
# CPU time per proxied HTTP/1.1 request (perf stat task-clock of all Tandem threads, user +
# kernel), Tandem pinned to CPU 0 and h2load + backend + OTLP sink on CPU 1 as in run.sh: an
# A/B measure of telemetry's cost that holds up better than req/s on a busy machine (noise
# ~0.3 µs a run: interleave configs and repeat).
#
#   bench/telemetry/cpu.sh TANDEM_BIN PORTBASE N CONFIG...
#     CONFIG: off (per-request metrics off) | met (metrics, the default) | log (+ access log file)
#             | trace (+ 100% tracing, OTLP/gRPC) | all (metrics + tracing + access log); more in
#             rig.sh (the setup this shares with paired.sh)
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
work=$(mktemp -d /tmp/telcpu.XXXXXX)
SINK=${SINK:-python}
. "$here/rig.sh"
trap 'kill ${bp:-} ${sp:-} 2>/dev/null; rm -rf "$work" /dev/shm/tandem-rig-$pb-access.log' EXIT
rig_start
for c in "$@"; do
  cfg=$work/$c.yaml
  rig_config "$c" "$cfg"
  taskset -c 0 "$bin" run -c "$cfg" >/dev/null 2>"$work/tandem.err" &
  tp=$!
  rig_ready
  perf stat -e task-clock -p $tp -o "$work/ps.txt" &
  pp=$!
  sleep 0.2
  rps=$(taskset -c 1 h2load "${load[@]}" -n "$n" "$url" | awk '/finished in/ {print $4}')
  kill -INT $pp; wait $pp || true
  kill -INT $tp; wait $tp || true
  ms=$(awk '/task-clock/ {gsub(",","",$1); print $1}' "$work/ps.txt")
  echo "$c $rps $(python3 -c "print(round($ms*1000/$n,2))")"
done
