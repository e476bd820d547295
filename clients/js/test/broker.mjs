// Starts the real wharf broker for the module's tests.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const WHARF_BIN = process.env.WHARF_BIN ?? join(here, '..', '..', '..', 'target', 'debug', 'wharf');

/**
 * With WHARF_TEST_NATS_URLS set (the Rust harness sets it), the broker runs on the cluster
 * backend: one stream per data dir, so a restart on the same dir finds its events again and
 * tests never see each other's.
 */
function clusterEnv(dataDir) {
  const urls = process.env.WHARF_TEST_NATS_URLS;
  if (!urls) return {};
  let h = 0;
  for (const c of dataDir) h = (Math.imul(h, 31) + c.charCodeAt(0)) >>> 0;
  const id = h.toString(16);
  return {
    WHARF_BACKEND: 'nats',
    WHARF_NATS_URLS: urls,
    WHARF_NATS_STREAM: `J${id}`,
    WHARF_NATS_SUBJECT_PREFIX: `j${id}`,
  };
}

/** A `wharf serve` process; `restart()` brings it back on the same address and data. */
export class Broker {
  /** `config`: TOML for `--config` (auth, say); none by default. */
  static async start(listen = '127.0.0.1:0', dataDir = mkdtempSync(join(tmpdir(), 'wharf-js-')), config = undefined) {
    const b = new Broker(dataDir, config);
    await b.spawn(listen);
    return b;
  }

  constructor(dataDir, config) {
    this.dataDir = dataDir;
    this.configArgs = [];
    if (config !== undefined) {
      const path = `${dataDir}.toml`;
      writeFileSync(path, config);
      this.configArgs = ['--config', path];
    }
    this.proc = null;
    this.url = null;
  }

  spawn(listen) {
    return new Promise((resolve, reject) => {
      const proc = spawn(WHARF_BIN, ['serve', ...this.configArgs, '--listen', listen, '--data-dir', this.dataDir], {
        env: { ...process.env, RUST_LOG: 'info', ...clusterEnv(this.dataDir) },
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      this.proc = proc;
      let log = '';
      const timer = setTimeout(() => reject(new Error(`broker did not start:\n${log}`)), 10000);
      proc.stderr.setEncoding('utf8');
      proc.stderr.on('data', (chunk) => {
        log += chunk;
        const m = log.match(/url=(ws:\/\/\S+)/);
        if (m && !this.url) {
          this.url = m[1];
          clearTimeout(timer);
          resolve();
        } else if (m && this.url && proc === this.proc) {
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

  /** SIGKILL, and wait for the process to be gone. */
  kill() {
    const proc = this.proc;
    return new Promise((resolve) => {
      proc.once('exit', () => resolve());
      proc.kill('SIGKILL');
    });
  }

  async restart() {
    await this.kill();
    await this.spawn(this.address);
  }

  async stop() {
    if (this.proc && this.proc.exitCode === null) await this.kill();
    rmSync(this.dataDir, { recursive: true, force: true });
    if (this.configArgs.length) rmSync(`${this.dataDir}.toml`, { force: true });
  }
}

/** Resolves when `predicate()` holds, checking whenever `emitter` says something changed. */
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
