/**
 * Signing X.509 structures with a key that never leaves its store. @peculiar/x509 builds the TBSCertificate /
 * CertificationRequestInfo and calls `crypto.subtle.sign(alg, key, tbs)` of the crypto provider it is given; we give
 * it a provider whose `sign` and `exportKey` recognise "signer keys" (a COSE Signer plus its public key) and route
 * the signature to the Signer (a PKCS#11 token, the device enclave), everything else to Node's WebCrypto. Chosen over
 * hand-encoding the TBS: the library keeps the DER encoding (RFC 5280 §4.1, RFC 2986 §4) and the ECDSA r‖s →
 * Ecdsa-Sig-Value conversion (RFC 5480 §2.2 / RFC 3279 §2.2.3); we keep only the key.
 */
import 'reflect-metadata';
import { webcrypto } from 'node:crypto';
import type { Signer } from '@rotor/cose';
import { ServerError } from '../errors.ts';

export type SignerKeyType = 'P-256' | 'Ed25519';

type CryptoKey = webcrypto.CryptoKey;
type Crypto = webcrypto.Crypto;
type BufferSource = webcrypto.BufferSource;

const SIGNER = Symbol('rotor.signer');

interface SignerKey {
  readonly [SIGNER]: { readonly signer: Signer; readonly spki: Uint8Array };
  readonly algorithm: { name: string; namedCurve?: string; hash?: string };
  readonly type: 'private' | 'public';
  readonly extractable: false;
  readonly usages: string[];
}

/** WebCrypto algorithm of a key type (the x509 library derives the X.509 signature algorithm from it). */
function algorithmOf(type: SignerKeyType): SignerKey['algorithm'] {
  // RFC 5758 §3.2 ecdsa-with-SHA256 for P-256; RFC 8410 §3 id-Ed25519 (no separate hash).
  return type === 'P-256' ? { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } : { name: 'Ed25519' };
}

function isSignerKey(k: unknown): k is SignerKey {
  return typeof k === 'object' && k !== null && SIGNER in k;
}

/** A pair of "CryptoKeys" standing for a Signer and its public key (SPKI DER). */
export function signerKeys(
  signer: Signer,
  spki: Uint8Array,
  type: SignerKeyType,
): { privateKey: CryptoKey; publicKey: CryptoKey } {
  // COSE alg ids: -7 ES256 (RFC 9053 §2.1), -8 EdDSA (§2.2); a mismatch would produce an unverifiable signature.
  if ((type === 'P-256' && signer.alg !== -7) || (type === 'Ed25519' && signer.alg !== -8))
    throw new ServerError('INTERNAL', `signer algorithm ${signer.alg} does not fit a ${type} key`);
  const mk = (kind: 'private' | 'public'): CryptoKey => {
    const k: SignerKey = {
      [SIGNER]: { signer, spki },
      algorithm: algorithmOf(type),
      type: kind,
      extractable: false,
      usages: kind === 'private' ? ['sign'] : ['verify'],
    };
    return k as unknown as CryptoKey;
  };
  return { privateKey: mk('private'), publicKey: mk('public') };
}

const subtle = webcrypto.subtle;

/** The crypto provider to pass to @peculiar/x509 generators and verifiers. */
export const signerCrypto: Crypto = {
  getRandomValues: <T extends ArrayBufferView | null>(a: T): T => webcrypto.getRandomValues(a as never),
  randomUUID: () => webcrypto.randomUUID(),
  subtle: new Proxy(subtle, {
    get(target, prop): unknown {
      if (prop === 'sign') {
        return async (alg: unknown, key: unknown, data: BufferSource): Promise<ArrayBuffer> => {
          if (!isSignerKey(key)) return subtle.sign(alg as never, key as CryptoKey, data);
          const view = data;
          const bytes =
            view instanceof ArrayBuffer
              ? new Uint8Array(view)
              : new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
          const sig = await key[SIGNER].signer.sign(bytes);
          return sig.slice().buffer;
        };
      }
      if (prop === 'exportKey') {
        return (format: string, key: unknown): Promise<unknown> => {
          if (!isSignerKey(key)) return subtle.exportKey(format as never, key as CryptoKey);
          if (format !== 'spki' || key.type !== 'public')
            return Promise.reject(new ServerError('INTERNAL', 'a signer key exports only its public SPKI'));
          return Promise.resolve(key[SIGNER].spki.slice().buffer);
        };
      }
      const v = Reflect.get(target, prop, target) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  }),
};
