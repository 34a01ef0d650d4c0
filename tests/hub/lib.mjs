// Shared helpers for the hub's tests with real clients.
//
//   startHub(config)     spawn `volley serve` with a JSON configuration on a free port;
//                        resolves to { url, ws, api(method, params), stop() }
//   token(secret, claims)  an HS256 JWT, made here with node:crypto
//   cutter()             a TCP proxy whose connections the test can cut, to drop a
//                        client's connection without the client or server knowing
//   waitFor(fn)          poll until fn() is truthy
//
// Environment: VOLLEY_BIN, the server binary (default: target/release/volley).

import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const SECRET = 'test-secret-of-the-hub-tests';
export const API_KEY = 'test-api-key';

export function volleyBin() {
  const bin = process.env.VOLLEY_BIN || path.join(process.env.CARGO_TARGET_DIR || 'target', 'release', 'volley');
  return bin.includes('/') ? path.resolve(REPO_ROOT, bin) : bin;
}

/** A namespace whose clients may do everything that needs no token. */
export function openNamespace(name, extra = {}) {
  return {
    name,
    presence: true,
    join_leave: true,
    history_size: 100,
    history_ttl: '300s',
    allow_recovery: true,
    allow_positioning: true,
    allow_subscribe_for_client: true,
    allow_publish_for_subscriber: true,
    allow_history_for_subscriber: true,
    allow_presence_for_subscriber: true,
    ...extra,
  };
}

export const DEFAULT_CONFIG = {
  // Idle clients are parked after 50 ms: every scenario runs against clients that are
  // parked between their steps.
  client: { token: { hmac_secret_key: SECRET }, park_after: '50ms' },
  http_api: { key: API_KEY },
  channel: {
    namespaces: [
      openNamespace('chat'),
      openNamespace('small', { history_size: 3 }),
      openNamespace('delta', { allowed_delta_types: ['fossil'] }),
      openNamespace('tags', { allow_tags_filter: true }),
      openNamespace('compact', { allow_channel_compaction: true, force_push_join_leave: true }),
    ],
  },
};

/** Starts `volley serve` with `config` (merged over DEFAULT_CONFIG's sections). */
export async function startHub(config = DEFAULT_CONFIG, extraArgs = []) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'volley-hub-test-'));
  const file = path.join(dir, 'config.json');
  fs.writeFileSync(file, JSON.stringify(config));
  try {
    return await startServe(['--config', file, '--listen', '127.0.0.1:0', ...extraArgs], config.http_api?.key ?? API_KEY);
  } finally {
    // The configuration was read at start.
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Starts `volley serve ARGS` and waits until it listens; `apiKey` for `api()`. */
export async function startServe(args, apiKey = API_KEY) {
  const child = spawn(volleyBin(), ['serve', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, VOLLEY_LOG: process.env.VOLLEY_LOG || 'warn' },
  });
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  const lines = readline.createInterface({ input: child.stdout });
  const addr = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`volley serve did not start: ${stderr}`)), 15000);
    lines.on('line', (line) => {
      const m = /^listening on (\S+)/.exec(line);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
    child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`volley serve exited (${code}): ${stderr}`)); });
  });
  const base = `http://${addr}`;
  return {
    addr,
    base,
    url: `ws://${addr}/connection/websocket`,
    child,
    stderr: () => stderr,
    async api(method, params = {}) {
      const r = await fetch(`${base}/api/${method}`, {
        method: 'POST',
        headers: { 'X-API-Key': apiKey, 'Content-Type': 'application/json' },
        body: JSON.stringify(params),
      });
      const body = await r.json();
      if (body.error) throw Object.assign(new Error(`${method}: ${body.error.code} ${body.error.message}`), body.error);
      return body.result;
    },
    async stop(signal = 'SIGTERM') {
      if (child.exitCode !== null) return child.exitCode;
      child.kill(signal);
      return new Promise((resolve) => child.once('exit', (code) => resolve(code)));
    },
  };
}

/** An HS256 JWT. */
export function token(claims, secret = SECRET) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const signing = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  const sig = crypto.createHmac('sha256', secret).update(signing).digest('base64url');
  return `${signing}.${sig}`;
}

export const now = () => Math.floor(Date.now() / 1000);

/** A TCP proxy to `target` (host:port) whose connections `cut()` destroys. */
export async function cutter(target) {
  const [host, port] = target.split(':');
  const sockets = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(port), host);
    client.pipe(upstream);
    upstream.pipe(client);
    const pair = [client, upstream];
    sockets.add(pair);
    const end = () => { client.destroy(); upstream.destroy(); sockets.delete(pair); };
    client.on('error', end); upstream.on('error', end); client.on('close', end); upstream.on('close', end);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    addr: `127.0.0.1:${server.address().port}`,
    cut() { for (const [a, b] of sockets) { a.resetAndDestroy(); b.destroy(); } sockets.clear(); },
    close() { this.cut(); server.close(); },
  };
}

export async function waitFor(fn, what = 'condition', ms = 10000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** Resolves with the first event `name` of `emitter`. */
export function once(emitter, name) {
  return new Promise((resolve) => emitter.once(name, resolve));
}
