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
 * Resume: `durablePrefix` counts the leading full chunks present, so an interrupted download restarts at the
 * first chunk that might be torn (SimulatedFs / POSIX: unsynced data is lost or torn at a power cut).
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
  /** fsync the component directory every this many chunks while writing (default 8); always at the end. */
  readonly dirSyncEvery?: number;
}

export class Flash {
  readonly fs: StorageFs;
  readonly root: string;
  readonly chunkSize: number;
  readonly dirSyncEvery: number;

  constructor(fs: StorageFs, root: string, opts: FlashOptions = {}) {
    this.fs = fs;
    this.root = root;
    this.chunkSize = opts.chunkSize ?? 1024 * 1024;
    this.dirSyncEvery = opts.dirSyncEvery ?? 8;
    if (!Number.isInteger(this.chunkSize) || this.chunkSize < 16 || this.chunkSize > 64 * 1024 * 1024)
      throw new DeviceError('STORAGE_NAME', `invalid chunk size ${this.chunkSize}`);
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
    let n = 0;
    for (const name of names) {
      if (name !== chunkName(n)) break;
      const data = await this.fs.read(`${this.dir(bank, component)}/${name}`);
      if (data?.length !== chunkSize) break;
      n++;
    }
    return n;
  }

  /** A writer that starts at chunk `startChunk` (earlier chunks are kept as they are). */
  async writer(
    bank: BankId,
    component: ComponentId,
    opts: { startChunk?: number; maxSize: number },
  ): Promise<ImageWriter> {
    const d = this.dir(bank, component);
    await this.fs.mkdir(d);
    await this.fs.fsyncDir(`${this.root}/${bank}`);
    const start = opts.startChunk ?? 0;
    // Chunks at and after the resume point are stale: remove them so that a shorter image leaves no tail.
    const stale = (await this.#chunks(bank, component)).filter((n) => Number(n) >= start);
    for (const n of stale) await this.fs.remove(`${d}/${n}`);
    if (stale.length > 0) await this.fs.fsyncDir(d);
    return new ImageWriter(this, d, start, opts.maxSize);
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
 * Appends to an image in constant memory: bytes gather in a chunk buffer; each full chunk is written and fsynced,
 * and the directory is fsynced every `dirSyncEvery` chunks and at finish(). Two buffers alternate, so the write +
 * fsync of one chunk overlaps decrypting and hashing the next (at most one chunk in flight; memory stays two
 * chunks). Refuses to grow beyond `maxSize` (IMAGE_TOO_LARGE) — checked before anything is buffered.
 */
export class ImageWriter {
  readonly #flash: Flash;
  readonly #dir: string;
  readonly #bufs: [Uint8Array, Uint8Array];
  #cur: 0 | 1 = 0;
  readonly #maxSize: number;
  #fill = 0;
  #index: number;
  #sinceSync = 0;
  #size: number;
  #inflight: Promise<void> | undefined;

  constructor(flash: Flash, dir: string, startChunk: number, maxSize: number) {
    this.#flash = flash;
    this.#dir = dir;
    this.#bufs = [new Uint8Array(flash.chunkSize), new Uint8Array(flash.chunkSize)];
    this.#index = startChunk;
    this.#size = startChunk * flash.chunkSize;
    this.#maxSize = maxSize;
  }

  /** Bytes accepted so far (including the kept prefix). */
  get size(): number {
    return this.#size;
  }

  async write(data: Uint8Array): Promise<void> {
    if (this.#size + data.length > this.#maxSize)
      throw new DeviceError('IMAGE_TOO_LARGE', `image exceeds its bound of ${this.#maxSize} bytes`);
    this.#size += data.length;
    let off = 0;
    while (off < data.length) {
      const buf = this.#bufs[this.#cur];
      const n = Math.min(data.length - off, buf.length - this.#fill);
      buf.set(data.subarray(off, off + n), this.#fill);
      this.#fill += n;
      off += n;
      if (this.#fill === buf.length) await this.#flush();
    }
  }

  /** Starts writing the current buffer (after the previous write finished) and switches buffers. */
  async #flush(): Promise<void> {
    if (this.#inflight !== undefined) await this.#inflight;
    const fs = this.#flash.fs;
    const path = `${this.#dir}/${chunkName(this.#index)}`;
    const data = this.#bufs[this.#cur].subarray(0, this.#fill);
    const syncDir = ++this.#sinceSync >= this.#flash.dirSyncEvery;
    if (syncDir) this.#sinceSync = 0;
    this.#index++;
    this.#fill = 0;
    this.#cur = this.#cur === 0 ? 1 : 0;
    const p = (async (): Promise<void> => {
      await fs.write(path, data);
      await fs.fsync(path);
      if (syncDir) await fs.fsyncDir(this.#dir);
    })();
    // Surface a failure at the next flush/finish; keep an unobserved rejection from crashing the process.
    p.catch(() => undefined);
    this.#inflight = p;
  }

  /** Writes the last (partial) chunk and makes every chunk durable. Returns the image size. */
  async finish(): Promise<number> {
    if (this.#fill > 0) await this.#flush();
    if (this.#inflight !== undefined) await this.#inflight;
    this.#inflight = undefined;
    await this.#flash.fs.fsyncDir(this.#dir);
    return this.#size;
  }
}
