#!/usr/bin/env bash
# Runs Tandem's whole test suite from the repository root, installing what it needs when missing:
#   apt: curl, openssl (s_client in tests/e2e/test_tls.py), prometheus (promtool), nghttp2-client
#   (h2load), iptables and iproute2 (the network partition test, tests/e2e/test_partition.py, which
#   runs as root only), python3 + python3-venv, build-essential, etcd-server + etcd-client (etcd and
#   etcdctl for tests/e2e/test_discovery.py);
#   a Python venv in .venv with tests/e2e/requirements.txt (re-installed when that file changes).
# Phases: cargo fmt --check, clippy -D warnings, build, Rust tests (nextest when present), examples
# through `tandem check`, then the end-to-end suite (pytest tests/e2e) against target/debug/tandem.
#
# Usage: scripts/test.sh [--e2e-only] [pytest args...]
#   scripts/test.sh                      everything (what .ci/run runs)
#   scripts/test.sh --e2e-only -k grpc   build the binary, then only the e2e tests matching "grpc"
#   TANDEM_BIN=/path/to/tandem scripts/test.sh --e2e-only    e2e against a given binary (no build)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

e2e_only=0
if [ "${1:-}" = "--e2e-only" ]; then e2e_only=1; shift; fi

# --- phase bookkeeping: a summary of what ran, how long, and what failed, printed on exit ------
summary=()
current=""
started=0
phase() {
  phase_end ok
  current="$*"
  started=$SECONDS
  printf '\n=== %s ===\n' "$current"
}
phase_end() {
  if [ -n "$current" ]; then summary+=("$(printf '%-6s %4ss  %s' "$1" "$((SECONDS - started))" "$current")"); fi
  current=""
}
on_exit() {
  local rc=$?
  if [ $rc -eq 0 ]; then phase_end ok; else phase_end FAILED; fi
  printf '\n=== summary ===\n'
  printf '%s\n' "${summary[@]}"
  [ $rc -eq 0 ] && echo "all phases passed" || echo "scripts/test.sh failed (exit $rc)"
}
trap on_exit EXIT

sudo_=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "not root and no sudo: cannot install missing packages" >&2; exit 1; }
  sudo_="sudo"
fi
apt_updated=0
apt_install() {
  phase "installing $*"
  if [ $apt_updated -eq 0 ]; then $sudo_ apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- system packages, only those missing ------------------------------------------------------
need=()
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
command -v promtool >/dev/null || need+=(prometheus)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
# iptables and ip live in /usr/sbin, which a non-root user's PATH on Debian lacks.
PATH="$PATH:/usr/sbin:/sbin" command -v iptables >/dev/null || need+=(iptables)
PATH="$PATH:/usr/sbin:/sbin" command -v ip >/dev/null || need+=(iproute2)
command -v python3 >/dev/null || need+=(python3 python3-venv)
command -v cc >/dev/null || need+=(build-essential pkg-config)
if [ ${#need[@]} -gt 0 ]; then apt_install "${need[@]}"; fi
if ! command -v cargo >/dev/null && [ -f "$HOME/.cargo/env" ]; then . "$HOME/.cargo/env"; fi

# --- Python venv for the end-to-end clients ---------------------------------------------------
req=tests/e2e/requirements.txt
stamp=.venv/.requirements.sha
want=$( (sha256sum "$req"; python3 --version) | sha256sum | cut -d' ' -f1)
if ! .venv/bin/python -c '' 2>/dev/null || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  phase "python venv (.venv)"
  rm -rf .venv
  if ! python3 -m venv .venv 2>/dev/null; then
    # Debian's system python needs python3-venv (ensurepip) for this.
    rm -rf .venv
    apt_install python3-venv
    phase "python venv (.venv)"
    python3 -m venv .venv
  fi
  .venv/bin/pip install -q --disable-pip-version-check -r "$req"
  echo "$want" > "$stamp"
fi

# --- Rust -------------------------------------------------------------------------------------
if [ $e2e_only -eq 0 ]; then
  phase "cargo fmt --check"
  cargo fmt --all --check
  phase "cargo clippy -D warnings"
  cargo clippy --workspace --all-targets --locked -- -D warnings
  phase "cargo build"
  cargo build --workspace --bins --locked
  if cargo nextest --version >/dev/null 2>&1; then
    phase "Rust tests (cargo nextest)"
    cargo nextest run --workspace --locked --no-fail-fast
  else
    phase "Rust tests (cargo test)"
    cargo test --workspace --locked --no-fail-fast
  fi
  phase "examples pass tandem check"
  for f in examples/*.yaml; do target/debug/tandem check -c "$f"; done
elif [ -z "${TANDEM_BIN:-}" ]; then
  phase "cargo build -p tandem"
  cargo build -p tandem --locked
fi

# --- end to end -------------------------------------------------------------------------------
export TANDEM_BIN="${TANDEM_BIN:-$root/target/debug/tandem}"
phase "end-to-end tests (pytest tests/e2e, $TANDEM_BIN)"
.venv/bin/python -m pytest tests/e2e -q -rfE "$@"
