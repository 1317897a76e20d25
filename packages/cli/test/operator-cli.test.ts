/**
 * The operator CLI against a real fleet server (PGlite fixture, operator API over HTTP on an ephemeral port):
 * tokens, a signed release uploaded with its payload, approval, a phased rollout paused/watched/resumed/cancelled,
 * devices listed, shown, disabled, quarantined; capability modules uploaded, rolled out and revoked; a denied role's
 * exit code; --json output that parses; NO_COLOR; --help at every level; and one real child process.
 */
import { execFile } from 'node:child_process';
import { randomBytes, type KeyObject } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { request as httpsRequest } from 'node:https';
import { generateAgreementKey, generateSigningKey } from '@rotor/cose';
import { decodeEnvelope, encodeReport, ReportReason } from '@rotor/suit';
import { run } from '../src/main.ts';
import { LiveStatus, progressBar } from '../src/progress.ts';
import {
  ADMIN_TOKEN,
  authorKeyPair,
  sha256hex,
  signedRelease,
  startFixture,
  type Fixture,
} from '../../server/test/fixtures.ts';
import { buildModule } from '../../device/test/capability-modules/build.ts';
import { deviceClient, selfSignedCert } from '../../server/test/helpers.ts';

const REPO = resolve(import.meta.dirname, '../../..');

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the CLI in this process, capturing what it writes. */
async function cli(args: readonly string[], env: Record<string, string | undefined> = {}): Promise<Result> {
  let stdout = '';
  let stderr = '';
  const saved: Record<string, string | undefined> = {};
  for (const [k, v] of Object.entries(env)) {
    saved[k] = process.env[k];
    if (v === undefined) Reflect.deleteProperty(process.env, k);
    else process.env[k] = v;
  }
  const o = vi.spyOn(process.stdout, 'write').mockImplementation((c: string | Uint8Array) => {
    stdout += String(c);
    return true;
  });
  const e = vi.spyOn(process.stderr, 'write').mockImplementation((c: string | Uint8Array) => {
    stderr += String(c);
    return true;
  });
  try {
    const code = await run(args);
    return { code, stdout, stderr };
  } finally {
    o.mockRestore();
    e.mockRestore();
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) Reflect.deleteProperty(process.env, k);
      else process.env[k] = v;
    }
  }
}

describe('rotor operator commands against a real server', () => {
  let f: Fixture;
  let dir: string;
  const tokenFile: Record<string, string> = {};
  let author: { privateKey: KeyObject; publicKeyPem: string };
  let envelopePath: string;
  let payloadPath: string;
  let releaseId: string;
  const deviceIds: string[] = [];

  const as = (role: string): string[] => ['--server', f.server.operatorUrl, '--token-file', tokenFile[role]!];
  const ok = async (args: readonly string[], env?: Record<string, string | undefined>): Promise<Result> => {
    const r = await cli(args, env);
    expect(r.stderr, `rotor ${args.join(' ')}`).not.toMatch(/^error:/m);
    expect(r.code).toBe(0);
    return r;
  };
  const okJson = async <T>(args: readonly string[]): Promise<T> =>
    JSON.parse((await ok([...args, '--json'])).stdout) as T;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'rotor-opcli-'));
    const pemOf = (k: KeyObject): string => k.export({ type: 'pkcs8', format: 'pem' }).toString();
    writeFileSync(join(dir, 'signing.pem'), pemOf(generateSigningKey(-7).privateKey), { mode: 0o600 });
    writeFileSync(join(dir, 'authority.pem'), pemOf(generateSigningKey(-8).privateKey), { mode: 0o600 });
    f = await startFixture('pglite', {
      env: {
        ROTOR_CAPABILITY_SIGNING_KEY_FILE: join(dir, 'signing.pem'),
        ROTOR_CAPABILITY_AUTHORITY_KEY_FILE: join(dir, 'authority.pem'),
        ROTOR_ROLLOUT_TICK_MS: '200',
      },
    });
    tokenFile.admin = join(dir, 'admin.token');
    writeFileSync(tokenFile.admin, `${ADMIN_TOKEN}\n`, { mode: 0o600 });
    author = authorKeyPair();
    const k = await f.admin.post('/v1/author-keys', {
      name: 'author',
      alg: 'ES256',
      publicKeyPem: author.publicKeyPem,
    });
    expect(k.status).toBe(201);
    const image = randomBytes(4096);
    payloadPath = join(dir, 'fw.bin');
    writeFileSync(payloadPath, image);
    envelopePath = join(dir, 'release.suit');
    writeFileSync(envelopePath, await signedRelease(author.privateKey, image, 7));
    for (let i = 0; i < 4; i++) {
      const d = await f.admin.post('/v1/devices', {
        name: `lab-${i}`,
        certSha256: randomBytes(32).toString('hex'),
        group: 'lab',
        tags: i === 0 ? ['canary'] : [],
        keyAgreementKeyPem: generateAgreementKey('P-256')
          .publicKey.export({ type: 'spki', format: 'pem' })
          .toString(),
      });
      expect(d.status).toBe(201);
      deviceIds.push((d.json() as { id: string }).id);
    }
  });

  afterAll(async () => {
    await f.close();
  });

  it('creates tokens with roles (admin), printed once, written 0600 with --out', async () => {
    for (const role of ['author', 'operator', 'auditor']) {
      tokenFile[role] = join(dir, `${role}.token`);
      const r = await ok([
        'token',
        'create',
        '--role',
        role,
        '--name',
        `${role} cli`,
        '--out',
        tokenFile[role],
        ...as('admin'),
      ]);
      expect(r.stdout).toMatch(new RegExp(`token [0-9a-f]{16} \\(${role}\\) written to`));
      expect(readFileSync(tokenFile[role], 'utf8')).toMatch(/^rot_[0-9a-f]{16}_[A-Za-z0-9_-]{43}\n$/);
    }
    const t = await okJson<{ token: string; role: string }>([
      'token',
      'create',
      '--role',
      'auditor',
      '--name',
      'x',
      ...as('admin'),
    ]);
    expect(t.role).toBe('auditor');
    expect(t.token).toMatch(/^rot_/);
    const plain = await ok(['token', 'create', '--role', 'auditor', '--name', 'y', ...as('admin')]);
    expect(plain.stdout).toMatch(/^rot_[0-9a-f]{16}_[A-Za-z0-9_-]{43}\n$/);
    const list = await okJson<{ items: { role: string }[] }>(['token', 'list', ...as('admin')]);
    expect(list.items.length).toBeGreaterThanOrEqual(5);
    // An existing file is never overwritten, and no token is created for it.
    const exists = await cli([
      'token',
      'create',
      '--role',
      'admin',
      '--name',
      'z',
      '--out',
      tokenFile.author!,
      ...as('admin'),
    ]);
    expect(exists.code).toBe(6);
    expect((await okJson<{ items: unknown[] }>(['token', 'list', ...as('admin')])).items.length).toBe(
      list.items.length,
    );
    // A token is never a flag: the option does not exist.
    const flag = await cli(['token', 'list', '--token', ADMIN_TOKEN, '--server', f.server.operatorUrl]);
    expect(flag.code).toBe(2);
    expect(flag.stderr).not.toContain(ADMIN_TOKEN);
  });

  it('uploads a signed release with its payload (author), lists and shows it', async () => {
    const r = await okJson<{
      release: { id: string; status: string; payloads: string[] };
      payloads: unknown[];
    }>(['release', 'upload', '--envelope', envelopePath, '--payload', payloadPath, ...as('author')]);
    expect(r.release.status).toBe('uploaded');
    expect(r.release.payloads).toEqual([sha256hex(readFileSync(payloadPath))]);
    releaseId = r.release.id;
    const list = await ok(['release', 'list', ...as('auditor')]);
    expect(list.stdout).toMatch(/^ID\s+STATUS\s+SEQUENCE/);
    expect(list.stdout).toContain(releaseId);
    const show = await okJson<{ id: string; sequenceNumber: string }>([
      'release',
      'show',
      releaseId,
      ...as('operator'),
    ]);
    expect(show).toMatchObject({ id: releaseId, sequenceNumber: '7' });
    // A missing payload: the server refuses the envelope (422 PAYLOAD_MISSING → exit 4).
    const other = join(dir, 'other.suit');
    writeFileSync(other, await signedRelease(author.privateKey, randomBytes(100), 8));
    const missing = await cli(['release', 'upload', '--envelope', other, ...as('author')]);
    expect(missing.code).toBe(4);
    expect(missing.stderr).toMatch(/^error: CLI_REFUSED: PAYLOAD_MISSING: .*\(HTTP 422\)/);
    // No such release: exit 3.
    const none = await cli(['release', 'show', 'no-such-release', ...as('auditor')]);
    expect(none.code).toBe(3);
    expect(none.stderr).toMatch(/NOT_FOUND/);
  });

  it('refuses a role that may not act with exit 8, and a bad token with exit 8', async () => {
    const denied = await cli(['release', 'approve', releaseId, ...as('auditor')]);
    expect(denied.code).toBe(8);
    expect(denied.stderr).toMatch(
      /^error: CLI_DENIED: FORBIDDEN: role 'auditor' may not release\.approve \(HTTP 403\)/,
    );
    const bad = join(dir, 'bad.token');
    writeFileSync(bad, 'rot_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n');
    const unknown = await cli(['release', 'list', '--server', f.server.operatorUrl, '--token-file', bad]);
    expect(unknown.code).toBe(8);
    expect(unknown.stderr).toMatch(/AUTH_INVALID/);
    const none = await cli(['release', 'list', '--server', f.server.operatorUrl], {
      ROTOR_TOKEN_FILE: undefined,
      ROTOR_TOKEN: undefined,
    });
    expect(none.code).toBe(8);
    expect(none.stderr).toMatch(/AUTH_REQUIRED/);
    // The environment supplies server and token as well.
    const viaEnv = await cli(['release', 'list', '--json'], {
      ROTOR_SERVER: f.server.operatorUrl,
      ROTOR_TOKEN_FILE: undefined,
      ROTOR_TOKEN: readFileSync(tokenFile.auditor!, 'utf8').trim(),
    });
    expect(viaEnv.code).toBe(0);
  });

  it('approves a release (operator); --encryption gcm is refused by a CTR-only server with exit 5', async () => {
    const gcm = await cli(['release', 'approve', releaseId, '--encryption', 'gcm', ...as('operator')]);
    expect(gcm.code).toBe(5);
    expect(gcm.stderr).toMatch(/CLI_UNSUPPORTED/);
    const r = await okJson<{ status: string }>([
      'release',
      'approve',
      releaseId,
      '--encryption',
      'ctr',
      ...as('operator'),
    ]);
    expect(r.status).toBe('approved');
    const again = await ok(['release', 'approve', releaseId, ...as('operator')]);
    expect(again.stdout).toBe(`release ${releaseId} approved\n`);
  });

  it('lists, shows, disables, enables and quarantines devices', async () => {
    const list = await okJson<{ items: { id: string; group: string }[] }>([
      'device',
      'list',
      '--group',
      'lab',
      ...as('operator'),
    ]);
    expect(list.items.map((d) => d.id).sort()).toEqual([...deviceIds].sort());
    const canary = await okJson<{ items: { id: string }[] }>([
      'device',
      'list',
      '--tag',
      'canary',
      ...as('auditor'),
    ]);
    expect(canary.items.map((d) => d.id)).toEqual([deviceIds[0]]);
    const text = await ok(['device', 'list', ...as('operator')]);
    expect(text.stdout).toMatch(/^ID\s+NAME\s+ENABLED\s+GROUP/);
    const shown = await okJson<{ device: { id: string }; policy: { quarantined: boolean } | null }>([
      'device',
      'show',
      deviceIds[3]!,
      ...as('operator'),
    ]);
    expect(shown.device.id).toBe(deviceIds[3]);
    expect(shown.policy?.quarantined ?? false).toBe(false);
    const off = await okJson<{ enabled: boolean }>(['device', 'disable', deviceIds[3]!, ...as('admin')]);
    expect(off.enabled).toBe(false);
    expect((await cli(['device', 'disable', deviceIds[3]!, ...as('operator')])).code).toBe(8);
    const on = await ok(['device', 'enable', deviceIds[3]!, ...as('admin')]);
    expect(on.stdout).toBe(`device ${deviceIds[3]} enabled\n`);
    const q = await okJson<{ quarantined: boolean }>([
      'device',
      'quarantine',
      deviceIds[3]!,
      '--reason',
      'suspicious',
      ...as('operator'),
    ]);
    expect(q.quarantined).toBe(true);
    const shownText = await ok(['device', 'show', deviceIds[3]!, ...as('operator')]);
    expect(shownText.stdout).toMatch(/quarantined\s+yes: suspicious/);
    await ok(['device', 'quarantine', deviceIds[3]!, '--reason', 'cleared', '--lift', ...as('operator')]);
    // Attestation and RoT rotation need a device that reported its RoT chain: these have none (404 → exit 3).
    for (const sub of ['attest', 'rotate-rot']) {
      const r = await cli(['device', sub, deviceIds[1]!, ...as('operator')]);
      expect(r.code, sub).toBe(3);
      expect(r.stderr).toMatch(/NOT_FOUND: device has no recorded RoT chain/);
    }
    const results = await okJson<{ items: unknown[] }>([
      'device',
      'attest',
      deviceIds[1]!,
      '--results',
      ...as('auditor'),
    ]);
    expect(results.items).toEqual([]);
  });

  it('creates a rollout, pauses, watches (exit 4), resumes, cancels', async () => {
    const c = await okJson<{ id: string; assigned: number; state: string; phases: { percent: number }[] }>([
      'rollout',
      'create',
      '--release',
      releaseId,
      '--target',
      'group=lab',
      '--phases',
      '25,100',
      '--failure-threshold',
      '50%',
      '--timeout',
      '2h',
      ...as('operator'),
    ]);
    expect(c).toMatchObject({ state: 'active', assigned: 4 });
    expect(c.phases.map((p) => p.percent)).toEqual([25, 100]);
    const status = await ok(['rollout', 'status', c.id, ...as('auditor')], { NO_COLOR: '1' });
    expect(status.stdout).toMatch(/rollout .* active: 0\/4 succeeded/);
    expect(status.stdout).toMatch(/\* phase 1  25% \[\.{30}\] 0\/1/);
    expect(status.stdout).not.toContain('\x1b');
    expect((await cli(['rollout', 'pause', c.id, ...as('auditor')])).code).toBe(8);
    const paused = await okJson<{ state: string }>(['rollout', 'pause', c.id, ...as('operator')]);
    expect(paused.state).toBe('paused');
    const watch = await cli(['rollout', 'watch', c.id, '--json', ...as('operator')]);
    expect(watch.code).toBe(4);
    expect(watch.stderr).toBe(''); // --json: no progress output
    expect(JSON.parse(watch.stdout)).toMatchObject({
      id: c.id,
      state: 'paused',
      pauseReason: 'paused by operator',
    });
    const watchText = await cli(['rollout', 'watch', c.id, ...as('operator')], { NO_COLOR: '1' });
    expect(watchText.code).toBe(4);
    expect(watchText.stderr).toMatch(/paused: paused by operator/);
    expect(watchText.stderr + watchText.stdout).not.toContain('\x1b');
    expect((await ok(['rollout', 'resume', c.id, ...as('operator')])).stdout).toBe(
      `rollout ${c.id} active\n`,
    );
    const list = await okJson<{ items: { id: string }[] }>(['rollout', 'list', ...as('operator')]);
    expect(list.items.map((r) => r.id)).toContain(c.id);
    await ok(['rollout', 'cancel', c.id, ...as('operator')]);
    const again = await cli(['rollout', 'resume', c.id, ...as('operator')]);
    expect(again.code).toBe(4); // 409 CONFLICT: refused in this state
    expect(again.stderr).toMatch(/CLI_REFUSED: CONFLICT/);
    expect((await cli(['rollout', 'watch', c.id, ...as('operator')])).code).toBe(4);
    // A rollout whose target is empty completes at the server's next evaluation: watch exits 0.
    const empty = await okJson<{ id: string; assigned: number }>([
      'rollout',
      'create',
      '--release',
      releaseId,
      '--target',
      'tag=nobody',
      '--phases',
      '100',
      ...as('operator'),
    ]);
    expect(empty.assigned).toBe(0);
    const done = await cli(['rollout', 'watch', empty.id, '--interval', '200ms', ...as('operator')], {
      NO_COLOR: '1',
    });
    expect(done.code).toBe(0);
    expect(done.stderr).toMatch(/rollout .* completed: 0\/0 succeeded/);
    // create --watch follows the new rollout (--json: just the final state).
    const followed = await cli([
      'rollout',
      'create',
      '--release',
      releaseId,
      '--target',
      'tag=nobody',
      '--phases',
      '100',
      '--watch',
      '--interval',
      '200ms',
      '--json',
      ...as('operator'),
    ]);
    expect(followed.code).toBe(0);
    expect(followed.stderr).toBe('');
    expect(JSON.parse(followed.stdout)).toMatchObject({ state: 'completed' });
    // Usage errors: bad phases and targets exit 2 before anything is sent.
    for (const bad of [
      ['--phases', '50,10,100', '--target', 'all'],
      ['--phases', '10,50', '--target', 'all'],
      ['--phases', '100', '--target', 'all', '--target', 'group=lab'],
      ['--phases', '100', '--target', 'color=red'],
      ['--phases', '100', '--target', 'all', '--failure-threshold', '2'],
    ]) {
      const r = await cli(['rollout', 'create', '--release', releaseId, ...bad, ...as('operator')]);
      expect(r.code, bad.join(' ')).toBe(2);
      expect(r.stderr).toMatch(/usage: rotor rollout create/);
    }
  });

  it('watches a live rollout: a canary succeeds, the next phase fails, the server pauses at the threshold (exit 4)', async () => {
    // Two devices with real client certificates talk to the device API (mutual TLS) as a device agent would.
    const devices: { id: string; client: ReturnType<typeof deviceClient> }[] = [];
    for (let i = 0; i < 2; i++) {
      const cert = await selfSignedCert(`live-${i}`);
      const r = await f.admin.post('/v1/devices', {
        name: `live-${i}`,
        certificatePem: cert.certPem,
        group: 'live',
        keyAgreementKeyPem: generateAgreementKey('P-256')
          .publicKey.export({ type: 'spki', format: 'pem' })
          .toString(),
      });
      expect(r.status).toBe(201);
      devices.push({
        id: (r.json() as { id: string }).id,
        client: deviceClient(f.server.deviceUrl!, f.serverCert, cert),
      });
    }
    const call = (
      d: (typeof devices)[number],
      method: string,
      path: string,
      body?: Uint8Array,
    ): Promise<{ status: number; body: Buffer }> =>
      new Promise((done, fail) => {
        const req = httpsRequest(
          new URL(path, f.server.deviceUrl),
          {
            method,
            agent: d.client.agent,
            headers: body === undefined ? {} : { 'content-type': 'application/suit-report+cbor' },
          },
          (res) => {
            const chunks: Buffer[] = [];
            res.on('data', (c: Buffer) => chunks.push(c));
            res.on('end', () => {
              done({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) });
            });
          },
        );
        req.on('error', fail);
        req.end(body);
      });
    /** Checks in until the server offers an update (a later phase opens at a rollout tick), then reports. */
    const update = async (d: (typeof devices)[number], ok: boolean): Promise<void> => {
      let rolloutId: string | undefined;
      for (let i = 0; i < 200 && rolloutId === undefined; i++) {
        const c = JSON.parse((await call(d, 'POST', '/d/v1/checkin')).body.toString()) as {
          action: string;
          rolloutId?: string;
        };
        if (c.action === 'update') rolloutId = c.rolloutId;
        else await new Promise((res) => setTimeout(res, 50));
      }
      expect(rolloutId).toBeDefined();
      const env = await call(d, 'GET', `/d/v1/rollouts/${rolloutId!}/envelope`);
      expect(env.status).toBe(200);
      const digest = decodeEnvelope(new Uint8Array(env.body)).digest.bytes;
      const report = encodeReport({
        reference: { uri: undefined, digest: { alg: -16, bytes: digest } },
        records: [],
        result: ok
          ? true
          : {
              code: 1,
              reason: ReportReason.conditionFailed,
              record: {
                manifestId: [],
                manifestSection: 20,
                sectionOffset: 0,
                componentIndex: 0,
                properties: new Map(),
              },
            },
      });
      expect((await call(d, 'POST', '/d/v1/reports', report)).status).toBe(200);
    };
    try {
      const c = await okJson<{ id: string; assigned: number }>([
        'rollout',
        'create',
        '--release',
        releaseId,
        '--target',
        'group=live',
        '--phases',
        '50,100',
        '--failure-threshold',
        '0.5',
        ...as('operator'),
      ]);
      expect(c.assigned).toBe(2);
      const watching = cli(['rollout', 'watch', c.id, '--interval', '100ms', ...as('operator')], {
        NO_COLOR: '1',
      });
      // Whichever device the server put in the first phase gets the update first: it succeeds, the other fails.
      const offered: (typeof devices)[number][] = [];
      for (const d of devices) {
        const r = JSON.parse((await call(d, 'POST', '/d/v1/checkin')).body.toString()) as { action: string };
        if (r.action === 'update') offered.push(d);
      }
      expect(offered.length).toBe(1);
      const canary = offered[0]!;
      const other = devices.find((d) => d !== canary)!;
      await update(canary, true);
      await update(other, false);
      const w = await watching;
      expect(w.code).toBe(4);
      expect(w.stderr).toMatch(/rollout .* paused: 1\/2 succeeded, 1 failed/);
      expect(w.stderr).toMatch(/paused: phase 1: 1 of 1 devices failed \(threshold 0\.5\)/);
      expect(w.stderr).toMatch(/ {2}phase 1 {2}50% \[#{30}\] 1\/1/);
      expect(w.stderr).toMatch(/\* phase 2 100% \[x{30}\] 1\/1/);
      expect(w.stderr).not.toContain('\x1b');
    } finally {
      for (const d of devices) d.client.close();
    }
  });

  it('uploads, lists, rolls out and revokes a capability module; revocation show lists it', async () => {
    const wasmPath = join(dir, 'codec.wasm');
    writeFileSync(wasmPath, await buildModule('codec-v1'));
    const mdPath = join(dir, 'codec.json');
    writeFileSync(
      mdPath,
      JSON.stringify({
        name: 'codec',
        version: '1.0.0',
        imports: [],
        limits: { memoryPages: 4, callMs: 500, ioBytes: 16384 },
        deviceClasses: ['sensor-gw-v1'],
        firmware: { min: '2.0.0' },
      }),
    );
    const m = await okJson<{ id: string; name: string; version: string }>([
      'module',
      'upload',
      '--metadata',
      mdPath,
      '--wasm',
      wasmPath,
      ...as('author'),
    ]);
    expect(m).toMatchObject({ name: 'codec', version: '1.0.0' });
    const badMd = join(dir, 'bad.json');
    writeFileSync(badMd, JSON.stringify({ name: 'codec', version: '1.0', limits: {}, firmware: {} }));
    const bad = await cli(['module', 'upload', '--metadata', badMd, '--wasm', wasmPath, ...as('author')]);
    expect(bad.code).toBe(3);
    const list = await okJson<{ items: { id: string }[] }>([
      'module',
      'list',
      '--name',
      'codec',
      ...as('auditor'),
    ]);
    expect(list.items.map((x) => x.id)).toEqual([m.id]);
    await ok(['module', 'show', m.id, ...as('operator')]);
    const mf = await okJson<{ version: number; group: string | null }>([
      'module',
      'manifest',
      '--group',
      'lab',
      '--allow',
      'codec@1.0.0-1.9.9',
      ...as('operator'),
    ]);
    expect(mf.group).toBe('lab');
    const ro = await okJson<{ id: string; moduleId: string; state: string }>([
      'module',
      'rollout',
      m.id,
      '--target',
      'group=lab',
      '--phases',
      '50:1h,100',
      ...as('operator'),
    ]);
    expect(ro).toMatchObject({ moduleId: m.id, state: 'active' });
    const ros = await okJson<{ items: { id: string }[] }>(['module', 'rollouts', ...as('auditor')]);
    expect(ros.items.map((x) => x.id)).toContain(ro.id);
    const st = await okJson<{ id: string; state: string }>([
      'module',
      'rollout-status',
      ro.id,
      ...as('auditor'),
    ]);
    expect(st).toMatchObject({ id: ro.id, state: 'active' });
    await ok(['module', 'rollout-cancel', ro.id, ...as('operator')]);
    const shownDevice = await okJson<{ modules: unknown[] | null }>([
      'device',
      'show',
      deviceIds[0]!,
      ...as('operator'),
    ]);
    expect(shownDevice.modules).toEqual([]);
    expect((await cli(['module', 'revoke', m.id, '--reason', 'cve', ...as('author')])).code).toBe(8);
    const rv = await okJson<{ revoked: boolean }>([
      'module',
      'revoke',
      m.id,
      '--reason',
      'CVE-2026-1',
      ...as('operator'),
    ]);
    expect(rv.revoked).toBe(true);
    const shown = await okJson<{ items: { moduleId: string; reason: string }[] }>([
      'revocation',
      'show',
      ...as('auditor'),
    ]);
    expect(shown.items).toEqual([expect.objectContaining({ moduleId: m.id, reason: 'CVE-2026-1' })]);
  });

  it('--help works at every level (exit 0); unknown commands, subcommands and flags exit 2 with usage', async () => {
    const groups: Record<string, string[]> = {
      release: ['upload', 'list', 'show', 'approve'],
      rollout: ['create', 'list', 'status', 'pause', 'resume', 'cancel', 'watch'],
      device: ['run', 'list', 'show', 'disable', 'enable', 'attest', 'rotate-rot', 'quarantine'],
      module: [
        'upload',
        'list',
        'show',
        'rollout',
        'rollouts',
        'rollout-status',
        'rollout-pause',
        'rollout-resume',
        'rollout-cancel',
        'revoke',
        'manifest',
      ],
      revocation: ['show', 'upload'],
      token: ['create', 'list', 'revoke'],
      manifest: [],
      factory: [],
      audit: [],
    };
    // --json on the file commands too: manifest sign reports what it wrote.
    const opKey = join(dir, 'second.pem');
    writeFileSync(
      opKey,
      generateSigningKey(-7).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    );
    const signed = await cli([
      'manifest',
      'sign',
      envelopePath,
      '--key',
      opKey,
      '-o',
      join(dir, 'cosigned.suit'),
      '--json',
    ]);
    expect(signed.code).toBe(0);
    expect(JSON.parse(signed.stdout)).toMatchObject({ output: join(dir, 'cosigned.suit') });
    const viaHelp = await cli(['help', 'rollout', 'watch']);
    expect(viaHelp.code).toBe(0);
    expect(viaHelp.stdout).toMatch(/^usage: rotor rollout watch/);
    const top = await cli(['--help']);
    expect(top.code).toBe(0);
    expect(top.stdout).toMatch(/8 denied/);
    for (const [g, subs] of Object.entries(groups)) {
      const h = await cli([g, '--help']);
      expect(h.code, `rotor ${g} --help`).toBe(0);
      expect(h.stdout).toMatch(new RegExp(`^usage: rotor ${g}`));
      for (const s of subs) {
        expect(h.stdout).toContain(`  ${s} `);
        const sh = await cli([g, s, '--help']);
        expect(sh.code, `rotor ${g} ${s} --help`).toBe(0);
        expect(sh.stdout).toMatch(new RegExp(`^usage: rotor ${g} ${s}`));
      }
    }
    expect((await cli(['server', '--help'])).code).toBe(0);
    const server = await cli(['server', '--bogus']); // refused by the server's config parser before anything starts
    expect(server.code).toBe(2);
    expect(server.stderr).toMatch(/CONFIG_INVALID[\s\S]*Run 'rotor server --help'/);
    const unknown = await cli(['nope']);
    expect(unknown.code).toBe(2);
    const sub = await cli(['release', 'nope']);
    expect(sub.code).toBe(2);
    expect(sub.stderr).toMatch(/usage: rotor release <subcommand>/);
    const flag = await cli(['device', 'list', '--frobnicate']);
    expect(flag.code).toBe(2);
    expect(flag.stderr).toMatch(/^error: CLI_USAGE: Unknown option '--frobnicate'/);
    expect(flag.stderr).toMatch(/usage: rotor device list/);
    const missing = await cli(['release', 'upload', ...as('author')]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/--envelope is required[\s\S]*usage: rotor release upload/);
    const http = await cli([
      'release',
      'list',
      '--server',
      'http://192.0.2.1:8080',
      '--token-file',
      tokenFile.auditor!,
    ]);
    expect(http.code).toBe(2); // plain http to a non-loopback host would send the token in clear
  });

  it('runs as a real child process (npx node packages/cli/src/main.ts …) with --json', async () => {
    const { stdout, code } = await new Promise<{ stdout: string; code: number }>((done, fail) => {
      execFile(
        'npx',
        [
          'node',
          'packages/cli/src/main.ts',
          'device',
          'list',
          '--group',
          'lab',
          '--json',
          '--server',
          f.server.operatorUrl,
        ],
        { cwd: REPO, env: { ...process.env, ROTOR_TOKEN_FILE: tokenFile.operator, NO_COLOR: '1' } },
        (err, out) => {
          if (err !== null && typeof err.code !== 'number') fail(new Error(err.message));
          else done({ stdout: out, code: err === null ? 0 : Number(err.code) });
        },
      );
    });
    expect(code).toBe(0);
    const parsed = JSON.parse(stdout) as { items: { id: string }[] };
    expect(parsed.items.length).toBe(4);
    const denied = await new Promise<number>((done) => {
      execFile(
        'npx',
        ['node', 'packages/cli/src/main.ts', 'token', 'list', '--server', f.server.operatorUrl],
        { cwd: REPO, env: { ...process.env, ROTOR_TOKEN_FILE: tokenFile.operator } },
        (err) => {
          done(err === null ? 0 : Number(err.code));
        },
      );
    });
    expect(denied).toBe(8);
  });
});

describe('progress output', () => {
  /** A stream that claims to be a terminal and records what is written. */
  function fakeTty(): { stream: NodeJS.WriteStream; text: () => string } {
    let text = '';
    const stream = {
      isTTY: true,
      write(c: string) {
        text += c;
        return true;
      },
    } as unknown as NodeJS.WriteStream;
    return { stream, text: () => text };
  }

  it('colors a terminal unless NO_COLOR is set; redraws in place', async () => {
    const saved = process.env.NO_COLOR;
    try {
      delete process.env.NO_COLOR;
      const colored = fakeTty();
      const p = progressBar('provisioning', { enabled: true, stream: colored.stream });
      p(1, 4);
      p(4, 4);
      expect(colored.text()).toMatch(/\x1b\[32m#+\x1b\[0m/);
      expect(colored.text()).toMatch(/\r\x1b\[2Kprovisioning \[/);
      process.env.NO_COLOR = '1';
      const plain = fakeTty();
      const q = progressBar('provisioning', { enabled: true, stream: plain.stream });
      q(1, 4);
      q(4, 4);
      expect(plain.text()).not.toMatch(/\x1b\[[0-9;]*m/);
      expect(plain.text()).toContain('provisioning [##############################] 4/4\n');
    } finally {
      if (saved === undefined) delete process.env.NO_COLOR;
      else process.env.NO_COLOR = saved;
    }
    await Promise.resolve();
  });

  it('redraws a block of lines in place on a terminal', () => {
    const t = fakeTty();
    const live = new LiveStatus({ enabled: true, stream: t.stream });
    live.update(['one', 'two', 'three']);
    live.update(['one', 'two', 'three']); // unchanged: nothing written
    live.update(['uno', 'dos', 'tres']);
    live.finish(['done']);
    expect(t.text()).toBe(
      '\x1b[2Kone\n\x1b[2Ktwo\n\x1b[2Kthree' +
        '\r\x1b[2A\x1b[2Kuno\n\x1b[2Kdos\n\x1b[2Ktres' +
        '\r\x1b[2A\x1b[2Kdone\n\x1b[2K\n\x1b[2K\x1b[2A\n',
    );
  });

  it('prints plain lines to a non-terminal when the status changed and the interval passed; nothing when disabled', () => {
    let text = '';
    const stream = {
      isTTY: false,
      write(c: string) {
        text += c;
        return true;
      },
    } as unknown as NodeJS.WriteStream;
    let now = 0;
    const live = new LiveStatus({ enabled: true, stream, intervalMs: 1000, now: () => now });
    live.update(['a']);
    live.update(['b']); // within the interval: skipped
    now = 2000;
    live.update(['b']);
    live.update(['b']); // unchanged: skipped
    live.finish(['c']);
    expect(text).toBe('a\nb\nc\n');
    const off = new LiveStatus({ enabled: false, stream });
    off.update(['x']);
    off.finish(['y']);
    expect(text).toBe('a\nb\nc\n');
  });
});
