#!/usr/bin/env bash
# `make test`: brings up what the tests need (a fresh in-memory tansu broker on loopback), runs the
# lints and the whole workspace's tests, and tears the broker down whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${HEXPULSE_TEST_BROKER_PORT:-19092}"
scripts/broker.sh install
# A fresh memory broker per run: no state leaks between runs.
scripts/broker.sh stop "$PORT" >/dev/null
scripts/broker.sh start memory "$PORT"
trap 'scripts/broker.sh stop "$PORT"' EXIT

export HEXPULSE_TEST_BROKER="127.0.0.1:$PORT"
export HEXPULSE_REQUIRE_BROKER=1
# Tests that stop and restart a broker of their own use these.
export HEXPULSE_BROKER_SCRIPT="$PWD/scripts/broker.sh"
export HEXPULSE_TANSU_BIN="${HEXPULSE_CACHE:-$HOME/.cache/hexpulse}/tansu/bin/tansu"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
  # nextest does not run doctests.
  cargo test --workspace --locked --doc
else
  cargo test --workspace --locked --no-fail-fast
fi
