/**
 * The one error module of @rotor/suit. Codes are stable string literals; each maps to a SUIT_Report reason
 * (draft-ietf-suit-report §4) through `reportReasonFor`. CoseError codes from @rotor/cose pass through unchanged
 * where a failure originates in the CBOR/COSE layer.
 */
import { ReportReason, type ReportReasonCode } from './codes.ts';

export const SUIT_ERROR_CODES = [
  'SUIT_ENVELOPE_INVALID', // envelope structure (MF §8.2)
  'SUIT_MANIFEST_INVALID', // manifest structure (MF §8.4)
  'SUIT_MANIFEST_VERSION', // manifest-version is not 1 (MF §8.4.1)
  'SUIT_DIGEST_MISMATCH', // SUIT_Digest does not match the manifest bytes (MF §8.3)
  'SUIT_DIGEST_ALG_UNSUPPORTED', // digest algorithm not implemented (MF §8.3, SHA-256 mandatory)
  'SUIT_SEVERED_DIGEST_MISMATCH', // a severable member does not match its digest (MF §8.4.6)
  'SUIT_SEVERED_MISSING', // a severed member needed for processing is absent (MF §8.4.6)
  'SUIT_UNAUTHENTICATED', // no authentication block (MF §8.3: unsigned envelopes are refused)
  'SUIT_AUTH_FAILED', // no authentication block verifies under the trust policy (MF §8.3, §6.2)
  'SUIT_SIGNER_UNAUTHORIZED', // signature valid but the key may not sign these components (MF §9 access control)
  'SUIT_MISSING_PARTY', // the policy requires a second party (author + operator) that did not sign
  'SUIT_COMMAND_INVALID', // malformed command sequence (MF §8.4.7)
  'SUIT_COMMAND_UNSUPPORTED', // unknown command (UM §3: unknown commands reject the manifest)
  'SUIT_PARAMETER_INVALID', // parameter of the wrong type (MF §8.4.8)
  'SUIT_PARAMETER_UNSUPPORTED', // unknown parameter
  'SUIT_PARAMETER_MISSING', // a command needs a parameter that is unset (MF §8.4.8)
  'SUIT_COMPONENT_INVALID', // component index out of range or unsupported component (MF §8.4.5)
  'SUIT_COMPONENT_UNAUTHORIZED', // the platform refuses the component
  'SUIT_ROLLBACK', // sequence number not greater than the stored one (MF §8.4.2, RFC 9124 REQ.SEC.SEQUENCE)
  'SUIT_CONDITION_FAILED', // a condition failed (MF §8.4.9)
  'SUIT_OPERATION_FAILED', // a directive failed (MF §8.4.10)
  'SUIT_ABORT', // condition-abort (MF §8.4.9.10)
  'SUIT_DEPENDENCY_INVALID', // dependency envelope or integrity (TD §6.2)
  'SUIT_PROCESSOR_LIMIT', // recursion / step bound exceeded
  'SUIT_DECRYPT_FAILED', // encryption-info could not decrypt the payload (ENC §4)
  'SUIT_REPORT_INVALID', // malformed SUIT_Report (RP §4)
  'SUIT_BUILD_INVALID', // a builder description is invalid
] as const;

export type SuitErrorCode = (typeof SUIT_ERROR_CODES)[number];

export class SuitError extends Error {
  override readonly name = 'SuitError';
  readonly code: SuitErrorCode;
  readonly path: string | undefined;

  constructor(code: SuitErrorCode, message: string, path?: string, options?: { cause?: unknown }) {
    super(path === undefined ? message : `${message} at ${path}`, options);
    this.code = code;
    this.path = path;
  }
}

export function isSuitError(e: unknown): e is SuitError {
  return e instanceof SuitError;
}

const REASONS: Record<string, ReportReasonCode> = {
  SUIT_ENVELOPE_INVALID: ReportReason.cborParse,
  SUIT_MANIFEST_INVALID: ReportReason.cborParse,
  SUIT_MANIFEST_VERSION: ReportReason.cborParse,
  SUIT_DIGEST_MISMATCH: ReportReason.unauthorised,
  SUIT_DIGEST_ALG_UNSUPPORTED: ReportReason.algUnsupported,
  SUIT_SEVERED_DIGEST_MISMATCH: ReportReason.unauthorised,
  SUIT_SEVERED_MISSING: ReportReason.severingUnsupported,
  SUIT_UNAUTHENTICATED: ReportReason.unauthorised,
  SUIT_AUTH_FAILED: ReportReason.unauthorised,
  SUIT_SIGNER_UNAUTHORIZED: ReportReason.componentUnauthorised,
  SUIT_MISSING_PARTY: ReportReason.unauthorised,
  SUIT_COMMAND_INVALID: ReportReason.cborParse,
  SUIT_COMMAND_UNSUPPORTED: ReportReason.commandUnsupported,
  SUIT_PARAMETER_INVALID: ReportReason.cborParse,
  SUIT_PARAMETER_UNSUPPORTED: ReportReason.parameterUnsupported,
  SUIT_PARAMETER_MISSING: ReportReason.operationFailed,
  SUIT_COMPONENT_INVALID: ReportReason.componentUnsupported,
  SUIT_COMPONENT_UNAUTHORIZED: ReportReason.componentUnauthorised,
  SUIT_ROLLBACK: ReportReason.conditionFailed,
  SUIT_CONDITION_FAILED: ReportReason.conditionFailed,
  SUIT_OPERATION_FAILED: ReportReason.operationFailed,
  SUIT_ABORT: ReportReason.conditionFailed,
  SUIT_DEPENDENCY_INVALID: ReportReason.unauthorised,
  SUIT_PROCESSOR_LIMIT: ReportReason.operationFailed,
  SUIT_DECRYPT_FAILED: ReportReason.operationFailed,
  SUIT_REPORT_INVALID: ReportReason.cborParse,
  SUIT_BUILD_INVALID: ReportReason.operationFailed,
  COSE_ALG_UNKNOWN: ReportReason.algUnsupported,
  COSE_ALG_NOT_ALLOWED: ReportReason.algUnsupported,
  COSE_UNSUPPORTED: ReportReason.coseUnsupported,
  COSE_BAD_SIGNATURE: ReportReason.unauthorised,
  COSE_BAD_MAC: ReportReason.unauthorised,
  COSE_NO_KEY: ReportReason.unauthorised,
};

/** The SUIT_Report reason for an error code (draft-ietf-suit-report §4, suit-report-reasons). */
export function reportReasonFor(code: string): ReportReasonCode {
  return (
    REASONS[code] ??
    (code.startsWith('CBOR_') || code.startsWith('COSE_')
      ? ReportReason.cborParse
      : ReportReason.operationFailed)
  );
}
