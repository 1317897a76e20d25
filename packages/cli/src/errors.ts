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
} as const;

export type CliErrorCode = 'CLI_USAGE' | 'CLI_IO' | 'CLI_INPUT';

export class CliError extends Error {
  override readonly name = 'CliError';
  readonly code: CliErrorCode;
  constructor(code: CliErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
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
  if (code === 'CLI_USAGE') return ExitCode.usage;
  if (code === 'CLI_IO') return ExitCode.io;
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
