// WebSockets over HTTP/2 (RFC 8441) between a real Chromium and `volley echo
// --tls-self-signed`, which serves HTTP/1.1 and HTTP/2 over TLS (ALPN h2, http/1.1)
// with extended CONNECT announced, and a test page at GET /.
//
// Chromium sends a WebSocket over HTTP/2 only on an HTTP/2 connection it already has
// to the same origin whose SETTINGS carry SETTINGS_ENABLE_CONNECT_PROTOCOL. So the
// test loads the server's own page over https:// first (checking that the navigation
// used h2), then opens `wss://` + location.host from that page.
//
// How it proves the WebSocket ran over HTTP/2: the page cannot see the protocol of a
// WebSocket (and chrome://net-export is not available headless), so the proof is the
// server's own log. `volley echo` logs every WebSocket it accepts on this path at info
// level as `websocket accepted http_version=HTTP/2.0` (or `HTTP/1.1`), with the version
// taken from the request hyper handed to `volley::http::upgrade` (an HTTP/2 extended
// CONNECT, or an HTTP/1.1 GET with Upgrade). The test reads the server's stderr and
// requires exactly one accepted WebSocket, over HTTP/2.
//
// The control test runs Chromium with --disable-http2: the page then loads over
// http/1.1 and the same WebSocket must be accepted over HTTP/1.1 (what clients without
// HTTP/2 get from the same server), which shows the log check can fail.
//
// A third test needs no browser: node's own HTTP/2 client sends an extended CONNECT to
// `volley echo --h2c` (HTTP/2 with prior knowledge on plain TCP) and exchanges a frame.
//
// Run: scripts/browser-test.sh h2.test.mjs   (or: cd tests/browser && node --test h2.test.mjs)

import assert from 'node:assert/strict';
import http2 from 'node:http2';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { launchBrowser, runWsSession, startEchoServer } from './lib.mjs';

const TEXT = 'héllo over h2 ✓ 😀';
const BINARY = Uint8Array.from({ length: 256 }, (_, i) => i);
// Compressible and larger than one HTTP/2 DATA frame (16 KiB).
const LARGE_TEXT = 'volley over HTTP/2, extended CONNECT — ünïcødé\n'.repeat(2000);

// eslint-disable-next-line no-control-regex
const stripAnsi = (s) => s.replace(/\x1b\[[0-9;]*m/g, '');

/** The `websocket accepted` lines of the server's log so far, without colours. */
const acceptedLines = (server) =>
  stripAnsi(server.output())
    .split('\n')
    .filter((l) => l.includes('websocket accepted'));

/** Wait (briefly) until the server has logged `n` accepted WebSockets. */
async function waitForAccepted(server, n, timeoutMs = 3000) {
  const deadline = Date.now() + timeoutMs;
  while (acceptedLines(server).length < n && Date.now() < deadline) await sleep(20);
  return acceptedLines(server);
}

/**
 * Start `volley echo --tls-self-signed`, launch Chromium (certificate errors ignored:
 * the certificate is generated at startup), load https://127.0.0.1:PORT/ and run
 * `fn({ server, page, nav })`, where nav is the navigation's timing entry. Everything
 * is torn down afterwards; the server's log is appended to any error.
 */
async function withTlsEchoPage(t, browserArgs, fn) {
  let server, browser;
  const cleanup = () => Promise.allSettled([browser ? browser.close() : null, server ? server.stop() : null]);
  t.signal?.addEventListener('abort', () => void cleanup(), { once: true });
  try {
    server = await startEchoServer({ extraArgs: ['--tls-self-signed'], env: { NO_COLOR: '1' } });
    browser = await launchBrowser({ args: ['--ignore-certificate-errors', ...browserArgs] });
    const context = await browser.newContext({ ignoreHTTPSErrors: true });
    const page = await context.newPage();
    const origin = `https://${server.host}:${server.port}`;
    const response = await page.goto(`${origin}/`);
    assert.equal(response?.status(), 200, 'the test page loads');
    assert.match(await page.title(), /volley echo/);
    const nav = await page.evaluate(() => {
      const e = performance.getEntriesByType('navigation')[0];
      return { nextHopProtocol: e.nextHopProtocol, name: e.name };
    });
    return await fn({ server, page, origin, nav });
  } catch (err) {
    if (server && err && typeof err === 'object') {
      const status = server.exitStatus();
      err.message +=
        `\n--- server (${server.command}${status ? `, ${status}` : ', running'}) output ---\n` +
        (server.output() || '(none)');
    }
    throw err;
  } finally {
    await cleanup();
  }
}

function assertEchoes(r, context) {
  assert.ok(r.opened, `WebSocket did not open${context}`);
  assert.deepEqual(r.errors, [], `errors in the page${context}`);
  assert.equal(r.messages.length, 3, `number of echoes${context}`);
  assert.equal(r.messages[0], TEXT);
  assert.ok(Buffer.isBuffer(r.messages[1]), 'binary message must be echoed as binary');
  assert.deepEqual([...r.messages[1]], [...BINARY]);
  assert.equal(r.messages[2], LARGE_TEXT);
  assert.equal(r.close?.code, 1000, `close code${context}`);
  assert.equal(r.close?.wasClean, true, `wasClean${context}`);
}

test('Chromium: wss:// over HTTP/2 (RFC 8441 extended CONNECT) to the page\'s origin', { timeout: 60_000 }, async (t) => {
  await withTlsEchoPage(t, [], async ({ server, page, nav }) => {
    t.diagnostic(`navigation: ${nav.name} nextHopProtocol=${nav.nextHopProtocol}`);
    assert.equal(nav.nextHopProtocol, 'h2', 'the page must load over HTTP/2 (ALPN h2)');

    const url = await page.evaluate(() => 'wss://' + location.host + '/');
    const r = await runWsSession(page, { url, messages: [TEXT, BINARY, LARGE_TEXT], close: { code: 1000, reason: 'bye' } });
    const context = `\npage events:\n  ${r.events.join('\n  ')}\nerrors: ${JSON.stringify(r.errors)}`;
    t.diagnostic(`ws.extensions=${JSON.stringify(r.extensions)}`);
    assertEchoes(r, context);
    // Chromium offers permessage-deflate over HTTP/2 too; volley accepts it.
    assert.ok(r.extensions.startsWith('permessage-deflate'), `ws.extensions=${r.extensions}`);

    const lines = await waitForAccepted(server, 1);
    t.diagnostic(`server: ${lines.join(' | ')}`);
    assert.equal(lines.length, 1, `exactly one WebSocket accepted:\n${lines.join('\n')}`);
    assert.match(lines[0], /websocket accepted http_version=HTTP\/2\.0\b/, 'the WebSocket must run over HTTP/2');

    // The test page's own client: type, send, see the echo.
    await page.fill('#text', 'typed ✓');
    await page.click('button');
    await page.waitForFunction(() => document.getElementById('log').textContent.includes('< typed ✓'), null, {
      timeout: 10_000,
    });
    const more = await waitForAccepted(server, 2);
    assert.equal(more.length, 2, `the page's WebSocket was accepted:\n${more.join('\n')}`);
    assert.match(more[1], /websocket accepted http_version=HTTP\/2\.0\b/, "the page's WebSocket runs over HTTP/2 too");
  });
});

test('Chromium without HTTP/2: the same wss:// runs over HTTP/1.1', { timeout: 60_000 }, async (t) => {
  await withTlsEchoPage(t, ['--disable-http2'], async ({ server, page, nav }) => {
    t.diagnostic(`navigation: ${nav.name} nextHopProtocol=${nav.nextHopProtocol}`);
    assert.equal(nav.nextHopProtocol, 'http/1.1', 'with --disable-http2 the page loads over HTTP/1.1');

    const url = await page.evaluate(() => 'wss://' + location.host + '/');
    const r = await runWsSession(page, { url, messages: [TEXT, BINARY, LARGE_TEXT], close: { code: 1000, reason: 'bye' } });
    assertEchoes(r, `\npage events:\n  ${r.events.join('\n  ')}\nerrors: ${JSON.stringify(r.errors)}`);

    const lines = await waitForAccepted(server, 1);
    t.diagnostic(`server: ${lines.join(' | ')}`);
    assert.equal(lines.length, 1, `exactly one WebSocket accepted:\n${lines.join('\n')}`);
    assert.match(lines[0], /websocket accepted http_version=HTTP\/1\.1\b/, 'the WebSocket must run over HTTP/1.1');
  });
});

test('node http2 client: extended CONNECT to `volley echo --h2c`', { timeout: 30_000 }, async (t) => {
  const server = await startEchoServer({ extraArgs: ['--h2c'], env: { NO_COLOR: '1' } });
  const session = http2.connect(`http://${server.host}:${server.port}`);
  t.after(async () => {
    session.destroy();
    await server.stop();
  });
  session.on('error', () => {});
  const settings = await new Promise((resolve) => session.once('remoteSettings', resolve));
  assert.equal(settings.enableConnectProtocol, true, 'SETTINGS_ENABLE_CONNECT_PROTOCOL');

  const stream = session.request({
    ':method': 'CONNECT',
    ':protocol': 'websocket',
    ':scheme': 'http',
    ':path': '/h2c?x=1',
    ':authority': `${server.host}:${server.port}`,
    'sec-websocket-version': '13',
  });
  const headers = await new Promise((resolve, reject) => {
    stream.once('response', resolve);
    stream.once('error', reject);
  });
  assert.equal(headers[':status'], 200);
  // A masked text frame "hi" (RFC 8441 keeps RFC 6455 framing, masking included).
  const mask = [1, 2, 3, 4];
  const payload = Buffer.from('hi');
  stream.write(Buffer.from([0x81, 0x80 | payload.length, ...mask, ...payload.map((b, i) => b ^ mask[i % 4])]));
  const echo = await new Promise((resolve) => stream.once('data', resolve));
  assert.deepEqual([...echo], [0x81, 2, 0x68, 0x69], 'the unmasked echo');

  const lines = await waitForAccepted(server, 1);
  assert.match(lines[0] ?? '', /websocket accepted http_version=HTTP\/2\.0\b.*path="\/h2c\?x=1"/);
});
