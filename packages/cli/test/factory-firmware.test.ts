/**
 * Provisioning writes the initial firmware into the device's firmware bank and the profile's anti-rollback values
 * into the agent's non-volatile state, through the agent's own verified install path: a freshly provisioned device
 * (real enclave, real agent, files on disk) boots its verified initial firmware. Firmware without the operator's
 * signature, or an anti-rollback value above the firmware's sequence, is refused and the device is not complete.
 */
import { createHash, generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { componentKey, DeviceAgent, FIRMWARE_KEY, nodeFs } from '@rotor/device';
import type { DeviceBundle } from '@rotor/server';
import { AGENT_ROOT, enclaveDevices } from '../src/factory-device.ts';
import { run } from '../src/main.ts';

let dir = '';
const pems: Record<string, string> = {};
const fw = new Uint8Array(4000).map((_, i) => (i * 7) & 0xff);
fw.set(new TextEncoder().encode('OK'), 0);

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'rotor-factory-fw-'));
  for (const who of ['author', 'operator']) {
    const kp = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    writeFileSync(join(dir, `${who}.pem`), kp.privateKey.export({ type: 'pkcs8', format: 'pem' }));
    pems[who] = kp.publicKey.export({ type: 'spki', format: 'pem' }).toString();
  }
  writeFileSync(join(dir, 'fw.bin'), fw);
  writeFileSync(
    join(dir, 'fw.yaml'),
    [
      'vendor: rotor.example',
      'class: gw-1',
      'sequence: 5',
      'components:',
      '  - id: firmware',
      '    image: fw.bin',
      '',
    ].join('\n'),
  );
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

beforeEach(() => {
  vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
  vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
});

afterEach(() => {
  vi.restoreAllMocks();
});

async function envelope(name: string, operator: boolean): Promise<Uint8Array> {
  const out = join(dir, `${name}.suit`);
  expect(
    await run(['manifest', 'create', join(dir, 'fw.yaml'), '--key', join(dir, 'author.pem'), '-o', out]),
  ).toBe(0);
  if (operator) expect(await run(['manifest', 'sign', out, '--key', join(dir, 'operator.pem')])).toBe(0);
  return new Uint8Array(readFileSync(out));
}

function bundle(deviceId: string, env: Uint8Array, antiRollback: Record<string, number>): DeviceBundle {
  return {
    deviceId,
    certificatePem: '-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n',
    chainPem: [],
    profile: 'default',
    trustAnchors: {
      authorKeyPem: pems.author!,
      operatorKeyPem: pems.operator!,
      serverTlsCaPem: '',
      factoryCaPem: '',
    },
    firmware: {
      envelopeBase64: Buffer.from(env).toString('base64'),
      sha256: createHash('sha256').update(env).digest('hex'),
    },
    antiRollback,
  };
}

describe('provisioning installs the initial firmware', () => {
  it('a freshly provisioned device boots its verified initial firmware with the profile counters', async () => {
    const env = await envelope('ok', true);
    const devices = enclaveDevices({ dir: join(dir, 'devices') });
    const d = await devices.open(0);
    await d.install(bundle(d.deviceId, env, { firmware: 5, 'modem-fw': 9 }));
    await devices.close?.(0);
    expect((await devices.bundle(0))?.deviceId).toBe(d.deviceId);

    const agent = new DeviceAgent({ fs: nodeFs(join(dir, 'devices', '000000', 'flash')), root: AGENT_ROOT });
    const booted = await agent.powerOn();
    expect(booted.bank).toBe('a');
    expect(booted.event).toBe('none');
    expect(booted.record.sequence).toBe(5n);
    const img = booted.record.images[0]!;
    expect(await agent.flash.readAll('a', img.component, img.size, img.chunkSize)).toEqual(fw);
    const counters = await agent.nv.counters();
    expect(counters.get(componentKey(FIRMWARE_KEY))).toBe(5n);
    expect(counters.get(componentKey([new TextEncoder().encode('modem-fw')]))).toBe(9n);
  });

  it('firmware without the operator signature, or a counter above its sequence, leaves the device incomplete', async () => {
    const devices = enclaveDevices({ dir: join(dir, 'devices-bad') });
    const d = await devices.open(0);
    await expect(
      d.install(bundle(d.deviceId, await envelope('author-only', false), {})),
    ).rejects.toMatchObject({
      code: 'SUIT_MISSING_PARTY',
    });
    await expect(
      d.install(bundle(d.deviceId, await envelope('ok2', true), { firmware: 6 })),
    ).rejects.toMatchObject({
      code: 'CLI_INPUT',
    });
    await devices.close?.(0);
    expect(await devices.bundle(0)).toBeUndefined();
  });
});
