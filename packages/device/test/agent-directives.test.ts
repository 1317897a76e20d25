/**
 * The copy (MF §8.4.10.5) and swap (MF §8.4.10.7) directives on the device: a staging component under the
 * firmware component's identifier ([fw, 'stage'], flash area `s`) and the firmware slot of the inactive bank.
 * Images are larger than the platform's inline-read bound (64 KiB), so they move between flash areas as streamed
 * references, never as whole arrays; image-match then checks digest and image-size without reading them.
 */
import { createHash } from 'node:crypto';
import { encode } from '@rotor/cose';
import {
  buildEnvelope,
  buildUpdateManifest,
  parseParameterValue,
  type ComponentId,
  type SuitCommand,
} from '@rotor/suit';
import { describe, expect, it } from 'vitest';
import { CLASS, DEVICE_ID, FW, image, keys, provisioned, URI, VENDOR } from './agent-fixture.ts';

const STAGE: ComponentId = [...FW, new TextEncoder().encode('stage')];
const sha256 = (b: Uint8Array): Uint8Array => new Uint8Array(createHash('sha256').update(b).digest());

const index = (i: number): SuitCommand => ({ op: 'set-component-index', code: 12, index: [i] });
const policy = (code: number, p = 15): SuitCommand => ({ op: 'policy', code, policy: p });
const set = (entries: [number, unknown][]): SuitCommand => ({
  op: 'params',
  code: 20,
  params: new Map(entries.map(([k, v]) => [k, parseParameterValue(k, v, `{${k}}`)])),
});
const digestParam = (b: Uint8Array): [number, unknown][] => [
  [3, encode([-16, sha256(b)])],
  [14, BigInt(b.length)],
];

/** A release of `img` (sequence 2) for [fw] and [fw, 'stage'] with the given install sequence. */
async function envelope(img: Uint8Array, install: SuitCommand[]): Promise<Uint8Array> {
  const desc = buildUpdateManifest({
    vendorDomain: VENDOR,
    className: CLASS,
    sequenceNumber: 2,
    invoke: true,
    components: [
      { id: [...FW], image: { digest: sha256(img), size: img.length } },
      { id: STAGE, image: { digest: sha256(img), size: img.length } },
    ],
  });
  const shared = [...(desc.sharedSequence as SuitCommand[]), index(0), set([[24, DEVICE_ID]]), policy(24)];
  const k = keys();
  return buildEnvelope(
    { ...desc, sharedSequence: shared, install, validate: [index(0), policy(3)] },
    { signers: [k.author, k.operator] },
  );
}

describe('copy and swap directives', () => {
  it('copy: fetch into staging, image-match there, copy into the slot, image-match the slot', async () => {
    const { agent, resources } = await provisioned();
    const img = image(2, 100 * 1024);
    resources.set(URI('stage'), img);
    const env = await envelope(img, [
      index(1),
      set([[21, URI('stage')]]),
      policy(21, 2),
      policy(3),
      index(0),
      set([[22, 1n]]),
      policy(22, 2),
      policy(3),
    ]);
    expect(await agent.update(env)).toMatchObject({ ok: true, bank: 'b', confirmed: true });
    const rec = (await agent.nv.bank('b'))?.images[0];
    expect(rec?.size).toBe(img.length);
    const stored = await agent.flash.readAll('b', FW, rec!.size, rec!.chunkSize);
    expect(Buffer.compare(stored, img)).toBe(0);
  });

  it('copy from an empty component is refused, the running firmware untouched', async () => {
    const { agent } = await provisioned();
    const img = image(2, 100 * 1024);
    const env = await envelope(img, [index(0), set([[22, 1n]]), policy(22, 2), policy(3)]);
    expect(await agent.update(env)).toMatchObject({
      ok: false,
      code: 'MANIFEST_REJECTED',
      suitCode: 'SUIT_OPERATION_FAILED',
    });
    expect(await agent.status()).toMatchObject({ bank: 'a', sequence: 1n, updating: false });
  });

  it('swap: the slot and the staging component exchange their images', async () => {
    const { agent, resources } = await provisioned();
    const img = image(2, 100 * 1024);
    const junk = image(9, 70 * 1024);
    resources.set(URI('stage'), img);
    resources.set(URI('junk'), junk);
    const env = await envelope(img, [
      // stage ← the new image; slot ← something else.
      index(1),
      set([[21, URI('stage')]]),
      policy(21, 2),
      policy(3),
      index(0),
      set([[21, URI('junk')], ...digestParam(junk)]),
      policy(21, 2),
      policy(3),
      // swap(slot, stage): the slot holds the new image, the staging component the other one.
      set([[22, 1n], ...digestParam(img)]),
      policy(31, 2),
      policy(3),
      index(1),
      set(digestParam(junk)),
      policy(3),
    ]);
    expect(await agent.update(env)).toMatchObject({ ok: true, bank: 'b', confirmed: true });
    const rec = (await agent.nv.bank('b'))?.images;
    expect(rec).toHaveLength(1);
    const stored = await agent.flash.readAll('b', FW, rec![0]!.size, rec![0]!.chunkSize);
    expect(Buffer.compare(stored, img)).toBe(0);
  });

  it('a swap that leaves the wrong image in the slot fails image-match and is refused', async () => {
    const { agent, resources } = await provisioned();
    const img = image(2, 100 * 1024);
    const junk = image(9, 70 * 1024);
    resources.set(URI('stage'), img);
    resources.set(URI('junk'), junk);
    const env = await envelope(img, [
      index(1),
      set([[21, URI('junk')], ...digestParam(junk)]),
      policy(21, 2),
      policy(3),
      index(0),
      set([[21, URI('stage')]]),
      policy(21, 2),
      policy(3),
      // After this swap the slot holds `junk`, but the shared sequence's image-digest says `img`.
      set([[22, 1n], ...digestParam(img)]),
      policy(31, 2),
      policy(3),
    ]);
    expect(await agent.update(env)).toMatchObject({
      ok: false,
      code: 'MANIFEST_REJECTED',
      suitCode: 'SUIT_CONDITION_FAILED',
    });
    expect(await agent.status()).toMatchObject({ bank: 'a', sequence: 1n, updating: false });
  });
});
