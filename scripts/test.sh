#!/usr/bin/env bash
# `make test`: brings up what the tests need (a fresh in-memory tansu broker on loopback), runs the
# lints and the whole workspace's tests, and tears the broker down whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${HEXPULSE_TEST_BROKER_PORT:-19092}"
# No incremental caches: each clone path would add gigabytes of them to the shared target dir.
export CARGO_INCREMENTAL=0
CACHE="${HEXPULSE_CACHE:-$HOME/.cache/hexpulse}"
scripts/broker.sh install

# Python tools in a cached venv (scripts/requirements.txt): DuckDB with its delta extension and deltalake,
# the independent Delta readers of the lake tests, and kubernetes-validate for the k8s/ checks.
# Installed in the background (mostly downloads and unpacking) while the workspace compiles; the
# tests wait for it below.
mkdir -p test-output
# Background jobs run in process groups of their own; whatever way this script ends, they and the
# broker go with it.
venv_pid="" side_pid="" broker_up=""
cleanup() {
  [ -z "$venv_pid" ] || kill -- "-$venv_pid" 2>/dev/null || true
  [ -z "$side_pid" ] || kill -- "-$side_pid" 2>/dev/null || true
  [ -z "$broker_up" ] || scripts/broker.sh stop "$PORT"
}
trap cleanup EXIT
setsid scripts/venv.sh >test-output/venv.out 2>test-output/venv.log &
venv_pid=$!
python_ready() {
  local pid="$venv_pid"
  venv_pid=""
  wait "$pid" || { cat test-output/venv.log >&2; echo "the Python venv did not install" >&2; exit 1; }
  cat test-output/venv.log >&2
  HEXPULSE_PYTHON="$(cat test-output/venv.out)"
  export HEXPULSE_PYTHON
}
if ! command -v kubectl >/dev/null 2>&1; then
  echo "kubectl is missing: the k8s/ checks render the overlays with 'kubectl kustomize'" >&2
  exit 1
fi

# The map page's bundle (embedded into the binary) and, for its end-to-end test, Debian's Chromium
# driven by playwright-core (web/e2e.mjs); no browser download.
scripts/assets.sh
# Debian's packages the tests run, installed once per machine: Chromium for the map page's browser
# test, Mosquitto and its clients for the MQTT bridge's (hexpulse/tests/it/mqtt.rs), psql for the
# PostgreSQL door's (query/tests/it/pg.rs), openssl for the TLS tests' certificates.
scripts/need.sh chromium:chromium /usr/sbin/mosquitto:mosquitto mosquitto_pub:mosquitto-clients \
  psql:postgresql-client openssl:openssl
export HEXPULSE_CHROMIUM="$(command -v chromium)"
export HEXPULSE_MOSQUITTO=/usr/sbin/mosquitto
export HEXPULSE_PSQL="$(command -v psql)"
export HEXPULSE_E2E=1
mkdir -p test-output

# A fresh memory broker per run: no state leaks between runs.
scripts/broker.sh stop "$PORT" >/dev/null
broker_up=1
scripts/broker.sh start memory "$PORT"

export HEXPULSE_TEST_BROKER="127.0.0.1:$PORT"
export HEXPULSE_REQUIRE_BROKER=1
# Tests that stop and restart a broker of their own use these.
export HEXPULSE_BROKER_SCRIPT="$PWD/scripts/broker.sh"
export HEXPULSE_TANSU_BIN="$CACHE/tansu/bin/tansu"

# `scripts/test.sh --only soak` (`make soak`): just the soak, for HEXPULSE_SOAK (default 30m here),
# with its per-minute table on the terminal and in test-output/soak.json. Time is compressed: the
# rules' lateness is HEXPULSE_SOAK_LATENESS (5m; empty: make up's 2h), so that the dedupe state and
# the unmerged files reach their steady size within a 2-hour run (hexpulse/tests/it/soak.rs).
if [ "${1:-}" = "--only" ] && [ "${2:-}" = "soak" ]; then
  export HEXPULSE_SOAK="${HEXPULSE_SOAK:-30m}"
  export HEXPULSE_SOAK_KILL_EVERY="${HEXPULSE_SOAK_KILL_EVERY:-5m}"
  export HEXPULSE_SOAK_LATENESS="${HEXPULSE_SOAK_LATENESS-5m}"
  echo "== soak for $HEXPULSE_SOAK (a second processor killed every $HEXPULSE_SOAK_KILL_EVERY; off: none; lateness ${HEXPULSE_SOAK_LATENESS:-2h})"
  # A release build (of the hexpulse package alone) by default: the soak's processes run at production
  # speed. HEXPULSE_SOAK_BUILD=dev uses the workspace's dev-profile build instead, the one `make test`
  # makes (the same package selection, so the same features and artifacts): the 3-minute soak's
  # accounting of 46,496 readings took about 10 s there.
  case "${HEXPULSE_SOAK_BUILD:-release}" in
    release) build=(--release -p hexpulse) ;;
    dev) build=(--workspace) ;;
    *) echo "HEXPULSE_SOAK_BUILD must be release or dev, not ${HEXPULSE_SOAK_BUILD}" >&2; exit 2 ;;
  esac
  python_ready
  status=0
  cargo nextest run "${build[@]}" --locked --profile soak -E 'test(soak)' --no-capture || status=$?
  # The per-minute table as load-tests/RESULTS.md records runs (also when the run failed).
  if [ -f test-output/soak.json ]; then
    python3 scripts/soak_report.py test-output/soak.json | tee test-output/soak.md
  fi
  exit "$status"
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
# Clippy lints the workspace's crates while the build for the tests compiles them: clippy-driver as
# cargo's workspace wrapper, which is what `cargo clippy` does, but in a real build instead of a
# check. The dependency tree is then compiled once, not also checked (about a quarter of a cold
# run). The tests build every target `cargo clippy --all-targets` lints but the examples, built here.
echo "== cargo clippy (through the test build; -D warnings)"
export RUSTC_WORKSPACE_WRAPPER="$(rustc --print sysroot)/bin/clippy-driver"
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
cargo build --workspace --locked --examples
echo "== crate layering"
python3 scripts/check_layers.py --self-test
python3 scripts/check_layers.py
# Checks with builds of their own run beside the tests, at the lowest CPU priority: the tests spend
# most of their time waiting (the soak alone takes three minutes of mostly sleep), and these take
# the idle cycles instead of adding minutes to a cold run (issue #27). Their output follows the
# tests'.
side_checks() {
  unset RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS
  echo "== unused dependencies"
  scripts/machete.sh
  # Signature verdicts must not depend on curve25519-dalek's backend. The build above runs the fastest
  # the CPU has (AVX-512 IFMA where present, `.cargo/config.toml`); these force the fallbacks, each a
  # small build of hexpulse-schemas alone (its vectors, property tests, and a check that the build ran
  # the backend it was asked for; not its examples or doctests). Both share one target directory:
  # with an explicit --target, RUSTFLAGS reach only the target's crates, so the build scripts and
  # proc macros are built once, and cargo keeps each backend's crates apart by their flags.
  host="$(rustc -vV | sed -n 's/^host: //p')"
  # Until 2026-12-03 each backend had a directory of its own under it.
  rm -rf "$CACHE/backends/serial" "$CACHE/backends/simd"
  for b in serial:serial simd:avx2; do
    echo "== signature verdicts on the ${b#*:} backend"
    RUSTFLAGS="--cfg curve25519_dalek_backend=\"${b%%:*}\"" CARGO_TARGET_DIR="$CACHE/backends" \
      HEXPULSE_EXPECT_DALEK_BACKEND="${b#*:}" \
      cargo test --locked -q -p hexpulse-schemas --lib --test it --target "$host"
  done
}
python_ready
setsid nice -n 19 bash -c "$(declare -f side_checks); set -euo pipefail; CACHE='$CACHE'; side_checks" \
  >test-output/side-checks.log 2>&1 &
side_pid=$!
echo "== tests"
status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast || status=$?
  # nextest does not run doctests.
  cargo test --workspace --locked --doc || status=$?
else
  cargo test --workspace --locked --no-fail-fast || status=$?
fi
side=0
wait "$side_pid" || side=$?
side_pid=""
cat test-output/side-checks.log
[ "$side" = 0 ] || { echo "the side checks failed (above)" >&2; status=1; }
# The fuzz targets' invariants run above, over their seeds and inputs mutated from them
# (testkit/src/fuzz.rs); libFuzzer's coverage-guided runs, a second build of the whole tree, are
# `make fuzz`.
exit "$status"
