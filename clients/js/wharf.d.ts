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
  maxDeliver?: number;
  /** Ack each event when its handler returns without throwing (default true). */
  autoAck?: boolean;
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
  /** Resolves to the seq once the broker has the event on disk. */
  publish(topic: string, payload: unknown, options?: { msgId?: string }): Promise<number>;
  subscribe<T = unknown>(
    patterns: string | string[],
    options: SubscribeOptions,
    onEvent: (event: WharfEvent<T>) => void | Promise<void>,
  ): Promise<Subscription>;
  subscribe<T = unknown>(patterns: string | string[], onEvent: (event: WharfEvent<T>) => void | Promise<void>): Promise<Subscription>;
  /** Resolves once every event handed out so far is handled and settled, and every request answered. */
  flush(): Promise<void>;
  /** Sends any protocol request (docs/PROTOCOL.md) and resolves with its reply. */
  request(frame: Record<string, unknown>): Promise<Record<string, unknown>>;
}

export default WharfClient;
