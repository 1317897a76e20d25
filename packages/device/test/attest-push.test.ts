/**
 * Issue 7 "distributed to devices (pull and push)", end to end against the real fleet server (in process) and its
 * embedded MQTT broker (mqtts, client-certificate authentication): every check-in names the newest anchor and
 * revocation-list versions (pull); uploading a new anchor statement or revocation list nudges the device over MQTT,
 * and it fetches and applies it at once, without waiting for its poll interval (an hour here).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Alg, coseKeyFromKeyObject, generateSigningKey, softwareSigner } from '@rotor/cose';
import { anchorKey, createAnchorStatement, createTrustRevocationList, RevokedKind } from '@rotor/trust';
import { DeviceAnchors } from '../src/attest/anchors.ts';
import { DeviceRevocation } from '../src/attest/revocation.ts';
import { DeviceTrust } from '../src/attest/trust.ts';
import { AtomicStore } from '../src/storage/atomic.ts';
import { SimulatedFs } from '../src/storage/sim.ts';
import type { StatusTracker, TrackerEvent } from '../src/tracker/tracker.ts';
import {
  deviceDir,
  registerDevice,
  startFleet,
  trackerFor,
  until,
  type DeviceDir,
  type Fleet,
} from './tracker-fixture.ts';

const ALGS: ReadonlySet<number> = new Set<number>([Alg.ES256, Alg.ESP256]);

function party() {
  const k = generateSigningKey(Alg.ES256);
  const key = anchorKey({ ...coseKeyFromKeyObject(k.publicKey), alg: Alg.ES256 });
  return { key, signer: softwareSigner(k.privateKey, Alg.ES256, key.kid) };
}

describe('anchor and revocation updates are pushed over MQTT and pulled at check-in (issue 7)', () => {
  const roots = [party(), party()];
  const rvl = party();
  const statement = (version: number) =>
    createAnchorStatement(
      {
        version,
        issuedAt: 1_800_000_000 + version,
        roles: new Map([
          ['root', { threshold: 1, keys: [roots[version - 1]!.key] }],
          ['revocation', { threshold: 1, keys: [rvl.key] }],
        ]),
      },
      version === 1 ? [roots[0]!.signer] : [roots[version - 2]!.signer, roots[version - 1]!.signer],
    );
  let fleet: Fleet;
  let d: DeviceDir;
  let trust: DeviceTrust;
  let tracker: StatusTracker;
  const events: TrackerEvent[] = [];

  beforeAll(async () => {
    fleet = await startFleet();
    const v1 = await statement(1);
    expect((await fleet.f.admin.put('/v1/trust-anchors', v1)).status).toBe(200);
    const store = await AtomicStore.open(new SimulatedFs(), 'trust');
    const anchors = await DeviceAnchors.open(store, v1, ALGS);
    const revocation = await DeviceRevocation.open(store, anchors, {
      allowedAlgs: ALGS,
      now: () => Math.floor(Date.now() / 1000),
    });
    trust = new DeviceTrust(anchors, revocation, { allowedAlgs: ALGS });
    d = await deviceDir({ trust });
    const dev = await registerDevice(fleet, 'trust-push');
    tracker = trackerFor(fleet, d.agent, dev, {
      trust,
      events,
      mqtt: { url: fleet.f.server.mqttUrl!, minBackoffMs: 50, maxBackoffMs: 500 },
    });
  }, 60_000);
  afterAll(async () => {
    await tracker.stop();
    await fleet.close();
    d.remove();
  });

  const checkins = () =>
    events.flatMap((e) => (e.kind === 'checkin' ? [{ why: e.why, trust: e.result.trust }] : []));

  it('the check-in carries the versions; a new statement and a new list arrive by push at once', async () => {
    await tracker.start();
    await until(
      () => events.some((e) => e.kind === 'push' && e.why === 'connected'),
      'the MQTT subscription',
    );
    await until(() => checkins().length > 0, 'the first check-in');
    expect(checkins()[0]!.trust).toEqual({ anchors: 1, revocation: 0 });
    expect(trust.anchors.current.version).toBe(1);

    // A new anchor statement: the server nudges, the device checks in, sees version 2 and walks to it.
    const pushesBefore = tracker.push?.received ?? 0;
    expect((await fleet.f.admin.put('/v1/trust-anchors', await statement(2))).status).toBe(200);
    await until(() => trust.anchors.current.version === 2, 'anchors v2 on the device');
    expect(tracker.push?.received ?? 0).toBeGreaterThan(pushesBefore);
    expect(checkins().some((c) => c.why === 'push' && c.trust?.anchors === 2)).toBe(true);

    // A revocation list signed by the anchors' revocation role: pushed, fetched, verified, held.
    const now = Math.floor(Date.now() / 1000);
    const list = await createTrustRevocationList(
      {
        version: 1,
        issuedAt: now,
        expiresAt: now + 3600,
        entries: [{ kind: RevokedKind.signingKey, id: new Uint8Array(32).fill(7) }],
      },
      rvl.signer,
    );
    expect((await fleet.f.admin.put('/v1/revocation-list', list)).status).toBe(200);
    await until(() => trust.revocation.list?.version === 1, 'revocation list v1 on the device');
    expect(trust.revocation.isFresh()).toBe(true);
    expect(checkins().some((c) => c.why === 'push' && c.trust?.revocation === 1)).toBe(true);
    // No poll happened: the hour-long interval never elapsed, every check-in after the first was pushed.
    expect(checkins().filter((c) => c.why === 'timer')).toEqual([]);
    expect(events.filter((e) => e.kind === 'error' && e.where === 'trust')).toEqual([]);
  });
});
