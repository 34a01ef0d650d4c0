// What the tests of several `volley serve` nodes on the Redis broker share: nodes on a
// Redis, centrifuge-js clients (JSON) for them, and a journal of a subscription's
// numbered publications and state changes, with the check that nothing was lost or
// repeated without the client being told.
//
//   startNodes(t, n, url, { prefix, extra, redis })  n nodes, stopped when test t ends
//   client(addr, opts), connected(c), subscribed(c, channel, opts)
//   watched(c, channel)      a recoverable subscription and its journal
//   assertNoSilentGap(log, expected, who, uncertain)
//   publisher(node, channel)  numbered publications through the API until stopped
//   publishMore(node, channel, pub)  a few more after it, once it stopped
//   ready(node)              the status of the node's /ready
//   uniquePrefix()           a key prefix no other test uses

import assert from 'node:assert/strict';
import { Centrifuge } from 'centrifuge';
import { EventSource } from 'eventsource';
import WebSocket from 'ws';
import { DEFAULT_CONFIG, redisBroker, startHub } from './lib.mjs';

// A key prefix of its own for each group of nodes: tests never see each other's keys.
let seq = 0;
export const uniquePrefix = () => `volley-test-${process.pid}-${Date.now().toString(36)}-${++seq}`;

/**
 * `n` nodes on the Redis broker at `url` (one address or several), with `extra`
 * configuration sections (`redis` adds keys to broker.redis), stopped when test `t` ends.
 */
export async function startNodes(t, n, url, { prefix = uniquePrefix(), extra = {}, redis = {} } = {}) {
  const nodes = [];
  t.after(() => Promise.all(nodes.map((h) => h.stop('SIGKILL'))));
  for (let i = 0; i < n; i++) nodes.push(await startHub({ ...DEFAULT_CONFIG, ...extra, broker: redisBroker(url, prefix, redis) }));
  return nodes;
}

/**
 * A centrifuge-js client (JSON, or the `Centrifuge` class given, e.g. Protobuf's) over
 * WebSocket to `addr`, or over `transports` (a list of { transport, endpoint }) when given.
 */
export function client(addr, { transports, Centrifuge: Client = Centrifuge, ...opts } = {}) {
  const c = new Client(transports ?? `ws://${addr}/connection/websocket`, {
    websocket: WebSocket,
    fetch: globalThis.fetch,
    readableStream: globalThis.ReadableStream,
    eventsource: EventSource,
    emulationEndpoint: `http://${addr}/emulation`,
    minReconnectDelay: 50,
    maxReconnectDelay: 300,
    ...opts,
  });
  c.on('error', () => {});
  return c;
}

export async function connected(c) {
  c.connect();
  await c.ready(5000);
  return c;
}

export async function subscribed(c, channel, opts = {}) {
  const s = c.newSubscription(channel, opts);
  s.subscribe();
  await s.ready(5000);
  return s;
}

export const ready = async (node) => (await fetch(`${node.base}/ready`)).status;

export const users = (presence) => Object.values(presence).map((i) => i.user).sort();

// Everything a subscription went through, in order: numbered publications and the
// subscription's state changes.
export function journal(s) {
  const log = [];
  s.on('publication', (ctx) => log.push({ pub: ctx.data.n, offset: ctx.offset }));
  s.on('subscribed', (ctx) => log.push({ subscribed: true, recovered: ctx.recovered, wasRecovering: ctx.wasRecovering, epoch: ctx.streamPosition?.epoch }));
  s.on('subscribing', (ctx) => log.push({ subscribing: ctx.code }));
  s.on('unsubscribed', (ctx) => log.push({ unsubscribed: ctx.code }));
  return {
    sub: s,
    log,
    seen: () => log.filter((e) => 'pub' in e).map((e) => e.pub),
    subscribes: () => log.filter((e) => e.subscribed),
  };
}

/** A recoverable subscription of `c` to `channel`, journaled from its first subscribe. */
export async function watched(c, channel) {
  const s = c.newSubscription(channel, { recoverable: true, positioned: true });
  const j = journal(s);
  s.subscribe();
  await s.ready(5000);
  return j;
}

// The numbers of `expected` were published in order (and those of `uncertain` may or may
// not have been: their publish failed, perhaps after Redis took it, or Redis ran it
// later). What the client saw is each number at most once, and nothing else; those of
// `expected` in order; a number of `expected` that is missing is allowed only where the
// client was told, between the publications around the gap, that its position could not
// be recovered (a subscribe with `recovered: false`); the last of `expected` must have
// arrived.
export function assertNoSilentGap(log, expected, who = 'the client', uncertain = new Set()) {
  const dump = () => JSON.stringify(log);
  const seen = log.filter((e) => 'pub' in e).map((e) => e.pub);
  assert.equal(new Set(seen).size, seen.length, `${who}: a number repeated: ${dump()}`);
  const wanted = new Set(expected);
  for (const n of seen) assert.ok(wanted.has(n) || uncertain.has(n), `${who}: ${n} was never published: ${dump()}`);
  const certain = seen.filter((n) => wanted.has(n));
  for (let i = 1; i < certain.length; i++) {
    assert.ok(certain[i] > certain[i - 1], `${who}: ${certain[i]} after ${certain[i - 1]}: ${dump()}`);
  }
  assert.equal(seen.at(-1), expected.at(-1), `${who} got the last one: ${dump()}`);
  let next = 0; // the index in `expected` of the next number due
  let told = false;
  for (const e of log) {
    if (e.subscribed && e.recovered === false && e.wasRecovering) told = true;
    if (!('pub' in e)) continue;
    if (!wanted.has(e.pub)) continue; // an uncertain one
    const missed = [];
    while (next < expected.length && expected[next] < e.pub) missed.push(expected[next++]);
    if (expected[next] === e.pub) next++;
    assert.ok(missed.length === 0 || told, `${who} missed ${missed} and was not told: ${dump()}`);
    told = false;
  }
}

/**
 * Publishes 1, 2, 3... to `channel` through `node`'s API, one after another, until
 * `stop()`: `ok` holds the numbers whose publish succeeded, `failed` those whose publish
 * failed, with the error's code.
 */
export function publisher(node, channel, { pause = 5, max = 5000 } = {}) {
  const ok = [];
  const failed = [];
  let running = true;
  let n = 0;
  const done = (async () => {
    while (running && n < max) {
      n += 1;
      try {
        await node.api('publish', { channel, data: { n } });
        ok.push(n);
      } catch (e) {
        failed.push([n, e.code]);
      }
      await new Promise((r) => setTimeout(r, pause));
    }
  })();
  return {
    ok,
    failed,
    get count() { return n; },
    async stop() { running = false; await done; },
  };
}

/**
 * Publishes `count` more numbers after the stopped publisher `pub`'s last, through
 * `node`: the live ones every client must get once everything has healed. Resolves to
 * every number published successfully, in order.
 */
export async function publishMore(node, channel, pub, count = 5) {
  const more = [];
  for (let n = pub.count + 1; n <= pub.count + count; n++) {
    await node.api('publish', { channel, data: { n } });
    more.push(n);
  }
  return [...pub.ok, ...more];
}
