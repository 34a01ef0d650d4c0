#!/usr/bin/env bash
# Centrifugo's own example for its unidirectional HTTP stream, unchanged: each user
# subscribed server-side to their personal channel, `curl -X POST -d '{"token": ...}'`
# on /connection/uni_http_stream; the first line is the connect result, then come the
# publications to #USER, one JSON object a line, and `null` as the ping.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
. tests/hub/shell/lib.bash

SECRET=shell-test-secret
start_hub '{
  "client": {"token": {"hmac_secret_key": "'$SECRET'"}, "user_subscribe_to_personal": true,
    "ping_interval": "1s"},
  "http_api": {"key": "shell-test-key"},
  "uni_http_stream": {"enabled": true, "max_request_body_size": 1024}
}' || { echo "not ok - uni_http_stream: the hub starts"; exit 1; }
out=$(mktemp)
trap 'kill $HUB_PID 2>/dev/null; rm -f "$out"' EXIT

# An HS256 connection token for user12, as `centrifugo gentoken -u user12` makes.
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
head=$(printf '{"alg":"HS256","typ":"JWT"}' | b64url)
claims=$(printf '{"sub":"user12","exp":%d}' $(($(date +%s) + 3600)) | b64url)
sig=$(printf '%s.%s' "$head" "$claims" | openssl dgst -binary -sha256 -hmac "$SECRET" | b64url)
TOKEN="$head.$claims.$sig"
URL="http://$ADDR/connection/uni_http_stream"

curl -s -N --max-time 3 -X POST "$URL" -d '{"token": "'"$TOKEN"'"}' >"$out" &
curl_pid=$!
# Publish once the stream is open: its first line is there.
for _ in $(seq 50); do [[ -s "$out" ]] && break; sleep 0.1; done
publish '#user12' '{"input":"hello"}'
wait "$curl_pid"

check "uni_http_stream: the first line is the connect result with the personal channel" yes \
    "$(head -1 "$out" | jq -e '.connect.client and .connect.subs["#user12"]' >/dev/null && echo yes)"
check "uni_http_stream: the publication comes as a push of #user12" '{"input":"hello"}' \
    "$(jq -c 'select(.pub) | select(.channel == "#user12") | .pub.data' "$out")"
check "uni_http_stream: pings are null lines" yes "$(grep -qx 'null' "$out" && echo yes)"

code=$(curl -s -o "$out" -w '%{http_code}' -X POST "$URL" -d '{"token": ')
check "uni_http_stream: a body that is not JSON is refused with 400" 400 "$code"
code=$(curl -s -o "$out" -w '%{http_code}' -X POST "$URL" -d "{\"token\": \"$(head -c 2000 /dev/zero | tr '\0' x)\"}")
check "uni_http_stream: a body over max_request_body_size is refused with 413" 413 "$code"
code=$(curl -s -o "$out" -w '%{http_code}' -X POST "$URL" -d '{"token": "nope"}')
check "uni_http_stream: a bad token is refused with 401" 401 "$code"
exit $((FAILED > 0))
