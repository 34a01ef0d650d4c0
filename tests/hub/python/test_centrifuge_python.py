"""centrifuge-python (PyPI) against `volley serve`, over JSON and over Protobuf."""

import asyncio
import json
import time
import unittest
import urllib.request

from centrifuge import Client, ClientEventHandler, SubscriptionEventHandler

from hub import Hub, token


class Collector(SubscriptionEventHandler):
    def __init__(self):
        self.publications = []
        self.subscribed = []

    async def on_publication(self, ctx):
        self.publications.append(ctx.pub)

    async def on_subscribed(self, ctx):
        self.subscribed.append(ctx)


class ServerSide(ClientEventHandler):
    def __init__(self):
        self.publications = []
        self.disconnected = []

    async def on_publication(self, ctx):
        self.publications.append(ctx)

    async def on_disconnected(self, ctx):
        self.disconnected.append(ctx)


async def wait_for(cond, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class CentrifugePython(unittest.IsolatedAsyncioTestCase):
    @classmethod
    def setUpClass(cls):
        cls.hub = Hub()

    @classmethod
    def tearDownClass(cls):
        cls.hub.stop()

    async def roundtrip(self, protobuf):
        ch = f"chat:python-{'protobuf' if protobuf else 'json'}"
        a = Client(self.hub.url, token=token({"sub": "alice", "info": {"name": "Alice"}}), use_protobuf=protobuf)
        b = Client(self.hub.url, token=token({"sub": "bob"}), use_protobuf=protobuf)
        await a.connect()
        await b.connect()
        await a.ready(5)
        await b.ready(5)
        got = Collector()
        sa = a.new_subscription(ch, events=got)
        sb = b.new_subscription(ch)
        await sa.subscribe()
        await sb.subscribe()
        await sa.ready(5)
        await sb.ready(5)
        payload = {"text": "hello", "n": 1}
        # Over Protobuf payloads are bytes (here, JSON text); over JSON, JSON values.
        enc = (lambda v: json.dumps(v).encode()) if protobuf else (lambda v: v)
        dec = (lambda b: json.loads(b)) if protobuf else (lambda v: v)
        await sb.publish(enc(payload))
        await wait_for(lambda: len(got.publications) == 1, "the publication")
        self.assertEqual(dec(got.publications[0].data), payload)
        self.assertEqual(got.publications[0].info.user, "bob")
        history = await sa.history(limit=10)
        self.assertEqual([dec(p.data) for p in history.publications], [payload])
        self.assertEqual(history.offset, history.publications[0].offset)
        presence = await sa.presence()
        self.assertEqual(sorted(i.user for i in presence.clients.values()), ["alice", "bob"])
        stats = await sa.presence_stats()
        self.assertEqual((stats.num_clients, stats.num_users), (2, 2))
        await a.disconnect()
        await b.disconnect()

    async def test_json(self):
        await self.roundtrip(protobuf=False)

    async def test_protobuf(self):
        await self.roundtrip(protobuf=True)

    async def test_server_side_subscription_over_protobuf(self):
        ch = "chat:python-server-side"
        events = ServerSide()
        c = Client(self.hub.url, token=token({"sub": "carol", "channels": [ch]}), use_protobuf=True, events=events)
        await c.connect()
        await c.ready(5)
        req = urllib.request.Request(
            f"{self.hub.api_url}/publish",
            data=json.dumps({"channel": ch, "data": {"x": 1}}).encode(),
            headers={"X-API-Key": "test-api-key", "Content-Type": "application/json"},
        )
        urllib.request.urlopen(req).read()
        await wait_for(lambda: len(events.publications) == 1, "the server-side publication")
        self.assertEqual(events.publications[0].channel, ch)
        self.assertEqual(json.loads(events.publications[0].pub.data), {"x": 1})
        await c.disconnect()

    async def test_a_forged_token_is_refused_with_3500(self):
        events = ServerSide()
        c = Client(self.hub.url, token=token({"sub": "mallory"}, secret="wrong"), events=events)
        await c.connect()
        await wait_for(lambda: events.disconnected, "the disconnect")
        self.assertEqual(events.disconnected[0].code, 3500)


if __name__ == "__main__":
    unittest.main()
