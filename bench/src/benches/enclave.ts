/**
 * `npm run bench -- enclave`: the device enclave behind its inter-processor queue (issue 3).
 *
 *  - attest_per_s: Attest round trips per second over the queue to the enclave process (pipelined, a window of
 *    WINDOW requests in flight), each an EAT signed by the current RoT (ES256);
 *  - inprocess_sign_per_s: the same attestation tokens built and signed in this process with the same key type
 *    (EnclaveCore without the queue) — the baseline; "ratio" = attest_per_s / inprocess_sign_per_s (goal ≥ 0.5);
 *  - raw_sign_per_s: bare ES256 signatures (node:crypto) of a token-sized input, for reference;
 *  - stall_p999_ms: the 99.9th percentile of Attest round-trip times (CONCURRENCY closed-loop requesters) while
 *    the RoT rotates every ROTATE_EVERY_MS, beside the same percentile without rotations (baseline_p999_ms),
 *    measured in alternating segments so machine noise hits both alike; stall_max_ms is the longest single wait.
 *    Goal for stall_p999_ms: < 5 ms. On a loaded machine both percentiles are dominated by scheduling noise:
 *    compare stall_p999_ms with baseline_p999_ms.
 */
import { generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { EnclaveClient, EnclaveCore, SimulatedFs } from '@rotor/device';
import { compareRates, round, type Benchmark } from '../harness.ts';

const WINDOW = 128;
/** Requests per timed call (several windows, so the pipeline's ramp-up and drain are a small part). */
const PER_CALL = 1024;
const CONCURRENCY = 8;
const ROTATE_EVERY_MS = 25;

function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(p * s.length))]!;
}

/** Closed-loop Attest requesters for `ms`; optionally rotating meanwhile. Returns latencies and rotations done. */
async function latencies(
  client: EnclaveClient,
  ms: number,
  rotate: boolean,
): Promise<{ lat: number[]; rotations: number }> {
  const lat: number[] = [];
  const nonce = randomBytes(16);
  const end = performance.now() + ms;
  let rotations = 0;
  const rotator = async (): Promise<void> => {
    while (rotate && performance.now() < end) {
      await client.rotateRoT();
      rotations++;
      await new Promise((r) => setTimeout(r, ROTATE_EVERY_MS));
    }
  };
  const worker = async (): Promise<void> => {
    while (performance.now() < end) {
      const t0 = performance.now();
      await client.attest(nonce);
      lat.push(performance.now() - t0);
    }
  };
  await Promise.all([rotator(), ...Array.from({ length: CONCURRENCY }, worker)]);
  return { lat, rotations };
}

export const enclaveBench: Benchmark = {
  name: 'enclave',
  description:
    'Attest round trips/s over the IPQ vs in-process signing (same ES256 token); p99.9 wait under rotations',
  async run(ctx) {
    const dir = mkdtempSync(join(tmpdir(), 'rotor-enclave-bench-'));
    const client = await EnclaveClient.start({ stateDir: dir });
    try {
      await client.generateRoT();
      const core = await EnclaveCore.open({ fs: new SimulatedFs(), fuse: randomBytes(32) });
      await core.generateRoT({ alg: 'ES256' });
      const nonce = randomBytes(16);
      // Sanity: both paths produce tokens that verify before anything is timed.
      await client.verifyAttestation(await client.attest(nonce), nonce);

      // A sliding window: WINDOW lanes each send their next request as soon as the previous one is answered.
      const overQueue = async (): Promise<void> => {
        let issued = 0;
        const lane = async (): Promise<void> => {
          while (issued < PER_CALL) {
            issued++;
            await client.attest(nonce);
          }
        };
        await Promise.all(Array.from({ length: WINDOW }, lane));
      };
      const inProcess = async (): Promise<void> => {
        for (let i = 0; i < PER_CALL; i++) await core.attest({ challenge: nonce });
      };
      const { a, b } = await compareRates(
        overQueue,
        inProcess,
        ctx.quick ? { rounds: 1, ms: 150, batch: 1 } : { rounds: 7, ms: 1000, batch: 1 },
      );
      const attestPerS = a * PER_CALL;
      const inprocPerS = b * PER_CALL;

      const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
      const tbs = randomBytes(160);
      const rawN = ctx.quick ? 200 : 5000;
      const t0 = performance.now();
      for (let i = 0; i < rawN; i++) sign('sha256', tbs, { key: privateKey, dsaEncoding: 'ieee-p1363' });
      const rawPerS = rawN / ((performance.now() - t0) / 1000);

      // Alternate short phases without and with rotations, so the machine's noise hits both alike.
      const segments = ctx.quick ? 2 : 12;
      const segMs = ctx.quick ? 200 : 750;
      ctx.log(`stall phase: ${CONCURRENCY} requesters, ${segments} × ${segMs} ms without and with rotations`);
      const base = { lat: [] as number[], rotations: 0 };
      const rot = { lat: [] as number[], rotations: 0 };
      for (let i = 0; i < segments; i++) {
        const b0 = await latencies(client, segMs, false);
        base.lat.push(...b0.lat);
        const r0 = await latencies(client, segMs, true);
        rot.lat.push(...r0.lat);
        rot.rotations += r0.rotations;
      }
      const phaseMs = segments * segMs;
      const chain = await client.getChain();
      const stats = client.stats;
      return {
        rows: [
          { path: `Attest over the IPQ (window ${WINDOW})`, 'ops/s': Math.round(attestPerS), 'p99.9 ms': '' },
          { path: 'same token signed in-process', 'ops/s': Math.round(inprocPerS), 'p99.9 ms': '' },
          { path: 'raw ES256 sign (node:crypto)', 'ops/s': Math.round(rawPerS), 'p99.9 ms': '' },
          {
            path: `Attest, ${CONCURRENCY} requesters, no rotation`,
            'ops/s': Math.round(base.lat.length / (phaseMs / 1000)),
            'p99.9 ms': round(percentile(base.lat, 0.999)),
          },
          {
            path: `Attest, ${CONCURRENCY} requesters, ${rot.rotations} rotations`,
            'ops/s': Math.round(rot.lat.length / (phaseMs / 1000)),
            'p99.9 ms': round(percentile(rot.lat, 0.999)),
          },
        ],
        figures: {
          attest_per_s: Math.round(attestPerS),
          inprocess_sign_per_s: Math.round(inprocPerS),
          raw_sign_per_s: Math.round(rawPerS),
          ratio: round(attestPerS / inprocPerS),
          goal_ratio: 0.5,
          stall_p999_ms: round(percentile(rot.lat, 0.999)),
          stall_max_ms: round(Math.max(...rot.lat)),
          baseline_p999_ms: round(percentile(base.lat, 0.999)),
          // What rotations add on top of the same run's noise floor.
          stall_excess_p999_ms: round(Math.max(0, percentile(rot.lat, 0.999) - percentile(base.lat, 0.999))),
          goal_stall_p999_ms: 5,
          rotations: rot.rotations,
          chain_length: chain.length,
          protocol_errors: (stats?.malformed ?? 0) + (stats?.unexpected ?? 0),
          // Latency percentiles mean little on a busy machine: say how busy it was.
          cpus: availableParallelism(),
          load_avg_1m: round(loadavg()[0]!, 2),
        },
      };
    } finally {
      await client.close();
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
