/**
 * The running SHA-256 of an image being installed (fetch/pipeline.ts), inline or on a worker thread.
 *
 * SHA-256 is most of the pipeline's CPU per byte (AES-GCM/CTR with AES-NI is several times faster); on the event
 * loop it serialises with receiving, deciphering and writing. For large images the hash runs on a worker thread:
 * each piece of plaintext is handed over (its ArrayBuffer transferred when the pipeline owns it — no copy — else
 * copied once) and hashed there in order while the main thread deciphers and writes the next ones. Memory stays
 * bounded: at most MAX_IN_FLIGHT bytes are outstanding, beyond that update() returns a promise to wait for
 * (backpressure); the worker frees each piece after hashing it. The digest is the same either way (one SHA-256
 * over the same bytes in the same order: worker messages are delivered in order).
 */
import { createHash, type Hash } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { DeviceError } from '../errors.ts';

export interface StreamHash {
  /**
   * Hashes `b`. With `transfer`, `b` spans its whole ArrayBuffer and is handed over: the caller must not use it
   * again. Returns a promise when the caller must wait for it before the next update (backpressure).
   */
  update(b: Uint8Array, transfer?: boolean): Promise<void> | undefined;
  digest(): Promise<Uint8Array>;
  /** Ends the hash (idempotent); a worker is stopped. */
  close(): void;
}

/** Images at least this large are hashed on a worker thread (below, the thread's start-up is not worth it). */
export const PARALLEL_HASH_MIN = 16 * 1024 * 1024;
/** Bytes handed to the worker and not yet hashed, at most. */
const MAX_IN_FLIGHT = 8 * 1024 * 1024;

/** Frees a buffer that spans its whole ArrayBuffer (nothing else may refer to it). */
function free(b: Uint8Array): void {
  const ab = b.buffer;
  if (ab instanceof ArrayBuffer && !ab.detached && b.byteOffset === 0 && b.byteLength === ab.byteLength)
    ab.transfer(0);
}

class InlineHash implements StreamHash {
  readonly #h: Hash = createHash('sha256');

  update(b: Uint8Array, transfer = false): undefined {
    this.#h.update(b);
    if (transfer) free(b);
    return undefined;
  }

  digest(): Promise<Uint8Array> {
    return Promise.resolve(new Uint8Array(this.#h.digest()));
  }

  close(): void {
    // Nothing to stop.
  }
}

// CommonJS (eval): no module loader or TypeScript in the worker, it starts in a few milliseconds.
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const h = require('node:crypto').createHash('sha256');
parentPort.on('message', (m) => {
  if (m === null) {
    const d = h.digest();
    parentPort.postMessage({ digest: d.buffer.slice(d.byteOffset, d.byteOffset + d.length) });
    return;
  }
  h.update(new Uint8Array(m));
  const n = m.byteLength;
  m.transfer(0);
  parentPort.postMessage(n);
});
`;

class WorkerHash implements StreamHash {
  readonly #worker: Worker;
  #inFlight = 0;
  #failure: Error | undefined;
  #closed = false;
  /** Waiting for the in-flight bytes to drop under the bound. */
  #drain: { resolve: () => void; reject: (e: Error) => void } | undefined;
  #digest: { resolve: (d: Uint8Array) => void; reject: (e: Error) => void } | undefined;

  constructor() {
    // Referenced while it runs (a pending digest keeps the process alive); close() always stops it.
    this.#worker = new Worker(WORKER_SOURCE, { eval: true });
    this.#worker.on('message', (m: unknown) => {
      if (typeof m === 'number') {
        this.#inFlight -= m;
        if (this.#drain !== undefined && this.#inFlight <= MAX_IN_FLIGHT) {
          const d = this.#drain;
          this.#drain = undefined;
          d.resolve();
        }
      } else if (typeof m === 'object' && m !== null && 'digest' in m && m.digest instanceof ArrayBuffer) {
        this.#digest?.resolve(new Uint8Array(m.digest));
        this.#digest = undefined;
      }
    });
    const fail = (e: Error): void => {
      this.#failure ??= new DeviceError('INTERNAL', `hash worker failed: ${e.message}`, { cause: e });
      this.#drain?.reject(this.#failure);
      this.#digest?.reject(this.#failure);
      this.#drain = undefined;
      this.#digest = undefined;
    };
    this.#worker.on('error', fail);
    this.#worker.on('exit', (code) => {
      if (!this.#closed) fail(new Error(`exited with code ${code}`));
    });
  }

  update(b: Uint8Array, transfer = false): Promise<void> | undefined {
    if (this.#failure !== undefined) throw this.#failure;
    if (this.#closed) throw new DeviceError('INTERNAL', 'hash already finished');
    if (b.length === 0) return undefined;
    let ab: ArrayBuffer;
    if (
      transfer &&
      b.buffer instanceof ArrayBuffer &&
      b.byteOffset === 0 &&
      b.byteLength === b.buffer.byteLength
    )
      ab = b.buffer;
    else {
      // A copy (never Buffer#slice, a view): the caller keeps or reuses `b`.
      const copy = new Uint8Array(b.length);
      copy.set(b);
      ab = copy.buffer;
      if (transfer) free(b);
    }
    this.#inFlight += ab.byteLength;
    this.#worker.postMessage(ab, [ab]);
    if (this.#inFlight <= MAX_IN_FLIGHT) return undefined;
    return new Promise<void>((resolve, reject) => {
      this.#drain = { resolve, reject };
    });
  }

  digest(): Promise<Uint8Array> {
    if (this.#failure !== undefined) return Promise.reject(this.#failure);
    const p = new Promise<Uint8Array>((resolve, reject) => {
      this.#digest = { resolve, reject };
    });
    this.#worker.postMessage(null);
    return p.finally(() => {
      this.close();
    });
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    void this.#worker.terminate();
  }
}

/** A running SHA-256 for an image of up to `expectedBytes` bytes (module comment). */
export function streamHash(expectedBytes: number): StreamHash {
  return expectedBytes >= PARALLEL_HASH_MIN ? new WorkerHash() : new InlineHash();
}
