/**
 * COSE_Sign (RFC 9052 §4.1): one or more signers, tag 98. Sig_structure per RFC 9052 §4.4 with context
 * "Signature", covering the body protected bucket and the signer's protected bucket.
 */
import { algInfoOfKind } from './algorithms.ts';
import { CborTag, encode, type CborMap } from './cbor.ts';
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
} from './headers.ts';
import type { Signer, Verifier } from './keys.ts';
import { checkSignature, type CoseDecodeOptions, type SignatureVerifyOptions } from './sign1.ts';

export const COSE_SIGN_TAG = 98;

export interface CoseSignatureEntry {
  protectedBytes: Uint8Array;
  protectedHeaders: CborMap;
  unprotectedHeaders: CborMap;
  signature: Uint8Array;
  alg: number;
  kid: Uint8Array | undefined;
}

export interface SignMessage {
  protectedBytes: Uint8Array;
  protectedHeaders: CborMap;
  unprotectedHeaders: CborMap;
  payload: Uint8Array | null;
  signatures: CoseSignatureEntry[];
}

export interface SignCreateOptions {
  detached?: boolean;
  externalAad?: Uint8Array;
  /** Body-level protected header parameters (shared by all signers). */
  protectedExtra?: Map<number, unknown>;
  unprotected?: Map<number, unknown>;
  tagged?: boolean;
}

const EMPTY = new Uint8Array(0);

/** Sig_structure for COSE_Sign: ["Signature", body_protected, sign_protected, external_aad, payload] (§4.4). */
export function sigStructure(
  bodyProtected: Uint8Array,
  signProtected: Uint8Array,
  externalAad: Uint8Array,
  payload: Uint8Array,
): Uint8Array {
  return encode(['Signature', bodyProtected, signProtected, externalAad, payload]);
}

/** Decodes a COSE_Sign and checks the headers of the body and of every COSE_Signature. */
export function decodeSign(bytes: Uint8Array, opts: CoseDecodeOptions = {}): SignMessage {
  const top = decodeCose(bytes, opts.maxSize);
  const a = structArray(
    untag(top, COSE_SIGN_TAG, opts.tag ?? 'optional', 'COSE_Sign'),
    4,
    4,
    'COSE_Sign',
    '$',
  );
  const body = parseHeaders(a[0], a[1], '$', opts);
  // RFC 9052 §4.1: signatures = [+ COSE_Signature]
  const sigs = structArray(a[3], 1, Number.MAX_SAFE_INTEGER, 'signatures', '$[3]');
  const signatures = sigs.map((s, i): CoseSignatureEntry => {
    const path = `$[3][${i}]`;
    const sa = structArray(s, 3, 3, 'COSE_Signature', path);
    const h = parseHeaders(sa[0], sa[1], path, opts);
    // RFC 9052 §3.1: the signer's alg must be authenticated (protected).
    if (h.alg === undefined || !h.algProtected) {
      throw new CoseError('COSE_HEADER_INVALID', 'alg must be present in the protected bucket', `${path}[0]`);
    }
    return {
      protectedBytes: h.protectedBytes,
      protectedHeaders: h.protectedHeaders,
      unprotectedHeaders: h.unprotectedHeaders,
      signature: structBytes(sa[2], 'signature', `${path}[2]`),
      alg: h.alg,
      kid: h.kid,
    };
  });
  return {
    protectedBytes: body.protectedBytes,
    protectedHeaders: body.protectedHeaders,
    unprotectedHeaders: body.unprotectedHeaders,
    payload: structBytesOrNil(a[2], 'payload', '$[2]'),
    signatures,
  };
}

/** Verifies the signature at `index` with `verifier` (each signer is verified independently, RFC 9052 §4.1). */
export function verifySignature(
  msg: SignMessage,
  index: number,
  verifier: Verifier,
  opts: SignatureVerifyOptions,
): void {
  const entry = msg.signatures[index];
  if (entry === undefined) throw new CoseError('COSE_NO_KEY', `no signature at index ${index}`);
  const payload = selectPayload(msg.payload, opts.detachedPayload);
  checkSignature(
    entry.alg,
    () => sigStructure(msg.protectedBytes, entry.protectedBytes, opts.externalAad ?? EMPTY, payload),
    entry.signature,
    verifier,
    opts.allowedAlgs,
    `$[3][${index}]`,
  );
}

/** Creates a COSE_Sign with one COSE_Signature per signer (alg protected, kid unprotected in each). */
export async function createSign(
  payload: Uint8Array,
  signers: readonly Signer[],
  opts: SignCreateOptions = {},
): Promise<Uint8Array> {
  if (signers.length === 0) throw new CoseError('COSE_MALFORMED', 'COSE_Sign needs at least one signer');
  const bodyProtected = new Map(opts.protectedExtra ?? []);
  const bodyUnprotected = new Map(opts.unprotected ?? []);
  for (const k of bodyUnprotected.keys()) {
    if (bodyProtected.has(k))
      throw new CoseError('COSE_HEADER_INVALID', `header label ${k} is in both buckets`);
  }
  const bodyProtectedBytes = protectedBytesOf(bodyProtected, encode);
  const aad = opts.externalAad ?? EMPTY;
  const signatures = await Promise.all(
    signers.map(async (signer) => {
      algInfoOfKind(signer.alg, 'signature');
      const { protectedMap, unprotected } = buildHeaders(signer.alg, signer.kid, undefined, undefined);
      const signProtected = protectedBytesOf(protectedMap, encode);
      const sig = await signer.sign(sigStructure(bodyProtectedBytes, signProtected, aad, payload));
      return [signProtected, unprotected, sig];
    }),
  );
  const body = [bodyProtectedBytes, bodyUnprotected, opts.detached === true ? null : payload, signatures];
  return encode(opts.tagged === false ? body : new CborTag(COSE_SIGN_TAG, body));
}
