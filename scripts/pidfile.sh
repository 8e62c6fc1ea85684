# Sourced by broker.sh and mosquitto.sh: the state of a server that one of them started.

# pid_in DIR: prints the pid in DIR/pid when that process is alive; fails otherwise.
pid_in() {
  local f="$1/pid"
  [ -f "$f" ] || return 1
  local pid; pid=$(cat "$f")
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}
