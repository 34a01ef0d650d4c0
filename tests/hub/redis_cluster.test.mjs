// Several `volley serve` nodes on a Redis Cluster of three masters (sharded pub/sub),
// and on two independent Redis instances sharing the channels by a consistent hash,
// against the real centrifuge-js: publications cross nodes, presence and history agree
// from every node, a client reconnected to another node recovers what it missed, on
// channels that live on different masters; each channel's keys are where the broker
// says they are; and a master killed and restarted empty costs only its own channels
// their streams, their subscribers being told.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  DEFAULT_CONFIG, balancer, openNamespace, startRedis, startRedisCluster, token, waitFor,
} from './lib.mjs';
import {
  assertNoSilentGap, client, connected, publishMore, publisher, ready, startNodes, uniquePrefix, users, watched,
} from './nodes.mjs';

// The history key of `channel` under `prefix` (the broker keeps a channel's keys under
// one hash tag, so a Redis Cluster puts them on one slot: that of the channel's name).
const historyKey = (prefix, channel) => `${prefix}:{${channel}}:s`;

describe('a Redis Cluster of three masters', () => {
  let cluster;
  // One channel on each master: [channel, master's port].
  const channels = [];
  before(async () => {
    cluster = await startRedisCluster(3);
    const taken = new Set();
    for (let i = 0; taken.size < 3; i++) {
      const ch = `chat:spread-${i}`;
      const port = await cluster.masterOf(ch);
      if (!taken.has(port)) { taken.add(port); channels.push([ch, port]); }
    }
  });
  after(async () => { await cluster?.stop(); });

  const onCluster = (t, n, prefix) => startNodes(t, n, cluster.urls, { prefix, redis: { cluster: true } });

  test('publications cross nodes on channels of every master, and each channel\'s keys are on its master', async (t) => {
    const prefix = uniquePrefix();
    const [a, b] = await onCluster(t, 2, prefix);
    const alice = await connected(client(a.addr, { token: token({ sub: 'alice' }) }));
    const bob = await connected(client(b.addr, { token: token({ sub: 'bob' }) }));
    t.after(() => { alice.disconnect(); bob.disconnect(); });
    const got = { a: {}, b: {} };
    const bobs = {};
    for (const [ch] of channels) {
      for (const [who, c] of [['a', alice], ['b', bob]]) {
        got[who][ch] = [];
        const s = c.newSubscription(ch, { recoverable: true, positioned: true });
        s.on('publication', (ctx) => got[who][ch].push([ctx.data.n, ctx.offset, ctx.info?.user]));
        s.subscribe();
        await s.ready(5000);
        if (who === 'b') bobs[ch] = s;
      }
    }
    for (const [ch] of channels) {
      await b.api('publish', { channel: ch, data: { n: 1 } });
      await bobs[ch].publish({ n: 2 });
      await a.api('publish', { channel: ch, data: { n: 3 } });
    }
    for (const who of ['a', 'b']) {
      for (const [ch] of channels) {
        await waitFor(() => got[who][ch].length === 3, `three publications of ${ch} on node ${who}`);
        assert.deepEqual(got[who][ch], [[1, 1, undefined], [2, 2, 'bob'], [3, 3, undefined]], `${ch} on node ${who}`);
      }
    }
    // The three channels' histories, one on each master.
    for (const [ch, port] of channels) {
      const key = historyKey(prefix, ch);
      const master = cluster.nodes.find((x) => x.port === port);
      assert.equal(await master.cli('exists', key), '1', `${key} on its master ${port}`);
    }
  });

  test('presence, presence stats and history agree from every node, for channels of every master', async (t) => {
    const nodes = await onCluster(t, 3, uniquePrefix());
    const names = ['alice', 'bob', 'carol'];
    const clients = [];
    t.after(() => clients.forEach((c) => c.disconnect()));
    const subs = names.map(() => ({}));
    for (let i = 0; i < 3; i++) {
      const c = await connected(client(nodes[i].addr, { token: token({ sub: names[i] }) }));
      clients.push(c);
      for (const [ch] of channels) {
        const s = c.newSubscription(ch, { recoverable: true, positioned: true });
        s.subscribe();
        await s.ready(5000);
        subs[i][ch] = s;
      }
    }
    for (const [k, [ch]] of channels.entries()) {
      for (let n = 1; n <= 3; n++) await nodes[(k + n) % 3].api('publish', { channel: ch, data: { n } });
    }
    for (const [ch] of channels) {
      const epochs = new Set();
      for (const [i, node] of nodes.entries()) {
        assert.deepEqual(users((await node.api('presence', { channel: ch })).presence), names, `API presence of ${ch} on node ${i}`);
        assert.deepEqual(await node.api('presence_stats', { channel: ch }), { num_clients: 3, num_users: 3 });
        assert.deepEqual(users((await subs[i][ch].presence()).clients), names, `client presence of ${ch} on node ${i}`);
        const h = await node.api('history', { channel: ch, limit: -1 });
        assert.deepEqual(h.publications.map((p) => [p.data.n, p.offset]), [[1, 1], [2, 2], [3, 3]], `API history of ${ch} on node ${i}`);
        const ch2 = await subs[i][ch].history({ limit: 10 });
        assert.deepEqual(ch2.publications.map((p) => p.data.n), [1, 2, 3], `client history of ${ch} on node ${i}`);
        epochs.add(h.epoch).add(ch2.epoch);
      }
      assert.equal(epochs.size, 1, `one epoch for ${ch}: ${[...epochs]}`);
    }
    clients[2].disconnect();
    for (const [ch] of channels) {
      for (const node of nodes) {
        await waitFor(async () => (await node.api('presence_stats', { channel: ch })).num_clients === 2, `presence of ${ch} without carol`);
      }
    }
  });

  test('recovery across nodes, on a channel of every master', async (t) => {
    const [a, b] = await onCluster(t, 2, uniquePrefix());
    const lb = await balancer([a.addr, b.addr]);
    t.after(() => lb.close());
    const c = client(lb.addr, { token: token({ sub: 'alice' }) });
    t.after(() => c.disconnect());
    await connected(c);
    const journals = {};
    for (const [ch] of channels) journals[ch] = await watched(c, ch);
    const publishAll = async (node, from, to) => {
      for (let n = from; n <= to; n++) for (const [ch] of channels) await node.api('publish', { channel: ch, data: { n } });
    };
    await publishAll(b, 1, 5);
    await waitFor(() => channels.every(([ch]) => journals[ch].seen().length === 5), 'the first five of each');
    lb.backends.splice(0, 1);
    lb.cut();
    await waitFor(() => c.state !== 'connected', 'the client to notice');
    await publishAll(b, 6, 15);
    await waitFor(() => channels.every(([ch]) => journals[ch].seen().length === 15), 'the missed ones of each');
    await publishAll(a, 16, 20);
    await waitFor(() => channels.every(([ch]) => journals[ch].seen().length === 20), 'the live ones after');
    assert.deepEqual(lb.connections(), { [a.addr]: 1, [b.addr]: 1 });
    for (const [ch] of channels) {
      const j = journals[ch];
      assert.deepEqual(j.seen(), Array.from({ length: 20 }, (_, i) => i + 1), ch);
      const last = j.subscribes().at(-1);
      assert.equal(j.subscribes().length, 2);
      assert.equal(last.wasRecovering, true);
      assert.equal(last.recovered, true, `${ch}: ${JSON.stringify(j.log)}`);
    }
  });
});

describe('a master of the Redis Cluster killed and restarted empty', () => {
  test('subscribers of its channels are told, never a silent gap or a repeat; those of the other masters lose nothing', async (t) => {
    const own = await startRedisCluster(3);
    t.after(() => own.stop());
    // One channel on the master that dies, one on another (of the namespace `long`,
    // whose history keeps every number).
    const pick = async (want) => {
      for (let i = 0; ; i++) {
        const ch = `long:master-${i}`;
        if (want(await own.masterOf(ch))) return ch;
      }
    };
    const victim = own.nodes[0];
    const lost = await pick((port) => port === victim.port);
    const kept = await pick((port) => port !== victim.port);
    const extra = {
      channel: { namespaces: [...DEFAULT_CONFIG.channel.namespaces, openNamespace('long', { history_size: 100000 })] },
    };
    const [a, b] = await startNodes(t, 2, own.urls, { extra, redis: { cluster: true, command_timeout: '1s' } });
    const clients = [await connected(client(a.addr, { token: token({ sub: 'u1' }) })), await connected(client(b.addr, { token: token({ sub: 'u2' }) }))];
    t.after(() => clients.forEach((c) => c.disconnect()));
    const journals = { [lost]: [], [kept]: [] };
    for (const c of clients) for (const ch of [lost, kept]) journals[ch].push(await watched(c, ch));
    const pubs = { [lost]: publisher(b, lost, { pause: 20 }), [kept]: publisher(a, kept, { pause: 20 }) };
    t.after(() => Promise.all(Object.values(pubs).map((p) => p.stop())));
    const all = () => [...journals[lost], ...journals[kept]];
    await waitFor(() => all().every((j) => j.seen().length >= 5), 'the first publications');

    const epochs = Object.fromEntries([lost, kept].map((ch) => [ch, journals[ch][0].subscribes()[0].epoch]));
    await victim.kill();
    const marks = journals[lost].map((j) => j.log.length);
    await waitFor(() => pubs[lost].failed.length >= 3, 'publishing to the dead master failing', 15000);
    await victim.restart();
    for (const node of [a, b]) await waitFor(async () => await ready(node) === 200, `/ready 200 on ${node.addr}`, 15000);
    const backAt = pubs[lost].count;
    await waitFor(() => pubs[lost].ok.filter((n) => n > backAt).length >= 10, 'publishing again', 15000);
    await Promise.all(Object.values(pubs).map((p) => p.stop()));
    assert.deepEqual([...new Set(pubs[lost].failed.map(([, code]) => code))], [100], 'failed publishes fail with 100');

    // The stream of the channel on the restarted master began a new epoch: its
    // subscribers are told.
    for (const [i, j] of journals[lost].entries()) {
      await waitFor(() => j.log.slice(marks[i]).some((e) => e.subscribed && e.recovered === false), `client ${i} told its position in ${lost} is gone`, 15000);
      await waitFor(() => j.sub.state === 'subscribed', `client ${i} subscribed again`);
    }
    for (const ch of [lost, kept]) {
      const expected = await publishMore(a, ch, pubs[ch]);
      const uncertain = new Set(pubs[ch].failed.map(([n]) => n));
      for (const [i, j] of journals[ch].entries()) {
        await waitFor(() => j.seen().at(-1) === expected.at(-1), `client ${i}: the live ones of ${ch}`);
        assertNoSilentGap(j.log, expected, `client ${i} on ${ch}`, uncertain);
      }
    }
    // The other master kept its data: nothing of its channel was lost, nobody told so.
    for (const [i, j] of journals[kept].entries()) {
      assert.ok(j.subscribes().every((e) => e.recovered || !e.wasRecovering), `client ${i} on ${kept}: ${JSON.stringify(j.log)}`);
      assert.equal(j.subscribes().at(-1).epoch, epochs[kept]);
    }
    for (const j of journals[lost]) assert.notEqual(j.subscribes().at(-1).epoch, epochs[lost]);
    for (const c of clients) assert.equal(c.state, 'connected');
  });
});

describe('two independent Redis instances', () => {
  let redis;
  before(async () => { redis = [await startRedis(), await startRedis()]; });
  after(async () => { await Promise.all((redis ?? []).map((r) => r.stop())); });

  test('publications cross nodes on every channel, and the channels are spread over both instances', async (t) => {
    const prefix = uniquePrefix();
    const [a, b] = await startNodes(t, 2, redis.map((r) => r.url), { prefix });
    const alice = await connected(client(a.addr, { token: token({ sub: 'alice' }) }));
    const bob = await connected(client(b.addr, { token: token({ sub: 'bob' }) }));
    t.after(() => { alice.disconnect(); bob.disconnect(); });
    const names = Array.from({ length: 16 }, (_, i) => `chat:sharded-${i}`);
    const got = {};
    const bobs = {};
    for (const ch of names) {
      got[ch] = [];
      const s = alice.newSubscription(ch, { recoverable: true, positioned: true });
      s.on('publication', (ctx) => got[ch].push([ctx.data.n, ctx.offset]));
      s.subscribe();
      await s.ready(5000);
      bobs[ch] = bob.newSubscription(ch);
      bobs[ch].subscribe();
      await bobs[ch].ready(5000);
    }
    for (const ch of names) {
      await b.api('publish', { channel: ch, data: { n: 1 } });
      await bobs[ch].publish({ n: 2 });
    }
    for (const ch of names) {
      await waitFor(() => got[ch].length === 2, `the publications of ${ch} on node A`);
      assert.deepEqual(got[ch], [[1, 1], [2, 2]], ch);
      const h = await a.api('history', { channel: ch, limit: -1 });
      assert.deepEqual(h.publications.map((p) => p.data.n), [1, 2]);
    }
    // Each channel's history lives in exactly one instance, and both hold some.
    const keys = await Promise.all(redis.map(async (r) => new Set((await r.cli('--scan', '--pattern', `${prefix}:*`)).split('\n'))));
    const where = names.map((ch) => keys.map((k) => k.has(historyKey(prefix, ch))));
    for (const [i, ch] of names.entries()) {
      assert.equal(where[i].filter(Boolean).length, 1, `${ch}'s history in one instance: ${where[i]}`);
    }
    const perInstance = [0, 1].map((k) => where.filter((w) => w[k]).length);
    assert.ok(perInstance.every((n) => n > 0), `channels in both instances: ${perInstance}`);
  });
});
