/**
 * Sealed capability archives (issue 8: archived versions are compressed in non-volatile storage so a revert needs no
 * download; sealed with the enclave's sealing key so they are confidential at rest and a tampered one is refused).
 * In process with the enclave's key derivation (deriveSealingKeys(fuse).seal), and through the enclave process over
 * the IPQ (SealData / UnsealData): only the archive key crosses the queue.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { deflateRawSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  AtomicStore,
  decodeArchiveRecord,
  decodeIndex,
  deriveSealingKeys,
  EnclaveClient,
  enclaveArchiveSealer,
  INDEX_BLOB,
  SandboxPool,
  sealingKeyArchiveSealer,
  SimulatedFs,
  type ArchiveSealer,
  type CapabilityManager,
  type StorageFs,
} from '../src/index.ts';
import { buildModule } from './capability-modules/build.ts';
import { bytes, codecV1, codecV2, harness, metadata, moduleEnvelope } from './capability-fixture.ts';

const LOG = [{ module: 'rotor', name: 'log' }];
const pool = new SandboxPool({ spare: 1 });
let v1: Uint8Array;
let v2: Uint8Array;
const dirs: string[] = [];

beforeAll(async () => {
  v1 = await buildModule('codec-v1');
  v2 = await buildModule('codec-v2');
});
afterAll(async () => {
  await pool.close();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const deviceSealer = (): ArchiveSealer => sealingKeyArchiveSealer(deriveSealingKeys(randomBytes(32)).seal);

/** A manager with v1 archived (sealed) and v2 active. */
async function withArchive(sealer: ArchiveSealer, fs: StorageFs = new SimulatedFs()) {
  const h = await harness(pool, fs);
  const m = await h.open({ sealer });
  await m.install((await moduleEnvelope(v1, metadata('codec', [1, 0, 0]), 1)).envelope);
  await m.install((await moduleEnvelope(v2, metadata('codec', [2, 0, 0], { imports: LOG }), 2)).envelope);
  await m.settle();
  return { h, m };
}

async function archiveRecord(
  fs: StorageFs,
): Promise<{ store: AtomicStore; blob: string; bytes: Uint8Array }> {
  const store = await AtomicStore.open(fs, 'capabilities');
  const index = decodeIndex((await store.get(INDEX_BLOB))!);
  const blob = index.get('codec')!.archives[0]!.blob;
  return { store, blob, bytes: (await store.get(blob))! };
}

async function call(m: CapabilityManager, input: Uint8Array): Promise<number[]> {
  return [...(await m.call('codec', input)).output];
}

describe('sealed archives', () => {
  it('the archive is compressed and sealed; a revert opens it without a download', async () => {
    const sealer = deviceSealer();
    const { h, m } = await withArchive(sealer);
    const { bytes: rec } = await archiveRecord(h.fs);
    const a = decodeArchiveRecord(rec);
    expect(a.sealed).toBeDefined();
    // Neither the module nor its deflated form is in the record.
    const plain = deflateRawSync(v1, { level: 6 });
    expect(Buffer.from(rec).includes(Buffer.from(plain.subarray(0, 32)))).toBe(false);
    expect(Buffer.from(rec).includes(Buffer.from(v1.subarray(8, 40)))).toBe(false);
    expect(a.sealed!.ciphertext.length).toBeLessThan(v1.length + 64);
    await m.revert('codec');
    expect(await call(m, bytes(7, 8))).toEqual([...codecV1(bytes(7, 8))]);
    await m.settle();
    // v2 is now the sealed archive; reboot with the same sealer restores and keeps it.
    await m.close();
    const m2 = await h.open({ sealer });
    expect(m2.status()[0]).toMatchObject({ version: '1.0.0', archives: [{ version: '2.0.0' }] });
    await m2.revert('codec');
    expect(await call(m2, bytes(7, 8))).toEqual([...codecV2(bytes(7, 8))]);
    await m2.close();
  });

  it('a tampered archive is refused at boot (SEAL_FAILED) and never reverted to; the device runs on', async () => {
    for (const part of ['ciphertext', 'nonce', 'sealedKey'] as const) {
      const sealer = deviceSealer();
      const { h, m } = await withArchive(sealer);
      await m.close();
      const { store, blob, bytes: rec } = await archiveRecord(h.fs);
      const a = decodeArchiveRecord(rec);
      const target = a.sealed![part];
      // Flip one byte of that part inside the record.
      const at = Buffer.from(rec).indexOf(Buffer.from(target)) + Math.floor(target.length / 2);
      const bad = new Uint8Array(rec);
      bad[at] = bad[at]! ^ 0x01;
      await store.put(blob, bad);
      h.events.length = 0;
      const m2 = await h.open({ sealer });
      expect(h.events).toContainEqual({
        type: 'archive-dropped',
        name: 'codec',
        version: '1.0.0',
        reason: 'SEAL_FAILED',
      });
      // The active version still runs; there is nothing to revert to.
      expect(await call(m2, bytes(1))).toEqual([...codecV2(bytes(1))]);
      expect(m2.status()[0]?.archives).toEqual([]);
      await expect(m2.revert('codec')).rejects.toMatchObject({ code: 'CAP_NOT_LOADED' });
      await m2.close();
    }
  });

  it("another device's sealing key does not open it; an unsealed archive is refused when sealing is required", async () => {
    const { h, m } = await withArchive(deviceSealer());
    await m.close();
    h.events.length = 0;
    const elsewhere = await h.open({ sealer: deviceSealer() });
    expect(h.events).toContainEqual(
      expect.objectContaining({ type: 'archive-dropped', reason: 'SEAL_FAILED' }),
    );
    await elsewhere.close();

    // Archived without a sealer (format 1), then opened by a device that requires sealing: refused.
    const plain = await harness(pool);
    const m3 = await plain.open();
    await m3.install((await moduleEnvelope(v1, metadata('codec', [1, 0, 0]), 1)).envelope);
    await m3.install((await moduleEnvelope(v2, metadata('codec', [2, 0, 0], { imports: LOG }), 2)).envelope);
    await m3.settle();
    await m3.close();
    expect(decodeArchiveRecord((await archiveRecord(plain.fs)).bytes).sealed).toBeUndefined();
    const m4 = await plain.open({ sealer: deviceSealer() });
    expect(plain.events).toContainEqual(
      expect.objectContaining({ type: 'archive-dropped', reason: 'SEAL_FAILED' }),
    );
    await m4.close();
  });

  it('through the enclave process: the archive key is sealed by SealData over the IPQ', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'rotor-capseal-'));
    dirs.push(dir);
    const enclave = await EnclaveClient.start({ stateDir: dir });
    try {
      const sealer = enclaveArchiveSealer(enclave);
      const { h, m } = await withArchive(sealer);
      await m.close();
      // A restart of the agent: the archive opens again through the enclave.
      const m2 = await h.open({ sealer });
      await m2.revert('codec');
      expect(await call(m2, bytes(5))).toEqual([...codecV1(bytes(5))]);
      await m2.close();
      // The enclave refuses a sealed key under another label or altered.
      const sealed = await enclave.sealData('capability-archive/x', new Uint8Array(32).fill(7));
      expect([...(await enclave.unsealData('capability-archive/x', sealed))]).toEqual([
        ...new Uint8Array(32).fill(7),
      ]);
      await expect(enclave.unsealData('capability-archive/y', sealed)).rejects.toMatchObject({
        code: 'SEAL_FAILED',
      });
    } finally {
      await enclave.close();
    }
  });
});
