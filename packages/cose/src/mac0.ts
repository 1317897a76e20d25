/**
 * COSE_Mac0 (RFC 9052 §6.2): MAC with an implicit key, tag 17. MAC_structure per RFC 9052 §6.3.
 */
import { timingSafeEqual } from 'node:crypto';
import { algInfoOfKind, assertAllowed } from './algorithms.ts';
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
import type { MacKey } from './keys.ts';
import type { CoseDecodeOptions, Sign1CreateOptions } from './sign1.ts';

export const COSE_MAC0_TAG = 17;

export interface Mac0Message {
  protectedBytes: Uint8Array;
  protectedHeaders: CborMap;
  unprotectedHeaders: CborMap;
  payload: Uint8Array | null;
  tag: Uint8Array;
  alg: number;
  kid: Uint8Array | undefined;
}

export interface MacVerifyOptions {
  allowedAlgs: ReadonlySet<number>;
  detachedPayload?: Uint8Array;
  externalAad?: Uint8Array;
}

export type Mac0CreateOptions = Sign1CreateOptions;

const EMPTY = new Uint8Array(0);

/** MAC_structure for COSE_Mac0: ["MAC0", protected, external_aad, payload] (RFC 9052 §6.3). */
export function macStructure0(
  protectedBytes: Uint8Array,
  externalAad: Uint8Array,
  payload: Uint8Array,
): Uint8Array {
  return encode(['MAC0', protectedBytes, externalAad, payload]);
}

export function decodeMac0(bytes: Uint8Array, opts: CoseDecodeOptions = {}): Mac0Message {
  const top = decodeCose(bytes, opts.maxSize);
  const a = structArray(
    untag(top, COSE_MAC0_TAG, opts.tag ?? 'optional', 'COSE_Mac0'),
    4,
    4,
    'COSE_Mac0',
    '$',
  );
  const h = parseHeaders(a[0], a[1], '$', opts);
  // RFC 9052 §3.1: alg must be authenticated (protected).
  if (h.alg === undefined || !h.algProtected) {
    throw new CoseError('COSE_HEADER_INVALID', 'alg must be present in the protected bucket', '$[0]');
  }
  return {
    protectedBytes: h.protectedBytes,
    protectedHeaders: h.protectedHeaders,
    unprotectedHeaders: h.unprotectedHeaders,
    payload: structBytesOrNil(a[2], 'payload', '$[2]'),
    tag: structBytes(a[3], 'tag', '$[3]'),
    alg: h.alg,
    kid: h.kid,
  };
}

/** Verifies a COSE_Mac0 (RFC 9052 §6.3) with a constant-time tag comparison. */
export async function verifyMac0(msg: Mac0Message, key: MacKey, opts: MacVerifyOptions): Promise<void> {
  assertAllowed(msg.alg, opts.allowedAlgs, '$');
  const info = algInfoOfKind(msg.alg, 'mac', '$');
  // RFC 9052 §8.2 / RFC 9053 §3.1: the key must be for the algorithm used.
  if (key.alg !== msg.alg)
    throw new CoseError('COSE_KEY_MISMATCH', `key for alg ${key.alg} cannot check alg ${msg.alg}`);
  const payload = selectPayload(msg.payload, opts.detachedPayload);
  const expected = await key.mac(macStructure0(msg.protectedBytes, opts.externalAad ?? EMPTY, payload));
  // RFC 9053 §3.1: HMAC 256/256 etc. carry the full, untruncated tag; compare in constant time.
  if (
    msg.tag.length !== info.outputLength ||
    expected.length !== msg.tag.length ||
    !timingSafeEqual(expected, msg.tag)
  ) {
    throw new CoseError('COSE_BAD_MAC', 'MAC does not verify', '$[3]');
  }
}

export async function createMac0(
  payload: Uint8Array,
  key: MacKey,
  opts: Mac0CreateOptions = {},
): Promise<Uint8Array> {
  algInfoOfKind(key.alg, 'mac');
  const { protectedMap, unprotected } = buildHeaders(key.alg, key.kid, opts.protectedExtra, opts.unprotected);
  const protectedBytes = protectedBytesOf(protectedMap, encode);
  const tag = await key.mac(macStructure0(protectedBytes, opts.externalAad ?? EMPTY, payload));
  const body = [protectedBytes, unprotected, opts.detached === true ? null : payload, tag];
  return encode(opts.tagged === false ? body : new CborTag(COSE_MAC0_TAG, body));
}
