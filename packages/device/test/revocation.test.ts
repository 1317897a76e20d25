/**
 * Issue 7: the general revocation list on the device — a revoked signing key's envelope is refused; an expired list
 * blocks trust until a fresh one is fetched (freeze attack); rollback and foreign authorities are refused.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { Alg, coseKeyFromKeyObject, generateSigningKey, softwareSigner, type Signer } from '@rotor/cose';
import { authenticateEnvelope, buildEnvelope, buildUpdateManifest } from '@rotor/suit';
import {
  anchorKey,
  createAnchorStatement,
  createTrustRevocationList,
  RevokedKind,
  type AnchorKey,
  type RevokedEntry,
} from '@rotor/trust';
import { DeviceAnchors } from '../src/attest/anchors.ts';
import { DeviceRevocation, type RevocationSource } from '../src/attest/revocation.ts';
import { AtomicStore } from '../src/storage/atomic.ts';
import { SimulatedFs } from '../src/storage/sim.ts';

const ALGS: ReadonlySet<number> = new Set<number>([Alg.ES256]);

function party(): { key: AnchorKey; signer: Signer } {
  const k = generateSigningKey(Alg.ES256);
  const key = anchorKey({ ...coseKeyFromKeyObject(k.publicKey), alg: Alg.ES256 });
  return { key, signer: softwareSigner(k.privateKey, Alg.ES256, key.kid) };
}

async function envelope(signer: Signer): Promise<Uint8Array> {
  return buildEnvelope(
    buildUpdateManifest({
      vendorDomain: 'example.com',
      className: 'sensor',
      sequenceNumber: 1,
      components: [
        { id: 'fw', image: { digest: new Uint8Array(randomBytes(32)), size: 10 }, uri: 'https://x/fw' },
      ],
    }),
    { signers: [signer] },
  );
}

describe('revocation lists on the device (issue 7)', () => {
  it('refuses a revoked signing key; an expired list blocks trust until refreshed', async () => {
    const root = party();
    const rvl = party();
    const [good, bad] = [party(), party()];
    const anchors = await createAnchorStatement(
      {
        version: 1,
        issuedAt: 1_800_000_000,
        roles: new Map([
          ['root', { threshold: 1, keys: [root.key] }],
          ['author', { threshold: 1, keys: [good.key, bad.key] }],
          ['revocation', { threshold: 1, keys: [rvl.key] }],
        ]),
      },
      [root.signer],
    );
    let clock = 1_800_000_100;
    const fs = new SimulatedFs();
    const store = await AtomicStore.open(fs, 'trust');
    const dev = await DeviceAnchors.open(store, anchors, ALGS);
    const rev = await DeviceRevocation.open(store, dev, { allowedAlgs: ALGS, now: () => clock });

    const list = (version: number, entries: RevokedEntry[], ttl = 3600) =>
      createTrustRevocationList({ version, issuedAt: clock, expiresAt: clock + ttl, entries }, rvl.signer);
    let served: Uint8Array | undefined;
    let fetches = 0;
    const source: RevocationSource = {
      latest: () => {
        fetches++;
        return Promise.resolve(served);
      },
    };

    // No list at all: nothing is trusted.
    await expect(rev.trustPolicy(source, { allowedAlgs: ALGS })).rejects.toMatchObject({
      code: 'RVL_EXPIRED',
    });

    served = await list(1, [{ kind: RevokedKind.signingKey, id: bad.key.kid, reason: 'key compromised' }]);
    const policy = await rev.trustPolicy(source, { allowedAlgs: ALGS });
    await authenticateEnvelope(await envelope(good.signer), policy);
    await expect(authenticateEnvelope(await envelope(bad.signer), policy)).rejects.toMatchObject({
      name: 'SuitError',
    });
    expect(await rev.isRevoked(source, RevokedKind.signingKey, bad.key.kid)).toBe(true);

    // The list expires; the server still serves the same (frozen) list: trust is blocked, the device kept asking.
    clock += 7200;
    const before = fetches;
    await expect(rev.trustPolicy(source, { allowedAlgs: ALGS })).rejects.toMatchObject({
      code: 'RVL_EXPIRED',
    });
    await expect(rev.isRevoked(source, RevokedKind.signingKey, good.key.kid)).rejects.toMatchObject({
      code: 'RVL_EXPIRED',
    });
    expect(fetches).toBeGreaterThan(before);
    // A rollback to an older version, even freshly signed, is refused too.
    served = await list(1, []);
    await expect(rev.refresh(source)).rejects.toMatchObject({ code: 'RVL_ROLLBACK' });
    // A list signed by a key that is not a revocation authority is refused.
    served = await createTrustRevocationList(
      { version: 5, issuedAt: clock, expiresAt: clock + 60, entries: [] },
      good.signer,
    );
    await expect(rev.refresh(source)).rejects.toMatchObject({ code: 'RVL_SIGNATURE' });

    // A fresh list: trust resumes, the revocation still holds; persisted across a restart.
    served = await list(2, [{ kind: RevokedKind.signingKey, id: bad.key.kid }]);
    const p2 = await rev.trustPolicy(source, { allowedAlgs: ALGS });
    await authenticateEnvelope(await envelope(good.signer), p2);
    await expect(authenticateEnvelope(await envelope(bad.signer), p2)).rejects.toMatchObject({
      name: 'SuitError',
    });
    const again = await DeviceRevocation.open(await AtomicStore.open(fs, 'trust'), dev, {
      allowedAlgs: ALGS,
      now: () => clock,
    });
    expect(again.list?.version).toBe(2);
  });
});
