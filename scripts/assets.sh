#!/usr/bin/env bash
# Front-end assets: installs web/package.json's packages from the npm registry (npm's cache under
# ~/.cache/hexpulse/npm, so a fresh clone installs from the cache) and copies MapLibre GL JS into
# query/assets/vendor/, which the query crate embeds at build time. Idempotent; make up and make
# test run it before building.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${HEXPULSE_CACHE:-$HOME/.cache/hexpulse}/npm"
if ! command -v npm >/dev/null; then
  echo "assets: npm is missing (Debian: apt-get install nodejs npm)" >&2
  exit 1
fi
if [ ! -f web/node_modules/.package-lock.json ] || [ web/package-lock.json -nt web/node_modules/.package-lock.json ]; then
  echo "== npm ci (web/)"
  npm ci --prefix web --cache "$cache" --no-audit --no-fund --loglevel=error
fi
mkdir -p query/assets/vendor
for f in maplibre-gl.mjs maplibre-gl-worker.mjs maplibre-gl-shared.mjs maplibre-gl.css; do
  src="web/node_modules/maplibre-gl/dist/$f"
  if ! cmp -s "$src" "query/assets/vendor/$f"; then
    cp "$src" "query/assets/vendor/$f"
  fi
done
