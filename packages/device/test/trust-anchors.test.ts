/**
 * Issue 7: trust-anchor rotation on the device (seed 001 "new root key signed by a trusted authority"; TUF §5.3.4
 * root rotation): versions applied strictly in order, each signed by the threshold of the current root keys and
 * of the new ones; a device offline across several versions walks them; rotated-out keys stop being trusted.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { Alg, coseKeyFromKeyObject, generateSigningKey, softwareSigner, type Signer } from '@rotor/cose';
import { authenticateEnvelope, buildEnvelope, buildUpdateManifest } from '@rotor/suit';
import {
  anchorKey,
  applyAnchorStatement,
  createAnchorStatement,
  initialAnchorSet,
  isTrustError,
  type AnchorKey,
  type AnchorRole,
} from '@rotor/trust';
import { DeviceAnchors, type AnchorSource } from '../src/attest/anchors.ts';
import { AtomicStore } from '../src/storage/atomic.ts';
import { SimulatedFs } from '../src/storage/sim.ts';

const ALGS: ReadonlySet<number> = new Set<number>([Alg.ES256]);

interface Party {
  key: AnchorKey;
  signer: Signer;
}
function party(): Party {
  const k = generateSigningKey(Alg.ES256);
  const key = anchorKey({ ...coseKeyFromKeyObject(k.publicKey), alg: Alg.ES256 });
  return { key, signer: softwareSigner(k.privateKey, Alg.ES256, key.kid) };
}
/** "<code> <message>" of the TrustError `f` throws. */
function refusal(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    if (isTrustError(e)) return `${e.code} ${e.message}`;
    throw e;
  }
  throw new Error('not refused');
}
const role = (threshold: number, ps: Party[]): AnchorRole => ({ threshold, keys: ps.map((p) => p.key) });

function statement(version: number, root: Party[], author: Party[], threshold: number, signers: Party[]) {
  return createAnchorStatement(
    {
      version,
      issuedAt: 1_800_000_000 + version,
      roles: new Map([
        ['root', role(threshold, root)],
        ['author', role(1, author)],
      ]),
    },
    signers.map((s) => s.signer),
  );
}

async function envelope(author: Party): Promise<Uint8Array> {
  return buildEnvelope(
    buildUpdateManifest({
      vendorDomain: 'example.com',
      className: 'sensor',
      sequenceNumber: 1,
      components: [
        { id: 'fw', image: { digest: new Uint8Array(randomBytes(32)), size: 10 }, uri: 'https://x/fw' },
      ],
    }),
    { signers: [author.signer] },
  );
}

describe('trust-anchor rotation (issue 7, TUF root-rotation rule)', () => {
  it('a device offline for two versions walks three in order; rotated-out keys stop being trusted', async () => {
    const [r1a, r1b, r2a, r2b, r3, r4] = [party(), party(), party(), party(), party(), party()];
    const [a1, a2, a3, a4] = [party(), party(), party(), party()];
    // v1 (factory): root {r1a, r1b} threshold 2. v2: root {r2a, r2b} threshold 2 — signed by both old and both new.
    const v1 = await statement(1, [r1a, r1b], [a1], 2, [r1a, r1b]);
    const v2 = await statement(2, [r2a, r2b], [a2], 2, [r1a, r1b, r2a, r2b]);
    const v3 = await statement(3, [r3], [a3], 1, [r2a, r2b, r3]);
    const v4 = await statement(4, [r4], [a4], 1, [r3, r4]);

    const fs = new SimulatedFs();
    const store = await AtomicStore.open(fs, 'anchors');
    const dev = await DeviceAnchors.open(store, v1, ALGS);
    expect(dev.current.version).toBe(1);
    const oldEnvelope = await envelope(a1);
    await authenticateEnvelope(oldEnvelope, dev.trustPolicy({ allowedAlgs: ALGS }));

    // The device was offline while v2 and v3 were published; v4 is out when it comes back.
    const published = [v4, v2, v3];
    const asked: number[] = [];
    const source: AnchorSource = {
      statementsAfter: (v) => {
        asked.push(v);
        return Promise.resolve(published.filter((s) => initialAnchorSet(s, ALGS).version > v));
      },
    };
    const u = await dev.update(source);
    expect(u).toEqual({ from: 1, to: 4 });
    expect(asked).toEqual([1]);

    // Persisted atomically: a restart resumes at v4, whatever the provisioned statement says.
    const reopened = await DeviceAnchors.open(await AtomicStore.open(fs, 'anchors'), v1, ALGS);
    expect(reopened.current.version).toBe(4);

    const policy = reopened.trustPolicy({ allowedAlgs: ALGS });
    await authenticateEnvelope(await envelope(a4), policy);
    // Rotated-out author keys (v1, v2, v3) are refused by the policy built from the current anchors.
    for (const old of [a1, a2, a3]) {
      await expect(authenticateEnvelope(await envelope(old), policy)).rejects.toMatchObject({
        name: 'SuitError',
      });
    }
    await expect(authenticateEnvelope(oldEnvelope, policy)).rejects.toMatchObject({ name: 'SuitError' });
    expect((await dev.update(source)).to).toBe(4);
  });

  it('refuses a statement without the threshold of the old root keys or of the new ones, or out of order', async () => {
    const [r1a, r1b, r2a, r2b] = [party(), party(), party(), party()];
    const a = party();
    const v1 = await statement(1, [r1a, r1b], [a], 2, [r1a, r1b]);
    const cur = initialAnchorSet(v1, ALGS);
    // Only one of the two old root keys (threshold 2).
    const fewOld = await statement(2, [r2a, r2b], [a], 2, [r1a, r2a, r2b]);
    expect(refusal(() => applyAnchorStatement(cur, fewOld, ALGS))).toMatch(
      /^ANCHORS_THRESHOLD .*current root/,
    );
    // Only the old root keys: the new keys never agreed.
    const noNew = await statement(2, [r2a, r2b], [a], 2, [r1a, r1b, r2a]);
    expect(refusal(() => applyAnchorStatement(cur, noNew, ALGS))).toMatch(/^ANCHORS_THRESHOLD .*new root/);
    // The same key signing twice counts once.
    const dup = await statement(2, [r2a, r2b], [a], 2, [r1a, r1a, r2a, r2b]);
    expect(() => applyAnchorStatement(cur, dup, ALGS)).toThrow(
      expect.objectContaining({ code: 'ANCHORS_THRESHOLD' }),
    );
    // Version 3 directly on version 1 (N+1 is checked against N only).
    const skip = await statement(3, [r2a, r2b], [a], 2, [r1a, r1b, r2a, r2b]);
    expect(() => applyAnchorStatement(cur, skip, ALGS)).toThrow(
      expect.objectContaining({ code: 'ANCHORS_VERSION' }),
    );
    // The device keeps what it could verify and reports the refusal.
    const store = await AtomicStore.open(new SimulatedFs(), 'a');
    const dev = await DeviceAnchors.open(store, v1, ALGS);
    const u = await dev.update({ statementsAfter: () => Promise.resolve([fewOld]) });
    expect(u.to).toBe(1);
    expect(u.error?.code).toBe('ANCHORS_THRESHOLD');
    const ok = await statement(2, [r2a, r2b], [a], 2, [r1a, r1b, r2a, r2b]);
    expect(applyAnchorStatement(cur, ok, ALGS).version).toBe(2);
  });
});
