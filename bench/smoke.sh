#!/usr/bin/env bash
# Benchmark harness smoke test, for CI: runs bench/run.py --quick (it builds the bench
# workspace and the volley binary in release mode first), every server through every
# workload once with tiny counts and sub-second runs, then bench/hub.py --quick (the
# hub's cases, a few hundred clients each, and 20 readers over each transport, on the
# binary just built), then bench/cluster.py --quick (hub nodes on the memory broker, on
# one redis-server and on a three-master Redis Cluster, 200 clients each), then
# bench/peers.py --quick (the hub over Centrifugo's and Pusher's protocols and the
# Socket.IO server, a few hundred clients each; Sockudo's row is left to full runs, as
# it needs bench/install-peers.sh), into a temporary directory, so docs/BENCHMARKS.md,
# docs/HUB-BENCHMARKS.md, docs/CLUSTER-BENCHMARKS.md and docs/PEER-BENCHMARKS.md are
# left alone. No timing
# is asserted. Exits non-zero if a server failed to start or a run produced no report
# (the scripts' exit status), or if a report was not written.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

echo "==> cargo test --release --manifest-path bench/Cargo.toml"
cargo test --release --manifest-path bench/Cargo.toml
start=$(date +%s)
python3 bench/run.py --quick --out "$OUT"
test -s "$OUT/BENCHMARKS.md"
test -s "$OUT/bench/results.json"
echo "benchmark harness smoke: every server ran every workload ($(($(date +%s) - start)) s)"
start=$(date +%s)
python3 bench/hub.py --quick --no-build --out "$OUT/hub"
test -s "$OUT/hub/HUB-BENCHMARKS.md"
test -s "$OUT/hub/bench/hub-results.json"
echo "benchmark harness smoke: the hub ran every case ($(($(date +%s) - start)) s)"
start=$(date +%s)
python3 bench/cluster.py --quick --no-build --out "$OUT/cluster"
test -s "$OUT/cluster/CLUSTER-BENCHMARKS.md"
test -s "$OUT/cluster/bench/cluster-results.json"
echo "benchmark harness smoke: the hub ran on every broker setup ($(($(date +%s) - start)) s)"
start=$(date +%s)
python3 bench/peers.py --quick --no-build --servers volley-centrifugo,volley-pusher,socketio --out "$OUT/peers"
test -s "$OUT/peers/PEER-BENCHMARKS.md"
test -s "$OUT/peers/bench/peer-results.json"
echo "benchmark harness smoke: the hub and its peers ran every case ($(($(date +%s) - start)) s)"
