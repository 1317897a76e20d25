/**
 * Operator approval and per-device encryption (RFC 9019 §3 confidentiality; draft-ietf-suit-firmware-encryption;
 * draft-ietf-suit-trust-domains): the per-device envelope needs both signatures, decrypts only with that device's
 * key, installs the author's plaintext in a processor dry run, and the payload is stored once whatever the fleet.
 */
import { createHash, randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  Alg,
  generateAgreementKey,
  generateSigningKey,
  softwareKeyAgreement,
  softwareKeyUnwrapper,
  softwareSigner,
  softwareVerifier,
  type KeyAgreement,
  type KeyUnwrapper,
} from '@rotor/cose';
import { authenticateEnvelope, buildEnvelope, buildUpdateManifest, type TrustAnchor } from '@rotor/suit';
import {
  createServices,
  dryRun,
  migrate,
  type OperatorKey,
  type Principal,
  type Services,
} from '../src/index.ts';
import { BACKENDS, createTestDatabase } from './helpers.ts';
import { authorKeyPair, sha256hex, signedRelease, testKeyMaterial } from './fixtures.ts';

const ADMIN: Principal = { kind: 'operator', tokenId: 't-admin', name: 'admin', role: 'admin' };
const OPERATOR: Principal = { kind: 'operator', tokenId: 't-op', name: 'op', role: 'operator' };
const AUTHOR: Principal = { kind: 'operator', tokenId: 't-author', name: 'author', role: 'author' };
const device = (id: string): Principal => ({ kind: 'device', deviceId: id, name: id });
const pem = (k: { publicKey: { export: (o: { type: 'spki'; format: 'pem' }) => string | Buffer } }): string =>
  k.publicKey.export({ type: 'spki', format: 'pem' }).toString();

interface Dev {
  id: string;
  agreements: KeyAgreement[];
  unwrappers: KeyUnwrapper[];
}

describe.each(BACKENDS)('approval and per-device encryption on %s', (backend) => {
  let t: Awaited<ReturnType<typeof createTestDatabase>>;
  let s: Services;
  let operator: OperatorKey;
  let authorAnchors: TrustAnchor[];
  let author: ReturnType<typeof authorKeyPair>;
  const image = randomBytes(5000);
  let releaseId: string;
  let rolloutId: string;
  const devs: Record<'x25519' | 'p256' | 'kek', Dev> = {} as Record<'x25519' | 'p256' | 'kek', Dev>;

  const resources = async (): Promise<Map<string, Uint8Array>> => {
    const rows = await t.db.query<{ h: string; data: Uint8Array }>(
      "SELECT encode(c.ciphertext_sha256, 'hex') AS h, b.data FROM release_ciphertexts c JOIN blobs b ON b.sha256 = c.ciphertext_sha256",
    );
    return new Map(rows.map((r) => [`/d/v1/payloads/${r.h}`, r.data]));
  };
  const blobBytes = async (): Promise<number> =>
    (await t.db.query<{ n: number }>('SELECT coalesce(sum(size), 0)::int AS n FROM blobs'))[0]!.n;

  beforeAll(async () => {
    t = await createTestDatabase(backend);
    await migrate(t.db);
    const km = testKeyMaterial();
    operator = km.keys.operator!;
    s = createServices(t.db, { keys: km.keys });
    author = authorKeyPair();
    const ak = await s.authorKeys.create(ADMIN, {
      name: 'author',
      alg: 'ES256',
      publicKeyPem: author.publicKeyPem,
    });
    authorAnchors = [{ name: ak.id, role: 'author', verifier: softwareVerifier(author.publicKey, -7) }];
    await s.payloads.upload(AUTHOR, sha256hex(image), image);
    releaseId = (await s.releases.upload(AUTHOR, await signedRelease(author.privateKey, image, 7))).id;

    const x = generateAgreementKey('X25519');
    const p = generateAgreementKey('P-256');
    const kek = randomBytes(16);
    const mk = async (name: string, keys: Record<string, string>): Promise<string> =>
      (
        await s.devices.create(ADMIN, {
          name,
          certSha256: randomBytes(32).toString('hex'),
          group: 'enc',
          ...keys,
        })
      ).id;
    devs.x25519 = {
      id: await mk('x', { keyAgreementKeyPem: pem(x) }),
      agreements: [softwareKeyAgreement(x.privateKey)],
      unwrappers: [],
    };
    devs.p256 = {
      id: await mk('p', { keyAgreementKeyPem: pem(p) }),
      agreements: [softwareKeyAgreement(p.privateKey)],
      unwrappers: [],
    };
    devs.kek = {
      id: await mk('k', { kek: kek.toString('hex') }),
      agreements: [],
      unwrappers: [softwareKeyUnwrapper(kek, Alg.A128KW)],
    };
  });
  afterAll(async () => {
    await t.drop();
  });

  it('approval is an audited co-signature; without the operator key nothing is approved', async () => {
    const bare = createServices(t.db);
    await expect(bare.rollouts.approve(OPERATOR, releaseId)).rejects.toMatchObject({
      code: 'OPERATOR_KEY_UNAVAILABLE',
    });
    expect((await s.releases.get(ADMIN, releaseId)).status).toBe('uploaded');
    await expect(s.rollouts.approve(AUTHOR, releaseId)).rejects.toMatchObject({ code: 'FORBIDDEN' });

    await s.rollouts.approve(OPERATOR, releaseId);
    expect((await s.releases.get(ADMIN, releaseId)).status).toBe('approved');
    const entries = await s.audit.list(ADMIN, { after: 0, limit: 1000 });
    const approval = entries
      .map((e) => JSON.parse(e.body) as Record<string, unknown>)
      .find((b) => b.action === 'release.approve');
    expect(approval).toMatchObject({
      subject: `release:${releaseId}`,
      details: { operatorKid: Buffer.from(operator.kid).toString('hex') },
    });
    // The co-signed author envelope carries both parties (RFC 9019 §4).
    const cosigned = await s.delivery.cosigned(ADMIN, releaseId);
    const auth = await authenticateEnvelope(cosigned, {
      anchors: [...authorAnchors, { name: 'operator', role: 'operator', verifier: operator.verifier }],
      allowedAlgs: new Set([-7]),
      requiredRoles: ['author', 'operator'],
    });
    expect(auth.signers.map((x) => x.role).sort()).toEqual(['author', 'operator']);
    // approving again changes nothing
    const n = entries.length;
    await s.rollouts.approve(OPERATOR, releaseId);
    expect((await s.audit.list(ADMIN, { after: 0, limit: 1000 })).length).toBe(n);

    const r = await s.rollouts.create(OPERATOR, {
      name: 'enc',
      releaseId,
      target: { group: 'enc' },
      phases: [{ percent: 100, successThreshold: 1, failureThreshold: 1, timeoutMs: 60_000 }],
    });
    expect(r.assigned).toBe(3);
    rolloutId = r.id;
  });

  it('each device envelope authenticates (operator + author) and installs the plaintext with its own key', async () => {
    const res = await resources();
    for (const d of Object.values(devs)) {
      const env = await s.rollouts.envelopeFor(device(d.id), rolloutId);
      // stable: the stored envelope is served again
      expect(Buffer.compare(await s.rollouts.envelopeFor(device(d.id), rolloutId), env)).toBe(0);
      const { result, platform } = await dryRun(
        env,
        {
          operator: operator.verifier,
          authors: authorAnchors,
          agreements: d.agreements,
          unwrappers: d.unwrappers,
        },
        res,
      );
      expect(result.error).toBeUndefined();
      expect(result.ok).toBe(true);
      const fw = await platform.read([new TextEncoder().encode('fw')]);
      expect(Buffer.compare(fw!, image)).toBe(0);
      // The ciphertext is not the image.
      expect([...res.values()].some((c) => Buffer.compare(c, image) === 0)).toBe(false);
    }
  });

  it('no device can use another device’s wrap', async () => {
    const res = await resources();
    const envX = await s.rollouts.envelopeFor(device(devs.x25519.id), rolloutId);
    const envK = await s.rollouts.envelopeFor(device(devs.kek.id), rolloutId);
    const stranger = generateAgreementKey('X25519');
    const cases: [Uint8Array, Partial<Dev>, string][] = [
      [envX, { agreements: devs.p256.agreements }, 'COSE_NO_KEY'], // other curve: no recipient to try
      [envX, { agreements: [softwareKeyAgreement(stranger.privateKey)] }, 'COSE_DECRYPT_FAILED'],
      [envX, { unwrappers: devs.kek.unwrappers }, 'COSE_NO_KEY'],
      [envK, { agreements: devs.x25519.agreements }, 'COSE_NO_KEY'],
      [envK, { unwrappers: [softwareKeyUnwrapper(randomBytes(16), Alg.A128KW)] }, 'COSE_DECRYPT_FAILED'],
    ];
    for (const [env, keys, code] of cases) {
      const { result, decryptErrors } = await dryRun(
        env,
        { operator: operator.verifier, authors: authorAnchors, ...keys },
        res,
      );
      expect(result.ok).toBe(false);
      expect(decryptErrors[0]).toMatchObject({ code });
    }
  });

  it('a device requires both signatures', async () => {
    const res = await resources();
    const env = await s.rollouts.envelopeFor(device(devs.x25519.id), rolloutId);
    const keys = { agreements: devs.x25519.agreements };
    // without the author's key the dependency does not authenticate
    const noAuthor = await dryRun(env, { operator: operator.verifier, authors: [], ...keys }, res).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect((noAuthor as { code: string }).code).toMatch(/^SUIT_/);
    // another operator key: the dependent does not authenticate
    const other = generateSigningKey(-7);
    await expect(
      dryRun(env, { operator: softwareVerifier(other.publicKey, -7), authors: authorAnchors, ...keys }, res),
    ).rejects.toMatchObject({ code: 'SUIT_AUTH_FAILED' });
  });

  it('stores the payload once whatever the fleet size; other devices only add their small envelopes', async () => {
    const before = await blobBytes();
    const ids: string[] = [];
    for (let i = 0; i < 20; i++) {
      const d = await s.devices.create(ADMIN, {
        name: `more-${i}`,
        certSha256: randomBytes(32).toString('hex'),
        group: 'more',
        keyAgreementKeyPem: pem(generateAgreementKey('X25519')),
      });
      ids.push(d.id);
    }
    const r = await s.rollouts.create(OPERATOR, {
      name: 'more',
      releaseId,
      target: { group: 'more' },
      phases: [{ percent: 100, successThreshold: 1, failureThreshold: 1, timeoutMs: 60_000 }],
    });
    const envs = await Promise.all(ids.map((id) => s.rollouts.envelopeFor(device(id), r.id)));
    expect(new Set(envs.map((e) => Buffer.from(e).toString('hex'))).size).toBe(20);
    expect(await blobBytes()).toBe(before);
    const ct = await t.db.query<{ n: number }>('SELECT count(*)::int AS n FROM release_ciphertexts');
    expect(ct[0]!.n).toBe(1);
    // every envelope is far smaller than the image it unlocks
    for (const e of envs) expect(e.length).toBeLessThan(image.length / 2);
  });

  it('refuses approvals that would leak or not install: integrated plaintext, an author manifest that fixes the uri, no key', async () => {
    const img = randomBytes(300);
    const integrated = await s.releases.upload(
      AUTHOR,
      await signedRelease(author.privateKey, img, 8, { integrated: true }),
    );
    await expect(s.rollouts.approve(OPERATOR, integrated.id)).rejects.toMatchObject({
      code: 'RELEASE_INVALID',
    });
    const img2 = randomBytes(300);
    await s.payloads.upload(AUTHOR, sha256hex(img2), img2);
    const fixed = await s.releases.upload(
      AUTHOR,
      await buildEnvelope(
        buildUpdateManifest({
          vendorDomain: 'example.com',
          className: 'widget',
          sequenceNumber: 9,
          components: [
            {
              id: 'fw',
              image: {
                digest: new Uint8Array(createHash('sha256').update(img2).digest()),
                size: img2.length,
              },
              uri: 'https://fw.example/fixed.bin', // override-parameters: the operator's uri would be replaced
            },
          ],
        }),
        { signers: [softwareSigner(author.privateKey, -7)] },
      ),
    );
    await expect(s.rollouts.approve(OPERATOR, fixed.id)).rejects.toMatchObject({ code: 'RELEASE_INVALID' });
    for (const id of [integrated.id, fixed.id])
      expect((await s.releases.get(ADMIN, id)).status).toBe('uploaded');
    // a device without any key cannot get an envelope
    const keyless = await s.devices.create(ADMIN, {
      name: 'keyless',
      certSha256: randomBytes(32).toString('hex'),
      group: 'keyless',
    });
    const r = await s.rollouts.create(OPERATOR, {
      name: 'keyless',
      releaseId,
      target: { group: 'keyless' },
      phases: [{ percent: 100, successThreshold: 1, failureThreshold: 1, timeoutMs: 60_000 }],
    });
    await expect(s.rollouts.envelopeFor(device(keyless.id), r.id)).rejects.toMatchObject({
      code: 'DEVICE_KEY_MISSING',
    });
  });
});
