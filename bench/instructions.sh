#!/usr/bin/env bash
# Instructions per proxied request under callgrind: a repeatable measure of CPU cost (the count
# does not depend on what else the machine is doing), for A/B comparisons of configurations or
# builds where wall-clock runs on a shared 2-core machine are too noisy.
#
#   bench/instructions.sh CONFIG [CONFIG...]      (env: MODE=h1|h2, N=20000, TANDEM_BIN, BACKEND_BIN)
#
# Each CONFIG is a Tandem config whose listener `h1` (HTTP/1.1) is at 127.0.0.1:38501 and `h2up`
# (h2c to the backend) at 127.0.0.1:38503, in front of the harness's backend at 127.0.0.1:38080
# (see bench/tandem-bench.yaml; `sed 's/285/385/; s/28080/38080/'` turns it into one). Tandem runs
# twice under callgrind, once with 2,000 requests and once with 2,000 + N, and the difference of
# the two totals over N is printed: startup and shutdown cancel out. h2load sends the requests
# (16 connections for h1; 16 connections x 16 streams for h2).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
MODE=${MODE:-h1}
N=${N:-20000}
TANDEM_BIN=${TANDEM_BIN:-$repo/target/profiling/tandem}
BACKEND_BIN=${BACKEND_BIN:-/tmp/tb/backend/target/release/bench-backend}
for tool in valgrind callgrind_annotate h2load curl; do
  command -v $tool >/dev/null || { echo "missing $tool (apt install valgrind nghttp2-client curl)" >&2; exit 1; }
done
[ -x "$TANDEM_BIN" ] || { echo "no $TANDEM_BIN: cargo build --profile profiling -p tandem" >&2; exit 1; }
[ -x "$BACKEND_BIN" ] || { echo "no backend $BACKEND_BIN: build ../shared/bench/backend in a scratch copy" >&2; exit 1; }
work=$(mktemp -d /tmp/tandem-instr.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT

total() { # CONFIG REQUESTS -> instructions of the whole run
  local out="$work/cg.out"
  rm -f "$out"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$TANDEM_BIN" run -c "$1" >/dev/null 2>"$work/vg.log" &
  local vp=$!
  for _ in $(seq 300); do curl -s -m2 http://127.0.0.1:38501/ 2>/dev/null | grep -q Hello && break; sleep 0.2; done
  if [ "$MODE" = h1 ]; then
    h2load --h1 -c16 -n "$2" http://127.0.0.1:38501/ | grep -q "$2 succeeded" || { echo "h2load failed" >&2; exit 1; }
  else
    h2load -c16 -m16 -n "$2" http://127.0.0.1:38503/ | grep -q "$2 succeeded" || { echo "h2load failed" >&2; exit 1; }
  fi
  kill -INT $vp; wait $vp || true
  callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'
}

"$BACKEND_BIN" 127.0.0.1:38080 >/dev/null 2>&1 &
sleep 0.3
for cfg in "$@"; do
  small=$(total "$cfg" 2000)
  big=$(total "$cfg" $((2000 + N)))
  echo "$cfg $MODE: $(( (big - small) / N )) instructions/request"
done
