/**
 * Root-of-trust key chains (seed 002 steps 1–2, "Dynamic RoT Rotation").
 *
 * A chain is a list of records, each a COSE_Sign1 (RFC 9052 §4.2) whose payload names one RoT key:
 *
 *   record = COSE_Sign1_Tagged, protected { 1: alg, 3: "application/rotor-rot-record+cbor", 4: signer kid }
 *   payload = {
 *     1 => uint,        ; index: the record's position in the chain, 0 for the first RoT
 *     2 => COSE_Key,    ; the RoT public key, with kid = its RFC 9679 thumbprint and its signature alg
 *     3 => bstr / nil,  ; previous: the thumbprint of the key before it (nil for index 0)
 *     4 => uint,        ; time: seconds since the Unix epoch on the enclave's clock
 *   }
 *
 * Record 0 is signed by its own key (seed 002 step 1: the AP answers "RoT Available" with a *signed* RoT public
 * key — proof of possession). Record n > 0 is signed by key n−1 (step 2: each new key signed by the old one), so
 * a verifier that pinned the first RoT (step 1: "RTP ... stores the RoT public key securely") can follow every
 * rotation. The content type in the protected bucket separates chain records from every other thing a RoT signs
 * (attestation tokens), so no other signature by a RoT can be passed off as a rotation.
 */
import {
  asBytes,
  asMap,
  asUint,
  checkKeys,
  coseKeyToMap,
  createSign1,
  decode,
  decodeSign1,
  encode,
  isCoseError,
  parseCoseKey,
  verifierFromCoseKey,
  verifySign1,
  type CoseKey,
  type Signer,
  type Verifier,
} from '@rotor/cose';
import { TrustError, type TrustErrorCode } from './errors.ts';
import { bytesEqual, coseKeyThumbprint, hex } from './thumbprint.ts';

export const ROT_RECORD_CONTENT_TYPE = 'application/rotor-rot-record+cbor';
/** A record is a few hundred bytes; anything larger is refused before decoding. */
export const ROT_RECORD_MAX_BYTES = 2048;
/** Default bound on the number of records a verifier accepts. */
export const ROT_CHAIN_MAX_LENGTH = 1_000_000;

const LABEL = { index: 1, key: 2, previous: 3, time: 4 } as const;
const PAYLOAD_KEYS: ReadonlySet<number> = new Set([1, 2, 3, 4]);
const KID_BYTES = 32;

/** One verified key of a chain. */
export interface RotKey {
  readonly index: number;
  /** RFC 9679 thumbprint of the key. */
  readonly kid: Uint8Array;
  /** The public COSE_Key (kid and alg set). */
  readonly key: CoseKey;
  readonly alg: number;
  readonly time: number;
  readonly verifier: Verifier;
  /** The record as received. */
  readonly record: Uint8Array;
}

/** A decoded (not yet verified) chain record. */
export interface RotRecord {
  readonly bytes: Uint8Array;
  readonly index: number;
  readonly key: CoseKey;
  readonly kid: Uint8Array;
  readonly alg: number;
  readonly previous: Uint8Array | null;
  readonly time: number;
  /** The kid in the protected header: the key that claims to have signed the record. */
  readonly signerKid: Uint8Array;
  readonly signerAlg: number;
  readonly verifyWith: (verifier: Verifier, allowedAlgs: ReadonlySet<number>) => void;
}

export interface RotChainOptions {
  /** Signature algorithms accepted for records and for RoT keys (no default: the caller decides). */
  readonly allowedAlgs: ReadonlySet<number>;
  /**
   * Thumbprint of the first RoT, pinned at provisioning (seed 002 step 1). Without it the chain is only checked
   * for internal consistency: the caller must pin `chain.root.kid` itself (trust on first use).
   */
  readonly anchor?: Uint8Array;
  /** Most records accepted (default ROT_CHAIN_MAX_LENGTH). */
  readonly maxLength?: number;
}

function fail(code: TrustErrorCode, message: string, path: string, cause?: unknown): TrustError {
  return new TrustError(code, message, path, cause === undefined ? undefined : { cause });
}

/** The public COSE_Key of a RoT as it goes into a record: kty, crv, x, (y), alg, kid = thumbprint. */
export function rotPublicKey(key: CoseKey, alg: number): CoseKey {
  const pub: CoseKey = { kty: key.kty, alg };
  if (key.crv !== undefined) pub.crv = key.crv;
  if (key.x !== undefined) pub.x = key.x;
  if (key.y !== undefined) pub.y = key.y;
  pub.kid = coseKeyThumbprint(pub);
  return pub;
}

/**
 * Creates and signs a chain record. `signer` is the new key itself for index 0 and the previous RoT otherwise;
 * its kid must be the thumbprint of that key (checked here so the enclave cannot emit an unverifiable record).
 */
export async function createRotRecord(
  fields: { index: number; publicKey: CoseKey; alg: number; previous: Uint8Array | null; time: number },
  signer: Signer,
): Promise<Uint8Array> {
  const key = rotPublicKey(fields.publicKey, fields.alg);
  const expectedSigner = fields.index === 0 ? key.kid! : fields.previous;
  if (expectedSigner === null || signer.kid === undefined || !bytesEqual(signer.kid, expectedSigner)) {
    throw fail('CHAIN_KID_MISMATCH', 'record signer is not the key that must sign it', 'create');
  }
  if ((fields.index === 0) !== (fields.previous === null)) {
    throw fail('CHAIN_PREVIOUS_KEY', 'only the first record has no previous key', 'create');
  }
  const payload = encode(
    new Map<number, unknown>([
      [LABEL.index, fields.index],
      [LABEL.key, coseKeyToMap(key)],
      [LABEL.previous, fields.previous],
      [LABEL.time, Math.floor(fields.time)],
    ]),
  );
  return createSign1(payload, signer, {
    protectedExtra: new Map<number, unknown>([
      [3, ROT_RECORD_CONTENT_TYPE],
      [4, signer.kid],
    ]),
  });
}

/** Decodes one record under the strict profile; signatures are checked by RotChain. */
export function decodeRotRecord(bytes: Uint8Array, path = 'record'): RotRecord {
  try {
    const msg = decodeSign1(bytes, { tag: 'required', maxSize: ROT_RECORD_MAX_BYTES });
    if (msg.protectedHeaders.get(3) !== ROT_RECORD_CONTENT_TYPE) {
      throw fail('CHAIN_MALFORMED', 'protected content type is not a RoT chain record', path);
    }
    const signerKid = msg.protectedHeaders.get(4);
    if (!(signerKid instanceof Uint8Array) || signerKid.length !== KID_BYTES) {
      throw fail('CHAIN_MALFORMED', 'protected kid must be a 32-byte thumbprint', path);
    }
    if (msg.payload === null) throw fail('CHAIN_MALFORMED', 'record payload is detached', path);
    const m = asMap(decode(msg.payload, { maxSize: ROT_RECORD_MAX_BYTES, maxDepth: 4 }), `${path}.payload`);
    checkKeys(m, PAYLOAD_KEYS, `${path}.payload`);
    const index = asUint(m.get(LABEL.index), `${path}.payload.index`);
    const key = parseCoseKey(m.get(LABEL.key), `${path}.payload.key`);
    if (key.d !== undefined || key.kty === 4)
      throw fail('CHAIN_MALFORMED', 'record key must be a public key', path);
    if (key.alg === undefined) throw fail('CHAIN_MALFORMED', 'record key has no alg', path);
    const kid = coseKeyThumbprint(key);
    // The kid in the record must be the key's own RFC 9679 thumbprint: ids cannot be chosen, only computed.
    if (key.kid === undefined || !bytesEqual(key.kid, kid)) {
      throw fail('CHAIN_MALFORMED', 'record key kid is not its RFC 9679 thumbprint', path);
    }
    const prevRaw = m.get(LABEL.previous);
    const previous =
      prevRaw === null ? null : asBytes(prevRaw, `${path}.payload.previous`, { min: 32, max: 32 });
    if (!m.has(LABEL.previous)) throw fail('CHAIN_MALFORMED', 'record has no previous member', path);
    const time = asUint(m.get(LABEL.time), `${path}.payload.time`);
    return {
      bytes,
      index,
      key,
      kid,
      alg: key.alg,
      previous,
      time,
      signerKid,
      signerAlg: msg.alg,
      verifyWith(verifier, allowedAlgs) {
        verifySign1(msg, verifier, { allowedAlgs });
      },
    };
  } catch (e) {
    if (e instanceof TrustError) throw e;
    if (isCoseError(e)) throw fail('CHAIN_MALFORMED', `record does not decode: ${e.message}`, path, e);
    throw e;
  }
}

/** A verified chain: immutable; `extend` returns a longer one. */
export class RotChain {
  readonly keys: readonly RotKey[];
  readonly #byKid: ReadonlyMap<string, RotKey>;
  readonly #opts: RotChainOptions;

  private constructor(keys: readonly RotKey[], byKid: ReadonlyMap<string, RotKey>, opts: RotChainOptions) {
    this.keys = keys;
    this.#byKid = byKid;
    this.#opts = opts;
  }

  /** Verifies a whole chain from the first RoT (seed 002 steps 1–2). */
  static verify(records: readonly Uint8Array[], opts: RotChainOptions): RotChain {
    if (records.length === 0) throw fail('CHAIN_EMPTY', 'a chain has at least the first RoT', 'records');
    const max = opts.maxLength ?? ROT_CHAIN_MAX_LENGTH;
    if (records.length > max)
      throw fail('CHAIN_TOO_LONG', `${records.length} records exceed ${max}`, 'records');
    const keys: RotKey[] = [];
    const byKid = new Map<string, RotKey>();
    for (let i = 0; i < records.length; i++) {
      const k = verifyRecord(records[i]!, keys[i - 1], i, opts, `records[${i}]`);
      if (byKid.has(hex(k.kid))) throw fail('CHAIN_KEY_REUSED', 'a RoT key appears twice', `records[${i}]`);
      keys.push(k);
      byKid.set(hex(k.kid), k);
    }
    return new RotChain(keys, byKid, opts);
  }

  /** The chain with one more record appended (seed 002 step 2: "RTP verifies the signature and updates"). */
  extend(record: Uint8Array): RotChain {
    const i = this.keys.length;
    const max = this.#opts.maxLength ?? ROT_CHAIN_MAX_LENGTH;
    if (i + 1 > max) throw fail('CHAIN_TOO_LONG', `${i + 1} records exceed ${max}`, `records[${i}]`);
    const k = verifyRecord(record, this.current, i, this.#opts, `records[${i}]`);
    if (this.#byKid.has(hex(k.kid)))
      throw fail('CHAIN_KEY_REUSED', 'a RoT key appears twice', `records[${i}]`);
    const byKid = new Map(this.#byKid);
    byKid.set(hex(k.kid), k);
    return new RotChain([...this.keys, k], byKid, this.#opts);
  }

  get length(): number {
    return this.keys.length;
  }

  get root(): RotKey {
    return this.keys[0]!;
  }

  get current(): RotKey {
    return this.keys[this.keys.length - 1]!;
  }

  get records(): Uint8Array[] {
    return this.keys.map((k) => k.record);
  }

  byKid(kid: Uint8Array): RotKey | undefined {
    return this.#byKid.get(hex(kid));
  }
}

function verifyRecord(
  bytes: Uint8Array,
  prev: RotKey | undefined,
  i: number,
  opts: RotChainOptions,
  path: string,
): RotKey {
  const r = decodeRotRecord(bytes, path);
  if (r.index !== i) throw fail('CHAIN_INDEX', `record index ${r.index} at position ${i}`, path);
  if (!opts.allowedAlgs.has(r.alg))
    throw fail('CHAIN_ALG_NOT_ALLOWED', `RoT key alg ${r.alg} not allowed`, path);
  let verifier: Verifier;
  try {
    verifier = verifierFromCoseKey(r.key);
  } catch (e) {
    throw fail('CHAIN_MALFORMED', 'record key is not a usable signature key', path, e);
  }
  let signer: { kid: Uint8Array; verifier: Verifier };
  if (prev === undefined) {
    // Seed 002 step 1: the first RoT is pinned by the RTP; here its record must be self-signed.
    if (r.previous !== null) throw fail('CHAIN_PREVIOUS_KEY', 'the first record has a previous key', path);
    if (opts.anchor !== undefined && !bytesEqual(opts.anchor, r.kid)) {
      throw fail('CHAIN_ANCHOR_MISMATCH', 'the first RoT is not the pinned one', path);
    }
    signer = { kid: r.kid, verifier };
  } else {
    // Seed 002 step 2: record n names key n−1 as previous and is signed by it.
    if (r.previous === null || !bytesEqual(r.previous, prev.kid)) {
      throw fail('CHAIN_PREVIOUS_KEY', 'previous key id does not name the key before it', path);
    }
    if (r.time < prev.time) throw fail('CHAIN_TIME', 'record time goes backwards', path);
    signer = { kid: prev.kid, verifier: prev.verifier };
  }
  if (!bytesEqual(r.signerKid, signer.kid)) {
    throw fail('CHAIN_KID_MISMATCH', 'header kid is not the key that must sign this record', path);
  }
  if (!opts.allowedAlgs.has(r.signerAlg)) {
    throw fail('CHAIN_ALG_NOT_ALLOWED', `record signature alg ${r.signerAlg} not allowed`, path);
  }
  try {
    // RFC 9052 §4.4: signature over Sig_structure ["Signature1", protected, h'', payload].
    r.verifyWith(signer.verifier, opts.allowedAlgs);
  } catch (e) {
    if (isCoseError(e) && e.code !== 'COSE_BAD_SIGNATURE') {
      throw fail('CHAIN_ALG_NOT_ALLOWED', `record signature rejected: ${e.message}`, path, e);
    }
    throw fail('CHAIN_BAD_SIGNATURE', 'record signature does not verify', path, e);
  }
  return { index: i, kid: r.kid, key: r.key, alg: r.alg, time: r.time, verifier, record: bytes };
}
