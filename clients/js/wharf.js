// wharf.js: the wharf client for browsers and Node. One ES module, no dependencies.
//
//   const client = new WharfClient('ws://127.0.0.1:7700/ws');
//   // or, for several wharf nodes (a cluster): new WharfClient(['ws://a:7700/ws', 'ws://b:7700/ws'])
//   await client.connect();
//   await client.subscribe('orders.>', { consumer: 'vendor-1' }, (event) => { ... });
//   const seq = await client.publish('orders.created', { id: 1 });
//
// It reconnects by itself (exponential backoff with jitter; given several URLs, each reconnect
// dials the next one in the list, round-robin), resubscribes after every reconnect (durable
// subscriptions by consumer name, ephemeral ones from the last seq they saw), keeps publishes
// made while offline and sends them in order once back, and gives every publish a msg_id so
// that a retry after a lost reply is never stored twice.
//
// Rooms (a chat, a live dashboard): `history` and `last` read what is stored without consuming
// it, `hello` names the client for presence (and is said again first thing after every
// reconnect), a subscription with `presence: true` makes it present in its topics, one with
// `joinLeave: true` is told who comes and goes, and `presence(topic)` lists who is there.
//
// With `new WharfClient(url, { outbox: 'name' })` (browsers: IndexedDB) every publish is stored
// before it is sent and removed once the broker confirms it; a new client on that outbox (after
// a reload, a crash) sends what is left first, with the same msg_id.

/** An error from the broker (with its `code`) or from the client (`code` of its own). */
export class WharfError extends Error {
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.name = 'WharfError';
    this.code = code;
  }
}

const DEFAULTS = {
  token: undefined,
  WebSocket: undefined,
  minReconnectDelay: 500,
  maxReconnectDelay: 20000,
  requestTimeout: 10000,
  // How often an idle connection is checked with a ping (browsers cannot see WebSocket pings).
  heartbeatInterval: 15000,
  // An event whose handler throws comes back after this long, doubled per delivery, at most
  // maxHandlerRetryDelay: a failing handler must not spin the broker and the page.
  handlerRetryDelay: 1000,
  maxHandlerRetryDelay: 60000,
  // A persistent outbox (IndexedDB): `true` or a database name. See `outbox` below.
  outbox: undefined,
  indexedDB: undefined,
  // The broker's dedup_window: outbox entries older than this are reported (`outbox-stale`).
  dedupWindow: 120000,
};

/** A request to a promise. */
function idbDone(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

/**
 * The persistent outbox: one IndexedDB database (`name`) holding one object store of
 * unconfirmed publishes `{ topic, payload, msgId, storedAt }`, keyed in the order they were
 * made (autoIncrement).
 */
class Outbox {
  constructor(idb, name) {
    this.name = name;
    this.db = new Promise((resolve, reject) => {
      const open = idb.open(name, 1);
      open.onupgradeneeded = () => open.result.createObjectStore('outbox', { autoIncrement: true });
      open.onsuccess = () => resolve(open.result);
      open.onerror = () => reject(open.error);
      open.onblocked = () => reject(new WharfError('outbox_failed', `the outbox ${name} is blocked by another version`));
    });
  }

  async run(mode, fn) {
    const db = await this.db;
    return new Promise((resolve, reject) => {
      const tx = db.transaction('outbox', mode);
      let result;
      Promise.resolve(fn(tx.objectStore('outbox'))).then((r) => { result = r; }, reject);
      tx.oncomplete = () => resolve(result);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error ?? new WharfError('outbox_failed', 'the outbox transaction was aborted'));
    });
  }

  /** Stores an entry; resolves to its key once the transaction is committed. */
  add(entry) {
    return this.run('readwrite', (store) => idbDone(store.add(entry)));
  }

  remove(key) {
    return this.run('readwrite', (store) => idbDone(store.delete(key)));
  }

  /** Every entry, in the order stored: [{ key, topic, payload, msgId, storedAt }]. */
  entries() {
    return this.run('readonly', async (store) => {
      const [keys, values] = await Promise.all([idbDone(store.getAllKeys()), idbDone(store.getAll())]);
      return keys.map((key, i) => ({ key, ...values[i] }));
    });
  }
}

/** Whether a ws:// URL leaves the machine (a token sent over it can be read on the way). */
function cleartextRemote(url) {
  try {
    const { protocol, hostname } = new URL(url);
    if (protocol !== 'ws:') return false;
    const host = hostname.replace(/^\[|\]$/g, '');
    return !(host === 'localhost' || host.endsWith('.localhost') || host === '::1' || /^127\./.test(host));
  } catch {
    return false;
  }
}

/** The URLs to dial, in turn: one URL or a non-empty list of them, each a non-empty string. */
function urlList(urlOrUrls) {
  const urls = Array.isArray(urlOrUrls) ? [...urlOrUrls] : [urlOrUrls];
  if (urls.length === 0) {
    throw new WharfError('invalid_url', 'the list of broker URLs is empty: give at least one ws:// or wss:// URL');
  }
  urls.forEach((u, i) => {
    if (typeof u !== 'string' || u.trim() === '') {
      const what = u === undefined ? 'missing'
        : u === null ? 'null'
          : typeof u === 'string' ? 'an empty string'
            : `${/^[aeiou]/.test(typeof u) ? 'an' : 'a'} ${typeof u}`;
      const where = Array.isArray(urlOrUrls) ? `broker URL ${i} is` : 'the broker URL is';
      throw new WharfError('invalid_url', `${where} ${what}: each must be a ws:// or wss:// URL string`);
    }
  });
  return Object.freeze(urls);
}

/** A `history` or `last` reply as the client hands it out (camelCase, like events). */
function storedPage(reply) {
  return {
    events: reply.events.map((e) => ({ seq: e.seq, topic: e.topic, payload: e.payload, publishedAt: e.published_at })),
    more: reply.more,
    firstSeq: reply.first_seq,
  };
}

function randomId() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === 'function') return c.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}-${Math.random().toString(36).slice(2)}`;
}

export class WharfClient {
  /**
   * `urlOrUrls`: the broker's WebSocket URL, or a list of them (wharf nodes of one cluster,
   * say): the client dials the first, and each reconnect (after a close or a failed dial)
   * dials the next one, round-robin.
   */
  constructor(urlOrUrls, options = {}) {
    this.urls = urlList(urlOrUrls);
    // Which of `urls` the client is on (or dialling, or will dial next): see `url`.
    this.urlIndex = 0;
    this.options = { ...DEFAULTS, ...options };
    this.WebSocket = this.options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.WebSocket !== 'function') {
      throw new WharfError('no_websocket', 'no WebSocket implementation: pass one as options.WebSocket');
    }
    if (this.options.token !== undefined) {
      for (const url of this.urls.filter(cleartextRemote)) {
        console.warn(`wharf: sending a token over unencrypted ${url}; use wss:// beyond this machine`);
      }
    }
    // The persistent outbox, if asked for. Without IndexedDB (Node) it is an error: a client
    // that silently kept publishes in memory only would lose them on exit.
    this.outbox = null;
    this.outboxLoaded = true;
    if (this.options.outbox) {
      const idb = this.options.indexedDB ?? globalThis.indexedDB;
      if (!idb || typeof idb.open !== 'function') {
        throw new WharfError('no_indexeddb', 'options.outbox needs IndexedDB (a browser), or an implementation as options.indexedDB');
      }
      const name = this.options.outbox === true ? 'wharf-outbox' : String(this.options.outbox);
      this.outbox = new Outbox(idb, name);
      this.outboxLoaded = false;
    }
    this.state = 'disconnected';
    this.ws = null;
    this.listeners = new Map();
    this.nextId = 1;
    // id → { resolve, reject, timer, onReply? }
    this.requests = new Map();
    // Publishes not yet confirmed, in the order they were made: { frame, resolve, reject, id }
    this.publishes = [];
    this.subscriptions = new Set();
    this.bySub = new Map();
    this.attempt = 0;
    this.closed = false;
    this.reconnectTimer = null;
    this.heartbeatTimer = null;
    this.lastFrameAt = 0;
    this.connectedWaiters = [];
    // The last `hello` ({ frame, error }): said again first thing on every connection.
    this.greeting = null;
    // Entries a previous page (or process) left in the outbox go first, before any publish
    // made here.
    this.outboxReady = this.outbox ? this.loadOutbox() : Promise.resolve();
  }

  async loadOutbox() {
    try {
      const entries = await this.outbox.entries();
      const now = Date.now();
      // A publish made here may already be in the outbox when it is read: it is queued once.
      const here = new Set(this.publishes.map((p) => p.frame.msg_id));
      const loaded = entries.filter((e) => !here.has(e.msgId)).map((e) => ({
        frame: { op: 'publish', topic: e.topic, payload: e.payload, msg_id: e.msgId },
        resolve: () => {},
        reject: () => {},
        id: null,
        key: e.key,
        entry: { topic: e.topic, payload: e.payload, msgId: e.msgId, storedAt: e.storedAt },
        loaded: true,
      }));
      this.publishes.unshift(...loaded);
      const stale = loaded.filter((p) => now - p.entry.storedAt > this.options.dedupWindow).map((p) => p.entry);
      if (stale.length) this.emit('outbox-stale', stale);
    } catch (e) {
      this.emit('error', e instanceof WharfError ? e : new WharfError('outbox_failed', `cannot read the outbox: ${e?.message ?? e}`));
    }
    this.outboxLoaded = true;
    if (this.state === 'connected') this.sendQueued();
  }

  /**
   * The publishes waiting for the broker's confirmation, in order: `{ topic, payload, msgId,
   * storedAt, age }` (`storedAt`, ms since the epoch, when it entered the outbox; `age` in ms).
   * With an outbox this includes what a previous page left there.
   */
  async pending() {
    await this.outboxReady;
    const now = Date.now();
    return this.publishes.filter((p) => !p.unsaved).map((p) => {
      const entry = p.entry ?? { topic: p.frame.topic, payload: p.frame.payload, msgId: p.frame.msg_id, storedAt: p.storedAt };
      return { ...entry, age: now - entry.storedAt };
    });
  }

  /** Sends, in order, every queued publish not yet sent; stops at one still being stored. */
  sendQueued() {
    if (!this.outboxLoaded) return;
    for (const p of [...this.publishes]) {
      if (p.unsaved) return;
      this.sendPublish(p);
    }
  }

  /** The URL the client is connected to, or dialling, or (while disconnected) will dial next. */
  get url() {
    return this.urls[this.urlIndex];
  }

  /**
   * Listens for `state` (connecting, connected, disconnected, closed), `error`, `gap`, `lost`,
   * `unsubscribed`, `token_expiring`, `join` / `leave` (for every subscription with
   * `joinLeave`), and with an outbox `outbox-published` / `outbox-failed` (an entry a previous
   * page left, confirmed or refused) and `outbox-stale` (entries loaded older than
   * `dedupWindow`).
   */
  on(event, fn) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(fn);
    return () => this.listeners.get(event)?.delete(fn);
  }

  emit(event, value) {
    for (const fn of this.listeners.get(event) ?? []) {
      try { fn(value); } catch (e) { queueMicrotask(() => { throw e; }); }
    }
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.emit('state', state);
  }

  /** Resolves once connected (the first time); keeps reconnecting after that. */
  connect() {
    if (this.closed) return Promise.reject(new WharfError('closed', 'the client was closed'));
    if (this.state === 'connected') return Promise.resolve();
    const ready = new Promise((resolve, reject) => this.connectedWaiters.push({ resolve, reject }));
    if (!this.ws && !this.reconnectTimer) this.dial();
    return ready;
  }

  /**
   * Closes for good: pending requests and queued publishes fail with code `closed` (with an
   * outbox, they stay in it for the next client on that outbox).
   */
  close() {
    this.closed = true;
    clearTimeout(this.reconnectTimer);
    clearInterval(this.heartbeatTimer);
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      try { ws.close(1000, 'client closed'); } catch { /* already closing */ }
    }
    const err = new WharfError('closed', 'the client was closed');
    for (const [, r] of this.requests) { clearTimeout(r.timer); r.reject(err); }
    this.requests.clear();
    for (const p of this.publishes) p.reject(err);
    this.publishes = [];
    for (const w of this.connectedWaiters) w.reject(err);
    this.connectedWaiters = [];
    this.setState('closed');
  }

  dial() {
    if (this.closed) return;
    this.reconnectTimer = null;
    this.setState('connecting');
    const url = this.url;
    let ws;
    try {
      ws = new this.WebSocket(url);
    } catch (e) {
      this.down(null, e);
      return;
    }
    this.ws = ws;
    let done = false;
    // Node 20's WebSocket fires only `error` when a dial fails, never `close`: either ends it.
    const finish = (err) => {
      if (done) return;
      done = true;
      this.down(ws, err);
    };
    ws.onopen = () => this.up(ws);
    ws.onmessage = (m) => this.receive(ws, m.data);
    ws.onerror = (e) => finish(e);
    ws.onclose = () => finish(null);
  }

  async up(ws) {
    if (ws !== this.ws) return;
    this.lastFrameAt = Date.now();
    clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = setInterval(() => this.heartbeat(ws), Math.max(100, this.options.heartbeatInterval / 3));
    try {
      if (this.options.token !== undefined) {
        await this.request({ op: 'auth', token: await this.currentToken() });
      }
      // The name for presence before any subscription makes the connection present (the
      // broker refuses a `hello` after that); then subscriptions, then the publishes that
      // waited, in their order.
      let greeted = await this.greet(this.greeting);
      for (const sub of this.subscriptions) {
        await this.sendSubscribe(sub);
      }
      this.sendQueued();
      // A `hello` made while this connection was being set up, after the first one went out.
      if (this.greeting !== greeted) greeted = await this.greet(this.greeting);
    } catch (e) {
      this.emit('error', e);
      if (ws === this.ws) {
        try { ws.close(); } catch { /* closing anyway */ }
      }
      return;
    }
    if (ws !== this.ws) return;
    this.attempt = 0;
    this.setState('connected');
    // What the outbox loaded while this connection was being set up.
    this.sendQueued();
    for (const w of this.connectedWaiters) w.resolve();
    this.connectedWaiters = [];
  }

  down(ws, err) {
    if (ws && ws !== this.ws) return;
    this.ws = null;
    clearInterval(this.heartbeatTimer);
    for (const sub of this.subscriptions) {
      if (sub.sub) this.bySub.delete(sub.sub);
      sub.sub = null;
    }
    // Replies to requests on the dead socket will never come. Publishes stay queued and go
    // out again (same msg_id) after the reconnect.
    const lost = new WharfError('disconnected', 'the connection was lost');
    for (const [id, r] of this.requests) {
      clearTimeout(r.timer);
      if (!r.publish) r.reject(lost);
      this.requests.delete(id);
    }
    for (const p of this.publishes) p.id = null;
    if (this.closed) return;
    if (err) this.emit('error', err instanceof Error ? err : new WharfError('connection_failed', `cannot connect to ${this.url}`));
    // The next dial goes to the next URL of the list (the same one when there is only one):
    // another wharf node of the cluster takes over this client's subscriptions and publishes.
    this.urlIndex = (this.urlIndex + 1) % this.urls.length;
    this.setState('disconnected');
    const base = Math.min(this.options.maxReconnectDelay, this.options.minReconnectDelay * 2 ** this.attempt);
    const delay = base / 2 + Math.random() * base / 2;
    this.attempt += 1;
    this.reconnectTimer = setTimeout(() => this.dial(), delay);
  }

  heartbeat(ws) {
    if (ws !== this.ws || ws.readyState !== 1) return;
    if (Date.now() - this.lastFrameAt < this.options.heartbeatInterval) return;
    this.request({ op: 'ping' }).catch(() => {
      // No answer within requestTimeout: the socket is dead even if it looks open.
      if (ws === this.ws) {
        try { ws.close(); } catch { /* closing anyway */ }
        this.down(ws, null);
      }
    });
    this.lastFrameAt = Date.now();
  }

  send(frame) {
    if (!this.ws || this.ws.readyState !== 1) throw new WharfError('disconnected', 'not connected');
    this.ws.send(JSON.stringify(frame));
  }

  /**
   * Resolves once every event handed to a handler so far has been handled and settled
   * (auto-acks included) and every request sent so far has its answer.
   */
  async flush() {
    await Promise.all([...this.subscriptions].map((s) => s.chain));
    await Promise.allSettled([...this.requests.values()].map((r) => r.promise));
  }

  /** Sends a request and resolves with its reply (rejects with the broker's error). */
  request(frame, extra = {}) {
    const id = this.nextId++;
    let entry;
    const promise = new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.requests.delete(id);
        reject(new WharfError('timeout', `no reply to ${frame.op} within ${this.options.requestTimeout} ms`));
      }, this.options.requestTimeout);
      entry = { resolve, reject, timer, ...extra };
      this.requests.set(id, entry);
      try {
        this.send({ ...frame, id });
      } catch (e) {
        clearTimeout(timer);
        this.requests.delete(id);
        reject(e);
      }
    });
    if (entry) entry.promise = promise.catch(() => {});
    return promise;
  }

  receive(ws, data) {
    if (ws !== this.ws) return;
    this.lastFrameAt = Date.now();
    let frame;
    try {
      frame = JSON.parse(typeof data === 'string' ? data : new TextDecoder().decode(data));
    } catch {
      this.emit('error', new WharfError('bad_frame', 'the broker sent a frame that is not JSON'));
      return;
    }
    switch (frame.type) {
      case 'event': {
        const sub = this.bySub.get(frame.sub);
        if (sub) sub.chain = sub.chain.then(() => this.deliver(sub, frame));
        return undefined;
      }
      case 'events': {
        // A subscription that asked for `batch`: each event is handed over as if it had
        // come in a frame of its own.
        const sub = this.bySub.get(frame.sub);
        if (!sub) return undefined;
        for (const ev of frame.events) {
          const one = { type: 'event', sub: frame.sub, ...ev };
          if (frame.consumer !== undefined) one.consumer = frame.consumer;
          sub.chain = sub.chain.then(() => this.deliver(sub, one));
        }
        return undefined;
      }
      case 'gap': return this.emit('gap', frame);
      case 'token_expiring': {
        this.emit('token_expiring', frame);
        // With a token function, renew before the broker closes the connection (4001); the
        // subscriptions stay.
        if (typeof this.options.token === 'function') {
          this.currentToken()
            .then((token) => this.request({ op: 'auth', token }))
            .catch((e) => this.emit('error', e));
        }
        return undefined;
      }
      case 'lost': return this.emit('lost', frame);
      case 'join':
      case 'leave': {
        const sub = this.bySub.get(frame.sub);
        const handler = frame.type === 'join' ? sub?.options.onJoin : sub?.options.onLeave;
        if (handler) {
          // In arrival order with the subscription's events.
          sub.chain = sub.chain.then(() => handler(frame)).catch((e) => this.emit('error', e));
        }
        return this.emit(frame.type, frame);
      }
      case 'unsubscribed': {
        const sub = this.bySub.get(frame.sub);
        if (sub) {
          this.bySub.delete(frame.sub);
          sub.sub = null;
          if (frame.reason === 'deleted') this.subscriptions.delete(sub);
        }
        return this.emit('unsubscribed', frame);
      }
      default: {
        const r = this.requests.get(frame.id);
        if (!r) {
          if (frame.type === 'error') this.emit('error', new WharfError(frame.code, frame.message));
          return;
        }
        this.requests.delete(frame.id);
        clearTimeout(r.timer);
        if (frame.type === 'error') {
          r.reject(new WharfError(frame.code, frame.message));
        } else {
          // Synchronously: the next frame (an event for a new subscription) may be handled
          // before any promise continuation runs.
          r.onReply?.(frame);
          r.resolve(frame);
        }
      }
    }
  }

  /** The token to send now: `options.token`, or what the function there returns (a fresh JWT
   * from the application's backend, say). */
  async currentToken() {
    const token = this.options.token;
    return typeof token === 'function' ? await token() : token;
  }

  /**
   * Names this client for presence: `id` (1 to 128 bytes of `A-Z a-z 0-9 _ . - @ :`; null or
   * undefined to set `info` only, as with a JWT, whose `sub` is the id) and `info`, any JSON
   * object others see in `presence` and `join`. Remembered and said again first thing after
   * every reconnect, before the subscriptions. Say it before subscribing with `presence`: the
   * broker refuses a `hello` from a connection that is already present somewhere
   * (`bad_request`). Resolves once the broker has it (when disconnected, once connected).
   */
  async hello(id, info) {
    const frame = { op: 'hello' };
    if (id !== undefined && id !== null) frame.client = id;
    if (info !== undefined) frame.info = info;
    const greeting = { frame, error: null };
    const previous = this.greeting;
    this.greeting = greeting;
    if (this.state === 'connected') {
      try {
        await this.request(frame);
        return;
      } catch (e) {
        if (e.code !== 'disconnected') {
          if (this.greeting === greeting) this.greeting = previous;
          throw e;
        }
        // Lost with the connection: it goes out first thing after the reconnect.
      }
    }
    await this.connect();
    if (greeting.error) throw greeting.error;
  }

  /**
   * Says `greeting` on the connection being set up; returns it. A refusal (`forbidden`,
   * `too_large`, …) would come again on every connection: it is reported (`error`, and to
   * the `hello` call waiting for it) and forgotten, and the connection goes on unnamed.
   */
  async greet(greeting) {
    if (!greeting) return greeting;
    try {
      await this.request(greeting.frame);
    } catch (e) {
      if (e.code === 'disconnected' || e.code === 'timeout') throw e;
      greeting.error = e;
      if (this.greeting === greeting) this.greeting = null;
      this.emit('error', e);
    }
    return greeting;
  }

  /**
   * The events stored on `pattern`, without consuming anything: the newest `limit` (the
   * broker's default 50, at most 1000), oldest first; `before: seq` pages back (pass the
   * first seq of the page you have), `after: seq` forwards. Resolves to
   * `{ events: [{ seq, topic, payload, publishedAt }], more, firstSeq }`: `more` when more
   * matching events lie beyond the page in that direction, `firstSeq` the oldest seq the
   * broker still holds.
   */
  async history(pattern, { limit, before, after } = {}) {
    const frame = { op: 'history', topic: pattern };
    if (limit !== undefined) frame.limit = limit;
    if (before !== undefined) frame.before = before;
    if (after !== undefined) frame.after = after;
    return storedPage(await this.request(frame));
  }

  /**
   * The newest event of each topic matching `pattern` (a last-value cache), by topic name, at
   * most `limit` topics. Resolves like `history`; `more` when more topics matched.
   */
  async last(pattern, { limit } = {}) {
    const frame = { op: 'last', topic: pattern };
    if (limit !== undefined) frame.limit = limit;
    return storedPage(await this.request(frame));
  }

  /**
   * Who is present in `topic` (an exact topic) now: `{ topic, clients: [{ client, info,
   * connections, since }], count }`, each client once, by id.
   */
  async presence(topic) {
    const reply = await this.request({ op: 'presence', topic });
    return { topic: reply.topic, clients: reply.clients, count: reply.count };
  }

  /**
   * Resolves to the seq once the broker has the event on disk. With an outbox the event is
   * first stored there (it rejects with `outbox_failed` if it cannot be), and sent after it.
   */
  publish(topic, payload, { msgId } = {}) {
    if (this.closed) return Promise.reject(new WharfError('closed', 'the client was closed'));
    const frame = { op: 'publish', topic, payload: payload === undefined ? null : payload, msg_id: msgId ?? randomId() };
    return new Promise((resolve, reject) => {
      const p = { frame, resolve, reject, id: null, storedAt: Date.now(), key: null, unsaved: Boolean(this.outbox) };
      this.publishes.push(p);
      if (this.outbox) {
        this.outbox.add({ topic: frame.topic, payload: frame.payload, msgId: frame.msg_id, storedAt: p.storedAt }).then((key) => {
          p.key = key;
          p.unsaved = false;
        }, (e) => {
          const i = this.publishes.indexOf(p);
          if (i >= 0) this.publishes.splice(i, 1);
          reject(new WharfError('outbox_failed', `cannot store the publish in the outbox: ${e?.message ?? e}`));
        }).then(() => { if (this.state === 'connected') this.sendQueued(); });
      } else if (this.state === 'connected') {
        this.sendQueued();
      }
    });
  }

  sendPublish(p) {
    if (p.id !== null) return;
    const settle = (fn) => async (value) => {
      const i = this.publishes.indexOf(p);
      if (i >= 0) this.publishes.splice(i, 1);
      // Confirmed (or refused for good): out of the outbox before anyone is told.
      if (this.outbox && p.key !== null) {
        await this.outbox.remove(p.key).catch((e) => this.emit('error', new WharfError('outbox_failed', `cannot remove a confirmed publish from the outbox: ${e?.message ?? e}`)));
      }
      fn(value);
    };
    const sent = this.request(p.frame, { publish: true });
    p.id = this.nextId - 1;
    sent.then(settle((reply) => {
      p.resolve(reply.seq);
      // Its publish promise was a previous page's: say it here.
      if (p.loaded) this.emit('outbox-published', { ...p.entry, seq: reply.seq, duplicate: Boolean(reply.duplicate) });
    }), (e) => {
      if (e.code === 'disconnected' || e.code === 'timeout') {
        // Goes out again (now, or after the reconnect); the msg_id keeps it from being
        // stored twice.
        p.id = null;
        if (this.state === 'connected' && this.publishes.includes(p)) this.sendPublish(p);
        return;
      }
      settle((err) => {
        p.reject(err);
        if (p.loaded) this.emit('outbox-failed', { ...p.entry, error: err });
      })(e);
    });
  }

  /**
   * Subscribes `onEvent` to a pattern or a list of patterns. Options: consumer (durable),
   * start, mode, ackWaitMs, maxInFlight, maxDeliver, autoAck (default true); batch (up to
   * that many events per frame from the broker, of what is ready: fewer frames for a
   * backlog; `onEvent` still gets one event at a time); presence (this
   * client is present in the topics while subscribed), joinLeave (with onJoin, onLeave:
   * called with `{ type, sub, topic, client, info }` as clients come and go after the
   * subscribe, in arrival order with the events; its own arrival is not told, read `presence`
   * for the list so far); both need exact topics.
   */
  async subscribe(patterns, options = {}, onEvent = () => {}) {
    if (typeof options === 'function') { onEvent = options; options = {}; }
    const sub = {
      patterns: Array.isArray(patterns) ? patterns : [patterns],
      options: { autoAck: true, ...options },
      onEvent,
      sub: null,
      lastSeq: null,
      // Events of one subscription are handled one after the other, in arrival order.
      chain: Promise.resolve(),
    };
    this.subscriptions.add(sub);
    if (this.state === 'connected') {
      try {
        await this.sendSubscribe(sub);
      } catch (e) {
        this.subscriptions.delete(sub);
        throw e;
      }
    } else {
      await this.connect();
    }
    return {
      get id() { return sub.sub; },
      unsubscribe: async () => {
        this.subscriptions.delete(sub);
        const id = sub.sub;
        sub.sub = null;
        if (id) {
          this.bySub.delete(id);
          if (this.state === 'connected') await this.request({ op: 'unsubscribe', sub: id });
        }
      },
    };
  }

  async sendSubscribe(sub) {
    const o = sub.options;
    const frame = { op: 'subscribe', topics: sub.patterns };
    if (o.consumer) {
      frame.consumer = o.consumer;
      if (o.start !== undefined) frame.start = o.start;
      if (o.mode) frame.mode = o.mode;
      if (o.ackWaitMs) frame.ack_wait_ms = o.ackWaitMs;
      if (o.maxInFlight) frame.max_in_flight = o.maxInFlight;
      if (o.maxDeliver !== undefined) frame.max_deliver = o.maxDeliver;
    } else if (sub.lastSeq !== null) {
      // Resume exactly after the last event seen: no gap, no duplicate.
      frame.start = sub.lastSeq + 1;
    } else if (o.start !== undefined) {
      frame.start = o.start;
    }
    if (o.batch) frame.batch = o.batch;
    if (o.presence) frame.presence = true;
    if (o.joinLeave) frame.join_leave = true;
    await this.request(frame, {
      onReply: (reply) => {
        sub.sub = reply.sub;
        this.bySub.set(reply.sub, sub);
        if (!o.consumer && sub.lastSeq === null && typeof reply.start_seq === 'number') {
          // Nothing seen yet: a resume must still start here, not at "new".
          sub.lastSeq = reply.start_seq - 1;
        }
      },
    });
  }

  async deliver(sub, frame) {
    const durable = Boolean(sub.options.consumer);
    if (!durable) {
      if (sub.lastSeq !== null && frame.seq <= sub.lastSeq) return;
      sub.lastSeq = frame.seq;
    }
    let settled = !durable;
    const consumer = sub.options.consumer;
    const settle = (op, extra = {}) => {
      if (!durable) return Promise.resolve();
      settled = true;
      return this.request({ op, consumer, seq: frame.seq, ...extra }).then(() => undefined);
    };
    const event = {
      seq: frame.seq,
      topic: frame.topic,
      payload: frame.payload,
      publishedAt: frame.published_at,
      delivery: frame.delivery,
      consumer,
      ack: () => settle('ack'),
      nack: (delayMs = 0) => settle('nack', { delay_ms: delayMs }),
      term: () => settle('term'),
      progress: () => (durable ? this.request({ op: 'progress', consumer, seq: frame.seq }).then(() => undefined) : Promise.resolve()),
    };
    try {
      await sub.onEvent(event);
      if (!settled && sub.options.autoAck) await event.ack();
    } catch (e) {
      if (e instanceof WharfError) { this.emit('error', e); return; }
      if (!settled) {
        const { handlerRetryDelay, maxHandlerRetryDelay } = this.options;
        const delay = Math.min(handlerRetryDelay * 2 ** Math.max(0, (frame.delivery ?? 1) - 1), maxHandlerRetryDelay);
        await event.nack(delay).catch((err) => this.emit('error', err));
      }
    }
  }
}

export default WharfClient;
