/**
 * The signed-document envelope shared by the capability manifest and the module revocation list: a tagged
 * COSE_Sign1 (RFC 9052 §4.2) with protected { 1: alg, 3: content type, 4: signer kid } and an attached CBOR
 * payload. The content type in the protected bucket keeps one kind of document from being passed off as another
 * signed by the same authority (RFC 9052 §3.1 content type).
 */
import {
  asMap,
  createSign1,
  decode,
  decodeSign1,
  isCoseError,
  verifySign1,
  type CborMap,
  type Signer,
  type Verifier,
} from '@rotor/cose';
import { TrustError, type TrustErrorCode } from './errors.ts';
import { bytesEqual } from './thumbprint.ts';

export interface SignedDocCodes {
  readonly malformed: TrustErrorCode;
  readonly unknownKey: TrustErrorCode;
  readonly badSignature: TrustErrorCode;
  readonly algNotAllowed: TrustErrorCode;
}

export interface SignedDocVerifyOptions {
  /** The authority keys (each with a kid); the header kid picks one. */
  readonly verifiers: readonly Verifier[];
  /** Signature algorithms accepted (no default: the caller decides). */
  readonly allowedAlgs: ReadonlySet<number>;
}

export async function createSignedDoc(
  contentType: string,
  payload: Uint8Array,
  signer: Signer,
): Promise<Uint8Array> {
  if (signer.kid === undefined) {
    throw new TrustError(
      'CAP_MANIFEST_MALFORMED',
      'the signer needs a kid (it goes in the protected header)',
    );
  }
  return createSign1(payload, signer, {
    protectedExtra: new Map<number, unknown>([
      [3, contentType],
      [4, signer.kid],
    ]),
  });
}

/**
 * Decodes and verifies a signed document; returns the verified payload map and the signer. Order: bound the size,
 * decode strictly, check the content type, pick the authority by kid, check the algorithm, verify (RFC 9052 §4.4),
 * and only then decode the payload.
 */
export function verifySignedDoc(
  bytes: Uint8Array,
  contentType: string,
  maxBytes: number,
  maxDepth: number,
  opts: SignedDocVerifyOptions,
  codes: SignedDocCodes,
  path: string,
): { payload: CborMap; signer: Verifier } {
  const fail = (code: TrustErrorCode, message: string, cause?: unknown): TrustError =>
    new TrustError(code, message, path, cause === undefined ? undefined : { cause });
  if (bytes.length > maxBytes) throw fail(codes.malformed, `${bytes.length} bytes exceed ${maxBytes}`);
  let msg;
  try {
    msg = decodeSign1(bytes, { tag: 'required', maxSize: maxBytes });
  } catch (e) {
    throw fail(codes.malformed, `not a COSE_Sign1: ${e instanceof Error ? e.message : String(e)}`, e);
  }
  if (msg.protectedHeaders.get(3) !== contentType) {
    throw fail(codes.malformed, `protected content type is not ${contentType}`);
  }
  const kid = msg.protectedHeaders.get(4);
  if (!(kid instanceof Uint8Array) || kid.length === 0 || kid.length > 64) {
    throw fail(codes.malformed, 'protected kid missing or not a bstr of 1..64 bytes');
  }
  if (msg.payload === null) throw fail(codes.malformed, 'payload is detached');
  const signer = opts.verifiers.find((v) => v.kid !== undefined && bytesEqual(v.kid, kid));
  if (signer === undefined)
    throw fail(codes.unknownKey, 'signed by a key that is not a provisioned authority');
  if (!opts.allowedAlgs.has(msg.alg)) throw fail(codes.algNotAllowed, `algorithm ${msg.alg} is not allowed`);
  try {
    verifySign1(msg, signer, { allowedAlgs: opts.allowedAlgs });
  } catch (e) {
    if (isCoseError(e) && e.code !== 'COSE_BAD_SIGNATURE') {
      throw fail(codes.algNotAllowed, `signature rejected: ${e.message}`, e);
    }
    throw fail(codes.badSignature, 'signature does not verify', e);
  }
  try {
    return {
      payload: asMap(decode(msg.payload, { maxSize: maxBytes, maxDepth }), `${path}.payload`),
      signer,
    };
  } catch (e) {
    throw fail(codes.malformed, `payload does not decode: ${e instanceof Error ? e.message : String(e)}`, e);
  }
}

/** Runs a payload parser, turning validation failures of @rotor/cose into `code`. */
export function parsePayload<T>(code: TrustErrorCode, path: string, f: () => T): T {
  try {
    return f();
  } catch (e) {
    if (e instanceof TrustError) throw e;
    if (isCoseError(e)) throw new TrustError(code, e.message, e.path ?? path, { cause: e });
    throw e;
  }
}
