/**
 * Platform.size (optional): with digest() it lets image-match (MF §8.4.9.3, digest and image-size) run without
 * reading the image — the fast path of a streaming Recipient that never holds a whole image in memory.
 */
import { describe, expect, it } from 'vitest';
import type { ComponentId } from '../src/model.ts';
import { MemoryPlatform, componentKey } from '../src/platform.ts';
import { processEnvelope } from '../src/processor.ts';
import { readEnvelope, vector } from './processor-envelope.ts';

const hex = (s: string): Uint8Array => Uint8Array.from(Buffer.from(s, 'hex'));
const VENDOR = hex('fa6b4a53d5ad5fdfbe9de663e4d41ffe');
const CLASS = hex('1492af1425695e48bf429b2d51f2ab45');
// Example 0's image: digest 0011…3210 (a sample value), image-size 34768.
const DIGEST = hex('00112233445566778899aabbccddeeff0123456789abcdeffedcba9876543210');
const C00: ComponentId = [hex('00')];

/** A platform that answers digest and size from metadata; reading the image is counted (and optionally refused). */
class StreamingPlatform extends MemoryPlatform {
  reads = 0;
  readonly #size: bigint | undefined;
  readonly #refuseRead: boolean;
  constructor(size: bigint | undefined, refuseRead: boolean) {
    super({
      vendorIds: [{ bytes: VENDOR, pen: false }],
      classIds: [CLASS],
      storage: new Map([[componentKey(C00), new Uint8Array(34768)]]),
    });
    this.#size = size;
    this.#refuseRead = refuseRead;
  }
  override read(component: ComponentId, slot?: number): Promise<Uint8Array | undefined> {
    this.reads++;
    if (this.#refuseRead) return Promise.reject(new Error('the image must not be read'));
    return super.read(component, slot);
  }
  digest(): Promise<Uint8Array | undefined> {
    return Promise.resolve(DIGEST);
  }
  size(): Promise<bigint | undefined> {
    return Promise.resolve(this.#size);
  }
}

async function invoke(p: MemoryPlatform): Promise<{ ok: boolean; code: string | undefined }> {
  const env = readEnvelope(vector('manifest/example0.signed.cbor'));
  const r = await processEnvelope(env, 'invoke', { platform: p });
  return { ok: r.ok, code: r.error?.code };
}

describe('Platform.size with Platform.digest', () => {
  it('image-match checks digest and image-size without reading the image', async () => {
    const p = new StreamingPlatform(34768n, true);
    expect(await invoke(p)).toEqual({ ok: true, code: undefined });
    expect(p.reads).toBe(0);
    expect(p.events.map((e) => e.op)).toEqual(['invoke']);
  });

  it('a size that differs from image-size fails the condition', async () => {
    const p = new StreamingPlatform(34769n, true);
    expect(await invoke(p)).toEqual({ ok: false, code: 'SUIT_CONDITION_FAILED' });
    expect(p.reads).toBe(0);
  });

  it('falls back to read() when size() cannot tell', async () => {
    const p = new StreamingPlatform(undefined, false);
    expect(await invoke(p)).toEqual({ ok: true, code: undefined });
    expect(p.reads).toBeGreaterThan(0);
  });
});
