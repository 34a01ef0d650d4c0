// Proxies to the application's backend (Centrifugo's "proxy events to the backend"),
// with centrifuge-js (npm `centrifuge`) in Node against `volley serve` and a small
// backend this test runs: the connect proxy decides who connects from the forwarded
// cookie, and the refresh, subscribe, publish, sub_refresh and RPC proxies answer, refuse
// or disconnect; a backend that is down or slow costs its clients error 100 and nobody
// else anything.

import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Centrifuge as CentrifugeJson } from 'centrifuge';
import { Centrifuge as CentrifugeProtobuf } from 'centrifuge/build/protobuf';
import WebSocket from 'ws';
import { SECRET, now, startHub, token, waitFor } from './lib.mjs';

// The backend: what each proxy answers, and every request it got.
const requests = [];
const refreshes = { conn: 0, sub: 0 };

function json(res, body) {
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

const handlers = {
  async '/connect'(req, body) {
    const sid = /sid=(\w+)/.exec(req.headers.cookie || '')?.[1];
    switch (sid) {
      case 'banned': return { disconnect: { code: 4501, reason: 'banned' } };
      case 'refused': return { error: { code: 1001, message: 'not today' } };
      case 'slow': await sleep(1500); return { result: { user: 'slow' } };
      case 'short': return { result: { user: 'short', expire_at: now() + 2 } };
      case 'broken': return 'not a proxy answer';
      case undefined: return { disconnect: { code: 4401, reason: 'no session' } };
      default: return {
        result: {
          user: sid,
          info: { name: sid.toUpperCase() },
          data: { hello: sid, sent: body.data ?? null },
          meta: { plan: 'gold' },
        },
      };
    }
  },
  async '/refresh'() {
    refreshes.conn += 1;
    return { result: { expire_at: now() + 3600, info: { refreshed: true } } };
  },
  async '/subscribe'(req, body) {
    if (body.channel === 'sec:denied') return { error: { code: 403, message: 'forbidden' } };
    if (body.channel === 'sec:kick') return { disconnect: { code: 4502, reason: 'kicked' } };
    if (body.channel === 'sec:expiring') return { result: { expire_at: now() + 2 } };
    return { result: { info: { role: 'reader' }, data: { welcome: body.user } } };
  },
  async '/sub_refresh'(req, body) {
    refreshes.sub += 1;
    return { result: { expire_at: now() + 3600 } };
  },
  async '/publish'(req, body) {
    if (body.channel === 'sec:readonly') return { error: { code: 1403, message: 'read only' } };
    return { result: { data: { text: String(body.data.text).toUpperCase(), by: body.user } } };
  },
  async '/rpc'(req, body) {
    if (body.method === 'fail') return { error: { code: 1002, message: 'no such luck' } };
    if (body.method === 'kick') return { disconnect: { code: 4503, reason: 'rpc kick' } };
    if (body.method === 'status') return { result: {} };
    return { result: { data: { echo: body.data, method: body.method, user: body.user, meta: body.meta ?? null } } };
  },
};

const backend = http.createServer(async (req, res) => {
  let raw = '';
  for await (const chunk of req) raw += chunk;
  const body = JSON.parse(raw);
  requests.push({ path: req.url, headers: req.headers, body });
  const answer = await handlers[req.url](req, body);
  if (typeof answer === 'string') {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end(answer);
  } else {
    json(res, answer);
  }
});

function proxyConfig(base) {
  const p = (path, extra = {}) => ({ endpoint: `${base}${path}`, timeout: '500ms', http_headers: ['Cookie'], ...extra });
  return {
    client: {
      token: { hmac_secret_key: SECRET },
      // Without the refresh proxy, an expired connection would be closed 1 s later.
      expired_close_delay: '1s',
      proxy: {
        connect: p('/connect', { enabled: true, emulated_headers: ['Authorization'] }),
        refresh: p('/refresh', { enabled: true }),
      },
    },
    channel: {
      proxy: { subscribe: p('/subscribe'), publish: p('/publish'), sub_refresh: p('/sub_refresh') },
      namespaces: [
        {
          name: 'sec',
          subscribe_proxy_enabled: true,
          publish_proxy_enabled: true,
          sub_refresh_proxy_enabled: true,
          allow_subscribe_for_client: false,
        },
        { name: 'open', allow_subscribe_for_client: true, allow_publish_for_subscriber: true },
      ],
    },
    uni_sse: { enabled: true },
    rpc: {
      proxy: p('/rpc', { include_connection_meta: true, emulated_headers: ['Authorization'] }),
      without_namespace: { proxy_enabled: true },
      namespaces: [{ name: 'off', proxy_enabled: false }],
    },
  };
}

let hub;
let base;
before(async () => {
  await new Promise((resolve) => backend.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${backend.address().port}`;
  hub = await startHub(proxyConfig(base));
});
after(async () => {
  await hub?.stop();
  backend.closeAllConnections?.();
  await new Promise((resolve) => backend.close(resolve));
});

// A WebSocket that sends `cookie` with its handshake, as a browser would.
function withCookie(cookie) {
  return class extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, cookie ? { headers: { Cookie: cookie } } : {});
    }
  };
}

function client(cookie, opts = {}, Centrifuge = CentrifugeJson, addr = hub.addr) {
  const c = new Centrifuge(`ws://${addr}/connection/websocket`, { websocket: withCookie(cookie), ...opts });
  c.on('error', () => {});
  return c;
}

function connectedCtx(c) {
  return new Promise((resolve, reject) => {
    c.once('connected', resolve);
    c.once('disconnected', (ctx) => reject(Object.assign(new Error(`disconnected ${ctx.code}`), ctx)));
    c.connect();
  });
}

// The first connect error or disconnect of a client that should not connect.
function refusal(c) {
  return new Promise((resolve) => {
    c.on('error', (ctx) => { if (ctx.type === 'connect') resolve({ error: ctx.error }); });
    c.once('disconnected', (ctx) => resolve({ disconnected: ctx }));
    c.once('connected', () => resolve({ connected: true }));
    c.connect();
  });
}

describe('connect proxy', () => {
  test('the backend decides the user from the forwarded cookie; data goes to the client', { timeout: 20000 }, async () => {
    const c = client('sid=alice; other=1', { data: { device: 'node' } });
    const ctx = await connectedCtx(c);
    assert.deepEqual(ctx.data, { hello: 'alice', sent: { device: 'node' } });
    const r = requests.findLast((x) => x.path === '/connect' && x.headers.cookie?.includes('alice'));
    assert.equal(r.headers.cookie, 'sid=alice; other=1');
    assert.equal(r.headers['content-type'], 'application/json');
    assert.equal(r.body.client, ctx.client);
    assert.equal(r.body.transport, 'websocket');
    assert.equal(r.body.protocol, 'json');
    assert.equal(r.body.encoding, 'json');
    assert.equal(r.body.name, 'js');
    assert.equal(r.body.user, undefined);
    assert.deepEqual(r.body.data, { device: 'node' });
    // The user and info from the backend are the connection's: presence-like info in
    // a publication from this client.
    const sub = c.newSubscription('open:room');
    sub.subscribe();
    await sub.ready(5000);
    const got = new Promise((resolve) => sub.once('publication', resolve));
    await sub.publish({ n: 1 });
    const pub = await got;
    assert.equal(pub.info.user, 'alice');
    assert.deepEqual(pub.info.connInfo, { name: 'ALICE' });
    c.disconnect();
  });

  test('a disconnect from the backend closes the connection with its code', { timeout: 20000 }, async () => {
    const c = client('sid=banned');
    const r = await refusal(c);
    assert.equal(r.disconnected?.code, 4501, JSON.stringify(r));
    assert.equal(r.disconnected.reason, 'banned');
    c.disconnect();
  });

  test('an error from the backend reaches the client (not temporary: it stops)', { timeout: 20000 }, async () => {
    const c = client('sid=refused');
    const r = await refusal(c);
    assert.equal(r.disconnected?.code, 1001, JSON.stringify(r));
    assert.equal(c.state, 'disconnected');
    c.disconnect();
  });

  test('no cookie: the backend refuses with a code that asks the client to come back', { timeout: 20000 }, async () => {
    // centrifuge-js, still connecting, just tries again after such a code: the close
    // itself is seen on a bare WebSocket.
    const ws = new WebSocket(`ws://${hub.addr}/connection/websocket`);
    await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
    const closed = new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: String(reason) })));
    ws.send(JSON.stringify({ id: 1, connect: { name: 'raw' } }));
    assert.deepEqual(await closed, { code: 4401, reason: 'no session' });
  });

  test('a token still connects without asking the backend', { timeout: 20000 }, async () => {
    const before = requests.length;
    const c = client(null, { token: token({ sub: 'tok' }) });
    await connectedCtx(c);
    assert.equal(requests.slice(before).filter((r) => r.path === '/connect').length, 0);
    c.disconnect();
  });

  test('an answer that is not a proxy answer is error 100, and the client retries', { timeout: 20000 }, async () => {
    const c = client('sid=broken', { minReconnectDelay: 100, maxReconnectDelay: 200 });
    const errors = [];
    c.on('error', (ctx) => { if (ctx.type === 'connect') errors.push(ctx.error.code); });
    c.connect();
    await waitFor(() => errors.length >= 2, 'two connect errors');
    assert.deepEqual(errors.slice(0, 2), [100, 100]);
    assert.equal(c.state, 'connecting');
    c.disconnect();
  });

  test('a slow backend is cut at the timeout with error 100; other clients go on', { timeout: 20000 }, async () => {
    const slow = client('sid=slow', { minReconnectDelay: 5000 });
    const started = Date.now();
    const first = refusal(slow);
    // Meanwhile another client connects and calls.
    const fast = client('sid=bob');
    await connectedCtx(fast);
    const answer = await fast.rpc('echo', { x: 1 });
    assert.equal(answer.data.user, 'bob');
    const r = await first;
    assert.equal(r.error?.code, 100, JSON.stringify(r));
    const took = Date.now() - started;
    assert.ok(took >= 400 && took < 1400, `cut after ${took} ms`);
    slow.disconnect();
    fast.disconnect();
  });

  test('over Protobuf too', { timeout: 20000 }, async () => {
    const c = client('sid=carol', {}, CentrifugeProtobuf);
    const ctx = await connectedCtx(c);
    assert.deepEqual(JSON.parse(new TextDecoder().decode(ctx.data)), { hello: 'carol', sent: null });
    const r = requests.findLast((x) => x.path === '/connect' && x.headers.cookie === 'sid=carol');
    assert.equal(r.body.protocol, 'protobuf');
    assert.equal(r.body.encoding, 'binary');
    c.disconnect();
  });
});

describe('emulated headers', () => {
  test('the headers option of centrifuge-js reaches the proxies that list them, and only those', { timeout: 20000 }, async () => {
    // An emulated Cookie is not forwarded: Cookie is listed in http_headers only.
    const c = client('sid=nina', { headers: { Authorization: 'Bearer abc', Cookie: 'sid=forged' } });
    await connectedCtx(c);
    const r = requests.findLast((x) => x.path === '/connect' && x.headers.cookie === 'sid=nina');
    assert.equal(r.headers.authorization, 'Bearer abc');
    await c.rpc('echo', {});
    const rpc = requests.findLast((x) => x.path === '/rpc');
    assert.equal(rpc.headers.authorization, 'Bearer abc');
    assert.equal(rpc.headers.cookie, 'sid=nina', 'the real header, not the emulated one');
    const sub = c.newSubscription('sec:emulated');
    sub.subscribe();
    await sub.ready(5000);
    const s = requests.findLast((x) => x.path === '/subscribe' && x.body.channel === 'sec:emulated');
    assert.equal(s.headers.authorization, undefined, 'the subscribe proxy lists no emulated header');
    assert.equal(s.headers.cookie, 'sid=nina');
    c.disconnect();
    // Without a real cookie, the emulated one is not forwarded either (Cookie is not
    // in emulated_headers): the backend sees no session.
    const forger = client(null, { headers: { Authorization: 'Bearer forger', Cookie: 'sid=forged' }, minReconnectDelay: 5000 });
    forger.connect();
    await waitFor(() => requests.some((x) => x.path === '/connect' && x.headers.authorization === 'Bearer forger'), 'the forger');
    const f = requests.findLast((x) => x.path === '/connect' && x.headers.authorization === 'Bearer forger');
    assert.equal(f.headers.cookie, undefined);
    forger.disconnect();
  });
});

describe('refresh proxy', () => {
  test('the hub refreshes an expiring connection with the backend; the client is not asked', { timeout: 20000 }, async () => {
    const before = refreshes.conn;
    const c = client('sid=short');
    const ctx = await connectedCtx(c);
    const closed = [];
    c.on('disconnected', (ctx) => closed.push(ctx.code));
    c.on('connecting', (ctx) => closed.push(ctx.code));
    await waitFor(() => refreshes.conn > before, 'a refresh request', 6000);
    const r = requests.findLast((x) => x.path === '/refresh');
    assert.equal(r.body.user, 'short');
    assert.equal(r.body.client, ctx.client);
    assert.equal(r.headers.cookie, 'sid=short');
    // Still connected well past the first expiry and its grace.
    await sleep(1500);
    assert.equal(c.state, 'connected');
    assert.deepEqual(closed, []);
    c.disconnect();
  });
});

describe('subscribe and sub_refresh proxies', () => {
  test('allowed: info and data from the backend', { timeout: 20000 }, async () => {
    const c = client('sid=dave');
    await connectedCtx(c);
    const sub = c.newSubscription('sec:news');
    const subscribed = new Promise((resolve) => sub.once('subscribed', resolve));
    sub.subscribe();
    const ctx = await subscribed;
    assert.deepEqual(ctx.data, { welcome: 'dave' });
    const r = requests.findLast((x) => x.path === '/subscribe' && x.body.channel === 'sec:news');
    assert.equal(r.body.user, 'dave');
    assert.equal(r.headers.cookie, 'sid=dave');
    c.disconnect();
  });

  test('denied: the error code reaches the subscription, which stops', { timeout: 20000 }, async () => {
    const c = client('sid=erin');
    await connectedCtx(c);
    const sub = c.newSubscription('sec:denied');
    const unsubscribed = new Promise((resolve) => sub.once('unsubscribed', resolve));
    sub.subscribe();
    const ctx = await unsubscribed;
    assert.equal(ctx.code, 403);
    assert.equal(c.state, 'connected');
    c.disconnect();
  });

  test('a disconnect from the subscribe proxy disconnects the client', { timeout: 20000 }, async () => {
    const c = client('sid=frank', { minReconnectDelay: 5000 });
    await connectedCtx(c);
    const gone = new Promise((resolve) => c.once('disconnected', resolve));
    c.newSubscription('sec:kick').subscribe();
    const ctx = await gone;
    assert.equal(ctx.code, 4502);
    c.disconnect();
  });

  test('an expiring subscription is refreshed with the backend', { timeout: 20000 }, async () => {
    const c = client('sid=gina');
    await connectedCtx(c);
    const sub = c.newSubscription('sec:expiring');
    sub.subscribe();
    await sub.ready(5000);
    const before = refreshes.sub;
    await waitFor(() => refreshes.sub > before, 'a sub_refresh request', 6000);
    const r = requests.findLast((x) => x.path === '/sub_refresh');
    assert.equal(r.body.channel, 'sec:expiring');
    assert.equal(r.body.user, 'gina');
    await sleep(500);
    assert.equal(sub.state, 'subscribed');
    c.disconnect();
  });
});

describe('publish proxy', () => {
  test('the backend changes the data that is published', { timeout: 20000 }, async () => {
    const c = client('sid=hank');
    await connectedCtx(c);
    const sub = c.newSubscription('sec:chat');
    sub.subscribe();
    await sub.ready(5000);
    const got = new Promise((resolve) => sub.once('publication', resolve));
    await sub.publish({ text: 'quiet please' });
    const pub = await got;
    assert.deepEqual(pub.data, { text: 'QUIET PLEASE', by: 'hank' });
    const r = requests.findLast((x) => x.path === '/publish');
    assert.deepEqual(r.body.data, { text: 'quiet please' });
    c.disconnect();
  });

  test('a refusal reaches the publisher with its code', { timeout: 20000 }, async () => {
    const c = client('sid=ivy');
    await connectedCtx(c);
    await assert.rejects(c.publish('sec:readonly', { text: 'x' }), (e) => e.code === 1403 && e.message === 'read only');
    c.disconnect();
  });
});

describe('RPC proxy', () => {
  test('a result, an error, and a method whose namespace has no proxy', { timeout: 20000 }, async () => {
    const c = client('sid=jack');
    await connectedCtx(c);
    const r = await c.rpc('echo', { q: 42 });
    assert.deepEqual(r.data, { echo: { q: 42 }, method: 'echo', user: 'jack', meta: { plan: 'gold' } });
    await assert.rejects(c.rpc('fail', {}), (e) => e.code === 1002 && e.message === 'no such luck');
    await assert.rejects(c.rpc('off:thing', {}), (e) => e.code === 104);
    // An empty result: no data.
    const empty = await c.rpc('status', {});
    assert.equal(empty.data, undefined);
    c.disconnect();
  });

  test('a disconnect from the RPC proxy disconnects the client', { timeout: 20000 }, async () => {
    const c = client('sid=kate', { minReconnectDelay: 5000 });
    await connectedCtx(c);
    const gone = new Promise((resolve) => c.once('disconnected', resolve));
    c.rpc('kick', {}).catch(() => {});
    const ctx = await gone;
    assert.equal(ctx.code, 4503);
    c.disconnect();
  });
});

describe('unidirectional transports', () => {
  test('uni_sse: the connect proxy decides from the forwarded cookie', { timeout: 20000 }, async () => {
    const ctrl = new AbortController();
    const res = await fetch(`http://${hub.addr}/connection/uni_sse?channel=open:feed`, {
      headers: { Cookie: 'sid=uma' },
      signal: ctrl.signal,
    });
    assert.equal(res.status, 200);
    const reader = res.body.getReader();
    let text = '';
    while (!text.includes('\n\n')) text += new TextDecoder().decode((await reader.read()).value);
    assert.match(text, /"connect"/);
    const r = requests.findLast((x) => x.path === '/connect' && x.headers.cookie === 'sid=uma');
    assert.equal(r.body.transport, 'uni_sse');
    ctrl.abort();
    // Refused by the backend: no stream.
    const refused = await fetch(`http://${hub.addr}/connection/uni_sse?channel=open:feed`, { headers: { Cookie: 'sid=banned' } });
    assert.notEqual(refused.status, 200);
    await refused.text();
  });
});

describe('backend down', () => {
  test('error 100 for what needs it; token clients and other channels unaffected', { timeout: 20000 }, async () => {
    // A port nothing listens on.
    const dead = http.createServer();
    await new Promise((resolve) => dead.listen(0, '127.0.0.1', resolve));
    const port = dead.address().port;
    await new Promise((resolve) => dead.close(resolve));
    const down = await startHub(proxyConfig(`http://127.0.0.1:${port}`));
    try {
      const anon = client('sid=lena', { minReconnectDelay: 5000 }, CentrifugeJson, down.addr);
      const r = await refusal(anon);
      assert.equal(r.error?.code, 100, JSON.stringify(r));
      anon.disconnect();
      // A unidirectional client is told to come back later.
      const uni = await fetch(`http://${down.addr}/connection/uni_sse?channel=open:feed`, { headers: { Cookie: 'sid=x' } });
      assert.equal(uni.status, 503);
      await uni.text();

      const c = client(null, { token: token({ sub: 'mo' }) }, CentrifugeJson, down.addr);
      await connectedCtx(c);
      await assert.rejects(c.rpc('echo', {}), (e) => e.code === 100);
      const sec = c.newSubscription('sec:news', { minResubscribeDelay: 5000 });
      const failed = new Promise((resolve) => sec.on('error', resolve));
      sec.subscribe();
      assert.equal((await failed).error.code, 100);
      // A channel without proxies works as before.
      const open = c.newSubscription('open:room');
      open.subscribe();
      await open.ready(5000);
      const got = new Promise((resolve) => open.once('publication', resolve));
      await open.publish({ ok: true });
      assert.deepEqual((await got).data, { ok: true });
      c.disconnect();
    } finally {
      await down.stop();
    }
  });
});
