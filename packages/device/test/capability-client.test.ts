/**
 * The capability client's handling of what the server sends (untrusted: RFC 9019 §3) and of what it reports: a
 * query answer is read strictly (bounded fields, a capability name, base64 envelope, a module-payload path on the
 * server only, a bounded dependency list); a module report is a SUIT report (draft-ietf-suit-report §4) naming the
 * envelope digest with the Rotor transition members, which the server's decoder reads back.
 */
import { describe, expect, it } from 'vitest';
import { decodeReport, encodeReport } from '@rotor/suit';
import {
  DeviceError,
  MAX_OFFERS,
  moduleReport,
  parseCapabilityAnswer,
  parseOffers,
  ROTOR_REPORT_KEY,
} from '../src/index.ts';

const ok = {
  moduleId: 'm1',
  name: 'codec',
  version: '1.0.0',
  sequenceNumber: 1,
  moduleSha256: 'ab'.repeat(32),
  envelope: Buffer.from([0xd8, 0x6b, 0xa0]).toString('base64'),
  payloadUrl: `/d/v1/capabilities/payloads/${'cd'.repeat(32)}`,
  requires: [{ name: 'base', version: '1.2.0' }],
};
const enc = (o: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(o));
const code = (f: () => unknown): string | undefined => {
  try {
    f();
    return undefined;
  } catch (e) {
    return e instanceof DeviceError ? e.code : 'OTHER';
  }
};

describe('capability answers are read strictly', () => {
  it('accepts a well-formed answer', () => {
    const a = parseCapabilityAnswer(enc(ok), 1024);
    expect(a).toMatchObject({ name: 'codec', version: '1.0.0', payloadUrl: ok.payloadUrl });
    expect([...a.envelope]).toEqual([0xd8, 0x6b, 0xa0]);
    expect(a.requires).toEqual([{ name: 'base', version: '1.2.0' }]);
  });

  it('refuses anything outside the protocol with TRACKER_PROTOCOL', () => {
    const bad: unknown[] = [
      'not json',
      [],
      null,
      { ...ok, name: 'Codec!' },
      { ...ok, name: 7 },
      { ...ok, version: 'x'.repeat(33) },
      { ...ok, envelope: 'not base64 ***' },
      { ...ok, envelope: 'A'.repeat(2000) }, // above the device's envelope bound
      // The payload must be the server's module payload path: not another host, not another endpoint.
      { ...ok, payloadUrl: 'https://evil.example/d/v1/capabilities/payloads/' + 'cd'.repeat(32) },
      { ...ok, payloadUrl: '//evil.example/x' },
      { ...ok, payloadUrl: '/d/v1/payloads/' + 'cd'.repeat(32) },
      { ...ok, payloadUrl: `/d/v1/capabilities/payloads/${'cd'.repeat(32)}?x=1` },
      { ...ok, requires: 'base' },
      { ...ok, requires: [{ name: 'base' }] },
      { ...ok, requires: Array.from({ length: 65 }, () => ({ name: 'base', version: '1.0.0' })) },
    ];
    for (const b of bad) {
      const body = typeof b === 'string' ? new TextEncoder().encode(b) : enc(b);
      expect(
        code(() => parseCapabilityAnswer(body, 1024)),
        JSON.stringify(b).slice(0, 80),
      ).toBe('TRACKER_PROTOCOL');
    }
  });
});

describe('module rollout offers are read strictly', () => {
  const offer = { rolloutId: 'r-1', moduleId: 'm_2', name: 'codec', version: '1.0.0' };

  it('accepts a bounded list of {rolloutId, moduleId, name, version}', () => {
    expect(parseOffers(enc({ offers: [offer], more: false }))).toEqual({ offers: [offer], more: false });
    expect(parseOffers(enc({ offers: [], more: true }))).toEqual({ offers: [], more: true });
  });

  it('refuses anything outside the protocol with TRACKER_PROTOCOL', () => {
    const bad: unknown[] = [
      [],
      { offers: [offer] },
      { offers: {}, more: false },
      { offers: Array.from({ length: MAX_OFFERS + 1 }, () => offer), more: true },
      { offers: [{ ...offer, name: 'Not A Name' }], more: false },
      { offers: [{ ...offer, rolloutId: '../x' }], more: false },
      { offers: [{ ...offer, moduleId: 'x'.repeat(65) }], more: false },
      { offers: [{ ...offer, version: 1 }], more: false },
      { offers: [{ ...offer, version: '1'.repeat(33) }], more: false },
      { offers: [null], more: false },
    ];
    for (const b of bad)
      expect(
        code(() => parseOffers(enc(b))),
        JSON.stringify(b),
      ).toBe('TRACKER_PROTOCOL');
    expect(code(() => parseOffers(new TextEncoder().encode('{')))).toBe('TRACKER_PROTOCOL');
  });
});

describe('module reports', () => {
  const digest = new Uint8Array(32).fill(3);

  it('installed and unloaded are successes; failed and reverted carry a failure record and the reason', () => {
    for (const t of ['installed', 'unloaded'] as const) {
      const r = decodeReport(encodeReport(moduleReport(digest, t)));
      expect(r.result).toBe(true);
      expect(r.extensions?.get(ROTOR_REPORT_KEY.transition)).toBe(t);
      expect([...r.reference.digest.bytes]).toEqual([...digest]);
    }
    const failed = decodeReport(encodeReport(moduleReport(digest, 'failed', 'CAP_HEALTH', 'x'.repeat(400))));
    expect(failed.result).not.toBe(true);
    expect(failed.extensions?.get(ROTOR_REPORT_KEY.reason)).toBe('CAP_HEALTH');
    expect((failed.extensions?.get(ROTOR_REPORT_KEY.detail) as string).length).toBe(256);
    const reverted = decodeReport(encodeReport(moduleReport(digest, 'reverted', 'CAP_FAULT')));
    expect(reverted.result).toMatchObject({ record: { manifestSection: 9 } });
  });
});
