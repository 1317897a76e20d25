/**
 * A malformed-input corpus for the strict profile: every rule, each with its exact CoseError code, plus the
 * boundaries (size, depth, shortest forms) on both sides, truncation at every offset, and the validators.
 */
import { describe, expect, it } from 'vitest';
import { CborMap, CborTag, decode, decodeWithSpans, encode, type DecodeOptions } from '../src/cbor.ts';
import type { CoseErrorCode } from '../src/errors.ts';
import {
  asArray,
  asBool,
  asBytes,
  asInt,
  asMap,
  asTag,
  asText,
  asUint,
  asUint64,
  checkKeys,
  required,
} from '../src/validate.ts';
import { decodeCode, expectCode, hex, thrown, toHex } from './cbor-helpers.ts';

const ALL_ON: DecodeOptions = { allowFloats: true, allowSimple: true, sortedKeys: false };

/** Head bytes of major type `mt` with additional information `ai` and an argument of the matching width. */
function head(mt: number, ai: number, value: bigint): string {
  const width = ai < 24 ? 0 : 1 << (ai - 24);
  return (
    ((mt << 5) | ai).toString(16).padStart(2, '0') +
    (width === 0 ? '' : value.toString(16).padStart(2 * width, '0'))
  );
}

/**
 * Content that completes an item of major type `mt` whose argument is `n` (so only the head can be wrong). Beyond
 * 64 KiB it is left out: the head is then refused before its length is compared with the input.
 */
function content(mt: number, n: number): string {
  if (mt === 6) return '00';
  if (n > 0x10000) return '';
  switch (mt) {
    case 2:
      return '00'.repeat(n);
    case 3:
      return '61'.repeat(n);
    case 4:
      return '00'.repeat(n);
    case 5:
      // n distinct, sorted keys 0, 1, ..., each with value 0.
      return Array.from({ length: n }, (_, i) => encodeHex(i) + '00').join('');
    default:
      return '';
  }
}

function encodeHex(v: unknown): string {
  return toHex(encode(v));
}

const MAJOR = ['uint', 'nint', 'bstr', 'tstr', 'array', 'map', 'tag'] as const;

/** Non-preferred arguments: for each head size, values that fit a shorter head (smallest, largest, and zero). */
const NON_PREFERRED_ARGS: [number, bigint][] = [
  [24, 0n],
  [24, 1n],
  [24, 23n],
  [25, 0n],
  [25, 23n],
  [25, 0xffn],
  [26, 0n],
  [26, 0xffn],
  [26, 0xffffn],
  [27, 0n],
  [27, 0xffffn],
  [27, 0xffffffffn],
];

describe('preferred (shortest) integer, length and tag heads', () => {
  const cases = MAJOR.flatMap((name, mt) =>
    NON_PREFERRED_ARGS.map(([ai, v]) => ({
      name,
      mt,
      ai,
      v,
      bytes: head(mt, ai, v) + content(mt, Number(v)),
    })),
  );

  it.each(cases)('$name with ai $ai and argument $v is CBOR_NON_PREFERRED', ({ bytes }) => {
    expectCode(bytes, 'CBOR_NON_PREFERRED');
    expectCode(bytes, 'CBOR_NON_PREFERRED', ALL_ON);
  });

  it.each(cases)('$name with ai $ai and argument $v is refused inside an array and a map', ({ bytes }) => {
    expectCode('82f6' + bytes, 'CBOR_NON_PREFERRED');
    expectCode('a100' + bytes, 'CBOR_NON_PREFERRED');
  });

  it('reports the offset of the offending head', () => {
    const e = thrown(() => decode(hex('830102' + '1801')));
    expect(e.code).toBe('CBOR_NON_PREFERRED');
    expect(e.path).toBe('byte 3');
  });

  // The smallest argument of each head size is preferred.
  const smallest: [number, bigint][] = [
    [24, 24n],
    [25, 0x100n],
    [26, 0x10000n],
    [27, 0x100000000n],
  ];
  it.each(smallest)('integers and tags with ai %i and argument %s are preferred', (ai, v) => {
    for (const mt of [0, 1, 6]) {
      const bytes = hex(head(mt, ai, v) + content(mt, Number(v)));
      expect(toHex(encode(decode(bytes)))).toBe(toHex(bytes));
    }
  });

  it.each(smallest.slice(0, 3))('lengths with ai %i and argument %s are preferred', (ai, v) => {
    for (const mt of [2, 3, 4, 5]) {
      const bytes = hex(head(mt, ai, v) + content(mt, Number(v)));
      expect(toHex(encode(decode(bytes)))).toBe(toHex(bytes));
    }
  });

  it('keeps the largest value of each head size', () => {
    expect(decode(hex('17'))).toBe(23);
    expect(decode(hex('18ff'))).toBe(255);
    expect(decode(hex('19ffff'))).toBe(65535);
    expect(decode(hex('1affffffff'))).toBe(4294967295);
    expect(decode(hex('1b001fffffffffffff'))).toBe(Number.MAX_SAFE_INTEGER);
    expect(decode(hex('1b0020000000000000'))).toBe(2n ** 53n);
    expect(decode(hex('1bffffffffffffffff'))).toBe(2n ** 64n - 1n);
    expect(decode(hex('3b001ffffffffffffe'))).toBe(Number.MIN_SAFE_INTEGER);
    expect(decode(hex('3bffffffffffffffff'))).toBe(-(2n ** 64n));
  });

  it('decodes -2^53 (not a safe integer) as bigint so that it re-encodes', () => {
    const v = decode(hex('3b001fffffffffffff'));
    expect(v).toBe(-(2n ** 53n));
    expect(toHex(encode(v))).toBe('3b001fffffffffffff');
  });

  it('refuses a tag number beyond 2^53 as CBOR_UNSUPPORTED', () => {
    expectCode('db0020000000000000' + '00', 'CBOR_UNSUPPORTED');
    expectCode('dbffffffffffffffff' + '00', 'CBOR_UNSUPPORTED');
    expect(decode(hex('db001fffffffffffff00'))).toStrictEqual(new CborTag(Number.MAX_SAFE_INTEGER, 0));
  });

  it('refuses two-byte simple values below 32 (allowSimple)', () => {
    for (let v = 0; v < 32; v++)
      expectCode('f8' + v.toString(16).padStart(2, '0'), 'CBOR_NON_PREFERRED', ALL_ON);
    expect(decode(hex('f820'), ALL_ON)).toMatchObject({ value: 32 });
  });
});

describe('preferred floats (allowFloats)', () => {
  const F: DecodeOptions = { allowFloats: true };
  const nonPreferred: [string, string][] = [
    ['1.0 as float32', 'fa3f800000'],
    ['0.0 as float32', 'fa00000000'],
    ['-0.0 as float32', 'fa80000000'],
    ['65504 as float32', 'fa477fe000'],
    ['2^-24 (half subnormal) as float32', 'fa33800000'],
    ['1.0 as float64', 'fb3ff0000000000000'],
    ['1.5 as float64', 'fb3ff8000000000000'],
    ['100000.0 as float64', 'fb40f86a0000000000'],
    ['float32 max as float64', 'fb47efffffe0000000'],
    ['NaN with a payload (half)', 'f97e01'],
    ['signalling NaN (half)', 'f97c01'],
    ['negative NaN (half)', 'f9fe00'],
    ['NaN with a payload (float32)', 'fa7fc00001'],
    ['NaN with a payload (float64)', 'fb7ff8000000000001'],
  ];
  it.each(nonPreferred)('%s (%s) is CBOR_NON_PREFERRED', (_, h) => {
    expectCode(h, 'CBOR_NON_PREFERRED', F);
    expectCode(h, 'CBOR_UNSUPPORTED');
  });

  const preferred: [string, string, number][] = [
    ['float32 that no half holds', 'fa47c35080', 100001],
    ['smallest float32 subnormal', 'fa00000001', 2 ** -149],
    ['float64 subnormal', 'fb0000000000000001', 5e-324],
    ['largest half', 'f97bff', 65504],
    ['65520 needs float32', 'fa477ff000', 65520],
    ['1/3', 'fb3fd5555555555555', 1 / 3],
  ];
  it.each(preferred)('%s (%s) is accepted and round-trips', (_, h, v) => {
    const d = decode(hex(h), F);
    expect(d).toBe(v);
    if (!Number.isInteger(v)) expect(toHex(encode(d))).toBe(h);
  });
});

describe('definite lengths only', () => {
  const cases: [string, string][] = [
    ['bstr', '5fff'],
    ['bstr with a chunk', '5f4101ff'],
    ['tstr', '7fff'],
    ['tstr with a chunk', '7f6161ff'],
    ['array', '9fff'],
    ['array with an item', '9f01ff'],
    ['map', 'bfff'],
    ['map with an entry', 'bf0000ff'],
    ['nested in an array', '82009f'],
    ['nested in a map value', 'a1005fff'],
    ['as a map key', 'a17fff00'],
    ['inside a tag', 'c19fff'],
    ['uint with ai 31', '1f'],
    ['nint with ai 31', '3f'],
    ['tag with ai 31', 'df00'],
  ];
  it.each(cases)('indefinite %s (%s) is CBOR_INDEFINITE_LENGTH', (_, h) => {
    expectCode(h, 'CBOR_INDEFINITE_LENGTH');
    expectCode(h, 'CBOR_INDEFINITE_LENGTH', ALL_ON);
  });

  it('reports the lone 0x5f, 0x7f, 0x9f, 0xbf heads as indefinite, not truncated', () => {
    for (const h of ['5f', '7f', '9f', 'bf']) expectCode(h, 'CBOR_INDEFINITE_LENGTH');
  });
});

describe('reserved additional information and a lone break', () => {
  const cases = [0, 1, 2, 3, 4, 5, 6, 7].flatMap((mt) =>
    [28, 29, 30].map((ai) => ({ mt, ai, h: ((mt << 5) | ai).toString(16) })),
  );
  it.each(cases)('major type $mt with ai $ai (0x$h) is CBOR_RESERVED under every option', ({ h }) => {
    expectCode(h, 'CBOR_RESERVED');
    expectCode(h, 'CBOR_RESERVED', ALL_ON);
    expectCode(h, 'CBOR_RESERVED', { allowFloats: true });
    expectCode(h, 'CBOR_RESERVED', { allowSimple: true });
    expectCode('81' + h, 'CBOR_RESERVED');
  });

  it.each(['ff', '81ff', '82 01ff', 'a1ff00', 'a100ff', 'c1ff'])('a break (%s) is CBOR_RESERVED', (h) => {
    expectCode(h, 'CBOR_RESERVED');
    expectCode(h, 'CBOR_RESERVED', ALL_ON);
  });
});

describe('map keys: no duplicates, bytewise lexicographic order', () => {
  const duplicates: [string, string][] = [
    ['int', 'a2 0100 0101'],
    ['negative int', 'a2 2000 2001'],
    ['large int', 'a2 1bffffffffffffffff00 1bffffffffffffffff01'],
    ['text', 'a2 616100 616101'],
    ['empty text', 'a2 6000 6001'],
    ['bstr', 'a2 410100 410101'],
    ['array', 'a2 820102 00 820102 01'],
    ['empty array', 'a2 8000 8001'],
    ['map', 'a2 a10102 00 a10102 01'],
    ['tag', 'a2 c10000 c10001'],
    ['bool', 'a2 f500 f501'],
    ['null', 'a2 f600 f601'],
    ['in a nested map', '81 a1 00 a2 0000 0000'],
    ['after distinct keys', 'a3 0000 0100 0100'],
  ];
  it.each(duplicates)('duplicate %s key is CBOR_DUPLICATE_KEY in both modes', (_, h) => {
    expectCode(h, 'CBOR_DUPLICATE_KEY');
    expectCode(h, 'CBOR_DUPLICATE_KEY', { sortedKeys: false });
  });

  const unsortedDuplicates: [string, string][] = [
    ['int', 'a3 0100 0200 0100'],
    ['text', 'a3 616200 616100 616200'],
    ['array', 'a3 8101 00 00 00 8101 01'],
    ['map', 'a3 a10000 00 01 00 a10000 01'],
    ['tagged bstr', 'a3 d8184100 00 00 00 d8184100 01'],
  ];
  it.each(unsortedDuplicates)(
    'non-adjacent duplicate %s key: unsorted by default, duplicate when unsorted',
    (_, h) => {
      expectCode(h, 'CBOR_UNSORTED_KEYS');
      expectCode(h, 'CBOR_DUPLICATE_KEY', { sortedKeys: false });
    },
  );

  const orders: { name: string; sorted: string; unsorted: string }[] = [
    { name: '4 before -1 (0x04 < 0x20)', sorted: 'a2 0400 2000', unsorted: 'a2 2000 0400' },
    { name: '10 before 100 (0x0a < 0x18)', sorted: 'a2 0a00 186400', unsorted: 'a2 186400 0a00' },
    {
      name: '"b" before "aa" (shorter head first)',
      sorted: 'a2 616200 62616100',
      unsorted: 'a2 62616100 616200',
    },
    { name: '"a" before "b"', sorted: 'a2 616100 616200', unsorted: 'a2 616200 616100' },
    { name: 'int before text', sorted: 'a2 0000 616100', unsorted: 'a2 616100 0000' },
    { name: '-1 before -2', sorted: 'a2 2000 2100', unsorted: 'a2 2100 2000' },
    { name: '23 before 24', sorted: 'a2 1700 181800', unsorted: 'a2 181800 1700' },
    { name: 'bstr before tstr', sorted: 'a2 4100 00 6000', unsorted: 'a2 6000 4100 00' },
    { name: 'prefix first', sorted: 'a2 8101 00 820101 00', unsorted: 'a2 820101 00 8101 00' },
    { name: 'keys deep inside', sorted: '81 a3 0000 0100 0200', unsorted: '81 a3 0000 0200 0100' },
  ];
  it.each(orders)('$name', ({ sorted, unsorted }) => {
    const s = decode(hex(sorted));
    expect(toHex(encode(s))).toBe(sorted.replace(/\s+/g, ''));
    expectCode(unsorted, 'CBOR_UNSORTED_KEYS');
    // Opting out admits the unsorted order and keeps the wire order; re-encoding sorts.
    const u = decode(hex(unsorted), { sortedKeys: false });
    expect(toHex(encode(u))).toBe(toHex(encode(s)));
  });

  it('keeps entries in wire order and indexes int and text keys with sortedKeys: false', () => {
    const v = decode(hex('a3 6161 01 20 02 04 03'), { sortedKeys: false });
    expect(v).toBeInstanceOf(CborMap);
    const map = v as CborMap;
    expect(map.keys()).toStrictEqual(['a', -1, 4]);
    expect(map.get('a')).toBe(1);
    expect(map.get(-1)).toBe(2);
    expect(map.get(4)).toBe(3);
    expect(map.has(5)).toBe(false);
    expect(map.size).toBe(3);
  });
});

describe('text strings must be valid UTF-8', () => {
  const invalid: [string, string][] = [
    ['overlong NUL', '62 c080'],
    ['overlong "/"', '62 c0af'],
    ['overlong 3-byte', '63 e08080'],
    ['overlong 4-byte', '64 f0808080'],
    ['surrogate U+D800', '63 eda080'],
    ['surrogate U+DFFF', '63 edbfbf'],
    ['CESU-8 pair', '66 eda081edb080'],
    ['beyond U+10FFFF', '64 f4908080'],
    ['0xFF', '61 ff'],
    ['0xFE', '61 fe'],
    ['lone continuation byte', '61 80'],
    ['truncated 2-byte sequence', '61 c3'],
    ['truncated 3-byte sequence', '62 e6b0'],
    ['truncated 4-byte sequence', '63 f09085'],
    ['truncated sequence before ASCII', '62 c361'],
    ['5-byte form', '65 f888808080'],
    ['invalid byte after 64 ASCII bytes', '78 41' + '61'.repeat(64) + 'ff'],
    ['in a map key', 'a1 61ff 00'],
    ['deep in an array', '81 81 82 6161 61ff'],
  ];
  it.each(invalid)('%s (%s) is CBOR_INVALID_UTF8', (_, h) => {
    expectCode(h, 'CBOR_INVALID_UTF8');
    expectCode(h, 'CBOR_INVALID_UTF8', ALL_ON);
  });

  const valid: [string, string, string][] = [
    ['BOM (kept, not stripped)', '63 efbbbf', '\ufeff'],
    ['U+FFFF', '63 efbfbf', '\uffff'],
    ['U+10FFFF', '64 f48fbfbf', '\u{10ffff}'],
    ['U+0000', '61 00', '\0'],
    ['U+007F', '61 7f', '\x7f'],
    ['U+0080', '62 c280', '\x80'],
    ['64 ASCII bytes', '78 40' + '7a'.repeat(64), 'z'.repeat(64)],
    ['long mixed', '78 42' + '7a'.repeat(64) + 'c3bc', 'z'.repeat(64) + '\u00fc'],
  ];
  it.each(valid)('%s decodes and round-trips', (_, h, s) => {
    expect(decode(hex(h))).toBe(s);
    expect(toHex(encode(s))).toBe(h.replace(/\s+/g, ''));
  });

  it('refuses to encode a string with a lone surrogate (it would not round-trip)', () => {
    expect(thrown(() => encode('a\ud800')).code).toBe('CBOR_ENCODE');
    expect(thrown(() => encode(['\udc00'])).code).toBe('CBOR_ENCODE');
  });
});

describe('exactly one item: trailing bytes', () => {
  it.each(['0000', '8000', 'a000', '01ff', '6161 61', '4100 00', 'f6f6', '820102 03'])(
    '%s is CBOR_TRAILING_BYTES',
    (h) => {
      expectCode(h, 'CBOR_TRAILING_BYTES');
      expectCode(h, 'CBOR_TRAILING_BYTES', ALL_ON);
    },
  );

  it('names the offset of the first trailing byte', () => {
    expect(thrown(() => decode(hex('8201020304'))).path).toBe('byte 3');
  });

  it('decodeWithSpans reads a sequence of items', () => {
    expect(decodeWithSpans(hex('01 8102 6161'))).toStrictEqual([
      { value: 1, start: 0, end: 1 },
      { value: [2], start: 1, end: 3 },
      { value: 'a', start: 3, end: 5 },
    ]);
    expect(decodeWithSpans(new Uint8Array(0))).toStrictEqual([]);
    expect(() => decodeWithSpans(hex('01 1801'))).toThrow(/one-byte argument/);
  });
});

describe('bounded input size', () => {
  it('accepts exactly maxSize bytes and refuses one more, before looking at them', () => {
    expect(decode(hex('49' + '00'.repeat(9)), { maxSize: 10 })).toHaveLength(9);
    expectCode('4a' + '00'.repeat(10), 'CBOR_TOO_LARGE', { maxSize: 10 });
    expectCode('ff'.repeat(11), 'CBOR_TOO_LARGE', { maxSize: 10 });
    expectCode('', 'CBOR_TOO_LARGE', { maxSize: -1 });
    expect(() => decodeWithSpans(hex('0000'), { maxSize: 1 })).toThrow(/exceeds/);
  });

  it('defaults to 1 MiB', () => {
    const max = 1 << 20;
    const ok = new Uint8Array(max);
    ok.set(hex('5a' + (max - 5).toString(16).padStart(8, '0')));
    expect((decode(ok) as Uint8Array).length).toBe(max - 5);
    const big = new Uint8Array(max + 1);
    big.set(hex('5a' + (max - 4).toString(16).padStart(8, '0')));
    expectCode(big, 'CBOR_TOO_LARGE');
  });
});

describe('bounded nesting depth', () => {
  const nest = (open: string, d: number, leaf = '00'): string => open.repeat(d) + leaf;
  const kinds: [string, string][] = [
    ['arrays', '81'],
    ['maps', 'a100'],
    ['tags', 'c1'],
    ['mixed', '81a100c1'],
  ];

  it.each([0, 1, 2, 5, 32, 100])(
    'maxDepth %i: that many levels pass, one more is CBOR_TOO_DEEP',
    (maxDepth) => {
      for (const [, open] of kinds.slice(0, 3)) {
        expect(decodeCode(nest(open, maxDepth), { maxDepth })).toBe('OK');
        expect(decodeCode(nest(open, maxDepth + 1), { maxDepth })).toBe('CBOR_TOO_DEEP');
      }
      // Empty containers count as a level too.
      if (maxDepth > 0) expect(decodeCode(nest('81', maxDepth - 1, '80'), { maxDepth })).toBe('OK');
      if (maxDepth > 0) expect(decodeCode(nest('81', maxDepth - 1, 'a0'), { maxDepth })).toBe('OK');
      expect(decodeCode(nest('81', maxDepth, '80'), { maxDepth })).toBe('CBOR_TOO_DEEP');
      expect(decodeCode(nest('81', maxDepth, 'a0'), { maxDepth })).toBe('CBOR_TOO_DEEP');
    },
  );

  it('counts arrays, maps and tags together at the default limit of 32', () => {
    // 11 × (array, map, tag) = 33 levels; drop the last tag for 32.
    const open = '81a100c1';
    expect(decodeCode(open.repeat(11) + '00')).toBe('CBOR_TOO_DEEP');
    expect(decodeCode(open.repeat(10) + '81a100' + '00')).toBe('OK');
    expect(decodeCode(nest('81', 32))).toBe('OK');
    expect(decodeCode(nest('81', 33))).toBe('CBOR_TOO_DEEP');
    expect(decodeCode(nest('a100', 32))).toBe('OK');
    expect(decodeCode(nest('a100', 33))).toBe('CBOR_TOO_DEEP');
    expect(decodeCode(nest('c1', 32))).toBe('OK');
    expect(decodeCode(nest('c1', 33))).toBe('CBOR_TOO_DEEP');
  });

  it('counts nesting inside map keys', () => {
    // {[[0]]: 0} is three levels.
    expect(decodeCode('a1 8181 00 00', { maxDepth: 3 })).toBe('OK');
    expect(decodeCode('a1 8181 00 00', { maxDepth: 2 })).toBe('CBOR_TOO_DEEP');
  });

  it('fails cleanly (no stack overflow) on a megabyte of nested arrays', () => {
    const deep = new Uint8Array(1 << 20).fill(0x81);
    expectCode(deep, 'CBOR_TOO_DEEP');
    expectCode(new Uint8Array(1 << 20).fill(0xc1), 'CBOR_TOO_DEEP');
  });
});

describe('truncation', () => {
  const samples: [string, unknown][] = [
    ['uint64', 2n ** 64n - 1n],
    ['nint32', -100000],
    ['bstr', hex('00112233445566778899aabbccddeeff0011223344')],
    ['tstr with multi-byte characters', 'a\u00fc\u6c34\u{10151}z'.repeat(8)],
    ['nested arrays', [1, [2, [3, [4, []]]], 'x']],
    [
      'map',
      new Map<unknown, unknown>([
        [1, 'one'],
        [-7, hex('0102')],
        ['k', [true, false, null]],
        [[1], new Map([[2, 3]])],
      ]),
    ],
    ['tags', new CborTag(24, new CborTag(1000, [new CborTag(2, hex('01'))]))],
    [
      'COSE_Sign1-like',
      new CborTag(18, [
        hex('a10126'),
        new Map([[4, hex('6b6964')]]),
        hex('7061796c6f6164'),
        hex('00'.repeat(64)),
      ]),
    ],
  ];

  it.each(samples)('every proper prefix of %s is CBOR_TRUNCATED', (_, value) => {
    const bytes = encode(value);
    expect(toHex(encode(decode(bytes)))).toBe(toHex(bytes));
    for (let n = 0; n < bytes.length; n++) {
      const prefix = bytes.subarray(0, n);
      expect({ n, code: decodeCode(prefix) }).toStrictEqual({ n, code: 'CBOR_TRUNCATED' });
      expect({ n, code: decodeCode(prefix, ALL_ON) }).toStrictEqual({ n, code: 'CBOR_TRUNCATED' });
    }
  });

  it('every proper prefix of a float is CBOR_TRUNCATED (allowFloats)', () => {
    for (const h of ['f93e00', 'fa47c35080', 'fb3ff199999999999a', 'f820']) {
      const bytes = hex(h);
      for (let n = 0; n < bytes.length; n++) expectCode(bytes.subarray(0, n), 'CBOR_TRUNCATED', ALL_ON);
    }
  });

  const huge: [string, string][] = [
    ['bstr of 2^63 bytes', '5b8000000000000000'],
    ['bstr of 2^64-1 bytes', '5bffffffffffffffff'],
    ['bstr of 2^53 bytes', '5b0020000000000000'],
    ['bstr of 2^32 bytes', '5b0000000100000000'],
    ['bstr of 2^32-1 bytes', '5affffffff'],
    ['tstr of 2^63 bytes', '7b8000000000000000'],
    ['tstr of 2^32-1 bytes', '7affffffff' + '61'],
    ['array of 2^32 items', '9b0000000100000000'],
    ['array of 2^64-1 items', '9bffffffffffffffff00'],
    ['array of 2^32-1 items', '9affffffff000000'],
    ['map of 2^32 entries', 'bb0000000100000000'],
    ['map of 2^32-1 entries', 'baffffffff0000'],
    ['map of 2 entries in 3 bytes', 'a2000000'],
    ['array of 3 items in 2 bytes', '830000'],
    ['bstr one byte short', '44001122'],
  ];
  it.each(huge)('%s is CBOR_TRUNCATED, fast and without allocating', (_, h) => {
    const bytes = hex(h);
    const t0 = performance.now();
    for (let i = 0; i < 1000; i++) expectCode(bytes, 'CBOR_TRUNCATED', ALL_ON);
    expect(performance.now() - t0).toBeLessThan(1000);
  });
});

describe('validators: wrong types at every level give CBOR_TYPE with the path', () => {
  const samples: [string, unknown][] = [
    ['uint', 7],
    ['nint', -7],
    ['uint64', 2n ** 64n - 1n],
    ['nint64', -(2n ** 64n)],
    ['bstr', hex('01')],
    ['tstr', 'x'],
    ['array', [1]],
    ['map', new CborMap([[1, 2]])],
    ['tag', new CborTag(24, hex('00'))],
    ['bool', true],
    ['null', null],
    ['float', 1.5],
    ['undefined', undefined],
  ];
  const validators: [string, (v: unknown, p: string) => unknown, string[]][] = [
    ['asUint', asUint, ['uint']],
    ['asUint64', asUint64, ['uint', 'uint64']],
    ['asInt', asInt, ['uint', 'nint']],
    ['asBytes', asBytes, ['bstr']],
    ['asText', asText, ['tstr']],
    ['asBool', asBool, ['bool']],
    ['asArray', asArray, ['array']],
    ['asMap', asMap, ['map']],
    ['asTag(24)', (v, p) => asTag(v, 24, p), ['tag']],
  ];
  const cases = validators.flatMap(([name, f, ok]) =>
    samples.map(([kind, v]) => ({ name, f, kind, v, ok: ok.includes(kind) })),
  );

  it.each(cases)('$name($kind)', ({ f, v, ok }) => {
    if (ok) {
      expect(() => f(v, '$.x')).not.toThrow();
    } else {
      const e = thrown(() => f(v, '$.x'));
      expect(e.code).toBe('CBOR_TYPE');
      expect(e.path).toBe('$.x');
      expect(e.message).toMatch(/^expected .+, found .+ at \$\.x$/);
    }
  });

  it('checks bounds and tag numbers', () => {
    expect(thrown(() => asBytes(hex('0102'), 'p', { min: 3 })).code).toBe('CBOR_TYPE');
    expect(thrown(() => asBytes(hex('0102'), 'p', { max: 1 })).code).toBe('CBOR_TYPE');
    expect(asBytes(hex('0102'), 'p', { min: 2, max: 2 })).toHaveLength(2);
    expect(thrown(() => asArray([1, 2], 'p', { min: 3 })).path).toBe('p');
    expect(thrown(() => asArray([1, 2], 'p', { max: 1 })).path).toBe('p');
    expect(thrown(() => asText('abc', 'p', { max: 2 })).code).toBe('CBOR_TYPE');
    expect(thrown(() => asTag(new CborTag(23, 0), 24, 'p')).message).toMatch(/expected tag 24, found tag 23/);
    const m = new CborMap([
      [1, 'a'],
      ['b', 2],
    ]);
    expect(() => {
      checkKeys(m, new Set([1, 'b']), 'p');
    }).not.toThrow();
    expect(
      thrown(() => {
        checkKeys(m, new Set([1]), 'p');
      }).message,
    ).toMatch(/unexpected key "b"/);
    expect(
      thrown(() => {
        checkKeys(new CborMap([[[1], 0]]), new Set([1]), 'p');
      }).code,
    ).toBe('CBOR_TYPE');
    expect(thrown(() => required(m, 2, '$.m')).message).toMatch(/missing member 2 at \$\.m/);
    expect(required(new CborMap([[5, undefined]]), 5, 'p')).toBeUndefined();
  });

  /** A small typed model built from decoded CBOR, the way real callers use the validators. */
  function parse(bytes: Uint8Array): {
    version: number;
    items: { digest: Uint8Array; name: string }[];
    body: Uint8Array;
  } {
    const root = asMap(decode(bytes), '$');
    const version = asUint(required(root, 1, '$'), '$.1');
    const items = asArray(required(root, 2, '$'), '$.2', { min: 1 }).map((it, i) => {
      const im = asMap(it, `$.2[${i}]`);
      return {
        digest: asBytes(required(im, 1, `$.2[${i}]`), `$.2[${i}].1`, { min: 1 }),
        name: asText(required(im, 2, `$.2[${i}]`), `$.2[${i}].2`),
      };
    });
    const body = asBytes(asTag(required(root, 3, '$'), 24, '$.3'), '$.3#24');
    return { version, items, body };
  }

  const good = (
    over: Partial<
      Record<'root' | 'version' | 'items' | 'item1' | 'digest' | 'name' | 'tag' | 'body', unknown>
    > = {},
  ): unknown => {
    const item = (d: unknown, n: unknown): Map<number, unknown> =>
      new Map([
        [1, d],
        [2, n],
      ]);
    if ('root' in over) return over.root;
    return new Map<number, unknown>([
      [1, 'version' in over ? over.version : 1],
      [
        2,
        'items' in over
          ? over.items
          : [
              item(hex('aa'), 'a'),
              'item1' in over
                ? over.item1
                : item('digest' in over ? over.digest : hex('bb'), 'name' in over ? over.name : 'b'),
            ],
      ],
      [3, 'tag' in over ? over.tag : new CborTag(24, 'body' in over ? over.body : hex('00'))],
    ]);
  };

  it('parses the well-typed document', () => {
    expect(parse(encode(good()))).toStrictEqual({
      version: 1,
      items: [
        { digest: hex('aa'), name: 'a' },
        { digest: hex('bb'), name: 'b' },
      ],
      body: hex('00'),
    });
  });

  const wrong: [string, Parameters<typeof good>[0], string][] = [
    ['root', { root: [1] }, '$'],
    ['version', { version: 'one' }, '$.1'],
    ['negative version', { version: -1 }, '$.1'],
    ['items', { items: new Map() }, '$.2'],
    ['empty items', { items: [] }, '$.2'],
    ['item', { item1: [hex('bb'), 'b'] }, '$.2[1]'],
    ['digest', { digest: 'bb' }, '$.2[1].1'],
    ['empty digest', { digest: new Uint8Array(0) }, '$.2[1].1'],
    ['name', { name: hex('62') }, '$.2[1].2'],
    ['tag', { tag: hex('00') }, '$.3'],
    ['tag number', { tag: new CborTag(25, hex('00')) }, '$.3'],
    ['body', { body: 0 }, '$.3#24'],
  ];
  it.each(wrong)('a wrong %s is CBOR_TYPE at %s', (_, over, path) => {
    const e = thrown(() => parse(encode(good(over))));
    expect(e.code).toBe('CBOR_TYPE');
    expect(e.path).toBe(path);
  });

  it('names the missing member', () => {
    const noName = encode(
      new Map<number, unknown>([
        [1, 1],
        [2, [new Map([[1, hex('aa')]])]],
        [3, new CborTag(24, hex(''))],
      ]),
    );
    const e = thrown(() => parse(noName));
    expect(e.path).toBe('$.2[0]');
    expect(e.message).toMatch(/missing member 2/);
  });
});

describe('decode errors are CoseErrors with a byte offset', () => {
  const cases: [string, CoseErrorCode, string][] = [
    ['82 01 1801', 'CBOR_NON_PREFERRED', 'byte 2'],
    ['82 01', 'CBOR_TRUNCATED', 'byte 0'],
    ['82 01 19', 'CBOR_TRUNCATED', 'byte 3'],
    ['a2 0100 0000', 'CBOR_UNSORTED_KEYS', 'byte 3'],
    ['a2 0100 0100', 'CBOR_DUPLICATE_KEY', 'byte 3'],
    ['83 00 00 61ff', 'CBOR_INVALID_UTF8', 'byte 3'],
    ['83 00 00 fc', 'CBOR_RESERVED', 'byte 3'],
    ['83 00 00 9f', 'CBOR_INDEFINITE_LENGTH', 'byte 3'],
    ['83 00 00 f7', 'CBOR_UNSUPPORTED', 'byte 3'],
    ['81 81 80', 'CBOR_TOO_DEEP', 'byte 2'],
  ];
  it.each(cases)('%s -> %s at %s', (h, code, path) => {
    const e = thrown(() => decode(hex(h), { maxDepth: 2 }));
    expect(e.code).toBe(code);
    expect(e.path).toBe(path);
  });
});
