/**
 * `rotor start` as a user runs it (a child process; ephemeral ports): the first run creates the data directory and
 * prints where to look and what to try; the printed commands work as printed (release upload → approve → rollout
 * create → rollout watch, which exits 0 when every factory device updated and its new measurements appraised);
 * SIGINT stops everything with exit 0; a second run reuses the directory (same admin token, same factory devices,
 * none provisioned again).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

const MAIN = fileURLToPath(new URL('../src/main.ts', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'rotor-start-'));
const children = new Set<ChildProcess>();
/** The devices the first run registered (their UEID URNs). */
let firstNames: string[] = [];

afterAll(() => {
  for (const c of children) c.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

interface Started {
  readonly child: ChildProcess;
  readonly output: () => string;
  readonly exit: Promise<number | null>;
}

/** Starts `rotor start` and resolves once it printed 'Ctrl-C stops everything.'. */
async function startRotor(): Promise<Started> {
  const child = spawn(
    process.execPath,
    [
      MAIN,
      'start',
      '--data-dir',
      join(dir, 'data'),
      '--devices',
      '3',
      '--port',
      '0',
      '--device-port',
      '0',
      '--mqtt-port',
      '0',
    ],
    { cwd: dir, env: { ...process.env, NO_COLOR: '1' }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  children.add(child);
  let out = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr.on('data', (b: Buffer) => (out += b.toString()));
  const exit = new Promise<number | null>((resolve) => child.once('exit', resolve));
  await new Promise<void>((resolve, reject) => {
    const check = (): void => {
      if (out.includes('Ctrl-C stops everything.')) resolve();
    };
    child.stdout.on('data', check);
    void exit.then((code) => {
      reject(new Error(`rotor start exited ${code}:\n${out}`));
    });
  });
  return { child, output: () => out, exit };
}

/** Runs `rotor <args>` with the environment the start banner says to export; resolves with exit code and stdout. */
function rotor(args: string[], env: Record<string, string>): Promise<{ code: number | null; out: string }> {
  const child = spawn(process.execPath, [MAIN, ...args], {
    cwd: dir,
    env: { ...process.env, ...env, NO_COLOR: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  let out = '';
  let err = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr.on('data', (b: Buffer) => (err += b.toString()));
  return new Promise((resolve) =>
    child.once('exit', (code) => {
      children.delete(child);
      resolve({ code, out: code === 0 ? out : `${out}${err}` });
    }),
  );
}

describe('rotor start', () => {
  it('first run: creates the data dir, the printed commands update the fleet, SIGINT stops cleanly', async () => {
    const s = await startRotor();
    const text = s.output();
    expect(text).toContain('created the development data directory');
    expect(text).toContain('the factory provisioned 3 device(s)');
    const exportLine = /export ROTOR_SERVER=(\S+)/.exec(text);
    expect(exportLine).not.toBeNull();
    const env = { ROTOR_SERVER: exportLine![1]! };
    for (const t of ['admin', 'author', 'operator'])
      expect(statSync(join(dir, 'data', `${t}-token`)).mode & 0o777).toBe(0o600);
    expect(text).toMatch(/device API\s+https:\/\/127\.0\.0\.1:\d+/);

    // The banner's commands, with the ids each one prints.
    const upload = /npm run rotor -- (release upload .*?)\s+#/.exec(text)![1]!.split(/\s+/);
    const up = await rotor([...upload, '--json'], env);
    expect(up.code, up.out).toBe(0);
    const release = (JSON.parse(up.out) as { release: { id: string } }).release.id;
    const approve = /npm run rotor -- (release approve .*)/.exec(text)![1]!.replace('RELEASE', release);
    const ap = await rotor(approve.split(/\s+/), env);
    expect(ap.code, ap.out).toBe(0);
    const create = /npm run rotor -- (rollout create .*?)\s+#/.exec(text)![1]!.replace('RELEASE', release);
    const cr = await rotor([...create.split(/\s+/), '--json'], env);
    expect(cr.code, cr.out).toBe(0);
    const rollout = (JSON.parse(cr.out) as { id: string }).id;
    const watchCmd = /npm run rotor -- (rollout watch .*)/.exec(text)![1]!.replace('ROLLOUT', rollout);
    const watch = await rotor([...watchCmd.split(/\s+/), '--interval', '1s', '--json'], env);
    expect(watch.code, watch.out).toBe(0);
    expect(JSON.parse(watch.out)).toMatchObject({ state: 'completed', counts: { total: 3, succeeded: 3 } });
    const list = await rotor(
      ['device', 'list', '--json', '--token-file', join(dir, 'data', 'admin-token')],
      env,
    );
    expect(list.code, list.out).toBe(0);
    firstNames = (JSON.parse(list.out) as { items: { name: string }[] }).items.map((x) => x.name).sort();
    expect(firstNames).toHaveLength(3);
    // Every device runs a CapabilityManager: provisioned with the capability authority and its group's manifest
    // on first power-on, its store under its flash.
    for (let i = 0; i < 3; i++) {
      const devDir = join(dir, 'data', 'factory', 'devices', 'start', String(i).padStart(6, '0'));
      const prov = JSON.parse(readFileSync(join(devDir, 'capability-provisioning.json'), 'utf8')) as {
        manifestBase64: string;
      };
      expect(prov.manifestBase64.length).toBeGreaterThan(0);
      expect(statSync(join(devDir, 'flash', 'capabilities')).isDirectory()).toBe(true);
    }

    s.child.kill('SIGINT');
    expect(await s.exit).toBe(0);
    expect(s.output()).toContain('SIGINT: stopping the fleet and the server');
  }, 120_000);

  it('a second run reuses the data directory: same token, same devices', async () => {
    const token = readFileSync(join(dir, 'data', 'admin-token'), 'utf8');
    const s = await startRotor();
    expect(s.output()).toContain(`using ${join(dir, 'data')}`);
    expect(readFileSync(join(dir, 'data', 'admin-token'), 'utf8')).toBe(token);
    const env = {
      ROTOR_SERVER: /export ROTOR_SERVER=(\S+)/.exec(s.output())![1]!,
      ROTOR_TOKEN_FILE: join(dir, 'data', 'admin-token'),
    };

    const list = await rotor(['device', 'list', '--json'], env);
    expect(list.code, list.out).toBe(0);
    const items = (JSON.parse(list.out) as { items: { name: string; tags: string[]; group: string }[] })
      .items;
    // The same three factory devices (UEID URNs), registered once, none provisioned again.
    expect(items).toHaveLength(3);
    expect(items.every((x) => x.name.startsWith('urn:dev:ueid:') && x.tags.includes('factory'))).toBe(true);
    expect(items.map((x) => x.name).sort()).toEqual(firstNames);
    expect(s.output()).not.toContain('the factory provisioned');
    s.child.kill('SIGINT');
    expect(await s.exit).toBe(0);
  }, 90_000);
});
