# Shared by the shell tests: starts `volley serve` (VOLLEY_BIN, default
# target/release/volley) on a free port with a JSON configuration, publishes through the
# server API, reports "ok - NAME" or "not ok - NAME".

API_KEY=shell-test-key

# start_hub CONFIG_JSON: sets ADDR and HUB_PID.
start_hub() {
    local dir bin
    dir=$(mktemp -d)
    bin=${VOLLEY_BIN:-target/release/volley}
    echo "$1" >"$dir/config.json"
    VOLLEY_LOG=${VOLLEY_LOG:-warn} "$bin" serve --config "$dir/config.json" --listen 127.0.0.1:0 >"$dir/out" 2>"$dir/err" &
    HUB_PID=$!
    for _ in $(seq 150); do
        ADDR=$(sed -nE 's/^listening on (\S+).*/\1/p' "$dir/out" | head -1)
        [[ -n "$ADDR" ]] && break
        sleep 0.1
    done
    rm -rf "$dir"
    [[ -n "$ADDR" ]] || { echo "volley serve did not start" >&2; return 1; }
    trap 'kill $HUB_PID 2>/dev/null' EXIT
}

# publish CHANNEL JSON_DATA
publish() {
    curl -sf -X POST -H "X-API-Key: $API_KEY" -H 'Content-Type: application/json' \
        -d "{\"channel\":\"$1\",\"data\":$2}" "http://$ADDR/api/publish" >/dev/null
}

# publisher CHANNEL COUNT PAUSE: publishes {"n":1} to {"n":COUNT}, PAUSE seconds apart.
publisher() {
    for i in $(seq "$2"); do
        publish "$1" "{\"n\":$i}" || echo "publish $i failed" >&2
        sleep "$3"
    done
}

# The configuration of the tests: anonymous readers, a namespace with history.
CONFIG='{
  "client": {"allow_anonymous_connect_without_token": true, "ping_interval": "1s"},
  "channel": {"namespaces": [{"name": "n", "allow_subscribe_for_anonymous": true,
    "history_size": 1000, "history_ttl": "300s", "allow_recovery": true}]},
  "http_api": {"key": "shell-test-key"},
  "uni_sse": {"enabled": true},
  "uni_http_stream": {"enabled": true},
  "uni_long_polling": {"enabled": true, "timeout": "2s", "max_publications": 7}
}'

FAILED=0

# check NAME EXPECTED ACTUAL (the script ends with `exit $((FAILED > 0))`)
check() {
    if [[ "$2" == "$3" ]]; then
        echo "ok - $1"
    else
        echo "not ok - $1"
        echo "#   expected: $(echo "$2" | tr '\n' ' ' | cut -c1-300)"
        echo "#   got:      $(echo "$3" | tr '\n' ' ' | cut -c1-300)"
        FAILED=$((FAILED + 1))
        return 1
    fi
}
