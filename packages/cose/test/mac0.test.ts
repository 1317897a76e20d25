import { describe, expect, it } from 'vitest';
import { Alg } from '../src/algorithms.ts';
import { CborMap, CborTag, decode, encode } from '../src/cbor.ts';
import { decodeCoseKey } from '../src/key.ts';
import type { MacKey } from '../src/keys.ts';
import { createMac0, decodeMac0, macStructure0, verifyMac0 } from '../src/mac0.ts';
import { softwareMacKey } from '../src/software.ts';
import { bitFlips, expectCode, expectCodeAsync, hex, vector } from './cose-fixtures.ts';

const HMAC = new Set<number>([Alg.HMAC256]);
const payload = new TextEncoder().encode('maced payload');

describe('COSE_Mac0 HMAC 256/256', () => {
  const key = softwareMacKey(new Uint8Array(32).fill(0x61), Alg.HMAC256, hex('6b'));

  it('round-trips (attached, detached, external AAD) with a full 32-byte tag', async () => {
    const msg = decodeMac0(await createMac0(payload, key), { tag: 'required' });
    expect(msg.alg).toBe(Alg.HMAC256);
    expect(msg.tag).toHaveLength(32);
    expect(msg.kid).toEqual(hex('6b'));
    await verifyMac0(msg, key, { allowedAlgs: HMAC });
    const det = decodeMac0(await createMac0(payload, key, { detached: true, externalAad: hex('01') }));
    await verifyMac0(det, key, { allowedAlgs: HMAC, detachedPayload: payload, externalAad: hex('01') });
    await expectCodeAsync(
      verifyMac0(det, key, { allowedAlgs: HMAC, detachedPayload: payload }),
      'COSE_BAD_MAC',
    );
  });

  it('refuses wrong keys, unallowed algs, truncated tags', async () => {
    const msg = decodeMac0(await createMac0(payload, key));
    await expectCodeAsync(
      verifyMac0(msg, softwareMacKey(new Uint8Array(32).fill(0x62), Alg.HMAC256), { allowedAlgs: HMAC }),
      'COSE_BAD_MAC',
    );
    await expectCodeAsync(
      verifyMac0(msg, key, { allowedAlgs: new Set([Alg.HMAC384]) }),
      'COSE_ALG_NOT_ALLOWED',
    );
    await expectCodeAsync(
      verifyMac0(msg, softwareMacKey(new Uint8Array(48), Alg.HMAC384), { allowedAlgs: new Set([5, 6]) }),
      'COSE_KEY_MISMATCH',
    );
    // A MacKey that returns a truncated tag (and a message with a truncated tag) never verifies.
    const truncated: MacKey = { alg: 5, kid: undefined, mac: async (d) => (await key.mac(d)).subarray(0, 8) };
    const short = decodeMac0(
      encode(
        new CborTag(17, [
          msg.protectedBytes,
          new Map(),
          payload,
          (await key.mac(macStructure0(msg.protectedBytes, new Uint8Array(), payload))).subarray(0, 8),
        ]),
      ),
    );
    await expectCodeAsync(verifyMac0(short, truncated, { allowedAlgs: HMAC }), 'COSE_BAD_MAC');
    expectCode(() => softwareMacKey(new Uint8Array(16), Alg.HMAC256), 'COSE_KEY_MISMATCH');
    expectCode(() => softwareMacKey(new Uint8Array(32), Alg.ES256), 'COSE_ALG_UNKNOWN');
    const unknown = decodeMac0(encode([encode(new Map([[1, 4]])), new Map(), payload, new Uint8Array(8)]));
    await expectCodeAsync(verifyMac0(unknown, key, { allowedAlgs: new Set([4]) }), 'COSE_ALG_UNKNOWN');
  });

  it('never verifies after any one-bit change', async () => {
    const bytes = await createMac0(payload, softwareMacKey(new Uint8Array(32).fill(0x61), Alg.HMAC256));
    const k2 = softwareMacKey(new Uint8Array(32).fill(0x61), Alg.HMAC256);
    for (const bad of bitFlips(bytes)) {
      let ok = true;
      try {
        await verifyMac0(decodeMac0(bad), k2, { allowedAlgs: HMAC });
      } catch {
        ok = false;
      }
      expect(ok).toBe(false);
    }
  });

  it('verifies the SUIT AES-KW manifest authentication block (COSE_Mac0, detached SUIT_Digest)', async () => {
    const env = (
      decode(vector('encryption/suit-manifest-aes-kw-content.signed.cbor'), { sortedKeys: false }) as CborTag
    ).value as CborMap;
    const auth = decode(env.get(2) as Uint8Array, { sortedKeys: false }) as Uint8Array[];
    const msg = decodeMac0(auth[1]!);
    const ck = decodeCoseKey(vector('keys/encryption-hmac256-key.cose_key'));
    const mk = softwareMacKey(ck.k!, ck.alg!);
    await verifyMac0(msg, mk, { allowedAlgs: HMAC, detachedPayload: auth[0]! });
    const wrong = auth[0]!.slice();
    wrong[wrong.length - 1] = wrong[wrong.length - 1]! ^ 1;
    await expectCodeAsync(verifyMac0(msg, mk, { allowedAlgs: HMAC, detachedPayload: wrong }), 'COSE_BAD_MAC');
  });
});
