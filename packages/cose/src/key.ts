/**
 * COSE_Key (RFC 9052 §7, RFC 9053 §7): strict decoding, deterministic encoding, and conversion to and from
 * node:crypto KeyObjects for EC2 (P-256, P-384, P-521), OKP (Ed25519, X25519, Ed448, X448) and symmetric keys.
 *
 * Strictness: only the labels defined for the key type are admitted (others, including Base IV and text
 * labels, are refused); every length must fit the curve; public points must be on the curve; a private key's
 * declared public part must match its private scalar; a declared `alg` must fit the key material.
 */
import {
  createECDH,
  createPrivateKey,
  createPublicKey,
  createSecretKey,
  type JsonWebKey,
  type KeyObject,
} from 'node:crypto';
import { algInfo, type AlgInfo } from './algorithms.ts';
import { CborMap, decode, encode } from './cbor.ts';
import { CoseError, type CoseErrorCode } from './errors.ts';
import { decodeCose } from './headers.ts';

export const KeyType = { OKP: 1, EC2: 2, Symmetric: 4 } as const;
export const Curve = { P256: 1, P384: 2, P521: 3, X25519: 4, X448: 5, Ed25519: 6, Ed448: 7 } as const;
/** key_ops values (RFC 9052 §7.1, Table 5). */
export const KeyOp = {
  sign: 1,
  verify: 2,
  encrypt: 3,
  decrypt: 4,
  wrapKey: 5,
  unwrapKey: 6,
  deriveKey: 7,
  deriveBits: 8,
  macCreate: 9,
  macVerify: 10,
} as const;

export interface CoseKey {
  kty: 1 | 2 | 4;
  kid?: Uint8Array;
  alg?: number;
  crv?: number;
  x?: Uint8Array;
  y?: Uint8Array;
  d?: Uint8Array;
  k?: Uint8Array;
  keyOps?: number[];
}

interface CurveInfo {
  readonly kty: 1 | 2;
  readonly jwk: string;
  /** Coordinate / key size in bytes. */
  readonly size: number;
  readonly use: 'signature' | 'ecdh';
  /** OpenSSL curve name for createECDH (EC2 only). */
  readonly ecdh?: string;
  /** PKCS#8 DER prefix to import a bare private key (OKP only). */
  readonly pkcs8?: string;
}

// RFC 9053 §7.1 (EC2 curves), §7.2 (OKP curves); RFC 8037 / RFC 8410 names.
const CURVES: ReadonlyMap<number, CurveInfo> = new Map<number, CurveInfo>([
  [1, { kty: 2, jwk: 'P-256', size: 32, use: 'signature', ecdh: 'prime256v1' }],
  [2, { kty: 2, jwk: 'P-384', size: 48, use: 'signature', ecdh: 'secp384r1' }],
  [3, { kty: 2, jwk: 'P-521', size: 66, use: 'signature', ecdh: 'secp521r1' }],
  [4, { kty: 1, jwk: 'X25519', size: 32, use: 'ecdh', pkcs8: '302e020100300506032b656e04220420' }],
  [5, { kty: 1, jwk: 'X448', size: 56, use: 'ecdh', pkcs8: '3046020100300506032b656f043a0438' }],
  [6, { kty: 1, jwk: 'Ed25519', size: 32, use: 'signature', pkcs8: '302e020100300506032b657004220420' }],
  [7, { kty: 1, jwk: 'Ed448', size: 57, use: 'signature', pkcs8: '3047020100300506032b6571043b0439' }],
]);

const JWK_TO_CRV: ReadonlyMap<string, number> = new Map([...CURVES].map(([id, c]) => [c.jwk, id]));

// RFC 9052 §7.1 common labels; RFC 9053 §7.1.1 (EC2), §7.2 (OKP), §7.3 (Symmetric).
const LABELS: Readonly<Record<1 | 2 | 4, ReadonlySet<number>>> = {
  1: new Set([1, 2, 3, 4, -1, -2, -4]),
  2: new Set([1, 2, 3, 4, -1, -2, -3, -4]),
  4: new Set([1, 2, 3, 4, -1]),
};

function invalid(msg: string, path: string): CoseError {
  return new CoseError('COSE_KEY_INVALID', msg, path);
}

function b64u(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('base64url');
}

function fromB64u(s: string | undefined, what: string): Uint8Array {
  if (s === undefined) throw new CoseError('COSE_KEY_INVALID', `key has no ${what}`);
  return new Uint8Array(Buffer.from(s, 'base64url'));
}

function keyBytes(v: unknown, name: string, path: string, len?: number): Uint8Array {
  if (!(v instanceof Uint8Array)) throw invalid(`${name} must be a bstr`, path);
  if (len !== undefined && v.length !== len)
    throw invalid(`${name} must be ${len} bytes, found ${v.length}`, path);
  return v;
}

/** Decodes a COSE_Key from bytes (any map key order, no duplicates) and validates it strictly. */
export function decodeCoseKey(bytes: Uint8Array): CoseKey {
  return parseCoseKey(decodeCose(bytes), '$');
}

/** Validates a decoded COSE_Key map (also used for ephemeral keys inside COSE headers). */
export function parseCoseKey(v: unknown, path: string): CoseKey {
  if (!(v instanceof CborMap)) throw invalid('COSE_Key must be a map', path);
  const kty = v.get(1);
  // RFC 9052 §7.1: kty is required. Rotor supports OKP (1), EC2 (2), Symmetric (4).
  if (kty !== 1 && kty !== 2 && kty !== 4)
    throw invalid(`unsupported or missing kty ${String(kty)}`, `${path}{1}`);
  const allowed = LABELS[kty];
  for (const [label] of v.entries) {
    if (typeof label !== 'number' || !allowed.has(label)) {
      throw invalid(
        `label ${typeof label === 'string' ? JSON.stringify(label) : String(label)} not admitted for kty ${kty}`,
        path,
      );
    }
  }
  const key: CoseKey = { kty };
  if (v.has(2)) key.kid = keyBytes(v.get(2), 'kid', `${path}{2}`);
  if (v.has(3)) {
    const alg = v.get(3);
    if (typeof alg === 'string')
      throw new CoseError('COSE_ALG_UNKNOWN', `unknown algorithm ${JSON.stringify(alg)}`, `${path}{3}`);
    if (typeof alg !== 'number' || !Number.isSafeInteger(alg))
      throw invalid('alg must be an int', `${path}{3}`);
    key.alg = alg;
  }
  if (v.has(4)) {
    const ops = v.get(4);
    if (!Array.isArray(ops) || ops.length === 0)
      throw invalid('key_ops must be a non-empty array', `${path}{4}`);
    key.keyOps = (ops as unknown[]).map((op, i) => {
      if (typeof op !== 'number' || !Number.isInteger(op) || op < 1 || op > 10) {
        throw invalid('key_ops value must be a registered integer (1..10)', `${path}{4}[${i}]`);
      }
      return op;
    });
  }
  if (kty === 4) {
    // RFC 9053 §7.3: k is required.
    key.k = keyBytes(v.get(-1), 'k', `${path}{-1}`);
    if (key.k.length === 0) throw invalid('k must not be empty', `${path}{-1}`);
  } else {
    const crv = v.get(-1);
    const ci = typeof crv === 'number' ? CURVES.get(crv) : undefined;
    if (ci?.kty !== kty || typeof crv !== 'number') {
      throw invalid(`curve ${String(crv)} not supported for kty ${kty}`, `${path}{-1}`);
    }
    key.crv = crv;
    if (v.has(-2)) key.x = keyBytes(v.get(-2), 'x', `${path}{-2}`, ci.size);
    if (kty === 2 && v.has(-3)) {
      const y = v.get(-3);
      // RFC 9053 §7.1.1: y may be a bool (point compression); Rotor does not decompress points.
      if (typeof y === 'boolean') throw invalid('compressed EC2 points are not supported', `${path}{-3}`);
      key.y = keyBytes(y, 'y', `${path}{-3}`, ci.size);
    }
    if (v.has(-4)) key.d = keyBytes(v.get(-4), 'd', `${path}{-4}`, ci.size);
    if (key.d === undefined) {
      // RFC 9053 §7.1.1 / §7.2: a public key needs x (and y for EC2).
      if (key.x === undefined || (kty === 2 && key.y === undefined))
        throw invalid('public key lacks x/y', path);
    } else if (kty === 2 && (key.x === undefined) !== (key.y === undefined)) {
      throw invalid('x and y must be present together', path);
    }
    // Point on the curve, and for private keys the public part matches d (via node:crypto import).
    validateAsymmetric(key, ci, path);
  }
  if (key.alg !== undefined) checkKeyForAlg(key, key.alg, 'COSE_KEY_INVALID', `${path}{3}`);
  return key;
}

function validateAsymmetric(key: CoseKey, ci: CurveInfo, path: string): void {
  try {
    if (key.d !== undefined) {
      const pub = publicFromPrivate(key, ci);
      if (key.x !== undefined && Buffer.compare(pub.x, key.x) !== 0)
        throw invalid('x does not match d', path);
      if (key.y !== undefined && pub.y !== undefined && Buffer.compare(pub.y, key.y) !== 0) {
        throw invalid('y does not match d', path);
      }
    } else {
      // createPublicKey refuses an EC point that is not on the curve.
      createPublicKey({ key: publicJwk(key, ci), format: 'jwk' });
    }
  } catch (e) {
    if (e instanceof CoseError) throw e;
    throw new CoseError('COSE_KEY_INVALID', 'key material rejected by node:crypto', path, { cause: e });
  }
}

function publicFromPrivate(key: CoseKey, ci: CurveInfo): { x: Uint8Array; y?: Uint8Array } {
  const d = key.d!;
  if (ci.kty === 2) {
    const ecdh = createECDH(ci.ecdh!);
    ecdh.setPrivateKey(d);
    const p = ecdh.getPublicKey();
    return { x: new Uint8Array(p.subarray(1, 1 + ci.size)), y: new Uint8Array(p.subarray(1 + ci.size)) };
  }
  const priv = createPrivateKey({
    key: Buffer.concat([Buffer.from(ci.pkcs8!, 'hex'), d]),
    format: 'der',
    type: 'pkcs8',
  });
  return { x: fromB64u(createPublicKey(priv).export({ format: 'jwk' }).x, 'x') };
}

function publicJwk(key: CoseKey, ci: CurveInfo): JsonWebKey {
  return ci.kty === 2
    ? { kty: 'EC', crv: ci.jwk, x: b64u(key.x!), y: b64u(key.y!) }
    : { kty: 'OKP', crv: ci.jwk, x: b64u(key.x!) };
}

/**
 * Checks that a key fits an algorithm (RFC 9052 §7.1 "alg"; RFC 9053 §2–§6 key requirements):
 * signature algorithms need their curve (ES256/ESP256: EC2 P-256; EdDSA/Ed25519: OKP Ed25519), symmetric
 * algorithms a symmetric key of exactly the algorithm's length (HMAC: at least the hash length), ECDH an
 * EC2 or X25519/X448 key. Throws `code` (COSE_KEY_MISMATCH by default; COSE_ALG_UNKNOWN for unknown ids).
 */
export function checkKeyForAlg(
  key: CoseKey,
  alg: number,
  code: CoseErrorCode = 'COSE_KEY_MISMATCH',
  path?: string,
): AlgInfo {
  const info = algInfo(alg, path);
  const fail = (why: string): never => {
    throw new CoseError(code, `key does not fit ${info.name}: ${why}`, path);
  };
  switch (info.kind) {
    case 'signature':
      if (info.family === 'P-256' && !(key.kty === 2 && key.crv === Curve.P256))
        fail('needs an EC2 P-256 key');
      if (info.family === 'Ed25519' && !(key.kty === 1 && key.crv === Curve.Ed25519))
        fail('needs an OKP Ed25519 key');
      break;
    case 'ecdh-key-wrap': {
      const ci = key.crv === undefined ? undefined : CURVES.get(key.crv);
      if (key.kty === 4 || ci?.use === undefined || (ci.kty === 1 && ci.use !== 'ecdh')) {
        fail('needs an EC2 or X25519/X448 key');
      }
      break;
    }
    case 'mac':
      if (key.kty !== 4 || key.k === undefined) fail('needs a symmetric key');
      // RFC 9053 §3.1: the key should be at least as long as the hash output.
      else if (key.k.length < info.keyLength!) fail(`key shorter than ${info.keyLength!} bytes`);
      break;
    case 'key-wrap':
    case 'content':
      if (key.kty !== 4 || key.k === undefined) fail('needs a symmetric key');
      // RFC 9053 §6.2.1 / §4.1 / §4.3, RFC 9459 §3: the key length is fixed by the algorithm.
      else if (key.k.length !== info.keyLength!)
        fail(`key of ${key.k.length} bytes, ${info.keyLength!} required`);
      break;
    case 'digest':
      fail('a digest algorithm takes no key');
  }
  return info;
}

/** Encodes a COSE_Key deterministically (RFC 8949 §4.2.1), after validating it like a decoded one. */
export function encodeCoseKey(key: CoseKey): Uint8Array {
  const m = coseKeyToMap(key);
  const bytes = encode(m);
  parseCoseKey(decode(bytes), '$');
  return bytes;
}

/** The COSE_Key as a CBOR map (integer labels), e.g. to embed as an ephemeral key in a header. */
export function coseKeyToMap(key: CoseKey): Map<number, unknown> {
  const m = new Map<number, unknown>([[1, key.kty]]);
  if (key.kid !== undefined) m.set(2, key.kid);
  if (key.alg !== undefined) m.set(3, key.alg);
  if (key.keyOps !== undefined) m.set(4, key.keyOps);
  if (key.kty === 4) {
    if (key.k !== undefined) m.set(-1, key.k);
  } else {
    if (key.crv !== undefined) m.set(-1, key.crv);
    if (key.x !== undefined) m.set(-2, key.x);
    if (key.y !== undefined) m.set(-3, key.y);
    if (key.d !== undefined) m.set(-4, key.d);
  }
  return m;
}

/** The public part of a COSE_Key (drops d; refuses symmetric keys). */
export function publicCoseKey(key: CoseKey): CoseKey {
  if (key.kty === 4) throw new CoseError('COSE_KEY_INVALID', 'a symmetric key has no public part');
  const ci = CURVES.get(key.crv!)!;
  const pub = key.x === undefined ? publicFromPrivate(key, ci) : { x: key.x, y: key.y };
  const out: CoseKey = { kty: key.kty, crv: key.crv!, x: pub.x };
  if (pub.y !== undefined) out.y = pub.y;
  if (key.kid !== undefined) out.kid = key.kid;
  if (key.alg !== undefined) out.alg = key.alg;
  return out;
}

/**
 * KeyObject for a COSE_Key: a private key when `d` is present, a public key for EC2/OKP without `d`,
 * a secret key for symmetric keys.
 */
export function coseKeyToKeyObject(key: CoseKey): KeyObject {
  if (key.kty === 4) {
    if (key.k === undefined) throw new CoseError('COSE_KEY_INVALID', 'symmetric key has no k');
    return createSecretKey(key.k);
  }
  const ci = key.crv === undefined ? undefined : CURVES.get(key.crv);
  if (ci?.kty !== key.kty) throw new CoseError('COSE_KEY_INVALID', `unsupported curve ${String(key.crv)}`);
  try {
    if (key.d === undefined) return createPublicKey({ key: publicJwk(key, ci), format: 'jwk' });
    const pub = key.x === undefined ? publicFromPrivate(key, ci) : { x: key.x, y: key.y };
    const jwk = publicJwk({ ...key, x: pub.x, y: pub.y }, ci);
    return createPrivateKey({ key: { ...jwk, d: b64u(key.d) }, format: 'jwk' });
  } catch (e) {
    throw new CoseError('COSE_KEY_INVALID', 'key material rejected by node:crypto', undefined, { cause: e });
  }
}

/** Public KeyObject for an EC2/OKP COSE_Key (derived from `d` when the key is private). */
export function coseKeyToPublicKeyObject(key: CoseKey): KeyObject {
  return coseKeyToKeyObject(publicCoseKey(key));
}

/**
 * COSE_Key of a KeyObject. Private material (d, k) is exported only with `includePrivate: true`; without it a
 * private asymmetric key yields its public COSE_Key and a secret key is refused.
 */
export function coseKeyFromKeyObject(
  ko: KeyObject,
  opts: { kid?: Uint8Array; alg?: number; keyOps?: number[]; includePrivate?: boolean } = {},
): CoseKey {
  let key: CoseKey;
  if (ko.type === 'secret') {
    if (opts.includePrivate !== true)
      throw new CoseError('COSE_KEY_INVALID', 'secret key export needs includePrivate');
    key = { kty: 4, k: new Uint8Array(ko.export()) };
  } else {
    const jwk = (ko.type === 'private' && opts.includePrivate !== true ? createPublicKey(ko) : ko).export({
      format: 'jwk',
    });
    const crv = jwk.crv === undefined ? undefined : JWK_TO_CRV.get(jwk.crv);
    if (crv === undefined || (jwk.kty !== 'EC' && jwk.kty !== 'OKP')) {
      throw new CoseError('COSE_KEY_INVALID', `unsupported key type ${String(jwk.kty)} ${String(jwk.crv)}`);
    }
    key = { kty: jwk.kty === 'EC' ? 2 : 1, crv, x: fromB64u(jwk.x, 'x') };
    if (jwk.kty === 'EC') key.y = fromB64u(jwk.y, 'y');
    if (jwk.d !== undefined) key.d = fromB64u(jwk.d, 'd');
  }
  if (opts.kid !== undefined) key.kid = opts.kid;
  if (opts.alg !== undefined) {
    checkKeyForAlg(key, opts.alg);
    key.alg = opts.alg;
  }
  if (opts.keyOps !== undefined) key.keyOps = opts.keyOps;
  return key;
}

/** COSE curve id of an asymmetric KeyObject (1 P-256, 4 X25519, 6 Ed25519, ...), or undefined. */
export function curveOfKeyObject(ko: KeyObject): number | undefined {
  if (ko.type === 'secret') return undefined;
  const t = ko.asymmetricKeyType;
  if (t === 'ec') {
    const nc = ko.asymmetricKeyDetails?.namedCurve;
    return nc === 'prime256v1' ? 1 : nc === 'secp384r1' ? 2 : nc === 'secp521r1' ? 3 : undefined;
  }
  return t === 'x25519' ? 4 : t === 'x448' ? 5 : t === 'ed25519' ? 6 : t === 'ed448' ? 7 : undefined;
}

const PEM_START = '-----BEGIN';

/**
 * Loads a public key from PEM (SPKI "PUBLIC KEY"; a private PEM yields its public key) or COSE_Key bytes
 * (a private COSE_Key yields its public key). Symmetric keys are refused.
 */
export function loadPublicKey(input: Uint8Array | string): KeyObject {
  const text =
    typeof input === 'string'
      ? input
      : input.length >= PEM_START.length &&
          Buffer.from(input.subarray(0, PEM_START.length)).toString('latin1') === PEM_START
        ? Buffer.from(input).toString('utf8')
        : undefined;
  if (text !== undefined) {
    try {
      return createPublicKey(text);
    } catch (e) {
      throw new CoseError('COSE_KEY_INVALID', 'PEM key rejected by node:crypto', undefined, { cause: e });
    }
  }
  return coseKeyToPublicKeyObject(decodeCoseKey(input as Uint8Array));
}
