// centrifuge-js in headless Chromium against `volley serve`: the browser build of the
// real client (npm `centrifuge`, dist/centrifuge.js), loaded by a page of another
// origin that the hub's `allowed_origins` lists, over WebSocket and over each
// emulation transport alone (HTTP streaming, SSE: cross-origin, so CORS too).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { DEFAULT_CONFIG, now, startHub, token } from './lib.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

let hub;
let page;
let browser;
let site;
let origin;

before(async () => {
  // The page's own server: a blank page and the client library.
  const lib = fs.readFileSync(path.join(HERE, 'node_modules/centrifuge/dist/centrifuge.js'));
  site = http.createServer((req, res) => {
    if (req.url === '/centrifuge.js') {
      res.writeHead(200, { 'content-type': 'text/javascript' }).end(lib);
    } else {
      res.writeHead(200, { 'content-type': 'text/html' }).end('<!doctype html><script src="/centrifuge.js"></script>');
    }
  });
  await new Promise((r) => site.listen(0, '127.0.0.1', r));
  origin = `http://127.0.0.1:${site.address().port}`;
  hub = await startHub({ ...DEFAULT_CONFIG, client: { ...DEFAULT_CONFIG.client, allowed_origins: [origin] } });
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium', args: CHROMIUM_ARGS });
  page = await (await browser.newContext()).newPage();
  await page.goto(origin);
  await page.waitForFunction(() => typeof window.Centrifuge === 'function');
});

after(async () => {
  await browser?.close();
  await hub?.stop();
  site?.close();
});

// The client's endpoint and options for `transport` on the hub.
function endpoint(transport) {
  if (transport === 'websocket') return { ep: hub.url, opts: {} };
  return {
    ep: [{ transport, endpoint: `${hub.base}/connection/${transport}` }],
    opts: { emulationEndpoint: `${hub.base}/emulation` },
  };
}

for (const transport of ['websocket', 'http_stream', 'sse']) {
  test(`over ${transport}: connect with a JWT, subscribe, publish, history, presence, presence stats and an RPC error, in the browser`, async () => {
    const alice = token({ sub: 'alice', info: { name: 'Alice' } });
    const bob = token({ sub: 'bob' });
    const r = await page.evaluate(async ({ ep, opts, alice, bob, transport }) => {
      const a = new Centrifuge(ep, { ...opts, token: alice });
      const b = new Centrifuge(ep, { ...opts, token: bob });
      const used = new Promise((resolve) => a.on('connected', (ctx) => resolve(ctx.transport)));
      a.connect(); b.connect();
      await a.ready(5000); await b.ready(5000);
      const sa = a.newSubscription(`chat:browser-${transport}`);
      const got = new Promise((resolve) => sa.on('publication', (ctx) => resolve(ctx)));
      sa.subscribe();
      const sb = b.newSubscription(`chat:browser-${transport}`);
      sb.subscribe();
      await sa.ready(5000); await sb.ready(5000);
      await sb.publish({ text: 'from bob' });
      const pub = await got;
      const history = await sa.history({ limit: 10 });
      const presence = await sa.presence();
      const stats = await sa.presenceStats();
      let rpc = null;
      try { await a.rpc('none', {}); } catch (e) { rpc = e.code; }
      a.disconnect(); b.disconnect();
      return {
        data: pub.data, user: pub.info.user, history: history.publications.map((p) => p.data),
        users: Object.values(presence.clients).map((i) => i.user).sort(), stats, rpc, used: await used,
      };
    }, { ...endpoint(transport), alice, bob, transport });
    assert.equal(r.used, transport);
    assert.deepEqual(r.data, { text: 'from bob' });
    assert.equal(r.user, 'bob');
    assert.deepEqual(r.history, [{ text: 'from bob' }]);
    assert.deepEqual(r.users, ['alice', 'bob']);
    assert.deepEqual(r.stats, { numClients: 2, numUsers: 2 });
    assert.equal(r.rpc, 104);
  });

  test(`over ${transport}: recovery in the browser: a forced reconnect gets what was published meanwhile, once, in order`, async () => {
    const ch = `chat:browser-recovery-${transport}`;
    const user = `carol-${transport}`;
    const t = token({ sub: user, exp: now() + 3600 });
    await page.evaluate(async ({ ep, opts, t, ch }) => {
      window.c = new Centrifuge(ep, { ...opts, token: t, minReconnectDelay: 500, maxReconnectDelay: 800 });
      window.seen = [];
      window.subscribed = [];
      window.c.connect();
      const s = window.c.newSubscription(ch, { recoverable: true, positioned: true });
      s.on('publication', (ctx) => window.seen.push(ctx.data.n));
      s.on('subscribed', (ctx) => window.subscribed.push({ wasRecovering: ctx.wasRecovering, recovered: ctx.recovered }));
      s.subscribe();
      await s.ready(5000);
    }, { ...endpoint(transport), t, ch });
    for (let n = 1; n <= 3; n++) await hub.api('publish', { channel: ch, data: { n } });
    await page.waitForFunction(() => window.seen.length === 3);
    // The server asks the client to reconnect (3011); it waits at least 250 ms first.
    await hub.api('disconnect', { user, disconnect: { code: 3011, reason: 'force reconnect' } });
    for (let n = 4; n <= 8; n++) await hub.api('publish', { channel: ch, data: { n } });
    await page.waitForFunction(() => window.seen.length === 8, null, { timeout: 10000 });
    const r = await page.evaluate(() => { window.c.disconnect(); return { seen: window.seen, subscribed: window.subscribed }; });
    assert.deepEqual(r.seen, [1, 2, 3, 4, 5, 6, 7, 8]);
    assert.deepEqual(r.subscribed.at(-1), { wasRecovering: true, recovered: true });
  });
}

test('a page of an origin the hub does not list cannot connect', async () => {
  const other = await (await browser.newContext()).newPage();
  // The same page and library, served under another origin (localhost, not 127.0.0.1).
  await other.goto(origin.replace('127.0.0.1', 'localhost'));
  await other.waitForFunction(() => typeof window.Centrifuge === 'function');
  // A valid token: only the origin stands in the way.
  const state = await other.evaluate(async ({ url, t }) => {
    const c = new Centrifuge(url, { token: t });
    const failed = new Promise((resolve) => c.on('error', (ctx) => resolve(ctx.type)));
    c.connect();
    const code = await Promise.race([failed, new Promise((r) => setTimeout(() => r('timeout'), 5000))]);
    const s = c.state;
    c.disconnect();
    return { code, state: s };
  }, { url: hub.url, t: token({ sub: 'eve' }) });
  assert.notEqual(state.state, 'connected');
  assert.equal(state.code, 'transport', 'the client saw its transport refused');
  await other.context().close();
});
