#!/usr/bin/env python3
"""The benchmark comparison: Volley against tokio-tungstenite, fastwebsockets and
tokio-websockets, with a raw TCP echo as the ceiling, through workloads W1-W9.

Builds the echo servers (bench/, `bench-server`, `fanout-client`) and the load
generator (`volley bench`) in release mode, then runs every server through every
workload in one run, interleaved (A B C D E A B C D E ...), the server pinned to one
core and the generator to the other, for --reps repetitions. Prints and writes the
medians, each server's ratio to the best peer and to the raw ceiling, for throughput
and for round trips per server-CPU-second, whether each target is met, and SVG bar
charts: docs/BENCHMARKS.md and docs/bench/ (or --out DIR). Python 3 standard library
only; Linux only (taskset, /proc).

    python3 bench/run.py                   # the full comparison (about 15 minutes)
    python3 bench/run.py --quick --out DIR # a few seconds per workload: the CI smoke
    python3 bench/run.py --only W1,W5 --servers volley,fastwebsockets,raw

Exit status: 0 when every run produced its JSON, 1 otherwise (a server that failed to
start, a generator that failed or printed no JSON).
"""

import argparse
import datetime
import ipaddress
import json
import os
import platform
import resource
import select
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")

# name, label, kind ("volley", "peer" or "ceiling"), bench-server --impl (None: the
# `volley echo` command, below)
SERVERS = [
    ("volley", "Volley", "volley", "volley"),
    ("volley-cli", "Volley (`volley echo`)", "volley", None),
    ("tungstenite", "tokio-tungstenite", "peer", "tungstenite"),
    ("fastwebsockets", "fastwebsockets", "peer", "fastwebsockets"),
    ("tokio-websockets", "tokio-websockets", "peer", "tokio-websockets"),
    ("raw", "raw TCP echo (ceiling)", "ceiling", "raw"),
]
SERVER_NAMES = [s[0] for s in SERVERS]
LABEL = {s[0]: s[1] for s in SERVERS}
KIND = {s[0]: s[2] for s in SERVERS}
IMPL = {s[0]: s[3] for s in SERVERS}
# W8 compares Volley with permessage-deflate to Volley without.
LABEL["volley-deflate"] = "Volley + permessage-deflate"
KIND["volley-deflate"] = "volley"
IMPL["volley-deflate"] = "volley"
# W6 also runs the Volley echo with idle connections parked (`volley::park`, without a
# task each): after 100 ms without a message, and as soon as a read would wait.
PARKED = {
    "volley-parked": ("Volley, parked after 100 ms idle", ["--park-after", "100"]),
    "volley-parked-0": ("Volley, parked at once", ["--park-after", "0"]),
}
EXTRA = {}
for _name, (_label, _extra) in PARKED.items():
    LABEL[_name], KIND[_name], IMPL[_name], EXTRA[_name] = _label, "volley", "volley", _extra
# The shipped binary, as a user runs it: `volley echo --threads 1` (one current-thread
# runtime, as bench-server), its default configuration (keepalive pings on, request
# headers dropped after the handshake), with the same parked variants in W6. It runs as
# one process: not in the many-process runs (W6 past the descriptor limit, W7).
CLI = {
    "volley-cli": [],
    "volley-cli-parked": ["--park-after", "0.1"],
    "volley-cli-parked-0": ["--park-after", "0"],
}
LABEL["volley-cli-parked"] = "Volley (`volley echo`), parked after 100 ms idle"
LABEL["volley-cli-parked-0"] = "Volley (`volley echo`), parked at once"
for _name in ("volley-cli-parked", "volley-cli-parked-0"):
    KIND[_name], IMPL[_name] = "volley", None


def w6_servers(servers):
    """The W6 servers: the parked Volley variants follow Volley, and those of `volley
    echo` follow it."""
    out = []
    for s in servers:
        out.append(s)
        if s == "volley":
            out += list(PARKED)
        if s == "volley-cli":
            out += [c for c in CLI if c != s]
    return out


def many_process(servers):
    """The servers of the many-process runs: all but `volley echo` (one process)."""
    return [s for s in servers if s not in CLI]


def w7_servers(servers):
    """The W7 servers: Volley parked at once follows Volley."""
    return [x for s in many_process(servers) for x in ([s, "volley-parked-0"] if s == "volley" else [s])]


WORKLOADS = ["W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8", "W9"]
# W7 runs last: after a million connections the kernel takes a while to settle (the
# fan-out client's 10,000 connects crawled right after it).
RUN_ORDER = [w for w in WORKLOADS if w != "W7"] + ["W7"]
TITLES = {
    "W1": "W1: 100 connections × 20 B text",
    "W2": "W2: 100 connections × 16 KiB binary",
    "W3": "W3: 1000 connections × 20 B text",
    "W4": "W4: one connection, 1024 in flight, 64 B text",
    "W5": "W5: p99 latency at a fixed rate, 100 connections, 20 B text",
    "W6": "W6: memory per idle connection",
    "W7": "W7: most concurrent connections held",
    "W8": "W8: W1 with permessage-deflate",
    "W9": "W9: fan-out, one message to every connection (prepared broadcast)",
}
# Descriptor headroom over the connection count (listener, stdio, runtime).
FD_MARGIN = 100
# Connections per process when a run needs more than one process can hold (W7, and W6
# past the descriptor limit): the server runs as several `SO_REUSEPORT` workers and as
# many generators share the load, each under its descriptor limit with room for the
# kernel's uneven spread over the workers. --quick uses a tiny share, to run the same
# code.
PER_PROCESS = 15000
PER_PROCESS_QUICK = 250
# Source addresses per generator: `volley bench` uses one per 12,000 connections.
SOURCES_PER_GENERATOR = 2
# Handshakes in progress at once per generator while many generators open.
MANY_CONNECT_CONCURRENCY = 32
# A many-process run stops when the machine's available memory falls below this
# fraction of the total (or 4 GiB, whichever is more): the finding, not a crash. A
# server with a large buffer per connection (tokio-tungstenite: 128 KiB) grows by
# gigabytes a second while the generators open, so the margin is wide and the memory
# is read often.
MEMORY_GUARD = 0.2
MEMORY_GUARD_MIN = 4 << 30
# How often a many-process run reads the count held and the memory (seconds).
SAMPLE_S = 0.2
# A many-process run stops when the count has not grown for this long (seconds).
STALL_S = 15


def settings(args):
    """Per-workload parameters: full size, or tiny with --quick."""
    q = args.quick
    return {
        "W1": {"c": 10 if q else 100, "s": 20, "k": 1},
        "W2": {"c": 10 if q else 100, "s": 16384, "k": 1, "binary": True},
        "W3": {"c": 50 if q else 1000, "s": 20, "k": 1},
        "W4": {"c": 1, "s": 64, "k": 64 if q else 1024},
        "W5": {"c": 10 if q else 100, "s": 20, "rates": [1000] if q else [5000, 20000]},
        # talked: connections that each echoed one message before going idle.
        "W6": {"counts": [200, 500] if q else [10000, 100000], "talked": [200] if q else [10000],
               "hold": 0.2 if q else 2.0},
        "W7": {"max": 500 if q else args.max_conns, "hold": 0.2 if q else 2.0, "limit_s": 60 if q else 600},
        "W8": {"c": 10 if q else 100, "s": 20, "k": 1, "more_sizes": [] if q else [1024]},
        "W9": {"c": 100 if q else 10000, "m": 20 if q else 200, "s": 64, "warmup": 5 if q else 10},
    }


# --------------------------------------------------------------------------- helpers


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def finish(failures):
    """Logs the failed runs, if any; the exit status: 1 when some failed, 0 otherwise."""
    if not failures:
        return 0
    log(f"\n{len(failures)} failed run(s):")
    for f in failures:
        log(f"    {f}")
    return 1


def run_capture(cmd, cwd=ROOT):
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def nofile_hard():
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def raise_nofile():
    """preexec_fn of the children: soft descriptor limit up to the hard one."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def fd_capacity():
    """Most connections one process can hold (server and generator each hold one end)."""
    hard = nofile_hard()
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    return max(0, hard - FD_MARGIN)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def target_dir(manifest):
    out = run_capture(["cargo", "metadata", "--format-version", "1", "--no-deps", "--manifest-path", manifest])
    try:
        return json.loads(out)["target_directory"]
    except (ValueError, KeyError):
        return os.path.join(os.path.dirname(manifest), "target")


def build(args):
    bench_manifest = os.path.join(BENCH, "Cargo.toml")
    root_manifest = os.path.join(ROOT, "Cargo.toml")
    if not args.no_build:
        for cmd in (
            ["cargo", "build", "--release", "--manifest-path", bench_manifest],
            ["cargo", "build", "--release", "--manifest-path", root_manifest, "-p", "volley-cli"],
        ):
            log("==> " + " ".join(cmd))
            subprocess.run(cmd, cwd=ROOT, check=True)
    bench_bin = os.path.join(target_dir(bench_manifest), "release")
    volley_bin = os.path.join(target_dir(root_manifest), "release", "volley")
    paths = {
        "server": os.path.join(bench_bin, "bench-server"),
        "fanout": os.path.join(bench_bin, "fanout-client"),
        "volley": volley_bin,
    }
    for p in paths.values():
        if not os.access(p, os.X_OK):
            sys.exit(f"run.py: {p} is missing (build it, or drop --no-build)")
    return paths


# --------------------------------------------------------------------------- processes


def free_port():
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(proc, port, timeout):
    """True once something accepts on the loopback `port`, False if `proc` exits or the
    time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class Server:
    """A bench-server, or `volley echo`, pinned to the server core; stopped with SIGTERM."""

    def __init__(self, paths, name, logdir, core, extra=(), processes=0):
        port = None
        if name in CLI:
            if processes:
                raise RuntimeError(f"{name}: `volley echo` runs as one process")
            port = free_port()
            cmd = ["taskset", "-c", str(core), paths["volley"], "echo", "--threads", "1",
                   "--listen", f"127.0.0.1:{port}"] + CLI[name]
        else:
            cmd = ["taskset", "-c", str(core), paths["server"], "--impl", IMPL[name], "--listen", "127.0.0.1:0"]
        if name == "volley-deflate":
            cmd.append("--deflate")
        cmd += EXTRA.get(name, [])
        cmd += list(extra)
        if processes:
            cmd += ["--processes", str(processes)]
        self.errlog = tempfile.NamedTemporaryFile(dir=logdir, prefix=f"{name}-", suffix=".log", delete=False)
        # A session of its own: stopping it stops its workers too.
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self.errlog, preexec_fn=raise_nofile, text=True, bufsize=1,
            start_new_session=True,
        )
        self.addr = None
        self.pids = [self.proc.pid]  # taskset execs the server: same process
        if port is not None:
            # `volley echo` logs to stderr: wait until it accepts.
            if not wait_listening(self.proc, port, 10):
                self.stop()
                raise RuntimeError(f"{name}: server did not start: {self.stderr_tail()}")
            self.addr = f"127.0.0.1:{port}"
            return
        ready, _, _ = select.select([self.proc.stdout], [], [], 10 + processes / 10)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"{name}: server did not start: {line.strip() or self.stderr_tail()}")
        self.addr = line.split()[-1]
        if processes:
            line = self.proc.stdout.readline()
            if not line.startswith("workers "):
                self.stop()
                raise RuntimeError(f"{name}: no worker list: {line.strip() or self.stderr_tail()}")
            self.pids = [int(p) for p in line.split()[1:]]

    @property
    def pid(self):
        return self.pids[0]

    def url(self):
        return f"ws://{self.addr}/"

    def alive(self):
        return self.proc.poll() is None and all(os.path.exists(f"/proc/{p}") for p in self.pids)

    def stderr_tail(self):
        try:
            with open(self.errlog.name, errors="replace") as f:
                return " | ".join(f.read().strip().splitlines()[-3:])
        except OSError:
            return ""

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except OSError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        self.proc.wait()
        self.proc.stdout.close()
        self.errlog.close()


def run_client(cmd, core, timeout):
    """Runs a generator command pinned to the generator core; returns (json, error)."""
    full = ["taskset", "-c", str(core)] + cmd
    try:
        p = subprocess.run(full, capture_output=True, text=True, timeout=timeout, preexec_fn=raise_nofile)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    out = p.stdout.strip()
    try:
        data = json.loads(out.splitlines()[-1]) if out else None
    except ValueError:
        data = None
    if data is None:
        tail = " | ".join(p.stderr.strip().splitlines()[-3:])
        return None, f"exit {p.returncode}, no JSON: {tail}"
    if p.returncode != 0:
        return data, f"exit {p.returncode}"
    return data, None


def bench_cmd(paths, url, pid, args, c, s=20, k=1, binary=False, rate=None, idle=False, hold=2.0, deflate=False,
              talk_first=False):
    cmd = [paths["volley"], "bench", url, "-c", str(c), "--server-pid", str(pid), "--json", "--no-progress"]
    if idle:
        cmd += ["--idle", "--hold", str(hold)]
        if talk_first:
            cmd += ["--talk-first", "-s", str(s)]
    else:
        cmd += ["-s", str(s), "-d", str(args.duration), "--warmup", str(args.warmup)]
        if rate is not None:
            cmd += ["--rate", str(rate)]
        else:
            cmd += ["-k", str(k)]
        if binary:
            cmd.append("--binary")
    if deflate:
        cmd.append("--deflate")
    if c > 2000:
        cmd += ["--connect-concurrency", "512"]
    return cmd


# --------------------------------------------------------------------------- runs


class Results:
    def __init__(self):
        self.runs = []  # every run: workload, case, server, rep, ok, error, data
        self.failures = []
        self.notes = {}  # workload -> [text]

    def add(self, workload, case, server, rep, data, error):
        ok = error is None and data is not None
        self.runs.append(
            {"workload": workload, "case": case, "server": server, "rep": rep, "ok": ok, "error": error, "data": data}
        )
        if not ok:
            self.failures.append(f"{workload} {case} {server} rep {rep + 1}: {error}")

    def values(self, workload, case, server, metric):
        out = []
        for r in self.runs:
            if (r["workload"], r["case"], r["server"]) == (workload, case, server) and r["ok"]:
                out.append(metric(r["data"]))
        return out

    def med(self, workload, case, server, metric):
        return median(self.values(workload, case, server, metric))

    def by_rep(self, workload, case, server, metric):
        out = {}
        for r in self.runs:
            if (r["workload"], r["case"], r["server"]) == (workload, case, server) and r["ok"]:
                v = metric(r["data"])
                if v is not None:
                    out[r["rep"]] = v
        return out

    def paired(self, workload, case, server, ref, metric):
        """The median over repetitions of `server`'s figure divided by `ref`'s in the same
        repetition. Runs of one repetition are seconds apart, while the machine's speed
        can drift between repetitions, so this is steadier than a ratio of medians."""
        if ref is None:
            return None
        a = self.by_rep(workload, case, server, metric)
        b = self.by_rep(workload, case, ref, metric)
        return median([a[k] / b[k] for k in a if b.get(k)])

    def note(self, workload, text):
        self.notes.setdefault(workload, []).append(text)


def msgs_per_sec(d):
    return d.get("msgs_per_sec")


def msgs_per_cpu(d):
    return (d.get("server") or {}).get("msgs_per_cpu_s")


def cpu_s(d):
    return (d.get("server") or {}).get("cpu_s")


def p99(d):
    return (d.get("latency_us") or {}).get("p99")


def p50(d):
    return (d.get("latency_us") or {}).get("p50")


def busy(d):
    """The share of the measured phase the server spent on its CPU."""
    return ratio(cpu_s(d), d.get("duration_s"))


def rss_per_conn(d):
    return (d.get("server") or {}).get("rss_per_conn")


def check_counts(data, want):
    """An error text when the run did not do what it was asked."""
    if data is None:
        return None
    if data.get("connections_open", 0) < want:
        first = data.get("first_connect_error") or ""
        return f"only {data.get('connections_open')} of {want} connections opened {first}".strip()
    if data.get("mode") != "idle" and data.get("mode") != "fanout" and not data.get("messages"):
        return "no messages were echoed"
    return None


def interleaved(args, results, paths, workload, case, servers, client, want, timeout, logdir, server_extra=()):
    """Runs `servers` round-robin (A B C A B C ...) for --reps repetitions; `client(name,
    server)` gives the generator's command line."""
    for rep in range(args.reps):
        for name in servers:
            data, error = None, None
            try:
                server = Server(paths, name, logdir, args.server_core, extra=server_extra)
            except RuntimeError as e:
                results.add(workload, case, name, rep, None, str(e))
                log(f"    {workload} {case:>8} {name:<16} FAILED: {e}")
                continue
            try:
                data, error = run_client(client(name, server), args.client_core, timeout)
                error = error or check_counts(data, want)
                if not server.alive():
                    error = error or f"server exited: {server.stderr_tail()}"
            finally:
                server.stop()
            results.add(workload, case, name, rep, data, error)
            log(f"    {workload} {case:>8} {name:<16} rep {rep + 1}: {summary(data) if data else ''}"
                f"{'  FAILED: ' + error if error else ''}")


def summary(d):
    if d.get("mode") == "idle":
        return f"{d.get('connections_open')} open, {fmt_bytes(rss_per_conn(d))}/conn"
    if d.get("mode") == "fanout":
        return f"{fmt_num(d.get('deliveries_per_sec'))} deliveries/s, p99 {fmt_us((d.get('latency_us') or {}).get('p99'))}"
    return (f"{fmt_num(msgs_per_sec(d))} msg/s, {fmt_num(msgs_per_cpu(d))} msg/CPU-s, "
            f"p99 {fmt_us(p99(d))}")


def run_throughput(args, results, paths, servers, w, conf, logdir, deflate_pair=False):
    # W8 runs its target size (case "") and, for information, larger text that compresses.
    sizes = [("", conf["s"])] + [(f"{s} B", s) for s in conf.get("more_sizes", [])]
    for case, size in sizes:
        def client(name, server, size=size):
            return bench_cmd(paths, server.url(), server.pid, args, conf["c"], s=size, k=conf["k"],
                             binary=conf.get("binary", False), deflate=name == "volley-deflate")

        chosen = ["volley", "volley-deflate"] if deflate_pair else servers
        interleaved(args, results, paths, w, case, chosen, client, conf["c"], args.duration + args.warmup + 120,
                    logdir)


def run_rate(args, results, paths, servers, conf, logdir):
    for rate in conf["rates"]:
        def client(name, server, rate=rate):
            return bench_cmd(paths, server.url(), server.pid, args, conf["c"], s=conf["s"], rate=rate)

        interleaved(args, results, paths, "W5", f"{rate}/s", servers, client, conf["c"],
                    args.duration + args.warmup + 120, logdir)


def run_idle(args, results, paths, servers, conf, logdir):
    cap = fd_capacity()
    share = per_process(args)
    for count in conf["counts"]:
        if count <= cap and not (args.quick and count > share):
            def client(name, server, count=count):
                return bench_cmd(paths, server.url(), server.pid, args, count, idle=True, hold=conf["hold"])

            interleaved(args, results, paths, "W6", str(count), servers, client, count,
                        conf["hold"] + 60 + count / 1000, logdir)
            continue
        # More than one process holds: a server of several processes and as many
        # generators, the memory summed over the server's processes.
        results.note("W6", f"{count:,} connections: more than one process can hold here (descriptor limit "
                           f"{nofile_hard():,}), so each server ran as {-(-count // share)} `SO_REUSEPORT` worker "
                           f"processes (`bench-server --processes`) and as many generators shared the load; "
                           f"bytes per connection are the growth of the workers' summed resident memory "
                           f"(`volley echo` runs as one process: not in these rows).")
        for rep in range(args.reps):
            for name in many_process(servers):
                d = hold_many(args, paths, name, count, conf["hold"], 120 + count / 1000, logdir)
                error = d.get("error") or (None if d["connections_open"] >= count else
                                           f"{d['connections_open']:,} of {count:,} held: {d['reason']}")
                results.add("W6", str(count), name, rep, d, error)
                log(f"    W6 {count:>8} {name:<16} rep {rep + 1}: {summary(d)}{'  FAILED: ' + error if error else ''}")
    # Connections that spoke, then fell silent: each echoes one message of 20 B first.
    for count in [c for c in conf["talked"] if c <= cap]:
        def client(name, server, count=count):
            return bench_cmd(paths, server.url(), server.pid, args, count, s=20, idle=True, hold=conf["hold"],
                             talk_first=True)

        interleaved(args, results, paths, "W6", talked_case(count), servers, client, count,
                    conf["hold"] + 60 + count / 1000, logdir)


def talked_case(count):
    """The W6 case of `count` connections that each echoed a message before going idle."""
    return f"{count} talked"


def per_process(args):
    return min(PER_PROCESS_QUICK if args.quick else PER_PROCESS, fd_capacity())


def meminfo(key):
    """A /proc/meminfo field (`MemTotal`, `MemAvailable`...) in bytes, or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def fd_count(pids):
    """Open descriptors of these processes (a process gone counts none)."""
    n = 0
    for pid in pids:
        try:
            n += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return n


def rss_sum(pids):
    page = os.sysconf("SC_PAGE_SIZE")
    n = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                n += int(f.read().split()[1]) * page
        except (OSError, ValueError, IndexError):
            pass
    return n


def generator_source(i, per_gen):
    """The first source address of generator `i` (127.0.0.2 on: the single-process runs
    use 127.0.0.1 up)."""
    return str(ipaddress.IPv4Address("127.0.0.2") + i * per_gen)


def hold_many(args, paths, name, count, hold, limit_s, logdir):
    """Opens `count` idle connections to a server of several processes from as many
    generators, all at once, and holds them. The count held is the server's: the
    descriptors its workers opened, read every SAMPLE_S. Stops at `count`, when the
    count stops growing, when the machine's available memory runs low (the guard), or
    after `limit_s`; returns what it found, shaped like an idle `volley bench` report."""
    share = per_process(args)
    nproc = -(-count // share)
    out = {"mode": "idle", "connections": count, "connections_open": 0, "processes": nproc, "server": {}}
    try:
        server = Server(paths, name, logdir, args.server_core, processes=nproc)
    except RuntimeError as e:
        return dict(out, error=str(e), reason=str(e))
    gens = []
    total = meminfo("MemTotal") or 0
    guard = max(MEMORY_GUARD_MIN, int(total * MEMORY_GUARD))
    try:
        time.sleep(0.2)
        base_fds, base_rss, avail0 = fd_count(server.pids), rss_sum(server.pids), meminfo("MemAvailable")
        t0 = time.monotonic()
        for i in range(nproc):
            c = min(share, count - i * share)
            cmd = ["taskset", "-c", str(args.client_core), paths["volley"], "bench", server.url(), "-c", str(c),
                   "--idle", "--hold", "86400", "--json", "--no-progress",
                   "--source-from", generator_source(i, SOURCES_PER_GENERATOR),
                   "--source-addrs", str(SOURCES_PER_GENERATOR),
                   "--connect-concurrency", str(MANY_CONNECT_CONCURRENCY)]
            err = tempfile.TemporaryFile(dir=logdir)
            gens.append((subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                          preexec_fn=raise_nofile), err))
        held = peak = 0
        grew_at = time.monotonic()
        reason = None
        while reason is None:
            time.sleep(SAMPLE_S)
            held = fd_count(server.pids) - base_fds
            if held > peak:
                peak, grew_at = held, time.monotonic()
            avail = meminfo("MemAvailable")
            if held >= count:
                reason = f"all {count:,} open"
            elif avail is not None and avail < guard:
                reason = (f"memory: the machine's available memory fell to {fmt_bytes(avail)} (the run stops "
                          f"below {fmt_bytes(guard)})")
            elif not server.alive():
                reason = f"a server process exited: {server.stderr_tail()}"
            elif all(g.poll() is not None for g, _ in gens):
                reason = "the generators ended"
            elif time.monotonic() - grew_at > STALL_S:
                reason = f"no more connections opened for {STALL_S} s"
            elif time.monotonic() - t0 > limit_s:
                reason = f"time limit ({limit_s:.0f} s)"
        opened_s = time.monotonic() - t0
        if held >= count:
            time.sleep(hold)
        else:
            # Stop opening at once (above all when memory runs low); read what is held.
            for g, _ in gens:
                if g.poll() is None:
                    g.send_signal(signal.SIGSTOP)
        held = fd_count(server.pids) - base_fds
        rss = rss_sum(server.pids)
        avail1 = meminfo("MemAvailable")
        out.update({
            "connections_open": held,
            "peak": peak,
            "open_s": opened_s,
            "reason": reason,
            "mem_available_drop": None if avail0 is None or avail1 is None else avail0 - avail1,
            "server": {"pids": server.pids, "rss_before": base_rss, "rss_after": rss,
                       "rss_per_conn": (rss - base_rss) / held if held > 0 else None},
        })
        if not server.alive():
            out["error"] = f"a server process exited: {server.stderr_tail()}"
    finally:
        # The generators report what they opened and close their connections.
        if out.get("reason", "").startswith("memory"):
            server.stop()  # its memory back first
        for g, _ in gens:
            if g.poll() is None:
                g.send_signal(signal.SIGINT)
                g.send_signal(signal.SIGCONT)
        opened, errors, first = 0, 0, None
        for g, err in gens:
            try:
                stdout, _ = g.communicate(timeout=60)
                d = json.loads(stdout.strip().splitlines()[-1])
                opened += d.get("connections_open", 0)
                errors += d.get("connect_errors", 0)
                first = first or d.get("first_connect_error")
            except (subprocess.TimeoutExpired, ValueError, IndexError):
                g.kill()
                g.wait()
            err.close()
        out.update({"generators": len(gens), "generators_opened": opened, "connect_errors": errors,
                    "first_connect_error": first})
        server.stop()
    return out


def run_ramp(args, results, paths, servers, conf, logdir):
    """W7: every server asked for --max-conns idle connections at once, from as many
    server processes and generators as the descriptor limit calls for."""
    for name in servers:
        d = hold_many(args, paths, name, conf["max"], conf["hold"], conf["limit_s"], logdir)
        held = d["connections_open"]
        first = d.get("first_connect_error")
        reason = d.get("error") or d["reason"]
        if held < conf["max"] and first:
            reason += f"; first connect error: {first}"
        log(f"    W7 {conf['max']:>8} {name:<16}: {held:,} held in {d.get('open_s', 0):.0f} s, "
            f"{fmt_bytes(rss_per_conn(d))}/conn ({reason})")
        results.runs.append({"workload": "W7", "case": "max", "server": name, "rep": 0, "ok": True,
                             "error": d.get("error"), "data": dict(d, held=held, reason=reason)})
        # Holding fewer than asked is the finding of a full run; a quick run asks for
        # so few that falling short means the harness is broken.
        if args.quick and held < conf["max"]:
            results.failures.append(f"W7 {name}: {held} of {conf['max']} held: {reason}")


def run_fanout(args, results, paths, conf, logdir):
    if conf["c"] > fd_capacity():
        results.note("W9", f"{conf['c']:,} connections exceed the descriptor limit; not run.")
        return

    def client(name, server):
        return [paths["fanout"], server.url(), "-c", str(conf["c"]), "-m", str(conf["m"]), "-s", str(conf["s"]),
                "--warmup", str(conf["warmup"]), "--server-pid", str(server.pid), "--connect-concurrency", "512"]

    interleaved(args, results, paths, "W9", "", ["volley"], client, conf["c"], 300 + conf["c"] / 200, logdir,
                server_extra=["--broadcast"])


# --------------------------------------------------------------------------- report


def fmt_num(v):
    if v is None:
        return "–"
    if v >= 1e6:
        return f"{v / 1e6:.2f} M"
    if v >= 1e4:
        return f"{v / 1e3:.0f} k"
    if v >= 1e3:
        return f"{v / 1e3:.1f} k"
    return f"{v:.0f}"


def fmt_us(v):
    if v is None:
        return "–"
    if v >= 1000:
        return f"{v / 1000:.2f} ms"
    return f"{v:.0f} µs"


def fmt_bytes(v):
    if v is None:
        return "–"
    if v >= 10 << 30:
        return f"{v / (1 << 30):.1f} GiB"
    if v >= 1 << 20:
        return f"{v / (1 << 20):.1f} MiB"
    if v >= 10 << 10:
        return f"{v / 1024:.0f} KiB"
    return f"{v:,.0f} B"


def fmt_ratio(v):
    return "–" if v is None else f"{v:.2f}×"


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def best_peer(results, w, case, metric, servers, lower_is_better=False):
    vals = [(results.med(w, case, s, metric), s) for s in servers if KIND.get(s) == "peer"]
    vals = [(v, s) for v, s in vals if v is not None]
    if not vals:
        return None, None
    return (min if lower_is_better else max)(vals)


def verdict(ok):
    return "–" if ok is None else ("**met**" if ok else "**not met**")


def svg_bars(path, title, panels):
    """Horizontal bar charts side by side; panels: [(subtitle, unit_fmt, [(label, value, kind)])]."""
    colors = {"volley": "#d1495b", "peer": "#6c8ebf", "ceiling": "#9a9a9a"}
    label_w, bar_w, gap, row_h, top = 190, 260, 40, 26, 56
    rows = max((len(p[2]) for p in panels), default=1)
    width = len(panels) * (label_w + bar_w + 70) + (len(panels) - 1) * gap + 20
    height = top + rows * row_h + 20
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="10" y="20" font-size="14" font-weight="bold">{esc(title)}</text>']
    for i, (subtitle, fmt, bars) in enumerate(panels):
        x0 = 10 + i * (label_w + bar_w + 70 + gap)
        out.append(f'<text x="{x0}" y="42" font-size="12" fill="#333">{esc(subtitle)}</text>')
        vmax = max((v for _, v, _ in bars if v is not None), default=0) or 1
        for j, (label, value, kind) in enumerate(bars):
            y = top + j * row_h
            out.append(f'<text x="{x0 + label_w - 6}" y="{y + 15}" text-anchor="end">{esc(label)}</text>')
            if value is None:
                out.append(f'<text x="{x0 + label_w + 4}" y="{y + 15}" fill="#999">no result</text>')
                continue
            w = max(1.0, bar_w * value / vmax)
            out.append(f'<rect x="{x0 + label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}" '
                       f'fill="{colors.get(kind, "#6c8ebf")}"/>')
            out.append(f'<text x="{x0 + label_w + w + 4:.1f}" y="{y + 15}">{esc(fmt(value))}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def machine_facts():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    total = meminfo("MemTotal")
    mem = "" if total is None else f"{total / (1 << 30):.1f} GiB"

    def sysctl(name):
        try:
            with open("/proc/sys/" + name.replace(".", "/")) as f:
                return " ".join(f.read().split())
        except OSError:
            return "?"

    commit = run_capture(["git", "rev-parse", "--short=12", "HEAD"])
    dirty = run_capture(["git", "status", "--porcelain", "--untracked-files=no", "--", "crates", "Cargo.lock"])
    return {
        "volley_commit": (commit or "unknown") + (" with uncommitted changes in crates/" if dirty else ""),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "rustc": run_capture(["rustc", "-V"]),
        "nofile": nofile_hard(),
        "file_max": sysctl("fs.file-max"),
        "nr_open": sysctl("fs.nr_open"),
        "port_range": sysctl("net.ipv4.ip_local_port_range"),
        "tcp_mem": sysctl("net.ipv4.tcp_mem"),
        "somaxconn": sysctl("net.core.somaxconn"),
    }


def peer_versions():
    versions = {}
    try:
        with open(os.path.join(BENCH, "Cargo.lock")) as f:
            name = None
            for line in f:
                if line.startswith("name = "):
                    name = line.split('"')[1]
                elif line.startswith("version = ") and name in ("tokio-tungstenite", "fastwebsockets",
                                                                  "tokio-websockets", "tokio"):
                    versions[name] = line.split('"')[1]
    except OSError:
        pass
    return versions


def throughput_section(results, w, servers, md, svgdir, rel, targets, deflate_pair=False, case=""):
    if deflate_pair:
        servers = ["volley", "volley-deflate"]
    present = [s for s in servers if results.values(w, case, s, lambda d: 1)]
    if not present:
        md.append("No result.\n")
        return
    _, bp_rate_name = best_peer(results, w, case, msgs_per_sec, servers)
    _, bp_cpu_name = best_peer(results, w, case, msgs_per_cpu, servers)
    # The ceiling, when this run has it.
    raw = "raw" if results.values(w, case, "raw", lambda d: 1) else None
    if deflate_pair:
        md.append("| server | round trips/s | server busy | round trips per server-CPU-s | spread "
                  "| CPU per round trip ÷ uncompressed | p50 | p99 |")
        md.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for s in present:
            cpu = results.med(w, case, s, msgs_per_cpu)
            md.append(f"| {LABEL[s]} | {fmt_num(results.med(w, case, s, msgs_per_sec))} | "
                      f"{fmt_pct(results.med(w, case, s, busy))} | {fmt_num(cpu)} | "
                      f"{spread(results.values(w, case, s, msgs_per_cpu))} | "
                      f"{fmt_ratio(results.paired(w, case, 'volley', s, msgs_per_cpu))} | "
                      f"{fmt_us(results.med(w, case, s, p50))} | "
                      f"{fmt_us(results.med(w, case, s, p99))} |")
    else:
        md.append(f"Best peer: {LABEL.get(bp_cpu_name, '–')} per server-CPU-second, "
                  f"{LABEL.get(bp_rate_name, '–')} in throughput.\n")
        md.append("| server | round trips/s | ÷ best peer | ÷ ceiling | server busy "
                  "| round trips per server-CPU-s | spread | ÷ best peer | ÷ ceiling | p50 | p99 |")
        md.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for s in present:
            rate = results.med(w, case, s, msgs_per_sec)
            cpu = results.med(w, case, s, msgs_per_cpu)
            md.append(f"| {LABEL[s]} | {fmt_num(rate)} | "
                      f"{fmt_ratio(results.paired(w, case, s, bp_rate_name, msgs_per_sec))} | "
                      f"{fmt_ratio(results.paired(w, case, s, raw, msgs_per_sec))} | "
                      f"{fmt_pct(results.med(w, case, s, busy))} | "
                      f"{fmt_num(cpu)} | {spread(results.values(w, case, s, msgs_per_cpu))} | "
                      f"{fmt_ratio(results.paired(w, case, s, bp_cpu_name, msgs_per_cpu))} | "
                      f"{fmt_ratio(results.paired(w, case, s, raw, msgs_per_cpu))} | "
                      f"{fmt_us(results.med(w, case, s, p50))} | {fmt_us(results.med(w, case, s, p99))} |")
    md.append("")
    name = f"{w.lower()}{'-' + case.split()[0] if case else ''}.svg"
    title = TITLES[w] + (f" ({case} messages)" if case else "")
    svg_bars(os.path.join(svgdir, name), title, [
        ("round trips per second (median)", fmt_num,
         [(LABEL[s], results.med(w, case, s, msgs_per_sec), KIND[s]) for s in present]),
        ("round trips per server-CPU-second (median)", fmt_num,
         [(LABEL[s], results.med(w, case, s, msgs_per_cpu), KIND[s]) for s in present]),
    ])
    md.append(f"![{title}]({rel}/{name})\n")
    if case:
        return
    if deflate_pair:
        cost = results.paired(w, case, "volley", "volley-deflate", msgs_per_cpu)
        ok = None if cost is None else cost <= 1.5
        targets.append((w, "cost with permessage-deflate ≤ 1.5× uncompressed W1 (server CPU per round trip)",
                        f"{fmt_ratio(cost)}", ok))
        return
    if w in ("W1", "W2", "W3"):
        r_peer = results.paired(w, case, "volley", bp_cpu_name, msgs_per_cpu)
        r_ceil = results.paired(w, case, "volley", raw, msgs_per_cpu)
        targets.append((w, "Volley ≥ 1.25× the best peer in round trips per server-CPU-second",
                        fmt_ratio(r_peer), None if r_peer is None else r_peer >= 1.25))
        targets.append((w, "Volley ≥ 0.9× the raw ceiling in round trips per server-CPU-second",
                        fmt_ratio(r_ceil), None if r_ceil is None else r_ceil >= 0.9))
    if w == "W4":
        r_ceil = results.paired(w, case, "volley", raw, msgs_per_cpu)
        r_rate = results.paired(w, case, "volley", raw, msgs_per_sec)
        targets.append((w, "Volley within 10% of the raw ceiling (round trips per server-CPU-second)",
                        fmt_ratio(r_ceil), None if r_ceil is None else r_ceil >= 0.9))
        targets.append((w, "Volley within 10% of the raw ceiling (round trips per second)",
                        fmt_ratio(r_rate), None if r_rate is None else r_rate >= 0.9))


def fmt_pct(v):
    return "–" if v is None else f"{v:.0%}"


def spread(values):
    """Half the range of the repetitions, relative to their median."""
    values = [v for v in values if v is not None]
    if len(values) < 2:
        return "–"
    return f"±{(max(values) - min(values)) / 2 / statistics.median(values):.0%}"


def fmt_s(v):
    return "–" if v is None else f"{v:.2f}"


def rate_section(results, servers, conf, md, svgdir, rel, targets):
    panels = []
    for rate in conf["rates"]:
        case = f"{rate}/s"
        present = [s for s in servers if results.values("W5", case, s, lambda d: 1)]
        if not present:
            continue
        best, best_name = best_peer(results, "W5", case, p99, servers, lower_is_better=True)
        md.append(f"**{rate:,} messages/s** (best peer p99: {LABEL.get(best_name, '–')})\n")
        md.append("| server | p50 | p99 | p99.9 | max | p99 ÷ best peer's | achieved msg/s | server CPU (s) |")
        md.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for s in present:
            v = results.med("W5", case, s, p99)
            md.append(f"| {LABEL[s]} | {fmt_us(results.med('W5', case, s, p50))} | {fmt_us(v)} | "
                      f"{fmt_us(results.med('W5', case, s, lambda d: (d.get('latency_us') or {}).get('p999')))} | "
                      f"{fmt_us(results.med('W5', case, s, lambda d: (d.get('latency_us') or {}).get('max')))} | "
                      f"{fmt_ratio(ratio(v, best))} | {fmt_num(results.med('W5', case, s, msgs_per_sec))} | "
                      f"{fmt_s(results.med('W5', case, s, cpu_s))} |")
        md.append("")
        panels.append((f"p99 latency at {rate:,} msg/s (median; shorter is better)", fmt_us,
                       [(LABEL[s], results.med("W5", case, s, p99), KIND[s]) for s in present]))
        v = results.med("W5", case, "volley", p99)
        targets.append(("W5", f"Volley p99 at {rate:,} msg/s no worse than the best peer's",
                        f"{fmt_us(v)} vs {fmt_us(best)}", None if v is None or best is None else v <= best))
    if panels:
        svg_bars(os.path.join(svgdir, "w5.svg"), TITLES["W5"], panels)
        md.append(f"![{TITLES['W5']}]({rel}/w5.svg)\n")


def idle_section(results, servers, conf, md, svgdir, rel, targets):
    panels = []
    cases = [(str(c), c, False) for c in conf["counts"]] + [(talked_case(c), c, True) for c in conf.get("talked", [])]
    for case, count, talked in cases:
        present = [s for s in servers if results.values("W6", case, s, lambda d: 1)]
        if not present:
            continue
        what = "idle connections that each echoed one message first" if talked else "idle connections"
        md.append(f"**{count:,} {what}**\n")
        raw = results.med("W6", case, "raw", rss_per_conn)
        md.append("| server | bytes per connection | above the raw echo's | server RSS with them |")
        md.append("|---|---:|---:|---:|")
        for s in present:
            v = results.med("W6", case, s, rss_per_conn)
            above = None if v is None or raw is None else v - raw
            md.append(f"| {LABEL[s]} | {fmt_bytes(v)} | {fmt_bytes(above) if s != 'raw' else '–'} | "
                      f"{fmt_bytes(results.med('W6', case, s, lambda d: (d.get('server') or {}).get('rss_after')))} |")
        md.append("")
        panels.append((f"{count:,} {what}: bytes each (shorter is better)", fmt_bytes,
                       [(LABEL[s], results.med("W6", case, s, rss_per_conn), KIND[s]) for s in present]))
        if talked:
            continue  # the targets are for connections that never spoke
        for s in [s for s in present if KIND[s] == "volley"]:
            v = results.med("W6", case, s, rss_per_conn)
            targets.append(("W6", f"{LABEL[s]} ≤ 300 bytes per idle connection at {count:,}", fmt_bytes(v),
                            None if v is None else v <= 300))
    for text in results.notes.get("W6", []):
        md.append(f"{text}\n")
        if "not run" in text:
            targets.append(("W6", f"Volley ≤ 300 bytes per idle connection at {text.split()[0]}", "not run", None))
    if panels:
        svg_bars(os.path.join(svgdir, "w6.svg"), TITLES["W6"], panels)
        md.append(f"![{TITLES['W6']}]({rel}/w6.svg)\n")


def ramp_section(results, servers, md, svgdir, rel, targets, facts):
    rows = []
    for s in servers:
        for r in results.runs:
            if r["workload"] == "W7" and r["case"] == "max" and r["server"] == s:
                rows.append((s, r["data"]))
    if not rows:
        md.append("No result.\n")
        return
    md.append("| server | connections held | server processes | server memory per connection | seconds to open "
              "| why it stopped |")
    md.append("|---|---:|---:|---:|---:|---|")
    for s, d in rows:
        secs = d.get("open_s")
        md.append(f"| {LABEL[s]} | {d['held']:,} | {d.get('processes', 1)} | {fmt_bytes(rss_per_conn(d))} | "
                  f"{'–' if secs is None else f'{secs:.0f}'} | "
                  f"{esc(d['reason'])} |")
    md.append("")
    for text in results.notes.get("W7", []):
        md.append(f"{text}\n")
    svg_bars(os.path.join(svgdir, "w7.svg"), TITLES["W7"],
             [("connections held", lambda v: f"{v:,.0f}", [(LABEL[s], d["held"], KIND[s]) for s, d in rows])])
    md.append(f"![{TITLES['W7']}]({rel}/w7.svg)\n")
    for s, d in rows:
        if KIND[s] == "volley":
            targets.append(("W7", f"{LABEL[s]}: ≥ 1,000,000 concurrent connections (limits documented)",
                            f"{d['held']:,}", d["held"] >= 1_000_000))
    md.append(f"""What one million connections on one machine needs (both ends on this machine, so every
number counts twice), and how this run meets it:

- **File descriptors**: one per connection in each process. Here the hard
  `RLIMIT_NOFILE` is {facts['nofile']:,} per process and cannot be raised without
  `CAP_SYS_RESOURCE` (in a container: the runtime's `--ulimit nofile=`; under systemd:
  `LimitNOFILE=`). So the server runs as one process per {PER_PROCESS:,} connections
  (`bench-server --processes N`: workers listening on one address with `SO_REUSEPORT`,
  all on the server's core), and as many `volley bench` generators share the load on
  the generator's core. System-wide, `fs.file-max` ({facts['file_max']}) must exceed
  2,000,000; one process holding 1M would need `fs.nr_open` above it (here
  {facts['nr_open']}).
- **Ports**: toward one server address and port, a source address has the ports of
  `net.ipv4.ip_local_port_range` ({facts['port_range']}), but Linux hands out half of them
  first and finds the rest slowly: `volley bench` uses one source address per 12,000
  connections (`--source-addrs`, `--source-from`), with `IP_BIND_ADDRESS_NO_PORT`;
  {SOURCES_PER_GENERATOR} per generator here, from 127.0.0.2 up.
- **Memory**: socket buffers count against `net.ipv4.tcp_mem` (pages; here
  {facts['tcp_mem']}); idle sockets hold little, but the kernel's state for 2M sockets is
  several GiB beyond the processes' resident memory
  ({facts['memory']} in this machine). The run stops, as a finding, when the machine's
  available memory falls below {MEMORY_GUARD:.0%} of it (at least {MEMORY_GUARD_MIN >> 30} GiB).
- **Connection tracking**, when netfilter's conntrack is loaded:
  `net.netfilter.nf_conntrack_max` above 2,000,000.
- **Accept backlog**: `net.core.somaxconn` ({facts['somaxconn']}); the servers ask for 4,096,
  per worker.
""")


def fanout_section(results, md, targets):
    ds = [r["data"] for r in results.runs if r["workload"] == "W9" and r["ok"]]
    if not ds:
        md.append("No result.\n")
        for text in results.notes.get("W9", []):
            md.append(f"{text}\n")
        return
    m = lambda f: median([f(d) for d in ds])  # noqa: E731
    lat = lambda k: m(lambda d: (d.get("latency_us") or {}).get(k))  # noqa: E731
    md.append("| server | receivers | deliveries/s | time to last receiver p50 | p99 | max "
              "| server CPU busy | deliveries per server-CPU-s | server RSS | missed |")
    md.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    busy = m(lambda d: ratio((d.get("server") or {}).get("cpu_s"), d.get("duration_s")))
    md.append(f"| Volley (`Broadcast` of a `PreparedMessage`) | {m(lambda d: d['connections_open']):,.0f} | "
              f"{fmt_num(m(lambda d: d['deliveries_per_sec']))} | {fmt_us(lat('p50'))} | {fmt_us(lat('p99'))} | "
              f"{fmt_us(lat('max'))} | {'–' if busy is None else f'{busy:.0%}'} | "
              f"{fmt_num(m(lambda d: (d.get('server') or {}).get('deliveries_per_cpu_s')))} | "
              f"{fmt_bytes(m(lambda d: (d.get('server') or {}).get('rss_after')))} | "
              f"{m(lambda d: d['missed']):.0f} |")
    md.append("")
    if busy is not None:
        md.append("The server was busy {:.0%} of the measured time: {}.\n".format(
            busy, "the server's core is the bottleneck" if busy > 0.9 else "the client's core limits the rate"))
    for text in results.notes.get("W9", []):
        md.append(f"{text}\n")


def write_report(args, results, servers, facts, started, finished, out_dir, command):
    conf = settings(args)
    svgdir = os.path.join(out_dir, "bench")
    os.makedirs(svgdir, exist_ok=True)
    for old in os.listdir(svgdir):  # charts of an earlier run
        if old.endswith(".svg"):
            os.remove(os.path.join(svgdir, old))
    rel = "bench"
    targets = []
    versions = peer_versions()
    md = ["# Benchmarks", ""]
    md.append("<!-- Generated by bench/run.py; do not edit by hand. -->\n")
    if args.only:
        md.append(f"**Partial run: workloads {', '.join(args.only)} only.**\n")
    if args.quick:
        md.append("**Quick run (--quick): tiny counts, one short repetition; the figures mean nothing.**\n")
    md.append(f"Command: `{command}`\n")
    md.append(f"Run {started:%Y-%m-%d %H:%M} to {finished:%H:%M} UTC, {args.reps} repetition(s) per server and "
              f"workload, interleaved (every server once, then again); {args.duration} s measured after "
              f"{args.warmup} s of warm-up per run. Figures are medians over the repetitions.\n")
    md.append("## Machine\n")
    md.append(f"- CPU: {facts['cpu']}, {facts['nproc']} logical cores; memory {facts['memory']}")
    md.append(f"- Linux {facts['kernel']}; {facts['rustc']}")
    md.append(f"- Volley at commit {facts.get('volley_commit', 'unknown')}")
    md.append(f"- Server pinned to core {args.server_core}, generator (`volley bench`, one thread) to core "
              f"{args.client_core} (`taskset`)" + (" (**the same core**)" if args.server_core == args.client_core
                                                  else ""))
    md.append(f"- Load average at the start {facts['load_start']}, at the end {facts['load_end']} "
              f"(other work on the machine shows up in throughput; CPU time per round trip is "
              f"the server process's own)")
    md.append(f"- Descriptor limit (hard `RLIMIT_NOFILE`): {facts['nofile']:,}")
    md.append(f"- Peers: tokio-tungstenite {versions.get('tokio-tungstenite', '?')}, fastwebsockets "
              f"{versions.get('fastwebsockets', '?')}, tokio-websockets {versions.get('tokio-websockets', '?')}; "
              f"tokio {versions.get('tokio', '?')}\n")
    md.append("""## How

Every server is `bench-server` (bench/servers): a tokio current-thread runtime, one accept
loop, `TCP_NODELAY`, one task per connection that reads a message and writes it back. On
Linux its global allocator is jemalloc, as the `volley` binary's, configured to return
freed pages within about 100 ms (`.cargo/config.toml`).

- **Volley**: `ServerBuilder::accept`, then `recv` and `feed` (flushed before the next read).
  Keepalive off (no peer sends pings); permessage-deflate only in W8.
- **Volley (`volley echo`)**: not bench-server but the shipped binary, as a user runs it:
  `volley echo --threads 1 --listen ADDR` (one current-thread runtime), with its defaults
  (keepalive pings every 30 s, permessage-deflate if offered: the generator offers none).
- **tokio-tungstenite** and **tokio-websockets**: their examples' `Stream` + `Sink` loop,
  with replies batched as their `Sink` allows: `feed` each reply, `flush` once no further
  message is ready. Default configurations.
- **fastwebsockets**: `WebSocket::after_handshake` on the TCP stream (the crate's direct
  path; the handshake is done by bench-server), `FragmentCollector`, `read_frame` then
  `write_frame`. It has no write batching.
- **raw TCP echo (ceiling)**: the same handshake, then the bytes straight back with only
  the masking key dropped and the payload unmasked in place: the least any WebSocket
  server must do (no message assembly, no validation).

The generator is `volley bench` (closed loop, K messages in flight per connection; open
loop at a fixed rate for W5; idle for W6 and W7), with `--server-pid`: the server's CPU
time (utime + stime, clock ticks) is read from /proc over exactly the measured phase,
and **round trips per server-CPU-second** is the fair figure when the generator, not the
server, saturates its core. W9 uses `fanout-client` (bench/servers). "÷ best peer" is
the ratio to the best of tokio-tungstenite, fastwebsockets and tokio-websockets for that
column (the peer with the best median); "÷ ceiling" the ratio to the raw TCP echo. Every
ratio, in the tables and the targets, is the median over the repetitions of the ratio
within one repetition: the runs of a repetition are seconds apart, while this shared
machine's speed can shift between repetitions (by a quarter, from one run to the next,
in some runs), which a ratio of medians would mix up. "Server busy" is the server's CPU time
over the measured phase: near 100% the server is the bottleneck, below it the generator
(or the round trip) limits the rate. "Spread" is half the range of the repetitions,
relative to the median. Compare servers within a workload, where the runs are
interleaved; figures of different workloads were taken minutes apart, and the machine
may have had other work.
""")
    md.append("## Targets\n")
    body = []
    for w in [w for w in WORKLOADS if w in args.only_set]:
        body.append(f"## {TITLES[w]}\n")
        if w in ("W1", "W2", "W3", "W4"):
            c = conf[w]
            body.append(f"{c['c']:,} connection(s), {c['s']:,} B {'binary' if c.get('binary') else 'text'}, "
                        f"{c['k']} in flight per connection.\n")
            throughput_section(results, w, servers, body, svgdir, rel, targets)
        elif w == "W5":
            rate_section(results, servers, conf["W5"], body, svgdir, rel, targets)
        elif w == "W6":
            body.append(f"`volley bench --idle`: (server RSS after − before) ÷ connections, after holding "
                        f"them {conf['W6']['hold']} s. Resident memory counts everything the process "
                        "touched for the connections: the library's state, but also the tokio task and "
                        "I/O registration, the allocator's overhead and what the handshakes left behind; "
                        "the raw echo, which keeps almost nothing of its own, shows that floor. Socket "
                        "buffers are kernel memory and not in it. tokio-tungstenite's default configuration "
                        "gives every connection a 128 KiB read buffer (`WebSocketConfig::read_buffer_size`).\n")
            body.append("The parked rows run the same echo with `--park-after 100` and `--park-after 0`: "
                        "a connection that received nothing for that long moves to a `volley::park::Parking` "
                        "and its task ends. bench-server and `volley` run on jemalloc configured to return "
                        "freed pages within about 100 ms (.cargo/config.toml), so the memory those tasks freed goes back "
                        "to the system; what the allocator cannot return counts too.\n")
            body.append("The rows of connections that each echoed one message first (`volley bench --idle "
                        "--talk-first`, 20 B) are what a server holds for connections that spoke and fell "
                        "silent: what the first message's reading and writing left behind counts too.\n")
            idle_section(results, w6_servers(servers), conf["W6"], body, svgdir, rel, targets)
        elif w == "W7":
            body.append(f"Every server is asked for `--max-conns` ({conf['W7']['max']:,}) idle connections at "
                        f"once, one pass each: the server as one `SO_REUSEPORT` worker process per "
                        f"{PER_PROCESS:,} connections, as many `volley bench --idle` generators, all opening "
                        f"together; the count held is the server's (its workers' descriptors, read every "
                        f"{SAMPLE_S} s), and a run stops at the count asked for, when the count stops growing for "
                        f"{STALL_S} s, or when the machine runs low on memory. The connections are then held "
                        f"{conf['W7']['hold']} s. Volley runs twice: a task per connection, and parked at "
                        f"once (`--park-after 0`, as in W6).\n")
            ramp_section(results, w7_servers(servers), body, svgdir, rel, targets, facts)
        elif w == "W8":
            c = conf["W8"]
            body.append(f"{c['c']} connections, {c['s']} B text, {c['k']} in flight; Volley with and without "
                        "`--deflate` on both sides, interleaved. None of the peers implements "
                        "permessage-deflate on the server (tokio-tungstenite and fastwebsockets say so in "
                        "their READMEs; tokio-websockets has no extension support), so W8 is Volley against "
                        "itself: the cost ratio is uncompressed round trips per server-CPU-second ÷ "
                        "compressed ones. Volley's default threshold (64 B) sends messages this short "
                        "uncompressed, so this measures negotiation and the per-message checks, not "
                        "compression.\n")
            throughput_section(results, w, servers, body, svgdir, rel, targets, deflate_pair=True)
            for size in c.get("more_sizes", []):
                body.append(f"For comparison (no target), {size:,} B text messages, which are compressed:\n")
                throughput_section(results, w, servers, body, svgdir, rel, targets, deflate_pair=True,
                                   case=f"{size} B")
        elif w == "W9":
            c = conf["W9"]
            body.append(f"`bench-server --impl volley --broadcast` and `fanout-client`: {c['c']:,} receiving "
                        f"connections; a sender connection sends {c['m']} messages of {c['s']} B one at a time "
                        f"(after {c['warmup']} unmeasured), each timed until the last receiver has it. Volley "
                        "only: the peers have no broadcast of pre-encoded messages, and one written for them "
                        "here would measure this harness, not them. The client is one thread too (it reads "
                        f"{c['c']:,} sockets per message); deliveries per server-CPU-second is the server's "
                        "own figure either way.\n")
            fanout_section(results, body, targets)
    md.append("| workload | target | measured | |")
    md.append("|---|---|---:|---|")
    for w, text, value, ok in targets:
        md.append(f"| {w} | {text} | {value} | {verdict(ok)} |")
    md.append("")
    if any(ok is False for _, _, _, ok in targets):
        md.append("What bounds the targets not met, measured with perf, strace and callgrind, and "
                  "what would move them: [PERFORMANCE.md](PERFORMANCE.md).\n")
    if results.failures:
        md.append("**Failed runs:**\n")
        md += [f"- {esc(f)}" for f in results.failures]
        md.append("")
    md += body
    md.append("Raw results of every run: [bench/results.json](bench/results.json).\n")
    path = os.path.join(out_dir, "BENCHMARKS.md")
    with open(path, "w") as f:
        f.write("\n".join(md).rstrip() + "\n")
    with open(os.path.join(svgdir, "results.json"), "w") as f:
        saved = {k: getattr(args, k) for k in SAVED_ARGS}
        json.dump({"command": command, "settings": saved, "servers": servers, "started": started.isoformat(),
                   "finished": finished.isoformat(), "machine": facts, "notes": results.notes,
                   "failures": results.failures, "runs": results.runs}, f, indent=1)
    return path, targets


# What --rerender needs to render a saved run again.
SAVED_ARGS = ["reps", "duration", "warmup", "only", "max_conns", "quick", "server_core", "client_core"]


def rerender(path, out_dir):
    """Writes the report of a saved results.json again, without running anything."""
    with open(path) as f:
        saved = json.load(f)
    args = argparse.Namespace(**saved["settings"])
    args.only_set = set(args.only or WORKLOADS)
    results = Results()
    results.runs = saved["runs"]
    results.notes = saved.get("notes", {})
    results.failures = saved.get("failures", [])
    started = datetime.datetime.fromisoformat(saved["started"])
    finished = datetime.datetime.fromisoformat(saved["finished"])
    # The SVGs and the copy of results.json are written next to the report.
    return write_report(args, results, saved["servers"], saved["machine"], started, finished, out_dir,
                        saved["command"])


def command_line():
    argv = [a for a in sys.argv[1:]]
    return " ".join(["python3", "bench/run.py"] + [shlex.quote(a) for a in argv])


def load_avg():
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


# --------------------------------------------------------------------------- main


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--reps", type=int, default=3, help="repetitions per server and workload (default 3)")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per run (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per run (default 1)")
    p.add_argument("--only", default="", help="comma-separated workloads, e.g. W1,W5 (default: all)")
    p.add_argument("--servers", default="", help=f"comma-separated servers (default: {','.join(SERVER_NAMES)})")
    p.add_argument("--max-conns", type=int, default=1000000,
                   help="W7: connections asked of every server (default 1000000)")
    p.add_argument("--quick", action="store_true",
                   help="tiny counts, 1 repetition, sub-second runs: a smoke test (needs --out)")
    p.add_argument("--out", default="", help="directory for BENCHMARKS.md and bench/*.svg (default: docs/)")
    p.add_argument("--no-build", action="store_true", help="use the binaries already built")
    p.add_argument("--server-core", type=int, default=0, help="core the server is pinned to (default 0)")
    p.add_argument("--client-core", type=int, default=1, help="core the generator is pinned to (default 1)")
    p.add_argument("--rerender", metavar="RESULTS_JSON",
                   help="only write the report again from a saved results.json (to --out, default docs/)")
    args = p.parse_args()

    if args.rerender:
        path, _ = rerender(args.rerender, os.path.abspath(args.out or os.path.join(ROOT, "docs")))
        log(f"report: {path}")
        return 0

    if args.quick:
        if not args.out:
            p.error("--quick does not overwrite docs/BENCHMARKS.md: give --out DIR")
        args.reps = 1
        args.duration = min(args.duration, 0.3)
        args.warmup = min(args.warmup, 0.05)
    args.only = [w.strip().upper() for w in args.only.split(",") if w.strip()]
    for w in args.only:
        if w not in WORKLOADS:
            p.error(f"unknown workload {w} (known: {','.join(WORKLOADS)})")
    args.only_set = set(args.only or WORKLOADS)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()] or SERVER_NAMES
    for s in servers:
        if s not in SERVER_NAMES:
            p.error(f"unknown server {s} (known: {','.join(SERVER_NAMES)})")
    out_dir = os.path.abspath(args.out or os.path.join(ROOT, "docs"))
    if not sys.platform.startswith("linux"):
        sys.exit("run.py: Linux only (taskset, /proc)")
    usable = sorted(os.sched_getaffinity(0))
    for attr in ("server_core", "client_core"):
        if getattr(args, attr) not in usable:
            log(f"run.py: core {getattr(args, attr)} is not available (usable: {usable}); using {usable[-1]}")
            setattr(args, attr, usable[-1])
    if args.server_core == args.client_core:
        log("run.py: server and generator share one core: the figures are not comparable to a two-core run")

    paths = build(args)
    facts = machine_facts()
    facts["load_start"] = load_avg()
    conf = settings(args)
    results = Results()
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="volley-bench-") as logdir:
        for w in RUN_ORDER:
            if w not in args.only_set:
                continue
            log(f"==> {TITLES[w]}")
            if w in ("W1", "W2", "W3", "W4"):
                run_throughput(args, results, paths, servers, w, conf[w], logdir)
            elif w == "W5":
                run_rate(args, results, paths, servers, conf["W5"], logdir)
            elif w == "W6":
                run_idle(args, results, paths, w6_servers(servers), conf["W6"], logdir)
            elif w == "W7":
                run_ramp(args, results, paths, w7_servers(servers), conf["W7"], logdir)
            elif w == "W8":
                if "volley" in servers:
                    run_throughput(args, results, paths, servers, w, conf["W8"], logdir, deflate_pair=True)
            elif w == "W9":
                if "volley" in servers:
                    run_fanout(args, results, paths, conf["W9"], logdir)
    facts["load_end"] = load_avg()
    finished = datetime.datetime.now(datetime.timezone.utc)
    path, targets = write_report(args, results, servers, facts, started, finished, out_dir, command_line())

    log(f"\n==> {len(results.runs)} runs in {time.monotonic() - t0:.0f} s; report: {path}")
    for w, text, value, ok in targets:
        log(f"    {w}: {text}: {value} ({'met' if ok else 'not met' if ok is not None else 'n/a'})")
    if results.failures:
        log(f"\n{len(results.failures)} failed run(s):")
        for f in results.failures:
            log(f"    {f}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
