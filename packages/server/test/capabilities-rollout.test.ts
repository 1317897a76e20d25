/**
 * Module rollouts driven by device reports, like firmware rollouts (issue 8 "Operators roll modules out like
 * firmware (targets, phases)"): devices report each install outcome as a SUIT report signed with their report key
 * (draft-ietf-suit-report §4/§5) naming the module envelope the server signed for them; the server counts the
 * outcomes per rollout and phase, advances a phase when its success threshold is met, pauses the rollout when its
 * failure threshold is reached, and the operator pauses, resumes and cancels. The phase arithmetic is checked on
 * its own (evaluateModuleRollout).
 */
import type { KeyObject } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encode, generateSigningKey, softwareSigner, type Signer } from '@rotor/cose';
import { decodeEnvelope, encodeReport, ReportReason, signReport, type SuitReport } from '@rotor/suit';
import { encodeModuleMetadata, MODULE_ABI, type ModuleMetadata, type ModuleVersion } from '@rotor/trust';
import {
  evaluateModuleRollout,
  ROLES,
  rolloutBucket,
  type ModulePhaseCounts,
  type Role,
} from '../src/index.ts';
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

function metadata(name: string, version: ModuleVersion): ModuleMetadata {
  return {
    name,
    version,
    imports: [{ module: 'rotor', name: 'log' }],
    limits: { memoryPages: 4, callMs: 500, ioBytes: 16384 },
    deviceClasses: [CLASS],
    firmware: { min: [2, 0, 0] },
    dependencies: [],
    abi: MODULE_ABI,
  };
}

interface Device {
  id: string;
  signer: Signer;
  client: ReturnType<typeof deviceClient>;
  post(path: string, body: Uint8Array | string, contentType: string): Promise<Res>;
}

interface Answer {
  moduleId: string;
  version: string;
  envelope: string;
}

interface Rollout {
  id: string;
  state: string;
  currentPhase: number;
  currentPercent: number;
  pauseReason: string | null;
  counts: ModulePhaseCounts;
  phaseCounts: ModulePhaseCounts[];
}

const counts = (c: Partial<ModulePhaseCounts>): ModulePhaseCounts => ({
  total: 0,
  offered: 0,
  installed: 0,
  failed: 0,
  reverted: 0,
  ...c,
});

describe('module rollout arithmetic (evaluateModuleRollout)', () => {
  const phases = [
    { percent: 10, durationMs: 1000, successThreshold: 0.5, failureThreshold: 0.5 },
    { percent: 50, durationMs: 1000 },
    { percent: 100, durationMs: 0 },
  ];
  const at = (currentPhase: number, phaseStartedAtMs = 0) =>
    ({ state: 'active', phases, currentPhase, phaseStartedAtMs }) as const;

  it('holds a phase for its duration and until its success threshold', () => {
    const ok = [counts({ total: 2, installed: 1, offered: 1 })];
    expect(evaluateModuleRollout(at(0), ok, 999)).toEqual({ kind: 'unchanged' });
    expect(evaluateModuleRollout(at(0), [counts({ total: 3, installed: 1, offered: 2 })], 5000)).toEqual({
      kind: 'unchanged',
    });
    // Nobody offered yet: a threshold cannot be met by nobody.
    expect(evaluateModuleRollout(at(0), [], 5000)).toEqual({ kind: 'unchanged' });
    // Threshold met at 1500: phase 1 starts then, runs its 1000 ms by time alone, phase 2 completes.
    expect(evaluateModuleRollout(at(0), ok, 1500)).toEqual({
      kind: 'advanced',
      phase: 1,
      phaseStartedAtMs: 1500,
      completed: false,
    });
    expect(evaluateModuleRollout(at(1, 1500), ok, 2499)).toEqual({ kind: 'unchanged' });
    expect(evaluateModuleRollout(at(1, 1500), ok, 2500)).toEqual({
      kind: 'advanced',
      phase: 2,
      phaseStartedAtMs: 2500,
      completed: true,
    });
  });

  it('pauses on failures (failed and reverted count), in the current or an earlier phase', () => {
    expect(evaluateModuleRollout(at(0), [counts({ total: 2, failed: 1, offered: 1 })], 10)).toMatchObject({
      kind: 'paused',
      phase: 0,
    });
    expect(evaluateModuleRollout(at(0), [counts({ total: 3, reverted: 1, installed: 2 })], 10)).toEqual({
      kind: 'unchanged',
    });
    expect(
      evaluateModuleRollout(at(1, 0), [counts({ total: 2, reverted: 1, installed: 1 }), counts({})], 10),
    ).toMatchObject({ kind: 'paused', reason: expect.stringContaining('phase 0') as unknown });
    expect(
      evaluateModuleRollout({ ...at(0), state: 'paused' }, [counts({ total: 1, failed: 1 })], 10),
    ).toEqual({ kind: 'unchanged' });
  });
});

describe.each(BACKENDS)('module rollouts driven by device reports on %s', (backend) => {
  let f: Fixture;
  const tokens = {} as Record<Role, OperatorClient>;
  const devices: Device[] = [];
  const ids: Record<string, string> = {};

  async function register(name: string): Promise<Device> {
    const cert = await selfSignedCert(name);
    const reportKey = generateSigningKey(-7);
    const r = await f.admin.post('/v1/devices', {
      name,
      certificatePem: cert.certPem,
      group: 'fleet',
      attributes: { deviceClass: CLASS, firmwareVersion: '2.4.0' },
      keyAgreementKeyPem: generateSigningKey(-7).publicKey.export({ type: 'spki', format: 'pem' }).toString(),
      reportKeyPem: reportKey.publicKey.export({ type: 'spki', format: 'pem' }).toString(),
      reportKeyAlg: 'ES256',
    });
    expect(r.status).toBe(201);
    const client = deviceClient(f.server.deviceUrl!, f.serverCert, cert);
    const post = (path: string, body: Uint8Array | string, contentType: string): Promise<Res> =>
      client.post(path, body, contentType);
    return {
      id: (r.json() as { id: string }).id,
      signer: softwareSigner(reportKey.privateKey, -7),
      client,
      post,
    };
  }

  async function query(d: Device): Promise<Answer> {
    const r = await d.post(
      '/d/v1/capabilities/query',
      JSON.stringify({ capability: 'codec' }),
      'application/json',
    );
    expect(r.status, r.body.toString()).toBe(200);
    return r.json() as Answer;
  }

  /** The report a device's tracker sends (tracker/report.ts shape): signed with its report key. */
  async function report(
    d: Device,
    a: Answer,
    transition: 'installed' | 'failed' | 'reverted' | 'unloaded',
    reason?: string,
  ): Promise<Res> {
    const digest = decodeEnvelope(new Uint8Array(Buffer.from(a.envelope, 'base64'))).digest.bytes;
    const rep: SuitReport = {
      reference: { uri: undefined, digest: { alg: -16, bytes: digest } },
      records: [],
      result:
        transition === 'installed' || transition === 'unloaded'
          ? true
          : {
              code: -1,
              record: {
                manifestId: [],
                manifestSection: 9,
                sectionOffset: 0,
                componentIndex: 0,
                properties: new Map(),
              },
              reason: ReportReason.operationFailed,
            },
      extensions: new Map<number, unknown>([
        [-257, transition],
        ...(reason === undefined ? [] : [[-258, reason] as [number, unknown]]),
      ]),
    };
    return d.post(
      '/d/v1/capabilities/reports',
      await signReport(rep, d.signer),
      'application/suit-report+cose',
    );
  }

  async function rollout(id: string): Promise<Rollout> {
    const r = await tokens.auditor.get(`/v1/capabilities/rollouts/${id}`);
    expect(r.status).toBe(200);
    return r.json() as Rollout;
  }

  async function upload(version: ModuleVersion, wasm: Uint8Array): Promise<string> {
    const r = await tokens.author.post(
      '/v1/capabilities/modules',
      encode([encodeModuleMetadata(metadata('codec', version)), wasm]),
      'application/octet-stream',
    );
    expect(r.status, r.body.toString()).toBe(201);
    return (r.json() as { id: string }).id;
  }

  beforeAll(async () => {
    const dir = mkdtempSync(join(tmpdir(), 'rotor-caprollout-'));
    const pemOf = (k: KeyObject): string => k.export({ type: 'pkcs8', format: 'pem' }).toString();
    writeFileSync(join(dir, 'signing.pem'), pemOf(generateSigningKey(-7).privateKey), { mode: 0o600 });
    writeFileSync(join(dir, 'authority.pem'), pemOf(generateSigningKey(-7).privateKey), { mode: 0o600 });
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
    for (let i = 0; i < 8; i++) devices.push(await register(`mod-rollout-${i}`));
    expect(
      (
        await tokens.operator.post('/v1/capabilities/manifests', {
          group: null,
          modules: [{ name: 'codec' }],
        })
      ).status,
    ).toBe(201);
    ids.v1 = await upload([1, 0, 0], await buildModule('codec-v1'));
    ids.v2 = await upload([2, 0, 0], await buildModule('codec-v2'));
    ids.v3 = await upload([3, 0, 0], await buildModule('codec-v1', { '0x55': '0x77' }));
  });
  afterAll(async () => {
    for (const d of devices) d.client.close();
    await f.close();
  });

  it('phase 0 advances once its devices report installed; the rollout completes and reaches everyone', async () => {
    // v3 is held back by a rollout that offers it to nobody yet (cancelled below); v2 is rolled out.
    let r = await tokens.operator.post('/v1/capabilities/rollouts', {
      moduleId: ids.v3,
      target: { deviceIds: [devices[0]!.id] },
      phases: [{ percent: 100, durationMs: 3_600_000, successThreshold: 1 }],
    });
    expect(r.status).toBe(201);
    ids.hold = (r.json() as { id: string }).id;
    expect((await tokens.operator.post(`/v1/capabilities/rollouts/${ids.hold}/cancel`)).status).toBe(200);
    // A rollout whose first phase holds some but not all devices (buckets are per rollout: retry until so).
    let ro: Rollout | undefined;
    let first: Device[] = [];
    for (let attempt = 0; attempt < 30 && ro === undefined; attempt++) {
      r = await tokens.operator.post('/v1/capabilities/rollouts', {
        moduleId: ids.v2,
        target: { group: 'fleet' },
        phases: [
          { percent: 50, durationMs: 0, successThreshold: 1 },
          { percent: 100, durationMs: 0 },
        ],
      });
      expect(r.status).toBe(201);
      const made = r.json() as Rollout;
      first = devices.filter((d) => rolloutBucket(made.id, d.id) < 50);
      if (first.length > 0 && first.length < devices.length) ro = made;
      else
        expect((await tokens.operator.post(`/v1/capabilities/rollouts/${made.id}/cancel`)).status).toBe(200);
    }
    expect(ro).toBeDefined();
    const id = ro!.id;
    ids.r2 = id;
    expect(ro!.state).toBe('active');
    expect(ro!.currentPercent).toBe(50);
    const answers = new Map<string, Answer>();
    for (const d of devices) answers.set(d.id, await query(d));
    for (const d of devices) expect(answers.get(d.id)!.version).toBe(first.includes(d) ? '2.0.0' : '1.0.0');
    let now = await rollout(id);
    expect(now.phaseCounts[0]).toEqual(counts({ total: first.length, offered: first.length }));
    // All but one report installed: the threshold (1.0) holds the phase.
    for (const d of first.slice(1)) {
      const res = await report(d, answers.get(d.id)!, 'installed');
      expect(res.status).toBe(200);
      expect(res.json()).toEqual({ moduleId: ids.v2, rolloutId: id, state: 'installed' });
    }
    now = await rollout(id);
    expect(now.currentPhase).toBe(0);
    expect(now.counts.installed).toBe(first.length - 1);
    // The last one: phase 0 passes, phase 1 (no threshold, no duration) completes the rollout.
    expect((await report(first[0]!, answers.get(first[0]!.id)!, 'installed')).status).toBe(200);
    now = await rollout(id);
    expect(now.state).toBe('completed');
    expect(now.currentPercent).toBe(100);
    for (const d of devices) expect((await query(d)).version).toBe('2.0.0');
    // The server knows what the device runs.
    const mods = (await tokens.auditor.get(`/v1/capabilities/devices/${first[0]!.id}/modules`)).json() as {
      items: { name: string; version: string; state: string }[];
    };
    expect(mods.items).toEqual([
      expect.objectContaining({ name: 'codec', version: '2.0.0', state: 'installed' }),
    ]);
  });

  it('failures auto-pause the rollout; paused offers no new device; resume, pause and cancel', async () => {
    const [a, b, c] = [devices[0]!, devices[1]!, devices[2]!];
    let r = await tokens.operator.post('/v1/capabilities/rollouts', {
      moduleId: ids.v3,
      target: { deviceIds: [a.id, b.id, c.id] },
      phases: [{ percent: 100, durationMs: 3_600_000, failureThreshold: 0.5 }],
    });
    expect(r.status).toBe(201);
    const id = (r.json() as Rollout).id;
    const qa = await query(a);
    expect(qa.version).toBe('3.0.0');
    // Device a's health check failed: 1 of 1 → paused.
    r = await report(a, qa, 'failed', 'CAP_HEALTH');
    expect(r.json()).toEqual({ moduleId: ids.v3, rolloutId: id, state: 'failed' });
    let now = await rollout(id);
    expect(now.state).toBe('paused');
    expect(now.pauseReason).toContain('1 of 1 devices failed');
    expect(now.counts).toEqual(counts({ total: 1, failed: 1 }));
    // Paused: b is not offered v3, it keeps v2.
    expect((await query(b)).version).toBe('2.0.0');
    expect((await tokens.operator.post(`/v1/capabilities/rollouts/${id}/pause`)).status).toBe(409);
    expect((await tokens.auditor.post(`/v1/capabilities/rollouts/${id}/resume`)).status).toBe(403);
    r = await tokens.operator.post(`/v1/capabilities/rollouts/${id}/resume`);
    expect(r.status).toBe(200);
    expect((r.json() as Rollout).state).toBe('active');
    const qb = await query(b);
    const qc = await query(c);
    expect([qb.version, qc.version]).toEqual(['3.0.0', '3.0.0']);
    expect((await report(b, qb, 'installed')).status).toBe(200);
    expect((await report(c, qc, 'installed')).status).toBe(200);
    now = await rollout(id);
    expect(now.state).toBe('active');
    expect(now.counts).toEqual(counts({ total: 3, failed: 1, installed: 2 }));
    // b's module faulted later and the device reverted: 2 of 3 bad → paused again.
    expect((await report(b, qb, 'reverted', 'CAP_TRAPPED')).status).toBe(200);
    now = await rollout(id);
    expect(now.state).toBe('paused');
    expect(now.counts).toEqual(counts({ total: 3, failed: 1, reverted: 1, installed: 1 }));
    // Paused: c, which installed it, is still offered it; b (reverted) is not.
    expect((await query(c)).version).toBe('3.0.0');
    expect((await query(b)).version).toBe('2.0.0');
    expect((await tokens.operator.post(`/v1/capabilities/rollouts/${id}/resume`)).status).toBe(200);
    expect((await tokens.operator.post(`/v1/capabilities/rollouts/${id}/pause`)).status).toBe(200);
    expect((await rollout(id)).pauseReason).toBe('paused by operator');
    r = await tokens.operator.post(`/v1/capabilities/rollouts/${id}/cancel`);
    expect((r.json() as Rollout).state).toBe('cancelled');
    expect((await query(c)).version).toBe('2.0.0');
    expect((await tokens.operator.post(`/v1/capabilities/rollouts/${id}/resume`)).status).toBe(409);
    const events = (await tokens.auditor.get(`/v1/devices/${b.id}/events?limit=100`)).body.toString();
    expect(events).toContain('capability.report');
    expect(events).toContain('CAP_TRAPPED');
    const audit = (await tokens.auditor.get('/v1/audit?limit=1000')).body.toString();
    for (const action of [
      'capability.rollout.autopause',
      'capability.rollout.pause',
      'capability.rollout.resume',
      'capability.rollout.cancel',
      'capability.rollout.complete',
    ])
      expect(audit).toContain(action);
  });

  it('refuses a report naming no envelope of this device, an unsigned one and another device’s', async () => {
    const [a, b] = [devices[3]!, devices[4]!];
    const qa = await query(a);
    // Another device's envelope: not this device's offer.
    let r = await report(b, qa, 'installed');
    expect(r.status).toBe(409);
    expect((r.json() as { code: string }).code).toBe('CONFLICT');
    // The device has a report key: an unsigned report is refused.
    const digest = decodeEnvelope(new Uint8Array(Buffer.from(qa.envelope, 'base64'))).digest.bytes;
    const plain = encodeReport({
      reference: { uri: undefined, digest: { alg: -16, bytes: digest } },
      records: [],
      result: true,
      extensions: new Map([[-257, 'installed']]),
    });
    r = await a.post('/d/v1/capabilities/reports', plain, 'application/suit-report+cbor');
    expect((r.json() as { code: string }).code).toBe('REPORT_SIGNATURE_REQUIRED');
    // Signed by another key.
    const forged = { ...a, signer: softwareSigner(generateSigningKey(-7).privateKey, -7) };
    r = await report(forged, qa, 'installed');
    expect(r.status).toBeGreaterThanOrEqual(400);
    expect(r.status).toBeLessThan(500);
    // A transition that is not a module outcome.
    const odd = await signReport(
      {
        reference: { uri: undefined, digest: { alg: -16, bytes: digest } },
        records: [],
        result: true,
        extensions: new Map([[-257, 'confirmed']]),
      },
      a.signer,
    );
    r = await a.post('/d/v1/capabilities/reports', odd, 'application/suit-report+cose');
    expect((r.json() as { code: string }).code).toBe('REQUEST_INVALID');
    // An "unloaded" report is history: the device's module state records it.
    expect((await report(a, qa, 'unloaded')).status).toBe(200);
    const mods = (await tokens.auditor.get(`/v1/capabilities/devices/${a.id}/modules`)).json() as {
      items: { state: string }[];
    };
    expect(mods.items.map((m) => m.state)).toEqual(['unloaded']);
  });
});
