/**
 * The one error module of @rotor/server. Every failure the server reports is a ServerError with a stable string
 * code, or a CoseError / SuitError from the lower layers; `problemFor` maps any of them to an RFC 9457 problem
 * document (`application/problem+json`) with a stable `type` URI, the HTTP status and the `code` as an extension
 * member. Unknown exceptions become `INTERNAL` without their message (no internals leak to clients).
 */
import { isCoseError } from '@rotor/cose';
import { isSuitError } from '@rotor/suit';

export const SERVER_ERROR_CODES = [
  // Startup (never an HTTP response)
  'CONFIG_INVALID', // environment or flags fail validation
  'DB_MIGRATION_MISMATCH', // an applied migration differs from the code's (edited after release)
  'DB_UNAVAILABLE', // the database cannot be reached
  // Requests
  'REQUEST_INVALID', // params, query or body fail the route's schema
  'REQUEST_UNKNOWN_FIELD', // a body or query member the schema does not define (strict decoding)
  'REQUEST_BODY_MALFORMED', // the body does not parse in its declared media type
  'MEDIA_TYPE_UNSUPPORTED', // Content-Type not accepted by the route
  'PAYLOAD_TOO_LARGE', // body longer than the configured bound
  'NOT_FOUND', // no such route or resource
  'METHOD_NOT_ALLOWED',
  'ALREADY_EXISTS', // unique resource already present
  'CONFLICT', // state does not allow the operation
  'RANGE_NOT_SATISFIABLE', // RFC 9110 §15.5.17
  'PRECONDITION_FAILED',
  // Authentication and authorization
  'AUTH_REQUIRED', // no bearer token
  'AUTH_INVALID', // token unknown, malformed, revoked
  'FORBIDDEN', // the principal's role does not permit the action (deny by default)
  'DEVICE_CERT_REQUIRED', // no client certificate on the device listener
  'DEVICE_UNKNOWN', // certificate fingerprint not registered
  'DEVICE_DISABLED', // device registered but disabled
  'DEVICE_FORBIDDEN', // a device asked for another device's resource
  'DEVICE_PROXY_INVALID', // an RFC 3820 proxy client certificate that breaks the path rules (device-tls.ts)
  'DEVICE_PROXY_EXPIRED', // a proxy client certificate outside its validity or over the lifetime bound
  // Releases and payloads
  'PAYLOAD_DIGEST_MISMATCH', // uploaded bytes do not hash to the digest named in the URL
  'PAYLOAD_MISSING', // a release references a payload digest the server does not hold
  'RELEASE_INVALID', // an envelope that authenticates but cannot be a release (e.g. no payload digest)
  'SIGNATURE_VERIFIER_UNAVAILABLE', // the SUIT authenticator is not wired in this build
  'AUTHOR_KEY_INVALID', // an author key that cannot be parsed / used
  'DEVICE_KEY_INVALID', // a device key-agreement / report key or KEK that cannot be parsed / used
  'DEVICE_KEY_MISSING', // per-device encryption needs a key-agreement key or KEK registered for the device
  'OPERATOR_KEY_UNAVAILABLE', // approval needs the operator signing key and the content-key vault (not configured)
  'REPORT_KEY_MISSING', // a signed report from a device without a registered report key
  'REPORT_SIGNATURE_REQUIRED', // an unsigned report from a device that has a registered report key
  // Factory (manufacturing provisioning; CLI and library, never an HTTP response)
  'FACTORY_TOKEN_UNAVAILABLE', // PKCS#11 module does not load, or no token matches the RFC 7512 URI
  'FACTORY_TOKEN_PIN_INCORRECT', // C_Login refused the PIN (CKR_PIN_INCORRECT)
  'FACTORY_TOKEN_LOCKED', // the token's user PIN is locked (CKR_PIN_LOCKED) or the token is not initialized
  'FACTORY_KEY_NOT_FOUND', // no (or more than one) key object matches the RFC 7512 URI
  'FACTORY_KEY_EXISTS', // factory init refuses to overwrite an existing key or CA
  'PKCS11_URI_INVALID', // not an RFC 7512 PKCS#11 URI we accept
  'PKCS11_ERROR', // any other token failure
  'PKCS11_PIN_UNAVAILABLE', // a key URI's PIN cannot be read (RFC 7512 §2.3 pin-source unreadable, or no PIN given)
  'CERT_SERIAL_DUPLICATE', // a certificate serial is already registered (RFC 5280 §4.1.2.2: unique per issuer)
  'CSR_INVALID', // a PKCS#10 request that does not parse, is oversized, or whose signature does not verify
  'CSR_KEY_TYPE', // a CSR key that is not the profile's identity key type
  'CSR_DEVICE_ID_MISMATCH', // the CSR names another device than the one being provisioned
  'FACTORY_STATE_INVALID', // the factory directory, profile or journal is missing or corrupt
  // Capability modules (issue 8)
  'CAP_MODULE_INVALID', // an uploaded module or its metadata is refused (not WebAssembly, undeclared import, bad metadata)
  'CAP_KEYS_UNAVAILABLE', // the capability-signing / authority keys or the content-key vault are not configured
  'CAP_NOT_FOUND', // no module of the requested capability in the catalog
  'CAP_NOT_AUTHORIZED', // the device's capability manifest does not authorize the capability (seed 000 §1)
  'CAP_INCOMPATIBLE', // no module for the device's class and firmware version
  'CAP_DEPENDENCY_UNSATISFIED', // every compatible module has a dependency nothing satisfies
  'CAP_REVOKED', // every module in range is revoked (seed 000 step 7)
  'CAP_MANIFEST_MISSING', // no capability manifest issued for the device's group or the default
  'CAP_DEVICE_QUARANTINED', // a quarantined device (issue 7 policy) is offered no new module
  // Service
  'NOT_READY', // readiness false (starting, migrations, shutting down)
  'RESPONSE_INVALID', // a response failed its schema: a server bug, reported as 500
  'AUDIT_CHAIN_BROKEN', // verifyAuditLog found an edited, reordered or deleted entry
  'INTERNAL',
] as const;

export type ServerErrorCode = (typeof SERVER_ERROR_CODES)[number];

const STATUS: Record<ServerErrorCode, number> = {
  CONFIG_INVALID: 500,
  DB_MIGRATION_MISMATCH: 500,
  DB_UNAVAILABLE: 503,
  REQUEST_INVALID: 400,
  REQUEST_UNKNOWN_FIELD: 400,
  REQUEST_BODY_MALFORMED: 400,
  MEDIA_TYPE_UNSUPPORTED: 415,
  PAYLOAD_TOO_LARGE: 413,
  NOT_FOUND: 404,
  METHOD_NOT_ALLOWED: 405,
  ALREADY_EXISTS: 409,
  CONFLICT: 409,
  RANGE_NOT_SATISFIABLE: 416,
  PRECONDITION_FAILED: 412,
  AUTH_REQUIRED: 401,
  AUTH_INVALID: 401,
  FORBIDDEN: 403,
  DEVICE_CERT_REQUIRED: 401,
  DEVICE_UNKNOWN: 403,
  DEVICE_DISABLED: 403,
  DEVICE_FORBIDDEN: 403,
  DEVICE_PROXY_INVALID: 401,
  DEVICE_PROXY_EXPIRED: 401,
  PAYLOAD_DIGEST_MISMATCH: 422,
  PAYLOAD_MISSING: 422,
  RELEASE_INVALID: 422,
  SIGNATURE_VERIFIER_UNAVAILABLE: 503,
  AUTHOR_KEY_INVALID: 422,
  DEVICE_KEY_INVALID: 422,
  DEVICE_KEY_MISSING: 409,
  OPERATOR_KEY_UNAVAILABLE: 503,
  REPORT_KEY_MISSING: 422,
  REPORT_SIGNATURE_REQUIRED: 422,
  FACTORY_TOKEN_UNAVAILABLE: 503,
  FACTORY_TOKEN_PIN_INCORRECT: 401,
  FACTORY_TOKEN_LOCKED: 423,
  FACTORY_KEY_NOT_FOUND: 404,
  FACTORY_KEY_EXISTS: 409,
  PKCS11_URI_INVALID: 400,
  PKCS11_ERROR: 502,
  PKCS11_PIN_UNAVAILABLE: 503,
  CERT_SERIAL_DUPLICATE: 409,
  CSR_INVALID: 400,
  CSR_KEY_TYPE: 422,
  CSR_DEVICE_ID_MISMATCH: 422,
  FACTORY_STATE_INVALID: 500,
  CAP_MODULE_INVALID: 422,
  CAP_KEYS_UNAVAILABLE: 503,
  CAP_NOT_FOUND: 404,
  CAP_NOT_AUTHORIZED: 403,
  CAP_INCOMPATIBLE: 422,
  CAP_DEPENDENCY_UNSATISFIED: 422,
  CAP_REVOKED: 410,
  CAP_MANIFEST_MISSING: 404,
  CAP_DEVICE_QUARANTINED: 403,
  NOT_READY: 503,
  RESPONSE_INVALID: 500,
  AUDIT_CHAIN_BROKEN: 500,
  INTERNAL: 500,
};

const TITLE: Partial<Record<string, string>> = {
  REQUEST_INVALID: 'Request does not match its schema',
  REQUEST_UNKNOWN_FIELD: 'Request has an unknown field',
  REQUEST_BODY_MALFORMED: 'Request body is malformed',
  MEDIA_TYPE_UNSUPPORTED: 'Unsupported media type',
  PAYLOAD_TOO_LARGE: 'Request body too large',
  NOT_FOUND: 'Not found',
  AUTH_REQUIRED: 'Authentication required',
  AUTH_INVALID: 'Invalid credentials',
  FORBIDDEN: 'Not permitted',
  INTERNAL: 'Internal server error',
};

export class ServerError extends Error {
  override readonly name = 'ServerError';
  readonly code: ServerErrorCode;
  /** Extra members for the problem document (never secrets). */
  readonly extra: Readonly<Record<string, unknown>> | undefined;

  constructor(
    code: ServerErrorCode,
    message: string,
    options?: { cause?: unknown; extra?: Record<string, unknown> },
  ) {
    super(message, options);
    this.code = code;
    this.extra = options?.extra;
  }
}

export function isServerError(e: unknown): e is ServerError {
  return e instanceof ServerError;
}

/** RFC 9457 problem document. `code` is the stable Rotor code (an extension member, RFC 9457 §3.2). */
export interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
  code: string;
  instance?: string;
  [extension: string]: unknown;
}

export const PROBLEM_MEDIA_TYPE = 'application/problem+json';

/** Stable problem type URI for a code: not dereferenceable by design (RFC 9457 §3.1.1 allows any URI). */
export function problemType(code: string): string {
  return `urn:rotor:problem:${code}`;
}

// CBOR / COSE / SUIT codes: structural errors are the client's malformed input (400); verification failures are
// well-formed requests whose content the server refuses (422); oversize is 413.
const REFUSED = new Set([
  'COSE_BAD_SIGNATURE',
  'COSE_BAD_MAC',
  'COSE_NO_KEY',
  'COSE_KEY_MISMATCH',
  'COSE_ALG_NOT_ALLOWED',
  'COSE_ALG_UNKNOWN',
  'COSE_UNSUPPORTED',
  'COSE_CRIT_UNSUPPORTED',
  'COSE_DECRYPT_FAILED',
  'SUIT_DIGEST_MISMATCH',
  'SUIT_DIGEST_ALG_UNSUPPORTED',
  'SUIT_SEVERED_DIGEST_MISMATCH',
  'SUIT_SEVERED_MISSING',
  'SUIT_UNAUTHENTICATED',
  'SUIT_AUTH_FAILED',
  'SUIT_SIGNER_UNAUTHORIZED',
  'SUIT_MISSING_PARTY',
  'SUIT_ROLLBACK',
  'SUIT_DEPENDENCY_INVALID',
  'SUIT_COMPONENT_UNAUTHORIZED',
  'SUIT_COMMAND_UNSUPPORTED',
  'SUIT_PARAMETER_UNSUPPORTED',
  'SUIT_DECRYPT_FAILED',
]);

/** HTTP status for any Rotor error code (server, COSE or SUIT). */
export function statusFor(code: string): number {
  if (code in STATUS) return STATUS[code as ServerErrorCode];
  if (code === 'CBOR_TOO_LARGE') return 413;
  if (REFUSED.has(code)) return 422;
  if (code.startsWith('CBOR_') || code.startsWith('COSE_') || code.startsWith('SUIT_')) return 400;
  return 500;
}

export function titleFor(code: string): string {
  return (
    TITLE[code] ??
    code
      .toLowerCase()
      .replace(/_/g, ' ')
      .replace(/^./, (c) => c.toUpperCase())
  );
}

/** The problem document for any thrown value. 5xx details are generic: internals are logged, not returned. */
export function problemFor(e: unknown, instance?: string): Problem {
  let code = 'INTERNAL';
  let detail = 'internal server error';
  let extra: Readonly<Record<string, unknown>> | undefined;
  if (isServerError(e)) {
    code = e.code;
    detail = e.message;
    extra = e.extra;
  } else if (isCoseError(e) || isSuitError(e)) {
    code = e.code;
    detail = e.message;
    if (e.path !== undefined) extra = { path: e.path };
  }
  const status = statusFor(code);
  if (status >= 500 && code === 'INTERNAL') detail = 'internal server error';
  const p: Problem = { ...extra, type: problemType(code), title: titleFor(code), status, detail, code };
  if (instance !== undefined) p.instance = instance;
  return p;
}
