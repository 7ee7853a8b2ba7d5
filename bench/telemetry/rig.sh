# Sourced by cpu.sh and paired.sh: the A/B rig they share. Needs $repo, $here, $pb (port base,
# three digits) and $work (a scratch directory) set; $SINK picks the OTLP sink (python: the grpcio
# sink of run.sh; rust: crates/tandem-telemetry/examples/otlp_sink.rs, ~0.2 instead of ~1.9 µs of
# CPU 1 per traced request, which at -c16 leaves Tandem's core ~10% idle with tracing on).
# Ports: listeners ${pb}01 (HTTP/1.1 upstream) and ${pb}03 (h2c upstream), backend ${pb}80, sink
# ${pb}60.

be=${pb}80 sink=${pb}60 h1=${pb}01
case ${LOAD:-h1} in
  h1) load=(--h1 -c16) url=http://127.0.0.1:${pb}01/ ;;
  h2c) load=(-c16 -m16) url=http://127.0.0.1:${pb}01/ ;;
  h2up) load=(-c16 -m16) url=http://127.0.0.1:${pb}03/ ;;
  *) echo "unknown LOAD ${LOAD} (h1 h2c h2up)" >&2; exit 2 ;;
esac

# Starts the backend and the sink on CPU 1 (their pids in $bp and $sp).
rig_start() {
  taskset -c 1 "${BACKEND_BIN:-/tmp/tb/backend/target/release/bench-backend}" 127.0.0.1:$be \
    >/dev/null 2>&1 &
  bp=$!
  if [ "$SINK" = python ]; then
    taskset -c 1 "${PYTHON:-$repo/.venv/bin/python}" "$here/otlp_sink.py" $sink >"$work/sink.out" 2>&1 &
  else
    (cd "$repo" && cargo build -q --release -p tandem-telemetry --example otlp_sink)
    taskset -c 1 "$repo/target/release/examples/otlp_sink" $sink >"$work/sink.out" 2>&1 &
  fi
  sp=$!
  sleep 1
}

# Writes Tandem's config for CONFIG to FILE: off (per-request metrics off) | met (metrics, the
# default) | log (+ access log file in $work) | lognull (to /dev/null) | logshm (on tmpfs)
# | trace (+ 100% tracing, OTLP/gRPC, $BATCH spans an export, default 512) | all (metrics +
# tracing + access log file) | allnull | allshm.
rig_config() {
  local c=$1 cfg=$2
  sed "s/285\([0-9][0-9]\)/${pb}\1/g; s/28080/$be/" "$repo/bench/tandem-bench.yaml" >"$cfg"
  local tracing="tracing:
  otlp: { endpoint: \"http://127.0.0.1:$sink\", protocol: grpc }
  sample_ratio: 1
  service_name: tandem-bench
  queue: 65536
  batch: ${BATCH:-512}"
  local file="access_log: { path: $work/access.log }"
  local null="access_log: { path: /dev/null }"
  local shm="access_log: { path: /dev/shm/tandem-rig-$pb-access.log }"
  rm -f "$work/access.log" "/dev/shm/tandem-rig-$pb-access.log"
  case $c in
    off) echo 'metrics: { requests: false }' >>"$cfg" ;;
    met) ;;
    log) echo "$file" >>"$cfg" ;;
    lognull) echo "$null" >>"$cfg" ;;
    logshm) echo "$shm" >>"$cfg" ;;
    trace) echo "$tracing" >>"$cfg" ;;
    all) printf '%s\n%s\n' "$tracing" "$file" >>"$cfg" ;;
    allnull) printf '%s\n%s\n' "$tracing" "$null" >>"$cfg" ;;
    allshm) printf '%s\n%s\n' "$tracing" "$shm" >>"$cfg" ;;
    *) echo "unknown config $c (off met log lognull logshm trace all allnull allshm)" >&2; exit 2 ;;
  esac
}

# Waits for the Tandem just started to answer, then warms it up with 20,000 requests.
rig_ready() {
  for _ in $(seq 100); do curl -s -m1 http://127.0.0.1:$h1/ | grep -q Hello && break; sleep 0.1; done
  taskset -c 1 h2load "${load[@]}" -n 20000 "$url" >/dev/null
}
