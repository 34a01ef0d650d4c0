#!/usr/bin/env bash
# A long-polling loop in shell: a publisher sends numbered messages while the reader polls
# with its cursor, and now and then stays away; it sees every number exactly once, in
# order, in batches no larger than max_publications.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
. tests/hub/shell/lib.bash
start_hub "$CONFIG" || { echo "not ok - long poll: the hub starts"; exit 1; }

N=60
URL="http://$ADDR/connection/uni_long_poll?channel=n:count"
out=$(mktemp)
resp=$(mktemp)
trap 'kill $HUB_PID 2>/dev/null; rm -f "$out" "$resp"' EXIT

# The first poll, without a cursor, answers at once with the current one.
cursor=$(curl -sf "$URL" | jq -r .position)
check "long poll: a first poll gives a cursor" yes "$([[ "$cursor" == 0.* ]] && echo yes)"

publisher n:count "$N" 0.03 &
pub_pid=$!
polls=0
biggest=0
unrecovered=0
while :; do
    polls=$((polls + 1))
    curl -sf "$URL&since=$cursor" >"$resp" || { echo "# poll failed" >&2; break; }
    [[ "$(jq -r .recovered "$resp")" == true ]] || unrecovered=$((unrecovered + 1))
    jq -r '.publications[].pub.data.n' "$resp" >>"$out"
    size=$(jq '.publications | length' "$resp")
    ((size > biggest)) && biggest=$size
    cursor=$(jq -r .position "$resp")
    [[ "$(tail -1 "$out")" == "$N" ]] && break
    [[ $polls -gt 500 || $unrecovered -gt 3 ]] && break
    # Away now and then: what is published meanwhile comes with the next polls.
    ((polls % 4 == 0)) && sleep 0.5
done
wait "$pub_pid"
check "long poll: every number once, in order, over $polls polls" "$(seq "$N")" "$(cat "$out")"
check "long poll: every poll recovered" 0 "$unrecovered"
check "long poll: batches under load, at most max_publications (7)" yes "$(((biggest > 1 && biggest <= 7)) && echo yes)"

# Nothing newer: the poll waits for the timeout (2s) and gives the same cursor back.
start=$(date +%s%N)
same=$(curl -sf "$URL&since=$cursor" | jq -r .position)
elapsed=$((($(date +%s%N) - start) / 1000000))
check "long poll: with nothing newer it waits, then gives the cursor back" "yes $cursor" \
    "$(((elapsed >= 1500)) && echo yes) $same"

# A cursor from another epoch: not recovered, the current cursor given.
r=$(curl -sf "$URL&since=3.otherepoch")
check "long poll: a stale cursor is not recovered" "false $cursor" "$(jq -r '"\(.recovered) \(.position)"' <<<"$r")"

# Malformed cursors: 400 and a message.
code=$(curl -s -o "$resp" -w '%{http_code}' "$URL&since=abc")
check "long poll: a malformed cursor is refused with 400" 400 "$code"
check "long poll: the refusal says why" yes "$(jq -r .error "$resp" | grep -q 'malformed position' && echo yes)"
exit $((FAILED > 0))
