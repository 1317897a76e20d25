/**
 * `rotor factory init` and `rotor factory provision` end to end on a real SoftHSM2 token, with devices that run the
 * real enclave (@rotor/device): the batch provisions, resumes to a larger count, and every device certificate
 * verifies with `openssl verify` against the factory chain written for the server's --device-ca.
 */
import 'reflect-metadata';
import { execFileSync } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDatabase } from '@rotor/server';
import { factoryCommand } from '../src/factory.ts';
import { enclaveDevices } from '../src/factory-device.ts';
import { createSoftHsm } from '../../server/test/factory/softhsm.ts';

let dir = '';
let module = '';

beforeAll(async () => {
  const hsm = createSoftHsm();
  ({ dir, module } = hsm);
  hsm.initToken('rotor-factory', '2468');
  writeFileSync(join(dir, 'pin'), '2468\n', { mode: 0o600 });
  // Any PEM certificate stands for the server TLS CA here.
  const { X509CertificateGenerator } = await import('@peculiar/x509');
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
  const keys = await crypto.subtle.generateKey(alg, false, ['sign', 'verify']);
  const ca = await X509CertificateGenerator.createSelfSigned(
    { name: 'CN=server ca', keys, signingAlgorithm: alg },
    crypto,
  );
  writeFileSync(join(dir, 'server-ca.pem'), ca.toString('pem'));
});

afterAll(() => {
  if (dir !== '') rmSync(dir, { recursive: true, force: true });
});

describe('rotor factory', () => {
  it('init, provision, resume to a larger batch; certificates verify against the factory chain', async () => {
    const f = join(dir, 'factory');
    const base = ['--dir', f, '--pin-file', join(dir, 'pin')];
    expect(
      await factoryCommand.run([
        'init',
        ...base,
        '--token',
        'pkcs11:token=rotor-factory',
        '--module',
        module,
        '--server-ca',
        join(dir, 'server-ca.pem'),
        '--anti-rollback',
        'firmware=3',
        '--class',
        'gateway',
      ]),
    ).toBe(0);
    // A second init refuses to overwrite.
    await expect(
      factoryCommand.run([
        'init',
        ...base,
        '--token',
        'rotor-factory',
        '--module',
        module,
        '--server-ca',
        join(dir, 'server-ca.pem'),
      ]),
    ).rejects.toMatchObject({ code: 'CLI_USAGE' });
    // A wrong PIN is a clear error, not a crash.
    writeFileSync(join(dir, 'bad-pin'), '0000\n');
    await expect(
      factoryCommand.run([
        'provision',
        '--dir',
        f,
        '--pin-file',
        join(dir, 'bad-pin'),
        '--count',
        '1',
        '--data-dir',
        join(dir, 'data'),
      ]),
    ).rejects.toThrow(/FACTORY_TOKEN_PIN_INCORRECT/);

    const prov = ['provision', ...base, '--data-dir', join(dir, 'data'), '--concurrency', '2'];
    expect(await factoryCommand.run([...prov, '--count', '2'])).toBe(0);
    expect(await factoryCommand.run([...prov, '--count', '4'])).toBe(0);
    const devices = enclaveDevices({ dir: join(f, 'devices', 'default') });
    const ids = new Set<string>();
    for (let i = 0; i < 4; i++) {
      const b = await devices.bundle(i);
      expect(b).toBeDefined();
      ids.add(b!.deviceId);
      expect(b!.antiRollback).toEqual({ firmware: 3 });
      writeFileSync(join(dir, `dev${i}.pem`), b!.certificatePem);
      const o = execFileSync(
        'openssl',
        ['verify', '-purpose', 'sslclient', '-CAfile', join(f, 'device-ca.pem'), join(dir, `dev${i}.pem`)],
        { encoding: 'utf8' },
      );
      expect(o).toContain(': OK');
    }
    expect(ids.size).toBe(4);
    const db = await openDatabase({ dataDir: join(dir, 'data', 'pg') });
    try {
      const rows = await db.query<{
        name: string;
        device_group: string;
        ka: boolean;
        report_key_alg: number | null;
        rot: number;
      }>(
        `SELECT name, device_group, ka_spki IS NOT NULL AS ka, report_key_alg,
           (SELECT count(*)::int FROM device_rot r WHERE r.device_id = d.id) AS rot
         FROM devices d`,
      );
      expect(new Set(rows.map((r) => r.name))).toEqual(ids);
      expect(rows.every((r) => r.device_group === 'gateway')).toBe(true);
      // Registered with the enclave's key-agreement key, its report key (ES256) and its pinned RoT chain.
      expect(rows.every((r) => r.ka && r.report_key_alg === -7 && r.rot === 1)).toBe(true);
    } finally {
      await db.close();
    }
  });
});
