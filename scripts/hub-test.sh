#!/usr/bin/env bash
# The hub (`volley serve`) against the real clients of its protocols: centrifuge-js in
# Node (tests/hub/*.test.mjs, node's test runner) and centrifuge-python and cent from
# PyPI (tests/hub/python, unittest).
#
# Assumes `scripts/install-test-deps.sh hub` has been run and the binary built
# (`cargo build --release -p volley-cli`; VOLLEY_BIN overrides target/release/volley).
# Ends with node's "# pass N / # fail M" summary lines, the Python ones added in.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[[ -d tests/hub/node_modules/centrifuge ]] || { echo "hub-test: run scripts/install-test-deps.sh hub" >&2; exit 1; }
[[ -x tests/hub/python/.venv/bin/python ]] || { echo "hub-test: run scripts/install-test-deps.sh hub" >&2; exit 1; }

LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
status=0

(cd tests/hub && node --test "$@") 2>&1 | tee "$LOG" || status=1
[[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
np=$(awk '/^# pass / { print $3 }' "$LOG"); nf=$(awk '/^# fail / { print $3 }' "$LOG")

(cd tests/hub/python && .venv/bin/python -m unittest -v 2>&1) | tee "$LOG" || status=1
[[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
ran=$(sed -nE 's/^Ran ([0-9]+) tests?.*/\1/p' "$LOG")
pf=$(grep -Eo '(failures|errors)=[0-9]+' "$LOG" | cut -d= -f2 | awk '{ s += $1 } END { print s+0 }')
pf=${pf:-0}
[[ -n "$ran" ]] || { ran=0; pf=1; status=1; }

echo "# pass $(( ${np:-0} + ran - pf ))"
echo "# fail $(( ${nf:-1} + pf ))"
exit $status
