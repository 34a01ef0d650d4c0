// Headless Chromium against `volley serve` over TLS (its self-signed mode; the browser
// is told to accept the certificate): the page is one of the hub's own, and Chromium
// speaks HTTP/2 to it (ALPN h2). Over HTTP/1.1 a browser opens at most six connections
// to a host, so a seventh SSE stream would wait; over HTTP/2 they are all streams of
// one connection. Each test opens more than six streams and checks they all get the
// publication, and that the browser used h2; the streams' headers are those that keep
// buffering proxies out; and centrifuge-js's WebSocket runs as an extended CONNECT
// (RFC 8441) on the page's HTTP/2 connection.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { API_KEY, DEFAULT_CONFIG, startHub } from './lib.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--ignore-certificate-errors'];

// More than the six connections per host of HTTP/1.1.
const STREAMS = 8;

let hub;
let browser;
let page;
let base;

before(async () => {
  hub = await startHub({
    ...DEFAULT_CONFIG,
    client: { ...DEFAULT_CONFIG.client, allow_anonymous_connect_without_token: true },
    http_server: { tls: { self_signed: true } },
    channel: {
      namespaces: [{ name: 'open', allow_subscribe_for_anonymous: true, allow_subscribe_for_client: true }],
    },
    sse: { enabled: true },
    http_stream: { enabled: true },
    uni_sse: { enabled: true },
  });
  base = `https://localhost:${hub.addr.split(':').pop()}`;
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium', args: CHROMIUM_ARGS });
  page = await (await browser.newContext({ ignoreHTTPSErrors: true })).newPage();
  // A page of the hub's own origin (its health route will do), with the client library.
  await page.goto(`${base}/health`);
  await page.addScriptTag({ content: fs.readFileSync(path.join(HERE, 'node_modules/centrifuge/dist/centrifuge.js'), 'utf8') });
});

after(async () => {
  await browser?.close();
  await hub?.stop();
});

// Publishes through the server API from the page: one more stream of the connection.
async function publishFromPage(channel, data) {
  return page.evaluate(async ({ channel, data, key }) => {
    const r = await fetch('/api/publish', {
      method: 'POST',
      headers: { 'X-API-Key': key, 'Content-Type': 'application/json' },
      body: JSON.stringify({ channel, data }),
    });
    return { status: r.status, body: await r.json() };
  }, { channel, data, key: API_KEY });
}

// The protocols the page's requests to `path` went over.
async function protocolsOf(pathPart) {
  return page.evaluate((p) => performance.getEntriesByType('resource')
    .filter((e) => e.name.includes(p)).map((e) => e.nextHopProtocol), pathPart);
}

test(`${STREAMS} EventSource streams of the unidirectional SSE transport share one HTTP/2 connection and all get the publication`, async () => {
  const navigation = await page.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol);
  assert.equal(navigation, 'h2');
  await page.evaluate(async (n) => {
    window.got = [];
    window.sources = [];
    const opened = [];
    for (let i = 0; i < n; i++) {
      const es = new EventSource(`/connection/uni_sse?channel=open:many&i=${i}`);
      window.sources.push(es);
      opened.push(new Promise((resolve, reject) => {
        es.addEventListener('message', (e) => {
          const m = JSON.parse(e.data);
          if (m.connect) resolve();
          if (m.pub) window.got[i] = m.pub.data;
        });
        es.addEventListener('error', () => reject(new Error(`stream ${i} failed`)));
      }));
    }
    // Over HTTP/1.1 the seventh would wait for a connection: do not wait forever.
    const late = new Promise((_, reject) => setTimeout(() => reject(new Error('not every stream opened')), 10000));
    await Promise.race([Promise.all(opened), late]);
  }, STREAMS);
  const r = await publishFromPage('open:many', { to: 'all' });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  await page.waitForFunction((n) => window.got.filter(Boolean).length === n, STREAMS, { timeout: 10000 });
  const got = await page.evaluate(() => { window.sources.forEach((s) => s.close()); return window.got; });
  assert.deepEqual(got, Array(STREAMS).fill({ to: 'all' }));
  const protocols = await protocolsOf('/connection/uni_sse');
  assert.equal(protocols.length, STREAMS);
  assert.ok(protocols.every((p) => p === 'h2'), JSON.stringify(protocols));
  assert.deepEqual(await protocolsOf('/api/publish'), ['h2']);
});

for (const transport of ['sse', 'http_stream']) {
  test(`${STREAMS} centrifuge-js clients over ${transport} on one HTTP/2 connection: connect, subscribe, all get the publication`, async () => {
    const got = await page.evaluate(async ({ n, transport, key, base }) => {
      const clients = [];
      const received = [];
      for (let i = 0; i < n; i++) {
        const c = new Centrifuge([{ transport, endpoint: `${base}/connection/${transport}` }],
          { emulationEndpoint: `${base}/emulation` });
        const s = c.newSubscription(`open:${transport}`);
        received.push(new Promise((resolve) => s.on('publication', (ctx) => resolve(ctx.data))));
        c.connect();
        s.subscribe();
        clients.push([c, s]);
      }
      await Promise.all(clients.map(([, s]) => s.ready(10000)));
      const r = await fetch('/api/publish', {
        method: 'POST',
        headers: { 'X-API-Key': key, 'Content-Type': 'application/json' },
        body: JSON.stringify({ channel: `open:${transport}`, data: { over: transport } }),
      });
      if (r.status !== 200) throw new Error(`publish: ${r.status}`);
      const data = await Promise.all(received);
      clients.forEach(([c]) => c.disconnect());
      return data;
    }, { n: STREAMS, transport, key: API_KEY, base });
    assert.deepEqual(got, Array(STREAMS).fill({ over: transport }));
    const protocols = await protocolsOf(`/connection/${transport}`);
    assert.ok(protocols.length >= STREAMS, JSON.stringify(protocols));
    assert.ok(protocols.every((p) => p === 'h2'), JSON.stringify(protocols));
    const emulation = await protocolsOf('/emulation');
    assert.ok(emulation.length >= STREAMS && emulation.every((p) => p === 'h2'), JSON.stringify(emulation));
  });
}

test('every stream the browser opens over HTTP/2 tells proxies not to buffer it', async () => {
  const heads = await page.evaluate(async () => {
    const connect = encodeURIComponent(JSON.stringify({ id: 1, connect: {} }));
    const requests = [
      ['GET', `/connection/sse?cf_connect=${connect}`],
      ['POST', '/connection/http_stream', JSON.stringify({ id: 1, connect: {} })],
      ['GET', '/connection/uni_sse?channel=open:headers'],
    ];
    const out = [];
    for (const [method, url, body] of requests) {
      const abort = new AbortController();
      const r = await fetch(url, { method, body, signal: abort.signal, headers: body ? { 'Content-Type': 'application/json' } : {} });
      // The first chunk: the stream is open and flowing.
      const reader = r.body.getReader();
      const first = new TextDecoder().decode((await reader.read()).value);
      abort.abort();
      out.push({
        url, status: r.status, first: first.length > 0,
        cache: r.headers.get('cache-control'), accel: r.headers.get('x-accel-buffering'),
      });
    }
    return out;
  });
  for (const h of heads) {
    assert.equal(h.status, 200, h.url);
    assert.ok(h.first, h.url);
    assert.match(h.cache, /no-cache/, h.url);
    assert.equal(h.accel, 'no', h.url);
  }
});

test('centrifuge-js over WebSocket: Chromium opens it as a stream of the HTTP/2 connection (RFC 8441), and it round-trips', async () => {
  // The browser's own record of the handshake: HTTP/2's extended CONNECT is answered
  // with 200, HTTP/1.1's upgrade with 101.
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Network.enable');
  const statuses = [];
  cdp.on('Network.webSocketHandshakeResponseReceived', (e) => statuses.push(e.response.status));
  const got = await page.evaluate(async ({ url, key }) => {
    const c = new Centrifuge(url);
    const s = c.newSubscription('open:ws');
    const received = new Promise((resolve) => s.on('publication', (ctx) => resolve(ctx.data)));
    const transport = new Promise((resolve) => c.on('connected', (ctx) => resolve(ctx.transport)));
    c.connect();
    s.subscribe();
    await s.ready(10000);
    const r = await fetch('/api/publish', {
      method: 'POST',
      headers: { 'X-API-Key': key, 'Content-Type': 'application/json' },
      body: JSON.stringify({ channel: 'open:ws', data: { over: 'websocket' } }),
    });
    if (r.status !== 200) throw new Error(`publish: ${r.status}`);
    const data = await received;
    c.disconnect();
    return { data, transport: await transport };
  }, { url: `${base.replace('https:', 'wss:')}/connection/websocket`, key: API_KEY });
  await cdp.detach();
  assert.deepEqual(got, { data: { over: 'websocket' }, transport: 'websocket' });
  assert.deepEqual(statuses, [200]);
});
