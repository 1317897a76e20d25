import { createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  CborMap,
  CborRaw,
  CoseError,
  coseKeyToKeyObject,
  decodeCoseKey,
  encode,
  softwareSigner,
  verifierFromCoseKey,
} from '@rotor/cose';
import { SuitError } from '../src/errors.ts';
import {
  decodeReport,
  encodeReport,
  resultCodeFor,
  signReport,
  verifySignedReport,
  type SuitReport,
} from '../src/report.ts';
import { VECTORS } from './commands-vectors.ts';
import { readEnvelope, vector } from './processor-envelope.ts';

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
const deviceKey = (kind: 'public' | 'private'): Uint8Array =>
  readFileSync(join(VECTORS, `keys/libcsuit/device_esp256_cose_key_${kind}.cose_key`));

const failed: SuitReport = {
  reference: { uri: 'https://example.com/fw.suit', digest: { alg: -16, bytes: new Uint8Array(32).fill(7) } },
  nonce: Uint8Array.from([1, 2, 3]),
  records: [
    {
      manifestId: [],
      manifestSection: 3,
      sectionOffset: 21,
      componentIndex: 0,
      properties: new Map([[1, new Uint8Array(16)]]),
    },
    {
      kind: 'system-properties',
      component: [Uint8Array.of(0)],
      properties: new Map<number, unknown>([[14, 1234]]),
    },
  ],
  result: {
    code: resultCodeFor('SUIT_CONDITION_FAILED'),
    record: {
      manifestId: [1],
      manifestSection: 20,
      sectionOffset: 35,
      componentIndex: 2,
      properties: new Map([[3, new CborRaw(encode(encode([-16, new Uint8Array(32)])))]]),
    },
    reason: 10,
  },
};

function rejects(bytes: Uint8Array, path?: string): void {
  try {
    decodeReport(bytes);
  } catch (e) {
    expect(e).toBeInstanceOf(SuitError);
    expect((e as SuitError).code).toBe('SUIT_REPORT_INVALID');
    if (path !== undefined) expect((e as SuitError).path).toBe(path);
    return;
  }
  throw new Error('expected SUIT_REPORT_INVALID');
}

describe('SUIT_Report encoding', () => {
  it('decodes the synthetic example0 report and re-encodes it byte for byte', () => {
    const bytes = vector('report/synthetic-report-example0-success.cbor');
    const r = decodeReport(bytes);
    expect(r.result).toBe(true);
    expect(r.records).toEqual([]);
    expect(r.reference.uri).toBe('');
    expect(hex(r.reference.digest.bytes)).toBe(
      hex(readEnvelope(vector('manifest/example0.signed.cbor')).digest.bytes),
    );
    expect(hex(encodeReport(r))).toBe(hex(bytes));
  });
  it('round-trips a failure report with records, claims and a nonce deterministically', () => {
    const bytes = encodeReport(failed);
    const back = decodeReport(bytes);
    expect(hex(encodeReport(back))).toBe(hex(bytes));
    expect(back.nonce).toEqual(Uint8Array.from([1, 2, 3]));
    expect(back.records[1]).toMatchObject({ kind: 'system-properties' });
    expect(back.result).toMatchObject({
      code: 20,
      reason: 10,
      record: { manifestId: [1], manifestSection: 20, sectionOffset: 35, componentIndex: 2 },
    });
    // map keys in deterministic order: 2 nonce, 3 records, 4 result, 99 reference
    expect(bytes[0]).toBe(0xa4);
    expect(bytes[1]).toBe(0x02);
  });
  it('accepts a reference without uri and keeps extension members', () => {
    const m = new Map<number, unknown>([
      [99, [[-16, new Uint8Array(32)]]],
      [3, []],
      [4, true],
      [8, new CborMap([[2, [1, 3]]])],
      [100, 'x'],
    ]);
    const bytes = encode(m);
    const r = decodeReport(bytes);
    expect(r.reference.uri).toBeUndefined();
    expect(r.extensions?.get(100)).toBe('x');
    expect(hex(encodeReport(r))).toBe(hex(bytes));
  });
  it('rejects malformed reports with the path of the bad field', () => {
    const ok = (patch: [number, unknown][]): Uint8Array => {
      const m = new Map<number, unknown>([
        [99, ['', [-16, new Uint8Array(32)]]],
        [3, []],
        [4, true],
      ]);
      for (const [k, v] of patch) {
        if (v === undefined) m.delete(k);
        else m.set(k, v);
      }
      return encode(m);
    };
    rejects(ok([[99, undefined]]), '$.99');
    rejects(ok([[99, [1, [-16, new Uint8Array(1)]]]]), '$.99[0]');
    rejects(ok([[99, ['', [-16]]]]), '$.99[1]');
    rejects(ok([[3, undefined]]), '$.3');
    rejects(ok([[3, [[[], 20, -1, 0, new Map()]]]]), '$.3[0][2]');
    rejects(ok([[3, [[['x'], 20, 0, 0, new Map()]]]]), '$.3[0][0][0]');
    rejects(ok([[3, [[[], 20, 0, 0]]]]), '$.3[0]');
    rejects(ok([[3, [new Map([[14, 1]])]]]), '$.3[0]{0}');
    rejects(ok([[4, false]]), '$.4');
    rejects(
      ok([
        [
          4,
          new Map<number, unknown>([
            [5, 1],
            [6, [[], 1, 0, 0, new Map()]],
            [7, 99],
          ]),
        ],
      ]),
      '$.4.7',
    );
    rejects(ok([[2, 'nonce']]), '$.2');
    rejects(Uint8Array.from([0xa2, 0x04, 0xf5, 0x03, 0x80]), '$'); // unsorted keys
    rejects(Uint8Array.from([0x80]), '$');
  });
});

describe('signed reports (COSE_Sign1, attached payload)', () => {
  const verifier = verifierFromCoseKey(decodeCoseKey(deviceKey('public')));
  it('verifies the synthetic signed report with the device key', () => {
    const r = verifySignedReport(
      vector('report/synthetic-report-example0-success.sign1.cose'),
      verifier,
      new Set([-9]),
    );
    expect(r.result).toBe(true);
    expect(hex(encodeReport(r))).toBe(hex(vector('report/synthetic-report-example0-success.cbor')));
  });
  it('refuses an algorithm outside the allowlist and a tampered signature', () => {
    expect(() =>
      verifySignedReport(
        vector('report/synthetic-report-example0-success.sign1.cose'),
        verifier,
        new Set([-8]),
      ),
    ).toThrow(CoseError);
    const bad = Uint8Array.from(vector('report/synthetic-report-example0-success.sign1.cose'));
    bad[bad.length - 1]! ^= 1;
    expect(() => verifySignedReport(bad, verifier, new Set([-9]))).toThrow(/signature/);
  });
  it('signs and verifies a report', async () => {
    const priv = coseKeyToKeyObject(decodeCoseKey(deviceKey('private')));
    const signer = softwareSigner(createPrivateKey(priv.export({ format: 'pem', type: 'pkcs8' })), -9);
    const signed = await signReport(failed, signer);
    const back = verifySignedReport(signed, verifier, new Set([-9]));
    expect(hex(encodeReport(back))).toBe(hex(encodeReport(failed)));
  });
});
