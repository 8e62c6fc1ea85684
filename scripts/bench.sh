#!/usr/bin/env bash
# `make bench`: runs each benchmark against a fresh in-memory broker and writes the JSON reports to
# load-tests/results/. The table in load-tests/RESULTS.md is written from them by hand, with the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${1:-19094}"
BIN="${CARGO_TARGET_DIR:-$HOME/.cache/hexpulse/target}/release/hexpulse"
scripts/broker.sh stop "$PORT" >/dev/null
scripts/broker.sh start memory "$PORT"
trap 'scripts/broker.sh stop "$PORT"' EXIT
export HEXPULSE__KAFKA__BROKERS="127.0.0.1:$PORT"
mkdir -p load-tests/results
echo "== ingest"
"$BIN" bench ingest --out load-tests/results/ingest.json
echo "== processor"
"$BIN" bench process --out load-tests/results/process.json
# DuckDB from PyPI for the side-by-side query benchmark (the same cached venv as make test).
VENV="${HEXPULSE_CACHE:-$HOME/.cache/hexpulse}/venv"
if ! "$VENV/bin/python" -c "import duckdb" >/dev/null 2>&1; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "duckdb==2.0.0"
fi
echo "== query service vs DuckDB (10M readings)"
HEXPULSE_PYTHON="$VENV/bin/python" "$BIN" bench query --out load-tests/results/query.json
