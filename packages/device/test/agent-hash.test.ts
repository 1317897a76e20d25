/**
 * The pipeline's running SHA-256 (fetch/hash.ts): on a worker thread for large images, inline below — the same
 * digest over the same bytes either way, whatever the pieces (transferred, copied, views, empty), with bounded
 * bytes in flight; an image installed through the whole pipeline on a real directory hashes to its digest.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { PARALLEL_HASH_MIN, streamHash } from '../src/fetch/hash.ts';
import { installImage } from '../src/fetch/pipeline.ts';
import { memorySource } from '../src/fetch/source.ts';
import { Flash } from '../src/flash/flash.ts';
import { NvState } from '../src/flash/nvstate.ts';
import { nodeFs } from '../src/storage/fs.ts';

describe('streamHash', () => {
  it('inline and on a worker: the digest of the bytes, in order, whatever the pieces', async () => {
    const data = randomBytes(3 * 1024 * 1024 + 123);
    const want = createHash('sha256').update(data).digest();
    for (const size of [1000, PARALLEL_HASH_MIN]) {
      const h = streamHash(size);
      let off = 0;
      let i = 0;
      while (off < data.length) {
        const n = Math.min(data.length - off, [0, 1, 4096, 1024 * 1024 + 7, 65536][i++ % 5]!);
        const piece = data.subarray(off, off + n);
        // Alternately a view (copied: the caller keeps it) and an owned copy (transferred, then detached).
        if (i % 2 === 0) await h.update(piece);
        else {
          const own = new Uint8Array(piece);
          await h.update(own, true);
          expect(own.buffer.byteLength).toBe(0);
        }
        off += n;
      }
      expect(Buffer.from(await h.digest()).equals(want)).toBe(true);
      h.close();
    }
  });

  it('a large image through the whole pipeline (memory source → nodeFs) hashes to its digest', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'rotor-hash-'));
    try {
      const fs = nodeFs(dir);
      const flash = new Flash(fs, 'flash', { chunkSize: 1024 * 1024, checkpointEvery: 4 });
      await flash.format();
      const nv = await NvState.open(fs, 'nv');
      const img = randomBytes(PARALLEL_HASH_MIN + 4321);
      const rec = await installImage(
        {
          flash,
          nv,
          bank: 'b',
          component: [new TextEncoder().encode('fw')],
          maxSize: img.length,
          manifestDigest: new Uint8Array(32),
        },
        { kind: 'fetch', uri: 'mem:fw', expectedSize: BigInt(img.length) },
        undefined,
        { source: memorySource(new Map([['mem:fw', img]]), { pieceSize: 256 * 1024 }) },
      );
      expect(rec.size).toBe(img.length);
      expect(Buffer.from(rec.sha256).equals(createHash('sha256').update(img).digest())).toBe(true);
      expect(Buffer.from(await flash.readAll('b', rec.component, rec.size, rec.chunkSize)).equals(img)).toBe(
        true,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
