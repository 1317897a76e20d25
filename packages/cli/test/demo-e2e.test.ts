/**
 * End to end across processes: `rotor demo` runs as a child process, and it runs the fleet server (`rotor server`,
 * ephemeral ports) and the devices (the fleet simulator) as children of its own. When it has finished, every
 * device's final state is checked twice: in the server (a fresh `rotor server` on the demo's data directory, read
 * through the operator API) and on its flash (the device directories, read with the device agent after the device
 * process stopped).
 *
 * Every step must happen (no --partial): including step 11, capability modules — every device's manager state is
 * read again from its flash (the CapabilityManager reopened on the device's storage with its enclave) and the
 * server's module rollouts and per-device module reports are checked.
 */
import 'reflect-metadata';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CapabilityManager,
  DeviceAgent,
  EnclaveCore,
  enclaveArchiveSealer,
  nodeFs,
  SandboxPool,
  sim,
} from '@rotor/device';
import { capabilityProvisioning } from '../src/demo/capabilities.ts';
import { DemoClient, listDevices, type RolloutInfo } from '../src/demo/client.ts';
import { NO_FILTER_GROUP, type DemoResult } from '../src/demo/demo.ts';
import { freePort, startServerProcess } from '../src/demo/processes.ts';
import { DEMO_CLASS, demoImage, ensureDataDir, sequenceOf, serverArgs } from '../src/demo/setup.ts';
import { AGENT_ROOT, AGREEMENT_KEY_ID, enclaveKeyAgreement, readBundle } from '../src/factory-device.ts';

const MAIN = fileURLToPath(new URL('../src/main.ts', import.meta.url));
const N = 4;

let dir = '';
let result: DemoResult;
let exitCode: number | null = null;
let stderr = '';

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'rotor-demo-e2e-'));
  const child = spawn(process.execPath, [MAIN, 'demo', '--devices', String(N), '--dir', dir, '--json'], {
    env: { ...process.env, NO_COLOR: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  exitCode = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  result = JSON.parse(stdout) as DemoResult;
}, 240_000);

afterAll(() => {
  if (dir !== '') rmSync(dir, { recursive: true, force: true });
});

describe('rotor demo across processes', () => {
  it('tells the story: every step that can run happens as told', () => {
    expect(stderr).not.toContain('error:');
    const byStatus = (s: string): number[] => result.steps.filter((x) => x.status === s).map((x) => x.n);
    expect(byStatus('failed'), JSON.stringify(result.steps, null, 2)).toEqual([]);
    expect(byStatus('missing')).toEqual([]);
    expect(byStatus('ok')).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    expect(result.devices.every((x) => x.attestation === 'affirming')).toBe(true);
    expect(result.devices.filter((x) => x.rotIndex === '1')).toHaveLength(1);
    expect(result.ok).toBe(true);
    expect(exitCode).toBe(0);
    expect(result.rollouts.v11?.state).toBe('completed');
    expect(result.rollouts.v12?.state).toBe('paused');
    // Step 11: both module rollouts completed with every device installed; calls during the swap never failed;
    // one device lost the module, the others run 2.0.0 with 1.0.0 archived.
    expect(result.modules.rollouts.v1).toMatchObject({ state: 'completed', counts: { installed: N } });
    expect(result.modules.rollouts.v2).toMatchObject({ state: 'completed', counts: { installed: N } });
    expect(result.modules.calls?.failed).toBe(0);
    expect(result.modules.calls?.total).toBeGreaterThan(0);
    const revoked = result.modules.revoked!;
    expect(revoked).toBeDefined();
    for (const x of result.devices)
      expect(x.module, x.name).toBe(
        x.name === revoked.name ? 'unloaded: filter 2.0.0 (unauthorized)' : 'filter 2.0.0 (1.0.0 archived)',
      );
  });

  it("every device's final state in the server and on its flash", async () => {
    const d = await ensureDataDir(join(dir, 'data'));
    expect(d.created).toBe(false);

    // Flash: each device, powered on from its directory (the device process has stopped), runs 1.1, confirmed.
    const image11 = createHash('sha256')
      .update(demoImage(sequenceOf('1.1'), 256 * 1024))
      .digest('hex');
    const flashSeq = new Map<string, bigint>();
    const names: string[] = [];
    const modules = new Map<string, string[]>();
    const pool = new SandboxPool({ spare: 0 });
    for (let i = 0; i < N; i++) {
      const devDir = join(d.factoryDir, 'devices', 'demo', String(i).padStart(6, '0'));
      const bundle = await readBundle(nodeFs(join(devDir, 'flash')));
      expect(bundle, `device ${i} bundle`).toBeDefined();
      const name = bundle!.deviceId;
      names.push(name);
      const agent = new DeviceAgent({ fs: nodeFs(join(devDir, 'flash')), root: AGENT_ROOT });
      const booted = await agent.powerOn();
      expect(booted.event, name).toBe('none');
      expect(booted.record.sequence, name).toBe(BigInt(sequenceOf('1.1')));
      const img = booted.record.images[0]!;
      const bytes = await agent.flash.readAll(booted.bank, img.component, img.size, img.chunkSize);
      expect(createHash('sha256').update(bytes).digest('hex'), `${name} image`).toBe(image11);
      flashSeq.set(name, booted.record.sequence);

      // The capability manager reopened on the device's flash with its enclave (sealed archives): what it verifies
      // at boot is what the demo left.
      const core = await EnclaveCore.open({
        fs: nodeFs(join(devDir, 'flash')),
        dir: 'enclave',
        fuse: new Uint8Array(readFileSync(join(devDir, 'fuse'))),
      });
      try {
        const prov = await capabilityProvisioning(
          devDir,
          () => Promise.reject(new Error('provisioned by the demo')),
          { url: 'https://127.0.0.1:1', identity: { cert: '', key: '' } },
        );
        const manager = await CapabilityManager.open({
          fs: nodeFs(join(devDir, 'flash')),
          dir: 'capabilities',
          device: { vendorDomain: sim.VENDOR, deviceClass: sim.CLASS, firmwareVersion: [1, 1, 0] },
          keys: { agreements: [enclaveKeyAgreement(core, AGREEMENT_KEY_ID)] },
          manifestAuthorities: [prov.authority],
          revocationAuthorities: [prov.authority],
          initialCapabilityManifest: prov.manifest,
          pool,
          sealer: enclaveArchiveSealer({
            sealData: (label, data) => Promise.resolve(core.sealData({ label, data }).sealed),
            unsealData: (label, sealed) => Promise.resolve(core.unsealData({ label, sealed }).data),
          }),
        });
        try {
          modules.set(
            name,
            manager
              .status()
              .map((m) => `${m.name} ${m.version} [${m.archives.map((a) => a.version).join(',')}]`),
          );
          if (manager.status().length > 0) {
            const out = await manager.call('filter', new Uint8Array([1, 100, 40, 70]));
            expect([...out.output], name).toEqual([2, 100, 70]);
          }
        } finally {
          await manager.close();
        }
      } finally {
        await core.close();
      }
    }
    await pool.close();
    const revokedName = result.modules.revoked!.name;
    for (const name of names)
      expect(modules.get(name), name).toEqual(name === revokedName ? [] : ['filter 2.0.0 [1.0.0]']);

    // Server: a fresh server process on the demo's data directory; what it recorded matches the flash.
    const mqttPort = await freePort();
    const server = await startServerProcess(
      serverArgs(d, { port: 0, devicePort: 0, mqttPort }, { deviceCa: true }),
      { env: { ROTOR_ADMIN_TOKEN: d.adminToken }, log: join(dir, 'server-check.log'), mqttPort },
    );
    try {
      const api = new DemoClient(server.operatorUrl, d.adminToken);
      const rollouts = (await api.get<{ items: (RolloutInfo & { name: string })[] }>('/v1/rollouts')).items;
      const v11 = rollouts.find((r) => r.name === 'demo 1.1')!;
      const v12 = rollouts.find((r) => r.name === 'demo 1.2 (bad build)')!;
      expect(v11.state).toBe('completed');
      expect(v11.counts).toMatchObject({ total: N, succeeded: N, failed: 0 });
      expect(v12.state).toBe('paused');
      expect(v12.counts).toMatchObject({ total: N, failed: 1, succeeded: 0, pending: N - 1 });

      // The factory registered exactly these devices (by their UEID URN), in their class's group; the one whose
      // module authorization was revoked was moved to a group whose capability manifest grants no 'filter'.
      const moved = await listDevices(api, NO_FILTER_GROUP);
      expect(moved.map((x) => x.name)).toEqual([result.modules.revoked!.name]);
      const devices = [...(await listDevices(api, DEMO_CLASS)), ...moved];
      expect(devices.map((x) => x.name).sort()).toEqual([...names].sort());
      expect(devices.every((x) => x.tags.includes('factory'))).toBe(true);

      let rolledBack = 0;
      let rotated = 0;
      for (const dev of devices) {
        expect(dev.lastSeenMs).not.toBeNull();
        const ev = (
          await api.get<{
            items: { rolloutId: string | null; kind: string; details: { transition?: string } }[];
          }>(`/v1/devices/${dev.id}/events?limit=1000`)
        ).items;
        const last = (rollout: string): string | undefined =>
          ev.filter((e) => e.rolloutId === rollout && e.kind === 'report').at(-1)?.details.transition;
        expect(last(v11.id), dev.name).toBe('confirmed');
        const b = last(v12.id);
        if (b !== undefined) {
          expect(b, dev.name).toBe('rolled-back');
          rolledBack++;
        }
        expect(flashSeq.get(dev.name)).toBe(BigInt(sequenceOf('1.1')));
        const att = await api.get<{ items: { status: string }[] }>(
          `/v1/devices/${dev.id}/attestation/results`,
        );
        expect(att.items[0]?.status, dev.name).toBe('affirming');
        rotated += (await api.get<{ index: number }>(`/v1/devices/${dev.id}/rot`)).index;
      }
      expect(rolledBack).toBe(1);
      expect(rotated).toBe(1);

      // Capability modules in the server: both rollouts completed, every device reported 2.0.0 installed, the
      // moved device reported it unloaded (signed SUIT reports).
      const mr = (
        await api.get<{ items: { id: string; state: string; counts: Record<string, number> }[] }>(
          '/v1/capabilities/rollouts',
        )
      ).items;
      expect(mr).toHaveLength(2);
      for (const r of mr) expect(r).toMatchObject({ state: 'completed', counts: { installed: N } });
      for (const dev of devices) {
        const m = (
          await api.get<{ items: { name: string; version: string; state: string }[] }>(
            `/v1/capabilities/devices/${dev.id}/modules`,
          )
        ).items;
        expect(
          m.map((x) => `${x.name} ${x.version} ${x.state}`),
          dev.name,
        ).toEqual([
          dev.name === result.modules.revoked!.name ? 'filter 2.0.0 unloaded' : 'filter 2.0.0 installed',
        ]);
      }
    } finally {
      await server.stop();
    }
  }, 120_000);
});
