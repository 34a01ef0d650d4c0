"""centrifuge-python and cent (PyPI) against two `volley serve` nodes sharing one Redis:
what is published on one node reaches the clients on the other, over JSON and over
Protobuf, and presence and history agree from both."""

import asyncio
import json
import os
import unittest

from cent import Client as ApiClient, HistoryRequest, PresenceRequest, PublishRequest
from centrifuge import Client

from hub import API_KEY, Hub, Redis, on_redis, token
from test_centrifuge_python import Collector, wait_for


class TwoNodes(unittest.IsolatedAsyncioTestCase):
    @classmethod
    def setUpClass(cls):
        cls.redis = Redis()
        prefix = f"volley-test-py-{os.getpid()}"
        cls.nodes = []
        try:
            for _ in range(2):
                cls.nodes.append(Hub(on_redis(cls.redis.url, prefix)))
        except Exception:
            cls.tearDownClass()
            raise
        cls.api = [ApiClient(n.api_url, API_KEY) for n in cls.nodes]

    @classmethod
    def tearDownClass(cls):
        for n in cls.nodes:
            n.stop()
        cls.redis.stop()

    async def cross(self, protobuf):
        a, b = self.nodes
        ch = f"chat:python-cross-{'protobuf' if protobuf else 'json'}"
        enc = (lambda v: json.dumps(v).encode()) if protobuf else (lambda v: v)
        dec = (lambda d: json.loads(d)) if protobuf else (lambda v: v)
        alice = Client(a.url, token=token({"sub": "alice"}), use_protobuf=protobuf)
        bob = Client(b.url, token=token({"sub": "bob"}), use_protobuf=protobuf)
        try:
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
            # Bob publishes on node B; the API publishes on node B.
            await sb.publish(enc({"n": 1}))
            r = await asyncio.to_thread(self.api[1].publish, PublishRequest(channel=ch, data={"n": 2}))
            self.assertEqual(r.offset, 2)
            await wait_for(lambda: len(got.publications) == 2, "both publications on node A")
            self.assertEqual([dec(p.data) for p in got.publications], [{"n": 1}, {"n": 2}])
            self.assertEqual([p.offset for p in got.publications], [1, 2])
            self.assertEqual(got.publications[0].info.user, "bob")
            # One history and one presence, read alike from both nodes.
            for api in self.api:
                h = await asyncio.to_thread(api.history, HistoryRequest(channel=ch, limit=10))
                self.assertEqual([p.data for p in h.publications], [{"n": 1}, {"n": 2}])
                p = await asyncio.to_thread(api.presence, PresenceRequest(channel=ch))
                self.assertEqual(sorted(i.user for i in p.presence.values()), ["alice", "bob"])
            history = await sa.history(limit=10)
            self.assertEqual([dec(p.data) for p in history.publications], [{"n": 1}, {"n": 2}])
            presence = await sb.presence()
            self.assertEqual(sorted(i.user for i in presence.clients.values()), ["alice", "bob"])
        finally:
            await alice.disconnect()
            await bob.disconnect()

    async def test_cross_node_json(self):
        await self.cross(False)

    async def test_cross_node_protobuf(self):
        await self.cross(True)


if __name__ == "__main__":
    unittest.main()
