/**
 * A power cut at every storage operation of a module install (the commit of the new version and the archiving of
 * the old one) leaves either the old or the new module active after a reboot — verified again at boot and serving.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  deriveSealingKeys,
  DeviceError,
  SandboxPool,
  sealingKeyArchiveSealer,
  SimulatedFs,
} from '../src/index.ts';
import { bytes, codecV1, codecV2, harness, metadata, moduleEnvelope } from './capability-fixture.ts';
import { buildModule } from './capability-modules/build.ts';

const pool = new SandboxPool({ spare: 2 });
afterAll(() => pool.close());

let v1: Uint8Array;
let v2: Uint8Array;
beforeAll(async () => {
  v1 = await buildModule('codec-v1');
  v2 = await buildModule('codec-v2');
});

describe('power cut during a module install', () => {
  // Sealed: archives sealed with the enclave's sealing key (seal.ts) — the archive write seals before it stores.
  const sealer = sealingKeyArchiveSealer(deriveSealingKeys(new Uint8Array(32).fill(9)).seal);
  it.each([
    ['unsealed', {}],
    ['sealed', { sealer }],
  ] as const)(
    'at every operation of a swap (commit + archive), %s archives: old or new active after reboot',
    async (_kind, over) => {
      const e1 = (await moduleEnvelope(v1, metadata('codec', [1, 0, 0]), 1)).envelope;
      const e2 = (
        await moduleEnvelope(
          v2,
          metadata('codec', [2, 0, 0], { imports: [{ module: 'rotor', name: 'log' }] }),
          2,
        )
      ).envelope;
      const seen = new Set<string>();
      for (let cut = 0; ; cut++) {
        const fs = new SimulatedFs();
        const h = await harness(pool, fs);
        const m = await h.open(over);
        await m.install(e1);
        await m.settle();
        fs.cutPowerAt(fs.ops + cut);
        let complete = true;
        try {
          await m.install(e2);
          await m.settle();
        } catch (e) {
          expect((e as DeviceError).code).toBe('POWER_CUT');
          complete = false;
        }
        if (fs.isOff) complete = false;
        await m.close();
        fs.reboot();
        const m2 = await h.open(over);
        const st = m2.status();
        expect(st).toHaveLength(1);
        const version = st[0]!.version;
        expect(['1.0.0', '2.0.0']).toContain(version);
        seen.add(version);
        const r = await m2.call('codec', bytes(5, 6));
        expect(Buffer.from(r.output)).toEqual(
          Buffer.from(version === '1.0.0' ? codecV1(bytes(5, 6)) : codecV2(bytes(5, 6))),
        );
        if (version === '2.0.0') {
          // Whatever phase the cut hit, the old version is still there to revert to (encrypted record or archive).
          await m2.revert('codec');
          expect((await m2.call('codec', bytes(1))).version).toEqual([1, 0, 0]);
        }
        await m2.close();
        if (complete) {
          expect(version).toBe('2.0.0');
          break;
        }
        expect(cut).toBeLessThan(200);
      }
      expect(seen).toEqual(new Set(['1.0.0', '2.0.0']));
    },
  );

  it('at every operation of a first install: nothing or the new module after reboot', async () => {
    const e1 = (await moduleEnvelope(v1, metadata('codec', [1, 0, 0]), 1)).envelope;
    for (let cut = 0; ; cut++) {
      const fs = new SimulatedFs();
      const h = await harness(pool, fs);
      const m = await h.open();
      fs.cutPowerAt(fs.ops + cut);
      let complete = true;
      try {
        await m.install(e1);
      } catch (e) {
        expect((e as DeviceError).code).toBe('POWER_CUT');
        complete = false;
      }
      await m.close();
      fs.reboot();
      const m2 = await h.open();
      const st = m2.status();
      if (st.length === 1) expect((await m2.call('codec', bytes(1))).version).toEqual([1, 0, 0]);
      else expect(st).toEqual([]);
      await m2.close();
      if (complete) {
        expect(st).toHaveLength(1);
        break;
      }
      expect(cut).toBeLessThan(100);
    }
  });
});
