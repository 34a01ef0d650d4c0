// The chat demo of `volley serve` (its default configuration, no config file) in
// headless Chromium: two tabs see each other's messages, who is present, joins and
// leaves, the last messages on load; a tab whose connection drops gets the messages
// sent meanwhile when it comes back.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { launchChromium, messages, people, say, tab as openTab } from './chat_page.mjs';
import { startServe } from './lib.mjs';

let server;
let base;
let browser;

before(async () => {
  server = await startServe(['--listen', '127.0.0.1:0']);
  base = server.base;
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

const tab = () => openTab(browser, base);

test('two tabs see each other, each other\'s messages, joins and leaves, and the last messages on load', async () => {
  const a = await tab();
  const b = await tab();
  await a.page.waitForFunction((n) => [...document.querySelectorAll('#people li')].some((li) => li.textContent === n), b.name);
  // Nothing in the way of WebSocket: the page says it uses it.
  assert.equal(await a.page.getAttribute('#transport', 'data-transport'), 'websocket');
  assert.match(await a.page.textContent('#transport'), /WebSocket/);
  assert.deepEqual(await people(a.page), [a.name, b.name].sort());
  assert.deepEqual(await people(b.page), [a.name, b.name].sort());
  await a.page.waitForFunction((n) => document.getElementById('log').textContent.includes(`${n} joined`), b.name);

  await say(a.page, 'hello from a');
  await say(b.page, 'hello from b');
  for (const { page } of [a, b]) {
    await page.waitForFunction(() => document.querySelectorAll('#log li.message').length >= 2);
  }
  assert.deepEqual(await messages(a.page), [`${a.name}hello from a`, `${b.name}hello from b`]);
  assert.deepEqual(await messages(b.page), await messages(a.page));

  // A third tab gets the last messages on load.
  const c = await tab();
  await c.page.waitForFunction(() => document.querySelectorAll('#log li.message').length >= 2);
  assert.deepEqual(await messages(c.page), await messages(a.page));

  // Leaving shows on the others.
  await c.page.context().close();
  await a.page.waitForFunction((n) => document.getElementById('log').textContent.includes(`${n} left`), c.name);
  assert.deepEqual(await people(a.page), [a.name, b.name].sort());
  await a.page.context().close();
  await b.page.context().close();
});

test('a tab whose connection dropped gets the messages sent meanwhile, once each', async () => {
  const a = await tab();
  const b = await tab();
  const before = (await messages(a.page)).length;
  // Drop a's connection and keep it away for a moment.
  await a.page.evaluate(() => { window.demo.hub.minDelay = 1500; window.demo.hub.transport.close(); });
  await a.page.waitForFunction(() => document.body.dataset.state === 'connecting');
  for (const t of ['one', 'two', 'three']) await say(b.page, t);
  await a.page.waitForFunction(() => document.body.dataset.state === 'connected', null, { timeout: 10000 });
  await a.page.waitForFunction((n) => document.querySelectorAll('#log li.message').length >= n, before + 3);
  const got = (await messages(a.page)).slice(before);
  assert.deepEqual(got, [`${b.name}one`, `${b.name}two`, `${b.name}three`]);
  assert.match(await a.page.textContent('#log'), /3 missed message\(s\) recovered/);
  await a.page.context().close();
  await b.page.context().close();
});
