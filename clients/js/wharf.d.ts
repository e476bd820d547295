// Types for wharf.js, the wharf client for browsers and Node.

export type State = 'connecting' | 'connected' | 'disconnected' | 'closed';

/** An error from the broker (its error `code`) or from the client (`closed`, `timeout`, `disconnected`, `invalid_url`, …). */
export class WharfError extends Error {
  readonly code: string;
  constructor(code: string, message: string);
}

export interface ClientOptions {
  /** Sent with an `auth` request after every (re)connect, when set. A function is called
   * each time for a fresh token (a short-lived JWT from your backend), and again when the
   * broker says the current one is expiring (`token_expiring`). */
  token?: string | (() => string | Promise<string>);
  /** A WebSocket implementation, where there is no global one. */
  WebSocket?: typeof WebSocket | (new (url: string) => WebSocket);
  /** First reconnect delay, ms (default 500); doubles per failed attempt, with jitter. */
  minReconnectDelay?: number;
  /** Largest reconnect delay, ms (default 20000). */
  maxReconnectDelay?: number;
  /** How long a request may wait for its reply, ms (default 10000). */
  requestTimeout?: number;
  /** An idle connection is checked with a ping this often, ms (default 15000). */
  heartbeatInterval?: number;
  /** An event whose handler throws is delivered again after this long, ms (default 1000),
   * doubled per delivery. */
  handlerRetryDelay?: number;
  /** The longest such delay, ms (default 60000). */
  maxHandlerRetryDelay?: number;
  /** A persistent outbox: `true` (database `wharf-outbox`) or an IndexedDB database name.
   * Every publish is stored there before it is sent and removed once the broker confirms it;
   * a new client on the same outbox (after a reload or a crash) sends what is left first.
   * Without IndexedDB (Node) the constructor throws `no_indexeddb` unless `indexedDB` is given. */
  outbox?: boolean | string;
  /** An IndexedDB implementation, where there is no global one (Node: fake-indexeddb, say). */
  indexedDB?: unknown;
  /** The broker's `dedup_window`, ms (default 120000): outbox entries loaded older than this
   * are reported with `outbox-stale`. */
  dedupWindow?: number;
}

/** A publish waiting in the outbox (or, without one, in memory) for the broker's confirmation. */
export interface OutboxEntry {
  topic: string;
  payload: unknown;
  msgId: string;
  /** When it was published (entered the outbox), ms since the epoch. */
  storedAt: number;
}

export type Start = 'all' | 'new' | number | string;

export interface SubscribeOptions {
  /** Durable consumer name: unsettled events survive disconnects and broker restarts. */
  consumer?: string;
  /** Where a new consumer (or an ephemeral subscription) starts. */
  start?: Start;
  mode?: 'exclusive' | 'shared';
  ackWaitMs?: number;
  maxInFlight?: number;
  /** Up to this many events per frame from the broker (of what is ready); handlers still get one at a time. */
  batch?: number;
  maxDeliver?: number;
  /** Ack each event when its handler returns without throwing (default true). */
  autoAck?: boolean;
  /** This client (see `hello`) is present in the subscription's topics while it lasts;
   * the patterns must be exact topics. Sent as `"presence": true`. */
  presence?: boolean;
  /** Be told, from the `subscribed` reply on, when a client's first connection becomes
   * present in one of the topics (`onJoin`) and when its last one goes (`onLeave`); exact
   * topics. The subscription's own arrival is not told to it: read `presence(topic)` once
   * subscribed for the list so far. Sent as `"join_leave": true`. */
  joinLeave?: boolean;
  /** With `joinLeave`: called in arrival order with the subscription's events. */
  onJoin?: (change: PresenceChange) => void | Promise<void>;
  onLeave?: (change: PresenceChange) => void | Promise<void>;
}

/** A stored event as `history` and `last` return it. */
export interface StoredEvent<T = unknown> {
  seq: number;
  topic: string;
  payload: T;
  /** RFC 3339 UTC with milliseconds. */
  publishedAt: string;
}

export interface StoredPage<T = unknown> {
  /** Oldest first (`last`: by topic name). */
  events: StoredEvent<T>[];
  /** More matching events (`last`: topics) lie beyond this page in the direction asked. */
  more: boolean;
  /** The oldest seq the broker still holds. */
  firstSeq: number;
}

export interface HistoryOptions {
  /** How many events (the broker's `history_default_limit`, 50, when left out; at most
   * `history_max_limit`, 1000). */
  limit?: number;
  /** The newest `limit` events with a seq below this one (page backwards). */
  before?: number;
  /** The first `limit` events with a seq above this one (page forwards). */
  after?: number;
}

export interface PresentClient {
  client: string;
  info: Record<string, unknown> | null;
  /** Its connections present in the topic, across the broker (or the cluster). */
  connections: number;
  /** When its earliest present connection joined (RFC 3339). */
  since: string;
}

export interface Presence {
  topic: string;
  /** Each client once, by client id. */
  clients: PresentClient[];
  count: number;
}

/** A `join` or `leave` push, as the broker sends it. */
export interface PresenceChange {
  type: 'join' | 'leave';
  /** The subscription it is for. */
  sub: string;
  topic: string;
  client: string;
  info: Record<string, unknown> | null;
}

export interface WharfEvent<T = unknown> {
  seq: number;
  topic: string;
  payload: T;
  /** RFC 3339 UTC with milliseconds. */
  publishedAt: string;
  /** 1 on first delivery, more on redelivery. */
  delivery: number;
  consumer?: string;
  ack(): Promise<void>;
  nack(delayMs?: number): Promise<void>;
  term(): Promise<void>;
  progress(): Promise<void>;
}

export interface Subscription {
  readonly id: string | null;
  unsubscribe(): Promise<void>;
}

export class WharfClient {
  /**
   * `urlOrUrls`: the broker's WebSocket URL (`ws://…/ws` or `wss://…/ws`), or a non-empty list
   * of them (the wharf nodes of a cluster): the first is dialled first, and each reconnect,
   * after a close or a failed dial, dials the next one, round-robin. An empty list or an entry
   * that is not a non-empty string throws a `WharfError` with code `invalid_url`.
   */
  constructor(urlOrUrls: string | readonly string[], options?: ClientOptions);
  /** Every URL the client was given, in order. */
  readonly urls: readonly string[];
  /** The URL it is connected to, or dialling, or (while disconnected) will dial next. */
  readonly url: string;
  readonly state: State;
  connect(): Promise<void>;
  close(): void;
  on(event: 'state', fn: (state: State) => void): () => void;
  on(event: 'error', fn: (error: Error) => void): () => void;
  on(event: 'gap' | 'lost' | 'unsubscribed' | 'token_expiring', fn: (frame: Record<string, unknown>) => void): () => void;
  /** For every subscription with `joinLeave`. */
  on(event: 'join' | 'leave', fn: (change: PresenceChange) => void): () => void;
  /** An entry a previous page left in the outbox, confirmed by the broker (`duplicate` when it
   * had been stored before, its confirmation lost). */
  on(event: 'outbox-published', fn: (entry: OutboxEntry & { seq: number; duplicate: boolean }) => void): () => void;
  /** An entry a previous page left in the outbox, refused by the broker (removed from it). */
  on(event: 'outbox-failed', fn: (entry: OutboxEntry & { error: WharfError }) => void): () => void;
  /** Entries loaded from the outbox older than `dedupWindow`: one that reached the broker
   * before, its confirmation lost, is stored again. */
  on(event: 'outbox-stale', fn: (entries: OutboxEntry[]) => void): () => void;
  /** The publishes waiting for confirmation, in order, with their age in ms. */
  pending(): Promise<Array<OutboxEntry & { age: number }>>;
  /** Resolves to the seq once the broker has the event on disk (with an outbox: stored there
   * first; rejects with `outbox_failed` if it cannot be). */
  publish(topic: string, payload: unknown, options?: { msgId?: string }): Promise<number>;
  subscribe<T = unknown>(
    patterns: string | string[],
    options: SubscribeOptions,
    onEvent: (event: WharfEvent<T>) => void | Promise<void>,
  ): Promise<Subscription>;
  subscribe<T = unknown>(patterns: string | string[], onEvent: (event: WharfEvent<T>) => void | Promise<void>): Promise<Subscription>;
  /**
   * Names this client for presence (`id`: 1 to 128 bytes of `A-Z a-z 0-9 _ . - @ :`; null to
   * set `info` only, with a JWT whose `sub` is the id). Remembered and said again first thing
   * after every reconnect, before the subscriptions; say it before subscribing with
   * `presence`. Resolves once the broker has it (when disconnected, once connected).
   */
  hello(id: string | null | undefined, info?: Record<string, unknown>): Promise<void>;
  /** Stored events matching `pattern`, newest `limit`, oldest first; consumes nothing. */
  history<T = unknown>(pattern: string, options?: HistoryOptions): Promise<StoredPage<T>>;
  /** The newest event of each topic matching `pattern`, by topic name, at most `limit` topics. */
  last<T = unknown>(pattern: string, options?: { limit?: number }): Promise<StoredPage<T>>;
  /** Who is present in `topic` (an exact topic) now. */
  presence(topic: string): Promise<Presence>;
  /** Resolves once every event handed out so far is handled and settled, and every request answered. */
  flush(): Promise<void>;
  /** Sends any protocol request (docs/PROTOCOL.md) and resolves with its reply. */
  request(frame: Record<string, unknown>): Promise<Record<string, unknown>>;
}

export default WharfClient;
