import { createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  decodeEncrypt,
  decryptContent,
  softwareKeyAgreement,
  softwareKeyUnwrapper,
  unwrapContentKey,
} from '@rotor/cose';
import { MemoryPlatform, componentId, type DecryptRequest } from '../src/platform.ts';
import { processEnvelope } from '../src/processor.ts';
import { VECTORS } from './commands-vectors.ts';
import { readEnvelope, testAuthenticator, vector } from './processor-envelope.ts';

const utf8 = (s: string): Uint8Array => new TextEncoder().encode(s);
const PLAINTEXT = vector('encryption/plaintext-payload.bin');

/** The device-side decrypt hook built from the COSE layer: KEK `aaaa…` (kid-1) and the ECDH recipient key kid-2. */
function coseDecrypt(
  kekBytes = utf8('aaaaaaaaaaaaaaaa'),
): (info: Uint8Array, ct: Uint8Array, r: DecryptRequest) => Promise<Uint8Array> {
  const kek = softwareKeyUnwrapper(kekBytes, -3, utf8('kid-1'));
  const priv = createPrivateKey(
    readFileSync(join(VECTORS, 'keys/encryption-ecdh-recipient-kid-2.private.pem')),
  );
  const agreement = softwareKeyAgreement(priv, utf8('kid-2'));
  return async (info, ct) => {
    const msg = decodeEncrypt(info);
    const cek = await unwrapContentKey(
      msg,
      { unwrappers: [kek], agreements: [agreement] },
      { allowedAlgs: new Set([-3, -29]) },
    );
    return decryptContent(msg, cek, ct, { allowedAlgs: new Set([1, -65534]) });
  };
}

const same = (a: Uint8Array | undefined, b: Uint8Array): boolean =>
  a !== undefined && Buffer.from(a).equals(Buffer.from(b));

describe('encrypted payloads (draft-ietf-suit-firmware-encryption)', () => {
  it('write with encryption-info decrypts (AES-KW + A128GCM)', async () => {
    const p = new MemoryPlatform({ decrypt: coseDecrypt() });
    const r = await processEnvelope(
      readEnvelope(vector('encryption/suit-manifest-aes-kw-content.signed.cbor')),
      'update',
      { platform: p },
    );
    expect(r.error?.message).toBeUndefined();
    expect(same(p.get(componentId('plaintext-firmware')), PLAINTEXT)).toBe(true);
  });
  it('write with encryption-info decrypts (ECDH-ES + A128KW)', async () => {
    const p = new MemoryPlatform({ decrypt: coseDecrypt() });
    const r = await processEnvelope(
      readEnvelope(vector('encryption/suit-manifest-es-ecdh-content.signed.cbor')),
      'update',
      { platform: p },
    );
    expect(r.error?.message).toBeUndefined();
    expect(same(p.get(componentId('decrypted-firmware')), PLAINTEXT)).toBe(true);
  });
  for (const [file, plain, enc] of [
    [
      'suit-manifest-aes-kw.signed.cbor',
      componentId('plaintext-firmware'),
      componentId('encrypted-firmware'),
    ],
    ['suit-manifest-aes-kw-slot.signed.cbor', [Uint8Array.of(0)], [Uint8Array.of(1)]],
  ] as const) {
    it(`fetch then copy with encryption-info decrypts (${file})`, async () => {
      const ciphertext = vector('encryption/encrypted-payload-aes-kw-aes-gcm.bin');
      const p = new MemoryPlatform({
        decrypt: coseDecrypt(),
        resources: { 'coaps://example.com/encrypted-firmware': ciphertext },
      });
      const r = await processEnvelope(readEnvelope(vector(`encryption/${file}`)), 'update', { platform: p });
      expect(r.error?.message).toBeUndefined();
      expect(same(p.get(enc), ciphertext)).toBe(true);
      expect(same(p.get(plain), PLAINTEXT)).toBe(true);
    });
  }
  it('the dependent supplies encryption-info and content to its dependency (ES-DH dependency example)', async () => {
    const p = new MemoryPlatform({ decrypt: coseDecrypt() });
    const r = await processEnvelope(
      readEnvelope(vector('encryption/suit-manifest-es-ecdh-dependency.signed.cbor')),
      'update',
      {
        platform: p,
        authenticateDependency: testAuthenticator(),
      },
    );
    expect(r.error?.message).toBeUndefined();
    expect(same(p.get(componentId('decrypted-firmware')), PLAINTEXT)).toBe(true);
  });
  it('a wrong key fails with SUIT_DECRYPT_FAILED and writes nothing', async () => {
    const p = new MemoryPlatform({ decrypt: coseDecrypt(utf8('bbbbbbbbbbbbbbbb')) });
    const r = await processEnvelope(
      readEnvelope(vector('encryption/suit-manifest-aes-kw-content.signed.cbor')),
      'update',
      { platform: p },
    );
    expect(r.error?.code).toBe('SUIT_DECRYPT_FAILED');
    expect(p.storage.size).toBe(0);
    const res = r.report.result;
    expect(res === true ? undefined : res.record).toMatchObject({ manifestSection: 20, componentIndex: 0 });
  });
  it('a platform without a key refuses; a stub hook sees the encryption info and ciphertext', async () => {
    const none = new MemoryPlatform();
    const r = await processEnvelope(
      readEnvelope(vector('encryption/suit-manifest-aes-kw-content.signed.cbor')),
      'update',
      { platform: none },
    );
    expect(r.error?.code).toBe('SUIT_DECRYPT_FAILED');
    const seen: [Uint8Array, Uint8Array][] = [];
    const stub = new MemoryPlatform({
      decrypt: (info, ct) => {
        seen.push([info, ct]);
        return Promise.resolve(utf8('stub'));
      },
    });
    const ok = await processEnvelope(
      readEnvelope(vector('encryption/suit-manifest-aes-kw-content.signed.cbor')),
      'update',
      { platform: stub },
    );
    expect(ok.ok).toBe(true);
    expect(seen[0]?.[0][0]).toBe(0xd8); // tag 96 head
    expect(seen[0]?.[1].length).toBe(46);
    expect(same(stub.get(componentId('plaintext-firmware')), utf8('stub'))).toBe(true);
  });
});
