/** Every CBOR/COSE file among the shared SUIT vectors decodes under the default strict profile, bar one key. */
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';
import { decode, encode } from '../src/cbor.ts';
import { decodeCode, toHex } from './cbor-helpers.ts';

const ROOT = '/work/shared/vectors/suit';
/** libcsuit's A128 trust anchor encodes its 16-byte k with a two-byte length head (0x58 0x10): documented as sloppy. */
const SLOPPY = 'keys/libcsuit/trust_anchor_a128_cose_key_secret.cose_key';

function walk(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory()
      ? walk(join(dir, e.name))
      : /\.(cbor|cose|cose_key)$/.test(e.name)
        ? [join(dir, e.name)]
        : [],
  );
}

const files = walk(ROOT)
  .map((f) => relative(ROOT, f))
  .sort();

describe('shared SUIT vectors', () => {
  it('finds the vector files', () => {
    expect(files.length).toBeGreaterThanOrEqual(50);
    expect(files).toContain(SLOPPY);
  });

  it.each(files.filter((f) => f !== SLOPPY))('%s decodes and re-encodes byte for byte', (f) => {
    const bytes = new Uint8Array(readFileSync(join(ROOT, f)));
    const value = decode(bytes);
    expect(toHex(encode(value))).toBe(toHex(bytes));
  });

  it(`${SLOPPY} is refused with CBOR_NON_PREFERRED`, () => {
    const bytes = new Uint8Array(readFileSync(join(ROOT, SLOPPY)));
    expect(decodeCode(bytes)).toBe('CBOR_NON_PREFERRED');
    expect(decodeCode(bytes, { sortedKeys: false, allowFloats: true, allowSimple: true })).toBe(
      'CBOR_NON_PREFERRED',
    );
    // Only the head is sloppy: with the 16-byte length in its preferred one-byte form the key is fine.
    const fixed = Buffer.from(bytes)
      .toString('hex')
      .replace(/2058106161/, '20506161');
    expect(decodeCode(fixed)).toBe('OK');
  });
});
