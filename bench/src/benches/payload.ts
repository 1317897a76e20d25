/**
 * `npm run bench -- payload`: the device agent's payload pipeline on a 256 MiB image — HTTP fetch over loopback
 * (server in a child process, serving pre-encrypted bytes) → streaming decrypt (AES-GCM, then AES-CTR; content
 * key unwrapped through the KeyUnwrapper interface) → SHA-256 → chunked writes to a directory with durable
 * checkpoints (fsync batches; chunks written with O_DIRECT, storage/fs.ts) — beside this machine's single-thread
 * SHA-256 + AES throughput over the same data volume, measured right before and right after each run. The
 * 256 MiB image runs ROUNDS times per mode, each round paired with the baseline measured right before and after
 * it (their mean); "<mode>_ratio" is the median of the paired ratios (the machine is shared and its load drifts)
 * and "ratio" the lower of the two modes (goal ≥ 0.7); "<mode>_mib_s" the median round, "<mode>_best_mib_s" the
 * fastest; and the agent process's peak RSS growth ("rss_growth_mib", goal < 64, independent of image size).
 * Independence is shown by running a 64 MiB image first: `rss_growth_64_mib` is the peak growth over the 64 MiB
 * runs, `rss_growth_mib` over all runs (the 256 MiB ones included), both from the same start.
 * `<mode>_cpu_ratio` (diagnostic): the agent's MiB per CPU second, all threads, against the baseline's
 * (min-of-rounds CPU time on each side) — what the pipeline adds per byte whatever the load and the disk; the
 * wall-clock ratio also pays for both. Every round is a row of the table.
 */
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { Alg, decodeEncrypt, softwareKeyUnwrapper, unwrapContentKey } from '@rotor/cose';
import { Flash, httpSource, installImage, nodeFs, NvState } from '@rotor/device';
import { median, round, type Benchmark } from '../harness.ts';

const MiB = 1024 * 1024;
/** Rounds of the largest image per mode (min-of-rounds, see run()). */
const ROUNDS = 3;
const rssMiB = (): number => process.memoryUsage.rss() / MiB;

interface Served {
  port: number;
  sha256: string;
  info: Uint8Array;
  stop: () => void;
}

async function serve(size: number, alg: number, kek: Uint8Array): Promise<Served> {
  const child = spawn(
    process.execPath,
    [
      join(import.meta.dirname, 'payload-server.ts'),
      String(size),
      String(alg),
      Buffer.from(kek).toString('hex'),
    ],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  );
  const line = await new Promise<string>((resolve, reject) => {
    const rl = createInterface({ input: child.stdout });
    rl.once('line', resolve);
    child.once('exit', (c) => {
      reject(new Error(`payload server exited (${String(c)})`));
    });
  });
  const j = JSON.parse(line) as { port: number; sha256: string; info: string };
  return {
    port: j.port,
    sha256: j.sha256,
    info: new Uint8Array(Buffer.from(j.info, 'hex')),
    stop: () => {
      child.stdin.end();
      child.kill();
    },
  };
}

const BASELINE = `
const { createDecipheriv, createHash, randomBytes } = await import('node:crypto');
const [size, mode] = [Number(process.argv[1]), process.argv[2]];
const buf = new Uint8Array(randomBytes(256 * 1024));
const d = createDecipheriv(mode, randomBytes(16), randomBytes(mode === 'aes-128-gcm' ? 12 : 16));
const h = createHash('sha256');
const t0 = performance.now();
const c0 = process.cpuUsage();
for (let off = 0; off < size; off += buf.length) h.update(d.update(buf));
h.digest();
const c = process.cpuUsage(c0);
const mib = size / ${MiB};
process.stdout.write(JSON.stringify([mib / ((performance.now() - t0) / 1000), mib / ((c.user + c.system) / 1e6)]));
`;

/**
 * Single-thread SHA-256 + AES (same mode) over `size` bytes: MiB per wall second and per CPU second — in a child
 * process, so that its garbage (a fresh output buffer per update) does not count as the agent's RSS.
 */
function baseline(size: number, mode: 'aes-128-gcm' | 'aes-128-ctr'): { wall: number; cpu: number } {
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', BASELINE, String(size), mode], {
    encoding: 'utf8',
  });
  const v = r.status === 0 ? (JSON.parse(r.stdout) as unknown) : undefined;
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'number' && x > 0))
    throw new Error(`baseline failed: ${r.stderr}`);
  return { wall: v[0] as number, cpu: v[1] as number };
}

export const payloadBench: Benchmark = {
  name: 'payload',
  description:
    'agent fetch → decrypt → SHA-256 → write MiB/s vs single-thread SHA-256+AES (ratio), peak RSS growth',
  async run(ctx) {
    const sizes = ctx.quick ? [4 * MiB, 16 * MiB] : [64 * MiB, 256 * MiB];
    const kek = new Uint8Array(randomBytes(16));
    const dir = mkdtempSync(join(tmpdir(), 'rotor-payload-'));
    const rows: Record<string, string | number>[] = [];
    const figures: Record<string, number> = {};
    const rss0 = rssMiB();
    let peak = rss0;
    const peaks: number[] = [];
    const sampler = setInterval(() => {
      peak = Math.max(peak, rssMiB());
    }, 10);
    try {
      const fs = nodeFs(dir);
      // 4 MiB chunks, a durable checkpoint every 8 chunks: a power cut re-downloads at most 32 MiB (+ in flight).
      const flash = new Flash(fs, 'flash', { chunkSize: 4 * MiB, checkpointEvery: 8 });
      await flash.format();
      const nv = await NvState.open(fs, 'nv');
      for (const size of sizes) {
        const last = size === sizes.at(-1);
        for (const [name, alg, mode] of [
          ['gcm', Alg.A128GCM, 'aes-128-gcm'],
          ['ctr', Alg.A128CTR, 'aes-128-ctr'],
        ] as const) {
          const srv = await serve(size, alg, kek);
          try {
            const msg = decodeEncrypt(srv.info);
            const cek = await unwrapContentKey(
              msg,
              { unwrappers: [softwareKeyUnwrapper(kek, Alg.A128KW)] },
              { allowedAlgs: new Set([Alg.A128KW]) },
            );
            const baseBytes = Math.min(size, 128 * MiB);
            // Rounds (the last size), each paired with the baseline measured right before and after it (their
            // mean): the machine is shared and its load drifts, so the ratio is the median of the paired ratios;
            // the CPU ratio compares the best (min-of-rounds) CPU time of each side. Each round fetches under a
            // fresh URI (no resume).
            const rounds = last && !ctx.quick ? ROUNDS : 1;
            const rates: number[] = [];
            const paired: number[] = [];
            let bestRate = 0;
            let bestCpu = 0;
            let bestBaseCpu = 0;
            for (let r = 0; r < rounds; r++) {
              const before = baseline(baseBytes, mode);
              const t0 = performance.now();
              const c0 = process.cpuUsage();
              const rec = await installImage(
                {
                  flash,
                  nv,
                  bank: 'b',
                  component: [new TextEncoder().encode('fw')],
                  maxSize: size,
                  manifestDigest: new Uint8Array(32),
                },
                {
                  kind: 'fetch',
                  uri: `http://127.0.0.1:${srv.port}/image?round=${r}`,
                  expectedSize: undefined,
                },
                { msg, cek },
                { source: httpSource(), retries: 2, deadlineMs: 600_000 },
              );
              const secs = (performance.now() - t0) / 1000;
              const cpu = process.cpuUsage(c0);
              if (Buffer.from(rec.sha256).toString('hex') !== srv.sha256 || rec.size !== size)
                throw new Error(`${name}: digest or size mismatch`);
              const after = baseline(baseBytes, mode);
              const base = (before.wall + after.wall) / 2;
              const rate = size / MiB / secs;
              // Load-independent diagnostic: the agent's MiB per CPU second (all its threads) against the
              // baseline's — how much work the pipeline adds per byte, whatever the machine's load and disk.
              const cpuRate = size / MiB / ((cpu.user + cpu.system) / 1e6);
              const cpuRatio = cpuRate / ((before.cpu + after.cpu) / 2);
              rates.push(rate);
              paired.push(rate / base);
              bestRate = Math.max(bestRate, rate);
              bestCpu = Math.max(bestCpu, cpuRate);
              bestBaseCpu = Math.max(bestBaseCpu, before.cpu, after.cpu);
              ctx.log(
                `${name} ${size / MiB} MiB round ${r + 1}/${rounds}: pipeline ${round(rate, 1)} MiB/s, SHA-256+AES ${round(base, 1)} MiB/s`,
              );
              rows.push({
                mode: name,
                MiB: size / MiB,
                round: r + 1,
                'pipeline MiB/s': round(rate, 1),
                'sha256+aes MiB/s': round(base, 1),
                ratio: round(rate / base),
                'cpu ratio': round(cpuRatio),
                'rss growth MiB (so far)': round(peak - rss0, 1),
              });
            }
            if (last) {
              figures[`${name}_mib_s`] = round(median(rates), 1);
              figures[`${name}_best_mib_s`] = round(bestRate, 1);
              figures[`${name}_ratio`] = round(median(paired));
              figures[`${name}_cpu_ratio`] = round(bestCpu / bestBaseCpu);
            }
          } finally {
            srv.stop();
          }
        }
        peaks.push(peak - rss0);
      }
    } finally {
      clearInterval(sampler);
      rmSync(dir, { recursive: true, force: true });
    }
    return {
      rows,
      figures: {
        size_mib: (sizes.at(-1) ?? 0) / MiB,
        ratio: Math.min(figures.gcm_ratio ?? 0, figures.ctr_ratio ?? 0),
        ...figures,
        [`rss_growth_${(sizes[0] ?? 0) / MiB}_mib`]: round(peaks[0] ?? 0, 1),
        rss_growth_mib: round(peak - rss0, 1),
      },
    };
  },
};
