// centrifuge-js (npm `centrifuge`) in Node against `volley serve`: the scenarios a
// Centrifugo user relies on, with the real client library, over JSON and Protobuf, on
// WebSocket and on the bidirectional emulation transports (HTTP streaming and SSE,
// each passed alone, with the client's commands sent to /emulation).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Centrifuge as CentrifugeJson } from 'centrifuge';
import { Centrifuge as CentrifugeProtobuf } from 'centrifuge/build/protobuf';
import { EventSource } from 'eventsource';
import WebSocket from 'ws';
import { API_KEY, SECRET, cutter, now, once, startHub, token, waitFor } from './lib.mjs';

const FORMATS = [
  ['json', CentrifugeJson],
  ['protobuf', CentrifugeProtobuf],
];

// Each transport with each format centrifuge-js speaks on it (SSE is JSON only).
const KINDS = [
  ...FORMATS.map(([format, Centrifuge]) => ({ transport: 'websocket', format, Centrifuge })),
  ...FORMATS.map(([format, Centrifuge]) => ({ transport: 'http_stream', format, Centrifuge })),
  { transport: 'sse', format: 'json', Centrifuge: CentrifugeJson },
];

// Payloads as each format carries them: JSON values, or bytes (here, JSON text).
const codec = {
  json: { out: (v) => v, in: (d) => d },
  protobuf: { out: (v) => new TextEncoder().encode(JSON.stringify(v)), in: (d) => JSON.parse(new TextDecoder().decode(d)) },
};

let hub;
before(async () => { hub = await startHub(); });
after(async () => { await hub?.stop(); });

// A client of `kind` for the hub at `addr` (host:port). Over emulation only that
// transport is offered, so a failure cannot hide behind a fallback.
function client(kind, opts = {}, addr = hub.addr) {
  const endpoint = kind.transport === 'websocket'
    ? `ws://${addr}/connection/websocket`
    : [{ transport: kind.transport, endpoint: `http://${addr}/connection/${kind.transport}` }];
  const c = new kind.Centrifuge(endpoint, {
    websocket: WebSocket,
    fetch: globalThis.fetch,
    readableStream: globalThis.ReadableStream,
    eventsource: EventSource,
    emulationEndpoint: `http://${addr}/emulation`,
    ...opts,
  });
  c.on('error', () => {});
  return c;
}

async function connected(c) {
  c.connect();
  await c.ready(5000);
  return c;
}

for (const kind of KINDS) {
  const { transport, format } = kind;
  const tag = `${transport}-${format}`;
  const data = codec[format];
  describe(`centrifuge-js over ${transport} (${format})`, () => {
    test('connects with a JWT, and the connect result carries the client id and the ping interval', async () => {
      const c = client(kind, { token: token({ sub: 'alice', exp: now() + 3600 }) });
      const ctx = once(c, 'connected');
      c.connect();
      const { client: id, transport: used } = await ctx;
      assert.match(id, /^[0-9a-f-]{36}$/);
      assert.equal(used, transport);
      c.disconnect();
    });

    test('subscribe, publish, history, presence and presence stats', async () => {
      const ch = `chat:basic-${tag}`;
      const a = await connected(client(kind, { token: token({ sub: 'alice', info: { name: 'Alice' } }) }));
      const b = await connected(client(kind, { token: token({ sub: 'bob' }) }));
      const sa = a.newSubscription(ch);
      const got = [];
      sa.on('publication', (ctx) => got.push(ctx));
      sa.subscribe();
      const sb = b.newSubscription(ch);
      sb.subscribe();
      await sa.ready(5000);
      await sb.ready(5000);
      await sb.publish(data.out({ text: 'hi from bob' }));
      await waitFor(() => got.length === 1, 'the publication');
      assert.deepEqual(data.in(got[0].data), { text: 'hi from bob' });
      assert.equal(got[0].info.user, 'bob');
      const h = await sa.history({ limit: 10 });
      assert.equal(h.publications.length, 1);
      assert.deepEqual(data.in(h.publications[0].data), { text: 'hi from bob' });
      assert.equal(h.offset, h.publications[0].offset);
      const p = await sa.presence();
      assert.deepEqual(Object.values(p.clients).map((i) => i.user).sort(), ['alice', 'bob']);
      const alice = Object.values(p.clients).find((i) => i.user === 'alice');
      assert.deepEqual(data.in(alice.connInfo), { name: 'Alice' });
      const s = await sa.presenceStats();
      assert.deepEqual(s, { numClients: 2, numUsers: 2 });
      a.disconnect();
      b.disconnect();
    });

    test('an RPC without a handler is refused with 104', async () => {
      const c = await connected(client(kind, { token: token({ sub: 'alice' }) }));
      await assert.rejects(c.rpc('nothing', data.out({})), (e) => e.code === 104);
      c.disconnect();
    });

    test('a channel of an unknown namespace is refused with 102, and the connection stays', async () => {
      const c = await connected(client(kind, { token: token({ sub: 'alice' }) }));
      const s = c.newSubscription('nowhere:x');
      const unsub = once(s, 'unsubscribed');
      s.subscribe();
      const ctx = await unsub;
      assert.equal(ctx.code, 102);
      assert.equal(c.state, 'connected');
      c.disconnect();
    });

    test('recovery after a dropped connection: every missed publication, once, in order', async () => {
      const ch = `chat:recovery-${tag}`;
      const proxy = await cutter(hub.addr);
      const c = client(kind, { token: token({ sub: 'alice' }), minReconnectDelay: 50, maxReconnectDelay: 100 }, proxy.addr);
      await connected(c);
      const s = c.newSubscription(ch, { recoverable: true, positioned: true });
      const seen = [];
      const subscribed = [];
      s.on('publication', (ctx) => seen.push(data.in(ctx.data).n));
      s.on('subscribed', (ctx) => subscribed.push(ctx));
      s.subscribe();
      await s.ready(5000);
      for (let n = 1; n <= 5; n++) await hub.api('publish', { channel: ch, data: { n } });
      await waitFor(() => seen.length === 5, 'the first five');
      proxy.cut();
      await waitFor(() => c.state !== 'connected', 'the client to notice');
      for (let n = 6; n <= 15; n++) await hub.api('publish', { channel: ch, data: { n } });
      await waitFor(() => seen.length === 15, 'the recovered publications');
      for (let n = 16; n <= 20; n++) await hub.api('publish', { channel: ch, data: { n } });
      await waitFor(() => seen.length === 20, 'the live ones after recovery');
      assert.deepEqual(seen, Array.from({ length: 20 }, (_, i) => i + 1));
      const last = subscribed.at(-1);
      assert.equal(last.wasRecovering, true);
      assert.equal(last.recovered, true);
      c.disconnect();
      proxy.close();
    });

    test('an unrecoverable position: recovered is false and the position is the current one', async () => {
      const ch = `small:gone-${tag}`;
      const proxy = await cutter(hub.addr);
      const c = client(kind, { token: token({ sub: 'alice' }), minReconnectDelay: 50, maxReconnectDelay: 100 }, proxy.addr);
      await connected(c);
      const s = c.newSubscription(ch, { recoverable: true, positioned: true });
      const seen = [];
      const subscribed = [];
      s.on('publication', (ctx) => seen.push(data.in(ctx.data).n));
      s.on('subscribed', (ctx) => subscribed.push(ctx));
      s.subscribe();
      await s.ready(5000);
      await hub.api('publish', { channel: ch, data: { n: 1 } });
      await waitFor(() => seen.length === 1, 'the first');
      proxy.cut();
      await waitFor(() => c.state !== 'connected', 'the client to notice');
      // History keeps 3: publications 2 and 3 fall out.
      for (let n = 2; n <= 6; n++) await hub.api('publish', { channel: ch, data: { n } });
      await waitFor(() => subscribed.length === 2, 'the second subscribe');
      const last = subscribed.at(-1);
      assert.equal(last.wasRecovering, true);
      assert.equal(last.recovered, false);
      assert.equal(last.streamPosition.offset, 6);
      await hub.api('publish', { channel: ch, data: { n: 7 } });
      await waitFor(() => seen.includes(7), 'the live one');
      assert.deepEqual(seen, [1, 7], 'no silent gap filled, no duplicate');
      c.disconnect();
      proxy.close();
    });

    test('server-side subscriptions from the token', async () => {
      const ch = `chat:server-side-${tag}`;
      const c = client(kind, { token: token({ sub: 'carol', channels: [ch] }) });
      const pubs = [];
      const subscribed = once(c, 'subscribed');
      c.on('publication', (ctx) => pubs.push(ctx));
      await connected(c);
      assert.equal((await subscribed).channel, ch);
      await hub.api('publish', { channel: ch, data: { hello: 'carol' } });
      await waitFor(() => pubs.length === 1, 'the server-side publication');
      assert.equal(pubs[0].channel, ch);
      assert.deepEqual(data.in(pubs[0].data), { hello: 'carol' });
      c.disconnect();
    });

    test('the connection token is refreshed before it expires', async () => {
      let calls = 0;
      const c = client(kind, {
        token: token({ sub: 'dave', exp: now() + 2 }),
        getToken: async () => { calls += 1; return token({ sub: 'dave', exp: now() + 3600 }); },
      });
      let disconnects = 0;
      c.on('disconnected', () => { disconnects += 1; });
      await connected(c);
      await waitFor(() => calls >= 1, 'a refresh', 8000);
      await sleep(300);
      assert.equal(c.state, 'connected');
      assert.equal(disconnects, 0);
      c.disconnect();
    });

    test('fossil deltas: the client decodes every publication, most of them sent as deltas', async () => {
      const ch = `delta:doc-${tag}`;
      const c = await connected(client(kind, { token: token({ sub: 'frank' }) }));
      const s = c.newSubscription(ch, { delta: 'fossil', positioned: true, recoverable: true });
      const seen = [];
      s.on('publication', (ctx) => seen.push(data.in(ctx.data)));
      s.subscribe();
      await s.ready(5000);
      const doc = (n) => ({ n, rows: Array.from({ length: 50 }, (_, i) => ({ id: i, name: `row ${i}`, value: i === n % 50 ? n : 0 })) });
      for (let n = 1; n <= 10; n++) await hub.api('publish', { channel: ch, data: doc(n) });
      await waitFor(() => seen.length === 10, 'ten publications');
      assert.deepEqual(seen, Array.from({ length: 10 }, (_, i) => doc(i + 1)));
      // The client's own counters: the first publication whole, the rest as deltas.
      assert.equal(s._deltaNumFull, 1);
      assert.equal(s._deltaNumDelta, 9);
      assert.ok(s._deltaBytesReceived < s._deltaBytesDecoded / 3, `${s._deltaBytesReceived} bytes for ${s._deltaBytesDecoded}`);
      c.disconnect();
    });

    test('a tags filter: only the publications whose tags match arrive, live and recovered', async () => {
      const ch = `tags:stocks-${tag}`;
      const proxy = await cutter(hub.addr);
      const c = client(kind, { token: token({ sub: 'gina' }), minReconnectDelay: 50, maxReconnectDelay: 100 }, proxy.addr);
      await connected(c);
      const tagsFilter = { op: 'or', nodes: [{ key: 'ticker', cmp: 'eq', val: 'AAPL' }, { key: 'price', cmp: 'gt', val: '100' }] };
      const s = c.newSubscription(ch, { recoverable: true, positioned: true, tagsFilter });
      const seen = [];
      const subscribed = [];
      s.on('publication', (ctx) => seen.push([data.in(ctx.data).n, ctx.tags.ticker]));
      s.on('subscribed', (ctx) => subscribed.push(ctx));
      s.subscribe();
      await s.ready(5000);
      const send = (n, ticker, price) => hub.api('publish', { channel: ch, data: { n }, tags: { ticker, price } });
      await send(1, 'AAPL', '10');
      await send(2, 'MSFT', '99.5');
      await send(3, 'MSFT', '100.01');
      await send(4, 'AAPL', '1');
      await waitFor(() => seen.length === 3, 'the matching ones');
      proxy.cut();
      await waitFor(() => c.state !== 'connected', 'the client to notice');
      await send(5, 'GOOG', '5');
      await send(6, 'GOOG', '500');
      await send(7, 'AAPL', '5');
      await waitFor(() => subscribed.length === 2, 'the resubscribe');
      await send(8, 'MSFT', '1');
      await send(9, 'AAPL', '1');
      await waitFor(() => seen.length === 6, 'the recovered and live ones');
      assert.deepEqual(seen, [[1, 'AAPL'], [3, 'MSFT'], [4, 'AAPL'], [6, 'GOOG'], [7, 'AAPL'], [9, 'AAPL']]);
      assert.equal(subscribed[1].recovered, true);
      c.disconnect();
      proxy.close();
    });

    test('a tags filter where the namespace does not allow one is refused with 107', async () => {
      const c = await connected(client(kind, { token: token({ sub: 'gina' }) }));
      const s = c.newSubscription(`chat:no-filter-${tag}`, { tagsFilter: { key: 'k', cmp: 'eq', val: 'v' } });
      const unsub = once(s, 'unsubscribed');
      s.subscribe();
      assert.equal((await unsub).code, 107);
      assert.equal(c.state, 'connected');
      c.disconnect();
    });

    test('channel compaction: the client takes the channel id (JSON) and gets every publication, join and leave', async () => {
      const ch = `compact:room-with-a-long-name-${tag}`;
      const a = await connected(client(kind, { token: token({ sub: 'hana' }) }));
      const s = a.newSubscription(ch);
      const pubs = [];
      const joins = [];
      const leaves = [];
      s.on('publication', (ctx) => pubs.push(data.in(ctx.data)));
      s.on('join', (ctx) => joins.push(ctx.info.user));
      s.on('leave', (ctx) => leaves.push(ctx.info.user));
      s.subscribe();
      await s.ready(5000);
      if (format === 'json') {
        assert.ok(s._id > 0, `the subscribe result carries an id: ${s._id}`);
      } else {
        // Over Protobuf the client would hold the id as a Long and route nothing by it:
        // the hub names the channel instead.
        assert.equal(Number(s._id || 0), 0);
      }
      const b = await connected(client(kind, { token: token({ sub: 'ivan' }) }));
      const sb = b.newSubscription(ch);
      sb.subscribe();
      await sb.ready(5000);
      await waitFor(() => joins.includes('ivan'), 'the join by id');
      await hub.api('publish', { channel: ch, data: { n: 1 } });
      await sb.publish(data.out({ n: 2 }));
      await waitFor(() => pubs.length === 2, 'the publications by id');
      assert.deepEqual(pubs, [{ n: 1 }, { n: 2 }]);
      b.disconnect();
      await waitFor(() => leaves.includes('ivan'), 'the leave by id');
      a.disconnect();
    });

    test('a forged token is refused with 3500 and the client does not reconnect', async () => {
      const c = client(kind, { token: token({ sub: 'mallory' }, 'not-the-secret') });
      const d = once(c, 'disconnected');
      c.connect();
      const ctx = await d;
      assert.equal(ctx.code, 3500);
      assert.equal(c.state, 'disconnected');
    });
  });
}

describe('subscription expiry', () => {
  let expiring;
  before(async () => {
    expiring = await startHub({
      client: { token: { hmac_secret_key: SECRET }, expired_sub_close_delay: '0s' },
      http_api: { key: API_KEY },
      channel: { namespaces: [{ name: 'priv', history_size: 10, history_ttl: '60s', allow_recovery: true }] },
    });
  });
  after(async () => { await expiring?.stop(); });

  for (const kind of KINDS) {
    const { transport, format } = kind;
    test(`over ${transport} (${format}): a subscription token not refreshed ends the subscription with 2501, not the connection, and the client resubscribes`, async () => {
      const ch = `$priv:room-${transport}-${format}`;
      const c = client(kind, { token: token({ sub: 'jan' }) }, expiring.addr);
      await connected(c);
      const states = [];
      c.on('connecting', () => states.push('connecting'));
      c.on('disconnected', () => states.push('disconnected'));
      let calls = 0;
      const s = c.newSubscription(ch, {
        token: token({ sub: 'jan', channel: ch, exp: now() + 2 }),
        // The refresh before the expiry fails (the backend is down); later ones work.
        getToken: async () => {
          calls += 1;
          if (calls === 1) throw new Error('backend down');
          return token({ sub: 'jan', channel: ch, exp: now() + 3600 });
        },
      });
      const subscribing = [];
      let subscribed = 0;
      s.on('subscribing', (ctx) => subscribing.push(ctx.code));
      s.on('subscribed', () => { subscribed += 1; });
      s.subscribe();
      await s.ready(5000);
      await waitFor(() => subscribing.includes(2501), 'the unsubscribe push 2501', 8000);
      await waitFor(() => subscribed === 2, 'the resubscribe with a new token', 8000);
      assert.equal(c.state, 'connected');
      assert.deepEqual(states, [], 'the connection never dropped');
      const pubs = [];
      s.on('publication', (ctx) => pubs.push(ctx));
      await expiring.api('publish', { channel: ch, data: { n: 1 } });
      await waitFor(() => pubs.length === 1, 'a publication after the resubscribe');
      c.disconnect();
    });
  }
});
