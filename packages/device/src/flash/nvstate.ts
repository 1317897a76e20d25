/**
 * The device's non-volatile state: boot state, anti-rollback counters, trust anchors, identity, bank (slot)
 * records, the update in progress and download progress — each a small CBOR record in one AtomicStore, so every
 * change is atomic and multi-record changes (install commit, confirm, revert) are one journalled transaction.
 *
 * Every record is strictly decoded (sizes bounded, shapes checked); a record that does not decode is
 * RECORD_INVALID. Anti-rollback counters only move up: `raiseCounters` never lowers a value (RFC 9124
 * REQ.SEC.SEQUENCE; draft-ietf-suit-manifest-34 §8.4.2).
 */
import { asArray, asBytes, asInt, asText, asUint, asUint64, decode, encode } from '@rotor/cose';
import type { ComponentId } from '@rotor/suit';
import { DeviceError } from '../errors.ts';
import { AtomicStore } from '../storage/atomic.ts';
import type { StorageFs } from '../storage/fs.ts';
import { componentKey, componentTag, type BankId } from './flash.ts';

const MAX_RECORD = 4 * 1024 * 1024;
/** Largest envelope the device stores or accepts (bounded input). */
export const MAX_ENVELOPE = 1024 * 1024;

export interface ImageRecord {
  readonly component: ComponentId;
  readonly size: number;
  readonly sha256: Uint8Array;
  readonly chunkSize: number;
}

/** What a bank (A, B or recovery) holds: the envelope that installed it and its component images. */
export interface BankRecord {
  readonly envelope: Uint8Array;
  readonly sequence: bigint;
  /** The anti-rollback key of the manifest (manifest-component-id, else the device's default key). */
  readonly rollbackKey: ComponentId;
  readonly images: readonly ImageRecord[];
  /**
   * Dependency envelopes the manifest processed (TD §5: the author's envelope under an operator's dependent), by
   * dependency component, kept so that the boot stage authenticates the same chain on every boot.
   */
  readonly dependencies?: readonly { readonly component: ComponentId; readonly envelope: Uint8Array }[];
}

export interface TrialState {
  readonly bank: 'a' | 'b';
  /** Boots left before the trial counts as failed (decremented, durably, before each trial boot). */
  readonly attemptsLeft: number;
}

export type BootEvent = 'confirmed' | 'rolled-back' | 'recovery' | 'none';

export interface BootState {
  readonly active: 'a' | 'b';
  readonly trial: TrialState | undefined;
  /** The last boot-stage event not yet reported by the agent. */
  readonly event: BootEvent;
  readonly bootCount: number;
}

export interface AnchorRecord {
  readonly name: string;
  readonly role: string;
  /** COSE_Key (public) bytes. */
  readonly key: Uint8Array;
  readonly alg: number;
  /** Component prefixes this key may authorise (undefined = all; MF §9). */
  readonly prefixes: readonly ComponentId[] | undefined;
}

export interface IdentityRecord {
  readonly vendorId: Uint8Array;
  readonly classId: Uint8Array;
  readonly deviceId: Uint8Array;
  /** Firmware components (each has an A and a B slot). */
  readonly components: readonly ComponentId[];
  /** Largest image per component, in bytes (the slot size). */
  readonly maxImageSize: number;
  /** Roles whose signatures an update needs (RFC 9019 §4: author, operator). */
  readonly requiredRoles: readonly string[];
}

export interface UpdateRecord {
  readonly envelope: Uint8Array;
  readonly bank: 'a' | 'b';
}

export interface DownloadRecord {
  readonly uri: string;
  readonly etag: string | undefined;
  readonly chunkSize: number;
  /** Digest of the manifest the download belongs to (a different manifest never resumes it). */
  readonly manifestDigest: Uint8Array;
  /** Whether the stored bytes are plaintext of a decrypted stream (so resume must re-derive cipher state). */
  readonly decrypted: boolean;
  /** Leading chunks known durable (the last checkpoint, flash.ts): a resume never starts beyond them. */
  readonly durableChunks: number;
}

function invalid(what: string, e: unknown): DeviceError {
  return new DeviceError('RECORD_INVALID', `${what}: ${e instanceof Error ? e.message : String(e)}`, {
    cause: e,
  });
}

function decodeRecord<T>(what: string, bytes: Uint8Array, f: (v: unknown) => T): T {
  try {
    return f(decode(bytes, { maxSize: MAX_RECORD }));
  } catch (e) {
    throw invalid(what, e);
  }
}

function asComponent(v: unknown, path: string): ComponentId {
  return asArray(v, path, { max: 16 }).map((p, i) => asBytes(p, `${path}[${i}]`, { max: 64 }));
}

function asBankAB(v: unknown, path: string): 'a' | 'b' {
  const s = asText(v, path, { max: 1 });
  if (s !== 'a' && s !== 'b') throw new Error(`${path}: not a bank`);
  return s;
}

// ---- codecs -------------------------------------------------------------------------------------------

export function encodeBank(r: BankRecord): Uint8Array {
  return encode([
    1,
    r.envelope,
    r.sequence,
    [...r.rollbackKey],
    r.images.map((i) => [[...i.component], i.size, i.sha256, i.chunkSize]),
    ...(r.dependencies === undefined || r.dependencies.length === 0
      ? []
      : [r.dependencies.map((d) => [[...d.component], d.envelope])]),
  ]);
}

export function decodeBank(bytes: Uint8Array): BankRecord {
  return decodeRecord('bank record', bytes, (v) => {
    const a = asArray(v, 'bank', { min: 5, max: 6 });
    if (asUint(a[0], 'bank[0]') !== 1) throw new Error('unknown version');
    return {
      envelope: asBytes(a[1], 'bank[1]', { max: MAX_ENVELOPE }),
      sequence: asUint64(a[2], 'bank[2]'),
      rollbackKey: asComponent(a[3], 'bank[3]'),
      images: asArray(a[4], 'bank[4]', { max: 64 }).map((x, i) => decodeImageValue(x, `bank[4][${i}]`)),
      ...(a.length === 6
        ? {
            dependencies: asArray(a[5], 'bank[5]', { max: 4 }).map((x, i) => {
              const e = asArray(x, `bank[5][${i}]`, { min: 2, max: 2 });
              return {
                component: asComponent(e[0], `bank[5][${i}][0]`),
                envelope: asBytes(e[1], `bank[5][${i}][1]`, { max: MAX_ENVELOPE }),
              };
            }),
          }
        : {}),
    };
  });
}

function decodeImageValue(v: unknown, path: string): ImageRecord {
  const e = asArray(v, path, { min: 4, max: 4 });
  return {
    component: asComponent(e[0], `${path}[0]`),
    size: asUint(e[1], `${path}[1]`),
    sha256: asBytes(e[2], `${path}[2]`, { min: 32, max: 32 }),
    chunkSize: asUint(e[3], `${path}[3]`),
  };
}

export function encodeImage(i: ImageRecord): Uint8Array {
  return encode([[...i.component], i.size, i.sha256, i.chunkSize]);
}

export function decodeImage(bytes: Uint8Array): ImageRecord {
  return decodeRecord('image record', bytes, (v) => decodeImageValue(v, 'image'));
}

export function encodeBoot(s: BootState): Uint8Array {
  return encode([
    1,
    s.active,
    s.trial === undefined ? null : [s.trial.bank, s.trial.attemptsLeft],
    s.event,
    s.bootCount,
  ]);
}

export function decodeBoot(bytes: Uint8Array): BootState {
  return decodeRecord('boot state', bytes, (v) => {
    const a = asArray(v, 'boot', { min: 5, max: 5 });
    if (asUint(a[0], 'boot[0]') !== 1) throw new Error('unknown version');
    let trial: TrialState | undefined;
    if (a[2] !== null) {
      const t = asArray(a[2], 'boot[2]', { min: 2, max: 2 });
      trial = { bank: asBankAB(t[0], 'boot[2][0]'), attemptsLeft: asUint(t[1], 'boot[2][1]') };
    }
    const event = asText(a[3], 'boot[3]', { max: 16 });
    if (!['confirmed', 'rolled-back', 'recovery', 'none'].includes(event)) throw new Error('bad event');
    return {
      active: asBankAB(a[1], 'boot[1]'),
      trial,
      event: event as BootEvent,
      bootCount: asUint(a[4], 'boot[4]'),
    };
  });
}

export function encodeCounters(c: ReadonlyMap<string, bigint>): Uint8Array {
  return encode([...c].sort(([x], [y]) => (x < y ? -1 : x > y ? 1 : 0)).map(([k, v]) => [k, v]));
}

export function decodeCounters(bytes: Uint8Array): Map<string, bigint> {
  return decodeRecord('anti-rollback counters', bytes, (v) => {
    const out = new Map<string, bigint>();
    for (const [i, e] of asArray(v, 'counters', { max: 1024 }).entries()) {
      const p = asArray(e, `counters[${i}]`, { min: 2, max: 2 });
      out.set(asText(p[0], `counters[${i}][0]`, { max: 2048 }), asUint64(p[1], `counters[${i}][1]`));
    }
    return out;
  });
}

export function encodeAnchors(a: readonly AnchorRecord[]): Uint8Array {
  return encode(
    a.map((x) => [
      x.name,
      x.role,
      x.key,
      x.alg,
      x.prefixes === undefined ? null : x.prefixes.map((p) => [...p]),
    ]),
  );
}

export function decodeAnchors(bytes: Uint8Array): AnchorRecord[] {
  return decodeRecord('trust anchors', bytes, (v) =>
    asArray(v, 'anchors', { max: 64 }).map((e, i) => {
      const p = `anchors[${i}]`;
      const a = asArray(e, p, { min: 5, max: 5 });
      return {
        name: asText(a[0], `${p}[0]`, { max: 256 }),
        role: asText(a[1], `${p}[1]`, { max: 64 }),
        key: asBytes(a[2], `${p}[2]`, { max: 1024 }),
        alg: asInt(a[3], `${p}[3]`),
        prefixes:
          a[4] === null
            ? undefined
            : asArray(a[4], `${p}[4]`, { max: 64 }).map((c, j) => asComponent(c, `${p}[4][${j}]`)),
      };
    }),
  );
}

export function encodeIdentity(r: IdentityRecord): Uint8Array {
  return encode([
    1,
    r.vendorId,
    r.classId,
    r.deviceId,
    r.components.map((c) => [...c]),
    r.maxImageSize,
    [...r.requiredRoles],
  ]);
}

export function decodeIdentity(bytes: Uint8Array): IdentityRecord {
  return decodeRecord('identity', bytes, (v) => {
    const a = asArray(v, 'identity', { min: 7, max: 7 });
    if (asUint(a[0], 'identity[0]') !== 1) throw new Error('unknown version');
    return {
      vendorId: asBytes(a[1], 'identity[1]', { min: 16, max: 16 }),
      classId: asBytes(a[2], 'identity[2]', { min: 16, max: 16 }),
      deviceId: asBytes(a[3], 'identity[3]', { min: 16, max: 16 }),
      components: asArray(a[4], 'identity[4]', { min: 1, max: 16 }).map((c, i) =>
        asComponent(c, `identity[4][${i}]`),
      ),
      maxImageSize: asUint(a[5], 'identity[5]'),
      requiredRoles: asArray(a[6], 'identity[6]', { max: 8 }).map((r, i) =>
        asText(r, `identity[6][${i}]`, { max: 64 }),
      ),
    };
  });
}

export function encodeUpdate(r: UpdateRecord): Uint8Array {
  return encode([1, r.envelope, r.bank]);
}

export function decodeUpdate(bytes: Uint8Array): UpdateRecord {
  return decodeRecord('update record', bytes, (v) => {
    const a = asArray(v, 'update', { min: 3, max: 3 });
    if (asUint(a[0], 'update[0]') !== 1) throw new Error('unknown version');
    return {
      envelope: asBytes(a[1], 'update[1]', { max: MAX_ENVELOPE }),
      bank: asBankAB(a[2], 'update[2]'),
    };
  });
}

export function encodeDownload(r: DownloadRecord): Uint8Array {
  return encode([2, r.uri, r.etag ?? null, r.chunkSize, r.manifestDigest, r.decrypted, r.durableChunks]);
}

export function decodeDownload(bytes: Uint8Array): DownloadRecord {
  return decodeRecord('download record', bytes, (v) => {
    const a = asArray(v, 'download', { min: 6, max: 7 });
    const version = asUint(a[0], 'download[0]');
    // Version 1 (no checkpoint) resumes from nothing: its chunks were never recorded as durable.
    if (version !== (a.length === 6 ? 1 : 2)) throw new Error('unknown version');
    if (typeof a[5] !== 'boolean') throw new Error('download[5]: expected bool');
    return {
      uri: asText(a[1], 'download[1]', { max: 4096 }),
      etag: a[2] === null ? undefined : asText(a[2], 'download[2]', { max: 1024 }),
      chunkSize: asUint(a[3], 'download[3]'),
      manifestDigest: asBytes(a[4], 'download[4]', { max: 64 }),
      decrypted: a[5],
      durableChunks: a.length === 6 ? 0 : asUint(a[6], 'download[6]'),
    };
  });
}

// ---- record names -------------------------------------------------------------------------------------

export const BOOT = 'boot';
export const COUNTERS = 'counters';
export const ANCHORS = 'anchors';
export const IDENTITY = 'identity';
export const UPDATE = 'update';
export const bankName = (b: BankId): string => `bank-${b}`;
export const imageName = (b: BankId, c: ComponentId): string => `img-${b}-${componentTag(c)}`;
export const downloadName = (b: BankId, c: ComponentId): string => `dl-${b}-${componentTag(c)}`;

/** Typed access to the non-volatile records. Writes of several records go through `transact`. */
export class NvState {
  readonly store: AtomicStore;

  private constructor(store: AtomicStore) {
    this.store = store;
  }

  static async open(fs: StorageFs, dir: string): Promise<NvState> {
    return new NvState(await AtomicStore.open(fs, dir));
  }

  async #get<T>(name: string, f: (b: Uint8Array) => T): Promise<T | undefined> {
    const b = await this.store.get(name);
    return b === undefined ? undefined : f(b);
  }

  boot(): Promise<BootState | undefined> {
    return this.#get(BOOT, decodeBoot);
  }
  async counters(): Promise<Map<string, bigint>> {
    return (await this.#get(COUNTERS, decodeCounters)) ?? new Map();
  }
  async counter(key: ComponentId): Promise<bigint | undefined> {
    return (await this.counters()).get(componentKey(key));
  }
  async anchors(): Promise<AnchorRecord[]> {
    return (await this.#get(ANCHORS, decodeAnchors)) ?? [];
  }
  identity(): Promise<IdentityRecord | undefined> {
    return this.#get(IDENTITY, decodeIdentity);
  }
  bank(b: BankId): Promise<BankRecord | undefined> {
    return this.#get(bankName(b), decodeBank);
  }
  update(): Promise<UpdateRecord | undefined> {
    return this.#get(UPDATE, decodeUpdate);
  }
  image(b: BankId, c: ComponentId): Promise<ImageRecord | undefined> {
    return this.#get(imageName(b, c), decodeImage);
  }
  download(b: BankId, c: ComponentId): Promise<DownloadRecord | undefined> {
    return this.#get(downloadName(b, c), decodeDownload);
  }

  /** Counters after raising `key` to `value` (never lowered). */
  async raisedCounters(key: ComponentId, value: bigint): Promise<Uint8Array> {
    const c = await this.counters();
    const k = componentKey(key);
    const old = c.get(k);
    if (old === undefined || value > old) c.set(k, value);
    return encodeCounters(c);
  }

  /** Names of the per-image and download records of a bank (to drop them with the bank). */
  async bankScratch(b: BankId): Promise<string[]> {
    return (await this.store.names()).filter((n) => n.startsWith(`img-${b}-`) || n.startsWith(`dl-${b}-`));
  }

  transact(changes: ReadonlyMap<string, Uint8Array | null>): Promise<void> {
    return this.store.transact(changes);
  }
}
