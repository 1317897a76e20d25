/**
 * The report outbox: every update transition (downloading, downloaded, installing, installed, rebooting,
 * confirmed, failed, rolled-back) is appended as a record that survives restarts until the status tracker
 * client has delivered it (RFC 9019 §3: the status tracker; draft-ietf-suit-report for the signed payload).
 * Records are small CBOR arrays in their own AtomicStore directory, named by a monotonic index.
 */
import { asArray, asBytes, asText, asUint64, decode, encode } from '@rotor/cose';
import { DeviceError } from '../errors.ts';
import { AtomicStore } from '../storage/atomic.ts';
import type { StorageFs } from '../storage/fs.ts';

export const TRANSITIONS = [
  'downloading',
  'downloaded',
  'installing',
  'installed',
  'rebooting',
  'confirmed',
  'failed',
  'rolled-back',
] as const;
export type Transition = (typeof TRANSITIONS)[number];

export interface TransitionRecord {
  readonly index: number;
  readonly state: Transition;
  /** SHA-256 digest of the manifest the transition is about (empty when none). */
  readonly manifestDigest: Uint8Array;
  readonly sequence: bigint;
  /** Stable error code for 'failed' / 'rolled-back'. */
  readonly reason: string | undefined;
  readonly detail: string | undefined;
  /** The encoded SUIT_Report of the processor run, when there is one. */
  readonly report: Uint8Array | undefined;
}

const NAME = /^t-(\d{12})$/;
const MAX_KEPT = 1000;

function encodeRecord(r: Omit<TransitionRecord, 'index'>): Uint8Array {
  return encode([
    r.state,
    r.manifestDigest,
    r.sequence,
    r.reason ?? null,
    r.detail ?? null,
    r.report ?? null,
  ]);
}

function decodeRecord(index: number, bytes: Uint8Array): TransitionRecord {
  try {
    const a = asArray(decode(bytes, { maxSize: 256 * 1024 }), 'transition', { min: 6, max: 6 });
    const state = asText(a[0], 't[0]', { max: 16 });
    if (!(TRANSITIONS as readonly string[]).includes(state)) throw new Error(`unknown state ${state}`);
    return {
      index,
      state: state as Transition,
      manifestDigest: asBytes(a[1], 't[1]', { max: 64 }),
      sequence: asUint64(a[2], 't[2]'),
      reason: a[3] === null ? undefined : asText(a[3], 't[3]', { max: 64 }),
      detail: a[4] === null ? undefined : asText(a[4], 't[4]', { max: 4096 }),
      report: a[5] === null ? undefined : asBytes(a[5], 't[5]', { max: 128 * 1024 }),
    };
  } catch (e) {
    throw new DeviceError(
      'RECORD_INVALID',
      `outbox record ${index}: ${e instanceof Error ? e.message : String(e)}`,
      {
        cause: e,
      },
    );
  }
}

export class Outbox {
  readonly #store: AtomicStore;
  #next = 0;

  private constructor(store: AtomicStore) {
    this.#store = store;
  }

  static async open(fs: StorageFs, dir: string): Promise<Outbox> {
    const o = new Outbox(await AtomicStore.open(fs, dir));
    const idx = await o.#indices();
    o.#next = idx.length === 0 ? 0 : idx[idx.length - 1]! + 1;
    return o;
  }

  async #indices(): Promise<number[]> {
    return (await this.#store.names())
      .map((n) => NAME.exec(n))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => Number(m[1]))
      .sort((a, b) => a - b);
  }

  /** Appends a transition durably. The oldest undelivered records are dropped beyond MAX_KEPT. */
  async append(r: Omit<TransitionRecord, 'index'>): Promise<number> {
    const index = this.#next++;
    await this.#store.put(`t-${String(index).padStart(12, '0')}`, encodeRecord(r));
    const idx = await this.#indices();
    for (const old of idx.slice(0, Math.max(0, idx.length - MAX_KEPT)))
      await this.#store.delete(`t-${String(old).padStart(12, '0')}`);
    return index;
  }

  /** Undelivered transitions, oldest first. */
  async pending(): Promise<TransitionRecord[]> {
    const out: TransitionRecord[] = [];
    for (const i of await this.#indices()) {
      const b = await this.#store.get(`t-${String(i).padStart(12, '0')}`);
      if (b !== undefined) out.push(decodeRecord(i, b));
    }
    return out;
  }

  /** Drops delivered transitions (every index ≤ `upTo`). */
  async acknowledge(upTo: number): Promise<void> {
    for (const i of await this.#indices())
      if (i <= upTo) await this.#store.delete(`t-${String(i).padStart(12, '0')}`);
  }
}
