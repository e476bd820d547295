// Rooms against a real broker: history, last values, hello and presence (docs/PROTOCOL.md,
// "Rooms"). Run with the other tests: node --experimental-websocket --test clients/js/test/
// (cargo test runs them through tests/tests/js_client_node_tests.rs, on both backends; on a
// cluster the two clients of a test sit on different wharf nodes).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { WharfClient, WharfError } from '../wharf.js';
import { Broker, until } from './broker.mjs';

const fast = { minReconnectDelay: 20, maxReconnectDelay: 200, requestTimeout: 3000 };

function clientOn(broker, i, options = {}) {
  return new WharfClient(broker.urlsFrom(i), { ...fast, ...options });
}

/** Records what a callback is given; `wait(check)` resolves once `check(list)` holds. */
function recorder() {
  const list = [];
  const changed = new EventEmitter();
  const push = (x) => { list.push(x); changed.emit('x'); };
  const wait = (check, ms) => until(() => check(list), (fn) => { changed.on('x', fn); return () => changed.off('x', fn); }, ms);
  return { list, push, wait };
}

test('history pages through a room oldest first, and last gives the newest event per topic', async () => {
  const broker = await Broker.start();
  const publisher = clientOn(broker, 0);
  const reader = clientOn(broker, 1);
  try {
    await Promise.all([publisher.connect(), reader.connect()]);
    // room.a: seqs 1, 2, 4, 5, 7; room.b: 3, 6.
    const topics = ['room.a', 'room.a', 'room.b', 'room.a', 'room.a', 'room.b', 'room.a'];
    const seqs = [];
    for (const [i, topic] of topics.entries()) seqs.push(await publisher.publish(topic, { n: i + 1 }));
    assert.deepEqual(seqs, [1, 2, 3, 4, 5, 6, 7]);

    const newest = await reader.history('room.a', { limit: 3 });
    assert.deepEqual(newest.events.map((e) => e.seq), [4, 5, 7]);
    assert.equal(newest.more, true);
    assert.equal(newest.firstSeq, 1);
    const e = newest.events[2];
    assert.equal(e.topic, 'room.a');
    assert.deepEqual(e.payload, { n: 7 });
    assert.match(e.publishedAt, /^\d{4}-\d\d-\d\dT.*Z$/);
    assert.equal(e.published_at, undefined, 'camelCase, like delivered events');

    // Backwards from the first seq of the page: the rest, and nothing beyond.
    const older = await reader.history('room.a', { limit: 3, before: newest.events[0].seq });
    assert.deepEqual(older.events.map((x) => x.seq), [1, 2]);
    assert.equal(older.more, false);
    // Forwards.
    const after = await reader.history('room.a', { limit: 2, after: 2 });
    assert.deepEqual(after.events.map((x) => x.seq), [4, 5]);
    assert.equal(after.more, true);
    // The broker's default limit (50) takes the whole room; a pattern takes both rooms.
    assert.deepEqual((await reader.history('room.a')).events.map((x) => x.seq), [1, 2, 4, 5, 7]);
    assert.deepEqual((await reader.history('room.>')).events.map((x) => x.seq), seqs);
    assert.deepEqual((await reader.history('room.none')).events, []);

    const last = await reader.last('room.*');
    assert.deepEqual(last.events.map((x) => [x.topic, x.seq, x.payload.n]), [['room.a', 7, 7], ['room.b', 6, 6]]);
    assert.equal(last.more, false);
    const one = await reader.last('room.*', { limit: 1 });
    assert.deepEqual(one.events.map((x) => x.topic), ['room.a']);
    assert.equal(one.more, true);

    await assert.rejects(reader.history('room.a', { limit: 1001 }), (err) => err instanceof WharfError && err.code === 'bad_request');
    await assert.rejects(reader.history('room..a'), (err) => err.code === 'invalid_pattern');
  } finally {
    publisher.close();
    reader.close();
    await broker.stop();
  }
});

test('hello names a client in presence; subscriptions with joinLeave see clients come and go', async () => {
  const broker = await Broker.start();
  const ana = clientOn(broker, 0);
  const ben = clientOn(broker, 1);
  try {
    // Before connecting: remembered, said once connected.
    await ana.hello('ana', { name: 'Ana' });
    assert.equal(ana.state, 'connected');
    const changes = recorder();
    const emitted = recorder();
    ana.on('join', emitted.push);
    ana.on('leave', emitted.push);
    const events = recorder();
    await ana.subscribe('room.lobby', {
      presence: true,
      joinLeave: true,
      onJoin: changes.push,
      onLeave: changes.push,
    }, events.push);

    await ben.hello('ben', { name: 'Ben' });
    const benSub = await ben.subscribe('room.lobby', { presence: true }, () => {});
    await changes.wait((l) => l.some((c) => c.type === 'join' && c.client === 'ben'));
    const joined = changes.list.find((c) => c.client === 'ben');
    assert.deepEqual([joined.type, joined.topic, joined.info], ['join', 'room.lobby', { name: 'Ben' }]);
    // Also emitted on the client, like gap and lost.
    await emitted.wait((l) => l.some((c) => c.type === 'join' && c.client === 'ben'));

    const here = await ben.presence('room.lobby');
    assert.equal(here.topic, 'room.lobby');
    assert.equal(here.count, 2);
    assert.deepEqual(here.clients.map((c) => [c.client, c.info, c.connections]), [['ana', { name: 'Ana' }, 1], ['ben', { name: 'Ben' }, 1]]);
    assert.ok(here.clients.every((c) => typeof c.since === 'string' && !Number.isNaN(Date.parse(c.since))), JSON.stringify(here));

    // Events and presence pushes share the subscription, in arrival order.
    await ben.publish('room.lobby', { text: 'hi' });
    await events.wait((l) => l.length === 1);
    assert.deepEqual(events.list[0].payload, { text: 'hi' });

    // An unsubscribe leaves; so does a closed connection.
    await benSub.unsubscribe();
    await changes.wait((l) => l.some((c) => c.type === 'leave' && c.client === 'ben'));
    assert.deepEqual((await ana.presence('room.lobby')).clients.map((c) => c.client), ['ana']);
    await ben.subscribe('room.lobby', { presence: true }, () => {});
    await changes.wait((l) => l.filter((c) => c.type === 'join' && c.client === 'ben').length === 2);
    ben.close();
    await changes.wait((l) => l.filter((c) => c.type === 'leave' && c.client === 'ben').length === 2);
    await emitted.wait((l) => l.filter((c) => c.type === 'leave' && c.client === 'ben').length === 2);
    const left = await ana.presence('room.lobby');
    assert.deepEqual([left.count, left.clients.map((c) => c.client)], [1, ['ana']]);
    // Nobody saw ana leave.
    assert.ok(!changes.list.some((c) => c.type === 'leave' && c.client === 'ana'));
  } finally {
    ana.close();
    ben.close();
    await broker.stop();
  }
});

test('a subscription is not told its own arrival: presence once subscribed lists it', async () => {
  // PROTOCOL.md: joins are told from the subscribed reply on; the subscription's own join
  // comes before it. A page reads presence once subscribed, then applies joins and leaves.
  const broker = await Broker.start();
  const ana = clientOn(broker, 0);
  try {
    await ana.hello('ana', { name: 'Ana' });
    const changes = recorder();
    await ana.subscribe('room.lobby', { presence: true, joinLeave: true, onJoin: changes.push }, () => {});
    const here = await ana.presence('room.lobby');
    assert.deepEqual(here.clients.map((c) => [c.client, c.info]), [['ana', { name: 'Ana' }]]);
    // Any join for the subscription came before the presence reply, and its handler has run.
    await ana.flush();
    assert.deepEqual(changes.list, []);
  } finally {
    ana.close();
    await broker.stop();
  }
});

test('presence needs exact topics, and a refused hello rejects and is not said again', async () => {
  const broker = await Broker.start();
  const client = clientOn(broker, 0);
  client.on('error', () => {});
  try {
    await client.connect();
    await assert.rejects(client.subscribe('room.*', { presence: true }, () => {}), (e) => e.code === 'invalid_pattern');
    await assert.rejects(client.subscribe('room.>', { joinLeave: true }, () => {}), (e) => e.code === 'invalid_pattern');
    await assert.rejects(client.hello('no spaces allowed'), (e) => e instanceof WharfError && e.code === 'bad_request');
    assert.equal(client.greeting, null);
    // The connection goes on, as conn-<n>.
    await client.subscribe('room.x', { presence: true }, () => {});
    const here = await client.presence('room.x');
    assert.equal(here.count, 1);
    assert.match(here.clients[0].client, /^conn-\d+$/);
    // Present now: the broker refuses a hello (say it first), and the client forgets it.
    await assert.rejects(client.hello('late'), (e) => e.code === 'bad_request');
    assert.equal(client.greeting, null);
  } finally {
    client.close();
    await broker.stop();
  }
});

test('after a reconnect hello is said again before the subscriptions make the client present', async () => {
  const broker = await Broker.start();
  const ana = clientOn(broker, 0);
  const states = [];
  ana.on('state', (s) => states.push(s));
  ana.on('error', () => {});
  try {
    await ana.hello('ana', { name: 'Ana' });
    await ana.subscribe('room.lobby', { presence: true }, () => {});
    assert.deepEqual((await ana.presence('room.lobby')).clients.map((c) => c.client), ['ana']);
    // Its node dies (on a cluster it moves to the other one; here the broker comes back
    // with no presence at all).
    await broker.kill(0);
    await until(() => states.includes('disconnected'), (fn) => ana.on('state', fn));
    await broker.revive();
    await until(() => states.at(-1) === 'connected', (fn) => ana.on('state', fn));
    // Present as ana again (unnamed, it would be conn-<n>; a hello after the subscribe is
    // refused).
    const here = await ana.presence('room.lobby');
    assert.deepEqual(here.clients.map((c) => [c.client, c.info]), [['ana', { name: 'Ana' }]]);
  } finally {
    ana.close();
    await broker.stop();
  }
});
