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
import { createTestDatabase, operatorClient } from './helpers.ts';
import { authorKeyPair, sha256hex, signedRelease, testKeyMaterial } from './fixtures.ts';

const MAIN = join(import.meta.dirname, '../src/main.ts');
const TOKEN = `admin_${randomBytes(24).toString('hex')}`;

async function spawnServer(
  dataDir: string,
  databaseUrl = '',
): Promise<{ child: ChildProcess; url: string; exit: Promise<number | null> }> {
  if (!existsSync(join(dataDir, 'operator.pem'))) {
    const km = testKeyMaterial();
    writeFileSync(join(dataDir, 'operator.pem'), km.operatorPem, { mode: 0o600 });
    writeFileSync(join(dataDir, 'content.kek'), km.kekHex, { mode: 0o600 });
  }
  const child = spawn(
    process.execPath,
    [MAIN, '--port', '0', '--data-dir', dataDir, '--log-level', 'info', '--rollout-tick-ms', '200'],
    {
      env: {
        ...process.env,
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
  const url = await new Promise<string>((resolve, reject) => {
    let buf = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      const m = /"operatorUrl":"([^"]+)"/.exec(buf);
      if (m !== null) resolve(m[1]!);
    });
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    void exit.then((code) => {
      reject(new Error(`server exited ${code}: ${err}`));
    });
  });
  return { child, url, exit };
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
