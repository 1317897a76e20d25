/**
 * The one error module of @rotor/cose. Every failure is a CoseError with a stable string code;
 * callers map codes (server: RFC 9457 problem types, agent: SUIT report reasons, CLI: exit codes).
 */

export const COSE_ERROR_CODES = [
  // Strict CBOR profile (RFC 8949 §4.2 deterministic encoding, §5.3 validity).
  'CBOR_TOO_LARGE', // input longer than the caller's bound
  'CBOR_TOO_DEEP', // nesting deeper than the bound
  'CBOR_TRUNCATED', // input ends inside an item
  'CBOR_TRAILING_BYTES', // bytes after the single top-level item
  'CBOR_RESERVED', // reserved additional information 28..30, or a break outside an indefinite item
  'CBOR_INDEFINITE_LENGTH', // indefinite-length item (§4.2.1: definite lengths only)
  'CBOR_NON_PREFERRED', // integer, length or float not in its shortest form (§4.2.1)
  'CBOR_DUPLICATE_KEY', // a map key appears twice (§5.6)
  'CBOR_UNSORTED_KEYS', // map keys not in bytewise lexicographic order of their encodings (§4.2.1)
  'CBOR_INVALID_UTF8', // text string that is not valid UTF-8 (§5.3.1)
  'CBOR_UNSUPPORTED', // float, undefined or simple value the profile does not admit
  'CBOR_TYPE', // a validator found the wrong type, a missing member or an out-of-range value at a path
  'CBOR_ENCODE', // a value that cannot be encoded
  // COSE (RFC 9052 / RFC 9053)
  'COSE_MALFORMED', // structure does not match the COSE CDDL
  'COSE_HEADER_INVALID', // header parameter of the wrong type, or in both buckets (RFC 9052 §3)
  'COSE_CRIT_UNSUPPORTED', // a critical header the implementation does not understand (RFC 9052 §3.1)
  'COSE_ALG_UNKNOWN', // algorithm id not in the table
  'COSE_ALG_NOT_ALLOWED', // algorithm known but not in the verifier's allowlist
  'COSE_KEY_INVALID', // COSE_Key malformed or unusable
  'COSE_KEY_MISMATCH', // key type/curve/alg does not fit the algorithm
  'COSE_NO_KEY', // no key matches the structure (kid / algorithm)
  'COSE_BAD_SIGNATURE', // signature does not verify
  'COSE_BAD_MAC', // MAC tag does not verify
  'COSE_DECRYPT_FAILED', // AEAD tag failure, key unwrap integrity failure
  'COSE_UNSUPPORTED', // a valid but unsupported construct (e.g. attached payload where detached is required)
] as const;

export type CoseErrorCode = (typeof COSE_ERROR_CODES)[number];

export class CoseError extends Error {
  override readonly name = 'CoseError';
  readonly code: CoseErrorCode;
  /** Path of the offending item, e.g. `$[1]{4}` or `envelope.manifest.common`. */
  readonly path: string | undefined;

  constructor(code: CoseErrorCode, message: string, path?: string, options?: { cause?: unknown }) {
    super(path === undefined ? message : `${message} at ${path}`, options);
    this.code = code;
    this.path = path;
  }
}

export function isCoseError(e: unknown): e is CoseError {
  return e instanceof CoseError;
}
