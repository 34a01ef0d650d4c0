// The chat example (crates/volley/examples/chat.rs) in a real (headless) Chromium: two
// tabs join the room, see each other, exchange messages that show in both tabs at once,
// and the first tab sees the second leave; once over http:// (WebSocket over HTTP/1.1)
// and once over https:// with --tls-self-signed (page and WebSocket over HTTP/2). Also checks the example's HTTP routing and
// its limits (message size, empty names). Leaves a screenshot of tab 1 in
// $CHAT_SCREENSHOT (default: chat.png in the system's temporary directory).
//
// Build first: cargo build --release -p volley --example chat
// Run: scripts/browser-test.sh chat.test.mjs   (or: cd tests/browser && node --test chat.test.mjs)
//
// Environment:
//   CHAT_BIN         the example binary (default: $CARGO_TARGET_DIR/release/examples/chat,
//                    or target/release/examples/chat; relative to the repository root)
//   CHAT_SCREENSHOT  where to save the screenshot of tab 1 (default: chat.png in os.tmpdir())

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { test } from 'node:test';
import { REPO_ROOT, freePort, launchBrowser, waitForPort } from './lib.mjs';

const STEP_MS = 10_000; // bound on every wait for the page

/** Path of the chat example binary. */
function chatBin() {
  const bin = process.env.CHAT_BIN || path.join(process.env.CARGO_TARGET_DIR || 'target', 'release', 'examples', 'chat');
  return path.resolve(REPO_ROOT, bin);
}

// A chat server still running when node exits (say the test timed out) is killed here.
const live = new Set();
process.once('exit', () => {
  for (const p of live) {
    try {
      p.kill('SIGKILL');
    } catch {}
  }
});

/** Start the example on a free port (with `extraArgs`); returns { url, output(), stop() }. */
async function startChat({ extraArgs = [], scheme = 'http' } = {}) {
  const bin = chatBin();
  if (!existsSync(bin)) {
    throw new Error(`chat binary not found: ${bin}\nbuild it with \`cargo build --release -p volley --example chat\`, or set CHAT_BIN`);
  }
  const host = '127.0.0.1';
  const port = await freePort(host);
  const proc = spawn(bin, ['--listen', `${host}:${port}`, ...extraArgs], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(proc);
  let out = '';
  const keep = (chunk) => {
    out = (out + chunk).slice(-32 * 1024);
  };
  proc.stdout.setEncoding('utf8').on('data', keep);
  proc.stderr.setEncoding('utf8').on('data', keep);
  let status = null;
  const exited = new Promise((resolve) => {
    proc.once('error', (err) => {
      status = `spawn error: ${err.message}`;
      resolve();
    });
    proc.once('exit', (code, signal) => {
      status = signal ? `signal ${signal}` : `exit code ${code}`;
      resolve();
    });
  }).then(() => live.delete(proc));
  const server = {
    url: `${scheme}://${host}:${port}/`,
    output: () => out,
    async stop() {
      if (!status) {
        proc.kill('SIGTERM');
        if (!(await Promise.race([exited.then(() => true), sleep(3000, false, { ref: false })]))) {
          proc.kill('SIGKILL');
          await exited;
        }
      }
    },
  };
  try {
    await waitForPort(host, port, { isDead: () => status });
  } catch (err) {
    await server.stop();
    err.message += `\n--- chat output ---\n${out || '(none)'}`;
    throw err;
  }
  return server;
}

/** Chat messages in a tab's log, as [{ from, text }]. */
const chatLines = (page) =>
  page.$$eval('#log .msg', (els) => els.map((e) => ({ from: e.dataset.from, text: e.querySelector('.text').textContent })));

/** Wait until the tab's log shows `from: text` as a chat message. */
async function waitForChat(page, from, text) {
  await page.waitForFunction(
    ([from, text]) =>
      [...document.querySelectorAll('#log .msg')].some(
        (e) => e.dataset.from === from && e.querySelector('.text').textContent === text,
      ),
    [from, text],
    { timeout: STEP_MS },
  );
}

/** Wait until the tab's log has a system line equal to `text`. */
async function waitForSystem(page, text) {
  await page.waitForFunction(
    (text) => [...document.querySelectorAll('#log .system')].some((e) => e.textContent === text),
    text,
    { timeout: STEP_MS },
  );
}

/** Wait until the tab's member list is exactly `names` (in order). */
async function waitForMembers(page, names) {
  await page.waitForFunction(
    (names) => JSON.stringify([...document.querySelectorAll('#members li')].map((li) => li.textContent)) === JSON.stringify(names),
    names,
    { timeout: STEP_MS },
  );
}

/** The tab's own name, once the server has assigned it. */
async function ownName(page) {
  await page.waitForFunction(() => document.getElementById('me').textContent !== '…', null, { timeout: STEP_MS });
  return page.textContent('#me');
}

/**
 * PAGE-SIDE: open a raw socket to the chat, send each of `requests` (JSON) and collect
 * the events that follow, until `errors` events of type 'error' arrived (or the
 * socket closed, or `timeoutMs` passed); returns { events, open }.
 */
async function rawSession({ requests, errors: wantErrors, timeoutMs }) {
  const url = new URL('/ws', location.href);
  url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const ws = new WebSocket(url);
  const events = [];
  const done = new Promise((resolve) => {
    const timer = setTimeout(resolve, timeoutMs);
    ws.onmessage = (e) => {
      events.push(JSON.parse(e.data));
      if (events.filter((ev) => ev.type === 'error').length >= wantErrors) {
        clearTimeout(timer);
        resolve();
      }
    };
    ws.onclose = () => {
      clearTimeout(timer);
      resolve();
    };
  });
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = () => reject(new Error('raw socket failed to open'));
  });
  for (const r of requests) ws.send(JSON.stringify(r));
  await done;
  const open = ws.readyState === WebSocket.OPEN;
  ws.close();
  return { events, open };
}

test('Chromium: two tabs chat through the chat example (http://, ws:// over HTTP/1.1)', { timeout: 90_000 }, (t) =>
  twoTabs(t, { tls: false }),
);

// With TLS the page loads over HTTP/2 (ALPN h2) and Chromium opens the chat's WebSocket
// as an extended CONNECT on that connection (RFC 8441). The proof that it did: the
// server's `welcome` event names the HTTP version of the request it upgraded, and the
// server logs it ("joined over HTTP/2.0").
test('Chromium: two tabs chat over https:// and wss:// on HTTP/2 (RFC 8441)', { timeout: 90_000 }, (t) =>
  twoTabs(t, { tls: true }),
);

async function twoTabs(t, { tls }) {
  const started = Date.now();
  let server, browser;
  const consoleLines = [];
  const cleanup = () => Promise.allSettled([browser?.close(), server?.stop()]);
  t.signal.addEventListener('abort', () => void cleanup(), { once: true });
  try {
    server = await startChat(tls ? { extraArgs: ['--tls-self-signed'], scheme: 'https' } : {});
    t.diagnostic(`chat at ${server.url}`);

    if (!tls) {
      // Plain HTTP on the same port: the page, a 404 and a bare GET /ws.
      const page0 = await fetch(server.url, { signal: AbortSignal.timeout(STEP_MS) });
      assert.equal(page0.status, 200);
      assert.match(page0.headers.get('content-type'), /^text\/html/);
      assert.match(await page0.text(), /<title>Volley chat<\/title>/);
      const missing = await fetch(new URL('/nope', server.url), { signal: AbortSignal.timeout(STEP_MS) });
      assert.equal(missing.status, 404);
      await missing.arrayBuffer();
      const bare = await fetch(new URL('/ws', server.url), { signal: AbortSignal.timeout(STEP_MS) });
      assert.equal(bare.status, 426, 'GET /ws without an upgrade');
      await bare.arrayBuffer();
    }

    // The certificate is generated at startup: the browser is told to accept it.
    browser = await launchBrowser(tls ? { args: ['--ignore-certificate-errors'] } : {});
    const context = await browser.newContext({ viewport: { width: 960, height: 600 }, ignoreHTTPSErrors: tls });
    const watch = (page, tag) => {
      page.on('console', (m) => consoleLines.push(`[${tag} ${m.type()}] ${m.text()}`));
      page.on('pageerror', (e) => consoleLines.push(`[${tag} pageerror] ${e.message}`));
    };
    const tab1 = await context.newPage();
    watch(tab1, 'tab1');
    await tab1.goto(server.url);
    const name1 = await ownName(tab1);
    assert.match(name1, /^guest-\d+$/, 'tab 1 gets a guest name');
    const nav = await tab1.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol);
    const wsHttp = await tab1.evaluate(() => document.body.dataset.http);
    t.diagnostic(`page over ${nav}, WebSocket over ${wsHttp}`);
    assert.equal(nav, tls ? 'h2' : 'http/1.1', 'the page\'s HTTP version');
    assert.equal(wsHttp, tls ? 'HTTP/2' : 'HTTP/1.1', 'the WebSocket\'s HTTP version, as the server saw it');
    await waitForSystem(tab1, `${name1} joined (you)`);

    // Tab 2 picks its own name (URL-encoded, with a space and a non-ASCII letter).
    const name2 = 'Zoë B';
    const tab2 = await context.newPage();
    watch(tab2, 'tab2');
    await tab2.goto(`${server.url}?name=${encodeURIComponent(name2)}`);
    assert.equal(await ownName(tab2), name2, 'tab 2 keeps the name it asked for');

    await waitForSystem(tab1, `${name2} joined`);
    await waitForMembers(tab1, [name1, name2]);
    await waitForMembers(tab2, [name1, name2]);
    assert.equal(await tab1.textContent('#status'), 'online');

    // Tab 1 types and presses Enter: both tabs show it, from tab 1's name.
    const text1 = 'hello from tab 1 ✓';
    await tab1.fill('#input', text1);
    await tab1.press('#input', 'Enter');
    await Promise.all([waitForChat(tab1, name1, text1), waitForChat(tab2, name1, text1)]);
    assert.equal(await tab1.inputValue('#input'), '', 'the input is cleared after sending');

    // Tab 2 types markup and clicks Send: shown as text, not HTML, in both tabs.
    const text2 = 'hi <b>there</b> & "welcome" 😀';
    await tab2.fill('#input', text2);
    await tab2.click('#send');
    await Promise.all([waitForChat(tab1, name2, text2), waitForChat(tab2, name2, text2)]);
    assert.equal(await tab1.$$eval('#log b', (els) => els.length), 0, 'no markup injected');

    // Same order in both tabs; only one's own messages are highlighted.
    const expected = [
      { from: name1, text: text1 },
      { from: name2, text: text2 },
    ];
    assert.deepEqual(await chatLines(tab1), expected);
    assert.deepEqual(await chatLines(tab2), expected);
    assert.deepEqual(await tab1.$$eval('#log .msg.mine', (els) => els.map((e) => e.dataset.from)), [name1]);
    assert.deepEqual(await tab2.$$eval('#log .msg.mine', (els) => els.map((e) => e.dataset.from)), [name2]);

    // Tab 2 closes: tab 1 sees it leave and the member list shrink.
    await tab2.close();
    await waitForSystem(tab1, `${name2} left`);
    await waitForMembers(tab1, [name1]);

    const shot = process.env.CHAT_SCREENSHOT || path.join(tmpdir(), 'chat.png');
    await tab1.screenshot({ path: shot });
    t.diagnostic(`screenshot of tab 1: ${shot}`);

    // Limits, over a raw socket from tab 1's origin: an over-long message and an empty
    // name are refused with an error event, and the connection stays open.
    const r = await tab1.evaluate(rawSession, {
      requests: [
        { type: 'message', text: 'x'.repeat(4097) },
        { type: 'rename', name: '   ' },
        { type: 'message', text: 'y'.repeat(4096) },
      ],
      errors: 2,
      timeoutMs: STEP_MS,
    });
    const errors = r.events.filter((e) => e.type === 'error').map((e) => e.error);
    assert.equal(errors.length, 2, `errors: ${JSON.stringify(r.events)}`);
    assert.match(errors[0], /too long/);
    assert.match(errors[1], /empty/);
    assert.ok(r.open, 'the socket stays open after refused requests');
    const raw = r.events.find((e) => e.type === 'welcome').name;
    await waitForChat(tab1, raw, 'y'.repeat(4096));
    assert.equal((await chatLines(tab1)).filter((l) => l.text.startsWith('x')).length, 0, 'the long message is dropped');
    await waitForSystem(tab1, `${raw} left`);

    // `/nick NAME` renames tab 1.
    await tab1.fill('#input', '/nick Alice');
    await tab1.press('#input', 'Enter');
    await waitForSystem(tab1, `${name1} is now Alice`);
    assert.equal(await tab1.textContent('#me'), 'Alice');
    await waitForMembers(tab1, ['Alice']);
    if (tls) {
      assert.match(server.output(), /joined over HTTP\/2\.0/, 'the server logged a member over HTTP/2');
      assert.doesNotMatch(server.output(), /joined over HTTP\/1\.1/, 'no member over HTTP/1.1');
    }

    t.diagnostic(`took ${Date.now() - started} ms`);
  } catch (err) {
    if (err && typeof err === 'object') {
      err.message +=
        `\n--- chat output ---\n${server?.output() || '(none)'}` +
        (consoleLines.length ? `\n--- page console ---\n${consoleLines.join('\n')}` : '');
    }
    throw err;
  } finally {
    await cleanup();
  }
}
