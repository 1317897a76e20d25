import { describe, expect, it } from 'vitest';
import {
  Alg,
  algInfo,
  algName,
  assertAllowed,
  digest,
  isKnownAlg,
  sameSignatureFamily,
  signatureFamily,
} from '../src/algorithms.ts';
import { expectCode, toHex } from './cose-fixtures.ts';

describe('algorithm table', () => {
  it('has the registered ids', () => {
    expect(Alg).toMatchObject({
      SHA256: -16,
      SHA384: -43,
      SHA512: -44,
      ES256: -7,
      ESP256: -9,
      EdDSA: -8,
      Ed25519: -19,
      HMAC256: 5,
      A128KW: -3,
      A192KW: -4,
      A256KW: -5,
      ECDH_ES_A128KW: -29,
      ECDH_ES_A192KW: -30,
      ECDH_ES_A256KW: -31,
      A128GCM: 1,
      A192GCM: 2,
      A256GCM: 3,
      A128CTR: -65534,
      A192CTR: -65533,
      A256CTR: -65532,
      ChaCha20Poly1305: 24,
    });
    for (const id of Object.values(Alg)) expect(isKnownAlg(id)).toBe(true);
  });

  it('describes algorithms', () => {
    expect(algInfo(Alg.A128GCM)).toMatchObject({
      kind: 'content',
      keyLength: 16,
      ivLength: 12,
      tagLength: 16,
    });
    expect(algInfo(Alg.A256CTR)).toMatchObject({
      kind: 'content',
      keyLength: 32,
      ivLength: 16,
      tagLength: 0,
    });
    expect(algInfo(Alg.ECDH_ES_A192KW)).toMatchObject({ kind: 'ecdh-key-wrap', keyLength: 24, wrapAlg: -4 });
    expect(algInfo(Alg.HMAC256)).toMatchObject({ kind: 'mac', outputLength: 32 });
    expect(algName(Alg.ESP256)).toBe('ESP256');
    expect(algName(-46)).toBe('unknown(-46)');
  });

  it('refuses unknown ids and unallowed ones with typed errors', () => {
    expectCode(() => algInfo(-46), 'COSE_ALG_UNKNOWN');
    expectCode(() => algInfo(0), 'COSE_ALG_UNKNOWN');
    expectCode(() => assertAllowed(-46, new Set([-46])), 'COSE_ALG_UNKNOWN');
    expectCode(() => assertAllowed(Alg.ES256, new Set([Alg.ESP256])), 'COSE_ALG_NOT_ALLOWED');
    expect(assertAllowed(Alg.ESP256, new Set([Alg.ESP256])).name).toBe('ESP256');
    expectCode(() => signatureFamily(Alg.HMAC256), 'COSE_ALG_UNKNOWN');
    expectCode(() => digest(Alg.ES256, new Uint8Array()), 'COSE_ALG_UNKNOWN');
  });

  it('treats ES256/ESP256 and EdDSA/Ed25519 as the same families', () => {
    expect(sameSignatureFamily(Alg.ES256, Alg.ESP256)).toBe(true);
    expect(sameSignatureFamily(Alg.ESP256, Alg.ES256)).toBe(true);
    expect(sameSignatureFamily(Alg.EdDSA, Alg.Ed25519)).toBe(true);
    expect(sameSignatureFamily(Alg.ES256, Alg.Ed25519)).toBe(false);
    expect(sameSignatureFamily(Alg.HMAC256, Alg.HMAC256)).toBe(false);
    expect(sameSignatureFamily(-46, -46)).toBe(false);
  });

  it('computes digests (FIPS 180-4 "abc" vectors, FIPS 202 SHAKE empty input)', () => {
    const abc = new TextEncoder().encode('abc');
    expect(toHex(digest(Alg.SHA256, abc))).toBe(
      'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad',
    );
    expect(toHex(digest(Alg.SHA384, abc))).toBe(
      'cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7',
    );
    expect(digest(Alg.SHA512, abc)).toHaveLength(64);
    expect(toHex(digest(-18, new Uint8Array()))).toBe(
      '7f9c2ba4e88f827d616045507605853ed73b8093f6efbc88eb1a6eacfa66ef26',
    );
    expect(digest(-45, new Uint8Array())).toHaveLength(64);
  });
});
