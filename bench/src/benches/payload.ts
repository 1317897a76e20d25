/**
 * `npm run bench -- payload`: the device agent's payload pipeline on a 256 MiB image — HTTP fetch over loopback
 * (server in a child process) → streaming decrypt (AES-GCM, then AES-CTR; content key unwrapped through the
 * KeyUnwrapper interface) → SHA-256 → chunked writes with fsync to a directory — beside this machine's
 * single-thread SHA-256 + AES throughput over the same number of bytes, measured in the same run ("ratio", goal
 * ≥ 0.7), and the agent process's peak RSS growth ("rss_growth_mib", goal < 64, independent of image size: the
 * pipeline holds one chunk buffer).
 */
import { spawn } from 'node:child_process';
import { createDecipheriv, createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { Alg, decodeEncrypt, softwareKeyUnwrapper, unwrapContentKey } from '@rotor/cose';
import { Flash } from '../../../packages/device/src/flash/flash.ts';
import { NvState } from '../../../packages/device/src/flash/nvstate.ts';
import { installImage } from '../../../packages/device/src/fetch/pipeline.ts';
import { httpSource } from '../../../packages/device/src/fetch/source.ts';
import { nodeFs } from '../../../packages/device/src/storage/fs.ts';
import { round, type Benchmark } from '../harness.ts';

const MiB = 1024 * 1024;
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

/** Single-thread SHA-256 + AES (same mode) over `size` bytes, MiB/s. */
function baseline(size: number, mode: 'aes-128-gcm' | 'aes-128-ctr'): number {
  const buf = new Uint8Array(randomBytes(256 * 1024));
  const d = createDecipheriv(mode, randomBytes(16), randomBytes(mode === 'aes-128-gcm' ? 12 : 16));
  const h = createHash('sha256');
  const t0 = performance.now();
  for (let off = 0; off < size; off += buf.length) h.update(d.update(buf));
  h.digest();
  return size / MiB / ((performance.now() - t0) / 1000);
}

export const payloadBench: Benchmark = {
  name: 'payload',
  description:
    'agent fetch → decrypt → SHA-256 → write MiB/s vs single-thread SHA-256+AES (ratio), peak RSS growth',
  async run(ctx) {
    const size = (ctx.quick ? 16 : 256) * MiB;
    const kek = new Uint8Array(randomBytes(16));
    const dir = mkdtempSync(join(tmpdir(), 'rotor-payload-'));
    const rows: Record<string, string | number>[] = [];
    const figures: Record<string, number> = {};
    const rss0 = rssMiB();
    let peak = rss0;
    const sampler = setInterval(() => {
      peak = Math.max(peak, rssMiB());
    }, 20);
    try {
      const fs = nodeFs(dir);
      const flash = new Flash(fs, 'flash', { chunkSize: 4 * MiB, checkpointEvery: 8 });
      await flash.format();
      const nv = await NvState.open(fs, 'nv');
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
          const t0 = performance.now();
          const rec = await installImage(
            {
              flash,
              nv,
              bank: 'b',
              component: [new TextEncoder().encode('fw')],
              maxSize: size,
              manifestDigest: new Uint8Array(32),
            },
            { kind: 'fetch', uri: `http://127.0.0.1:${srv.port}/image`, expectedSize: undefined },
            { msg, cek },
            { source: httpSource(), retries: 2, deadlineMs: 600_000 },
          );
          const secs = (performance.now() - t0) / 1000;
          if (Buffer.from(rec.sha256).toString('hex') !== srv.sha256 || rec.size !== size)
            throw new Error(`${name}: digest or size mismatch`);
          const rate = size / MiB / secs;
          const base = baseline(size, mode);
          ctx.log(`${name}: pipeline ${round(rate, 1)} MiB/s, SHA-256+AES ${round(base, 1)} MiB/s`);
          rows.push({
            mode: name,
            'pipeline MiB/s': round(rate, 1),
            'sha256+aes MiB/s': round(base, 1),
            ratio: round(rate / base),
          });
          figures[`${name}_mib_s`] = round(rate, 1);
          figures[`${name}_ratio`] = round(rate / base);
        } finally {
          srv.stop();
        }
      }
    } finally {
      clearInterval(sampler);
      rmSync(dir, { recursive: true, force: true });
    }
    return {
      rows,
      figures: {
        size_mib: size / MiB,
        ratio: Math.min(figures.gcm_ratio ?? 0, figures.ctr_ratio ?? 0),
        ...figures,
        rss_growth_mib: round(peak - rss0, 1),
      },
    };
  },
};
