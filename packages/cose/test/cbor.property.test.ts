/**
 * Property tests of the codec: determinism and round trips for arbitrary values, robustness and canonicity on
 * arbitrary bytes, and detection of single-bit corruption.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CborTag, decode, encode, type DecodeOptions } from '../src/cbor.ts';
import { CoseError } from '../src/errors.ts';
import { toHex } from './cbor-helpers.ts';

const U64_MAX = 2n ** 64n - 1n;

/** Integers over the whole CBOR range; bigint only where a number cannot hold it exactly (as decode returns). */
const intArb: fc.Arbitrary<number | bigint> = fc.oneof(
  fc.integer({ min: -30, max: 30 }),
  fc.integer(),
  fc.maxSafeInteger(),
  fc.constantFrom(23, 24, 255, 256, 65535, 65536, 2 ** 32 - 1, 2 ** 32, -24, -25, -256, -257, -(2 ** 32)),
  fc
    .bigInt({ min: -U64_MAX - 1n, max: U64_MAX })
    .map((b) =>
      b >= BigInt(Number.MIN_SAFE_INTEGER) && b <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(b) : b,
    ),
  fc.constantFrom(
    U64_MAX,
    -U64_MAX - 1n,
    2n ** 53n,
    -(2n ** 53n),
    Number.MAX_SAFE_INTEGER,
    Number.MIN_SAFE_INTEGER,
  ),
);

const textArb = fc.oneof(
  fc.string(),
  fc.string({ unit: 'binary' }),
  fc.string({ unit: 'grapheme', maxLength: 80 }),
);
const keyArb = fc.oneof(intArb, textArb);

const { value: valueArb } = fc.letrec<{ value: unknown }>((tie) => ({
  value: fc.oneof(
    { depthSize: 'small', maxDepth: 6 },
    intArb,
    fc.uint8Array({ maxLength: 40 }),
    textArb,
    fc.constantFrom(true, false, null),
    fc.array(tie('value'), { maxLength: 6 }),
    fc
      .uniqueArray(fc.tuple(keyArb, tie('value')), { maxLength: 6, selector: ([k]) => toHex(encode(k)) })
      .map((entries) => new Map<unknown, unknown>(entries)),
    fc.tuple(fc.oneof(fc.nat(40), fc.maxSafeNat()), tie('value')).map(([t, v]) => new CborTag(t, v)),
  ),
}));

/** The same value with the entries of every Map in a different insertion order. */
function permuteMaps(v: unknown, seed: number): unknown {
  if (Array.isArray(v)) return v.map((x) => permuteMaps(x, seed));
  if (v instanceof CborTag) return new CborTag(v.tag, permuteMaps(v.value, seed));
  if (v instanceof Map) {
    const entries = [...(v as Map<unknown, unknown>).entries()].map(
      ([k, x]) => [k, permuteMaps(x, seed)] as const,
    );
    let s = seed >>> 0;
    for (let i = entries.length - 1; i > 0; i--) {
      s = (Math.imul(s, 1103515245) + 12345) >>> 0;
      const j = s % (i + 1);
      [entries[i], entries[j]] = [entries[j]!, entries[i]!];
    }
    return new Map(entries);
  }
  return v;
}

/** decode, returning the CoseError instead of throwing it; any other exception escapes and fails the property. */
function tryDecode(
  bytes: Uint8Array,
  options?: DecodeOptions,
): { ok: true; value: unknown } | { ok: false; error: CoseError } {
  try {
    return { ok: true, value: decode(bytes, options) };
  } catch (e) {
    if (e instanceof CoseError) return { ok: false, error: e };
    throw e;
  }
}

describe('arbitrary values', () => {
  it('encode is deterministic: the same bytes whatever the Map insertion order', () => {
    fc.assert(
      fc.property(valueArb, fc.integer(), (v, seed) => {
        const a = encode(v);
        expect(toHex(encode(v))).toBe(toHex(a));
        expect(toHex(encode(permuteMaps(v, seed)))).toBe(toHex(a));
      }),
      { numRuns: 2000 },
    );
  });

  it('decode(encode(v)) is v (compared by re-encoding), and encode(decode(b)) is b', () => {
    fc.assert(
      fc.property(valueArb, (v) => {
        const b = encode(v);
        const d = decode(b);
        const again = encode(d);
        expect(toHex(again)).toBe(toHex(b));
        expect(toHex(encode(decode(again)))).toBe(toHex(b));
      }),
      { numRuns: 3000 },
    );
  });

  it('integers keep their exact value and the documented JS type', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: -U64_MAX - 1n, max: U64_MAX }), (n) => {
        const d = decode(encode(n));
        const safe = n >= BigInt(Number.MIN_SAFE_INTEGER) && n <= BigInt(Number.MAX_SAFE_INTEGER);
        expect(typeof d).toBe(safe ? 'number' : 'bigint');
        expect(BigInt(d as number | bigint)).toBe(n);
      }),
      { numRuns: 3000 },
    );
  });

  it('text round-trips through full Unicode', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary', maxLength: 200 }), (s) => {
        expect(decode(encode(s))).toBe(s);
      }),
      { numRuns: 2000 },
    );
  });

  it('floats round-trip in their shortest form (allowFloats), non-integral ones byte for byte', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.double(),
          fc.float().map((f) => Math.fround(f)),
          fc.integer({ min: -65504, max: 65504 }).map((i) => i / 1024),
        ),
        (x) => {
          fc.pre(!Number.isInteger(x));
          const b = encode(x);
          const d = decode(b, { allowFloats: true });
          if (Number.isNaN(x)) expect(d).toBeNaN();
          else expect(d).toBe(x);
          expect(toHex(encode(d))).toBe(toHex(b));
          // Shortest: a float32 never holds a half-exact value, a float64 never a float32-exact one.
          if (b[0] === 0xfa) expect(Math.fround(x)).toBe(x);
          if (b[0] === 0xfb) expect(Math.fround(x)).not.toBe(x);
        },
      ),
      { numRuns: 5000 },
    );
  });
});

/** Bytes that are likely heads or boundary arguments, so that random inputs decode more than trivially. */
const INTERESTING = [
  0x00, 0x01, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1f, 0x20, 0x37, 0x38, 0x3b, 0x40, 0x41, 0x58, 0x5f, 0x60, 0x61,
  0x62, 0x78, 0x7f, 0x80, 0x81, 0x82, 0x98, 0x9f, 0xa0, 0xa1, 0xa2, 0xb8, 0xbf, 0xc0, 0xc1, 0xd8, 0xdb, 0xe0,
  0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xfb, 0xfc, 0xff, 0x7e, 0x7c, 0xc3, 0xbc, 0xe6, 0xed, 0xa0, 0xf0,
  0x90, 0x3c,
];
const biasedBytes = fc
  .array(fc.oneof(fc.constantFrom(...INTERESTING), fc.integer({ min: 0, max: 255 })), { maxLength: 48 })
  .map((a) => Uint8Array.from(a));

const OPTION_SETS: DecodeOptions[] = [
  {},
  { sortedKeys: false },
  { allowFloats: true },
  { allowSimple: true },
  { allowFloats: true, allowSimple: true, sortedKeys: false },
  { maxDepth: 2, maxSize: 16 },
];

describe('arbitrary bytes', () => {
  const inputs = fc.oneof(
    fc.uint8Array({ maxLength: 8 }),
    fc.uint8Array({ maxLength: 64 }),
    fc.uint8Array({ minLength: 100, maxLength: 2000 }),
    biasedBytes,
    // Valid encodings with one byte overwritten (often still valid: string contents, integers, ...).
    fc
      .tuple(valueArb, fc.nat(), fc.oneof(fc.constantFrom(...INTERESTING), fc.nat(255)))
      .map(([v, at, byte]) => {
        const out = encode(v);
        out[at % out.length] = byte;
        return out;
      }),
    // Valid encodings with random bytes appended.
    fc.tuple(valueArb, fc.uint8Array({ minLength: 1, maxLength: 4 })).map(([v, tail]) => {
      const b = encode(v);
      const out = new Uint8Array(b.length + tail.length);
      out.set(b);
      out.set(tail, b.length);
      return out;
    }),
  );

  it('decode only ever returns a value or throws a CoseError, under every option set', () => {
    fc.assert(
      fc.property(inputs, (bytes) => {
        for (const options of OPTION_SETS) tryDecode(bytes, options);
      }),
      { numRuns: 20_000 },
    );
  });

  it('a successful decode implies the input was the deterministic encoding of the value', () => {
    let decoded = 0;
    fc.assert(
      fc.property(inputs, (bytes) => {
        // Floats are left out: a JS number cannot tell 1.0 from 1 (see the Appendix A tests).
        for (const options of [{}, { allowSimple: true }]) {
          const r = tryDecode(bytes, options);
          if (r.ok) {
            decoded++;
            expect(toHex(encode(r.value))).toBe(toHex(bytes));
          }
        }
      }),
      { numRuns: 20_000 },
    );
    // The generators must exercise the success path too, not only the error paths.
    expect(decoded).toBeGreaterThan(3000);
  });

  it('exhaustively: every 1- and 2-byte input', () => {
    for (let a = 0; a < 256; a++) {
      for (let b = -1; b < 256; b++) {
        const bytes = b < 0 ? Uint8Array.of(a) : Uint8Array.of(a, b);
        for (const options of OPTION_SETS) {
          const r = tryDecode(bytes, options);
          if (r.ok && !options.allowFloats && options.sortedKeys !== false) {
            expect(toHex(encode(r.value))).toBe(toHex(bytes));
          }
        }
      }
    }
  });
});

describe('single-bit corruption', () => {
  it('every single-bit flip of a valid encoding is refused or decodes to a different value', () => {
    fc.assert(
      fc.property(valueArb, (v) => {
        const b = encode(v);
        const original = toHex(b);
        const bits = Math.min(b.length, 64) * 8;
        for (let i = 0; i < bits; i++) {
          const f = b.slice();
          f[i >> 3]! ^= 1 << (i & 7);
          const r = tryDecode(f);
          if (r.ok) {
            const re = toHex(encode(r.value));
            expect(re).not.toBe(original);
            expect(re).toBe(toHex(f));
          }
        }
      }),
      { numRuns: 500 },
    );
  });
});
