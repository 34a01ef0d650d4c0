#!/usr/bin/env python3
"""The hub's multi-node benchmark: `volley serve` nodes sharing a Redis broker, loaded by
one `volley bench-hub` that spreads its clients and its server API connections over
them (client N on node N modulo the nodes, API connection J through node J modulo the
nodes, so that publications enter through every node).

Builds the `volley` binary in release mode, then for each setup starts what it needs,
runs the cases, and stops it:

  memory-1   one node on the memory broker (bench/hub.py's configuration), for comparison
  redis-1    one node on the Redis broker, one redis-server
  redis-2    two nodes, one redis-server
  redis-3    three nodes, one redis-server
  cluster-3  three nodes on a three-master Redis Cluster (sharded pub/sub)

Cases (100-byte publications through the server API at rising rates, bench/hub.py's
fan-out rates; a series stops after a step whose p99 passes --max-p99, that delivers
under 90% of what it owes, or whose publications fall under 90% of the rate asked):

  one    10,000 clients on one channel, spread over the nodes
  many   10,000 clients, a channel each (`broadcast` of 100 channels per call, then one
         `publish` per publication)

Pinning, on a machine of two cores: the hub nodes and the redis-server processes share
--server-core (0), the generator has --client-core (1) to itself. Every figure of CPU
is read from /proc over each step's measured phase: each node's (`--server-pid`) and
each redis-server's (`--broker-pid`). Writes docs/CLUSTER-BENCHMARKS.md and
docs/bench/cluster-results.json (or --out DIR). Python 3 standard library only; Linux
only (taskset, /proc); needs Debian's redis-server and redis-cli.

    python3 bench/cluster.py                    # every setup and case (about 8 minutes)
    python3 bench/cluster.py --quick --out DIR  # tiny counts, seconds: the CI smoke
    python3 bench/cluster.py --only redis-2,cluster-3 --cases one --no-build --out DIR

Exit status: 0 when every run produced its report, 1 otherwise.
"""

import argparse
import datetime
import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hub  # noqa: E402  (bench/hub.py: the hub, its configuration, report helpers)
import run as lib  # noqa: E402  (bench/run.py: process, machine and format helpers)

ROOT = lib.ROOT
# name: (broker, nodes)
SETUPS = {
    "memory-1": ("memory", 1),
    "redis-1": ("redis", 1),
    "redis-2": ("redis", 2),
    "redis-3": ("redis", 3),
    "cluster-3": ("cluster", 3),
}
CASES = ["one", "many"]
CLUSTER_MASTERS = 3
# A core this busy or more bounds the step.
FULL = 0.85
# The INFO stats read from each redis-server before and after a run.
REDIS_STATS = ["total_commands_processed", "total_net_input_bytes", "total_net_output_bytes"]

log = lib.log


def settings(args):
    """Case parameters: full size, or tiny with --quick."""
    q = args.quick
    return {
        "one": {"clients": 200 if q else 10000, "channels": 1,
                "rates": [5, 20] if q else [1, 10, 30, 100, 200, 400], "batches": [1]},
        "many": {"clients": 200 if q else 10000, "channels": None,
                 "rates": [200, 1000] if q else [3000, 10000, 30000, 100000, 200000],
                 "batches": [20, 1] if q else [100, 1]},
        # Memory per client is bench/hub.py's business: a short hold.
        "hold": 0.3 if q else 1.0,
        "burst": 2,
        "duration": 0.3 if q else args.duration,
        "warmup": 0.1 if q else args.warmup,
    }


def title(case, conf):
    n = conf[case]["clients"]
    return {"one": f"{n:,} clients on one channel", "many": f"{n:,} clients, a channel each"}[case]


def port_pair_free(port):
    """Whether `port` and its cluster bus port (+10000) are free on loopback."""
    for p in (port, port + 10000):
        if p > 65535:
            return False
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                return False
    return True


class Redis:
    """A redis-server on loopback without persistence, pinned to `core`; stopped with
    SIGTERM (then SIGKILL)."""

    def __init__(self, logdir, core, cluster=False):
        for _ in range(100):
            self.port = lib.free_port()
            if not cluster or port_pair_free(self.port):
                break
        self.dir = tempfile.mkdtemp(dir=logdir, prefix=f"redis-{self.port}-")
        cmd = ["taskset", "-c", str(core), "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
               "--save", "", "--appendonly", "no", "--dir", self.dir, "--logfile", "redis.log"]
        if cluster:
            cmd += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        self.pid = self.proc.pid  # taskset execs redis-server: same process
        deadline = time.monotonic() + 10
        while self.cli("ping") != "PONG":
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start: {tail}")
            time.sleep(0.02)
        self.url = f"redis://127.0.0.1:{self.port}"

    def cli(self, *args, timeout=10):
        try:
            p = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True,
                               timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return p.stdout.strip() if p.returncode == 0 else None

    def stats(self):
        """INFO stats figures of REDIS_STATS, or {}."""
        out = {}
        for line in (self.cli("info", "stats") or "").splitlines():
            k, _, v = line.strip().partition(":")
            if k in REDIS_STATS:
                try:
                    out[k] = int(v)
                except ValueError:
                    pass
        return out

    def log_tail(self):
        return hub.last_lines(os.path.join(self.dir, "redis.log"))

    def stop(self):
        hub.stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def create_cluster(redises):
    """`redis-cli --cluster create` over the masters, no replicas; waits for
    cluster_state:ok on each."""
    addrs = [f"127.0.0.1:{r.port}" for r in redises]
    p = subprocess.run(["redis-cli", "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
                       capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError(f"redis-cli --cluster create: {(p.stdout + p.stderr).strip().splitlines()[-1:]}")
    deadline = time.monotonic() + 30
    for r in redises:
        while "cluster_state:ok" not in (r.cli("cluster", "info") or ""):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not become ok (node {r.port})")
            time.sleep(0.05)


def broker_config(redises, cluster, prefix):
    """The configuration's broker section for these Redis addresses."""
    addresses = ", ".join(f'"{r.url}"' for r in redises)
    return f"""
[broker]
type = "redis"

[broker.redis]
addresses = [{addresses}]
prefix = "{prefix}"
{"cluster = true" if cluster else ""}
"""


def start_setup(args, volley, logdir, setup, secret, api_key):
    """Starts a setup's Redis (if any) and its nodes: (nodes, redises). Whatever started
    is stopped if a later part fails."""
    broker, count = SETUPS[setup]
    redises, nodes = [], []
    try:
        extra = ""
        if broker == "redis":
            redises.append(Redis(logdir, args.redis_core))
        elif broker == "cluster":
            for _ in range(CLUSTER_MASTERS):
                redises.append(Redis(logdir, args.redis_core, cluster=True))
            create_cluster(redises)
        if redises:
            extra = broker_config(redises, broker == "cluster", f"bench-{secrets.token_hex(4)}")
        for i in range(count):
            nodes.append(hub.Hub(volley, logdir, args.server_core, secret, api_key, name=f"{setup}-node{i}",
                                 extra_config=extra))
        return nodes, redises
    except Exception:
        stop_all(nodes, redises)
        raise


def stop_all(nodes, redises):
    for n in nodes:
        n.stop()
    for r in redises:
        r.stop()


def generator_cmd(args, volley, nodes, redises, secret, api_key, case, conf):
    cmd = ["taskset", "-c", str(args.client_core), volley, "bench-hub", *[n.url for n in nodes],
           "-c", str(case["clients"]), "--secret", secret, "--api-key", api_key, "--namespace", hub.NAMESPACE,
           "--json", "--no-progress", "--cores", "--hold", str(conf["hold"]), "--burst", str(conf["burst"]),
           "--max-p99", f"{args.max_p99:g}",
           "--rates", ",".join(f"{r:g}" for r in case["rates"]),
           "--batches", ",".join(str(b) for b in case["batches"]),
           "-d", str(conf["duration"]), "--warmup", str(conf["warmup"])]
    for n in nodes:
        cmd += ["--server-pid", str(n.pid)]
    for r in redises:
        cmd += ["--broker-pid", str(r.pid)]
    if case["channels"] is not None:
        cmd += ["--channels", str(case["channels"])]
    return cmd


def run_one(args, volley, logdir, secret, setup, case_name, conf):
    """One setup, one case: returns the run's record (report, error, Redis stats)."""
    case = conf[case_name]
    api_key = secrets.token_hex(16)
    rec = {"setup": setup, "case": case_name, "data": None, "error": None}
    try:
        nodes, redises = start_setup(args, volley, logdir, setup, secret, api_key)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        rec["error"] = f"could not start: {e}"
        return rec
    try:
        rec["nodes"] = [{"pid": n.pid, "port": n.port} for n in nodes]
        rec["redis"] = [{"pid": r.pid, "port": r.port, "before": r.stats()} for r in redises]
        cmd = generator_cmd(args, volley, nodes, redises, secret, api_key, case, conf)
        steps = len(case["rates"]) * len(case["batches"])
        timeout = 120 + case["clients"] / 500 + steps * (conf["duration"] + conf["warmup"] + 10)
        before = hub.OtherWork([n.pid for n in nodes] + [r.pid for r in redises])
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=lib.raise_nofile)
        except subprocess.TimeoutExpired:
            rec["error"] = f"timed out after {timeout:.0f} s"
            return rec
        rec["other_work"] = before.share()
        for r, saved in zip(redises, rec["redis"]):
            saved["after"] = r.stats()
        data = hub.last_json(p.stdout)
        if data is None:
            tail = " | ".join(p.stderr.strip().splitlines()[-3:])
            rec["error"] = f"exit {p.returncode}, no report: {tail}"
            return rec
        rec["data"] = data
        error = None if p.returncode == 0 else f"exit {p.returncode}"
        want = case["clients"]
        sub = (data.get("subscribe") or {}).get("subscribed", 0)
        if sub < want:
            error = error or f"only {sub} of {want} clients subscribed: " + str(
                data["connect"].get("first_error") or (data.get("subscribe") or {}).get("first_error"))
        complete = hub.get(data, "idle", "clients_complete") or 0
        if not error and complete < want:
            error = f"only {complete} of {want} clients received the whole burst"
        lost = sum(s.get("lost", 0) for s in data.get("fanout", []))
        api_errors = [s.get("first_api_error") for s in data.get("fanout", []) if s.get("api_errors")]
        if not error and api_errors:
            error = f"server API errors: {api_errors[0]}"
        if not error and data.get("errors"):
            error = f"{data['errors']} client(s) failed: {data.get('first_error')}"
        rec["lost"] = lost
        for n in nodes:
            if not error and not n.alive():
                error = f"node {n.port} exited: {n.stderr_tail()}"
        for r in redises:
            if not error and r.proc.poll() is not None:
                error = f"redis-server {r.port} exited: {r.log_tail()}"
        rec["error"] = error
        return rec
    finally:
        stop_all(nodes, redises)


# ---- the report -------------------------------------------------------------------------


def cpu_shares(step):
    """A step's CPU as shares of one core: (each node's, each redis-server's, the
    generator's)."""
    cost = step.get("cost") or {}
    window = cost.get("cpu_window_s") or cost.get("seconds") or 0
    if not window:
        return [], [], None
    nodes = cost.get("server_cpu_each_s") or ([cost["server_cpu_s"]] if cost.get("server_cpu_s") is not None else [])
    redis = cost.get("broker_cpu_each_s") or ([cost["broker_cpu_s"]] if cost.get("broker_cpu_s") is not None else [])
    gen = cost.get("generator_cpu_s")
    return [c / window for c in nodes], [c / window for c in redis], None if gen is None else gen / window


def pcts(values):
    return " + ".join(f"{v:.0%}" for v in values) if values else "–"


def core_busy(step, core):
    """How busy `core` was over a step (whatever ran on it), or None."""
    busy = (step.get("cost") or {}).get("cores_busy") or []
    return busy[core] if core < len(busy) else None


def other_on_core(step, args):
    """The share of the nodes' core that went to work other than this run's over a
    step: the core's business less the nodes' (and Redis's, when it shares the core)."""
    busy = core_busy(step, args.server_core)
    if busy is None:
        return None
    nodes, redis, _ = cpu_shares(step)
    ours = sum(nodes) + (sum(redis) if args.redis_core == args.server_core else 0)
    return max(0.0, busy - ours)


def bound(step, args):
    """What bounded a step, from the measured shares of the cores and the processes."""
    nodes, redis, gen = cpu_shares(step)
    if gen is None or not nodes:
        return "–"
    same_core = args.redis_core == args.server_core
    hubs, rds = sum(nodes), sum(redis)
    busy = core_busy(step, args.server_core)
    other = other_on_core(step, args)
    core = f"core {args.server_core}"
    split = f"nodes {hubs:.0%}" + (f", Redis {rds:.0%}" if redis and same_core else "") + (
        f", other work {other:.0%}" if other is not None and other >= 0.05 else "")
    if redis and max(redis) >= FULL:
        return f"Redis: a redis-server at {max(redis):.0%} of its one thread"
    ours = hubs + (rds if same_core else 0)
    if busy is not None and busy >= FULL and other is not None and other >= ours:
        return f"{core} full, most of it other work ({split})"
    if (busy if busy is not None else ours) >= FULL and ours >= gen:
        return f"{core} full ({split})"
    if gen >= FULL:
        return f"the generator's core ({gen:.0%}; {core} {split})"
    if step.get("publications_per_sec", 0) < 0.9 * step["rate"]:
        return (f"the server API's round trips: 16 calls in flight took {step['publications_per_sec']:,.0f}/s "
                f"({core}: {split}; generator {gen:.0%})")
    return f"neither core ({core}: {split}; generator {gen:.0%}): the rate asked"


def call_name(batch):
    return "publish" if batch == 1 else f"broadcast × {batch}"


def per_total(step):
    return step.get("deliveries_per_server_and_broker_cpu_s") or step.get("deliveries_per_server_cpu_s")


def best_step(steps):
    """The step with the most deliveries/s among those that kept up (that did not stop
    the series: p99 under --max-p99, the rate asked published, everything delivered)."""
    good = [s for s in steps if not s.get("stopped")]
    return max(good, key=lambda s: s["deliveries_per_sec"]) if good else None


def redis_traffic(rec):
    """(commands, bytes in, bytes out) over the run, summed over the redis-servers."""
    tot = [0, 0, 0]
    seen = False
    for r in rec.get("redis") or []:
        a, b = r.get("after") or {}, r.get("before") or {}
        for i, k in enumerate(REDIS_STATS):
            if k in a and k in b:
                tot[i] += a[k] - b[k]
                seen = True
    return tot if seen else None


def scaling_table(md, runs, case, args):
    """The setups side by side at the rates they all ran: deliveries per hub-CPU-s and
    per hub+Redis-CPU-s, and the p99."""
    by_setup = {r["setup"]: {(s["batch"], s["rate"]): s for s in r["data"].get("fanout", [])}
                for r in runs if r["case"] == case and r["setup"] in args.only_set}
    setups = [s for s in SETUPS if s in by_setup]
    if not setups:
        return
    keys = []
    for steps in by_setup.values():
        keys += [k for k in steps if k not in keys]
    md.append("At the same load, side by side: deliveries per hub-CPU-s / per hub+Redis-CPU-s, and the p99 "
              "(– where the series had stopped rising).\n")
    md.append("| API call | publications/s | " + " | ".join(setups) + " |")
    md.append("|---|---:|" + "---:|" * len(setups))
    for batch, rate in keys:
        cells = []
        for setup in setups:
            s = by_setup[setup].get((batch, rate))
            if s is None:
                cells.append("–")
                continue
            per = lib.fmt_num(s.get("deliveries_per_server_cpu_s"))
            if s.get("deliveries_per_server_and_broker_cpu_s"):
                per += f" / {lib.fmt_num(s['deliveries_per_server_and_broker_cpu_s'])}"
            cells.append(f"{per}; p99 {lib.fmt_us(hub.get(s, 'latency_us', 'p99'))}")
        md.append(f"| {call_name(batch)} | {rate:,.0f} | " + " | ".join(cells) + " |")
    md.append("")
    md.append("Every step:\n")


def findings(md, runs, args, conf):
    """Where it stops scaling, per case, from the figures: the most each setup kept up
    with, CPU per delivery at a load every setup kept up with, and Redis's share."""
    md.append("## Where it stops scaling\n")
    same_core = args.redis_core == args.server_core
    if same_core:
        md.append(f"Every node and every redis-server share core {args.server_core}: more nodes here cannot "
                  "add throughput, they divide one core's work. What the setups compare is the CPU a delivery "
                  "costs each way, and where a core fills first.\n")
    for case in CASES:
        recs = {r["setup"]: r for r in runs if r["case"] == case and r["setup"] in args.only_set}
        setups = [s for s in SETUPS if s in recs]
        if not setups:
            continue
        steps = {s: {(x["batch"], x["rate"]): x for x in recs[s]["data"].get("fanout", [])} for s in setups}
        kept = []
        for s in setups:
            b = best_step(list(steps[s].values()))
            kept.append(f"{s} {lib.fmt_num(b['deliveries_per_sec'])}/s ({call_name(b['batch'])})" if b else f"{s} none")
        lines = [f"**{title(case, conf)}.** The most deliveries/s that kept up: " + ", ".join(kept) + "."]
        for batch in sorted({k[0] for st in steps.values() for k in st}, reverse=True):
            common = [k for k in steps[setups[0]] if k[0] == batch and all(
                k in steps[s] and not steps[s][k].get("stopped") for s in setups)]
            if not common:
                continue
            key = max(common, key=lambda k: k[1])
            ref = per_total(steps[setups[0]][key])
            cells = []
            for s in setups:
                v = per_total(steps[s][key])
                rel = f" ({v / ref:.0%})" if ref and v and s != setups[0] else ""
                cells.append(f"{s} {lib.fmt_num(v)}{rel}")
            lines.append(f"At {key[1]:,.0f} publications/s by `{call_name(batch)}`, the most every setup kept up "
                         f"with, deliveries per hub+Redis-CPU-s: " + ", ".join(cells) + f" (of {setups[0]}).")
        shares = [(s, max((sum(cpu_shares(x)[1]) for x in steps[s].values()), default=0)) for s in setups]
        redis_top = max((v for _, v in shares), default=0)
        with_redis = [f"{s} {v:.0%}" for s, v in shares if SETUPS[s][0] != "memory"]
        if with_redis:
            lines.append("Redis's CPU at its busiest step, all redis-servers together, as a share of one core: "
                         + ", ".join(with_redis) + ".")
        if with_redis and redis_top < 0.1:
            lines.append("Redis is not what bounds it: each publication goes through Redis once and reaches each "
                         "node once, and each node writes it to its own subscribers, so the cost is the nodes' "
                         "fan-out, which fills the core.")
        elif with_redis:
            lines.append("Redis costs a share of every publication: each crosses Redis (the publish script, then "
                         "pub/sub to the node of its subscriber), and the node that takes the API call and the "
                         "node that delivers both work on it, so the core fills with the nodes' and Redis's work "
                         "together.")
            short = [s for s in setups if SETUPS[s][0] != "memory" and any(
                x["batch"] == 1 and "server API's round trips" in bound(x, args) for x in steps[s].values())]
            if short:
                lines.append("The `publish` series of " + ", ".join(short) + " stopped where the 16 server API "
                             "calls in flight, each waiting for its round trip through Redis, could not make the "
                             "rate asked before the core was full.")
        md.append(" ".join(lines) + "\n")


def write_report(args, results, facts, started, finished, out_dir, command):
    conf = settings(args)
    same_core = args.redis_core == args.server_core
    os.makedirs(os.path.join(out_dir, "bench"), exist_ok=True)
    md = ["# Multi-node benchmarks", "", "<!-- Generated by bench/cluster.py; do not edit by hand. -->", ""]
    md.append(f"Command: `{command}`\n")
    md.append(f"Run {started:%Y-%m-%d %H:%M} to {finished:%H:%M} UTC; fan-out steps {conf['duration']} s measured "
              f"after {conf['warmup']} s of warm-up.{' A --quick run: tiny counts, not figures.' if args.quick else ''}\n")
    md.append("## Machine\n")
    md.append(f"- CPU: {facts['cpu']}, {facts['nproc']} logical cores; memory {facts['memory']}")
    md.append(f"- Linux {facts['kernel']}; {facts['rustc']}; {facts.get('redis_version') or 'redis-server ?'}")
    md.append(f"- Volley at commit {facts['volley_commit']}")
    md.append(f"- The hub nodes (`volley serve`, each its multi-threaded runtime) pinned to core {args.server_core}, "
              f"the redis-server processes to core {args.redis_core}, the generator (`volley bench-hub`, one "
              f"thread) to core {args.client_core} (`taskset`): "
              + ("the nodes and Redis share one core, so the figures are CPU per delivery, not the throughput "
                 "a node per core would reach" if same_core else "Redis has a core apart from the nodes"))
    md.append(f"- Load average at the start {facts['load_start']}, at the end {facts['load_end']}; other work "
              f"during each run (CPU of both cores less this run's processes, as a share of one core) is in the "
              f"raw results (`other_work`), at most {max((r.get('other_work') or 0 for r in results['runs']), default=0):.0%} "
              f"here")
    md.append("")
    md.append("## Setups\n")
    md.append("| setup | broker | nodes |")
    md.append("|---|---|---:|")
    for name in SETUPS:
        if name in args.only_set:
            broker, n = SETUPS[name]
            what = {"memory": "memory (in the process)", "redis": "Redis: one redis-server",
                    "cluster": f"Redis Cluster: {CLUSTER_MASTERS} masters, no replicas, sharded pub/sub"}[broker]
            md.append(f"| {name} | {what} | {n} |")
    md.append("")
    md.append("Every node runs bench/hub.py's configuration (a token secret, a server API key, one namespace "
              "clients may subscribe to) with the broker added; the redis-server processes run without "
              "persistence (`--save \"\" --appendonly no`):\n")
    md.append("```toml\n[broker]\ntype = \"redis\"\n\n[broker.redis]\naddresses = [\"redis://127.0.0.1:PORT\"]  "
              "# the cluster: its three masters\nprefix = \"bench-RANDOM\"\n# cluster = true  "
              "# the cluster\n```\n")
    md.append("## How\n")
    md.append(f"""One `volley bench-hub` drives every node of a setup: client N connects to node N
modulo the nodes, and server API connection J (16 of them, one call in flight each)
publishes through node J modulo the nodes, so publications enter through every node
and, on the Redis broker, reach the other nodes through Redis (each node receives the
publications of the channels it has subscribers of). After the connects, the subscribes
and a burst of {conf['burst']} publications per channel, fan-out steps publish 100 B
payloads at rising rates, open loop; each delivery is timed from the publication's due
time to its arrival at a client. CPU time is read from /proc over each step's measured
phase for every node and every redis-server: **deliveries per hub-CPU-s** divides the
deliveries by the nodes' CPU time summed, **per hub+Redis-CPU-s** by the nodes' and
Redis's together. CPU columns are shares of one core over the measured phase; **core
{args.server_core} busy** is how busy that core was over it (/proc/stat), whatever ran there: what it
has beyond the nodes' and Redis's is other work on the machine. A series
stops after a step whose p99 passes {args.max_p99:g} ms, that delivers under 90% of what it owes,
or whose publications fall under 90% of the rate asked.
""")
    runs = [r for r in results["runs"] if r.get("data")]
    md.append("## Summary\n")
    md.append(f"For each case and setup, the step with the most deliveries/s that kept up (p99 under "
              f"{args.max_p99:g} ms, the rate asked published, every delivery made), and the most deliveries/s "
              f"of any step.\n")
    md.append(f"| case | setup | the most that kept up | deliveries/s | per hub-CPU-s | per hub+Redis-CPU-s "
              f"| p50 | p99 | nodes' CPU | Redis CPU | generator | core {args.server_core} busy | most deliveries/s (any p99) "
              "| what bounds the most | other work on the machine |")
    md.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for case in CASES:
        if case not in args.cases_set:
            continue
        for setup in SETUPS:
            rec = next((r for r in runs if r["setup"] == setup and r["case"] == case), None)
            if rec is None or setup not in args.only_set:
                continue
            steps = rec["data"].get("fanout", [])
            if not steps:
                continue
            b = best_step(steps)
            top = max(steps, key=lambda s: s["deliveries_per_sec"])
            if b:
                nodes, redis, gen = cpu_shares(b)
                md.append(f"| {case} | {setup} | {call_name(b['batch'])}, {b['rate']:,.0f}/s | "
                          f"{lib.fmt_num(b['deliveries_per_sec'])} | {lib.fmt_num(b.get('deliveries_per_server_cpu_s'))} | "
                          f"{lib.fmt_num(per_total(b))} | {lib.fmt_us(hub.get(b, 'latency_us', 'p50'))} | "
                          f"{lib.fmt_us(hub.get(b, 'latency_us', 'p99'))} | {pcts(nodes)} | {pcts(redis)} | "
                          f"{hub.fmt_pct(gen)} | {hub.fmt_pct(core_busy(b, args.server_core))} | "
                          f"{lib.fmt_num(top['deliveries_per_sec'])} | "
                          f"{lib.esc(bound(top, args))} | {hub.fmt_pct(rec.get('other_work'))} |")
            else:
                md.append(f"| {case} | {setup} | none | | | | | | | | | | {lib.fmt_num(top['deliveries_per_sec'])} | "
                          f"{lib.esc(bound(top, args))} | {hub.fmt_pct(rec.get('other_work'))} |")
    md.append("")
    findings(md, runs, args, conf)
    md.append(f"""Other work on the machine is the CPU both cores spent on anything but this run's
processes over the run, as a share of one core: what other work took from the
{"core the nodes and Redis share" if same_core else "nodes' core"} shows in the rates and latencies, not in the CPU per delivery.
""")
    for case in CASES:
        if case not in args.cases_set:
            continue
        md.append(f"## {title(case, conf)}\n")
        scaling_table(md, runs, case, args)
        md.append(f"| setup | API call | publications/s asked | made | deliveries/s | per hub-CPU-s "
                  f"| per hub+Redis-CPU-s | p50 | p99 | nodes' CPU | Redis CPU | generator | core {args.server_core} busy | lost "
                  "| what bounds it |")
        md.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for setup in SETUPS:
            if setup not in args.only_set:
                continue
            rec = next((r for r in results["runs"] if r["setup"] == setup and r["case"] == case), None)
            if rec is None:
                continue
            if not rec.get("data"):
                md.append(f"| {setup} | failed: {lib.esc(rec.get('error') or '?')} | | | | | | | | | | | | | |")
                continue
            for s in rec["data"].get("fanout", []):
                nodes, redis, gen = cpu_shares(s)
                why = bound(s, args)
                if s.get("stopped"):
                    why += f"; stopped rising: {s['stopped']}"
                md.append(f"| {setup} | {call_name(s['batch'])} | {s['rate']:,.0f} | "
                          f"{lib.fmt_num(s['publications_per_sec'])} | {lib.fmt_num(s['deliveries_per_sec'])} | "
                          f"{lib.fmt_num(s.get('deliveries_per_server_cpu_s'))} | {lib.fmt_num(per_total(s))} | "
                          f"{lib.fmt_us(hub.get(s, 'latency_us', 'p50'))} | {lib.fmt_us(hub.get(s, 'latency_us', 'p99'))} | "
                          f"{pcts(nodes)} | {pcts(redis)} | {hub.fmt_pct(gen)} | "
                          f"{hub.fmt_pct(core_busy(s, args.server_core))} | {hub.fmt_int(s.get('lost'))} | "
                          f"{lib.esc(why)} |")
        md.append("")
        traffic = []
        for setup in SETUPS:
            rec = next((r for r in runs if r["setup"] == setup and r["case"] == case), None)
            t = rec and redis_traffic(rec)
            if t:
                d = rec["data"]
                pubs = sum(s.get("published", 0) for s in d.get("fanout", [])) + (
                    hub.get(d, "idle", "burst") or 0) * d.get("channels", 0)
                peak = max((s["publications_per_sec"] for s in d.get("fanout", [])), default=0)
                line = f"{setup}: {t[0]:,} commands, {lib.fmt_bytes(t[1])} in, {lib.fmt_bytes(t[2])} out"
                if pubs:
                    line += (f" for {pubs:,} publications: {t[0] / pubs:.1f} commands, {lib.fmt_bytes(t[1] / pubs)} in "
                             f"and {lib.fmt_bytes(t[2] / pubs)} out each, so {lib.fmt_bytes(peak * (t[1] + t[2]) / pubs)}/s "
                             f"at the most publications/s ({peak:,.0f})")
                traffic.append(line)
        if traffic:
            md.append("Redis over the whole run (connects, subscribes, burst and every step; INFO stats, all "
                      "redis-servers; traffic on loopback):\n")
            md.extend(f"- {t}" for t in traffic)
            md.append("")
    if results["failures"]:
        md.append("## Failures\n")
        for f in results["failures"]:
            md.append(f"- {lib.esc(f)}")
        md.append("")
    md.append("Raw results of every run: [bench/cluster-results.json](bench/cluster-results.json).\n")
    path = os.path.join(out_dir, "CLUSTER-BENCHMARKS.md")
    with open(path, "w") as f:
        f.write("\n".join(md))
    with open(os.path.join(out_dir, "bench", "cluster-results.json"), "w") as f:
        json.dump({"command": command, "settings": {k: getattr(args, k) for k in SAVED_ARGS},
                   "started": started.isoformat(), "finished": finished.isoformat(), "machine": facts,
                   "failures": results["failures"], "runs": results["runs"]}, f, indent=1)
    return path


SAVED_ARGS = ["duration", "warmup", "only", "cases", "quick", "server_core", "redis_core", "client_core", "max_p99"]


def rerender(path, out_dir):
    with open(path) as f:
        saved = json.load(f)
    args = argparse.Namespace(**saved["settings"])
    args.only_set = set(args.only or SETUPS)
    args.cases_set = set(args.cases or CASES)
    results = {"runs": saved["runs"], "failures": saved["failures"]}
    return write_report(args, results, saved["machine"], datetime.datetime.fromisoformat(saved["started"]),
                        datetime.datetime.fromisoformat(saved["finished"]), out_dir, saved["command"])


def redis_version():
    try:
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    v = next((w for w in out.split() if w.startswith("v=")), None)
    return f"redis-server {v[2:]}" if v else None


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", default="", help=f"comma-separated setups (default: all: {','.join(SETUPS)})")
    p.add_argument("--cases", default="", help=f"comma-separated cases (default: all: {','.join(CASES)})")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per fan-out step (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per fan-out step (default 1)")
    p.add_argument("--max-p99", type=float, default=1000.0,
                   help="a series of rising rates stops after a step with a p99 over this, in ms (default 1000)")
    p.add_argument("--quick", action="store_true", help="tiny counts and short steps: a smoke test (needs --out)")
    p.add_argument("--out", default="", help="directory for CLUSTER-BENCHMARKS.md and bench/ (default: docs/)")
    p.add_argument("--no-build", action="store_true", help="use the release binary already built")
    p.add_argument("--server-core", type=int, default=0, help="core the hub nodes are pinned to (default 0)")
    p.add_argument("--redis-core", type=int, default=None, help="core redis-server is pinned to (default: the "
                   "nodes' core)")
    p.add_argument("--client-core", type=int, default=1, help="core the generator is pinned to (default 1)")
    p.add_argument("--rerender", metavar="RESULTS_JSON", help="only write the report again from a saved run")
    args = p.parse_args()
    if args.rerender:
        path = rerender(args.rerender, os.path.abspath(args.out or os.path.join(ROOT, "docs")))
        log(f"report: {path}")
        return 0
    if args.quick and not args.out:
        p.error("--quick does not overwrite docs/CLUSTER-BENCHMARKS.md: give --out DIR")
    args.only = [c.strip() for c in args.only.split(",") if c.strip()]
    for c in args.only:
        if c not in SETUPS:
            p.error(f"unknown setup {c} (known: {','.join(SETUPS)})")
    args.only_set = set(args.only or SETUPS)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    for c in args.cases:
        if c not in CASES:
            p.error(f"unknown case {c} (known: {','.join(CASES)})")
    args.cases_set = set(args.cases or CASES)
    if not sys.platform.startswith("linux"):
        sys.exit("cluster.py: Linux only (taskset, /proc)")
    wants_redis = any(SETUPS[s][0] != "memory" for s in args.only_set)
    for tool in ("redis-server", "redis-cli") if wants_redis else ():
        if shutil.which(tool) is None:
            sys.exit(f"cluster.py: {tool} is missing (Debian's redis-server and redis-tools packages)")
    if args.redis_core is None:
        args.redis_core = args.server_core
    usable = sorted(os.sched_getaffinity(0))
    for attr in ("server_core", "redis_core", "client_core"):
        if getattr(args, attr) not in usable:
            log(f"cluster.py: core {getattr(args, attr)} is not available (usable: {usable}); using {usable[-1]}")
            setattr(args, attr, usable[-1])
    out_dir = os.path.abspath(args.out or os.path.join(ROOT, "docs"))

    volley = hub.build(args)
    facts = lib.machine_facts()
    facts["redis_version"] = redis_version()
    facts["load_start"] = lib.load_avg()
    conf = settings(args)
    results = {"runs": [], "failures": []}
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    secret = secrets.token_hex(24)
    with tempfile.TemporaryDirectory(prefix="volley-cluster-bench-") as logdir:
        for setup in SETUPS:
            if setup not in args.only_set:
                continue
            for case in CASES:
                if case not in args.cases_set:
                    continue
                log(f"==> {setup}: {title(case, conf)}")
                rec = run_one(args, volley, logdir, secret, setup, case, conf)
                rec.update(hub.stamp(facts))
                results["runs"].append(rec)
                if rec["error"]:
                    results["failures"].append(f"{setup} {case}: {rec['error']}")
                steps = (rec.get("data") or {}).get("fanout", [])
                top = max(steps, key=lambda s: s["deliveries_per_sec"]) if steps else None
                log("    " + (f"up to {lib.fmt_num(top['deliveries_per_sec'])} deliveries/s, "
                             f"{lib.fmt_num(top.get('deliveries_per_server_cpu_s'))} per hub-CPU-s" if top else "")
                    + (f"  FAILED: {rec['error']}" if rec["error"] else ""))
    facts["load_end"] = lib.load_avg()
    finished = datetime.datetime.now(datetime.timezone.utc)
    command = " ".join(["python3", "bench/cluster.py"] + [shlex.quote(hub.portable(a)) for a in sys.argv[1:]])
    path = write_report(args, results, facts, started, finished, out_dir, command)
    log(f"\n==> {time.monotonic() - t0:.0f} s; report: {path}")
    return lib.finish(results["failures"])


if __name__ == "__main__":
    sys.exit(main())
