/**
 * Issue 7 "checked at every verification": the agent authenticates every update against the device's current
 * trust — the current anchor set (a rotated-out author key is refused) minus the signing keys on a fresh revocation
 * list (a revoked key's envelope is refused with SIGNER_REVOKED); an expired list is refreshed before anything is
 * trusted, and without a fresh one the update is refused with TRUST_STALE (freeze attack). Every refusal leaves a
 * 'failed' transition whose SUIT report names the reason.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Alg, coseKeyFromKeyObject, decodeCoseKey, generateSigningKey, softwareSigner } from '@rotor/cose';
import { ReportReason } from '@rotor/suit';
import {
  anchorKey,
  createAnchorStatement,
  createTrustRevocationList,
  RevokedKind,
  type AnchorKey,
  type RevokedEntry,
} from '@rotor/trust';
import { DeviceAnchors } from '../src/attest/anchors.ts';
import { DeviceRevocation } from '../src/attest/revocation.ts';
import { DeviceTrust, type TrustSource } from '../src/attest/trust.ts';
import { memorySource } from '../src/fetch/source.ts';
import { AtomicStore } from '../src/storage/atomic.ts';
import { SimulatedFs } from '../src/storage/sim.ts';
import { transitionReport, ROTOR_REPORT_KEY } from '../src/tracker/report.ts';
import { image, keys, release, URI } from './agent-fixture.ts';
import { deviceDir, type DeviceDir } from './tracker-fixture.ts';

const ALGS: ReadonlySet<number> = new Set<number>([Alg.ES256, Alg.ESP256]);

function party(alg: number = Alg.ES256) {
  const k = generateSigningKey(alg);
  const key = anchorKey({ ...coseKeyFromKeyObject(k.publicKey), alg });
  return { key, signer: softwareSigner(k.privateKey, alg, key.kid) };
}

/** The fixture's author and operator keys as anchor keys (the fixture's envelopes are signed by them). */
function fixtureKey(role: 'author' | 'operator'): AnchorKey {
  const a = keys().anchors.find((x) => x.role === role)!;
  return anchorKey({ ...decodeCoseKey(a.key), alg: Alg.ESP256 });
}

describe('the agent verifies updates against current anchors and a fresh revocation list (issue 7)', () => {
  const root = party();
  const rvl = party();
  const author2 = party(Alg.ESP256);
  const author1 = fixtureKey('author');
  const operator = fixtureKey('operator');
  const statement = (version: number, authors: AnchorKey[]) =>
    createAnchorStatement(
      {
        version,
        issuedAt: 1_800_000_000 + version,
        roles: new Map([
          ['root', { threshold: 1, keys: [root.key] }],
          ['author', { threshold: 1, keys: authors }],
          ['operator', { threshold: 1, keys: [operator] }],
          ['revocation', { threshold: 1, keys: [rvl.key] }],
        ]),
      },
      [root.signer],
    );

  let clock = 1_800_000_100;
  const statements: Uint8Array[] = [];
  let served: Uint8Array | undefined;
  let listFetches = 0;
  const source: TrustSource = {
    statementsAfter: (v) => Promise.resolve(statements.slice(v)),
    latest: () => {
      listFetches++;
      return Promise.resolve(served);
    },
  };
  const list = (version: number, entries: RevokedEntry[], ttl = 3600) =>
    createTrustRevocationList({ version, issuedAt: clock, expiresAt: clock + ttl, entries }, rvl.signer);

  let d: DeviceDir;
  let trust: DeviceTrust;
  let seq = 1;
  /** Payloads the agent can fetch (URI → bytes). */
  const payloads = new Map<string, Uint8Array>();

  beforeAll(async () => {
    statements.push(await statement(1, [author1]));
    const store = await AtomicStore.open(new SimulatedFs(), 'trust');
    const anchors = await DeviceAnchors.open(store, statements[0]!, ALGS);
    const revocation = await DeviceRevocation.open(store, anchors, { allowedAlgs: ALGS, now: () => clock });
    trust = new DeviceTrust(anchors, revocation, { allowedAlgs: ALGS, source });
    d = await deviceDir({ trust });
    await d.agent.powerOn();
    d.agent.fetchPolicy = { source: memorySource(payloads) };
  });
  afterAll(() => {
    d.remove();
  });

  async function offer(signers = [keys().author, keys().operator]) {
    seq++;
    const r = await release({ seq, image: image(seq, 2000), uri: URI(`t${seq}`), signers });
    payloads.set(URI(`t${seq}`), r.payload);
    return d.agent.update(r.envelope);
  }

  async function lastFailure(): Promise<{
    reason: string | undefined;
    report: ReturnType<typeof transitionReport>;
  }> {
    const pending = await d.agent.outbox.pending();
    const r = pending.filter((x) => x.state === 'failed').at(-1)!;
    return { reason: r.reason, report: transitionReport(r, new Uint8Array(32)) };
  }

  it('with no revocation list at all nothing is trusted (TRUST_STALE); with a fresh one the update installs', async () => {
    const refused = await offer();
    expect(refused).toMatchObject({ ok: false, code: 'TRUST_STALE' });
    const f = await lastFailure();
    expect(f.reason).toBe('TRUST_STALE');
    expect(f.report.result).toMatchObject({ reason: ReportReason.unauthorised });
    expect(f.report.extensions?.get(ROTOR_REPORT_KEY.reason)).toBe('TRUST_STALE');

    served = await list(1, []);
    const ok = await offer();
    expect(ok).toMatchObject({ ok: true, confirmed: true });
    expect(trust.revocation.list?.version).toBe(1);
  });

  it("a revoked signing key's envelope is refused with SIGNER_REVOKED and a SUIT report record", async () => {
    served = await list(2, [{ kind: RevokedKind.signingKey, id: author1.kid, reason: 'key compromise' }]);
    // The check-in announces version 2: the device fetches it.
    const s = await trust.sync({ anchors: 1, revocation: 2 });
    expect(s).toMatchObject({ revocation: 2, errors: [] });
    const before = await d.agent.status();
    const out = await offer();
    expect(out).toMatchObject({ ok: false, code: 'SIGNER_REVOKED' });
    const f = await lastFailure();
    expect(f.reason).toBe('SIGNER_REVOKED');
    expect(f.report.result).toMatchObject({ reason: ReportReason.unauthorised });
    expect(f.report.extensions?.get(ROTOR_REPORT_KEY.reason)).toBe('SIGNER_REVOKED');
    // The running firmware is untouched.
    expect((await d.agent.status()).sequence).toBe(before.sequence);
    // A stranger's envelope is not "revoked", just unauthenticated.
    expect(await offer([keys().stranger, keys().operator])).toMatchObject({
      ok: false,
      code: 'MANIFEST_REJECTED',
    });
  });

  it('an envelope signed by a rotated-out author key is refused; the new author key is accepted', async () => {
    served = await list(3, []); // the compromise is handled by rotating the key out instead
    statements.push(await statement(2, [author2.key]));
    const s = await trust.sync({ anchors: 2, revocation: 3 });
    expect(s.anchors).toEqual({ from: 1, to: 2 });
    expect(s.revocation).toBe(3);
    const out = await offer();
    expect(out).toMatchObject({ ok: false, code: 'MANIFEST_REJECTED' });
    expect(out.ok ? undefined : out.suitCode).toMatch(/^SUIT_/);
    const f = await lastFailure();
    expect(f.reason).toBe('MANIFEST_REJECTED');
    expect(f.report.result).toMatchObject({ reason: ReportReason.unauthorised });
    expect(await offer([author2.signer, keys().operator])).toMatchObject({ ok: true, confirmed: true });
  });

  it('an expired list is refreshed before verifying; a replayed stale list refuses everything (freeze attack)', async () => {
    const stale = served!;
    clock += 7200; // list 3 has expired
    const fetches = listFetches;
    served = await list(4, []);
    expect(await offer([author2.signer, keys().operator])).toMatchObject({ ok: true });
    expect(listFetches).toBe(fetches + 1); // asked for a fresh one before trusting the envelope
    expect(trust.revocation.list?.version).toBe(4);

    clock += 7200; // list 4 has expired; the attacker replays list 3 (and 4): neither is fresh
    served = stale;
    const out = await offer([author2.signer, keys().operator]);
    expect(out).toMatchObject({ ok: false, code: 'TRUST_STALE' });
    expect((await lastFailure()).reason).toBe('TRUST_STALE');
  });
});
