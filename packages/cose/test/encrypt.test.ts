import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { Alg, algInfo } from '../src/algorithms.ts';
import { CborMap, CborTag, decode, encode } from '../src/cbor.ts';
import {
  createContentCipher,
  createContentDecipher,
  decodeEncrypt,
  decodeEncrypt0,
  decryptContent,
  encodeEncrypt,
  encodeEncrypt0,
  encryptContent,
  unwrapContentKey,
  wrapForAesKw,
  wrapForEcdhEs,
  type EncryptMessage,
} from '../src/encrypt.ts';
import { coseKeyToKeyObject, decodeCoseKey } from '../src/key.ts';
import type { KeyAgreement, KeyUnwrapper } from '../src/keys.ts';
import { aesKeyUnwrap, aesKeyWrap, softwareKeyAgreement, softwareKeyUnwrapper } from '../src/software.ts';
import { expectCode, expectCodeAsync, hex, toHex, vector } from './cose-fixtures.ts';

const KEY_ALGS = new Set<number>([-3, -4, -5, -29, -30, -31]);
const CONTENT_ALGS = [
  Alg.A128GCM,
  Alg.A192GCM,
  Alg.A256GCM,
  Alg.A128CTR,
  Alg.A192CTR,
  Alg.A256CTR,
  Alg.ChaCha20Poly1305,
];
const plaintext = vector('encryption/plaintext-payload.bin');

const kekKey = decodeCoseKey(vector('keys/encryption-a128kw-kek-kid-1.cose_key'));
const recipientKey = decodeCoseKey(vector('keys/encryption-ecdh-recipient-kid-2.private.cose_key'));
const kwUnwrapper = softwareKeyUnwrapper(kekKey.k!, Alg.A128KW, kekKey.kid);
const ecdhAgreement = softwareKeyAgreement(coseKeyToKeyObject(recipientKey), recipientKey.kid);

const DRAFT_VECTORS = [
  { name: 'aes-kw-aes-gcm', cek: '15F785B5C931414411B4B71373A9C0F7', alg: Alg.A128GCM, kid: 'kid-1' },
  { name: 'aes-kw-aes-ctr', cek: '261DE6165070FB8951EC5D7B92A065FE', alg: Alg.A128CTR, kid: 'kid-1' },
  { name: 'es-ecdh-aes-gcm', cek: '15F785B5C931414411B4B71373A9C0F7', alg: Alg.A128GCM, kid: undefined },
  { name: 'es-ecdh-aes-ctr', cek: '261DE6165070FB8951EC5D7B92A065FE', alg: Alg.A128CTR, kid: undefined },
];

function streamDecrypt(
  msg: EncryptMessage,
  cek: Uint8Array,
  ct: Uint8Array,
  sizes: readonly number[],
): Uint8Array {
  const d = createContentDecipher(msg, cek);
  const e = createContentDecipher(msg, cek);
  const parts: Uint8Array[] = [];
  const pieces: Uint8Array[] = [];
  let off = 0;
  let i = 0;
  while (off < ct.length) {
    const n = sizes[i++ % sizes.length]!;
    parts.push(d.update(ct.subarray(off, off + n)));
    // updateParts: the same output, in pieces (no joining copy).
    const p = e.updateParts!(ct.subarray(off, off + n));
    expect(p.length).toBeLessThanOrEqual(2);
    pieces.push(...p);
    off += n;
  }
  parts.push(d.final());
  const out = new Uint8Array(Buffer.concat(parts));
  let finalE: Uint8Array | undefined;
  try {
    finalE = e.final();
  } catch {
    // d.final() threw too (asserted by the callers); not reached here.
  }
  expect(Buffer.compare(Buffer.concat([...pieces, finalE ?? new Uint8Array(0)]), out)).toBe(0);
  return out;
}

describe('draft-ietf-suit-firmware-encryption vectors', () => {
  expect(new TextDecoder().decode(plaintext)).toBe('This is a real firmware image.');

  for (const v of DRAFT_VECTORS) {
    it(`${v.name}: unwraps the CEK and decrypts the detached payload`, async () => {
      const msg = decodeEncrypt(vector(`encryption/suit-encryption-info-${v.name}.cose`), {
        tag: 'required',
      });
      expect(msg.alg).toBe(v.alg);
      expect(msg.ciphertext).toBeNull();
      expect(msg.recipients).toHaveLength(1);
      // The ES-DH recipients of the draft carry no kid; the AES-KW ones carry 'kid-1'.
      const kid = msg.recipients[0]!.kid;
      expect(kid === undefined ? undefined : new TextDecoder().decode(kid)).toBe(v.kid);
      const cek = await unwrapContentKey(
        msg,
        { unwrappers: [kwUnwrapper], agreements: [ecdhAgreement] },
        { allowedAlgs: KEY_ALGS },
      );
      expect(toHex(cek)).toBe(v.cek.toLowerCase());
      const ct = vector(`encryption/encrypted-payload-${v.name}.bin`);
      expect(toHex(decryptContent(msg, cek, ct, { allowedAlgs: new Set([v.alg]) }))).toBe(toHex(plaintext));
      for (const sizes of [[1], [3], [7], [15], [16], [17], [5, 11, 2], [31], [1000]]) {
        expect(toHex(streamDecrypt(msg, cek, ct, sizes))).toBe(toHex(plaintext));
      }
      // Content alg outside the allowlist.
      expectCode(
        () => decryptContent(msg, cek, ct, { allowedAlgs: new Set([Alg.A256GCM]) }),
        'COSE_ALG_NOT_ALLOWED',
      );
      // No ciphertext given for a detached message.
      expectCode(() => decryptContent(msg, cek), 'COSE_MALFORMED');
    });
  }

  it('refuses a wrong KEK / wrong ECDH key with COSE_DECRYPT_FAILED', async () => {
    const gcm = decodeEncrypt(vector('encryption/suit-encryption-info-aes-kw-aes-gcm.cose'));
    const wrong = softwareKeyUnwrapper(new Uint8Array(16).fill(0x62), Alg.A128KW, kekKey.kid);
    await expectCodeAsync(
      unwrapContentKey(gcm, { unwrappers: [wrong] }, { allowedAlgs: KEY_ALGS }),
      'COSE_DECRYPT_FAILED',
    );
    const ecdh = decodeEncrypt(vector('encryption/suit-encryption-info-es-ecdh-aes-gcm.cose'));
    const other = softwareKeyAgreement(generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey);
    await expectCodeAsync(
      unwrapContentKey(ecdh, { agreements: [other] }, { allowedAlgs: KEY_ALGS }),
      'COSE_DECRYPT_FAILED',
    );
    // The KDF context's `other` is part of the derivation.
    await expectCodeAsync(
      unwrapContentKey(ecdh, { agreements: [ecdhAgreement] }, { allowedAlgs: KEY_ALGS, kdfOther: null }),
      'COSE_DECRYPT_FAILED',
    );
  });

  it('selects keys by kid and algorithm', async () => {
    const gcm = decodeEncrypt(vector('encryption/suit-encryption-info-aes-kw-aes-gcm.cose'));
    // Wrong kid: not tried.
    const otherKid = softwareKeyUnwrapper(kekKey.k!, Alg.A128KW, hex('00'));
    await expectCodeAsync(
      unwrapContentKey(gcm, { unwrappers: [otherKid] }, { allowedAlgs: KEY_ALGS }),
      'COSE_NO_KEY',
    );
    // Key without kid: tried. Matching kid is preferred over a kid-less wrong key.
    const noKid = softwareKeyUnwrapper(kekKey.k!, Alg.A128KW);
    expect(toHex(await unwrapContentKey(gcm, { unwrappers: [noKid] }, { allowedAlgs: KEY_ALGS }))).toBe(
      DRAFT_VECTORS[0]!.cek.toLowerCase(),
    );
    const wrongNoKid = softwareKeyUnwrapper(new Uint8Array(16), Alg.A128KW);
    await unwrapContentKey(gcm, { unwrappers: [wrongNoKid, kwUnwrapper] }, { allowedAlgs: KEY_ALGS });
    // Same KEK declared for another algorithm: not tried.
    const a256 = softwareKeyUnwrapper(new Uint8Array(32), Alg.A256KW, kekKey.kid);
    await expectCodeAsync(
      unwrapContentKey(gcm, { unwrappers: [a256] }, { allowedAlgs: KEY_ALGS }),
      'COSE_NO_KEY',
    );
    // ECDH recipient with an X25519 key: curve does not match, not tried.
    const ecdh = decodeEncrypt(vector('encryption/suit-encryption-info-es-ecdh-aes-ctr.cose'));
    const x = softwareKeyAgreement(generateKeyPairSync('x25519').privateKey, recipientKey.kid);
    await expectCodeAsync(
      unwrapContentKey(ecdh, { agreements: [x] }, { allowedAlgs: KEY_ALGS }),
      'COSE_NO_KEY',
    );
    await expectCodeAsync(unwrapContentKey(ecdh, {}, { allowedAlgs: KEY_ALGS }), 'COSE_NO_KEY');
    // Algorithms outside the allowlist.
    await expectCodeAsync(
      unwrapContentKey(ecdh, { agreements: [ecdhAgreement] }, { allowedAlgs: new Set([-3]) }),
      'COSE_ALG_NOT_ALLOWED',
    );
  });
});

describe('round trips', () => {
  const kwAlgs = [Alg.A128KW, Alg.A192KW, Alg.A256KW];
  const ecdhAlgs = [Alg.ECDH_ES_A128KW, Alg.ECDH_ES_A192KW, Alg.ECDH_ES_A256KW];
  const image = new Uint8Array(randomBytes(70_001));

  for (const contentAlg of CONTENT_ALGS) {
    it(`content alg ${contentAlg} with every key-distribution alg (AES-KW, ECDH-ES P-256 and X25519)`, async () => {
      const enc = encryptContent(image, { contentAlg });
      const recipients = [];
      const unwrappers: KeyUnwrapper[] = [];
      const agreements: KeyAgreement[] = [];
      for (const [i, alg] of kwAlgs.entries()) {
        const kek = new Uint8Array(randomBytes(algInfo(alg).keyLength!));
        recipients.push(wrapForAesKw(enc.cek, kek, alg, hex(`0${i}`)));
        unwrappers.push(softwareKeyUnwrapper(kek, alg, hex(`0${i}`)));
      }
      for (const [i, alg] of ecdhAlgs.entries()) {
        for (const curve of ['P-256', 'X25519'] as const) {
          const pair =
            curve === 'P-256'
              ? generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
              : generateKeyPairSync('x25519');
          const kid = hex(`1${i}${curve === 'P-256' ? '01' : '02'}`);
          recipients.push(wrapForEcdhEs(enc.cek, pair.publicKey, alg, kid));
          agreements.push(softwareKeyAgreement(pair.privateKey, kid));
        }
      }
      const bytes = encodeEncrypt({ ...enc, ciphertext: null, recipients });
      const msg = decodeEncrypt(bytes, { tag: 'required' });
      expect(msg.recipients).toHaveLength(9);
      // Each device holds exactly one key.
      for (const u of unwrappers) {
        const cek = await unwrapContentKey(msg, { unwrappers: [u] }, { allowedAlgs: KEY_ALGS });
        expect(toHex(cek)).toBe(toHex(enc.cek));
      }
      for (const a of agreements) {
        const cek = await unwrapContentKey(msg, { agreements: [a] }, { allowedAlgs: KEY_ALGS });
        expect(toHex(cek)).toBe(toHex(enc.cek));
      }
      expect(Buffer.compare(decryptContent(msg, enc.cek, enc.ciphertext), image)).toBe(0);
      expect(Buffer.compare(streamDecrypt(msg, enc.cek, enc.ciphertext, [4093, 1, 65536, 17]), image)).toBe(
        0,
      );

      // Attached ciphertext.
      const attached = decodeEncrypt(encodeEncrypt({ ...enc, recipients: recipients.slice(0, 1) }));
      expect(Buffer.compare(decryptContent(attached, enc.cek), image)).toBe(0);
      expectCode(() => decryptContent(attached, enc.cek, enc.ciphertext), 'COSE_UNSUPPORTED');

      // Streaming encryption equals one-shot encryption.
      const c = createContentCipher(contentAlg, enc.cek, enc.iv, enc.protectedBytes);
      const streamed = Buffer.concat([
        c.update(image.subarray(0, 999)),
        c.update(image.subarray(999)),
        c.final(),
      ]);
      expect(Buffer.compare(streamed, enc.ciphertext)).toBe(0);

      // Wrong content key length.
      expectCode(() => decryptContent(msg, enc.cek.subarray(1), enc.ciphertext), 'COSE_KEY_MISMATCH');
      const info = algInfo(contentAlg);
      if (info.tagLength !== 0) {
        // Tampered tag, ciphertext, truncation, wrong AAD: COSE_DECRYPT_FAILED, one-shot and streaming.
        const t1 = enc.ciphertext.slice();
        t1[t1.length - 1] = t1[t1.length - 1]! ^ 1;
        const t2 = enc.ciphertext.slice();
        t2[100] = t2[100]! ^ 0x80;
        for (const bad of [
          t1,
          t2,
          enc.ciphertext.subarray(0, enc.ciphertext.length - 1),
          enc.ciphertext.subarray(0, 10),
        ]) {
          expectCode(() => decryptContent(msg, enc.cek, bad), 'COSE_DECRYPT_FAILED');
          expectCode(() => streamDecrypt(msg, enc.cek, bad, [7, 3000]), 'COSE_DECRYPT_FAILED');
        }
        expectCode(
          () => decryptContent(msg, enc.cek, enc.ciphertext, { externalAad: hex('00') }),
          'COSE_DECRYPT_FAILED',
        );
        const wrongKey = new Uint8Array(enc.cek.length);
        expectCode(() => decryptContent(msg, wrongKey, enc.ciphertext), 'COSE_DECRYPT_FAILED');
      }
    });
  }

  it('decodes and decrypts COSE_Encrypt0 with "Encrypt0" AAD', () => {
    const enc = encryptContent(plaintext, { contentAlg: Alg.A256GCM, context: 'Encrypt0' });
    const msg = decodeEncrypt0(encodeEncrypt0(enc), { tag: 'required' });
    expect(msg.context).toBe('Encrypt0');
    expect(toHex(decryptContent(msg, enc.cek))).toBe(toHex(plaintext));
    // The same ciphertext presented with the "Encrypt" context fails authentication.
    expectCode(() => decryptContent({ ...msg, context: 'Encrypt' }, enc.cek), 'COSE_DECRYPT_FAILED');
  });

  it('AES-KW matches RFC 3394 §4.1 (128-bit KEK, 128-bit key data)', () => {
    const kek = hex('000102030405060708090A0B0C0D0E0F');
    const data = hex('00112233445566778899AABBCCDDEEFF');
    const wrapped = aesKeyWrap(kek, data, Alg.A128KW);
    expect(toHex(wrapped)).toBe('1fa68b0a8112b447aef34bd8fb5a7b829d3e862371d2cfe5');
    expect(toHex(aesKeyUnwrap(kek, wrapped, Alg.A128KW))).toBe(toHex(data));
    expectCode(() => aesKeyUnwrap(kek, wrapped.subarray(0, 16), Alg.A128KW), 'COSE_DECRYPT_FAILED');
    expectCode(() => aesKeyWrap(kek.subarray(1), data, Alg.A128KW), 'COSE_KEY_MISMATCH');
    expectCode(() => softwareKeyUnwrapper(kek, Alg.A256KW), 'COSE_KEY_MISMATCH');
  });
});

describe('structure and header checks', () => {
  const enc = encryptContent(plaintext, { contentAlg: Alg.A128CTR });
  const kek = new Uint8Array(16).fill(1);
  const r = wrapForAesKw(enc.cek, kek, Alg.A128KW);
  const u = softwareKeyUnwrapper(kek, Alg.A128KW);

  it('AES-CTR needs an empty protected header (RFC 9459) and a 16-byte IV', () => {
    const withProt = decodeEncrypt(
      encodeEncrypt({
        protectedBytes: encode(new Map([[1, Alg.A128CTR]])),
        unprotected: new Map([[5, enc.iv]]),
        ciphertext: enc.ciphertext,
        recipients: [r],
      }),
    );
    expectCode(() => decryptContent(withProt, enc.cek), 'COSE_HEADER_INVALID');
    const shortIv = decodeEncrypt(
      encodeEncrypt({
        ...enc,
        unprotected: new Map<number, unknown>([
          [1, Alg.A128CTR],
          [5, enc.iv.subarray(4)],
        ]),
        recipients: [r],
      }),
    );
    expectCode(() => decryptContent(shortIv, enc.cek), 'COSE_HEADER_INVALID');
    const partial = decodeEncrypt(
      encodeEncrypt({
        ...enc,
        unprotected: new Map<number, unknown>([
          [1, Alg.A128CTR],
          [6, hex('01')],
        ]),
        recipients: [r],
      }),
    );
    expectCode(() => decryptContent(partial, enc.cek), 'COSE_UNSUPPORTED');
    expectCode(() => createContentCipher(Alg.A128CTR, enc.cek, enc.iv, hex('a0')), 'COSE_HEADER_INVALID');
  });

  it('AEAD algorithms must be in the protected header', () => {
    const g = encryptContent(plaintext, { contentAlg: Alg.A128GCM });
    const unprot = decodeEncrypt(
      encodeEncrypt({
        protectedBytes: new Uint8Array(),
        unprotected: new Map<number, unknown>([
          [1, Alg.A128GCM],
          [5, g.iv],
        ]),
        ciphertext: g.ciphertext,
        recipients: [r],
      }),
    );
    expectCode(() => decryptContent(unprot, g.cek), 'COSE_HEADER_INVALID');
  });

  it('AES-KW recipients need an empty protected header (RFC 9053 §6.2.1) and a wrapped key', async () => {
    const bad = decodeEncrypt(
      encodeEncrypt({ ...enc, recipients: [{ ...r, protectedBytes: encode(new Map([[3, 0]])) }] }),
    );
    await expectCodeAsync(
      unwrapContentKey(bad, { unwrappers: [u] }, { allowedAlgs: KEY_ALGS }),
      'COSE_HEADER_INVALID',
    );
    const nil = decodeEncrypt(encodeEncrypt({ ...enc, recipients: [{ ...r, ciphertext: null }] }));
    await expectCodeAsync(
      unwrapContentKey(nil, { unwrappers: [u] }, { allowedAlgs: KEY_ALGS }),
      'COSE_MALFORMED',
    );
    expect(
      toHex(
        await unwrapContentKey(
          decodeEncrypt(encodeEncrypt({ ...enc, recipients: [r] })),
          { unwrappers: [u] },
          { allowedAlgs: KEY_ALGS },
        ),
      ),
    ).toBe(toHex(enc.cek));
  });

  it('unknown recipient and content algorithms are typed errors', async () => {
    const unk = decodeEncrypt(
      encodeEncrypt({ ...enc, recipients: [{ ...r, unprotected: new Map([[1, -6]]) }] }),
    );
    await expectCodeAsync(
      unwrapContentKey(unk, { unwrappers: [u] }, { allowedAlgs: new Set([-6]) }),
      'COSE_ALG_UNKNOWN',
    );
    const unkContent = decodeEncrypt(
      encodeEncrypt({
        ...enc,
        unprotected: new Map<number, unknown>([
          [1, 99],
          [5, enc.iv],
        ]),
        recipients: [r],
      }),
    );
    await expectCodeAsync(
      unwrapContentKey(unkContent, { unwrappers: [u] }, { allowedAlgs: KEY_ALGS }),
      'COSE_ALG_UNKNOWN',
    );
    expectCode(() => decryptContent(unkContent, enc.cek), 'COSE_ALG_UNKNOWN');
  });

  it('ECDH-ES recipients: ephemeral key required, public only, on the curve', async () => {
    const pair = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    const rec = wrapForEcdhEs(enc.cek, pair.publicKey, Alg.ECDH_ES_A128KW);
    const ka = softwareKeyAgreement(pair.privateKey);
    const build = (unprotected: Map<number, unknown>): EncryptMessage =>
      decodeEncrypt(encodeEncrypt({ ...enc, recipients: [{ ...rec, unprotected }] }));
    expect(
      toHex(await unwrapContentKey(build(rec.unprotected), { agreements: [ka] }, { allowedAlgs: KEY_ALGS })),
    ).toBe(toHex(enc.cek));
    await expectCodeAsync(
      unwrapContentKey(build(new Map()), { agreements: [ka] }, { allowedAlgs: KEY_ALGS }),
      'COSE_HEADER_INVALID',
    );
    const eph = rec.unprotected.get(-1) as Map<number, unknown>;
    const withD = new Map(eph).set(-4, new Uint8Array(32).fill(1));
    await expectCodeAsync(
      unwrapContentKey(build(new Map([[-1, withD]])), { agreements: [ka] }, { allowedAlgs: KEY_ALGS }),
      'COSE_HEADER_INVALID',
    );
    const y = (eph.get(-3) as Uint8Array).slice();
    y[0] = y[0]! ^ 1;
    await expectCodeAsync(
      unwrapContentKey(
        build(new Map([[-1, new Map(eph).set(-3, y)]])),
        { agreements: [ka] },
        { allowedAlgs: KEY_ALGS },
      ),
      'COSE_HEADER_INVALID',
    );
    // A salt header changes the derived KEK; wrapForEcdhEs with the same salt round-trips.
    const salted = wrapForEcdhEs(enc.cek, pair.publicKey, Alg.ECDH_ES_A128KW, undefined, {
      salt: hex('0102'),
    });
    expect(salted.unprotected.get(-20)).toEqual(hex('0102'));
    const sm = decodeEncrypt(encodeEncrypt({ ...enc, recipients: [salted] }));
    expect(toHex(await unwrapContentKey(sm, { agreements: [ka] }, { allowedAlgs: KEY_ALGS }))).toBe(
      toHex(enc.cek),
    );
    const unsalted = new Map(salted.unprotected);
    unsalted.delete(-20);
    await expectCodeAsync(
      unwrapContentKey(build(unsalted), { agreements: [ka] }, { allowedAlgs: KEY_ALGS }),
      'COSE_DECRYPT_FAILED',
    );
  });

  it('refuses malformed COSE_Encrypt structures', () => {
    expectCode(
      () => decodeEncrypt(encode(new CborTag(96, [new Uint8Array(), new Map([[1, 1]]), null, []]))),
      'COSE_MALFORMED',
    );
    expectCode(
      () => decodeEncrypt(encode(new CborTag(16, [new Uint8Array(), new Map([[1, 1]]), null]))),
      'COSE_MALFORMED',
    );
    expectCode(
      () => decodeEncrypt(encode([new Uint8Array(), new Map(), null, [[new Uint8Array(), new Map(), null]]])),
      'COSE_HEADER_INVALID',
    );
    expectCode(
      () =>
        decodeEncrypt(
          encode([new Uint8Array(), new Map([[1, 1]]), 7, [[new Uint8Array(), new Map(), null]]]),
        ),
      'COSE_MALFORMED',
    );
    expectCode(
      () =>
        decodeEncrypt(encode([new Uint8Array(), new Map([[1, 1]]), null, [[new Uint8Array(), new Map()]]])),
      'COSE_MALFORMED',
    );
    expect(() => encodeEncrypt({ ...enc, recipients: [] })).toThrow();
    // The draft's SUIT_Encryption_Info decodes to the expected shape.
    const raw = decode(vector('encryption/suit-encryption-info-es-ecdh-aes-gcm.cose')) as CborTag;
    expect(raw.tag).toBe(96);
    const rec = ((raw.value as unknown[])[3] as unknown[][])[0]!;
    expect((rec[1] as CborMap).get(-1)).toBeInstanceOf(CborMap);
  });
});
