/**
 * Hostile input against the whole envelope path (decode + authenticate + validate), per issue 2's "must show":
 * every single-bit flip of every valid vector, truncation at every offset, and random bytes only ever produce typed
 * errors (CoseError / SuitError: no crash, no hang), and a flipped bit never verifies.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { isCoseError } from '@rotor/cose';
import { authenticateEnvelope, authenticateIntegratedDependency } from '../src/authenticate.ts';
import { decodeEnvelope } from '../src/decode.ts';
import { isSuitError } from '../src/errors.ts';
import type { TrustPolicy } from '../src/policy.ts';
import { anchor, draftVerifier, encDepVerifier, hmacKey, policyOf } from './keys.ts';
import { vector } from './vectors.ts';

/** Every valid signed vector with a policy under which it authenticates. */
const VALID: readonly (readonly [string, () => TrustPolicy])[] = [
  ...[0, 1, 2, 3, 4, 5].map((i) => [`manifest/example${i}.signed.cbor`, draftPolicy] as const),
  ['manifest/example2.severed-signed.cbor', draftPolicy],
  ['trust-domains/example0_dependent.signed.cbor', draftPolicy],
  ['trust-domains/example1_process.signed.cbor', draftPolicy],
  ['trust-domains/example2_integrated.signed.cbor', draftPolicy],
  ['encryption/suit-manifest-aes-kw-content.signed.cbor', macPolicy],
  ['encryption/suit-manifest-aes-kw.signed.cbor', macPolicy],
  ['encryption/suit-manifest-aes-kw-slot.signed.cbor', macPolicy],
  ['encryption/suit-manifest-es-ecdh-content.signed.cbor', draftPolicy],
  [
    'encryption/suit-manifest-es-ecdh-dependency.signed.cbor',
    () => policyOf([anchor('dep', 'author', encDepVerifier()), anchor('draft', 'author', draftVerifier())]),
  ],
];

function draftPolicy(): TrustPolicy {
  return policyOf([anchor('draft', 'author', draftVerifier())]);
}
function macPolicy(): TrustPolicy {
  return policyOf([anchor('hmac', 'author', hmacKey())]);
}

/**
 * Runs the full path — the envelope, then each integrated dependency (TD §5.4: not covered by the dependent's
 * signature, authenticated on its own) — and returns 'ok' or the error code. Any untyped exception fails the test.
 */
async function outcome(bytes: Uint8Array, policy: TrustPolicy): Promise<string> {
  try {
    const { envelope } = await authenticateEnvelope(bytes, policy);
    if (envelope.manifest.common.dependencies.length > 0) {
      for (const key of envelope.integrated.keys())
        await authenticateIntegratedDependency(envelope, key, policy);
    }
    return 'ok';
  } catch (e) {
    if (isSuitError(e) || isCoseError(e)) return e.code;
    throw e;
  }
}

describe('hostile envelopes', () => {
  for (const [file, policy] of VALID) {
    it(`${file}: every single-bit flip is refused with a typed error`, async () => {
      const original = vector(file);
      const p = policy();
      expect(await outcome(original, p)).toBe('ok');
      const codes = new Map<string, number>();
      for (let i = 0; i < original.length * 8; i++) {
        const flipped = Uint8Array.from(original);
        flipped[i >> 3]! ^= 1 << (i & 7);
        const code = await outcome(flipped, p);
        // A flipped bit never verifies (digest, signature/MAC and structure cover every byte).
        expect(code, `bit ${i}`).not.toBe('ok');
        codes.set(code, (codes.get(code) ?? 0) + 1);
      }
      // Sanity: the sweep hit several layers (structure, digest, signature).
      expect(codes.size).toBeGreaterThan(2);
    });

    it(`${file}: every truncation is refused`, async () => {
      const original = vector(file);
      const p = policy();
      for (let n = 0; n < original.length; n++) {
        expect(await outcome(original.subarray(0, n), p), `length ${n}`).not.toBe('ok');
      }
    });
  }

  it('random bytes and random CBOR-looking prefixes only produce typed errors', async () => {
    const p = draftPolicy();
    for (let i = 0; i < 3000; i++) {
      const len = 1 + (i % 300);
      const b = new Uint8Array(randomBytes(len));
      // Every third input starts like an envelope (tag 107, map) to get past the first checks.
      if (i % 3 === 0 && len > 3) b.set([0xd8, 0x6b, 0xa2, 0x02], 0);
      expect(await outcome(b, p)).not.toBe('ok');
      try {
        decodeEnvelope(b);
      } catch (e) {
        expect(isSuitError(e) || isCoseError(e), String(e)).toBe(true);
      }
    }
  });
});
