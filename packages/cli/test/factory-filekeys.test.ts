/**
 * `rotor factory init --file-keys` without a token: a development factory whose root and issuing CA keys (and the
 * author and operator keys) are PKCS#8 PEM files (mode 0600) marked development-only; everything else works as with
 * a token: device-ca.pem chains, the profile, and `rotor factory provision` (no PIN asked) registers devices whose
 * certificates chain to the issuing CA.
 */
import 'reflect-metadata';
import { createPrivateKey } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as x509 from '@peculiar/x509';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { openDatabase } from '@rotor/server';
import { factoryCommand } from '../src/factory.ts';
import { enclaveDevices } from '../src/factory-device.ts';

let dir = '';

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'rotor-cli-factory-files-'));
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
  const keys = await crypto.subtle.generateKey(alg, false, ['sign', 'verify']);
  const ca = await x509.X509CertificateGenerator.createSelfSigned(
    { name: 'CN=server ca', keys, signingAlgorithm: alg },
    crypto,
  );
  writeFileSync(join(dir, 'server-ca.pem'), ca.toString('pem'));
});

afterAll(() => {
  if (dir !== '') rmSync(dir, { recursive: true, force: true });
});

beforeEach(() => {
  vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
  vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
});

afterEach(() => {
  vi.restoreAllMocks();
});

describe('rotor factory init --file-keys (development)', () => {
  it('keeps every key in 0600 PKCS#8 files, marked development-only, and provisions without a PIN', async () => {
    const f = join(dir, 'factory');
    delete process.env.ROTOR_FACTORY_PIN;
    expect(
      await factoryCommand.run([
        'init',
        '--dir',
        f,
        '--file-keys',
        '--server-ca',
        join(dir, 'server-ca.pem'),
        '--class',
        'gw-1',
      ]),
    ).toBe(0);
    for (const name of ['root-ca', 'issuing-ca', 'author', 'operator']) {
      const path = join(f, `${name}.key.pem`);
      expect(statSync(path).mode & 0o777).toBe(0o600);
      const pem = readFileSync(path, 'utf8');
      expect(pem).toContain('-----BEGIN PRIVATE KEY-----');
      expect(createPrivateKey(pem).asymmetricKeyType).toBe('ec');
    }
    expect(readFileSync(join(f, 'DEVELOPMENT-ONLY.txt'), 'utf8')).toContain('DEVELOPMENT ONLY');
    const cfg = JSON.parse(readFileSync(join(f, 'factory.json'), 'utf8')) as Record<string, unknown>;
    expect(cfg.backend).toBe('files');
    expect(cfg.developmentOnly).toBe(true);

    // The chain: issuing CA signed by the root, root self-signed; device-ca.pem holds both.
    const root = new x509.X509Certificate(readFileSync(join(f, 'root-ca.pem'), 'utf8'));
    const issuing = new x509.X509Certificate(readFileSync(join(f, 'issuing-ca.pem'), 'utf8'));
    expect(await root.verify({ publicKey: root.publicKey, signatureOnly: true })).toBe(true);
    expect(await issuing.verify({ publicKey: root.publicKey, signatureOnly: true })).toBe(true);
    expect(readFileSync(join(f, 'device-ca.pem'), 'utf8')).toBe(
      readFileSync(join(f, 'issuing-ca.pem'), 'utf8') + readFileSync(join(f, 'root-ca.pem'), 'utf8'),
    );

    // A second init on the same dir is refused (never overwrite keys).
    await expect(
      factoryCommand.run(['init', '--dir', f, '--file-keys', '--server-ca', join(dir, 'server-ca.pem')]),
    ).rejects.toMatchObject({ code: 'CLI_USAGE' });
    // Neither a token nor --file-keys: usage error.
    await expect(
      factoryCommand.run(['init', '--dir', join(dir, 'x'), '--server-ca', join(dir, 'server-ca.pem')]),
    ).rejects.toMatchObject({ code: 'CLI_USAGE' });

    const data = join(dir, 'data');
    expect(
      await factoryCommand.run([
        'provision',
        '--dir',
        f,
        '--count',
        '2',
        '--data-dir',
        data,
        '--concurrency',
        '2',
      ]),
    ).toBe(0);
    const devices = enclaveDevices({ dir: join(f, 'devices', 'default') });
    const ids: string[] = [];
    for (const i of [0, 1]) {
      const b = await devices.bundle(i);
      expect(b).toBeDefined();
      ids.push(b!.deviceId);
      const cert = new x509.X509Certificate(b!.certificatePem);
      expect(await cert.verify({ publicKey: issuing.publicKey, signatureOnly: true })).toBe(true);
    }
    const db = await openDatabase({ databaseUrl: undefined, dataDir: join(data, 'pg') });
    try {
      const rows = await db.query<{ name: string; device_group: string }>(
        'SELECT name, device_group FROM devices ORDER BY name',
      );
      expect(rows.map((r) => r.name).sort()).toEqual([...ids].sort());
      expect(rows.every((r) => r.device_group === 'gw-1')).toBe(true);
    } finally {
      await db.close();
    }
  });
});
