import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { AtomicStore, DeviceError, nodeFs, SimulatedFs } from '../src/index.ts';

const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
const dec = (b: Uint8Array | undefined): string | undefined =>
  b === undefined ? undefined : new TextDecoder().decode(b);

describe('SimulatedFs power-loss model', () => {
  it('loses unsynced data and un-fsynced directory entries at a power cut', async () => {
    const fs = new SimulatedFs();
    await fs.mkdir('d');
    await fs.fsyncDir('');
    await fs.write('d/a', enc('synced'));
    await fs.fsync('d/a');
    await fs.fsyncDir('d');
    await fs.write('d/a', enc('overwritten, never synced'));
    await fs.write('d/b', enc('new file, synced, entry not'));
    await fs.fsync('d/b');
    fs.cutPower();
    await expect(fs.read('d/a')).rejects.toMatchObject({ code: 'POWER_CUT' });
    fs.reboot();
    // Overwritten but unsynced: a torn prefix, not the new content and not silently the old one.
    expect(dec(await fs.read('d/a'))).toBe('overwritten,');
    expect(await fs.read('d/b')).toBeUndefined();
    expect(await fs.list('d')).toEqual(['a']);
  });

  it('a rename is durable only after the directory fsync', async () => {
    const fs = new SimulatedFs({ unsyncedData: 'empty' });
    await fs.write('x', enc('1'));
    await fs.fsync('x');
    await fs.fsyncDir('');
    await fs.write('y', enc('2'));
    await fs.fsync('y');
    await fs.rename('y', 'x');
    fs.cutPower();
    fs.reboot();
    expect(dec(await fs.read('x'))).toBe('1');
    await fs.write('y', enc('2'));
    await fs.fsync('y');
    await fs.rename('y', 'x');
    await fs.fsyncDir('');
    fs.cutPower();
    fs.reboot();
    expect(dec(await fs.read('x'))).toBe('2');
    expect(await fs.list('')).toEqual(['x']);
  });

  it('size() reads a length without counting as an operation', async () => {
    const fs = new SimulatedFs();
    await fs.write('f', enc('hello'));
    const ops = fs.ops;
    expect(await fs.size('f')).toBe(5);
    expect(await fs.size('g')).toBeUndefined();
    expect(fs.ops).toBe(ops);
  });

  it('a scheduled cut fails that operation and every later one', async () => {
    const fs = new SimulatedFs();
    fs.cutPowerAt(1);
    await fs.write('a', enc('a'));
    await expect(fs.fsync('a')).rejects.toBeInstanceOf(DeviceError);
    await expect(fs.write('b', enc('b'))).rejects.toMatchObject({ code: 'POWER_CUT' });
    expect(fs.isOff).toBe(true);
  });
});

describe('AtomicStore', () => {
  it('put: a power cut at every operation leaves the old or the new value', async () => {
    for (let cut = 0; ; cut++) {
      const fs = new SimulatedFs();
      const s = await AtomicStore.open(fs, 'state');
      await s.put('k', enc('old value'));
      fs.cutPowerAt(fs.ops + cut);
      let done = true;
      try {
        await s.put('k', enc('new value'));
      } catch (e) {
        expect((e as DeviceError).code).toBe('POWER_CUT');
        done = false;
      }
      fs.reboot();
      const s2 = await AtomicStore.open(fs, 'state');
      const v = dec(await s2.get('k'));
      expect(['old value', 'new value']).toContain(v);
      if (done) {
        expect(v).toBe('new value');
        break;
      }
      expect((await fs.list('state')).filter((n) => n.endsWith('.tmp'))).toEqual([]);
    }
  });

  it('transact: all or nothing across blobs under a power cut at every operation, including during recovery', async () => {
    const before = new Map([
      ['a', enc('a0')],
      ['b', enc('b0')],
      ['c', enc('c0')],
    ]);
    const change = new Map<string, Uint8Array | null>([
      ['a', enc('a1')],
      ['b', null],
      ['d', enc('d1')],
    ]);
    const snapshot = async (s: AtomicStore): Promise<string> =>
      JSON.stringify(await Promise.all((await s.names()).map(async (n) => [n, dec(await s.get(n))])));
    const fresh = async (): Promise<{ fs: SimulatedFs; s: AtomicStore }> => {
      const fs = new SimulatedFs();
      const s = await AtomicStore.open(fs, 'x');
      for (const [k, v] of before) await s.put(k, v);
      return { fs, s };
    };
    const { s: ref } = await fresh();
    const oldState = await snapshot(ref);
    await ref.transact(change);
    const newState = await snapshot(ref);
    let cuts = 0;
    for (let cut = 0; ; cut++) {
      const { fs, s } = await fresh();
      fs.cutPowerAt(fs.ops + cut);
      const flag = { committed: false };
      let finished = true;
      try {
        await s.transact(change, () => (flag.committed = true));
      } catch (e) {
        expect((e as DeviceError).code).toBe('POWER_CUT');
        finished = false;
      }
      fs.reboot();
      // A second cut during recovery, then recover again.
      fs.cutPowerAt(cut % 5);
      await AtomicStore.open(fs, 'x').catch(() => undefined);
      fs.reboot();
      const s2 = await AtomicStore.open(fs, 'x');
      const state = await snapshot(s2);
      expect([oldState, newState]).toContain(state);
      if (flag.committed) expect(state).toBe(newState);
      if (finished) break;
      cuts++;
    }
    expect(cuts).toBeGreaterThan(10);
  });

  it('works over a real directory, removing leftover tmp files and redoing a committed journal', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'rotor-store-'));
    try {
      const fs = nodeFs(dir);
      const s = await AtomicStore.open(fs, 'st');
      await s.put('one', enc('1'));
      await s.transact(
        new Map([
          ['two', enc('2')],
          ['one', null],
        ]),
      );
      expect(await s.names()).toEqual(['two']);
      writeFileSync(join(dir, 'st', 'two.99.tmp'), 'garbage');
      const s2 = await AtomicStore.open(fs, 'st');
      expect(await fs.list('st')).toEqual(['two']);
      expect(dec(await s2.get('two'))).toBe('2');
      await expect(s2.put('../evil', enc('x'))).rejects.toMatchObject({ code: 'STORAGE_NAME' });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('nodeFs direct I/O (O_DIRECT for large aligned writes)', () => {
  it('writes aligned pooled buffers directly, anything else buffered, with the same content and durability calls', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'rotor-direct-'));
    try {
      const fs = nodeFs(dir);
      await fs.mkdir('d');
      const size = 256 * 1024;
      const buf = fs.allocBuffer!(size);
      expect(buf.length).toBe(size);
      const bytes = randomBytes(size);
      buf.set(bytes);
      await fs.write('d/aligned', buf);
      await fs.fsync('d/aligned');
      await fs.fsyncDir('d');
      expect(Buffer.compare(Buffer.from((await fs.read('d/aligned'))!), bytes)).toBe(0);
      // Not a multiple of the alignment (a last, short chunk), a view at an odd offset, a plain buffer: buffered.
      await fs.write('d/short', buf.subarray(0, size - 100));
      await fs.write('d/odd', buf.subarray(1, size - 4095));
      await fs.write('d/plain', new Uint8Array(bytes));
      expect((await fs.read('d/short'))!.length).toBe(size - 100);
      expect(Buffer.compare(Buffer.from((await fs.read('d/odd'))!), bytes.subarray(1, size - 4095))).toBe(0);
      expect(Buffer.compare(Buffer.from((await fs.read('d/plain'))!), bytes)).toBe(0);
      // Rewriting a file directly truncates it first.
      await fs.write('d/short', buf);
      expect((await fs.read('d/short'))!.length).toBe(size);
      expect(await fs.size!('d/short')).toBe(size);
      expect(await fs.size!('d/none')).toBeUndefined();
      // Released buffers are reused (pooled), small sizes are plain buffers.
      fs.releaseBuffer!(buf);
      expect(fs.allocBuffer!(size)).toBe(buf);
      expect(fs.allocBuffer!(1000).length).toBe(1000);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

afterAll(() => undefined);
