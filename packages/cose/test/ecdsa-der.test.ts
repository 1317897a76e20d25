/** p1363ToDer: COSE's fixed-size r‖s into the DER Ecdsa-Sig-Value node:crypto verifies (RFC 3279 §2.2.3). */
import { generateKeyPairSync, sign, verify } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { p1363ToDer } from '../src/software.ts';

/** A slow, obviously correct reference encoder. */
function reference(sig: Uint8Array): Uint8Array {
  const int = (b: Uint8Array): number[] => {
    let i = 0;
    while (i < b.length - 1 && b[i] === 0) i++;
    const v = [...b.subarray(i)];
    if (v[0]! & 0x80) v.unshift(0);
    return [0x02, v.length, ...v];
  };
  const r = int(sig.subarray(0, sig.length / 2));
  const s = int(sig.subarray(sig.length / 2));
  return Uint8Array.from([0x30, r.length + s.length, ...r, ...s]);
}

describe('p1363ToDer', () => {
  it('matches the reference on edge cases: zero, leading zeros, high bits', () => {
    const cases = [
      new Uint8Array(64),
      Uint8Array.from({ length: 64 }, () => 0xff),
      Uint8Array.from({ length: 64 }, (_, i) => (i === 31 || i === 63 ? 1 : 0)),
      Uint8Array.from({ length: 64 }, (_, i) => (i % 32 < 5 ? 0 : 0x80)),
    ];
    for (const c of cases) expect(Buffer.from(p1363ToDer(c))).toEqual(Buffer.from(reference(c)));
  });

  it('matches the reference for arbitrary 64- and 96-byte signatures', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.uint8Array({ minLength: 64, maxLength: 64 }),
          fc.uint8Array({ minLength: 96, maxLength: 96 }),
        ),
        (s) => {
          expect(Buffer.from(p1363ToDer(s))).toEqual(Buffer.from(reference(s)));
        },
      ),
      { numRuns: 2000 },
    );
  });

  it('node:crypto verifies the converted form exactly when it verifies the P1363 form', () => {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    for (let i = 0; i < 50; i++) {
      const data = Uint8Array.of(i, i >> 8, 7);
      const sig = sign('sha256', data, { key: privateKey, dsaEncoding: 'ieee-p1363' });
      expect(verify('sha256', data, publicKey, p1363ToDer(sig))).toBe(true);
      sig[i % 64]! ^= 1;
      expect(verify('sha256', data, publicKey, p1363ToDer(sig))).toBe(
        verify('sha256', data, { key: publicKey, dsaEncoding: 'ieee-p1363' }, sig),
      );
    }
  });
});
