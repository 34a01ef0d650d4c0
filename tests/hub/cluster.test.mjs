// Several `volley serve` nodes sharing one Redis (the Redis broker), against the real
// centrifuge-js: a publication made on one node reaches subscribers on the others;
// presence, presence stats and history agree from every node, and join/leave pushes
// cross nodes; a client that reconnects to another node recovers what it missed; the
// emulation transports work with each HTTP request sent to any node (no sticky
// sessions); the server API reaches a user's connections on every node and `info`
// lists every node. Then the failures, each watched by clients counting numbered
// publications (none lost, none repeated, unless the client was told): Redis killed
// and restarted empty, Redis unreachable for a while, Redis frozen for a while, a node
// killed while its clients connect through a balancer.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Centrifuge } from 'centrifuge';
import { Centrifuge as CentrifugeProtobuf } from 'centrifuge/build/protobuf';
import {
  DEFAULT_CONFIG, balancer, gate, once, openNamespace, startRedis, token, waitFor,
} from './lib.mjs';
import {
  assertNoSilentGap, client, connected, publishMore, publisher, ready, startNodes as startNodesOn, subscribed, users, watched,
} from './nodes.mjs';

let redis;
before(async () => { redis = await startRedis(); });
after(async () => { await redis?.stop(); });

/** `n` nodes on the file's Redis, or on `url`. */
const startNodes = (t, n, { url = redis.url, ...opts } = {}) => startNodesOn(t, n, url, opts);

// A client on each of nodes `a` and `b` watching `ch` (their drops recorded), and a
// publisher through `b` that never stops, once both clients saw its first numbers.
async function watchedOnBoth(t, a, b, ch) {
  const clients = [await connected(client(a.addr, { token: token({ sub: 'u1' }) })), await connected(client(b.addr, { token: token({ sub: 'u2' }) }))];
  t.after(() => clients.forEach((c) => c.disconnect()));
  const drops = [];
  for (const c of clients) c.on('disconnected', (ctx) => drops.push(ctx)).on('connecting', (ctx) => drops.push(ctx));
  const journals = [];
  for (const c of clients) journals.push(await watched(c, ch));
  const pub = publisher(b, ch, { pause: 20 });
  t.after(() => pub.stop());
  await waitFor(() => journals.every((j) => j.seen().length >= 5), 'the first publications');
  return { clients, drops, journals, pub };
}

// Brings Redis back (`back()`), then: both nodes ready again, publishing again, failed
// publishes failed with 100, and every client got every number once (a number whose
// publish failed at most once), never a silent gap.
async function healed(nodes, ch, pub, journals, back) {
  const backAt = pub.count;
  await back();
  for (const node of nodes) await waitFor(async () => await ready(node) === 200, `/ready 200 again on ${node.addr}`, 15000);
  await waitFor(() => pub.ok.filter((n) => n > backAt).length >= 20, 'publishing again', 15000);
  await pub.stop();
  assert.deepEqual([...new Set(pub.failed.map(([, code]) => code))], [100], 'failed publishes fail with 100');
  const expected = await publishMore(nodes[0], ch, pub);
  const uncertain = new Set(pub.failed.map(([n]) => n));
  for (const [i, j] of journals.entries()) {
    await waitFor(() => j.seen().at(-1) === expected.at(-1), `client ${i}: every number`, 15000);
    assertNoSilentGap(j.log, expected, `client ${i}`, uncertain);
    assert.deepEqual(j.seen().filter((n) => !uncertain.has(n)), expected, `client ${i} lost nothing: ${JSON.stringify(j.log)}`);
  }
}

describe('several nodes on one Redis', () => {
  test('a client on node A receives what the API published on node B, and what a client on B published', async (t) => {
    const [a, b] = await startNodes(t, 2);
    const ch = 'chat:cross-node';
    const alice = await connected(client(a.addr, { token: token({ sub: 'alice' }) }));
    const bob = await connected(client(b.addr, { token: token({ sub: 'bob' }) }));
    t.after(() => { alice.disconnect(); bob.disconnect(); });
    const sa = await subscribed(alice, ch, { recoverable: true, positioned: true });
    const sb = await subscribed(bob, ch, { recoverable: true, positioned: true });
    const onA = [];
    const onB = [];
    sa.on('publication', (ctx) => onA.push(ctx));
    sb.on('publication', (ctx) => onB.push(ctx));

    await b.api('publish', { channel: ch, data: { text: 'from the API on B' } });
    await sb.publish({ text: 'from bob on B' });
    await a.api('publish', { channel: ch, data: { text: 'from the API on A' } });
    await waitFor(() => onA.length === 3 && onB.length === 3, 'three publications on each node');
    for (const got of [onA, onB]) {
      assert.deepEqual(got.map((p) => p.data.text), ['from the API on B', 'from bob on B', 'from the API on A']);
      // One stream, numbered once for the whole cluster.
      assert.deepEqual(got.map((p) => p.offset), [1, 2, 3]);
      assert.equal(got[1].info.user, 'bob');
    }
  });

  test('presence, presence stats and history agree from every node; join and leave cross nodes', async (t) => {
    const nodes = await startNodes(t, 3);
    const ch = 'chat:agree';
    const names = ['alice', 'bob', 'carol'];
    const clients = [];
    t.after(() => clients.forEach((c) => c.disconnect()));
    const subs = [];
    const joins = [];
    const leaves = [];
    for (let i = 0; i < 3; i++) {
      const c = await connected(client(nodes[i].addr, { token: token({ sub: names[i], info: { name: names[i] } }) }));
      clients.push(c);
      const s = c.newSubscription(ch, { recoverable: true, positioned: true, joinLeave: true });
      if (i === 0) {
        s.on('join', (ctx) => joins.push(ctx.info.user));
        s.on('leave', (ctx) => leaves.push(ctx.info.user));
      }
      s.subscribe();
      await s.ready(5000);
      subs.push(s);
    }
    // Alice, on node A, sees the others join on B and C.
    await waitFor(() => joins.includes('bob') && joins.includes('carol'), 'the joins from B and C on A');

    for (const [i, node] of nodes.entries()) {
      const p = await node.api('presence', { channel: ch });
      assert.deepEqual(users(p.presence), names, `API presence on node ${i}`);
      const carol = Object.values(p.presence).find((x) => x.user === 'carol');
      assert.deepEqual(carol.conn_info, { name: 'carol' });
      assert.deepEqual(await node.api('presence_stats', { channel: ch }), { num_clients: 3, num_users: 3 }, `API presence_stats on node ${i}`);
      assert.deepEqual(users((await subs[i].presence()).clients), names, `client presence on node ${i}`);
      assert.deepEqual(await subs[i].presenceStats(), { numClients: 3, numUsers: 3 }, `client presence stats on node ${i}`);
    }

    // A publication made on each node; all in one history, read alike from every node.
    for (const [i, node] of nodes.entries()) await node.api('publish', { channel: ch, data: { n: i + 1 } });
    const histories = [];
    for (const [i, node] of nodes.entries()) {
      const h = await node.api('history', { channel: ch, limit: -1 });
      assert.deepEqual(h.publications.map((p) => [p.data.n, p.offset]), [[1, 1], [2, 2], [3, 3]], `API history on node ${i}`);
      assert.equal(h.offset, 3);
      histories.push(h.epoch);
      const ch2 = await subs[i].history({ limit: 10 });
      assert.deepEqual(ch2.publications.map((p) => p.data.n), [1, 2, 3], `client history on node ${i}`);
      assert.equal(ch2.epoch, h.epoch);
      assert.equal(ch2.offset, 3);
    }
    assert.equal(new Set(histories).size, 1, `one epoch: ${histories}`);

    // Carol leaves on C: Alice sees it on A, and presence says so from every node.
    clients[2].disconnect();
    await waitFor(() => leaves.includes('carol'), 'the leave from C on A');
    for (const [i, node] of nodes.entries()) {
      await waitFor(async () => (await node.api('presence_stats', { channel: ch })).num_clients === 2, `presence without carol on node ${i}`);
      assert.deepEqual(users((await node.api('presence', { channel: ch })).presence), ['alice', 'bob']);
    }
  });

  test('recovery across nodes: cut from node A, reconnected to node B, the client gets exactly what it missed', async (t) => {
    const [a, b] = await startNodes(t, 2);
    const ch = 'chat:recover-elsewhere';
    // Through a balancer: to A first; once A is taken out of it, to B.
    const lb = await balancer([a.addr, b.addr]);
    t.after(() => lb.close());
    const c = client(lb.addr, { token: token({ sub: 'alice' }) });
    t.after(() => c.disconnect());
    await connected(c);
    assert.deepEqual(lb.connections(), { [a.addr]: 1 });
    const j = await watched(c, ch);
    for (let n = 1; n <= 5; n++) await b.api('publish', { channel: ch, data: { n } });
    await waitFor(() => j.seen().length === 5, 'the first five');
    lb.backends.splice(0, 1);
    lb.cut();
    await waitFor(() => c.state !== 'connected', 'the client to notice');
    for (let n = 6; n <= 15; n++) await b.api('publish', { channel: ch, data: { n } });
    await waitFor(() => j.seen().length === 15, 'the missed ones');
    // Published on A, which no longer has the client: through Redis to B.
    for (let n = 16; n <= 20; n++) await a.api('publish', { channel: ch, data: { n } });
    await waitFor(() => j.seen().length === 20, 'the live ones after');
    assert.deepEqual(lb.connections(), { [a.addr]: 1, [b.addr]: 1 });
    assert.deepEqual(j.seen(), Array.from({ length: 20 }, (_, i) => i + 1));
    assert.deepEqual(j.log.filter((e) => 'pub' in e).map((e) => e.offset), Array.from({ length: 20 }, (_, i) => i + 1));
    const last = j.subscribes().at(-1);
    assert.equal(j.subscribes().length, 2);
    assert.equal(last.wasRecovering, true);
    assert.equal(last.recovered, true);
  });

  for (const [transport, format] of [['http_stream', 'json'], ['http_stream', 'protobuf'], ['sse', 'json']]) {
    test(`centrifuge-js over ${transport} (${format}): the stream on node A, every command to node B's /emulation`, async (t) => {
      const [a, b] = await startNodes(t, 2);
      const ch = `chat:emulation-${transport}-${format}`;
      // Over Protobuf, payloads are bytes (here, JSON text).
      const out = format === 'json' ? (v) => v : (v) => new TextEncoder().encode(JSON.stringify(v));
      const data = format === 'json' ? (d) => d : (d) => JSON.parse(new TextDecoder().decode(d));
      const c = client(a.addr, {
        Centrifuge: format === 'json' ? Centrifuge : CentrifugeProtobuf,
        token: token({ sub: 'erin' }),
        transports: [{ transport, endpoint: `http://${a.addr}/connection/${transport}` }],
        emulationEndpoint: `http://${b.addr}/emulation`,
      });
      t.after(() => c.disconnect());
      const ctx = once(c, 'connected');
      await connected(c);
      assert.equal((await ctx).transport, transport);
      // The subscribe went to B, which passed it to A through Redis.
      const s = await subscribed(c, ch, { recoverable: true, positioned: true });
      const got = [];
      s.on('publication', (p) => got.push(p));
      await s.publish(out({ n: 1 }));
      const api = (node, n) => node.api('publish', format === 'json'
        ? { channel: ch, data: { n } }
        : { channel: ch, b64data: Buffer.from(JSON.stringify({ n })).toString('base64') });
      await api(b, 2);
      await api(a, 3);
      await waitFor(() => got.length === 3, 'the three publications over the stream');
      assert.deepEqual(got.map((p) => [data(p.data).n, p.offset]), [[1, 1], [2, 2], [3, 3]]);
      assert.equal(got[0].info.user, 'erin');
      const h = await s.history({ limit: 10 });
      assert.deepEqual(h.publications.map((p) => data(p.data).n), [1, 2, 3]);
      assert.deepEqual(users((await s.presence()).clients), ['erin']);
      const rpcRefused = await c.rpc('nothing', out({})).catch((e) => e.code);
      assert.equal(rpcRefused, 104);
    });
  }

  test('long polling: the connect on node A, then polls and commands alternating between B and A', async (t) => {
    // A poll with nothing to take is answered 204 after 2 s (25 s by default).
    const [a, b] = await startNodes(t, 2, { extra: { long_poll: { timeout: '2s' } } });
    const ch = 'chat:long-poll';
    // Polls alternate between B and A, and so do commands.
    const alternate = () => { let turn = 0; return () => [b, a][turn++ % 2]; };
    const nextPoll = alternate();
    const nextCommand = alternate();
    const received = [];
    const take = async (r) => {
      if (r.status === 204) return;
      const text = await r.text();
      assert.equal(r.status, 200, `a poll: ${r.status} ${text}`);
      for (const line of text.split('\n')) if (line) received.push(JSON.parse(line));
    };
    await take(await fetch(`${a.base}/connection/long_poll`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ id: 1, connect: { token: token({ sub: 'lp' }) } }),
    }));
    const connect = received.find((m) => m.id === 1)?.connect;
    assert.ok(connect?.session && connect?.node, `the connect result names session and node: ${JSON.stringify(received)}`);
    const { session, node } = connect;
    const polls = { [a.base]: 0, [b.base]: 0 };
    const commands = { [a.base]: 0, [b.base]: 0 };
    const poll = async () => {
      const target = nextPoll();
      polls[target.base] += 1;
      await take(await fetch(`${target.base}/connection/long_poll?session=${encodeURIComponent(session)}&node=${encodeURIComponent(node)}`));
      // Pings are answered, as a client does.
      if (received.some((m) => Object.keys(m).length === 0)) {
        await command({});
        received.splice(0, received.length, ...received.filter((m) => Object.keys(m).length > 0));
      }
    };
    const command = async (cmd) => {
      const target = nextCommand();
      commands[target.base] += 1;
      const r = await fetch(`${target.base}/emulation`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ session, node, data: JSON.stringify(cmd) }),
      });
      assert.ok(r.ok, `/emulation on ${target.base}: ${r.status}`);
    };
    const reply = async (id) => waitFor(async () => {
      const m = received.find((x) => x.id === id);
      if (!m) await poll();
      return m;
    }, `the reply ${id}`, 20000);

    await command({ id: 2, subscribe: { channel: ch } });
    const sub = await reply(2);
    assert.ok(sub.subscribe && !sub.error, JSON.stringify(sub));
    await command({ id: 3, publish: { channel: ch, data: { n: 1 } } });
    assert.ok(!(await reply(3)).error);
    for (let n = 2; n <= 6; n++) await [a, b][n % 2].api('publish', { channel: ch, data: { n } });
    const pubs = () => received.filter((m) => m.push?.pub && m.push.channel === ch).map((m) => [m.push.pub.data.n, m.push.pub.offset]);
    await waitFor(async () => {
      if (pubs().length < 6) await poll();
      return pubs().length >= 6;
    }, 'six publications over the polls', 20000);
    assert.deepEqual(pubs(), [[1, 1], [2, 2], [3, 3], [4, 4], [5, 5], [6, 6]]);
    await command({ id: 4, presence: { channel: ch } });
    const p = await reply(4);
    assert.deepEqual(users(p.presence.presence), ['lp']);
    assert.ok(polls[a.base] > 0 && polls[b.base] > 0, `polls on both nodes: ${JSON.stringify(polls)}`);
    assert.ok(commands[a.base] > 0 && commands[b.base] > 0, `commands to both nodes: ${JSON.stringify(commands)}`);
    await command({ id: 5, unsubscribe: { channel: ch } });
    await reply(5);
  });

  test('the API on node B reaches a user connected on node A: subscribe, unsubscribe, refresh, disconnect', async (t) => {
    const [a, b] = await startNodes(t, 2);
    const c = client(a.addr, { token: token({ sub: 'dave' }) });
    t.after(() => c.disconnect());
    const serverSubs = [];
    const serverUnsubs = [];
    const pubs = [];
    c.on('subscribed', (ctx) => serverSubs.push(ctx.channel));
    c.on('unsubscribed', (ctx) => serverUnsubs.push(ctx.channel));
    c.on('publication', (ctx) => pubs.push(ctx.data));
    await connected(c);
    const ch = 'chat:pushed-from-b';
    await b.api('subscribe', { user: 'dave', channel: ch });
    await waitFor(() => serverSubs.includes(ch), 'the server-side subscribe from B');
    await b.api('publish', { channel: ch, data: { n: 1 } });
    await waitFor(() => pubs.length === 1, 'a publication on the server-side subscription');
    await b.api('unsubscribe', { user: 'dave', channel: ch });
    await waitFor(() => serverUnsubs.includes(ch), 'the server-side unsubscribe from B');
    // Refreshed as expired: the connection ends with 3005 (the client reconnects).
    const codes = [];
    c.on('connecting', (ctx) => codes.push(ctx.code));
    await b.api('refresh', { user: 'dave', expired: true });
    await waitFor(() => codes.includes(3005), 'the expired connection (3005)');
    await waitFor(() => c.state === 'connected', 'the reconnect');
    const d = once(c, 'disconnected');
    await b.api('disconnect', { user: 'dave', disconnect: { code: 4501, reason: 'go away' } });
    const ctx = await d;
    assert.equal(ctx.code, 4501);
    assert.equal(ctx.reason, 'go away');
    assert.equal(c.state, 'disconnected');
  });

  test('the API `info` on either node lists both nodes', async (t) => {
    const [a, b] = await startNodes(t, 2);
    const c = await connected(client(a.addr, { token: token({ sub: 'fay' }) }));
    t.after(() => c.disconnect());
    for (const node of [a, b]) {
      const info = await waitFor(async () => {
        const r = await node.api('info');
        return r.nodes.length === 2 && r.nodes.some((x) => x.num_clients === 1) && r;
      }, `both nodes in info on ${node.addr}`, 15000);
      const names = info.nodes.map((x) => x.name);
      assert.equal(new Set(names).size, 2, `two distinct nodes: ${names}`);
      assert.deepEqual(info.nodes.map((x) => x.num_clients).sort(), [0, 1]);
    }
    const uids = async (node) => (await node.api('info')).nodes.map((x) => x.uid).sort();
    assert.deepEqual(await uids(a), await uids(b));
  });
});

describe('failures', () => {
  // Each scenario runs while a publisher keeps publishing numbered messages through the
  // API of a node, and clients count them, on channels of the namespace `long`, whose
  // history keeps all of them (however long a reconnect takes on a busy machine, what
  // was missed can be recovered).
  const extra = {
    channel: { namespaces: [...DEFAULT_CONFIG.channel.namespaces, openNamespace('long', { history_size: 100000 })] },
  };

  test('Redis killed and restarted empty on the same port: clients are told, never a silent gap or a repeat', async (t) => {
    const own = await startRedis();
    t.after(() => own.stop());
    const [a, b] = await startNodes(t, 2, { url: own.url, extra });
    const ch = 'long:redis-restart';
    const clients = [await connected(client(a.addr, { token: token({ sub: 'u1' }) })), await connected(client(b.addr, { token: token({ sub: 'u2' }) }))];
    t.after(() => clients.forEach((c) => c.disconnect()));
    const journals = [];
    for (const c of clients) journals.push(await watched(c, ch));
    const epoch = journals[0].subscribes()[0].epoch;
    const pub = publisher(b, ch, { pause: 20 });
    t.after(() => pub.stop());
    await waitFor(() => journals.every((j) => j.seen().length >= 5), 'the first publications');

    await own.kill();
    const marks = journals.map((j) => j.log.length);
    for (const node of [a, b]) await waitFor(async () => await ready(node) === 503, `/ready 503 on ${node.addr}`);
    await assert.rejects(a.api('publish', { channel: ch, data: { n: 0 } }), (e) => e.code === 100, 'a publish while Redis is down fails with 100');
    await waitFor(() => pub.failed.length >= 3, 'the publisher failing');
    const restartedAt = pub.count;
    await own.restart();
    for (const node of [a, b]) await waitFor(async () => await ready(node) === 200, `/ready 200 on ${node.addr}`, 15000);
    await waitFor(() => pub.ok.filter((n) => n > restartedAt).length >= 20, 'publishing again', 15000);
    await pub.stop();
    assert.deepEqual([...new Set(pub.failed.map(([, code]) => code))], [100], 'failed publishes fail with 100');
    // The stream restarted in a new epoch: each client is told (resubscribed, not
    // recovered).
    for (const [i, j] of journals.entries()) {
      await waitFor(() => j.log.slice(marks[i]).some((e) => e.subscribed && e.recovered === false), `client ${i} told its position is gone`, 15000);
      await waitFor(() => j.sub.state === 'subscribed', `client ${i} subscribed again`);
    }
    const expected = await publishMore(a, ch, pub);
    const uncertain = new Set(pub.failed.map(([n]) => n));
    for (const [i, j] of journals.entries()) {
      await waitFor(() => j.seen().at(-1) === expected.at(-1), `client ${i}: the live ones after the restart`);
      assertNoSilentGap(j.log, expected, `client ${i}`, uncertain);
      assert.notEqual(j.subscribes().at(-1).epoch, epoch, 'the new stream has a new epoch');
    }
    for (const c of clients) assert.equal(c.state, 'connected');
  });

  test('Redis unreachable for a while: publishing fails with 100, clients stay connected, /ready is 503, then all heals and nothing is lost', async (t) => {
    const own = await startRedis();
    t.after(() => own.stop());
    const door = await gate(`127.0.0.1:${own.port}`);
    t.after(() => door.close());
    const [a, b] = await startNodes(t, 2, { url: door.url, extra });
    const ch = 'long:redis-away';
    const { clients, drops, journals, pub } = await watchedOnBoth(t, a, b, ch);

    await door.down();
    for (const node of [a, b]) await waitFor(async () => await ready(node) === 503, `/ready 503 on ${node.addr}`);
    await assert.rejects(a.api('publish', { channel: ch, data: { n: 0 } }), (e) => e.code === 100, 'a publish on A while Redis is away');
    await waitFor(() => pub.failed.length >= 3, 'the publisher failing');
    // Away for a few seconds: the clients stay.
    await sleep(3000);
    assert.deepEqual(drops, []);
    for (const c of clients) assert.equal(c.state, 'connected');
    assert.equal(await ready(a), 503);
    assert.equal(await ready(b), 503);

    // Redis kept its data: whether the nodes resubscribed in time or a client was made
    // to resubscribe and recover, every number published arrives, once.
    await healed([a, b], ch, pub, journals, () => door.up());
    for (const [i, j] of journals.entries()) {
      assert.ok(j.subscribes().every((e) => e.recovered || !e.wasRecovering), `client ${i} never lost its position: ${JSON.stringify(j.log)}`);
    }
    assert.deepEqual(drops, [], 'no client was disconnected');
  });

  test('Redis frozen for a while (SIGSTOP): commands time out with 100, clients stay connected, /ready is 503, then all heals and nothing is lost', async (t) => {
    const own = await startRedis();
    t.after(() => own.stop());
    // Commands that get no answer fail after 1 s (5 s by default).
    const [a, b] = await startNodes(t, 2, { url: own.url, extra, redis: { command_timeout: '1s' } });
    const ch = 'long:redis-frozen';
    const { clients, drops, journals, pub } = await watchedOnBoth(t, a, b, ch);

    own.pause();
    t.after(() => own.resume());
    await waitFor(() => pub.failed.length >= 2, 'the publisher failing', 15000);
    for (const node of [a, b]) await waitFor(async () => await ready(node) === 503, `/ready 503 on ${node.addr}`, 15000);
    assert.deepEqual(drops, []);
    for (const c of clients) assert.equal(c.state, 'connected');

    // Redis kept its data; a publish that timed out may still have been run when Redis
    // woke up.
    await healed([a, b], ch, pub, journals, () => own.resume());
    assert.deepEqual(drops, [], 'no client was disconnected');
  });

  test('a node killed (SIGKILL): its clients reconnect through the balancer to the other node and recover', async (t) => {
    const [a, b] = await startNodes(t, 2, { extra });
    const lb = await balancer([a.addr, b.addr]);
    t.after(() => lb.close());
    const ch = 'long:node-dies';
    const clients = [];
    t.after(() => clients.forEach((c) => c.disconnect()));
    const journals = [];
    for (let i = 0; i < 3; i++) {
      const c = await connected(client(lb.addr, { token: token({ sub: `u${i}` }), minReconnectDelay: 100, maxReconnectDelay: 500 }));
      clients.push(c);
      journals.push(await watched(c, ch));
    }
    assert.deepEqual(lb.connections(), { [a.addr]: 3 });
    const pub = publisher(b, ch, { pause: 20 });
    t.after(() => pub.stop());
    await waitFor(() => journals.every((j) => j.seen().length >= 5), 'the first publications');

    await a.stop('SIGKILL');
    await waitFor(() => journals.every((j) => j.subscribes().length === 2), 'every client subscribed again', 15000);
    const backAt = pub.count;
    await waitFor(() => pub.ok.filter((n) => n > backAt).length >= 10, 'more publications');
    await pub.stop();
    assert.deepEqual(pub.failed, [], 'node B published all along');
    const expected = await publishMore(b, ch, pub);
    for (const [i, j] of journals.entries()) {
      await waitFor(() => j.seen().at(-1) === expected.at(-1), `client ${i}: every number`);
      assert.deepEqual(j.seen(), expected, `client ${i}: ${JSON.stringify(j.log)}`);
      const last = j.subscribes().at(-1);
      assert.equal(last.wasRecovering, true);
      assert.equal(last.recovered, true);
    }
    assert.deepEqual(lb.connections(), { [a.addr]: 3, [b.addr]: 3 });
  });
});
