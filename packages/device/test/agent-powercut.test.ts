/**
 * Power-cut sweep (issue 4 "Must show"): a cut at every mutating storage operation of a full update (fetch →
 * install → reboot → trial boot → confirm) and of a failed update that rolls back. After each cut the device
 * reboots and the agent finishes: it must boot a verified image, keep its anti-rollback state, and end on the new
 * firmware (healthy update) or the old one (rolled back). The bench (`npm run bench -- powercut`) adds random cut
 * points over larger images.
 */
import { describe, expect, it } from 'vitest';
import { cutRun, scenario } from './agent-fixture.ts';

describe('power-cut sweep', () => {
  for (const kind of ['update', 'rollback'] as const) {
    it(
      `${kind}: a cut at every write/fsync index leaves a bootable, verified device`,
      { timeout: 600_000 },
      async () => {
        const s = await scenario(kind, 2500, kind === 'update' ? 'gcm' : undefined);
        let cuts = 0;
        const failures: string[] = [];
        for (let i = 0; ; i++) {
          const o = await cutRun(s, i);
          if (!o.cut) break;
          cuts++;
          const want = kind === 'update' ? 'new' : 'old';
          if (o.bricked || o.final !== want) failures.push(`cut ${i}: ${o.detail} final ${o.final}`);
        }
        console.log(`${kind}: ${cuts} cut points`);
        expect(failures).toEqual([]);
        expect(cuts).toBeGreaterThan(50);
      },
    );
  }
});
