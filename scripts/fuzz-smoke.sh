#!/usr/bin/env bash
# Fuzz smoke test: builds every cargo-fuzz target of fuzz/ (release, debug assertions,
# AddressSanitizer when it works here) and runs each for FUZZ_SECONDS (default 10) from
# the committed seeds in fuzz/corpus/<target>/. New units go to fuzz/scratch/<target>/
# (gitignored, emptied at each run), so the seeds are never modified. Crashes land in
# fuzz/artifacts/<target>/; the script exits non-zero if any target crashed.
#
# Works on a stable toolchain: cargo-fuzz passes nightly-only flags (-Zsanitizer,
# -Cpasses=sancov-module, ...), which RUSTC_BOOTSTRAP=1 allows. Installs cargo-fuzz
# if it is missing. Needs a C++ compiler (libfuzzer-sys builds libFuzzer).
#
# Environment: FUZZ_SECONDS (per target, default 10), FUZZ_TARGETS (space-separated
# subset, default all), FUZZ_SANITIZER (address or none; default: address, falling
# back to none if an AddressSanitizer build cannot be made or run).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

SECONDS_EACH=${FUZZ_SECONDS:-10}
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> cargo-fuzz not found: cargo install cargo-fuzz --locked"
  cargo install cargo-fuzz --locked
fi

cd fuzz
HOST=$(rustc -vV | sed -n 's/^host: //p')
BIN_DIR="target/$HOST/release"
read -r -a TARGETS <<<"${FUZZ_TARGETS:-$(cargo fuzz list | tr '\n' ' ')}"

build() { # sanitizer
  echo "==> cargo fuzz build --release --debug-assertions --sanitizer $1"
  cargo fuzz build --release --debug-assertions --sanitizer "$1"
}

# A binary that starts, runs the empty input and exits cleanly.
probe() {
  local dir rc=0
  dir=$(mktemp -d)
  "$BIN_DIR/${TARGETS[0]}" -runs=0 "$dir" >/dev/null 2>&1 || rc=$?
  rmdir "$dir"
  return "$rc"
}

start=$(date +%s)
SANITIZER=${FUZZ_SANITIZER:-address}
if [[ $SANITIZER == address ]] && ! { build address && probe; }; then
  echo "==> AddressSanitizer build unusable here; falling back to --sanitizer none"
  SANITIZER=none
  build none
elif [[ $SANITIZER != address ]]; then
  build "$SANITIZER"
fi
echo "==> built ${#TARGETS[@]} targets (sanitizer: $SANITIZER) in $(($(date +%s) - start)) s"

crashed=()
for t in "${TARGETS[@]}"; do
  seeds="corpus/$t"
  scratch="scratch/$t"
  artifacts="artifacts/$t/"
  log="scratch/$t.log"
  rm -rf "$scratch"
  mkdir -p "$scratch" "$seeds" "$artifacts"
  echo "==> $t: ${SECONDS_EACH} s from $(find "$seeds" -type f | wc -l) seeds"
  # libFuzzer writes new units into the FIRST corpus directory: the scratch one.
  rc=0
  "$BIN_DIR/$t" "$scratch" "$seeds" \
    -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$artifacts" -print_final_stats=1 >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$log" | tail -n 1 || true)
  if [[ $rc -ne 0 ]]; then
    crashed+=("$t")
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
    echo "!!! $t CRASHED (exit $rc); log: fuzz/$log"
    grep -E -A 1 "panicked at" "$log" | head -n 4 || true
    grep -E -m 3 "ERROR: (AddressSanitizer|libFuzzer)|^SUMMARY" "$log" || tail -n 20 "$log"
    if [[ -n $artifact ]]; then
      echo "!!! artifact: fuzz/$artifact ($(wc -c <"$artifact") bytes)"
      od -An -tx1 -v "$artifact" | head -n 16
      echo "!!! reproduce: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run --release --debug-assertions --sanitizer $SANITIZER $t $artifact)"
    fi
  else
    echo "    ok: ${execs:-?} runs, ${rate:-?} exec/s, ${cov:-no stats}"
  fi
done

n=${#TARGETS[@]}
if [[ ${#crashed[@]} -eq 0 ]]; then
  echo "fuzz smoke: $n targets, $SECONDS_EACH s each, no crashes"
else
  echo "fuzz smoke: $n targets, $SECONDS_EACH s each, ${#crashed[@]} crashed: ${crashed[*]}"
  exit 1
fi
