/** The provisioning journal refuses a corrupt complete record with the factory's own error (not a SyntaxError). */
import 'reflect-metadata';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ProvisioningJournal } from '../../src/factory/provision.ts';

const dir = mkdtempSync(join(tmpdir(), 'rotor-journal-'));
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('ProvisioningJournal.open', () => {
  it('a complete line that is not JSON is FACTORY_STATE_INVALID', async () => {
    const path = join(dir, 'corrupt.journal');
    writeFileSync(path, '{"i":0,"s":"begin"}\n{not json\n');
    await expect(ProvisioningJournal.open(path)).rejects.toMatchObject({ code: 'FACTORY_STATE_INVALID' });
  });
});
