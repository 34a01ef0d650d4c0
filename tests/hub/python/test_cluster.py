"""centrifuge-python (PyPI) against two `volley serve` nodes on one real Redis, over JSON
and over Protobuf: what a client publishes on one node reaches a subscriber on the
other, and history and presence read the same from both."""

import asyncio
import copy
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import unittest

from centrifuge import Client

from hub import CONFIG, Hub, token
from test_centrifuge_python import Collector, wait_for


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    """A `redis-server` on a free loopback port, without persistence."""

    def __init__(self):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="volley-redis-py-")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)

    def stop(self):
        self.proc.kill()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


class TwoNodes(unittest.IsolatedAsyncioTestCase):
    @classmethod
    def setUpClass(cls):
        cls.redis = Redis()
        config = copy.deepcopy(CONFIG)
        config["broker"] = {
            "type": "redis",
            "redis": {"addresses": [f"redis://127.0.0.1:{cls.redis.port}"], "prefix": f"py{os.getpid()}"},
        }
        cls.a = Hub(config)
        cls.b = Hub(config)

    @classmethod
    def tearDownClass(cls):
        cls.a.stop()
        cls.b.stop()
        cls.redis.stop()

    async def across(self, protobuf):
        ch = f"chat:nodes-{'protobuf' if protobuf else 'json'}"
        alice = Client(self.a.url, token=token({"sub": "alice"}), use_protobuf=protobuf)
        bob = Client(self.b.url, token=token({"sub": "bob"}), use_protobuf=protobuf)
        await alice.connect()
        await bob.connect()
        await alice.ready(5)
        await bob.ready(5)
        got = Collector()
        sa = alice.new_subscription(ch, events=got)
        sb = bob.new_subscription(ch)
        await sa.subscribe()
        await sb.subscribe()
        await sa.ready(5)
        await sb.ready(5)
        enc = (lambda v: json.dumps(v).encode()) if protobuf else (lambda v: v)
        dec = (lambda b: json.loads(b)) if protobuf else (lambda v: v)
        for n in range(1, 4):
            await sb.publish(enc({"n": n}))
        await wait_for(lambda: len(got.publications) == 3, "three publications from the other node")
        self.assertEqual([dec(p.data)["n"] for p in got.publications], [1, 2, 3])
        self.assertEqual([p.offset for p in got.publications], [1, 2, 3])
        self.assertEqual(got.publications[0].info.user, "bob")
        # History and presence agree on both nodes.
        ha = await sa.history(limit=10)
        hb = await sb.history(limit=10)
        self.assertEqual([dec(p.data)["n"] for p in ha.publications], [1, 2, 3])
        self.assertEqual((ha.offset, ha.epoch), (hb.offset, hb.epoch))
        pa = await sa.presence_stats()
        pb = await sb.presence_stats()
        self.assertEqual((pa.num_clients, pa.num_users), (2, 2))
        self.assertEqual((pb.num_clients, pb.num_users), (2, 2))
        await alice.disconnect()
        await bob.disconnect()

    async def test_json(self):
        await self.across(False)

    async def test_protobuf(self):
        await self.across(True)


if __name__ == "__main__":
    unittest.main()
