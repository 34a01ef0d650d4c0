#!/usr/bin/env bash
# The hub (`volley serve`) against the real clients of its protocols: centrifuge-js and
# pusher-js with the Pusher Node SDK in Node (tests/hub/*.test.mjs, node's test
# runner), centrifuge-python, cent and the Pusher SDK from PyPI (tests/hub/python,
# unittest), and curl in shell scripts for the unidirectional
# transports (tests/hub/shell/*.sh, "ok - NAME" / "not ok - NAME" lines; curl, jq and
# openssl).
#
# The tests of several nodes on the Redis broker (tests/hub/cluster.test.mjs,
# tests/hub/redis_cluster.test.mjs, tests/hub/chat_cluster.test.mjs,
# tests/hub/pusher_cluster.test.mjs, tests/hub/pusher_xhr_cluster.test.mjs,
# tests/hub/python/test_cluster_python.py) start their own redis-server processes.
#
# Assumes `scripts/install-test-deps.sh hub redis` has been run and the binary built
# (`cargo build --release -p volley-cli`; VOLLEY_BIN overrides target/release/volley).
# Ends with node's "# pass N / # fail M" summary lines, the Python and shell ones added in.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[[ -d tests/hub/node_modules/centrifuge ]] || { echo "hub-test: run scripts/install-test-deps.sh hub" >&2; exit 1; }
[[ -x tests/hub/python/.venv/bin/python ]] || { echo "hub-test: run scripts/install-test-deps.sh hub" >&2; exit 1; }
command -v redis-server >/dev/null && command -v redis-cli >/dev/null || { echo "hub-test: run scripts/install-test-deps.sh redis" >&2; exit 1; }

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

: >"$LOG"
sx=0
for t in tests/hub/shell/*.sh; do
    echo "# $t"
    bash "$t" 2>&1 | tee -a "$LOG"
    # A script that fails without saying which check did counts as one failure.
    if [[ ${PIPESTATUS[0]} -ne 0 ]]; then
        status=1
        tail -1 "$LOG" | grep -q '^not ok - ' || sx=$((sx + 1))
    fi
done
sp=$(grep -c '^ok - ' "$LOG"); sf=$(grep -c '^not ok - ' "$LOG")
(( sf == 0 )) || status=1

echo "# pass $(( ${np:-0} + ran - pf + sp ))"
echo "# fail $(( ${nf:-1} + pf + sf + sx ))"
exit $status
