#!/usr/bin/env bash
# `make bench`: runs each benchmark against a fresh in-memory broker, writes the JSON reports to
# load-tests/results/, then scripts/bench_report.py writes load-tests/results.json and the generated
# table in load-tests/RESULTS.md (with the machine, the date and the commit).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${1:-19094}"
BIN="${CARGO_TARGET_DIR:-$HOME/.cache/hexpulse/target}/release/hexpulse"
scripts/broker.sh stop "$PORT" >/dev/null
scripts/broker.sh start memory "$PORT"
trap 'scripts/broker.sh stop "$PORT"' EXIT
export HEXPULSE__KAFKA__BROKERS="127.0.0.1:$PORT"
mkdir -p load-tests/results
# Debian's Mosquitto (the MQTT door's broker) and psql (the PostgreSQL door's client), once per machine.
scripts/need.sh /usr/sbin/mosquitto:mosquitto psql:postgresql-client
echo "== raw Ed25519 verify rates per curve25519-dalek backend (serial, AVX2, AVX-512 IFMA)"
scripts/bench_verify_backends.sh
echo "== ingest over each door (HTTP, gRPC stream, MQTT through a local Mosquitto)"
MQTT_PORT="${HEXPULSE_BENCH_MQTT_PORT:-18883}"
MQTT_ARGS=()
if scripts/mosquitto.sh start "$MQTT_PORT"; then
  MQTT_ARGS=(--mqtt-broker "127.0.0.1:$MQTT_PORT")
  trap 'scripts/broker.sh stop "$PORT"; scripts/mosquitto.sh stop "$MQTT_PORT"' EXIT
else
  echo "no Mosquitto (apt-get install mosquitto): the MQTT door is not measured"
fi
"$BIN" bench ingest "${MQTT_ARGS[@]}" --out load-tests/results/ingest.json
echo "== processor"
"$BIN" bench process --out load-tests/results/process.json
echo "== end to end (every role its own process; accounting, freshness, peak RSS)"
BROKER_PID="$(cat "${HEXPULSE_CACHE:-$HOME/.cache/hexpulse}/run/broker-$PORT/pid")"
"$BIN" bench e2e --broker-pid "$BROKER_PID" --out load-tests/results/e2e.json
echo "== end to end at half the sustained rate (issue #26's freshness at half load)"
HALF="$(python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["end_to_end_per_s"] / 2))' load-tests/results/e2e.json)"
"$BIN" bench e2e --rate "$HALF" --broker-pid "$BROKER_PID" --out load-tests/results/e2e-half.json
echo "== Delta log: six simulated hours with the whole log kept, and a simulated day with the log cleaned"
# (A whole day kept with a checkpoint every minute takes about 6 GB and half an hour.)
"$BIN" bench lake --hours 6 --out load-tests/results/lake.json
"$BIN" bench lake --clean-log --out load-tests/results/lake-clean.json
echo "== sealing a 50M-row epoch within 512 MiB (time, spill, peak RSS)"
"$BIN" bench seal --out load-tests/results/seal.json
# DuckDB from PyPI for the side-by-side query benchmark (the same cached venv as make test).
PY="$(scripts/venv.sh)"
echo "== query service vs DuckDB (10M readings)"
HEXPULSE_PYTHON="$PY" "$BIN" bench query --out load-tests/results/query.json
echo "== one large answer through each SQL door (Flight SQL with two clients, PostgreSQL, HTTP JSON/CSV/Arrow) vs in-process"
HEXPULSE_PYTHON="$PY" HEXPULSE_PSQL="${HEXPULSE_PSQL:-$(command -v psql)}" "$BIN" bench doors --out load-tests/results/doors.json
echo "== device status over 100k devices (the cache's first read; one device's p99, target <= 50 ms)"
"$BIN" bench status --out load-tests/results/status.json
echo "== report"
python3 scripts/bench_report.py
