/**
 * Capability modules end to end across a real fleet server (packages/server in process, PGlite, mutual-TLS device
 * listener; imported by tests only) and devices (agent on a real directory, status tracker, CapabilityManager with
 * sealed archives): issue 8 / seed 000 steps 3–7.
 *
 * The operator rolls a module out to a device group; each device's tracker asks the capability server for the
 * capability with its identity (client certificate), firmware version and device class, fetches the ciphertext over
 * the same channel, installs it and reports the outcome (signed SUIT report) — the rollout counts it. A second
 * version is hot-swapped on one device under continuous calls (zero failed calls, each call answered by exactly one
 * version). The second version is then revoked and the list reaches one device: unloaded at once, never loaded again
 * (a replayed envelope is refused, a reboot does not bring it back), the other device still runs it until it syncs.
 * The boot stage verifies the OS image and every module before running them: a tampered module is refused at boot.
 */
import { createPublicKey, randomBytes, type KeyObject } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  Alg,
  encode,
  generateAgreementKey,
  generateSigningKey,
  softwareKeyAgreement,
  softwareSigner,
  softwareVerifier,
  type Signer,
  type Verifier,
} from '@rotor/cose';
import { encodeModuleMetadata, MODULE_ABI, type ModuleMetadata, type ModuleVersion } from '@rotor/trust';
import {
  AtomicStore,
  bootWithCapabilities,
  decodeIndex,
  deriveSealingKeys,
  INDEX_BLOB,
  nodeFs,
  SandboxPool,
  sealingKeyArchiveSealer,
  StatusTracker,
  type CapabilityClientEvent,
  type CapabilityEvent,
  type CapabilityManager,
  type CapabilityManagerOptions,
} from '../src/index.ts';
import { buildModule } from './capability-modules/build.ts';
import { codecV1, codecV2 } from './capability-fixture.ts';
import { deviceDir, type DeviceDir } from './tracker-fixture.ts';
import {
  deviceClient,
  operatorClient,
  selfSignedCert,
  type OperatorClient,
  type TestCert,
} from '../../server/test/helpers.ts';
import { startFixture, type Fixture } from '../../server/test/fixtures.ts';

const CLASS = 'sensor-gw-v1';
const LOG = [{ module: 'rotor', name: 'log' }];

function metadata(version: ModuleVersion): ModuleMetadata {
  return {
    name: 'codec',
    version,
    imports: LOG,
    limits: { memoryPages: 4, callMs: 500, ioBytes: 16384 },
    deviceClasses: [CLASS],
    firmware: { min: [1, 0, 0] },
    dependencies: [],
    abi: MODULE_ABI,
  };
}

interface Device {
  id: string;
  cert: TestCert;
  signer: Signer;
  agreement: ReturnType<typeof generateAgreementKey>;
  dir: DeviceDir;
  options: CapabilityManagerOptions;
  manager: CapabilityManager;
  tracker: StatusTracker;
  events: CapabilityEvent[];
  reports: CapabilityClientEvent[];
}

describe('capability modules end to end: server and devices', () => {
  let f: Fixture;
  let author: OperatorClient;
  let operator: OperatorClient;
  let auditor: OperatorClient;
  let authority: Verifier;
  const pool = new SandboxPool({ spare: 2 });
  const devices: Device[] = [];
  const ids: Record<string, string> = {};

  async function token(role: string): Promise<OperatorClient> {
    const r = await f.admin.post('/v1/tokens', { name: `${role} token`, role });
    return operatorClient(f.server.operatorUrl, (r.json() as { token: string }).token);
  }

  /** A raw device request (same certificate as the tracker), for the replay check. */
  function devicePost(d: Device, path: string, body: unknown): Promise<{ status: number; json: unknown }> {
    const client = deviceClient(f.server.deviceUrl!, f.serverCert, d.cert);
    return new Promise((resolve, reject) => {
      const req = httpsRequest(
        new URL(path, f.server.deviceUrl),
        { method: 'POST', agent: client.agent, headers: { 'content-type': 'application/json' } },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            client.close();
            resolve({
              status: res.statusCode ?? 0,
              json: JSON.parse(Buffer.concat(chunks).toString('utf8')),
            });
          });
        },
      );
      req.on('error', reject);
      req.end(JSON.stringify(body));
    });
  }

  async function device(name: string): Promise<Device> {
    const cert = await selfSignedCert(name);
    const rk = generateSigningKey(Alg.ESP256);
    const agreement = generateAgreementKey('P-256');
    const pem = (k: KeyObject): string => k.export({ type: 'spki', format: 'pem' }).toString();
    const r = await f.admin.post('/v1/devices', {
      name,
      certificatePem: cert.certPem,
      group: 'trackers',
      keyAgreementKeyPem: pem(agreement.publicKey),
      reportKeyPem: pem(rk.publicKey),
      reportKeyAlg: 'ESP256',
    });
    expect(r.status).toBe(201);
    const signer = softwareSigner(rk.privateKey, Alg.ESP256);
    const dir = await deviceDir({ reportSigner: signer });
    // Provisioning (seed 000 step 1): the capability manifest the device starts with, from the server.
    const client = deviceClient(f.server.deviceUrl!, f.serverCert, cert);
    const manifest = await client.get('/d/v1/capabilities/manifest');
    client.close();
    expect(manifest.status).toBe(200);
    const events: CapabilityEvent[] = [];
    const reports: CapabilityClientEvent[] = [];
    const options: CapabilityManagerOptions = {
      fs: nodeFs(dir.dir),
      dir: 'capabilities',
      device: { vendorDomain: 'rotor.example', deviceClass: CLASS, firmwareVersion: [2, 4, 0] },
      keys: { agreements: [softwareKeyAgreement(agreement.privateKey)] },
      manifestAuthorities: [authority],
      revocationAuthorities: [authority],
      initialCapabilityManifest: new Uint8Array(manifest.body),
      pool,
      sealer: sealingKeyArchiveSealer(deriveSealingKeys(randomBytes(32)).seal),
      onEvent: (e) => events.push(e),
    };
    const { manager } = await bootWithCapabilities(dir.agent, options);
    const d: Device = {
      id: (r.json() as { id: string }).id,
      cert,
      signer,
      agreement,
      dir,
      options,
      manager,
      tracker: tracker(cert, dir, manager, reports),
      events,
      reports,
    };
    return d;
  }

  function tracker(
    cert: TestCert,
    dir: DeviceDir,
    manager: CapabilityManager,
    reports: CapabilityClientEvent[],
  ): StatusTracker {
    return new StatusTracker({
      agent: dir.agent,
      server: {
        url: f.server.deviceUrl!,
        identity: { cert: cert.certPem, key: cert.keyPem },
        ca: f.serverCert.certPem,
        timeoutMs: 20_000,
      },
      interval: { defaultMs: 3_600_000 },
      fallbackSource: 'none',
      capabilities: manager,
      onCapabilityEvent: (e) => reports.push(e),
    });
  }

  async function upload(version: ModuleVersion, wasm: Uint8Array): Promise<string> {
    const r = await author.post(
      '/v1/capabilities/modules',
      encode([encodeModuleMetadata(metadata(version)), wasm]),
      'application/octet-stream',
    );
    expect(r.status, r.body.toString()).toBe(201);
    return (r.json() as { id: string }).id;
  }

  async function rollout(id: string): Promise<{ state: string; counts: Record<string, number> }> {
    return (await auditor.get(`/v1/capabilities/rollouts/${id}`)).json() as {
      state: string;
      counts: Record<string, number>;
    };
  }

  beforeAll(async () => {
    const dir = mkdtempSync(join(tmpdir(), 'rotor-cape2e-'));
    const pemOf = (k: KeyObject): string => k.export({ type: 'pkcs8', format: 'pem' }).toString();
    writeFileSync(join(dir, 'signing.pem'), pemOf(generateSigningKey(-7).privateKey), { mode: 0o600 });
    writeFileSync(join(dir, 'authority.pem'), pemOf(generateSigningKey(-7).privateKey), { mode: 0o600 });
    f = await startFixture('pglite', {
      env: {
        ROTOR_CAPABILITY_SIGNING_KEY_FILE: join(dir, 'signing.pem'),
        ROTOR_CAPABILITY_AUTHORITY_KEY_FILE: join(dir, 'authority.pem'),
      },
    });
    author = await token('author');
    operator = await token('operator');
    auditor = await token('auditor');
    const pub = (await auditor.get('/v1/capabilities/keys')).json() as {
      authority: { kid: string; alg: number; spki: string };
    };
    authority = softwareVerifier(
      createPublicKey({ key: Buffer.from(pub.authority.spki, 'base64'), format: 'der', type: 'spki' }),
      pub.authority.alg,
      new Uint8Array(Buffer.from(pub.authority.kid, 'hex')),
    );
    expect(
      (await operator.post('/v1/capabilities/manifests', { group: 'trackers', modules: [{ name: 'codec' }] }))
        .status,
    ).toBe(201);
    devices.push(await device('cap-e2e-a'), await device('cap-e2e-b'));
  });
  afterAll(async () => {
    for (const d of devices) {
      await d.tracker.stop();
      await d.manager.close();
      d.dir.remove();
    }
    await pool.close();
    await f.close();
  });

  it('a module rolled out to a group: each device asks, installs over mutual TLS and reports; the rollout counts it', async () => {
    ids.v1 = await upload([1, 0, 0], await buildModule('codec-v1'));
    let r = await operator.post('/v1/capabilities/rollouts', {
      moduleId: ids.v1,
      target: { group: 'trackers' },
      phases: [{ percent: 100, durationMs: 0, successThreshold: 1 }],
    });
    expect(r.status).toBe(201);
    ids.r1 = (r.json() as { id: string }).id;
    for (const d of devices) {
      const out = await d.tracker.capability('codec');
      expect(out).toMatchObject({ ok: true, name: 'codec', version: '1.0.0' });
      const res = await d.manager.call('codec', new Uint8Array([1, 2]));
      expect([...res.output]).toEqual([...codecV1(new Uint8Array([1, 2]))]);
      expect(d.reports).toContainEqual({ kind: 'report-delivered', transition: 'installed', status: 200 });
    }
    const ro = await rollout(ids.r1);
    expect(ro.counts).toMatchObject({ total: 2, installed: 2 });
    expect(ro.state).toBe('completed');
    r = await auditor.get(`/v1/capabilities/devices/${devices[0]!.id}/modules`);
    expect((r.json() as { items: unknown[] }).items).toEqual([
      expect.objectContaining({ name: 'codec', version: '1.0.0', state: 'installed' }),
    ]);
  });

  it('a second version is hot-swapped under continuous calls: zero failed calls, each answered by one version', async () => {
    ids.v2 = await upload([2, 0, 0], await buildModule('codec-v2'));
    const r = await operator.post('/v1/capabilities/rollouts', {
      moduleId: ids.v2,
      target: { group: 'trackers' },
      phases: [{ percent: 100, durationMs: 0, successThreshold: 1 }],
    });
    ids.r2 = (r.json() as { id: string }).id;
    const a = devices[0]!;
    let stop = false;
    let failed = 0;
    const seen: string[] = [];
    const load = (async () => {
      let i = 0;
      while (!stop) {
        const input = new Uint8Array([i & 0xff, (i >> 8) & 0xff, 7]);
        i++;
        try {
          const res = await a.manager.call('codec', input);
          const v = res.version.join('.');
          const want = v === '1.0.0' ? codecV1(input) : v === '2.0.0' ? codecV2(input) : undefined;
          if (want === undefined || Buffer.compare(Buffer.from(res.output), Buffer.from(want)) !== 0)
            failed++;
          seen.push(v);
        } catch {
          failed++;
        }
      }
    })();
    // Let calls flow on 1.0.0 first.
    while (seen.length < 20) await new Promise((res) => setTimeout(res, 5));
    const out = await a.tracker.capability('codec');
    expect(out).toMatchObject({ ok: true, version: '2.0.0' });
    const at = seen.length;
    while (seen.length < at + 20) await new Promise((res) => setTimeout(res, 5));
    stop = true;
    await load;
    expect(failed).toBe(0);
    expect(seen[0]).toBe('1.0.0');
    expect(seen.at(-1)).toBe('2.0.0');
    // Once 2.0.0 answered, 1.0.0 never answers again (the switch is one assignment).
    expect(seen.slice(seen.indexOf('2.0.0')).every((v) => v === '2.0.0')).toBe(true);
    await a.manager.settle();
    expect(a.manager.status()[0]).toMatchObject({ version: '2.0.0', archives: [{ version: '1.0.0' }] });
    expect(await devices[1]!.tracker.capability('codec')).toMatchObject({ ok: true, version: '2.0.0' });
    expect((await rollout(ids.r2)).counts).toMatchObject({ installed: 2 });
  });

  it('revoked: the list reaches one device, which unloads at once and never loads it again', async () => {
    const [a, b] = [devices[0]!, devices[1]!];
    // What a replaying attacker (or a stale cache) would hand the device later: a v2 envelope for it.
    const q = await devicePost(a, '/d/v1/capabilities/query', {
      capability: 'codec',
      firmwareVersion: '2.4.0',
      deviceClass: CLASS,
    });
    const stale = q.json as { envelope: string; payloadUrl: string; version: string };
    expect(stale.version).toBe('2.0.0');
    const cdev = deviceClient(f.server.deviceUrl!, f.serverCert, a.cert);
    const payload = new Uint8Array((await cdev.get(stale.payloadUrl)).body);
    cdev.close();

    const r = await operator.post(`/v1/capabilities/modules/${ids.v2}/revoke`, {
      reason: 'crashes in the field',
    });
    expect(r.status).toBe(200);
    expect(await a.tracker.syncCapabilities()).toEqual({ revoked: ['codec'], unauthorized: [] });
    await expect(a.manager.call('codec', new Uint8Array([1]))).rejects.toMatchObject({ code: 'CAP_REVOKED' });
    expect(a.events).toContainEqual(
      expect.objectContaining({ type: 'unloaded', name: 'codec', version: '2.0.0', reason: 'revoked' }),
    );
    // The other device has not synced yet: it still runs 2.0.0.
    expect((await b.manager.call('codec', new Uint8Array([1]))).version).toEqual([2, 0, 0]);
    // The unload was reported.
    const mods = (await auditor.get(`/v1/capabilities/devices/${a.id}/modules`)).json() as {
      items: { state: string; version: string }[];
    };
    expect(mods.items).toEqual([expect.objectContaining({ version: '2.0.0', state: 'unloaded' })]);
    // Never loaded again: the replayed envelope is refused.
    await expect(
      a.manager.install(new Uint8Array(Buffer.from(stale.envelope, 'base64')), {
        payloads: new Map([[stale.payloadUrl, payload]]),
      }),
    ).rejects.toMatchObject({ code: 'CAP_REVOKED' });
    // Asking again: the server offers the newest non-revoked version.
    expect(await a.tracker.capability('codec')).toMatchObject({ ok: true, version: '1.0.0' });
    // A reboot (boot stage: OS image, then every module) does not bring 2.0.0 back.
    await a.tracker.stop();
    await a.manager.close();
    a.dir.restart({ reportSigner: a.signer });
    const again = await bootWithCapabilities(a.dir.agent, a.options);
    a.manager = again.manager;
    expect(again.booted).toBeDefined();
    expect(a.manager.status().map((s) => s.version)).toEqual(['1.0.0']);
    // b's next check-in cycle fetches the list too (every cycle checks it) and unloads it.
    const cycle = await b.tracker.cycle();
    expect(cycle.error).toBeUndefined();
    await expect(b.manager.call('codec', new Uint8Array([1]))).rejects.toMatchObject({ code: 'CAP_REVOKED' });
    expect(b.events).toContainEqual(expect.objectContaining({ type: 'unloaded', reason: 'revoked' }));
  });

  it('a version that faults is rolled back on the device, reported reverted, and its rollout pauses', async () => {
    const b = devices[1]!;
    ids.v3 = await upload([3, 0, 0], await buildModule('trap'));
    const r = await operator.post('/v1/capabilities/rollouts', {
      moduleId: ids.v3,
      target: { group: 'trackers' },
      phases: [{ percent: 100, durationMs: 3_600_000, failureThreshold: 0.5 }],
    });
    const id = (r.json() as { id: string }).id;
    expect(await b.tracker.capability('codec')).toMatchObject({ ok: true, version: '3.0.0' });
    expect((await rollout(id)).counts).toMatchObject({ installed: 1 });
    // An input that makes it trap: the call fails typed, the device rolls back to its sealed 1.0.0 archive.
    await expect(b.manager.call('codec', new Uint8Array([0xfd]))).rejects.toMatchObject({
      code: 'CAP_TRAPPED',
    });
    expect((await b.manager.call('codec', new Uint8Array([1]))).version).toEqual([1, 0, 0]);
    expect(b.events).toContainEqual(
      expect.objectContaining({ type: 'rolled-back', name: 'codec', from: '3.0.0', to: '1.0.0' }),
    );
    await b.tracker.flushCapabilityReports();
    expect(b.reports).toContainEqual({ kind: 'report-delivered', transition: 'reverted', status: 200 });
    const ro = await rollout(id);
    expect(ro.counts).toMatchObject({ total: 1, reverted: 1 });
    expect(ro.state).toBe('paused');
  });

  it('the boot stage refuses a tampered module: it falls back to a verified archive, else stays unloaded', async () => {
    const a = devices[0]!;
    const tamper = async (which: 'active' | 'archive'): Promise<void> => {
      await a.manager.close();
      const store = await AtomicStore.open(nodeFs(a.dir.dir), 'capabilities');
      const ic = decodeIndex((await store.get(INDEX_BLOB))!).get('codec')!;
      const entry = which === 'active' ? ic.active! : ic.archives[0]!;
      const bad = new Uint8Array((await store.get(entry.blob))!);
      bad[bad.length - 40] = bad[bad.length - 40]! ^ 0xff;
      await store.put(entry.blob, bad);
      a.dir.restart({ reportSigner: a.signer });
      a.events.length = 0;
      const booted = await bootWithCapabilities(a.dir.agent, a.options);
      a.manager = booted.manager;
      // The OS image was verified and booted first.
      expect(booted.booted.bank).toBeDefined();
    };
    // The active record (1.0.0 as installed after the revocation) is altered: refused; the sealed archive of 1.0.0
    // (from the hot swap) verifies and runs instead.
    await tamper('active');
    expect(a.events).toContainEqual(
      expect.objectContaining({ type: 'unloaded', name: 'codec', version: '1.0.0', reason: 'verification' }),
    );
    expect((await a.manager.call('codec', new Uint8Array([1]))).version).toEqual([1, 0, 0]);
    // Now that one is altered too: nothing verifies, the capability stays unloaded, the device runs on.
    await tamper('active');
    expect(a.events).toContainEqual(expect.objectContaining({ type: 'unloaded', reason: 'verification' }));
    await expect(a.manager.call('codec', new Uint8Array([1]))).rejects.toMatchObject({
      code: 'CAP_NOT_LOADED',
    });
    expect(a.manager.status()).toEqual([]);
    a.tracker = tracker(a.cert, a.dir, a.manager, a.reports);
  });
});
