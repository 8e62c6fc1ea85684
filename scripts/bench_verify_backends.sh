#!/usr/bin/env bash
# Raw Ed25519 verify rates of one core on each curve25519-dalek backend this CPU can run (issue #26):
# serial, AVX2 ("simd") and AVX-512 IFMA ("avx512", chosen at run time, so on a CPU without IFMA it
# runs AVX2 and says so). The backend is fixed at build time, so each is a build of its own of
# hexpulse-schemas' small `verify_rates` example (release, its own target directory in the cache;
# about two minutes each the first time). Writes load-tests/results/verify-backends.json:
# {"serial": {...rates, "backend": what ran}, "simd": {...}, "avx512": {...}}.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${HEXPULSE_CACHE:-$HOME/.cache/hexpulse}"
SECS="${1:-3}"
mkdir -p load-tests/results
out=load-tests/results/verify-backends.json
echo "{" >"$out.tmp"
sep=""
for b in serial simd avx512; do
  echo "[bench] verify: building and running the $b backend" >&2
  line="$(RUSTFLAGS="--cfg curve25519_dalek_backend=\"$b\"" CARGO_TARGET_DIR="$CACHE/verify-backends/$b" \
    cargo run --quiet --release --locked -p hexpulse-schemas --example verify_rates -- "$SECS")"
  echo "[bench] verify $b: $line" >&2
  printf '%s"%s": %s\n' "$sep" "$b" "$line" >>"$out.tmp"
  sep=","
done
echo "}" >>"$out.tmp"
mv "$out.tmp" "$out"
