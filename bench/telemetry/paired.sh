#!/usr/bin/env bash
# Paired A/B runs of telemetry configurations: each round runs `off` and then every CONFIG, one
# Tandem at a time pinned to CPU 0 (load, backend and OTLP sink on CPU 1, as in run.sh), and
# each configuration's req/s is divided by the mean of the `off` runs before and after it. The
# machine's speed drifts by 10-20% over minutes on a shared host; a ratio of neighbouring runs
# cancels most of that drift, which plain medians of req/s (cpu.sh, run.sh) do not. Prints
# every run (req/s, Tandem's user and kernel CPU per request, CPU 0's softirq and idle per
# request) and, at the end, each configuration's median and mean ratio to off.
#
#   bench/telemetry/paired.sh TANDEM_BIN ROUNDS N CONFIG...
#     CONFIG: met | log | trace | all | lognull (access log to /dev/null) | allnull
#             | logshm (access log on tmpfs) | allshm (rig.sh, shared with cpu.sh), optionally followed by
#             :VAR=VALUE[,VAR=VALUE...]: environment of that Tandem (e.g. for a build with
#             experiment switches, see bench/telemetry/floor.patch)
#   e.g. bench/telemetry/paired.sh target/release/tandem 12 100000 met all
#   LOAD=h2c / LOAD=h2up as in cpu.sh; SINK=python for the grpcio sink (default: the Rust sink,
#   which leaves the load core to the load); BATCH (spans per export, default 512).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=$1 rounds=$2 n=$3
shift 3
pb=${PORTBASE:-391}
work=$(mktemp -d /tmp/telpaired.XXXXXX)
SINK=${SINK:-rust}
. "$here/rig.sh"
trap 'kill ${bp:-} ${sp:-} 2>/dev/null; rm -rf "$work" /dev/shm/tandem-rig-$pb-access.log' EXIT
rig_start
tick=$(getconf CLK_TCK)

run() { # CONFIG[:ENV...] -> one line: config rps user sys softirq idle
  local spec=$1 c envs=()
  c=${spec%%:*}
  [ "$c" != "$spec" ] && IFS=, read -r -a envs <<<"${spec#*:}"
  local cfg=$work/c.yaml
  rig_config "$c" "$cfg"
  env "${envs[@]}" taskset -c 0 "$bin" run --threads 1 -c "$cfg" >/dev/null 2>"$work/tandem.err" &
  local tp=$!
  rig_ready
  local before after soft0 soft1 rps
  before=$(awk '{print $14, $15}' /proc/$tp/stat)
  soft0=$(awk '/^cpu0 /{print $8, $5+$6}' /proc/stat)
  rps=$(taskset -c 1 h2load "${load[@]}" -n "$n" "$url" | awk '/finished in/ {print $4}')
  after=$(awk '{print $14, $15}' /proc/$tp/stat)
  soft1=$(awk '/^cpu0 /{print $8, $5+$6}' /proc/stat)
  kill -INT $tp
  wait $tp || true
  python3 -c '
import sys
spec, rps, n, tick = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
u0, s0, u1, s1, q0, i0, q1, i1 = map(int, sys.argv[5:])
us = lambda t: round(t / tick * 1e6 / n, 2)
print(spec, rps, us(u1 - u0), us(s1 - s0), us(q1 - q0), us(i1 - i0))
' "$spec" "$rps" "$n" "$tick" $before $after $soft0 $soft1
}

echo "# config req/s user_us/req sys_us/req cpu0_softirq_us/req cpu0_idle_us/req"
for _ in $(seq "$rounds"); do
  for c in off "$@"; do run "$c"; done
done | tee "$work/runs.txt"
echo "# ratio to the mean of the off runs before and after"
python3 - "$work/runs.txt" <<'PY'
import collections, statistics, sys
runs = [l.split()[:2] for l in open(sys.argv[1]) if l.strip() and not l.startswith("#")]
runs = [(c, float(r)) for c, r in runs]
offs = [i for i, (c, _) in enumerate(runs) if c == "off"]
ratios = collections.defaultdict(list)
for k, i in enumerate(offs):
    j = offs[k + 1] if k + 1 < len(offs) else None
    ref = (runs[i][1] + (runs[j][1] if j is not None else runs[i][1])) / 2
    for c, r in runs[i + 1 : j if j is not None else len(runs)]:
        ratios[c].append(r / ref)
for c, v in ratios.items():
    print(f"{c:40} median {statistics.median(v):.3f} mean {statistics.mean(v):.3f} n={len(v)}")
PY
