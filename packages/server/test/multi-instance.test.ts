/**
 * Two full server instances (operator and mutual-TLS device listeners, ephemeral ports) on one PostgreSQL database
 * serve one fleet consistently (issue 5): devices check in and report alternately and concurrently against both,
 * a rollout created on one is paused and resumed on the other; no device is assigned twice, no report is lost,
 * both instances give the same counts, at most one active rollout per device, the audit chain stays intact. And
 * a device disabled on one instance is refused by the other on its very next request (LISTEN/NOTIFY drops the
 * other instance's device-authentication cache; migration 11). Instance B of that last test runs in its own
 * process: in one process both instances would share the local invalidation epoch and prove nothing.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, mkdtempSync, writeFileSync } from 'node:fs';
import { request as httpsRequest, Agent } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeEnvelope, encodeReport } from '@rotor/suit';
import { generateAgreementKey } from '@rotor/cose';
import { loadConfig, startServer, type Db, type RotorServer } from '../src/index.ts';
import {
  createTestDatabase,
  operatorClient,
  selfSignedCert,
  type OperatorClient,
  type Res,
  type TestCert,
  type TestDatabase,
} from './helpers.ts';
import { ADMIN_TOKEN, authorKeyPair, sha256hex, signedRelease, testKeyMaterial } from './fixtures.ts';

const FLEET = 16;
const REPORT_TYPE = 'application/suit-report+cbor';

interface Instance {
  server: RotorServer;
  admin: OperatorClient;
}

/** Key material and TLS certificate shared by the instances (one fleet, one operator key, one content-key vault). */
interface Shared {
  dir: string;
  serverCert: TestCert;
}

async function sharedMaterial(): Promise<Shared> {
  const dir = mkdtempSync(join(tmpdir(), 'rotor-multi-'));
  const serverCert = await selfSignedCert('rotor-test-server', { server: true });
  writeFileSync(join(dir, 'server.crt'), serverCert.certPem);
  writeFileSync(join(dir, 'server.key'), serverCert.keyPem, { mode: 0o600 });
  const km = testKeyMaterial();
  writeFileSync(join(dir, 'operator.pem'), km.operatorPem, { mode: 0o600 });
  writeFileSync(join(dir, 'content.kek'), `${km.kekHex}\n`, { mode: 0o600 });
  return { dir, serverCert };
}

/** An instance's own data directory holding copies of the shared key files. */
function instanceDir(shared: Shared): string {
  const d = mkdtempSync(join(tmpdir(), 'rotor-inst-'));
  for (const f of ['server.crt', 'server.key', 'operator.pem', 'content.kek'])
    copyFileSync(join(shared.dir, f), join(d, f));
  return d;
}

function instanceArgs(dataDir: string): { argv: string[]; env: Record<string, string> } {
  return {
    argv: [
      ...['--port', '0', '--device-port', '0', '--mqtt-port', '0', '--log-level', 'silent'],
      ...['--data-dir', dataDir, '--rollout-tick-ms', '3600000'],
    ],
    env: {
      ROTOR_ADMIN_TOKEN: ADMIN_TOKEN,
      ROTOR_TLS_CERT_FILE: join(dataDir, 'server.crt'),
      ROTOR_TLS_KEY_FILE: join(dataDir, 'server.key'),
      ROTOR_OPERATOR_KEY_FILE: join(dataDir, 'operator.pem'),
      ROTOR_CONTENT_KEK_FILE: join(dataDir, 'content.kek'),
    },
  };
}

async function startInstance(shared: Shared, db: Db): Promise<Instance> {
  const a = instanceArgs(instanceDir(shared));
  const server = await startServer(loadConfig(a), { db });
  return { server, admin: operatorClient(server.operatorUrl, ADMIN_TOKEN) };
}

/** A device's mTLS client of one instance (keep-alive), with a request body. */
function device(baseUrl: string, serverCert: TestCert, cert: TestCert) {
  const agent = new Agent({
    keepAlive: true,
    maxSockets: 1,
    ca: serverCert.certPem,
    cert: cert.certPem,
    key: cert.keyPem,
  });
  const call = (method: string, path: string, body?: Uint8Array, type?: string): Promise<Res> =>
    new Promise((resolve, reject) => {
      const headers: Record<string, string> = { 'content-length': String(body?.length ?? 0) };
      if (type !== undefined) headers['content-type'] = type;
      const r = httpsRequest(new URL(path, baseUrl), { method, agent, headers }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const b = Buffer.concat(chunks);
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: b,
            json: () => JSON.parse(b.toString('utf8')) as unknown,
          });
        });
        res.on('error', reject);
      });
      r.on('error', reject);
      r.end(body);
    });
  return {
    checkin: () => call('POST', '/d/v1/checkin'),
    self: () => call('GET', '/d/v1/self'),
    envelope: (rolloutId: string) => call('GET', `/d/v1/rollouts/${rolloutId}/envelope`),
    report: (bytes: Uint8Array) => call('POST', '/d/v1/reports', bytes, REPORT_TYPE),
    close: () => {
      agent.destroy();
    },
  };
}
type DeviceClient = ReturnType<typeof device>;

const successReport = (digest: Uint8Array): Uint8Array =>
  encodeReport({
    reference: { uri: undefined, digest: { alg: -16, bytes: digest } },
    records: [],
    result: true,
  });

interface RolloutView {
  id: string;
  state: string;
  currentPhase: number;
  assigned: number;
  excluded: number;
  counts: Record<string, number>;
  phaseCounts: Record<string, number>[];
}

describe('two instances on one PostgreSQL (slow)', () => {
  let t: TestDatabase & { db: Db };
  let shared: Shared;
  let a: Instance;
  let b: Instance;
  let operatorA: OperatorClient;
  let operatorB: OperatorClient;
  let certs: TestCert[];
  const ids: string[] = [];
  /** Per device: [client of A, client of B]. */
  const clients: [DeviceClient, DeviceClient][] = [];
  let releaseId: string;

  beforeAll(async () => {
    t = await createTestDatabase('postgres');
    shared = await sharedMaterial();
    a = await startInstance(shared, t.db);
    b = await startInstance(shared, await t.open());
    const token = async (role: string): Promise<string> => {
      const r = await a.admin.post('/v1/tokens', { name: role, role });
      expect(r.status).toBe(201);
      return (r.json() as { token: string }).token;
    };
    const author = operatorClient(b.server.operatorUrl, await token('author'));
    operatorA = operatorClient(a.server.operatorUrl, await token('operator'));
    operatorB = operatorClient(b.server.operatorUrl, await token('operator'));

    const k = authorKeyPair();
    expect(
      (await b.admin.post('/v1/author-keys', { name: 'a', alg: 'ES256', publicKeyPem: k.publicKeyPem }))
        .status,
    ).toBe(201);
    const image = randomBytes(2000);
    expect((await author.put(`/v1/payloads/${sha256hex(image)}`, image)).status).toBeLessThan(300);
    const rel = await author.post(
      '/v1/releases',
      await signedRelease(k.privateKey, image, 1),
      'application/suit-envelope+cose',
    );
    expect(rel.status).toBe(201);
    releaseId = (rel.json() as { id: string }).id;
    expect((await operatorA.post(`/v1/releases/${releaseId}/approve`)).status).toBe(200);

    certs = await Promise.all(Array.from({ length: FLEET }, (_, i) => selfSignedCert(`fleet-${i}`)));
    // Registered half on each instance, concurrently.
    const created = await Promise.all(
      certs.map((c, i) =>
        (i % 2 === 0 ? a : b).admin.post('/v1/devices', {
          name: `fleet-${i}`,
          certificatePem: c.certPem,
          group: 'fleet',
          keyAgreementKeyPem: generateAgreementKey('X25519')
            .publicKey.export({ type: 'spki', format: 'pem' })
            .toString(),
        }),
      ),
    );
    for (const r of created) {
      expect(r.status).toBe(201);
      ids.push((r.json() as { id: string }).id);
    }
    for (const c of certs) {
      clients.push([
        device(a.server.deviceUrl!, shared.serverCert, c),
        device(b.server.deviceUrl!, shared.serverCert, c),
      ]);
    }
  }, 120_000);

  afterAll(async () => {
    for (const [x, y] of clients) {
      x.close();
      y.close();
    }
    await a.server.close();
    await b.server.close();
    await t.drop();
  });

  const rollout = async (via: OperatorClient, id: string): Promise<RolloutView> => {
    const r = await via.get(`/v1/rollouts/${id}`);
    expect(r.status).toBe(200);
    return r.json() as RolloutView;
  };

  it('one rollout, paused and resumed across instances: assigned once, every report counted once', async () => {
    // Two overlapping rollouts created at the same moment on A and B: every device lands in at most one.
    const spec = (name: string) => ({
      name,
      releaseId,
      target: { group: 'fleet' },
      phases: [
        { percent: 50, successThreshold: 1, failureThreshold: 1, timeoutMs: 3_600_000 },
        { percent: 100, successThreshold: 1, failureThreshold: 1, timeoutMs: 3_600_000 },
      ],
    });
    const [ra, rb] = await Promise.all([
      operatorA.post('/v1/rollouts', spec('from-a')),
      operatorB.post('/v1/rollouts', spec('from-b')),
    ]);
    const made = [ra, rb].filter((r) => r.status === 201).map((r) => r.json() as RolloutView);
    for (const r of [ra, rb]) expect([201, 409]).toContain(r.status);
    expect(made.length).toBeGreaterThanOrEqual(1);
    expect(made.reduce((n, r) => n + r.assigned, 0)).toBe(FLEET);
    const oneActive = async (): Promise<void> => {
      const rows = await t.db.query<{ n: number }>(
        'SELECT coalesce(max(c), 0)::int AS n FROM (SELECT count(*) AS c FROM rollout_devices WHERE active GROUP BY device_id) x',
      );
      expect(rows[0]!.n).toBeLessThanOrEqual(1);
    };
    await oneActive();
    // A planner that meets the other's uncommitted rows fails (CONFLICT); one that runs after finds every
    // device taken (excluded). Either way one rollout holds the whole fleet.
    const main = made.find((r) => r.assigned === FLEET);
    expect(main).toBeDefined();
    const r0 = main!;
    for (const r of made) {
      if (r !== main) {
        expect(r).toMatchObject({ assigned: 0 });
        expect((await operatorB.post(`/v1/rollouts/${r.id}/cancel`)).status).toBe(200);
      }
    }
    const rid = r0.id;

    // Phase 0 (half the fleet): every device checks in on both instances at once, twice.
    const offered = new Set<string>();
    for (let round = 0; round < 2; round++) {
      const res = await Promise.all(clients.flatMap(([x, y]) => [x.checkin(), y.checkin()]));
      for (const [i, r] of res.entries()) {
        expect(r.status).toBe(200);
        const body = r.json() as { action: string; rolloutId?: string };
        if (body.action === 'update') {
          expect(body.rolloutId).toBe(rid);
          offered.add(ids[Math.floor(i / 2)]!);
        }
      }
    }
    expect(offered.size).toBe(FLEET / 2);
    // Each offered device recorded as offered exactly once, although it asked both instances concurrently.
    const offers = await t.db.query<{ device_id: string; n: number }>(
      "SELECT device_id, count(*)::int AS n FROM device_events WHERE rollout_id = $1 AND kind = 'offered' GROUP BY device_id",
      [rid],
    );
    expect(offers).toHaveLength(FLEET / 2);
    for (const o of offers) expect(o.n).toBe(1);

    // Paused on B: neither instance offers anything; resumed on B: both offer again.
    expect((await operatorB.post(`/v1/rollouts/${rid}/pause`)).status).toBe(200);
    expect((await rollout(a.admin, rid)).state).toBe('paused');
    for (const [x, y] of clients) {
      expect((await x.checkin()).json()).toMatchObject({ action: 'none' });
      expect((await y.checkin()).json()).toMatchObject({ action: 'none' });
    }
    expect((await operatorA.post(`/v1/rollouts/${rid}/pause`)).status).toBe(409);
    expect((await operatorB.post(`/v1/rollouts/${rid}/resume`)).status).toBe(200);
    expect((await operatorA.post(`/v1/rollouts/${rid}/resume`)).status).toBe(409);
    expect((await rollout(a.admin, rid)).state).toBe('active');

    // Phase 0's devices fetch their envelope from both instances at once (built once, kept) and report their
    // success twice at once, to A and to B: exactly one of the two reports is taken, the other is a conflict.
    const phase0 = ids.flatMap((id, i) => (offered.has(id) ? [i] : []));
    const reportOnBoth = async (i: number): Promise<void> => {
      const [x, y] = clients[i]!;
      const [ea, eb] = await Promise.all([x.envelope(rid), y.envelope(rid)]);
      expect(ea.status).toBe(200);
      expect(Buffer.compare(ea.body, eb.body)).toBe(0);
      const rep = successReport(decodeEnvelope(new Uint8Array(ea.body)).digest.bytes);
      const res = await Promise.all([x.report(rep), y.report(rep)]);
      expect(res.map((r) => r.status).sort()).toEqual([200, 409]);
    };
    await Promise.all(phase0.map(reportOnBoth));
    // Phase 0 succeeded: the rollout advanced in the report transaction; the second half is offered now.
    const mid = await rollout(b.admin, rid);
    expect(mid).toMatchObject({ state: 'active', currentPhase: 1 });
    expect(mid.counts).toMatchObject({ succeeded: FLEET / 2 });
    const phase1 = ids.flatMap((id, i) => (offered.has(id) ? [] : [i]));
    const second = await Promise.all(phase1.map((i) => clients[i]![i % 2]!.checkin()));
    for (const r of second) expect(r.json()).toMatchObject({ action: 'update', rolloutId: rid });
    await Promise.all(phase1.map(reportOnBoth));

    // Both instances agree, and agree with the device histories: nothing lost, nothing doubled.
    const [va, vb] = [await rollout(a.admin, rid), await rollout(b.admin, rid)];
    expect(va).toEqual(vb);
    expect(va).toMatchObject({ state: 'completed' });
    expect(va.counts).toMatchObject({ total: FLEET, succeeded: FLEET });
    const reports = await t.db.query<{ n: number; d: number }>(
      "SELECT count(*)::int AS n, count(DISTINCT device_id)::int AS d FROM device_events WHERE rollout_id = $1 AND kind = 'report'",
      [rid],
    );
    expect(reports[0]).toEqual({ n: FLEET, d: FLEET });
    await oneActive();
    for (const [x, y] of clients) {
      expect((await x.checkin()).json()).toMatchObject({ action: 'none' });
      expect((await y.checkin()).json()).toMatchObject({ action: 'none' });
    }
    for (const inst of [a, b]) {
      const v = await inst.admin.get('/v1/audit/verify');
      expect(v.json()).toMatchObject({ ok: true });
    }
  }, 120_000);
});

// ---------------------------------------------------------------------------------------------------------------
// Cross-instance device-auth invalidation: instance B in its own process.

const MAIN = join(import.meta.dirname, '../src/main.ts');

async function spawnInstance(
  dataDir: string,
  databaseUrl: string,
): Promise<{ child: ChildProcess; deviceUrl: string; operatorUrl: string; exit: Promise<number | null> }> {
  const a = instanceArgs(dataDir);
  const child = spawn(process.execPath, [MAIN, ...a.argv.map((x) => (x === 'silent' ? 'info' : x))], {
    env: { ...process.env, ...a.env, DATABASE_URL: databaseUrl },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exit = new Promise<number | null>((resolve) =>
    child.on('exit', (code) => {
      resolve(code);
    }),
  );
  const urls = await new Promise<{ deviceUrl: string; operatorUrl: string }>((resolve, reject) => {
    let buf = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      const op = /"operatorUrl":"([^"]+)"/.exec(buf);
      const dev = /"deviceUrl":"([^"]+)"/.exec(buf);
      if (op !== null && dev !== null) resolve({ operatorUrl: op[1]!, deviceUrl: dev[1]! });
    });
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    void exit.then((code) => {
      reject(new Error(`server exited ${code}: ${err}`));
    });
  });
  return { child, exit, ...urls };
}

describe('device-auth invalidation across instances (postgres, slow)', () => {
  it('a device disabled on A is refused by B (another process) on its very next request', async () => {
    const t = await createTestDatabase('postgres');
    const shared = await sharedMaterial();
    const a = await startInstance(shared, t.db);
    const proc = await spawnInstance(instanceDir(shared), t.url!);
    const cert = await selfSignedCert('revoked-soon');
    const clientB = device(proc.deviceUrl, shared.serverCert, cert);
    try {
      const created = await a.admin.post('/v1/devices', { name: 'victim', certificatePem: cert.certPem });
      expect(created.status).toBe(201);
      const id = (created.json() as { id: string }).id;
      // B authenticates the device and caches the success (once its LISTEN connection is up, which the first
      // requests may precede: until then B caches nothing, so several requests are made).
      for (let i = 0; i < 10; i++) {
        expect((await clientB.checkin()).status).toBe(200);
        expect((await clientB.self()).status).toBe(200);
      }
      const disable = async (enabled: boolean): Promise<void> => {
        expect((await a.admin.patch(`/v1/devices/${id}`, { enabled })).status).toBe(200);
      };
      // The check-in verifies the standing in its own statement (group check-in)…
      await disable(false);
      const refused = await clientB.checkin();
      expect(refused.status).toBe(403);
      expect(refused.json()).toMatchObject({ code: 'DEVICE_DISABLED' });
      // …and re-enabled on A: B accepts it again at once.
      await disable(true);
      expect((await clientB.checkin()).status).toBe(200);
      // Other routes: the cached authentication waits for the notifications committed before the request.
      for (let i = 0; i < 5; i++) expect((await clientB.self()).status).toBe(200);
      await disable(false);
      const self = await clientB.self();
      expect(self.status).toBe(403);
      expect(self.json()).toMatchObject({ code: 'DEVICE_DISABLED' });
    } finally {
      clientB.close();
      proc.child.kill('SIGTERM');
      await proc.exit;
      await a.server.close();
      await t.drop();
    }
  }, 120_000);
});
