/**
 * COSE_Sign1 (RFC 9052 §4.2): one signer, tag 18. Sig_structure per RFC 9052 §4.4.
 */
import { assertAllowed, sameSignatureFamily, algInfoOfKind } from './algorithms.ts';
import { bstrHead, CborMap, CborTag, encode } from './cbor.ts';
import { CoseError } from './errors.ts';
import {
  buildHeaders,
  decodeCose,
  parseHeaders,
  protectedBytesOf,
  selectPayload,
  structArray,
  structBytes,
  structBytesOrNil,
  untag,
  type HeaderOptions,
} from './headers.ts';
import type { Signer, Verifier } from './keys.ts';

export const COSE_SIGN1_TAG = 18;

export type TagPolicy = 'required' | 'optional' | 'forbidden';

export interface Sign1Message {
  protectedBytes: Uint8Array;
  protectedHeaders: CborMap;
  unprotectedHeaders: CborMap;
  payload: Uint8Array | null;
  signature: Uint8Array;
  alg: number;
  kid: Uint8Array | undefined;
}

export interface CoseDecodeOptions extends HeaderOptions {
  /** Whether the CBOR tag must, may or must not be present (default 'optional'). */
  tag?: TagPolicy;
  /** Largest accepted input in bytes (default: the CBOR decoder's 1 MiB). */
  maxSize?: number;
}

export interface SignatureVerifyOptions {
  /** Algorithms the caller accepts; the message's alg must be in it (always required: no default set). */
  allowedAlgs: ReadonlySet<number>;
  /** The content when the message carries a nil payload (RFC 9052 §2 detached content). */
  detachedPayload?: Uint8Array;
  /** Externally supplied data (RFC 9052 §4.3), default empty. */
  externalAad?: Uint8Array;
}

export interface Sign1CreateOptions {
  /** Leave the payload out of the message (nil); the verifier supplies it. */
  detached?: boolean;
  externalAad?: Uint8Array;
  /** Extra protected header parameters (alg is set from the signer). */
  protectedExtra?: Map<number, unknown>;
  /** Unprotected header parameters (kid is set from the signer). */
  unprotected?: Map<number, unknown>;
  /** Emit COSE_Sign1_Tagged (default true). */
  tagged?: boolean;
}

const EMPTY = new Uint8Array(0);

/** 0x84 (array of 4) followed by the text string "Signature1". */
const SIG1_PREFIX: Uint8Array = (() => {
  const head = encode(['Signature1']);
  head[0] = 0x84;
  return head;
})();

/** Sig_structure for COSE_Sign1: ["Signature1", body_protected, external_aad, payload] (RFC 9052 §4.4). */
export function sigStructure1(
  protectedBytes: Uint8Array,
  externalAad: Uint8Array,
  payload: Uint8Array,
): Uint8Array {
  // Hand-assembled (one allocation, on the verification hot path); byte-identical to
  // encode(['Signature1', protectedBytes, externalAad, payload]), which the tests check.
  const out = new Uint8Array(
    SIG1_PREFIX.length +
      bstrHeadLength(protectedBytes.length) +
      protectedBytes.length +
      bstrHeadLength(externalAad.length) +
      externalAad.length +
      bstrHeadLength(payload.length) +
      payload.length,
  );
  out.set(SIG1_PREFIX, 0);
  let o = putBstr(out, SIG1_PREFIX.length, protectedBytes);
  o = putBstr(out, o, externalAad);
  putBstr(out, o, payload);
  return out;
}

/** Length of the preferred-encoding head of a bstr of `n` bytes (RFC 8949 §4.2.1). */
function bstrHeadLength(n: number): number {
  return n < 24 ? 1 : n < 0x100 ? 2 : n < 0x10000 ? 3 : n <= 0xffffffff ? 5 : 9;
}

/** Writes a bstr (preferred head, then the bytes) at `o`; returns the offset after it. */
function putBstr(out: Uint8Array, o: number, b: Uint8Array): number {
  const n = b.length;
  if (n < 24) out[o++] = 0x40 | n;
  else if (n < 0x100) {
    out[o++] = 0x58;
    out[o++] = n;
  } else if (n < 0x10000) {
    out[o++] = 0x59;
    out[o++] = n >>> 8;
    out[o++] = n & 0xff;
  } else if (n <= 0xffffffff) {
    out[o++] = 0x5a;
    out[o++] = n >>> 24;
    out[o++] = (n >>> 16) & 0xff;
    out[o++] = (n >>> 8) & 0xff;
    out[o++] = n & 0xff;
  } else {
    const h = bstrHead(n);
    out.set(h, o);
    o += h.length;
  }
  out.set(b, o);
  return o + n;
}

/** Decodes a COSE_Sign1 and checks its headers; the signature is checked by verifySign1. */
export function decodeSign1(bytes: Uint8Array, opts: CoseDecodeOptions = {}): Sign1Message {
  const top = decodeCose(bytes, opts.maxSize);
  const a = structArray(
    untag(top, COSE_SIGN1_TAG, opts.tag ?? 'optional', 'COSE_Sign1'),
    4,
    4,
    'COSE_Sign1',
    '$',
  );
  const h = parseHeaders(a[0], a[1], '$', opts);
  // RFC 9052 §3.1: alg "MUST be authenticated where the ability to do so exists" — i.e. protected.
  if (h.alg === undefined || !h.algProtected) {
    throw new CoseError('COSE_HEADER_INVALID', 'alg must be present in the protected bucket', '$[0]');
  }
  return {
    protectedBytes: h.protectedBytes,
    protectedHeaders: h.protectedHeaders,
    unprotectedHeaders: h.unprotectedHeaders,
    payload: structBytesOrNil(a[2], 'payload', '$[2]'),
    signature: structBytes(a[3], 'signature', '$[3]'),
    alg: h.alg,
    kid: h.kid,
  };
}

/**
 * Checks a signature made with `alg` by `verifier` over `toBeSigned`: alg known and allowed, a signature
 * algorithm, of the verifier's key family; then the signature itself.
 */
export function checkSignature(
  alg: number,
  toBeSigned: () => Uint8Array,
  signature: Uint8Array,
  verifier: Verifier,
  allowedAlgs: ReadonlySet<number>,
  path: string,
): void {
  // Unknown → COSE_ALG_UNKNOWN; known but not allowed → COSE_ALG_NOT_ALLOWED (never a default algorithm).
  assertAllowed(alg, allowedAlgs, path);
  algInfoOfKind(alg, 'signature', path);
  // RFC 9052 §8.1 / RFC 9053 §2: the key must be of the type the algorithm requires. ES256 ≡ ESP256 and
  // EdDSA ≡ Ed25519 for P-256 / Ed25519 keys (fully-specified algorithms draft).
  if (!sameSignatureFamily(verifier.alg, alg)) {
    throw new CoseError('COSE_KEY_MISMATCH', `key for alg ${verifier.alg} cannot verify alg ${alg}`, path);
  }
  if (!verifier.verify(toBeSigned(), signature)) {
    throw new CoseError('COSE_BAD_SIGNATURE', 'signature does not verify', path);
  }
}

/** Verifies a decoded COSE_Sign1 (RFC 9052 §4.4). Throws COSE_ALG_*, COSE_KEY_MISMATCH or COSE_BAD_SIGNATURE. */
export function verifySign1(msg: Sign1Message, verifier: Verifier, opts: SignatureVerifyOptions): void {
  const payload = selectPayload(msg.payload, opts.detachedPayload);
  checkSignature(
    msg.alg,
    () => sigStructure1(msg.protectedBytes, opts.externalAad ?? EMPTY, payload),
    msg.signature,
    verifier,
    opts.allowedAlgs,
    '$',
  );
}

/** Creates a COSE_Sign1: alg (from the signer) protected, kid (from the signer) unprotected label 4. */
export async function createSign1(
  payload: Uint8Array,
  signer: Signer,
  opts: Sign1CreateOptions = {},
): Promise<Uint8Array> {
  algInfoOfKind(signer.alg, 'signature');
  const { protectedMap, unprotected } = buildHeaders(
    signer.alg,
    signer.kid,
    opts.protectedExtra,
    opts.unprotected,
  );
  const protectedBytes = protectedBytesOf(protectedMap, encode);
  const signature = await signer.sign(sigStructure1(protectedBytes, opts.externalAad ?? EMPTY, payload));
  const body = [protectedBytes, unprotected, opts.detached === true ? null : payload, signature];
  return encode(opts.tagged === false ? body : new CborTag(COSE_SIGN1_TAG, body));
}
