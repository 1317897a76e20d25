/**
 * The capability server end to end (issue 8; seed 000 steps 3–7): an author uploads modules, an operator issues the
 * capability manifest, a device queries over mutual TLS and its CapabilityManager (@rotor/device) verifies, decrypts
 * and runs what it got; incompatible devices get typed problems; a revoked module is not offered and the signed
 * revocation list unloads it on the device; one device's envelope does not decrypt with another device's key.
 */
import { createPublicKey, randomBytes, type KeyObject } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  Alg,
  encode,
  generateAgreementKey,
  generateSigningKey,
  softwareKeyAgreement,
  softwareKeyUnwrapper,
  softwareVerifier,
  type Verifier,
} from '@rotor/cose';
import { encodeModuleMetadata, MODULE_ABI, type ModuleMetadata, type ModuleVersion } from '@rotor/trust';
import { CapabilityManager, DeviceError, SandboxPool, SimulatedFs } from '@rotor/device';
import { ROLES, rolloutBucket, rolloutPercent, type Role } from '../src/index.ts';
import { buildModule } from '../../device/test/capability-modules/build.ts';
import {
  BACKENDS,
  deviceClient,
  operatorClient,
  selfSignedCert,
  type OperatorClient,
  type Res,
} from './helpers.ts';
import { startFixture, type Fixture } from './fixtures.ts';

const CLASS = 'sensor-gw-v1';
const LOG = [{ module: 'rotor', name: 'log' }];
const VENDOR = 'rotor.example';

function metadata(name: string, version: ModuleVersion, over: Partial<ModuleMetadata> = {}): ModuleMetadata {
  return {
    name,
    version,
    imports: [],
    limits: { memoryPages: 4, callMs: 500, ioBytes: 16384 },
    deviceClasses: [CLASS],
    firmware: { min: [2, 0, 0] },
    dependencies: [],
    abi: MODULE_ABI,
    ...over,
  };
}

const uploadBody = (md: ModuleMetadata, wasm: Uint8Array): Uint8Array =>
  encode([encodeModuleMetadata(md), wasm]);

interface Problem {
  code: string;
  status: number;
}

interface Device {
  id: string;
  agreement: ReturnType<typeof generateAgreementKey>;
  client: ReturnType<typeof deviceClient>;
  post(path: string, body: unknown): Promise<Res>;
}

describe.each(BACKENDS)('capability server on %s', (backend) => {
  let f: Fixture;
  let authority: Verifier;
  const tokens = {} as Record<Role, OperatorClient>;
  const devices: Record<'a' | 'b' | 'cam', Device> = {} as Record<'a' | 'b' | 'cam', Device>;
  const pool = new SandboxPool({ spare: 1 });
  let v1: Uint8Array;
  let v2: Uint8Array;
  const ids: Record<string, string> = {};

  async function register(name: string, attributes: Record<string, string>): Promise<Device> {
    const cert = await selfSignedCert(name);
    const agreement = generateAgreementKey('P-256');
    const r = await f.admin.post('/v1/devices', {
      name,
      certificatePem: cert.certPem,
      attributes,
      keyAgreementKeyPem: agreement.publicKey.export({ type: 'spki', format: 'pem' }).toString(),
    });
    expect(r.status).toBe(201);
    const client = deviceClient(f.server.deviceUrl!, f.serverCert, cert);
    const post = (path: string, body: unknown): Promise<Res> => postVia(client, path, body);
    return { id: (r.json() as { id: string }).id, agreement, client, post };
  }

  function postVia(client: ReturnType<typeof deviceClient>, path: string, body: unknown): Promise<Res> {
    return client.post(path, JSON.stringify(body), 'application/json');
  }

  function manager(d: Device, manifest: Uint8Array): Promise<CapabilityManager> {
    return CapabilityManager.open({
      fs: new SimulatedFs(),
      device: { vendorDomain: VENDOR, deviceClass: CLASS, firmwareVersion: [2, 4, 0] },
      keys: { agreements: [softwareKeyAgreement(d.agreement.privateKey)] },
      manifestAuthorities: [authority],
      revocationAuthorities: [authority],
      initialCapabilityManifest: manifest,
      pool,
      now: () => Math.floor(Date.now() / 1000),
    });
  }

  interface Answer {
    moduleId: string;
    version: string;
    envelope: string;
    payloadUrl: string;
    requires: { name: string; version: string }[];
  }

  async function query(d: Device, capability: string, extra: Record<string, unknown> = {}): Promise<Res> {
    return d.post('/d/v1/capabilities/query', { capability, ...extra });
  }

  async function install(m: CapabilityManager, d: Device, a: Answer): Promise<void> {
    const payload = await d.client.get(a.payloadUrl);
    expect(payload.status).toBe(200);
    await m.install(new Uint8Array(Buffer.from(a.envelope, 'base64')), {
      payloads: new Map([[a.payloadUrl, new Uint8Array(payload.body)]]),
    });
  }

  beforeAll(async () => {
    // File keys (--capability-signing-key / --capability-authority-key), as a deployment configures them.
    const dir = mkdtempSync(join(tmpdir(), 'rotor-cap-'));
    const pemOf = (k: KeyObject): string => k.export({ type: 'pkcs8', format: 'pem' }).toString();
    writeFileSync(join(dir, 'signing.pem'), pemOf(generateSigningKey(-7).privateKey), { mode: 0o600 });
    writeFileSync(join(dir, 'authority.pem'), pemOf(generateSigningKey(-8).privateKey), { mode: 0o600 });
    f = await startFixture(backend, {
      env: {
        ROTOR_CAPABILITY_SIGNING_KEY_FILE: join(dir, 'signing.pem'),
        ROTOR_CAPABILITY_AUTHORITY_KEY_FILE: join(dir, 'authority.pem'),
      },
    });
    for (const role of ROLES) {
      const r = await f.admin.post('/v1/tokens', { name: `${role} token`, role });
      tokens[role] = operatorClient(f.server.operatorUrl, (r.json() as { token: string }).token);
    }
    // Provisioning reads the authority's public key from the server (seed 000 step 1).
    const pub = (await tokens.auditor.get('/v1/capabilities/keys')).json() as Record<
      'signing' | 'authority',
      { kid: string; alg: number; spki: string }
    >;
    const verifierOf = (k: { kid: string; alg: number; spki: string }): Verifier =>
      softwareVerifier(
        createPublicKey({ key: Buffer.from(k.spki, 'base64'), format: 'der', type: 'spki' }),
        k.alg,
        new Uint8Array(Buffer.from(k.kid, 'hex')),
      );
    authority = verifierOf(pub.authority);
    expect(pub.authority.alg).toBe(-8);
    devices.a = await register('cap-a', { deviceClass: CLASS, firmwareVersion: '2.4.0' });
    devices.b = await register('cap-b', { deviceClass: CLASS, firmwareVersion: '2.4.0' });
    devices.cam = await register('cap-cam', { deviceClass: 'camera-v1', firmwareVersion: '2.4.0' });
    v1 = await buildModule('codec-v1');
    v2 = await buildModule('codec-v2');
  });
  afterAll(async () => {
    for (const d of Object.values(devices)) d.client.close();
    await pool.close();
    await f.close();
  });

  it('uploads modules (author), refuses an undeclared import and an author-less role', async () => {
    let r = await tokens.author.post(
      '/v1/capabilities/modules',
      uploadBody(metadata('codec', [1, 0, 0]), v1),
      'application/octet-stream',
    );
    expect(r.status).toBe(201);
    ids.v1 = (r.json() as { id: string }).id;
    r = await tokens.author.post(
      '/v1/capabilities/modules',
      uploadBody(metadata('codec', [2, 0, 0], { imports: LOG }), v2),
      'application/octet-stream',
    );
    expect(r.status).toBe(201);
    const info = r.json() as { id: string; sequenceNumber: number; version: string };
    expect(info).toMatchObject({ version: '2.0.0', sequenceNumber: 2 });
    ids.v2 = info.id;
    // The same binary again: one catalog entry per binary.
    r = await tokens.author.post(
      '/v1/capabilities/modules',
      uploadBody(metadata('codec', [2, 0, 0], { imports: LOG }), v2),
      'application/octet-stream',
    );
    expect((r.json() as Problem).code).toBe('ALREADY_EXISTS');
    // A module importing a host function its metadata does not declare (its permissions) is refused.
    const bad = await buildModule('undeclared', { IMPORT_MODULE: 'rotor', IMPORT_NAME: 'random_u32' });
    r = await tokens.author.post(
      '/v1/capabilities/modules',
      uploadBody(metadata('filter', [1, 0, 0]), bad),
      'application/octet-stream',
    );
    expect(r.status).toBe(422);
    expect((r.json() as Problem).code).toBe('CAP_MODULE_INVALID');
    r = await tokens.author.post(
      '/v1/capabilities/modules',
      encode([new Uint8Array([1]), new Uint8Array([0, 1, 2])]),
      'application/octet-stream',
    );
    expect((r.json() as Problem).code).toBe('CAP_MODULE_INVALID');
    r = await tokens.operator.post(
      '/v1/capabilities/modules',
      uploadBody(metadata('codec', [3, 0, 0]), v1),
      'application/octet-stream',
    );
    expect(r.status).toBe(403);
    // The ciphertext is stored once, the plaintext never.
    const rows = await f.t.db.query<{ n: number }>(
      'SELECT count(*)::int AS n FROM blobs b JOIN capability_modules m ON m.ciphertext_sha256 = b.sha256',
    );
    expect(rows[0]!.n).toBe(2);
  });

  it('without a capability manifest a device gets CAP_MANIFEST_MISSING', async () => {
    const r = await query(devices.a, 'codec');
    expect(r.status).toBe(404);
    expect((r.json() as Problem).code).toBe('CAP_MANIFEST_MISSING');
  });

  it('issues the capability manifest; the device installs and calls the module it is offered', async () => {
    const r = await tokens.operator.post('/v1/capabilities/manifests', {
      group: null,
      modules: [{ name: 'codec' }],
    });
    expect(r.status).toBe(201);
    const man = await devices.a.client.get('/d/v1/capabilities/manifest');
    expect(man.status).toBe(200);
    const m = await manager(devices.a, new Uint8Array(man.body));
    try {
      const q = await query(devices.a, 'codec');
      expect(q.status).toBe(200);
      const a = q.json() as Answer;
      expect(a).toMatchObject({ moduleId: ids.v2, version: '2.0.0', requires: [] });
      await install(m, devices.a, a);
      const out = await m.call('codec', new Uint8Array([1, 2, 3]));
      expect([...out.output]).toEqual([2, 3, 2, 1]);
      expect(out.version).toEqual([2, 0, 0]);
    } finally {
      await m.close();
    }
  });

  it("another device's envelope does not decrypt with this device's key", async () => {
    const man = await devices.a.client.get('/d/v1/capabilities/manifest');
    const m = await manager(devices.a, new Uint8Array(man.body));
    try {
      const b = (await query(devices.b, 'codec')).json() as Answer;
      const err = await install(m, devices.a, b).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(DeviceError);
      expect((err as DeviceError).code).toBe('CAP_DECRYPT');
      expect(m.status()).toEqual([]);
    } finally {
      await m.close();
    }
  });

  it('a device registered with an AES-KW key-encryption key gets its key wrapped under it', async () => {
    const cert = await selfSignedCert('cap-kek');
    const kek = randomBytes(16);
    const r = await f.admin.post('/v1/devices', {
      name: 'cap-kek',
      certificatePem: cert.certPem,
      attributes: { deviceClass: CLASS, firmwareVersion: '2.4.0' },
      kek: kek.toString('hex'),
    });
    expect(r.status).toBe(201);
    const client = deviceClient(f.server.deviceUrl!, f.serverCert, cert);
    const d: Device = {
      id: (r.json() as { id: string }).id,
      agreement: devices.a.agreement,
      client,
      post: (path, body) => postVia(client, path, body),
    };
    try {
      const a = (await query(d, 'codec')).json() as Answer;
      const man = await client.get('/d/v1/capabilities/manifest');
      const m = await CapabilityManager.open({
        fs: new SimulatedFs(),
        device: { vendorDomain: VENDOR, deviceClass: CLASS, firmwareVersion: [2, 4, 0] },
        keys: { unwrappers: [softwareKeyUnwrapper(new Uint8Array(kek), Alg.A128KW)] },
        manifestAuthorities: [authority],
        revocationAuthorities: [authority],
        initialCapabilityManifest: new Uint8Array(man.body),
        pool,
        now: () => Math.floor(Date.now() / 1000),
      });
      try {
        await install(m, d, a);
        expect((await m.call('codec', new Uint8Array([7]))).output).toEqual(new Uint8Array([2, 7]));
      } finally {
        await m.close();
      }
    } finally {
      client.close();
    }
  });

  it('typed problems: incompatible device class, unauthorized capability, unknown capability', async () => {
    let r = await query(devices.cam, 'codec');
    expect(r.status).toBe(422);
    expect((r.json() as Problem).code).toBe('CAP_INCOMPATIBLE');
    // The registry's firmware version wins over the body's; a device without one must send it.
    r = await query(devices.a, 'codec', { firmwareVersion: '1.0.0' });
    expect(r.status).toBe(200);
    r = await query(devices.a, 'nothing');
    expect((r.json() as Problem).code).toBe('CAP_NOT_FOUND');
    const up = await tokens.author.post(
      '/v1/capabilities/modules',
      uploadBody(metadata('filter', [1, 0, 0]), v1),
      'application/octet-stream',
    );
    expect(up.status).toBe(201);
    r = await query(devices.a, 'filter');
    expect(r.status).toBe(403);
    expect((r.json() as Problem).code).toBe('CAP_NOT_AUTHORIZED');
    r = await query(devices.a, 'Bad Name');
    expect(r.status).toBe(400);
  });

  it('dependencies: a module whose dependency nothing satisfies is not offered', async () => {
    await tokens.operator.post('/v1/capabilities/manifests', {
      group: null,
      modules: [{ name: 'codec' }, { name: 'app' }],
    });
    const up = await tokens.author.post(
      '/v1/capabilities/modules',
      uploadBody(metadata('app', [1, 0, 0], { dependencies: [{ name: 'codec', min: [9, 0, 0] }] }), v1),
      'application/octet-stream',
    );
    expect(up.status).toBe(201);
    let r = await query(devices.a, 'app');
    expect((r.json() as Problem).code).toBe('CAP_DEPENDENCY_UNSATISFIED');
    // Satisfied by what the device already runs.
    r = await query(devices.a, 'app', { installed: [{ name: 'codec', version: '9.1.0' }] });
    expect(r.status).toBe(200);
    const up2 = await tokens.author.post(
      '/v1/capabilities/modules',
      uploadBody(
        metadata('app', [1, 1, 0], { imports: LOG, dependencies: [{ name: 'codec', min: [1, 0, 0] }] }),
        v2,
      ),
      'application/octet-stream',
    );
    expect(up2.status).toBe(201);
    r = await query(devices.a, 'app');
    expect(r.json()).toMatchObject({ version: '1.1.0', requires: [{ name: 'codec', version: '2.0.0' }] });
  });

  it('a revoked module is not offered; the signed revocation list reaches the device and unloads it', async () => {
    const man = await devices.a.client.get('/d/v1/capabilities/manifest');
    const m = await manager(devices.a, new Uint8Array(man.body));
    try {
      await install(m, devices.a, (await query(devices.a, 'codec')).json() as Answer);
      expect(m.status().map((s) => s.version)).toEqual(['2.0.0']);
      const first = await devices.a.client.get('/d/v1/capabilities/revocations');
      expect(first.status).toBe(200);
      await m.applyRevocationList(new Uint8Array(first.body));
      expect(m.status()).toHaveLength(1);

      const rv = await tokens.operator.post(`/v1/capabilities/modules/${ids.v2}/revoke`, {
        reason: 'CVE-test',
      });
      expect(rv.status).toBe(200);
      expect(rv.json()).toMatchObject({ revoked: true, revokeReason: 'CVE-test' });
      expect(
        (await tokens.operator.post(`/v1/capabilities/modules/${ids.v2}/revoke`, { reason: 'x' })).status,
      ).toBe(409);
      const q = (await query(devices.a, 'codec')).json() as Answer;
      expect(q).toMatchObject({ moduleId: ids.v1, version: '1.0.0' });
      // The revoked ciphertext is no longer served.
      const ct = (await tokens.auditor.get(`/v1/capabilities/modules/${ids.v2}`)).json() as {
        ciphertextSha256: string;
      };
      expect((await devices.a.client.get(`/d/v1/capabilities/payloads/${ct.ciphertextSha256}`)).status).toBe(
        404,
      );

      const list = await devices.a.client.get('/d/v1/capabilities/revocations');
      expect(list.headers['content-type']).toMatch(/rotor-module-revocation\+cbor/);
      const { unloaded } = await m.applyRevocationList(new Uint8Array(list.body));
      expect(unloaded).toEqual(['codec']);
      expect(m.status()).toEqual([]);
    } finally {
      await m.close();
    }
  });

  it('firmware range, group manifests and quarantine', async () => {
    // A newer module for firmware >= 3 is not offered to firmware 2.4.0.
    let up = await tokens.author.post(
      '/v1/capabilities/modules',
      uploadBody(
        metadata('codec', [3, 0, 0], { firmware: { min: [3, 0, 0] } }),
        await buildModule('codec-v1', { '0x55': '0x66' }),
      ),
      'application/octet-stream',
    );
    expect(up.status).toBe(201);
    expect(((await query(devices.a, 'codec')).json() as Answer).version).toBe('1.0.0');
    up = await tokens.author.post(
      '/v1/capabilities/modules',
      uploadBody(metadata('sensor', [1, 0, 0], { firmware: { min: [3, 0, 0] } }), v1),
      'application/octet-stream',
    );
    await tokens.operator.post('/v1/capabilities/manifests', {
      group: null,
      modules: [{ name: 'codec' }, { name: 'sensor' }],
    });
    expect((await query(devices.a, 'sensor')).json()).toMatchObject({ code: 'CAP_INCOMPATIBLE' });
    // A group's own manifest wins over the default one; the device picks it up as an update.
    const m = await manager(
      devices.b,
      new Uint8Array((await devices.b.client.get('/d/v1/capabilities/manifest')).body),
    );
    try {
      expect((await f.admin.patch(`/v1/devices/${devices.b.id}`, { group: 'lab' })).status).toBe(200);
      const r = await tokens.operator.post('/v1/capabilities/manifests', {
        group: 'lab',
        modules: [{ name: 'codec', maxVersion: '1.9.9' }],
      });
      expect(r.json()).toMatchObject({ group: 'lab' });
      const man = await devices.b.client.get('/d/v1/capabilities/manifest');
      await m.updateCapabilityManifest(new Uint8Array(man.body));
      const q = (await query(devices.b, 'codec')).json() as Answer;
      expect(q.version).toBe('1.0.0');
      await install(m, devices.b, q);
      expect((await m.call('codec', new Uint8Array([0]))).output).toEqual(new Uint8Array([1, 0x55]));
      // The default group is untouched by the group's manifest.
      expect(((await query(devices.a, 'codec')).json() as Answer).version).toBe('1.0.0');
    } finally {
      await m.close();
    }
    // Quarantine (issue 7 policy): nothing new is offered.
    expect(
      (
        await tokens.operator.put(`/v1/devices/${devices.b.id}/quarantine`, {
          quarantined: true,
          reason: 't',
        })
      ).status,
    ).toBe(200);
    const qr = await query(devices.b, 'codec');
    expect(qr.status).toBe(403);
    expect((qr.json() as Problem).code).toBe('CAP_DEVICE_QUARANTINED');
    expect((await devices.b.client.get('/d/v1/capabilities/revocations')).status).toBe(200);
  });

  it('phased rollouts: a module under rollout reaches only its target; cancelled, nobody', async () => {
    const up = await tokens.author.post(
      '/v1/capabilities/modules',
      uploadBody(metadata('codec', [4, 0, 0]), await buildModule('codec-v1', { '0x55': '0x77' })),
      'application/octet-stream',
    );
    const v4 = (up.json() as { id: string }).id;
    // Aimed at another device only: device a keeps getting 1.0.0.
    let r = await tokens.operator.post('/v1/capabilities/rollouts', {
      moduleId: v4,
      target: { deviceIds: [devices.b.id] },
      phases: [{ percent: 100, durationMs: 3_600_000 }],
    });
    expect(r.status).toBe(201);
    const other = r.json() as { id: string; currentPercent: number };
    expect(other.currentPercent).toBe(100);
    expect(((await query(devices.a, 'codec')).json() as Answer).version).toBe('1.0.0');
    r = await tokens.operator.post('/v1/capabilities/rollouts', {
      moduleId: v4,
      target: {},
      phases: [{ percent: 100, durationMs: 0 }],
    });
    expect((r.json() as Problem).code).toBe('CONFLICT');
    expect((await tokens.operator.post(`/v1/capabilities/rollouts/${other.id}/cancel`)).status).toBe(200);
    // Aimed at the device class, whole target at once.
    r = await tokens.operator.post('/v1/capabilities/rollouts', {
      moduleId: v4,
      target: { attributes: { deviceClass: CLASS } },
      phases: [{ percent: 100, durationMs: 0 }],
    });
    expect(r.status).toBe(201);
    expect(((await query(devices.a, 'codec')).json() as Answer).version).toBe('4.0.0');
    const list = (await tokens.auditor.get('/v1/capabilities/rollouts')).json() as {
      items: { state: string }[];
    };
    // A last phase of no duration and no threshold completes the rollout at once (the target keeps the module).
    expect(list.items.map((i) => i.state).sort()).toEqual(['cancelled', 'completed']);
    r = await tokens.operator.post('/v1/capabilities/rollouts', {
      moduleId: v4,
      target: {},
      phases: [{ percent: 50, durationMs: 1000 }],
    });
    expect((r.json() as Problem).code).toBe('REQUEST_INVALID');
  });

  it('rollout arithmetic: cumulative percent per phase, stable uniform buckets', () => {
    const phases = [
      { percent: 10, durationMs: 1000 },
      { percent: 50, durationMs: 1000 },
      { percent: 100, durationMs: 0 },
    ];
    expect([0, 999, 1000, 1999, 2000, 1e9].map((t) => rolloutPercent(phases, t))).toEqual([
      10, 10, 50, 50, 100, 100,
    ]);
    const buckets = Array.from({ length: 2000 }, (_, i) => rolloutBucket('r1', `d${i}`));
    expect(buckets.every((b) => b >= 0 && b < 100)).toBe(true);
    const under10 = buckets.filter((b) => b < 10).length;
    expect(under10).toBeGreaterThan(120);
    expect(under10).toBeLessThan(290);
    expect(rolloutBucket('r1', 'd1')).toBe(rolloutBucket('r1', 'd1'));
  });

  it('lists modules and manifests; every change is in the audit log', async () => {
    const l = (await tokens.auditor.get('/v1/capabilities/modules?name=codec')).json() as {
      items: { version: string; revoked: boolean }[];
    };
    expect(l.items.map((i) => [i.version, i.revoked]).sort()).toEqual([
      ['1.0.0', false],
      ['2.0.0', true],
      ['3.0.0', false],
      ['4.0.0', false],
    ]);
    const ms = (await tokens.auditor.get('/v1/capabilities/manifests')).json() as { items: unknown[] };
    expect(ms.items.length).toBeGreaterThanOrEqual(2);
    const audit = (await tokens.auditor.get('/v1/audit?limit=1000')).body.toString();
    for (const a of [
      'capability.upload',
      'capability.manifest',
      'capability.revoke',
      'capability.rollout',
      'capability.revocations.reissue',
    ])
      expect(audit).toContain(a);
  });
});
