// pusher-js (its browser build, with encryption) and Laravel Echo with the `pusher`
// broadcaster in headless Chromium against `volley serve` with a Pusher app: a page of
// its own origin whose server is the application's backend (channel authorization and
// user authentication with the npm `pusher` SDK, as a Laravel or Express app does),
// events triggered through the HTTP API with the same SDK.

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import Pusher from 'pusher';
import { chromium } from 'playwright-core';
import { DEFAULT_CONFIG, startHub } from './lib.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const APP = { id: '4242', key: 'browser-app-key', secret: 'browser-app-secret' };
const MASTER_KEY = crypto.randomBytes(32).toString('base64');

let hub;
let browser;
let page;
let site;
let origin;
let server;

// The backend's answer to an authorization request: who the page's user is comes from
// the query of the page that asked (`?user=`), as a session cookie would tell it.
function authorize(params, user) {
  const { socket_id: socketId, channel_name: channel } = params;
  if (channel.includes('forbidden')) return [403, { error: 'not yours' }];
  if (channel.startsWith('presence-')) {
    return [200, server.authorizeChannel(socketId, channel, { user_id: user, user_info: { name: `User ${user}` } })];
  }
  return [200, server.authorizeChannel(socketId, channel)];
}

function readForm(req) {
  return new Promise((resolve) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      const type = req.headers['content-type'] || '';
      resolve(type.includes('json') ? JSON.parse(body || '{}') : Object.fromEntries(new URLSearchParams(body)));
    });
  });
}

before(async () => {
  const files = {
    '/pusher.js': path.join(HERE, 'node_modules/pusher-js/dist/web/pusher-with-encryption.js'),
    '/echo.js': path.join(HERE, 'node_modules/laravel-echo/dist/echo.iife.js'),
  };
  site = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://page');
    if (files[url.pathname]) {
      res.writeHead(200, { 'content-type': 'text/javascript' }).end(fs.readFileSync(files[url.pathname]));
    } else if (req.method === 'POST' && ['/pusher/auth', '/broadcasting/auth'].includes(url.pathname)) {
      const [status, body] = authorize(await readForm(req), url.searchParams.get('user') || 'anonymous');
      res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    } else if (req.method === 'POST' && ['/pusher/user-auth', '/broadcasting/user-auth'].includes(url.pathname)) {
      const params = await readForm(req);
      const user = url.searchParams.get('user') || 'anonymous';
      const auth = server.authenticateUser(params.socket_id, { id: user, user_info: { name: `User ${user}` } });
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(auth));
    } else {
      res.writeHead(200, { 'content-type': 'text/html' })
        .end('<!doctype html><script src="/pusher.js"></script><script src="/echo.js"></script>');
    }
  });
  await new Promise((r) => site.listen(0, '127.0.0.1', r));
  origin = `http://127.0.0.1:${site.address().port}`;
  hub = await startHub({
    ...DEFAULT_CONFIG,
    client: { ...DEFAULT_CONFIG.client, allowed_origins: [origin] },
    pusher: { apps: [{ ...APP, enable_client_messages: true }] },
  });
  const [host, port] = hub.addr.split(':');
  server = new Pusher({
    appId: APP.id, key: APP.key, secret: APP.secret, host, port, useTLS: false,
    encryptionMasterKeyBase64: MASTER_KEY,
  });
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium', args: CHROMIUM_ARGS });
  page = await (await browser.newContext()).newPage();
  await page.goto(origin);
  await page.waitForFunction(() => typeof window.Pusher === 'function' && typeof window.Echo === 'object');
});

after(async () => {
  await browser?.close();
  await hub?.stop();
  site?.close();
});

// The options every client in the page gets: the hub's host and port, no TLS.
function clientOptions(extra = {}) {
  const [host, port] = hub.addr.split(':');
  return {
    cluster: 'mt1', wsHost: host, wsPort: Number(port), httpHost: host, httpPort: Number(port),
    forceTLS: false, disableStats: true, enabledTransports: ['ws'], ...extra,
  };
}

// Waits in the page until `expr` (a function's source, run with `window.T`) is true.
async function until(expr, what) {
  try {
    await page.waitForFunction(expr, null, { timeout: 10000 });
  } catch (e) {
    const state = await page.evaluate(() => JSON.stringify(window.T?.log ?? []));
    throw new Error(`${what}: ${e.message}; page log: ${state}`);
  }
}

test('pusher-js in the browser: public, private, presence, encrypted, client events and sendToUser', async () => {
  await page.evaluate((opts) => {
    const T = { log: [] };
    window.T = T;
    const make = (user) => new Pusher(opts.key, {
      ...opts.client,
      channelAuthorization: { endpoint: `/pusher/auth?user=${user}`, transport: 'ajax' },
      userAuthentication: { endpoint: `/pusher/user-auth?user=${user}`, transport: 'ajax' },
    });
    T.a = make('alice');
    T.b = make('bob');
    T.a.connection.bind('connected', () => { T.socketA = T.a.connection.socket_id; });
    T.b.connection.bind('connected', () => { T.socketB = T.b.connection.socket_id; });
    for (const [who, p] of [['a', T.a], ['b', T.b]]) {
      for (const name of ['news', 'private-orders', 'presence-room', 'private-encrypted-secrets']) {
        const ch = p.subscribe(name);
        ch.bind('pusher:subscription_succeeded', (data) => {
          T.log.push([who, 'subscribed', name]);
          if (name === 'presence-room') T[`members_${who}`] = data.count;
        });
        ch.bind('pusher:subscription_error', (e) => T.log.push([who, 'subscription_error', name, e.status]));
        ch.bind_global((event, data) => {
          if (!event.startsWith('pusher:')) T.log.push([who, 'event', name, event, data]);
        });
        ch.bind('pusher:member_added', (m) => T.log.push([who, 'member_added', name, m.id, m.info]));
      }
      const forbidden = p.subscribe('private-forbidden');
      forbidden.bind('pusher:subscription_error', (e) => T.log.push([who, 'subscription_error', 'private-forbidden', e.status]));
    }
    T.a.signin();
    T.a.user.bind('notice', (data) => T.log.push(['a', 'user_event', data]));
  }, { key: APP.key, client: clientOptions() });
  const subscribed = (n) => `() => window.T.log.filter((l) => l[1] === 'subscribed').length >= ${n}`;
  await until(subscribed(8), 'both subscribed to the four channels');
  await until(() => window.T.log.filter((l) => l[1] === 'subscription_error').length >= 2, 'the forbidden channel refused');
  const log0 = await page.evaluate(() => window.T.log);
  assert.deepEqual(log0.filter((l) => l[1] === 'subscription_error').map((l) => l[3]), [403, 403]);

  // Server events: public, private (excluding one socket), encrypted (the SDK encrypts,
  // the hub relays the ciphertext as it is, pusher-js decrypts).
  const socketA = await page.evaluate(() => window.T.socketA);
  await server.trigger('news', 'headline', { title: 'hello' });
  await server.trigger('private-orders', 'shipped', { order: 7 }, { socket_id: socketA });
  await server.trigger('private-encrypted-secrets', 'code', { pin: '1234' });
  await until(() => window.T.log.filter((l) => l[1] === 'event' && l[3] === 'code').length >= 2, 'the encrypted event decrypted by both');
  await until(() => window.T.log.some((l) => l[0] === 'b' && l[3] === 'shipped'), 'the private event');
  const events = await page.evaluate(() => window.T.log.filter((l) => l[1] === 'event'));
  assert.deepEqual(events.filter((l) => l[3] === 'headline').map((l) => [l[0], l[4]]).sort(),
    [['a', { title: 'hello' }], ['b', { title: 'hello' }]]);
  assert.deepEqual(events.filter((l) => l[3] === 'code').map((l) => l[4]), [{ pin: '1234' }, { pin: '1234' }]);
  assert.deepEqual(events.filter((l) => l[3] === 'shipped').map((l) => l[0]), ['b'], 'the excluded socket got nothing');

  // Client events: relayed to the other member with its user id, never echoed.
  await page.evaluate(() => {
    window.T.a.channel('presence-room').trigger('client-typing', { typing: true });
  });
  await until(() => window.T.log.some((l) => l[0] === 'b' && l[3] === 'client-typing'), 'the client event');
  await new Promise((r) => setTimeout(r, 300));
  const typing = await page.evaluate(() => window.T.log.filter((l) => l[3] === 'client-typing'));
  assert.deepEqual(typing.map((l) => [l[0], l[4]]), [['b', { typing: true }]]);

  // Presence: each saw both members (one of them when it joined).
  const members = await page.evaluate(() => [window.T.members_a, window.T.members_b]);
  assert.ok(members.includes(2), `one of them saw two members: ${members}`);

  // Sign-in, then an event to the user.
  await until(() => window.T.a.user.user_data?.id === 'alice' && window.T.a.user.serverToUserChannel?.subscribed,
    'the sign-in and its user channel');
  await server.sendToUser('alice', 'notice', { text: 'for alice' });
  await until(() => window.T.log.some((l) => l[1] === 'user_event'), 'the event sent to the user');
  assert.deepEqual((await page.evaluate(() => window.T.log.find((l) => l[1] === 'user_event')))[2], { text: 'for alice' });
  await page.evaluate(() => { window.T.a.disconnect(); window.T.b.disconnect(); });
});

test('Laravel Echo with the pusher broadcaster: channel, private, presence (here, joining, leaving) and whispers', async () => {
  await page.evaluate((opts) => {
    const T = { log: [] };
    window.T = T;
    const echo = (user) => new window.Echo.default({
      broadcaster: 'pusher',
      key: opts.key,
      ...opts.client,
      authEndpoint: `/broadcasting/auth?user=${user}`,
    });
    T.one = echo('1');
    T.two = echo('2');
    T.one.channel('orders').listen('OrderShipped', (e) => T.log.push(['one', 'OrderShipped', e]));
    T.one.private('App.Models.User.1').listen('.invoice.paid', (e) => T.log.push(['one', 'invoice.paid', e]));
    T.one.join('chat.1')
      .here((users) => T.log.push(['one', 'here', users.map((u) => u.name).sort()]))
      .joining((u) => T.log.push(['one', 'joining', u.name]))
      .leaving((u) => T.log.push(['one', 'leaving', u.name]))
      .listenForWhisper('typing', (e) => T.log.push(['one', 'whisper', e]));
  }, { key: APP.key, client: clientOptions() });
  await until(() => window.T.log.some((l) => l[1] === 'here'), 'here()');
  await page.evaluate(() => {
    window.T.two.join('chat.1').here((users) => {
      window.T.log.push(['two', 'here', users.map((u) => u.name).sort()]);
      window.T.two.join('chat.1').whisper('typing', { name: 'User 2' });
    });
  });
  await until(() => window.T.log.some((l) => l[1] === 'whisper'), 'the whisper');
  // Laravel broadcasts `App\Events\OrderShipped` on `orders`, and `invoice.paid` (a
  // custom `broadcastAs`) on the user's private channel.
  await server.trigger('orders', 'App\\Events\\OrderShipped', { order: { id: 1 } });
  await server.trigger('private-App.Models.User.1', 'invoice.paid', { amount: 10 });
  await until(() => window.T.log.some((l) => l[1] === 'invoice.paid') && window.T.log.some((l) => l[1] === 'OrderShipped'), 'both events');
  await page.evaluate(() => window.T.two.leave('chat.1'));
  await until(() => window.T.log.some((l) => l[1] === 'leaving'), 'leaving()');
  const log = await page.evaluate(() => window.T.log);
  const of = (kind) => log.filter((l) => l[1] === kind).map((l) => [l[0], l[2]]);
  assert.deepEqual(of('here'), [['one', ['User 1']], ['two', ['User 1', 'User 2']]]);
  assert.deepEqual(of('joining'), [['one', 'User 2']]);
  assert.deepEqual(of('whisper'), [['one', { name: 'User 2' }]]);
  assert.deepEqual(of('OrderShipped'), [['one', { order: { id: 1 } }]]);
  assert.deepEqual(of('invoice.paid'), [['one', { amount: 10 }]]);
  assert.deepEqual(of('leaving'), [['one', 'User 2']]);
  await page.evaluate(() => { window.T.one.disconnect(); window.T.two.disconnect(); });
});

// pusher-js's HTTP fallbacks in the browser, as behind a proxy that breaks WebSocket:
// XMLHttpRequest to the hub's origin from the page's (CORS), a stream read as it comes
// (xhr_streaming) or one request after another (xhr_polling).
for (const transport of ['xhr_streaming', 'xhr_polling']) {
  test(`pusher-js in the browser over ${transport}: public and private events, client events`, async () => {
    await page.evaluate((opts) => {
      const T = { log: [] };
      window.T = T;
      const make = (user) => new Pusher(opts.key, {
        ...opts.client,
        channelAuthorization: { endpoint: `/pusher/auth?user=${user}`, transport: 'ajax' },
      });
      T.a = make('alice');
      T.b = make('bob');
      for (const [who, p] of [['a', T.a], ['b', T.b]]) {
        p.connection.bind('connected', () => T.log.push([who, 'connected', p.connection.connection.transport.name]));
        for (const name of ['news', 'private-orders']) {
          const ch = p.subscribe(name);
          ch.bind('pusher:subscription_succeeded', () => T.log.push([who, 'subscribed', name]));
          ch.bind_global((event, data) => {
            if (!event.startsWith('pusher:')) T.log.push([who, 'event', name, event, data]);
          });
        }
      }
    }, { key: APP.key, client: clientOptions({ enabledTransports: [transport] }) });
    await until(() => window.T.log.filter((l) => l[1] === 'subscribed').length >= 4, 'both subscribed to both channels');
    const connected = await page.evaluate(() => window.T.log.filter((l) => l[1] === 'connected').map((l) => l[2]));
    assert.deepEqual(connected, [transport, transport]);

    await server.trigger('news', 'headline', { title: transport });
    await server.trigger('private-orders', 'shipped', { order: 8 });
    await until(() => window.T.log.filter((l) => l[1] === 'event').length >= 4, 'the events');
    await page.evaluate(() => window.T.a.channel('private-orders').trigger('client-note', { from: 'a' }));
    await until(() => window.T.log.some((l) => l[0] === 'b' && l[3] === 'client-note'), 'the client event');
    const events = await page.evaluate(() => window.T.log.filter((l) => l[1] === 'event').map((l) => [l[0], l[3], l[4]]));
    assert.deepEqual(events.sort(), [
      ['a', 'headline', { title: transport }],
      ['a', 'shipped', { order: 8 }],
      ['b', 'client-note', { from: 'a' }],
      ['b', 'headline', { title: transport }],
      ['b', 'shipped', { order: 8 }],
    ]);
    await page.evaluate(() => { window.T.a.disconnect(); window.T.b.disconnect(); });
  });
}
