/**
 * A private SoftHSM2 token per test file (Debian package softhsm2; CI installs it): SOFTHSM2_CONF points at a config
 * in a temporary directory, so no system state is touched. Without SoftHSM2 the tests fail, they are not skipped.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const MODULES = [
  '/usr/lib/softhsm/libsofthsm2.so',
  '/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so',
  '/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so',
];

export interface SoftHsm {
  readonly module: string;
  readonly dir: string;
  readonly conf: string;
  /** Initializes a token in a free slot. */
  initToken(label: string, pin: string): void;
  cleanup(): void;
}

export function findSoftHsmModule(): string {
  const found = MODULES.find((m) => existsSync(m));
  if (found === undefined)
    throw new Error('SoftHSM2 is not installed (apt-get install softhsm2); the factory tests need it');
  return found;
}

export function createSoftHsm(): SoftHsm {
  const module = findSoftHsmModule();
  const dir = mkdtempSync(join(tmpdir(), 'rotor-factory-hsm-'));
  mkdirSync(join(dir, 'tokens'));
  const conf = join(dir, 'softhsm2.conf');
  writeFileSync(
    conf,
    `directories.tokendir = ${join(dir, 'tokens')}\nobjectstore.backend = file\nlog.level = ERROR\n`,
  );
  // SoftHSM2 reads SOFTHSM2_CONF when the library is initialized (C_Initialize).
  process.env.SOFTHSM2_CONF = conf;
  return {
    module,
    dir,
    conf,
    initToken(label, pin) {
      execFileSync(
        'softhsm2-util',
        ['--init-token', '--free', '--label', label, '--pin', pin, '--so-pin', '87654321'],
        {
          env: { ...process.env, SOFTHSM2_CONF: conf },
          stdio: 'pipe',
        },
      );
    },
    cleanup() {
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
