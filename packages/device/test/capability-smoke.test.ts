import { afterAll, expect, it } from 'vitest';
import { SandboxPool } from '../src/index.ts';
import { buildModule } from './capability-modules/build.ts';
import { bytes, codecV1, codecV2, harness, metadata, moduleEnvelope } from './capability-fixture.ts';

const pool = new SandboxPool({ spare: 1 });
afterAll(() => pool.close());

it('smoke', async () => {
  const h = await harness(pool);
  const m = await h.open();
  const v1 = await buildModule('codec-v1');
  const e1 = await moduleEnvelope(
    v1,
    metadata('codec', [1, 0, 0], { selfTest: { input: bytes(1, 2), output: codecV1(bytes(1, 2)) } }),
    1,
  );
  await m.install(e1.envelope);
  const r = await m.call('codec', bytes(10, 20, 30));
  expect([...r.output]).toEqual([...codecV1(bytes(10, 20, 30))]);
  const v2 = await buildModule('codec-v2');
  const e2 = await moduleEnvelope(
    v2,
    metadata('codec', [2, 0, 0], { imports: [{ module: 'rotor', name: 'log' }] }),
    2,
  );
  await m.install(e2.envelope);
  const r2 = await m.call('codec', bytes(10, 20, 30));
  expect([...r2.output]).toEqual([...codecV2(bytes(10, 20, 30))]);
  await m.settle();
  console.log(h.events, h.logs, m.status());
  await m.close();
});
