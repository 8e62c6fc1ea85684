#!/usr/bin/env bash
# Installs the Debian packages that provide missing programs, once per machine: each argument is
# PROGRAM:PACKAGE, where PROGRAM is a command name or an absolute path. The package lists are
# refreshed only when the first try fails. `make test` and `make bench` use it (they install what
# they need).
# Usage: scripts/need.sh chromium:chromium /usr/sbin/mosquitto:mosquitto psql:postgresql-client
set -euo pipefail
missing=()
for want in "$@"; do
  program="${want%%:*}" package="${want#*:}"
  if [ "${program#/}" != "$program" ]; then
    [ -x "$program" ] && continue
  elif command -v "$program" >/dev/null 2>&1; then
    continue
  fi
  case " ${missing[*]-} " in *" $package "*) ;; *) missing+=("$package") ;; esac
done
[ "${#missing[@]}" = 0 ] && exit 0
echo "installing Debian's ${missing[*]} (once per machine)"
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
$sudo apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
  { $sudo apt-get update >/dev/null && $sudo apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
