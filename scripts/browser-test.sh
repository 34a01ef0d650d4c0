#!/usr/bin/env bash
# Headless-Chromium tests: a real browser talks to `volley echo` over ws://.
#
# Assumes `scripts/install-test-deps.sh browser` has been run and the server has been
# built (`cargo build --release -p volley-cli`). VOLLEY_BIN overrides the server
# binary (default: target/release/volley, relative to the repository root);
# CHROMIUM_PATH overrides /usr/bin/chromium. Extra arguments go to `node --test`
# (e.g. a test file name, or --test-reporter=spec).
#
# node is run directly (not via `npm test`) so the output ends with the runner's
# own "# tests / # pass / # fail" summary and the exit status is node's.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/tests/browser"

if [[ ! -d node_modules/playwright-core ]]; then
  echo "browser-test: tests/browser/node_modules missing; run scripts/install-test-deps.sh browser" >&2
  exit 1
fi

exec node --test "$@"
