#!/usr/bin/env bash
# Checks that the workspace builds with the lowest versions its Cargo.toml files allow
# for its direct dependencies (`RUSTC_BOOTSTRAP=1 cargo update -Z direct-minimal-versions`), so
# that the declared minimums are true. Works on a copy of the tracked files: the
# committed Cargo.lock is left alone. The resolution is an unstable cargo flag, enabled
# on the default (stable) toolchain with RUSTC_BOOTSTRAP=1, as the fuzz smoke run does;
# it reads the registry's index.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
cd "$ROOT"
git ls-files -z | xargs -0 cp --parents -t "$SCRATCH"
cd "$SCRATCH"
RUSTC_BOOTSTRAP=1 cargo update -Z direct-minimal-versions
CARGO_TARGET_DIR="$ROOT/target/minimal-versions" RUSTFLAGS="-D warnings" \
  cargo check --workspace --all-features --all-targets
