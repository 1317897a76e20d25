/**
 * Hostile input to the parts of the capability manager that read untrusted bytes without a signature in front:
 * the WebAssembly reader (the binary is signed, but the reader must still be total on any bytes) and the stored
 * records (storage is not trusted). Every truncation and every single-bit flip must end in a typed refusal or a
 * well-formed result — never another exception.
 */
import { describe, expect, it } from 'vitest';
import {
  decodeArchiveRecord,
  decodeEnvelopeRecord,
  decodeIndex,
  decodeRevoked,
  DeviceError,
  encodeArchiveRecord,
  encodeEnvelopeRecord,
  encodeIndex,
  readWasmInfo,
  WasmFormatError,
  type Index,
} from '../src/index.ts';
import { buildModule } from './capability-modules/build.ts';

function variants(b: Uint8Array, maxFlips = 4096): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let n = 0; n < b.length; n++) out.push(b.subarray(0, n));
  const step = Math.max(1, Math.floor((b.length * 8) / maxFlips));
  for (let bit = 0; bit < b.length * 8; bit += step) {
    const c = b.slice();
    c[bit >> 3] = c[bit >> 3]! ^ (1 << (bit & 7));
    out.push(c);
  }
  return out;
}

describe('WebAssembly reader on hostile bytes', () => {
  it('every truncation and bit flip of the test modules: a summary or WasmFormatError', async () => {
    for (const src of ['codec-v1', 'codec-v2', 'grow'] as const) {
      const bin = await buildModule(src, { MAX_PAGES: '4' });
      expect(readWasmInfo(bin).exports.has('process')).toBe(true);
      for (const v of variants(bin)) {
        try {
          readWasmInfo(v);
        } catch (e) {
          expect(e).toBeInstanceOf(WasmFormatError);
        }
      }
    }
  });

  it('refuses oversized counts and LEB128 overlong encodings', () => {
    const head = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
    // type section claiming 2^32-1 entries in 5 bytes
    expect(() => readWasmInfo(new Uint8Array([...head, 0x01, 0x05, 0xff, 0xff, 0xff, 0xff, 0x0f]))).toThrow(
      WasmFormatError,
    );
    // a 6-byte LEB128
    expect(() => readWasmInfo(new Uint8Array([...head, 0x01, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00]))).toThrow(
      WasmFormatError,
    );
    // shared memory (threads): refused
    expect(() => readWasmInfo(new Uint8Array([...head, 0x05, 0x04, 0x01, 0x03, 0x01, 0x02]))).toThrow(
      /shared/,
    );
    // sections out of order
    expect(() => readWasmInfo(new Uint8Array([...head, 0x05, 0x01, 0x00, 0x01, 0x01, 0x00]))).toThrow(
      /order/,
    );
  });
});

describe('stored records on hostile bytes', () => {
  it('index, envelope records, archives and revoked digests: decoded or RECORD_INVALID', () => {
    const index: Index = new Map([
      [
        'codec',
        {
          active: {
            blob: 'e.0123456789ab.2.codec',
            kind: 'envelope',
            sequence: 2n,
            digest: new Uint8Array(32).fill(7),
            version: [2, 0, 0],
          },
          archives: [
            {
              blob: 'a.0123456789ab.1.codec',
              kind: 'archive',
              sequence: 1n,
              digest: new Uint8Array(32).fill(9),
              version: [1, 0, 0],
            },
          ],
        },
      ],
    ]);
    const samples: [Uint8Array, (b: Uint8Array) => unknown][] = [
      [encodeIndex(index), decodeIndex],
      [
        encodeEnvelopeRecord(new Uint8Array(40).fill(1), new Map([['https://x/y', new Uint8Array(8)]])),
        decodeEnvelopeRecord,
      ],
      [encodeArchiveRecord(new Uint8Array(30).fill(2), new Uint8Array(20).fill(3)), decodeArchiveRecord],
    ];
    expect(decodeIndex(samples[0]![0])).toEqual(index);
    for (const [bytes, decode] of samples) {
      for (const v of variants(bytes)) {
        try {
          decode(v);
        } catch (e) {
          expect(e).toBeInstanceOf(DeviceError);
          expect((e as DeviceError).code).toBe('RECORD_INVALID');
        }
      }
    }
    expect(() => decodeRevoked(new Uint8Array([0x81, 0x41, 0x00]))).toThrow(DeviceError);
  });
});
