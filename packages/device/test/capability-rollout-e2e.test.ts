/**
 * Module rollouts reach devices without the device asking (issue 8 "operators roll modules out like firmware
 * (targets, phases)"), end to end: the fleet server in process (PGlite, mutual-TLS device listener, embedded MQTT
 * broker) and six devices (agent on a real directory, status tracker with push, CapabilityManager). No test code
 * asks for a capability: each tracker's cycle asks the server which module rollouts offer it a module it does not
 * run yet (`POST /d/v1/capabilities/offers`), fetches and installs it over the same channel and reports it; a
 * rollout that starts or advances nudges the devices of its share over MQTT, so they act at once (the poll
 * interval is an hour). The server's clock is moved forward to end a phase (no waiting in the test).
 */
import { createPublicKey, type KeyObject } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  encode,
  generateAgreementKey,
  generateSigningKey,
  softwareKeyAgreement,
  softwareVerifier,
  type Verifier,
} from '@rotor/cose';
import { encodeModuleMetadata, MODULE_ABI, type ModuleMetadata, type ModuleVersion } from '@rotor/trust';
import {
  bootWithCapabilities,
  nodeFs,
  SandboxPool,
  StatusTracker,
  type CapabilityClientEvent,
  type CapabilityManager,
  type TrackerEvent,
} from '../src/index.ts';
import { buildLargeModule } from './capability-modules/build.ts';
import { deviceDir, until, type DeviceDir } from './tracker-fixture.ts';
import {
  deviceClient,
  operatorClient,
  selfSignedCert,
  type OperatorClient,
} from '../../server/test/helpers.ts';
import { startFixture, type Fixture } from '../../server/test/fixtures.ts';
import { rolloutBucket } from '../../server/src/capabilities/service.ts';

const CLASS = 'sensor-gw-v1';
const GROUP = 'fleet';
const DEVICES = 6;

function metadata(version: ModuleVersion, deviceClasses: string[] = [CLASS]): ModuleMetadata {
  return {
    name: 'codec',
    version,
    imports: [],
    limits: { memoryPages: 4, callMs: 500, ioBytes: 16384 },
    deviceClasses,
    firmware: { min: [1, 0, 0] },
    dependencies: [],
    abi: MODULE_ABI,
  };
}

interface Device {
  id: string;
  dir: DeviceDir;
  manager: CapabilityManager;
  tracker: StatusTracker;
  events: TrackerEvent[];
  caps: CapabilityClientEvent[];
}

interface RolloutView {
  id: string;
  state: string;
  currentPhase: number;
  pauseReason: string | null;
  counts: Record<string, number>;
  phaseCounts: Record<string, number>[];
}

describe('module rollouts reach their devices without the device asking (issue 8)', () => {
  let f: Fixture;
  let author: OperatorClient;
  let operator: OperatorClient;
  let auditor: OperatorClient;
  let authority: Verifier;
  /** Added to the server's clock: ends a phase without waiting. */
  let skewMs = 0;
  const pool = new SandboxPool({ spare: 2 });
  const devices: Device[] = [];
  let binaries = 0;

  async function token(role: string): Promise<OperatorClient> {
    const r = await f.admin.post('/v1/tokens', { name: `${role} token`, role });
    return operatorClient(f.server.operatorUrl, (r.json() as { token: string }).token);
  }

  async function device(name: string): Promise<Device> {
    const cert = await selfSignedCert(name);
    const agreement = generateAgreementKey('P-256');
    const pem = (k: KeyObject): string => k.export({ type: 'spki', format: 'pem' }).toString();
    const r = await f.admin.post('/v1/devices', {
      name,
      certificatePem: cert.certPem,
      group: GROUP,
      keyAgreementKeyPem: pem(agreement.publicKey),
    });
    expect(r.status).toBe(201);
    const dir = await deviceDir();
    // Provisioning (seed 000 step 1): the capability manifest the device starts with, from the server.
    const client = deviceClient(f.server.deviceUrl!, f.serverCert, cert);
    const manifest = await client.get('/d/v1/capabilities/manifest');
    client.close();
    expect(manifest.status).toBe(200);
    const { manager } = await bootWithCapabilities(dir.agent, {
      fs: nodeFs(dir.dir),
      dir: 'capabilities',
      device: { vendorDomain: 'rotor.example', deviceClass: CLASS, firmwareVersion: [2, 4, 0] },
      keys: { agreements: [softwareKeyAgreement(agreement.privateKey)] },
      manifestAuthorities: [authority],
      revocationAuthorities: [authority],
      initialCapabilityManifest: new Uint8Array(manifest.body),
      pool,
    });
    const events: TrackerEvent[] = [];
    const caps: CapabilityClientEvent[] = [];
    const tracker = new StatusTracker({
      agent: dir.agent,
      server: {
        url: f.server.deviceUrl!,
        identity: { cert: cert.certPem, key: cert.keyPem },
        ca: f.serverCert.certPem,
        timeoutMs: 20_000,
      },
      // An hour: every cycle after the first in this test is caused by a push.
      interval: { defaultMs: 3_600_000, minMs: 3_600_000, maxMs: 3_600_000 },
      fallbackSource: 'none',
      mqtt: { url: f.server.mqttUrl!, minBackoffMs: 50, maxBackoffMs: 500 },
      pushGapMs: 0,
      capabilities: manager,
      onEvent: (e) => events.push(e),
      onCapabilityEvent: (e) => caps.push(e),
    });
    return { id: (r.json() as { id: string }).id, dir, manager, tracker, events, caps };
  }

  async function upload(version: ModuleVersion, deviceClasses?: string[]): Promise<string> {
    // A distinct binary per upload (the catalog refuses the same binary twice under one name).
    const wasm = await buildLargeModule(1000, ++binaries);
    const r = await author.post(
      '/v1/capabilities/modules',
      encode([encodeModuleMetadata(metadata(version, deviceClasses)), wasm]),
      'application/octet-stream',
    );
    expect(r.status, r.body.toString()).toBe(201);
    return (r.json() as { id: string }).id;
  }

  async function rollout(id: string): Promise<RolloutView> {
    return (await auditor.get(`/v1/capabilities/rollouts/${id}`)).json() as RolloutView;
  }

  async function startRollout(moduleId: string, phases: object[]): Promise<RolloutView> {
    const r = await operator.post('/v1/capabilities/rollouts', {
      moduleId,
      target: { group: GROUP },
      phases,
    });
    expect(r.status, r.body.toString()).toBe(201);
    return r.json() as RolloutView;
  }

  const runs = (d: Device, v: string): boolean => d.manager.status().some((s) => s.version === v);
  const timerCycles = (d: Device): number =>
    d.events.filter((e) => e.kind === 'checkin' && e.why === 'timer').length;

  beforeAll(async () => {
    const dir = mkdtempSync(join(tmpdir(), 'rotor-caprollout-'));
    const pemOf = (k: KeyObject): string => k.export({ type: 'pkcs8', format: 'pem' }).toString();
    writeFileSync(join(dir, 'signing.pem'), pemOf(generateSigningKey(-7).privateKey), { mode: 0o600 });
    writeFileSync(join(dir, 'authority.pem'), pemOf(generateSigningKey(-7).privateKey), { mode: 0o600 });
    f = await startFixture('pglite', {
      env: {
        ROTOR_CAPABILITY_SIGNING_KEY_FILE: join(dir, 'signing.pem'),
        ROTOR_CAPABILITY_AUTHORITY_KEY_FILE: join(dir, 'authority.pem'),
        ROTOR_ROLLOUT_TICK_MS: '100',
      },
      now: () => Date.now() + skewMs,
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
    // The group's capability manifest authorizes 'codec'; the devices fetch it on their first cycle.
    expect(
      (await operator.post('/v1/capabilities/manifests', { group: GROUP, modules: [{ name: 'codec' }] }))
        .status,
    ).toBe(201);
    for (let i = 0; i < DEVICES; i++) devices.push(await device(`cap-rollout-${i}`));
    for (const d of devices) await d.tracker.start();
    for (const d of devices)
      await until(
        () =>
          d.events.some((e) => e.kind === 'push' && e.why === 'connected') &&
          d.events.some((e) => e.kind === 'checkin'),
        'the MQTT subscription and the first check-in',
      );
  }, 120_000);

  afterAll(async () => {
    for (const d of devices) {
      await d.tracker.stop();
      await d.manager.close();
      d.dir.remove();
    }
    await pool.close();
    await f.close();
  });

  it('two phases: the first share installs on the push, the rest once the phase ends — nobody asks', async () => {
    // A first phase of half the group (stable buckets of the rollout's id and the device's). A rollout whose share
    // is empty or the whole group would not show two phases: it is cancelled and a newer version rolled out.
    let r: RolloutView | undefined;
    let first: Device[] = [];
    let v = '';
    for (let attempt = 0; r === undefined && attempt < 20; attempt++) {
      v = `1.0.${attempt}`;
      const made = await startRollout(await upload([1, 0, attempt]), [
        { percent: 50, durationMs: 60_000 },
        { percent: 100, durationMs: 0 },
      ]);
      first = devices.filter((d) => rolloutBucket(made.id, d.id) < 50);
      if (first.length > 0 && first.length < DEVICES) r = made;
      else {
        expect((await operator.post(`/v1/capabilities/rollouts/${made.id}/cancel`, {})).status).toBe(200);
        for (const d of devices) await d.tracker.cycle('manual'); // after any nudged cycle
      }
    }
    if (r === undefined) throw new Error('no two-phase split in 20 rollouts');
    const rest = devices.filter((d) => !first.includes(d));
    // Phase 0: the nudged share installs at once (push → check-in → offers → query with the module id → install).
    for (const d of first) await until(() => runs(d, v), 'phase 0 devices running 1.0.0');
    for (const d of first)
      await until(
        () => d.caps.some((e) => e.kind === 'report-delivered' && e.transition === 'installed'),
        'installed reports',
      );
    // The rest are outside the phase's share: even a cycle of their own brings nothing.
    await rest[0]!.tracker.cycle('manual');
    for (const d of rest) expect(runs(d, v)).toBe(false);
    let view = await rollout(r.id);
    expect(view).toMatchObject({ state: 'active', currentPhase: 0 });
    expect(view.phaseCounts[0]).toMatchObject({ total: first.length, installed: first.length });

    // The phase's time ends (server clock): the server's tick advances the rollout and nudges the rest.
    const pushedBefore = rest.map((d) => d.tracker.pushCheckins);
    skewMs += 61_000;
    for (const d of rest) await until(() => runs(d, v), 'phase 1 devices running 1.0.0');
    await until(
      async () => (await rollout(r.id)).counts.installed === DEVICES,
      'every installed report counted',
    );
    view = await rollout(r.id);
    expect(view.state).toBe('completed');
    expect(view.phaseCounts[1]).toMatchObject({ total: rest.length, installed: rest.length });
    rest.forEach((d, i) => {
      expect(d.tracker.pushCheckins).toBeGreaterThan(pushedBefore[i]!);
    });
    for (const d of devices) {
      expect(timerCycles(d)).toBe(0);
      expect((await d.manager.call('codec', new Uint8Array([1, 2]))).version.join('.')).toBe(v);
      expect(d.caps.filter((e) => e.kind === 'offer' && e.outcome.ok).length).toBeGreaterThan(0);
    }
  });

  it('paused: no new device installs; resumed: the phase restarts and the rest follow', async () => {
    const v2 = await upload([2, 0, 0]);
    const r = await startRollout(v2, [
      { percent: 50, durationMs: 60_000 },
      { percent: 100, durationMs: 0 },
    ]);
    const first = devices.filter((d) => rolloutBucket(r.id, d.id) < 50);
    for (const d of first) await until(() => runs(d, '2.0.0'), 'phase 0 devices running 2.0.0');
    await until(
      async () => (await rollout(r.id)).counts.installed === first.length,
      'installed reports of phase 0',
    );
    expect((await operator.post(`/v1/capabilities/rollouts/${r.id}/pause`, {})).status).toBe(200);
    // Phase 0's time passes while paused: nothing advances, and every device's own cycle brings nothing new.
    skewMs += 61_000;
    for (const d of devices) await d.tracker.cycle('manual');
    for (const d of devices) expect(runs(d, '2.0.0')).toBe(first.includes(d));
    expect(await rollout(r.id)).toMatchObject({ state: 'paused', currentPhase: 0 });

    // Resumed: phase 0 restarts its time; once it ends the rest are nudged and install.
    expect((await operator.post(`/v1/capabilities/rollouts/${r.id}/resume`, {})).status).toBe(200);
    skewMs += 61_000;
    for (const d of devices) await until(() => runs(d, '2.0.0'), 'every device running 2.0.0');
    await until(async () => (await rollout(r.id)).state === 'completed', 'the rollout completed');
  });

  it('a module every device refuses: each reports failed with the reason once, and the rollout auto-pauses', async () => {
    // Built for another device class: the server offers it to the target, each device's manager refuses it.
    const v3 = await upload([3, 0, 0], ['other-class']);
    const r = await startRollout(v3, [{ percent: 100, durationMs: 3_600_000, failureThreshold: 0.5 }]);
    await until(async () => (await rollout(r.id)).state === 'paused', 'the rollout auto-paused');
    const view = await rollout(r.id);
    expect(view.pauseReason).toMatch(/failed or reverted/);
    expect(view.counts.failed).toBeGreaterThan(0);
    expect(view.counts.installed).toBe(0);
    const refused = devices.filter((d) =>
      d.caps.some((e) => e.kind === 'offer' && e.rolloutId === r.id && !e.outcome.ok),
    );
    expect(refused.length).toBeGreaterThan(0);
    for (const d of refused) {
      const offers = d.caps.filter((e) => e.kind === 'offer' && e.rolloutId === r.id);
      expect(offers).toEqual([
        expect.objectContaining({ outcome: expect.objectContaining({ ok: false }) as unknown }),
      ]);
      await until(
        () => d.caps.some((e) => e.kind === 'report-delivered' && e.transition === 'failed'),
        'the failed report',
      );
    }
    // A device that refused reports it with the manager's code, and is not offered it again (once).
    const d = refused[0]!;
    const mods = (await auditor.get(`/v1/capabilities/devices/${d.id}/modules`)).json() as {
      items: { version: string; state: string; reason: string | null }[];
    };
    expect(mods.items).toEqual([
      expect.objectContaining({ version: '3.0.0', state: 'failed', reason: 'CAP_INCOMPATIBLE' }),
    ]);
    expect((await operator.post(`/v1/capabilities/rollouts/${r.id}/resume`, {})).status).toBe(200);
    await d.tracker.cycle('manual');
    expect(d.caps.filter((e) => e.kind === 'offer' && e.rolloutId === r.id)).toHaveLength(1);
    expect(d.caps.filter((e) => e.kind === 'report-queued' && e.transition === 'failed')).toHaveLength(1);
    // Every device still runs 2.0.0.
    for (const x of devices) expect(runs(x, '2.0.0')).toBe(true);
  });
});
