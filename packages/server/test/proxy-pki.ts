/**
 * Test fixture: a software factory PKI (root + issuing CA, P-256 keys in memory) that issues device certificates
 * for given public keys — the shape `rotor factory` produces, without a token. Used by the device-TLS tests here and
 * by the device package's credential test (tests may import server test fixtures).
 */
import 'reflect-metadata';
import { createPublicKey, generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import { softwareSigner } from '@rotor/cose';
import {
  createIssuingCa,
  createRootCa,
  issueDeviceCertificate,
  toPem,
  ueidUrn,
  type CaCert,
  type CaKey,
} from '../src/index.ts';
import { signerCrypto, signerKeys } from '../src/factory/x509-signer.ts';

function softwareCaKey(): CaKey {
  const kp = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  return {
    signer: softwareSigner(kp.privateKey, -7),
    spki: new Uint8Array(kp.publicKey.export({ type: 'spki', format: 'der' })),
    type: 'P-256',
  };
}

export interface TestPki {
  readonly root: CaCert;
  readonly issuing: CaCert;
  /** Issuing + root (PEM): the server's device CA bundle. */
  readonly caPem: string;
  /** A device certificate for `spki` (PEM, DER). */
  device(
    spki: Uint8Array,
    o?: { deviceId?: string; validityDays?: number; now?: Date },
  ): Promise<{ pem: string; der: Uint8Array; deviceId: string }>;
  /** A device with a software identity key (P-256). */
  softwareDevice(o?: { validityDays?: number; now?: Date }): Promise<{
    pem: string;
    der: Uint8Array;
    deviceId: string;
    key: KeyObject;
  }>;
}

export async function createTestPki(name = 'Test'): Promise<TestPki> {
  const now = new Date(Date.now() - 3600_000);
  const rk = softwareCaKey();
  const root: CaCert = {
    key: rk,
    cert: await createRootCa(rk, { name: `CN=${name} Root`, validityDays: 30, now }),
  };
  const ik = softwareCaKey();
  const issuing: CaCert = {
    key: ik,
    cert: await createIssuingCa(root, ik, { name: `CN=${name} Issuing`, validityDays: 30, now }),
  };
  const caPem = toPem(new Uint8Array(issuing.cert.rawData)) + toPem(new Uint8Array(root.cert.rawData));
  const device: TestPki['device'] = async (spki, o = {}) => {
    const deviceId = o.deviceId ?? ueidUrn(new Uint8Array([1, ...randomBytes(16)]));
    const issued = await issueDeviceCertificate(
      issuing,
      { spki, type: 'P-256', deviceId },
      { validityDays: o.validityDays ?? 10, now: o.now ?? new Date(Date.now() - 60_000) },
    );
    return { pem: toPem(issued.der), der: issued.der, deviceId };
  };
  return {
    root,
    issuing,
    caPem,
    device,
    async softwareDevice(o = {}) {
      const kp = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
      const spki = new Uint8Array(kp.publicKey.export({ type: 'spki', format: 'der' }));
      return { ...(await device(spki, o)), key: kp.privateKey };
    },
  };
}

export type SoftwareDevice = Awaited<ReturnType<TestPki['softwareDevice']>>;

function tlv(tag: number, ...parts: Uint8Array[]): Uint8Array {
  const body = Buffer.concat(parts);
  const n = body.length;
  const len = n < 0x80 ? [n] : n < 0x100 ? [0x81, n] : [0x82, n >> 8, n & 0xff];
  return new Uint8Array(Buffer.concat([Buffer.from([tag, ...len]), body]));
}

/** RFC 3820 §3.4: the issuer's RDNs plus one RDN with one commonName (UTF8String). */
export function proxySubject(issuer: Uint8Array, cn: string): Uint8Array {
  const head = issuer[1]! < 0x80 ? 2 : 2 + (issuer[1]! & 0x7f);
  const rdn = tlv(0x31, tlv(0x30, Buffer.from('0603550403', 'hex'), tlv(0x0c, Buffer.from(cn, 'utf8'))));
  return tlv(0x30, issuer.subarray(head), rdn);
}

/** The DER subject name of a device certificate. */
export const deviceSubject = (d: { pem: string }): Uint8Array =>
  new Uint8Array(new x509.X509Certificate(d.pem).subjectName.toArrayBuffer());

/**
 * A proxy credential ([proxy, device cert] PEM + proxy key) shaped by default as the device makes it
 * (device/tracker/credential.ts: notBefore 5 min back, subject = issuer + CN, critical proxyCertInfo inheritAll,
 * keyUsage digitalSignature), signed by `signingKey` (default: the device key); any field can be overridden for the
 * refusal cases. Built here with @peculiar/x509: the server package does not depend on the device package.
 */
export async function forgeProxy(
  d: SoftwareDevice,
  o: {
    subject?: string | Uint8Array;
    issuer?: string;
    signingKey?: KeyObject;
    keyUsage?: x509.KeyUsageFlags;
    proxyCertInfo?: boolean;
    notBefore?: Date;
    notAfter?: Date;
  } = {},
): Promise<{ cert: string; key: string }> {
  const dev = new x509.X509Certificate(d.pem);
  const kp = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const signingKey = o.signingKey ?? d.key;
  const spki = new Uint8Array(createPublicKey(signingKey).export({ type: 'spki', format: 'der' }));
  const extensions: x509.Extension[] = [
    new x509.KeyUsagesExtension(o.keyUsage ?? x509.KeyUsageFlags.digitalSignature, true),
  ];
  if (o.proxyCertInfo !== false)
    extensions.push(
      new x509.Extension(
        '1.3.6.1.5.5.7.1.14',
        true,
        new Uint8Array(Buffer.from('300f020100300a06082b06010505071501', 'hex')),
      ),
    );
  const serial = randomBytes(8)
    .toString('hex')
    .replace(/^[89a-f]/, '1');
  const cert = await x509.X509CertificateGenerator.create(
    {
      serialNumber: serial,
      issuer: o.issuer ?? dev.subjectName,
      subject:
        typeof o.subject === 'string'
          ? o.subject
          : new x509.Name(o.subject ?? proxySubject(deviceSubject(d), serial)),
      notBefore: o.notBefore ?? new Date(Date.now() - 300_000),
      notAfter: o.notAfter ?? new Date(Date.now() + 86_400_000),
      publicKey: new Uint8Array(kp.publicKey.export({ type: 'spki', format: 'der' })),
      signingKey: signerKeys(softwareSigner(signingKey, -7), spki, 'P-256').privateKey,
      extensions,
    },
    signerCrypto,
  );
  return {
    cert: toPem(new Uint8Array(cert.rawData)) + d.pem,
    key: kp.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
  };
}
