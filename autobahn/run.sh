#!/usr/bin/env bash
# Runs the Autobahn|Testsuite against Volley and compares with autobahn/expected/.
#
#   autobahn/run.sh [server|client|all]        (default: all)
#
# server: wstest -m fuzzingclient (autobahn/fuzzingclient.json) against the
#         Volley echo server on 127.0.0.1:9001.
# client: wstest -m fuzzingserver (autobahn/fuzzingserver.json) on 127.0.0.1:9002,
#         driven by Volley's autobahn-client example.
#
# Environment:
#   VOLLEY_AUTOBAHN_SERVER_CMD  command (bash -c) for the server under test
#   VOLLEY_AUTOBAHN_CLIENT_CMD  command (bash -c) for the client under test
#   SKIP_BUILD=1                do not run cargo build
#   AUTOBAHN_TIMEOUT            seconds allowed per role for the test run (default 1200)
#   PYTHON2                     Python 2.7 interpreter used to create autobahn/.tools/venv
#
# The suite is installed (once, cached) into autobahn/.tools/; reports and logs
# go to autobahn/reports/. Exit status is non-zero if any role differs from the
# expected results.
set -euo pipefail
export PIP_NO_PYTHON_VERSION_WARNING=1

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

ROLE=${1:-all}
case $ROLE in
  server|client|all) ;;
  *) echo "usage: autobahn/run.sh [server|client|all]" >&2; exit 2 ;;
esac
if [[ $# -gt 1 ]]; then
  echo "usage: autobahn/run.sh [server|client|all]" >&2; exit 2
fi

SERVER_PORT=9001   # must match autobahn/fuzzingclient.json
CLIENT_PORT=9002   # must match autobahn/fuzzingserver.json
AGENT=volley
ROLE_TIMEOUT=${AUTOBAHN_TIMEOUT:-1200}
STARTUP_TIMEOUT=30

TOOLS=autobahn/.tools
VENV=$TOOLS/venv
WSTEST=$VENV/bin/wstest
REPORTS=autobahn/reports
LOGS=$REPORTS/logs

# Pinned suite and dependency versions (the expected results depend on them).
VIRTUALENV_REQ='virtualenv==20.15.1'
SUITE_REQ='autobahntestsuite==25.10.1'
CONSTRAINTS='attrs==21.4.0
autobahn==0.10.9
autobahntestsuite==25.10.1
Automat==22.10.0
cffi==1.15.1
constantly==15.1.0
cryptography==3.3.2
enum34==1.1.10
hyperlink==21.0.0
idna==2.10
incremental==16.10.1
ipaddress==1.0.23
Jinja2==2.11.3
klein==17.10.0
linecache2==1.0.0
MarkupSafe==1.1.1
pyasn1==0.5.1
pyasn1-modules==0.3.0
pycparser==2.21
PyHamcrest==1.10.1
pyOpenSSL==19.1.0
service-identity==18.1.0
six==1.16.0
traceback2==1.4.0
Twisted==19.10.0
txaio==2.1.0
typing==3.10.0.0
ujson==2.0.3
unittest2==1.1.0
Werkzeug==1.0.1
wsaccel==0.6.6
zope.interface==4.6.0'
INSTALL_STAMP="$VIRTUALENV_REQ $SUITE_REQ $(printf '%s' "$CONSTRAINTS" | cksum)"

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
q() { printf '%q' "$1"; }
SERVER_CMD=${VOLLEY_AUTOBAHN_SERVER_CMD:-"$(q "$TARGET_DIR/release/volley") echo --listen 127.0.0.1:$SERVER_PORT"}
CLIENT_CMD=${VOLLEY_AUTOBAHN_CLIENT_CMD:-"$(q "$TARGET_DIR/release/examples/autobahn-client") ws://127.0.0.1:$CLIENT_PORT"}

say() { printf '==> %s\n' "$*"; }
die() { printf 'autobahn/run.sh: error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- processes
# Background jobs get their own process group (set -m), so a whole group can
# be killed; the EXIT trap kills whatever is still running.
BG_PIDS=()

start_bg() { # LOGFILE CMD... ; sets BG_PID
  local log=$1; shift
  set -m
  "$@" >"$log" 2>&1 </dev/null &
  BG_PID=$!
  set +m
  BG_PIDS+=("$BG_PID")
}

stop_bg() { # PID
  local pid=$1 i
  kill -TERM -- "-$pid" 2>/dev/null || true
  for i in $(seq 50); do
    kill -0 -- "-$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local keep=() p
  for p in "${BG_PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
  BG_PIDS=("${keep[@]+"${keep[@]}"}")
}

cleanup() {
  local pid
  for pid in "${BG_PIDS[@]+"${BG_PIDS[@]}"}"; do stop_bg "$pid"; done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # PORT PID WHAT
  local port=$1 pid=$2 what=$3 deadline=$((SECONDS + STARTUP_TIMEOUT))
  until port_open "$port"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$what exited before listening on port $port" >&2; return 1
    fi
    if ((SECONDS >= deadline)); then
      echo "$what not listening on port $port after ${STARTUP_TIMEOUT}s" >&2; return 1
    fi
    sleep 0.1
  done
}

show_log() { # FILE
  echo "--- last lines of $1:" >&2
  tail -n 20 "$1" >&2 || true
}

# ---------------------------------------------------------------- install
find_python2() {
  local c cands=()
  if [[ -n ${PYTHON2:-} ]]; then
    cands=("$PYTHON2")
  else
    local proot=
    if command -v pyenv >/dev/null 2>&1; then proot=$(pyenv root 2>/dev/null || true); fi
    [[ -n $proot ]] || proot=${PYENV_ROOT:-$HOME/.pyenv}
    for c in $(ls -d "$proot"/versions/2.7* 2>/dev/null | sort -rV); do
      cands+=("$c/bin/python")
    done
    for c in python2.7 python2; do
      if command -v "$c" >/dev/null 2>&1; then cands+=("$(command -v "$c")"); fi
    done
  fi
  for c in "${cands[@]+"${cands[@]}"}"; do
    if [[ -x $c ]] && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' 2>/dev/null; then
      echo "$c"; return 0
    fi
  done
  return 1
}

tools_ok() {
  [[ -f $VENV/.volley-install-stamp ]] &&
    [[ $(cat "$VENV/.volley-install-stamp") == "$INSTALL_STAMP" ]] &&
    "$WSTEST" -a 2>/dev/null | grep -qx "AutobahnTestSuite ${SUITE_REQ#*==}"
}

install_tools() {
  if tools_ok; then
    say "Autobahn|Testsuite already installed in $TOOLS"
    return
  fi
  local py2
  py2=$(find_python2) || die "Python 2.7 not found (Autobahn|Testsuite needs it).
  Looked in \$(pyenv root)/versions/2.7*, python2.7 and python2 on PATH.
  Install one (e.g. 'pyenv install 2.7.18') or set PYTHON2=/path/to/python2.7."
  say "installing Autobahn|Testsuite into $TOOLS using $py2"
  "$py2" -m pip --version >/dev/null 2>&1 || die "$py2 has no pip module"
  rm -rf "$VENV" "$TOOLS/virtualenv-pkg"
  mkdir -p "$TOOLS"
  # virtualenv goes into a private directory: the interpreter's own
  # site-packages is never modified.
  "$py2" -m pip install --disable-pip-version-check --no-warn-script-location -q \
    --target "$TOOLS/virtualenv-pkg" "$VIRTUALENV_REQ"
  PYTHONPATH="$TOOLS/virtualenv-pkg" "$py2" -m virtualenv -q --no-periodic-update \
    --app-data "$TOOLS/app-data" "$VENV"
  printf '%s\n' "$CONSTRAINTS" >"$TOOLS/constraints.txt"
  "$VENV/bin/pip" install --disable-pip-version-check -q \
    -c "$TOOLS/constraints.txt" "$SUITE_REQ"
  printf '%s' "$INSTALL_STAMP" >"$VENV/.volley-install-stamp"
  tools_ok || die "Autobahn|Testsuite installed but '$WSTEST -a' does not work"
  "$WSTEST" -a | sed 's/^/    /'
}

# ---------------------------------------------------------------- roles
compare() { # ROLE
  python3 autobahn/compare.py "$1" "$REPORTS/$1/index.json" "autobahn/expected/$1.json" --agent "$AGENT"
}

run_server_role() {
  local ok=1 rc=0 sut fuzz
  rm -rf "${REPORTS:?}/server"
  say "server role: server under test: $SERVER_CMD"
  if port_open "$SERVER_PORT"; then
    echo "port $SERVER_PORT is already in use" >&2; ok=0
  else
    start_bg "$LOGS/server-sut.log" bash -c "$SERVER_CMD"; sut=$BG_PID
    if ! wait_port "$SERVER_PORT" "$sut" "server under test"; then
      show_log "$LOGS/server-sut.log"; ok=0
    else
      say "server role: wstest -m fuzzingclient (timeout ${ROLE_TIMEOUT}s)"
      local t0=$SECONDS
      start_bg "$LOGS/server-wstest.log" timeout -k 10 "$ROLE_TIMEOUT" \
        "$WSTEST" -m fuzzingclient -s autobahn/fuzzingclient.json
      fuzz=$BG_PID
      wait "$fuzz" || rc=$?
      stop_bg "$fuzz"
      say "server role: wstest finished in $((SECONDS - t0))s (exit $rc)"
      if ((rc == 124 || rc == 137)); then
        echo "wstest fuzzingclient timed out after ${ROLE_TIMEOUT}s" >&2; ok=0
      elif ((rc != 0)); then
        show_log "$LOGS/server-wstest.log"; ok=0
      fi
      if ! kill -0 "$sut" 2>/dev/null; then
        echo "server under test exited during the run" >&2
        show_log "$LOGS/server-sut.log"; ok=0
      fi
    fi
    stop_bg "$sut"
  fi
  compare server || ok=0
  ((ok))
}

run_client_role() {
  local ok=1 rc=0 fuzz cli
  rm -rf "${REPORTS:?}/client"
  say "client role: client under test: $CLIENT_CMD"
  if port_open "$CLIENT_PORT"; then
    echo "port $CLIENT_PORT is already in use" >&2; ok=0
  else
    start_bg "$LOGS/client-wstest.log" "$WSTEST" -m fuzzingserver -s autobahn/fuzzingserver.json -u 0
    fuzz=$BG_PID
    if ! wait_port "$CLIENT_PORT" "$fuzz" "wstest fuzzingserver"; then
      show_log "$LOGS/client-wstest.log"; ok=0
    else
      say "client role: running client under test (timeout ${ROLE_TIMEOUT}s)"
      local t0=$SECONDS
      start_bg "$LOGS/client-cut.log" timeout -k 10 "$ROLE_TIMEOUT" bash -c "$CLIENT_CMD"
      cli=$BG_PID
      wait "$cli" || rc=$?
      stop_bg "$cli"
      say "client role: client finished in $((SECONDS - t0))s (exit $rc)"
      if ((rc == 124 || rc == 137)); then
        echo "client under test timed out after ${ROLE_TIMEOUT}s" >&2; ok=0
      elif ((rc != 0)); then
        echo "client under test exited with status $rc" >&2
        show_log "$LOGS/client-cut.log"; ok=0
      fi
      if ! kill -0 "$fuzz" 2>/dev/null; then
        echo "wstest fuzzingserver exited during the run" >&2
        show_log "$LOGS/client-wstest.log"; ok=0
      fi
    fi
    stop_bg "$fuzz"
  fi
  compare client || ok=0
  ((ok))
}

# ---------------------------------------------------------------- main
command -v python3 >/dev/null 2>&1 || die "python3 not found (needed by autobahn/compare.py)"
command -v timeout >/dev/null 2>&1 || die "timeout (coreutils) not found"

install_tools

roles=()
[[ $ROLE == client ]] || roles+=(server)
[[ $ROLE == server ]] || roles+=(client)

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  for r in "${roles[@]}"; do
    case $r in
      server) say "cargo build --release -p volley-cli"
              cargo build --release -p volley-cli ;;
      client) say "cargo build --release -p volley --example autobahn-client"
              cargo build --release -p volley --example autobahn-client ;;
    esac
  done
fi

mkdir -p "$LOGS"
status=0
for r in "${roles[@]}"; do
  "run_${r}_role" || status=1
done
exit "$status"
