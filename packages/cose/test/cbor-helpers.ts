/** Small helpers shared by the CBOR test files. */
import { expect } from 'vitest';
import { decode, type DecodeOptions } from '../src/cbor.ts';
import { CoseError, type CoseErrorCode } from '../src/errors.ts';

export function hex(s: string): Uint8Array {
  return Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
}

export function toHex(b: Uint8Array): string {
  return Buffer.from(b).toString('hex');
}

/** Runs `f`; returns 'OK' or the CoseError code. Any other exception propagates (and fails the test). */
export function outcome(f: () => unknown): CoseErrorCode | 'OK' {
  try {
    f();
    return 'OK';
  } catch (e) {
    if (e instanceof CoseError) return e.code;
    throw e;
  }
}

export function decodeCode(bytes: Uint8Array | string, options?: DecodeOptions): CoseErrorCode | 'OK' {
  return outcome(() => decode(typeof bytes === 'string' ? hex(bytes) : bytes, options));
}

export function expectCode(bytes: Uint8Array | string, code: CoseErrorCode, options?: DecodeOptions): void {
  expect(decodeCode(bytes, options)).toBe(code);
}

/** The CoseError thrown by `f` (fails the test when nothing or something else is thrown). */
export function thrown(f: () => unknown): CoseError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(CoseError);
    return e as CoseError;
  }
  expect.fail('expected a CoseError');
}
