/**
 * `npm run bench -- powercut`: power-cut sweep of the device agent (issue 4). For a full update (fetch → decrypt →
 * install → reboot → trial boot → confirm, AES-GCM payload) and for a failed update that rolls back (unhealthy
 * image), power is cut at every mutating storage operation (write, fsync, rename, remove, mkdir, directory fsync)
 * — counted across the agent's own reboots — the same for a 64 KiB image (1 KiB chunks), then at random points of a 256 KiB image.
 * After each cut the simulated device reboots with a fresh agent, which finishes the job. Figures: cut points,
 * devices that failed to boot a verified image or lost anti-rollback state ("bricked", goal 0), and devices that
 * ended on the wrong firmware ("wrong_final", goal 0: healthy update → new, failed update → old).
 */
import { sim } from '@rotor/device';
import type { Benchmark } from '../harness.ts';

interface Tally {
  name: string;
  cuts: number;
  bricked: number;
  wrong: number;
  ops: number;
}

async function sweep(
  name: string,
  s: sim.CutScenario,
  points: Iterable<number>,
  want: 'new' | 'old',
  log: (l: string) => void,
  sequential = false,
): Promise<Tally> {
  const t: Tally = { name, cuts: 0, bricked: 0, wrong: 0, ops: 0 };
  for (const i of points) {
    const o = await sim.cutRun(s, i);
    // Past the end of an uninterrupted run: a sequential sweep is complete; a random point is just skipped.
    if (!o.cut) {
      if (sequential) break;
      continue;
    }
    t.cuts++;
    t.ops = Math.max(t.ops, i + 1);
    if (o.bricked) {
      t.bricked++;
      log(`${name}: cut ${i} bricked: ${o.detail}`);
    } else if (o.final !== want) {
      t.wrong++;
      log(`${name}: cut ${i} ended on ${o.final}: ${o.detail}`);
    }
  }
  return t;
}

function* every(limit: number): Generator<number> {
  for (let i = 0; i < limit; i++) yield i;
}

/** Deterministic pseudo-random cut points below `max` (xorshift32, fixed seed: reproducible runs). */
function* random(n: number, max: number, seed: number): Generator<number> {
  let x = seed;
  const seen = new Set<number>();
  while (seen.size < Math.min(n, max)) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    const i = (x >>> 0) % max;
    if (seen.has(i)) continue;
    seen.add(i);
    yield i;
  }
}

/** Operations of an uninterrupted run (the sweep's upper bound). */
async function opsOf(s: sim.CutScenario): Promise<number> {
  let lo = 0;
  let hi = 1;
  while ((await sim.cutRun(s, hi)).cut) hi *= 2;
  while (lo + 1 < hi) {
    const mid = (lo + hi) >> 1;
    if ((await sim.cutRun(s, mid)).cut) lo = mid;
    else hi = mid;
  }
  return hi;
}

export const powercutBench: Benchmark = {
  name: 'powercut',
  description:
    'device update power-cut sweep: cut points, bricked devices (goal 0), wrong final firmware (goal 0)',
  async run(ctx) {
    const log = (l: string): void => {
      ctx.log(l);
    };
    const small = 2500;
    const large = 64 * 1024;
    const update = await sim.scenario('update', small, 'gcm');
    const rollback = await sim.scenario('rollback', small);
    const bigUpdate = await sim.scenario('update', large, 'ctr');
    const bigRollback = await sim.scenario('rollback', large, 'gcm');
    const hugeUpdate = await sim.scenario('update', 4 * large, 'gcm');
    const hugeRollback = await sim.scenario('rollback', 4 * large, 'ctr');
    const tallies: Tally[] = [];
    if (ctx.quick) {
      tallies.push(await sweep('update (quick)', update, random(8, 100, 7), 'new', log));
      tallies.push(await sweep('rollback (quick)', rollback, random(8, 100, 11), 'old', log));
    } else {
      tallies.push(await sweep('update, every op', update, every(1e6), 'new', log, true));
      tallies.push(await sweep('rollback, every op', rollback, every(1e6), 'old', log, true));
      tallies.push(await sweep('update 64 KiB, every op', bigUpdate, every(1e6), 'new', log, true));
      tallies.push(await sweep('rollback 64 KiB, every op', bigRollback, every(1e6), 'old', log, true));
      const nu = await opsOf(hugeUpdate);
      const nr = await opsOf(hugeRollback);
      ctx.log(`256 KiB images: ${nu} / ${nr} operations per uninterrupted run`);
      tallies.push(
        await sweep('update 256 KiB, random', hugeUpdate, random(250, nu, 0x9e3779b9), 'new', log),
      );
      tallies.push(
        await sweep('rollback 256 KiB, random', hugeRollback, random(250, nr, 0x85ebca6b), 'old', log),
      );
    }
    const sum = (f: (t: Tally) => number): number => tallies.reduce((a, t) => a + f(t), 0);
    return {
      rows: tallies.map((t) => ({ sweep: t.name, cuts: t.cuts, bricked: t.bricked, wrong_final: t.wrong })),
      figures: {
        cuts: sum((t) => t.cuts),
        bricked: sum((t) => t.bricked),
        wrong_final: sum((t) => t.wrong),
        update_cuts: sum((t) => (t.name.startsWith('update') ? t.cuts : 0)),
        rollback_cuts: sum((t) => (t.name.startsWith('rollback') ? t.cuts : 0)),
      },
    };
  },
};
