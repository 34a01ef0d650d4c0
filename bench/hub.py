#!/usr/bin/env python3
"""The hub's benchmarks: `volley serve` as shipped, with the configuration a user would
run, loaded by `volley bench-hub` (clients of Centrifugo's JSON protocol over WebSocket).

Builds the `volley` binary in release mode, writes the configuration (a token secret,
a server API key, one namespace whose channels authenticated clients may subscribe to;
every other key at its default), starts `volley serve --config FILE` pinned to one core
and the generator pinned to the other, and runs the cases:

  fanout-many  10,000 clients, a channel each: connects per second with a token, what a
               subscribe costs, memory per idle client after a burst, then fan-out steps
               at rising rates to random channels (`broadcast` batches, then one
               `publish` per publication)
  fanout-one   10,000 clients on one channel: memory per idle client, then fan-out
               steps at rising rates into that channel
  many         100,000 clients, a channel each, idle after a burst: memory per client
  held         --max-clients (1,000,000) subscribed clients asked for at once: the most
               held
  transports   1,000 readers on one channel over each transport (WebSocket, the
               unidirectional ones, the bidirectional emulation's streams): memory per
               reader, then fan-out steps at rising rates into that channel

Cases past one process's descriptor limit (`many`, `held`) run as several hubs, each its
own `volley serve` on its own port with up to --per-process clients, and as many
generators. Writes docs/HUB-BENCHMARKS.md and docs/bench/hub-results.json (or --out DIR).
Python 3 standard library only; Linux only (taskset, /proc).

    python3 bench/hub.py                    # every case (about 20 minutes)
    python3 bench/hub.py --quick --out DIR  # tiny counts, seconds: the CI smoke
    python3 bench/hub.py --only fanout-one,many --no-build
    python3 bench/hub.py --only transports --transports uni_sse,sse --merge docs/bench/hub-results.json

Exit status: 0 when every run produced its report, 1 otherwise.
"""

import argparse
import concurrent.futures
import datetime
import json
import math
import os
import resource
import secrets
import select
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as lib  # noqa: E402  (bench/run.py: process, machine and format helpers)

ROOT = lib.ROOT
CASES = ["fanout-many", "fanout-one", "many", "held", "transports"]
# The transports case's transports, in the report's order (`volley bench-hub --transport`).
TRANSPORTS = ["websocket", "uni_websocket", "uni_sse", "uni_http_stream", "uni_long_poll", "sse", "http_stream"]
NAMESPACE = "bench"
# The namespace of the warm-up clients: channels of their own, out of every fan-out.
WARM_NAMESPACE = "warm"
# Clients that each hub of the memory cases serves (connect, subscribe, a burst, the
# hold) before the measured ones, and keeps: the memory per idle client is the growth
# from that warm hub, the cost of one more client. From a fresh process, the growth
# also holds what the first clients cost once: the executable's code that serving reads
# in, the runtime's first blocks, the tables' first sizes (about 2.5-3 MiB here, 250 B
# per client at 10,000); the report gives that figure too. What the warm-up's own burst
# freed, the measured clients may reuse: at 10,000 clients, 20, 200 and 1,000 warm-up
# clients gave 825, 814 and 805 B per client: the figure moves by a few dozen bytes.
WARM_CLIENTS = 50
# The warm-up clients' numbers (user IDs), past every case's.
WARM_FROM = 10_000_000
# Clients per hub process in the many-process cases: under the descriptor limit
# (20,000 here) with room for the listener, the API connections and the runtime.
PER_PROCESS = 15000
# Source addresses per generator in the many-process cases (from 127.0.0.2 up).
SOURCES_PER_GENERATOR = 2
# Connects and subscribes in flight per generator when many generators share a core.
MANY_CONCURRENCY = 32
# A many-process run stops when the machine's available memory falls below this
# fraction of the total (or 4 GiB, whichever is more).
MEMORY_GUARD = 0.2
MEMORY_GUARD_MIN = 4 << 30
# A many-process run stops when the clients connected and subscribed have not grown
# for this long (seconds).
STALL_S = 60
# How often a many-process run reads the hubs' counts, the cores and the memory (s).
SAMPLE_S = 2
# The held case keeps its clients this long once all are subscribed, reading the count:
# longer than the keepalive's interval (the protocol's pings every 25 s) and its
# timeout.
STEADY_S = 75
# The held case's ramp: connects per second, all generators together. A burst as fast
# as the cores go leaves clients waiting longer than the protocol's pong timeout (8 s)
# once the cores are saturated, and the hub drops them (3012): a ramp finds the count
# the machine holds rather than the count a burst survives.
HELD_RAMP = 2000
# The held case's ladder: the goal, then what this machine was seen to hold (a full run
# stops at the first count held through the steady hold).
HELD_COUNTS = [1_000_000, 400_000]
# The soft descriptor limit the hub is started with, as a login shell gives it: `volley
# serve` raises it to the hard limit itself, and the report says whether it did.
SHELL_SOFT_NOFILE = 1024
# The goals of issue 18.
GOAL_BYTES = 1024
GOAL_HELD = 1_000_000
GOAL_DELIVERIES_PER_CPU = 1_000_000
GOAL_P99_US = 100_000
# Centrifugo's published memory per idle connection (its documentation), for context.
CENTRIFUGO_BYTES = 27_000
CENTRIFUGO_TUNED_BYTES = 10_900


def settings(args):
    """Case parameters: full size, or tiny with --quick."""
    q = args.quick
    return {
        "fanout-many": {
            "clients": 200 if q else 10000, "channels": None,
            "rates": [200, 1000] if q else [3000, 10000, 30000, 100000, 200000],
            # broadcast of 100 channels per call, then one publish per publication.
            "batches": [20, 1] if q else [100, 1],
        },
        "fanout-one": {
            "clients": 200 if q else 10000, "channels": 1,
            "rates": [5, 20] if q else [1, 10, 30, 100, 200, 400],
            "batches": [1],
        },
        "many": {"clients": 300 if q else 100000, "steady_s": 1 if q else STEADY_S},
        "held": {"counts": [300] if q else args.held_counts, "limit_s": 60 if q else args.held_limit,
                 "steady_s": 1 if q else STEADY_S, "ramp": 1000 if q else args.held_ramp},
        "transports": {
            "clients": 20 if q else 1000, "channels": 1,
            "rates": [20] if q else [10, 50, 100, 200],
            "batches": [1], "transports": TRANSPORTS,
        },
        "per_process": 100 if q else PER_PROCESS,
        "warm": 20 if q else WARM_CLIENTS,
        # Longer than the default client.park_after (5 s): idle clients are parked by then.
        "hold": 0.3 if q else 7.0,
        "burst": 2,
        "duration": 0.3 if q else args.duration,
        "warmup": 0.1 if q else args.warmup,
    }


log = lib.log


def title(case, conf):
    """A case's heading, with the counts this run used."""
    n = conf[case].get("clients") or conf[case]["counts"][0]
    return {
        "fanout-many": f"{n:,} clients, a channel each",
        "fanout-one": f"{n:,} clients on one channel",
        "many": f"{n:,} clients, a channel each, over several hubs",
        "held": "The most subscribed clients held",
        "transports": f"{n:,} readers on one channel, per transport",
    }[case]


def build(args):
    manifest = os.path.join(ROOT, "Cargo.toml")
    if not args.no_build:
        cmd = ["cargo", "build", "--release", "--manifest-path", manifest, "-p", "volley-cli"]
        log("==> " + " ".join(cmd))
        subprocess.run(cmd, cwd=ROOT, check=True)
    path = os.path.join(lib.target_dir(manifest), "release", "volley")
    if not os.access(path, os.X_OK):
        sys.exit(f"hub.py: {path} is missing (build it, or drop --no-build)")
    return path


# The transports case's additions to the configuration: the unidirectional transports
# on, and the namespace's history, which long polling resumes from (every transport of
# the case runs with it, WebSocket included).
TRANSPORTS_CONFIG = """
[uni_sse]
enabled = true

[uni_http_stream]
enabled = true

[uni_websocket]
enabled = true

[uni_long_polling]
enabled = true
"""
TRANSPORTS_NAMESPACE = """history_size = 1000
history_ttl = "60s"
allow_recovery = true
"""


def config_text(port, secret, api_key, transports=False):
    """The configuration the hub runs with: what a user writes to let authenticated
    clients subscribe to one namespace and a backend publish; all else at its default.
    With `transports`, the additions of the transports case."""
    return f"""# volley serve: the hub's benchmark configuration. Every key not here is at its
# default (`volley default-config`): pings every 25 s, 100 commands per second per client,
# 1 MiB outbound queue per client, up to 1,000,000 connections.
[http_server]
address = "127.0.0.1"
port = {port}

[client.token]
hmac_secret_key = "{secret}"

[http_api]
key = "{api_key}"

[[channel.namespaces]]
name = "{WARM_NAMESPACE}"
allow_subscribe_for_client = true

[[channel.namespaces]]
name = "{NAMESPACE}"
allow_subscribe_for_client = true
{TRANSPORTS_NAMESPACE if transports else ""}{TRANSPORTS_CONFIG if transports else ""}"""


def shell_limits():
    """preexec_fn of the hub: the soft descriptor limit of a login shell (the hard
    limit unchanged), so that the run shows `volley serve` raising it."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = SHELL_SOFT_NOFILE if hard == resource.RLIM_INFINITY else min(SHELL_SOFT_NOFILE, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def soft_nofile(pid):
    """The soft descriptor limit of process `pid` (from /proc/PID/limits), or None."""
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    v = line.split()[3]
                    return None if v == "unlimited" else int(v)
    except (OSError, ValueError, IndexError):
        pass
    return None


class OtherWork:
    """How busy the machine was with work other than this run's: the CPU time of both
    cores (/proc/stat) less that of the hubs (`pids`) and of this script's children
    (the generators, once they have been waited for), as a share of one core."""

    def __init__(self, pids):
        self.pids = list(pids)
        self.t0 = time.monotonic()
        self.busy0 = self.busy()
        self.own0 = cpu_sum(self.pids) + self.children()

    @staticmethod
    def busy():
        total = sum(t - i for t, i in CoreClock.read().values())
        return total / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def children():
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    def share(self, running=()):
        """The share; `running` are pids of generators not yet waited for."""
        own = cpu_sum(self.pids) + self.children() + cpu_sum(running) - self.own0
        wall = time.monotonic() - self.t0
        return max(0.0, (self.busy() - self.busy0 - own) / wall) if wall > 0 else None


def portable(arg):
    """A command-line argument as the report shows it: a path inside the repository
    relative to it, a path outside it by its name alone (the report names no machine's
    directories)."""
    if os.sep not in arg or not os.path.exists(arg):
        return arg
    path = os.path.abspath(arg)
    return os.path.relpath(path, ROOT) if path.startswith(ROOT + os.sep) else os.path.basename(path)


def stamp(facts):
    """When a run ended, and on which commit: a report may merge runs of other days."""
    return {"at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": facts["volley_commit"]}


def cpu_sum(pids):
    """CPU seconds (user + system) of these processes, from /proc/PID/stat."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


class CoreClock:
    """The business of each core since the last reading, from /proc/stat."""

    def __init__(self):
        self.last = self.read()

    @staticmethod
    def read():
        out = {}
        try:
            with open("/proc/stat") as f:
                for line in f:
                    if line.startswith("cpu") and line[3].isdigit():
                        name, *v = line.split()
                        v = [int(x) for x in v]
                        out[name] = (sum(v), v[3] + v[4])  # total, idle + iowait
        except (OSError, ValueError, IndexError):
            pass
        return out

    def busy(self):
        now = self.read()
        out = {}
        for name, (total, idle) in now.items():
            t0, i0 = self.last.get(name, (0, 0))
            if total > t0:
                out[name] = round(1 - (idle - i0) / (total - t0), 3)
        self.last = now
        return out


# A run starts once every core has been at most this busy for QUIET_S seconds in a row
# (waiting at most QUIET_LIMIT_S): the last run's processes exiting, the kernel freeing
# their memory and closing their sockets, otherwise take a share of the next run's cores.
QUIET_BUSY, QUIET_S, QUIET_LIMIT_S = 0.05, 2, 60


def wait_quiet():
    """Waits until the machine is quiet (see QUIET_BUSY); returns the seconds waited."""
    start = time.monotonic()
    clock, quiet = CoreClock(), 0
    while quiet < QUIET_S and time.monotonic() - start < QUIET_LIMIT_S:
        time.sleep(1)
        busy = clock.busy()
        quiet = quiet + 1 if busy and max(busy.values()) <= QUIET_BUSY else 0
    return round(time.monotonic() - start, 1)


class Hub:
    """`volley serve --config FILE`, pinned to the server core; stopped with SIGTERM.
    `extra_config` is appended to the configuration (bench/cluster.py's broker)."""

    def __init__(self, volley, logdir, core, secret, api_key, name="hub", transports=False, extra_config=""):
        self.port = lib.free_port()
        self.config = os.path.join(logdir, f"{name}-{self.port}.toml")
        with open(self.config, "w") as f:
            f.write(config_text(self.port, secret, api_key, transports) + extra_config)
        self.api_key = api_key
        self.errlog = tempfile.NamedTemporaryFile(dir=logdir, prefix=f"{name}-", suffix=".log", delete=False)
        cmd = ["taskset", "-c", str(core), volley, "serve", "--config", self.config]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.errlog, preexec_fn=shell_limits,
                                     text=True, bufsize=1, start_new_session=True)
        self.pid = self.proc.pid  # taskset execs the server: same process
        ready, _, _ = select.select([self.proc.stdout], [], [], 15)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"volley serve did not start: {line.strip() or self.stderr_tail()}")
        self.url = f"http://127.0.0.1:{self.port}"
        self.nofile = soft_nofile(self.pid)
        self.warm_gen, self.warm_clients = None, 0

    def warm(self, volley, secret, core, conf, clients):
        """Serves `clients` warm-up clients (in WARM_NAMESPACE, each on a channel of its
        own: connect, subscribe, the burst, the hold) and keeps them until stop().
        Returns the facts: the clients, and the hub's RSS before them."""
        fresh = lib.rss_sum([self.pid])
        cmd = ["taskset", "-c", str(core), volley, "bench-hub", self.url, "-c", str(clients),
               "--client-from", str(WARM_FROM), "--secret", secret, "--api-key", self.api_key,
               "--namespace", WARM_NAMESPACE, "--json", "--no-progress", "--events", "--wait",
               "--hold", str(conf["hold"]), "--burst", str(conf["burst"])]
        self.warm_gen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                         preexec_fn=lib.raise_nofile)
        gen = {"proc": self.warm_gen, "events": {}}
        deadline = time.monotonic() + 60 + conf["hold"]
        while time.monotonic() < deadline and not gen.get("eof"):
            read_events([gen], 1)
            if "idle" in gen["events"]:
                self.warm_clients = clients
                return {"warm_clients": clients, "rss_fresh": fresh}
        raise RuntimeError(f"the {clients} warm-up clients did not go idle (events: {sorted(gen['events'])})")

    def alive(self):
        return self.proc.poll() is None

    def info(self):
        """The server API's `info`: (clients, subscriptions), the warm-up clients left
        out, or None."""
        req = urllib.request.Request(f"{self.url}/api/info", data=b"{}", method="POST",
                                     headers={"X-API-Key": self.api_key, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                node = json.loads(r.read())["result"]["nodes"][0]
                return (node.get("num_clients", 0) - self.warm_clients,
                        node.get("num_subs", 0) - self.warm_clients)
        except (OSError, ValueError, KeyError, IndexError):
            return None

    def stderr_tail(self):
        return last_lines(self.errlog.name)

    def stop(self):
        if self.warm_gen is not None:
            stop_process(self.warm_gen)
            self.warm_gen.stdout.close()
        stop_process(self.proc, group=True, timeout=30)
        self.proc.stdout.close()
        self.errlog.close()


def last_lines(path, n=3):
    """The last `n` lines of a log file, on one line ("" if it cannot be read)."""
    try:
        with open(path, errors="replace") as f:
            return " | ".join(f.read().strip().splitlines()[-n:])
    except OSError:
        return ""


def stop_process(proc, group=False, timeout=10):
    """SIGTERM, then SIGKILL if it has not exited within `timeout` s (to its process
    group with `group`), and waits for it."""
    kill = os.killpg if group else os.kill
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            kill(proc.pid, sig)
        except OSError:
            pass
        try:
            proc.wait(timeout=timeout)
            break
        except subprocess.TimeoutExpired:
            pass
    proc.wait()


def generator_cmd(volley, hub, secret, clients, channels=None, rates=(), batches=(1,), conf=None, extra=()):
    cmd = [volley, "bench-hub", hub.url, "-c", str(clients), "--secret", secret, "--api-key", hub.api_key,
           "--namespace", NAMESPACE, "--server-pid", str(hub.pid), "--json", "--no-progress",
           "--hold", str(conf["hold"]), "--burst", str(conf["burst"])]
    if channels is not None:
        cmd += ["--channels", str(channels)]
    if rates:
        cmd += ["--rates", ",".join(f"{r:g}" for r in rates), "--batches", ",".join(str(b) for b in batches),
                "-d", str(conf["duration"]), "--warmup", str(conf["warmup"])]
    return cmd + list(extra)


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if isinstance(d, dict) and d.get("mode") == "hub":
            return d
    return None


def run_one(args, volley, logdir, secret, name, conf, case, transport=None):
    """One hub, one generator: returns (report, error, hub facts). With `transport`, the
    generator's clients are of that transport, and the hub has the transports case's
    configuration."""
    api_key = secrets.token_hex(16)
    quiet_after = 0 if args.quick else wait_quiet()  # --quick: a smoke test, maybe among others
    try:
        hub = Hub(volley, logdir, args.server_core, secret, api_key, transports=transport is not None)
    except RuntimeError as e:
        return None, str(e), {}
    facts = {"nofile_soft": hub.nofile, "quiet_after_s": quiet_after}
    try:
        if transport is None:
            try:
                facts.update(hub.warm(volley, secret, args.client_core, conf, conf["warm"]))
            except RuntimeError as e:
                return None, str(e), facts
        cmd = ["taskset", "-c", str(args.client_core)] + generator_cmd(
            volley, hub, secret, case["clients"], case.get("channels"), case.get("rates", ()),
            case.get("batches", (1,)), conf,
            extra=["--transport", transport, "--max-p99", f"{args.max_p99:g}"] if transport else ())
        steps = len(case.get("rates", ())) * len(case.get("batches", (1,)))
        timeout = 120 + case["clients"] / 500 + steps * (conf["duration"] + conf["warmup"] + 10)
        before = OtherWork([hub.pid])
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=lib.raise_nofile)
        except subprocess.TimeoutExpired:
            return None, f"timed out after {timeout:.0f} s", facts
        facts["other_work"] = before.share()
        data = last_json(p.stdout)
        if data is None:
            tail = " | ".join(p.stderr.strip().splitlines()[-3:])
            return None, f"exit {p.returncode}, no report: {tail}", facts
        error = None if p.returncode == 0 else f"exit {p.returncode}"
        want = case["clients"]
        sub = (data.get("subscribe") or {}).get("subscribed", 0)
        if sub < want:
            error = error or f"only {sub} of {want} clients subscribed: " + str(
                data["connect"].get("first_error") or (data.get("subscribe") or {}).get("first_error"))
        if not hub.alive():
            error = error or f"the hub exited: {hub.stderr_tail()}"
        return data, error, facts
    finally:
        hub.stop()


def stop_generators(gens, wait_s=60):
    """Interrupts the generators (SIGINT: each prints its report; SIGCONT, should one be
    stopped), reads what they print for up to `wait_s` seconds, kills those still
    running then, and keeps each one's stderr (`stderr`) before closing its pipes."""
    for g in gens:
        if g["proc"].poll() is None:
            g["proc"].send_signal(signal.SIGINT)
            g["proc"].send_signal(signal.SIGCONT)
    deadline = time.monotonic() + wait_s
    while any(not g.get("eof") for g in gens) and time.monotonic() < deadline:
        read_events(gens, 1)
    for g in gens:
        try:
            g["proc"].wait(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            g["proc"].kill()
            g["proc"].wait()
        g["err"].seek(0)
        g["stderr"] = g["err"].read().decode(errors="replace")
        g["proc"].stdout.close()
        g["err"].close()


def read_events(gens, timeout):
    """Reads what the generators printed within `timeout` seconds: each generator's
    state keeps its latest event of each kind and, at the end, its report. Raw reads
    (no buffered readline), so that no line waits in a buffer select cannot see."""
    fds = {g["proc"].stdout.fileno(): g for g in gens if not g.get("eof")}
    if not fds:
        time.sleep(timeout)
        return
    ready, _, _ = select.select(list(fds), [], [], timeout)
    for fd in ready:
        g = fds[fd]
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            g["eof"] = True
            continue
        g["buf"] = g.get("buf", b"") + chunk
        *lines, g["buf"] = g["buf"].split(b"\n")
        for line in lines:
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if "event" in d:
                g["events"][d["event"]] = d["data"]
            elif d.get("mode") == "hub":
                g["report"] = d


def run_many(args, volley, logdir, secret, conf, count, limit_s, label, steady_s=0, ramp=0, warm=False):
    """`count` clients over several hubs of at most `per_process` clients each, one
    generator per hub, all at once; each generator connects, subscribes, receives the
    burst, reads its hub's memory after the hold, and then keeps its clients until told
    to stop. The count held is the hubs' own (`info`: clients and subscriptions), read
    once every generator is idle, or when the run stops: the memory guard, no growth for
    STALL_S, or `limit_s`. With `steady_s`, the clients are then held that long (the
    protocol's pings answered) and the count is read along: what stays held.
    With `ramp`, the generators together start at most that many connects per second,
    and each client subscribes as soon as it is connected. With `warm`, each hub first
    serves conf["warm"] warm-up clients (Hub.warm)."""
    share = conf["per_process"]
    nproc = math.ceil(count / share)
    out = {"clients": count, "processes": nproc, "per_process": share, "ramp": ramp}
    hubs, gens = [], []
    total = lib.meminfo("MemTotal") or 0
    guard = max(MEMORY_GUARD_MIN, int(total * MEMORY_GUARD))
    reason = None
    t0 = time.monotonic()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=16)
    try:
        api_key = secrets.token_hex(16)
        for i in range(nproc):
            hubs.append(Hub(volley, logdir, args.server_core, secret, api_key, name=f"hub{i}"))
        out["nofile_soft"] = hubs[0].nofile
        if warm:
            out["warm"] = list(pool.map(lambda h: h.warm(volley, secret, args.client_core, conf, conf["warm"]), hubs))
        for i, hub in enumerate(hubs):
            c = min(share, count - i * share)
            extra = ["--client-from", str(i * share), "--events", "--wait",
                     "--source-from", lib.generator_source(i, SOURCES_PER_GENERATOR),
                     "--source-addrs", str(SOURCES_PER_GENERATOR),
                     "--connect-concurrency", str(MANY_CONCURRENCY),
                     "--subscribe-concurrency", str(MANY_CONCURRENCY)]
            if ramp:
                extra += ["--connect-rate", f"{ramp / nproc:g}", "--subscribe-at-once"]
            cmd = ["taskset", "-c", str(args.client_core)] + generator_cmd(volley, hub, secret, c, conf=conf,
                                                                         extra=extra)
            err = tempfile.TemporaryFile(dir=logdir)
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, bufsize=0,
                                    preexec_fn=lib.raise_nofile)
            gens.append({"proc": proc, "err": err, "events": {}, "clients": c})
        other = OtherWork([h.pid for h in hubs])
        peak, grew_at, last_sample = (0, 0), time.monotonic(), 0.0
        cores = CoreClock()
        timeline = out["timeline"] = []

        def sample(steady=False):
            """The hubs' counts, the cores' business and the memory, into the timeline."""
            infos = list(pool.map(Hub.info, hubs))
            held = (sum(i[0] for i in infos if i), sum(i[1] for i in infos if i))
            timeline.append({"t": round(time.monotonic() - t0, 1), "clients": held[0], "subscriptions": held[1],
                             "unanswered": sum(1 for i in infos if i is None), "cores": cores.busy(),
                             "mem_available": lib.meminfo("MemAvailable"), "steady": steady})
            return held

        def trouble():
            avail = lib.meminfo("MemAvailable")
            if avail is not None and avail < guard:
                return (f"memory: the machine's available memory fell to {lib.fmt_bytes(avail)} (the run stops "
                        f"below {lib.fmt_bytes(guard)})")
            if not all(h.alive() for h in hubs):
                dead = next(h for h in hubs if not h.alive())
                return f"a hub exited: {dead.stderr_tail()}"
            return None

        while reason is None:
            read_events(gens, 0.5)
            now = time.monotonic()
            if all("idle" in g["events"] for g in gens):
                reason = f"all {nproc} generators idle"
            elif (reason := trouble()) is not None:
                pass
            elif all(g["proc"].poll() is not None for g in gens):
                reason = "the generators ended"
            elif now - t0 > limit_s:
                reason = f"time limit ({limit_s:.0f} s)"
            elif now - last_sample >= SAMPLE_S:
                last_sample = now
                held = sample()
                if held > peak:
                    peak, grew_at = held, now
                elif now - grew_at > STALL_S:
                    reason = f"no more clients connected or subscribed for {STALL_S} s"
        out["seconds"] = time.monotonic() - t0
        out["reason"] = reason
        if reason.endswith("generators idle") and steady_s > 0:
            # Held: every client keeps answering pings (the hub's, and the WebSocket
            # keepalive's) for steady_s, and the count is read all along.
            end_at, low = time.monotonic() + steady_s, None
            cores.busy()  # from here
            cpu0, held0 = cpu_sum(h.pid for h in hubs), time.monotonic()
            gcpu0 = cpu_sum(g["proc"].pid for g in gens)
            while time.monotonic() < end_at:
                read_events(gens, SAMPLE_S)
                held = sample(steady=True)
                low = held[1] if low is None else min(low, held[1])
                if (why := trouble()) is not None:
                    out["reason"] = reason = f"while held: {why}"
                    break
            out["steady_s"] = steady_s
            out["steady_min_subscriptions"] = low
            out["steady_hub_cpu_share"] = (cpu_sum(h.pid for h in hubs) - cpu0) / (time.monotonic() - held0)
            out["steady_generator_cpu_share"] = (cpu_sum(g["proc"].pid for g in gens) - gcpu0) / (
                time.monotonic() - held0)
            busy = [e["cores"] for e in timeline if e.get("steady") and e.get("cores")]
            out["steady_cores"] = {c: statistics.mean(b[c] for b in busy if c in b) for c in (busy[0] if busy else {})}
        peak = max([peak] + [(e["clients"], e["subscriptions"]) for e in timeline])
        out["peak_clients"], out["peak_subscriptions"] = peak
        if not reason.endswith("generators idle"):
            # Stop opening at once; count what is held.
            for g in gens:
                if g["proc"].poll() is None:
                    g["proc"].send_signal(signal.SIGSTOP)
        out["other_work"] = other.share(running=[g["proc"].pid for g in gens])
        infos = list(pool.map(Hub.info, hubs))
        out["held_clients"] = sum(i[0] for i in infos if i)
        out["held_subscriptions"] = sum(i[1] for i in infos if i)
        out["unanswered_hubs"] = sum(1 for i in infos if i is None)
        out["rss_total"] = lib.rss_sum([h.pid for h in hubs])
        out["mem_available"] = lib.meminfo("MemAvailable")
        idle = [g["events"]["idle"] for g in gens if "idle" in g["events"]]
        grown = sum(i["rss_idle"] - i["rss_before"] for i in idle if i.get("rss_idle") and i.get("rss_before"))
        clients = sum(i["clients_held"] for i in idle)
        out["idle_reports"] = len(idle)
        out["idle_clients"] = clients
        out["rss_per_client"] = grown / clients if clients else None
        out["rss_per_client_by_process"] = [i.get("rss_per_client") for i in idle]
        if warm and len(idle) == len(hubs):
            # From fresh processes: each hub's growth since its start, over every client.
            fresh = [g["events"]["idle"]["rss_idle"] - w["rss_fresh"] for g, w in zip(gens, out["warm"])]
            out["rss_per_client_fresh"] = sum(fresh) / (clients + sum(w["warm_clients"] for w in out["warm"]))
        anon = [i for i in idle if i.get("anon_idle") is not None and i.get("anon_before") is not None]
        anon_clients = sum(i["clients_held"] for i in anon)
        out["anon_per_client"] = (sum(i["anon_idle"] - i["anon_before"] for i in anon) / anon_clients
                                  if anon and anon_clients else None)
        conn = [g["events"]["connected"] for g in gens if "connected" in g["events"]]
        out["connected"] = sum(c["connected"] for c in conn)
        out["connect_errors"] = sum(c["errors"] for c in conn)
        out["first_connect_error"] = next((c["first_error"] for c in conn if c.get("first_error")), None)
        subs = [g["events"]["subscribed"] for g in gens if "subscribed" in g["events"]]
        out["subscribed"] = sum(s["subscribed"] for s in subs)
        out["burst_complete"] = sum(i["clients_complete"] for i in idle)
    except RuntimeError as e:
        out["error"] = str(e)
        out["reason"] = str(e)
    finally:
        if (out.get("reason") or "").startswith("memory"):
            for h in hubs:
                h.stop()  # their memory back first
        stop_generators(gens)
        out["client_errors"] = sum((g.get("report") or {}).get("errors", 0) for g in gens)
        out["first_client_error"] = next((g["report"].get("first_error") for g in gens
                                          if g.get("report") and g["report"].get("first_error")), None)
        for h in hubs:
            if h.proc.poll() is None:
                h.stop()
        pool.shutdown()
    log(f"    {label}: {out.get('held_subscriptions', 0):,} subscribed clients held of {count:,} "
        f"({nproc} hubs), {lib.fmt_bytes(out.get('rss_per_client'))}/client; {out.get('reason')}")
    return out


# --------------------------------------------------------------------------- figures


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def get(d, *path):
    for k in path:
        if d is None:
            return None
        d = d.get(k) if isinstance(d, dict) else None
    return d


def share(cost, key="server_cpu_s"):
    """The share of one core a side spent over a phase (CPU seconds ÷ the window they
    were read over)."""
    window = (cost or {}).get("cpu_window_s") or (cost or {}).get("seconds")
    if not cost or cost.get(key) is None or not window:
        return None
    return cost[key] / window


def fmt_pct(v):
    return "–" if v is None else f"{v:.0%}"


def fmt_int(v):
    return "–" if v is None else f"{v:,.0f}"


def step_rows(runs):
    """Fan-out steps of several repetitions, by (batch, rate): lists of step reports."""
    rows = {}
    for d in runs:
        for s in d.get("fanout", []):
            rows.setdefault((s["batch"], s["rate"]), []).append(s)
    return rows


def bound(cost, what="the server"):
    """What bounded a phase, from the two cores' shares."""
    srv, gen = share(cost), share(cost, "generator_cpu_s")
    if srv is None or gen is None:
        return "–"
    if srv >= 0.85 and srv >= gen:
        return f"server core ({srv:.0%} busy)"
    if gen >= 0.85:
        return f"generator core ({gen:.0%} busy; server {srv:.0%})"
    return f"neither core (server {srv:.0%}, generator {gen:.0%}): round trips and pacing"


def fanout_table(md, runs, goal_rows, shape):
    rows = step_rows(runs)
    if not rows:
        md.append("No fan-out step ran.\n")
        return
    md.append("| API call | publications/s asked | publications/s made | deliveries/s | server busy | generator busy "
              "| deliveries per server-CPU-s | p50 | p99 | p99.9 | max | lost | |")
    md.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    best = None
    for (batch, rate), steps in rows.items():
        call = "publish" if batch == 1 else f"broadcast × {batch}"
        dps = med([s["deliveries_per_sec"] for s in steps])
        per_cpu = med([s.get("deliveries_per_server_cpu_s") for s in steps])
        p99 = med([get(s, "latency_us", "p99") for s in steps])
        stopped = [s["stopped"] for s in steps if s.get("stopped")]
        md.append(f"| {call} | {rate:,.0f} | {lib.fmt_num(med([s['publications_per_sec'] for s in steps]))} | "
                  f"{lib.fmt_num(dps)} | {fmt_pct(med([share(s['cost']) for s in steps]))} | "
                  f"{fmt_pct(med([share(s['cost'], 'generator_cpu_s') for s in steps]))} | "
                  f"{lib.fmt_num(per_cpu)} | {lib.fmt_us(med([get(s, 'latency_us', 'p50') for s in steps]))} | "
                  f"{lib.fmt_us(p99)} | {lib.fmt_us(med([get(s, 'latency_us', 'p999') for s in steps]))} | "
                  f"{lib.fmt_us(med([get(s, 'latency_us', 'max') for s in steps]))} | "
                  f"{fmt_int(med([s['lost'] for s in steps]))} | "
                  f"{'stopped rising: ' + lib.esc(stopped[0]) if stopped else ''} |")
        if p99 is not None and p99 < GOAL_P99_US and per_cpu is not None and (best is None or per_cpu > best[1]):
            best = (dps, per_cpu, p99, call, rate, steps)
    md.append("")
    top = max((s for steps in rows.values() for s in steps), key=lambda s: s["deliveries_per_sec"])
    at_top = f"at the most deliveries/s ({lib.fmt_num(top['deliveries_per_sec'])}): {bound(top['cost'])}"
    if best:
        dps, per_cpu, p99, call, rate, steps = best
        goal_rows.append((f"fan-out, {shape}: the most deliveries per server-CPU-s with p99 < 100 ms",
                          f"{lib.fmt_num(per_cpu)} per server-CPU-s ({lib.fmt_num(dps)} deliveries/s, {call}, "
                          f"{rate:,.0f} publications/s, p99 {lib.fmt_us(p99)})",
                          f"{GOAL_DELIVERIES_PER_CPU:,} per server-CPU-s, p99 < 100 ms",
                          per_cpu >= GOAL_DELIVERIES_PER_CPU, at_top))
    else:
        goal_rows.append((f"fan-out, {shape}", f"no step with p99 < 100 ms (the lowest p99: "
                          f"{lib.fmt_us(min(get(s, 'latency_us', 'p99') or 1e12 for st in rows.values() for s in st))}"
                          f"; the most: {lib.fmt_num(top['deliveries_per_sec'])} deliveries/s, "
                          f"{lib.fmt_num(top.get('deliveries_per_server_cpu_s'))} per server-CPU-s, p99 "
                          f"{lib.fmt_us(get(top, 'latency_us', 'p99'))})",
                          f"{GOAL_DELIVERIES_PER_CPU:,} per server-CPU-s, p99 < 100 ms", False, at_top))


def phase_rows(md, runs):
    """Connect, subscribe, burst and idle figures of a 10k case (medians)."""
    c = lambda *p: med([get(d, *p) for d in runs])  # noqa: E731
    md.append("| phase | figure | |")
    md.append("|---|---|---|")
    md.append(f"| connect (TCP, WebSocket handshake, `connect` with an HS256 token, its reply) | "
              f"{lib.fmt_num(c('connect', 'per_sec'))} connects/s, {c('connect', 'server_cpu_us_each') or 0:.0f} µs "
              f"server CPU each; latency p50 {lib.fmt_us(c('connect', 'latency_us', 'p50'))}, p99 "
              f"{lib.fmt_us(c('connect', 'latency_us', 'p99'))} with {runs[0]['connect']['concurrency']} in "
              f"flight | {bound(runs[0]['connect']['cost'])} |")
    md.append(f"| subscribe (command to reply) | {lib.fmt_num(c('subscribe', 'per_sec'))} subscribes/s, "
              f"{c('subscribe', 'server_cpu_us_each') or 0:.1f} µs server CPU and "
              f"{lib.fmt_bytes(c('subscribe', 'rss_per_subscription'))} of server memory each; latency p50 "
              f"{lib.fmt_us(c('subscribe', 'latency_us', 'p50'))}, p99 {lib.fmt_us(c('subscribe', 'latency_us', 'p99'))} "
              f"with {runs[0]['subscribe']['concurrency']} in flight | {bound(runs[0]['subscribe']['cost'])} |")
    md.append(f"| burst ({runs[0]['idle']['burst']} publications per channel, `broadcast` of up to 1,000 channels "
              f"per call) | {fmt_int(c('idle', 'clients_complete'))} "
              f"clients received all, in {c('idle', 'burst_cost', 'seconds') or 0:.2f} s | |")
    md.append(f"| idle, {runs[0]['idle']['hold_s']} s after the burst | "
              f"**{lib.fmt_bytes(c('idle', 'rss_per_client'))} per client** (server RSS "
              f"{lib.fmt_bytes(c('warm', 'rss_fresh'))} fresh, {lib.fmt_bytes(c('idle', 'rss_before'))} with the "
              f"{fmt_int(c('warm', 'warm_clients'))} warm-up clients held, {lib.fmt_bytes(c('idle', 'rss_idle'))} "
              f"idle){anon_note(c('idle', 'anon_per_client'))}; {fresh_note(med([fresh_per_client(d) for d in runs]))}"
              f" | |")

    md.append(f"| where the idle memory is | {memory_split(runs)} | |")
    md.append("")


def anon_note(anon):
    """What of the memory per client is anonymous (heap, stacks). Empty for runs that
    did not record it."""
    if anon is None:
        return ""
    return f"; {lib.fmt_bytes(anon)} of it anonymous memory (heap and stacks)"


def fresh_per_client(d):
    """(RSS idle − RSS of the fresh process) ÷ every client, warm-up ones included, from
    one report of a 10k case (None without the warm-up's figures)."""
    a, b = get(d, "idle", "rss_idle"), get(d, "warm", "rss_fresh")
    n = (get(d, "idle", "clients_held") or 0) + (get(d, "warm", "warm_clients") or 0)
    return (a - b) / n if a is not None and b is not None and n else None


def fresh_note(fresh):
    """The growth from the fresh process per client, in words ("" without it)."""
    if fresh is None:
        return ""
    return f"{lib.fmt_bytes(fresh)} per client from the fresh process (what the first clients cost once included)"


def grown(d, after, before, n):
    """(RSS at `after` − RSS at `before`) ÷ the count at `n`, from one report."""
    a, b, k = get(d, *after), get(d, *before), get(d, *n)
    return (a - b) / k if a is not None and b is not None and k else None


def memory_split(runs):
    """Where the idle memory per client went: the connection, the subscription, what the
    burst left (medians)."""
    connected = med([grown(d, ("connect", "rss_after"), ("idle", "rss_before"), ("connect", "connected")) for d in runs])
    sub = med([get(d, "subscribe", "rss_per_subscription") for d in runs])
    burst = med([grown(d, ("idle", "rss_idle"), ("subscribe", "rss_after"), ("idle", "clients_held")) for d in runs])
    return (f"{lib.fmt_bytes(connected)} per client once connected, {lib.fmt_bytes(sub)} more per subscription, "
            f"{lib.fmt_bytes(burst)} more after the burst and the hold")


def timeline_table(md, timeline, rows=16):
    """A many-process run's samples, thinned to about `rows`: the count held, the two
    cores' business and the memory left."""
    if not timeline:
        return
    step = max(1, math.ceil(len(timeline) / rows))
    picked = timeline[::step]
    if picked[-1] is not timeline[-1]:
        picked.append(timeline[-1])
    md.append("| seconds | subscribed | connected | hubs not answering | core 0 (hubs) | core 1 (generators) "
              "| memory available |")
    md.append("|---:|---:|---:|---:|---:|---:|---:|")
    for e in picked:
        cores = e.get("cores") or {}
        md.append(f"| {e['t']:.0f} | {e['subscriptions']:,} | {e['clients']:,} | {e.get('unanswered', 0)} | "
                  f"{fmt_pct(cores.get('cpu0'))} | {fmt_pct(cores.get('cpu1'))} | "
                  f"{lib.fmt_bytes(e.get('mem_available'))} |")
    md.append("")


def best_step(data):
    """The fan-out step of a report with the most deliveries per server-CPU-second among
    those whose p99 is under the goal (100 ms), or None."""
    steps = [s for s in (data or {}).get("fanout", [])
             if s.get("deliveries_per_server_cpu_s") and (get(s, "latency_us", "p99") or 1e12) < GOAL_P99_US]
    return max(steps, key=lambda s: s["deliveries_per_server_cpu_s"]) if steps else None


def transports_section(body, runs, conf):
    """The transports case: per transport, memory per reader and its best fan-out step."""
    c = conf["transports"]
    order = lambda r: TRANSPORTS.index(r["transport"]) if r.get("transport") in TRANSPORTS else 99  # noqa: E731
    runs = sorted(runs, key=order)
    body.append(f"{c['clients']:,} readers of one channel per transport, each transport its own run against a "
                f"fresh hub (the configuration above, with the unidirectional transports enabled and the "
                f"namespace's history on, which long polling resumes from; WebSocket runs with it too):\n")
    body.append("```toml\n[[channel.namespaces]]  # the namespace above, with\n" + TRANSPORTS_NAMESPACE
                + TRANSPORTS_CONFIG + "```\n")
    body.append("`volley bench-hub --transport T` opens the readers: `websocket` clients send `connect` and "
                "`subscribe`; `uni_websocket` names its channel in its first message; `uni_sse` and "
                "`uni_http_stream` name it in the query of a `GET`; `uni_long_poll` readers poll with their "
                "cursor, again as soon as each answer came; `sse` and `http_stream` (the bidirectional "
                "emulation) connect with a token whose `channels` claim subscribes them (a server-side "
                "subscription) and answer pings through `/emulation`. Every reader is its own HTTP/1.1 (or "
                "WebSocket) connection. After the burst and the idle hold, memory per reader is the hub's RSS "
                "growth ÷ readers, as for WebSocket clients (a long-polling reader holds one poll waiting). "
                f"Fan-out steps publish into the channel at {', '.join(f'{r:g}' for r in c['rates'])} "
                f"publications/s (each delivered to all {c['clients']:,}), stopping after a step whose p99 "
                "passes the limit; the table gives the step with the most deliveries per server-CPU-second "
                "whose p99 is under 100 ms.\n")
    body.append("What bounds each: memory per reader is what a connection keeps while idle. A WebSocket "
                "client of `/connection/websocket` idle for `client.park_after` (5 s) is parked, held without "
                "a task; every other transport's reader is served by the HTTP server (hyper, for "
                "`uni_websocket` too), which keeps a task and the connection's buffers for it, and the long "
                "poll holds one request waiting. Deliveries per server-CPU-second rise with the rate, as the "
                "fixed costs (pings, timers, the server API's requests) spread over more deliveries; a "
                "transport's best step is bounded by the step after it, whose p99 passed 100 ms (with the core "
                "that was busy then), or by the highest rate asked. A long poll costs the hub a connect, a "
                "subscribe and a recovery from history per answer, so it is the first to fill the server "
                "core. The last column, the other work on the machine during the run (both cores' CPU time "
                "less the run's own, in cores), says how far a row can be trusted: on a shared machine a "
                "step's p99 grows with it.\n")
    body.append("| transport | readers | memory per reader | deliveries per server-CPU-s | at publications/s "
                "| deliveries/s | p50 | p99 | bound by | the last step | other work |")
    body.append("|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|")
    for r in runs:
        d = r.get("data")
        t = r.get("transport", "?")
        if not d:
            body.append(f"| {t} | – | – | – | – | – | – | – | – | **{lib.esc(r.get('error'))}** | "
                        f"{fmt_pct(r.get('other_work'))} |")
            continue
        best = best_step(d)
        last = (d.get("fanout") or [{}])[-1]
        why = last.get("stopped") or (f"{last['rate']:g}/s: p99 {lib.fmt_us(get(last, 'latency_us', 'p99'))}"
                                      if last.get("rate") else "–")
        if r.get("error"):
            why = f"**{lib.esc(r['error'])}**; {why}"
        held = get(d, "idle", "clients_held")
        steps = d.get("fanout") or []
        if best:
            after = steps[steps.index(best) + 1:]
            if not after and not best.get("stopped"):
                by = (f"the rates asked: the highest ran with the server {fmt_pct(share(best['cost']))} and the "
                      f"generator {fmt_pct(share(best['cost'], 'generator_cpu_s'))} busy")
            else:
                nxt = after[0] if after else best
                by = (f"at {nxt['rate']:g}/s, p99 {lib.fmt_us(get(nxt, 'latency_us', 'p99'))}, "
                      f"{bound(nxt['cost'])}")
            body.append(f"| {t} | {fmt_int(held)} | {lib.fmt_bytes(get(d, 'idle', 'rss_per_client'))} | "
                        f"**{lib.fmt_num(best['deliveries_per_server_cpu_s'])}** | {best['rate']:g} | "
                        f"{lib.fmt_num(best['deliveries_per_sec'])} | {lib.fmt_us(get(best, 'latency_us', 'p50'))} | "
                        f"{lib.fmt_us(get(best, 'latency_us', 'p99'))} | {lib.esc(by)} | {lib.esc(why)} | "
                        f"{fmt_pct(r.get('other_work'))} |")
        else:
            body.append(f"| {t} | {fmt_int(held)} | {lib.fmt_bytes(get(d, 'idle', 'rss_per_client'))} | "
                        f"no step with p99 < 100 ms | – | – | – | – | – | {lib.esc(why)} | "
                        f"{fmt_pct(r.get('other_work'))} |")
    body.append("")
    body.append("Every step of every transport:\n")
    body.append("| transport | publications/s | deliveries/s | server busy | generator busy | deliveries per "
                "server-CPU-s | p50 | p99 | lost |")
    body.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        for s in (r.get("data") or {}).get("fanout", []):
            body.append(f"| {r.get('transport', '?')} | {s['rate']:g} | {lib.fmt_num(s['deliveries_per_sec'])} | "
                        f"{fmt_pct(share(s['cost']))} | {fmt_pct(share(s['cost'], 'generator_cpu_s'))} | "
                        f"{lib.fmt_num(s.get('deliveries_per_server_cpu_s'))} | "
                        f"{lib.fmt_us(get(s, 'latency_us', 'p50'))} | {lib.fmt_us(get(s, 'latency_us', 'p99'))} | "
                        f"{fmt_int(s['lost'])} |")
    body.append("")


def many_section(body, d, conf, facts):
    """The table and the timeline of one many-process run."""
    steady = d.get("steady_s")
    body.append(f"{d['clients']:,} clients asked for, a channel each, over {d['processes']} hubs "
                f"(`volley serve` processes on ports of their own, up to {d['per_process']:,} clients each: "
                f"one process holds at most its descriptor limit, {facts['nofile']:,} here) and as many "
                f"generators, all on the same two cores (hubs on one, generators on the other). Each "
                f"generator connects, subscribes, has the burst delivered, holds {conf['hold']} s and reads "
                f"its hub's memory, then keeps its clients (answering every ping) until the run ends. The "
                f"hubs' own counts (`info`: clients, subscriptions) are read every {SAMPLE_S} s; the run "
                f"stops when every generator got there"
                f"{f' and the clients were then held {steady} s more' if steady else ''}, when the count "
                f"stops growing for {STALL_S} s, when the machine runs low on memory, or at the time "
                f"limit.\n")
    body.append("| figure | |")
    body.append("|---|---|")
    if steady:
        body.append(f"| subscribed clients held through {steady} s (the least the hubs counted) | "
                    f"**{d.get('steady_min_subscriptions') or 0:,}** |")
    body.append(f"| subscribed clients held at the end (the hubs' count) | "
                f"{d.get('held_subscriptions', 0):,} (clients connected: {d.get('held_clients', 0):,}) |")
    body.append(f"| the most at once | {d.get('peak_subscriptions', 0):,} subscribed, "
                f"{d.get('peak_clients', 0):,} connected |")
    body.append(f"| clients that received the whole burst | {d.get('burst_complete', 0):,} |")
    warm = f" from warm hubs ({conf['warm']} warm-up clients each)" if d.get("warm") else ""
    body.append(f"| memory per idle client (the hubs' summed RSS growth{warm} ÷ clients) | "
                f"{lib.fmt_bytes(d.get('rss_per_client'))} over {d.get('idle_reports', 0)} hubs"
                f"{'; ' + fresh_note(d['rss_per_client_fresh']) if d.get('rss_per_client_fresh') else ''} |")
    body.append(f"| the hubs' resident memory, all of them, at the end | {lib.fmt_bytes(d.get('rss_total'))} |")
    body.append(f"| time until every generator was idle, or the run stopped | {d.get('seconds', 0):.0f} s |")
    body.append(f"| connect errors | {d.get('connect_errors', 0):,}"
                f"{': ' + lib.esc(d['first_connect_error']) if d.get('first_connect_error') else ''} |")
    body.append(f"| clients failed after connecting | {d.get('client_errors', 0):,}"
                f"{': ' + lib.esc(d['first_client_error']) if d.get('first_client_error') else ''} |")
    body.append(f"| why it stopped | {lib.esc(d.get('reason'))} |")
    if d.get("steady_cores"):
        sc = d["steady_cores"]
        held_n = d.get("steady_min_subscriptions") or 0
        share_ = d.get("steady_hub_cpu_share")
        gshare = d.get("steady_generator_cpu_share")
        per_client = (f"; the hubs' own CPU time: {share_:.0%} of a core, {share_ * 1e6 / held_n:.1f} µs per "
                      f"idle client per second (the generators': {fmt_pct(gshare)})"
                      if held_n and share_ is not None else "")
        body.append(f"| the cores while the clients were held {steady} s | hubs' core "
                    f"{fmt_pct(sc.get('cpu0'))}, generators' core {fmt_pct(sc.get('cpu1'))} busy, for the "
                    f"keepalive (the protocol's pings every 25 s, each answered; the hubs write them and read "
                    f"the pongs where the clients are parked) and the count's polling{per_client} |")
    if d.get("ramp"):
        body.append(f"| connects started | at most {d['ramp']:,.0f} per second, all generators together; "
                    f"each client subscribes once connected |")
    body.append("")
    timeline_table(body, d.get("timeline", []))


def write_report(args, results, facts, started, finished, out_dir, command):
    conf = settings(args)
    os.makedirs(os.path.join(out_dir, "bench"), exist_ok=True)
    md = ["# Hub benchmarks", "", "<!-- Generated by bench/hub.py; do not edit by hand. -->", ""]
    md.append(f"Command: `{command}`\n")
    md.append(f"Run {started:%Y-%m-%d %H:%M} to {finished:%H:%M} UTC"
              f"{f', {args.reps} repetition(s) of the 10,000-client cases (figures are medians)' if args.reps > 1 else ''}"
              f"; fan-out steps {conf['duration']} s measured after {conf['warmup']} s of warm-up."
              f"{' A --quick run: tiny counts, not figures.' if args.quick else ''}\n")
    md.append("## Machine\n")
    md.append(f"- CPU: {facts['cpu']}, {facts['nproc']} logical cores; memory {facts['memory']}")
    md.append(f"- Linux {facts['kernel']}; {facts['rustc']}")
    md.append(f"- Volley at commit {facts['volley_commit']}")
    md.append(f"- Hub (`volley serve`, its multi-threaded runtime) pinned to core {args.server_core}, generator "
              f"(`volley bench-hub`, one thread) to core {args.client_core} (`taskset`)")
    md.append(f"- Load average at the start {facts['load_start']}, at the end {facts['load_end']} (other work on "
              f"the machine shows in rates and latencies; CPU time per operation is the hub's own)")
    md.append(f"- Descriptor limit (hard `RLIMIT_NOFILE`): {facts['nofile']:,}; fs.nr_open {facts['nr_open']}; "
              f"fs.file-max {facts['file_max']}")
    soft = [r.get("nofile_soft") for r in results["runs"] if r.get("nofile_soft")]
    if soft:
        md.append(f"- The hub was started with a soft descriptor limit of {SHELL_SOFT_NOFILE:,} (a login shell's); "
                  f"`volley serve` raised it to {soft[0]:,}, the hard limit, at start")
    md.append("")
    md.append("## Configuration\n")
    md.append("What a user writes to let clients with a token subscribe to one namespace and a backend publish "
              "through the server API; every other key at its default (`volley default-config`). No limit needed "
              "raising: the default `client.connection_limit` is 1,000,000 per process.\n")
    md.append("```toml\n" + config_text("PORT", "SECRET", "API_KEY").rstrip() + "\n```\n")
    md.append("## How\n")
    md.append(f"""`volley bench-hub` (crates/volley-cli/src/bench/hub) opens N WebSocket connections to
`/connection/websocket` (spread over loopback source addresses), each sending `connect`
with its own HS256 token (`sub` u<N>, an `exp` a day ahead), then `subscribe` to its
channel (`{NAMESPACE}:<N>`, or one shared channel); then the server API publishes a burst
of {conf['burst']} publications of {100} B to every channel (`broadcast`, up to 1,000
channels per call), and once every client has them all the clients stay idle
{conf['hold']} s before the hub's resident memory (`VmRSS`) is read. Before the measured
clients, another generator has each hub serve {conf['warm']} warm-up clients the same way
(namespace `{WARM_NAMESPACE}`, a channel each, out of every fan-out), and keeps them: **memory
per client is (RSS idle − RSS with the warm-up clients held) ÷ clients**, what one more
idle client costs. It counts what the allocator kept after the connects, subscribes and
the burst, as well as the session, the subscription and the connection; socket buffers
are kernel memory and not in it. What the first clients cost once, whatever their
number, is out of it: the pages of the hub's executable that serving reads in (the code
of the connects, subscribes and publications, about 2.5 MiB per process), the runtime's
first blocks, the tables' first sizes. The growth from the fresh process over every
client, that cost included, is given beside it, and the anonymous part (`RssAnon`: heap
and stacks) of the figure. The clients answer the hub's pings (every 25 s by default).

Fan-out steps publish {100} B payloads through the server API (`POST /api/publish`, or
`/api/broadcast` with several channels per call) from {16} kept-alive HTTP/1.1
connections, open loop: each call has a due time, and the payload carries it (the
publishers run on a thread of their own, make each call ready before its due time and
send it 5-20 µs after it on average: tokio's millisecond timer alone woke them 1 ms
late at the median, and Linux's default timer slack 50 µs); a client
that receives the publication records **the time from the due time to its arrival**, so
the latency includes the API call, the hub's fan-out, the write, and the generator's
own reading of the frame (its core may be the busier one), and a publisher that falls
behind does not hide the delay. Deliveries per server-CPU-second divide the deliveries
of the measured phase by the hub's CPU time (utime + stime from /proc) over the same
phase: the API requests' parsing counts in it. A series of rising rates stops after a
step whose p99 passes {args.max_p99:g} ms, that delivers under 90% of what its
publications owe, or whose publications fall under 90% of the rate asked (the server API
or the publishers fell behind). "Lost" counts deliveries owed that had not arrived 5 s after the step.
Each 10,000-client run starts once the machine is quiet (every core at most {QUIET_BUSY:.0%} busy for
{QUIET_S} s in a row). Cases past one process's descriptor limit run as several hubs (see below).
""")
    goal_rows = []
    body = []
    for case in CASES:
        if case not in args.only_set:
            continue
        runs = [r for r in results["runs"] if r["case"] == case]
        body.append(f"## {title(case, conf)}\n")
        when = sorted({(r.get("at"), r.get("commit")) for r in runs if r.get("at")})
        if when:
            (first, c0), (last, c1) = when[0], when[-1]
            span = first if first == last else f"{first} to {last}"
            commits = c0 if c0 == c1 else f"{c0} to {c1}"
            body.append(f"Measured {span} (Volley {commits}).\n")
        other = [r.get("other_work") for r in runs if r.get("other_work") is not None]
        if other:
            body.append(f"Other work on the machine while this ran (both cores' CPU time less this run's own): "
                        f"{', '.join(fmt_pct(o) for o in other)} of a core"
                        f"{' per run' if len(other) > 1 else ''}.\n")
        if case == "transports":
            transports_section(body, runs, conf)
        elif case in ("fanout-many", "fanout-one"):
            ok = [{**r["data"], "warm": {k: r.get(k) for k in ("warm_clients", "rss_fresh")}}
                  for r in runs if r.get("data") and r["data"].get("idle")]
            for r in runs:
                if r.get("error"):
                    body.append(f"- repetition {r['rep'] + 1}: **{lib.esc(r['error'])}**")
            if not ok:
                body.append("No result.\n")
                continue
            c = conf[case]
            body.append(f"{c['clients']:,} clients, {'one channel' if c['channels'] == 1 else 'a channel each'}; "
                        f"{len(ok)} repetition(s).\n")
            phase_rows(body, ok)
            per_client = med([get(d, "idle", "rss_per_client") for d in ok])
            n = c["clients"]
            shape = f"one channel × {n:,} subscribers" if c["channels"] == 1 else f"{n:,} channels × 1 subscriber"
            goal_rows.append((f"memory per idle client, {c['clients']:,} clients, "
                              f"{'one channel' if c['channels'] == 1 else 'a channel each'}",
                              f"{lib.fmt_bytes(per_client)}", f"≤ {GOAL_BYTES:,} B",
                              None if per_client is None else per_client <= GOAL_BYTES,
                              "one more client, from a warm hub: " + memory_split(ok)
                              + anon_note(med([get(d, "idle", "anon_per_client") for d in ok])) + "; "
                              + fresh_note(med([fresh_per_client(d) for d in ok]))))
            if case == "fanout-many":
                goal_rows.append(("connects per second with a JWT",
                                  f"{lib.fmt_num(med([get(d, 'connect', 'per_sec') for d in ok]))}/s, "
                                  f"{med([get(d, 'connect', 'server_cpu_us_each') for d in ok]) or 0:.0f} µs "
                                  "server CPU each", "", None, bound(ok[0]["connect"]["cost"])))
                goal_rows.append(("one client's subscribe",
                                  f"{med([get(d, 'subscribe', 'server_cpu_us_each') for d in ok]) or 0:.1f} µs "
                                  f"server CPU, {lib.fmt_bytes(med([get(d, 'subscribe', 'rss_per_subscription') for d in ok]))}"
                                  f", p50 {lib.fmt_us(med([get(d, 'subscribe', 'latency_us', 'p50') for d in ok]))}",
                                  "", None, bound(ok[0]["subscribe"]["cost"])))
            body.append(f"**Fan-out, {shape}**\n")
            fanout_table(body, ok, goal_rows, shape)
        else:
            attempts = [r["data"] for r in runs if r.get("data")]
            if not attempts:
                body.append("No result.\n")
                continue
            for d in attempts:
                if case == "held":
                    body.append(f"### {d['clients']:,} asked for\n")
                many_section(body, d, conf, facts)
            if case == "many":
                d = attempts[0]
                goal_rows.append((f"memory per idle client, {d['clients']:,} clients, a channel each",
                                  lib.fmt_bytes(d.get("rss_per_client")), f"≤ {GOAL_BYTES:,} B",
                                  None if d.get("rss_per_client") is None else d["rss_per_client"] <= GOAL_BYTES,
                                  f"{d['processes']} warm hubs' RSS growth ÷ clients" + anon_note(d.get("anon_per_client"))
                                  + "; " + fresh_note(d.get("rss_per_client_fresh"))))
                share_, n = d.get("steady_hub_cpu_share"), d.get("steady_min_subscriptions")
                if share_ and n:
                    goal_rows.append((f"the hubs' CPU for {n:,} idle clients (their pings answered)",
                                      f"{share_:.0%} of a core: {share_ * 1e6 / n:.1f} µs per client per second",
                                      "", None, f"one core holds about {1 / (share_ / n) / 1e3:,.0f} k idle clients "
                                      "at this rate"))
            else:
                held_of = [(d.get("steady_min_subscriptions") or 0, d) for d in attempts]
                held, best = max(held_of, key=lambda x: x[0])
                peak = max(d.get("peak_subscriptions", 0) for d in attempts)
                failed = [d for d in attempts if (d.get("steady_min_subscriptions") or 0) < d["clients"]]
                by = "; ".join(f"{d['clients']:,} asked: {lib.esc(d.get('reason'))}, "
                               f"{d.get('client_errors', 0):,} clients dropped ({lib.esc(d.get('first_client_error'))})"
                               for d in failed) or "the count asked for"
                goal_rows.append((f"most subscribed clients held on this machine through {conf['held']['steady_s']} s",
                                  f"{held:,} (the most at once: {peak:,})", f"{GOAL_HELD:,}", held >= GOAL_HELD, by))
    md.append("## Figures and goals\n")
    md.append(f"Centrifugo's documentation gives about {CENTRIFUGO_BYTES:,} B per idle connection by default and "
              f"{CENTRIFUGO_TUNED_BYTES:,} B with its commercial edition's tuning.\n")
    md.append("| figure | measured | goal | | bound by |")
    md.append("|---|---|---|---|---|")
    for what, value, goal, ok, by in goal_rows:
        verdict = "" if ok is None else ("**met**" if ok else "**not met**")
        md.append(f"| {what} | {value} | {goal} | {verdict} | {by} |")
    md.append("")
    md.append("What bounds these figures, measured with perf on the machine above: [PERFORMANCE.md]"
              "(PERFORMANCE.md#the-hub-volley-serve).\n")
    if results["failures"]:
        md.append("**Failed runs:**\n")
        md += [f"- {lib.esc(f)}" for f in results["failures"]]
        md.append("")
    md += body
    md.append("Raw results of every run: [bench/hub-results.json](bench/hub-results.json).\n")
    path = os.path.join(out_dir, "HUB-BENCHMARKS.md")
    with open(path, "w") as f:
        f.write("\n".join(md).rstrip() + "\n")
    with open(os.path.join(out_dir, "bench", "hub-results.json"), "w") as f:
        json.dump({"command": command, "settings": {k: getattr(args, k) for k in SAVED_ARGS},
                   "started": started.isoformat(), "finished": finished.isoformat(), "machine": facts,
                   "failures": results["failures"], "runs": results["runs"]}, f, indent=1)
    return path, goal_rows


SAVED_ARGS = ["reps", "duration", "warmup", "only", "held_counts", "held_limit", "held_ramp", "quick", "server_core",
              "client_core", "max_p99"]


def rerender(path, out_dir):
    with open(path) as f:
        saved = json.load(f)
    args = argparse.Namespace(**saved["settings"])
    args.only_set = set(args.only or CASES)
    results = {"runs": saved["runs"], "failures": saved["failures"]}
    return write_report(args, results, saved["machine"], datetime.datetime.fromisoformat(saved["started"]),
                        datetime.datetime.fromisoformat(saved["finished"]), out_dir, saved["command"])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", default="", help=f"comma-separated cases (default: all: {','.join(CASES)})")
    p.add_argument("--reps", type=int, default=3, help="repetitions of the 10,000-client cases (default 3)")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per fan-out step (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per fan-out step (default 1)")
    p.add_argument("--max-p99", type=float, default=1000.0,
                   help="a series of rising rates stops after a step with a p99 over this, in ms (default 1000)")
    p.add_argument("--held-counts", default=",".join(str(c) for c in HELD_COUNTS),
                   help="held: the subscribed clients asked for, tried in turn until a count is held "
                        f"(default {','.join(str(c) for c in HELD_COUNTS)})")
    p.add_argument("--held-limit", type=float, default=1200,
                   help="held: seconds allowed to connect and subscribe them (default 1200)")
    p.add_argument("--held-ramp", type=float, default=HELD_RAMP,
                   help=f"held: connects per second, all generators together (default {HELD_RAMP:,})")
    p.add_argument("--transports", default=",".join(TRANSPORTS),
                   help=f"transports: the transports run (default all: {','.join(TRANSPORTS)}); with --merge, "
                        "the others' runs are taken from the saved run")
    p.add_argument("--quick", action="store_true", help="tiny counts and short steps: a smoke test (needs --out)")
    p.add_argument("--out", default="", help="directory for HUB-BENCHMARKS.md and bench/ (default: docs/)")
    p.add_argument("--no-build", action="store_true", help="use the release binary already built")
    p.add_argument("--server-core", type=int, default=0, help="core the hub is pinned to (default 0)")
    p.add_argument("--client-core", type=int, default=1, help="core the generator is pinned to (default 1)")
    p.add_argument("--rerender", metavar="RESULTS_JSON", help="only write the report again from a saved run")
    p.add_argument("--merge", metavar="RESULTS_JSON",
                   help="take the cases this run leaves out (--only) from a saved run: the report says when "
                        "each case was measured")
    args = p.parse_args()
    if args.rerender:
        path, _ = rerender(args.rerender, os.path.abspath(args.out or os.path.join(ROOT, "docs")))
        log(f"report: {path}")
        return 0
    if args.quick:
        if not args.out:
            p.error("--quick does not overwrite docs/HUB-BENCHMARKS.md: give --out DIR")
        args.reps = 1
    try:
        args.held_counts = [int(c) for c in args.held_counts.split(",") if c.strip()]
    except ValueError:
        p.error("--held-counts: numbers of clients, comma-separated")
    if not args.held_counts or min(args.held_counts) < 1:
        p.error("--held-counts: at least one count of at least 1")
    args.only = [c.strip() for c in args.only.split(",") if c.strip()]
    for c in args.only:
        if c not in CASES:
            p.error(f"unknown case {c} (known: {','.join(CASES)})")
    args.only_set = set(args.only or CASES)
    args.transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    for t in args.transports:
        if t not in TRANSPORTS:
            p.error(f"unknown transport {t} (known: {','.join(TRANSPORTS)})")
    if not sys.platform.startswith("linux"):
        sys.exit("hub.py: Linux only (taskset, /proc)")
    usable = sorted(os.sched_getaffinity(0))
    for attr in ("server_core", "client_core"):
        if getattr(args, attr) not in usable:
            log(f"hub.py: core {getattr(args, attr)} is not available (usable: {usable}); using {usable[-1]}")
            setattr(args, attr, usable[-1])
    out_dir = os.path.abspath(args.out or os.path.join(ROOT, "docs"))

    volley = build(args)
    facts = lib.machine_facts()
    facts["load_start"] = lib.load_avg()
    conf = settings(args)
    results = {"runs": [], "failures": []}
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    secret = secrets.token_hex(24)
    with tempfile.TemporaryDirectory(prefix="volley-hub-bench-") as logdir:
        for rep in range(args.reps):
            for case in ("fanout-many", "fanout-one"):
                if case not in args.only_set:
                    continue
                log(f"==> {title(case, conf)}, repetition {rep + 1}")
                data, error, hub_facts = run_one(args, volley, logdir, secret, case, conf, conf[case])
                results["runs"].append({"case": case, "rep": rep, "data": data, "error": error, **hub_facts,
                                        **stamp(facts)})
                if error:
                    results["failures"].append(f"{case} rep {rep + 1}: {error}")
                summary = ""
                if data and data.get("idle"):
                    steps = data.get("fanout", [])
                    top = max(steps, key=lambda s: s["deliveries_per_sec"]) if steps else None
                    summary = (f"{lib.fmt_num(get(data, 'connect', 'per_sec'))} connects/s, "
                               f"{lib.fmt_bytes(get(data, 'idle', 'rss_per_client'))}/client idle"
                               + (f", up to {lib.fmt_num(top['deliveries_per_sec'])} deliveries/s" if top else ""))
                log(f"    {summary}{'  FAILED: ' + error if error else ''}")
        if "transports" in args.only_set:
            c = conf["transports"]
            for t in args.transports:
                log(f"==> {title('transports', conf)}: {t}")
                data, error, hub_facts = run_one(args, volley, logdir, secret, "transports", conf, c, transport=t)
                results["runs"].append({"case": "transports", "rep": 0, "transport": t, "data": data, "error": error,
                                        **hub_facts, **stamp(facts)})
                if error:
                    results["failures"].append(f"transports {t}: {error}")
                best = best_step(data)
                log(f"    {lib.fmt_bytes(get(data, 'idle', 'rss_per_client'))}/reader idle"
                    + (f", {lib.fmt_num(best.get('deliveries_per_server_cpu_s'))} deliveries per server-CPU-s at "
                       f"{best['rate']:g} publications/s" if best else "")
                    + (f"  FAILED: {error}" if error else ""))
        if "many" in args.only_set:
            log(f"==> {title('many', conf)}")
            c = conf["many"]
            d = run_many(args, volley, logdir, secret, conf, c["clients"], 600, "many", steady_s=c["steady_s"],
                         warm=True)
            error = d.get("error")
            if not error and (d.get("steady_min_subscriptions") or 0) < c["clients"]:
                error = f"{d.get('steady_min_subscriptions') or 0:,} of {c['clients']:,} held: {d.get('reason')}"
            results["runs"].append({"case": "many", "rep": 0, "data": d, "error": error,
                                    "nofile_soft": d.get("nofile_soft"), "other_work": d.get("other_work"),
                                    **stamp(facts)})
            if error:
                results["failures"].append(f"many: {error}")
        if "held" in args.only_set:
            # A ladder: each count in turn, until one is held through the steady hold.
            c = conf["held"]
            for i, count in enumerate(c["counts"]):
                log(f"==> The most subscribed clients held: {count:,} asked for")
                d = run_many(args, volley, logdir, secret, conf, count, c["limit_s"], "held", steady_s=c["steady_s"],
                             ramp=c["ramp"])
                held = d.get("steady_min_subscriptions") or 0
                error = d.get("error")
                if args.quick and held < count:
                    error = error or f"{held} of {count} held: {d.get('reason')}"
                results["runs"].append({"case": "held", "rep": i, "data": d, "error": error,
                                        "nofile_soft": d.get("nofile_soft"), "other_work": d.get("other_work"),
                                        **stamp(facts)})
                if error:
                    results["failures"].append(f"held {count:,}: {error}")
                if held >= count:
                    break
    facts["load_end"] = lib.load_avg()
    finished = datetime.datetime.now(datetime.timezone.utc)
    if args.merge:
        with open(args.merge) as f:
            saved = json.load(f)
        redone = lambda r: r["case"] in args.only_set and (  # noqa: E731
            r["case"] != "transports" or r.get("transport") in args.transports)
        kept = [r for r in saved["runs"] if not redone(r)]
        for r in kept:
            r.setdefault("at", saved["finished"][:16].replace("T", " ") + " UTC")
            r.setdefault("commit", saved["machine"]["volley_commit"])
        results["runs"] = kept + results["runs"]
        results["failures"] = [f for f in saved["failures"] if f.split()[0] not in args.only_set or (
            f.startswith("transports ") and f.split()[1].rstrip(":") not in args.transports)] + results["failures"]
        started = min(started, datetime.datetime.fromisoformat(saved["started"]))
        args.only_set = set(CASES) if not saved["settings"].get("only") else args.only_set | {
            r["case"] for r in kept}
        args.only = sorted(args.only_set, key=CASES.index)
    command = " ".join(["python3", "bench/hub.py"] + [shlex.quote(portable(a)) for a in sys.argv[1:]])
    path, goals = write_report(args, results, facts, started, finished, out_dir, command)
    log(f"\n==> {time.monotonic() - t0:.0f} s; report: {path}")
    for what, value, goal, ok, by in goals:
        log(f"    {what}: {value}{' (goal ' + goal + ': ' + ('met' if ok else 'not met') + ')' if ok is not None else ''}")
    return lib.finish(results["failures"])


if __name__ == "__main__":
    sys.exit(main())
