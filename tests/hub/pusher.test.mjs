// The hub as a Pusher Channels server: pusher-js 8 (its Node build) connects to
// `/app/{key}`, the Pusher Node SDK (npm `pusher`) calls the HTTP API and signs the
// channel authorizations and sign-ins an HTTP endpoint of the test serves.

import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import PusherClient from 'pusher-js';
import PusherServer from 'pusher';
import WebSocket from 'ws';

import { DEFAULT_CONFIG, startHub, waitFor } from './lib.mjs';

const APP = {
  id: '4321',
  key: 'test-pusher-key',
  secret: 'test-pusher-secret',
  enable_client_messages: true,
  enable_subscription_count: true,
  max_client_events_per_second: 5,
};
// Strict: a connection must authorize within a second, one connection at most, pings
// after a second of silence, 4201 a second later.
const STRICT = {
  id: '4322',
  key: 'strict-key',
  secret: 'strict-secret',
  require_authorization: true,
  authorization_timeout: '1s',
  max_connections: 1,
  activity_timeout: '1s',
  pong_timeout: '1s',
  max_event_payload_size: 100,
  max_event_batch_size: 2,
};
const DISABLED = { id: '4323', key: 'disabled-key', secret: 'disabled-secret', enabled: false };
const MASTER_KEY = Buffer.alloc(32, 7).toString('base64');

let hub;
let hookServer; // the app's webhook endpoint
const hooks = []; // the webhook events received, each checked with the SDK
let server; // the Pusher SDK, against the hub
let authServer; // the app's authorization endpoints
let authUrl;
const clients = new Set();

function port() {
  return Number(new URL(hub.url).port);
}

/** Reads a form body. */
function form(req) {
  return new Promise((resolve) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => resolve(new URLSearchParams(body)));
  });
}

/** A pusher-js client on the hub; `user` is the id its authorizations carry. */
function connect(user = 'alice', extra = {}) {
  const c = new PusherClient(APP.key, {
    cluster: 'local',
    wsHost: '127.0.0.1',
    wsPort: port(),
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    channelAuthorization: { endpoint: `${authUrl}/auth?user=${user}`, transport: 'ajax' },
    userAuthentication: { endpoint: `${authUrl}/signin?user=${user}`, transport: 'ajax' },
    ...extra,
  });
  clients.add(c);
  return c;
}

function connected(c) {
  return new Promise((resolve, reject) => {
    if (c.connection.state === 'connected') return resolve();
    c.connection.bind('connected', resolve);
    c.connection.bind('failed', () => reject(new Error('failed')));
  });
}

function subscribed(channel) {
  return new Promise((resolve, reject) => {
    channel.bind('pusher:subscription_succeeded', resolve);
    channel.bind('pusher:subscription_error', (e) => reject(Object.assign(new Error('subscription error'), e)));
  });
}

/** Events of one name on a channel, as they come. */
function collect(channel, event) {
  const got = [];
  channel.bind(event, (data, meta) => got.push({ data, meta }));
  return got;
}

before(async () => {
  hookServer = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const hook = server.webhook({ headers: req.headers, rawBody: Buffer.concat(chunks).toString() });
      if (hook.isValid()) hooks.push(...hook.getEvents());
      res.writeHead(hook.isValid() ? 200 : 401).end();
    });
  });
  await new Promise((r) => hookServer.listen(0, '127.0.0.1', r));
  const webhooks = [{ url: `http://127.0.0.1:${hookServer.address().port}/hooks` }];
  hub = await startHub({
    ...DEFAULT_CONFIG,
    pusher: { apps: [{ ...APP, webhooks }, STRICT, DISABLED], webhooks: { removal_delay: '200ms', batch_window: '10ms' } },
  });
  server = new PusherServer({
    appId: APP.id,
    key: APP.key,
    secret: APP.secret,
    host: '127.0.0.1',
    port: String(port()),
    useTLS: false,
    encryptionMasterKeyBase64: MASTER_KEY,
  });
  authServer = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://x');
    const p = await form(req);
    const user = url.searchParams.get('user');
    let body;
    if (url.pathname === '/auth') {
      const channel = p.get('channel_name');
      if (user === 'mallory') {
        res.writeHead(403).end('{}');
        return;
      }
      const presence = channel.startsWith('presence-') ? { user_id: user, user_info: { name: user.toUpperCase() } } : undefined;
      body = server.authorizeChannel(p.get('socket_id'), channel, presence);
    } else {
      body = server.authenticateUser(p.get('socket_id'), { id: user, watchlist: ['bob'] });
    }
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body));
  });
  await new Promise((r) => authServer.listen(0, '127.0.0.1', r));
  authUrl = `http://127.0.0.1:${authServer.address().port}`;
});

after(async () => {
  for (const c of clients) c.disconnect();
  authServer?.close();
  hookServer?.close();
  await hub?.stop();
});

describe('Pusher protocol', () => {
  test('connection_established gives a socket id', async () => {
    const c = connect();
    await connected(c);
    assert.match(c.connection.socket_id, /^\d+\.\d+$/);
    const d = connect();
    await connected(d);
    assert.notEqual(c.connection.socket_id, d.connection.socket_id);
    c.disconnect();
    d.disconnect();
  });

  test('public channels get the SDK\'s events, to several channels, with socket_id exclusion and info', async () => {
    const a = connect();
    const b = connect();
    await Promise.all([connected(a), connected(b)]);
    const [a1, a2, b1] = [a.subscribe('news'), a.subscribe('sports'), b.subscribe('news')];
    await Promise.all([subscribed(a1), subscribed(a2), subscribed(b1)]);
    const got = [collect(a1, 'update'), collect(a2, 'update'), collect(b1, 'update')];
    const res = await server.trigger(['news', 'sports'], 'update', { n: 1 }, { info: 'subscription_count' });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), {
      channels: { news: { subscription_count: 2 }, sports: { subscription_count: 1 } },
    });
    await waitFor(() => got.every((g) => g.length === 1));
    assert.deepEqual(got[0][0].data, { n: 1 });
    // Excluded: b's socket does not get it, a does.
    await server.trigger('news', 'update', { n: 2 }, { socket_id: b.connection.socket_id });
    await waitFor(() => got[0].length === 2);
    await sleep(100);
    assert.equal(got[2].length, 1);
    // Batches.
    const batch = await server.triggerBatch([
      { channel: 'news', name: 'update', data: { n: 3 } },
      { channel: 'sports', name: 'update', data: { n: 4 } },
    ]);
    assert.equal(batch.status, 200);
    await waitFor(() => got[1].length === 2 && got[2].length === 2);
    a.disconnect();
    b.disconnect();
  });

  test('private channels need the app\'s authorization', async () => {
    const a = connect();
    await connected(a);
    const ch = a.subscribe('private-room');
    await subscribed(ch);
    const got = collect(ch, 'msg');
    await server.trigger('private-room', 'msg', 'hello');
    await waitFor(() => got.length === 1);
    assert.equal(got[0].data, 'hello');
    // The app's endpoint refuses: pusher-js reports it.
    const m = connect('mallory');
    await connected(m);
    await assert.rejects(subscribed(m.subscribe('private-room')), (e) => e.status === 403);
    a.disconnect();
    m.disconnect();
  });

  test('a forged authorization is refused by the hub', async () => {
    const ws = new WebSocket(`ws://127.0.0.1:${port()}/app/${APP.key}?protocol=7&client=js&version=8`);
    const messages = [];
    ws.on('message', (m) => messages.push(JSON.parse(m.toString())));
    await waitFor(() => messages.length === 1);
    assert.equal(messages[0].event, 'pusher:connection_established');
    const { socket_id } = JSON.parse(messages[0].data);
    assert.match(socket_id, /^\d+\.\d+$/);
    ws.send(JSON.stringify({ event: 'pusher:subscribe', data: { channel: 'private-x', auth: `${APP.key}:00` } }));
    await waitFor(() => messages.length === 2);
    assert.equal(messages[1].event, 'pusher:subscription_error');
    assert.equal(messages[1].data.status, 401);
    ws.send('not json');
    ws.send(JSON.stringify({ event: 'pusher:ping', data: {} }));
    await waitFor(() => messages.length === 4);
    assert.equal(messages[2].event, 'pusher:error');
    assert.equal(messages[3].event, 'pusher:pong');
    ws.close();
  });

  test('presence members are per user, added and removed across clients', async () => {
    const a = connect('alice');
    const b = connect('bob');
    const b2 = connect('bob');
    await Promise.all([connected(a), connected(b), connected(b2)]);
    const ca = a.subscribe('presence-lobby');
    await subscribed(ca);
    assert.equal(ca.members.count, 1);
    assert.deepEqual(ca.members.me.info, { name: 'ALICE' });
    const added = [];
    const removed = [];
    ca.bind('pusher:member_added', (m) => added.push(m));
    ca.bind('pusher:member_removed', (m) => removed.push(m));
    const cb = b.subscribe('presence-lobby');
    const members = await subscribed(cb);
    assert.equal(members.count, 2);
    await waitFor(() => added.length === 1);
    assert.equal(added[0].id, 'bob');
    assert.deepEqual(added[0].info, { name: 'BOB' });
    // A second connection of bob: no second member_added.
    await subscribed(b2.subscribe('presence-lobby'));
    const users = await (await server.get({ path: '/channels/presence-lobby/users' })).json();
    assert.deepEqual(users.users.map((u) => u.id).sort(), ['alice', 'bob']);
    const info = await (
      await server.get({ path: '/channels/presence-lobby', params: { info: 'user_count,subscription_count' } })
    ).json();
    assert.deepEqual(info, { occupied: true, user_count: 2, subscription_count: 3 });
    const list = await (
      await server.get({ path: '/channels', params: { filter_by_prefix: 'presence-', info: 'user_count' } })
    ).json();
    assert.deepEqual(list, { channels: { 'presence-lobby': { user_count: 2 } } });
    b.disconnect();
    await sleep(200);
    assert.equal(removed.length, 0, 'bob is still there on another connection');
    b2.disconnect();
    await waitFor(() => removed.length === 1);
    assert.equal(removed[0].id, 'bob');
    assert.equal(added.length, 1);
    a.disconnect();
  });

  test('client events: not echoed, user_id on presence, refused on public, rate limited', async () => {
    const a = connect('alice');
    const b = connect('bob');
    await Promise.all([connected(a), connected(b)]);
    const [pa, pb] = [a.subscribe('presence-chat'), b.subscribe('presence-chat')];
    await Promise.all([subscribed(pa), subscribed(pb)]);
    const gotA = collect(pa, 'client-typing');
    const gotB = collect(pb, 'client-typing');
    assert.ok(pa.trigger('client-typing', { on: true }));
    await waitFor(() => gotB.length === 1);
    assert.deepEqual(gotB[0].data, { on: true });
    assert.equal(gotB[0].meta.user_id, 'alice');
    await sleep(100);
    assert.equal(gotA.length, 0, 'not echoed');
    // On a public channel: an error, nothing delivered.
    const errors = [];
    a.connection.bind('error', (e) => errors.push(e));
    const pub = a.subscribe('public-chat');
    await subscribed(pub);
    pub.trigger('client-x', {});
    await waitFor(() => errors.length === 1);
    // Over the rate: 4301, the connection stays.
    for (let i = 0; i < 10; i++) pa.trigger('client-typing', { i });
    await waitFor(() => errors.some((e) => e.data?.code === 4301));
    assert.equal(a.connection.state, 'connected');
    await sleep(100);
    assert.ok(gotB.length <= 1 + 5);
    a.disconnect();
    b.disconnect();
  });

  test('private-encrypted channels carry the SDK\'s encrypted events', async () => {
    const a = connect();
    await connected(a);
    const ch = a.subscribe('private-encrypted-vault');
    await subscribed(ch);
    const got = collect(ch, 'secret');
    await server.trigger('private-encrypted-vault', 'secret', { code: 42 });
    await waitFor(() => got.length === 1);
    assert.deepEqual(got[0].data, { code: 42 });
    a.disconnect();
  });

  test('cache channels give the last event on subscribe, or a cache miss', async () => {
    const a = connect();
    await connected(a);
    const miss = a.subscribe('cache-empty');
    const misses = collect(miss, 'pusher:cache_miss');
    await subscribed(miss);
    await waitFor(() => misses.length === 1);
    await server.trigger('cache-weather', 'now', { t: 1 });
    await server.trigger('cache-weather', 'now', { t: 2 });
    const ch = a.subscribe('cache-weather');
    const got = collect(ch, 'now');
    await subscribed(ch);
    await waitFor(() => got.length === 1);
    assert.deepEqual(got[0].data, { t: 2 });
    a.disconnect();
  });

  test('subscription counts: to every subscriber when the number changes, never cached, not on presence', async () => {
    const last = (got) => got.at(-1)?.data?.subscription_count;
    await server.trigger('cache-counted', 'app-event', { v: 1 });
    const a = connect('alice');
    const b = connect('bob');
    await Promise.all([connected(a), connected(b)]);
    const ca = a.subscribe('cache-counted');
    const countsA = collect(ca, 'pusher:subscription_count');
    await subscribed(ca);
    await waitFor(() => last(countsA) === 1, 'a is told 1');
    const cb = b.subscribe('cache-counted');
    const countsB = collect(cb, 'pusher:subscription_count');
    const cachedB = collect(cb, 'app-event');
    await subscribed(cb);
    // The second change comes within the channel's interval: told at its end.
    await waitFor(() => last(countsA) === 2 && last(countsB) === 2, 'both are told 2', 5000);
    assert.equal(ca.subscriptionCount, 2);
    // The cache keeps the app's last event, not a count.
    await waitFor(() => cachedB.length === 1);
    assert.deepEqual(cachedB[0].data, { v: 1 });
    b.unsubscribe('cache-counted');
    await waitFor(() => last(countsA) === 1, 'a is told 1 again', 5000);
    // The webhook carries the same numbers.
    await waitFor(() => hooks.some((e) => e.name === 'subscription_count' && e.channel === 'cache-counted' && e.subscription_count === 2));
    // Presence channels have members instead.
    const p = a.subscribe('presence-counted');
    const countsP = collect(p, 'pusher:subscription_count');
    await subscribed(p);
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(countsP.length, 0);
    a.disconnect();
    b.disconnect();
  });

  test('sign-in: events to the user, then its connections terminated', async () => {
    const a = connect('carol');
    await connected(a);
    a.signin();
    const got = [];
    a.user.bind('note', (d) => got.push(d));
    await waitFor(() => a.user.user_data?.id === 'carol');
    await sleep(100);
    await server.sendToUser('carol', 'note', { hi: 1 });
    await waitFor(() => got.length === 1);
    assert.deepEqual(got[0], { hi: 1 });
    const closed = new Promise((resolve) => a.connection.bind('state_change', (s) => s.current !== 'connected' && resolve(s)));
    const res = await server.terminateUserConnections('carol');
    assert.equal(res.status, 200);
    await closed;
    a.disconnect();
  });

  test('watchlist: online and offline events of the watched users', async () => {
    const w = connect('watcher');
    await connected(w);
    const online = [];
    const offline = [];
    w.user.watchlist.bind('online', (e) => online.push(...e.user_ids));
    w.user.watchlist.bind('offline', (e) => offline.push(...e.user_ids));
    w.signin();
    await waitFor(() => w.user.user_data?.id === 'watcher');
    await sleep(100);
    const b = connect('bob');
    await connected(b);
    b.signin();
    await waitFor(() => online.includes('bob'));
    // A second watcher learns at sign-in that bob is online.
    const w2 = connect('watcher2');
    await connected(w2);
    const online2 = [];
    w2.user.watchlist.bind('online', (e) => online2.push(...e.user_ids));
    w2.signin();
    await waitFor(() => online2.includes('bob'));
    b.disconnect();
    await waitFor(() => offline.includes('bob'));
    w.disconnect();
    w2.disconnect();
  });

  test('webhooks: occupancy, members, client events and cache misses, signed as the SDK checks', async () => {
    const has = (f) => hooks.some(f);
    await waitFor(() => has((e) => e.name === 'member_added' && e.channel === 'presence-lobby' && e.user_id === 'bob'));
    await waitFor(() => has((e) => e.name === 'member_removed' && e.channel === 'presence-lobby' && e.user_id === 'bob'));
    await waitFor(() => has((e) => e.name === 'client_event' && e.event === 'client-typing' && e.user_id === 'alice'));
    await waitFor(() => has((e) => e.name === 'cache_miss' && e.channel === 'cache-empty'));
    // 'news' had two subscribers, then none.
    await waitFor(() => has((e) => e.name === 'channel_occupied' && e.channel === 'news'));
    await waitFor(() => has((e) => e.name === 'channel_vacated' && e.channel === 'news'));
    assert.equal(hooks.filter((e) => e.name === 'channel_occupied' && e.channel === 'news').length, 1);
  });

  test('the API refuses a bad signature with 401', async () => {
    const bad = new PusherServer({
      appId: APP.id,
      key: APP.key,
      secret: 'wrong',
      host: '127.0.0.1',
      port: String(port()),
      useTLS: false,
    });
    await assert.rejects(bad.trigger('news', 'x', {}), (e) => e.status === 401);
  });

  test('an unknown key is closed with 4001', async () => {
    const ws = new WebSocket(`ws://127.0.0.1:${port()}/app/nope?protocol=7`);
    const messages = [];
    ws.on('message', (m) => messages.push(JSON.parse(m.toString())));
    const code = await new Promise((resolve) => ws.on('close', resolve));
    assert.equal(code, 4001);
    assert.equal(messages[0].event, 'pusher:error');
    assert.equal(messages[0].data.code, 4001);
    // pusher-js gives up (no reconnect on 4000-4099).
    const c = new PusherClient('nope', {
      cluster: 'local', wsHost: '127.0.0.1', wsPort: port(), forceTLS: false, enabledTransports: ['ws'],
    });
    clients.add(c);
    const errors = [];
    c.connection.bind('error', (e) => errors.push(e));
    await waitFor(() => errors.length > 0 && ['failed', 'disconnected', 'unavailable'].includes(c.connection.state));
    assert.ok(errors.some((e) => e.error?.data?.code === 4001), JSON.stringify(errors));
    await sleep(300);
    assert.notEqual(c.connection.state, 'connected');
    c.disconnect();
  });

  test('a disabled app is closed with 4003', async () => {
    const ws = new WebSocket(`ws://127.0.0.1:${port()}/app/${DISABLED.key}?protocol=7`);
    const code = await new Promise((resolve) => ws.on('close', resolve));
    assert.equal(code, 4003);
  });

  test('limits: connections (4100), authorization in time (4009), pings (4201)', async () => {
    const url = `ws://127.0.0.1:${port()}/app/${STRICT.key}?protocol=7`;
    const first = new WebSocket(url);
    const messages = [];
    first.on('message', (m) => messages.push(JSON.parse(m.toString())));
    await waitFor(() => messages.length === 1);
    const second = new WebSocket(url);
    assert.equal(await new Promise((resolve) => second.on('close', resolve)), 4100);
    // Neither signed in nor subscribed to a private channel within a second.
    assert.equal(await new Promise((resolve) => first.on('close', resolve)), 4009);
    // Authorized, silent: pinged after a second, closed a second later.
    const third = new WebSocket(url);
    const got = [];
    third.on('message', (m) => got.push(JSON.parse(m.toString())));
    await waitFor(() => got.length === 1);
    const { socket_id } = JSON.parse(got[0].data);
    const strict = new PusherServer({ appId: STRICT.id, key: STRICT.key, secret: STRICT.secret, host: '127.0.0.1', port: String(port()) });
    third.send(JSON.stringify({ event: 'pusher:subscribe', data: { channel: 'private-a', ...strict.authorizeChannel(socket_id, 'private-a') } }));
    const code = await new Promise((resolve) => third.on('close', resolve));
    assert.equal(code, 4201);
    assert.ok(got.some((m) => m.event === 'pusher_internal:subscription_succeeded'));
    assert.ok(got.some((m) => m.event === 'pusher:ping'));
  });

  test('the API\'s limits: 413 for data too large, 400 for a batch too large, 403 for a disabled app', async () => {
    const opts = { host: '127.0.0.1', port: String(port()), useTLS: false };
    const strict = new PusherServer({ appId: STRICT.id, key: STRICT.key, secret: STRICT.secret, ...opts });
    await assert.rejects(strict.trigger('a', 'e', 'x'.repeat(200)), (e) => e.status === 413);
    assert.equal((await strict.trigger('a', 'e', 'x'.repeat(50))).status, 200);
    const three = [1, 2, 3].map((n) => ({ channel: 'a', name: 'e', data: String(n) }));
    await assert.rejects(strict.triggerBatch(three), (e) => e.status === 400);
    const disabled = new PusherServer({ appId: DISABLED.id, key: DISABLED.key, secret: DISABLED.secret, ...opts });
    await assert.rejects(disabled.trigger('a', 'e', {}), (e) => e.status === 403);
  });

  test('another protocol version is closed with 4007', async () => {
    const ws = new WebSocket(`ws://127.0.0.1:${port()}/app/${APP.key}?protocol=5`);
    const code = await new Promise((resolve) => ws.on('close', resolve));
    assert.equal(code, 4007);
  });
});

describe('Pusher clients parked while idle', () => {
  // A hub of its own, so that its metrics count this test's clients alone. Pings after
  // a second of silence: they must come to parked clients too.
  const PARK = { id: '4400', key: 'park-key', secret: 'park-secret', activity_timeout: '1s', pong_timeout: '1s' };
  let parkHub;
  let sdk;
  const mine = [];

  async function metric(name) {
    const text = await (await fetch(`http://127.0.0.1:${new URL(parkHub.url).port}/metrics`)).text();
    const line = text.split('\n').find((l) => l.startsWith(`volley_hub_${name} `));
    return Number(line.split(' ')[1]);
  }

  before(async () => {
    parkHub = await startHub({ ...DEFAULT_CONFIG, pusher: { apps: [PARK] } });
    const p = Number(new URL(parkHub.url).port);
    sdk = new PusherServer({ appId: PARK.id, key: PARK.key, secret: PARK.secret, host: '127.0.0.1', port: String(p), useTLS: false });
  });

  after(async () => {
    for (const c of mine) c.disconnect();
    await parkHub?.stop();
  });

  test('an idle client is parked, gets events where it is parked, and answers pings', async () => {
    const c = new PusherClient(PARK.key, {
      cluster: 'local',
      wsHost: '127.0.0.1',
      wsPort: Number(new URL(parkHub.url).port),
      forceTLS: false,
      enabledTransports: ['ws'],
      disableStats: true,
    });
    mine.push(c);
    const states = [];
    c.connection.bind('state_change', (s) => states.push(s.current));
    await connected(c);
    const ch = c.subscribe('parked-news');
    await subscribed(ch);
    await waitFor(async () => (await metric('parked_connections')) === 1, 'the client parked');
    const parks = await metric('parks_total');

    // Events are written where it is parked: it is not taken back for them.
    const got = collect(ch, 'tick');
    for (let i = 0; i < 3; i++) await sdk.trigger('parked-news', 'tick', { i });
    await waitFor(() => got.length === 3, 'three events');
    assert.deepEqual(got.map((g) => g.data.i), [0, 1, 2]);
    assert.equal(await metric('parks_total'), parks, 'never taken back for the events');
    assert.equal(await metric('parked_connections'), 1);

    // Its peer speaking takes it back; idle again, it parks again and still gets events.
    const other = c.subscribe('parked-other');
    await subscribed(other);
    await waitFor(async () => (await metric('parks_total')) > parks, 'parked again');
    const more = collect(other, 'tock');
    await sdk.trigger(['parked-news', 'parked-other'], 'tock', { n: 1 });
    await waitFor(() => more.length === 1, 'an event on the second channel');

    // Pings come to it while it is parked between them (a second of silence), and
    // its pongs keep it connected.
    await sleep(3500);
    assert.equal(c.connection.state, 'connected', states.join(' → '));
    assert.deepEqual(states.filter((s) => s !== 'connected' && s !== 'connecting'), [], states.join(' → '));
    const last = collect(ch, 'last');
    await sdk.trigger('parked-news', 'last', {});
    await waitFor(() => last.length === 1, 'an event after the pings');
  });
});
