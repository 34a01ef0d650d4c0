// pusher-js's HTTP fallbacks across two `volley serve` nodes sharing one Redis, behind
// a proxy that sends each HTTP request to the other node in turn (no sticky sessions):
// a session lives on the node of its first receive request, and the requests that land
// on the other node are forwarded to it through the broker.

import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, test } from 'node:test';

import PusherClient from 'pusher-js';
import PusherServer from 'pusher';

import { startRedis, waitFor } from './lib.mjs';
import { startNodes } from './nodes.mjs';
import { connected, next, startAuthServer, subscribed } from './pusher_lib.mjs';

const APP = { id: '77', key: 'xhr-cluster-key', secret: 'xhr-cluster-secret', enable_client_messages: true };

let redis;
let auth; // the backend's authorization endpoints
const clients = new Set();

before(async () => {
  redis = await startRedis();
  auth = await startAuthServer(new PusherServer({ appId: APP.id, key: APP.key, secret: APP.secret, host: '127.0.0.1' }));
});

after(async () => {
  for (const c of clients) c.disconnect();
  auth?.close();
  await redis?.stop();
});

const portOf = (node) => Number(new URL(node.url).port);

/** An HTTP proxy that sends each request to the next of `ports`, round robin. */
async function alternating(ports) {
  let next = 0;
  const hits = ports.map(() => 0);
  const server = http.createServer((req, res) => {
    const k = next++ % ports.length;
    hits[k]++;
    const up = http.request(
      { host: '127.0.0.1', port: ports[k], method: req.method, path: req.url, headers: req.headers, agent: false },
      (r) => {
        res.writeHead(r.statusCode, r.headers);
        r.pipe(res);
      },
    );
    up.on('error', () => res.destroy());
    res.on('close', () => up.destroy());
    req.pipe(up);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { port: server.address().port, hits, close: () => server.close() };
}

function connect(port, transport, user) {
  const c = new PusherClient(APP.key, {
    cluster: 'mt1',
    httpHost: '127.0.0.1',
    httpPort: port,
    forceTLS: false,
    enabledTransports: [transport],
    disableStats: true,
    channelAuthorization: { endpoint: `${auth.url}/auth?user=${user}`, transport: 'ajax' },
  });
  clients.add(c);
  return c;
}

test('xhr_streaming and xhr_polling sessions with requests alternating between nodes', async (t) => {
  const nodes = await startNodes(t, 2, redis.url, { extra: { pusher: { apps: [APP] } } });
  // Each node knows the other (a session is started only when no node holds it).
  for (const node of nodes) {
    await waitFor(async () => (await node.api('info')).nodes.length === 2, 'both nodes known', 15000);
  }
  const proxy = await alternating(nodes.map(portOf));
  t.after(() => proxy.close());
  const api = new PusherServer({
    appId: APP.id, key: APP.key, secret: APP.secret, host: '127.0.0.1', port: String(portOf(nodes[1])), useTLS: false,
  });

  const a = connect(proxy.port, 'xhr_polling', 'alice');
  const b = connect(proxy.port, 'xhr_streaming', 'bob');
  await Promise.all([connected(a), connected(b)]);
  assert.equal(a.connection.connection.transport.name, 'xhr_polling');
  assert.equal(b.connection.connection.transport.name, 'xhr_streaming');
  let lost = 0;
  for (const c of [a, b]) c.connection.bind('state_change', (s) => { if (s.current !== 'connected') lost++; });

  const pa = a.subscribe('private-room');
  const pb = b.subscribe('private-room');
  await Promise.all([subscribed(pa), subscribed(pb)]);

  const got = [next(pa, 'msg'), next(pb, 'msg')];
  await api.trigger('private-room', 'msg', { n: 1 });
  assert.deepEqual(await Promise.all(got), [{ n: 1 }, { n: 1 }]);

  for (let i = 0; i < 3; i++) {
    const toB = next(pb, 'client-typing');
    assert.ok(pa.trigger('client-typing', { i }));
    assert.deepEqual(await toB, { i });
    const toA = next(pa, 'client-typing');
    assert.ok(pb.trigger('client-typing', { i }));
    assert.deepEqual(await toA, { i });
  }
  assert.equal(lost, 0, 'no session was lost');
  assert.ok(proxy.hits.every((n) => n > 3), `both nodes got requests: ${proxy.hits}`);
  a.disconnect();
  b.disconnect();
});
