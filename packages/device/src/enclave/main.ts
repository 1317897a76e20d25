/**
 * The enclave process (seed 002 "Additional Processor"): `node enclave/main.ts --state <dir> [--pkcs11-module m
 * --pkcs11-token label --pkcs11-pin-file f]`. It serves the inter-processor queue on file descriptor 3 (a socket
 * pair the agent created when it spawned it) and exits when the agent closes its end.
 *
 * State directory: `fuse` (the device-unique secret, 0400, burned on the first boot of a blank device: see
 * seal.ts for the threat model) and `store/` (the AtomicStore with the sealed keys and the RoT chain).
 */
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, writeSync } from 'node:fs';
import { Socket } from 'node:net';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { DeviceError, isDeviceError } from '../errors.ts';
import { serveQueue } from '../ipq/server.ts';
import { nodeFs } from '../storage/fs.ts';
import { EnclaveCore } from './core.ts';
import { Pkcs11Backend } from './pkcs11.ts';
import { FUSE_BYTES } from './seal.ts';

const STORE = 'store';

/** Reads the fuse secret, burning it on a blank device (no sealed state yet). */
function loadFuse(state: string): Uint8Array {
  const path = join(state, 'fuse');
  if (existsSync(path)) return new Uint8Array(readFileSync(path));
  if (existsSync(join(state, STORE, 'keys'))) {
    throw new DeviceError('FUSE_MISSING', 'sealed state exists but the fuse secret is gone');
  }
  mkdirSync(state, { recursive: true, mode: 0o700 });
  const fuse = randomBytes(FUSE_BYTES);
  const fd = openSync(path, 'wx', 0o400);
  try {
    writeSync(fd, fuse);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  const dfd = openSync(state, 'r');
  try {
    fsyncSync(dfd);
  } finally {
    closeSync(dfd);
  }
  return new Uint8Array(fuse);
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      state: { type: 'string' },
      'pkcs11-module': { type: 'string' },
      'pkcs11-token': { type: 'string' },
      'pkcs11-pin-file': { type: 'string' },
      'max-frame': { type: 'string' },
    },
  });
  const state = values.state;
  if (state === undefined) {
    process.stderr.write(
      'usage: enclave/main.ts --state <dir> [--pkcs11-module m --pkcs11-token t --pkcs11-pin-file f]\n',
    );
    return 2;
  }
  let pkcs11: Pkcs11Backend | undefined;
  if (values['pkcs11-module'] !== undefined) {
    const pinFile = values['pkcs11-pin-file'];
    pkcs11 = Pkcs11Backend.open({
      module: values['pkcs11-module'],
      tokenLabel: values['pkcs11-token'] ?? '',
      pin: pinFile === undefined ? '' : readFileSync(pinFile, 'utf8').trim(),
    });
  }
  const fuse = loadFuse(state);
  const core = await EnclaveCore.open({ fs: nodeFs(state), dir: STORE, fuse, ...(pkcs11 ? { pkcs11 } : {}) });
  fuse.fill(0);
  const sock = new Socket({ fd: 3, readable: true, writable: true });
  const maxFrame = values['max-frame'] === undefined ? undefined : Number(values['max-frame']);
  serveQueue(sock, (type, body) => core.handle(type, body), {
    ...(maxFrame === undefined ? {} : { maxFrame }),
    onInternalError: (e) =>
      process.stderr.write(
        `enclave: internal error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`,
      ),
  });
  return new Promise<number>((resolve) => {
    const stop = (): void => {
      void core.close().then(
        () => {
          resolve(0);
        },
        () => {
          resolve(1);
        },
      );
    };
    sock.on('close', stop);
    sock.on('error', () => undefined);
    process.on('SIGTERM', stop);
  });
}

try {
  process.exitCode = await main();
} catch (e) {
  const code = isDeviceError(e) ? e.code : 'INTERNAL';
  process.stderr.write(`enclave: ${code}: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exitCode = 3;
}
// Exit even if a native module holds the loop open.
process.exit();
