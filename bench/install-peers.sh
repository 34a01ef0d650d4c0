#!/usr/bin/env bash
# Installs the peer servers that bench/peers.py measures Volley against:
#   - Sockudo (a Rust Pusher server) from crates.io, which needs Debian's protobuf-compiler;
#   - Socket.IO 4 (npm), in bench/peers/ (package-lock.json pins it).
# Not part of CI: nothing in .ci/run needs these. Idempotent: run it again to resume.
#
# Environment:
#   SOCKUDO_VERSION   crates.io version to install (default: the one the report was made with)
#   SOCKUDO_ROOT      cargo install --root (default: ~/.cargo, so the binary is ~/.cargo/bin/sockudo)
#   SOCKUDO_BUILD_DIR the build directory, kept so an interrupted build resumes
#   JOBS              cargo -j (default 1: the build is long and the machine is shared)
#   SKIP_SOCKUDO=1 / SKIP_SOCKETIO=1 to install one of them only
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
SOCKUDO_VERSION="${SOCKUDO_VERSION:-5.2.0}"
SOCKUDO_ROOT="${SOCKUDO_ROOT:-$HOME/.cargo}"
SOCKUDO_BUILD_DIR="${SOCKUDO_BUILD_DIR:-$HOME/.cache/sockudo-build}"
JOBS="${JOBS:-1}"

if [ "${SKIP_SOCKETIO:-0}" != 1 ]; then
  echo "== Socket.IO (npm ci in bench/peers)"
  (cd "$here/peers" && npm ci --no-audit --no-fund)
fi

if [ "${SKIP_SOCKUDO:-0}" != 1 ]; then
  if ! command -v protoc >/dev/null 2>&1; then
    echo "== protobuf-compiler (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler
  fi
  have="$("$SOCKUDO_ROOT/bin/sockudo" --version 2>/dev/null || true)"
  if printf '%s' "$have" | grep -q "$SOCKUDO_VERSION"; then
    echo "== sockudo $SOCKUDO_VERSION already installed: $SOCKUDO_ROOT/bin/sockudo"
  else
    echo "== sockudo $SOCKUDO_VERSION (cargo install, -j $JOBS; this takes long)"
    CARGO_TARGET_DIR="$SOCKUDO_BUILD_DIR" nice -n 19 \
      cargo install sockudo --version "=$SOCKUDO_VERSION" --locked -j "$JOBS" --root "$SOCKUDO_ROOT"
  fi
fi
echo "== peers installed"
