// The chat demo of `volley serve` on two nodes sharing one Redis, in headless Chromium:
// tabs on different nodes see each other present, each other's messages and joins and
// leaves, and a tab opened on either node gets the last messages; a tab whose node is
// killed comes back through the load balancer on the other node and gets the messages
// sent meanwhile.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { chromium } from 'playwright-core';
import { balancer, startRedis, startServe } from './lib.mjs';
import { uniquePrefix } from './nodes.mjs';

const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

let redis;
let browser;

before(async () => {
  redis = await startRedis();
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium', args: CHROMIUM_ARGS });
});

after(async () => {
  await browser?.close();
  await redis?.stop();
});

/** Two nodes of the demo (no configuration file) on the Redis broker, stopped when `t` ends. */
async function demoNodes(t) {
  const prefix = uniquePrefix();
  const nodes = [];
  t.after(() => Promise.all(nodes.map((n) => n.stop('SIGKILL'))));
  for (let i = 0; i < 2; i++) {
    nodes.push(await startServe(['--listen', '127.0.0.1:0', '--set', 'broker.type=redis',
      '--set', `broker.redis.addresses=${JSON.stringify([redis.url])}`, '--set', `broker.redis.prefix=${prefix}`]));
  }
  return nodes;
}

async function tab(base) {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(base);
  await page.waitForFunction(() => document.body.dataset.state === 'connected', null, { timeout: 10000 });
  const name = await page.evaluate(() => window.demo.name);
  return { page, name };
}

async function say(page, text) {
  await page.fill('#text', text);
  await page.click('form button');
}

const messages = (page) => page.$$eval('#log li.message', (lis) => lis.map((li) => li.textContent));
const people = (page) => page.$$eval('#people li', (lis) => lis.map((li) => li.textContent).sort());
const present = (page, name) => page.waitForFunction(
  (n) => [...document.querySelectorAll('#people li')].some((li) => li.textContent === n), name);

test('tabs on two nodes see each other, each other\'s messages, joins and leaves, and the last messages on load', async (t) => {
  const [x, y] = await demoNodes(t);
  const a = await tab(x.base);
  const b = await tab(y.base);
  await present(a.page, b.name);
  await present(b.page, a.name);
  assert.deepEqual(await people(a.page), [a.name, b.name].sort());
  assert.deepEqual(await people(b.page), [a.name, b.name].sort());
  await a.page.waitForFunction((n) => document.getElementById('log').textContent.includes(`${n} joined`), b.name);

  await say(a.page, 'hello from node A');
  await say(b.page, 'hello from node B');
  for (const { page } of [a, b]) {
    await page.waitForFunction(() => document.querySelectorAll('#log li.message').length >= 2);
  }
  assert.deepEqual(await messages(a.page), [`${a.name}hello from node A`, `${b.name}hello from node B`]);
  assert.deepEqual(await messages(b.page), await messages(a.page));

  // A tab on each node gets the last messages on load, and is seen joining on the other.
  for (const node of [x, y]) {
    const c = await tab(node.base);
    await c.page.waitForFunction(() => document.querySelectorAll('#log li.message').length >= 2);
    assert.deepEqual(await messages(c.page), await messages(a.page));
    await present(node === x ? b.page : a.page, c.name);
    // Leaving shows on the other node.
    await c.page.context().close();
    const other = node === x ? b.page : a.page;
    await other.waitForFunction((n) => document.getElementById('log').textContent.includes(`${n} left`), c.name);
  }
  assert.deepEqual(await people(a.page), [a.name, b.name].sort());
  await a.page.context().close();
  await b.page.context().close();
});

test('a tab whose node is killed comes back on the other node and gets the messages sent meanwhile, once each', async (t) => {
  const [x, y] = await demoNodes(t);
  const lb = await balancer([x.addr, y.addr]);
  t.after(() => lb.close());
  const a = await tab(`http://${lb.addr}`);
  assert.equal(lb.connections()[x.addr] > 0, true, 'the tab is on node A');
  const b = await tab(y.base);
  await present(a.page, b.name);
  await say(b.page, 'before');
  await a.page.waitForFunction(() => document.querySelectorAll('#log li.message').length >= 1);
  const before = (await messages(a.page)).length;
  // Away for a moment: node A dies, and the tab waits a little before reconnecting.
  await a.page.evaluate(() => { window.demo.hub.minDelay = 1500; });
  await x.stop('SIGKILL');
  await a.page.waitForFunction(() => document.body.dataset.state === 'connecting');
  for (const text of ['one', 'two', 'three']) await say(b.page, text);
  await a.page.waitForFunction(() => document.body.dataset.state === 'connected', null, { timeout: 15000 });
  await a.page.waitForFunction((n) => document.querySelectorAll('#log li.message').length >= n, before + 3);
  const got = (await messages(a.page)).slice(before);
  assert.deepEqual(got, [`${b.name}one`, `${b.name}two`, `${b.name}three`]);
  assert.match(await a.page.textContent('#log'), /3 missed message\(s\) recovered/);
  assert.equal(lb.connections()[y.addr] > 0, true, 'the tab came back on node B');
  // Still one chat: a message from the tab, now on node B, reaches the other.
  await say(a.page, 'back');
  await b.page.waitForFunction((text) => document.getElementById('log').textContent.includes(text), 'back');
  await a.page.context().close();
  await b.page.context().close();
});
