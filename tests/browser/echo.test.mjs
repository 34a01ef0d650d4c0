// A real (headless) Chromium talks to `volley echo` over ws:// and every message it
// sends must come back unchanged; the close handshake must complete cleanly.
//
// Run: scripts/browser-test.sh   (or: cd tests/browser && node --test)

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runWsSession, withEchoPage } from './lib.mjs';

const TEXT = 'héllo ✓ 😀'; // 2-, 3- and 4-byte UTF-8 sequences (the emoji is a surrogate pair)
const BINARY = Uint8Array.from({ length: 256 }, (_, i) => i); // every byte value 0..255
// 100 KiB of text (4096 numbered lines of 25 UTF-16 units, 132 KiB as UTF-8): bigger
// than 64 KiB, so it needs a 64-bit frame length, with non-ASCII throughout.
const LARGE_TEXT = Array.from({ length: 4096 }, (_, i) => `${String(i).padStart(6, '0')} ünïcødé ✓ lorem😀\n`).join('');

test('Chromium: echo of text, binary and a large text, then a clean close', { timeout: 60_000 }, async (t) => {
  await withEchoPage({ t }, async ({ server, page }) => {
    const r = await runWsSession(page, {
      url: server.url,
      messages: [TEXT, BINARY, LARGE_TEXT],
      close: { code: 1000, reason: 'bye' },
    });
    const context = `\npage events:\n  ${r.events.join('\n  ')}\nerrors: ${JSON.stringify(r.errors)}`;

    t.diagnostic(`server: ${server.command}`);
    t.diagnostic(`ws.protocol=${JSON.stringify(r.protocol)} ws.extensions=${JSON.stringify(r.extensions)}`);
    t.diagnostic(`close: ${JSON.stringify(r.close)}`);

    assert.ok(r.opened, `WebSocket did not open${context}`);
    assert.deepEqual(r.errors, [], `errors in the page${context}`);
    // No subprotocol was requested, so the server must not select one.
    assert.equal(r.protocol, '', `ws.protocol${context}`);
    // Chromium only ever offers permessage-deflate; anything else here is a server bug.
    assert.equal(typeof r.extensions, 'string');
    assert.ok(r.extensions === '' || r.extensions.startsWith('permessage-deflate'), `ws.extensions=${r.extensions}`);

    assert.equal(r.messages.length, 3, `number of echoes${context}`);

    assert.equal(typeof r.messages[0], 'string', 'text message must be echoed as text');
    assert.equal(r.messages[0], TEXT);

    assert.ok(Buffer.isBuffer(r.messages[1]), 'binary message must be echoed as binary');
    assert.equal(r.messages[1].length, 256, 'binary echo length');
    const firstDiff = BINARY.findIndex((b, i) => r.messages[1][i] !== b);
    assert.equal(firstDiff, -1, `binary echo differs first at byte ${firstDiff}: got ${r.messages[1][firstDiff]}`);

    assert.equal(typeof r.messages[2], 'string', 'large text must be echoed as text');
    assert.equal(r.messages[2].length, LARGE_TEXT.length, 'large text echo length');
    let at = 0;
    while (at < LARGE_TEXT.length && r.messages[2][at] === LARGE_TEXT[at]) at++;
    assert.ok(at === LARGE_TEXT.length, `large text echo differs first at UTF-16 index ${at}`);

    assert.ok(r.close, `no close event${context}`);
    assert.equal(r.close.code, 1000, `close code${context}`);
    assert.equal(r.close.wasClean, true, `wasClean${context}`);
  });
});
