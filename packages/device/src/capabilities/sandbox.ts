/**
 * Sandboxes: one worker_thread per module instance (worker.ts), with
 *  - a heap cap (worker resourceLimits) for the worker's own JavaScript, and the module's linear memory capped by
 *    the maximum the manager checked statically (wasm.ts) — WebAssembly memory lives outside the V8 heap, so the
 *    declared maximum, not resourceLimits, is what bounds it;
 *  - a per-call time limit enforced by a watchdog over a shared progress counter: a call that runs past its limit
 *    gets the worker terminated (WebAssembly cannot be interrupted from inside);
 *  - calls batched per event-loop turn into one message each way (many calls, one round trip), one batch in flight.
 *
 * Faults (trap, timeout, crash, a reply outside the protocol) are fatal for the instance: the calls of the batch
 * that had not run are rejected as 'aborted' (the manager re-dispatches them to the version it rolls back to).
 *
 * SandboxPool keeps warm workers (a worker takes tens to hundreds of milliseconds to start; it is not part of
 * installing a module) and recycles healthy ones after their instance is dropped.
 */
import { Worker, type ResourceLimits } from 'node:worker_threads';
import { LOG_MAX_LINE, LOG_MAX_LINES } from './host.ts';

const WORKER_URL = new URL('./worker.ts', import.meta.url);
const MAX_BATCH_CALLS = 64;
const MAX_BATCH_BYTES = 1024 * 1024;

export const DEFAULT_RESOURCE_LIMITS: ResourceLimits = {
  maxOldGenerationSizeMb: 48,
  maxYoungGenerationSizeMb: 8,
  stackSizeMb: 2,
};

export type SandboxFaultKind = 'trap' | 'timeout' | 'crash';

export class SandboxCallError extends Error {
  override readonly name = 'SandboxCallError';
  readonly kind: SandboxFaultKind | 'status' | 'aborted';
  readonly status: number | undefined;
  constructor(kind: SandboxFaultKind | 'status' | 'aborted', message: string, status?: number) {
    super(message);
    this.kind = kind;
    this.status = status;
  }
}

export interface SandboxFault {
  readonly kind: SandboxFaultKind;
  readonly message: string;
  /** Linear memory of the instance at the last report (bytes). */
  readonly memoryBytes: number;
}

export interface LoadSpec {
  readonly module: WebAssembly.Module;
  /** Host functions to provide, 'rotor.log' form (exactly the declared ones). */
  readonly imports: readonly string[];
  readonly ioBytes: number;
  readonly selfTest: { readonly input: Uint8Array; readonly output: Uint8Array } | undefined;
  readonly callMs: number;
  /** Time allowed for instantiation plus the health check. */
  readonly loadMs: number;
}

interface Pending {
  readonly id: number;
  readonly input: Uint8Array;
  readonly resolve: (out: Uint8Array) => void;
  readonly reject: (e: SandboxCallError) => void;
}

type Ctl =
  | { kind: 'load'; resolve: (v: { ioCap: number; logs: string[] }) => void; reject: (e: Error) => void }
  | { kind: 'reset'; resolve: () => void; reject: (e: Error) => void };

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null;
}

function checkLogs(v: unknown): string[] {
  if (v === undefined) return [];
  if (!Array.isArray(v) || v.length > LOG_MAX_LINES) throw new Error('logs');
  return v.map((l) => {
    if (typeof l !== 'string' || l.length > LOG_MAX_LINE * 4) throw new Error('log line');
    return l;
  });
}

let sandboxIds = 0;

export class Sandbox {
  readonly id = ++sandboxIds;
  readonly #worker: Worker;
  readonly #progressBuf = new SharedArrayBuffer(8);
  readonly #progress = new Int32Array(this.#progressBuf);
  readonly online: Promise<void>;
  #state: 'idle' | 'loading' | 'loaded' | 'failed' | 'dead' = 'idle';
  #ctl: Ctl | undefined;
  #queue: Pending[] = [];
  #inflight: Pending[] | undefined;
  #flushScheduled = false;
  #nextId = 0;
  #ioBytes = 0;
  #limitMs = 0;
  #watchdog: ReturnType<typeof setInterval> | undefined;
  #batchStart = 0;
  #lastSeen = 0;
  #lastChange = 0;
  #memoryBytes = 0;
  #exited: Promise<void>;
  /** Fatal faults; called once. */
  onFault: ((f: SandboxFault) => void) | undefined;
  /** Lines the module logged through rotor.log. */
  onLog: ((line: string) => void) | undefined;

  constructor(resourceLimits: ResourceLimits = DEFAULT_RESOURCE_LIMITS) {
    this.#worker = new Worker(WORKER_URL, { resourceLimits, stdout: false, stderr: false });
    this.online = new Promise((resolve, reject) => {
      this.#worker.once('online', () => {
        resolve();
      });
      this.#worker.once('error', reject);
    });
    this.online.catch(() => undefined);
    this.#exited = new Promise((resolve) =>
      this.#worker.once('exit', () => {
        resolve();
      }),
    );
    this.#worker.on('message', (m: unknown) => {
      try {
        this.#onMessage(m);
      } catch (e) {
        this.#fault('crash', `reply outside the protocol: ${e instanceof Error ? e.message : String(e)}`);
      }
    });
    this.#worker.on('error', (e: Error) => {
      this.#fault('crash', `worker error: ${e.message}`);
    });
    this.#worker.on('exit', () => {
      if (this.#state !== 'dead') this.#fault('crash', 'worker exited');
    });
  }

  /** True when the worker has never faulted and can host another instance. */
  get reusable(): boolean {
    return this.#state === 'idle' || this.#state === 'loaded';
  }

  get state(): string {
    return this.#state;
  }

  /** Instantiates the module and runs its health check, within spec.loadMs. */
  async load(spec: LoadSpec): Promise<{ ioCap: number; logs: string[] }> {
    if (this.#state !== 'idle') throw new Error(`sandbox is ${this.#state}`);
    await this.online;
    this.#state = 'loading';
    this.#ioBytes = spec.ioBytes;
    const p = new Promise<{ ioCap: number; logs: string[] }>((resolve, reject) => {
      this.#ctl = { kind: 'load', resolve, reject };
    });
    this.#arm(spec.loadMs);
    this.#worker.postMessage({
      t: 'load',
      module: spec.module,
      imports: spec.imports,
      ioBytes: spec.ioBytes,
      selfTest: spec.selfTest,
      progress: this.#progressBuf,
    });
    try {
      const r = await p;
      this.#state = 'loaded';
      this.#limitMs = spec.callMs;
      return r;
    } finally {
      this.#disarm();
    }
  }

  /** Runs one call; resolves with the output. */
  call(input: Uint8Array): Promise<Uint8Array> {
    if (this.#state !== 'loaded') {
      return Promise.reject(new SandboxCallError('aborted', `sandbox is ${this.#state}`));
    }
    return new Promise((resolve, reject) => {
      this.#queue.push({ id: this.#nextId++, input, resolve, reject });
      if (!this.#flushScheduled && this.#inflight === undefined) {
        this.#flushScheduled = true;
        // After the current macrotask: every call made meanwhile (all microtasks included) joins the batch.
        setImmediate(() => {
          this.#flushScheduled = false;
          this.#flush();
        });
      }
    });
  }

  /** Drops the instance (the worker stays warm for another module). */
  async reset(): Promise<void> {
    if (this.#state !== 'loaded' && this.#state !== 'idle') throw new Error(`sandbox is ${this.#state}`);
    if (this.#inflight !== undefined || this.#queue.length > 0)
      throw new Error('sandbox has calls in flight');
    const p = new Promise<void>((resolve, reject) => {
      this.#ctl = { kind: 'reset', resolve, reject };
    });
    this.#worker.postMessage({ t: 'reset' });
    await p;
    this.#state = 'idle';
  }

  async terminate(): Promise<void> {
    if (this.#state !== 'dead') {
      this.#state = 'dead';
      this.#disarm();
      this.#failAll(undefined, 'sandbox terminated');
      await this.#worker.terminate();
    }
    await this.#exited;
  }

  #flush(): void {
    if (this.#inflight !== undefined || this.#queue.length === 0 || this.#state !== 'loaded') return;
    const batch: Pending[] = [];
    let bytes = 0;
    while (batch.length < MAX_BATCH_CALLS && this.#queue.length > 0) {
      const next = this.#queue[0]!;
      if (batch.length > 0 && bytes + next.input.length > MAX_BATCH_BYTES) break;
      bytes += next.input.length;
      batch.push(next);
      this.#queue.shift();
    }
    this.#inflight = batch;
    this.#batchStart = Atomics.load(this.#progress, 0);
    this.#arm(this.#limitMs);
    // Packed: one buffer of inputs and their lengths, transferred (no per-call structured clone).
    const lens = new Int32Array(batch.length);
    const data = new Uint8Array(bytes);
    let at = 0;
    batch.forEach((c, i) => {
      lens[i] = c.input.length;
      data.set(c.input, at);
      at += c.input.length;
    });
    this.#worker.postMessage({ t: 'call', lens, data }, [lens.buffer, data.buffer]);
  }

  #arm(limitMs: number): void {
    this.#lastSeen = Atomics.load(this.#progress, 0);
    this.#lastChange = performance.now();
    if (this.#watchdog !== undefined) return;
    const tick = Math.max(2, Math.min(50, Math.floor(limitMs / 4)));
    this.#watchdog = setInterval(() => {
      this.#check(limitMs);
    }, tick);
  }

  #disarm(): void {
    if (this.#watchdog !== undefined) clearInterval(this.#watchdog);
    this.#watchdog = undefined;
  }

  #check(limitMs: number): void {
    const seen = Atomics.load(this.#progress, 0);
    const now = performance.now();
    if (seen !== this.#lastSeen) {
      this.#lastSeen = seen;
      this.#lastChange = now;
      return;
    }
    if (Atomics.load(this.#progress, 1) === 1 && now - this.#lastChange > limitMs) {
      this.#fault('timeout', `a unit of work ran past its ${limitMs} ms limit; worker terminated`);
    }
  }

  #onMessage(m: unknown): void {
    if (!isObj(m) || typeof m['t'] !== 'string') throw new Error('not a message');
    const logs = checkLogs(m['logs']);
    for (const l of logs) this.onLog?.(l);
    switch (m['t']) {
      case 'loaded':
      case 'load-failed': {
        const ctl = this.#ctl;
        if (ctl?.kind !== 'load') throw new Error('unexpected load reply');
        this.#ctl = undefined;
        if (m['t'] === 'loaded') {
          const ioCap = m['ioCap'];
          if (typeof ioCap !== 'number' || !Number.isInteger(ioCap) || ioCap < 0 || ioCap > this.#ioBytes)
            throw new Error('ioCap');
          ctl.resolve({ ioCap, logs });
        } else {
          this.#state = 'failed';
          ctl.reject(
            new Error(typeof m['message'] === 'string' ? m['message'].slice(0, 300) : 'load failed'),
          );
        }
        return;
      }
      case 'reset': {
        const ctl = this.#ctl;
        if (ctl?.kind !== 'reset') throw new Error('unexpected reset reply');
        this.#ctl = undefined;
        ctl.resolve();
        return;
      }
      case 'results':
        this.#onResults(m);
        return;
      default:
        throw new Error('unknown message');
    }
  }

  #onResults(m: Record<string, unknown>): void {
    const batch = this.#inflight;
    const { codes, vals, data } = m;
    if (
      batch === undefined ||
      !(codes instanceof Int32Array) ||
      !(vals instanceof Int32Array) ||
      !(data instanceof Uint8Array) ||
      codes.length !== batch.length ||
      vals.length !== batch.length
    )
      throw new Error('results do not match the batch');
    const mem = m['memoryBytes'];
    if (typeof mem === 'number') this.#memoryBytes = mem;
    const trapMsg = typeof m['trap'] === 'string' ? m['trap'].slice(0, 300) : 'trap';
    // Validate everything before settling any call.
    let total = 0;
    for (let i = 0; i < batch.length; i++) {
      const c = codes[i]!;
      if (c < 0 || c > 3) throw new Error('result code');
      if (c === 0) {
        const len = vals[i]!;
        if (len < 0 || len > this.#ioBytes) throw new Error('output length');
        total += len;
      }
    }
    if (total !== data.length) throw new Error('outputs do not add up');
    this.#inflight = undefined;
    this.#disarm();
    let trapped = false;
    let at = 0;
    for (let i = 0; i < batch.length; i++) {
      const call = batch[i]!;
      const v = vals[i]!;
      switch (codes[i]) {
        case 0:
          call.resolve(data.subarray(at, at + v));
          at += v;
          break;
        case 1:
          call.reject(new SandboxCallError('status', `module status ${v}`, v));
          break;
        case 2:
          trapped = true;
          call.reject(new SandboxCallError('trap', trapMsg));
          break;
        default:
          call.reject(new SandboxCallError('aborted', 'not run: the instance faulted'));
      }
    }
    if (trapped) {
      this.#fault('trap', trapMsg);
      return;
    }
    this.#flush();
  }

  /**
   * Rejects everything outstanding. `kind` goes to the call of the in-flight batch that was running (found from the
   * progress counter); the calls that had not started are 'aborted'.
   */
  #failAll(kind: SandboxFaultKind | undefined, message: string): void {
    const batch = this.#inflight ?? [];
    this.#inflight = undefined;
    const running =
      kind === undefined
        ? -1
        : Math.min(batch.length - 1, Atomics.load(this.#progress, 0) - this.#batchStart - 1);
    batch.forEach((c, i) => {
      c.reject(new SandboxCallError(i === running && kind !== undefined ? kind : 'aborted', message));
    });
    for (const c of this.#queue.splice(0)) c.reject(new SandboxCallError('aborted', message));
    const ctl = this.#ctl;
    this.#ctl = undefined;
    ctl?.reject(new Error(message));
  }

  #fault(kind: SandboxFaultKind, message: string): void {
    if (this.#state === 'dead' || this.#state === 'failed') return;
    const wasActive = this.#state === 'loaded' || this.#state === 'loading';
    this.#state = 'failed';
    this.#disarm();
    this.#failAll(kind, message);
    void this.#worker.terminate();
    if (wasActive) this.onFault?.({ kind, message, memoryBytes: this.#memoryBytes });
  }
}

/** Warm workers ready to take a module. */
export class SandboxPool {
  readonly #spare: number;
  readonly #limits: ResourceLimits;
  readonly #idle: Sandbox[] = [];
  #closed = false;

  constructor(opts: { spare?: number; resourceLimits?: ResourceLimits } = {}) {
    this.#spare = opts.spare ?? 1;
    this.#limits = opts.resourceLimits ?? DEFAULT_RESOURCE_LIMITS;
    this.#refill();
  }

  #open(): boolean {
    return !this.#closed;
  }

  #refill(): void {
    while (!this.#closed && this.#idle.length < this.#spare) this.#idle.push(new Sandbox(this.#limits));
  }

  /** A warm sandbox (one is started in the background to replace it). */
  async acquire(): Promise<Sandbox> {
    if (this.#closed) throw new Error('sandbox pool closed');
    const s = this.#idle.shift() ?? new Sandbox(this.#limits);
    this.#refill();
    await s.online;
    return s;
  }

  /** Returns a sandbox: a healthy one is reset and kept warm, others are terminated. */
  async release(s: Sandbox): Promise<void> {
    s.onFault = undefined;
    s.onLog = undefined;
    if (!this.#closed && s.reusable && this.#idle.length < this.#spare * 2) {
      try {
        await s.reset();
        if (this.#open()) {
          this.#idle.push(s);
          return;
        }
      } catch {
        // fall through to terminate
      }
    }
    await s.terminate();
  }

  async close(): Promise<void> {
    this.#closed = true;
    const all = this.#idle.splice(0);
    await Promise.all(all.map((s) => s.terminate()));
  }
}
