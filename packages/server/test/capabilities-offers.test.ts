/**
 * Module rollouts reach devices without the device asking (issue 8 "operators roll modules out like firmware
 * (targets, phases)"; docs/protocol.md §6): `POST /d/v1/capabilities/offers` lists the live rollouts that offer
 * the calling device a module it does not run yet — target, phase share, pause, cancel, reports, versions,
 * quarantine, the bound — and `query` with the offer's `moduleId` hands over exactly that module. The push half:
 * `nudgeRollout` picks the devices of the current share that have not reported.
 */
import type { KeyObject } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encode, generateSigningKey } from '@rotor/cose';
import { decodeEnvelope, encodeReport, type SuitReport } from '@rotor/suit';
import { encodeModuleMetadata, MODULE_ABI, type ModuleMetadata, type ModuleVersion } from '@rotor/trust';
import { createCapabilityService, MAX_MODULE_OFFERS, rolloutBucket } from '../src/index.ts';
import { buildLargeModule } from '../../device/test/capability-modules/build.ts';
import { deviceClient, operatorClient, selfSignedCert, type OperatorClient, type Res } from './helpers.ts';
import { startFixture, type Fixture } from './fixtures.ts';

const CLASS = 'sensor-gw-v1';

function metadata(name: string, version: ModuleVersion, deviceClasses = [CLASS]): ModuleMetadata {
  return {
    name,
    version,
    imports: [],
    limits: { memoryPages: 4, callMs: 500, ioBytes: 16384 },
    deviceClasses,
    firmware: { min: [2, 0, 0] },
    dependencies: [],
    abi: MODULE_ABI,
  };
}

interface Device {
  id: string;
  post(path: string, body: unknown, contentType?: string): Promise<Res>;
}

interface Offer {
  rolloutId: string;
  moduleId: string;
  name: string;
  version: string;
}

describe('module rollout offers (devices are not asked to ask)', () => {
  let f: Fixture;
  let author: OperatorClient;
  let operator: OperatorClient;
  const devices: Device[] = [];
  let other: Device;
  let binaries = 0;

  async function token(role: string): Promise<OperatorClient> {
    const r = await f.admin.post('/v1/tokens', { name: `${role} token`, role });
    return operatorClient(f.server.operatorUrl, (r.json() as { token: string }).token);
  }

  async function register(name: string, group: string): Promise<Device> {
    const cert = await selfSignedCert(name);
    const r = await f.admin.post('/v1/devices', {
      name,
      certificatePem: cert.certPem,
      group,
      attributes: { deviceClass: CLASS, firmwareVersion: '2.4.0' },
      keyAgreementKeyPem: generateSigningKey(-7).publicKey.export({ type: 'spki', format: 'pem' }).toString(),
    });
    expect(r.status).toBe(201);
    const client = deviceClient(f.server.deviceUrl!, f.serverCert, cert);
    const post = (path: string, body: unknown, contentType = 'application/json'): Promise<Res> =>
      client.post(path, body instanceof Uint8Array ? body : JSON.stringify(body), contentType);
    return { id: (r.json() as { id: string }).id, post };
  }

  async function upload(name: string, version: ModuleVersion, deviceClasses?: string[]): Promise<string> {
    const r = await author.post(
      '/v1/capabilities/modules',
      encode([
        encodeModuleMetadata(metadata(name, version, deviceClasses)),
        await buildLargeModule(1000, ++binaries),
      ]),
      'application/octet-stream',
    );
    expect(r.status, r.body.toString()).toBe(201);
    return (r.json() as { id: string }).id;
  }

  async function rollout(
    moduleId: string,
    phases: object[] = [{ percent: 100, durationMs: 0 }],
  ): Promise<string> {
    const r = await operator.post('/v1/capabilities/rollouts', {
      moduleId,
      target: { group: 'fleet' },
      phases,
    });
    expect(r.status, r.body.toString()).toBe(201);
    return (r.json() as { id: string }).id;
  }

  async function offers(d: Device, installed?: { name: string; version: string }[]): Promise<Offer[]> {
    const r = await d.post('/d/v1/capabilities/offers', installed === undefined ? {} : { installed });
    expect(r.status, r.body.toString()).toBe(200);
    const a = r.json() as { offers: Offer[]; more: boolean };
    return a.offers;
  }

  /** A bare SUIT report (the devices here have no report key: report §5 allows it over mutual TLS). */
  async function report(d: Device, envelope: string, transition: 'installed' | 'failed'): Promise<Res> {
    const digest = decodeEnvelope(new Uint8Array(Buffer.from(envelope, 'base64'))).digest.bytes;
    const rep: SuitReport = {
      reference: { uri: undefined, digest: { alg: -16, bytes: digest } },
      records: [],
      result: true,
      extensions: new Map<number, unknown>([
        [-257, transition],
        ...(transition === 'failed' ? [[-258, 'CAP_INCOMPATIBLE'] as [number, unknown]] : []),
      ]),
    };
    return d.post('/d/v1/capabilities/reports', encodeReport(rep), 'application/suit-report+cbor');
  }

  beforeAll(async () => {
    const dir = mkdtempSync(join(tmpdir(), 'rotor-capoffers-'));
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
    expect(
      (
        await operator.post('/v1/capabilities/manifests', {
          group: null,
          modules: [
            'codec',
            'meter',
            'relay',
            ...Array.from({ length: MAX_MODULE_OFFERS }, (_, i) => `bulk-${i}`),
          ].map((name) => ({ name })),
        })
      ).status,
    ).toBe(201);
    for (let i = 0; i < 4; i++) devices.push(await register(`offers-${i}`, 'fleet'));
    other = await register('offers-other', 'elsewhere');
  }, 60_000);
  afterAll(async () => {
    await f.close();
  });

  it('offers only rollouts, to their target, newer than what the device runs; query pins the module', async () => {
    const d = devices[0]!;
    const v1 = await upload('codec', [1, 0, 0]);
    const v2 = await upload('codec', [2, 0, 0]);
    // A module without a rollout is offered when asked for, never pushed.
    expect(await offers(d)).toEqual([]);
    const r1 = await rollout(v1);
    expect(await offers(d)).toEqual([{ rolloutId: r1, moduleId: v1, name: 'codec', version: '1.0.0' }]);
    expect(await offers(other)).toEqual([]);
    expect(await offers(d, [{ name: 'codec', version: '1.0.0' }])).toEqual([]);
    expect(await offers(d, [{ name: 'codec', version: '1.5.0' }])).toEqual([]);
    expect(await offers(d, [{ name: 'codec', version: '0.9.0' }])).toHaveLength(1);
    // Asking picks the newest module the rollouts allow (2.0.0, no rollout); the offer's query gets exactly 1.0.0.
    let q = await d.post('/d/v1/capabilities/query', { capability: 'codec' });
    expect(q.json()).toMatchObject({ moduleId: v2, version: '2.0.0' });
    q = await d.post('/d/v1/capabilities/query', { capability: 'codec', moduleId: v1 });
    expect(q.status).toBe(200);
    const a = q.json() as { moduleId: string; envelope: string };
    expect(a.moduleId).toBe(v1);
    // A module id no rollout offers this device, or under another name, is not handed over by id.
    expect(
      (await d.post('/d/v1/capabilities/query', { capability: 'codec', moduleId: v2 })).json(),
    ).toMatchObject({
      code: 'CAP_NOT_FOUND',
    });
    expect(
      (await d.post('/d/v1/capabilities/query', { capability: 'filter', moduleId: v1 })).json(),
    ).toMatchObject({ code: 'CAP_NOT_FOUND' });
    expect(
      (await other.post('/d/v1/capabilities/query', { capability: 'codec', moduleId: v1 })).json(),
    ).toMatchObject({ code: 'CAP_NOT_FOUND' });
    // Reported installed: no longer offered, whatever the device says it runs.
    expect((await report(d, a.envelope, 'installed')).status).toBe(200);
    expect(await offers(d)).toEqual([]);
  });

  it('an incompatible module is handed over on its offer (the device refuses and reports); failed ends the offer', async () => {
    const d = devices[1]!;
    const m = await upload('meter', [1, 0, 0], ['another-class']);
    const r = await rollout(m);
    expect(await offers(d)).toContainEqual({ rolloutId: r, moduleId: m, name: 'meter', version: '1.0.0' });
    // Asked by name, the server refuses it for the device class; by its offer it is the device's to judge.
    expect((await d.post('/d/v1/capabilities/query', { capability: 'meter' })).json()).toMatchObject({
      code: 'CAP_INCOMPATIBLE',
    });
    const q = await d.post('/d/v1/capabilities/query', { capability: 'meter', moduleId: m });
    expect(q.status).toBe(200);
    expect((await report(d, (q.json() as { envelope: string }).envelope, 'failed')).status).toBe(200);
    expect((await offers(d)).map((o) => o.name)).not.toContain('meter');
    expect((await offers(devices[2]!)).map((o) => o.name)).toContain('meter');
  });

  it('phases, pause and cancel decide the offers; nudges go to the share that has not reported', async () => {
    const m = await upload('relay', [1, 0, 0]);
    const r = await rollout(m, [
      { percent: 50, durationMs: 3_600_000 },
      { percent: 100, durationMs: 0 },
    ]);
    const inShare = (d: Device): boolean => rolloutBucket(r, d.id) < 50;
    const relay = async (d: Device): Promise<boolean> => (await offers(d)).some((o) => o.moduleId === m);
    for (const d of devices) expect(await relay(d)).toBe(inShare(d));
    const caps = createCapabilityService(f.t.db);
    const nudged: string[] = [];
    const collect = (ids: string[]): Promise<void> => {
      nudged.push(...ids);
      return Promise.resolve();
    };
    await caps.nudgeRollout(r, collect);
    expect(nudged.sort()).toEqual(
      devices
        .filter(inShare)
        .map((d) => d.id)
        .sort(),
    );

    expect((await operator.post(`/v1/capabilities/rollouts/${r}/pause`, {})).status).toBe(200);
    for (const d of devices) expect(await relay(d)).toBe(false);
    nudged.length = 0;
    expect(await caps.nudgeRollout(r, collect)).toBe(0);
    expect((await operator.post(`/v1/capabilities/rollouts/${r}/resume`, {})).status).toBe(200);
    for (const d of devices) expect(await relay(d)).toBe(inShare(d));
    expect((await operator.post(`/v1/capabilities/rollouts/${r}/cancel`, {})).status).toBe(200);
    for (const d of devices) expect(await relay(d)).toBe(false);
    expect(await caps.nudgeRollout(r, collect)).toBe(0);
    expect(
      (await devices[0]!.post('/d/v1/capabilities/query', { capability: 'relay', moduleId: m })).json(),
    ).toMatchObject({ code: 'CAP_NOT_FOUND' });
  });

  it('a quarantined device is offered nothing; an answer holds at most MAX_MODULE_OFFERS', async () => {
    const d = devices[3]!;
    for (let i = 0; i < MAX_MODULE_OFFERS; i++) await rollout(await upload(`bulk-${i}`, [1, 0, 0]));
    const r = await d.post('/d/v1/capabilities/offers', {});
    const a = r.json() as { offers: Offer[]; more: boolean };
    expect(a.offers).toHaveLength(MAX_MODULE_OFFERS);
    expect(a.more).toBe(true);
    await f.t.db.query(
      'INSERT INTO device_policy_state (device_id, quarantined, reason, updated_at_ms) VALUES ($1, true, $2, $3)',
      [d.id, 'test', Date.now()],
    );
    expect(await offers(d)).toEqual([]);
    // A body outside the schema is refused.
    expect(
      (await d.post('/d/v1/capabilities/offers', { installed: [{ name: 'Bad Name', version: '1' }] })).status,
    ).toBe(400);
  });
});
