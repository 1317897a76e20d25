/**
 * EnclaveCore: the RoT manager and key store of the enclave (seed 002 "AP firmware: RoT manager"), independent
 * of the queue so it can be driven in-process (tests inject power cuts through a SimulatedFs) or behind the IPQ
 * (enclave/main.ts).
 *
 * Rotation without downtime (seed 002 step 2, "securely transitions to the new RoT *without system downtime*"):
 *  1. the new key is derived first, while requests keep being served with the current key;
 *  2. the chain record for it is signed by the current RoT;
 *  3. keys and chain are committed as one journalled transaction (state.ts, storage/atomic.ts);
 *  4. the moment the journal is durable, the current-RoT pointer is replaced — one assignment between two
 *     requests (JavaScript runs one handler at a time), so every request is signed by exactly one RoT, and never
 *     by a key a crash could still lose.
 * Nothing on the request path waits for a rotation: Attest reads the pointer once, synchronously.
 */
import { hkdfSync, randomBytes, sign as cryptoSign, type KeyObject } from 'node:crypto';
import {
  aesKeyUnwrap,
  algInfoOfKind,
  Alg,
  asArray,
  asBytes,
  asInt,
  asUint,
  CborMap,
  decode,
  deriveKek,
  isCoseError,
  type AlgInfo,
  type Signer,
} from '@rotor/cose';
import {
  checkExtraClaims,
  createAttestationToken,
  createRotRecord,
  isTrustError,
  RotChain,
  rotPublicKey,
} from '@rotor/trust';
import { DeviceError } from '../errors.ts';
import type { StorageFs } from '../storage/fs.ts';
import { SealedBackend, type KeyBackend } from './backend.ts';
import {
  deriveRotMaterial,
  KEY_TYPE_INFO,
  privateKeyObject,
  publicInfo,
  type BackendName,
  type PublicKeyInfo,
  type RotAlg,
} from './keys.ts';
import {
  asDeviceError,
  decodeBody,
  encodeBody,
  isRequestType,
  PROTOCOL,
  ROT_PAGE,
  type Req,
  type Res,
} from './protocol.ts';
import { deriveSealingKeys, seal, unseal, type SealingKeys } from './seal.ts';
import { EnclaveStore, type EnclaveState, type RotState, type StoredKey } from './state.ts';

/** RoT signature algorithms the enclave uses and accepts in its own chain. */
export const ROT_ALGS: ReadonlySet<number> = new Set<number>([Alg.ES256, Alg.EdDSA]);

export interface EnclaveCoreOptions {
  readonly fs: StorageFs;
  /** Directory of the enclave's store inside `fs` (default 'enclave'). */
  readonly dir?: string;
  /** The device-unique fuse secret (seal.ts). */
  readonly fuse: Uint8Array;
  /** An opened PKCS#11 backend, if the device has a token. */
  readonly pkcs11?: KeyBackend;
  /** Clock in seconds since the epoch (default Date.now). */
  readonly now?: () => number;
}

interface LiveRot {
  readonly index: number;
  readonly kid: Uint8Array;
  readonly signer: Signer;
  readonly kdfSecret: Uint8Array;
}

function u8(b: Buffer): Uint8Array {
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

/** A RoT signer that signs synchronously (no thread-pool hop on the attestation path). */
function rotSigner(ko: KeyObject, type: RotAlg, kid: Uint8Array): Signer {
  const alg = type === 'ES256' ? Alg.ES256 : Alg.EdDSA;
  const hash = type === 'ES256' ? 'sha256' : null;
  // RFC 9053 §2.1: ECDSA signature = r‖s.
  const keyArg = hash === null ? ko : { key: ko, dsaEncoding: 'ieee-p1363' as const };
  return { alg, kid, sign: (tbs) => Promise.resolve(u8(cryptoSign(hash, tbs, keyArg))) };
}

function liveRot(r: RotState): LiveRot {
  const alg = r.type === 'ES256' ? Alg.ES256 : Alg.EdDSA;
  const kid = rotPublicKey(r.key, alg).kid!;
  return {
    index: r.index,
    kid,
    signer: rotSigner(privateKeyObject(r.key), r.type, kid),
    kdfSecret: r.kdfSecret,
  };
}

export class EnclaveCore {
  #state: EnclaveState;
  #chain: RotChain | null;
  #rot: LiveRot | undefined;
  readonly #store: EnclaveStore;
  readonly #sealing: SealingKeys;
  readonly #backends: ReadonlyMap<BackendName, KeyBackend>;
  readonly #now: () => number;
  #lock: Promise<unknown> = Promise.resolve();
  #served = 0;
  readonly #started = Date.now();

  private constructor(
    store: EnclaveStore,
    state: EnclaveState,
    chain: RotChain | null,
    sealing: SealingKeys,
    backends: Map<BackendName, KeyBackend>,
    now: () => number,
  ) {
    this.#store = store;
    this.#state = state;
    this.#chain = chain;
    this.#sealing = sealing;
    this.#backends = backends;
    this.#now = now;
    this.#rot = state.rot === null ? undefined : liveRot(state.rot);
  }

  /** Opens the enclave state: crash recovery, unsealing, the keys-and-chain agreement check. */
  static async open(opts: EnclaveCoreOptions): Promise<EnclaveCore> {
    const sealing = deriveSealingKeys(opts.fuse);
    const { store, state, chain } = await EnclaveStore.open(
      opts.fs,
      opts.dir ?? 'enclave',
      sealing,
      ROT_ALGS,
    );
    const backends = new Map<BackendName, KeyBackend>([['sealed', new SealedBackend()]]);
    if (opts.pkcs11 !== undefined) backends.set('pkcs11', opts.pkcs11);
    for (const k of state.keys.values()) backends.get(k.backend)?.load(k.keyId, k.type, k.key);
    return new EnclaveCore(store, state, chain, sealing, backends, opts.now ?? (() => Date.now() / 1000));
  }

  /** The verified chain (null before GenerateRoT). */
  get chain(): RotChain | null {
    return this.#chain;
  }

  get ueid(): Uint8Array {
    return this.#sealing.ueid;
  }

  /** Mutations (GenerateRoT, RotateRoT, GenerateKey) run one at a time; requests never wait for them. */
  #exclusive<T>(f: () => Promise<T>): Promise<T> {
    const run = this.#lock.then(f, f);
    this.#lock = run.catch(() => undefined);
    return run;
  }

  #time(): number {
    const t = Math.floor(this.#now());
    // Chain time never goes backwards (a device clock may; trust's CHAIN_TIME check).
    return Math.max(t, this.#chain?.current.time ?? 0);
  }

  /** Validates and serves one request from the queue. */
  async handle(type: string, body: unknown): Promise<Map<string, unknown>> {
    this.#served++;
    if (!isRequestType(type))
      throw new DeviceError('REQUEST_UNKNOWN', `unknown request type ${type.slice(0, 40)}`);
    try {
      switch (type) {
        case 'GenerateRoT':
          return encodeBody(
            await this.generateRoT(decodeBody(PROTOCOL.GenerateRoT.req, body, 'REQUEST_INVALID')),
          );
        case 'RotateRoT':
          return encodeBody(
            await this.rotateRoT(decodeBody(PROTOCOL.RotateRoT.req, body, 'REQUEST_INVALID')),
          );
        case 'GetRoT':
          return encodeBody(this.getRoT(decodeBody(PROTOCOL.GetRoT.req, body, 'REQUEST_INVALID')));
        case 'Attest':
          return encodeBody(await this.attest(decodeBody(PROTOCOL.Attest.req, body, 'REQUEST_INVALID')));
        case 'DeriveSessionKey':
          return encodeBody(
            this.deriveSessionKey(decodeBody(PROTOCOL.DeriveSessionKey.req, body, 'REQUEST_INVALID')),
          );
        case 'Sign':
          return encodeBody(await this.sign(decodeBody(PROTOCOL.Sign.req, body, 'REQUEST_INVALID')));
        case 'KeyAgreement':
          return encodeBody(
            await this.keyAgreement(decodeBody(PROTOCOL.KeyAgreement.req, body, 'REQUEST_INVALID')),
          );
        case 'Unwrap':
          return encodeBody(await this.unwrap(decodeBody(PROTOCOL.Unwrap.req, body, 'REQUEST_INVALID')));
        case 'GenerateKey':
          return encodeBody(
            await this.generateKey(decodeBody(PROTOCOL.GenerateKey.req, body, 'REQUEST_INVALID')),
          );
        case 'GetPublicKey':
          return encodeBody(
            this.getPublicKey(decodeBody(PROTOCOL.GetPublicKey.req, body, 'REQUEST_INVALID')),
          );
        case 'Health':
          decodeBody(PROTOCOL.Health.req, body, 'REQUEST_INVALID');
          return encodeBody(this.health());
        case 'SealData':
          return encodeBody(this.sealData(decodeBody(PROTOCOL.SealData.req, body, 'REQUEST_INVALID')));
        case 'UnsealData':
          return encodeBody(this.unsealData(decodeBody(PROTOCOL.UnsealData.req, body, 'REQUEST_INVALID')));
      }
    } catch (e) {
      if (isTrustError(e) && e.code === 'ATTEST_CLAIM_RESERVED') {
        throw new DeviceError('REQUEST_INVALID', e.message, { cause: e });
      }
      throw asDeviceError(e, 'REQUEST_INVALID');
    }
  }

  /** Seed 002 step 1: the first RoT, from TRNG seed material optionally mixed with an external seed. */
  generateRoT(req: Req<'GenerateRoT'>): Promise<Res<'GenerateRoT'>> {
    return this.#exclusive(async () => {
      if (this.#state.rot !== null) throw new DeviceError('ROT_EXISTS', 'a RoT exists: rotate it instead');
      const type = req.alg ?? 'ES256';
      const m = deriveRotMaterial(type, this.#ikm(req.seed), 0);
      const rot: RotState = { type, index: 0, key: m.key, kdfSecret: m.kdfSecret };
      const live = liveRot(rot);
      // Seed 002 step 1: "RoT Available" carries the RoT public key signed — by itself (proof of possession).
      const record = await createRotRecord(
        { index: 0, publicKey: m.key, alg: live.signer.alg, previous: null, time: this.#time() },
        live.signer,
      );
      await this.#commitRot(rot, live, record);
      return { record };
    });
  }

  /** Seed 002 step 2: a new RoT signed by the current one, switched to atomically (see the module comment). */
  rotateRoT(req: Req<'RotateRoT'>): Promise<Res<'RotateRoT'>> {
    return this.#exclusive(async () => {
      const cur = this.#state.rot;
      const curLive = this.#rot;
      if (cur === null || curLive === undefined) throw new DeviceError('ROT_MISSING', 'no RoT to rotate');
      const index = cur.index + 1;
      const m = deriveRotMaterial(cur.type, this.#ikm(req.seed), index);
      const rot: RotState = { type: cur.type, index, key: m.key, kdfSecret: m.kdfSecret };
      const live = liveRot(rot);
      const record = await createRotRecord(
        { index, publicKey: m.key, alg: live.signer.alg, previous: curLive.kid, time: this.#time() },
        curLive.signer,
      );
      await this.#commitRot(rot, live, record);
      return { record };
    });
  }

  #ikm(seed: Uint8Array | undefined): Uint8Array {
    // TRNG output first; an external seed is mixed in by HKDF-Extract (keys.ts), never used alone.
    const trng = randomBytes(32);
    return seed === undefined ? trng : Buffer.concat([trng, seed]);
  }

  async #commitRot(rot: RotState, live: LiveRot, record: Uint8Array): Promise<void> {
    // Self-check before anything is persisted: the enclave never commits a chain a verifier would refuse.
    const chain =
      this.#chain === null
        ? RotChain.verify([record], { allowedAlgs: ROT_ALGS })
        : this.#chain.extend(record);
    const state: EnclaveState = { rot, keys: this.#state.keys };
    await this.#store.commit(state, chain.records, () => {
      // Durable: switch. From here every new request is served by the new RoT; the old key is dropped.
      this.#state = state;
      this.#rot = live;
      this.#chain = chain;
    });
  }

  getRoT(req: Req<'GetRoT'>): Res<'GetRoT'> {
    const records = this.#chain?.records ?? [];
    const from = req.from ?? 0;
    return { records: records.slice(from, from + ROT_PAGE), total: records.length };
  }

  #currentRot(): LiveRot {
    const r = this.#rot;
    if (r === undefined) throw new DeviceError('ROT_MISSING', 'GenerateRoT first');
    return r;
  }

  /** Seed 002 step 3: the current RoT signs the challenge and the device's claims (an EAT, trust/attestation). */
  async attest(req: Req<'Attest'>): Promise<Res<'Attest'>> {
    const rot = this.#currentRot(); // read once: this request is signed by exactly this key
    const claims = req.claims ?? new CborMap([]);
    checkExtraClaims(claims);
    const token = await createAttestationToken(
      { nonce: req.challenge, ueid: this.#sealing.ueid, iat: this.#now(), rotIndex: rot.index, claims },
      rot.signer,
    );
    return { token };
  }

  /**
   * Seed 002 step 3: "A session key is derived using a KDF based on the RoT, the session challenge, and other
   * relevant parameters": HKDF-SHA-256 (RFC 5869) with IKM = the current RoT's session secret (derived with the
   * RoT key, never exported), salt = the challenge, info = ["rotor session key v1", RoT kid, context, length].
   */
  deriveSessionKey(req: Req<'DeriveSessionKey'>): Res<'DeriveSessionKey'> {
    const rot = this.#currentRot();
    const length = req.length ?? 32;
    const info = Buffer.concat([
      Buffer.from('rotor session key v1\0'),
      rot.kid,
      Buffer.from([req.context.length >> 8, req.context.length & 0xff]),
      req.context,
      Buffer.from([length]),
    ]);
    const key = new Uint8Array(hkdfSync('sha256', rot.kdfSecret, req.challenge, info, length));
    return { key, kid: rot.kid, index: rot.index };
  }

  #key(keyId: string): { stored: StoredKey; backend: KeyBackend } {
    const stored = this.#state.keys.get(keyId);
    if (stored === undefined) throw new DeviceError('KEY_NOT_FOUND', `no key ${keyId}`);
    const backend = this.#backends.get(stored.backend);
    if (backend === undefined)
      throw new DeviceError('BACKEND_UNAVAILABLE', `key ${keyId} lives in ${stored.backend}`);
    return { stored, backend };
  }

  /** Sign(keyId, data) with a non-RoT key (the RoT signs only chain records and attestation tokens). */
  async sign(req: Req<'Sign'>): Promise<Res<'Sign'>> {
    const { stored, backend } = this.#key(req.keyId);
    if (KEY_TYPE_INFO[stored.type].use !== 'sign')
      throw new DeviceError('KEY_USAGE', `${req.keyId} cannot sign`);
    return { signature: await backend.sign(req.keyId, stored.type, req.data) };
  }

  async keyAgreement(req: Req<'KeyAgreement'>): Promise<Res<'KeyAgreement'>> {
    const { stored, backend } = this.#key(req.keyId);
    if (KEY_TYPE_INFO[stored.type].use !== 'agree')
      throw new DeviceError('KEY_USAGE', `${req.keyId} is not for ECDH`);
    return { secret: await backend.deriveSharedSecret(req.keyId, stored.type, req.peer) };
  }

  /**
   * ECDH-ES + HKDF-SHA-256 + AES Key Wrap (RFC 9053 §6.3) inside the enclave: Z and the KEK stay here, only the
   * content key goes back. The COSE_KDF_Context (RFC 9053 §5.2) comes from the agent and is checked: its
   * AlgorithmID must be the key-wrap algorithm of `alg` and keyDataLength its key size in bits.
   */
  async unwrap(req: Req<'Unwrap'>): Promise<Res<'Unwrap'>> {
    const { stored, backend } = this.#key(req.keyId);
    if (KEY_TYPE_INFO[stored.type].use !== 'agree')
      throw new DeviceError('KEY_USAGE', `${req.keyId} is not for ECDH`);
    let info: AlgInfo;
    try {
      info = algInfoOfKind(req.alg, 'ecdh-key-wrap');
    } catch (e) {
      throw new DeviceError('REQUEST_INVALID', `alg ${req.alg} is not ECDH-ES + AES-KW`, { cause: e });
    }
    const { wrapAlg, keyLength } = info;
    if (wrapAlg === undefined || keyLength === undefined)
      throw new DeviceError('INTERNAL', 'algorithm table entry');
    try {
      const ctx = asArray(decode(req.context, { maxSize: 1024, maxDepth: 4, sortedKeys: false }), 'context', {
        min: 4,
        max: 5,
      });
      const supp = asArray(ctx[3], 'context[3]', { min: 2, max: 3 });
      if (
        asInt(ctx[0], 'context[0]') !== info.wrapAlg ||
        asUint(supp[0], 'context[3][0]') !== info.keyLength! * 8
      ) {
        throw new DeviceError('REQUEST_INVALID', 'COSE_KDF_Context does not match the algorithm');
      }
      asBytes(supp[1], 'context[3][1]');
    } catch (e) {
      throw asDeviceError(e, 'REQUEST_INVALID');
    }
    const z = await backend.deriveSharedSecret(req.keyId, stored.type, req.peer);
    const kek = deriveKek(z, req.salt, req.context, keyLength);
    z.fill(0);
    try {
      return { cek: aesKeyUnwrap(kek, req.wrapped, wrapAlg) };
    } catch (e) {
      if (isCoseError(e))
        throw new DeviceError('UNWRAP_FAILED', 'AES key unwrap integrity check failed', { cause: e });
      throw e;
    } finally {
      kek.fill(0);
    }
  }

  /** A new never-exportable key (e.g. the identity key at manufacturing), in the sealed store or the PKCS#11 token. */
  generateKey(req: Req<'GenerateKey'>): Promise<Res<'GenerateKey'>> {
    return this.#exclusive(async () => {
      if (this.#state.keys.has(req.keyId)) throw new DeviceError('KEY_EXISTS', `key ${req.keyId} exists`);
      const name = req.backend ?? 'sealed';
      const backend = this.#backends.get(name);
      if (backend === undefined)
        throw new DeviceError('BACKEND_UNAVAILABLE', `no ${name} backend configured`);
      if (!backend.supports(req.type))
        throw new DeviceError('KEY_TYPE_UNSUPPORTED', `${name} cannot hold ${req.type}`);
      const key = await backend.generate(req.keyId, req.type);
      const stored: StoredKey = { keyId: req.keyId, type: req.type, backend: name, key };
      const keys = new Map(this.#state.keys);
      keys.set(req.keyId, stored);
      const state: EnclaveState = { rot: this.#state.rot, keys };
      await this.#store.commit(state, undefined, () => {
        this.#state = state;
        backend.load(req.keyId, req.type, key);
      });
      return infoBody(publicInfo(req.keyId, req.type, name, key));
    });
  }

  getPublicKey(req: Req<'GetPublicKey'>): Res<'GetPublicKey'> {
    const { stored } = this.#key(req.keyId);
    return infoBody(publicInfo(stored.keyId, stored.type, stored.backend, stored.key));
  }

  /** Seals an agent secret to this device (seal.ts; label prefix `data:` keeps it apart from the enclave's own). */
  sealData(req: Req<'SealData'>): Res<'SealData'> {
    return { sealed: seal(this.#sealing.seal, `data:${req.label}`, req.data) };
  }

  /** SEAL_FAILED when the blob was sealed elsewhere, under another label, or altered. */
  unsealData(req: Req<'UnsealData'>): Res<'UnsealData'> {
    return { data: unseal(this.#sealing.seal, `data:${req.label}`, req.sealed) };
  }

  health(): Res<'Health'> {
    const rot = this.#rot;
    return {
      status: rot === undefined ? 'no-rot' : 'ok',
      rotIndex: rot?.index ?? -1,
      rotKid: rot?.kid,
      keys: this.#state.keys.size,
      backends: [...this.#backends.keys()],
      uptimeMs: Date.now() - this.#started,
      served: this.#served,
      pid: process.pid,
    };
  }

  async close(): Promise<void> {
    await this.#lock;
    for (const b of this.#backends.values()) await b.close();
  }
}

function infoBody(i: PublicKeyInfo): Res<'GenerateKey'> {
  return { keyId: i.keyId, type: i.type, backend: i.backend, publicKey: i.publicKey, kid: i.kid };
}
