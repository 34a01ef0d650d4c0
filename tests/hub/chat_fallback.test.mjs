// The chat demo of `volley serve` in headless Chromium on pages that lack what the
// faster transports need, or whose network refuses them: the client falls back by
// itself (WebSocket, then HTTP streaming or SSE, then long polling), two tabs still see
// each other's messages, who is present and who joins, and the page says which
// transport it uses. On each, a tab whose connection dropped comes back over it and
// gets the messages sent meanwhile; over long polling, a tab that goes away is seen
// leaving.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { chromium } from 'playwright-core';
import { startServe } from './lib.mjs';

const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

// What a page is made to lack, run before its own scripts.
const NO_WEBSOCKET = 'delete window.WebSocket;';
// A WebSocket whose upgrade the network refuses: it fails before it opens.
const REFUSED_WEBSOCKET = `{
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(url, protocols) { super(String(url).replace('/connection/websocket', '/connection/refused'), protocols); }
  };
}`;
const NO_EVENTSOURCE = 'delete window.EventSource;';
// fetch stays, but its responses cannot be read as a stream.
const NO_STREAMING_FETCH = 'delete window.ReadableStream; delete Response.prototype.body;';

let server;
let base;
let browser;

before(async () => {
  // A session whose client stops polling ends after 2 s (15 s by default), so that a
  // tab that went away is seen leaving soon.
  server = await startServe(['--listen', '127.0.0.1:0', '--set', 'long_poll.session_ttl=2s', '--set', 'long_poll.timeout=5s']);
  base = server.base;
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium', args: CHROMIUM_ARGS });
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

// A tab of the chat with `init` run first on its page; the paths it requested
// (WebSockets included).
async function tab(init) {
  const context = await browser.newContext();
  await context.addInitScript(init);
  const page = await context.newPage();
  const paths = [];
  page.on('request', (r) => paths.push(new URL(r.url()).pathname));
  page.on('websocket', (ws) => paths.push(new URL(ws.url()).pathname));
  await page.goto(base);
  await page.waitForFunction(() => document.body.dataset.state === 'connected', null, { timeout: 20000 });
  const name = await page.evaluate(() => window.demo.name);
  return { page, name, paths };
}

async function say(page, text) {
  await page.fill('#text', text);
  await page.click('form button');
}

const messages = (page) => page.$$eval('#log li.message', (lis) => lis.map((li) => li.textContent));
const people = (page) => page.$$eval('#people li', (lis) => lis.map((li) => li.textContent).sort());
const transport = async (page) => [await page.getAttribute('#transport', 'data-transport'), await page.textContent('#transport')];
const present = (page, name) => page.waitForFunction(
  (n) => [...document.querySelectorAll('#people li')].some((li) => li.textContent === n), name, { timeout: 20000 });
const logSays = (page, text) => page.waitForFunction(
  (t) => document.getElementById('log').textContent.includes(t), text, { timeout: 30000 });

// Two tabs made to lack what `a` and `b` say: each is on `want` and says so, sees the
// other present and joining, and both see both messages in the same order.
async function twoTabsChat(a, b, want, label, tag) {
  const x = await tab(a);
  const y = await tab(b);
  for (const t of [x, y]) assert.deepEqual(await transport(t.page), [want, `over ${label}`]);
  await present(x.page, y.name);
  await present(y.page, x.name);
  assert.deepEqual(await people(x.page), [x.name, y.name].sort());
  assert.deepEqual(await people(y.page), [x.name, y.name].sort());
  await logSays(x.page, `${y.name} joined`);

  const texts = [`${tag}: hello from x`, `${tag}: hello from y`];
  await say(x.page, texts[0]);
  await x.page.waitForFunction((t) => [...document.querySelectorAll('#log li.message')].some((li) => li.textContent.endsWith(t)), texts[0]);
  await say(y.page, texts[1]);
  const mine = (all) => all.filter((m) => m.includes(`${tag}: `));
  for (const { page } of [x, y]) {
    await page.waitForFunction((ts) => ts.every((t) => document.getElementById('log').textContent.includes(t)), texts);
  }
  const want2 = [`${x.name}${texts[0]}`, `${y.name}${texts[1]}`];
  assert.deepEqual(mine(await messages(x.page)), want2);
  assert.deepEqual(mine(await messages(y.page)), want2);
  return [x, y];
}

// x's connection drops and stays away a moment while y says three things: x comes back
// over the same transport and gets them, once each, in order.
async function dropAndRecover(x, y, want) {
  const before = (await messages(x.page)).length;
  await x.page.evaluate(() => { window.demo.hub.minDelay = 1500; window.demo.hub.transport.close(); });
  await x.page.waitForFunction(() => document.body.dataset.state === 'connecting');
  const said = [`${want} one`, `${want} two`, `${want} three`];
  for (const t of said) await say(y.page, t);
  await x.page.waitForFunction(() => document.body.dataset.state === 'connected', null, { timeout: 20000 });
  await x.page.waitForFunction((n) => document.querySelectorAll('#log li.message').length >= n, before + 3, { timeout: 20000 });
  assert.deepEqual((await messages(x.page)).slice(before), said.map((t) => `${y.name}${t}`));
  await logSays(x.page, '3 missed message(s) recovered');
  assert.equal(await x.page.getAttribute('#transport', 'data-transport'), want);
}

test('with WebSocket missing from one page and refused to the other, two tabs chat over HTTP streaming and recover', async () => {
  const [x, y] = await twoTabsChat(NO_WEBSOCKET, REFUSED_WEBSOCKET, 'http_stream', 'HTTP streaming', 'stream');
  assert.equal(await x.page.evaluate(() => typeof window.WebSocket), 'undefined');
  assert.ok(!x.paths.includes('/connection/websocket'), x.paths.join(' '));
  // The refused WebSocket was tried first, then the stream.
  const i = y.paths.indexOf('/connection/refused');
  assert.ok(i >= 0 && y.paths.indexOf('/connection/http_stream') > i, y.paths.join(' '));
  assert.ok(x.paths.includes('/connection/http_stream'), x.paths.join(' '));
  assert.ok(x.paths.includes('/emulation'), 'commands go to /emulation');
  await dropAndRecover(x, y, 'http_stream');
  for (const t of [x, y]) await t.page.context().close();
});

test('with WebSocket and streaming fetch missing, two tabs chat over SSE and recover', async () => {
  const init = NO_WEBSOCKET + NO_STREAMING_FETCH;
  const [x, y] = await twoTabsChat(init, init, 'sse', 'SSE', 'sse');
  assert.deepEqual(await x.page.evaluate(() => [typeof ReadableStream, 'body' in Response.prototype]), ['undefined', false]);
  assert.ok(x.paths.includes('/connection/sse') && !x.paths.includes('/connection/http_stream'), x.paths.join(' '));
  await dropAndRecover(x, y, 'sse');
  for (const t of [x, y]) await t.page.context().close();
});

test('with WebSocket, EventSource and streaming fetch missing, two tabs chat over long polling, recover and leave', async () => {
  const init = NO_WEBSOCKET + NO_EVENTSOURCE + NO_STREAMING_FETCH;
  const [x, y] = await twoTabsChat(init, init, 'long_poll', 'long polling', 'poll');
  assert.deepEqual(
    await x.page.evaluate(() => [typeof WebSocket, typeof EventSource, typeof ReadableStream, 'body' in Response.prototype]),
    ['undefined', 'undefined', 'undefined', false],
  );
  for (const t of [x, y]) {
    assert.ok(t.paths.includes('/connection/long_poll'), t.paths.join(' '));
    for (const p of ['/connection/websocket', '/connection/http_stream', '/connection/sse']) assert.ok(!t.paths.includes(p), p);
  }

  // A third tab gets the last messages on load.
  const z = await tab(init);
  await z.page.waitForFunction(() => document.getElementById('log').textContent.includes('poll: hello from y'));
  assert.deepEqual((await messages(z.page)).slice(-2), (await messages(x.page)).slice(-2));
  await present(x.page, z.name);

  await dropAndRecover(x, y, 'long_poll');

  // A tab that goes away stops polling: the others see it leave.
  await z.page.context().close();
  await logSays(x.page, `${z.name} left`);
  await logSays(y.page, `${z.name} left`);
  for (const t of [x, y]) await t.page.context().close();
});
