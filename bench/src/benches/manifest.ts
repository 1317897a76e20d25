/**
 * `npm run bench -- manifest`: SUIT envelopes decoded, authenticated and validated per second (the manifest
 * draft's example envelopes, ES256), beside raw ES256 verifications per second of the same Sig_structures with
 * node:crypto in the same run. "ratio" = the first over the second (goal ≥ 0.9: signature verification is the
 * floor, everything else must be nearly free).
 *
 * Measured in CPU time (`process.cpuUsage`), not wall-clock: the benchmark machines are shared, and wall-clock
 * rates swing with other processes' load. Rounds alternate between the two sides (same conditions for both), and
 * each side's rate is its best round (the least disturbed one), with the median round reported beside it.
 *
 * The baseline is node:crypto's fastest raw ES256 verification: the bare KeyObject and a DER signature prepared in
 * advance (the `{ key, dsaEncoding: 'ieee-p1363' }` form costs ~30% more per call, so it would flatter the ratio).
 * Rotor's verifier converts COSE's r‖s to DER itself and uses the same call.
 */
import { createPublicKey, verify, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  Alg,
  asArray,
  asBytes,
  asMap,
  asTag,
  decode,
  encode,
  p1363ToDer,
  softwareVerifier,
} from '@rotor/cose';
import { authenticateEnvelope, type TrustPolicy } from '@rotor/suit';
import { median, round, type Benchmark } from '../harness.ts';

const VECTORS = join(import.meta.dirname, '../../../../shared/vectors/suit');
const EXAMPLES = [0, 1, 2, 3, 4, 5].map((i) => `example${i}.signed.cbor`);

interface Case {
  name: string;
  envelope: Uint8Array;
  tbs: Uint8Array;
  signature: Uint8Array;
  /** The same signature as DER (prepared once: the baseline pays no conversion). */
  der: Uint8Array;
}

/** The Sig_structure and signature of the envelope's first authentication block (RFC 9052 §4.4). */
function rawCase(name: string, envelope: Uint8Array): Case {
  const env = asMap(asTag(decode(envelope), 107, '$'), '$');
  const auth = asArray(decode(asBytes(env.get(2), '$.2')), '$.2', { min: 2 });
  const digestBytes = asBytes(auth[0], 'auth[0]');
  const sign1 = asArray(
    asTag(decode(asBytes(auth[1], 'auth[1]'), { sortedKeys: false }), 18, 'auth[1]'),
    'sign1',
  );
  const protectedBytes = asBytes(sign1[0], 'protected');
  const signature = asBytes(sign1[3], 'signature');
  const tbs = encode(['Signature1', protectedBytes, new Uint8Array(0), digestBytes]);
  return { name, envelope, tbs, signature, der: p1363ToDer(signature) };
}

/** CPU microseconds per call of `fn` over `n` calls (awaiting each, as a processor would). */
async function cpuPerOp(fn: () => unknown, n: number): Promise<number> {
  const t0 = process.cpuUsage();
  for (let k = 0; k < n; k++) await fn();
  const d = process.cpuUsage(t0);
  return (d.user + d.system) / n;
}

/**
 * Alternating rounds of `a` and `b` (after a warm-up of each); returns, for each, the best and the median CPU
 * time per operation in microseconds.
 */
async function compareCpu(
  a: () => unknown,
  b: () => unknown,
  opts: { rounds: number; ops: number },
): Promise<{ a: { best: number; median: number }; b: { best: number; median: number } }> {
  await cpuPerOp(a, opts.ops);
  await cpuPerOp(b, opts.ops);
  const ra: number[] = [];
  const rb: number[] = [];
  for (let r = 0; r < opts.rounds; r++) {
    ra.push(await cpuPerOp(a, opts.ops));
    rb.push(await cpuPerOp(b, opts.ops));
  }
  return {
    a: { best: Math.min(...ra), median: median(ra) },
    b: { best: Math.min(...rb), median: median(rb) },
  };
}

export const manifestBench: Benchmark = {
  name: 'manifest',
  description: 'SUIT envelopes decoded+authenticated+validated/s vs raw ES256 verifications/s (node:crypto)',
  async run(ctx) {
    const pem = readFileSync(join(VECTORS, 'keys/suit-draft-signer-p256.public.pem'));
    const key: KeyObject = createPublicKey(pem);
    const policy: TrustPolicy = {
      anchors: [{ name: 'draft-signer', role: 'author', verifier: softwareVerifier(key, Alg.ES256) }],
      allowedAlgs: new Set([Alg.ES256, Alg.ESP256]),
    };
    const cases = EXAMPLES.map((f) => rawCase(f, readFileSync(join(VECTORS, 'manifest', f))));
    // Sanity: both paths must succeed on every case before anything is timed.
    for (const c of cases) {
      await authenticateEnvelope(c.envelope, policy);
      if (!verify('sha256', c.tbs, key, c.der)) throw new Error(`${c.name}: raw verify failed`);
    }
    let i = 0;
    let j = 0;
    const suit = (): Promise<unknown> => authenticateEnvelope(cases[i++ % cases.length]!.envelope, policy);
    const raw = (): boolean => {
      const c = cases[j++ % cases.length]!;
      return verify('sha256', c.tbs, key, c.der);
    };
    const { a, b } = await compareCpu(
      suit,
      raw,
      ctx.quick ? { rounds: 2, ops: 60 } : { rounds: 40, ops: 1200 },
    );
    const bytes = cases.reduce((s, c) => s + c.envelope.length, 0) / cases.length;
    const rate = (us: number): number => 1e6 / us;
    return {
      rows: [
        {
          path: 'SUIT authenticate+validate',
          'ops/s (CPU, best round)': Math.round(rate(a.best)),
          'ops/s (CPU, median round)': Math.round(rate(a.median)),
          'µs CPU/op': round(a.best, 2),
          'avg envelope bytes': Math.round(bytes),
        },
        {
          path: 'raw ES256 verify (node:crypto)',
          'ops/s (CPU, best round)': Math.round(rate(b.best)),
          'ops/s (CPU, median round)': Math.round(rate(b.median)),
          'µs CPU/op': round(b.best, 2),
          'avg envelope bytes': '',
        },
      ],
      figures: {
        envelopes_per_s: Math.round(rate(a.best)),
        raw_verify_per_s: Math.round(rate(b.best)),
        ratio: round(b.best / a.best),
        ratio_median_rounds: round(b.median / a.median),
        goal_ratio: 0.9,
      },
    };
  },
};
