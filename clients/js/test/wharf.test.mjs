// The module against a real broker: run with
//   node --experimental-websocket --test clients/js/test/
// (cargo test runs it too, through tests/tests/js_client_node_tests.rs).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { WharfClient, WharfError } from '../wharf.js';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Broker, until, WHARF_BIN } from './broker.mjs';

const fast = { minReconnectDelay: 20, maxReconnectDelay: 200, requestTimeout: 3000 };

/** Acks explicitly, so that an event is collected only once its ack is durable. */
const ackFirst = (event) => event.ack();

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
  const client = new WharfClient(broker.url, fast);
  try {
    await client.connect();
    const got = collector(ackFirst);
    await client.subscribe('orders.>', { consumer: 'js-1' }, got.onEvent);
    const seqs = [];
    for (let i = 0; i < 5; i++) seqs.push(await client.publish('orders.created', { i }));
    assert.deepEqual(seqs, [1, 2, 3, 4, 5]);
    await got.wait(5);
    assert.deepEqual(got.events.map((e) => e.seq), [1, 2, 3, 4, 5]);
    assert.deepEqual(got.events[2].payload, { i: 2 });
    assert.equal(got.events[0].delivery, 1);
    assert.match(got.events[0].publishedAt, /Z$/);
    // Acked: a new connection for the same consumer owes nothing.
    client.close();
    const again = new WharfClient(broker.url, fast);
    const later = collector();
    await again.connect();
    await again.subscribe('orders.>', { consumer: 'js-1' }, later.onEvent);
    await again.publish('orders.created', 'next');
    await later.wait(1);
    assert.deepEqual(later.events.map((e) => e.seq), [6]);
    again.close();
  } finally {
    client.close();
    await broker.stop();
  }
});

test('a handler that throws nacks: the event comes again after a backoff, then is acked', async () => {
  const broker = await Broker.start();
  const client = new WharfClient(broker.url, { ...fast, handlerRetryDelay: 200 });
  try {
    await client.connect();
    const seen = [];
    const got = collector(async (event) => {
      seen.push(Date.now());
      if (event.delivery < 3) throw new Error('not yet');
      await event.ack();
    });
    await client.subscribe('jobs', { consumer: 'js-nack' }, got.onEvent);
    await client.publish('jobs', 'work');
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
    await broker.stop();
  }
});

test('errors carry the broker code', async () => {
  const broker = await Broker.start();
  const client = new WharfClient(broker.url, fast);
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
  const client = new WharfClient(broker.url, fast);
  const states = [];
  client.on('state', (s) => states.push(s));
  client.on('error', () => {});
  try {
    await client.connect();
    const got = collector(ackFirst);
    await client.subscribe('parcels.>', { consumer: 'js-crash' }, got.onEvent);
    assert.equal(await client.publish('parcels.p1.pickup', 1), 1);
    await got.wait(1);

    await broker.kill();
    // Published while the broker is down: queued, in order.
    const offline = [client.publish('parcels.p1.in_transit', 2), client.publish('parcels.p1.delivered', 3)];
    await until(() => states.includes('disconnected'), (fn) => client.on('state', fn));
    await broker.spawn(broker.address);
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
  const client = new WharfClient(broker.url, fast);
  const publisher = new WharfClient(broker.url, fast);
  client.on('error', () => {});
  publisher.on('error', () => {});
  try {
    await client.connect();
    await publisher.connect();
    const got = collector();
    await client.subscribe('ticks', {}, got.onEvent);
    await publisher.publish('ticks', 1);
    await got.wait(1);
    await broker.kill();
    await broker.spawn(broker.address);
    // Published while the subscriber is still reconnecting: it must not miss them.
    await publisher.publish('ticks', 2);
    await publisher.publish('ticks', 3);
    await got.wait(3);
    await publisher.publish('ticks', 4);
    await got.wait(4);
    assert.deepEqual(got.events.map((e) => e.seq), [1, 2, 3, 4]);
  } finally {
    client.close();
    publisher.close();
    await broker.stop();
  }
});

test('auto-ack settles an event once the handler returns', async () => {
  const broker = await Broker.start();
  const client = new WharfClient(broker.url, fast);
  try {
    await client.connect();
    const got = collector();
    await client.subscribe('auto', { consumer: 'js-auto' }, got.onEvent);
    await client.publish('auto', 1);
    await got.wait(1);
    await client.flush();
    const info = await client.request({ op: 'consumer_info', consumer: 'js-auto' });
    assert.equal(info.ack_floor, 1);
    assert.equal(info.ack_pending, 0);
  } finally {
    client.close();
    await broker.stop();
  }
});

test('a repeated msgId is stored once', async () => {
  const broker = await Broker.start();
  const client = new WharfClient(broker.url, fast);
  try {
    await client.connect();
    const a = await client.publish('pay', { amount: 5 }, { msgId: 'pay-1' });
    const b = await client.publish('pay', { amount: 5 }, { msgId: 'pay-1' });
    assert.equal(a, b);
    assert.equal(await client.publish('pay', 'other'), a + 1);
  } finally {
    client.close();
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
  const client = new WharfClient(broker.url, { ...fast, token });
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
  } finally {
    console.warn = original;
  }
  assert.equal(warned.length, 1);
  assert.match(warned[0], /unencrypted ws:\/\/broker\.example\.com/);
});
