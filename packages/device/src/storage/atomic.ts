/**
 * AtomicStore: named blobs in one directory over a StorageFs, where every change is atomic under power loss, and
 * multi-blob transactions go through a redo journal.
 *
 * put(name, data): write `name.<n>.tmp`, fsync it, rename it over `name`, fsync the directory. A power cut at any
 * step leaves the old content or the new one under `name` (rename(2) is atomic; the tmp file is fsynced before it
 * can be renamed into place; the directory fsync makes the rename durable). Leftover tmp files are removed when
 * the store is opened.
 *
 * transact(changes): the set of puts and deletes is first written, with a SHA-256 of its content, as the journal
 * blob (itself put atomically): once the journal is durable the transaction is committed. Then the changes are
 * applied and the journal removed. open() finds a committed journal after a crash and applies it again (every
 * change is idempotent), so after any crash either none or all of a transaction's changes are visible.
 *
 * All mutations are serialized inside the store. The device agent reuses this for slots and non-volatile state.
 */
import { createHash } from 'node:crypto';
import { asArray, asBytes, asText, asUint, decode, encode } from '@rotor/cose';
import { DeviceError } from '../errors.ts';
import type { StorageFs } from './fs.ts';

const JOURNAL = '.journal';
const NAME = /^[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}$/;
const MAX_JOURNAL = 64 * 1024 * 1024;

export type Changes = ReadonlyMap<string, Uint8Array | null>;

function checkName(name: string): void {
  if (!NAME.test(name) || name.endsWith('.tmp')) {
    throw new DeviceError('STORAGE_NAME', `invalid blob name ${JSON.stringify(name)}`);
  }
}

function sha256(b: Uint8Array): Uint8Array {
  return new Uint8Array(createHash('sha256').update(b).digest());
}

function encodeJournal(changes: Changes): Uint8Array {
  const list = [...changes].map(([k, v]) => [k, v]);
  const body = encode(list);
  return encode([1, body, sha256(body)]);
}

function decodeJournal(bytes: Uint8Array): Map<string, Uint8Array | null> {
  try {
    const top = asArray(decode(bytes, { maxSize: MAX_JOURNAL }), 'journal', { min: 3, max: 3 });
    if (asUint(top[0], 'journal[0]') !== 1) throw new Error('unknown journal version');
    const body = asBytes(top[1], 'journal[1]');
    const digest = asBytes(top[2], 'journal[2]', { min: 32, max: 32 });
    if (Buffer.compare(sha256(body), digest) !== 0) throw new Error('journal digest mismatch');
    const out = new Map<string, Uint8Array | null>();
    for (const [i, e] of asArray(decode(body, { maxSize: MAX_JOURNAL }), 'changes').entries()) {
      const pair = asArray(e, `changes[${i}]`, { min: 2, max: 2 });
      const name = asText(pair[0], `changes[${i}][0]`);
      checkName(name);
      out.set(name, pair[1] === null ? null : asBytes(pair[1], `changes[${i}][1]`));
    }
    return out;
  } catch (e) {
    throw new DeviceError(
      'STORAGE_CORRUPT',
      `journal unreadable: ${e instanceof Error ? e.message : String(e)}`,
      {
        cause: e,
      },
    );
  }
}

export class AtomicStore {
  readonly #fs: StorageFs;
  readonly #dir: string;
  #tail: Promise<unknown> = Promise.resolve();
  #seq = 0;
  /** Changes of a committed transaction not yet applied (reads see them). */
  #pending: Changes | undefined;

  private constructor(fs: StorageFs, dir: string) {
    this.#fs = fs;
    this.#dir = dir;
  }

  /** Opens (creating if needed) the store in `dir` and recovers from any crash. */
  static async open(fs: StorageFs, dir: string): Promise<AtomicStore> {
    const s = new AtomicStore(fs, dir);
    await s.#recover();
    return s;
  }

  #path(name: string): string {
    return this.#dir === '' ? name : `${this.#dir}/${name}`;
  }

  async #recover(): Promise<void> {
    if (this.#dir !== '') {
      await this.#fs.mkdir(this.#dir);
      const parent = this.#dir.includes('/') ? this.#dir.slice(0, this.#dir.lastIndexOf('/')) : '';
      await this.#fs.fsyncDir(parent);
    }
    const names = await this.#fs.list(this.#dir);
    const tmps = names.filter((n) => n.endsWith('.tmp'));
    for (const t of tmps) await this.#fs.remove(this.#path(t));
    if (tmps.length > 0) await this.#fs.fsyncDir(this.#dir);
    const j = await this.#fs.read(this.#path(JOURNAL));
    if (j !== undefined) {
      // A journal on disk is complete (it was put atomically): the transaction committed. Redo it.
      await this.#apply(decodeJournal(j));
    }
  }

  #serial<T>(f: () => Promise<T>): Promise<T> {
    const run = this.#tail.then(f, f);
    this.#tail = run.catch(() => undefined);
    return run;
  }

  /** The content of `name`, or undefined. */
  async get(name: string): Promise<Uint8Array | undefined> {
    checkName(name);
    const p = this.#pending;
    if (p?.has(name) === true) return p.get(name) ?? undefined;
    return this.#fs.read(this.#path(name));
  }

  /** Names of the blobs. */
  async names(): Promise<string[]> {
    const names = (await this.#fs.list(this.#dir)).filter((n) => !n.startsWith('.') && !n.endsWith('.tmp'));
    const p = this.#pending;
    if (p === undefined) return names;
    const set = new Set(names);
    for (const [k, v] of p) {
      if (v === null) set.delete(k);
      else set.add(k);
    }
    return [...set].sort();
  }

  /** Replaces `name` atomically. */
  async put(name: string, data: Uint8Array): Promise<void> {
    checkName(name);
    return this.#serial(() => this.#put(name, data));
  }

  /** Removes `name` (durably). */
  async delete(name: string): Promise<void> {
    checkName(name);
    return this.#serial(async () => {
      await this.#fs.remove(this.#path(name));
      await this.#fs.fsyncDir(this.#dir);
    });
  }

  /**
   * Applies `changes` (name → new content, or null to delete) as one transaction. `onCommit` runs once the
   * transaction is durable and before it is applied: from then on a crash cannot undo it.
   */
  async transact(changes: Changes, onCommit?: () => void): Promise<void> {
    for (const k of changes.keys()) checkName(k);
    return this.#serial(async () => {
      // A previous transaction committed but failed to apply (an I/O error, not a crash): finish it first, or this
      // journal would replace the only record of it.
      const unfinished = this.#pending;
      if (unfinished !== undefined) await this.#apply(unfinished);
      await this.#put(JOURNAL, encodeJournal(changes));
      this.#pending = changes;
      onCommit?.();
      await this.#apply(changes);
    });
  }

  async #put(name: string, data: Uint8Array): Promise<void> {
    const tmp = this.#path(`${name}.${this.#seq++}.tmp`);
    await this.#fs.write(tmp, data);
    await this.#fs.fsync(tmp);
    await this.#fs.rename(tmp, this.#path(name));
    await this.#fs.fsyncDir(this.#dir);
  }

  async #apply(changes: Changes): Promise<void> {
    this.#pending = changes;
    // Every tmp is durable before any rename; one directory fsync makes all renames/removals durable.
    const renames: [string, string][] = [];
    for (const [name, data] of changes) {
      if (data === null) continue;
      const tmp = this.#path(`${name}.${this.#seq++}.tmp`);
      await this.#fs.write(tmp, data);
      await this.#fs.fsync(tmp);
      renames.push([tmp, this.#path(name)]);
    }
    for (const [tmp, dst] of renames) await this.#fs.rename(tmp, dst);
    for (const [name, data] of changes) if (data === null) await this.#fs.remove(this.#path(name));
    await this.#fs.fsyncDir(this.#dir);
    // The changes are durable; only now may the journal go.
    await this.#fs.remove(this.#path(JOURNAL));
    await this.#fs.fsyncDir(this.#dir);
    this.#pending = undefined;
  }
}
