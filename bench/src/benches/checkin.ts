/**
 * `npm run bench -- checkin`: device check-ins per second over mutual TLS with keep-alive, on PostgreSQL with
 * 100,000 registered devices, through the full server (fastify, client-certificate lookup in the registry,
 * check-in transaction, response validation), beside a bare `node:https` server with the same TLS settings
 * answering the same load generator in the same run (`ratio` = server / bare, goal ≥ 0.25), with p99 latency.
 * The load generator is a separate process (checkin-load.ts); rounds alternate bare and server. The connections
 * use 64 of the registered devices' certificates (generating 100,000 certificates would measure X.509, not the
 * server); the other devices are registered by fingerprint. Quick mode: 1,000 devices, two short rounds.
 */
import { execFile } from 'node:child_process';
import { randomBytes, X509Certificate } from 'node:crypto';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startServer } from '@rotor/server';
import { median, round, type Benchmark } from '../harness.ts';
import { benchServerConfig, selfSigned } from '../bench-server.ts';
import { freshDatabase } from '../scratch-db.ts';

const LOAD = new URL('./checkin-load.ts', import.meta.url).pathname;

interface LoadResult {
  requests: number;
  seconds: number;
  p50: number;
  p99: number;
  errors: number;
}

function load(args: object): Promise<LoadResult> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [LOAD, JSON.stringify(args)], { maxBuffer: 1 << 20 }, (err, stdout) => {
      if (err) reject(new Error(`load generator failed: ${err.message}`));
      else resolve(JSON.parse(stdout.trim().split('\n').pop()!) as LoadResult);
    });
  });
}

export const checkinBench: Benchmark = {
  name: 'checkin',
  description: 'device check-ins per second over mTLS keep-alive on PostgreSQL vs a bare node:https server',
  async run(ctx) {
    const fleet = ctx.quick ? 1_000 : 100_000;
    const seconds = ctx.quick ? 2 : 10;
    const rounds = ctx.quick ? 1 : 3;
    const connections = 64;
    const scratch = await freshDatabase();
    const dir = mkdtempSync(join(tmpdir(), 'rotor-bench-checkin-'));
    const { config, cert: serverCert } = await benchServerConfig(dir, {
      env: { DATABASE_URL: scratch.url, ROTOR_ADMIN_TOKEN: randomBytes(24).toString('hex') },
    });
    const certs = await Promise.all(
      Array.from({ length: connections }, (_, i) => selfSigned(`bench-dev-${i}`, false)),
    );
    const server = await startServer(config);
    const bare: Server = createServer(
      {
        cert: serverCert.certPem,
        key: serverCert.keyPem,
        requestCert: true,
        rejectUnauthorized: false,
        minVersion: 'TLSv1.2',
        keepAlive: true,
      },
      (req, res) => {
        req.resume();
        req.on('end', () => {
          res.writeHead(200, { 'content-type': 'application/json' }).end('{"action":"none"}');
        });
      },
    );
    await new Promise<void>((r) => bare.listen(0, '127.0.0.1', r));
    const bareUrl = `https://127.0.0.1:${(bare.address() as AddressInfo).port}`;
    try {
      ctx.log(`registering ${fleet.toLocaleString('en-US')} devices`);
      await server.db.query(
        `INSERT INTO devices (id, name, cert_sha256, device_group, tags, created_at_ms)
         SELECT 'dev-' || i, 'device-' || i, sha256(int8send(i)), 'field', ARRAY['fleet'], 0
         FROM generate_series(1, $1) AS i`,
        [fleet - connections],
      );
      for (const [i, c] of certs.entries()) {
        await server.db.query(
          `INSERT INTO devices (id, name, cert_sha256, device_group, tags, created_at_ms) VALUES ($1, $2, $3, 'field', ARRAY['fleet'], 0)`,
          [
            `bench-${i}`,
            `bench-${i}`,
            new Uint8Array(await crypto.subtle.digest('SHA-256', new X509Certificate(c.certPem).raw)),
          ],
        );
      }
      await server.db.exec('ANALYZE devices');
      const base = { ca: serverCert.certPem, certs, connections, seconds };
      const bareRuns: LoadResult[] = [];
      const rotorRuns: LoadResult[] = [];
      for (let r = 0; r < rounds; r++) {
        bareRuns.push(await load({ ...base, url: bareUrl }));
        rotorRuns.push(await load({ ...base, url: server.deviceUrl! }));
      }
      const rate = (x: LoadResult): number => x.requests / x.seconds;
      const bareRate = median(bareRuns.map(rate));
      const rotorRate = median(rotorRuns.map(rate));
      const p99 = median(rotorRuns.map((x) => x.p99));
      const errors = rotorRuns.reduce((a, x) => a + x.errors, 0);
      if (errors > 0) throw new Error(`${errors} check-ins failed`);
      return {
        rows: [
          {
            path: 'rotor server, POST /d/v1/checkin',
            'per second': round(rotorRate, 0),
            'p50 ms': round(median(rotorRuns.map((x) => x.p50)), 2),
            'p99 ms': round(p99, 2),
          },
          {
            path: 'bare node:https (same TLS, same load)',
            'per second': round(bareRate, 0),
            'p50 ms': round(median(bareRuns.map((x) => x.p50)), 2),
            'p99 ms': round(median(bareRuns.map((x) => x.p99)), 2),
          },
        ],
        figures: {
          checkins_per_s: round(rotorRate, 0),
          bare_per_s: round(bareRate, 0),
          ratio: round(rotorRate / bareRate),
          goal_ratio: 0.25,
          p99_ms: round(p99, 2),
          devices: fleet,
          connections,
        },
      };
    } finally {
      await new Promise<void>((r) =>
        bare.close(() => {
          r();
        }),
      );
      await server.close();
      await scratch.drop();
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
