import { describe, expect, it } from 'vitest';
import { Alg } from '../src/algorithms.ts';
import { CborTag, decode, encode } from '../src/cbor.ts';
import { createSign, decodeSign, verifySignature } from '../src/sign.ts';
import { generateSigningKey, softwareSigner, softwareVerifier } from '../src/software.ts';
import { bitFlips, expectCode, hex } from './cose-fixtures.ts';

const ALL = new Set<number>([Alg.ES256, Alg.ESP256, Alg.EdDSA, Alg.Ed25519]);
const payload = new TextEncoder().encode('multi-signed payload');

describe('COSE_Sign (several signers)', () => {
  const p256 = generateSigningKey(Alg.ESP256);
  const ed = generateSigningKey(Alg.Ed25519);
  const signers = [
    softwareSigner(p256.privateKey, Alg.ESP256, hex('01')),
    softwareSigner(ed.privateKey, Alg.Ed25519, hex('02')),
  ];
  const verifiers = [
    softwareVerifier(p256.publicKey, Alg.ESP256, hex('01')),
    softwareVerifier(ed.publicKey, Alg.Ed25519, hex('02')),
  ];

  it('verifies each signer independently', async () => {
    const msg = decodeSign(await createSign(payload, signers, { protectedExtra: new Map([[3, 0]]) }), {
      tag: 'required',
    });
    expect(msg.signatures.map((s) => s.alg)).toEqual([Alg.ESP256, Alg.Ed25519]);
    expect(msg.signatures[1]!.kid).toEqual(hex('02'));
    verifySignature(msg, 0, verifiers[0]!, { allowedAlgs: ALL });
    verifySignature(msg, 1, verifiers[1]!, { allowedAlgs: ALL });
    expectCode(() => {
      verifySignature(msg, 0, verifiers[1]!, { allowedAlgs: ALL });
    }, 'COSE_KEY_MISMATCH');
    expectCode(() => {
      verifySignature(msg, 2, verifiers[0]!, { allowedAlgs: ALL });
    }, 'COSE_NO_KEY');
    expectCode(() => {
      verifySignature(msg, 1, verifiers[1]!, { allowedAlgs: new Set([Alg.ESP256]) });
    }, 'COSE_ALG_NOT_ALLOWED');
  });

  it('reports the one bad signature among two', async () => {
    const bytes = await createSign(payload, signers);
    const raw = (decode(bytes) as CborTag).value as unknown[];
    const sigs = raw[3] as [Uint8Array, Map<number, unknown>, Uint8Array][];
    const bad = sigs[1]![2].slice();
    bad[10] = bad[10]! ^ 0x40;
    const tampered = encode(
      new CborTag(98, [raw[0], raw[1], raw[2], [sigs[0], [sigs[1]![0], sigs[1]![1], bad]]]),
    );
    const msg = decodeSign(tampered);
    verifySignature(msg, 0, verifiers[0]!, { allowedAlgs: ALL });
    expectCode(() => {
      verifySignature(msg, 1, verifiers[1]!, { allowedAlgs: ALL });
    }, 'COSE_BAD_SIGNATURE');
  });

  it('supports detached payloads and external AAD', async () => {
    const aad = hex('aa');
    const msg = decodeSign(await createSign(payload, signers, { detached: true, externalAad: aad }));
    expect(msg.payload).toBeNull();
    verifySignature(msg, 0, verifiers[0]!, { allowedAlgs: ALL, detachedPayload: payload, externalAad: aad });
    expectCode(() => {
      verifySignature(msg, 1, verifiers[1]!, { allowedAlgs: ALL, detachedPayload: payload });
    }, 'COSE_BAD_SIGNATURE');
  });

  it('refuses malformed structures', async () => {
    expectCode(() => decodeSign(encode([new Uint8Array(), new Map(), payload, []])), 'COSE_MALFORMED');
    expectCode(
      () =>
        decodeSign(
          encode([
            new Uint8Array(),
            new Map(),
            payload,
            [[new Uint8Array(), new Map([[1, -9]]), new Uint8Array(64)]],
          ]),
        ),
      'COSE_HEADER_INVALID',
    );
    await expect(createSign(payload, [])).rejects.toMatchObject({ code: 'COSE_MALFORMED' });
  });

  it('never verifies signer 0 after a one-bit change in the body or its signature', async () => {
    const bytes = await createSign(
      payload,
      [signers[0]!].map((s) => ({ ...s, kid: undefined, sign: s.sign.bind(s) })),
    );
    for (const bad of bitFlips(bytes)) {
      expect(() => {
        verifySignature(decodeSign(bad), 0, verifiers[0]!, { allowedAlgs: ALL });
      }).toThrow();
    }
  });
});
