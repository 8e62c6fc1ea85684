#!/usr/bin/env bash
# Fuzzing the decoders that face devices and users, with cargo-fuzz (libFuzzer).
#
#   scripts/fuzz.sh smoke             every target, a bounded number of executions (make fuzz)
#   scripts/fuzz.sh run TARGET [SECS] one target for SECS seconds (default 600), growing its corpus
#   scripts/fuzz.sh list              the targets
#
# cargo-fuzz is installed once into $HOME/.cache/hexpulse/cargo-fuzz; the instrumented build goes to
# $HOME/.cache/hexpulse/fuzz-target and the growing corpora to $HOME/.cache/hexpulse/fuzz-corpus.
# Seeds (from the wire test vectors and the tests' SQL) are in fuzz/seeds/ (python3 fuzz/seeds.py).
# The targets' bodies are hexpulse_testkit::fuzz (testkit/src/fuzz.rs), whose tests run them over
# the seeds and inputs mutated from them in `make test`; put a fixed finding's input into
# fuzz/seeds/TARGET/ so that `make test` keeps checking it.
# Crashes are saved to test-output/fuzz/; reproduce one with
#   scripts/fuzz.sh run TARGET-file-path  (or: cargo fuzz run TARGET test-output/fuzz/crash-...)
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${HEXPULSE_CACHE:-$HOME/.cache/hexpulse}"
VERSION=0.13.2
ROOT="$CACHE/cargo-fuzz"
TARGETS=(batch_protobuf batch_json compressed_body sql_request query_params)

if ! "$ROOT/bin/cargo-fuzz" --version 2>/dev/null | grep -q "$VERSION"; then
  echo "installing cargo-fuzz $VERSION into $ROOT (once per machine)"
  cargo install cargo-fuzz --locked --version "$VERSION" --root "$ROOT" --quiet
fi
export PATH="$ROOT/bin:$PATH"
# libFuzzer instrumentation needs no nightly feature with --sanitizer none; cargo-fuzz still passes
# `-Z` flags to cargo in places, which the pinned stable toolchain accepts with this.
export RUSTC_BOOTSTRAP=1
FLAGS=(--sanitizer none --target-dir "$CACHE/fuzz-target")
mkdir -p test-output/fuzz

run() { # target, then libFuzzer options
  local t="$1"; shift
  local corpus="$CACHE/fuzz-corpus/$t"
  mkdir -p "$corpus"
  cargo fuzz run "${FLAGS[@]}" "$t" "$corpus" "fuzz/seeds/$t" -- \
    -artifact_prefix="test-output/fuzz/$t-" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "$@"
}

case "${1:-smoke}" in
  list) printf '%s\n' "${TARGETS[@]}" ;;
  smoke)
    echo "== fuzz smoke: building ${TARGETS[*]}"
    cargo fuzz build "${FLAGS[@]}"
    for t in "${TARGETS[@]}"; do
      runs=30000; [ "$t" = sql_request ] && runs=3000; [ "$t" = query_params ] && runs=2000
      echo "== fuzz smoke: $t ($runs executions at most, 60 s at most)"
      log="test-output/fuzz/$t.log"
      if ! run "$t" -runs="$runs" -max_total_time=60 >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz smoke: $t failed; the input is in test-output/fuzz/, the log in $log" >&2
        exit 1
      fi
      grep -E "^stat::(number_of_executed_units|peak_rss_mb|new_units_added)|DONE" "$log" || true
    done
    ;;
  run)
    t="${2:?usage: scripts/fuzz.sh run TARGET [SECONDS]}"
    run "$t" -max_total_time="${3:-600}"
    ;;
  *) echo "usage: scripts/fuzz.sh smoke | run TARGET [SECONDS] | list" >&2; exit 2 ;;
esac
