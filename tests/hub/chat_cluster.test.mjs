// The chat demo of `volley serve` on two nodes sharing one Redis, in headless Chromium:
// tabs on different nodes see each other present, each other's messages and joins and
// leaves, and a tab opened on either node gets the last messages; a tab whose node is
// killed comes back through the load balancer on the other node and gets the messages
// sent meanwhile; a page that can only long-poll, its polls and commands sent to either
// node in turn (no sticky sessions), chats as well.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { launchChromium, messages, people, present, say, tab as openTab } from './chat_page.mjs';
import { balancer, startRedis, startServe } from './lib.mjs';
import { uniquePrefix } from './nodes.mjs';

let redis;
let browser;

before(async () => {
  redis = await startRedis();
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await redis?.stop();
});

/**
 * Two nodes of the demo (no configuration file) on the Redis broker, with `args` added,
 * stopped when `t` ends.
 */
async function demoNodes(t, args = []) {
  const prefix = uniquePrefix();
  // The demo signs its tokens with a key of its own, random unless set: the nodes share
  // one, so that a token one node gave is good on the other.
  const secret = `demo-secret-${prefix}`;
  const nodes = [];
  t.after(() => Promise.all(nodes.map((n) => n.stop('SIGKILL'))));
  for (let i = 0; i < 2; i++) {
    nodes.push(await startServe(['--listen', '127.0.0.1:0', '--set', 'broker.type=redis',
      '--set', `broker.redis.addresses=${JSON.stringify([redis.url])}`, '--set', `broker.redis.prefix=${prefix}`,
      '--set', `client.token.hmac_secret_key=${secret}`, ...args]));
  }
  return nodes;
}

const tab = (base) => openTab(browser, base);

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

test('a page that can only long-poll, its polls and commands sent to either node in turn, chats with a tab on the other node', async (t) => {
  // A poll with nothing to take is answered 204 after 2 s (25 s by default).
  const [x, y] = await demoNodes(t, ['--set', 'long_poll.timeout=2s']);
  const context = await browser.newContext();
  // No WebSocket, no EventSource, no streaming fetch: the chat falls back to long polling.
  await context.addInitScript('delete window.WebSocket; delete window.EventSource; delete window.ReadableStream; delete Response.prototype.body;');
  const page = await context.newPage();
  // As a load balancer without sticky sessions would: each poll and each command goes to
  // the next node in turn, whichever holds the session.
  const sent = { poll: { [x.base]: 0, [y.base]: 0 }, command: { [x.base]: 0, [y.base]: 0 } };
  // A turn per kind: with one counter for both, polls and commands that alternate would
  // send every command to the same node.
  const turn = { poll: 0, command: 0 };
  const spread = (kind) => async (route) => {
    const target = [y, x][turn[kind]++ % 2].base;
    sent[kind][target] += 1;
    const u = new URL(route.request().url());
    // Sent on by the test to another host than the page's: without the page's Origin,
    // which that host would refuse (behind a real balancer, Origin and Host agree).
    const { origin, ...headers } = route.request().headers();
    try {
      const response = await route.fetch({ url: `${target}${u.pathname}${u.search}`, headers, timeout: 20000 });
      await route.fulfill({ response });
    } catch {
      await route.abort().catch(() => {});
    }
  };
  await page.route('**/connection/long_poll*', spread('poll'));
  await page.route('**/emulation', spread('command'));
  await page.goto(x.base);
  await page.waitForFunction(() => document.body.dataset.state === 'connected', null, { timeout: 20000 });
  assert.equal(await page.getAttribute('#transport', 'data-transport'), 'long_poll');
  const a = { page, name: await page.evaluate(() => window.demo.name) };
  const b = await tab(y.base);
  await present(a.page, b.name);
  await present(b.page, a.name);
  for (let i = 1; i <= 3; i++) {
    await say(a.page, `poll ${i}`);
    await say(b.page, `ws ${i}`);
  }
  for (const { page: p } of [a, b]) {
    await p.waitForFunction(() => document.querySelectorAll('#log li.message').length >= 6, null, { timeout: 20000 });
  }
  const want = [1, 2, 3].flatMap((i) => [`${a.name}poll ${i}`, `${b.name}ws ${i}`]).sort();
  assert.deepEqual((await messages(a.page)).sort(), want);
  assert.deepEqual(await messages(b.page), await messages(a.page));
  for (const kind of ['poll', 'command']) {
    assert.ok(Object.values(sent[kind]).every((n) => n > 0), `${kind}s to both nodes: ${JSON.stringify(sent[kind])}`);
  }
  await a.page.context().close();
  await b.page.context().close();
});
