#!/usr/bin/env bash
# Runs every test of the project: the workspace's unit, property and integration tests,
# the Autobahn|Testsuite in both roles, the headless-Chromium test, a short fuzz run and
# a smoke run of the benchmark harness (bench/smoke.sh).
# Installs what the tests need first (Debian chromium, npm packages, the Autobahn suite,
# cargo-fuzz). Ends with one line: "tests: N passed, M failed".
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

LOG_DIR=$(mktemp -d)
trap 'rm -rf "$LOG_DIR"' EXIT
passed=0
failed=0
status=0

step() { printf '\n==> %s\n' "$*"; }

step "installing test dependencies"
scripts/install-test-deps.sh

step "cargo test --workspace --all-features"
if cargo test --workspace --all-features 2>&1 | tee "$LOG_DIR/cargo.log"; then :; else status=1; fi
read -r p f < <(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed/) p += $(i-1); if ($(i) ~ /^failed/) f += $(i-1) } } END { print p+0, f+0 }' "$LOG_DIR/cargo.log")
passed=$((passed + p)); failed=$((failed + f))

step "building release binaries"
# (Two commands: with --example, cargo builds only that example of the listed packages.)
cargo build --release -p volley-cli
cargo build --release -p volley --features hyper --example autobahn-client --example chat

step "Autobahn|Testsuite, both roles"
if SKIP_BUILD=1 autobahn/run.sh all 2>&1 | tee "$LOG_DIR/autobahn.log"; then :; else status=1; fi
while read -r line; do
  n=$(sed -E 's/^autobahn [a-z]+: ([0-9]+) cases.*/\1/' <<<"$line")
  if [[ $line == *"matches expected"* ]]; then passed=$((passed + n)); else failed=$((failed + n)); fi
done < <(grep -E '^autobahn (server|client): [0-9]+ cases' "$LOG_DIR/autobahn.log" || true)

step "the hub with the real clients (centrifuge-js, centrifuge-python, cent)"
if scripts/hub-test.sh 2>&1 | tee "$LOG_DIR/hub.log"; then :; else status=1; fi
p=$(awk '/^# pass / { v = $3 } END { print v }' "$LOG_DIR/hub.log"); f=$(awk '/^# fail / { v = $3 } END { print v }' "$LOG_DIR/hub.log")
passed=$((passed + ${p:-0})); failed=$((failed + ${f:-1}))

step "headless Chromium"
if scripts/browser-test.sh 2>&1 | tee "$LOG_DIR/browser.log"; then :; else status=1; fi
p=$(awk '/^# pass / { print $3 }' "$LOG_DIR/browser.log"); f=$(awk '/^# fail / { print $3 }' "$LOG_DIR/browser.log")
passed=$((passed + ${p:-0})); failed=$((failed + ${f:-1}))

step "fuzz smoke"
if scripts/fuzz-smoke.sh; then passed=$((passed + 1)); else failed=$((failed + 1)); status=1; fi

step "benchmark harness smoke"
if bench/smoke.sh; then passed=$((passed + 1)); else failed=$((failed + 1)); status=1; fi

if [[ $status -ne 0 && $failed -eq 0 ]]; then failed=1; fi
echo
echo "tests: $passed passed, $failed failed"
exit $status
