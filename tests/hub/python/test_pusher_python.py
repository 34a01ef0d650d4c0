"""The Pusher Python SDK (PyPI `pusher`) against `volley serve` as a Pusher Channels
server: every HTTP API call it makes, with a numeric app id, the authorizations it
signs, used by WebSocket clients that speak Pusher's protocol 7, and the hub's webhooks,
which the SDK's `validate_webhook` checks."""

import asyncio
import http.server
import json
import threading
import time
import unittest

import pusher
import websockets

from hub import CONFIG, Hub

APP = {"id": "777", "key": "py-pusher-key", "secret": "py-pusher-secret", "enable_client_messages": True}
DISABLED = {"id": "778", "key": "py-disabled-key", "secret": "py-disabled-secret", "enabled": False}


class Socket:
    """A WebSocket speaking Pusher's protocol: its socket id, and what it received."""

    async def open(self, addr):
        self.ws = await websockets.connect(f"ws://{addr}/app/{APP['key']}?protocol=7&client=python&version=1")
        hello = json.loads(await self.ws.recv())
        assert hello["event"] == "pusher:connection_established", hello
        self.socket_id = json.loads(hello["data"])["socket_id"]
        return self

    async def send(self, event, data, channel=None):
        m = {"event": event, "data": data}
        if channel:
            m["channel"] = channel
        await self.ws.send(json.dumps(m))

    async def next(self, event, timeout=5):
        """The next message of this event (others are skipped)."""
        while True:
            m = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
            if m["event"] == event:
                return m

    async def subscribe(self, client, channel, channel_data=None):
        data = {"channel": channel}
        if not channel.startswith(("private-", "presence-")):
            pass
        elif channel_data is None:
            data.update(client.authenticate(channel, self.socket_id))
        else:
            data.update(client.authenticate(channel, self.socket_id, channel_data))
        await self.send("pusher:subscribe", data)
        return await self.next("pusher_internal:subscription_succeeded")


class PusherPythonTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # The app's backend: each webhook checked with the SDK (`None`: refused).
        cls.hooks, cls.refused_hooks = [], []
        test = cls

        class Hooks(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                valid = test.client.validate_webhook(
                    key=self.headers.get("X-Pusher-Key"), signature=self.headers.get("X-Pusher-Signature"), body=body
                )
                if valid is None:
                    test.refused_hooks.append(body)
                else:
                    test.hooks.extend(valid["events"])
                self.send_response(200 if valid is not None else 401)
                self.end_headers()

            def log_message(self, *args):
                pass

        cls.hook_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
        threading.Thread(target=cls.hook_server.serve_forever, daemon=True).start()
        hook_url = f"http://127.0.0.1:{cls.hook_server.server_address[1]}/hooks"
        app = dict(APP, webhooks=[{"url": hook_url}])
        settings = {"removal_delay": "100ms", "batch_window": "10ms"}
        cls.hub = Hub(dict(CONFIG, pusher={"apps": [app, DISABLED], "webhooks": settings}))
        host, port = cls.hub.addr.rsplit(":", 1)
        cls.client = pusher.Pusher(
            app_id=APP["id"], key=APP["key"], secret=APP["secret"], host=host, port=int(port), ssl=False
        )

    @classmethod
    def tearDownClass(cls):
        cls.hub.stop()
        cls.hook_server.shutdown()

    def wait_hook(self, match, what):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if any(match(e) for e in self.hooks):
                return
            time.sleep(0.05)
        self.fail(f"no webhook: {what}; got {self.hooks}, refused {self.refused_hooks}")

    def test_webhooks_are_signed_as_the_sdk_checks(self):
        async def go():
            a = await Socket().open(self.hub.addr)
            b = await Socket().open(self.hub.addr)
            await a.subscribe(self.client, "private-py-hooks")
            await b.subscribe(self.client, "presence-py-hooks", {"user_id": "py-user"})
            await a.send("client-ping", {"n": 1}, channel="private-py-hooks")
            await asyncio.sleep(0.2)
            await a.ws.close()
            await b.ws.close()

        self.run_async(go())
        self.wait_hook(lambda e: e["name"] == "channel_occupied" and e["channel"] == "private-py-hooks", "occupied")
        self.wait_hook(
            lambda e: e["name"] == "member_added" and e["channel"] == "presence-py-hooks" and e["user_id"] == "py-user",
            "member_added",
        )
        self.wait_hook(
            lambda e: e["name"] == "client_event" and e["event"] == "client-ping" and e["socket_id"],
            "client_event",
        )
        self.wait_hook(lambda e: e["name"] == "channel_vacated" and e["channel"] == "private-py-hooks", "vacated")
        self.wait_hook(lambda e: e["name"] == "member_removed" and e["user_id"] == "py-user", "member_removed")
        self.assertEqual(self.refused_hooks, [])

    def run_async(self, coro):
        return asyncio.run(coro)

    def test_trigger_reaches_subscribers_but_the_excluded_socket(self):
        async def go():
            a = await Socket().open(self.hub.addr)
            b = await Socket().open(self.hub.addr)
            await a.subscribe(self.client, "py-news")
            await b.subscribe(self.client, "py-news")
            self.client.trigger(["py-news"], "update", {"n": 1}, socket_id=b.socket_id)
            m = await a.next("update")
            self.assertEqual(json.loads(m["data"]), {"n": 1})
            self.assertEqual(m["channel"], "py-news")
            self.client.trigger_batch([{"channel": "py-news", "name": "update", "data": "2"}])
            self.assertEqual((await b.next("update"))["data"], "2")
            self.assertEqual((await a.next("update"))["data"], "2")
            await a.ws.close()
            await b.ws.close()

        self.run_async(go())

    def test_channel_and_presence_queries(self):
        async def go():
            a = await Socket().open(self.hub.addr)
            m = await a.subscribe(self.client, "presence-py", {"user_id": "42", "user_info": {"n": "x"}})
            presence = json.loads(m["data"])["presence"]
            self.assertEqual(presence["ids"], ["42"])
            self.assertEqual(presence["hash"], {"42": {"n": "x"}})
            await a.subscribe(self.client, "private-py")
            info = self.client.channel_info("presence-py", ["user_count", "subscription_count"])
            self.assertEqual(info, {"occupied": True, "user_count": 1, "subscription_count": 1})
            self.assertEqual(self.client.channel_info("empty-py"), {"occupied": False})
            listed = self.client.channels_info("presence-", ["user_count"])
            self.assertEqual(listed, {"channels": {"presence-py": {"user_count": 1}}})
            self.assertIn("private-py", self.client.channels_info()["channels"])
            self.assertEqual(self.client.users_info("presence-py"), {"users": [{"id": "42"}]})
            await a.ws.close()

        self.run_async(go())

    def test_terminate_user_connections_with_a_numeric_app_id(self):
        async def go():
            a = await Socket().open(self.hub.addr)
            auth = self.client.authenticate_user(a.socket_id, {"id": "py-user"})
            await a.send("pusher:signin", auth)
            await a.next("pusher:signin_success")
            self.client.send_to_user("py-user", "note", {"hello": True})
            m = await a.next("note")
            self.assertEqual(m["channel"], "#server-to-user-py-user")
            self.client.terminate_user_connections("py-user")
            with self.assertRaises(websockets.ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(a.ws.recv(), 5)
            self.assertEqual(closed.exception.rcvd.code, 4009)

        self.run_async(go())

    def test_batches_with_info_and_cache_channels(self):
        async def go():
            a = await Socket().open(self.hub.addr)
            await a.subscribe(self.client, "py-batch")
            r = self.client.trigger_batch([
                {"channel": "py-batch", "name": "x", "data": "1", "info": "subscription_count"},
                {"channel": "cache-py", "name": "x", "data": "2"},
            ])
            self.assertEqual(r, {"batch": [{"subscription_count": 1}, {}]})
            self.assertEqual((await a.next("x"))["data"], "1")
            # The cache channel's last event: on subscribe, and through the API.
            b = await Socket().open(self.hub.addr)
            await b.subscribe(self.client, "cache-py")
            self.assertEqual((await b.next("x"))["data"], "2")
            info = self.client.channel_info("cache-py", ["cache"])
            self.assertEqual(info["cache"]["data"], "2")
            await a.ws.close()
            await b.ws.close()

        self.run_async(go())

    def test_refusals(self):
        with self.assertRaises(pusher.errors.PusherBadRequest):
            self.client.users_info("py-news")
        with self.assertRaises(pusher.errors.PusherBadRequest):
            self.client.channels_info(attributes=["user_count"])
        host, port = self.hub.addr.rsplit(":", 1)
        disabled = pusher.Pusher(
            app_id=DISABLED["id"], key=DISABLED["key"], secret=DISABLED["secret"], host=host, port=int(port), ssl=False
        )
        with self.assertRaises(pusher.errors.PusherForbidden):
            disabled.trigger(["py-news"], "x", {})

    def test_a_wrong_secret_is_refused(self):
        host, port = self.hub.addr.rsplit(":", 1)
        bad = pusher.Pusher(app_id=APP["id"], key=APP["key"], secret="wrong", host=host, port=int(port), ssl=False)
        with self.assertRaises(pusher.errors.PusherBadAuth):
            bad.trigger(["py-news"], "x", {})


if __name__ == "__main__":
    unittest.main()
