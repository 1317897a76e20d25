/**
 * The one error module of @rotor/trust. Every failure is a TrustError with a stable string code; a COSE or CBOR
 * failure underneath is kept as the `cause` (its code is still reachable as `coseCode`).
 */
import { isCoseError, type CoseErrorCode } from '@rotor/cose';

export const TRUST_ERROR_CODES = [
  // Root-of-trust chains (seed 002 steps 1–2).
  'CHAIN_EMPTY', // no records
  'CHAIN_TOO_LONG', // more records than the caller's bound
  'CHAIN_MALFORMED', // a record is not a COSE_Sign1 chain record (structure, content type, payload members)
  'CHAIN_ALG_NOT_ALLOWED', // the record's or the new key's algorithm is not in the caller's allowlist
  'CHAIN_INDEX', // index not the record's position in the chain
  'CHAIN_PREVIOUS_KEY', // previous-key id does not name the key before it (or is present on the first record)
  'CHAIN_KID_MISMATCH', // the signer kid in the header is not the key that must sign this record
  'CHAIN_KEY_REUSED', // a key appears twice in the chain
  'CHAIN_TIME', // time goes backwards
  'CHAIN_BAD_SIGNATURE', // a record's signature does not verify with the key before it (or its own, for the first)
  'CHAIN_ANCHOR_MISMATCH', // the first key is not the pinned first RoT
  // Attestation tokens (seed 002 step 3; EAT, RFC 9711).
  'ATTEST_MALFORMED', // not a COSE_Sign1 EAT of the expected shape
  'ATTEST_UNKNOWN_KEY', // signed by a key that is not in the chain
  'ATTEST_NOT_CURRENT', // signed by a superseded RoT where the caller requires the current one
  'ATTEST_BAD_SIGNATURE', // signature does not verify
  'ATTEST_NONCE_MISMATCH', // eat_nonce differs from the challenge
  'ATTEST_CLAIM_RESERVED', // caller-supplied claims use a label the token format reserves
  // Capability modules (seed 000; capability-*.ts).
  'CAP_METADATA_INVALID', // module metadata is not a strictly valid metadata map (structure, bounds, names)
  'CAP_MANIFEST_MALFORMED', // not a COSE_Sign1 capability manifest of the expected shape
  'CAP_MANIFEST_UNKNOWN_KEY', // signed by a key that is not a provisioned capability-manifest authority
  'CAP_MANIFEST_BAD_SIGNATURE', // the capability manifest's signature does not verify
  'CAP_MANIFEST_ALG_NOT_ALLOWED', // signature algorithm not in the caller's allowlist
  'CAP_MANIFEST_ROLLBACK', // version not newer than the one the device holds
  'REVOCATION_MALFORMED', // not a COSE_Sign1 module revocation list of the expected shape
  'REVOCATION_UNKNOWN_KEY', // signed by a key that is not a provisioned revocation authority
  'REVOCATION_BAD_SIGNATURE', // the list's signature does not verify
  'REVOCATION_ALG_NOT_ALLOWED', // signature algorithm not in the caller's allowlist
  'REVOCATION_ROLLBACK', // version not newer than the list the device holds
  'REVOCATION_EXPIRED', // the list's expiry time has passed
  'REVOCATION_NOT_YET_VALID', // issued in the future (beyond the caller's clock skew)
  'CAP_ENVELOPE_INVALID', // a module envelope outside the capability-module profile (components, sequences)
  // Trust-anchor statements (issue 7; seed 001 "new root key signed by a trusted authority"; TUF root rotation).
  'ANCHORS_MALFORMED', // not a COSE_Sign trust-anchor statement of the expected shape
  'ANCHORS_VERSION', // not exactly the next version after the set the device holds (TUF §5.3.4)
  'ANCHORS_THRESHOLD', // fewer valid signatures than the threshold of the current or of the new root keys
  // General revocation lists (issue 7; revocation.ts).
  'RVL_MALFORMED', // not a COSE_Sign1 revocation list of the expected shape
  'RVL_SIGNATURE', // signed by a key that is not a revocation authority, or the signature does not verify
  'RVL_ROLLBACK', // version not newer than the list held
  'RVL_EXPIRED', // the list's expiry has passed: refresh before trusting anything it covers (freeze attack)
] as const;

export type TrustErrorCode = (typeof TRUST_ERROR_CODES)[number];

export class TrustError extends Error {
  override readonly name = 'TrustError';
  readonly code: TrustErrorCode;
  /** Where in the input, e.g. `records[3]`. */
  readonly path: string | undefined;

  constructor(code: TrustErrorCode, message: string, path?: string, options?: { cause?: unknown }) {
    super(path === undefined ? message : `${message} at ${path}`, options);
    this.code = code;
    this.path = path;
  }

  /** The code of the COSE/CBOR error underneath, if any. */
  get coseCode(): CoseErrorCode | undefined {
    return isCoseError(this.cause) ? this.cause.code : undefined;
  }
}

export function isTrustError(e: unknown): e is TrustError {
  return e instanceof TrustError;
}
