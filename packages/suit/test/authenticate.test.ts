import { describe, expect, it } from 'vitest';
import { Alg, generateSigningKey, softwareSigner, softwareVerifier } from '@rotor/cose';
import {
  authenticateDependency,
  authenticateEnvelope,
  authenticateIntegratedDependency,
} from '../src/authenticate.ts';
import { addMac, addSignature, buildEnvelope, buildUpdateManifest, signEnvelope } from '../src/builder.ts';
import { SuitError } from '../src/errors.ts';
import type { TrustPolicy } from '../src/policy.ts';
import {
  anchor,
  draftSigner,
  draftVerifier,
  encDepSigner,
  encDepVerifier,
  hmacKey,
  policyOf,
} from './keys.ts';
import { vector } from './vectors.ts';

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    if (e instanceof SuitError) return e.code;
    throw e;
  }
  return 'no error';
}

const draftPolicy = (): TrustPolicy => policyOf([anchor('draft', 'author', draftVerifier())]);

const SIGNED_BY_DRAFT = [
  'manifest/example0.signed.cbor',
  'manifest/example1.signed.cbor',
  'manifest/example2.signed.cbor',
  'manifest/example2.severed-signed.cbor',
  'manifest/example3.signed.cbor',
  'manifest/example4.signed.cbor',
  'manifest/example5.signed.cbor',
  'trust-domains/example0_dependent.signed.cbor',
  'trust-domains/example1_process.signed.cbor',
  'trust-domains/example2_integrated.signed.cbor',
  'encryption/suit-manifest-es-ecdh-content.signed.cbor',
];
const MACED = [
  'encryption/suit-manifest-aes-kw-content.signed.cbor',
  'encryption/suit-manifest-aes-kw.signed.cbor',
  'encryption/suit-manifest-aes-kw-slot.signed.cbor',
];
const UNSIGNED = [
  'manifest/example0.unsigned.cbor',
  'manifest/example1.unsigned.cbor',
  'manifest/example2.severed-unsigned.cbor',
  'manifest/example3.unsigned.cbor',
  'manifest/example4.unsigned.cbor',
  'manifest/example5.unsigned.cbor',
];

describe('authenticateEnvelope on the vectors (draft-ietf-suit-manifest-34 §8.3)', () => {
  for (const f of SIGNED_BY_DRAFT) {
    it(`${f} verifies with the draft signer`, async () => {
      const { envelope, signers } = await authenticateEnvelope(vector(f), draftPolicy());
      expect(signers.map((s) => s.name)).toEqual(['draft']);
      expect(envelope.manifest.version).toBe(1);
    });
  }
  for (const f of MACED) {
    it(`${f} verifies with the HMAC-256 key (COSE_Mac0)`, async () => {
      const { signers } = await authenticateEnvelope(
        vector(f),
        policyOf([anchor('hmac', 'author', hmacKey())]),
      );
      expect(signers.map((s) => s.name)).toEqual(['hmac']);
    });
  }
  for (const f of UNSIGNED) {
    it(`${f} is refused: SUIT_UNAUTHENTICATED`, async () => {
      expect(await codeOf(authenticateEnvelope(vector(f), draftPolicy()))).toBe('SUIT_UNAUTHENTICATED');
    });
  }
  it('ESP256 and ES256 anchors both verify (same P-256 key)', async () => {
    const p = policyOf([anchor('draft', 'author', draftVerifier(Alg.ESP256))]);
    await authenticateEnvelope(vector('manifest/example0.signed.cbor'), p);
    await authenticateEnvelope(vector('trust-domains/example0_dependent.signed.cbor'), p);
  });
  it('example2.severed-signed: install and text severed-absent', async () => {
    const { envelope } = await authenticateEnvelope(
      vector('manifest/example2.severed-signed.cbor'),
      draftPolicy(),
    );
    expect(envelope.manifest.install?.state).toBe('severed-absent');
    expect(envelope.manifest.text?.state).toBe('severed-absent');
  });
  it('es-ecdh-dependency: outer by the encryption-dependency signer, integrated dependency by the draft signer', async () => {
    const policy = policyOf([
      anchor('enc-dep', 'author', encDepVerifier()),
      anchor('draft', 'author', draftVerifier()),
    ]);
    const outer = await authenticateEnvelope(
      vector('encryption/suit-manifest-es-ecdh-dependency.signed.cbor'),
      policy,
    );
    expect(outer.signers.map((s) => s.name)).toEqual(['enc-dep']);
    const inner = await authenticateIntegratedDependency(outer.envelope, '#dependency-manifest', policy);
    expect(inner.signers.map((s) => s.name)).toEqual(['draft']);
    // With only the draft signer trusted, the outer envelope fails.
    expect(
      await codeOf(
        authenticateEnvelope(
          vector('encryption/suit-manifest-es-ecdh-dependency.signed.cbor'),
          draftPolicy(),
        ),
      ),
    ).toBe('SUIT_AUTH_FAILED');
  });
  it('trust-domains integrated dependency verifies and matches the dependent image-digest (TD §5.1, §6.2)', async () => {
    const { envelope } = await authenticateEnvelope(
      vector('trust-domains/example2_integrated.signed.cbor'),
      draftPolicy(),
    );
    const seq = envelope.manifest.dependencyResolution;
    if (seq?.state !== 'inline') throw new Error('expected inline dependency-resolution');
    const override = seq.value.commands.find((c) => c.op === 'params');
    if (override?.op !== 'params') throw new Error('no override');
    const d = override.params.get(3);
    if (d?.type !== 'digest') throw new Error('no image-digest');
    const dep = await authenticateIntegratedDependency(envelope, '#dependent.suit', draftPolicy(), {
      expectedDigest: d.digest,
    });
    expect(dep.envelope.manifest.componentId).toEqual([new TextEncoder().encode('dependent.suit')]);
    // The standalone dependency file is the same envelope.
    await authenticateDependency(vector('trust-domains/example0_dependent.signed.cbor'), draftPolicy(), {
      expectedDigest: d.digest,
    });
    // A different expected digest is refused.
    const wrong = { alg: -16, bytes: new Uint8Array(32) };
    expect(
      await codeOf(
        authenticateIntegratedDependency(envelope, '#dependent.suit', draftPolicy(), {
          expectedDigest: wrong,
        }),
      ),
    ).toBe('SUIT_DEPENDENCY_INVALID');
    expect(await codeOf(authenticateIntegratedDependency(envelope, '#missing', draftPolicy()))).toBe(
      'SUIT_DEPENDENCY_INVALID',
    );
  });
});

describe('negative vectors', () => {
  it('bad signature → SUIT_AUTH_FAILED', async () => {
    expect(
      await codeOf(authenticateEnvelope(vector('negative/example0.bad-signature.cbor'), draftPolicy())),
    ).toBe('SUIT_AUTH_FAILED');
  });
  it('modified manifest (valid signature over the old digest) → SUIT_DIGEST_MISMATCH', async () => {
    expect(
      await codeOf(authenticateEnvelope(vector('negative/example0.modified-manifest.cbor'), draftPolicy())),
    ).toBe('SUIT_DIGEST_MISMATCH');
    // verifyDigest: false is ignored by authentication.
    expect(
      await codeOf(
        authenticateEnvelope(vector('negative/example0.modified-manifest.cbor'), draftPolicy(), {
          verifyDigest: false,
        }),
      ),
    ).toBe('SUIT_DIGEST_MISMATCH');
  });
  it('modified severed text → SUIT_SEVERED_DIGEST_MISMATCH', async () => {
    expect(
      await codeOf(
        authenticateEnvelope(vector('negative/example2.modified-severed-text.cbor'), draftPolicy()),
      ),
    ).toBe('SUIT_SEVERED_DIGEST_MISMATCH');
  });
  it('wrong key → SUIT_AUTH_FAILED', async () => {
    expect(
      await codeOf(
        authenticateEnvelope(
          vector('manifest/example0.signed.cbor'),
          policyOf([anchor('other', 'author', encDepVerifier())]),
        ),
      ),
    ).toBe('SUIT_AUTH_FAILED');
    // A MAC key cannot verify a signature, and vice versa.
    expect(
      await codeOf(
        authenticateEnvelope(
          vector('manifest/example0.signed.cbor'),
          policyOf([anchor('hmac', 'author', hmacKey())]),
        ),
      ),
    ).toBe('SUIT_AUTH_FAILED');
    expect(await codeOf(authenticateEnvelope(vector(MACED[0]!), draftPolicy()))).toBe('SUIT_AUTH_FAILED');
  });
  it('algorithm not in the allowlist → SUIT_AUTH_FAILED', async () => {
    const p: TrustPolicy = {
      anchors: [anchor('draft', 'author', draftVerifier())],
      allowedAlgs: new Set([Alg.ESP256]),
    };
    expect(await codeOf(authenticateEnvelope(vector('manifest/example0.signed.cbor'), p))).toBe(
      'SUIT_AUTH_FAILED',
    );
  });
});

describe('trust policy (MF §9 access control; RFC 9019 §4 roles)', () => {
  const te = new TextEncoder();
  it('component prefix policy: authorised and refused', async () => {
    const bytes = vector('manifest/example0.signed.cbor'); // component [h'00']
    const ok = policyOf([
      anchor('draft', 'author', draftVerifier(), { componentPrefixes: [[new Uint8Array([0])]] }),
    ]);
    await authenticateEnvelope(bytes, ok);
    const refused = policyOf([
      anchor('draft', 'author', draftVerifier(), { componentPrefixes: [[new Uint8Array([1])]] }),
    ]);
    expect(await codeOf(authenticateEnvelope(bytes, refused))).toBe('SUIT_SIGNER_UNAUTHORIZED');
    const none = policyOf([anchor('draft', 'author', draftVerifier(), { componentPrefixes: [] })]);
    expect(await codeOf(authenticateEnvelope(bytes, none))).toBe('SUIT_SIGNER_UNAUTHORIZED');
    // Multi-component: example4 has [00], [02], [01]; a prefix covering only [00] is not enough.
    const ex4 = vector('manifest/example4.signed.cbor');
    expect(await codeOf(authenticateEnvelope(ex4, ok))).toBe('SUIT_SIGNER_UNAUTHORIZED');
  });
  it('prefix matching is per element', async () => {
    const { privateKey, publicKey } = generateSigningKey(Alg.ESP256);
    const signer = softwareSigner(privateKey, Alg.ESP256);
    const desc = buildUpdateManifest({
      vendorDomain: 'example.com',
      className: 'c',
      sequenceNumber: 1,
      components: [
        { id: 'apps/app1', image: { digest: new Uint8Array(32), size: 10 }, uri: 'https://x/app1' },
      ],
    });
    const env = await buildEnvelope(desc, { signers: [signer] });
    const v = softwareVerifier(publicKey, Alg.ESP256);
    await authenticateEnvelope(
      env,
      policyOf([anchor('apps', 'author', v, { componentPrefixes: [[te.encode('apps')]] })]),
    );
    expect(
      await codeOf(
        authenticateEnvelope(
          env,
          policyOf([anchor('ap', 'author', v, { componentPrefixes: [[te.encode('ap')]] })]),
        ),
      ),
    ).toBe('SUIT_SIGNER_UNAUTHORIZED');
  });

  it('two-party policy: author only → SUIT_MISSING_PARTY; author + operator → ok; same key twice → missing', async () => {
    const op = generateSigningKey(Alg.ESP256);
    const operatorSigner = softwareSigner(op.privateKey, Alg.ESP256);
    const policy = policyOf(
      [
        anchor('author', 'author', draftVerifier(Alg.ESP256)),
        anchor('operator', 'operator', softwareVerifier(op.publicKey, Alg.ESP256)),
      ],
      { requiredRoles: ['author', 'operator'] },
    );
    const authorOnly = vector('trust-domains/example0_dependent.signed.cbor');
    expect(await codeOf(authenticateEnvelope(authorOnly, policy))).toBe('SUIT_MISSING_PARTY');

    const approved = await addSignature(authorOnly, operatorSigner);
    const { signers, envelope } = await authenticateEnvelope(approved, policy);
    expect(signers.map((s) => s.name)).toEqual(['author', 'operator']);
    expect(envelope.authBlocks).toHaveLength(2);

    // The author signing twice is still one party.
    const twice = await addSignature(authorOnly, draftSigner());
    expect(await codeOf(authenticateEnvelope(twice, policy))).toBe('SUIT_MISSING_PARTY');

    // One key registered under both roles is one party, even with two blocks.
    const sameKey = policyOf(
      [
        anchor('author', 'author', draftVerifier(Alg.ESP256)),
        anchor('operator-alias', 'operator', draftVerifier(Alg.ESP256)),
      ],
      { requiredRoles: ['author', 'operator'] },
    );
    expect(await codeOf(authenticateEnvelope(twice, sameKey))).toBe('SUIT_MISSING_PARTY');
    expect(await codeOf(authenticateEnvelope(authorOnly, sameKey))).toBe('SUIT_MISSING_PARTY');
  });

  it('kid selects the anchor; kid-less anchors are the fallback', async () => {
    const a = generateSigningKey(Alg.ESP256);
    const b = generateSigningKey(Alg.ESP256);
    const kidA = new TextEncoder().encode('key-a');
    const kidB = new TextEncoder().encode('key-b');
    const desc = buildUpdateManifest({
      vendorDomain: 'example.com',
      className: 'c',
      sequenceNumber: 3,
      components: [{ id: [new Uint8Array([0])], image: { digest: new Uint8Array(32), size: 1 } }],
    });
    const env = await buildEnvelope(desc, { signers: [softwareSigner(a.privateKey, Alg.ESP256, kidA)] });
    const p = policyOf([
      anchor('b', 'author', softwareVerifier(b.publicKey, Alg.ESP256, kidB)),
      anchor('a', 'author', softwareVerifier(a.publicKey, Alg.ESP256, kidA)),
    ]);
    expect((await authenticateEnvelope(env, p)).signers.map((s) => s.name)).toEqual(['a']);
    // An anchor whose kid differs is not tried.
    const wrongKid = policyOf([anchor('a', 'author', softwareVerifier(a.publicKey, Alg.ESP256, kidB))]);
    expect(await codeOf(authenticateEnvelope(env, wrongKid))).toBe('SUIT_AUTH_FAILED');
    // A kid-less anchor is tried as the fallback.
    const noKid = policyOf([anchor('a', 'author', softwareVerifier(a.publicKey, Alg.ESP256))]);
    expect((await authenticateEnvelope(env, noKid)).signers.map((s) => s.name)).toEqual(['a']);
  });

  it('several blocks: one unusable block does not hide a valid one (MF §8.3 algorithm agility)', async () => {
    const other = generateSigningKey(Alg.Ed25519);
    const base = vector('manifest/example0.unsigned.cbor');
    const env = await signEnvelope(
      await signEnvelope(base, softwareSigner(other.privateKey, Alg.Ed25519)),
      draftSigner(),
    );
    const { signers } = await authenticateEnvelope(env, draftPolicy());
    expect(signers.map((s) => s.name)).toEqual(['draft']);
  });

  it('MAC blocks built by addMac verify', async () => {
    const env = await addMac(vector('manifest/example1.unsigned.cbor'), hmacKey());
    const { signers } = await authenticateEnvelope(env, policyOf([anchor('hmac', 'author', hmacKey())]));
    expect(signers).toHaveLength(1);
  });

  it('allowedAlgs is honoured for MACs', async () => {
    const p: TrustPolicy = {
      anchors: [anchor('hmac', 'author', hmacKey())],
      allowedAlgs: new Set([Alg.ES256]),
    };
    expect(await codeOf(authenticateEnvelope(vector(MACED[0]!), p))).toBe('SUIT_AUTH_FAILED');
  });

  it('signer of an encrypted dependent: encDepSigner re-signs the outer envelope', async () => {
    const outer = vector('encryption/suit-manifest-es-ecdh-dependency.signed.cbor');
    const resigned = await addSignature(outer, encDepSigner());
    const policy = policyOf([anchor('enc-dep', 'author', encDepVerifier())], { requiredRoles: ['author'] });
    const { envelope } = await authenticateEnvelope(resigned, policy);
    expect(envelope.authBlocks).toHaveLength(2);
  });
});
