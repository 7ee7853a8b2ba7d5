#!/usr/bin/env bash
# Runs Tandem's whole test suite, installing what it needs when missing:
#   apt: curl, prometheus (promtool), nghttp2-client (h2load), python3-venv; a Python venv in .venv with tests/e2e/requirements.txt.
# Usage: scripts/test.sh [--e2e-only] [pytest args...]     e.g. scripts/test.sh --e2e-only -k grpc
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

e2e_only=0
if [ "${1:-}" = "--e2e-only" ]; then e2e_only=1; shift; fi

phase() { printf '\n=== %s ===\n' "$*"; }

# --- system packages -------------------------------------------------------------------------
need=()
command -v curl >/dev/null || need+=(curl)
command -v promtool >/dev/null || need+=(prometheus)
command -v h2load >/dev/null || need+=(nghttp2-client)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
command -v cc >/dev/null || need+=(build-essential)
if [ ${#need[@]} -gt 0 ]; then
  phase "installing ${need[*]}"
  sudo_=""; [ "$(id -u)" -ne 0 ] && sudo_="sudo"
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null && [ -f "$HOME/.cargo/env" ]; then . "$HOME/.cargo/env"; fi

# --- Python venv for the end-to-end clients ---------------------------------------------------
req=tests/e2e/requirements.txt
stamp=.venv/.requirements.sha
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$(sha256sum "$req" | cut -d' ' -f1)" ]; then
  phase "python venv (.venv)"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r "$req"
  sha256sum "$req" | cut -d' ' -f1 > "$stamp"
fi

# --- Rust ------------------------------------------------------------------------------------
if [ $e2e_only -eq 0 ]; then
  phase "cargo fmt --check"
  cargo fmt --all --check
  phase "cargo clippy"
  cargo clippy --workspace --all-targets --locked -- -D warnings
  phase "cargo build"
  cargo build --workspace --bins --locked
  phase "Rust tests"
  if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
  else
    cargo test --workspace --locked --no-fail-fast
  fi
  phase "examples pass tandem check"
  for f in examples/*.yaml; do target/debug/tandem check -c "$f"; done
else
  cargo build -p tandem --locked
fi

# --- end to end ------------------------------------------------------------------------------
phase "end-to-end tests (real binary, real clients)"
export TANDEM_BIN="$root/target/debug/tandem"
.venv/bin/python -m pytest tests/e2e -q "$@"
phase "all tests passed"
