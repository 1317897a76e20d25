/**
 * The PKCS#11 backend against a real SoftHSM2 token (Debian package softhsm2; CI installs it). Each run creates its
 * own token in a temporary directory (SOFTHSM2_CONF points at a private config), never touching system state.
 * Without SoftHSM2 these tests fail: they are not skipped.
 */
import { execFileSync } from 'node:child_process';
import { generateKeyPairSync, diffieHellman, randomBytes, verify as cryptoVerify } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  Alg,
  coseKeyToPublicKeyObject,
  createSign1,
  decodeCoseKey,
  decodeSign1,
  verifierFromCoseKey,
  verifySign1,
} from '@rotor/cose';
import { EnclaveClient, Pkcs11Backend } from '../src/index.ts';

const MODULES = [
  '/usr/lib/softhsm/libsofthsm2.so',
  '/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so',
  '/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so',
];
const LABEL = 'rotor-test';
const PIN = '123456';

let dir = '';
let module = '';
let conf = '';

beforeAll(() => {
  const found = MODULES.find((m) => existsSync(m));
  if (found === undefined)
    throw new Error('SoftHSM2 is not installed (apt-get install softhsm2); the PKCS#11 tests need it');
  module = found;
  dir = mkdtempSync(join(tmpdir(), 'rotor-softhsm-'));
  mkdirSync(join(dir, 'tokens'));
  conf = join(dir, 'softhsm2.conf');
  writeFileSync(
    conf,
    `directories.tokendir = ${join(dir, 'tokens')}\nobjectstore.backend = file\nlog.level = ERROR\n`,
  );
  process.env.SOFTHSM2_CONF = conf;
  execFileSync(
    'softhsm2-util',
    ['--init-token', '--free', '--label', LABEL, '--pin', PIN, '--so-pin', '87654321'],
    {
      env: { ...process.env, SOFTHSM2_CONF: conf },
      stdio: 'pipe',
    },
  );
  writeFileSync(join(dir, 'pin'), `${PIN}\n`, { mode: 0o600 });
});

afterAll(() => {
  if (dir !== '') rmSync(dir, { recursive: true, force: true });
});

describe('PKCS#11 backend on a real SoftHSM2 token', () => {
  it('generates a non-extractable P-256 key whose signatures verify with node:crypto; ECDH in the token', async () => {
    const b = Pkcs11Backend.open({ module, tokenLabel: LABEL, pin: PIN });
    try {
      const pub = await b.generate('identity', 'ES256');
      const attrs = await b.attributes('identity');
      // PKCS#11 v2.40 §4.9: never revealed, never wrapped out of the token.
      expect(attrs).toEqual({
        sensitive: true,
        extractable: false,
        alwaysSensitive: true,
        neverExtractable: true,
        valueReadable: false,
      });
      const key = coseKeyToPublicKeyObject(pub);
      for (let i = 0; i < 5; i++) {
        const data = randomBytes(10 + i * 100);
        const sig = await b.sign('identity', 'ES256', data);
        expect(sig).toHaveLength(64);
        expect(cryptoVerify('sha256', data, { key, dsaEncoding: 'ieee-p1363' }, sig)).toBe(true);
      }
      const kek = await b.generate('fw-kek', 'ECDH-P256');
      const peer = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
      const jwk = peer.publicKey.export({ format: 'jwk' });
      const raw = Buffer.concat([
        Buffer.from([4]),
        Buffer.from(jwk.x!, 'base64url'),
        Buffer.from(jwk.y!, 'base64url'),
      ]);
      const z = await b.deriveSharedSecret('fw-kek', 'ECDH-P256', raw);
      expect(Buffer.from(z)).toEqual(
        diffieHellman({ privateKey: peer.privateKey, publicKey: coseKeyToPublicKeyObject(kek) }),
      );
      expect((await b.attributes('fw-kek')).extractable).toBe(false);
      await expect(b.sign('fw-kek', 'ECDH-P256', raw)).rejects.toMatchObject({ code: 'KEY_USAGE' });
      await expect(b.generate('x', 'EdDSA')).rejects.toMatchObject({ code: 'KEY_TYPE_UNSUPPORTED' });
    } finally {
      await b.close();
    }
    expect(() => Pkcs11Backend.open({ module, tokenLabel: 'no-such-token', pin: PIN })).toThrow(
      /no PKCS#11 token/,
    );
  });

  it('the enclave process holds its identity key in the token; a COSE Signer over the queue; survives a restart', async () => {
    const state = join(dir, 'enclave');
    const c = await EnclaveClient.start({
      stateDir: state,
      pkcs11: { module, tokenLabel: LABEL, pinFile: join(dir, 'pin') },
      env: { SOFTHSM2_CONF: conf },
    });
    try {
      expect((await c.health()).backends).toEqual(['sealed', 'pkcs11']);
      const info = await c.generateKey('device-identity', 'ES256', 'pkcs11');
      expect(info.backend).toBe('pkcs11');
      const signer = await c.signer('device-identity');
      const msg = await createSign1(new TextEncoder().encode('manufacturing record'), signer);
      const verifier = verifierFromCoseKey(decodeCoseKey(info.publicKey));
      verifySign1(decodeSign1(msg), verifier, { allowedAlgs: new Set([Alg.ES256]) });
      await expect(c.generateKey('rot-like', 'EdDSA', 'pkcs11')).rejects.toMatchObject({
        code: 'KEY_TYPE_UNSUPPORTED',
      });
      c.kill('SIGKILL');
      const data = randomBytes(32);
      const sig = await c.sign('device-identity', data);
      const key = coseKeyToPublicKeyObject(decodeCoseKey(info.publicKey));
      expect(cryptoVerify('sha256', data, { key, dsaEncoding: 'ieee-p1363' }, sig)).toBe(true);
    } finally {
      await c.close();
    }
  });
});
