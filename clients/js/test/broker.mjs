// Starts the real wharf broker for the module's tests.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const WHARF_BIN = process.env.WHARF_BIN ?? join(here, '..', '..', '..', 'target', 'debug', 'wharf');

/**
 * Whether the broker runs on the cluster backend: with WHARF_TEST_NATS_URLS set (the Rust
 * harness sets it), every test broker is two `wharf serve` nodes on one NATS stream.
 */
export const cluster = Boolean(process.env.WHARF_TEST_NATS_URLS);

/** How many wharf nodes a test broker has unless the test asks otherwise. */
export const NODES = cluster ? 2 : 1;

/**
 * The environment that puts a node on the cluster backend: one stream per broker, named after
 * its first node's data dir, so that its nodes share it, a restart finds its events again and
 * tests never see each other's.
 */
function clusterEnv(streamKey) {
  const urls = process.env.WHARF_TEST_NATS_URLS;
  if (!urls) return {};
  let h = 0;
  for (const c of streamKey) h = (Math.imul(h, 31) + c.charCodeAt(0)) >>> 0;
  const id = h.toString(16);
  return {
    WHARF_BACKEND: 'nats',
    WHARF_NATS_URLS: urls,
    WHARF_NATS_STREAM: `J${id}`,
    WHARF_NATS_SUBJECT_PREFIX: `j${id}`,
    // As the Rust harness gives its cluster brokers: this machine is shared, and a publish
    // stored on three replicas with `sync_interval: always` may take a while under load.
    WHARF_NATS_PUBLISH_TIMEOUT: '30s',
  };
}

/** One `wharf serve` process; `spawn(listen)` starts it (again) on its data dir. */
class Node {
  constructor(dataDir, configArgs, env) {
    this.dataDir = dataDir;
    this.configArgs = configArgs;
    this.env = env;
    this.proc = null;
    this.url = null;
  }

  /** Resolves once it listens (and, on the cluster backend, its NATS stream is ready). */
  spawn(listen) {
    return new Promise((resolve, reject) => {
      const proc = spawn(WHARF_BIN, ['serve', ...this.configArgs, '--listen', listen, '--data-dir', this.dataDir], {
        env: { ...process.env, RUST_LOG: 'info', ...this.env },
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      this.proc = proc;
      let log = '';
      let url = null;
      // The cluster backend's first look at its stream may take 10 s (the Rust harness
      // gives a starting node 30 s); "NATS stream ready" may come before or after "listening".
      const limit = cluster ? 30000 : 10000;
      const timer = setTimeout(() => {
        proc.kill('SIGKILL');
        reject(new Error(`broker did not start within ${limit} ms:\n${log}`));
      }, limit);
      proc.stderr.setEncoding('utf8');
      proc.stderr.on('data', (chunk) => {
        log += chunk;
        url ??= log.match(/url=(ws:\/\/\S+)/)?.[1] ?? null;
        if (url && (!cluster || log.includes('NATS stream ready'))) {
          this.url = url;
          clearTimeout(timer);
          resolve();
        }
      });
      proc.on('exit', (code) => {
        if (code !== null && code !== 0) {
          clearTimeout(timer);
          reject(new Error(`broker exited with ${code}:\n${log}`));
        }
      });
    });
  }

  get address() {
    return this.url.replace('ws://', '').replace('/ws', '');
  }

  get running() {
    return this.proc !== null && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** SIGKILL, and wait for the process to be gone. */
  kill() {
    const proc = this.proc;
    if (!this.running) return Promise.resolve();
    return new Promise((resolve) => {
      proc.once('exit', () => resolve());
      proc.kill('SIGKILL');
    });
  }
}

/**
 * A broker for one test: one `wharf serve`, or on the cluster backend two (each on its own
 * data dir, both on one NATS stream). `kill()` and `revive()` bring nodes down and back on
 * the same addresses.
 */
export class Broker {
  /**
   * `config`: TOML for `--config` (auth, say), given to every node; none by default.
   * `options.nodes`: how many wharf nodes (default NODES); `options.env`: more environment
   * for them (`WHARF_NATS_LEASE`, say).
   */
  static async start(listen = '127.0.0.1:0', dataDir = mkdtempSync(join(tmpdir(), 'wharf-js-')), config = undefined, options = {}) {
    const b = new Broker(dataDir, config, options);
    try {
      // One after the other: the first makes the stream, the others find it.
      for (const node of b.nodes) await node.spawn(node === b.nodes[0] ? listen : '127.0.0.1:0');
    } catch (e) {
      await b.stop();
      throw e;
    }
    return b;
  }

  constructor(dataDir, config, { nodes = NODES, env = {} } = {}) {
    this.dataDir = dataDir;
    this.configArgs = [];
    if (config !== undefined) {
      const path = `${dataDir}.toml`;
      writeFileSync(path, config);
      this.configArgs = ['--config', path];
    }
    const nodeEnv = { ...clusterEnv(dataDir), ...env };
    this.nodes = Array.from({ length: nodes }, (_, i) => new Node(i === 0 ? dataDir : `${dataDir}-node${i}`, this.configArgs, nodeEnv));
  }

  /** The first node's WebSocket URL. */
  get url() {
    return this.nodes[0].url;
  }

  /** Every node's WebSocket URL, the first node's first. */
  get urls() {
    return this.nodes.map((n) => n.url);
  }

  /**
   * Every node's URL, starting at node `i` (modulo the count): a client given this list
   * connects to node `i`, and moves to the next node when that one goes away. With one node,
   * always `[url]`.
   */
  urlsFrom(i) {
    const urls = this.urls;
    const k = i % urls.length;
    return [...urls.slice(k), ...urls.slice(0, k)];
  }

  /** The first node's `host:port`. */
  get address() {
    return this.nodes[0].address;
  }

  /** SIGKILLs node `i`, or every node, and waits for them to be gone. */
  async kill(i = undefined) {
    const nodes = i === undefined ? this.nodes : [this.nodes[i]];
    await Promise.all(nodes.map((n) => n.kill()));
  }

  /** Starts every node that is not running again, on its address and data dir. */
  async revive() {
    for (const node of this.nodes) {
      if (!node.running) await node.spawn(node.address);
    }
  }

  async restart() {
    await this.kill();
    await this.revive();
  }

  async stop() {
    await this.kill();
    for (const node of this.nodes) rmSync(node.dataDir, { recursive: true, force: true });
    if (this.configArgs.length) rmSync(`${this.dataDir}.toml`, { force: true });
  }
}

/** Resolves when `check()` holds, checking whenever `subscribe`'s callback says something changed. */
export function until(check, subscribe, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { unsubscribe(); reject(new Error('condition not reached in time')); }, timeoutMs);
    const test = () => {
      if (check()) { clearTimeout(timer); unsubscribe(); resolve(); }
    };
    const unsubscribe = subscribe(test);
    test();
  });
}
