/** Issue 7: the policy engine's rule matching (pure): status, per-claim status, firmware version, RoT index. */
import { describe, expect, it } from 'vitest';
import { compareVersions, matchingRules, type PolicyDocument } from '../src/attestation/policy.ts';

const doc: PolicyDocument = {
  rules: [
    { id: 'bad', when: { status: ['contraindicated'] }, then: ['quarantine'] },
    { id: 'old-fw', when: { swversionBelow: '2.0.0' }, then: ['request-attestation'] },
    { id: 'old-rot', when: { rotIndexBelow: 2 }, then: ['rotate-rot'] },
    {
      id: 'revoked-rot',
      when: { claims: { signature: ['contraindicated'] } },
      then: ['rotate-rot', 'disable-device'],
    },
  ],
};

describe('policy rules (issue 7, seed 001 policy engine)', () => {
  it('compares dotted versions numerically', () => {
    expect(compareVersions('1.10.0', '1.9.9')).toBe(1);
    expect(compareVersions('2.0', '2.0.0')).toBe(0);
    expect(compareVersions('1.2.3', '1.2.4')).toBe(-1);
  });

  it('matches every rule whose conditions all hold', () => {
    const ids = (f: Parameters<typeof matchingRules>[1]) => matchingRules(doc, f).map((r) => r.id);
    expect(ids({ status: 'affirming', claims: {}, swversion: '2.1.0', rotIndex: 5 })).toEqual([]);
    expect(ids({ status: 'affirming', claims: {}, swversion: '1.9.0', rotIndex: 1 })).toEqual([
      'old-fw',
      'old-rot',
    ]);
    expect(
      ids({
        status: 'contraindicated',
        claims: { signature: { status: 'contraindicated', reason: 'revoked RoT key' } },
        rotIndex: null,
      }),
    ).toEqual(['bad', 'revoked-rot']);
  });
});
