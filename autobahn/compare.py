#!/usr/bin/env python3
# Compares an Autobahn|Testsuite report (index.json) with the committed
# expectations (case id -> {"behavior", "behaviorClose"}).
#
#   python3 autobahn/compare.py ROLE REPORT_INDEX_JSON EXPECTED_JSON [--agent volley]
#
# Prints every difference, then exactly one summary line for the role.
# Exit status: 0 = matches expected, 1 = differences (or missing report).
import argparse
import json
import os
import sys

COUNTED = ["OK", "INFORMATIONAL", "NON-STRICT", "UNIMPLEMENTED", "FAILED"]


def natural_key(case_id):
    try:
        return (0, tuple(int(x) for x in case_id.split(".")))
    except ValueError:
        return (1, case_id)


def summary(role, results, tail):
    counts = {}
    for r in results.values():
        b = r.get("behavior")
        counts[b] = counts.get(b, 0) + 1
    parts = ["%d %s" % (counts.get(b, 0), b) for b in COUNTED]
    parts += ["%d %s" % (n, b) for b, n in sorted(counts.items(), key=lambda kv: str(kv[0]))
              if b not in COUNTED]
    return "autobahn %s: %d cases, %s; %s" % (role, len(results), ", ".join(parts), tail)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("role")
    ap.add_argument("report", help="report index.json")
    ap.add_argument("expected", help="expected JSON (case id -> behavior/behaviorClose)")
    ap.add_argument("--agent", default="volley")
    args = ap.parse_args()

    with open(args.expected) as f:
        expected = json.load(f)

    try:
        with open(args.report) as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        print("[%s] cannot read report %s: %s" % (args.role, args.report, e))
        print(summary(args.role, {}, "no report; %d differences from expected" % len(expected)))
        return 1

    if args.agent not in index:
        print("[%s] agent %r not in report %s (agents: %s)"
              % (args.role, args.agent, args.report, ", ".join(sorted(index)) or "none"))
        print(summary(args.role, {}, "no results for agent; %d differences from expected"
                      % len(expected)))
        return 1
    results = index[args.agent]
    report_dir = os.path.dirname(args.report)

    diffs = []
    for cid in sorted(set(expected) | set(results), key=natural_key):
        exp, got = expected.get(cid), results.get(cid)
        if got is None:
            diffs.append("  %-8s missing from report (expected %s/%s)"
                         % (cid, exp["behavior"], exp["behaviorClose"]))
            continue
        where = os.path.join(report_dir, got.get("reportfile", ""))
        if exp is None:
            diffs.append("  %-8s extra case in report: %s/%s (%s)"
                         % (cid, got.get("behavior"), got.get("behaviorClose"), where))
            continue
        bad = [k for k in ("behavior", "behaviorClose") if got.get(k) != exp[k]]
        if bad:
            diffs.append("  %-8s %s (remoteCloseCode %s; %s)" % (
                cid,
                ", ".join("%s %s, expected %s" % (k, got.get(k), exp[k]) for k in bad),
                got.get("remoteCloseCode"), where))

    if diffs:
        print("[%s] differences from %s:" % (args.role, args.expected))
        print("\n".join(diffs))
        tail = "%d differences from expected" % len(diffs)
    else:
        tail = "matches expected"
    print(summary(args.role, results, tail))
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
