/**
 * The fleet bench's server process: one Rotor server (PGlite in a fresh data directory, or PostgreSQL when
 * `databaseUrl` is given) with its mutual-TLS device API and embedded MQTT broker on ephemeral ports. Prints one
 * JSON line with its URLs and the public material the bench needs, then runs until stdin closes or SIGTERM.
 */
import { createPublicKey, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateSigningKey } from '@rotor/cose';
import { startServer } from '@rotor/server';
import { benchServerConfig } from '../bench-server.ts';

const args = JSON.parse(process.argv[2] ?? '{}') as { databaseUrl?: string; checkinIntervalS?: number };
const dir = mkdtempSync(join(tmpdir(), 'rotor-bench-fleet-'));
const op = generateSigningKey(-7);
writeFileSync(join(dir, 'operator.pem'), op.privateKey.export({ type: 'pkcs8', format: 'pem' }), {
  mode: 0o600,
});
writeFileSync(join(dir, 'content.kek'), `${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
const adminToken = `admin_${randomBytes(24).toString('hex')}`;
const { config, cert } = await benchServerConfig(dir, {
  logLevel: process.env.ROTOR_BENCH_FLEET_LOG ?? 'silent',
  argv: ['--checkin-interval-s', String(args.checkinIntervalS ?? 600), '--rollout-tick-ms', '1000'],
  env: {
    ROTOR_ADMIN_TOKEN: adminToken,
    ROTOR_OPERATOR_KEY_FILE: join(dir, 'operator.pem'),
    ROTOR_CONTENT_KEK_FILE: join(dir, 'content.kek'),
    ...(args.databaseUrl === undefined ? {} : { DATABASE_URL: args.databaseUrl }),
  },
});
const server = await startServer(config);
process.stdout.write(
  `${JSON.stringify({
    operatorUrl: server.operatorUrl,
    deviceUrl: server.deviceUrl,
    mqttUrl: server.mqttUrl,
    caPem: cert.certPem,
    operatorPublicPem: createPublicKey(readFileSync(join(dir, 'operator.pem')))
      .export({ type: 'spki', format: 'pem' })
      .toString(),
    adminToken,
  })}\n`,
);
// An exit the bench did not ask for (PGlite's WebAssembly backend exits the process on a fatal error) is named.
process.on('exit', (code) => {
  if (!closing) process.stderr.write(`fleet server: exited unexpectedly (code ${code})\n`);
});
let closing = false;
const close = async (): Promise<void> => {
  if (closing) return;
  closing = true;
  await server.close();
  rmSync(dir, { recursive: true, force: true });
  process.exit(0);
};
process.stdin.on('end', () => void close());
process.stdin.resume();
process.on('SIGTERM', () => void close());
