import { createSecretKey, generateKeyPairSync, type JsonWebKey } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { encode } from '../src/cbor.ts';
import {
  coseKeyFromKeyObject,
  coseKeyToKeyObject,
  coseKeyToPublicKeyObject,
  decodeCoseKey,
  encodeCoseKey,
  loadPublicKey,
  publicCoseKey,
  type CoseKey,
} from '../src/key.ts';
import { expectCode, hex, toHex, vector, VECTORS } from './cose-fixtures.ts';

const SLOPPY = 'libcsuit/trust_anchor_a128_cose_key_secret.cose_key';

function keyFiles(): string[] {
  const top = readdirSync(join(VECTORS, 'keys')).filter((f) => f.endsWith('.cose_key'));
  const lib = readdirSync(join(VECTORS, 'keys/libcsuit'))
    .filter((f) => f.endsWith('.cose_key'))
    .map((f) => `libcsuit/${f}`);
  return [...top, ...lib];
}

function jwkOf(k: ReturnType<typeof loadPublicKey>): JsonWebKey {
  return k.export({ format: 'jwk' });
}

describe('COSE_Key files', () => {
  const files = keyFiles().filter((f) => f !== SLOPPY);

  it('finds the key files', () => {
    expect(files.length).toBeGreaterThanOrEqual(20);
  });

  for (const f of files) {
    it(`decodes and re-encodes ${f} byte for byte`, () => {
      const bytes = vector(`keys/${f}`);
      const key = decodeCoseKey(bytes);
      expect(toHex(encodeCoseKey(key))).toBe(toHex(bytes));
      // Every key converts to a KeyObject of the right kind.
      const ko = coseKeyToKeyObject(key);
      expect(ko.type).toBe(key.kty === 4 ? 'secret' : key.d === undefined ? 'public' : 'private');
    });
  }

  it('refuses the libcsuit A128 key (non-preferred length encoding) — documented outcome', () => {
    const bytes = vector(`keys/${SLOPPY}`);
    expectCode(() => decodeCoseKey(bytes), 'CBOR_NON_PREFERRED');
    // Re-encoded in preferred form, the key still declares alg -4 (A192KW) for 16 bytes: refused as inconsistent.
    const fixed = new Uint8Array(bytes.length - 1);
    const i = toHex(bytes).indexOf('5810') / 2;
    fixed.set(bytes.subarray(0, i));
    fixed[i] = 0x50;
    fixed.set(bytes.subarray(i + 2), i + 1);
    expectCode(() => decodeCoseKey(fixed), 'COSE_KEY_INVALID');
  });

  it('PEM and COSE_Key files of the same public key load identically', () => {
    const pairs: [string, string][] = [
      ['suit-draft-signer-p256.public.pem', 'suit-draft-signer-p256.public.es256.cose_key'],
      ['encryption-ecdh-recipient-kid-2.public.pem', 'encryption-ecdh-recipient-kid-2.public.cose_key'],
      ['libcsuit/device_esp256_cose_key_public.pem', 'libcsuit/device_esp256_cose_key_public.cose_key'],
      [
        'encryption-dependency-signer-p256.public.pem',
        'encryption-dependency-signer-p256.public.esp256.cose_key',
      ],
    ];
    for (const [pem, cose] of pairs) {
      const a = loadPublicKey(readFileSync(join(VECTORS, 'keys', pem), 'utf8'));
      const b = loadPublicKey(vector(`keys/${cose}`));
      const c = loadPublicKey(vector(`keys/${pem}`)); // PEM as bytes
      expect(jwkOf(a)).toEqual(jwkOf(b));
      expect(jwkOf(c)).toEqual(jwkOf(b));
    }
    // A private COSE_Key and a private PEM yield their public keys.
    const fromPriv = loadPublicKey(vector('keys/encryption-ecdh-recipient-kid-2.private.cose_key'));
    expect(fromPriv.type).toBe('public');
    expect(jwkOf(fromPriv)).toEqual(
      jwkOf(loadPublicKey(vector('keys/encryption-ecdh-recipient-kid-2.public.pem'))),
    );
    expect(loadPublicKey(vector('keys/suit-draft-signer-p256.private.pem')).type).toBe('public');
    expectCode(() => loadPublicKey(vector('keys/encryption-hmac256-key.cose_key')), 'COSE_KEY_INVALID');
    expectCode(
      () => loadPublicKey('-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n'),
      'COSE_KEY_INVALID',
    );
  });
});

describe('COSE_Key validation', () => {
  const good = decodeCoseKey(vector('keys/suit-draft-signer-p256.public.es256.cose_key'));
  const mapOf = (entries: [number, unknown][]): Uint8Array => encode(new Map(entries));

  it('refuses a point that is not on the curve', () => {
    const y = good.y!.slice();
    y[31] = y[31]! ^ 1;
    expectCode(() => encodeCoseKey({ ...good, y }), 'COSE_KEY_INVALID');
  });

  it('refuses wrong lengths, missing parts, unknown labels, compressed points', () => {
    expectCode(
      () =>
        decodeCoseKey(
          mapOf([
            [1, 2],
            [-1, 1],
            [-2, good.x!.subarray(1)],
            [-3, good.y!],
          ]),
        ),
      'COSE_KEY_INVALID',
    );
    expectCode(
      () =>
        decodeCoseKey(
          mapOf([
            [1, 2],
            [-1, 1],
            [-2, good.x!],
          ]),
        ),
      'COSE_KEY_INVALID',
    );
    expectCode(
      () =>
        decodeCoseKey(
          mapOf([
            [1, 2],
            [-1, 1],
            [-2, good.x!],
            [-3, true],
          ]),
        ),
      'COSE_KEY_INVALID',
    );
    expectCode(
      () =>
        decodeCoseKey(
          mapOf([
            [1, 2],
            [-1, 6],
            [-2, good.x!],
            [-3, good.y!],
          ]),
        ),
      'COSE_KEY_INVALID',
    );
    expectCode(
      () =>
        decodeCoseKey(
          mapOf([
            [1, 2],
            [-1, 1],
            [-2, good.x!],
            [-3, good.y!],
            [-7, 1],
          ]),
        ),
      'COSE_KEY_INVALID',
    );
    expectCode(
      () =>
        decodeCoseKey(
          mapOf([
            [1, 4],
            [-1, new Uint8Array(16)],
            [5, new Uint8Array(16)],
          ]),
        ),
      'COSE_KEY_INVALID',
    );
    expectCode(
      () =>
        decodeCoseKey(
          mapOf([
            [1, 3],
            [-1, new Uint8Array(16)],
          ]),
        ),
      'COSE_KEY_INVALID',
    );
    expectCode(
      () =>
        decodeCoseKey(
          mapOf([
            [1, 4],
            [-1, new Uint8Array(0)],
          ]),
        ),
      'COSE_KEY_INVALID',
    );
    expectCode(
      () =>
        decodeCoseKey(
          mapOf([
            [1, 4],
            [-1, new Uint8Array(16)],
            [4, []],
          ]),
        ),
      'COSE_KEY_INVALID',
    );
    expectCode(() => decodeCoseKey(encode([1, 2])), 'COSE_KEY_INVALID');
  });

  it('refuses an alg that does not fit the key, and unknown algs', () => {
    expectCode(
      () =>
        decodeCoseKey(
          mapOf([
            [1, 4],
            [3, -5],
            [-1, new Uint8Array(16)],
          ]),
        ),
      'COSE_KEY_INVALID',
    );
    expectCode(
      () =>
        decodeCoseKey(
          mapOf([
            [1, 4],
            [3, -7],
            [-1, new Uint8Array(16)],
          ]),
        ),
      'COSE_KEY_INVALID',
    );
    expectCode(
      () =>
        decodeCoseKey(
          mapOf([
            [1, 4],
            [3, 5],
            [-1, new Uint8Array(16)],
          ]),
        ),
      'COSE_KEY_INVALID',
    );
    expectCode(
      () =>
        decodeCoseKey(
          mapOf([
            [1, 4],
            [3, -46],
            [-1, new Uint8Array(16)],
          ]),
        ),
      'COSE_ALG_UNKNOWN',
    );
    const ed = generateKeyPairSync('ed25519').publicKey;
    expectCode(() => encodeCoseKey({ ...coseKeyFromKeyObject(ed), alg: -7 }), 'COSE_KEY_INVALID');
    expect(coseKeyFromKeyObject(ed, { alg: -19 }).alg).toBe(-19);
  });

  it('refuses a private key whose public part does not match d', () => {
    const priv = decodeCoseKey(vector('keys/encryption-ecdh-recipient-kid-2.private.cose_key'));
    const other = decodeCoseKey(vector('keys/suit-draft-signer-p256.public.es256.cose_key'));
    expectCode(() => encodeCoseKey({ ...priv, x: other.x!, y: other.y! }), 'COSE_KEY_INVALID');
    const ed = coseKeyFromKeyObject(generateKeyPairSync('ed25519').privateKey, { includePrivate: true });
    const ed2 = coseKeyFromKeyObject(generateKeyPairSync('ed25519').publicKey);
    expectCode(() => encodeCoseKey({ ...ed, x: ed2.x! }), 'COSE_KEY_INVALID');
  });

  it('accepts a private key given by d alone and derives its public part', () => {
    const priv = decodeCoseKey(vector('keys/encryption-ecdh-recipient-kid-2.private.cose_key'));
    const dOnly: CoseKey = { kty: 2, crv: 1, d: priv.d! };
    const bytes = encodeCoseKey(dOnly);
    const pub = publicCoseKey(decodeCoseKey(bytes));
    expect(toHex(pub.x!)).toBe(toHex(priv.x!));
    expect(toHex(pub.y!)).toBe(toHex(priv.y!));
    expect(jwkOf(coseKeyToPublicKeyObject(dOnly))).toEqual(jwkOf(coseKeyToPublicKeyObject(priv)));
  });
});

describe('KeyObject conversion', () => {
  for (const [name, pair] of [
    ['P-256', () => generateKeyPairSync('ec', { namedCurve: 'prime256v1' })],
    ['Ed25519', () => generateKeyPairSync('ed25519')],
    ['X25519', () => generateKeyPairSync('x25519')],
  ] as const) {
    it(`round-trips ${name} public and private keys`, () => {
      const { privateKey, publicKey } = pair();
      const pub = coseKeyFromKeyObject(publicKey, { kid: hex('01') });
      expect(pub.d).toBeUndefined();
      expect(jwkOf(coseKeyToKeyObject(decodeCoseKey(encodeCoseKey(pub))))).toEqual(jwkOf(publicKey));
      // Without includePrivate a private key yields only its public COSE_Key.
      expect(coseKeyFromKeyObject(privateKey).d).toBeUndefined();
      const priv = coseKeyFromKeyObject(privateKey, { includePrivate: true });
      const back = coseKeyToKeyObject(decodeCoseKey(encodeCoseKey(priv)));
      expect(back.export({ format: 'jwk' })).toEqual(privateKey.export({ format: 'jwk' }));
    });
  }

  it('round-trips symmetric keys only with includePrivate', () => {
    const k = createSecretKey(Buffer.alloc(32, 7));
    expectCode(() => coseKeyFromKeyObject(k), 'COSE_KEY_INVALID');
    const ck = coseKeyFromKeyObject(k, { includePrivate: true, alg: 5 });
    expect(toHex(coseKeyToKeyObject(decodeCoseKey(encodeCoseKey(ck))).export())).toBe('07'.repeat(32));
  });
});
