/**
 * Issue 7 "attestation after every update (the update only counts as confirmed when the new measurements
 * appraise)", end to end: a real fleet server (in process), a device agent with the status tracker and an
 * in-process enclave as the attesting environment. The device enrolls its RoT chain; after a confirmed update its
 * tracker attests at once; the server holds the device's rollout state at in_progress until the evidence appraises
 * — succeeded when the new firmware's measurement matches the release, failed when it does not (a tampered image).
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { EvidenceClaims } from '@rotor/trust';
import { Attester, type AttestingEnvironment } from '../src/attest/attester.ts';
import { EnclaveCore } from '../src/enclave/core.ts';
import { SimulatedFs } from '../src/storage/sim.ts';
import type { StatusTracker, TrackerEvent } from '../src/tracker/tracker.ts';
import {
  deviceDir,
  registerDevice,
  rollout,
  rolloutCounts,
  startFleet,
  trackerFor,
  type DeviceDir,
  type Fleet,
  type RegisteredDevice,
} from './tracker-fixture.ts';

function env(core: EnclaveCore, muted: () => boolean): AttestingEnvironment {
  return {
    getChain: () => Promise.resolve(core.chain!),
    rotateRoT: async () => {
      await core.rotateRoT({});
      return core.chain!;
    },
    attest: async (challenge, claims) => {
      if (muted()) throw new Error('attesting environment unavailable');
      return (await core.attest({ challenge, claims })).token;
    },
    ueid: () => Promise.resolve(core.ueid),
  };
}

describe('an update counts as confirmed only when the new measurements appraise (issue 7)', () => {
  let fleet: Fleet;
  let dev: RegisteredDevice;
  let d: DeviceDir;
  let tracker: StatusTracker;
  const events: TrackerEvent[] = [];
  /** When set, the device measures something other than what it runs (a tampered image). */
  let tamper = false;
  /** When set, the device's attestation fails on the device (its evidence never reaches the server). */
  let mute = false;

  beforeAll(async () => {
    fleet = await startFleet();
    dev = await registerDevice(fleet, 'attest-update');
    d = await deviceDir(
      { reportSigner: dev.reportSigner },
      { anchors: [{ ...fleet.operatorAnchor, name: 'fleet-operator' }], requiredRoles: ['operator'] },
    );
    await d.agent.powerOn();
    const core = await EnclaveCore.open({ fs: new SimulatedFs(), fuse: new Uint8Array(randomBytes(32)) });
    await core.generateRoT({});
    // The measurements: every image of the booted bank (SHA-256 as installed), RFC 9783 component shape.
    const measure = (): Promise<EvidenceClaims> => {
      const b = d.agent.booted!;
      return Promise.resolve({
        oemid: new Uint8Array([0x00, 0x1a, 0x2b]),
        hwmodel: new TextEncoder().encode('sensor'),
        swversion: String(b.record.sequence),
        oemboot: true,
        dbgstat: 3,
        uptime: 1,
        components: b.record.images.map((img) => ({
          type: 'fw',
          digest: tamper ? new Uint8Array(randomBytes(32)) : img.sha256,
          version: String(b.record.sequence),
          signer: new Uint8Array(32).fill(1),
        })),
      });
    };
    tracker = trackerFor(fleet, d.agent, dev, {
      attester: new Attester(
        env(core, () => mute),
        measure,
      ),
      events,
    });
  }, 60_000);
  afterAll(async () => {
    await tracker.stop();
    await fleet.close();
    d.remove();
  });

  const attestations = () => events.flatMap((e) => (e.kind === 'attestation' ? [e.outcome] : []));
  const deviceEvents = async (rolloutId: string) =>
    (
      (await fleet.operator.get(`/v1/rollouts/${rolloutId}/events`)).json() as {
        items?: { kind: string; details: Record<string, unknown> }[];
      }
    ).items ?? [];

  it('attests after provisioning, then a confirmed update succeeds once its evidence appraises', async () => {
    // The factory firmware is a reference value the operator registers (it was not distributed by a rollout).
    const factory = d.agent.booted!.record.images[0]!.sha256;
    const ref = await fleet.operator.post('/v1/attestation/reference-values', {
      sha256: Buffer.from(factory).toString('hex'),
      label: 'factory firmware v1',
    });
    expect(ref.status).toBeLessThan(300);
    const first = await tracker.cycle();
    expect(first.error).toBeUndefined();
    // First contact: the RoT chain is reported (enrollment) and the device attests at once.
    expect(attestations().at(-1)).toMatchObject({ reported: true, attested: 'affirming' });

    const { rolloutId } = await rollout(fleet, dev.id, 2);
    const out = await tracker.cycle();
    expect(out.update).toMatchObject({ ok: true, confirmed: true });
    expect(attestations().at(-1)).toMatchObject({ attested: 'affirming' });
    expect(await rolloutCounts(fleet, rolloutId)).toMatchObject({ succeeded: 1, in_progress: 0 });
    // The history: the confirmed report held the device at in_progress, the attestation ended it.
    const kinds = (await deviceEvents(rolloutId)).map((e) => e.kind);
    expect(kinds).toEqual(expect.arrayContaining(['attestation-pending', 'attestation']));
    expect(kinds.indexOf('attestation-pending')).toBeLessThan(kinds.indexOf('attestation'));
  });

  it('a device whose new measurements do not appraise (tampered image) fails the rollout', async () => {
    tamper = true;
    const { rolloutId } = await rollout(fleet, dev.id, 3);
    const out = await tracker.cycle();
    expect(out.update).toMatchObject({ ok: true, confirmed: true }); // the device believes it is fine
    expect(attestations().at(-1)).toMatchObject({ attested: 'contraindicated' });
    expect(await rolloutCounts(fleet, rolloutId)).toMatchObject({ succeeded: 0, failed: 1, in_progress: 0 });
    const ended = (await deviceEvents(rolloutId)).find((e) => e.kind === 'attestation');
    expect(ended?.details).toMatchObject({ result: 'failed' });
    expect(String(ended?.details.reason)).toMatch(/measurements: .*matches no reference value/);
  });

  it('a confirmed update whose attestation request was lost is asked again, then succeeds', async () => {
    tamper = false;
    mute = true;
    const { rolloutId } = await rollout(fleet, dev.id, 4);
    const out = await tracker.cycle();
    expect(out.update).toMatchObject({ ok: true, confirmed: true });
    expect(await rolloutCounts(fleet, rolloutId)).toMatchObject({ succeeded: 0, in_progress: 1 });
    // The race this covers: an appraisal beside the confirmed report's transaction cleared the request.
    const db = fleet.f.server.db;
    await db.query('UPDATE device_rot SET attest_requested = false WHERE device_id = $1', [dev.id]);
    await db.query(
      "UPDATE device_events SET at_ms = at_ms - 60000 WHERE device_id = $1 AND kind = 'attestation-pending'",
      [dev.id],
    );
    mute = false;
    // The server's periodic tick asks the device again (attestation/service.ts reaskStalledConfirmations).
    let asked = false;
    for (let i = 0; i < 150 && !asked; i++) {
      const rows = await db.query<{ attest_requested: boolean }>(
        'SELECT attest_requested FROM device_rot WHERE device_id = $1',
        [dev.id],
      );
      asked = rows[0]?.attest_requested === true;
      if (!asked) await new Promise((r) => setTimeout(r, 100));
    }
    expect(asked).toBe(true);
    await tracker.cycle();
    expect(attestations().at(-1)).toMatchObject({ attested: 'affirming' });
    expect(await rolloutCounts(fleet, rolloutId)).toMatchObject({ succeeded: 1, in_progress: 0 });
  }, 60_000);
});
