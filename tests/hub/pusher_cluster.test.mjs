// Pusher clients on two `volley serve` nodes sharing one Redis: events triggered
// through one node reach pusher-js clients on both, presence members and their
// member_added / member_removed events cross nodes, client events too, the HTTP API's
// counts are the cluster's, and terminate_connections reaches every node.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import PusherClient from 'pusher-js';
import PusherServer from 'pusher';

import { startRedis, waitFor } from './lib.mjs';
import { startNodes } from './nodes.mjs';
import { startAuthServer, subscribed } from './pusher_lib.mjs';

const APP = { id: '55', key: 'cluster-key', secret: 'cluster-secret', enable_client_messages: true };

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

function api(node) {
  return new PusherServer({
    appId: APP.id, key: APP.key, secret: APP.secret, host: '127.0.0.1', port: String(portOf(node)), useTLS: false,
  });
}

function connect(node, user) {
  const c = new PusherClient(APP.key, {
    cluster: 'local',
    wsHost: '127.0.0.1',
    wsPort: portOf(node),
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    channelAuthorization: { endpoint: `${auth.url}/auth?user=${user}`, transport: 'ajax' },
    userAuthentication: { endpoint: `${auth.url}/signin?user=${user}`, transport: 'ajax' },
  });
  clients.add(c);
  return c;
}

test('events, presence, client events, counts and terminations cross nodes', async (t) => {
  const [n1, n2] = await startNodes(t, 2, redis.url, { extra: { pusher: { apps: [APP] } } });
  const a = connect(n1, 'alice');
  const b = connect(n2, 'bob');
  const ca = a.subscribe('presence-hall');
  await subscribed(ca);
  const added = [];
  const removed = [];
  ca.bind('pusher:member_added', (m) => added.push(m.id));
  ca.bind('pusher:member_removed', (m) => removed.push(m.id));
  const cb = b.subscribe('presence-hall');
  const members = await subscribed(cb);
  assert.equal(members.count, 2);
  await waitFor(() => added.includes('bob'));

  // An event through node 1 reaches both; a client event from node 2 reaches node 1.
  const gotA = [];
  const gotB = [];
  ca.bind('news', (d) => gotA.push(d));
  cb.bind('news', (d) => gotB.push(d));
  await api(n1).trigger('presence-hall', 'news', { n: 1 });
  await waitFor(() => gotA.length === 1 && gotB.length === 1);
  const typed = [];
  ca.bind('client-typing', (d, meta) => typed.push(meta.user_id));
  cb.trigger('client-typing', {});
  await waitFor(() => typed.includes('bob'));

  // Counts are the cluster's, from either node (asked again if a node's answer to the
  // survey came late on a busy machine).
  for (const node of [n1, n2]) {
    let info;
    await waitFor(async () => {
      info = await (await api(node).get({
        path: '/channels/presence-hall', params: { info: 'user_count,subscription_count' },
      })).json();
      return info.subscription_count === 2;
    }).catch(() => {});
    assert.deepEqual(info, { occupied: true, user_count: 2, subscription_count: 2 });
  }

  // bob leaves (node 2): alice (node 1) learns it.
  b.disconnect();
  await waitFor(() => removed.includes('bob'));

  // A signed-in user on node 2, terminated through node 1.
  const c = connect(n2, 'carol');
  c.signin();
  await waitFor(() => c.user.user_data?.id === 'carol');
  await sleep(100);
  const states = [];
  c.connection.bind('state_change', (s) => states.push(s.current));
  assert.equal((await api(n1).terminateUserConnections('carol')).status, 200);
  await waitFor(() => states.some((s) => s !== 'connected'));
  c.disconnect();
  a.disconnect();
});
