/**
 * Capability modules at run time: hot swap under load, runaway modules (infinite loop, unbounded memory growth, a
 * trap) contained and rolled back while the rest of the device keeps serving, and a module revoked while running.
 * No timing assertions: progress is awaited by counting answers.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256 } from '@rotor/trust';
import { DeviceError, SandboxPool, type CallResult, type CapabilityManager } from '../src/index.ts';
import {
  bytes,
  codecV1,
  codecV2,
  harness,
  metadata,
  moduleEnvelope,
  random,
  revocationList,
} from './capability-fixture.ts';
import { buildModule } from './capability-modules/build.ts';

const pool = new SandboxPool({ spare: 2 });
afterAll(() => pool.close());

let v1: Uint8Array;
let v2: Uint8Array;
beforeAll(async () => {
  v1 = await buildModule('codec-v1');
  v2 = await buildModule('codec-v2');
});

const LOG = [{ module: 'rotor', name: 'log' }];

function expected(r: CallResult, input: Uint8Array): Uint8Array {
  return r.output[0] === 1 ? codecV1(input) : codecV2(input);
}

describe('hot swap under load', () => {
  it('swaps 12 times under continuous calls: zero failed calls, each answered by exactly one version', async () => {
    const h = await harness(pool);
    const m = await h.open();
    const digests = [Buffer.from(sha256(v1)).toString('hex'), Buffer.from(sha256(v2)).toString('hex')];
    await m.install((await moduleEnvelope(v1, metadata('codec', [1, 0, 0]), 1)).envelope);
    const answered = new Map<string, number>(); // "sequence" -> calls answered
    const failures: unknown[] = [];
    let stop = false;
    let calls = 0;
    const worker = async (): Promise<void> => {
      while (!stop) {
        const input = random(1 + (calls % 64));
        calls++;
        try {
          const r = await m.call('codec', input);
          // Exactly one version: the output is that version's function of the input, and the reported module
          // (digest) is the one whose code produced it.
          expect(Buffer.from(r.output)).toEqual(Buffer.from(expected(r, input)));
          expect(r.digest).toBe(digests[r.output[0]! - 1]);
          expect(r.version[0]).toBe(r.output[0]);
          answered.set(String(r.sequence), (answered.get(String(r.sequence)) ?? 0) + 1);
        } catch (e) {
          failures.push(e);
        }
      }
    };
    const loops = Array.from({ length: 6 }, () => worker());
    const waitFor = async (seq: number, n: number): Promise<void> => {
      while ((answered.get(String(seq)) ?? 0) < n && failures.length === 0) {
        await new Promise((r) => setImmediate(r));
      }
    };
    await waitFor(1, 20);
    for (let seq = 2; seq <= 13; seq++) {
      const even = seq % 2 === 0;
      const env = await moduleEnvelope(
        even ? v2 : v1,
        metadata('codec', even ? [2, 0, seq] : [1, 0, seq], even ? { imports: LOG } : {}),
        seq,
      );
      await m.install(env.envelope);
      await waitFor(seq, 20);
    }
    stop = true;
    await Promise.all(loops);
    expect(failures).toEqual([]);
    for (let seq = 1; seq <= 13; seq++) expect(answered.get(String(seq)) ?? 0).toBeGreaterThanOrEqual(20);
    expect([...answered.values()].reduce((a, b) => a + b, 0)).toBe(calls);
    await m.settle();
    // The replaced versions were archived (keepArchives = 1: only the newest is kept; a version trimmed by the next
    // swap before its archiving ran is simply dropped).
    expect(h.events.filter((e) => e.type === 'archived').length).toBeGreaterThanOrEqual(1);
    expect(m.status()[0]?.archives.map((a) => a.sequence)).toEqual([12n]);
    await m.close();
  });
});

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (e) {
    if (e instanceof DeviceError) return e.code;
    throw e;
  }
}

describe('runaway modules are contained and rolled back', () => {
  let m: CapabilityManager;
  let events: Awaited<ReturnType<typeof harness>>['events'];
  let seq = 1;
  beforeAll(async () => {
    const h = await harness(pool);
    events = h.events;
    m = await h.open();
    // An unrelated capability that must keep serving throughout.
    await m.install((await moduleEnvelope(v2, metadata('codec', [2, 0, 0], { imports: LOG }), 1)).envelope);
  });
  afterAll(() => m.close());

  async function installFaulty(wasm: Uint8Array, pages = 1): Promise<void> {
    await m.install((await moduleEnvelope(v1, metadata('runaway', [1, 0, 0]), seq++)).envelope);
    await m.install(
      (
        await moduleEnvelope(
          wasm,
          metadata('runaway', [2, 0, 0], { limits: { memoryPages: pages, callMs: 150, ioBytes: 4096 } }),
          seq++,
        )
      ).envelope,
    );
    expect((await m.call('runaway', bytes(1))).version).toEqual([2, 0, 0]);
  }

  async function runawayCall(trigger: number, want: string): Promise<void> {
    // The faulting call, with healthy calls queued behind it on the same version and calls to another capability.
    const bad = code(m.call('runaway', bytes(trigger, 1, 2)));
    const queued = Array.from({ length: 5 }, (_, i) => m.call('runaway', bytes(i)));
    const other = Array.from({ length: 5 }, (_, i) => m.call('codec', bytes(i, 9)));
    expect(await bad).toBe(want);
    // Calls queued behind the fault never ran on the faulty version: they are answered by the restored one.
    for (const r of await Promise.all(queued)) expect(r.version).toEqual([1, 0, 0]);
    for (const [i, r] of (await Promise.all(other)).entries())
      expect(Buffer.from(r.output)).toEqual(Buffer.from(codecV2(bytes(i, 9))));
    const after = await m.call('runaway', bytes(7));
    expect(after.version).toEqual([1, 0, 0]);
    expect(Buffer.from(after.output)).toEqual(Buffer.from(codecV1(bytes(7))));
    expect(events.at(-1)).toMatchObject({ type: 'rolled-back', name: 'runaway', from: '2.0.0', to: '1.0.0' });
  }

  it('an infinite loop is stopped at its time limit (worker terminated) and rolled back', async () => {
    await installFaulty(await buildModule('loop'));
    await runawayCall(0xff, 'CAP_TIMEOUT');
    expect(events.some((e) => e.type === 'fault' && e.kind === 'timeout')).toBe(true);
  });

  it('unbounded memory growth stops at the declared maximum, then the trap rolls it back', async () => {
    await installFaulty(await buildModule('grow', { MAX_PAGES: '4' }), 4);
    await runawayCall(0xfe, 'CAP_TRAPPED');
    const fault = events.findLast((e) => e.type === 'fault');
    expect(fault).toMatchObject({ kind: 'trap' });
    expect(fault?.type === 'fault' ? fault.memoryBytes : Infinity).toBeLessThanOrEqual(4 * 65536);
  });

  it('a trap is contained and rolled back', async () => {
    await installFaulty(await buildModule('trap'));
    await runawayCall(0xfd, 'CAP_TRAPPED');
  });

  it('a module error status is not a fault: the module stays', async () => {
    const big = new Uint8Array(16384); // codec's own bound (io_cap - 1): it answers -1
    expect(await code(m.call('codec', big))).toBe('CAP_MODULE_ERROR');
    expect(await code(m.call('codec', new Uint8Array(16385)))).toBe('CAP_INPUT_TOO_LARGE');
    expect((await m.call('codec', bytes(1))).version).toEqual([2, 0, 0]);
  });

  it('without an archived version the faulty capability is unloaded, the device runs on', async () => {
    await m.install(
      (
        await moduleEnvelope(
          await buildModule('trap'),
          metadata('filter', [1, 0, 0], { limits: { memoryPages: 1, callMs: 150, ioBytes: 4096 } }),
          1,
        )
      ).envelope,
    );
    expect(await code(m.call('filter', bytes(0xfd)))).toBe('CAP_TRAPPED');
    expect(await code(m.call('filter', bytes(1)))).toBe('CAP_NOT_LOADED');
    expect((await m.call('codec', bytes(1))).version).toEqual([2, 0, 0]);
  });
});

describe('revocation while running', () => {
  it('a revoked module is unloaded at once, stays unloaded after a restart and is never loaded again', async () => {
    const h = await harness(pool);
    const m = await h.open();
    const e1 = await moduleEnvelope(v1, metadata('codec', [1, 0, 0]), 1);
    await m.install(e1.envelope);
    let ok = 0;
    let stop = false;
    const codes = new Set<string>();
    const loop = (async () => {
      while (!stop) {
        try {
          await m.call('codec', bytes(1, 2, 3));
          ok++;
        } catch (e) {
          codes.add(e instanceof DeviceError ? e.code : String(e));
          await new Promise((r) => setImmediate(r));
        }
      }
    })();
    while (ok < 20) await new Promise((r) => setImmediate(r));
    const r = await m.applyRevocationList(await revocationList(1, [e1.digest]));
    expect(r.unloaded).toEqual(['codec']);
    expect(await code(m.call('codec', bytes(1)))).toBe('CAP_REVOKED');
    stop = true;
    await loop;
    expect([...codes].filter((c) => c !== 'CAP_REVOKED')).toEqual([]);
    expect(h.events).toContainEqual(
      expect.objectContaining({ type: 'unloaded', name: 'codec', version: '1.0.0', reason: 'revoked' }),
    );
    expect(await code(m.install(e1.envelope))).toBe('CAP_REVOKED');
    await m.close();
    // After a restart: the list is remembered, nothing of the revoked module remains.
    const m2 = await h.open();
    expect(m2.status()).toEqual([]);
    expect(await code(m2.install(e1.envelope))).toBe('CAP_REVOKED');
    expect(m2.revocationListVersion).toBe(1);
    await m2.close();
  });
});
