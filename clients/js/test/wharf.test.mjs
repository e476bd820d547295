// The module against a real broker: run with
//   node --experimental-websocket --test clients/js/test/
// (cargo test runs it too, through tests/tests/js_client_node_tests.rs).
//
// With WHARF_TEST_NATS_URLS set, each test's broker is two wharf nodes on one NATS JetStream
// stream (broker.mjs), and every client is given both nodes' URLs, starting with the node the
// test puts it on (`broker.urlsFrom(i)`): publishers and subscribers sit on different nodes,
// and a client whose node goes away moves to the other one. Without it, the lists hold the
// one broker's URL.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { WharfClient, WharfError } from '../wharf.js';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Broker, cluster, until, WHARF_BIN } from './broker.mjs';

const fast = { minReconnectDelay: 20, maxReconnectDelay: 200, requestTimeout: 3000 };

/** Acks explicitly, so that an event is collected only once its ack is durable. */
const ackFirst = (event) => event.ack();

/** A client on node `i` of the broker (its only node, without a cluster); `fast` options. */
function clientOn(broker, i, options = {}) {
  return new WharfClient(broker.urlsFrom(i), { ...fast, ...options });
}

/** Collects events; `wait(n)` resolves once n were collected. */
function collector(handler = () => {}) {
  const events = [];
  const changed = new EventEmitter();
  const onEvent = async (event) => {
    await handler(event);
    events.push(event);
    changed.emit('x');
  };
  const wait = (n) => until(() => events.length >= n, (fn) => { changed.on('x', fn); return () => changed.off('x', fn); });
  return { events, onEvent, wait };
}

test('publish resolves to the seq and a durable subscriber gets events in order, auto-acked', async () => {
  const broker = await Broker.start();
  const client = clientOn(broker, 0);
  const publisher = clientOn(broker, 1);
  try {
    await Promise.all([client.connect(), publisher.connect()]);
    const got = collector(ackFirst);
    await client.subscribe('orders.>', { consumer: 'js-1' }, got.onEvent);
    const seqs = [];
    for (let i = 0; i < 5; i++) seqs.push(await publisher.publish('orders.created', { i }));
    assert.deepEqual(seqs, [1, 2, 3, 4, 5]);
    await got.wait(5);
    assert.deepEqual(got.events.map((e) => e.seq), [1, 2, 3, 4, 5]);
    assert.deepEqual(got.events[2].payload, { i: 2 });
    assert.equal(got.events[0].delivery, 1);
    assert.match(got.events[0].publishedAt, /Z$/);
    // Acked: a new connection for the same consumer (through the other node, on a cluster)
    // owes nothing.
    client.close();
    const again = clientOn(broker, 1);
    const later = collector();
    await again.connect();
    await again.subscribe('orders.>', { consumer: 'js-1' }, later.onEvent);
    await again.publish('orders.created', 'next');
    await later.wait(1);
    assert.deepEqual(later.events.map((e) => e.seq), [6]);
    again.close();
  } finally {
    client.close();
    publisher.close();
    await broker.stop();
  }
});

test('with batch, a backlog comes several events to a frame and each is handed over and acked once', async () => {
  const broker = await Broker.start();
  const publisher = clientOn(broker, 1);
  const client = clientOn(broker, 0);
  try {
    await publisher.connect();
    const seqs = await Promise.all(Array.from({ length: 40 }, (_, i) => publisher.publish('batch.a', { i })));
    await client.connect();
    const got = collector(ackFirst);
    await client.subscribe('batch.>', { consumer: 'js-batch', batch: 16 }, got.onEvent);
    await got.wait(40);
    assert.deepEqual(got.events.map((e) => e.seq), seqs);
    assert.ok(got.events.every((e) => e.delivery === 1 && e.consumer === 'js-batch'));
    assert.deepEqual(got.events[7].payload, { i: 7 });
    const info = await client.request({ op: 'consumer_info', consumer: 'js-batch' });
    assert.equal(info.ack_pending, 0);
  } finally {
    client.close();
    publisher.close();
    await broker.stop();
  }
});

test('a handler that throws nacks: the event comes again after a backoff, then is acked', async () => {
  const broker = await Broker.start();
  const client = clientOn(broker, 0, { handlerRetryDelay: 200 });
  const publisher = clientOn(broker, 1);
  try {
    await Promise.all([client.connect(), publisher.connect()]);
    const seen = [];
    const got = collector(async (event) => {
      seen.push(Date.now());
      if (event.delivery < 3) throw new Error('not yet');
      await event.ack();
    });
    await client.subscribe('jobs', { consumer: 'js-nack' }, got.onEvent);
    await publisher.publish('jobs', 'work');
    await got.wait(1);
    assert.equal(seen.length, 3);
    assert.equal(got.events[0].delivery, 3);
    // 200 ms after the first failure, 400 ms after the second: no immediate redelivery loop.
    assert.ok(seen[1] - seen[0] >= 180, `${seen[1] - seen[0]} ms`);
    assert.ok(seen[2] - seen[1] >= 380, `${seen[2] - seen[1]} ms`);
    const info = await client.request({ op: 'consumer_info', consumer: 'js-nack' });
    assert.equal(info.ack_floor, 1);
  } finally {
    client.close();
    publisher.close();
    await broker.stop();
  }
});

test('errors carry the broker code', async () => {
  const broker = await Broker.start();
  const client = clientOn(broker, 1);
  try {
    await client.connect();
    await assert.rejects(client.publish('bad..topic', 1), (e) => e instanceof WharfError && e.code === 'invalid_topic');
    await assert.rejects(client.subscribe('a.>.b', {}, () => {}), (e) => e.code === 'invalid_pattern');
  } finally {
    client.close();
    await broker.stop();
  }
});

test('after a broker crash it reconnects, resubscribes and sends what was published offline, once', async () => {
  const broker = await Broker.start();
  const client = clientOn(broker, 0);
  const states = [];
  client.on('state', (s) => states.push(s));
  client.on('error', () => {});
  try {
    await client.connect();
    const got = collector(ackFirst);
    await client.subscribe('parcels.>', { consumer: 'js-crash' }, got.onEvent);
    assert.equal(await client.publish('parcels.p1.pickup', 1), 1);
    await got.wait(1);

    // Every node: the client has nowhere to go.
    await broker.kill();
    // Published while the broker is down: queued, in order.
    const offline = [client.publish('parcels.p1.in_transit', 2), client.publish('parcels.p1.delivered', 3)];
    await until(() => states.includes('disconnected'), (fn) => client.on('state', fn));
    await broker.revive();
    assert.deepEqual(await Promise.all(offline), [2, 3]);
    await got.wait(3);
    assert.deepEqual(got.events.map((e) => e.seq), [1, 2, 3]);
    assert.ok(states.includes('connected'));
  } finally {
    client.close();
    await broker.stop();
  }
});

test('an ephemeral subscriber resumes after a reconnect without gap or duplicate', async () => {
  const broker = await Broker.start();
  const client = clientOn(broker, 0);
  const publisher = clientOn(broker, 1);
  client.on('error', () => {});
  publisher.on('error', () => {});
  try {
    await client.connect();
    await publisher.connect();
    const got = collector();
    await client.subscribe('ticks', {}, got.onEvent);
    await publisher.publish('ticks', 1);
    await got.wait(1);
    // The subscriber's node (on a cluster, the publisher's stays up and the subscriber moves
    // to it).
    await broker.kill(0);
    await broker.revive();
    // Published while the subscriber is still reconnecting: it must not miss them.
    await publisher.publish('ticks', 2);
    await publisher.publish('ticks', 3);
    await got.wait(3);
    await publisher.publish('ticks', 4);
    await got.wait(4);
    assert.deepEqual(got.events.map((e) => e.seq), [1, 2, 3, 4]);
    // It went to the next URL of its list: on a cluster the node that stayed up.
    assert.equal(client.url, broker.urlsFrom(1)[0]);
  } finally {
    client.close();
    publisher.close();
    await broker.stop();
  }
});

test('auto-ack settles an event once the handler returns', async () => {
  const broker = await Broker.start();
  const client = clientOn(broker, 0);
  const publisher = clientOn(broker, 1);
  try {
    await Promise.all([client.connect(), publisher.connect()]);
    const got = collector();
    await client.subscribe('auto', { consumer: 'js-auto' }, got.onEvent);
    await publisher.publish('auto', 1);
    await got.wait(1);
    await client.flush();
    const info = await client.request({ op: 'consumer_info', consumer: 'js-auto' });
    assert.equal(info.ack_floor, 1);
    assert.equal(info.ack_pending, 0);
  } finally {
    client.close();
    publisher.close();
    await broker.stop();
  }
});

test('a repeated msgId is stored once', async () => {
  const broker = await Broker.start();
  const client = clientOn(broker, 0);
  // On a cluster, the repeat goes through the other node.
  const other = clientOn(broker, 1);
  try {
    await client.connect();
    await other.connect();
    const a = await client.publish('pay', { amount: 5 }, { msgId: 'pay-1' });
    const b = await other.publish('pay', { amount: 5 }, { msgId: 'pay-1' });
    assert.equal(a, b);
    assert.equal(await other.publish('pay', 'other'), a + 1);
  } finally {
    client.close();
    other.close();
    await broker.stop();
  }
});

test('a token function renews an expiring JWT without dropping the connection', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'wharf-jwt-'));
  const secretFile = join(dir, 'jwt.secret');
  writeFileSync(secretFile, 'a shared secret of at least thirty-two bytes');
  const config = [
    '[auth]', 'enabled = true', '[auth.jwt]', `hs256_secret_file = ${JSON.stringify(secretFile)}`,
    'leeway = "0s"', 'expiry_notice = "1s"',
    'default_publish = ["user.{sub}.>"]', 'default_subscribe = ["user.{sub}.>"]', '',
  ].join('\n');
  const broker = await Broker.start('127.0.0.1:0', mkdtempSync(join(tmpdir(), 'wharf-js-')), config);
  const changed = new EventEmitter();
  let minted = 0;
  const token = async () => {
    minted += 1;
    changed.emit('x');
    const args = ['token', 'jwt', '--secret-file', secretFile, '--sub', 'alice', '--ttl', '2s'];
    return execFileSync(WHARF_BIN, args, { encoding: 'utf8' }).trim();
  };
  const client = clientOn(broker, 0, { token });
  const states = [];
  client.on('state', (s) => states.push(s));
  const notices = [];
  client.on('token_expiring', (frame) => { notices.push(frame); changed.emit('x'); });
  try {
    await client.connect();
    const got = collector();
    await client.subscribe('user.alice.>', {}, got.onEvent);
    // Three renewals, each a second before the previous token's exp: the first token has
    // expired by the third one.
    await until(() => minted >= 4, (fn) => { changed.on('x', fn); return () => changed.off('x', fn); });
    assert.ok(notices.length >= 3);
    assert.ok(!states.includes('disconnected'), `states: ${states}`);
    await client.publish('user.alice.inbox', 'still here');
    await got.wait(1);
    assert.equal(got.events[0].payload, 'still here');
  } finally {
    client.close();
    await broker.stop();
  }
});

test('a token bound for another machine over ws:// is warned about', () => {
  const warned = [];
  const original = console.warn;
  console.warn = (message) => warned.push(message);
  try {
    new WharfClient('ws://broker.example.com:7700/ws', { token: 't' }).close();
    new WharfClient('wss://broker.example.com/ws', { token: 't' }).close();
    new WharfClient('ws://127.0.0.1:7700/ws', { token: 't' }).close();
    new WharfClient('ws://localhost:7700/ws', { token: 't' }).close();
    new WharfClient('ws://broker.example.com:7700/ws').close();
    // A list: each URL that would carry it in the clear beyond this machine.
    new WharfClient(['ws://127.0.0.1:7700/ws', 'ws://node-b.example.com:7700/ws', 'wss://node-c.example.com/ws'], { token: 't' }).close();
  } finally {
    console.warn = original;
  }
  assert.equal(warned.length, 2);
  assert.match(warned[0], /unencrypted ws:\/\/broker\.example\.com/);
  assert.match(warned[1], /unencrypted ws:\/\/node-b\.example\.com/);
});

test('a list of URLs must hold at least one, each a non-empty string', () => {
  const client = new WharfClient(['ws://127.0.0.1:7701/ws', 'ws://127.0.0.1:7702/ws']);
  assert.equal(client.url, 'ws://127.0.0.1:7701/ws');
  assert.deepEqual(client.urls, ['ws://127.0.0.1:7701/ws', 'ws://127.0.0.1:7702/ws']);
  client.close();
  const one = new WharfClient('ws://127.0.0.1:7700/ws');
  assert.deepEqual(one.urls, ['ws://127.0.0.1:7700/ws']);
  assert.equal(one.url, 'ws://127.0.0.1:7700/ws');
  one.close();
  const invalid = (pattern) => (e) => e instanceof WharfError && e.code === 'invalid_url' && pattern.test(e.message);
  assert.throws(() => new WharfClient([]), invalid(/list of broker URLs is empty/));
  assert.throws(() => new WharfClient([new URL('ws://127.0.0.1:7700/ws')]), invalid(/broker URL 0 is an object/));
  assert.throws(() => new WharfClient(['ws://127.0.0.1:7700/ws', 7701]), invalid(/broker URL 1 is a number/));
  assert.throws(() => new WharfClient(['ws://127.0.0.1:7700/ws', null]), invalid(/broker URL 1 is null/));
  assert.throws(() => new WharfClient(['']), invalid(/broker URL 0 is an empty string/));
  assert.throws(() => new WharfClient(), invalid(/the broker URL is missing/));
});

/** A port on this machine that nothing listens on (it was bound a moment ago, then closed). */
async function closedPort() {
  const server = createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

test('a list whose first URL is dead connects through the next one', async () => {
  const broker = await Broker.start('127.0.0.1:0', undefined, undefined, { nodes: 1 });
  const dead = `ws://127.0.0.1:${await closedPort()}/ws`;
  const client = new WharfClient([dead, broker.url], fast);
  const errors = [];
  const states = [];
  client.on('error', (e) => errors.push(e));
  client.on('state', (s) => states.push(s));
  try {
    await client.connect();
    assert.equal(client.url, broker.url);
    // The dead one was tried first, failed, and the client went on to the next.
    assert.deepEqual(states.slice(0, 4), ['connecting', 'disconnected', 'connecting', 'connected']);
    assert.ok(errors.length >= 1, 'the failed dial was reported');
    assert.ok(errors.every((e) => e.code === 'connection_failed' && e.message.includes(dead)), errors.join('; '));
    // And it works there.
    const got = collector(ackFirst);
    await client.subscribe('list.>', { consumer: 'js-list' }, got.onEvent);
    assert.equal(await client.publish('list.one', 1), 1);
    await got.wait(1);
    assert.deepEqual(got.events.map((e) => e.seq), [1]);
  } finally {
    client.close();
    await broker.stop();
  }
});

test('a client given two wharf nodes moves to the other when its node is SIGKILLed, and loses nothing', { skip: !cluster && 'needs two wharf nodes: set WHARF_TEST_NATS_URLS' }, async () => {
  // A short lease: the events the dead node had delivered, unacked, come back this soon.
  const broker = await Broker.start('127.0.0.1:0', undefined, undefined, { nodes: 2, env: { WHARF_NATS_LEASE: '1s' } });
  const [a, b] = broker.urls;
  // Patient requests: an ack whose reply timed out would leave the test unable to tell
  // whether it was stored.
  const subscriber = new WharfClient([a, b], { ...fast, requestTimeout: 15000 });
  // Publishes through A until it dies, then through B.
  const publisherA = new WharfClient([a, b], fast);
  const publisherB = new WharfClient([b, a], fast);
  for (const c of [subscriber, publisherA, publisherB]) c.on('error', () => {});
  const changed = new EventEmitter();
  const subscribed = (fn) => { changed.on('x', fn); return () => changed.off('x', fn); };
  // Before the kill the subscriber holds every event unacked; after it, it acks each.
  let holding = true;
  const held = new Set();
  const acked = new Map(); // seq -> the delivery that was acked
  try {
    await Promise.all([subscriber.connect(), publisherA.connect(), publisherB.connect()]);
    await subscriber.subscribe('moves.>', { consumer: 'js-move', ackWaitMs: 600000, autoAck: false }, async (event) => {
      if (holding) {
        held.add(event.seq);
      } else {
        try {
          await event.ack();
          acked.set(event.seq, event.delivery);
        } catch {
          // Delivered through the dead node, acked after the move: the other node does not
          // know it (`not_found`), and it comes again after the lease.
        }
      }
      changed.emit('x');
    });
    const confirmed = [];
    for (let i = 1; i <= 5; i++) confirmed.push(await publisherB.publish('moves.before', i));
    await until(() => confirmed.every((s) => held.has(s)), subscribed);
    assert.equal(subscriber.url, a);

    // Publishes through A in flight when it dies: sent again through B with the same msg_id.
    const inFlight = [];
    for (let i = 6; i <= 10; i++) inFlight.push(publisherA.publish('moves.during', i));
    await broker.kill(0);
    holding = false;
    for (let i = 11; i <= 15; i++) confirmed.push(await publisherB.publish('moves.after', i));
    confirmed.push(...(await Promise.all(inFlight)));

    // Every confirmed event is delivered through B and acked there, the held ones again
    // once the dead node's lease ran out.
    await until(() => confirmed.every((s) => acked.has(s)), subscribed, 30000);
    assert.equal(subscriber.url, b);
    assert.equal(publisherA.url, b);
    for (const s of held) assert.ok(acked.get(s) >= 2, `held event ${s} was acked at delivery ${acked.get(s)}`);
    // Each publish stored once: 15 distinct seqs, and the stream holds nothing else.
    const sorted = [...confirmed].sort((x, y) => x - y);
    assert.deepEqual(sorted, Array.from({ length: 15 }, (_, i) => i + 1));
    const stats = await publisherB.request({ op: 'stats' });
    assert.equal(stats.head_seq, 15);
    const info = await subscriber.request({ op: 'consumer_info', consumer: 'js-move' });
    assert.equal(info.ack_floor, 15);
  } finally {
    subscriber.close();
    publisherA.close();
    publisherB.close();
    await broker.stop();
  }
});

test('an outbox without IndexedDB (Node) is refused, never kept in memory silently', () => {
  assert.ok(globalThis.indexedDB === undefined, 'this Node has no IndexedDB');
  assert.throws(
    () => new WharfClient('ws://127.0.0.1:7700/ws', { outbox: 'orders' }),
    (e) => e instanceof WharfError && e.code === 'no_indexeddb',
  );
  // Without the option nothing changes.
  new WharfClient('ws://127.0.0.1:7700/ws').close();
});
