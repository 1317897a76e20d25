/**
 * Test fixture: a software factory PKI (root + issuing CA, P-256 keys in memory) that issues device certificates
 * for given public keys — the shape `rotor factory` produces, without a token. Used by the device-TLS tests here and
 * by the device package's credential test (tests may import server test fixtures).
 */
import 'reflect-metadata';
import { generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto';
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
