/**
 * The CLI's one error module: CliError for usage and I/O problems, and the mapping of every package's error
 * codes to process exit codes. Exit codes are stable and documented in `rotor --help`.
 */

export const ExitCode = {
  ok: 0,
  internal: 1, // a bug: an exception that is not a typed Rotor error
  usage: 2, // bad command line
  invalid: 3, // malformed input (CBOR, COSE, SUIT structure)
  rejected: 4, // verification failed: digest, signature, MAC, trust policy, rollback, condition
  unsupported: 5, // a valid construct Rotor does not support (algorithm, command)
  io: 6, // a file could not be read or written
  decrypt: 7, // a payload could not be decrypted
  denied: 8, // the server refused the credentials (401) or the role may not do this (403)
} as const;

/**
 * CLI_USAGE bad command line · CLI_IO local file or network failure · CLI_INPUT malformed input or a 4xx the
 * server names as such (404 included) · CLI_DENIED 401/403 · CLI_REFUSED a well-formed request the server refuses
 * in the current state (409, 422) · CLI_UNSUPPORTED the server lacks what was asked for · CLI_SERVER a 5xx or a
 * response that breaks the API contract (size bound, media type, shape).
 */
export type CliErrorCode =
  'CLI_USAGE' | 'CLI_IO' | 'CLI_INPUT' | 'CLI_DENIED' | 'CLI_REFUSED' | 'CLI_UNSUPPORTED' | 'CLI_SERVER';

export class CliError extends Error {
  override readonly name = 'CliError';
  readonly code: CliErrorCode;
  /** Usage text printed on stderr after the error line (bad command lines). */
  readonly usage: string | undefined;
  /** The server's stable problem code (RFC 9457 `code` extension member), when the error is a problem document. */
  readonly problem: string | undefined;
  constructor(
    code: CliErrorCode,
    message: string,
    options?: { cause?: unknown; usage?: string; problem?: string },
  ) {
    super(message, options);
    this.code = code;
    this.usage = options?.usage;
    this.problem = options?.problem;
  }
}

const REJECTED = new Set([
  'SUIT_DIGEST_MISMATCH',
  'SUIT_SEVERED_DIGEST_MISMATCH',
  'SUIT_UNAUTHENTICATED',
  'SUIT_AUTH_FAILED',
  'SUIT_SIGNER_UNAUTHORIZED',
  'SUIT_MISSING_PARTY',
  'SUIT_ROLLBACK',
  'SUIT_CONDITION_FAILED',
  'SUIT_ABORT',
  'SUIT_DEPENDENCY_INVALID',
  'SUIT_COMPONENT_UNAUTHORIZED',
  'COSE_BAD_SIGNATURE',
  'COSE_BAD_MAC',
  'COSE_NO_KEY',
  'COSE_KEY_MISMATCH',
  'COSE_ALG_NOT_ALLOWED',
]);
const UNSUPPORTED = new Set([
  'SUIT_DIGEST_ALG_UNSUPPORTED',
  'SUIT_COMMAND_UNSUPPORTED',
  'SUIT_PARAMETER_UNSUPPORTED',
  'SUIT_SEVERED_MISSING',
  'COSE_ALG_UNKNOWN',
  'COSE_UNSUPPORTED',
  'COSE_CRIT_UNSUPPORTED',
]);
const DECRYPT = new Set(['COSE_DECRYPT_FAILED', 'SUIT_DECRYPT_FAILED']);

/** The error code carried by any Rotor error (CliError, SuitError, CoseError), or undefined for a plain error. */
export function errorCode(e: unknown): string | undefined {
  if (e instanceof Error && 'code' in e && typeof e.code === 'string' && /^[A-Z0-9_]+$/.test(e.code))
    return e.code;
  return undefined;
}

export function exitCodeFor(code: string | undefined): number {
  if (code === undefined) return ExitCode.internal;
  // CONFIG_INVALID: `rotor server` flags or environment that fail validation — a bad command line too.
  if (code === 'CLI_USAGE' || code === 'CONFIG_INVALID') return ExitCode.usage;
  if (code === 'CLI_IO') return ExitCode.io;
  if (code === 'CLI_DENIED') return ExitCode.denied;
  if (code === 'CLI_REFUSED') return ExitCode.rejected;
  if (code === 'CLI_UNSUPPORTED') return ExitCode.unsupported;
  if (code === 'CLI_SERVER') return ExitCode.internal;
  if (REJECTED.has(code)) return ExitCode.rejected;
  // A key store (PKCS#11 token) that is missing, locked, refuses the PIN or lacks the key: like an unreadable file.
  if (code.startsWith('FACTORY_TOKEN_') || code === 'FACTORY_KEY_NOT_FOUND' || code.startsWith('PKCS11_'))
    return ExitCode.io;
  if (UNSUPPORTED.has(code)) return ExitCode.unsupported;
  if (DECRYPT.has(code)) return ExitCode.decrypt;
  if (
    code.startsWith('CBOR_') ||
    code.startsWith('COSE_') ||
    code.startsWith('SUIT_') ||
    code === 'CLI_INPUT'
  ) {
    return ExitCode.invalid;
  }
  return ExitCode.internal;
}
