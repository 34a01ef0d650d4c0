// permessage-deflate (RFC 7692) between a real Chromium and `volley echo`.
//
// A byte-counting TCP proxy sits between the page and the server, so the test sees
// what actually crosses the wire: with deflate negotiated, ~300 KB of compressible
// payload must travel as a small fraction of that in BOTH directions (the browser
// compresses what it sends, the server compresses its echoes). The control test runs
// the same session against `volley echo --no-deflate` and checks that then the wire
// carries at least the payload size, i.e. that the compression assertion can fail.
//
// Run: scripts/browser-test.sh deflate.test.mjs   (or: cd tests/browser && node --test)

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runWsSession, startByteCountingProxy, withEchoPage } from './lib.mjs';

// ~200 KB of highly compressible text: one sentence repeated, with a line counter and
// a rotating word so it is not a single literal repeat; a little non-ASCII throughout.
const WORDS = ['amber', 'birch', 'cobalt', 'dune', 'ember', 'fjord', 'garnet'];
const BIG_TEXT = (() => {
  const lines = [];
  let bytes = 0;
  for (let i = 0; bytes < 200_000; i++) {
    const line = `${i}: The quick brown fox jumps over the lazy ${WORDS[i % WORDS.length]} dog — naïve café.\n`;
    lines.push(line);
    bytes += Buffer.byteLength(line);
  }
  return lines.join('');
})();

// ~100 KB of compressible binary: a 0..255 ramp whose every 97th byte is a counter.
const BIG_BINARY = Uint8Array.from({ length: 100_000 }, (_, i) => (i % 97 === 0 ? (i / 97) & 0xff : i & 0xff));

// Small messages (< 64 bytes; the server echoes these uncompressed) and non-ASCII text.
const SMALL = ['hi', 'a', Uint8Array.of(0, 1, 2, 0xfe, 0xff), 'x'.repeat(63)];
const NON_ASCII = 'héllo ✓ 😀 ünïcødé — ½ · 你好 · ∑';

const MESSAGES = [SMALL[0], BIG_TEXT, SMALL[1], BIG_BINARY, SMALL[2], NON_ASCII, SMALL[3]];
const byteLen = (m) => (typeof m === 'string' ? Buffer.byteLength(m) : m.byteLength);
const PAYLOAD_BYTES = MESSAGES.reduce((n, m) => n + byteLen(m), 0);

function assertEchoes(r, context) {
  assert.equal(r.messages.length, MESSAGES.length, `number of echoes${context}`);
  MESSAGES.forEach((sent, i) => {
    const got = r.messages[i];
    if (typeof sent === 'string') {
      assert.equal(typeof got, 'string', `message #${i} must be echoed as text`);
      assert.equal(got.length, sent.length, `message #${i} echo length (UTF-16 units)`);
      let at = 0;
      while (at < sent.length && got[at] === sent[at]) at++;
      assert.equal(at, sent.length, `message #${i} text echo differs first at UTF-16 index ${at}`);
    } else {
      assert.ok(Buffer.isBuffer(got), `message #${i} must be echoed as binary`);
      assert.equal(got.length, sent.length, `message #${i} echo length (bytes)`);
      const at = sent.findIndex((b, j) => got[j] !== b);
      assert.equal(at, -1, `message #${i} binary echo differs first at byte ${at}`);
    }
  });
}

/**
 * Run the whole session through a byte-counting proxy against `volley echo [...extraArgs]`.
 * Returns { r, wire } with the page's observations and the proxy's final counts.
 */
async function proxiedSession(t, extraArgs) {
  return withEchoPage({ t, server: { extraArgs } }, async ({ server, page }) => {
    const proxy = await startByteCountingProxy({ host: server.host, port: server.port });
    t.signal.addEventListener('abort', () => void proxy.close(), { once: true });
    try {
      const r = await runWsSession(page, {
        url: proxy.url,
        messages: MESSAGES,
        close: { code: 1000, reason: 'done' },
        stepTimeoutMs: 15_000,
      });
      // The page saw the close event, so all frames have passed the proxy; let the TCP
      // connection finish too (server FIN) so the counts are final.
      const idle = await proxy.waitIdle(5000);
      const wire = proxy.stats();
      const context =
        `\npage events:\n  ${r.events.join('\n  ')}\nerrors: ${JSON.stringify(r.errors)}` +
        `\nwire: ${JSON.stringify(wire)} idle=${idle}`;

      t.diagnostic(`server: ${server.command}`);
      t.diagnostic(`ws.extensions=${JSON.stringify(r.extensions)}`);
      t.diagnostic(
        `payload ${PAYLOAD_BYTES} B each way; wire up (browser->server) ${wire.up} B = ` +
          `${((100 * wire.up) / PAYLOAD_BYTES).toFixed(1)}%, down (server->browser) ${wire.down} B = ` +
          `${((100 * wire.down) / PAYLOAD_BYTES).toFixed(1)}%; connections ${wire.connections}`,
      );
      t.diagnostic(`close: ${JSON.stringify(r.close)}`);

      assert.ok(r.opened, `WebSocket did not open${context}`);
      assert.deepEqual(r.errors, [], `errors in the page${context}`);
      assert.equal(wire.connections, 1, `proxied TCP connections${context}`);
      assertEchoes(r, context);
      assert.ok(r.close, `no close event${context}`);
      assert.equal(r.close.code, 1000, `close code${context}`);
      assert.equal(r.close.wasClean, true, `wasClean${context}`);
      return { r, wire, context };
    } finally {
      await proxy.close();
    }
  });
}

test('Chromium <-> volley echo: permessage-deflate compresses both directions', { timeout: 90_000 }, async (t) => {
  const { r, wire, context } = await proxiedSession(t, []);
  assert.ok(
    typeof r.extensions === 'string' && r.extensions.startsWith('permessage-deflate'),
    `ws.extensions=${JSON.stringify(r.extensions)}${context}`,
  );
  // Everything on the wire (handshake and frame headers included) must be well under
  // a fifth of the payload, separately in each direction.
  assert.ok(wire.up < PAYLOAD_BYTES / 5, `browser->server sent ${wire.up} B for ${PAYLOAD_BYTES} B of payload${context}`);
  assert.ok(wire.down < PAYLOAD_BYTES / 5, `server->browser sent ${wire.down} B for ${PAYLOAD_BYTES} B of payload${context}`);
});

test('Chromium <-> volley echo --no-deflate: no extension, wire carries the full payload', { timeout: 90_000 }, async (t) => {
  const { r, wire, context } = await proxiedSession(t, ['--no-deflate']);
  assert.equal(r.extensions, '', `ws.extensions${context}`);
  assert.ok(wire.up >= PAYLOAD_BYTES, `browser->server sent only ${wire.up} B for ${PAYLOAD_BYTES} B of payload${context}`);
  assert.ok(wire.down >= PAYLOAD_BYTES, `server->browser sent only ${wire.down} B for ${PAYLOAD_BYTES} B of payload${context}`);
});
