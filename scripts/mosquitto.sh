#!/usr/bin/env bash
# Local MQTT broker (Debian's Mosquitto) for `make up`'s MQTT bridge. Every command is safe to re-run.
#
#   scripts/mosquitto.sh start PORT   use the MQTT broker that listens on 127.0.0.1:PORT, or start a
#                                     Mosquitto there (persistent: its sessions and queued messages
#                                     survive its restart). Exit 3 when neither is possible.
#   scripts/mosquitto.sh stop  PORT   stop the Mosquitto this script started (no-op otherwise)
#   scripts/mosquitto.sh status PORT
#
# State lives outside the clone: $HEXPULSE_CACHE/run/mosquitto-PORT/{mosquitto.conf,pid,log,mosquitto.db}.
# `make up` does not install Mosquitto (`make test` does); without it, `make up` runs no bridge.
set -euo pipefail
# shellcheck source=scripts/pidfile.sh
. "$(dirname "$0")/pidfile.sh"

CACHE="${HEXPULSE_CACHE:-$HOME/.cache/hexpulse}"
die() { echo "mosquitto.sh: $*" >&2; exit 1; }
run_dir() { echo "$CACHE/run/mosquitto-$1"; }

binary() {
  command -v mosquitto 2>/dev/null && return
  local p
  for p in /usr/sbin/mosquitto /usr/local/sbin/mosquitto; do
    [ -x "$p" ] && { echo "$p"; return; }
  done
  return 1
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pid_of() { pid_in "$(run_dir "$1")"; }

cmd_start() {
  local port=$1 dir bin i
  if listening "$port"; then
    if pid_of "$port" >/dev/null; then
      echo "mosquitto already running on 127.0.0.1:$port"
    else
      echo "using the MQTT broker that listens on 127.0.0.1:$port"
    fi
    return 0
  fi
  if ! bin=$(binary); then
    echo "no MQTT broker on 127.0.0.1:$port and no mosquitto installed: no MQTT bridge" \
      "(apt install mosquitto, or make up UP_MQTT_BROKER=HOST:PORT)" >&2
    exit 3
  fi
  dir=$(run_dir "$port")
  mkdir -p "$dir"
  # `user`: run as root, Mosquitto would drop to the `mosquitto` user, who cannot write the cache.
  cat > "$dir/mosquitto.conf" <<EOF
listener $port 127.0.0.1
allow_anonymous true
user $(id -un)
persistence true
persistence_location $dir/
autosave_interval 10
log_dest file $dir/log
pid_file $dir/pid
EOF
  "$bin" -c "$dir/mosquitto.conf" -d
  for i in $(seq 1 50); do
    listening "$port" && { echo "mosquitto started on 127.0.0.1:$port (state in $dir)"; return 0; }
    sleep 0.1
  done
  tail -5 "$dir/log" >&2 || true
  die "mosquitto did not listen on port $port"
}

cmd_stop() {
  local port=$1 pid i
  pid=$(pid_of "$port") || { echo "no mosquitto of ours on port $port"; return 0; }
  kill "$pid"
  for i in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || { echo "mosquitto on port $port stopped"; return 0; }
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
}

cmd_status() {
  local port=$1
  if pid_of "$port" >/dev/null; then echo "mosquitto on 127.0.0.1:$port (pid $(pid_of "$port"))"
  elif listening "$port"; then echo "an MQTT broker not started by this script listens on 127.0.0.1:$port"
  else echo "no MQTT broker on 127.0.0.1:$port"; return 1; fi
}

case "${1:-}" in
  start|stop|status) [ $# -eq 2 ] || die "usage: $0 $1 PORT"; "cmd_$1" "$2" ;;
  *) sed -n '2,11p' "$0" >&2; exit 2 ;;
esac
