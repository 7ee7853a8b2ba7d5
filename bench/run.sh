#!/usr/bin/env bash
# Runs ../shared/bench/run-proxies.sh with Tandem added as a column, from a scratch copy of the
# harness (it writes results beside itself). Usage: bench/run.sh [harness args, e.g. --quick]
# Results: $OUT (default /tmp/tandem-bench/results/<timestamp>), summary printed at the end.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
harness=${HARNESS:-$repo/../shared/bench}
scratch=${SCRATCH:-/tmp/tandem-bench}
(cd "$repo" && cargo build --release -p tandem)
rm -rf "$scratch" && mkdir -p "$scratch" && cp -r "$harness"/. "$scratch"/
chmod -R u+w "$scratch"
cd "$scratch"
exec ./run-proxies.sh --add "tandem|$repo/target/release/tandem run -c $here/tandem-bench.yaml --threads 1 --log warn|28501|28501|28503" "$@"
