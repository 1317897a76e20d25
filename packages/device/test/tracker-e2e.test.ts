/**
 * End to end against a real fleet server (packages/server in process, PGlite, mutual-TLS device listener): register,
 * release, approve (the server encrypts the payload and builds a per-device envelope), roll out; the device checks in
 * over mutual TLS, fetches its envelope, hands it to the agent, and delivers the transition reports; the rollout
 * counts the device. Then the server goes away before the reports are out: they stay in the outbox across an agent
 * restart and are delivered when it is back.
 *
 * These run the failure path on purpose: the device is registered with a key-agreement key it does not hold, so
 * the content key wrapped for it cannot be unwrapped (RFC 9019 §3 confidentiality: one device's wrap is useless to
 * another) — the outcome stays a refusal whatever else the agent learns. Every transition is reported (the server
 * counts only confirmed / failed / rolled-back). The success path (download over the Range endpoint, install,
 * reboot, confirm) runs against the same server in tracker-e2e-success.test.ts.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateAgreementKey } from '@rotor/cose';
import type { TrackerEvent } from '../src/tracker/tracker.ts';
import {
  deviceDir,
  registerDevice,
  Relay,
  rollout,
  rolloutCounts,
  startFleet,
  trackerFor,
  type Fleet,
} from './tracker-fixture.ts';

describe('status tracker against the fleet server', () => {
  let fleet: Fleet;
  beforeAll(async () => {
    fleet = await startFleet();
  });
  afterAll(async () => {
    await fleet.close();
  });

  const provision = async (dev: { reportSigner: import('@rotor/cose').Signer }) =>
    deviceDir(
      { reportSigner: dev.reportSigner },
      { anchors: [{ ...fleet.operatorAnchor, name: 'fleet-operator' }], requiredRoles: ['operator'] },
    );

  it('checks in over mutual TLS, runs the assigned update, reports; the rollout counts the device', async () => {
    const dev = await registerDevice(fleet, 'tracker-e2e', {
      agreementKey: generateAgreementKey('P-256').publicKey,
    });
    const d = await provision(dev);
    const events: TrackerEvent[] = [];
    const t = trackerFor(fleet, d.agent, dev, { events });
    try {
      await d.agent.powerOn();
      const idle = await t.cycle();
      expect(idle.error).toBeUndefined();
      expect(idle.checkin).toMatchObject({ action: 'none' });

      const ro = await rollout(fleet, dev.id, 2);
      const out = await t.cycle();
      expect(out.error).toBeUndefined();
      expect(out.checkin).toMatchObject({ action: 'update', rolloutId: ro.rolloutId });
      expect(out.update).toMatchObject({ ok: false });
      // The running firmware is untouched.
      expect(await d.agent.status()).toMatchObject({
        bank: 'a',
        sequence: 1n,
        trial: false,
        updating: false,
      });
      // The failure went out as a report the server matched to the rollout (draft-ietf-suit-report §4 reference).
      expect(out.pending).toBe(0);
      const failed = events.find((e) => e.kind === 'delivered' && e.record.state === 'failed');
      expect(failed).toBeDefined();
      expect(await rolloutCounts(fleet, ro.rolloutId)).toMatchObject({ total: 1, failed: 1, succeeded: 0 });
      const hist = (await fleet.operator.get(`/v1/devices/${dev.id}/events`)).json() as {
        items: { kind: string; details: Record<string, unknown> }[];
      };
      expect(hist.items.map((e) => e.kind)).toEqual(expect.arrayContaining(['offered', 'report']));

      // The assignment is not run twice.
      const again = await t.cycle();
      expect(again.error).toBeUndefined();
      expect(again.update).toBeUndefined();
    } finally {
      await t.stop();
      d.remove();
    }
  });

  it('keeps reports while the server is down and delivers them after an agent restart', async () => {
    const dev = await registerDevice(fleet, 'tracker-outage', {
      agreementKey: generateAgreementKey('P-256').publicKey,
    });
    const relay = new Relay(fleet.f.server.deviceUrl!);
    await relay.up();
    const d = await provision(dev);
    const events: TrackerEvent[] = [];
    // The server becomes unreachable the moment the first transition is about to be sent.
    let t = trackerFor(fleet, d.agent, dev, {
      url: relay.url,
      progressFlushMs: 3_600_000,
      onEvent: (e) => {
        events.push(e);
        if (e.kind === 'transition') void relay.down();
      },
    });
    try {
      await d.agent.powerOn();
      const ro = await rollout(fleet, dev.id, 2);
      const out = await t.cycle();
      expect(out.update).toMatchObject({ ok: false });
      expect(out.error?.code).toBe('TRACKER_UNREACHABLE');
      expect(out.pending).toBeGreaterThan(0);
      const kept = (await d.agent.outbox.pending()).map((r) => r.state);
      expect(kept.at(-1)).toBe('failed');
      expect(await rolloutCounts(fleet, ro.rolloutId)).toMatchObject({ in_progress: 1, failed: 0 });
      await t.stop();

      // Process restart: a new agent over the same directory; the outbox is still there.
      const agent = d.restart();
      await agent.powerOn();
      expect((await agent.outbox.pending()).map((r) => r.state)).toEqual(kept);
      const down = trackerFor(fleet, agent, dev, { url: relay.url });
      const still = await down.cycle();
      expect(still.error?.code).toBe('TRACKER_UNREACHABLE');
      expect(still.pending).toBe(kept.length);
      await down.stop();

      await relay.up();
      t = trackerFor(fleet, agent, dev, { url: relay.url, events });
      const back = await t.cycle();
      expect(back.error).toBeUndefined();
      expect(back.pending).toBe(0);
      expect(await agent.outbox.pending()).toEqual([]);
      expect(await rolloutCounts(fleet, ro.rolloutId)).toMatchObject({ total: 1, failed: 1 });
    } finally {
      await t.stop();
      await relay.down();
      d.remove();
    }
  });
});
