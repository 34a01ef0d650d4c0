"""cent (PyPI), the server API client, against `volley serve`: every API method."""

import asyncio
import unittest

from cent import (
    BatchRequest,
    BroadcastRequest,
    ChannelsRequest,
    Client,
    DisconnectRequest,
    HistoryRemoveRequest,
    HistoryRequest,
    InfoRequest,
    PresenceRequest,
    PresenceStatsRequest,
    PublishRequest,
    RefreshRequest,
    StreamPosition,
    SubscribeRequest,
    UnsubscribeRequest,
)
from cent.exceptions import CentApiResponseError, CentUnauthorizedError
from centrifuge import Client as WsClient, ClientEventHandler

from hub import API_KEY, Hub, token


class Events(ClientEventHandler):
    def __init__(self):
        self.subscribed = []
        self.unsubscribed = []
        self.disconnected = []
        self.publications = []

    async def on_subscribed(self, ctx):
        self.subscribed.append(ctx.channel)

    async def on_unsubscribed(self, ctx):
        self.unsubscribed.append(ctx.channel)

    async def on_disconnected(self, ctx):
        self.disconnected.append(ctx.code)

    async def on_publication(self, ctx):
        self.publications.append(ctx)


async def wait_for(cond, what, timeout=10.0):
    for _ in range(int(timeout / 0.02)):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Cent(unittest.IsolatedAsyncioTestCase):
    @classmethod
    def setUpClass(cls):
        cls.hub = Hub()
        cls.api = Client(cls.hub.api_url, API_KEY)

    @classmethod
    def tearDownClass(cls):
        cls.hub.stop()

    def test_publish_history_and_history_remove(self):
        ch = "chat:cent-history"
        r1 = self.api.publish(PublishRequest(channel=ch, data={"n": 1}))
        r2 = self.api.publish(PublishRequest(channel=ch, data={"n": 2}, tags={"k": "v"}))
        self.assertEqual((r1.offset, r2.offset), (1, 2))
        self.assertEqual(r1.epoch, r2.epoch)
        h = self.api.history(HistoryRequest(channel=ch, limit=10))
        self.assertEqual([p.data for p in h.publications], [{"n": 1}, {"n": 2}])
        self.assertEqual(h.publications[1].tags, {"k": "v"})
        self.assertEqual((h.offset, h.epoch), (2, r1.epoch))
        since = self.api.history(HistoryRequest(channel=ch, limit=10, since=StreamPosition(offset=1, epoch=r1.epoch)))
        self.assertEqual([p.data for p in since.publications], [{"n": 2}])
        self.api.history_remove(HistoryRemoveRequest(channel=ch))
        h = self.api.history(HistoryRequest(channel=ch, limit=10))
        self.assertEqual((h.publications, h.offset), ([], 2))

    def test_idempotent_publish(self):
        ch = "chat:cent-idempotent"
        a = self.api.publish(PublishRequest(channel=ch, data={"n": 1}, idempotency_key="once"))
        b = self.api.publish(PublishRequest(channel=ch, data={"n": 1}, idempotency_key="once"))
        self.assertEqual(a.offset, b.offset)
        self.assertEqual(len(self.api.history(HistoryRequest(channel=ch, limit=-1)).publications), 1)

    def test_broadcast(self):
        r = self.api.broadcast(BroadcastRequest(channels=["chat:b1", "chat:b2", "nope:x"], data={"x": 1}))
        self.assertEqual(len(r.responses), 3)
        self.assertIsNotNone(r.responses[0].result)
        self.assertEqual(r.responses[2].error.code, 102)

    def test_errors(self):
        with self.assertRaises(CentApiResponseError) as e:
            self.api.publish(PublishRequest(channel="nope:x", data={}))
        self.assertEqual(e.exception.code, 102)
        with self.assertRaises(CentApiResponseError) as e:
            self.api.presence(PresenceRequest(channel="plain"))
        self.assertEqual(e.exception.code, 108)
        with self.assertRaises(CentUnauthorizedError):
            Client(self.hub.api_url, "wrong-key").info(InfoRequest())

    async def test_presence_subscribe_unsubscribe_channels_info_refresh_disconnect(self):
        events = Events()
        c = WsClient(self.hub.url, token=token({"sub": "erin"}), events=events)
        await c.connect()
        await c.ready(5)
        api = self.api
        await asyncio.to_thread(api.subscribe, SubscribeRequest(user="erin", channel="chat:cent-api"))
        await wait_for(lambda: "chat:cent-api" in events.subscribed, "the server-side subscribe")
        p = await asyncio.to_thread(api.presence, PresenceRequest(channel="chat:cent-api"))
        self.assertEqual([i.user for i in p.presence.values()], ["erin"])
        s = await asyncio.to_thread(api.presence_stats, PresenceStatsRequest(channel="chat:cent-api"))
        self.assertEqual((s.num_clients, s.num_users), (1, 1))
        ch = await asyncio.to_thread(api.channels, ChannelsRequest(pattern="chat:cent-*"))
        self.assertEqual(ch.channels["chat:cent-api"].num_clients, 1)
        info = await asyncio.to_thread(api.info, InfoRequest())
        self.assertEqual(len(info.nodes), 1)
        self.assertGreaterEqual(info.nodes[0].num_clients, 1)
        await asyncio.to_thread(api.refresh, RefreshRequest(user="erin"))
        await asyncio.to_thread(api.unsubscribe, UnsubscribeRequest(user="erin", channel="chat:cent-api"))
        await wait_for(lambda: "chat:cent-api" in events.unsubscribed, "the server-side unsubscribe")
        await asyncio.to_thread(api.disconnect, DisconnectRequest(user="erin"))
        await wait_for(lambda: events.disconnected, "the disconnect")
        self.assertEqual(events.disconnected[0], 3503)

    def test_batch(self):
        r = self.api.batch(BatchRequest(requests=[
            PublishRequest(channel="chat:batch", data={"n": 1}),
            PresenceStatsRequest(channel="chat:batch"),
        ]))
        self.assertEqual(len(r.replies), 2)
        self.assertEqual(r.replies[0].offset, 1)


if __name__ == "__main__":
    unittest.main()
