/**
 * `rotor demo`: the whole story in one run, across real processes — the fleet server is a child process
 * (`rotor server` on ephemeral ports), the devices run in another (the fleet simulator: real device agents and status
 * tracker clients over HTTPS with mutual TLS and MQTT, storage on disk), and this process is the author and the
 * operator, driving the operator API. Each step checks its outcome; a step whose piece of Rotor is not there yet says
 * precisely what is missing. Exit 0 only when the whole story happened (with --partial: when every step that could
 * run succeeded).
 */
import 'reflect-metadata';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import * as x509 from '@peculiar/x509';
import { encode } from '@rotor/cose';
import { encodeModuleMetadata } from '@rotor/trust';
import { dbRegistry, migrate, openDatabase, provisionDevices, publishProfileTrust } from '@rotor/server';
import { CliError, ExitCode } from '../errors.ts';
import { enclaveDevices } from '../factory-device.ts';
import { openFactoryCa } from '../factory.ts';
import { json, out } from '../io.ts';
import type { LoadResult } from './capabilities.ts';
import { DemoClient, listDevices, type DeviceInfo, type RolloutInfo } from './client.ts';
import { buildFilter, FILTER, filterMetadata, type FilterVersion } from './modules/build.ts';
import { narrator, table, type Narrator } from './narrate.ts';
import {
  freePort,
  startFleetProcess,
  startServerProcess,
  type FleetMessage,
  type FleetProcess,
  type ServerProcess,
} from './processes.ts';
import {
  authorRelease,
  DEMO_CLASS,
  demoImage,
  ensureDataDir,
  sequenceOf,
  serverArgs,
  type DataDir,
} from './setup.ts';

export interface DemoOptions {
  readonly devices: number;
  /** Run directory (kept); default: a temporary directory, removed at the end unless keep. */
  readonly dir: string | undefined;
  readonly json: boolean;
  readonly keep: boolean;
  /** Exit 0 when every step that could run succeeded, even if some pieces are missing. */
  readonly partial: boolean;
}

export type StepStatus = 'ok' | 'failed' | 'missing';

export interface StepResult {
  readonly n: number;
  readonly title: string;
  readonly status: StepStatus;
  readonly detail: string;
}

export interface DeviceRow {
  readonly name: string;
  readonly serverId: string;
  readonly version: string;
  readonly sequence: string;
  readonly bank: string;
  readonly lastOutcome: string;
  readonly powerCuts: number;
  readonly attestation: string;
  readonly rotIndex: string;
  readonly module: string;
}

export interface DemoResult {
  readonly ok: boolean;
  readonly dir: string;
  readonly steps: StepResult[];
  readonly devices: DeviceRow[];
  readonly server: { readonly operatorUrl: string; readonly deviceUrl: string } | undefined;
  readonly rollouts: Record<string, RolloutInfo>;
  /** Step 11: the module rollouts (v1, v2) and the device whose authorization for the module was revoked. */
  readonly modules: {
    readonly rollouts: Record<string, ModuleRolloutInfo>;
    readonly revoked: { readonly name: string; readonly serverId: string } | undefined;
    readonly calls: { readonly total: number; readonly failed: number } | undefined;
  };
}

class StepFailed extends Error {
  override readonly name = 'StepFailed';
}
class StepMissing extends Error {
  override readonly name = 'StepMissing';
}

const check = (cond: boolean, why: string): void => {
  if (!cond) throw new StepFailed(why);
};

const versionOf = (seq: string | number | bigint): string => {
  const n = Number(seq);
  return n >= 100 ? `${Math.floor(n / 100)}.${n % 100}` : `seq ${n}`;
};

const sha256hex = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls a rollout until `done` holds, drawing its progress; fails after `timeoutMs`. */
async function watchRollout(
  api: DemoClient,
  id: string,
  total: number,
  say: Narrator,
  label: string,
  done: (r: RolloutInfo) => boolean,
  timeoutMs: number,
): Promise<RolloutInfo> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const r = await api.get<RolloutInfo>(`/v1/rollouts/${id}`);
    const c = r.counts;
    say.progress(
      label,
      c.succeeded ?? 0,
      total,
      `phase ${r.currentPhase + 1} · ${c.in_progress ?? 0} updating · ${c.failed ?? 0} failed · ${r.state}`,
    );
    if (done(r)) {
      say.end();
      return r;
    }
    if (Date.now() > end) {
      say.end();
      throw new StepFailed(
        `rollout ${id} did not get there in time (state ${r.state}, counts ${JSON.stringify(c)})`,
      );
    }
    await sleep(250);
  }
}

interface Snapshot {
  readonly index: number;
  readonly name: string;
  readonly serverId?: string;
  readonly state: string;
  readonly powerCuts: number;
  readonly reported?: { state: string; sequence: string };
  readonly flash?: { bank: string; sequence: string; trial: boolean; updating: boolean };
  readonly rotIndex?: number;
  readonly modules?: readonly { name: string; version: string; archives: string[] }[];
  readonly moduleEvents?: readonly string[];
}

/** The group a device is moved to when its authorization for the demo's module is revoked (step 11). */
export const NO_FILTER_GROUP = `${DEMO_CLASS}-no-${FILTER}`;

interface ModuleRolloutInfo {
  readonly id: string;
  readonly state: string;
  readonly pauseReason: string | null;
  readonly counts: Record<string, number>;
}

async function snapshot(fleet: FleetProcess): Promise<Snapshot[]> {
  const wait = fleet.next((m) => m.type === 'snapshot', 'a fleet snapshot', 30_000);
  fleet.send({ cmd: 'snapshot' });
  return (await wait).devices as Snapshot[];
}

/** The summary table's module column: the active version (archives in parentheses), or why it is not there. */
function moduleCell(s: Snapshot): string {
  const m = (s.modules ?? []).find((x) => x.name === FILTER);
  if (m !== undefined)
    return `${FILTER} ${m.version}${m.archives.length > 0 ? ` (${m.archives.join(', ')} archived)` : ''}`;
  const unloaded = (s.moduleEvents ?? []).filter((e) => e.startsWith(`unloaded ${FILTER}`)).at(-1);
  if (unloaded !== undefined) return unloaded.replace(/^unloaded /, 'unloaded: ');
  return s.modules === undefined ? 'n/a' : '-';
}

export async function runDemo(o: DemoOptions): Promise<DemoResult> {
  const say = narrator({ json: o.json });
  const runDir = o.dir === undefined ? mkdtempSync(join(tmpdir(), 'rotor-demo-')) : resolve(o.dir);
  mkdirSync(runDir, { recursive: true });
  const n = o.devices;
  const steps: StepResult[] = [];
  const rollouts: Record<string, RolloutInfo> = {};
  const moduleRollouts: Record<string, ModuleRolloutInfo> = {};
  let moduleRevoked: { name: string; serverId: string } | undefined;
  let moduleCalls: { total: number; failed: number } | undefined;
  const TITLES = [
    `The factory provisions ${n} devices`,
    'The fleet server starts (its own process)',
    'The devices power on and check in (their own process)',
    'The author builds and signs firmware 1.1',
    'The operator approves 1.1 (per-device encryption)',
    'Rollout of 1.1: a canary phase, then everyone',
    'A device loses power mid-install and recovers',
    'A bad image: the canary rolls back and the rollout pauses',
    'Updated devices attest; the server appraises the new measurements',
    "A device's root of trust is rotated while it keeps answering",
    'A capability module is hot-swapped on a group, then revoked on one device',
    'The fleet',
  ];
  const total = TITLES.length;
  let server: ServerProcess | undefined;
  let fleet: FleetProcess | undefined;
  let d: DataDir | undefined;
  let admin: DemoClient | undefined;
  let author: DemoClient | undefined;
  let operator: DemoClient | undefined;
  let fleetDevices: { index: number; name: string; serverId: string }[] = [];
  let finalSnapshot: Snapshot[] = [];
  const powerCutIndex = n > 2 ? 1 : 0;
  /** The factory registers devices in their class's group. */
  const GROUP = DEMO_CLASS;
  let badDeviceId: string | undefined;
  /** The device process's state when its plug was pulled (step 6), and where it was then. */
  let cut: { state: string; name: string } | undefined;
  const attestation = new Map<string, string>();
  const rotIndex = new Map<string, number>();

  const step = async (i: number, f: () => Promise<string>): Promise<boolean> => {
    const title = TITLES[i - 1]!;
    say.step(i, total, title);
    try {
      const detail = await f();
      say.ok(detail);
      steps.push({ n: i, title, status: 'ok', detail });
      return true;
    } catch (e) {
      say.end();
      const detail = e instanceof Error ? e.message : String(e);
      if (e instanceof StepMissing) {
        say.missing(detail);
        steps.push({ n: i, title, status: 'missing', detail });
        return true;
      }
      say.fail(detail);
      steps.push({ n: i, title, status: 'failed', detail });
      return false;
    }
  };

  try {
    say.info(`run directory ${runDir}`);
    let go = await step(1, async () => {
      d = await ensureDataDir(join(runDir, 'data'));
      const ca = await openFactoryCa(d.factoryDir, () => {
        throw new CliError('CLI_USAGE', 'the demo factory keeps its keys in files');
      });
      const db = await openDatabase({ databaseUrl: undefined, dataDir: join(d.dir, 'pg') });
      try {
        await migrate(db);
        mkdirSync(join(d.factoryDir, 'batches'), { recursive: true });
        const devices = enclaveDevices({ dir: join(d.factoryDir, 'devices', 'demo') });
        const r = await provisionDevices({
          root: ca.root,
          issuing: ca.issuing,
          profile: ca.factory.profile,
          journalPath: join(d.factoryDir, 'batches', 'demo.journal'),
          count: n,
          devices,
          registry: dbRegistry(db, { station: 'factory:demo' }),
          concurrency: 4,
          onProgress: (done, all) => {
            say.progress('provisioned', done, all);
          },
        });
        say.end();
        check(r.deviceIds.length === n, `${r.deviceIds.length} of ${n} devices provisioned`);
        const issuing = ca.issuing.cert;
        for (let i = 0; i < n; i++) {
          const b = await devices.bundle(i);
          check(b !== undefined, `device ${i} holds no identity bundle`);
          const cert = new x509.X509Certificate(b!.certificatePem);
          check(
            await cert.verify({ publicKey: issuing.publicKey, signatureOnly: true }),
            `device ${i}: certificate not issued by the factory's issuing CA`,
          );
        }
        const rows = await db.query<{ n: number }>(
          "SELECT count(*)::int AS n FROM devices WHERE 'factory' = ANY(tags)",
        );
        check((rows[0]?.n ?? 0) >= n, 'the factory registrations are not in the server database');
        // Issue 7: the profile's version-1 trust anchors and first revocation list on the server (once).
        const trust = ca.factory.profile.trust;
        if (trust !== undefined) await publishProfileTrust(db, trust);
        say.info(
          `identity keys born in each device's enclave; certificates from the issuing CA (${d.factoryDir}/device-ca.pem); firmware 1.0 installed; registered and audited`,
        );
        return `${n} devices provisioned (${r.provisioned} now, ${n - r.provisioned} already done)`;
      } finally {
        await db.close();
        await ca.close();
      }
    });
    if (!go || d === undefined) throw new StepFailed('stopped');
    const data: DataDir = d;

    go = await step(2, async () => {
      const mqttPort = await freePort();
      server = await startServerProcess(
        serverArgs(
          data,
          { port: 0, devicePort: 0, mqttPort },
          { deviceCa: true, rolloutTickMs: 300, checkinIntervalS: 1 },
        ),
        { env: { ROTOR_ADMIN_TOKEN: data.adminToken }, log: join(runDir, 'server.log'), mqttPort },
      );
      admin = new DemoClient(server.operatorUrl, data.adminToken);
      const token = async (role: string): Promise<DemoClient> => {
        const t = await admin!.post<{ token: string }>('/v1/tokens', { name: `demo ${role}`, role });
        return admin!.withToken(t.token);
      };
      author = await token('author');
      operator = await token('operator');
      const keys = await admin.get<{ items: { publicKeyPem?: string; name: string }[] }>('/v1/author-keys');
      if (!keys.items.some((k) => k.name === 'demo author'))
        await admin.post('/v1/author-keys', {
          name: 'demo author',
          alg: 'ESP256',
          publicKeyPem: data.authorPubPem,
        });
      // The capability manifest of the devices' group (seed 000 step 1: what the devices are provisioned with,
      // signed by the capability authority): the capability-signing key may sign the module 'filter'.
      const man = await operator.post<{ version: number }>('/v1/capabilities/manifests', {
        group: GROUP,
        modules: [{ name: FILTER }],
      });
      say.info(
        `operator API ${server.operatorUrl} · device API ${server.deviceUrl} (mutual TLS) · MQTT ${server.mqttUrl}`,
      );
      say.info(`capability manifest v${man.version} for group ${GROUP}: module '${FILTER}' authorized`);
      say.info(`server pid ${server.pid}, log ${server.log}`);
      return 'server up; author key registered; author and operator tokens issued; capability manifest issued';
    });
    if (!go || server === undefined || admin === undefined || author === undefined || operator === undefined)
      throw new StepFailed('stopped');
    const srv: ServerProcess = server;
    const adm: DemoClient = admin;
    const auth: DemoClient = author;
    const op: DemoClient = operator;

    const fleetOptions = (): Record<string, unknown> => ({
      dir: join(data.factoryDir, 'devices', 'demo'),
      operatorUrl: srv.operatorUrl,
      tokenFile: data.adminTokenFile,
      deviceUrl: srv.deviceUrl,
      mqttUrl: srv.mqttUrl,
      checkinMs: 1000,
      capabilities: true,
    });
    go = await step(3, async () => {
      fleet = startFleetProcess(fleetOptions(), join(runDir, 'devices.log'));
      const ready = await fleet.next((m) => m.type === 'ready', 'the fleet to power on', 120_000, true);
      fleetDevices = (ready.devices as { index: number; name: string; serverId: string }[]).slice();
      const end = Date.now() + 60_000;
      let seen: DeviceInfo[] = [];
      for (;;) {
        seen = (await listDevices(adm, GROUP)).filter((x) => x.lastSeenMs !== null);
        say.progress('checked in', seen.length, n);
        if (seen.length >= n) break;
        if (Date.now() > end) throw new StepFailed(`${seen.length} of ${n} devices checked in`);
        await sleep(250);
      }
      say.end();
      say.info(`device process pid ${fleet.pid}, log ${fleet.log}`);
      say.info(
        "each device authenticates with RFC 3820 proxy certificates its enclave's identity key signs; the server checks them against the factory CA",
      );
      return `${n} factory devices running firmware 1.0 checked in over mutual TLS`;
    });
    if (!go || fleet === undefined) throw new StepFailed('stopped');
    let fl: FleetProcess = fleet;

    let release11 = '';
    go = await step(4, async () => {
      const img = demoImage(sequenceOf('1.1'), 256 * 1024);
      const env = await authorRelease(readFileSync(data.authorKey, 'utf8'), '1.1', img);
      await auth.expect([200, 201], 'PUT', `/v1/payloads/${sha256hex(img)}`, img, 'application/octet-stream');
      const rel = await auth.expect<{ id: string; sequenceNumber: number }>(
        [201],
        'POST',
        '/v1/releases',
        env,
        'application/suit-envelope+cose',
      );
      release11 = rel.id;
      return `release ${rel.id}: SUIT envelope (${env.length} bytes) signed by the author, sequence ${sequenceOf('1.1')}, payload ${img.length} bytes`;
    });
    if (!go) throw new StepFailed('stopped');

    go = await step(5, async () => {
      await op.post(`/v1/releases/${release11}/approve`);
      const r = await op.get<{ status: string }>(`/v1/releases/${release11}`);
      check(r.status === 'approved', `release status ${r.status}`);
      return 'co-signed by the operator; payload encrypted once, its key wrapped for each device at delivery';
    });
    if (!go) throw new StepFailed('stopped');

    go = await step(6, async () => {
      // Canary: the first quarter of the fleet (ceil(n · 25 / 100) devices) must all confirm before the rest start.
      const ro = await op.post<RolloutInfo & { assigned: number }>('/v1/rollouts', {
        name: 'demo 1.1',
        releaseId: release11,
        target: { group: GROUP },
        phases: [
          { percent: 25, successThreshold: 1, failureThreshold: 0.5, timeoutMs: 600_000 },
          { percent: 100, successThreshold: 1, failureThreshold: 0.5, timeoutMs: 600_000 },
        ],
      });
      check(ro.assigned === n, `${ro.assigned} of ${n} devices assigned`);
      check(
        ro.state === 'active' && ro.currentPhase === 0,
        `rollout starts ${ro.state} in phase ${ro.currentPhase + 1}`,
      );
      // Power loss: when the chosen device starts writing 1.1 to flash, the device process gets SIGKILL (no shutdown,
      // no flush, every device in it goes dark at once) and is started again on the same storage.
      const victim = fleetDevices.find((x) => x.index === powerCutIndex)?.name ?? `dev-${powerCutIndex}`;
      const pulling = fl
        .next(
          (m) =>
            m.type === 'transition' &&
            m.index === powerCutIndex &&
            (m.to === 'downloading' || m.to === 'installing'),
          `${victim} to start its install`,
          240_000,
        )
        .then(async (m) => {
          await fl.powerCut();
          cut = { state: String(m.to), name: victim };
          say.end();
          say.info(`power cut: the device process was killed while ${victim} was ${String(m.to)} 1.1`);
          fl = startFleetProcess(fleetOptions(), join(runDir, 'devices-after-power-cut.log'));
          fleet = fl;
          await fl.next((x) => x.type === 'ready', 'the fleet to power on again', 120_000, true);
          say.info('power restored: the devices booted from what was durable on their flash');
        });
      const r = await watchRollout(op, ro.id, n, say, 'confirmed', (x) => x.state !== 'active', 240_000);
      await pulling;
      rollouts.v11 = r;
      check(
        r.state === 'completed',
        `rollout ${r.state}${r.pauseReason === null ? '' : `: ${r.pauseReason}`}`,
      );
      check(r.counts.succeeded === n, `${r.counts.succeeded} of ${n} confirmed`);
      const snap = await snapshot(fl);
      const on11 = snap.filter(
        (s) => s.flash !== undefined && s.flash.sequence === String(sequenceOf('1.1')),
      );
      check(on11.length === n, `${on11.length} of ${n} devices run 1.1 from flash`);
      return `${n}/${n} devices downloaded, installed, rebooted into 1.1 and confirmed (canary phase of ${Math.ceil(n / 4)}, then everyone)`;
    });
    if (!go) throw new StepFailed('stopped');

    await step(7, async () => {
      check(cut !== undefined, 'the power cut did not happen');
      const snap = await snapshot(fl);
      const s = snap.find((x) => x.index === powerCutIndex);
      check(s !== undefined, `${cut!.name} is not in the snapshot`);
      check(
        s!.flash?.sequence === String(sequenceOf('1.1')) && s!.reported?.state === 'confirmed',
        `${s!.name} runs ${s!.flash?.sequence ?? '?'} (last report ${s!.reported?.state ?? 'none'})`,
      );
      return `${s!.name} lost power while ${cut!.state}, rebooted on what was durable on its flash, resumed the update and confirmed 1.1 (bank ${s!.flash?.bank ?? '?'})`;
    });

    go = await step(8, async () => {
      const img = demoImage(sequenceOf('1.2'), 4096, false);
      const env = await authorRelease(readFileSync(data.authorKey, 'utf8'), '1.2', img);
      await auth.expect([200, 201], 'PUT', `/v1/payloads/${sha256hex(img)}`, img, 'application/octet-stream');
      const rel = await auth.expect<{ id: string }>(
        [201],
        'POST',
        '/v1/releases',
        env,
        'application/suit-envelope+cose',
      );
      await op.post(`/v1/releases/${rel.id}/approve`);
      // A one-device canary (ceil(n · p / 100) = 1) and a failure threshold of 50%: its failure pauses the rollout.
      const pct = Math.max(1, Math.floor(100 / n));
      const ro = await op.post<RolloutInfo>('/v1/rollouts', {
        name: 'demo 1.2 (bad build)',
        releaseId: rel.id,
        target: { group: GROUP },
        phases: [
          { percent: pct, successThreshold: 1, failureThreshold: 0.5, timeoutMs: 600_000 },
          { percent: 100, successThreshold: 1, failureThreshold: 0.5, timeoutMs: 600_000 },
        ],
      });
      const r = await watchRollout(op, ro.id, n, say, 'confirmed', (x) => x.state !== 'active', 180_000);
      rollouts.v12 = r;
      check(r.state === 'paused', `rollout ${r.state}, expected paused`);
      check(r.counts.failed === 1 && r.counts.succeeded === 0, `counts ${JSON.stringify(r.counts)}`);
      const snap = await snapshot(fl);
      const still = snap.filter((s) => s.flash?.sequence === String(sequenceOf('1.1')));
      check(still.length === n, `${still.length} of ${n} devices still run 1.1 from flash`);
      const bad = snap.find((s) => s.reported?.state === 'rolled-back' || s.reported?.state === 'failed');
      check(bad !== undefined, 'no device reports the rollback');
      badDeviceId = bad!.serverId;
      return `${bad!.name} booted 1.2, failed its health check and rolled back to 1.1; rollout paused: ${r.pauseReason ?? ''}; the other ${n - 1} devices never got 1.2`;
    });
    if (!go) throw new StepFailed('stopped');

    await step(9, async () => {
      // Attestation after every update (the verifier counted each 1.1 confirmation only once the device's EAT
      // evidence appraised against the release's reference values): every device's newest result.
      const devs = await listDevices(op, GROUP);
      const summary = new Map<string, number>();
      for (const x of devs) {
        const r = await op.get<{ items: { status: string; createdAtMs: number }[] }>(
          `/v1/devices/${x.id}/attestation/results?limit=5`,
        );
        const newest = r.items[0]?.status ?? 'none';
        attestation.set(x.id, newest);
        summary.set(newest, (summary.get(newest) ?? 0) + 1);
      }
      const affirming = summary.get('affirming') ?? 0;
      check(
        affirming === n,
        `newest attestation results: ${[...summary].map(([k, v]) => `${v} ${k}`).join(', ')}`,
      );
      return `${n}/${n} devices attested firmware 1.1; the verifier's signed results are affirming`;
    });

    await step(10, async () => {
      const target = fleetDevices[0];
      if (target?.serverId === undefined) throw new StepFailed('no device id for the first device');
      const id = target.serverId;
      const before = await op.get<{ index: number; kid: string }>(`/v1/devices/${id}/rot`);
      const seenBefore = (await op.get<{ lastSeenMs: number | null }>(`/v1/devices/${id}`)).lastSeenMs ?? 0;
      await op.post(`/v1/devices/${id}/rot/rotate`);
      const end = Date.now() + 60_000;
      let now = before;
      while (now.index === before.index) {
        if (Date.now() > end) throw new StepFailed(`RoT index still ${now.index} after 60 s`);
        await sleep(250);
        now = await op.get<{ index: number; kid: string }>(`/v1/devices/${id}/rot`);
      }
      rotIndex.set(id, now.index);
      // It keeps answering: further check-ins after the rotation, on the same TLS identity.
      let seen = seenBefore;
      while (seen <= seenBefore + 0) {
        if (Date.now() > end) throw new StepFailed('the device stopped checking in after its rotation');
        await sleep(250);
        seen = (await op.get<{ lastSeenMs: number | null }>(`/v1/devices/${id}`)).lastSeenMs ?? 0;
      }
      return `${target.name.slice(0, 32)}…: RoT key ${before.index} → ${now.index} (new key signed by the old one; old kid revoked), still checking in`;
    });

    await step(11, async () => {
      const t0 = Date.now();
      const wasm = new Map<FilterVersion, Uint8Array>([
        [1, await buildFilter(1)],
        [2, await buildFilter(2)],
      ]);
      const upload = async (v: FilterVersion): Promise<string> => {
        const body = encode([encodeModuleMetadata(filterMetadata(v, DEMO_CLASS)), wasm.get(v)!]);
        const m = await auth.expect<{ id: string }>(
          [201],
          'POST',
          '/v1/capabilities/modules',
          body,
          'application/octet-stream',
        );
        return m.id;
      };
      const rollOut = async (moduleId: string): Promise<string> =>
        (
          await op.post<{ id: string }>('/v1/capabilities/rollouts', {
            moduleId,
            target: { group: GROUP },
            phases: [{ percent: 100, durationMs: 0, successThreshold: 1 }],
          })
        ).id;
      /**
       * The server's rollout: every device of the group reported installed (signed SUIT reports). Nobody asks the
       * devices: the rollout nudges them (MQTT) and each tracker's cycle installs what the rollout offers.
       */
      const settled = async (id: string, label: string): Promise<ModuleRolloutInfo> => {
        const end = Date.now() + 30_000;
        for (;;) {
          const r = await op.get<ModuleRolloutInfo>(`/v1/capabilities/rollouts/${id}`);
          say.progress(label, r.counts.installed ?? 0, n, r.state);
          if ((r.counts.installed ?? 0) >= n && r.state === 'completed') {
            say.end();
            return r;
          }
          if (Date.now() > end) {
            say.end();
            throw new StepFailed(`module rollout ${r.state}, counts ${JSON.stringify(r.counts)}`);
          }
          await sleep(200);
        }
      };
      const modulesOf = (s: Snapshot): string =>
        (s.modules ?? [])
          .filter((m) => m.name === FILTER)
          .map((m) => `${m.version}${m.archives.length > 0 ? ` (archived ${m.archives.join(', ')})` : ''}`)
          .join('') || 'none';

      // v1 rolled out to the group.
      const v1 = await upload(1);
      const r1 = await rollOut(v1);
      moduleRollouts.v1 = await settled(r1, `${FILTER} 1.0.0 installed`);
      let snap = await snapshot(fl);
      const on1 = snap.filter((s) => modulesOf(s) === '1.0.0');
      check(on1.length === n, `${on1.length} of ${n} devices run ${FILTER} 1.0.0 in their manager`);
      say.info(
        `${FILTER} 1.0.0 (${wasm.get(1)!.length} bytes of WebAssembly) rolled out to group ${GROUP}: nudged by the rollout, each device fetched its own encrypted envelope over mutual TLS, verified, sandboxed and reported it (no device was told to ask)`,
      );

      // v2 hot-swapped on the group while every device keeps answering calls.
      const started = fl.next((m) => m.type === 'load-started', 'calls on every device', 30_000);
      fl.send({ cmd: 'load-start', name: FILTER });
      const st = await started;
      check(st.error === undefined, `calls could not start: ${String(st.error)}`);
      const v2 = await upload(2);
      const r2 = await rollOut(v2);
      moduleRollouts.v2 = await settled(r2, `${FILTER} 2.0.0 installed`);
      await sleep(300); // calls on 2.0.0 too
      const stopped = fl.next((m) => m.type === 'load', 'the call tallies', 30_000);
      fl.send({ cmd: 'load-stop' });
      const results = (await stopped).results as LoadResult[];
      const calls = results.reduce((a, r) => a + r.calls, 0);
      const failed = results.reduce((a, r) => a + r.failed, 0);
      moduleCalls = { total: calls, failed };
      check(results.length === n, `${results.length} of ${n} devices ran calls`);
      const firstBad = results.find((r) => r.failed > 0);
      check(
        failed === 0,
        `${failed} of ${calls} calls failed (device ${firstBad?.index ?? '?'}: ${firstBad?.firstError ?? '?'})`,
      );
      const notSwapped = results.find(
        (r) => r.runs.length !== 2 || r.runs[0]?.[0] !== '1.0.0' || r.runs[1]?.[0] !== '2.0.0',
      );
      check(
        notSwapped === undefined,
        `device ${notSwapped?.index ?? '?'}: answers by version ${JSON.stringify(notSwapped?.runs)}`,
      );
      snap = await snapshot(fl);
      const on2 = snap.filter((s) => modulesOf(s) === '2.0.0 (archived 1.0.0)');
      check(on2.length === n, `${on2.length} of ${n} devices run ${FILTER} 2.0.0 with 1.0.0 archived`);
      const v1calls = results.reduce((a, r) => a + (r.runs[0]?.[1] ?? 0), 0);
      say.info(
        `hot swap under load: ${calls} calls, ${v1calls} answered by 1.0.0 then ${calls - v1calls} by 2.0.0, ${failed} failed; 1.0.0 archived sealed by each device's enclave`,
      );

      // Revoked on one device: the operator takes the device's authorization for the module away (its new group's
      // capability manifest grants no 'filter'); the device applies the newer manifest and unloads the module.
      const target = fleetDevices[n - 1];
      check(target !== undefined, 'no device for the revocation');
      const tgt = target!;
      const tgtSnap = snap.find((s) => s.index === tgt.index);
      await op.post('/v1/capabilities/manifests', { group: NO_FILTER_GROUP, modules: [] });
      // Moving a device is the admin's (role device.update).
      await adm.expect([200], 'PATCH', `/v1/devices/${tgt.serverId}`, { group: NO_FILTER_GROUP });
      const synced = fl.next(
        (m) => m.type === 'capabilities-synced' && m.index === tgt.index,
        'the device to sync',
        30_000,
      );
      const revokedAt = Date.now();
      fl.send({ cmd: 'sync-capabilities', index: tgt.index });
      const sy = await synced;
      check(sy.error === undefined, `the device could not sync: ${String(sy.error)}`);
      const unloadedIn = Date.now() - revokedAt;
      snap = await snapshot(fl);
      const after = snap.find((s) => s.index === tgt.index);
      check(after !== undefined && modulesOf(after) === 'none', `${tgt.name} still runs ${FILTER}`);
      check(
        (after!.moduleEvents ?? []).includes(`unloaded ${FILTER} 2.0.0 (unauthorized)`),
        `${tgt.name}: no unload event (${(after!.moduleEvents ?? []).join('; ')})`,
      );
      const others = snap.filter((s) => s.index !== tgt.index && modulesOf(s) === '2.0.0 (archived 1.0.0)');
      check(others.length === n - 1, `${others.length} of ${n - 1} other devices still run ${FILTER} 2.0.0`);
      // The server has the device's signed 'unloaded' report.
      const end = Date.now() + 15_000;
      let reported = '';
      for (;;) {
        const m = await op.get<{ items: { name: string; version: string; state: string }[] }>(
          `/v1/capabilities/devices/${tgt.serverId}/modules`,
        );
        reported = m.items.map((x) => `${x.name} ${x.version} ${x.state}`).join(', ');
        if (m.items.some((x) => x.name === FILTER && x.version === '2.0.0' && x.state === 'unloaded')) break;
        if (Date.now() > end)
          throw new StepFailed(`the server has no unload report of ${tgt.name}: ${reported}`);
        await sleep(200);
      }
      moduleRevoked = { name: tgt.name, serverId: tgt.serverId };
      say.info(
        `${tgt.name.slice(0, 32)}… moved to group ${NO_FILTER_GROUP} (manifest without '${FILTER}'): unloaded ${FILTER} 2.0.0 within ${unloadedIn} ms of its sync (was ${tgtSnap === undefined ? '?' : modulesOf(tgtSnap)}), reported it; the other ${n - 1} keep 2.0.0`,
      );
      return `${FILTER} 1.0.0 → 2.0.0 hot-swapped on ${n} devices under ${calls} calls (0 failed); authorization revoked on one device, which unloaded it and reported it (${((Date.now() - t0) / 1000).toFixed(1)} s)`;
    });

    await step(12, async () => {
      finalSnapshot = await snapshot(fl);
      check(finalSnapshot.length === n, `${finalSnapshot.length} devices in the snapshot`);
      return `${n} devices`;
    });
  } catch (e) {
    if (!(e instanceof StepFailed)) {
      const detail = e instanceof Error ? e.message : String(e);
      say.fail(detail);
      steps.push({ n: 0, title: 'demo', status: 'failed', detail });
    }
  } finally {
    say.end();
    const f = fleet;
    if (f !== undefined) {
      const fin = f.next(
        (m: FleetMessage) => m.type === 'snapshot' && m.final === true,
        'the final snapshot',
        30_000,
      );
      await f.stop();
      const last = await fin.catch(() => undefined);
      if (last !== undefined) finalSnapshot = last.devices as Snapshot[];
    }
    await server?.stop();
  }

  const devices: DeviceRow[] = finalSnapshot.map((s) => ({
    name: s.name,
    serverId: s.serverId ?? '',
    version: s.flash === undefined ? '?' : versionOf(s.flash.sequence),
    sequence: s.flash?.sequence ?? '',
    bank: s.flash?.bank ?? '?',
    lastOutcome: [
      s.flash === undefined ? '' : s.flash.trial ? 'on trial' : 'confirmed',
      cut !== undefined && s.name === cut.name ? 'power cut during 1.1' : '',
      s.serverId !== undefined && s.serverId === badDeviceId ? 'bad 1.2 rolled back' : '',
    ]
      .filter((x) => x !== '')
      .join(', '),
    powerCuts: s.powerCuts,
    attestation: attestation.get(s.serverId ?? '') ?? '-',
    rotIndex: s.rotIndex === undefined ? '-' : String(s.rotIndex),
    module: moduleCell(s),
  }));
  const ok =
    steps.every((s) => s.status === 'ok' || (o.partial && s.status === 'missing')) && steps.length === 12;
  const srvUrls = server;
  const result: DemoResult = {
    ok,
    dir: runDir,
    steps,
    devices,
    server:
      srvUrls === undefined ? undefined : { operatorUrl: srvUrls.operatorUrl, deviceUrl: srvUrls.deviceUrl },
    rollouts,
    modules: { rollouts: moduleRollouts, revoked: moduleRevoked, calls: moduleCalls },
  };
  if (!o.json) {
    out('');
    out(
      table(
        ['device', 'firmware', 'bank', 'state', 'attestation', 'RoT', 'module'],
        devices.map((r) => [r.name, r.version, r.bank, r.lastOutcome, r.attestation, r.rotIndex, r.module]),
      ),
    );
    out('');
    const missing = steps.filter((s) => s.status === 'missing');
    const failed = steps.filter((s) => s.status === 'failed');
    out(
      `${steps.filter((s) => s.status === 'ok').length} steps happened as told, ${missing.length} not yet possible, ${failed.length} failed` +
        (o.keep || o.dir !== undefined ? `; everything is in ${runDir}` : ''),
    );
    for (const s of missing) out(`  not yet: [${s.n}] ${s.title}`);
    for (const s of failed) out(`  FAILED:  [${s.n}] ${s.title}: ${s.detail}`);
  }
  if (o.dir === undefined && !o.keep && existsSync(runDir)) rmSync(runDir, { recursive: true, force: true });
  return result;
}

export async function demoMain(o: DemoOptions): Promise<number> {
  if (!Number.isSafeInteger(o.devices) || o.devices < 2 || o.devices > 200)
    throw new CliError('CLI_USAGE', '--devices: 2 … 200');
  const r = await runDemo(o);
  if (o.json) json(r);
  return r.ok ? ExitCode.ok : ExitCode.internal;
}
