// Shared helpers for the hub's tests with real clients.
//
//   startHub(config)     spawn `volley serve` with a JSON configuration on a free port;
//                        resolves to { url, ws, api(method, params), stop() }
//   token(secret, claims)  an HS256 JWT, made here with node:crypto
//   cutter()             a TCP proxy whose connections the test can cut, to drop a
//                        client's connection without the client or server knowing
//   waitFor(fn)          poll until fn() is truthy
//   (nodes.mjs has the helpers of the tests of several nodes on the Redis broker)
//   redisBroker(urls, prefix, extra)  a `broker` section for the Redis broker
//   startRedis()         a real `redis-server` on a free loopback port, without
//                        persistence; resolves to { url, port, cli(...args), stop(), kill(),
//                        restart(), pause(), resume() }, restart() being a fresh process on
//                        the same port (its data lost, as after a crash), pause() SIGSTOP
//   startRedisCluster(n) n masters of a Redis Cluster, joined by `redis-cli --cluster
//                        create`, once every node says cluster_state:ok; resolves to
//                        { urls, ports, nodes, masterOf(key), stop() }, each node with
//                        kill() and restart() (the same port and slots, its data lost)
//   redisCli(port, ...args)  `redis-cli -p PORT ARGS`, resolves to its output
//   gate(target)         a TCP proxy that can be taken down (its connections cut, new
//                        ones refused) and brought up again on the same port
//   balancer(backends)   a TCP proxy that sends each new connection to the first backend
//                        (host:port) of the list that accepts it
//
// Every process started here (hubs, redis-server) is killed, and the redis-server
// directories removed, when the test process exits or is interrupted, even when a test
// failed before its own clean-up.
//
// Environment: VOLLEY_BIN, the server binary (default: target/release/volley).

import { execFile, spawn } from 'node:child_process';
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
  if (!bin.includes('/')) return bin;
  // A relative path: from the working directory when it is there, else from the repository.
  const here = path.resolve(bin);
  return fs.existsSync(here) ? here : path.resolve(REPO_ROOT, bin);
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

// The processes this test process started and that still run: killed when it exits.
const children = new Set();

function track(child) {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

// The directories of the redis-server processes: removed with them, or at exit.
const redisDirs = new Set();

function redisDir(prefix) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  redisDirs.add(dir);
  return dir;
}

function removeDir(dir) {
  fs.rmSync(dir, { recursive: true, force: true });
  redisDirs.delete(dir);
}

function killAll() {
  for (const child of children) {
    try { child.kill('SIGKILL'); } catch { /* already gone */ }
  }
  children.clear();
  for (const dir of redisDirs) fs.rmSync(dir, { recursive: true, force: true });
  redisDirs.clear();
}

process.once('exit', killAll);
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => { killAll(); process.exit(128 + (signal === 'SIGINT' ? 2 : 15)); });
}

/** Starts `volley serve ARGS` and waits until it listens; `apiKey` for `api()`. */
export async function startServe(args, apiKey = API_KEY) {
  const child = track(spawn(volleyBin(), ['serve', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, VOLLEY_LOG: process.env.VOLLEY_LOG || 'warn' },
  }));
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
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode ?? child.signalCode;
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

// Ends `socket` with a TCP reset, as a dropped network path is seen. Not once it was
// ended (half-closed): Node cannot reset a socket that shut down its writing side, and
// such a socket, never closed, keeps the process from exiting. It is destroyed instead.
function reset(socket) {
  if (socket.writableEnded || socket.destroyed) socket.destroy();
  else socket.resetAndDestroy();
}

/** A TCP proxy to `target` (host:port) whose connections `cut()` destroys. */
export async function cutter(target) {
  const [host, port] = target.split(':');
  const sockets = new Set();
  const server = net.createServer((client) => splice(client, net.connect(Number(port), host), sockets));
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    addr: `127.0.0.1:${server.address().port}`,
    cut() { for (const [a, b] of sockets) { reset(a); b.destroy(); } sockets.clear(); },
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

// --- Redis ----------------------------------------------------------------------

/** A `broker` section for the Redis broker at `urls`, its keys under `prefix`. */
export function redisBroker(urls, prefix, extra = {}) {
  return { type: 'redis', redis: { addresses: [].concat(urls), prefix, ...extra } };
}

/** `redis-cli -p PORT ARGS`: resolves to its output (trimmed), rejects if it fails. */
export function redisCli(port, ...args) {
  return new Promise((resolve, reject) => {
    execFile('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...args], { timeout: 30000 }, (err, stdout, stderr) => {
      if (err) reject(Object.assign(new Error(`redis-cli ${args.join(' ')}: ${err.message} ${stderr}`), { stdout, stderr }));
      else resolve(stdout.trim());
    });
  });
}

// Whether `port` can be listened on at 127.0.0.1 now.
function portFree(port) {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

// A free port, and `port + 10000` free too when `bus` (a Redis Cluster node's bus port).
async function freePort(bus = false) {
  for (let i = 0; i < 200; i++) {
    // Below the ephemeral range (32768 and up), so that no outgoing connection holds it.
    const port = 20000 + Math.floor(Math.random() * 10000);
    if (await portFree(port) && (!bus || await portFree(port + 10000))) return port;
  }
  throw new Error('no free port');
}

// One redis-server process on `port`, its files in `dir`; resolves once it answers PING.
async function spawnRedis(port, dir, extraArgs) {
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
    '--dir', dir, '--daemonize', 'no', '--protected-mode', 'no', '--loglevel', 'warning', ...extraArgs];
  const child = track(spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] }));
  let output = '';
  child.stdout.on('data', (d) => { output += d; });
  child.stderr.on('data', (d) => { output += d; });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve(code ?? signal)));
  const spawned = new Promise((resolve, reject) => {
    child.once('spawn', resolve);
    child.once('error', (e) => reject(new Error(`redis-server did not start (is it installed? scripts/install-test-deps.sh redis): ${e.message}`)));
  });
  await spawned;
  const deadline = Date.now() + 10000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`redis-server on ${port} exited: ${output}`);
    try {
      if (await redisCli(port, 'ping') === 'PONG') break;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) { child.kill('SIGKILL'); throw new Error(`redis-server on ${port} did not answer: ${output}`); }
    await sleep(30);
  }
  return { child, exited, output: () => output };
}

async function endProcess(proc, signal) {
  if (!proc || proc.child.exitCode !== null || proc.child.signalCode !== null) return;
  proc.child.kill(signal);
  await proc.exited;
}

/**
 * A real `redis-server` on a free loopback port, without persistence, in its own
 * temporary directory. `kill()` is SIGKILL (a crash); `restart()` starts a fresh process
 * on the same port, its data lost as after a crash (it kills the running one first);
 * `pause()` and `resume()` freeze and thaw the process (SIGSTOP, SIGCONT).
 */
export async function startRedis(extraArgs = []) {
  const port = await freePort();
  const dir = redisDir('volley-redis-');
  let proc = await spawnRedis(port, dir, extraArgs);
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    get pid() { return proc.child.pid; },
    get running() { return proc.child.exitCode === null && proc.child.signalCode === null; },
    output: () => proc.output(),
    cli: (...args) => redisCli(port, ...args),
    async kill() { await endProcess(proc, 'SIGKILL'); },
    async restart() {
      await endProcess(proc, 'SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
      fs.mkdirSync(dir, { recursive: true });
      proc = await spawnRedis(port, dir, extraArgs);
    },
    pause() { proc.child.kill('SIGSTOP'); },
    resume() { proc.child.kill('SIGCONT'); },
    async stop() {
      // SIGKILL ends a paused process too.
      await endProcess(proc, 'SIGKILL');
      removeDir(dir);
    },
  };
}

/**
 * A Redis Cluster of `n` masters (no replicas), each a `redis-server --cluster-enabled
 * yes` in its own directory, joined with `redis-cli --cluster create`. Resolves once
 * every node reports `cluster_state:ok`.
 */
export async function startRedisCluster(n = 3) {
  const nodes = [];
  // A master that is down takes only its own slots out of service.
  const args = ['--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf',
    '--cluster-node-timeout', '2000', '--cluster-require-full-coverage', 'no'];
  const stop = async () => {
    await Promise.all(nodes.map(async ({ proc, dir }) => {
      await endProcess(proc, 'SIGKILL');
      removeDir(dir);
    }));
  };
  const ports = () => nodes.map((x) => x.port);
  // Until every node says cluster_state:ok and knows all `n`.
  const settled = async () => {
    const deadline = Date.now() + 20000;
    for (;;) {
      const infos = await Promise.all(ports().map((p) => redisCli(p, 'cluster', 'info').catch((e) => e.message)));
      if (infos.every((info) => /cluster_state:ok/.test(info) && new RegExp(`cluster_known_nodes:${n}\\b`).test(info))) return;
      if (Date.now() > deadline) throw new Error(`the cluster did not settle:\n${infos.join('\n')}`);
      await sleep(50);
    }
  };
  try {
    for (let i = 0; i < n; i++) {
      // The cluster bus listens on port + 10000: both must be free.
      const port = await freePort(true);
      const dir = redisDir('volley-redis-cluster-');
      const node = { port, dir, proc: null };
      nodes.push(node);
      node.proc = await spawnRedis(port, dir, args);
    }
    await redisCli(ports()[0], '--cluster', 'create', ...ports().map((p) => `127.0.0.1:${p}`),
      '--cluster-replicas', '0', '--cluster-yes');
    await settled();
    return {
      ports: ports(),
      urls: ports().map((p) => `redis://127.0.0.1:${p}`),
      nodes: nodes.map((x) => ({
        port: x.port,
        cli: (...a) => redisCli(x.port, ...a),
        /** SIGKILL: its slots are out of service until it restarts. */
        async kill() { await endProcess(x.proc, 'SIGKILL'); },
        /**
         * A fresh process on the same port and directory: it rejoins the cluster with
         * its slots (nodes.conf) but none of its data, as after a crash. Resolves once
         * the cluster is ok again.
         */
        async restart() {
          await endProcess(x.proc, 'SIGKILL');
          x.proc = await spawnRedis(x.port, x.dir, args);
          await settled();
        },
      })),
      cli: (...a) => redisCli(ports()[0], '-c', ...a),
      /** The port of the master that holds `key`'s slot. */
      async masterOf(key) {
        const slot = Number(await redisCli(ports()[0], 'cluster', 'keyslot', key));
        const slots = await clusterSlots(ports()[0]);
        const range = slots.find(([from, to]) => slot >= from && slot <= to);
        return range[2];
      },
      stop,
    };
  } catch (e) {
    await stop();
    throw e;
  }
}

// `cluster shards` would need RESP3 parsing: `cluster nodes` gives each master's slot
// ranges as text. Resolves to [[from, to, port], ...].
async function clusterSlots(port) {
  const out = await redisCli(port, 'cluster', 'nodes');
  const ranges = [];
  for (const line of out.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (!f[2]?.includes('master')) continue;
    const nodePort = Number(/:(\d+)@/.exec(f[1])[1]);
    for (const r of f.slice(8)) {
      if (r.startsWith('[')) continue; // a slot being migrated
      const [from, to = from] = r.split('-').map(Number);
      ranges.push([from, to, nodePort]);
    }
  }
  return ranges;
}

// --- TCP proxies -----------------------------------------------------------------

// Pipes `client` to `upstream` both ways; both end when either does.
function splice(client, upstream, sockets) {
  client.pipe(upstream);
  upstream.pipe(client);
  const pair = [client, upstream];
  sockets.add(pair);
  const end = () => { client.destroy(); upstream.destroy(); sockets.delete(pair); };
  client.on('error', end); upstream.on('error', end); client.on('close', end); upstream.on('close', end);
}

function listen(server, port = 0) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => { server.off('error', reject); resolve(server.address().port); });
  });
}

/**
 * A TCP proxy to `target` (host:port) that can be taken down: `down()` cuts every
 * connection and stops listening (new connections are refused); `up()` listens again on
 * the same port. For "the server is unreachable for a while" without losing its data.
 */
export async function gate(target) {
  const [host, port] = target.split(':');
  const sockets = new Set();
  const make = () => net.createServer((client) => {
    splice(client, net.connect(Number(port), host), sockets);
  });
  let server = make();
  const own = await listen(server);
  const cutAll = () => { for (const [a, b] of sockets) { reset(a); b.destroy(); } sockets.clear(); };
  return {
    port: own,
    addr: `127.0.0.1:${own}`,
    url: `redis://127.0.0.1:${own}`,
    get isUp() { return server !== null; },
    async down() {
      if (!server) return;
      const s = server;
      server = null;
      const closed = new Promise((r) => s.close(r));
      cutAll();
      await closed;
    },
    async up() {
      if (server) return;
      server = make();
      await listen(server, own);
    },
    async close() { await this.down(); },
  };
}

/**
 * A TCP balancer: each new connection goes to the first of `backends` (host:port) that
 * accepts it, tried in order; one that none accepts is closed. `backends` may be changed
 * in place. `connections()` counts the connections it forwarded to each backend.
 */
export async function balancer(backends) {
  const sockets = new Set();
  const counts = new Map();
  const connectFirst = async (list) => {
    for (const b of list) {
      const [host, port] = b.split(':');
      const sock = await new Promise((resolve) => {
        const s = net.connect(Number(port), host);
        s.once('connect', () => { s.removeAllListeners('error'); resolve(s); });
        s.once('error', () => resolve(null));
      });
      if (sock) return [b, sock];
    }
    return [null, null];
  };
  // Connections accepted whose backend is not chosen yet.
  const pending = new Set();
  const server = net.createServer(async (client) => {
    client.pause();
    client.on('error', () => {});
    pending.add(client);
    const [backend, upstream] = await connectFirst([...backends]);
    pending.delete(client);
    if (!upstream || client.destroyed) { client.destroy(); upstream?.destroy(); return; }
    counts.set(backend, (counts.get(backend) ?? 0) + 1);
    splice(client, upstream, sockets);
    client.resume();
  });
  const port = await listen(server);
  return {
    port,
    addr: `127.0.0.1:${port}`,
    backends,
    connections: () => Object.fromEntries(counts),
    cut() { for (const [a, b] of sockets) { reset(a); b.destroy(); } sockets.clear(); },
    close() {
      const closed = new Promise((r) => server.close(r));
      this.cut();
      for (const c of pending) c.destroy();
      return closed;
    },
  };
}
