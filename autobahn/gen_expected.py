#!/usr/bin/env python
# Regenerates autobahn/expected/{server,client}.json from the installed
# Autobahn|Testsuite's own case list. Needs the suite's Python 2.7 venv:
#
#   autobahn/.tools/venv/bin/python autobahn/gen_expected.py [--role server|client|all]
#                                                             [--include-deflate]
#
# Case selection follows "cases" / "exclude-cases" of the role's spec file
# (fuzzingclient.json for the server role, fuzzingserver.json for the client
# role). --include-deflate additionally drops the 12.* / 13.* (permessage-deflate)
# exclusions. Every selected case is expected OK/OK except the entries in
# OVERRIDES (values observed with the suite's own testee server and client).
from __future__ import print_function

import argparse
import json
import os
import sys

try:
    from autobahntestsuite.case import (Cases, CaseSetname, CaseBasename,
                                        CaseCategories, CaseSubCategories)
    from autobahntestsuite.caseset import CaseSet
except ImportError:
    sys.exit("gen_expected.py: cannot import autobahntestsuite; run it with "
             "autobahn/.tools/venv/bin/python (autobahn/run.sh installs it)")

HERE = os.path.dirname(os.path.abspath(__file__))

SPECS = {"server": "fuzzingclient.json", "client": "fuzzingserver.json"}
DEFLATE_PATTERNS = ("12.*", "13.*")

# Cases the suite never grades OK; behaviorClose is what the suite reports.
OVERRIDES = {
    "7.1.6": {"behavior": "INFORMATIONAL", "behaviorClose": "INFORMATIONAL"},
    "7.13.1": {"behavior": "INFORMATIONAL", "behaviorClose": "INFORMATIONAL"},
    "7.13.2": {"behavior": "INFORMATIONAL", "behaviorClose": "INFORMATIONAL"},
}


def case_ids(spec, include_deflate):
    cs = CaseSet(CaseSetname, CaseBasename, Cases, CaseCategories, CaseSubCategories)
    sel = {"cases": spec.get("cases", ["*"]),
           "exclude-cases": list(spec.get("exclude-cases", []))}
    if include_deflate:
        sel["exclude-cases"] = [p for p in sel["exclude-cases"]
                                if p not in DEFLATE_PATTERNS]
    if spec.get("exclude-agent-cases"):
        sys.exit("gen_expected.py: exclude-agent-cases is not supported here")
    return cs.parseSpecCases(sel)  # already in natural order


def natural_key(case_id):
    return tuple(int(x) for x in case_id.split("."))


def write_expected(path, ids):
    lines = []
    for cid in sorted(ids, key=natural_key):
        exp = OVERRIDES.get(cid, {"behavior": "OK", "behaviorClose": "OK"})
        lines.append('  "%s": {"behavior": "%s", "behaviorClose": "%s"}'
                     % (cid, exp["behavior"], exp["behaviorClose"]))
    with open(path, "w") as f:
        f.write("{\n" + ",\n".join(lines) + "\n}\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--role", choices=["server", "client", "all"], default="all")
    ap.add_argument("--include-deflate", action="store_true",
                    help="include groups 12.* and 13.* even if the spec excludes them")
    ap.add_argument("--outdir", default=os.path.join(HERE, "expected"))
    args = ap.parse_args()

    roles = ["server", "client"] if args.role == "all" else [args.role]
    if not os.path.isdir(args.outdir):
        os.makedirs(args.outdir)
    for role in roles:
        with open(os.path.join(HERE, SPECS[role])) as f:
            spec = json.load(f)
        ids = case_ids(spec, args.include_deflate)
        out = os.path.join(args.outdir, role + ".json")
        write_expected(out, ids)
        groups = {}
        for cid in ids:
            g = cid.split(".")[0]
            groups[g] = groups.get(g, 0) + 1
        print("%s: %d cases -> %s (per group: %s)" % (
            role, len(ids), os.path.relpath(out),
            ", ".join("%s:%d" % (g, groups[g]) for g in sorted(groups, key=int))))


if __name__ == "__main__":
    main()
