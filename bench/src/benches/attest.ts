/**
 * `npm run bench -- attest`: evidence appraisals per second end to end over HTTP — the fleet server (device
 * listener on mutual TLS, PostgreSQL) issues a nonce, the device's EAT (RFC 9711, signed by its software RoT) is
 * posted, verified against the device's recorded RoT chain, appraised against reference values, and the signed
 * result stored — driven by a load generator in a separate process (many devices, keep-alive connections, many
 * requests in flight). Beside it, raw ES256 verifications per second (node:crypto, one thread) in the same run,
 * alternating rounds. "per_s" goal ≥ 5,000 on the reference machine (Veraison's published figure is ~400/s);
 * "ratio" = appraisals/s over raw verifications/s.
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes, sign, verify, X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { generateSigningKey } from '@rotor/cose';
import { openDatabase, startServer } from '@rotor/server';
import { median, opsPerSecond, round, type Benchmark } from '../harness.ts';
import { benchServerConfig, selfSigned } from '../bench-server.ts';
import { freshDatabase } from '../scratch-db.ts';

/** Nonces a device fetches per request in the measured path (POST /d/v1/attestation/nonces?count=). */
const NONCE_BATCH = 16;
const sha256hex = (b: Uint8Array | string): string => createHash('sha256').update(b).digest('hex');

interface Round {
  count: number;
  errors: number;
  lastError: string;
  statuses: Record<string, number>;
  seconds: number;
}

export const attestBench: Benchmark = {
  name: 'attest',
  description:
    'EAT appraisals/s end to end over mutual-TLS HTTP (nonce, token, chain, reference values, stored signed result) vs raw ES256 verifications/s',
  async run(ctx) {
    const devices = ctx.quick ? 8 : 32;
    const concurrency = ctx.quick ? 16 : 128;
    const rounds = ctx.quick ? 1 : 5;
    const ms = ctx.quick ? 1000 : 3000;
    const dir = mkdtempSync(join(tmpdir(), 'rotor-attest-bench-'));
    const scratch = await freshDatabase();
    const db = await openDatabase({ databaseUrl: scratch.url, poolSize: 16 });
    const token = `admin_${randomBytes(24).toString('hex')}`;
    const { config, cert: serverCert } = await benchServerConfig(dir, { env: { ROTOR_ADMIN_TOKEN: token } });
    const server = await startServer(config, { db });
    const child = spawn(process.execPath, [join(import.meta.dirname, 'attest-load.ts')], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    const out = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
    const nextLine = async (): Promise<string> => {
      const l = await out.next();
      if (l.done === true) throw new Error('load generator exited');
      return l.value;
    };
    try {
      const opPost = async (path: string, body: unknown): Promise<unknown> => {
        const r = await fetch(new URL(path, server.operatorUrl), {
          method: 'POST',
          headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
          body: JSON.stringify(body),
        });
        if (r.status !== 200 && r.status !== 201)
          throw new Error(`${path}: ${String(r.status)} ${await r.text()}`);
        return r.json();
      };
      const fw = randomBytes(4096);
      const mod = randomBytes(1024);
      await opPost('/v1/attestation/reference-values', { sha256: sha256hex(fw), label: 'fw 1.0.0' });
      await opPost('/v1/attestation/reference-values', { sha256: sha256hex(mod), label: 'cap:bench 1' });
      ctx.log(`registering ${String(devices)} devices`);
      const certs: { certPem: string; keyPem: string }[] = [];
      for (let i = 0; i < devices; i++) {
        const c = await selfSigned(`dev-${String(i)}`, false);
        await opPost('/v1/devices', {
          name: `bench-${String(i)}`,
          certSha256: sha256hex(new X509Certificate(c.certPem).raw),
        });
        certs.push(c);
      }
      child.stdin.write(
        `${JSON.stringify({ url: server.deviceUrl, ca: serverCert.certPem, fw: sha256hex(fw), module: sha256hex(mod), devices: certs })}\n`,
      );
      await nextLine();

      // Raw floor: ES256 verifications of EAT-sized Sig_structures with node:crypto.
      const k = generateSigningKey(-7);
      const tbs = randomBytes(400);
      const sig = sign('sha256', tbs, { key: k.privateKey, dsaEncoding: 'ieee-p1363' });
      const raw = (): boolean => verify('sha256', tbs, { key: k.publicKey, dsaEncoding: 'ieee-p1363' }, sig);

      // Warm-up round (JIT, connections, caches), not counted.
      for (const batch of [1, NONCE_BATCH]) {
        child.stdin.write(`run ${String(ctx.quick ? 300 : 1000)} ${String(concurrency)} ${String(batch)}\n`);
        await nextLine();
      }
      const e2e: number[] = [];
      const single: number[] = [];
      const rawRates: number[] = [];
      const statuses: Record<string, number> = {};
      let errors = 0;
      let lastError = '';
      // Alternating rounds: nonces fetched NONCE_BATCH at a time (the measured path), one nonce request per
      // appraisal (the previous path, for the before/after in the same run), and the raw floor.
      for (let r = 0; r < rounds; r++) {
        for (const [batch, into] of [
          [NONCE_BATCH, e2e],
          [1, single],
        ] as const) {
          child.stdin.write(`run ${String(ms)} ${String(concurrency)} ${String(batch)}\n`);
          const res = JSON.parse(await nextLine()) as Round;
          into.push(res.count / res.seconds);
          errors += res.errors;
          if (res.lastError !== '') lastError = res.lastError;
          for (const [s, n] of Object.entries(res.statuses)) statuses[s] = (statuses[s] ?? 0) + n;
        }
        rawRates.push(await opsPerSecond(raw, ms));
      }
      if (errors > 0) ctx.log(`${String(errors)} failed appraisal(s); last: ${lastError}`);
      const a = median(e2e);
      const a1 = median(single);
      const b = median(rawRates);
      const affirming = statuses.affirming ?? 0;
      const total = Object.values(statuses).reduce((s, n) => s + n, 0);
      if (total === 0 || affirming !== total)
        throw new Error(`expected only affirming results, got ${JSON.stringify(statuses)}`);
      return {
        rows: [
          {
            path: `EAT appraisal over mTLS HTTP (e2e, ${String(NONCE_BATCH)} nonces/request)`,
            'ops/s': Math.round(a),
            devices,
            'in flight': concurrency,
          },
          {
            path: 'EAT appraisal over mTLS HTTP (e2e, a nonce request each)',
            'ops/s': Math.round(a1),
            devices,
            'in flight': concurrency,
          },
          { path: 'raw ES256 verify (node:crypto)', 'ops/s': Math.round(b), devices: '', 'in flight': '' },
        ],
        figures: {
          per_s: Math.round(a),
          per_s_nonce_each: Math.round(a1),
          raw_verify_per_s: Math.round(b),
          ratio: round(a / b),
          ratio_nonce_each: round(a1 / b),
          nonces_per_request: NONCE_BATCH,
          goal_per_s: 5000,
          devices,
          concurrency,
          errors,
        },
      };
    } finally {
      child.stdin.end();
      child.kill();
      await server.close();
      await db.close();
      await scratch.drop();
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
