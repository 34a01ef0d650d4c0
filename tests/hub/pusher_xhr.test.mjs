// pusher-js's HTTP fallbacks on the hub: `xhr_streaming` and `xhr_polling` (the Node
// build's XMLHttpRequest), with `httpHost`/`httpPort` pointing at the hub. Each
// transport connects, subscribes to a public and a private channel, receives events
// the Pusher SDK triggers, sends a client event another client receives, and
// disconnects; the hub's own answers to malformed requests are checked too.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import PusherClient from 'pusher-js';
import PusherServer from 'pusher';

import { DEFAULT_CONFIG, startHub, waitFor } from './lib.mjs';
import { connected, next, startAuthServer, subscribed } from './pusher_lib.mjs';

const APP = { id: '7001', key: 'xhr-key', secret: 'xhr-secret', enable_client_messages: true };

let hub;
let server;
let auth; // the backend's authorization endpoints
const clients = new Set();

function port() {
  return Number(new URL(hub.url).port);
}

function connect(transport, user) {
  const c = new PusherClient(APP.key, {
    cluster: 'mt1',
    httpHost: '127.0.0.1',
    httpPort: port(),
    forceTLS: false,
    enabledTransports: [transport],
    disableStats: true,
    channelAuthorization: { endpoint: `${auth.url}/auth?user=${user}`, transport: 'ajax' },
  });
  clients.add(c);
  return c;
}

before(async () => {
  hub = await startHub({ ...DEFAULT_CONFIG, pusher: { apps: [APP], http_session_timeout: '2s' } });
  server = new PusherServer({
    appId: APP.id,
    key: APP.key,
    secret: APP.secret,
    host: '127.0.0.1',
    port: String(port()),
    useTLS: false,
  });
  auth = await startAuthServer(server);
});

after(async () => {
  for (const c of clients) c.disconnect();
  auth?.close();
  await hub?.stop();
});

for (const transport of ['xhr_streaming', 'xhr_polling']) {
  describe(`pusher-js over ${transport}`, () => {
    test('connects, subscribes, receives events, relays client events, disconnects', async () => {
      const a = connect(transport, 'alice');
      const b = connect(transport, 'bob');
      await Promise.all([connected(a), connected(b)]);
      assert.equal(a.connection.connection.transport.name, transport);
      assert.match(a.connection.socket_id, /^\d+\.\d+$/);

      const pub = a.subscribe('news');
      await subscribed(pub);
      const got = next(pub, 'headline');
      await server.trigger('news', 'headline', { text: 'hello' });
      assert.deepEqual(await got, { text: 'hello' });

      const pa = a.subscribe('private-room');
      const pb = b.subscribe('private-room');
      await Promise.all([subscribed(pa), subscribed(pb)]);
      const fromServer = next(pa, 'msg');
      await server.trigger('private-room', 'msg', { n: 1 });
      assert.deepEqual(await fromServer, { n: 1 });

      const typed = next(pb, 'client-typing');
      assert.ok(pa.trigger('client-typing', { on: true }));
      assert.deepEqual(await typed, { on: true });

      // Several events at once arrive in order.
      const seen = [];
      pub.bind('seq', (d) => seen.push(d.i));
      for (let i = 0; i < 5; i++) await server.trigger('news', 'seq', { i });
      await waitFor(() => seen.length === 5, 'five events');
      assert.deepEqual(seen, [0, 1, 2, 3, 4]);

      a.disconnect();
      b.disconnect();
      assert.equal(a.connection.state, 'disconnected');
      // The sessions end on the hub (pusher-js tells nothing: no receive request comes
      // within http_session_timeout): the channel has no subscriber left.
      await waitFor(async () => {
        const r = await server.get({ path: '/channels/private-room', params: { info: 'subscription_count' } });
        return !(await r.json()).occupied;
      }, 'the channel vacated', 10000);
    });
  });
}

describe('the HTTP session endpoints', () => {
  const base = () => `http://127.0.0.1:${port()}/pusher/app`;

  test('an unknown app key is closed with 4001', async () => {
    const r = await fetch(`${base()}/nope/1/abcdefgh/xhr?protocol=7`, { method: 'POST' });
    assert.equal(r.status, 200);
    assert.equal(await r.text(), 'c[4001,"App key not in use"]\n');
  });

  test('a poll opens, then carries connection_established; xhr_send needs an array', async () => {
    const url = `${base()}/${APP.key}/7/sess0001`;
    let r = await fetch(`${url}/xhr?protocol=7&client=js`, { method: 'POST', headers: { origin: 'http://page.example' } });
    assert.equal(await r.text(), 'o\n');
    assert.equal(r.headers.get('access-control-allow-origin'), 'http://page.example');
    assert.equal(r.headers.get('access-control-allow-credentials'), 'true');
    r = await fetch(`${url}/xhr?protocol=7`, { method: 'POST' });
    const line = await r.text();
    assert.match(line, /^a\[/);
    const [msg] = JSON.parse(line.slice(1));
    assert.equal(JSON.parse(msg).event, 'pusher:connection_established');
    r = await fetch(`${url}/xhr_send`, { method: 'POST', body: '{"not":"an array"}' });
    assert.equal(r.status, 400);
    r = await fetch(`${url}/xhr_send`, { method: 'POST', body: JSON.stringify([JSON.stringify({ event: 'pusher:ping', data: {} })]) });
    assert.equal(r.status, 204);
    r = await fetch(`${url}/xhr?protocol=7`, { method: 'POST' });
    const pong = JSON.parse((await r.text()).slice(1)).map((m) => JSON.parse(m).event);
    assert.deepEqual(pong, ['pusher:pong']);
    r = await fetch(`${url}/xhr_send`, { method: 'OPTIONS', headers: { origin: 'http://page.example' } });
    assert.equal(r.status, 204);
    assert.match(r.headers.get('access-control-allow-methods'), /POST/);
  });

  test('xhr_send to a session no node holds is not found; a bad session name is refused', async () => {
    let r = await fetch(`${base()}/${APP.key}/1/neverseen/xhr_send`, { method: 'POST', body: '[]' });
    assert.ok(r.status === 404 || r.status === 204, `status ${r.status}`);
    r = await fetch(`${base()}/${APP.key}/1/${'x'.repeat(65)}/xhr`, { method: 'POST' });
    assert.equal(r.status, 400);
  });
});

describe('bounds', () => {
  test('a session whose client does not poll is closed with 4200 once its outbox is full', async (t) => {
    const small = await startHub({
      ...DEFAULT_CONFIG,
      client: { ...DEFAULT_CONFIG.client, queue_max_bytes: 4096 },
      pusher: { apps: [APP] },
    });
    t.after(() => small.stop());
    const p = Number(new URL(small.url).port);
    const api = new PusherServer({ appId: APP.id, key: APP.key, secret: APP.secret, host: '127.0.0.1', port: String(p), useTLS: false });
    const url = `http://127.0.0.1:${p}/pusher/app/${APP.key}/3/slowpoll`;
    assert.equal(await (await fetch(`${url}/xhr?protocol=7`, { method: 'POST' })).text(), 'o\n');
    const sub = JSON.stringify({ event: 'pusher:subscribe', data: { channel: 'flood' } });
    assert.equal((await fetch(`${url}/xhr_send`, { method: 'POST', body: JSON.stringify([sub]) })).status, 204);
    await waitFor(async () => {
      const r = await api.get({ path: '/channels/flood', params: { info: 'subscription_count' } });
      return (await r.json()).occupied;
    }, 'subscribed');
    const big = 'x'.repeat(1000);
    for (let i = 0; i < 10; i++) await api.trigger('flood', 'e', { big, i });
    // The next poll takes what fit, then the close.
    const body = await (await fetch(`${url}/xhr?protocol=7`, { method: 'POST' })).text();
    const lines = body.trim().split('\n');
    assert.match(lines.at(-1), /^c\[4200,/);
    assert.ok(body.length < 4096 * 3, `bounded: ${body.length} bytes`);
  });
});
