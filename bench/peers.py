#!/usr/bin/env python3
"""The hub against its peers: `volley serve` (over Centrifugo's protocol and over
Pusher's), Sockudo (a Rust Pusher server) and a Socket.IO 4 server, each loaded by
`volley bench-hub` speaking that server's own protocol and HTTP API.

Each server runs pinned to one core (--server-core), the generator to the other
(--client-core); the servers take turns within each repetition (their order rotates from
one repetition to the next), and every ratio compares figures of the same repetition.
The cases:

  fanout-one   10,000 clients on one channel: memory per idle client, then publications
               through the HTTP API at rising rates, each delivered to all 10,000
  fanout-many  10,000 clients, a channel each: connects and subscribes per second, memory
               per idle client, then publications at rising rates to random channels
               (--batch channels per HTTP API call: a Pusher event to up to 100 channels,
               a Socket.IO emit to as many rooms, a Centrifugo broadcast)
  many         100,000 clients, a channel each, idle after a burst: memory per client
  held         the most subscribed clients held: --held-counts asked for in turn (at
               --held-ramp connects per second) until a count is not held or memory
               runs short

The many and held cases run each server as several processes of at most --per-process
clients (15,000), each on ports of its own and all pinned to the server core, with one
generator per process on the client core, all at once (bench/hub.py's way): a process
here may hold 20,000 descriptors (`ulimit -Hn`, which only CAP_SYS_RESOURCE raises), so
no single process can hold 100,000 sockets. Their memory per client is (the processes'
RSS idle, summed − their RSS before the first client, summed) ÷ the clients held in all.

Rows: volley-centrifugo, volley-pusher (skipped while the binary answers 404 on /app/),
sockudo (bench/install-peers.sh installs it), socketio (bench/peers/socketio-server.mjs).
Soketi and Laravel Reverb are not measured: neither can be installed from the package
registries this harness uses (Soketi depends on a GitHub-only package, Reverb on PHP).

Writes docs/PEER-BENCHMARKS.md and docs/bench/peer-results.json (or --out DIR). With
--merge SAVED, what --only and --servers ask for runs, and its runs replace the saved
run's of the same case and server; the others are kept, with the saved run's settings
(the defaults of this run's), and each run says which commit it ran with and when.
Python 3 standard library only; Linux only (taskset, /proc).

    bash bench/install-peers.sh            # once: Sockudo (long build), Socket.IO
    python3 bench/peers.py                 # every case (about an hour and a half)
    python3 bench/peers.py --quick --out DIR   # tiny counts, seconds: a smoke test
    python3 bench/peers.py --only fanout-one --servers volley-centrifugo,sockudo --reps 1
    python3 bench/peers.py --only held --servers volley-centrifugo --merge docs/bench/peer-results.json

Exit status: 0 when every run produced its report, 1 otherwise.
"""

import argparse
import datetime
import json
import math
import os
import resource
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hub as hublib  # noqa: E402  (bench/hub.py: figures, processes)
import run as lib  # noqa: E402  (bench/run.py: process, machine and format helpers)

ROOT = lib.ROOT
log = lib.log
med, get, share, bound = hublib.med, hublib.get, hublib.share, hublib.bound

CASES = ["fanout-one", "fanout-many", "many", "held"]
SERVERS = ["volley-centrifugo", "volley-pusher", "sockudo", "socketio"]
PEERS = ["sockudo", "socketio"]
LABEL = {"volley-centrifugo": "Volley (Centrifugo protocol)", "volley-pusher": "Volley (Pusher protocol)",
         "sockudo": "Sockudo", "socketio": "Socket.IO 4"}
NAMESPACE = "bench"
APP_ID, APP_KEY = "1001", "bench-key"
PEERS_DIR = os.path.join(ROOT, "bench", "peers")
SOCKETIO_SERVER = os.path.join(PEERS_DIR, "socketio-server.mjs")
# The descriptor limit asked for the servers and the generator (root may raise the hard
# limit up to fs.nr_open): 100,000 clients need more than a login shell's.
NOFILE_WANT = 1 << 20
# The held case stops its generator when the machine's available memory falls below this
# share of the total (or MEMORY_GUARD_MIN bytes, the larger).
MEMORY_GUARD, MEMORY_GUARD_MIN = 0.1, 2 << 30
# The held case's ladder: what the slowest peer holds, what the next one did not quite
# hold here (Socket.IO: 596,395 of 600,000, handshakes timing out as its core saturated),
# and issue 18's goal.
HELD_COUNTS = [100_000, 600_000, 1_000_000]
# Clients per server process in the many and held cases (hub.py's): under the descriptor
# limit a process has here (20,000) with room for the listeners, the HTTP API's
# connections and the runtime's own.
PER_PROCESS = hublib.PER_PROCESS
HELD_RAMP = 2000
# What the filer measured before this harness (same cases, other machine).
FILED = {"sockudo": "~152 KB per idle subscribed client, 91-95k deliveries per server-CPU-s, p99 0.9-1.7 s",
         "socketio": "~17 KB per idle subscribed client, 54-62k deliveries per server-CPU-s, p99 ~9 s"}


def settings(args):
    q = args.quick
    return {
        "fanout-one": {"clients": 200 if q else args.clients, "channels": 1,
                       "rates": [5, 20] if q else [1, 10, 30, 100, 200, 400], "batch": 1},
        "fanout-many": {"clients": 200 if q else args.clients, "channels": None,
                        "rates": [200, 1000] if q else [3000, 10_000, 30_000, 100_000, 200_000],
                        "batch": min(args.batch, 20) if q else args.batch},
        "many": {"clients": 300 if q else args.many_clients},
        "held": {"counts": [300] if q else args.held_counts, "ramp": 1000 if q else args.held_ramp},
        # A quick run still spreads its 300 clients over 3 processes of each server.
        "per_process": min(args.per_process, 100) if q else args.per_process,
        "hold": 0.3 if q else 7.0,
        "burst": 2,
        "duration": 0.3 if q else args.duration,
        "warmup": 0.1 if q else args.warmup,
    }


def raise_nofile():
    """preexec_fn of the servers and the generator: the descriptor limit up to
    NOFILE_WANT (the hard limit too, as root), else the soft limit up to the hard one."""
    try:
        with open("/proc/sys/fs/nr_open") as f:
            want = min(NOFILE_WANT, int(f.read()))
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    except (OSError, ValueError):
        lib.raise_nofile()


def wait_port(port, proc, timeout=30):
    """Waits until something accepts on 127.0.0.1:port (or the process exits)."""
    until = time.monotonic() + timeout
    while time.monotonic() < until and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.1)
    return False


# --------------------------------------------------------------------------- servers


def volley_config(port, secret, api_key, app_secret):
    """`volley serve`'s configuration: hub.py's (a token secret, a server API key, one
    namespace), and one Pusher app with its default limits."""
    return hublib.config_text(port, secret, api_key) + f"""
[[pusher.apps]]
id = "{APP_ID}"
key = "{APP_KEY}"
secret = "{app_secret}"
"""


def sockudo_config(port, metrics_port, app_secret):
    """Sockudo's configuration: its defaults (local adapter, memory app manager and
    cache, metrics on), the rate limiter off, no connection limit, the queue (webhooks,
    unused here) in memory rather than on a Redis, a short grace period at stop, and one
    app."""
    return {
        "host": "127.0.0.1",
        "port": port,
        "adapter": {"driver": "local"},
        "app_manager": {"driver": "memory", "array": {"apps": [{
            "id": APP_ID, "key": APP_KEY, "secret": app_secret, "enabled": True,
            "max_connections": 0, "max_client_events_per_second": 10000,
            "enable_client_messages": False,
        }]}},
        "queue": {"driver": "memory"},
        "rate_limiter": {"enabled": False},
        "max_connections": 0,
        # Seconds it waits for connections to close when stopped (10 by default): the
        # runs stop it between cases.
        "shutdown_grace_period": 1,
        "metrics": {"enabled": True, "host": "127.0.0.1", "port": metrics_port},
    }


class Server:
    """One server under test, pinned to the server core; stopped with SIGTERM."""

    def __init__(self, kind, args, paths, logdir, creds):
        self.kind = kind
        self.port = lib.free_port()
        self.errlog = tempfile.NamedTemporaryFile(dir=logdir, prefix=f"{kind}-", suffix=".log", delete=False)
        env = dict(os.environ)
        if kind.startswith("volley"):
            conf = os.path.join(logdir, f"volley-{self.port}.toml")
            with open(conf, "w") as f:
                f.write(volley_config(self.port, creds["secret"], creds["api_key"], creds["app_secret"]))
            cmd = [paths["volley"], "serve", "--config", conf]
        elif kind == "sockudo":
            conf = os.path.join(logdir, f"sockudo-{self.port}.json")
            with open(conf, "w") as f:
                json.dump(sockudo_config(self.port, lib.free_port(), creds["app_secret"]), f, indent=2)
            cmd = [paths["sockudo"], "--config", conf]
            env.setdefault("RUST_LOG", "warn")
        else:
            cmd = ["node", SOCKETIO_SERVER, str(self.port)]
        self.proc = subprocess.Popen(["taskset", "-c", str(args.server_core)] + cmd, stdout=subprocess.PIPE,
                                     stderr=self.errlog, stdin=subprocess.DEVNULL, text=True, bufsize=1, env=env,
                                     preexec_fn=raise_nofile, start_new_session=True)
        self.pid = self.proc.pid  # taskset execs the server: same process
        self.url = f"http://127.0.0.1:{self.port}"
        # Stdout is drained so that a chatty server never blocks on a full pipe.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        if not wait_port(self.port, self.proc):
            self.stop()
            raise RuntimeError(f"{kind} did not start: {hublib.last_lines(self.errlog.name)}")

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        hublib.stop_process(self.proc, group=True, timeout=30)
        self.errlog.close()


def volley_speaks_pusher(paths, logdir, creds, args):
    """Whether this `volley` serves Pusher's endpoint: `GET /app/KEY` without an upgrade
    is refused (400/426) by a binary that has it, and 404 by one that does not."""
    try:
        s = Server("volley-pusher", args, paths, logdir, creds)
    except RuntimeError as e:
        return False, str(e)
    try:
        urllib.request.urlopen(f"{s.url}/app/{APP_KEY}?protocol=7", timeout=5).read()
        return True, ""
    except urllib.error.HTTPError as e:
        return e.code != 404, "this volley binary answers 404 on /app/{key} (no Pusher endpoint yet)"
    except OSError as e:
        return False, str(e)
    finally:
        s.stop()


def versions(paths):
    out = {"volley": lib.run_capture([paths["volley"], "--version"]) if paths.get("volley") else None}
    if paths.get("sockudo"):
        out["sockudo"] = lib.run_capture([paths["sockudo"], "--version"])
    out["node"] = lib.run_capture(["node", "--version"])
    try:
        with open(os.path.join(PEERS_DIR, "node_modules", "socket.io", "package.json")) as f:
            out["socket.io"] = json.load(f)["version"]
    except (OSError, ValueError, KeyError):
        out["socket.io"] = None
    return out


def find_servers(args, paths):
    """Which rows can run: {server: None} or {server: why not}."""
    why = {}
    sockudo = args.sockudo or shutil.which("sockudo") or os.path.expanduser("~/.cargo/bin/sockudo")
    if os.access(sockudo, os.X_OK):
        paths["sockudo"] = sockudo
    else:
        why["sockudo"] = "not installed (bash bench/install-peers.sh)"
    if not os.path.isdir(os.path.join(PEERS_DIR, "node_modules", "socket.io")) or not shutil.which("node"):
        why["socketio"] = "socket.io is not installed in bench/peers (bash bench/install-peers.sh)"
    return why


# --------------------------------------------------------------------------- runs


def protocol_args(kind, creds):
    if kind == "volley-centrifugo":
        return ["--protocol", "centrifugo", "--secret", creds["secret"], "--api-key", creds["api_key"]]
    if kind in ("volley-pusher", "sockudo"):
        return ["--protocol", "pusher", "--app-id", APP_ID, "--api-key", APP_KEY, "--secret", creds["app_secret"]]
    return ["--protocol", "socketio"]


def memory_guard(proc, stop, note):
    """Interrupts the generator (SIGINT: it reports what it had) when the machine's
    available memory runs short."""
    total = lib.meminfo("MemTotal") or 0
    floor = max(MEMORY_GUARD * total, MEMORY_GUARD_MIN)
    while not stop.wait(0.5):
        avail = lib.meminfo("MemAvailable")
        if avail is not None and avail < floor:
            note.append(f"stopped: {lib.fmt_bytes(avail)} of memory available")
            try:
                proc.send_signal(signal.SIGINT)
            except OSError:
                pass
            return


def generator_cmd(args, paths, creds, kind, server, clients, conf):
    """`volley bench-hub` on the client core, speaking `kind`'s protocol to `server` and
    measuring that process."""
    cmd = ["taskset", "-c", str(args.client_core), paths["volley"], "bench-hub", server.url, "-c", str(clients),
           "--namespace", NAMESPACE, "--server-pid", str(server.pid), "--json", "--no-progress", "--cores",
           "--hold", str(conf["hold"]), "--burst", str(conf["burst"]), "--max-p99", f"{args.max_p99:g}"]
    return cmd + protocol_args(kind, creds)


def run_one(args, paths, logdir, creds, kind, conf, case, clients, channels=None, rates=(), batch=1, extra=()):
    """One server, one generator: (report, error)."""
    quiet_after = 0 if args.quick else hublib.wait_quiet()  # --quick: a smoke test, maybe among others
    try:
        server = Server(kind, args, paths, logdir, creds)
    except RuntimeError as e:
        return None, str(e)
    try:
        cmd = generator_cmd(args, paths, creds, kind, server, clients, conf)
        if channels is not None:
            cmd += ["--channels", str(channels)]
        if rates:
            cmd += ["--rates", ",".join(f"{r:g}" for r in rates), "--batches", str(batch),
                    "-d", str(conf["duration"]), "--warmup", str(conf["warmup"])]
        cmd += list(extra)
        timeout = 180 + clients / 300 + len(rates) * (conf["duration"] + conf["warmup"] + 10)
        gen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=raise_nofile)
        stop, note = threading.Event(), []
        guard = threading.Thread(target=memory_guard, args=(gen, stop, note), daemon=True)
        guard.start()
        try:
            out, err = gen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            gen.send_signal(signal.SIGINT)
            try:
                out, err = gen.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                gen.kill()
                out, err = gen.communicate()
            note.append(f"timed out after {timeout:.0f} s")
        finally:
            stop.set()
        data = hublib.last_json(out)
        if data is None:
            tail = " | ".join(err.strip().splitlines()[-3:])
            return None, f"exit {gen.returncode}, no report: {tail}"
        data["guard"] = note[0] if note else None
        data["quiet_after_s"] = quiet_after
        error = None if gen.returncode == 0 else f"exit {gen.returncode}"
        sub = get(data, "subscribe", "subscribed") or 0
        if case != "held" and sub < clients:
            error = error or f"only {sub:,} of {clients:,} clients subscribed: " + str(
                get(data, "connect", "first_error") or get(data, "subscribe", "first_error") or data.get("first_error"))
        if not server.alive():
            error = error or f"the server exited: {hublib.last_lines(server.errlog.name)}"
        return data, error
    finally:
        server.stop()


# The generator's events (`--events`) by the report's key of the phase they end.
EVENTS = {"connect": "connected", "subscribe": "subscribed", "idle": "idle"}


def run_spread(args, paths, logdir, creds, kind, conf, case, count, ramp=0):
    """`count` clients spread evenly over several processes of the server, at most
    conf["per_process"] each (no process here can hold 100,000 sockets: see the module's
    docstring), each on ports of its own and pinned to the server core, and one
    generator per process pinned to the client core, all started at once: hub.py's
    run_many. Each generator connects and subscribes its share (with `ramp`, all of them
    together start at most that many connects per second, each client subscribing as it
    connects), receives the burst, reads its own process's memory after the hold, then
    keeps its clients (--wait) until every generator is idle, so that all the clients
    are held at the same time; then all are interrupted and their reports merged into
    one shaped like a generator's (merge_reports). Stops early when the machine's
    available memory runs short (the memory guard), a process exits, or time runs out.
    Returns (report, error)."""
    share = conf["per_process"]
    nproc = max(1, math.ceil(count / share))
    servers, gens, note = [], [], []
    floor = max(MEMORY_GUARD * (lib.meminfo("MemTotal") or 0), MEMORY_GUARD_MIN)
    timeout = 180 + count / 300
    error = None
    t0 = time.monotonic()
    try:
        for _ in range(nproc):
            servers.append(Server(kind, args, paths, logdir, creds))
        first = 0
        for i, server in enumerate(servers):
            # The clients evenly over the processes (none over `share`), so that at one
            # ramp each all the generators end their connects together.
            c = count // nproc + (i < count % nproc)
            # Source addresses of its own per generator (127.0.0.2 on), and few connects
            # and subscribes in flight each, as hub.py does when generators share a core.
            cmd = generator_cmd(args, paths, creds, kind, server, c, conf) + [
                "--client-from", str(first), "--events", "--wait",
                "--source-from", lib.generator_source(i, hublib.SOURCES_PER_GENERATOR),
                "--source-addrs", str(hublib.SOURCES_PER_GENERATOR),
                "--connect-concurrency", str(hublib.MANY_CONCURRENCY),
                "--subscribe-concurrency", str(hublib.MANY_CONCURRENCY)]
            if ramp:
                cmd += ["--connect-rate", f"{ramp / nproc:g}", "--subscribe-at-once"]
            err = tempfile.TemporaryFile(dir=logdir)
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, bufsize=0, preexec_fn=raise_nofile)
            gens.append({"proc": proc, "err": err, "events": {}, "clients": c})
            first += c
        while True:
            hublib.read_events(gens, 0.5)
            if all("idle" in g["events"] or g["proc"].poll() is not None for g in gens):
                break
            avail = lib.meminfo("MemAvailable")
            if avail is not None and avail < floor:
                note.append(f"stopped: {lib.fmt_bytes(avail)} of memory available")
                break
            if not all(s.alive() for s in servers):
                break
            if time.monotonic() - t0 > timeout:
                note.append(f"timed out after {timeout:.0f} s")
                break
    except RuntimeError as e:
        error = str(e)  # a process did not start
    finally:
        dead = next((s for s in servers if not s.alive()), None)
        dead_log = hublib.last_lines(dead.errlog.name) if dead else ""
        # Short of memory, the servers are stopped at once: their memory back first.
        # Every generator reports what it had once interrupted.
        if note and note[0].startswith("stopped"):
            for s in servers:
                s.stop()
        hublib.stop_generators(gens)
        for s in servers:
            if s.alive():
                s.stop()
    if error:
        return None, error
    data = merge_reports(gens, servers, count, share, ramp)
    data["guard"] = note[0] if note else None
    mute = [(i, g) for i, g in enumerate(gens) if not g.get("report")]
    if mute:
        i, g = mute[0]
        tail = " | ".join(g["stderr"].strip().splitlines()[-3:])
        error = f"{len(mute)} of {nproc} generators gave no report; generator {i}: exit {g['proc'].returncode}: {tail}"
    failed = next(((i, g) for i, g in enumerate(gens) if g["proc"].returncode), None)
    if failed:
        error = error or f"generator {failed[0]} exited {failed[1]['proc'].returncode}"
    sub = get(data, "subscribe", "subscribed") or 0
    if case != "held":
        if sub < count:
            error = error or f"only {sub:,} of {count:,} clients subscribed: " + str(
                data["guard"] or get(data, "connect", "first_error") or get(data, "subscribe", "first_error")
                or data.get("first_error"))
        elif data["idle_processes"] < nproc:
            error = error or f"only {data['idle_processes']} of {nproc} processes' clients reached the idle hold"
        error = error or data["guard"]
    if dead:
        error = error or f"a server process exited: {dead_log}"
    log(f"    {LABEL[kind]}: {data['held']:,} of {count:,} subscribed clients held over {nproc} "
        f"process{'es' if nproc > 1 else ''}"
        + (f" ({data['guard']})" if data["guard"] else ""))
    return data, error


def merge_cost(costs):
    """Phases' costs of the several processes as one: their CPU seconds summed over the
    longest window (the phases ran at the same time, the processes on one core and the
    generators on the other), so that "bound by" reads the two cores' shares."""
    costs = [c for c in costs if c]
    if not costs:
        return None
    out = {"seconds": max(c.get("seconds") or 0 for c in costs),
           "cpu_window_s": max(c.get("cpu_window_s") or c.get("seconds") or 0 for c in costs)}
    for key in ("server_cpu_s", "generator_cpu_s"):
        vals = [c.get(key) for c in costs]
        out[key] = None if any(v is None for v in vals) else sum(vals)
    return out


def merge_phase(phases, key):
    """The connect or subscribe phase of every process as one (`key`: the count it made):
    counts summed, per second over the longest phase, server CPU per operation over all."""
    phases = [p for p in phases if p]
    if not phases:
        return None
    n = sum(p.get(key) or 0 for p in phases)
    cost = merge_cost([p.get("cost") for p in phases])
    cpu = (cost or {}).get("server_cpu_s")
    return {key: n, "errors": sum(p.get("errors") or 0 for p in phases),
            "first_error": next((p["first_error"] for p in phases if p.get("first_error")), None),
            "cost": cost, "per_sec": n / cost["seconds"] if cost and cost["seconds"] else None,
            "server_cpu_us_each": cpu * 1e6 / n if cpu is not None and n else None,
            "concurrency": sum(p.get("concurrency") or 0 for p in phases), "processes": len(phases)}


def merge_reports(gens, servers, count, share, ramp):
    """One report, shaped like a generator's, of the generators of run_spread: counts
    summed, memory per client = (the processes' RSS idle, summed − their RSS before the
    first client, summed) ÷ the clients held in all at those readings, and `held`: the
    clients still connected and subscribed when the generators were interrupted, of the
    generators that reached the idle hold (a generator's clients alive then are those
    connected less those that failed, its `errors`: a client closed because the
    generator was told to stop is not one). `by_process` keeps each one's figures."""
    phase = {k: [(g.get("report") or {}).get(k) or g["events"].get(ev) for g in gens] for k, ev in EVENTS.items()}
    by_process, held = [], 0
    for g, c, s, i in zip(gens, phase["connect"], phase["subscribe"], phase["idle"]):
        r = g.get("report")
        # Without the final report, nothing says the clients stayed: none counted held.
        end = (min(i["clients_held"], (s or {}).get("subscribed") or 0,
                   (c or {}).get("connected", 0) - r.get("errors", 0)) if i and r else 0)
        held += max(0, end)
        by_process.append({"clients": g["clients"], "connected": (c or {}).get("connected"),
                           "subscribed": (s or {}).get("subscribed"), "held_idle": (i or {}).get("clients_held"),
                           "held": max(0, end), "errors": (r or {}).get("errors"),
                           "rss_before": (i or {}).get("rss_before"), "rss_idle": (i or {}).get("rss_idle"),
                           "rss_per_client": (i or {}).get("rss_per_client")})
    idles = [i for i in phase["idle"] if i]
    idle = None
    if idles:
        read = [i for i in idles if i.get("rss_idle") is not None and i.get("rss_before") is not None]
        n = sum(i["clients_held"] for i in read)
        idle = {"clients_held": sum(i["clients_held"] for i in idles),
                "clients_complete": sum(i.get("clients_complete") or 0 for i in idles),
                "hold_s": idles[0].get("hold_s"), "burst": idles[0].get("burst"),
                "burst_calls": sum(i.get("burst_calls") or 0 for i in idles),
                "burst_errors": sum(i.get("burst_errors") or 0 for i in idles),
                "first_burst_error": next((i["first_burst_error"] for i in idles if i.get("first_burst_error")), None),
                "burst_cost": merge_cost([i.get("burst_cost") for i in idles]),
                "rss_before": sum(i["rss_before"] for i in read) if read else None,
                "rss_idle": sum(i["rss_idle"] for i in read) if read else None,
                "rss_per_client": sum(i["rss_idle"] - i["rss_before"] for i in read) / n if n else None}
    reports = [g["report"] for g in gens if g.get("report")]
    return {"mode": "hub", "protocol": reports[0].get("protocol") if reports else None,
            "clients": count, "channels": count, "processes": len(servers), "per_process": share, "ramp": ramp,
            "server_pids": [s.pid for s in servers],
            "connect": merge_phase(phase["connect"], "connected"),
            "subscribe": merge_phase(phase["subscribe"], "subscribed"),
            "idle": idle, "idle_processes": len(idles), "fanout": [], "held": held,
            "errors": sum(r.get("errors") or 0 for r in reports),
            "first_error": next((r["first_error"] for r in reports if r.get("first_error")), None),
            "pongs": sum(r.get("pongs") or 0 for r in reports),
            "generator_rss": sum(r.get("generator_rss") or 0 for r in reports) or None,
            "interrupted": any(r.get("interrupted") for r in reports), "by_process": by_process}


# --------------------------------------------------------------------------- figures


def best_step(data):
    """The fan-out step with the most deliveries per second among those that did not stop
    the series (the first step if every one did)."""
    steps = (data or {}).get("fanout") or []
    kept = [s for s in steps if not s.get("stopped")] or steps[:1]
    return max(kept, key=lambda s: s["deliveries_per_sec"]) if kept else None


def figures(case, data):
    """The figures of one run, by name (None where it has none)."""
    if not data:
        return {}
    f = {}
    if case in ("fanout-one", "fanout-many", "many"):
        f["idle_bytes"] = get(data, "idle", "rss_per_client")
    if case == "fanout-many":
        f["connects_per_s"] = get(data, "connect", "per_sec")
        f["subscribes_per_s"] = get(data, "subscribe", "per_sec")
        f["connect_cpu_us"] = get(data, "connect", "server_cpu_us_each")
        f["subscribe_cpu_us"] = get(data, "subscribe", "server_cpu_us_each")
    if case in ("fanout-one", "fanout-many"):
        s = best_step(data)
        if s:
            f["deliveries_per_cpu_s"] = s.get("deliveries_per_server_cpu_s")
            f["deliveries_per_s"] = s.get("deliveries_per_sec")
            f["p50_us"] = get(s, "latency_us", "p50")
            f["p99_us"] = get(s, "latency_us", "p99")
            f["best_rate"] = s["rate"]
        f["steps"] = {f"{st['rate']:g}": {"p50_us": get(st, "latency_us", "p50"),
                                          "p99_us": get(st, "latency_us", "p99"),
                                          "stopped": bool(st.get("stopped"))} for st in data.get("fanout") or []}
    return f


def common_latencies(runs):
    """Latency is compared at one rate: in each repetition of a fan-out case, the highest
    rate that every server's series reached without stopping there. Sets each run's
    `figures` `p50_us` and `p99_us` to that step's, and `latency_rate` to the rate."""
    groups = {}
    for r in runs:
        if r["case"] in ("fanout-one", "fanout-many") and r.get("figures", {}).get("steps"):
            groups.setdefault((r["case"], r["rep"]), []).append(r)
    for group in groups.values():
        ok = [{k for k, v in r["figures"]["steps"].items() if not v["stopped"]} for r in group]
        shared = set.intersection(*ok) if ok else set()
        rate = max(shared, key=float) if shared else None
        for r in group:
            step = r["figures"]["steps"].get(rate) if rate else None
            r["figures"]["latency_rate"] = float(rate) if rate else None
            r["figures"]["p50_us"] = step["p50_us"] if step else None
            r["figures"]["p99_us"] = step["p99_us"] if step else None


LOWER_IS_BETTER = {"idle_bytes", "connect_cpu_us", "subscribe_cpu_us", "p50_us", "p99_us"}


def ratios(runs, case, metric):
    """Per server: the median over repetitions of (its figure ÷ the best peer's figure
    in the same repetition)."""
    by_rep = {}
    for r in runs:
        if r["case"] == case and r.get("figures", {}).get(metric) is not None:
            by_rep.setdefault(r["rep"], {})[r["server"]] = r["figures"][metric]
    out = {}
    for rep, vals in by_rep.items():
        peers = [vals[p] for p in PEERS if p in vals]
        if not peers:
            continue
        best = min(peers) if metric in LOWER_IS_BETTER else max(peers)
        for server, v in vals.items():
            if best:
                out.setdefault(server, []).append(v / best)
    return {s: med(v) for s, v in out.items()}


def ratios_by_rate(runs, case):
    """Per rate that every server's series reached without stopping, in at least one
    repetition: per server, the median over those repetitions of its p50 and p99 ÷ the
    best peer's at that rate."""
    reps = {}
    for r in runs:
        if r["case"] == case and r.get("figures", {}).get("steps"):
            reps.setdefault(r["rep"], {})[r["server"]] = r["figures"]["steps"]
    out = {}
    for servers in reps.values():
        ok = [{k for k, v in steps.items() if not v["stopped"]} for steps in servers.values()]
        for rate in set.intersection(*ok) if ok else set():
            for metric in ("p50_us", "p99_us"):
                vals = {s: steps[rate][metric] for s, steps in servers.items() if steps[rate][metric]}
                peers = [vals[p] for p in PEERS if p in vals]
                if not peers:
                    continue
                for server, v in vals.items():
                    out.setdefault(float(rate), {}).setdefault((server, metric), []).append(v / min(peers))
    return {rate: {k: med(v) for k, v in cells.items()} for rate, cells in out.items()}


def fig(runs, case, server, metric):
    return med([r.get("figures", {}).get(metric) for r in runs if r["case"] == case and r["server"] == server])


def fmt_ratio(v, metric):
    if v is None:
        return "–"
    better = v < 1 if metric in LOWER_IS_BETTER else v > 1
    return f"{v:.2f}×" + (" (better)" if better and abs(v - 1) > 0.005 else "")


def held_count(data):
    """The clients of a held run still connected and subscribed at its end: run_spread's
    `held` (every process's), or a single generator's clients held through the hold (the
    runs saved before the case ran as several processes)."""
    if not data:
        return 0
    return data["held"] if "held" in data else (get(data, "idle", "clients_held") or 0)


def held_of(runs, server):
    """The largest count held through the hold, and the run that did not hold, if any."""
    held, short = None, None
    for r in runs:
        if r["case"] != "held" or r["server"] != server or not r.get("data"):
            continue
        d = r["data"]
        got = held_count(d)
        if got >= r["asked"] and not r.get("error"):
            held = max(held or 0, got)
        else:
            short = {"asked": r["asked"], "connected": get(d, "connect", "connected"),
                     "subscribed": get(d, "subscribe", "subscribed"), "held": got,
                     "why": r.get("error") or d.get("guard") or get(d, "connect", "first_error")
                     or get(d, "subscribe", "first_error") or d.get("first_error")}
    return held, short


def spread_of(runs, case):
    """How a case's runs spread each server over processes, in words ("7 processes of at
    most 15,000 clients", or per count asked for the held case), or None for runs of one
    process each (saved before the cases ran as several)."""
    ds = [(r.get("asked") or get(r, "data", "clients"), r["data"]) for r in runs
          if r["case"] == case and r.get("data") and r["data"].get("processes")]
    if not ds:
        return None
    share = ds[0][1]["per_process"]
    counts = sorted({(n, d["processes"]) for n, d in ds})
    if len({p for _, p in counts}) == 1:
        n = counts[0][1]
        return f"{n} process{'es' if n > 1 else ''} of at most {share:,} clients"
    return (f"processes of at most {share:,} clients ("
            + ", ".join(f"{p} for {n:,}" for n, p in counts) + ")")


def spread_why(facts, most):
    """Why the many and held cases run several processes: the descriptor limit, when it
    is under the `most` clients a case asked for."""
    hard = facts.get("nofile_hard")
    where = "each on ports of its own and all pinned to the server core"
    if hard and 0 < hard < most:
        return (f"{where}, because a process here may hold {hard:,} descriptors (the hard limit, `ulimit -Hn`, "
                f"which only CAP_SYS_RESOURCE raises) and so cannot hold {most:,} sockets")
    return f"{where} (--per-process), as on machines where a process may hold 20,000 descriptors"


def session_record(command, started, finished, facts, versions):
    """One run of this script as the saved results keep it (their `sessions`): a merged
    report names each one's command, times, commit and load."""
    return {"command": command, "started": started.isoformat(), "finished": finished.isoformat(),
            "commit": facts["volley_commit"], "volley": versions.get("volley"),
            "load_start": facts.get("load_start"), "load_end": facts.get("load_end")}


def span(started, finished):
    """Two ISO times as the report shows a session: "2026-12-03 12:23 to 12:40 UTC" (the
    end dated too when it fell on another day; one time when both fall in one minute)."""
    a, b = datetime.datetime.fromisoformat(started), datetime.datetime.fromisoformat(finished)
    if f"{a:%Y-%m-%d %H:%M}" == f"{b:%Y-%m-%d %H:%M}":
        return f"{a:%Y-%m-%d %H:%M} UTC"
    return f"{a:%Y-%m-%d %H:%M} to {b.strftime('%H:%M' if a.date() == b.date() else '%Y-%m-%d %H:%M')} UTC"


def when(ats):
    """Runs' end times ("2026-12-03 16:40 UTC", hub.stamp's) as one: "on T", or "from T1
    to T2" (the second undated on the same day)."""
    first, last = min(ats), max(ats)
    if first == last:
        return f"on {first}"
    return f"from {first[:-4]} to {last[11:] if first[:10] == last[:10] else last}"


def provenance(run, facts, sessions):
    """The commit a run ran with, the session (its `started`) it ran in and when it
    ended; a run saved before runs recorded them: its file's (`facts`, its one session)."""
    return {"commit": run.get("commit") or facts["volley_commit"],
            "session": run.get("session") or sessions[0]["started"],
            "at": run.get("at") or f"{datetime.datetime.fromisoformat(sessions[0]['finished']):%Y-%m-%d %H:%M} UTC"}


def write_report(args, results, facts, started, finished, out_dir, command):
    conf = settings(args)
    os.makedirs(os.path.join(out_dir, "bench"), exist_ok=True)
    runs = results["runs"]
    for r in runs:
        if r["case"] != "held":
            r["figures"] = figures(r["case"], r.get("data"))
    common_latencies(runs)
    rows = [s for s in args.servers if s not in results["skipped"]]
    # The sessions (runs of this script) the runs come from, oldest first: several after
    # --merge; one for a run saved before runs recorded theirs.
    sessions = results.get("sessions") or [session_record(command, started, finished, facts, results["versions"])]
    md = ["# Volley against its peers", "", "<!-- Generated by bench/peers.py; do not edit by hand. -->", ""]
    if len(sessions) == 1:
        md.append(f"Command: `{sessions[0]['command']}`\n")
    else:
        md.append("Commands, oldest first (each later one ran with `--merge`: its runs replaced the saved runs of the "
                  "cases and servers it ran, the others were kept): "
                  + "; then ".join(f"`{x['command']}` ({span(x['started'], x['finished'])})" for x in sessions)
                  + "\n")
    until = f"{finished:%H:%M}" if finished.date() == started.date() else f"{finished:%Y-%m-%d %H:%M}"
    md.append(f"Run {started:%Y-%m-%d %H:%M} to {until} UTC, {args.reps} repetition(s) of the 10,000-client "
              f"cases (figures are medians; ratios are taken within a repetition, then their median); fan-out steps "
              f"{conf['duration']} s measured after {conf['warmup']} s of warm-up."
              f"{' A --quick run: tiny counts, not figures.' if args.quick else ''}\n")
    md.append("Full run (about an hour and a half; `bash bench/install-peers.sh` first): `python3 bench/peers.py`. "
              "Each server's figures are its own CPU time and memory; the generator's core and the machine's other "
              "work show in \"bound by\" and the load average.\n")
    md.append("## Servers\n")
    v = results["versions"]
    origin = {id(r): provenance(r, facts, sessions) for r in runs}
    commits = sorted({origin[id(r)]["commit"] for r in runs if r["server"].startswith("volley")}
                     or {facts["volley_commit"]})
    commit = (f"commit {commits[0]}" if len(commits) == 1 else
              f"commits {', '.join(commits[:-1])} and {commits[-1]}: which cases ran on which, below")
    md.append(f"- **Volley** `volley serve` ({v.get('volley') or '?'}, {commit}), the "
              "configuration of docs/HUB-BENCHMARKS.md plus one Pusher app at its default limits; measured over "
              "Centrifugo's protocol (server API) and over Pusher's (Pusher HTTP API)")
    md.append(f"- **Sockudo** {v.get('sockudo') or '(not installed)'} from crates.io (`cargo install sockudo --locked`"
              ", default features), its defaults but: rate limiter off, no connection limit (server and app), "
              "the queue in memory (webhooks are unused), one app; adapter `local`, metrics as by default. Its HTTP "
              "API answers every request with `Connection: close`: the generator opens a connection for each call, "
              "as a backend's HTTP client would, and that work is in Sockudo's CPU time")
    md.append(f"- **Socket.IO** {v.get('socket.io') or '(not installed)'} on Node.js {v.get('node') or '?'}: "
              "bench/peers/socketio-server.mjs, default options, a `subscribe` event joins a room, "
              "`POST /publish` emits to rooms")
    md.append("- **Not measured: Soketi and Laravel Reverb.** Neither installs from the package registries: "
              "Soketi depends on a package published only on GitHub, Reverb is PHP.")
    for s, why in results["skipped"].items():
        md.append(f"- Row {LABEL[s]} skipped in this run: {why}")
    md.append("")
    if len({(o["commit"], o["session"]) for o in origin.values()}) > 1:
        # Merged runs (--merge): each server's cases by the commit and session they ran in.
        md.append("The runs come from more than one session or commit of Volley (the servers' binary and the "
                  "generator's); each server's cases ran with:\n")
        for s in [s for s in SERVERS if any(r["server"] == s for r in runs)]:
            groups = {}
            for r in runs:
                if r["server"] == s:
                    o = origin[id(r)]
                    g = groups.setdefault((o["commit"], o["session"]), {"cases": set(), "at": []})
                    g["cases"].add(r["case"])
                    g["at"].append(o["at"])
            parts = []
            for (c, _), g in sorted(groups.items(), key=lambda kv: min(kv[1]["at"])):
                cases = [case for case in CASES if case in g["cases"]]
                names = cases[0] if len(cases) == 1 else f"{', '.join(cases[:-1])} and {cases[-1]}"
                parts.append(f"the {names} case{'s' if len(cases) > 1 else ''} at commit {c}, {when(g['at'])}")
            md.append(f"- {LABEL[s]}: " + "; ".join(parts))
        md.append("")
    md.append("## Machine\n")
    md.append(f"- CPU: {facts['cpu']}, {facts['nproc']} logical cores; memory {facts['memory']}; Linux "
              f"{facts['kernel']}")
    md.append(f"- Each server pinned to core {args.server_core}, the generator (`volley bench-hub`, one thread) to "
              f"core {args.client_core} (`taskset`); descriptor limit raised to {NOFILE_WANT:,} for both where allowed"
              + (f" (here the hard limit, {facts['nofile_hard']:,} per process: the many and held cases run each "
                 f"server as several processes, each loaded by its own generator)"
                 if 0 < (facts.get("nofile_hard") or 0) < NOFILE_WANT else ""))
    loads = [x for x in sessions if x.get("load_start")]
    if len(sessions) > 1 and len(loads) == len(sessions):
        md.append("- Load average at the start and the end of each session: "
                  + "; ".join(f"{span(x['started'], x['finished'])}: {x['load_start']}, {x['load_end']}"
                              for x in loads))
    else:
        md.append(f"- Load average at the start {facts['load_start']}, at the end {facts['load_end']}")
    md.append("")
    md.append("## How\n")
    md.append(f"""`volley bench-hub --protocol P` speaks each server's own client protocol and HTTP
API: Centrifugo's (`connect` with an HS256 token, `subscribe`; the server API),
Pusher's (`/app/{{key}}?protocol=7`, `pusher:subscribe` answered by
`pusher_internal:subscription_succeeded`, pings answered; `POST /apps/{{id}}/events`
signed with the app's secret, one event to up to 100 channels), Socket.IO's (Engine.IO
v4 over WebSocket, the namespace's connect, a `subscribe` event with an
acknowledgement, pings answered; the server's `POST /publish`). The phases are the
hub benchmark's: connect every client, subscribe each, publish a burst of
{conf['burst']} publications to every channel, hold the clients idle {conf['hold']} s
and read the server's resident memory (**memory per client = (RSS idle − RSS before
the first client) ÷ clients held**), then fan-out steps at rising publication rates,
open loop from 16 kept-alive HTTP connections (on a thread of the generator's own, each
call made ready before its due time and sent 5-20 µs after it on average), each payload
(100 B) carrying its due time: **latency is from that due time to the arrival at a
client**, HTTP call, fan-out, write and the generator's own reading included. A series stops after a step with a p99
over {args.max_p99:g} ms, with losses, or that delivered or published less than 90% of
what it should. **Deliveries per server-CPU-second** divide the deliveries of the
measured phase by the server's CPU time (user + system, /proc) over it; "bound by" says
which core was busy. Each server starts once the machine is quiet (every core at most
{hublib.QUIET_BUSY:.0%} busy for {hublib.QUIET_S} s in a row): the last server's exit (its memory
freed, its clients' sockets closed) otherwise took a share of the next one's cores.

**What bounds the figures.** Every delivery is a write to its own loopback TCP socket,
and on loopback the sender's core also runs the receiving side of TCP and wakes the
reader: a profile of Volley's server core during the fan-out steps
(`perf record -e cpu-clock -g -p PID`) puts 70-85% of its time in the kernel's TCP
path, the rest in Volley. Hence: at a low rate, one publication to one channel is a
burst of writes back to back, and **its p50 and p99 are about the time the server
core takes to make half and all of them** ("neither core" is busy on average, but the
server's is for that burst); at rising rates, what waits for a client leaves in one
write of several frames (the hub's clients are parked, and their parking's writer
writes all that waits at once), so deliveries per server-CPU-second rise with the
rate until the server core is full. With a channel per client, each delivery is a
write of its own at any rate: the server core's cost per write bounds the
deliveries per CPU-second, and the HTTP API calls (100 channels each, handled in
turn) bound the latencies: a call's median delivery waits for about 50 writes. For
Volley at 30,000 publications/s, its system calls traced (docs/PERFORMANCE.md): the
first `send` 7-10 µs after the request is read, then each delivery 4.9-6.9 µs in the
kernel's `send` and 1.5-1.6 µs in the hub's code.
""")
    md.append("## Summary\n")
    n1, nm, nb = conf["fanout-one"]["clients"], conf["fanout-many"]["clients"], conf["many"]["clients"]
    metrics = [
        ("fanout-one", "deliveries_per_cpu_s", f"Fan-out, one channel × {n1:,}: deliveries per server-CPU-s", "n"),
        ("fanout-one", "p50_us", "  p50 publish → delivery (at the highest rate all sustained)", "us"),
        ("fanout-one", "p99_us", "  p99 publish → delivery", "us"),
        ("fanout-many", "deliveries_per_cpu_s", f"Fan-out, {nm:,} channels × 1: deliveries per server-CPU-s", "n"),
        ("fanout-many", "p50_us", "  p50 publish → delivery", "us"),
        ("fanout-many", "p99_us", "  p99 publish → delivery", "us"),
        ("fanout-many", "idle_bytes", f"Memory per idle subscribed client, {nm:,}", "b"),
        ("many", "idle_bytes", f"Memory per idle subscribed client, {nb:,}"
                               + (f" ({spread_of(runs, 'many')} each)" if spread_of(runs, "many") else ""), "b"),
        ("fanout-many", "connects_per_s", f"Connects per second ({nm:,}, 256 at once)", "n"),
        ("fanout-many", "subscribes_per_s", f"Subscribes per second ({nm:,}, 256 at once)", "n"),
    ]
    fmt = {"n": lib.fmt_num, "us": lib.fmt_us, "b": lib.fmt_bytes}
    md.append("| figure | " + " | ".join(LABEL[s] for s in rows) + " | " +
              " | ".join(f"{LABEL[s]} ÷ best peer" for s in rows if s.startswith("volley")) + " |")
    md.append("|---|" + "---:|" * (len(rows) + sum(s.startswith("volley") for s in rows)))
    for case, metric, name, kind in metrics:
        if case not in args.only_set:
            continue
        rs = ratios(runs, case, metric)
        md.append(f"| {name} | " + " | ".join(fmt[kind](fig(runs, case, s, metric)) for s in rows) + " | " +
                  " | ".join(fmt_ratio(rs.get(s), metric) for s in rows if s.startswith("volley")) + " |")
    if "held" in args.only_set:
        cells, most, open_ended = [], {}, {}
        for s in rows:
            held, short = held_of(runs, s)
            # A server that held every client of the highest count asked for may hold more.
            open_ended[s] = short is None
            most[s] = max([held or 0] + ([short["held"] or 0] if short else []))
            if short and (short["held"] or 0) > (held or 0):
                cells.append(f"{short['held']:,} (of {short['asked']:,} asked)")
            elif held:
                cells.append(f"≥ {held:,}" + (f" (< {short['asked']:,})" if short else ""))
            else:
                cells.append("–" if not short else f"< {short['asked']:,}")
        peers = [s for s in rows if not s.startswith("volley")]
        best = max((most[s] for s in peers), default=0)
        # A best peer that held every client of the highest count asked for may hold
        # more: no ratio then.
        best_open = any(most[s] == best and open_ended[s] for s in peers)

        def held_ratio(s):
            if not best or not most[s] or best_open:
                return "–"
            v = most[s] / best
            return f"{'≥ ' if open_ended[s] else ''}{v:.2f}×" + (" (better)" if v > 1.005 else "")

        md.append("| The most subscribed clients held (connected and subscribed through the hold) | " + " | ".join(cells)
                  + " | " + " | ".join(held_ratio(s) for s in rows if s.startswith("volley")) + " |")
    md.append("")
    md.append("Deliveries per server-CPU-second are each server's best step's: the one with the most deliveries "
              "per second among the steps that did not stop the series. Latencies are compared at one rate: in each "
              "repetition, the highest rate every server's series reached without stopping. The steps follow.\n")
    volleys = [s for s in rows if s.startswith("volley")]
    for case, name in (("fanout-one", "one channel"), ("fanout-many", "a channel each")):
        by_rate = ratios_by_rate(runs, case) if case in args.only_set else {}
        if not by_rate:
            continue
        md.append(f"Latency ratios (÷ best peer) at every rate all servers reached without stopping, fan-out to "
                  f"{name} (the median over the repetitions in which that rate was reached by all):\n")
        md.append("| publications/s | " + " | ".join(f"{LABEL[s]} p50 | {LABEL[s]} p99" for s in volleys) + " |")
        md.append("|---:|" + "---:|" * (2 * len(volleys)))
        for rate in sorted(by_rate):
            cells = by_rate[rate]
            md.append(f"| {rate:,.0f} | " + " | ".join(
                f"{fmt_ratio(cells.get((s, 'p50_us')), 'p50_us')} | {fmt_ratio(cells.get((s, 'p99_us')), 'p99_us')}"
                for s in volleys) + " |")
        md.append("")
    md.append(f"Figures filed with the issue that asked for this comparison (another machine): Sockudo "
              f"{FILED['sockudo']}; Socket.IO {FILED['socketio']}.\n")
    for case, title in (("fanout-one", f"Fan-out: {conf['fanout-one']['clients']:,} clients on one channel"),
                        ("fanout-many", f"Fan-out: {conf['fanout-many']['clients']:,} clients, a channel each "
                                        f"({conf['fanout-many']['batch']} channels per HTTP API call)")):
        if case not in args.only_set:
            continue
        md.append(f"## {title}\n")
        md.append("| server | publications/s asked | made | deliveries/s | deliveries per server-CPU-s | p50 | p99 | "
                  "lost | bound by | stopped |")
        md.append("|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
        for s in rows:
            steps = {}
            for r in runs:
                if r["case"] == case and r["server"] == s and r.get("data"):
                    for st in r["data"].get("fanout", []):
                        steps.setdefault(st["rate"], []).append(st)
            for rate, sts in sorted(steps.items()):
                stopped = [st["stopped"] for st in sts if st.get("stopped")]
                md.append(
                    f"| {LABEL[s]} | {rate:,.0f} | {lib.fmt_num(med([st['publications_per_sec'] for st in sts]))} | "
                    f"{lib.fmt_num(med([st['deliveries_per_sec'] for st in sts]))} | "
                    f"{lib.fmt_num(med([st.get('deliveries_per_server_cpu_s') for st in sts]))} | "
                    f"{lib.fmt_us(med([get(st, 'latency_us', 'p50') for st in sts]))} | "
                    f"{lib.fmt_us(med([get(st, 'latency_us', 'p99') for st in sts]))} | "
                    f"{sum(st['lost'] for st in sts):,} | {bound(sts[0]['cost'])} | "
                    f"{stopped[0] if stopped else ''} |")
        md.append("")
    md.append("## Memory, connects, subscribes\n")
    md.append("| server | clients | memory per idle client | connects/s | server CPU per connect | subscribes/s | "
              "server CPU per subscribe | connect bound by |")
    md.append("|---|---:|---:|---:|---:|---:|---:|---|")
    for case in ("fanout-one", "fanout-many", "many"):
        if case not in args.only_set:
            continue
        for s in rows:
            ds = [r["data"] for r in runs if r["case"] == case and r["server"] == s and r.get("data")]
            if not ds:
                continue
            us = lambda v: "–" if v is None else f"{v:,.0f} µs"  # noqa: E731
            procs = f", {ds[0]['processes']} processes" if ds[0].get("processes") else ""
            md.append(f"| {LABEL[s]} | {ds[0]['clients']:,} on {ds[0]['channels']:,} channel(s){procs} | "
                      f"{lib.fmt_bytes(med([get(d, 'idle', 'rss_per_client') for d in ds]))} | "
                      f"{lib.fmt_num(med([get(d, 'connect', 'per_sec') for d in ds]))} | "
                      f"{us(med([get(d, 'connect', 'server_cpu_us_each') for d in ds]))} | "
                      f"{lib.fmt_num(med([get(d, 'subscribe', 'per_sec') for d in ds]))} | "
                      f"{us(med([get(d, 'subscribe', 'server_cpu_us_each') for d in ds]))} | "
                      f"{bound(get(ds[0], 'connect', 'cost'))} |")
    md.append("")
    spread = spread_of(runs, "many")
    if "many" in args.only_set and spread:
        md.append(f"The many case ({conf['many']['clients']:,} clients, a channel each) ran each server as "
                  f"{spread}, "
                  f"{spread_why(facts, conf['many']['clients'])}. One generator loaded each process, all at once, "
                  f"each measuring its own process "
                  f"({hublib.MANY_CONCURRENCY} connects and subscribes in flight per generator, rather than 256). "
                  f"Its memory per client is (the processes' RSS idle, summed − their RSS before the first client, "
                  f"summed) ÷ the clients held in all; its connects and subscribes per second are all the "
                  f"processes' over the longest phase, the CPU per connect and subscribe all the processes' CPU "
                  f"time ÷ all the connects and subscribes.\n")
    if "held" in args.only_set:
        md.append("## The most subscribed clients held\n")
        spread = spread_of(runs, "held")
        md.append(f"Counts asked for in turn ({', '.join(f'{c:,}' for c in conf['held']['counts'])}) at "
                  f"{conf['held']['ramp']:,} connects per second (all the generators together), each client "
                  f"subscribing as it connects; a count is held when every client of every process is still "
                  f"connected and subscribed after the {conf['hold']} s hold, once all of them are idle. "
                  f"The generators and the servers are stopped when the machine's available memory falls under "
                  f"{MEMORY_GUARD:.0%} of it (at least {MEMORY_GUARD_MIN / (1 << 30):g} GiB): a server that needs more "
                  f"memory per client than the machine has for the count shows that as the reason here, not as a "
                  f"failed run.\n")
        if spread:
            md.append(f"Each server ran as {spread}, {spread_why(facts, max(conf['held']['counts']))}. One "
                      f"generator loaded each process, all at once ({hublib.MANY_CONCURRENCY} connects in flight "
                      f"each at most); the clients are counted per process, then summed.\n")
        md.append("| server | held | the count not held: connected, subscribed, held | why |")
        md.append("|---|---:|---|---|")
        for s in rows:
            held, short = held_of(runs, s)
            # "–" for a phase no generator reported (interrupted while connecting, a
            # generator reports no subscribes, even those made as each client connected).
            n = lambda v: "–" if v is None else f"{v:,}"  # noqa: E731
            miss = "–" if not short else (f"{short['asked']:,}: {n(short['connected'])}, "
                                          f"{n(short['subscribed'])}, {short['held']:,}")
            md.append(f"| {LABEL[s]} | {'–' if held is None else f'{held:,}'} | {miss} | "
                      f"{(short or {}).get('why') or ''} |")
        md.append("")
    if results["failures"]:
        md.append("## Failed runs\n")
        md += [f"- {f}" for f in results["failures"]]
        md.append("")
    path = os.path.join(out_dir, "PEER-BENCHMARKS.md")
    with open(path, "w") as f:
        f.write("\n".join(md))
    saved = {"command": command, "started": started.isoformat(), "finished": finished.isoformat(),
             "sessions": sessions, "machine": facts, "versions": results["versions"], "skipped": results["skipped"],
             "settings": {k: getattr(args, k) for k in SAVED_ARGS}, "runs": runs, "failures": results["failures"]}
    with open(os.path.join(out_dir, "bench", "peer-results.json"), "w") as f:
        json.dump(saved, f, indent=1)
    return path


SAVED_ARGS = ["reps", "duration", "warmup", "only", "servers", "clients", "many_clients", "batch", "held_counts",
              "held_ramp", "per_process", "quick",
              "server_core", "client_core", "max_p99"]


# The settings (SAVED_ARGS) each case's figures and the report's words about it depend
# on. A run merged into a saved one (--merge) must have the saved run's values of those
# of the cases whose saved runs it keeps: the report states one value of each.
CASE_ARGS = {"fanout-one": {"reps", "duration", "warmup", "clients", "max_p99"},
             "fanout-many": {"reps", "duration", "warmup", "clients", "batch", "max_p99"},
             "many": {"many_clients", "per_process"},
             "held": {"held_counts", "held_ramp", "per_process"}}
EVERY_CASE_ARGS = {"quick", "server_core", "client_core"}


def saved_settings(saved):
    # Runs saved before --per-process ran the many and held cases as one process each.
    return {"per_process": PER_PROCESS, **saved["settings"]}


def rerender(path, out_dir):
    with open(path) as f:
        saved = json.load(f)
    args = argparse.Namespace(**saved_settings(saved))
    args.only_set = set(args.only or CASES)
    results = {"runs": saved["runs"], "failures": saved["failures"], "skipped": saved["skipped"],
               "versions": saved["versions"], "sessions": saved.get("sessions")}
    return write_report(args, results, saved["machine"], datetime.datetime.fromisoformat(saved["started"]),
                        datetime.datetime.fromisoformat(saved["finished"]), out_dir, saved["command"])


def redone(run, cases, servers):
    """Whether a saved run is one a merged run replaces: a case it ran, for a server it
    ran (a server it skipped keeps its saved runs)."""
    return run["case"] in cases and run["server"] in servers


def merge_conflicts(args, saved, servers):
    """Why this run cannot be merged into the saved one, or None: the settings of this
    run that differ from the saved run's where the cases it measures (for `servers`)
    and the cases whose saved runs it keeps share them."""
    theirs = saved_settings(saved)
    kept = {r["case"] for r in saved["runs"] if not redone(r, args.only_set, servers)}
    shared = set().union(*(CASE_ARGS[c] for c in args.only_set)) & set().union(*(CASE_ARGS[c] for c in kept))
    if kept:
        shared |= EVERY_CASE_ARGS
    show = lambda v: ",".join(str(c) for c in v) if isinstance(v, list) else str(v)  # noqa: E731
    differ = [f"--{k.replace('_', '-')} {show(getattr(args, k))} (saved: {show(theirs.get(k))})" for k in SAVED_ARGS
              if k in shared and getattr(args, k) != theirs.get(k)]
    if not differ:
        return None
    return ("--merge: settings that differ from the saved run's where they concern saved runs this run keeps: "
            + ", ".join(differ) + "; leave them out (the saved ones are the defaults) or re-run those cases for "
            "every server")


def merge(args, saved, results, rows, session):
    """This run's results (`session`: its record) merged into a saved run's: every saved
    run of a (case, server) pair this run did not run is kept, stamped with its commit,
    end and session where it was saved without them (its file's); its failures too. The
    sessions that still own a run, the skipped rows (those without a run), the peers'
    versions (the saved ones for the servers this run left out) and the settings (the
    saved ones, but for those only the cases this run measured use: merge_conflicts
    refused the others' differing) follow, and `args` is set to them, every case with a
    run rendered. Returns the merged sessions, oldest first."""
    sessions = saved.get("sessions") or [{"command": saved["command"], "started": saved["started"],
                                          "finished": saved["finished"], "commit": saved["machine"]["volley_commit"],
                                          "volley": saved["versions"].get("volley"),
                                          "load_start": saved["machine"].get("load_start"),
                                          "load_end": saved["machine"].get("load_end")}]
    kept = [r for r in saved["runs"] if not redone(r, args.only_set, rows)]
    for r in kept:
        r.update(provenance(r, saved["machine"], sessions))
    runs = kept + results["runs"]
    results["runs"] = runs
    results["failures"] = [f for f in saved["failures"]
                           if not redone(dict(zip(("case", "server"), f.split()[:2])), args.only_set, rows)
                           ] + results["failures"]
    owners = {r["session"] for r in runs}
    sessions = [x for x in sessions if x["started"] in owners] + [session]
    servers = {r["server"] for r in runs}
    results["skipped"] = {s: why for s, why in {**saved["skipped"], **results["skipped"]}.items() if s not in servers}
    versions = dict(saved["versions"])
    for key, server in (("volley", None), ("sockudo", "sockudo"), ("node", "socketio"), ("socket.io", "socketio")):
        if server is None or server in rows:
            versions[key] = results["versions"].get(key)
    results["versions"] = versions
    if kept:
        ours = set().union(*(CASE_ARGS[c] for c in args.only_set))
        for k, v in saved_settings(saved).items():
            if k in SAVED_ARGS and k not in ours | {"only", "servers"}:
                setattr(args, k, v)
    args.servers = [s for s in SERVERS if s in saved["settings"]["servers"] or s in args.servers]
    args.only_set = {r["case"] for r in runs} | args.only_set
    args.only = [] if args.only_set == set(CASES) else [c for c in CASES if c in args.only_set]
    return sessions


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", default="", help=f"comma-separated cases (default: all: {','.join(CASES)})")
    p.add_argument("--servers", default=",".join(SERVERS), help=f"rows (default: all: {','.join(SERVERS)})")
    p.add_argument("--reps", type=int, default=3, help="repetitions of the 10,000-client cases (default 3)")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per fan-out step (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per fan-out step (default 1)")
    p.add_argument("--clients", type=int, default=10_000,
                   help="clients of the fan-out cases (default 10,000; fewer for a trial run)")
    p.add_argument("--many-clients", type=int, default=100_000, help="clients of the many case (default 100,000)")
    p.add_argument("--batch", type=int, default=100,
                   help="fanout-many: channels per HTTP API call (default 100, Pusher's most)")
    p.add_argument("--max-p99", type=float, default=2000.0,
                   help="a series of rising rates stops after a step with a p99 over this, in ms (default 2000)")
    p.add_argument("--held-counts", default=",".join(str(c) for c in HELD_COUNTS),
                   help=f"held: counts asked for in turn (default {','.join(str(c) for c in HELD_COUNTS)})")
    p.add_argument("--held-ramp", type=float, default=HELD_RAMP,
                   help=f"held: connects per second (default {HELD_RAMP:,})")
    p.add_argument("--per-process", type=int, default=PER_PROCESS,
                   help=f"many, held: clients per server process, and per generator (default {PER_PROCESS:,}; "
                        f"a quick run: at most 100)")
    p.add_argument("--sockudo", default="", help="the sockudo binary (default: on PATH, or ~/.cargo/bin)")
    p.add_argument("--quick", action="store_true", help="tiny counts and short steps: a smoke test (needs --out)")
    p.add_argument("--out", default="", help="directory for PEER-BENCHMARKS.md and bench/ (default: docs/)")
    p.add_argument("--no-build", action="store_true", help="use the release binary already built")
    p.add_argument("--volley", default="", help="this volley binary rather than the release build")
    p.add_argument("--server-core", type=int, default=0, help="core the servers are pinned to (default 0)")
    p.add_argument("--client-core", type=int, default=1, help="core the generator is pinned to (default 1)")
    p.add_argument("--rerender", metavar="RESULTS_JSON", help="only write the report again from a saved run")
    p.add_argument("--merge", metavar="RESULTS_JSON",
                   help="merge this run into a saved run: its runs replace the saved runs of the cases (--only) and "
                        "servers (--servers) it runs, the others are kept; the saved run's settings are the "
                        "defaults; the report says which commit each server's cases ran with, and when")
    args = p.parse_args()
    saved = None
    if args.merge:
        if args.rerender:
            p.error("--merge runs cases and merges them into a saved run, --rerender runs none: give one of them")
        try:
            with open(args.merge) as f:
                saved = json.load(f)
        except (OSError, ValueError) as e:
            p.error(f"--merge: cannot read {args.merge}: {e}")
        # The saved run's settings become this run's defaults, so that those of the
        # cases it keeps stay unless given (merge_conflicts refuses a differing one).
        theirs = saved_settings(saved)
        p.set_defaults(**{k: ",".join(str(c) for c in v) if k == "held_counts" else v for k, v in theirs.items()
                          if k in SAVED_ARGS and k not in ("only", "servers", "quick")})
        args = p.parse_args()
        if args.quick and not args.out:
            p.error("--merge with --quick: give --out DIR (docs/ keeps full runs only)")
        if theirs.get("quick") and not args.out:
            p.error(f"--merge: {args.merge} holds a --quick run: give --out DIR (docs/ keeps full runs only)")
        if bool(args.quick) != bool(theirs.get("quick")):
            p.error(f"--merge: {args.merge} holds {'a --quick' if theirs.get('quick') else 'a full'} run, this run "
                    f"is {'--quick' if args.quick else 'a full one'}: a report does not mix tiny counts with figures")
    if args.rerender:
        log(f"report: {rerender(args.rerender, os.path.abspath(args.out or os.path.join(ROOT, 'docs')))}")
        return 0
    if args.quick:
        if not args.out:
            p.error("--quick does not overwrite docs/PEER-BENCHMARKS.md: give --out DIR")
        args.reps = 1
    if args.per_process < 1:
        p.error("--per-process: at least 1 client per process")
    if not 1 <= args.batch <= 100:
        p.error("--batch: 1 to 100 channels per call (Pusher's HTTP API takes at most 100)")
    try:
        args.held_counts = [int(c) for c in args.held_counts.split(",") if c.strip()]
    except ValueError:
        p.error("--held-counts: numbers of clients, comma-separated")
    args.only = [c.strip() for c in args.only.split(",") if c.strip()]
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    for c in args.only:
        if c not in CASES:
            p.error(f"unknown case {c} (known: {','.join(CASES)})")
    for s in args.servers:
        if s not in SERVERS:
            p.error(f"unknown server {s} (known: {','.join(SERVERS)})")
    args.only_set = set(args.only or CASES)
    if not sys.platform.startswith("linux"):
        sys.exit("peers.py: Linux only (taskset, /proc)")
    usable = sorted(os.sched_getaffinity(0))
    for attr in ("server_core", "client_core"):
        if getattr(args, attr) not in usable:
            log(f"peers.py: core {getattr(args, attr)} is not available (usable: {usable}); using {usable[-1]}")
            setattr(args, attr, usable[-1])
    # Checked before anything runs, every server asked for counted as running; again
    # once the skipped ones are known (they keep their saved runs).
    why = saved and merge_conflicts(args, saved, args.servers)
    if why:
        p.error(why)
    out_dir = os.path.abspath(args.out or os.path.join(ROOT, "docs"))

    paths = {"volley": os.path.abspath(args.volley) if args.volley else hublib.build(args)}
    skipped = {s: why for s, why in find_servers(args, paths).items() if s in args.servers}
    creds = {"secret": secrets.token_hex(24), "api_key": secrets.token_hex(16), "app_secret": secrets.token_hex(16)}
    facts = lib.machine_facts()
    facts["load_start"] = lib.load_avg()
    facts["nofile_hard"] = lib.nofile_hard()
    conf = settings(args)
    results = {"runs": [], "failures": [], "skipped": skipped, "versions": versions(paths)}
    started = datetime.datetime.now(datetime.timezone.utc)
    # Each run names the session it ran in (merged results hold several).
    session_id = started.isoformat()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="volley-peer-bench-") as logdir:
        if "volley-pusher" in args.servers:
            ok, why = volley_speaks_pusher(paths, logdir, creds, args)
            if not ok:
                skipped["volley-pusher"] = why
        rows = [s for s in args.servers if s not in skipped]
        for s, why in skipped.items():
            log(f"==> {LABEL[s]}: skipped ({why})")
        why = saved and merge_conflicts(args, saved, rows)
        if why:
            sys.exit(f"peers.py: {why} (skipped here: {', '.join(skipped)})")

        def record(case, rep, server, data, error, **extra):
            results["runs"].append({"case": case, "rep": rep, "server": server, "data": data, "error": error,
                                    "figures": figures(case, data), **extra, **hublib.stamp(facts),
                                    "session": session_id})
            if error:
                results["failures"].append(f"{case} {server} rep {rep + 1}: {error}")
            f = figures(case, data)
            log(f"    {LABEL[server]}: {lib.fmt_bytes(f.get('idle_bytes'))}/client idle"
                + (f", {lib.fmt_num(f['deliveries_per_cpu_s'])} deliveries per server-CPU-s, p99 "
                   f"{lib.fmt_us(f.get('p99_us'))}" if f.get("deliveries_per_cpu_s") else "")
                + (f"  FAILED: {error}" if error else ""))

        for rep in range(args.reps):
            # The servers take turns, in an order that rotates with the repetition.
            order = rows[rep % len(rows):] + rows[:rep % len(rows)] if rows else []
            for case in ("fanout-one", "fanout-many"):
                if case not in args.only_set:
                    continue
                c = conf[case]
                log(f"==> {case}: {c['clients']:,} clients, repetition {rep + 1}")
                for s in order:
                    data, error = run_one(args, paths, logdir, creds, s, conf, case, c["clients"], c["channels"],
                                          c["rates"], c["batch"])
                    record(case, rep, s, data, error)
        # The many and held cases: each server as several processes (run_spread).
        if "many" in args.only_set:
            n = conf["many"]["clients"]
            log(f"==> many: {n:,} clients, a channel each, over {math.ceil(n / conf['per_process'])} processes "
                f"of each server")
            for s in rows:
                data, error = run_spread(args, paths, logdir, creds, s, conf, "many", n)
                record("many", 0, s, data, error)
        if "held" in args.only_set:
            c = conf["held"]
            for s in rows:
                for i, count in enumerate(c["counts"]):
                    log(f"==> held: {LABEL[s]}, {count:,} asked for, over {math.ceil(count / conf['per_process'])} "
                        f"processes")
                    data, error = run_spread(args, paths, logdir, creds, s, conf, "held", count, ramp=c["ramp"])
                    held = held_count(data)
                    results["runs"].append({"case": "held", "rep": i, "server": s, "asked": count, "data": data,
                                            "error": error, **hublib.stamp(facts), "session": session_id})
                    log(f"    {held:,} held{'  (' + error + ')' if error else ''}")
                    if error and args.quick:
                        results["failures"].append(f"held {s} {count:,}: {error}")
                    if error or held < count:
                        break
    facts["load_end"] = lib.load_avg()
    finished = datetime.datetime.now(datetime.timezone.utc)
    command = " ".join(["python3", "bench/peers.py"] + [shlex.quote(hublib.portable(a)) for a in sys.argv[1:]])
    results["sessions"] = [session_record(command, started, finished, facts, results["versions"])]
    if saved:
        # The merged run spans its sessions: from the first's start to the last's end.
        results["sessions"] = merge(args, saved, results, rows, results["sessions"][0])
        started = min(datetime.datetime.fromisoformat(x["started"]) for x in results["sessions"])
        finished = max(datetime.datetime.fromisoformat(x["finished"]) for x in results["sessions"])
    path = write_report(args, results, facts, started, finished, out_dir, command)
    log(f"\n==> {time.monotonic() - t0:.0f} s; report: {path}")
    return lib.finish(results["failures"])


if __name__ == "__main__":
    sys.exit(main())
