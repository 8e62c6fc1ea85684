#!/usr/bin/env bash
# Unused dependencies: cargo-machete over every Cargo.toml of the repo (the workspace and fuzz/).
# Installed once per machine into $HEXPULSE_CACHE/cargo-machete. A dependency used only in a way it
# cannot see (a string in `#[serde(with = "...")]`) is listed under
# `[package.metadata.cargo-machete] ignored` in its crate's Cargo.toml, with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${HEXPULSE_CACHE:-$HOME/.cache/hexpulse}"
VERSION=0.9.2
ROOT="$CACHE/cargo-machete"
if ! "$ROOT/bin/cargo-machete" --version 2>/dev/null | grep -q "$VERSION"; then
  # A debug build: half a minute instead of two from cold, and it still checks the workspace in seconds.
  echo "installing cargo-machete $VERSION into $ROOT (once per machine, about half a minute)"
  CARGO_TARGET_DIR="$CACHE/cargo-machete-build" cargo install cargo-machete --locked --version "$VERSION" --root "$ROOT" --quiet --debug
fi
"$ROOT/bin/cargo-machete"
