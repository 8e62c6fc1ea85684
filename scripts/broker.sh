#!/usr/bin/env bash
# Local Kafka-protocol broker (tansu) for `make up` and `make test`. Every command is safe to re-run.
#
#   scripts/broker.sh install                  build tansu into the cache, only if missing
#   scripts/broker.sh start  memory|sqlite PORT start on 127.0.0.1:PORT (no-op if already up)
#   scripts/broker.sh wait   PORT              wait until it answers Kafka requests
#   scripts/broker.sh topics PORT PARTITIONS T  create topic T (and more names) if missing
#   scripts/broker.sh stop   PORT              stop it (no-op if not running)
#   scripts/broker.sh restart memory|sqlite PORT  stop it (SIGKILL after 5 s) and start it again on the
#                                              same storage (`hexpulse up --broker-restart` runs this)
#   scripts/broker.sh status PORT
#
# State lives outside the clone: $HEXPULSE_CACHE (default ~/.cache/hexpulse): the binary in
# tansu/bin/tansu, and per port run/broker-PORT/{pid,log,tansu.db}.
set -euo pipefail
# shellcheck source=scripts/pidfile.sh
. "$(dirname "$0")/pidfile.sh"

CACHE="${HEXPULSE_CACHE:-$HOME/.cache/hexpulse}"
TANSU_VERSION=0.6.0
TANSU="${TANSU_BIN:-$CACHE/tansu/bin/tansu}"

die() { echo "broker.sh: $*" >&2; exit 1; }
run_dir() { echo "$CACHE/run/broker-$1"; }

installed_ok() {
  [ -x "$TANSU" ] && "$TANSU" --version 2>/dev/null | grep -q "$TANSU_VERSION"
}

cmd_install() {
  if installed_ok; then
    echo "tansu $TANSU_VERSION already installed at $TANSU"
    return
  fi
  mkdir -p "$CACHE"
  echo "building tansu $TANSU_VERSION into $CACHE/tansu (about 19 minutes on 2 cores, once per machine)..."
  # Own target dir so the project's `cargo clean` never forces a rebuild of the broker.
  CARGO_TARGET_DIR="$CACHE/tansu-build" cargo install tansu --locked --version "$TANSU_VERSION" \
    --features dynostore,libsql --root "$CACHE/tansu"
  installed_ok || die "tansu did not install at $TANSU"
}

pid_of() { pid_in "$(run_dir "$1")"; }

answers() {
  "$TANSU" topic list --broker "tcp://127.0.0.1:$1" >/dev/null 2>&1
}

cmd_wait() {
  local port=$1 i
  for i in $(seq 1 100); do
    if answers "$port"; then return 0; fi
    if ! pid_of "$port" >/dev/null; then
      tail -20 "$(run_dir "$port")/log" >&2 || true
      die "broker on port $port exited"
    fi
    sleep 0.2
  done
  die "broker on port $port did not answer within 20 s"
}

cmd_start() {
  local mode=$1 port=$2 dir storage
  installed_ok || die "tansu is not installed; run: scripts/broker.sh install"
  dir=$(run_dir "$port")
  mkdir -p "$dir"
  if pid_of "$port" >/dev/null; then
    echo "broker already running on 127.0.0.1:$port (pid $(pid_of "$port"))"
    cmd_wait "$port"
    return
  fi
  case "$mode" in
    memory) storage="memory://tansu/" ;;
    # tansu reads the sqlite path relative to its working directory, which is $dir.
    sqlite) storage="sqlite://tansu.db" ;;
    *) die "unknown storage mode '$mode' (memory or sqlite)" ;;
  esac
  # The log is appended to, so that what a restarted broker logged before (a panic) stays.
  echo "== $(date -u +%FT%TZ) broker.sh start $mode $port" >>"$dir/log"
  # setsid: the broker outlives this script and is not killed with the caller's process group.
  (cd "$dir" && exec setsid "$TANSU" broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine "$storage" >>"$dir/log" 2>&1 < /dev/null) &
  echo $! >"$dir/pid"
  cmd_wait "$port"
  echo "broker up on 127.0.0.1:$port ($storage, pid $(cat "$dir/pid"), log $dir/log)"
}

cmd_topics() {
  local port=$1 partitions=$2; shift 2
  local existing t
  existing=$("$TANSU" topic list --broker "tcp://127.0.0.1:$port" 2>/dev/null || true)
  for t in "$@"; do
    if grep -qw -- "$t" <<<"$existing"; then
      echo "topic $t exists"
    else
      "$TANSU" topic create --broker "tcp://127.0.0.1:$port" --partitions "$partitions" "$t" >/dev/null
      echo "topic $t created ($partitions partitions)"
    fi
  done
}

cmd_stop() {
  local port=$1 pid i
  if ! pid=$(pid_of "$port"); then
    echo "no broker running on port $port"
    rm -f "$(run_dir "$port")/pid"
    return
  fi
  kill "$pid" 2>/dev/null || true
  for i in $(seq 1 "${BROKER_STOP_WAIT_TENTHS:-300}"); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then echo "broker on port $port did not stop in time; killing it" >&2; fi
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$(run_dir "$port")/pid"
  echo "broker on port $port stopped"
}

cmd_restart() {
  # A wedged tansu may not stop on SIGTERM; its sqlite storage survives SIGKILL.
  BROKER_STOP_WAIT_TENTHS="${BROKER_STOP_WAIT_TENTHS:-50}" cmd_stop "$2"
  cmd_start "$1" "$2"
}

cmd_status() {
  if pid=$(pid_of "$1"); then echo "running (pid $pid)"; else echo "stopped"; return 1; fi
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start "${2:?mode}" "${3:?port}" ;;
  wait) cmd_wait "${2:?port}" ;;
  topics) cmd_topics "${2:?port}" "${3:?partitions}" "${@:4}" ;;
  stop) cmd_stop "${2:?port}" ;;
  restart) cmd_restart "${2:?mode}" "${3:?port}" ;;
  status) cmd_status "${2:?port}" ;;
  *) sed -n '2,14p' "$0"; exit 2 ;;
esac
