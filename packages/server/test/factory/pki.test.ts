/**
 * Factory PKI on a real SoftHSM2 token: keys are generated in the token and never extractable; the root and issuing
 * CAs and device certificates verify with `openssl verify`; bad CSRs and bad tokens give typed errors.
 */
import 'reflect-metadata';
import { execFileSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as x509 from '@peculiar/x509';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { softwareSigner } from '@rotor/cose';
import {
  checkDeviceCsr,
  createDeviceCsr,
  createIssuingCa,
  createRootCa,
  FactoryToken,
  issueDeviceCertificate,
  parsePkcs11Uri,
  toPem,
  ueidUrn,
  type CaCert,
  type CaKey,
} from '../../src/index.ts';
import { createSoftHsm, type SoftHsm } from './softhsm.ts';

const PIN = '1234';
let hsm: SoftHsm;
let token: FactoryToken;

beforeAll(() => {
  hsm = createSoftHsm();
  hsm.initToken('rotor-factory', PIN);
  hsm.initToken('rotor-other', PIN);
  token = FactoryToken.open({ module: hsm.module, token: 'pkcs11:token=rotor-factory', pin: PIN });
});

afterAll(async () => {
  await token.close();
  hsm.cleanup();
});

async function caKey(uri: string, type: 'P-256' | 'Ed25519'): Promise<CaKey> {
  const { spki } = await token.generate(uri, type);
  return { signer: await token.signer(uri), spki, type };
}

function softDevice(type: 'P-256' | 'Ed25519') {
  const kp =
    type === 'P-256'
      ? generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
      : generateKeyPairSync('ed25519');
  const spki = new Uint8Array(kp.publicKey.export({ type: 'spki', format: 'der' }));
  return { signer: softwareSigner(kp.privateKey, type === 'P-256' ? -7 : -8), spki, kp };
}

const openssl = (args: string[]): string =>
  execFileSync('openssl', args, { encoding: 'utf8', stdio: 'pipe' });

describe('factory PKI in a PKCS#11 token', () => {
  for (const type of ['P-256', 'Ed25519'] as const) {
    it(`${type}: non-extractable CA keys; root → issuing → device chain verifies with openssl`, async () => {
      const t = type === 'P-256' ? 'ec' : 'ed';
      const rootKey = await caKey(`pkcs11:token=rotor-factory;object=root-${t}`, type);
      const issKey = await caKey(`pkcs11:token=rotor-factory;object=issuing-${t};type=private`, type);
      for (const uri of [`pkcs11:token=rotor-factory;object=root-${t}`, `pkcs11:object=issuing-${t}`]) {
        // PKCS#11 v2.40 §4.9.
        expect(await token.attributes(uri)).toEqual({
          sensitive: true,
          extractable: false,
          alwaysSensitive: true,
          neverExtractable: true,
          valueReadable: false,
        });
      }
      const rootCert = await createRootCa(rootKey, {
        name: `CN=Rotor Root ${t}, O=Rotor`,
        validityDays: 3650,
      });
      const root: CaCert = { key: rootKey, cert: rootCert };
      const issCert = await createIssuingCa(root, issKey, {
        name: `CN=Rotor Issuing ${t}, O=Rotor`,
        validityDays: 1825,
      });
      const issuing: CaCert = { key: issKey, cert: issCert };

      const dev = softDevice(type);
      const deviceId = ueidUrn(new Uint8Array([1, ...Array.from({ length: 16 }, (_, i) => i)]));
      const csr = await createDeviceCsr(dev.signer, dev.spki, type, deviceId);
      const checked = await checkDeviceCsr(csr, { deviceId, keyType: type });
      const issued = await issueDeviceCertificate(issuing, checked, { validityDays: 365 });
      const cert = new x509.X509Certificate(issued.der);
      expect(cert.serialNumber).toBe(issued.serial);
      const san = cert.getExtension(x509.SubjectAlternativeNameExtension);
      expect(san?.names.items.map((n) => n.value)).toEqual([deviceId]);

      const dir = hsm.dir;
      writeFileSync(join(dir, `root-${t}.pem`), toPem(new Uint8Array(rootCert.rawData)));
      writeFileSync(join(dir, `issuing-${t}.pem`), toPem(new Uint8Array(issCert.rawData)));
      writeFileSync(join(dir, `device-${t}.pem`), toPem(issued.der));
      const out = openssl([
        'verify',
        '-x509_strict',
        '-purpose',
        'sslclient',
        '-CAfile',
        join(dir, `root-${t}.pem`),
        '-untrusted',
        join(dir, `issuing-${t}.pem`),
        join(dir, `device-${t}.pem`),
      ]);
      expect(out.trim()).toBe(`${join(dir, `device-${t}.pem`)}: OK`);
      // The device certificate does not verify against a root that did not issue it.
      writeFileSync(join(dir, `issuing-only-${t}.pem`), toPem(new Uint8Array(issCert.rawData)));
      expect(() =>
        openssl(['verify', '-CAfile', join(dir, `device-${t}.pem`), join(dir, `device-${t}.pem`)]),
      ).toThrow();
    });
  }

  it('refuses bad CSRs with typed errors and issues nothing', async () => {
    const type = 'P-256';
    const deviceId = ueidUrn(new Uint8Array(17).fill(7));
    const other = ueidUrn(new Uint8Array(17).fill(8));
    const dev = softDevice(type);
    const good = await createDeviceCsr(dev.signer, dev.spki, type, deviceId);
    await expect(checkDeviceCsr(good, { deviceId: other, keyType: type })).rejects.toMatchObject({
      code: 'CSR_DEVICE_ID_MISMATCH',
    });
    await expect(checkDeviceCsr(good, { deviceId, keyType: 'Ed25519' })).rejects.toMatchObject({
      code: 'CSR_KEY_TYPE',
    });
    // Wrong key type: an RSA key.
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const rsaCsr = await x509.Pkcs10CertificateRequestGenerator.create(
      {
        name: `CN=${deviceId}`,
        keys: await (async () => {
          const alg = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' };
          return {
            privateKey: await crypto.subtle.importKey(
              'pkcs8',
              rsa.privateKey.export({ type: 'pkcs8', format: 'der' }),
              alg,
              false,
              ['sign'],
            ),
            publicKey: await crypto.subtle.importKey(
              'spki',
              rsa.publicKey.export({ type: 'spki', format: 'der' }),
              alg,
              true,
              ['verify'],
            ),
          };
        })(),
        signingAlgorithm: { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' },
        extensions: [new x509.SubjectAlternativeNameExtension([{ type: 'url', value: deviceId }])],
      },
      crypto,
    );
    await expect(
      checkDeviceCsr(new Uint8Array(rsaCsr.rawData), { deviceId, keyType: type }),
    ).rejects.toMatchObject({ code: 'CSR_KEY_TYPE' });
    // Bad signature: flip a byte of the signature (the last bytes of the DER).
    const bad = good.slice();
    bad[bad.length - 3]! ^= 0x01;
    await expect(checkDeviceCsr(bad, { deviceId, keyType: type })).rejects.toMatchObject({
      code: 'CSR_INVALID',
    });
    // A CSR signed by another key than the one it names (no proof of possession).
    const thief = softDevice(type);
    const stolen = await createDeviceCsr(thief.signer, dev.spki, type, deviceId);
    await expect(checkDeviceCsr(stolen, { deviceId, keyType: type })).rejects.toMatchObject({
      code: 'CSR_INVALID',
    });
    // Oversized fields and oversized requests; garbage; trailing bytes.
    const longId = `urn:dev:ueid:${'A'.repeat(300)}`;
    const longCsr = await createDeviceCsr(dev.signer, dev.spki, type, longId);
    await expect(checkDeviceCsr(longCsr, { deviceId: longId, keyType: type })).rejects.toMatchObject({
      code: 'CSR_INVALID',
    });
    await expect(checkDeviceCsr(new Uint8Array(5000), { deviceId, keyType: type })).rejects.toMatchObject({
      code: 'CSR_INVALID',
    });
    await expect(
      checkDeviceCsr(new Uint8Array([0x30, 0x03, 1, 2, 3]), { deviceId, keyType: type }),
    ).rejects.toMatchObject({
      code: 'CSR_INVALID',
    });
    await expect(
      checkDeviceCsr(new Uint8Array([...good, 0]), { deviceId, keyType: type }),
    ).rejects.toMatchObject({ code: 'CSR_INVALID' });
    // Sanity: the hand-signed good CSR passes.
    expect((await checkDeviceCsr(good, { deviceId, keyType: type })).deviceId).toBe(deviceId);
  });

  it('missing token, wrong PIN, locked PIN and bad URIs are typed errors', () => {
    expect(() => FactoryToken.open({ module: hsm.module, token: 'pkcs11:token=nope', pin: PIN })).toThrow(
      expect.objectContaining({ code: 'FACTORY_TOKEN_UNAVAILABLE' }),
    );
    expect(() =>
      FactoryToken.open({ module: '/nonexistent/libp11.so', token: 'rotor-factory', pin: PIN }),
    ).toThrow(expect.objectContaining({ code: 'FACTORY_TOKEN_UNAVAILABLE' }));
    // Wrong PIN on a token nobody is logged in to (C_Login: CKR_PIN_INCORRECT) …
    expect(() => FactoryToken.open({ module: hsm.module, token: 'rotor-other', pin: '0000' })).toThrow(
      expect.objectContaining({ code: 'FACTORY_TOKEN_PIN_INCORRECT' }),
    );
    // … and on one this process is logged in to (C_Login answers CKR_USER_ALREADY_LOGGED_IN without a PIN check).
    expect(() => FactoryToken.open({ module: hsm.module, token: 'rotor-factory', pin: '0000' })).toThrow(
      expect.objectContaining({ code: 'FACTORY_TOKEN_PIN_INCORRECT' }),
    );
    expect(() => parsePkcs11Uri('pkcs11:token=a;token=b')).toThrow(
      expect.objectContaining({ code: 'PKCS11_URI_INVALID' }),
    );
    expect(() => parsePkcs11Uri('http://x')).toThrow(expect.objectContaining({ code: 'PKCS11_URI_INVALID' }));
    expect(() => parsePkcs11Uri('pkcs11:object=a b')).toThrow(
      expect.objectContaining({ code: 'PKCS11_URI_INVALID' }),
    );
    expect(parsePkcs11Uri('pkcs11:token=My%20Token;object=k;id=%01%02?pin-value=1234')).toEqual({
      token: 'My Token',
      object: 'k',
      id: new Uint8Array([1, 2]),
      pinValue: '1234',
    });
  });
});
