#!/usr/bin/env bash
# Checks what can be checked of the minimum supported Rust version (the workspace's
# `rust-version`) without that toolchain:
# - no package in the workspace's resolved dependency graph (every feature, every
#   target platform, dev-dependencies included) declares a `rust-version` above it;
# - the code itself is checked by clippy's `incompatible_msrv` lint, which reads
#   `rust-version` and refuses std APIs stabilized after it (the clippy runs of
#   `.ci/run`). Not checked: language features and compiler behaviour newer than the
#   MSRV; only building with that toolchain would catch those.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo metadata --format-version 1 --all-features --locked | python3 -c '
import json, sys

def version(s):
    parts = [int(x) for x in s.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))

meta = json.load(sys.stdin)
members = set(meta["workspace_members"])
in_graph = {node["id"] for node in meta["resolve"]["nodes"]}
packages = [p for p in meta["packages"] if p["id"] in in_graph]
# Every member declares the same one (clippy lints only the code of those that do).
msrvs = {p.get("rust_version") for p in packages if p["id"] in members}
if len(msrvs) != 1 or None in msrvs:
    sys.exit(f"msrv: every workspace member should declare the same rust-version, found {msrvs}")
msrv = msrvs.pop()
above = sorted(
    "%s %s needs Rust %s" % (p["name"], p["version"], p["rust_version"])
    for p in packages
    if p.get("rust_version") and version(p["rust_version"]) > version(msrv)
)
if above:
    sys.exit(f"msrv: dependencies above rust-version {msrv}:\n  " + "\n  ".join(above))
print(f"msrv: {len(packages)} packages, none declares a rust-version above {msrv}")
'
