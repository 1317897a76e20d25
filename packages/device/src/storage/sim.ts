/**
 * SimulatedFs: an in-memory StorageFs with an honest power-loss model and deterministic power-cut injection.
 *
 * It keeps two states. The volatile state is what reads see while the device runs. The durable state is what a
 * reboot finds:
 *  - a file's content becomes durable at `fsync(file)`; content written since is lost at a power cut, and the file
 *    then holds a torn prefix of what was written (or nothing), never silently the new data;
 *  - a directory's entries (names created by write/mkdir, moved by rename, deleted by remove) become durable at
 *    `fsyncDir(dir)`; until then a reboot finds the entries as of the last fsyncDir.
 * This is the contract POSIX gives (fsync(2)), without the luck real file systems add (ext4 data=ordered often
 * persists more): code that is correct here is correct on them.
 *
 * Power cuts: every mutating operation (write, fsync, rename, remove, mkdir, fsyncDir) has an index, counted from
 * 0 since construction or the last reboot. `cutPowerAt(n)` makes operation n throw DeviceError POWER_CUT without
 * taking effect; the device is then off: every further operation throws POWER_CUT too, so nothing after the cut can
 * reach storage. `reboot()` discards the volatile state and turns the device on again with the durable state.
 */
import { DeviceError } from '../errors.ts';
import { checkPath, type StorageFs } from './fs.ts';

interface FileNode {
  kind: 'file';
  data: Uint8Array;
  durable: Uint8Array | undefined;
  dirty: boolean;
}
interface DirNode {
  kind: 'dir';
  entries: Map<string, Node>;
  durableEntries: Map<string, Node>;
}
type Node = FileNode | DirNode;

export type FsOpKind = 'write' | 'fsync' | 'rename' | 'remove' | 'mkdir' | 'fsyncDir';

export interface FsOp {
  readonly index: number;
  readonly kind: FsOpKind;
  readonly path: string;
}

export interface SimulatedFsOptions {
  /** What a file written but not fsynced holds after a power cut: a torn prefix (default) or nothing. */
  readonly unsyncedData?: 'torn' | 'empty';
}

function newDir(): DirNode {
  return { kind: 'dir', entries: new Map(), durableEntries: new Map() };
}

export class SimulatedFs implements StorageFs {
  #root: DirNode = newDir();
  #ops = 0;
  #cutAt: number | undefined;
  #off = false;
  #log: FsOp[] = [];
  readonly #opts: SimulatedFsOptions;

  constructor(opts: SimulatedFsOptions = {}) {
    this.#opts = opts;
  }

  /** Mutating operations performed since construction or the last reboot. */
  get ops(): number {
    return this.#ops;
  }

  /** True after a power cut until reboot(). */
  get isOff(): boolean {
    return this.#off;
  }

  /** The mutating operations since the last reboot (for test diagnostics). */
  get log(): readonly FsOp[] {
    return this.#log;
  }

  /** Makes mutating operation `index` (counted like `ops`) fail with a power cut. */
  cutPowerAt(index: number): void {
    this.#cutAt = index;
  }

  /** Cuts the power now (between operations). */
  cutPower(): void {
    this.#off = true;
  }

  /** Power on again: the volatile state is rebuilt from the durable state. */
  reboot(): void {
    const seen = new Map<Node, Node>();
    const rebuild = (n: Node): Node => {
      const done = seen.get(n);
      if (done !== undefined) return done;
      let out: Node;
      if (n.kind === 'file') {
        let data = n.durable ?? new Uint8Array(0);
        if (n.dirty)
          data =
            this.#opts.unsyncedData === 'empty' ? new Uint8Array(0) : n.data.slice(0, n.data.length >> 1);
        out = { kind: 'file', data, durable: data, dirty: false };
      } else {
        const d = newDir();
        seen.set(n, d);
        for (const [name, child] of n.durableEntries) d.entries.set(name, rebuild(child));
        d.durableEntries = new Map(d.entries);
        out = d;
      }
      seen.set(n, out);
      return out;
    };
    this.#root = rebuild(this.#root) as DirNode;
    this.#off = false;
    this.#cutAt = undefined;
    this.#ops = 0;
    this.#log = [];
  }

  #check(): void {
    if (this.#off) throw new DeviceError('POWER_CUT', 'the device is off (power cut)');
  }

  #mutate(kind: FsOpKind, path: string): void {
    this.#check();
    const index = this.#ops++;
    if (this.#cutAt === index) {
      this.#off = true;
      throw new DeviceError('POWER_CUT', `power cut at operation ${index} (${kind} ${path})`);
    }
    this.#log.push({ index, kind, path });
  }

  #lookup(path: string): Node | undefined {
    let n: Node = this.#root;
    for (const p of checkPath(path)) {
      if (n.kind !== 'dir') return undefined;
      const next = n.entries.get(p);
      if (next === undefined) return undefined;
      n = next;
    }
    return n;
  }

  #parent(path: string): { dir: DirNode; name: string } {
    const parts = checkPath(path);
    const name = parts.pop();
    if (name === undefined) throw new DeviceError('STORAGE_NAME', 'the root has no parent');
    const dir = this.#lookup(parts.join('/'));
    if (dir?.kind !== 'dir') throw new DeviceError('STORAGE_IO', `no directory for ${path}`);
    return { dir, name };
  }

  #file(path: string): FileNode {
    const n = this.#lookup(path);
    if (n?.kind !== 'file') throw new DeviceError('STORAGE_IO', `no file ${path}`);
    return n;
  }

  read(path: string): Promise<Uint8Array | undefined> {
    return this.#run(() => {
      this.#check();
      const n = this.#lookup(path);
      if (n === undefined) return undefined;
      if (n.kind !== 'file') throw new DeviceError('STORAGE_IO', `${path} is a directory`);
      return n.data.slice();
    });
  }

  size(path: string): Promise<number | undefined> {
    return this.#run(() => {
      this.#check();
      const n = this.#lookup(path);
      if (n === undefined) return undefined;
      if (n.kind !== 'file') throw new DeviceError('STORAGE_IO', `${path} is a directory`);
      return n.data.length;
    });
  }

  write(path: string, data: Uint8Array): Promise<void> {
    return this.#run(() => {
      this.#mutate('write', path);
      const { dir, name } = this.#parent(path);
      const n = dir.entries.get(name);
      if (n?.kind === 'dir') throw new DeviceError('STORAGE_IO', `${path} is a directory`);
      if (n === undefined)
        dir.entries.set(name, { kind: 'file', data: data.slice(), durable: undefined, dirty: true });
      else {
        n.data = data.slice();
        n.dirty = true;
      }
    });
  }

  fsync(path: string): Promise<void> {
    return this.#run(() => {
      this.#mutate('fsync', path);
      const f = this.#file(path);
      f.durable = f.data;
      f.dirty = false;
    });
  }

  rename(from: string, to: string): Promise<void> {
    return this.#run(() => {
      this.#mutate('rename', `${from} -> ${to}`);
      const src = this.#parent(from);
      const dst = this.#parent(to);
      const n = src.dir.entries.get(src.name);
      if (n === undefined) throw new DeviceError('STORAGE_IO', `no file ${from}`);
      if (dst.dir.entries.get(dst.name)?.kind === 'dir')
        throw new DeviceError('STORAGE_IO', `${to} is a directory`);
      src.dir.entries.delete(src.name);
      dst.dir.entries.set(dst.name, n);
    });
  }

  remove(path: string): Promise<void> {
    return this.#run(() => {
      this.#mutate('remove', path);
      const { dir, name } = this.#parent(path);
      if (dir.entries.get(name)?.kind === 'dir')
        throw new DeviceError('STORAGE_IO', `${path} is a directory`);
      dir.entries.delete(name);
    });
  }

  mkdir(path: string): Promise<void> {
    return this.#run(() => {
      this.#mutate('mkdir', path);
      let n: DirNode = this.#root;
      for (const p of checkPath(path)) {
        let next = n.entries.get(p);
        if (next === undefined) {
          next = newDir();
          n.entries.set(p, next);
        }
        if (next.kind !== 'dir') throw new DeviceError('STORAGE_IO', `${p} is a file`);
        n = next;
      }
    });
  }

  fsyncDir(path: string): Promise<void> {
    return this.#run(() => {
      this.#mutate('fsyncDir', path);
      const d = this.#lookup(path);
      if (d?.kind !== 'dir') throw new DeviceError('STORAGE_IO', `no directory ${path}`);
      d.durableEntries = new Map(d.entries);
    });
  }

  list(path: string): Promise<string[]> {
    return this.#run(() => {
      this.#check();
      const d = this.#lookup(path);
      if (d === undefined) return [];
      if (d.kind !== 'dir') throw new DeviceError('STORAGE_IO', `${path} is a file`);
      return [...d.entries.keys()].sort();
    });
  }

  /** Runs synchronously but answers asynchronously, like a real file system (so callers interleave the same way). */
  #run<T>(f: () => T): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      setImmediate(() => {
        try {
          resolve(f());
        } catch (e) {
          reject(e instanceof Error ? e : new Error(String(e)));
        }
      });
    });
  }
}
