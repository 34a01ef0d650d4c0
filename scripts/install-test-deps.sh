#!/usr/bin/env bash
# Install the tools the test suites need. Idempotent; does nothing (quickly) when
# everything is already in place.
#
#   scripts/install-test-deps.sh              # every section
#   scripts/install-test-deps.sh browser      # only the named section(s)
#
# Sections (run in this order):
#   browser   Debian's chromium (/usr/bin/chromium) + `npm ci` in tests/browser
#   hub       the real clients of the hub's protocols: Debian's chromium, `npm ci` in
#             tests/hub (centrifuge-js, pusher-js, the Pusher Node SDK, ws, playwright-core) and a
#             virtualenv in tests/hub/python/.venv with centrifuge-python, cent and the
#             Pusher SDK from PyPI (tests/hub/python/requirements.txt);
#             Debian's curl, jq and openssl for the shell tests (tests/hub/shell)
#   proxies   Debian's tinyproxy (HTTP CONNECT), microsocks (SOCKS5) and nginx (a real
#             HTTP server's redirects), for crates/volley/tests/{proxy,proxy_env,redirects}.rs
#   terminal  Debian's tmux, for crates/volley-cli/tests/connect.rs
#   redis     Debian's redis-server and redis-tools (redis-cli), for the tests of the Redis
#             broker (crates/volley-hub/tests/redis.rs; tests/hub/cluster.test.mjs,
#             tests/hub/redis_cluster.test.mjs, tests/hub/chat_cluster.test.mjs,
#             tests/hub/python/test_cluster_python.py):
#             each test starts its own redis-server processes on free loopback ports
#   bench     `npm ci` in bench/peers (socket.io): the Socket.IO row of bench/peers.py,
#             which bench/smoke.sh runs (Sockudo, its other peer, is not installed here:
#             bench/install-peers.sh builds it, and the smoke run skips its row)
#
# To add a section: write an `install_<name>` function below and append <name> to
# SECTIONS. Use `apt_install` for Debian packages (it runs `apt-get update` at most
# once per invocation).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECTIONS=(browser hub proxies terminal redis bench)

log() { printf '[install-test-deps] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- helpers -------------------------------------------------------------------

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || die "not root and no sudo: cannot install Debian packages"
  SUDO=(sudo)
fi

APT_UPDATED=0
apt_install() {
  if [[ $APT_UPDATED -eq 0 ]]; then
    log "apt-get update"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
    APT_UPDATED=1
  fi
  log "apt-get install -y $*"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}

# `npm ci` in $1 unless node_modules was installed from exactly the current
# package.json + package-lock.json (recorded in node_modules/.deps-stamp).
npm_ci_if_stale() {
  local dir="$1" stamp want
  command -v npm >/dev/null || die "npm not found (node >= 20 and npm are required)"
  [[ -f "$dir/package-lock.json" ]] || die "$dir/package-lock.json is missing"
  stamp="$dir/node_modules/.deps-stamp"
  want="$(cat "$dir/package.json" "$dir/package-lock.json" | sha256sum | cut -d' ' -f1) node-$(node --version)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    log "${dir#"$ROOT"/}/node_modules is up to date"
    return
  fi
  log "npm ci in ${dir#"$ROOT"/}"
  (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --ignore-scripts --no-audit --no-fund)
  printf '%s\n' "$want" >"$stamp"
}

# --- sections ------------------------------------------------------------------

chromium() {
  if [[ -x /usr/bin/chromium ]]; then
    log "chromium present: /usr/bin/chromium"
  else
    apt_install chromium
    [[ -x /usr/bin/chromium ]] || die "apt-get installed chromium but /usr/bin/chromium is missing"
  fi
}

install_browser() {
  chromium
  # playwright-core only drives the browser above; it never downloads one.
  npm_ci_if_stale "$ROOT/tests/browser"
}

install_hub() {
  # The chat demo's test runs in Debian's Chromium, as the browser tests do.
  chromium
  # tests/hub/shell: a reader with curl, its answers read with jq, a token signed
  # with openssl.
  local tools=() t
  for t in curl jq openssl; do command -v "$t" >/dev/null || tools+=("$t"); done
  if [[ ${#tools[@]} -gt 0 ]]; then
    apt_install "${tools[@]}"
  fi
  npm_ci_if_stale "$ROOT/tests/hub"
  local venv="$ROOT/tests/hub/python/.venv" req="$ROOT/tests/hub/python/requirements.txt" stamp want
  command -v python3 >/dev/null || die "python3 not found (3.9 or later is required)"
  want="$(sha256sum "$req" | cut -d' ' -f1) $(python3 --version)"
  stamp="$venv/.deps-stamp"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    log "tests/hub/python/.venv is up to date"
    return
  fi
  log "virtualenv tests/hub/python/.venv: pip install -r requirements.txt"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  printf '%s\n' "$want" >"$stamp"
}

install_bench() {
  npm_ci_if_stale "$ROOT/bench/peers"
}

install_proxies() {
  # The servers that crates/volley/tests/{proxy,proxy_env,redirects}.rs start on
  # loopback. Debian installs the binaries under /usr/bin or /usr/sbin; the tests look
  # them up on PATH, then in /usr/bin and /usr/sbin. The tinyproxy and nginx packages
  # also enable a system service: the tests never use it (they run their own instance
  # in the foreground on a free port, with their own configuration).
  local missing=() pkg bin
  for pkg in tinyproxy microsocks nginx; do
    bin="$pkg"
    if command -v "$bin" >/dev/null || [[ -x /usr/bin/$bin || -x /usr/sbin/$bin ]]; then
      log "$pkg present"
    else
      missing+=("$pkg")
    fi
  done
  if [[ ${#missing[@]} -gt 0 ]]; then
    apt_install "${missing[@]}"
    for bin in "${missing[@]}"; do
      command -v "$bin" >/dev/null || [[ -x /usr/bin/$bin || -x /usr/sbin/$bin ]] ||
        die "apt-get installed $bin but the binary is not on PATH, /usr/bin or /usr/sbin"
    done
  fi
}

install_terminal() {
  # tmux: crates/volley-cli/tests/connect.rs types into `volley connect` in a real
  # terminal and reads the screen back.
  if command -v tmux >/dev/null; then
    log "tmux present"
  else
    apt_install tmux
    command -v tmux >/dev/null || die "apt-get installed tmux but it is not on PATH"
  fi
}

install_redis() {
  # The Redis broker's tests run their own redis-server processes (single instances and
  # a Redis Cluster) and join the cluster with redis-cli. The package also enables a
  # system service on port 6379: the tests never use it.
  if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
    log "redis-server and redis-cli present"
    return
  fi
  apt_install redis-server redis-tools
  command -v redis-server >/dev/null || die "apt-get installed redis-server but it is not on PATH"
  command -v redis-cli >/dev/null || die "apt-get installed redis-tools but redis-cli is not on PATH"
}

# --- main ----------------------------------------------------------------------

if [[ $# -gt 0 ]]; then
  wanted=("$@")
else
  wanted=("${SECTIONS[@]}")
fi
for section in "${wanted[@]}"; do
  declare -F "install_$section" >/dev/null || die "unknown section '$section' (known: ${SECTIONS[*]})"
done
for section in "${wanted[@]}"; do
  "install_$section"
done
log "done"
