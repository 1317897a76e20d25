/**
 * The processor with the production envelope decoder/authenticator (decode.ts, authenticate.ts) and real keys,
 * and the trust-domains lock-step rule on synthetic dependency trees.
 */
import { createPublicKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CborMap, encode, softwareMacKey, softwareVerifier } from '@rotor/cose';
import { authenticateDependency, authenticateEnvelope } from '../src/authenticate.ts';
import type { TrustPolicy } from '../src/policy.ts';
import { MemoryPlatform, componentId } from '../src/platform.ts';
import { processEnvelope } from '../src/processor.ts';
import { VECTORS } from './commands-vectors.ts';
import { makeEnvelope, testAuthenticator, vector } from './processor-envelope.ts';

const pem = (f: string): Buffer => readFileSync(join(VECTORS, 'keys', f));
const policy: TrustPolicy = {
  anchors: [
    {
      name: 'draft',
      role: 'author',
      verifier: softwareVerifier(createPublicKey(pem('suit-draft-signer-p256.public.pem')), -9),
    },
    {
      name: 'distributor',
      role: 'author',
      verifier: softwareVerifier(createPublicKey(pem('encryption-dependency-signer-p256.public.pem')), -9),
    },
    { name: 'hmac', role: 'author', macKey: softwareMacKey(new TextEncoder().encode('a'.repeat(32)), 5) },
  ],
  allowedAlgs: new Set([-7, -9, 5]),
};
const authDep = async (bytes: Uint8Array) => (await authenticateDependency(bytes, policy)).envelope;
const text = (p: MemoryPlatform, c: string): string =>
  Buffer.from(p.get(componentId(c)) ?? new Uint8Array()).toString();

describe('processor with the production authenticator', () => {
  it('trust-domains example 1 and 2 with signature-verified dependencies', async () => {
    for (const file of [
      'trust-domains/example1_process.signed.cbor',
      'trust-domains/example2_integrated.signed.cbor',
    ]) {
      const { envelope } = await authenticateEnvelope(vector(file), policy);
      const p = new MemoryPlatform({
        resources: {
          'http://example.com/dependent.suit': vector('trust-domains/example0_dependent.signed.cbor'),
        },
      });
      const r = await processEnvelope(envelope, 'update', { platform: p, authenticateDependency: authDep });
      expect(r.error?.message).toBeUndefined();
      expect(text(p, '00') + text(p, '10')).toBe('hello world in multiple trust domains');
    }
  });
  it('a dependency that fails authentication aborts with its code before anything of it runs', async () => {
    const { envelope } = await authenticateEnvelope(
      vector('trust-domains/example1_process.signed.cbor'),
      policy,
    );
    const p = new MemoryPlatform({
      resources: {
        'http://example.com/dependent.suit': vector('trust-domains/example0_dependent.signed.cbor'),
      },
    });
    const strangers: TrustPolicy = { anchors: [policy.anchors[1]!], allowedAlgs: policy.allowedAlgs };
    const r = await processEnvelope(envelope, 'update', {
      platform: p,
      authenticateDependency: async (b) => (await authenticateDependency(b, strangers)).envelope,
    });
    expect(r.ok).toBe(false);
    expect(r.error?.code).toMatch(/^SUIT_(AUTH_FAILED|DEPENDENCY_INVALID)$/);
    expect(text(p, '00')).toBe('');
    const res = r.report.result;
    expect(res === true ? undefined : res.record).toMatchObject({ manifestSection: 20, componentIndex: 1 });
  });
  it('ES-DH dependency example: outer signed by the distributor, inner by the author', async () => {
    const { envelope } = await authenticateEnvelope(
      vector('encryption/suit-manifest-es-ecdh-dependency.signed.cbor'),
      policy,
    );
    const p = new MemoryPlatform({
      decrypt: () => Promise.resolve(vector('encryption/plaintext-payload.bin')),
    });
    const r = await processEnvelope(envelope, 'update', { platform: p, authenticateDependency: authDep });
    expect(r.error?.message).toBeUndefined();
    expect(text(p, 'decrypted-firmware')).toBe('This is a real firmware image.');
  });
});

describe('lock-step (draft-ietf-suit-trust-domains §3, §5.1)', () => {
  const bstr = (v: unknown): Uint8Array => encode(v);
  const m = (...e: [unknown, unknown][]): CborMap => new CborMap(e);
  const depEnvelope = (sections: [number, unknown[]][]): ReturnType<typeof makeEnvelope> =>
    makeEnvelope(
      new Map<number, unknown>([
        [1, 1],
        [2, 7],
        [3, bstr(m([2, [[new TextEncoder().encode('d')]]]))],
        ...sections.map(([k, s]): [number, unknown] => [k, bstr(s)]),
      ]),
    );
  const dependent = (
    dep: ReturnType<typeof makeEnvelope>,
    sections: [number, unknown[]][],
  ): ReturnType<typeof makeEnvelope> =>
    makeEnvelope(
      new Map<number, unknown>([
        [1, 1],
        [2, 1],
        [
          3,
          bstr(
            m([1, m([1, m([1, [new TextEncoder().encode('dep')]])])], [2, [[new TextEncoder().encode('r')]]]),
          ),
        ],
        ...sections.map(([k, s]): [number, unknown] => [k, bstr(s)]),
      ]),
      new Map([['#dep', dep.bytes]]),
    );
  const fetchDep = (dep: ReturnType<typeof makeEnvelope>): unknown[] => [
    12,
    1,
    20,
    m([3, bstr([-16, dep.digest.bytes])], [21, '#dep']),
    21,
    0,
    7,
    0,
  ];

  it("runs the dependency's section N inside the dependent's section N", async () => {
    const dep = depEnvelope([
      [20, [20, m([18, new Uint8Array([1])]), 18, 0]],
      [7, [20, m([18, new Uint8Array([1])]), 6, 0]],
    ]);
    const root = dependent(dep, [
      [15, fetchDep(dep)],
      [20, [12, 1, 11, 0, 12, 0, 20, m([18, new Uint8Array([2])]), 18, 0]],
      [7, [12, 1, 11, 0]],
    ]);
    const p = new MemoryPlatform();
    const r = await processEnvelope(root, 'update', {
      platform: p,
      authenticateDependency: testAuthenticator(),
    });
    expect(r.error?.message).toBeUndefined();
    expect(
      p.events.filter((e) => e.op === 'write').map((e) => ('component' in e ? e.component : '')),
    ).toEqual([
      '[646570]', // dependency envelope fetched into the dependency component
      '[64]', // the dependency's install
      '[72]', // then the dependent's install
    ]);
    expect(p.sequenceNumbers.get('[646570]')).toBe(7n);
  });
  it("refuses a dependent that finishes a section without running the dependency's", async () => {
    const dep = depEnvelope([
      [20, [20, m([18, new Uint8Array([1])]), 18, 0]],
      [7, [20, m([18, new Uint8Array([1])]), 6, 0]],
    ]);
    const root = dependent(dep, [
      [15, fetchDep(dep)],
      [20, [12, 1, 11, 0]],
      [7, [12, 0, 20, m([18, new Uint8Array([1])]), 6, 0]],
    ]);
    const p = new MemoryPlatform({ storage: new Map([['[72]', new Uint8Array([1])]]) });
    const r = await processEnvelope(root, 'update', {
      platform: p,
      authenticateDependency: testAuthenticator(),
    });
    expect(r.error?.code).toBe('SUIT_DEPENDENCY_INVALID');
    expect(r.error?.message).toMatch(/lock-step/);
    expect(p.sequenceNumbers.size).toBe(0);
  });
  it('refuses a dependency first processed after a section of its own already passed', async () => {
    const dep = depEnvelope([
      [16, [20, m([18, new Uint8Array([1])]), 18, 0]],
      [20, [20, m([18, new Uint8Array([1])]), 18, 0]],
    ]);
    const root = dependent(dep, [
      [15, fetchDep(dep)],
      [20, [12, 1, 11, 0]],
    ]);
    const r = await processEnvelope(root, 'update', {
      platform: new MemoryPlatform(),
      authenticateDependency: testAuthenticator(),
    });
    expect(r.error?.code).toBe('SUIT_DEPENDENCY_INVALID');
  });
  it('process-dependency on a non-dependency or without an integrity check aborts', async () => {
    const dep = depEnvelope([[20, [20, m([18, new Uint8Array([1])]), 18, 0]]]);
    for (const install of [
      [12, 0, 11, 0],
      [12, 1, 20, m([21, '#dep']), 21, 0, 11, 0],
    ]) {
      const root = dependent(dep, [[20, install]]);
      const r = await processEnvelope(root, 'update', {
        platform: new MemoryPlatform(),
        authenticateDependency: testAuthenticator(),
      });
      expect(r.error?.code).toBe('SUIT_DEPENDENCY_INVALID');
    }
  });
  it('bounds dependency depth: a manifest that depends on itself cannot recurse', async () => {
    // A dependency whose install processes a dependency whose envelope is the same (via an integrated copy).
    const inner = depEnvelope([[20, [20, m([18, new Uint8Array([1])]), 18, 0]]]);
    let env = dependent(inner, [[20, [...fetchDep(inner), 11, 0]]]);
    for (let i = 0; i < 6; i++) env = dependent(env, [[20, [...fetchDep(env), 11, 0]]]);
    const r = await processEnvelope(env, 'update', {
      platform: new MemoryPlatform(),
      authenticateDependency: testAuthenticator(),
    });
    expect(r.error?.code).toBe('SUIT_PROCESSOR_LIMIT');
  });
});
