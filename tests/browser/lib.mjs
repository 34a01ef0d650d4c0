// Shared helpers for the headless-Chromium tests of the Volley echo server.
//
//   startEchoServer()   spawn `volley echo --listen 127.0.0.1:PORT` on a free port
//                       and wait until it accepts TCP connections
//   startPageServer()   serve a blank HTML page on http://127.0.0.1:PORT/ (see below)
//   launchBrowser()     launch the system Chromium through playwright-core
//   runWsSession()      open a WebSocket *inside the page*, send messages, collect
//                       the echoes, close, and return what the page observed
//   pageWsSession       the page-side function behind runWsSession (runs in Chromium)
//
// Environment:
//   VOLLEY_BIN       server binary (default: $CARGO_TARGET_DIR/release/volley, or
//                    target/release/volley; relative paths are resolved against the
//                    repository root, a bare name is looked up on PATH)
//   CHROMIUM_PATH    browser executable (default: /usr/bin/chromium)

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** Path (or PATH-looked-up name) of the server binary under test. */
export function volleyBin() {
  const bin =
    process.env.VOLLEY_BIN ||
    path.join(process.env.CARGO_TARGET_DIR || 'target', 'release', 'volley');
  return bin.includes('/') ? path.resolve(REPO_ROOT, bin) : bin;
}

/** Ask the kernel for a currently free TCP port on `host`. */
export function freePort(host = '127.0.0.1') {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Resolve once something accepts a TCP connection on host:port.
 * Rejects after `timeoutMs`, or as soon as `isDead()` returns a reason string
 * (used to stop waiting when the server process has already exited).
 */
export async function waitForPort(host, port, { timeoutMs = 15_000, isDead = () => null } = {}) {
  const deadline = Date.now() + timeoutMs;
  let lastErr;
  for (;;) {
    const dead = isDead();
    if (dead) throw new Error(`server exited before accepting connections: ${dead}`);
    try {
      await new Promise((resolve, reject) => {
        const sock = net.connect({ host, port });
        sock.setTimeout(1000, () => sock.destroy(new Error('connect timeout')));
        sock.once('connect', () => {
          sock.destroy();
          resolve();
        });
        sock.once('error', reject);
      });
      return;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`nothing accepted TCP on ${host}:${port} within ${timeoutMs} ms (${lastErr?.code ?? lastErr})`);
    }
    await sleep(50);
  }
}

// Children still running when node exits (e.g. a test timed out) are killed here.
const liveChildren = new Set();
process.once('exit', () => {
  for (const child of liveChildren) {
    try {
      child.kill('SIGKILL');
    } catch {}
  }
});

/**
 * Spawn `<VOLLEY_BIN> echo --listen 127.0.0.1:PORT [...extraArgs]` on a free port and
 * wait until it accepts TCP. Returns { host, port, url, proc, output(), stop() }.
 * Always call stop() (it is idempotent and safe to call if start failed half-way).
 */
export async function startEchoServer({ bin = volleyBin(), extraArgs = [], env = {}, host = '127.0.0.1', timeoutMs = 15_000 } = {}) {
  if (bin.includes('/') && !existsSync(bin)) {
    throw new Error(
      `server binary not found: ${bin}\n` +
        `build it with \`cargo build --release -p volley-cli\`, or point VOLLEY_BIN at one`,
    );
  }
  const port = await freePort(host);
  const args = ['echo', '--listen', `${host}:${port}`, ...extraArgs];
  const proc = spawn(bin, args, {
    cwd: REPO_ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  liveChildren.add(proc);

  let out = '';
  const keep = (chunk) => {
    out += chunk;
    if (out.length > 64 * 1024) out = out.slice(-32 * 1024); // keep the tail only
  };
  proc.stdout.setEncoding('utf8').on('data', keep);
  proc.stderr.setEncoding('utf8').on('data', keep);

  let exitInfo = null;
  let spawnError = null;
  const exited = new Promise((resolve) => {
    proc.once('error', (err) => {
      spawnError = err;
      liveChildren.delete(proc);
      resolve();
    });
    proc.once('exit', (code, signal) => {
      exitInfo = signal ? `signal ${signal}` : `exit code ${code}`;
      liveChildren.delete(proc);
      resolve();
    });
  });

  const server = {
    host,
    port,
    url: `ws://${host}:${port}/`,
    proc,
    command: [bin, ...args].join(' '),
    output: () => out,
    /** Exit status string once the process has ended, else null. */
    exitStatus: () => exitInfo ?? (spawnError ? `spawn error: ${spawnError.message}` : null),
    async stop() {
      if (!server.exitStatus()) {
        proc.kill('SIGTERM');
        // unref'd: a pending grace timer must not keep node alive after the exit.
        const killed = await Promise.race([exited.then(() => true), sleep(3000, false, { ref: false })]);
        if (!killed) {
          proc.kill('SIGKILL');
          await exited;
        }
      }
      return server.exitStatus();
    },
  };

  try {
    await waitForPort(host, port, { timeoutMs, isDead: server.exitStatus });
  } catch (err) {
    await server.stop();
    err.message += `\ncommand: ${server.command}\n--- server output ---\n${out || '(none)'}`;
    throw err;
  }
  return server;
}

/**
 * Serve an empty HTML page on http://127.0.0.1:PORT/ to load before opening sockets.
 * Why not about:blank: Chromium's Local Network Access checks (on by default in
 * recent versions) classify about:blank as a public-address-space context and block
 * its connections to 127.0.0.1 (net::ERR_BLOCKED_BY_LOCAL_NETWORK_ACCESS_CHECKS)
 * pending a permission prompt that headless never grants. A page served from
 * loopback may talk to loopback. It also gives the handshake a real Origin header.
 * Returns { url, origin, close() }.
 */
export async function startPageServer(host = '127.0.0.1') {
  const srv = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
    res.end('<!doctype html><meta charset="utf-8"><title>volley browser test</title>\n');
  });
  await new Promise((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(0, host, resolve);
  });
  srv.unref();
  const origin = `http://${host}:${srv.address().port}`;
  return {
    origin,
    url: `${origin}/`,
    close: () =>
      new Promise((resolve) => {
        srv.closeAllConnections?.();
        srv.close(() => resolve()); // also resolves (with an error arg) if already closed
      }),
  };
}

/** Launch the system Chromium, headless. Close it with `await browser.close()`. */
export async function launchBrowser({ executablePath = process.env.CHROMIUM_PATH || '/usr/bin/chromium', args = [], timeoutMs = 30_000 } = {}) {
  if (!existsSync(executablePath)) {
    throw new Error(`Chromium not found at ${executablePath}; run scripts/install-test-deps.sh`);
  }
  return chromium.launch({
    executablePath,
    headless: true,
    args: [...CHROMIUM_ARGS, ...args],
    timeout: timeoutMs,
  });
}

/**
 * PAGE-SIDE function (serialised and run inside Chromium by page.evaluate, so it must
 * be self-contained). Opens `url`, then for each message sends it and waits for the
 * next incoming message, then calls ws.close(close.code, close.reason) and waits for
 * the close event.
 *
 * opts: { url, protocols?, messages: [{ text } | { base64 }], close?: { code, reason },
 *         stepTimeoutMs? }
 * returns: { opened, protocol, extensions, received: [{ text } | { base64 }],
 *            close: { code, reason, wasClean } | null, errors: [string], events: [string] }
 */
export async function pageWsSession(opts) {
  const { url, protocols, messages = [], close = { code: 1000, reason: 'bye' }, stepTimeoutMs = 10_000 } = opts;
  const result = { opened: false, protocol: null, extensions: null, received: [], close: null, errors: [], events: [] };
  const t0 = performance.now();
  const log = (s) => result.events.push(`${Math.round(performance.now() - t0)}ms ${s}`);

  const toB64 = (buf) => {
    const bytes = new Uint8Array(buf);
    let s = '';
    for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return btoa(s);
  };
  const fromB64 = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)).buffer;

  // Every event goes into a queue so nothing is lost between awaits.
  const queue = [];
  let wake = null;
  const push = (ev) => {
    queue.push(ev);
    if (wake) wake();
  };
  const next = async (what) => {
    const deadline = performance.now() + stepTimeoutMs;
    while (!queue.length) {
      const left = deadline - performance.now();
      if (left <= 0) throw new Error(`timed out after ${stepTimeoutMs} ms waiting for ${what}`);
      await new Promise((r) => {
        wake = r;
        setTimeout(r, left);
      });
      wake = null;
    }
    return queue.shift();
  };

  let ws;
  try {
    ws = protocols === undefined ? new WebSocket(url) : new WebSocket(url, protocols);
  } catch (e) {
    result.errors.push(`constructor: ${e}`);
    return result;
  }
  ws.binaryType = 'arraybuffer';
  ws.onopen = () => push({ type: 'open' });
  ws.onmessage = (e) => push({ type: 'message', data: e.data });
  ws.onerror = () => push({ type: 'error' });
  ws.onclose = (e) => push({ type: 'close', code: e.code, reason: e.reason, wasClean: e.wasClean });

  const record = (ev) => {
    if (ev.type === 'close') {
      result.close = { code: ev.code, reason: ev.reason, wasClean: ev.wasClean };
      log(`close code=${ev.code} wasClean=${ev.wasClean} reason=${JSON.stringify(ev.reason)}`);
    } else if (ev.type === 'error') {
      result.errors.push('error event');
      log('error');
    }
  };

  try {
    let ev = await next('open');
    if (ev.type !== 'open') {
      record(ev);
      if (ev.type === 'error' && !result.close) {
        try {
          record(await next('close after error'));
        } catch {}
      }
      result.errors.push(`connection did not open (got ${ev.type})`);
      return result;
    }
    result.opened = true;
    result.protocol = ws.protocol;
    result.extensions = ws.extensions;
    log(`open protocol=${JSON.stringify(ws.protocol)} extensions=${JSON.stringify(ws.extensions)}`);

    for (let i = 0; i < messages.length; i++) {
      const m = messages[i];
      if (typeof m.text === 'string') {
        ws.send(m.text);
        log(`sent #${i} text (${m.text.length} UTF-16 units)`);
      } else {
        const buf = fromB64(m.base64);
        ws.send(buf);
        log(`sent #${i} binary (${buf.byteLength} bytes)`);
      }
      ev = await next(`echo of message #${i}`);
      if (ev.type !== 'message') {
        record(ev);
        throw new Error(`expected echo of message #${i}, got ${ev.type} event`);
      }
      if (typeof ev.data === 'string') {
        result.received.push({ text: ev.data });
        log(`recv #${i} text (${ev.data.length} UTF-16 units)`);
      } else {
        result.received.push({ base64: toB64(ev.data) });
        log(`recv #${i} binary (${ev.data.byteLength} bytes)`);
      }
    }

    if (close) {
      ws.close(close.code, close.reason);
      log(`called close(${close.code}, ${JSON.stringify(close.reason)})`);
      for (;;) {
        ev = await next('close event');
        if (ev.type === 'close') {
          record(ev);
          break;
        }
        if (ev.type === 'message') log(`unexpected message after close()`);
        else record(ev);
      }
    }
  } catch (e) {
    result.errors.push(String(e && e.message ? e.message : e));
    try {
      ws.close();
    } catch {}
  }
  return result;
}

/**
 * Node-side wrapper: runs pageWsSession in `page`. Messages may be given as strings
 * (text frames) or Buffer/Uint8Array (binary frames); received binary echoes are
 * returned as Buffers and text echoes as strings in `result.messages`.
 */
export async function runWsSession(page, { url, protocols, messages = [], close, stepTimeoutMs } = {}) {
  const wire = messages.map((m) =>
    typeof m === 'string' ? { text: m } : { base64: Buffer.from(m.buffer, m.byteOffset, m.byteLength).toString('base64') },
  );
  const opts = { url, messages: wire };
  if (protocols !== undefined) opts.protocols = protocols;
  if (close !== undefined) opts.close = close;
  if (stepTimeoutMs !== undefined) opts.stepTimeoutMs = stepTimeoutMs;
  const result = await page.evaluate(pageWsSession, opts);
  result.messages = result.received.map((m) => ('text' in m ? m.text : Buffer.from(m.base64, 'base64')));
  return result;
}

/**
 * Convenience for a whole test: start the echo server, launch Chromium, open a page
 * served from loopback (startPageServer), run `fn({ server, browser, page })`, and
 * always tear everything down (even if `fn` throws). Server output and the page's
 * console are appended to any error.
 * Pass the node:test context as `t` to also tear down if the test times out.
 */
export async function withEchoPage({ t, server: serverOpts = {}, browser: browserOpts = {} } = {}, fn) {
  let server, browser, pageServer;
  const consoleLines = [];
  // Idempotent; may run twice (timeout abort + finally), so that anything created
  // after an abort-triggered cleanup is still torn down by the finally.
  const cleanup = () =>
    Promise.allSettled([
      browser ? browser.close() : null,
      server ? server.stop() : null,
      pageServer ? pageServer.close() : null,
    ]);
  // If the test times out, node:test aborts t.signal; tear down so node can exit.
  t?.signal?.addEventListener('abort', () => void cleanup(), { once: true });
  try {
    server = await startEchoServer(serverOpts);
    pageServer = await startPageServer();
    browser = await launchBrowser(browserOpts);
    const page = await browser.newPage();
    page.on('console', (msg) => consoleLines.push(`[${msg.type()}] ${msg.text()}`));
    page.on('pageerror', (err) => consoleLines.push(`[pageerror] ${err.message}`));
    await page.goto(pageServer.url);
    return await fn({ server, browser, page });
  } catch (err) {
    if (server && err && typeof err === 'object') {
      const status = server.exitStatus();
      err.message +=
        `\n--- server (${server.command}${status ? `, ${status}` : ', running'}) output ---\n` +
        (server.output() || '(none)') +
        (consoleLines.length ? `\n--- page console ---\n${consoleLines.join('\n')}` : '');
    }
    throw err;
  } finally {
    await cleanup();
  }
}

/**
 * A transparent TCP proxy on 127.0.0.1:PORT that forwards every connection to
 * `target` ({ host, port }) and counts the bytes in each direction, as they appear
 * on the wire (HTTP upgrade handshake and WebSocket frame headers included).
 * Returns { port, url, stats(), waitIdle(timeoutMs), close() } where stats() is
 *   { connections, open, up, down }  (up = client->server bytes, down = server->client).
 * close() is idempotent and destroys any still-open connection.
 */
export async function startByteCountingProxy(target, host = '127.0.0.1') {
  const counts = { connections: 0, open: 0, up: 0, down: 0 };
  const sockets = new Set();
  let idleWaiters = [];
  const notifyIdle = () => {
    if (counts.open === 0) {
      const w = idleWaiters;
      idleWaiters = [];
      for (const r of w) r();
    }
  };

  const srv = net.createServer((client) => {
    counts.connections++;
    counts.open++;
    const upstream = net.connect({ host: target.host, port: target.port });
    sockets.add(client);
    sockets.add(upstream);
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    client.on('data', (chunk) => (counts.up += chunk.length));
    upstream.on('data', (chunk) => (counts.down += chunk.length));
    // pipe() handles back-pressure and forwards a half-close (FIN) in each direction.
    client.pipe(upstream);
    upstream.pipe(client);
    let closed = 0;
    const onClose = (sock) => () => {
      sockets.delete(sock);
      if (++closed === 2) {
        counts.open--;
        notifyIdle();
      }
    };
    // An error (e.g. RST) on one side tears the other side down too.
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
    client.on('close', onClose(client));
    upstream.on('close', onClose(upstream));
    client.on('close', () => upstream.end());
    upstream.on('close', () => client.end());
  });
  await new Promise((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(0, host, resolve);
  });
  srv.unref();
  const { port } = srv.address();
  let closing = null;
  return {
    host,
    port,
    url: `ws://${host}:${port}/`,
    stats: () => ({ ...counts }),
    /** Resolve true once no proxied connection is open, false after timeoutMs. */
    waitIdle(timeoutMs = 5000) {
      if (counts.open === 0) return Promise.resolve(true);
      return Promise.race([
        new Promise((r) => idleWaiters.push(() => r(true))),
        sleep(timeoutMs, false, { ref: false }),
      ]);
    },
    close() {
      closing ??= new Promise((resolve) => {
        for (const s of sockets) s.destroy();
        srv.close(() => resolve());
      });
      return closing;
    },
  };
}
