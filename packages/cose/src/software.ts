/**
 * Software key backends over node:crypto: the Signer / Verifier / MacKey / KeyUnwrapper / KeyAgreement
 * contracts of keys.ts for keys held in this process. Key material stays in KeyObjects captured by closures;
 * no returned object exposes private or secret bytes.
 */
import {
  createCipheriv,
  createDecipheriv,
  createHmac,
  createPublicKey,
  createSecretKey,
  diffieHellman,
  generateKeyPairSync,
  sign as cryptoSign,
  verify as cryptoVerify,
  type JsonWebKey,
  type KeyObject,
} from 'node:crypto';
import { algInfoOfKind, sameSignatureFamily, type AlgInfo } from './algorithms.ts';
import { CoseError } from './errors.ts';
import {
  checkKeyForAlg,
  coseKeyToPublicKeyObject,
  curveOfKeyObject,
  Curve,
  KeyOp,
  type CoseKey,
} from './key.ts';
import type { KeyAgreement, KeyUnwrapper, MacKey, Signer, Verifier } from './keys.ts';

/** RFC 3394 §2.2.3.1 default initial value. */
const AES_KW_IV = Buffer.from('A6A6A6A6A6A6A6A6', 'hex');

function toBuffer(b: Uint8Array): Buffer {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength);
}

function toU8(b: Buffer): Uint8Array {
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

/** Checks that an asymmetric KeyObject suits a signature algorithm (COSE_KEY_MISMATCH otherwise). */
function checkSignatureKey(ko: KeyObject, alg: number): AlgInfo {
  const info = algInfoOfKind(alg, 'signature');
  const crv = curveOfKeyObject(ko);
  const ok = info.family === 'P-256' ? crv === Curve.P256 : crv === Curve.Ed25519;
  if (!ok) {
    throw new CoseError('COSE_KEY_MISMATCH', `${info.name} needs a ${info.family!} key`);
  }
  return info;
}

/** A Signer over a private KeyObject (P-256 for ES256/ESP256, Ed25519 for EdDSA/Ed25519). */
export function softwareSigner(privateKey: KeyObject, alg: number, kid?: Uint8Array): Signer {
  if (privateKey.type !== 'private') throw new CoseError('COSE_KEY_MISMATCH', 'a Signer needs a private key');
  const info = checkSignatureKey(privateKey, alg);
  // RFC 9053 §2.1: ECDSA signatures are the raw r‖s concatenation, not DER.
  const keyArg = info.hash === null ? privateKey : { key: privateKey, dsaEncoding: 'ieee-p1363' as const };
  const hash = info.hash ?? null;
  return {
    alg,
    kid,
    sign(toBeSigned: Uint8Array): Promise<Uint8Array> {
      return new Promise((resolve, reject) => {
        cryptoSign(hash, toBeSigned, keyArg, (err, sig) => {
          if (err) reject(err);
          else resolve(toU8(sig));
        });
      });
    },
  };
}

/**
 * A Verifier over a public KeyObject (a private key is reduced to its public key). The key options object is
 * built once so that `verify` costs one `crypto.verify`.
 */
export function softwareVerifier(publicKey: KeyObject, alg: number, kid?: Uint8Array): Verifier {
  const pub = publicKey.type === 'private' ? createPublicKey(publicKey) : publicKey;
  if (pub.type !== 'public') throw new CoseError('COSE_KEY_MISMATCH', 'a Verifier needs a public key');
  const info = checkSignatureKey(pub, alg);
  const sigLen = info.outputLength!;
  const hash = info.hash ?? null;
  return {
    alg,
    kid,
    verify(toBeSigned: Uint8Array, signature: Uint8Array): boolean {
      // RFC 9053 §2.1 / §2.2: ECDSA P-256 and Ed25519 signatures are exactly 64 bytes.
      if (signature.length !== sigLen) return false;
      try {
        // ECDSA: COSE's r‖s (RFC 9053 §2.1) is re-encoded as the DER Ecdsa-Sig-Value (RFC 3279 §2.2.3) and the
        // bare KeyObject is passed: node's options-object path ({ key, dsaEncoding }) costs ~30% of a P-256 verify.
        return cryptoVerify(hash, toBeSigned, pub, hash === null ? signature : p1363ToDer(signature));
      } catch {
        return false;
      }
    },
  };
}

/**
 * Converts a fixed-size ECDSA signature r‖s (IEEE P1363, as COSE carries it) into the DER SEQUENCE of two INTEGERs
 * (RFC 3279 §2.2.3): minimal big-endian integers, a 0x00 prefix where the top bit is set. Lengths stay below 128
 * for P-256/P-384, so every length is one byte.
 */
export function p1363ToDer(sig: Uint8Array): Uint8Array {
  const half = sig.length >> 1;
  let rs = 0;
  while (rs < half - 1 && sig[rs] === 0) rs++;
  let ss = half;
  while (ss < sig.length - 1 && sig[ss] === 0) ss++;
  const rPad = sig[rs]! & 0x80 ? 1 : 0;
  const sPad = sig[ss]! & 0x80 ? 1 : 0;
  const rLen = half - rs + rPad;
  const sLen = sig.length - ss + sPad;
  const out = new Uint8Array(6 + rLen + sLen);
  out[0] = 0x30;
  out[1] = 4 + rLen + sLen;
  out[2] = 0x02;
  out[3] = rLen;
  out.set(sig.subarray(rs, half), 4 + rPad);
  const o = 4 + rLen;
  out[o] = 0x02;
  out[o + 1] = sLen;
  out.set(sig.subarray(ss), o + 2 + sPad);
  return out;
}

/**
 * A Verifier for a COSE_Key. `alg` defaults to the key's alg; if both are given they must be the same signature
 * family. A key without alg needs `alg` (no default). key_ops, when present, must include verify (RFC 9052 §7.1).
 */
export function verifierFromCoseKey(key: CoseKey, alg?: number): Verifier {
  const useAlg = alg ?? key.alg;
  if (useAlg === undefined)
    throw new CoseError('COSE_KEY_MISMATCH', 'the COSE_Key has no alg and none was given');
  if (key.alg !== undefined && !sameSignatureFamily(key.alg, useAlg)) {
    throw new CoseError('COSE_KEY_MISMATCH', `key declared for alg ${key.alg}, not usable with ${useAlg}`);
  }
  checkKeyForAlg(key, useAlg);
  if (key.keyOps !== undefined && !key.keyOps.includes(KeyOp.verify)) {
    throw new CoseError('COSE_KEY_MISMATCH', 'key_ops does not include verify');
  }
  return softwareVerifier(coseKeyToPublicKeyObject(key), useAlg, key.kid);
}

/** An HMAC MacKey (HMAC 256/256 alg 5; 384, 512). The secret is copied into a KeyObject. */
export function softwareMacKey(secret: Uint8Array | KeyObject, alg: number, kid?: Uint8Array): MacKey {
  const info = algInfoOfKind(alg, 'mac');
  const ko = secret instanceof Uint8Array ? createSecretKey(Buffer.from(secret)) : secret;
  if (ko.type !== 'secret') throw new CoseError('COSE_KEY_MISMATCH', 'an HMAC key must be a secret key');
  // RFC 9053 §3.1: keys shorter than the hash output weaken HMAC; Rotor refuses them.
  if (ko.symmetricKeySize! < info.keyLength!) {
    throw new CoseError('COSE_KEY_MISMATCH', `${info.name} needs a key of at least ${info.keyLength!} bytes`);
  }
  const hash = info.hash!;
  return {
    alg,
    kid,
    mac(toBeMaced: Uint8Array): Promise<Uint8Array> {
      return Promise.resolve(toU8(createHmac(hash, ko).update(toBeMaced).digest()));
    },
  };
}

function kwInfo(kek: Uint8Array | KeyObject, alg: number): { info: AlgInfo; key: KeyObject | Buffer } {
  const info = algInfoOfKind(alg, 'key-wrap');
  const len =
    kek instanceof Uint8Array ? kek.length : kek.type === 'secret' ? kek.symmetricKeySize : undefined;
  // RFC 9053 §6.2.1: the KEK length is fixed by the algorithm.
  if (len !== info.keyLength) {
    throw new CoseError('COSE_KEY_MISMATCH', `${info.name} needs a ${info.keyLength!}-byte KEK`);
  }
  return { info, key: kek instanceof Uint8Array ? toBuffer(kek) : kek };
}

/** AES Key Wrap (RFC 3394) of `cek` under `kek`. */
export function aesKeyWrap(kek: Uint8Array | KeyObject, cek: Uint8Array, alg: number): Uint8Array {
  const { info, key } = kwInfo(kek, alg);
  // RFC 3394 §2: the key data is at least two 64-bit blocks, a whole number of blocks.
  if (cek.length < 16 || cek.length % 8 !== 0) {
    throw new CoseError('COSE_KEY_INVALID', 'AES-KW key data must be a multiple of 8 bytes, at least 16');
  }
  const c = createCipheriv(info.cipher!, key, AES_KW_IV);
  return toU8(Buffer.concat([c.update(cek), c.final()]));
}

/** AES Key Unwrap (RFC 3394); integrity failure is COSE_DECRYPT_FAILED. */
export function aesKeyUnwrap(kek: Uint8Array | KeyObject, wrapped: Uint8Array, alg: number): Uint8Array {
  const { info, key } = kwInfo(kek, alg);
  if (wrapped.length < 24 || wrapped.length % 8 !== 0) {
    throw new CoseError('COSE_DECRYPT_FAILED', 'wrapped key length is not a valid AES-KW output length');
  }
  try {
    const d = createDecipheriv(info.cipher!, key, AES_KW_IV);
    return toU8(Buffer.concat([d.update(wrapped), d.final()]));
  } catch (e) {
    // RFC 3394 §2.2.3: the integrity check value did not match.
    throw new CoseError('COSE_DECRYPT_FAILED', 'AES key unwrap integrity check failed', undefined, {
      cause: e,
    });
  }
}

/** A KeyUnwrapper for an AES-KW KEK (A128KW -3, A192KW -4, A256KW -5). */
export function softwareKeyUnwrapper(
  kek: Uint8Array | KeyObject,
  alg: number,
  kid?: Uint8Array,
): KeyUnwrapper {
  const key = kek instanceof Uint8Array ? createSecretKey(Buffer.from(kek)) : kek;
  kwInfo(key, alg);
  return {
    alg,
    kid,
    unwrap(wrapped: Uint8Array): Promise<Uint8Array> {
      // A throw inside the executor rejects the promise (COSE_DECRYPT_FAILED on integrity failure).
      return new Promise((resolve) => {
        resolve(aesKeyUnwrap(key, wrapped, alg));
      });
    },
  };
}

/** The ECDH curve name of a KeyObject for the KeyAgreement contract, or COSE_KEY_MISMATCH. */
export function agreementCurve(ko: KeyObject): 'P-256' | 'X25519' {
  const crv = curveOfKeyObject(ko);
  if (crv === Curve.P256) return 'P-256';
  if (crv === Curve.X25519) return 'X25519';
  throw new CoseError('COSE_KEY_MISMATCH', 'ECDH needs a P-256 or X25519 key');
}

/** Public KeyObject of a peer's raw public key: uncompressed SEC1 point (P-256) or 32 raw bytes (X25519). */
export function rawPublicKeyToKeyObject(curve: 'P-256' | 'X25519', raw: Uint8Array): KeyObject {
  let jwk: JsonWebKey;
  if (curve === 'P-256') {
    if (raw.length !== 65 || raw[0] !== 0x04) {
      throw new CoseError('COSE_KEY_INVALID', 'P-256 public key must be a 65-byte uncompressed point');
    }
    jwk = {
      kty: 'EC',
      crv: 'P-256',
      x: toBuffer(raw.subarray(1, 33)).toString('base64url'),
      y: toBuffer(raw.subarray(33)).toString('base64url'),
    };
  } else {
    if (raw.length !== 32) throw new CoseError('COSE_KEY_INVALID', 'X25519 public key must be 32 bytes');
    jwk = { kty: 'OKP', crv: 'X25519', x: toBuffer(raw).toString('base64url') };
  }
  try {
    // node:crypto refuses EC points that are not on the curve.
    return createPublicKey({ key: jwk, format: 'jwk' });
  } catch (e) {
    throw new CoseError('COSE_KEY_INVALID', 'peer public key rejected', undefined, { cause: e });
  }
}

/** A KeyAgreement over a static P-256 or X25519 private key. */
export function softwareKeyAgreement(privateKey: KeyObject, kid?: Uint8Array): KeyAgreement {
  if (privateKey.type !== 'private')
    throw new CoseError('COSE_KEY_MISMATCH', 'key agreement needs a private key');
  const curve = agreementCurve(privateKey);
  return {
    curve,
    kid,
    deriveSharedSecret(peerPublicKey: Uint8Array): Promise<Uint8Array> {
      try {
        const pub = rawPublicKeyToKeyObject(curve, peerPublicKey);
        return Promise.resolve(toU8(diffieHellman({ privateKey, publicKey: pub })));
      } catch (e) {
        if (e instanceof CoseError) return Promise.reject(e);
        // e.g. an X25519 low-order point yields an all-zero secret, which OpenSSL refuses (RFC 7748 §6.1).
        return Promise.reject(new CoseError('COSE_KEY_INVALID', 'ECDH failed', undefined, { cause: e }));
      }
    },
  };
}

/** Generates a signing key pair for ES256/ESP256 (P-256) or EdDSA/Ed25519 (Ed25519). */
export function generateSigningKey(alg: number): { privateKey: KeyObject; publicKey: KeyObject } {
  const info = algInfoOfKind(alg, 'signature');
  return info.family === 'P-256'
    ? generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
    : generateKeyPairSync('ed25519');
}

/** Generates a static key-agreement key pair (P-256 or X25519) for ECDH-ES recipients. */
export function generateAgreementKey(curve: 'P-256' | 'X25519'): {
  privateKey: KeyObject;
  publicKey: KeyObject;
} {
  return curve === 'P-256'
    ? generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
    : generateKeyPairSync('x25519');
}
