/**
 * `npm run bench -- fleet`: N simulated devices (default 10,000; --quick 200) — real device agents and status
 * trackers (packages/cli/src/fleet) in this process, memory storage — complete a rollout end to end against one
 * Rotor server in a child process (fleet-server.ts: PGlite by default, PostgreSQL with ROTOR_BENCH_FLEET_PG=1: a fresh database on ROTOR_BENCH_PG_URL's server),
 * over mutual TLS with MQTT push. Setup (not timed): the devices get software identities and are registered through
 * the operator API, boot from the factory image, check in once and connect to the broker; a release (small
 * payload, encrypted once, content key wrapped per device) is uploaded and approved. Timed: from creating the rollout
 * to every device's `confirmed` report acknowledged by the server (each device: push → check-in → operator-signed
 * envelope → payload over Range → decrypt → install → reboot → verify → confirm → signed reports).
 *
 * Baseline in the same run: one bare check-in per device over the same clients (`checkin_seconds`); `ratio` =
 * baseline seconds / rollout seconds (how close a whole update gets to the cost of one poll per device).
 * Figures: devices, seconds, devices_per_s, errors (tracker errors + devices not confirmed; goal 0).
 *
 * Knobs: ROTOR_BENCH_FLEET_DEVICES, ROTOR_BENCH_FLEET_PG=1, ROTOR_BENCH_FLEET_REPORTS=outcomes,
 * ROTOR_BENCH_FLEET_CONCURRENCY (devices updating at once, default 1024), ROTOR_BENCH_FLEET_SERVER_ARGS (node flags
 * of the server, e.g. --cpu-prof), ROTOR_BENCH_FLEET_LOG (the server's log level, default silent). Above 4,096
 * devices the simulator closes a device's HTTPS connection after each cycle (releaseConnections): 10,000 idle
 * device connections plus 10,000 MQTT connections exceed a 20,000-descriptor limit, so the baseline then includes
 * a full mutual-TLS handshake per check-in.
 */
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { sim } from '@rotor/device';
import {
  anchorOf,
  coseKeyPem,
  FleetSimulator,
  OperatorApi,
  publishRelease,
  rolloutCounts,
  startRollout,
} from '../../../packages/cli/src/fleet/index.ts';
import { round, type Benchmark } from '../harness.ts';
import { freshDatabase } from '../scratch-db.ts';

const SERVER = new URL('./fleet-server.ts', import.meta.url).pathname;

interface ServerInfo {
  operatorUrl: string;
  deviceUrl: string;
  mqttUrl: string;
  caPem: string;
  operatorPublicPem: string;
  adminToken: string;
}

async function startChild(args: object): Promise<{ info: ServerInfo; stop: () => Promise<void> }> {
  // ROTOR_BENCH_FLEET_SERVER_ARGS: extra node flags for the server process (e.g. --cpu-prof to profile it).
  const extra = (process.env.ROTOR_BENCH_FLEET_SERVER_ARGS ?? '').split(' ').filter((a) => a !== '');
  const child = spawn(process.execPath, [...extra, SERVER, JSON.stringify(args)], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const line = await new Promise<string>((resolve, reject) => {
    const rl = createInterface({ input: child.stdout });
    rl.once('line', (l) => {
      rl.close();
      resolve(l);
    });
    child.once('exit', (code) => {
      reject(new Error(`fleet server exited (${code ?? 'signal'})`));
    });
  });
  return {
    info: JSON.parse(line) as ServerInfo,
    stop: () =>
      new Promise((resolve) => {
        if (child.exitCode !== null) {
          resolve();
          return;
        }
        child.once('exit', () => {
          resolve();
        });
        child.stdin.end();
      }),
  };
}

export const fleetBench: Benchmark = {
  name: 'fleet',
  description: 'N simulated devices complete a rollout end to end against one server (mTLS + MQTT)',
  async run(ctx) {
    const n = Number(process.env.ROTOR_BENCH_FLEET_DEVICES ?? (ctx.quick ? 200 : 10_000));
    const reports = process.env.ROTOR_BENCH_FLEET_REPORTS === 'outcomes' ? 'outcomes' : 'all';
    // PostgreSQL (a fresh database on this machine's server) with ROTOR_BENCH_FLEET_PG=1; else PGlite.
    const pg = process.env.ROTOR_BENCH_FLEET_PG === '1' ? await freshDatabase('rotor_fleet') : undefined;
    const backend = pg === undefined ? 'pglite' : 'postgres';
    const child = await startChild(pg === undefined ? {} : { databaseUrl: pg.url });
    const s = child.info;
    let admin = new OperatorApi(s.operatorUrl, s.adminToken);
    let fleet: FleetSimulator | undefined;
    try {
      const token = async (role: string): Promise<OperatorApi> =>
        new OperatorApi(
          s.operatorUrl,
          (await admin.call<{ token: string }>('POST', '/v1/tokens', { name: role, role }, 201)).token,
        );
      const k = sim.keys();
      await admin.call(
        'POST',
        '/v1/author-keys',
        {
          name: 'sim-author',
          alg: 'ESP256',
          publicKeyPem: coseKeyPem(k.anchors.find((a) => a.role === 'author')!.key),
        },
        201,
      );
      ctx.log(
        `fleet: registering and booting ${n.toLocaleString('en-US')} devices (${backend}, reports ${reports})`,
      );
      const t0 = performance.now();
      fleet = await FleetSimulator.start({
        devices: n,
        operatorUrl: s.operatorUrl,
        token: s.adminToken,
        deviceUrl: s.deviceUrl,
        ca: s.caPem,
        mqttUrl: s.mqttUrl,
        anchors: [anchorOf('fleet-operator', 'operator', s.operatorPublicPem)],
        reports,
        group: 'bench',
        startSpreadMs: Math.min(30_000, n * 2),
        // Devices updating at once (the simulator's scheduler; ROTOR_BENCH_FLEET_CONCURRENCY): enough to keep the
        // server's group commits full while one device's update waits on its round trips.
        concurrency: Number(process.env.ROTOR_BENCH_FLEET_CONCURRENCY ?? 1024),
        interval: { defaultMs: 600_000, minMs: 600_000 },
        onSetup: (phase, done, total) => {
          ctx.log(`fleet: ${phase} ${done}/${total}`);
        },
      });
      const f = fleet;
      await f.waitFor(() => f.devices.every((d) => d.checkins > 0 && d.pushConnected), 600_000);
      const setupS = (performance.now() - t0) / 1000;
      ctx.log(`fleet: setup ${round(setupS, 1)} s; baseline check-in round`);
      const base = await f.checkinRound();
      // Operator clients made after the setup: a keep-alive socket idle through a long setup (minutes for 10,000
      // devices) may have been closed by the server, and a request on it would fail with a hang-up.
      admin.close();
      admin = new OperatorApi(s.operatorUrl, s.adminToken);
      const author = await token('author');
      const operator = await token('operator');
      const rel = await publishRelease(author, operator, { version: 2, signer: k.author, size: 4096 });
      ctx.log('fleet: release approved; rollout');
      let last = 0;
      const progress = setInterval(() => {
        const c = f.counts();
        if (c.confirmed !== last) ctx.log(`fleet: ${JSON.stringify(c)}`);
        last = c.confirmed;
      }, 5_000);
      const t1 = performance.now();
      const ro = await startRollout(operator, {
        name: 'bench-v2',
        releaseId: rel.releaseId,
        target: { group: 'bench' },
      });
      try {
        await f.waitFor(() => f.devices.every((d) => d.reported?.state === 'confirmed'), 900_000);
      } finally {
        clearInterval(progress);
      }
      const seconds = (performance.now() - t1) / 1000;
      const counts = await rolloutCounts(operator, ro);
      const trackerErrors = f.devices.reduce((a, d) => a + d.errors, 0);
      const notConfirmed = n - (counts.succeeded ?? 0);
      const errors = trackerErrors + notConfirmed + base.errors;
      for (const d of f.devices.filter((x) => x.lastError !== undefined).slice(0, 5))
        ctx.log(`fleet: ${d.name}: ${d.errors} error(s), last: ${d.lastError ?? ''}`);
      author.close();
      operator.close();
      return {
        rows: [
          {
            phase: `rollout to ${n.toLocaleString('en-US')} devices (push → confirmed report)`,
            seconds: round(seconds, 2),
            'devices/s': round(n / seconds, 0),
          },
          {
            phase: 'baseline: one bare mTLS check-in per device',
            seconds: round(base.seconds, 2),
            'devices/s': round(n / base.seconds, 0),
          },
          {
            phase: 'setup (identities, registration, boot, first check-in, MQTT)',
            seconds: round(setupS, 1),
            'devices/s': round(n / setupS, 0),
          },
        ],
        figures: {
          devices: n,
          seconds: round(seconds, 2),
          devices_per_s: round(n / seconds, 0),
          errors,
          checkin_seconds: round(base.seconds, 2),
          ratio: round(base.seconds / seconds),
          setup_seconds: round(setupS, 1),
          backend,
          reports,
          goal_seconds: n >= 10_000 ? 60 : 0,
        },
      };
    } finally {
      await fleet?.stop();
      admin.close();
      await child.stop();
      await pg?.drop();
    }
  },
};
