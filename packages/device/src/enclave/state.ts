/**
 * The enclave's persistent state: the sealed key set and the public RoT chain, in an AtomicStore.
 *
 *   keys   sealed (seal.ts) CBOR { 1: 1, 2: rot / null, 3: [* stored key] }
 *            rot = [type, index, COSE_Key (private), kdf secret]
 *            stored key = [key id, type, backend, COSE_Key (private for 'sealed', public for 'pkcs11')]
 *   chain  CBOR [* record bstr]: the RoT chain records (public, integrity from their signatures)
 *
 * Both change together in one AtomicStore transaction (the journal), so after any crash the current RoT private
 * key is the key of the chain's last record; open() checks exactly that, and that the chain verifies.
 */
import {
  asArray,
  asBytes,
  asMap,
  asText,
  asUint,
  decode,
  decodeCoseKey,
  encode,
  encodeCoseKey,
} from '@rotor/cose';
import type { CoseKey } from '@rotor/cose';
import { bytesEqual, coseKeyThumbprint, RotChain } from '@rotor/trust';
import { DeviceError } from '../errors.ts';
import { AtomicStore } from '../storage/atomic.ts';
import type { StorageFs } from '../storage/fs.ts';
import { isKeyType, type BackendName, type KeyType, type RotAlg } from './keys.ts';
import { seal, unseal, type SealingKeys } from './seal.ts';

export interface RotState {
  readonly type: RotAlg;
  readonly index: number;
  readonly key: CoseKey;
  readonly kdfSecret: Uint8Array;
}

export interface StoredKey {
  readonly keyId: string;
  readonly type: KeyType;
  readonly backend: BackendName;
  readonly key: CoseKey;
}

export interface EnclaveState {
  readonly rot: RotState | null;
  readonly keys: ReadonlyMap<string, StoredKey>;
}

export const EMPTY_STATE: EnclaveState = { rot: null, keys: new Map() };
const KEYS = 'keys';
const CHAIN = 'chain';
const MAX_CHAIN_FILE = 256 * 1024 * 1024;

function encodeState(s: EnclaveState): Uint8Array {
  const rot = s.rot === null ? null : [s.rot.type, s.rot.index, encodeCoseKey(s.rot.key), s.rot.kdfSecret];
  const keys = [...s.keys.values()].map((k) => [k.keyId, k.type, k.backend, encodeCoseKey(k.key)]);
  return encode(
    new Map<number, unknown>([
      [1, 1],
      [2, rot],
      [3, keys],
    ]),
  );
}

function decodeState(b: Uint8Array): EnclaveState {
  // Our own sealed bytes, authenticated by AES-GCM; still decoded strictly.
  const m = asMap(decode(b, { maxSize: 16 * 1024 * 1024 }), 'state');
  if (asUint(m.get(1), 'state.1') !== 1) throw new DeviceError('STORAGE_CORRUPT', 'unknown state version');
  let rot: RotState | null = null;
  const r = m.get(2);
  if (r !== null) {
    const a = asArray(r, 'state.rot', { min: 4, max: 4 });
    const type = asText(a[0], 'state.rot[0]');
    if (type !== 'ES256' && type !== 'EdDSA') throw new DeviceError('STORAGE_CORRUPT', 'bad RoT type');
    rot = {
      type,
      index: asUint(a[1], 'state.rot[1]'),
      key: decodeCoseKey(asBytes(a[2], 'state.rot[2]')),
      kdfSecret: asBytes(a[3], 'state.rot[3]', { min: 32, max: 32 }),
    };
  }
  const keys = new Map<string, StoredKey>();
  for (const [i, e] of asArray(m.get(3), 'state.keys').entries()) {
    const a = asArray(e, `state.keys[${i}]`, { min: 4, max: 4 });
    const keyId = asText(a[0], 'keyId');
    const type = a[1];
    const backend = a[2];
    if (!isKeyType(type) || (backend !== 'sealed' && backend !== 'pkcs11')) {
      throw new DeviceError('STORAGE_CORRUPT', `bad stored key ${keyId}`);
    }
    keys.set(keyId, { keyId, type, backend, key: decodeCoseKey(asBytes(a[3], 'key')) });
  }
  return { rot, keys };
}

export class EnclaveStore {
  readonly #store: AtomicStore;
  readonly #keys: SealingKeys;

  private constructor(store: AtomicStore, keys: SealingKeys) {
    this.#store = store;
    this.#keys = keys;
  }

  /**
   * Opens the state (running the store's crash recovery), unseals it and checks that keys and chain agree.
   * `allowedAlgs` are the RoT algorithms the chain is verified with.
   */
  static async open(
    fs: StorageFs,
    dir: string,
    keys: SealingKeys,
    allowedAlgs: ReadonlySet<number>,
  ): Promise<{ store: EnclaveStore; state: EnclaveState; chain: RotChain | null }> {
    const store = await AtomicStore.open(fs, dir);
    const sealed = await store.get(KEYS);
    const chainBytes = await store.get(CHAIN);
    const state = sealed === undefined ? EMPTY_STATE : decodeState(unseal(keys.seal, KEYS, sealed));
    let records: Uint8Array[] = [];
    if (chainBytes !== undefined) {
      records = asArray(decode(chainBytes, { maxSize: MAX_CHAIN_FILE }), 'chain').map((r, i) =>
        asBytes(r, `chain[${i}]`),
      );
    }
    let chain: RotChain | null = null;
    if (state.rot === null) {
      if (records.length !== 0) throw new DeviceError('STATE_INCONSISTENT', 'a chain without a RoT key');
    } else {
      try {
        chain = RotChain.verify(records, { allowedAlgs });
      } catch (e) {
        throw new DeviceError('STATE_INCONSISTENT', 'the stored RoT chain does not verify', { cause: e });
      }
      // The sealed RoT must be the key of the chain's last record (issue 3: "keys and chain agree").
      if (
        chain.current.index !== state.rot.index ||
        !bytesEqual(coseKeyThumbprint(state.rot.key), chain.current.kid)
      ) {
        throw new DeviceError('STATE_INCONSISTENT', 'the sealed RoT is not the last key of the chain');
      }
    }
    return { store: new EnclaveStore(store, keys), state, chain };
  }

  /**
   * Persists a new state (and chain) as one transaction. `onCommit` runs once it is durable: the caller switches
   * to the new state there, never earlier (no key is used before a crash can no longer lose it).
   */
  async commit(
    state: EnclaveState,
    records: readonly Uint8Array[] | undefined,
    onCommit: () => void,
  ): Promise<void> {
    const changes = new Map<string, Uint8Array | null>([
      [KEYS, seal(this.#keys.seal, KEYS, encodeState(state))],
    ]);
    if (records !== undefined) changes.set(CHAIN, encode(records));
    await this.#store.transact(changes, onCommit);
  }
}
