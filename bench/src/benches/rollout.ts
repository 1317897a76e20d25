/**
 * `npm run bench -- rollout`: planning a rollout of 1,000,000 devices into phases on PostgreSQL (the machine's
 * server, a fresh database), timed through the server's rollout service (filter, deterministic shuffle, phase
 * assignment, one-active-rollout check, audit entry), beside the same number of rows written by a bare
 * `INSERT … SELECT` of the device ids in the same run (the physical floor). "seconds" goal ≤ 30; "ratio" =
 * floor / planning.
 */
import { randomBytes } from 'node:crypto';
import { openDatabase } from '@rotor/server';
import { round, type Benchmark } from '../harness.ts';
import { approvedRelease, benchServices, OPERATOR } from '../bench-release.ts';
import { freshDatabase } from '../scratch-db.ts';

export const rolloutBench: Benchmark = {
  name: 'rollout',
  description:
    'plan a 1,000,000-device rollout into phases on PostgreSQL (seconds) vs a bare INSERT…SELECT of the rows',
  async run(ctx) {
    const n = ctx.quick ? 2_000 : 1_000_000;
    const scratch = await freshDatabase();
    const db = await openDatabase({ databaseUrl: scratch.url, poolSize: 2 });
    try {
      const s = await benchServices(db);
      ctx.log(`registering ${n.toLocaleString('en-US')} devices`);
      await db.query(
        `INSERT INTO devices (id, name, cert_sha256, device_group, tags, created_at_ms)
         SELECT 'dev-' || i, 'device-' || i, sha256(int8send(i)), CASE WHEN i % 10 = 0 THEN 'lab' ELSE 'field' END,
           ARRAY['fleet'], 0 FROM generate_series(1, $1) AS i`,
        [n],
      );
      await db.exec('ANALYZE devices');
      const rel = await approvedRelease(s, randomBytes(1024));

      // Baseline: the same number of rows into a table of the same shape, no planning.
      await db.exec('CREATE TABLE bench_floor (LIKE rollout_devices INCLUDING DEFAULTS)');
      let t0 = performance.now();
      await db.query(
        "INSERT INTO bench_floor (rollout_id, device_id, phase, state, active, updated_at_ms) SELECT 'x', id, 0, 'pending', true, 0 FROM devices WHERE tags @> ARRAY['fleet']",
      );
      const floor = (performance.now() - t0) / 1000;

      t0 = performance.now();
      const r = await s.rollouts.create(OPERATOR, {
        name: 'bench',
        releaseId: rel.id,
        target: { tags: ['fleet'] },
        phases: [
          { percent: 1, successThreshold: 0.95, failureThreshold: 0.05, timeoutMs: 3_600_000 },
          { percent: 10, successThreshold: 0.95, failureThreshold: 0.05, timeoutMs: 3_600_000 },
          { percent: 100, successThreshold: 0.95, failureThreshold: 0.05, timeoutMs: 3_600_000 },
        ],
      });
      const seconds = (performance.now() - t0) / 1000;
      if (r.assigned !== n) throw new Error(`assigned ${r.assigned} of ${n}`);
      return {
        rows: [
          {
            path: 'rollout planning (service)',
            devices: n,
            seconds: round(seconds),
            'phase sizes': r.phaseCounts.map((c) => c.total).join('/'),
          },
          { path: 'bare INSERT…SELECT (floor)', devices: n, seconds: round(floor), 'phase sizes': '' },
        ],
        figures: {
          devices: n,
          seconds: round(seconds),
          floor_seconds: round(floor),
          ratio: round(floor / seconds),
          goal_seconds: 30,
        },
      };
    } finally {
      await db.close();
      await scratch.drop();
    }
  },
};
