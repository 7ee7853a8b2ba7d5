#!/usr/bin/env bash
# Runs the shared log-shipping harness (../shared/bench/logship, see its RESULTS.md) with Tandem
# added as a shipper, from a scratch copy (the harness writes results beside itself).
#
# Usage: bench/logship/run.sh [SHIPPER:SCENARIO ...]
#   default: tandem and, when syslog-ng is unpacked in $SNG_PREFIX (the harness's setup.sh),
#   syslog-ng, each through http, file, steady (N=200000), rotate and kill9 (N=2000000).
# Results: one JSON line per run on stdout and in $SCRATCH/results.jsonl.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
harness=${HARNESS:-$repo/../shared/bench/logship}
scratch=${SCRATCH:-/tmp/tandem-logship-bench}
target=${CARGO_TARGET_DIR:-$repo/target}
export SNG_PREFIX=${SNG_PREFIX:-/opt/sng}
(cd "$repo" && cargo build --release -p tandem)
rm -rf "$scratch" && mkdir -p "$scratch" && cp -r "$harness"/. "$scratch"/
chmod -R u+w "$scratch"
: > "$scratch/results.jsonl"
cp "$here"/tandem-*.yaml "$scratch/configs/"
python3 "$here/add_tandem.py" "$scratch/run.py"
(cd "$scratch/tools" && CARGO_TARGET_DIR="$scratch/tools/target" cargo build --release -q)
export TANDEM_BIN="$target/release/tandem" RUN_DIR=${RUN_DIR:-$scratch/run}
runs=("$@")
if [ ${#runs[@]} -eq 0 ]; then
  shippers=(tandem)
  [ -x "$SNG_PREFIX/usr/sbin/syslog-ng" ] && shippers+=(syslog-ng)
  for sc in http file steady rotate kill9; do
    for sh in "${shippers[@]}"; do runs+=("$sh:$sc"); done
  done
fi
cd "$scratch"
for r in "${runs[@]}"; do
  shipper=${r%%:*} scenario=${r#*:}
  n=2000000
  [ "$scenario" = steady ] && n=200000
  python3 run.py "$shipper" "$scenario" --n "$n" | tail -1
done
