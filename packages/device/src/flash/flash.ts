/**
 * Simulated flash: image areas (slots) made of fixed-size chunk files over a StorageFs, written and read in
 * constant memory.
 *
 * Layout under `<root>/`: one directory per slot (`a`, `b` = the A/B banks, `r` = the recovery image, `s` =
 * staging for components that are not firmware slots), one sub-directory per component, and in it chunk files
 * `00000000`, `00000001`, … of `chunkSize` bytes (the last one may be shorter). A chunk is durable once written and
 * fsynced; its directory entry once the component directory is fsynced. Whether an image is *valid* is never
 * decided here: the non-volatile state (nvstate.ts) commits an image record (size, SHA-256, chunk size)
 * atomically, and the boot stage re-hashes the chunks against it and against the manifest on every boot
 * (RFC 9019 §4.1: the bootloader verifies before it invokes).
 *
 * Durability and resume — checkpoints. Chunk files are written without an fsync each; every `checkpointEvery`
 * chunks the writer fsyncs the chunks of that stretch and the component directory, in the background while the
 * next chunks are decrypted and written, and only then reports the checkpoint (the caller persists it in the
 * download record). The resume point is the last reported checkpoint, cross-checked with `durablePrefix` (the
 * leading full-length chunks present): it never advances past data that is known durable — a chunk that merely
 * *looks* complete after a crash (POSIX: unsynced data may be lost, torn or, on some file systems, full-length
 * garbage) is never trusted. Trade-off: a power cut re-downloads at most two stretches of `checkpointEvery`
 * chunks (the one being made durable and the one being written) plus the chunks in flight; fewer, batched
 * barriers keep fsync latency off the data path (payload bench), and the extra non-volatile write per checkpoint
 * (one atomic record put) is amortised over the stretch.
 */
import { createHash } from 'node:crypto';
import type { ComponentId } from '@rotor/suit';
import { DeviceError } from '../errors.ts';
import type { StorageFs } from '../storage/fs.ts';

export type BankId = 'a' | 'b' | 'r' | 's';
export const BANKS: readonly BankId[] = ['a', 'b', 'r', 's'];

export function isBankId(s: unknown): s is BankId {
  return s === 'a' || s === 'b' || s === 'r' || s === 's';
}

/** The other A/B bank. */
export function otherBank(b: 'a' | 'b'): 'a' | 'b' {
  return b === 'a' ? 'b' : 'a';
}

/** A printable, collision-free key for a component identifier (same form as @rotor/suit's componentKey). */
export function componentKey(c: ComponentId): string {
  return `[${c.map((b) => Buffer.from(b).toString('hex')).join('/')}]`;
}

/** A stable, bounded directory/record name for a component identifier (SHA-256 of its parts, 96 bits). */
export function componentTag(c: ComponentId): string {
  const h = createHash('sha256');
  for (const p of c) {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(p.length);
    h.update(len).update(p);
  }
  return `c${h.digest('hex').slice(0, 24)}`;
}

const CHUNK_NAME = /^[0-9]{8}$/;
const chunkName = (i: number): string => String(i).padStart(8, '0');

export interface FlashOptions {
  /** Bytes per chunk file (default 1 MiB). */
  readonly chunkSize?: number;
  /**
   * Chunks per durability checkpoint while writing (default 8): their files and the directory are fsynced
   * together, then the checkpoint is reported (the resume point). Always everything at the end.
   */
  readonly checkpointEvery?: number;
}

/** Chunk buffers of a writer: one filling, up to two being written (their writes overlap decrypt + hash). */
const WRITE_BUFFERS = 3;

export class Flash {
  readonly fs: StorageFs;
  readonly root: string;
  readonly chunkSize: number;
  readonly checkpointEvery: number;

  constructor(fs: StorageFs, root: string, opts: FlashOptions = {}) {
    this.fs = fs;
    this.root = root;
    this.chunkSize = opts.chunkSize ?? 1024 * 1024;
    this.checkpointEvery = opts.checkpointEvery ?? 8;
    if (!Number.isInteger(this.chunkSize) || this.chunkSize < 16 || this.chunkSize > 64 * 1024 * 1024)
      throw new DeviceError('STORAGE_NAME', `invalid chunk size ${this.chunkSize}`);
    if (!Number.isInteger(this.checkpointEvery) || this.checkpointEvery < 1 || this.checkpointEvery > 4096)
      throw new DeviceError('STORAGE_NAME', `invalid checkpoint interval ${this.checkpointEvery}`);
  }

  dir(bank: BankId, component: ComponentId): string {
    return `${this.root}/${bank}/${componentTag(component)}`;
  }

  /** Creates the directory tree durably (idempotent). */
  async format(): Promise<void> {
    await this.fs.mkdir(this.root);
    for (const b of BANKS) await this.fs.mkdir(`${this.root}/${b}`);
    for (const b of BANKS) await this.fs.fsyncDir(`${this.root}/${b}`);
    await this.fs.fsyncDir(this.root);
    const parent = this.root.includes('/') ? this.root.slice(0, this.root.lastIndexOf('/')) : '';
    await this.fs.fsyncDir(parent);
  }

  async #chunks(bank: BankId, component: ComponentId): Promise<string[]> {
    return (await this.fs.list(this.dir(bank, component))).filter((n) => CHUNK_NAME.test(n)).sort();
  }

  /** Removes every chunk of a component image in a bank, durably. */
  async erase(bank: BankId, component: ComponentId): Promise<void> {
    const d = this.dir(bank, component);
    const names = await this.fs.list(d);
    if (names.length === 0) return;
    for (const n of names) await this.fs.remove(`${d}/${n}`);
    await this.fs.fsyncDir(d);
  }

  /** Removes every component image of a bank, durably. */
  async eraseBank(bank: BankId): Promise<void> {
    const base = `${this.root}/${bank}`;
    for (const c of await this.fs.list(base)) {
      const d = `${base}/${c}`;
      const names = await this.fs.list(d);
      for (const n of names) await this.fs.remove(`${d}/${n}`);
      if (names.length > 0) await this.fs.fsyncDir(d);
    }
  }

  /**
   * Number of leading chunks present with exactly `chunkSize` bytes (a resume point). Anything after a gap or a
   * short chunk is not counted.
   */
  async durablePrefix(bank: BankId, component: ComponentId, chunkSize: number): Promise<number> {
    const names = await this.#chunks(bank, component);
    const fs = this.fs;
    let n = 0;
    for (const name of names) {
      if (name !== chunkName(n)) break;
      // The length only: a resume of a large image must not read all of it twice (it is re-hashed anyway).
      const path = `${this.dir(bank, component)}/${name}`;
      const length = fs.size === undefined ? (await fs.read(path))?.length : await fs.size(path);
      if (length !== chunkSize) break;
      n++;
    }
    return n;
  }

  /**
   * A writer that starts at chunk `startChunk` (earlier chunks are kept as they are). `onCheckpoint(n)` runs
   * once chunks 0..n-1 are durable (see the module comment); it is awaited before the next checkpoint starts.
   */
  async writer(
    bank: BankId,
    component: ComponentId,
    opts: { startChunk?: number; maxSize: number; onCheckpoint?: (chunks: number) => Promise<void> },
  ): Promise<ImageWriter> {
    const d = this.dir(bank, component);
    await this.fs.mkdir(d);
    await this.fs.fsyncDir(`${this.root}/${bank}`);
    const start = opts.startChunk ?? 0;
    // Chunks at and after the resume point are stale: remove them so that a shorter image leaves no tail.
    const stale = (await this.#chunks(bank, component)).filter((n) => Number(n) >= start);
    for (const n of stale) await this.fs.remove(`${d}/${n}`);
    if (stale.length > 0) await this.fs.fsyncDir(d);
    return new ImageWriter(this, d, start, opts.maxSize, opts.onCheckpoint);
  }

  /**
   * Streams the image (exactly `size` bytes) chunk by chunk. Throws STORAGE_CORRUPT when a chunk is missing or
   * has the wrong length.
   */
  async *read(
    bank: BankId,
    component: ComponentId,
    size: number,
    chunkSize: number,
    from = 0,
  ): AsyncGenerator<Uint8Array> {
    const d = this.dir(bank, component);
    const count = Math.ceil(size / chunkSize);
    for (let i = from; i < count; i++) {
      const want = i === count - 1 ? size - i * chunkSize : chunkSize;
      const data = await this.fs.read(`${d}/${chunkName(i)}`);
      if (data?.length !== want) {
        throw new DeviceError(
          'STORAGE_CORRUPT',
          `image chunk ${i} of ${d} is ${data === undefined ? 'missing' : `${data.length} bytes, not ${want}`}`,
        );
      }
      yield data;
    }
  }

  /** SHA-256 of a stored image, streamed; undefined when the image is absent or damaged. */
  async sha256(
    bank: BankId,
    component: ComponentId,
    size: number,
    chunkSize: number,
  ): Promise<Uint8Array | undefined> {
    const h = createHash('sha256');
    try {
      for await (const c of this.read(bank, component, size, chunkSize)) h.update(c);
    } catch (e) {
      if (e instanceof DeviceError && e.code === 'STORAGE_CORRUPT') return undefined;
      throw e;
    }
    return new Uint8Array(h.digest());
  }

  /** The whole image in memory (only for small images: dependency envelopes, tests). */
  async readAll(bank: BankId, component: ComponentId, size: number, chunkSize: number): Promise<Uint8Array> {
    const out = new Uint8Array(size);
    let off = 0;
    for await (const c of this.read(bank, component, size, chunkSize)) {
      out.set(c, off);
      off += c.length;
    }
    return out;
  }
}

/**
 * Appends to an image in constant memory: bytes gather in a chunk buffer; each full chunk is written (no fsync)
 * while the next fills — up to two writes in flight, three buffers in all, whatever the garbage collector does — and every `checkpointEvery` chunks a
 * checkpoint fsyncs that stretch and the directory in the background (one checkpoint in flight at a time) and
 * then reports it. finish() makes everything durable. Refuses to grow beyond `maxSize` (IMAGE_TOO_LARGE) —
 * checked before anything is buffered. A background failure (I/O, power cut) surfaces at the next write/finish.
 */
export class ImageWriter {
  readonly #flash: Flash;
  readonly #dir: string;
  readonly #bufs: Uint8Array[];
  /** The write in flight from each buffer, until it settles (a buffer is refilled only after its write completed). */
  readonly #busy: (Promise<void> | undefined)[];
  #cur = 0;
  readonly #maxSize: number;
  #fill = 0;
  #index: number;
  #size: number;
  /** Chunks written since the last checkpoint began. */
  #unsynced: { path: string; written: Promise<void> }[] = [];
  #checkpoint: Promise<void> = Promise.resolve();
  /** The checkpoint in flight, until it settles. */
  #checkpointBusy: Promise<void> | undefined;
  /** A put() that is still copying (waiting for a buffer): the next one must wait for it. */
  #pending: Promise<void> | undefined;
  readonly #onCheckpoint: ((chunks: number) => Promise<void>) | undefined;
  #closed = false;

  constructor(
    flash: Flash,
    dir: string,
    startChunk: number,
    maxSize: number,
    onCheckpoint?: (chunks: number) => Promise<void>,
  ) {
    this.#flash = flash;
    this.#dir = dir;
    // From the file system when it has buffers suited to its writes (nodeFs: aligned for direct I/O, pooled).
    const fs = flash.fs;
    this.#bufs = Array.from({ length: WRITE_BUFFERS }, () =>
      fs.allocBuffer === undefined ? new Uint8Array(flash.chunkSize) : fs.allocBuffer(flash.chunkSize),
    );
    this.#busy = this.#bufs.map(() => undefined);
    this.#index = startChunk;
    this.#size = startChunk * flash.chunkSize;
    this.#maxSize = maxSize;
    this.#onCheckpoint = onCheckpoint;
  }

  /** Bytes accepted so far (including the kept prefix). */
  get size(): number {
    return this.#size;
  }

  async write(data: Uint8Array): Promise<void> {
    await this.put(data);
  }

  /**
   * Like write(), without an await when none is needed: copies `data` into the chunk buffers and returns
   * undefined when all of it was taken; otherwise (a buffer is still being written, or the previous checkpoint
   * is still running) returns a promise that settles once the rest is copied — the caller must keep `data`
   * untouched and wait for it before the next put. This keeps the streaming path free of per-piece promises
   * while memory stays bounded by the writer's buffers.
   */
  put(data: Uint8Array): Promise<void> | undefined {
    if (this.#closed) throw new DeviceError('STORAGE_IO', 'image writer is closed');
    if (this.#pending !== undefined) throw new DeviceError('STORAGE_IO', 'image writer: put while busy');
    if (this.#size + data.length > this.#maxSize)
      throw new DeviceError('IMAGE_TOO_LARGE', `image exceeds its bound of ${this.#maxSize} bytes`);
    this.#size += data.length;
    const p = this.#copy(data, 0);
    if (p === undefined) return undefined;
    const done = p.finally(() => {
      this.#pending = undefined;
    });
    this.#pending = done;
    return done;
  }

  #copy(data: Uint8Array, from: number): Promise<void> | undefined {
    let off = from;
    while (off < data.length) {
      const buf = this.#bufs[this.#cur]!;
      const n = Math.min(data.length - off, buf.length - this.#fill);
      buf.set(n === data.length ? data : data.subarray(off, off + n), this.#fill);
      this.#fill += n;
      off += n;
      if (this.#fill === buf.length) {
        const wait = this.#flush();
        if (wait !== undefined) {
          const at = off;
          return wait.then(() => this.#copy(data, at));
        }
      }
    }
    return undefined;
  }

  /**
   * Starts writing the current buffer and moves to the next one. Returns a promise when the caller must wait
   * (the next buffer's write or the previous checkpoint still in flight), undefined when it may go on at once.
   */
  #flush(): Promise<void> | undefined {
    const fs = this.#flash.fs;
    const path = `${this.#dir}/${chunkName(this.#index)}`;
    const slot = this.#cur;
    const written = fs.write(path, this.#bufs[slot]!.subarray(0, this.#fill));
    // Observed below (buffer reuse, checkpoint, finish); keep an early rejection from being "unhandled".
    written.catch(() => undefined);
    this.#busy[slot] = written;
    // A settled write frees its buffer without an await; a failed one stays, so that the next use surfaces it.
    written.then(
      () => {
        if (this.#busy[slot] === written) this.#busy[slot] = undefined;
      },
      () => undefined,
    );
    this.#unsynced.push({ path, written });
    this.#index++;
    this.#fill = 0;
    this.#cur = (this.#cur + 1) % this.#bufs.length;
    const next = this.#busy[this.#cur];
    const cp = this.#unsynced.length >= this.#flash.checkpointEvery;
    if (next === undefined && !cp) return undefined;
    if (next === undefined && this.#checkpointBusy === undefined) {
      this.#startCheckpoint();
      return undefined;
    }
    return (async (): Promise<void> => {
      if (next !== undefined) {
        this.#busy[this.#cur] = undefined;
        await next;
      }
      if (cp) {
        await this.#checkpoint;
        this.#startCheckpoint();
      }
    })();
  }

  /** Durability of the chunks written so far, in the background (the previous checkpoint has finished). */
  #startCheckpoint(): void {
    const batch = this.#unsynced;
    this.#unsynced = [];
    const upTo = this.#index;
    const fs = this.#flash.fs;
    const p = (async (): Promise<void> => {
      for (const c of batch) await c.written;
      for (const c of batch) await fs.fsync(c.path);
      await fs.fsyncDir(this.#dir);
      // Chunks 0..upTo-1 are durable (earlier ones by the previous checkpoints or the kept prefix).
      if (!this.#closed) await this.#onCheckpoint?.(upTo);
    })();
    p.catch(() => undefined);
    this.#checkpoint = p;
    this.#checkpointBusy = p;
    p.then(
      () => {
        if (this.#checkpointBusy === p) this.#checkpointBusy = undefined;
      },
      () => undefined,
    );
  }

  /** Writes the last (partial) chunk and makes every chunk durable. Returns the image size. */
  async finish(): Promise<number> {
    await this.#pending;
    if (this.#fill > 0) await this.#flush();
    for (let i = 0; i < this.#busy.length; i++) {
      const b = this.#busy[i];
      this.#busy[i] = undefined;
      await b;
    }
    await this.#checkpoint;
    const fs = this.#flash.fs;
    for (const c of this.#unsynced) await fs.fsync(c.path);
    this.#unsynced = [];
    await fs.fsyncDir(this.#dir);
    this.#closed = true;
    this.#freeBuffers();
    return this.#size;
  }

  /**
   * The chunk buffers go now (no write from them is in flight any more), not at the next major GC: back to the
   * file system's pool, or freed.
   */
  #freeBuffers(): void {
    const fs = this.#flash.fs;
    for (const b of this.#bufs.splice(0)) {
      if (fs.releaseBuffer !== undefined) fs.releaseBuffer(b);
      else if (b.buffer instanceof ArrayBuffer && !b.buffer.detached) b.buffer.transfer(0);
    }
  }

  /**
   * Abandons the writer: no further checkpoint is reported; waits for the writes and the checkpoint in flight
   * (their failures are ignored: nothing after the last reported checkpoint is trusted anyway).
   */
  async close(): Promise<void> {
    this.#closed = true;
    await Promise.allSettled([this.#pending, ...this.#busy, this.#checkpoint]);
    this.#freeBuffers();
  }
}
