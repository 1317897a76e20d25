/**
 * The file-system interface the device's persistent state goes through, and its node:fs implementation.
 *
 * The interface exposes exactly the operations whose durability matters, so a crash model can sit behind it
 * (storage/sim.ts): data written to a file is durable only after `fsync(file)`; a name created, replaced by
 * `rename` or removed is durable only after `fsyncDir(its directory)` (POSIX fsync(2); on Linux a new directory
 * entry needs an fsync of the directory, see fsync(2) NOTES). Paths are relative to the file system's root, with
 * `/` separators and no `.`/`..` segments.
 */
import { open, mkdir, readdir, readFile, rename, rm } from 'node:fs/promises';
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
  return {
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
        // 0o600: enclave state is readable by its owner only (in simulation, permissions stand in for isolation).
        const h = await open(abs(p), 'w', 0o600);
        try {
          // One write(2) per call where the kernel takes it all (FileHandle.writeFile would split it into 512 KiB
          // writes, each a thread-pool round trip waiting for the busy event loop).
          for (let off = 0; off < data.length;)
            off += (await h.write(data, off, data.length - off)).bytesWritten;
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
