/** Shared helpers for the COSE tests: vector files and error-code assertions. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'vitest';
import { isCoseError, type CoseErrorCode } from '../src/errors.ts';

export const VECTORS = '/work/shared/vectors/suit';

export function vector(rel: string): Uint8Array {
  return new Uint8Array(readFileSync(join(VECTORS, rel)));
}

export function hex(s: string): Uint8Array {
  return new Uint8Array(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
}

export function toHex(b: Uint8Array): string {
  return Buffer.from(b).toString('hex');
}

/** Asserts that `fn` throws a CoseError with `code`. */
export function expectCode(fn: () => unknown, code: CoseErrorCode): void {
  let thrown: unknown;
  try {
    fn();
  } catch (e) {
    thrown = e;
  }
  expect(isCoseError(thrown), `expected CoseError ${code}, got ${String(thrown)}`).toBe(true);
  expect((thrown as { code: string }).code).toBe(code);
}

/** Asserts that the promise rejects with a CoseError with `code`. */
export async function expectCodeAsync(p: Promise<unknown>, code: CoseErrorCode): Promise<void> {
  let thrown: unknown;
  try {
    await p;
  } catch (e) {
    thrown = e;
  }
  expect(isCoseError(thrown), `expected CoseError ${code}, got ${String(thrown)}`).toBe(true);
  expect((thrown as { code: string }).code).toBe(code);
}

/** Every variant of `bytes` with exactly one bit flipped. */
export function* bitFlips(bytes: Uint8Array): Generator<Uint8Array> {
  for (let i = 0; i < bytes.length; i++) {
    for (let b = 0; b < 8; b++) {
      const m = bytes.slice();
      m[i] = m[i]! ^ (1 << b);
      yield m;
    }
  }
}
