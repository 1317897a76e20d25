/**
 * `rotor fleet simulate` as a process against a real server (in-process fixture: PGlite, mutual TLS, MQTT over TLS):
 * it registers its devices, they check in, SIGINT stops it with exit 0 and a JSON summary; a re-run on the same
 * storage directory reuses the identities and registers nothing new (idempotent).
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN_TOKEN, startFleetServer, type FleetServer } from './fleet-fixture.ts';

const MAIN = new URL('../src/main.ts', import.meta.url).pathname;

interface Device {
  name: string;
  lastSeenMs: number | null;
}

describe('rotor fleet simulate', () => {
  let s: FleetServer;
  let dir: string;
  beforeAll(async () => {
    s = await startFleetServer();
    dir = mkdtempSync(join(tmpdir(), 'rotor-fleet-cli-'));
    writeFileSync(join(dir, 'token'), ADMIN_TOKEN, { mode: 0o600 });
    writeFileSync(join(dir, 'ca.pem'), s.f.serverCert.certPem);
  });
  afterAll(async () => {
    await s.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const devices = async (): Promise<Device[]> =>
    (await s.admin.call<{ items: Device[] }>('GET', '/v1/devices?group=cli&limit=1000', undefined, 200))
      .items;

  async function runOnce(): Promise<{ code: number | null; summary: Record<string, unknown> }> {
    const since = Date.now();
    const child = spawn(
      process.execPath,
      [
        MAIN,
        'fleet',
        'simulate',
        '--devices',
        '3',
        '--server',
        s.f.server.operatorUrl,
        '--device-url',
        s.f.server.deviceUrl!,
        '--token-file',
        join(dir, 'token'),
        '--ca',
        join(dir, 'ca.pem'),
        '--mqtt',
        s.f.server.mqttUrl!,
        '--storage',
        join(dir, 'store'),
        '--group',
        'cli',
        '--json',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NO_COLOR: '1' } },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const exited = new Promise<number | null>((r) => child.once('exit', r));
    // Running: every device registered and seen by the server since this run started.
    const end = Date.now() + 60_000;
    for (;;) {
      const ds = await devices();
      if (ds.length === 3 && ds.every((d) => d.lastSeenMs !== null && d.lastSeenMs >= since)) break;
      if (Date.now() > end || child.exitCode !== null) throw new Error(`fleet did not come up: ${stdout}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    child.kill('SIGINT');
    const code = await exited;
    if (code !== 0) throw new Error(`exit ${code}: ${stderr}`);
    return { code, summary: JSON.parse(stdout) as Record<string, unknown> };
  }

  it('registers and runs its devices, stops on SIGINT with a JSON summary; a re-run is idempotent', async () => {
    const first = await runOnce();
    expect(first.code).toBe(0);
    expect(first.summary).toMatchObject({ devices: 3, signal: 'SIGINT', errors: 0 });
    const names = (await devices()).map((d) => d.name).sort();
    expect(names).toEqual(['sim-0', 'sim-1', 'sim-2']);
    const second = await runOnce();
    expect(second.code).toBe(0);
    expect((await devices()).map((d) => d.name).sort()).toEqual(names);
  });
});
