/**
 * Key material inside the enclave: key types, derivation of RoT keys from seed material, and public-key views.
 * Private keys exist only as KeyObjects in the enclave process and, sealed, in its storage.
 */
import { createECDH, generateKeyPairSync, hkdfSync, type KeyObject } from 'node:crypto';
import {
  Alg,
  coseKeyFromKeyObject,
  coseKeyToKeyObject,
  Curve,
  encodeCoseKey,
  type CoseKey,
} from '@rotor/cose';
import { coseKeyThumbprint, rotPublicKey } from '@rotor/trust';
import { DeviceError } from '../errors.ts';

export const KEY_TYPES = ['ES256', 'EdDSA', 'ECDH-P256', 'ECDH-X25519'] as const;
export type KeyType = (typeof KEY_TYPES)[number];
export type KeyUse = 'sign' | 'agree';

export interface KeyTypeInfo {
  readonly use: KeyUse;
  /** COSE alg of signing keys. */
  readonly alg?: number;
  readonly curve: 'P-256' | 'Ed25519' | 'X25519';
  readonly crv: number;
}

export const KEY_TYPE_INFO: Readonly<Record<KeyType, KeyTypeInfo>> = {
  ES256: { use: 'sign', alg: Alg.ES256, curve: 'P-256', crv: Curve.P256 },
  EdDSA: { use: 'sign', alg: Alg.EdDSA, curve: 'Ed25519', crv: Curve.Ed25519 },
  'ECDH-P256': { use: 'agree', curve: 'P-256', crv: Curve.P256 },
  'ECDH-X25519': { use: 'agree', curve: 'X25519', crv: Curve.X25519 },
};

export function isKeyType(s: unknown): s is KeyType {
  return typeof s === 'string' && (KEY_TYPES as readonly string[]).includes(s);
}

export type RotAlg = 'ES256' | 'EdDSA';

/** The order n of the P-256 group (SEC 2 §2.4.2). */
const P256_N = 0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551n;
const ROT_SALT = Buffer.from('rotor/rot/v1');

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

/** A derived RoT key: private COSE_Key (sealed), its KeyObject, and the secret for session-key derivation. */
export interface RotMaterial {
  readonly type: RotAlg;
  readonly index: number;
  readonly key: CoseKey;
  readonly kdfSecret: Uint8Array;
}

/**
 * Derives RoT key material from seed material (seed 002 step 1: "generates a new RoT using the seed and internal
 * algorithms"). `ikm` is TRNG output, optionally followed by an external seed: HKDF-SHA-256 (RFC 5869) extracts
 * from the concatenation, so the result is at least as unpredictable as the TRNG part alone (NIST SP 800-133r2
 * §6.3 combining key material). For P-256 the private scalar uses 16 extra bits and reduction mod n−1, +1
 * (FIPS 186-5 §A.2.1, "key pair generation using extra random bits"); for Ed25519 the 32-byte seed is the key
 * (RFC 8032 §5.1.5). A second HKDF output is the RoT-bound secret for session keys (seed 002 step 3).
 */
export function deriveRotMaterial(type: RotAlg, ikm: Uint8Array, index: number): RotMaterial {
  const info = Buffer.concat([Buffer.from(`rot key ${type} `), u32(index)]);
  const okm = Buffer.from(hkdfSync('sha256', ikm, ROT_SALT, info, 48));
  const kdfSecret = new Uint8Array(
    hkdfSync('sha256', ikm, ROT_SALT, Buffer.concat([Buffer.from('rot session kdf '), u32(index)]), 32),
  );
  let d: Uint8Array;
  if (type === 'ES256') {
    const c = (BigInt(`0x${okm.toString('hex')}`) % (P256_N - 1n)) + 1n;
    d = new Uint8Array(Buffer.from(c.toString(16).padStart(64, '0'), 'hex'));
    // Public point from the scalar (createECDH computes d·G).
    const ecdh = createECDH('prime256v1');
    ecdh.setPrivateKey(d);
    const pub = ecdh.getPublicKey();
    const key: CoseKey = {
      kty: 2,
      crv: Curve.P256,
      x: new Uint8Array(pub.subarray(1, 33)),
      y: new Uint8Array(pub.subarray(33, 65)),
      d,
    };
    return { type, index, key, kdfSecret };
  }
  d = new Uint8Array(okm.subarray(0, 32));
  const ko = coseKeyToKeyObject({ kty: 1, crv: Curve.Ed25519, d });
  return { type, index, key: coseKeyFromKeyObject(ko, { includePrivate: true }), kdfSecret };
}

/** Generates a fresh key of `type` from the TRNG (node:crypto / OpenSSL's DRBG) as a private COSE_Key. */
export function generateSoftwareKey(type: KeyType): CoseKey {
  const t = KEY_TYPE_INFO[type];
  let pair: { privateKey: KeyObject };
  if (t.curve === 'P-256') pair = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  else if (t.curve === 'Ed25519') pair = generateKeyPairSync('ed25519');
  else pair = generateKeyPairSync('x25519');
  return coseKeyFromKeyObject(pair.privateKey, { includePrivate: true });
}

export function privateKeyObject(key: CoseKey): KeyObject {
  if (key.d === undefined) throw new DeviceError('INTERNAL', 'not a private key');
  return coseKeyToKeyObject(key);
}

/** Public view of a key: COSE_Key with kid = RFC 9679 thumbprint (and alg for signing keys). */
export interface PublicKeyInfo {
  readonly keyId: string;
  readonly type: KeyType;
  readonly backend: BackendName;
  /** Encoded public COSE_Key. */
  readonly publicKey: Uint8Array;
  readonly kid: Uint8Array;
}

export type BackendName = 'sealed' | 'pkcs11';

export function publicCose(key: CoseKey, type: KeyType): CoseKey {
  const t = KEY_TYPE_INFO[type];
  if (t.alg !== undefined) return rotPublicKey(key, t.alg);
  const pub: CoseKey = { kty: key.kty };
  if (key.crv !== undefined) pub.crv = key.crv;
  if (key.x !== undefined) pub.x = key.x;
  if (key.y !== undefined) pub.y = key.y;
  pub.kid = coseKeyThumbprint(pub);
  return pub;
}

export function publicInfo(keyId: string, type: KeyType, backend: BackendName, key: CoseKey): PublicKeyInfo {
  const pub = publicCose(key, type);
  return { keyId, type, backend, publicKey: encodeCoseKey(pub), kid: pub.kid! };
}
