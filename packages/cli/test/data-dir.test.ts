/** The development data directory: a first run interrupted after the factory's init but before its firmware. */
import {
  existsSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ensureDataDir } from '../src/demo/setup.ts';

const dir = mkdtempSync(join(tmpdir(), 'rotor-datadir-'));
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('ensureDataDir', () => {
  it('starts over a factory whose profile has no firmware yet (factory.json alone is not complete)', async () => {
    const first = await ensureDataDir(dir);
    expect(first.created).toBe(true);
    // Simulate the crash: rotor.json not yet written, the profile as initFactory left it (firmware null).
    unlinkSync(join(dir, 'rotor.json'));
    const profilePath = join(dir, 'factory', 'profile.json');
    const profile = JSON.parse(readFileSync(profilePath, 'utf8')) as Record<string, unknown>;
    writeFileSync(profilePath, JSON.stringify({ ...profile, firmware: null }));
    const second = await ensureDataDir(dir);
    expect(second.created).toBe(true);
    const redone = JSON.parse(readFileSync(profilePath, 'utf8')) as { firmware: { sha256: string } | null };
    expect(redone.firmware?.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(readdirSync(dir).some((n) => n.startsWith('factory.partial-'))).toBe(true);
    expect(existsSync(join(dir, 'rotor.json'))).toBe(true);
  }, 120_000);
});
