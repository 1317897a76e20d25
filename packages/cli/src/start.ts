/**
 * `rotor start` (what `npm start` runs): the fleet server on embedded defaults together with a small fleet of simulated
 * factory devices (provisioned by the development factory: identity, agreement, report and RoT keys in each device's
 * enclave, firmware 1.0; they authenticate with RFC 3820 proxy certificates and attest after every update), in one
 * process, on a development data directory created on first run and reused later (same keys, same devices;
 * demo/setup.ts describes its files). Prints where to look and what to try, then a live one-line fleet status.
 * SIGINT/SIGTERM stop the fleet (every device's tracker, then its storage) and then the server, and exit 0.
 */
import 'reflect-metadata';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { parseArgs } from 'node:util';
import {
  dbRegistry,
  loadConfig,
  migrate,
  openDatabase,
  provisionDevices,
  publishProfileTrust,
  startServer,
  type Db,
  type RotorServer,
} from '@rotor/server';
import type { Command } from './command.ts';
import { CliError, ExitCode } from './errors.ts';
import { enclaveDevices } from './factory-device.ts';
import { openFactoryCa } from './factory.ts';
import { writeAtomic } from './io.ts';
import { DemoClient } from './demo/client.ts';
import { FactoryFleet, type FleetDeviceSnapshot } from './demo/factory-fleet.ts';
import {
  authorRelease,
  DEMO_CLASS,
  DEMO_COMPONENT,
  DEMO_VENDOR,
  demoImage,
  ensureDataDir,
  sequenceOf,
  serverArgs,
  type DataDir,
} from './demo/setup.ts';

const USAGE = `usage: rotor start [--data-dir DIR] [--devices N] [--port N] [--device-port N] [--mqtt-port N]

Starts the fleet server on embedded defaults (PGlite, the embedded MQTT broker over TLS, keys in files) and a small
fleet of factory devices (provisioned on first run by the development factory; real device agents with their
enclaves over mutual TLS and MQTT, storage on disk), and prints where to look.
On first run it creates the data directory (default ./rotor-data): a server TLS CA and certificate for
127.0.0.1/localhost, a development factory with file keys, author and operator keys, the admin token (0600), a
sample release. Later runs reuse it: same keys, same devices.

  --devices N       devices (0 … 1000, default 5; more are provisioned when N grows; 0: the server only)
  --port N          operator API port (default 8080; 0: any)
  --device-port N   device API (mutual TLS) port (default 8443; 0: any)
  --mqtt-port N     embedded MQTT broker (TLS) port (default 8883; 0: any)

DEVELOPMENT ONLY: every key is a file in the data directory. Ctrl-C stops everything.`;

function port(v: string | undefined, def: number, what: string): number {
  if (v === undefined) return def;
  if (!/^[0-9]{1,5}$/.test(v) || Number(v) > 65535) throw new CliError('CLI_USAGE', `${what}: 0 … 65535`);
  return Number(v);
}

/** The sample release 1.1 (signed by the author, operator delivery) and the YAML to build the next one. */
function writeExamples(d: DataDir, envelope: Uint8Array, image: Uint8Array): { suit: string; bin: string } {
  const dir = join(d.dir, 'examples');
  mkdirSync(dir, { recursive: true });
  const bin = join(dir, 'firmware-1.1.bin');
  const suit = join(dir, 'release-1.1.suit');
  // Each file atomically and the envelope last: a later run reuses the examples when release-1.1.suit exists.
  writeAtomic(bin, image);
  writeAtomic(
    join(dir, 'release.yaml'),
    [
      '# The next release: change the image and raise the sequence, then',
      '#   npm run rotor -- manifest create release.yaml --key ../factory/author.key.pem -o release.suit',
      `vendor: ${DEMO_VENDOR}`,
      `class: ${DEMO_CLASS}`,
      `sequence: ${sequenceOf('1.2')}`,
      'version: 1.2.0',
      'delivery: operator      # the server encrypts the payload and wraps its key for each device',
      'components:',
      `  - id: ${DEMO_COMPONENT}`,
      '    image: firmware-1.1.bin',
      '',
    ].join('\n'),
  );
  writeAtomic(suit, envelope);
  return { suit, bin };
}

/** A token file: created 0600 (never world-readable, not even briefly). */
function writeSecret(path: string, text: string): void {
  try {
    writeFileSync(path, text, { mode: 0o600, flag: 'wx' });
  } catch (e) {
    throw new CliError('CLI_IO', `cannot write ${path}: ${e instanceof Error ? e.message : String(e)}`);
  }
}

const UPDATING = new Set(['downloading', 'downloaded', 'installing', 'installed', 'rebooting']);

/** One line: devices per firmware version (from their flash), updating now, attested. */
function statusLine(snap: readonly FleetDeviceSnapshot[], counts: Record<string, number>): string {
  const versions = new Map<string, number>();
  for (const s of snap) {
    const seq = Number(s.flash?.sequence ?? NaN);
    const v = Number.isNaN(seq) ? '?' : `${Math.floor(seq / 100)}.${seq % 100}`;
    versions.set(v, (versions.get(v) ?? 0) + 1);
  }
  const updating = Object.entries(counts).reduce((a, [k, v]) => a + (UPDATING.has(k) ? v : 0), 0);
  const fw = [...versions]
    .sort()
    .map(([v, k]) => `${k}× ${v}`)
    .join(', ');
  const rolledBack = snap.filter((s) => s.reported?.state === 'rolled-back').length;
  const attested = snap.filter((s) => s.attestations > 0).length;
  return `fleet: ${snap.length} devices · firmware ${fw} · ${updating} updating · ${rolledBack} rolled back · ${attested} attested`;
}

/**
 * Makes sure the factory batch 'start' holds `count` devices (a resumable batch: a run that stopped half-way is
 * finished or wiped per device, then the rest provisioned), registered in the server database.
 */
async function provisionFleet(d: DataDir, db: Db, count: number): Promise<string> {
  const batchDir = join(d.factoryDir, 'devices', 'start');
  const ca = await openFactoryCa(d.factoryDir, () => {
    throw new CliError('CLI_USAGE', 'the development factory keeps its keys in files');
  });
  try {
    mkdirSync(join(d.factoryDir, 'batches'), { recursive: true });
    const r = await provisionDevices({
      root: ca.root,
      issuing: ca.issuing,
      profile: ca.factory.profile,
      journalPath: join(d.factoryDir, 'batches', 'start.journal'),
      count,
      devices: enclaveDevices({ dir: batchDir }),
      registry: dbRegistry(db, { station: 'factory:start' }),
      concurrency: 4,
    });
    if (r.provisioned > 0)
      process.stdout.write(`rotor: the factory provisioned ${r.provisioned} device(s) into ${batchDir}\n`);
    // Issue 7: the profile's version-1 anchors and first revocation list on the server (once; factory-trust.ts).
    const trust = ca.factory.profile.trust;
    if (trust !== undefined) await publishProfileTrust(db, trust);
  } finally {
    await ca.close();
  }
  return batchDir;
}

export async function start(argv: readonly string[]): Promise<number> {
  let values;
  try {
    values = parseArgs({
      args: [...argv],
      options: {
        'data-dir': { type: 'string' },
        devices: { type: 'string' },
        port: { type: 'string' },
        'device-port': { type: 'string' },
        'mqtt-port': { type: 'string' },
      },
      strict: true,
      allowPositionals: false,
    }).values;
  } catch (e) {
    throw new CliError('CLI_USAGE', e instanceof Error ? e.message : String(e));
  }
  const devices = Number(values.devices ?? '5');
  if (!Number.isSafeInteger(devices) || devices < 0 || devices > 1000)
    throw new CliError('CLI_USAGE', '--devices: 0 … 1000');
  const ports = {
    port: port(values.port, 8080, '--port'),
    devicePort: port(values['device-port'], 8443, '--device-port'),
    mqttPort: port(values['mqtt-port'], 8883, '--mqtt-port'),
  };
  const log = (s: string): void => {
    process.stdout.write(`${s}\n`);
  };
  const d = await ensureDataDir(values['data-dir'] ?? 'rotor-data');
  log(
    d.created
      ? `rotor: created the development data directory ${d.dir} (keys in files: DEVELOPMENT ONLY)`
      : `rotor: using ${d.dir}`,
  );
  // The devices are factory devices: the server accepts their proxy credentials when they chain to the factory CA.
  const config = loadConfig({
    argv: serverArgs(d, ports, {
      deviceCa: true,
      rolloutTickMs: 1000,
      checkinIntervalS: 5,
      logLevel: 'warn',
    }),
    env: { ...process.env, ROTOR_ADMIN_TOKEN: d.adminToken },
  });
  const db = await openDatabase({ databaseUrl: undefined, dataDir: join(d.dir, 'pg') });
  let server: RotorServer;
  let batchDir = join(d.factoryDir, 'devices', 'start');
  try {
    await migrate(db);
    if (devices > 0) batchDir = await provisionFleet(d, db, devices);
    server = await startServer(config, { db });
  } catch (e) {
    await db.close();
    throw e;
  }
  let fleet: FactoryFleet | undefined;
  let timer: NodeJS.Timeout | undefined;
  const stopped = new Promise<string>((resolve) => {
    process.once('SIGINT', () => {
      resolve('SIGINT');
    });
    process.once('SIGTERM', () => {
      resolve('SIGTERM');
    });
  });
  try {
    const admin = new DemoClient(server.operatorUrl, d.adminToken);
    const keys = await admin.get<{ items: { name: string }[] }>('/v1/author-keys');
    if (!keys.items.some((k) => k.name === 'author'))
      await admin.post('/v1/author-keys', { name: 'author', alg: 'ESP256', publicKeyPem: d.authorPubPem });
    // Separation of duties (the server's roles): the author uploads, the operator approves and rolls out.
    const roleToken = async (role: 'author' | 'operator'): Promise<string> => {
      const file = join(d.dir, `${role}-token`);
      if (!existsSync(file)) {
        const t = await admin.post<{ token: string }>('/v1/tokens', { name: `rotor start ${role}`, role });
        writeSecret(file, `${t.token}\n`);
      }
      return file;
    };
    const authorToken = await roleToken('author');
    const operatorToken = await roleToken('operator');
    const image = demoImage(sequenceOf('1.1'), 64 * 1024);
    const sample = existsSync(join(d.dir, 'examples', 'release-1.1.suit'))
      ? {
          suit: join(d.dir, 'examples', 'release-1.1.suit'),
          bin: join(d.dir, 'examples', 'firmware-1.1.bin'),
        }
      : writeExamples(d, await authorRelease(readFileSync(d.authorKey, 'utf8'), '1.1', image), image);

    if (devices > 0) {
      // Capability modules (issue 8): the devices' group gets a capability manifest on first run (none authorized
      // yet: `rotor module manifest` issues the next one, the devices sync it every cycle); each device runs a
      // CapabilityManager wired into its tracker.
      const manifests = await admin.get<{ items: { group: string | null }[] }>('/v1/capabilities/manifests');
      if (!manifests.items.some((m) => m.group === DEMO_CLASS))
        await admin.post('/v1/capabilities/manifests', { group: DEMO_CLASS, modules: [] });
      fleet = await FactoryFleet.start({
        dir: batchDir,
        deviceUrl: server.deviceUrl!,
        ...(server.mqttUrl === undefined
          ? {}
          : { mqttUrl: server.mqttUrl.replace('://[::1]', '://127.0.0.1') }),
        operatorUrl: server.operatorUrl,
        token: d.adminToken,
        checkinMs: 5000,
        capabilities: true,
      });
    }
    const rel = (p: string): string => {
      const r = relative(process.cwd(), p);
      return r.startsWith('..') ? p : r;
    };
    log('');
    log(`operator API   ${server.operatorUrl}   (GET /openapi.json describes every route)`);
    log(`tokens         ${rel(d.adminTokenFile)}, ${rel(authorToken)}, ${rel(operatorToken)}   (mode 0600)`);
    log(`device API     ${server.deviceUrl ?? '-'}   (mutual TLS; server CA ${rel(d.tlsCa)})`);
    log(`MQTT (TLS)     ${server.mqttUrl ?? '-'}`);
    log(
      `fleet          ${devices} factory devices (class ${DEMO_CLASS}, firmware 1.0) in group '${DEMO_CLASS}', storage ${rel(batchDir)}`,
    );
    log('');
    log('try, in another terminal:');
    const op = `--token-file ${rel(operatorToken)}`;
    log(`  export ROTOR_SERVER=${server.operatorUrl}`);
    log(
      `  npm run rotor -- release upload --token-file ${rel(authorToken)} --envelope ${rel(sample.suit)} --payload ${rel(sample.bin)}   # prints RELEASE`,
    );
    log(`  npm run rotor -- release approve ${op} RELEASE`);
    log(
      `  npm run rotor -- rollout create ${op} --release RELEASE --target group=${DEMO_CLASS} --phases 20,100   # prints ROLLOUT`,
    );
    log(`  npm run rotor -- rollout watch ${op} ROLLOUT`);
    log('');
    log('Ctrl-C stops everything.');
    if (fleet !== undefined) {
      const f = fleet;
      const tty = process.stdout.isTTY;
      let last = '';
      let busy = false;
      timer = setInterval(() => {
        if (busy) return;
        busy = true;
        void f
          .snapshot()
          .then((snap) => {
            const line = statusLine(snap, f.counts());
            if (tty) process.stdout.write(`\r\x1b[2K${line}`);
            else if (line !== last) process.stdout.write(`${line}\n`);
            last = line;
          })
          .finally(() => {
            busy = false;
          });
      }, 1000);
    }
    const sig = await stopped;
    if (process.stdout.isTTY) process.stdout.write('\n');
    log(`rotor: ${sig}: stopping the fleet and the server`);
    return ExitCode.ok;
  } finally {
    if (timer !== undefined) clearInterval(timer);
    await fleet?.stop();
    await server.close();
    await db.close();
  }
}

export const startCommand: Command = {
  name: 'start',
  summary: 'the fleet server and a small fleet of factory devices on a development data directory',
  async run(argv) {
    if (argv.includes('--help') || argv.includes('-h')) {
      process.stdout.write(`${USAGE}\n`);
      return ExitCode.ok;
    }
    return start(argv);
  },
};
