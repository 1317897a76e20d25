import { createHash, verify as cryptoVerify } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Alg } from '../src/algorithms.ts';
import { CborMap, CborTag, decode, encode } from '../src/cbor.ts';
import { coseKeyToKeyObject, decodeCoseKey, loadPublicKey } from '../src/key.ts';
import type { Verifier } from '../src/keys.ts';
import { createSign1, decodeSign1, sigStructure1, verifySign1 } from '../src/sign1.ts';
import {
  generateSigningKey,
  softwareSigner,
  softwareVerifier,
  verifierFromCoseKey,
} from '../src/software.ts';
import { bitFlips, expectCode, hex, toHex, vector, VECTORS } from './cose-fixtures.ts';

const ALL_SIG = new Set<number>([Alg.ES256, Alg.ESP256, Alg.EdDSA, Alg.Ed25519]);
const payload = new TextEncoder().encode('firmware digest goes here');

function pair(
  alg: number,
  kid?: Uint8Array,
): { signer: ReturnType<typeof softwareSigner>; verifier: Verifier } {
  const { privateKey, publicKey } = generateSigningKey(alg);
  return { signer: softwareSigner(privateKey, alg, kid), verifier: softwareVerifier(publicKey, alg, kid) };
}

/** A COSE_Sign1 with hand-made header buckets, signed by `signer` over the supplied protected bytes. */
async function handMade(
  protectedMap: Map<unknown, unknown> | null,
  unprotected: Map<unknown, unknown>,
  signer: ReturnType<typeof softwareSigner>,
): Promise<Uint8Array> {
  const p = protectedMap === null ? new Uint8Array() : encode(protectedMap);
  const sig = await signer.sign(sigStructure1(p, new Uint8Array(), payload));
  return encode(new CborTag(18, [p, unprotected, payload, sig]));
}

describe('Sig_structure', () => {
  it('hand-assembled Signature1 structure equals the generic deterministic encoding', () => {
    for (const n of [0, 1, 23, 24, 255, 256, 65535, 65536]) {
      const p = new Uint8Array(n % 300).fill(1);
      const aad = new Uint8Array(n % 7).fill(2);
      const body = new Uint8Array(n).fill(3);
      expect(toHex(sigStructure1(p, aad, body))).toBe(toHex(encode(['Signature1', p, aad, body])));
    }
  });
});

describe('COSE_Sign1 create/verify', () => {
  for (const alg of [Alg.ES256, Alg.ESP256, Alg.Ed25519, Alg.EdDSA]) {
    it(`round-trips with alg ${alg} (attached, detached, external AAD)`, async () => {
      const { signer, verifier } = pair(alg, hex('6b6964'));
      const bytes = await createSign1(payload, signer);
      const msg = decodeSign1(bytes, { tag: 'required' });
      expect(msg.alg).toBe(alg);
      expect(toHex(msg.kid!)).toBe('6b6964');
      expect(msg.unprotectedHeaders.get(4)).toEqual(hex('6b6964'));
      expect(msg.signature).toHaveLength(64);
      verifySign1(msg, verifier, { allowedAlgs: ALL_SIG });

      const aad = hex('0102');
      const det = decodeSign1(await createSign1(payload, signer, { detached: true, externalAad: aad }));
      expect(det.payload).toBeNull();
      verifySign1(det, verifier, { allowedAlgs: ALL_SIG, detachedPayload: payload, externalAad: aad });
      expectCode(() => {
        verifySign1(det, verifier, { allowedAlgs: ALL_SIG, detachedPayload: payload });
      }, 'COSE_BAD_SIGNATURE');
      expectCode(() => {
        verifySign1(det, verifier, { allowedAlgs: ALL_SIG });
      }, 'COSE_MALFORMED');
      expectCode(() => {
        verifySign1(msg, verifier, { allowedAlgs: ALL_SIG, detachedPayload: payload });
      }, 'COSE_UNSUPPORTED');
      const untagged = await createSign1(payload, signer, { tagged: false });
      expectCode(() => decodeSign1(untagged, { tag: 'required' }), 'COSE_MALFORMED');
      expectCode(() => decodeSign1(bytes, { tag: 'forbidden' }), 'COSE_MALFORMED');
      verifySign1(decodeSign1(untagged), verifier, { allowedAlgs: ALL_SIG });
    });
  }

  it('verifies ES256 with an ESP256 key and EdDSA with an Ed25519 key (and vice versa)', async () => {
    const p = generateSigningKey(Alg.ES256);
    const es256 = decodeSign1(await createSign1(payload, softwareSigner(p.privateKey, Alg.ES256)));
    verifySign1(es256, softwareVerifier(p.publicKey, Alg.ESP256), { allowedAlgs: ALL_SIG });
    const e = generateSigningKey(Alg.Ed25519);
    const eddsa = decodeSign1(await createSign1(payload, softwareSigner(e.privateKey, Alg.EdDSA)));
    verifySign1(eddsa, softwareVerifier(e.publicKey, Alg.Ed25519), { allowedAlgs: ALL_SIG });
    const ed25519 = decodeSign1(await createSign1(payload, softwareSigner(e.privateKey, Alg.Ed25519)));
    verifySign1(ed25519, softwareVerifier(e.publicKey, Alg.EdDSA), { allowedAlgs: ALL_SIG });
    // The allowlist still applies to the message's own alg.
    expectCode(() => {
      verifySign1(es256, softwareVerifier(p.publicKey, Alg.ESP256), { allowedAlgs: new Set([Alg.ESP256]) });
    }, 'COSE_ALG_NOT_ALLOWED');
  });

  it('refuses algorithms outside the allowlist, unknown algorithms and keys of the wrong type', async () => {
    const { signer, verifier } = pair(Alg.ESP256);
    const msg = decodeSign1(await createSign1(payload, signer));
    expectCode(() => {
      verifySign1(msg, verifier, { allowedAlgs: new Set([Alg.Ed25519]) });
    }, 'COSE_ALG_NOT_ALLOWED');
    expectCode(() => {
      verifySign1(msg, verifier, { allowedAlgs: new Set() });
    }, 'COSE_ALG_NOT_ALLOWED');
    const ed = pair(Alg.Ed25519);
    expectCode(() => {
      verifySign1(msg, ed.verifier, { allowedAlgs: ALL_SIG });
    }, 'COSE_KEY_MISMATCH');
    // A Verifier that claims an alg outside the signature table never matches.
    const fake: Verifier = { alg: Alg.HMAC256, kid: undefined, verify: () => true };
    expectCode(() => {
      verifySign1(msg, fake, { allowedAlgs: ALL_SIG });
    }, 'COSE_KEY_MISMATCH');

    // Unknown alg (-46 HSS-LMS is not implemented): decodes for inspection, never verifies.
    const unknown = decodeSign1(await handMade(new Map([[1, -46]]), new Map(), signer));
    expect(unknown.alg).toBe(-46);
    expectCode(() => {
      verifySign1(unknown, verifier, { allowedAlgs: new Set([-46]) });
    }, 'COSE_ALG_UNKNOWN');
    // A MAC algorithm in a COSE_Sign1 is not a signature algorithm.
    const mac = decodeSign1(await handMade(new Map([[1, 5]]), new Map(), signer));
    expectCode(() => {
      verifySign1(mac, verifier, { allowedAlgs: new Set([5]) });
    }, 'COSE_ALG_UNKNOWN');
    // Text algorithms are not in the table.
    expectCode(
      () => decodeSign1(encode([encode(new Map([[1, 'ES256']])), new Map(), payload, new Uint8Array(64)])),
      'COSE_ALG_UNKNOWN',
    );

    // Key/alg mismatches when building backends.
    expectCode(
      () => softwareSigner(generateSigningKey(Alg.Ed25519).privateKey, Alg.ES256),
      'COSE_KEY_MISMATCH',
    );
    expectCode(
      () => softwareVerifier(generateSigningKey(Alg.ES256).publicKey, Alg.EdDSA),
      'COSE_KEY_MISMATCH',
    );
    expectCode(() => softwareSigner(generateSigningKey(Alg.ES256).publicKey, Alg.ES256), 'COSE_KEY_MISMATCH');
    expectCode(
      () => softwareSigner(generateSigningKey(Alg.ES256).privateKey, Alg.HMAC256),
      'COSE_ALG_UNKNOWN',
    );
    const encKey = decodeCoseKey(vector('keys/encryption-ecdh-recipient-kid-2.public.cose_key'));
    expectCode(() => verifierFromCoseKey(encKey), 'COSE_KEY_MISMATCH'); // alg -29 is not a signature alg
    expectCode(() => verifierFromCoseKey({ ...encKey, alg: undefined }), 'COSE_KEY_MISMATCH'); // no alg at all
    expectCode(() => verifierFromCoseKey({ ...encKey, alg: undefined }, Alg.Ed25519), 'COSE_KEY_MISMATCH');
    expectCode(() => verifierFromCoseKey({ ...encKey, alg: Alg.ESP256, keyOps: [1] }), 'COSE_KEY_MISMATCH');
    verifierFromCoseKey({ ...encKey, alg: undefined }, Alg.ESP256);
  });

  it('checks header buckets (RFC 9052 §3, §3.1)', async () => {
    const { signer } = pair(Alg.ESP256);
    // alg only unprotected
    expectCode(
      () => decodeSign1(encode([new Uint8Array(), new Map([[1, -9]]), payload, new Uint8Array(64)])),
      'COSE_HEADER_INVALID',
    );
    // label in both buckets
    expectCode(
      () =>
        decodeSign1(
          encode([
            encode(
              new Map<number, unknown>([
                [1, -9],
                [4, hex('01')],
              ]),
            ),
            new Map([[4, hex('01')]]),
            payload,
            new Uint8Array(64),
          ]),
        ),
      'COSE_HEADER_INVALID',
    );
    await expect(
      createSign1(payload, signer, { protectedExtra: new Map([[3, 0]]), unprotected: new Map([[3, 0]]) }),
    ).rejects.toMatchObject({
      code: 'COSE_HEADER_INVALID',
    });
    // crit with an unknown label
    const crit = await handMade(
      new Map<unknown, unknown>([
        [1, -9],
        [2, [-70000]],
        [-70000, 1],
      ]),
      new Map(),
      signer,
    );
    expectCode(() => decodeSign1(crit), 'COSE_CRIT_UNSUPPORTED');
    // ... accepted when the caller declares it understood
    expect(decodeSign1(crit, { critLabels: new Set([-70000]) }).alg).toBe(-9);
    // crit listing understood base labels is fine
    expect(
      decodeSign1(
        await handMade(
          new Map<unknown, unknown>([
            [1, -9],
            [2, [1]],
          ]),
          new Map(),
          signer,
        ),
      ).alg,
    ).toBe(-9);
    // crit malformed: empty, in unprotected, label absent from protected
    for (const [p, u] of [
      [
        new Map<unknown, unknown>([
          [1, -9],
          [2, []],
        ]),
        new Map(),
      ],
      [new Map<unknown, unknown>([[1, -9]]), new Map([[2, [1]]])],
      [
        new Map<unknown, unknown>([
          [1, -9],
          [2, [4]],
        ]),
        new Map([[4, hex('01')]]),
      ],
    ] as const) {
      expectCode(
        () => decodeSign1(encode([encode(p), u, payload, new Uint8Array(64)])),
        'COSE_HEADER_INVALID',
      );
    }
    // wrong types
    expectCode(
      () =>
        decodeSign1(encode([encode(new Map([[1, -9]])), new Map([[4, 'kid']]), payload, new Uint8Array(64)])),
      'COSE_HEADER_INVALID',
    );
    expectCode(
      () =>
        decodeSign1(
          encode([
            encode(new Map([[1, -9]])),
            new Map([
              [5, hex('00')],
              [6, hex('00')],
            ]),
            payload,
            new Uint8Array(64),
          ]),
        ),
      'COSE_HEADER_INVALID',
    );
    expectCode(
      () =>
        decodeSign1(
          encode([
            encode(new Map([[1, -9]])),
            new Map([[new Uint8Array(1), 1]]),
            payload,
            new Uint8Array(64),
          ]),
        ),
      'COSE_HEADER_INVALID',
    );
    // structure
    expectCode(() => decodeSign1(encode([encode(new Map([[1, -9]])), new Map(), payload])), 'COSE_MALFORMED');
    expectCode(
      () => decodeSign1(encode([encode(new Map([[1, -9]])), new Map(), 'text', new Uint8Array(64)])),
      'COSE_MALFORMED',
    );
    expectCode(
      () => decodeSign1(encode([encode([1]), new Map(), payload, new Uint8Array(64)])),
      'COSE_MALFORMED',
    );
    expectCode(
      () =>
        decodeSign1(
          encode(new CborTag(17, [encode(new Map([[1, -9]])), new Map(), payload, new Uint8Array(64)])),
        ),
      'COSE_MALFORMED',
    );
  });

  it('accepts unsorted header maps (COSE does not require deterministic encoding) but not duplicates', async () => {
    const { signer, verifier } = pair(Alg.ESP256);
    // protected {4: h'01', 1: -9} in wire order (unsorted)
    const p = hex('a2044101' + '0128');
    const sig = await signer.sign(sigStructure1(p, new Uint8Array(), payload));
    const body = encode(new CborTag(18, [p, new Map(), payload, sig]));
    verifySign1(decodeSign1(body), verifier, { allowedAlgs: ALL_SIG });
    const dup = hex('a3' + '0128' + '044101' + '0128');
    expectCode(() => decodeSign1(encode([dup, new Map(), payload, sig])), 'CBOR_DUPLICATE_KEY');
  });

  for (const alg of [Alg.ESP256, Alg.Ed25519]) {
    it(`never verifies after any one-bit change (alg ${alg})`, async () => {
      const { signer, verifier } = pair(alg);
      const bytes = await createSign1(payload, signer);
      let n = 0;
      for (const bad of bitFlips(bytes)) {
        expect(() => {
          verifySign1(decodeSign1(bad), verifier, { allowedAlgs: ALL_SIG });
        }).toThrow();
        n++;
      }
      expect(n).toBe(bytes.length * 8);
    });
  }
});

describe('published and reference vectors', () => {
  it('verifies the synthetic SUIT report with the libcsuit device ESP256 key', () => {
    const msg = decodeSign1(vector('report/synthetic-report-example0-success.sign1.cose'), {
      tag: 'required',
    });
    expect(msg.alg).toBe(Alg.ESP256);
    const key = decodeCoseKey(vector('keys/libcsuit/device_esp256_cose_key_public.cose_key'));
    expect(toHex(msg.kid!)).toBe(toHex(key.kid!));
    verifySign1(msg, verifierFromCoseKey(key), { allowedAlgs: new Set([Alg.ESP256]) });
    // The same key loaded from PEM, declared ES256: same family, verifies.
    const pem = loadPublicKey(
      readFileSync(join(VECTORS, 'keys/libcsuit/device_esp256_cose_key_public.pem'), 'utf8'),
    );
    verifySign1(msg, softwareVerifier(pem, Alg.ES256), { allowedAlgs: new Set([Alg.ESP256]) });
    expect(decode(msg.payload!)).toBeInstanceOf(CborMap);
  });

  /** SUIT envelope → [auth array, manifest bstr]: auth[0] is the encoded SUIT_Digest, auth[1] the COSE_Sign1. */
  function suitAuth(file: string): { digest: Uint8Array; sign1: Uint8Array; manifestBstr: Uint8Array } {
    const env = decode(vector(file), { sortedKeys: false });
    expect(env).toBeInstanceOf(CborTag);
    const m = (env as CborTag).value as CborMap;
    const auth = decode(m.get(2) as Uint8Array, { sortedKeys: false }) as Uint8Array[];
    const manifest = m.get(3) as Uint8Array;
    return { digest: auth[0]!, sign1: auth[1]!, manifestBstr: encode(manifest) };
  }

  it('verifies the SUIT example0 authentication block over the detached SUIT_Digest', () => {
    const { digest, sign1, manifestBstr } = suitAuth('manifest/example0.signed.cbor');
    // The SUIT_Digest covers the manifest bstr including its header.
    const [digestAlg, digestBytes] = decode(digest) as [number, Uint8Array];
    expect(digestAlg).toBe(Alg.SHA256);
    expect(toHex(digestBytes)).toBe(createHash('sha256').update(manifestBstr).digest('hex'));

    const msg = decodeSign1(sign1);
    expect(msg.alg).toBe(Alg.ES256);
    expect(msg.payload).toBeNull();
    const pub = loadPublicKey(readFileSync(join(VECTORS, 'keys/suit-draft-signer-p256.public.pem'), 'utf8'));
    verifySign1(msg, softwareVerifier(pub, Alg.ES256), {
      allowedAlgs: new Set([Alg.ES256]),
      detachedPayload: digest,
    });
    // Cross-check with a raw crypto.verify over the same Sig_structure.
    const tbs = sigStructure1(msg.protectedBytes, new Uint8Array(), digest);
    expect(cryptoVerify('sha256', tbs, { key: pub, dsaEncoding: 'ieee-p1363' }, msg.signature)).toBe(true);
    // With the COSE_Key file declared ESP256 it verifies too (ES256 ≡ ESP256).
    const esp = verifierFromCoseKey(
      decodeCoseKey(vector('keys/suit-draft-signer-p256.public.esp256.cose_key')),
    );
    verifySign1(msg, esp, { allowedAlgs: new Set([Alg.ES256]), detachedPayload: digest });
  });

  it('rejects negative/example0.bad-signature.cbor', () => {
    const { digest, sign1 } = suitAuth('negative/example0.bad-signature.cbor');
    const pub = loadPublicKey(vector('keys/suit-draft-signer-p256.public.pem'));
    expectCode(() => {
      verifySign1(decodeSign1(sign1), softwareVerifier(pub, Alg.ES256), {
        allowedAlgs: new Set([Alg.ES256]),
        detachedPayload: digest,
      });
    }, 'COSE_BAD_SIGNATURE');
  });

  it('RFC 8032 §7.1 TEST 1 (Ed25519, empty message)', async () => {
    const key = coseKeyToKeyObject({
      kty: 1,
      crv: 6,
      d: hex('9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60'),
      x: hex('d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a'),
    });
    const expected =
      'e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b';
    const sig = await softwareSigner(key, Alg.Ed25519).sign(new Uint8Array());
    expect(toHex(sig)).toBe(expected);
    const v = verifierFromCoseKey(
      { kty: 1, crv: 6, x: hex('d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a') },
      Alg.EdDSA,
    );
    expect(v.verify(new Uint8Array(), hex(expected))).toBe(true);
    expect(v.verify(new Uint8Array(1), hex(expected))).toBe(false);
    expect(v.verify(new Uint8Array(), hex(expected).subarray(1))).toBe(false);
  });
});
