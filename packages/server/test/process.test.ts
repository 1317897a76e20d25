/**
 * The server as a process (slow suite): SIGKILL mid-rollout and restart on the same embedded database loses
 * nothing; SIGTERM drains and exits 0.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { request as httpsRequest, Agent } from 'node:https';
import { decodeEnvelope, encodeReport } from '@rotor/suit';
import { generateAgreementKey } from '@rotor/cose';
import { createTestDatabase, operatorClient, selfSignedCert, type TestCert } from './helpers.ts';
import { authorKeyPair, sha256hex, signedRelease, testKeyMaterial } from './fixtures.ts';

const MAIN = join(import.meta.dirname, '../src/main.ts');
const TOKEN = `admin_${randomBytes(24).toString('hex')}`;

async function spawnServer(
  dataDir: string,
  databaseUrl = '',
  tls = false,
): Promise<{
  child: ChildProcess;
  url: string;
  deviceUrl: string | undefined;
  exit: Promise<number | null>;
}> {
  if (!existsSync(join(dataDir, 'operator.pem'))) {
    const km = testKeyMaterial();
    writeFileSync(join(dataDir, 'operator.pem'), km.operatorPem, { mode: 0o600 });
    writeFileSync(join(dataDir, 'content.kek'), km.kekHex, { mode: 0o600 });
  }
  const child = spawn(
    process.execPath,
    [
      ...[MAIN, '--port', '0', '--data-dir', dataDir, '--log-level', 'info', '--rollout-tick-ms', '200'],
      ...(tls ? ['--device-port', '0', '--mqtt-port', '0'] : []),
    ],
    {
      env: {
        ...process.env,
        ...(tls
          ? {
              ROTOR_TLS_CERT_FILE: join(dataDir, 'server.crt'),
              ROTOR_TLS_KEY_FILE: join(dataDir, 'server.key'),
            }
          : {}),
        ROTOR_ADMIN_TOKEN: TOKEN,
        DATABASE_URL: databaseUrl,
        ROTOR_OPERATOR_KEY_FILE: join(dataDir, 'operator.pem'),
        ROTOR_CONTENT_KEK_FILE: join(dataDir, 'content.kek'),
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  const exit = new Promise<number | null>((resolve) =>
    child.on('exit', (code) => {
      resolve(code);
    }),
  );
  const [url, deviceUrl] = await new Promise<[string, string | undefined]>((resolve, reject) => {
    let buf = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      const m = /"operatorUrl":"([^"]+)"/.exec(buf);
      const dm = /"deviceUrl":"([^"]+)"/.exec(buf);
      if (m !== null && (!tls || dm !== null)) resolve([m[1]!, dm?.[1]]);
    });
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    void exit.then((code) => {
      reject(new Error(`server exited ${code}: ${err}`));
    });
  });
  return { child, url, deviceUrl, exit };
}

describe('server process (slow)', () => {
  it.each(['pglite', 'postgres'] as const)(
    'survives SIGKILL mid-rollout on %s: a restart has every committed change',
    async (backend) => {
      const t = backend === 'postgres' ? await createTestDatabase('postgres') : undefined;
      const dbUrl = t?.url ?? '';
      try {
        const dataDir = mkdtempSync(join(tmpdir(), 'rotor-kill-'));
        let s = await spawnServer(dataDir, dbUrl);
        let admin = operatorClient(s.url, TOKEN);
        const mk = async (role: string): Promise<string> =>
          ((await admin.post('/v1/tokens', { name: role, role })).json() as { token: string }).token;
        const author = operatorClient(s.url, await mk('author'));
        const operator = operatorClient(s.url, await mk('operator'));
        const k = authorKeyPair();
        expect(
          (await admin.post('/v1/author-keys', { name: 'a', alg: 'ES256', publicKeyPem: k.publicKeyPem }))
            .status,
        ).toBe(201);
        const image = randomBytes(1000);
        await author.put(`/v1/payloads/${sha256hex(image)}`, image);
        const rel = (
          await author.post(
            '/v1/releases',
            await signedRelease(k.privateKey, image, 1),
            'application/suit-envelope+cose',
          )
        ).json() as { id: string };
        await operator.post(`/v1/releases/${rel.id}/approve`);
        for (let i = 0; i < 10; i++)
          await admin.post('/v1/devices', {
            name: `d${i}`,
            certSha256: randomBytes(32).toString('hex'),
            group: 'g',
          });
        const ro = (
          await operator.post('/v1/rollouts', {
            name: 'r',
            releaseId: rel.id,
            target: { group: 'g' },
            phases: [{ percent: 100, successThreshold: 1, failureThreshold: 1, timeoutMs: 3_600_000 }],
          })
        ).json() as { id: string; assigned: number };
        expect(ro.assigned).toBe(10);
        // pause (committed), then kill the process with requests possibly in flight
        expect((await operator.post(`/v1/rollouts/${ro.id}/pause`)).status).toBe(200);
        const inflight = admin
          .post('/v1/devices', { name: 'late', certSha256: randomBytes(32).toString('hex') })
          .catch(() => undefined);
        s.child.kill('SIGKILL');
        await s.exit;
        await inflight;

        s = await spawnServer(dataDir, dbUrl);
        admin = operatorClient(s.url, TOKEN);
        const r = (await admin.get(`/v1/rollouts/${ro.id}`)).json() as {
          state: string;
          counts: { total: number; pending: number };
        };
        expect(r).toMatchObject({ state: 'paused', counts: { total: 10, pending: 10 } });
        const v = (await admin.get('/v1/audit/verify')).json() as { ok: boolean };
        expect(v.ok).toBe(true);
        // graceful shutdown: SIGTERM drains and exits 0
        s.child.kill('SIGTERM');
        expect(await s.exit).toBe(0);
      } finally {
        await t?.drop();
      }
    },
    120_000,
  );
});

/** A device over mutual TLS (keep-alive): check-in, its envelope, a report. */
function deviceOf(baseUrl: string, serverCert: TestCert, cert: TestCert) {
  const agent = new Agent({ keepAlive: true, maxSockets: 1, ca: serverCert.certPem, ...cert2(cert) });
  const call = (method: string, path: string, body?: Uint8Array): Promise<{ status: number; body: Buffer }> =>
    new Promise((resolve, reject) => {
      const headers: Record<string, string> = { 'content-length': String(body?.length ?? 0) };
      if (body !== undefined) headers['content-type'] = 'application/suit-report+cbor';
      const r = httpsRequest(new URL(path, baseUrl), { method, agent, headers }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) });
        });
        res.on('error', reject);
      });
      r.on('error', reject);
      r.end(body);
    });
  return {
    checkin: () => call('POST', '/d/v1/checkin'),
    envelope: (rolloutId: string) => call('GET', `/d/v1/rollouts/${rolloutId}/envelope`),
    report: (bytes: Uint8Array) => call('POST', '/d/v1/reports', bytes),
    close: () => {
      agent.destroy();
    },
  };
}
const cert2 = (c: TestCert): { cert: string; key: string } => ({ cert: c.certPem, key: c.keyPem });

describe('server process with devices (slow)', () => {
  it('SIGKILL with check-ins and reports in flight (postgres): every acknowledged report survives, nothing is half-written, the rest can be re-sent', async () => {
    const t = await createTestDatabase('postgres');
    const devices: ReturnType<typeof deviceOf>[] = [];
    let s: Awaited<ReturnType<typeof spawnServer>> | undefined;
    try {
      const dataDir = mkdtempSync(join(tmpdir(), 'rotor-kill-dev-'));
      const serverCert = await selfSignedCert('rotor-test-server', { server: true });
      writeFileSync(join(dataDir, 'server.crt'), serverCert.certPem);
      writeFileSync(join(dataDir, 'server.key'), serverCert.keyPem, { mode: 0o600 });
      s = await spawnServer(dataDir, t.url, true);
      let admin = operatorClient(s.url, TOKEN);
      const mk = async (role: string): Promise<string> =>
        ((await admin.post('/v1/tokens', { name: role, role })).json() as { token: string }).token;
      const author = operatorClient(s.url, await mk('author'));
      const operator = operatorClient(s.url, await mk('operator'));
      const k = authorKeyPair();
      await admin.post('/v1/author-keys', { name: 'a', alg: 'ES256', publicKeyPem: k.publicKeyPem });
      const image = randomBytes(1000);
      await author.put(`/v1/payloads/${sha256hex(image)}`, image);
      const rel = (
        await author.post(
          '/v1/releases',
          await signedRelease(k.privateKey, image, 1),
          'application/suit-envelope+cose',
        )
      ).json() as { id: string };
      expect((await operator.post(`/v1/releases/${rel.id}/approve`)).status).toBe(200);
      const N = 12;
      const certs = await Promise.all(Array.from({ length: N }, (_, i) => selfSignedCert(`kd-${i}`)));
      const ids: string[] = [];
      for (const [i, c] of certs.entries()) {
        const r = await admin.post('/v1/devices', {
          name: `kd-${i}`,
          certificatePem: c.certPem,
          group: 'k',
          keyAgreementKeyPem: generateAgreementKey('X25519')
            .publicKey.export({ type: 'spki', format: 'pem' })
            .toString(),
        });
        expect(r.status).toBe(201);
        ids.push((r.json() as { id: string }).id);
      }
      const ro = (
        await operator.post('/v1/rollouts', {
          name: 'r',
          releaseId: rel.id,
          target: { group: 'k' },
          phases: [{ percent: 100, successThreshold: 1, failureThreshold: 1, timeoutMs: 3_600_000 }],
        })
      ).json() as { id: string };
      const reports: Uint8Array[] = [];
      for (const c of certs) {
        const d = deviceOf(s.deviceUrl!, serverCert, c);
        devices.push(d);
        expect(JSON.parse((await d.checkin()).body.toString())).toMatchObject({ action: 'update' });
        const env = await d.envelope(ro.id);
        expect(env.status).toBe(200);
        reports.push(
          encodeReport({
            reference: {
              uri: undefined,
              digest: { alg: -16, bytes: decodeEnvelope(new Uint8Array(env.body)).digest.bytes },
            },
            records: [],
            result: true,
          }),
        );
      }
      // Half report and are acknowledged; the other half report (and everybody checks in) as the process dies.
      const half = N / 2;
      for (let i = 0; i < half; i++) {
        const r = await devices[i]!.report(reports[i]!);
        expect([r.status, r.body.toString()]).toEqual([200, expect.anything()]);
      }
      const lost = { status: 0, body: Buffer.alloc(0) };
      const inflightReports = devices.map((d, i) =>
        i >= half ? d.report(reports[i]!).catch(() => lost) : Promise.resolve(lost),
      );
      const inflightCheckins = devices.map((d) => d.checkin().catch(() => lost));
      s.child.kill('SIGKILL');
      await s.exit;
      const answered = await Promise.all(inflightReports);
      await Promise.all(inflightCheckins);
      for (const d of devices) d.close();
      devices.length = 0;

      s = await spawnServer(dataDir, t.url, true);
      admin = operatorClient(s.url, TOKEN);
      // State and history agree for every device: succeeded with exactly one report, or still in progress with none.
      const rows = await t.db.query<{ device_id: string; state: string; reports: number }>(
        `SELECT rd.device_id, rd.state, (SELECT count(*)::int FROM device_events e
           WHERE e.device_id = rd.device_id AND e.rollout_id = rd.rollout_id AND e.kind = 'report') AS reports
         FROM rollout_devices rd WHERE rd.rollout_id = $1`,
        [ro.id],
      );
      expect(rows).toHaveLength(N);
      for (const r of rows) {
        if (r.state === 'succeeded') expect(r.reports).toBe(1);
        else expect([r.state, r.reports]).toEqual(['in_progress', 0]);
      }
      const succeeded = new Set(rows.filter((r) => r.state === 'succeeded').map((r) => r.device_id));
      for (let i = 0; i < half; i++) expect(succeeded.has(ids[i]!)).toBe(true); // acknowledged: kept
      // A report answered 200 before the kill is kept, like the ones acknowledged earlier.
      for (const [i, a] of answered.entries())
        if (a.status === 200) expect(succeeded.has(ids[i]!)).toBe(true);
      const view = (await admin.get(`/v1/rollouts/${ro.id}`)).json() as {
        counts: { total: number; succeeded: number; in_progress: number };
      };
      expect(view.counts).toMatchObject({ total: N, succeeded: succeeded.size });
      // Devices whose report was lost with the process re-send it to the restarted server: the rollout completes.
      for (const [i, c] of certs.entries()) {
        if (succeeded.has(ids[i]!)) continue;
        const d = deviceOf(s.deviceUrl!, serverCert, c);
        devices.push(d);
        expect((await d.report(reports[i]!)).status).toBe(200);
      }
      expect(((await admin.get(`/v1/rollouts/${ro.id}`)).json() as { state: string }).state).toBe(
        'completed',
      );
      expect(((await admin.get('/v1/audit/verify')).json() as { ok: boolean }).ok).toBe(true);
      s.child.kill('SIGTERM');
      expect(await s.exit).toBe(0);
      s = undefined;
    } finally {
      for (const d of devices) d.close();
      if (s !== undefined) {
        s.child.kill('SIGKILL');
        await s.exit;
      }
      await t.drop();
    }
  }, 120_000);
});
