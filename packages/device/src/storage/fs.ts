/**
 * The file-system interface the device's persistent state goes through, and its node:fs implementation.
 *
 * The interface exposes exactly the operations whose durability matters, so a crash model can sit behind it
 * (storage/sim.ts): data written to a file is durable only after `fsync(file)`; a name created, replaced by
 * `rename` or removed is durable only after `fsyncDir(its directory)` (POSIX fsync(2); on Linux a new directory
 * entry needs an fsync of the directory, see fsync(2) NOTES). Paths are relative to the file system's root, with
 * `/` separators and no `.`/`..` segments.
 */
import { constants } from 'node:fs';
import { open, mkdir, readdir, readFile, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { join, resolve, sep } from 'node:path';
import { DeviceError } from '../errors.ts';

export interface StorageFs {
  /** The whole content of a file, or undefined when there is none. */
  read(path: string): Promise<Uint8Array | undefined>;
  /** Creates or truncates `path` and writes `data` (volatile until fsync). */
  write(path: string, data: Uint8Array): Promise<void>;
  /** Makes a file's content durable. */
  fsync(path: string): Promise<void>;
  /** Replaces `to` by `from` atomically (both in one directory); durable after fsyncDir. */
  rename(from: string, to: string): Promise<void>;
  /** Removes a file if present; durable after fsyncDir. */
  remove(path: string): Promise<void>;
  /** Creates a directory (and its parents) if absent; each new entry is durable after fsyncDir of its parent. */
  mkdir(path: string): Promise<void>;
  /** Makes the entries of a directory durable ('' is the root). */
  fsyncDir(path: string): Promise<void>;
  /** Names of the entries of a directory ([] when it does not exist). */
  list(path: string): Promise<string[]>;
  /** Optional: the length of a file, or undefined when there is none (without reading it). */
  size?(path: string): Promise<number | undefined>;
  /**
   * Optional: a buffer of `size` bytes suited to this file system's writes (nodeFs: page-aligned, so that large
   * writes can bypass the page cache). Give it back with `releaseBuffer` once no write from it is in flight.
   */
  allocBuffer?(size: number): Uint8Array;
  releaseBuffer?(buffer: Uint8Array): void;
}

/** Checks a relative path: non-empty segments of [A-Za-z0-9._-], no `.`/`..`. */
export function checkPath(path: string): string[] {
  if (path === '') return [];
  const parts = path.split('/');
  for (const p of parts) {
    if (!/^[A-Za-z0-9._-]{1,255}$/.test(p) || p === '.' || p === '..') {
      throw new DeviceError('STORAGE_NAME', `invalid path ${JSON.stringify(path)}`);
    }
  }
  return parts;
}

export function dirname(path: string): string {
  const i = path.lastIndexOf('/');
  return i < 0 ? '' : path.slice(0, i);
}

function io(e: unknown, what: string): DeviceError {
  return new DeviceError('STORAGE_IO', `${what}: ${e instanceof Error ? e.message : String(e)}`, {
    cause: e,
  });
}

function isNotFound(e: unknown): boolean {
  return typeof e === 'object' && e !== null && (e as { code?: unknown }).code === 'ENOENT';
}

// ---- direct I/O ---------------------------------------------------------------------------------------------
//
// Large image writes (flash.ts chunk files) go around the page cache with O_DIRECT (Linux open(2)): no copy into
// the page cache, no write-back by kernel threads, and the fsync that makes them durable then only has the
// metadata and the device cache to flush — buffered writes of a 256 MiB image cost a copy plus write-back CPU and
// the fsync waits for all of it. Durability semantics are unchanged: a direct write is still only durable after
// fsync (file size, block allocation, device write cache), so the StorageFs contract and the crash model hold.
// O_DIRECT needs the buffer address, the length and the file offset aligned to the logical block size (4096 covers
// 512- and 4096-byte devices). JavaScript cannot see an address, so aligned buffers are made where alignment is
// guaranteed: WebAssembly.Memory backing stores are page-allocated (64 KiB wasm pages at a page boundary). They
// cannot be detached, so they are pooled (bounded) instead of freed. A file system that refuses O_DIRECT (tmpfs:
// EINVAL) is written buffered from then on.

const DIRECT_ALIGN = 4096;
/** Below this, buffered writes are as cheap (and the chunk files of small images are small). */
const DIRECT_MIN = 64 * 1024;
const WASM_PAGE = 64 * 1024;
/** Pooled aligned buffers at most (bytes); more are left to the garbage collector. */
const POOL_MAX = 32 * 1024 * 1024;
const alignedBuffers = new WeakSet<ArrayBufferLike>();
const pool = new Map<number, Uint8Array[]>();
let pooled = 0;

/** A page-aligned buffer (pooled) when `size` suits direct I/O, else a plain one. */
export function allocDirectBuffer(size: number): Uint8Array {
  if (size < DIRECT_MIN || size % DIRECT_ALIGN !== 0) return new Uint8Array(size);
  const free = pool.get(size)?.pop();
  if (free !== undefined) {
    pooled -= size;
    return free;
  }
  let mem: WebAssembly.Memory;
  try {
    mem = new WebAssembly.Memory({
      initial: Math.ceil(size / WASM_PAGE),
      maximum: Math.ceil(size / WASM_PAGE),
    });
  } catch {
    // The engine's address-space budget for wasm memories is spent (many writers at once): a plain buffer,
    // written buffered.
    return new Uint8Array(size);
  }
  alignedBuffers.add(mem.buffer);
  return new Uint8Array(mem.buffer, 0, size);
}

/** Gives a buffer from allocDirectBuffer back (no write from it may be in flight); plain buffers are freed now. */
export function releaseDirectBuffer(b: Uint8Array): void {
  if (alignedBuffers.has(b.buffer)) {
    if (pooled + b.length > POOL_MAX || b.byteOffset !== 0) return;
    let list = pool.get(b.length);
    if (list === undefined) pool.set(b.length, (list = []));
    if (list.includes(b)) return;
    list.push(b);
    pooled += b.length;
    return;
  }
  const ab = b.buffer;
  if (ab instanceof ArrayBuffer && !ab.detached && b.byteOffset === 0 && b.byteLength === ab.byteLength)
    ab.transfer(0);
}

function isDirectCandidate(data: Uint8Array): boolean {
  return (
    data.length >= DIRECT_MIN &&
    data.length % DIRECT_ALIGN === 0 &&
    data.byteOffset % DIRECT_ALIGN === 0 &&
    alignedBuffers.has(data.buffer)
  );
}

function isInvalid(e: unknown): boolean {
  return typeof e === 'object' && e !== null && (e as { code?: unknown }).code === 'EINVAL';
}

async function writeAll(h: FileHandle, data: Uint8Array): Promise<void> {
  // One write(2) per call where the kernel takes it all (FileHandle.writeFile would split it into 512 KiB
  // writes, each a thread-pool round trip waiting for the busy event loop).
  for (let off = 0; off < data.length;) off += (await h.write(data, off, data.length - off)).bytesWritten;
}

/**
 * A StorageFs over a real directory. fsync and directory fsync are real (fs.FileHandle.sync on the file, and on
 * the directory opened read-only), so the atomic store above it is crash-safe on a POSIX file system.
 */
export function nodeFs(root: string): StorageFs {
  const base = resolve(root);
  const abs = (p: string): string => {
    checkPath(p);
    const a = p === '' ? base : join(base, ...p.split('/'));
    if (a !== base && !a.startsWith(base + sep))
      throw new DeviceError('STORAGE_NAME', `path escapes the root: ${p}`);
    return a;
  };
  const syncPath = async (p: string, flags: string): Promise<void> => {
    const h = await open(abs(p), flags);
    try {
      await h.sync();
    } finally {
      await h.close();
    }
  };
  // O_DIRECT as described above is Linux's (open(2)); elsewhere everything is written buffered.
  let direct = process.platform === 'linux';
  /** Writes through O_DIRECT; false when the file system refuses it (then buffered from now on). */
  const writeDirect = async (p: string, data: Uint8Array): Promise<boolean> => {
    let h: FileHandle;
    try {
      h = await open(
        abs(p),
        constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_DIRECT,
        0o600,
      );
    } catch (e) {
      if (!isInvalid(e)) throw e;
      direct = false;
      return false;
    }
    try {
      await writeAll(h, data);
      return true;
    } catch (e) {
      if (!isInvalid(e)) throw e;
      direct = false;
      return false;
    } finally {
      await h.close();
    }
  };
  return {
    allocBuffer: allocDirectBuffer,
    releaseBuffer: releaseDirectBuffer,
    async read(p) {
      try {
        return new Uint8Array(await readFile(abs(p)));
      } catch (e) {
        if (isNotFound(e)) return undefined;
        throw io(e, `read ${p}`);
      }
    },
    async write(p, data) {
      try {
        if (direct && isDirectCandidate(data) && (await writeDirect(p, data))) return;
        // 0o600: enclave state is readable by its owner only (in simulation, permissions stand in for isolation).
        const h = await open(abs(p), 'w', 0o600);
        try {
          await writeAll(h, data);
        } finally {
          await h.close();
        }
      } catch (e) {
        throw io(e, `write ${p}`);
      }
    },
    async fsync(p) {
      try {
        await syncPath(p, 'r+');
      } catch (e) {
        throw io(e, `fsync ${p}`);
      }
    },
    async rename(from, to) {
      try {
        await rename(abs(from), abs(to));
      } catch (e) {
        throw io(e, `rename ${from} → ${to}`);
      }
    },
    async remove(p) {
      try {
        await rm(abs(p), { force: true });
      } catch (e) {
        throw io(e, `remove ${p}`);
      }
    },
    async mkdir(p) {
      try {
        await mkdir(abs(p), { recursive: true, mode: 0o700 });
      } catch (e) {
        throw io(e, `mkdir ${p}`);
      }
    },
    async fsyncDir(p) {
      try {
        await syncPath(p, 'r');
      } catch (e) {
        throw io(e, `fsync dir ${p}`);
      }
    },
    async size(p) {
      try {
        const st = await stat(abs(p));
        if (!st.isFile()) throw new Error('not a file');
        return st.size;
      } catch (e) {
        if (isNotFound(e)) return undefined;
        throw io(e, `stat ${p}`);
      }
    },
    async list(p) {
      try {
        return await readdir(abs(p));
      } catch (e) {
        if (isNotFound(e)) return [];
        throw io(e, `list ${p}`);
      }
    },
  };
}
