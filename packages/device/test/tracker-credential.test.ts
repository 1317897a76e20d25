/**
 * RFC 3820 proxy credential (tracker/credential.ts): the structure of the proxy certificate (issuer, subject =
 * issuer + one CN, critical proxyCertInfo with id-ppl-inheritAll, keyUsage digitalSignature only, validity), its
 * signature by the enclave-held identity key through the COSE Signer (EnclaveCore in process), and renewal.
 */
import 'reflect-metadata';
import { spawnSync } from 'node:child_process';
import { createPrivateKey, createPublicKey, randomBytes, X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as x509 from '@peculiar/x509';
import { beforeAll, describe, expect, it } from 'vitest';
import { coseKeyToPublicKeyObject, decodeCoseKey, softwareSigner, type Signer } from '@rotor/cose';
import { DeviceError } from '../src/errors.ts';
import { EnclaveClient } from '../src/enclave/client.ts';
import { EnclaveCore } from '../src/enclave/core.ts';
import { SimulatedFs } from '../src/storage/sim.ts';
import {
  OID_PPL_INHERIT_ALL,
  PROXY_BACKDATE_MS,
  PROXY_LIFETIME_MS,
  ProxyCredential,
  pemToDer,
} from '../src/tracker/credential.ts';
import { createTestPki, type TestPki } from '../../server/test/proxy-pki.ts';

let pki: TestPki;
let core: EnclaveCore;
let signer: Signer;
let device: { pem: string; der: Uint8Array; deviceId: string };

beforeAll(async () => {
  pki = await createTestPki('Credential');
  core = await EnclaveCore.open({ fs: new SimulatedFs(), fuse: new Uint8Array(randomBytes(32)) });
  const info = await core.generateKey({ keyId: 'identity', type: 'ES256' });
  const spki = new Uint8Array(
    coseKeyToPublicKeyObject(decodeCoseKey(info.publicKey)).export({ type: 'spki', format: 'der' }),
  );
  signer = {
    alg: -7,
    kid: undefined,
    sign: async (data) => (await core.sign({ keyId: 'identity', data })).signature,
  };
  device = await pki.device(spki);
});

function certsOf(pem: string): string[] {
  return pem.match(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----\n/g) ?? [];
}

describe('RFC 3820 proxy credential', () => {
  it('is a proxy certificate signed by the enclave identity key, sent as [proxy, device cert]', async () => {
    const t0 = Date.now();
    const cred = await ProxyCredential.create({ deviceCertPem: device.pem, signer, now: () => t0 });
    const chain = certsOf(cred.cert);
    expect(chain).toHaveLength(2);
    expect(Buffer.from(pemToDer(chain[1]!)).equals(Buffer.from(device.der))).toBe(true);
    const proxy = new x509.X509Certificate(chain[0]!);
    const dev = new x509.X509Certificate(device.pem);
    // RFC 3820 §3.1 issuer = device subject; §3.4 subject = issuer + one CN (the serial).
    expect(Buffer.from(proxy.issuerName.toArrayBuffer())).toEqual(
      Buffer.from(dev.subjectName.toArrayBuffer()),
    );
    expect(proxy.subject).toBe(`${dev.subject}, CN=${proxy.serialNumber}`);
    const subjectJson = proxy.subjectName.toJSON();
    expect(subjectJson).toHaveLength(dev.subjectName.toJSON().length + 1);
    expect(subjectJson.at(-1)).toEqual({ CN: [proxy.serialNumber] });
    // RFC 3820 §3.8: proxyCertInfo critical, pCPathLenConstraint 0, id-ppl-inheritAll.
    const pci = proxy.extensions.find((e) => e.type === '1.3.6.1.5.5.7.1.14')!;
    expect(pci.critical).toBe(true);
    expect(Buffer.from(pci.value).toString('hex')).toBe(`300f020100300a0608${OID_PPL_INHERIT_ALL}`);
    // §3.7: keyUsage digitalSignature only (no keyCertSign); no SAN, no basicConstraints.
    const ku = proxy.getExtension(x509.KeyUsagesExtension)!;
    expect(ku.critical).toBe(true);
    expect(ku.usages).toBe(x509.KeyUsageFlags.digitalSignature);
    expect(proxy.getExtension(x509.SubjectAlternativeNameExtension)).toBeNull();
    expect(proxy.getExtension(x509.BasicConstraintsExtension)).toBeNull();
    // AKI = the device certificate's SKI (RFC 5280 §4.2.1.1).
    expect(proxy.getExtension(x509.AuthorityKeyIdentifierExtension)?.keyId).toBe(
      dev.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId,
    );
    // Validity: 24 h from now, back-dated 5 min for clock skew.
    expect(cred.notAfter.getTime()).toBe(Math.floor((t0 + PROXY_LIFETIME_MS) / 1000) * 1000);
    expect(cred.notBefore.getTime()).toBe(Math.floor((t0 - PROXY_BACKDATE_MS) / 1000) * 1000);
    // Signed by the enclave's identity key: verifies with the device certificate's public key.
    expect(new X509Certificate(chain[0]!).verify(new X509Certificate(device.pem).publicKey)).toBe(true);
    // The ephemeral key is the proxy's key.
    const pub = createPublicKey(createPrivateKey(cred.key)).export({ type: 'spki', format: 'der' });
    expect(Buffer.from(pub)).toEqual(Buffer.from(proxy.publicKey.rawData));
    // OpenSSL's own RFC 3820 path validation accepts it when proxy certificates are allowed.
    const dir = mkdtempSync(join(tmpdir(), 'rotor-proxy-'));
    try {
      writeFileSync(join(dir, 'ca.pem'), pki.caPem);
      writeFileSync(join(dir, 'dev.pem'), device.pem);
      writeFileSync(join(dir, 'proxy.pem'), chain[0]!);
      const args = ['verify', '-CAfile', join(dir, 'ca.pem'), '-untrusted', join(dir, 'dev.pem')];
      const ok = spawnSync('openssl', [...args, '-allow_proxy_certs', join(dir, 'proxy.pem')], {
        encoding: 'utf8',
      });
      expect(ok.stdout).toContain('OK');
      // …and refuses it without the flag: the reason the server decides in the application (device-tls.ts).
      const no = spawnSync('openssl', [...args, join(dir, 'proxy.pem')], { encoding: 'utf8' });
      expect(no.status).not.toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('works the same with the enclave in its own process, over the IPQ (EnclaveClient.signer)', async () => {
    const stateDir = mkdtempSync(join(tmpdir(), 'rotor-proxy-enclave-'));
    const c = await EnclaveClient.start({ stateDir, timeoutMs: 30_000 });
    try {
      const info = await c.generateKey('identity', 'ES256');
      const spki = new Uint8Array(
        coseKeyToPublicKeyObject(decodeCoseKey(info.publicKey)).export({ type: 'spki', format: 'der' }),
      );
      const dev = await pki.device(spki);
      const cred = await ProxyCredential.create({
        deviceCertPem: dev.pem,
        signer: await c.signer('identity'),
      });
      const proxyPem = certsOf(cred.cert)[0]!;
      expect(new X509Certificate(proxyPem).verify(new X509Certificate(dev.pem).publicKey)).toBe(true);
      await cred.renew();
      expect(new X509Certificate(certsOf(cred.cert)[0]!).verify(new X509Certificate(dev.pem).publicKey)).toBe(
        true,
      );
    } finally {
      await c.close();
      rmSync(stateDir, { recursive: true, force: true });
    }
  });

  it('renews before expiry with a fresh ephemeral key; concurrent users share one renewal', async () => {
    let t = Date.now();
    const cred = await ProxyCredential.create({
      deviceCertPem: device.pem,
      signer,
      lifetimeMs: 3600_000,
      now: () => t,
    });
    const first = await cred.current();
    expect(cred.due()).toBe(false);
    expect(cred.renewals).toBe(0);
    // A third of the lifetime left: due.
    t += 2 * 1200_000 + 1;
    expect(cred.due()).toBe(true);
    const [a, b] = await Promise.all([cred.current(), cred.current()]);
    expect(cred.renewals).toBe(1);
    expect(a.cert).toBe(b.cert);
    expect(a.cert).not.toBe(first.cert);
    expect(a.key).not.toBe(first.key);
    expect(cred.due()).toBe(false);
    expect(cred.notAfter.getTime()).toBe(Math.floor((t + 3600_000) / 1000) * 1000);
    expect(cred.cert).toBe(a.cert);
  });

  it('never outlives the device certificate and refuses signers and inputs it cannot use', async () => {
    const t = Date.now();
    const sw = await pki.softwareDevice({ validityDays: 1, now: new Date(t - 23.5 * 3600_000) });
    const cred = await ProxyCredential.create({ deviceCertPem: sw.pem, signer: softwareSigner(sw.key, -7) });
    expect(cred.notAfter.getTime()).toBeLessThanOrEqual(new X509Certificate(sw.pem).validToDate.getTime());
    const expired = await pki.softwareDevice({ validityDays: 1, now: new Date(t - 2 * 86_400_000) });
    await expect(
      ProxyCredential.create({ deviceCertPem: expired.pem, signer: softwareSigner(expired.key, -7) }),
    ).rejects.toMatchObject({ code: 'REQUEST_INVALID' });
    await expect(
      ProxyCredential.create({ deviceCertPem: device.pem, signer: { ...signer, alg: -35 } }),
    ).rejects.toMatchObject({ code: 'KEY_USAGE' });
    await expect(
      ProxyCredential.create({ deviceCertPem: 'not a certificate', signer }),
    ).rejects.toBeInstanceOf(DeviceError);
    await expect(
      ProxyCredential.create({
        deviceCertPem: `-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n`,
        signer,
      }),
    ).rejects.toMatchObject({ code: 'REQUEST_INVALID' });
  });
});
