/**
 * The fleet simulator against a real server (in process: PGlite, mutual-TLS device API, embedded MQTT broker over
 * TLS): a small fleet of real device agents (memory storage) completes a rollout end to end; with power cuts during
 * install every device still ends on the new firmware or cleanly on the old (never bricked, RFC 9019 §4 / issue 4);
 * a device whose new image fails its health check rolls back; offline devices join later and update; each device's
 * final state agrees between the server (its reports, GET /v1/devices/:id/events; the rollout's counts) and its flash.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sim } from '@rotor/device';
import {
  FleetSimulator,
  publishRelease,
  rolloutCounts,
  startRollout,
  type DeviceSnapshot,
  type TransitionEvent,
} from '../src/fleet/index.ts';
import { ADMIN_TOKEN, startFleetServer, type FleetServer } from './fleet-fixture.ts';

interface ServerEvent {
  kind: string;
  rolloutId: string | null;
  details: Record<string, unknown>;
}

async function lastReport(s: FleetServer, id: string): Promise<ServerEvent | undefined> {
  const r = await s.operator.call<{ items: ServerEvent[] }>(
    'GET',
    `/v1/devices/${id}/events?limit=1000`,
    undefined,
    200,
  );
  return r.items.filter((e) => e.kind === 'report').at(-1);
}

/** Never bricked: a verified bank A or B, no pending trial or update, the counter at the running firmware. */
function expectHealthy(d: DeviceSnapshot): void {
  expect(d.flash, d.name).toBeDefined();
  const f = d.flash!;
  expect(['a', 'b'], d.name).toContain(f.bank);
  expect(f.trial, d.name).toBe(false);
  expect(f.updating, d.name).toBe(false);
  expect(Object.values(f.counters), d.name).toContain(f.sequence);
}

describe('fleet simulator', () => {
  let s: FleetServer;
  beforeAll(async () => {
    s = await startFleetServer();
  });
  afterAll(async () => {
    await s.close();
  });

  it('20 devices over mutual TLS and MQTT push complete a rollout; server and flash agree', async () => {
    const fleet = await FleetSimulator.start({
      devices: 20,
      operatorUrl: s.f.server.operatorUrl,
      token: ADMIN_TOKEN,
      deviceUrl: s.f.server.deviceUrl!,
      ca: s.f.serverCert.certPem,
      mqttUrl: s.f.server.mqttUrl!,
      anchors: s.anchors,
      namePrefix: 'basic-',
      group: 'basic',
      startSpreadMs: 200,
    });
    const transitions: TransitionEvent[] = [];
    fleet.on('transition', (t) => transitions.push(t));
    try {
      await fleet.waitFor((c) => c.idle === 20, 30_000);
      const rel = await publishRelease(s.author, s.operator, { version: 2, signer: sim.keys().author });
      const ro = await startRollout(s.operator, {
        name: 'basic-v2',
        releaseId: rel.releaseId,
        target: { group: 'basic' },
      });
      await fleet.waitFor((c) => c.confirmed === 20, 60_000);
      await fleet.waitFor((_c, f) => f.devices.every((d) => d.reported?.state === 'confirmed'), 30_000);
      expect(await rolloutCounts(s.operator, ro)).toMatchObject({ total: 20, succeeded: 20, failed: 0 });
      const snap = await fleet.snapshot();
      for (const d of snap) {
        expectHealthy(d);
        expect(d.flash).toMatchObject({ bank: 'b', sequence: '2' });
        expect(d.flash!.images[0]!.sha256).toBe(
          Buffer.from(await crypto.subtle.digest('SHA-256', rel.image)).toString('hex'),
        );
        const ev = await lastReport(s, d.serverId!);
        expect(ev?.rolloutId).toBe(ro);
        expect(ev?.details.transition).toBe('confirmed');
      }
      expect(transitions.filter((t) => t.to === 'confirmed')).toHaveLength(20);
    } finally {
      await fleet.stop();
    }
  }, 150_000);

  it('power cuts during install, a failing health check and late joiners: never bricked; server and flash agree', async () => {
    const n = 12;
    const cut = [0, 1, 2, 3, 4, 5];
    const fleet = await FleetSimulator.start({
      devices: n,
      operatorUrl: s.f.server.operatorUrl,
      token: ADMIN_TOKEN,
      deviceUrl: s.f.server.deviceUrl!,
      ca: s.f.serverCert.certPem,
      mqttUrl: s.f.server.mqttUrl!,
      anchors: s.anchors,
      namePrefix: 'faults-',
      group: 'faults',
      startSpreadMs: 200,
      offlineForMs: 4_000,
      powerCutWindow: 40,
      faults: { powerCutDuringInstall: cut, failHealthCheck: [6], offline: [7, 8] },
    });
    try {
      expect(fleet.counts()).toMatchObject({ offline: 2 });
      await fleet.waitFor((c) => c.idle === n - 2, 30_000);
      const rel = await publishRelease(s.author, s.operator, { version: 3, signer: sim.keys().author });
      const ro = await startRollout(s.operator, {
        name: 'faults-v3',
        releaseId: rel.releaseId,
        target: { group: 'faults' },
      });
      // Every device, the late joiners included, ends with an outcome the server acknowledged.
      await fleet.waitFor(
        (_c, f) => f.devices.every((d) => d.online && d.reported !== undefined && !d.running),
        90_000,
      );
      const snap = await fleet.snapshot();
      expect(snap.reduce((a, d) => a + d.powerCuts, 0)).toBeGreaterThan(0);
      for (const d of snap) {
        expectHealthy(d);
        const f = d.flash!;
        if (d.index === 6) {
          expect(d.reported?.state).toBe('rolled-back');
          expect(f).toMatchObject({ bank: 'a', sequence: '1' });
        } else if (d.reported?.state === 'confirmed') expect(f).toMatchObject({ bank: 'b', sequence: '3' });
        else {
          // Only a power-cut device may end on the old firmware, and then cleanly.
          expect(cut).toContain(d.index);
          expect(f).toMatchObject({ bank: 'a', sequence: '1' });
        }
        const ev = await lastReport(s, d.serverId!);
        expect(ev?.details.transition, d.name).toBe(d.reported?.state);
      }
      // The late joiners updated too.
      for (const i of [7, 8]) expect(snap[i]!.flash).toMatchObject({ bank: 'b', sequence: '3' });
      const counts = await rolloutCounts(s.operator, ro);
      expect(counts.total).toBe(n);
      expect(counts.succeeded).toBe(snap.filter((d) => d.reported?.state === 'confirmed').length);
    } finally {
      await fleet.stop();
    }
  }, 150_000);
});
