#!/usr/bin/env bash
# `curl -N` on /connection/uni_sse: a publisher sends numbered messages while the reader
# is cut off again and again; each time it comes back with the last event id it read
# (Last-Event-ID) and sees every number exactly once, in order.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
. tests/hub/shell/lib.bash
start_hub "$CONFIG" || { echo "not ok - sse: the hub starts"; exit 1; }

N=60
URL="http://$ADDR/connection/uni_sse?channel=n:count"
out=$(mktemp)
trap 'kill $HUB_PID 2>/dev/null; rm -f "$out" "$out.part"' EXIT

# The headers: an event stream nothing buffers.
headers=$(curl -s -N --max-time 1 -D - -o /dev/null "$URL" | tr -d '\r' | tr 'A-Z' 'a-z')
check "sse: content-type text/event-stream" yes "$(grep -q '^content-type: text/event-stream' <<<"$headers" && echo yes)"
check "sse: cache-control no-cache and x-accel-buffering no" yes \
    "$(grep -q '^cache-control: no-cache' <<<"$headers" && grep -q '^x-accel-buffering: no' <<<"$headers" && echo yes)"

# The reader's first position, taken before anything is published (the connect event
# carries it as its id): the first publication cannot come before the reader.
last=$(curl -s -N --max-time 0.5 "$URL" | grep -m1 '^id: ' | cut -c5-)
publisher n:count "$N" 0.03 &
pub_pid=$!
rounds=0
# Read for 0.4 s, stay away 0.3 s, come back with the last id, until the last number.
while :; do
    rounds=$((rounds + 1))
    if [[ -z "$last" ]]; then
        curl -s -N --max-time 0.4 "$URL" >"$out.part"
    else
        curl -s -N --max-time 0.4 -H "Last-Event-ID: $last" "$URL" >"$out.part"
    fi
    # Only whole events (a cut may split the last one): up to the last blank line.
    if [[ "$(tail -c 2 "$out.part" | od -An -c | tr -d ' ')" == '\n\n' ]]; then
        whole=$(cat "$out.part")
    else
        whole=$(awk -v RS= 'NR > 1 { print prev "\n" } { prev = $0 }' "$out.part")
    fi
    id=$(grep '^id: ' <<<"$whole" | tail -1 | cut -c5-)
    [[ -n "$id" ]] && last=$id
    grep '^data: ' <<<"$whole" | cut -c7- | jq -r 'select(.pub) | .pub.data.n' >>"$out"
    grep -q '"recovered":false' <<<"$whole" && echo "# not recovered in round $rounds" >&2
    [[ "$(tail -1 "$out")" == "$N" ]] && break
    [[ $rounds -gt 200 ]] && break
    sleep 0.3
done
wait "$pub_pid"
check "sse: every number once, in order, over $rounds connections" "$(seq "$N")" "$(cat "$out")"
check "sse: the reader was cut off and came back" yes "$([[ $rounds -gt 2 ]] && echo yes)"

# A malformed Last-Event-ID: 400 with the reason.
code=$(curl -s -o "$out.part" -w '%{http_code}' -H 'Last-Event-ID: 12' "$URL")
check "sse: a malformed Last-Event-ID is refused with 400" 400 "$code"
check "sse: the refusal says why" yes "$(grep -q 'malformed position' "$out.part" && echo yes)"
exit $((FAILED > 0))
