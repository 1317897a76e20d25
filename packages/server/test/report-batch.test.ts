/**
 * Group-committed check-in offers and report ingestion (rollouts.ts): many devices in one event-loop turn share
 * statements and one transaction per rollout, with every per-report guarantee kept — each report recorded once,
 * a device's duplicate outcome refused (409 CONFLICT), progress reports as history only, counts exact, the
 * failure threshold pausing the rollout.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeReport } from '@rotor/suit';
import { createServices, migrate, type PhaseSpec, type Principal, type Services } from '../src/index.ts';
import { BACKENDS, createTestDatabase } from './helpers.ts';
import { approvedReleaseAndDevices, testKeyMaterial } from './fixtures.ts';

const OPERATOR: Principal = { kind: 'operator', tokenId: 't-op', name: 'op', role: 'operator' };
const device = (id: string): Principal => ({ kind: 'device', deviceId: id, name: id });

/** A report of `digest`: success, failure, or a progress transition (Rotor extension -257). */
const report = (digest: Uint8Array, kind: 'success' | 'failure' | 'downloading'): Uint8Array =>
  encodeReport({
    reference: { uri: undefined, digest: { alg: -16, bytes: digest } },
    records: [],
    result:
      kind === 'failure'
        ? {
            code: 1,
            reason: 1,
            record: {
              manifestId: [],
              manifestSection: 20,
              sectionOffset: 0,
              componentIndex: 0,
              properties: new Map(),
            },
          }
        : true,
    ...(kind === 'downloading' ? { extensions: new Map([[-257, 'downloading']]) } : {}),
  });

const phase = (percent: number, successThreshold: number, failureThreshold: number): PhaseSpec => ({
  percent,
  successThreshold,
  failureThreshold,
  timeoutMs: 600_000,
});

const setup = approvedReleaseAndDevices;

describe.each(BACKENDS)('group-committed reports on %s', (backend) => {
  let t: Awaited<ReturnType<typeof createTestDatabase>>;
  let s: Services;
  const clock = 1_000_000;
  beforeAll(async () => {
    t = await createTestDatabase(backend);
    await migrate(t.db);
    s = createServices(t.db, { now: () => clock, keys: testKeyMaterial().keys });
  });
  afterAll(async () => {
    await t.drop();
  });

  it('concurrent offers and reports: each recorded once, duplicates refused, counts exact', async () => {
    const n = 40;
    const { releaseId, digest, deviceIds } = await setup(s, 'batch', n);
    const r = await s.rollouts.create(OPERATOR, {
      name: 'batch',
      releaseId,
      target: { group: 'batch' },
      phases: [phase(100, 1, 1)],
    });
    // Every device checks in at once (twice each): one offer recorded per device.
    const answers = await Promise.all(
      [...deviceIds, ...deviceIds].map((id) => s.rollouts.checkin(device(id))),
    );
    expect(answers.every((a) => a.action === 'update')).toBe(true);
    expect((await s.rollouts.get(OPERATOR, r.id)).counts).toMatchObject({ in_progress: n, pending: 0 });
    // Progress reports at once: history only.
    const progress = await Promise.all(
      deviceIds.map((id) => s.rollouts.report(device(id), report(digest, 'downloading'))),
    );
    expect(progress.every((x) => x.rolloutId === r.id && x.state === 'in_progress')).toBe(true);
    // Outcomes at once, each sent twice in the same turn: the first counts, the duplicate is a CONFLICT.
    const results = await Promise.allSettled(
      deviceIds.flatMap((id, i) => {
        const rep = report(digest, i % 10 === 0 ? 'failure' : 'success');
        return [s.rollouts.report(device(id), rep), s.rollouts.report(device(id), rep)];
      }),
    );
    for (let i = 0; i < n; i++) {
      const pair = [results[2 * i]!, results[2 * i + 1]!];
      const ok = pair.filter((x) => x.status === 'fulfilled');
      expect(ok).toHaveLength(1);
      expect(ok[0]!.value).toEqual({ rolloutId: r.id, state: i % 10 === 0 ? 'failed' : 'succeeded' });
      const refused = pair.find((x) => x.status === 'rejected');
      expect(refused?.reason).toMatchObject({ code: 'CONFLICT' });
    }
    const after = await s.rollouts.get(OPERATOR, r.id);
    expect(after.counts).toMatchObject({ total: n, succeeded: n - n / 10, failed: n / 10, in_progress: 0 });
    const events = await s.rollouts.deviceEvents(OPERATOR, { rolloutId: r.id, after: 0, limit: 10_000 });
    expect(events.filter((e) => e.kind === 'offered')).toHaveLength(n);
    expect(events.filter((e) => e.kind === 'report')).toHaveLength(2 * n);
    for (const id of deviceIds) {
      const mine = events.filter((e) => e.deviceId === id).map((e) => e.kind);
      expect(mine).toEqual(['offered', 'report', 'report']);
    }
    // A report after the device's outcome: 409 as before.
    await expect(s.rollouts.report(device(deviceIds[1]!), report(digest, 'success'))).rejects.toMatchObject({
      code: 'CONFLICT',
    });
  });

  it('a batch of failures crossing the threshold pauses the rollout; every failure is recorded', async () => {
    const { releaseId, digest, deviceIds } = await setup(s, 'fail', 10);
    const r = await s.rollouts.create(OPERATOR, {
      name: 'fail',
      releaseId,
      target: { group: 'fail' },
      phases: [phase(100, 1, 0.5)],
    });
    await Promise.all(deviceIds.map((id) => s.rollouts.checkin(device(id))));
    // Four failures: below the threshold (4 of 10 < 0.5).
    await Promise.all(
      deviceIds.slice(0, 4).map((id) => s.rollouts.report(device(id), report(digest, 'failure'))),
    );
    expect((await s.rollouts.get(OPERATOR, r.id)).state).toBe('active');
    // Three more in one turn: the threshold is crossed and the rollout pauses.
    await Promise.all(
      deviceIds.slice(4, 7).map((id) => s.rollouts.report(device(id), report(digest, 'failure'))),
    );
    const paused = await s.rollouts.get(OPERATOR, r.id);
    expect(paused.state).toBe('paused');
    expect(paused.pauseReason).toMatch(/7 of 10 devices failed/);
    expect(paused.counts).toMatchObject({ failed: 7, in_progress: 3 });
    // The paused rollout's devices get no work; the remaining devices' outcomes are still recorded.
    expect(await s.rollouts.checkin(device(deviceIds[9]!))).toEqual({ action: 'none' });
    await s.rollouts.report(device(deviceIds[9]!), report(digest, 'success'));
    expect((await s.rollouts.get(OPERATOR, r.id)).counts).toMatchObject({ failed: 7, succeeded: 1 });
  });
});
