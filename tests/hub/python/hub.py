"""Starts `volley serve` (and `redis-server`, for nodes on the Redis broker) for the
Python tests, and makes tokens.

VOLLEY_BIN overrides the server binary (default: target/release/volley).
"""

import base64
import hashlib
import hmac
import json
import os
import re
import socket
import shutil
import subprocess
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
SECRET = "test-secret-of-the-hub-tests"
API_KEY = "test-api-key"


def volley_bin():
    b = os.environ.get("VOLLEY_BIN") or os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "volley")
    return b if os.path.isabs(b) or "/" not in b else os.path.join(ROOT, b)


def namespace(name, **extra):
    ns = {
        "name": name,
        "presence": True,
        "join_leave": True,
        "history_size": 100,
        "history_ttl": "300s",
        "allow_recovery": True,
        "allow_positioning": True,
        "allow_subscribe_for_client": True,
        "allow_publish_for_subscriber": True,
        "allow_history_for_subscriber": True,
        "allow_presence_for_subscriber": True,
    }
    ns.update(extra)
    return ns


CONFIG = {
    # Idle clients are parked after 50 ms: the tests run against clients parked
    # between their steps.
    "client": {"token": {"hmac_secret_key": SECRET}, "park_after": "50ms"},
    "http_api": {"key": API_KEY},
    "channel": {"namespaces": [namespace("chat")]},
}


class Hub:
    """A `volley serve` process on a free port."""

    def __init__(self, config=CONFIG):
        self.dir = tempfile.mkdtemp(prefix="volley-hub-py-")
        path = os.path.join(self.dir, "config.json")
        with open(path, "w") as f:
            json.dump(config, f)
        env = dict(os.environ, VOLLEY_LOG=os.environ.get("VOLLEY_LOG", "warn"))
        self.proc = subprocess.Popen(
            [volley_bin(), "serve", "--config", path, "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        self.stderr = []
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()
        deadline = time.monotonic() + 15
        while True:
            line = self.proc.stdout.readline()
            m = re.match(r"listening on (\S+)", line)
            if m:
                self.addr = m.group(1)
                break
            if not line or time.monotonic() > deadline:
                raise RuntimeError("volley serve did not start: " + "".join(self.stderr))
        # The configuration was read at start.
        shutil.rmtree(self.dir, ignore_errors=True)
        self.url = f"ws://{self.addr}/connection/websocket"
        self.api_url = f"http://{self.addr}/api"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=15)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    """A `redis-server` on a free loopback port, without persistence, in its own
    temporary directory."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="volley-redis-py-")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir, "--protected-mode", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on {self.port}")
            time.sleep(0.03)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=15)
        shutil.rmtree(self.dir, ignore_errors=True)


def on_redis(url, prefix, config=CONFIG):
    """`config` with the Redis broker at `url`, its keys under `prefix`."""
    return dict(config, broker={"type": "redis", "redis": {"addresses": [url], "prefix": prefix}})


def token(claims, secret=SECRET):
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"
