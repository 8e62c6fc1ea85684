#!/usr/bin/env bash
# Makes the cached Python venv hold exactly scripts/requirements.txt, and prints its python.
# Re-installs only when the requirements change (a stamp holds their hash).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${HEXPULSE_CACHE:-$HOME/.cache/hexpulse}/venv"
want="$(sha256sum scripts/requirements.txt | cut -d' ' -f1)"
if [ "$(cat "$VENV/.requirements" 2>/dev/null)" != "$want" ]; then
  echo "installing scripts/requirements.txt into $VENV (once per machine and change)" >&2
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements.txt >&2
  echo "$want" >"$VENV/.requirements"
fi
echo "$VENV/bin/python"
