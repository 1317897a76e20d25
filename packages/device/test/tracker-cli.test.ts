/**
 * `rotor device run` as a child process (process.execPath) on a provisioned device directory against a scripted
 * server: it boots, checks in, prints what happens, and exits 0 on SIGTERM.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { selfSignedCert } from '../../server/test/helpers.ts';
import { deviceDir, until } from './tracker-fixture.ts';
import { Stub } from './tracker-stub.ts';

const DEVICE_TS = resolve(import.meta.dirname, '../../cli/src/device.ts');

describe('rotor device run', () => {
  let stub: Stub;
  beforeAll(async () => {
    stub = await Stub.start();
  });
  afterAll(async () => {
    await stub.close();
  });

  it('runs the device, checks in, and stops cleanly on SIGTERM', async () => {
    const d = await deviceDir({ root: 'state' });
    try {
      const cert = await selfSignedCert('cli-device');
      mkdirSync(join(d.dir, 'tls'), { recursive: true });
      writeFileSync(join(d.dir, 'tls', 'device.crt'), cert.certPem);
      writeFileSync(join(d.dir, 'tls', 'device.key'), cert.keyPem, { mode: 0o600 });
      writeFileSync(join(d.dir, 'tls', 'server-ca.pem'), stub.cert.certPem);
      const script = `const { deviceCommand } = await import(${JSON.stringify(DEVICE_TS)});
process.exitCode = await deviceCommand.run(process.argv.slice(1));`;
      const child = spawn(
        process.execPath,
        ['--input-type=module', '-e', script, 'run', '--dir', d.dir, '--server', stub.url],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      );
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
      child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
      const exited = new Promise<number | null>((r) =>
        child.on('exit', (code) => {
          r(code);
        }),
      );
      await until(
        () => stdout.includes('checkin (start): none') || child.exitCode !== null,
        'the first check-in',
      );
      expect(stdout, stderr).toContain('device running bank a sequence 1');
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
      expect(stdout).toContain('stopped (SIGTERM)');
    } finally {
      d.remove();
    }
  });
});
