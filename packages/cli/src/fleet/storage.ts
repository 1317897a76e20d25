/**
 * Per-device storage for the fleet simulator. Every device starts from the same factory state (identity record,
 * trust anchors, firmware v1 in bank A, recovery image in bank R, anti-rollback counters): it is provisioned once per
 * simulator through the real agent (`DeviceAgent.provision`: every image installed through the verified SUIT path)
 * on a recording file system, and the recorded operations (write, fsync, rename, remove, mkdir, fsyncDir — the whole
 * StorageFs contract, so durability is exactly what provisioning made durable) are replayed into each device's own
 * storage: a SimulatedFs (memory, power cuts) or a directory (node fs). Replay costs no cryptography, which keeps
 * 10,000 devices cheap to create; each device then boots through the verifying boot stage as usual.
 */
import {
  DeviceAgent,
  memorySource,
  SimulatedFs,
  type AnchorRecord,
  type IdentityRecord,
  type StorageFs,
} from '@rotor/device';

type Op =
  | { readonly k: 'write'; readonly path: string; readonly data: Uint8Array }
  | { readonly k: 'fsync' | 'remove' | 'mkdir' | 'fsyncDir'; readonly path: string }
  | { readonly k: 'rename'; readonly path: string; readonly to: string };

/** A StorageFs that records every mutating operation it forwards. */
class RecordingFs implements StorageFs {
  readonly ops: Op[] = [];
  readonly #fs: StorageFs;
  constructor(fs: StorageFs) {
    this.#fs = fs;
  }
  read(path: string): Promise<Uint8Array | undefined> {
    return this.#fs.read(path);
  }
  write(path: string, data: Uint8Array): Promise<void> {
    this.ops.push({ k: 'write', path, data: data.slice() });
    return this.#fs.write(path, data);
  }
  fsync(path: string): Promise<void> {
    this.ops.push({ k: 'fsync', path });
    return this.#fs.fsync(path);
  }
  rename(from: string, to: string): Promise<void> {
    this.ops.push({ k: 'rename', path: from, to });
    return this.#fs.rename(from, to);
  }
  remove(path: string): Promise<void> {
    this.ops.push({ k: 'remove', path });
    return this.#fs.remove(path);
  }
  mkdir(path: string): Promise<void> {
    this.ops.push({ k: 'mkdir', path });
    return this.#fs.mkdir(path);
  }
  fsyncDir(path: string): Promise<void> {
    this.ops.push({ k: 'fsyncDir', path });
    return this.#fs.fsyncDir(path);
  }
  list(path: string): Promise<string[]> {
    return this.#fs.list(path);
  }
}

function apply(fs: StorageFs, op: Op): Promise<void> {
  switch (op.k) {
    case 'write':
      return fs.write(op.path, op.data);
    case 'rename':
      return fs.rename(op.path, op.to);
    case 'fsync':
      return fs.fsync(op.path);
    case 'remove':
      return fs.remove(op.path);
    case 'mkdir':
      return fs.mkdir(op.path);
    case 'fsyncDir':
      return fs.fsyncDir(op.path);
  }
}

export interface FactoryInput {
  readonly identity: IdentityRecord;
  readonly anchors: readonly AnchorRecord[];
  readonly firmware: Uint8Array;
  readonly recovery: Uint8Array;
  /** Payloads of the two envelopes by URI (provisioning fetches them from memory). */
  readonly payloads: ReadonlyMap<string, Uint8Array>;
  readonly chunkSize: number;
}

/** The factory state of every simulated device, recorded once. */
export class FactoryImage {
  readonly #ops: readonly Op[];
  private constructor(ops: readonly Op[]) {
    this.#ops = ops;
  }

  static async record(input: FactoryInput): Promise<FactoryImage> {
    const rec = new RecordingFs(new SimulatedFs());
    const agent = new DeviceAgent({ fs: rec, chunkSize: input.chunkSize });
    agent.fetchPolicy = { source: memorySource(new Map(input.payloads)) };
    await agent.provision({
      identity: input.identity,
      anchors: input.anchors,
      firmware: input.firmware,
      recovery: input.recovery,
    });
    return new FactoryImage(rec.ops);
  }

  /** Bytes written by provisioning (an estimate of a device's storage). */
  get bytes(): number {
    return this.#ops.reduce((a, o) => a + (o.k === 'write' ? o.data.length : 0), 0);
  }

  /**
   * Writes the factory state into `fs`. A SimulatedFs runs its operations in order on the event loop, so they are
   * issued at once; other file systems get them one after another.
   */
  async install(fs: StorageFs): Promise<void> {
    if (fs instanceof SimulatedFs) {
      await Promise.all(this.#ops.map((o) => apply(fs, o)));
      return;
    }
    for (const o of this.#ops) await apply(fs, o);
  }
}
