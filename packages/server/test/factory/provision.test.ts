/**
 * Provisioning on a real SoftHSM2 token against a real server instance (PGlite): each device generates its key,
 * sends a CSR, gets a certificate from the issuing CA in the token, is registered (certificate recorded in the audit
 * log in the same transaction) and stores its bundle; it then completes an mTLS check-in on the device listener,
 * which only accepts registered, enabled certificates chaining to the factory CA. A crash injected at every step
 * of a batch leaves no half-provisioned device, and the batch resumes.
 */
import 'reflect-metadata';
import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  randomBytes,
  type KeyObject,
} from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import * as x509 from '@peculiar/x509';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { softwareSigner } from '@rotor/cose';
import {
  createDeviceCsr,
  createIssuingCa,
  createRootCa,
  dbRegistry,
  FactoryToken,
  issueDeviceCertificate,
  checkDeviceCsr,
  loadConfig,
  openDatabase,
  provisionDevices,
  readAuditLog,
  startServer,
  toPem,
  ueidUrn,
  verifyAuditLogInDb,
  type CaCert,
  type DeviceBundle,
  type DeviceFactory,
  type ProvisioningProfile,
  type ProvisionStep,
  type RotorServer,
} from '../../src/index.ts';
import { selfSignedCert, type TestCert } from '../helpers.ts';
import { createSoftHsm, type SoftHsm } from './softhsm.ts';

const PIN = '4321';
const ADMIN = `admin_${randomBytes(16).toString('hex')}`;
let hsm: SoftHsm;
let token: FactoryToken;
let root: CaCert;
let issuing: CaCert;
let server: RotorServer;
let serverCert: TestCert;
let dir: string;

const profile = (): ProvisioningProfile => ({
  name: 'test-profile',
  deviceClass: 'sensor-v1',
  keyType: 'P-256',
  validityDays: 365,
  trustAnchors: {
    authorKeyPem: '-----BEGIN PUBLIC KEY-----\nauthor\n-----END PUBLIC KEY-----\n',
    operatorKeyPem: '-----BEGIN PUBLIC KEY-----\noperator\n-----END PUBLIC KEY-----\n',
    serverTlsCaPem: serverCert.certPem,
    factoryCaPem: toPem(new Uint8Array(root.cert.rawData)),
  },
  firmware: { envelopeBase64: Buffer.from('suit').toString('base64'), sha256: '00'.repeat(32) },
  antiRollback: { '0': 1 },
});

/**
 * A test device: its "enclave" is a directory holding a fuse secret and the identity key (a stand-in for the
 * device's sealed store; the real enclave is @rotor/device, which this package must not import). The private key
 * is only exported here so the test can open a TLS connection as the device.
 */
function testDevices(
  root: string,
): DeviceFactory & { key(i: number): KeyObject; bundle(i: number): DeviceBundle | undefined } {
  const d = (i: number): string => join(root, `dev-${i}`);
  return {
    open(i) {
      mkdirSync(d(i), { recursive: true });
      const fuseFile = join(d(i), 'fuse');
      if (!existsSync(fuseFile)) writeFileSync(fuseFile, randomBytes(16));
      const deviceId = ueidUrn(new Uint8Array([0x01, ...readFileSync(fuseFile)]));
      const keyFile = join(d(i), 'identity.pem');
      return Promise.resolve({
        deviceId,
        async createCsr() {
          if (!existsSync(keyFile)) {
            const kp = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
            writeFileSync(`${keyFile}.tmp`, kp.privateKey.export({ type: 'pkcs8', format: 'pem' }));
            renameSync(`${keyFile}.tmp`, keyFile);
          }
          const priv = createPrivateKey(readFileSync(keyFile));
          const spki = new Uint8Array(createPublicKey(priv).export({ type: 'spki', format: 'der' }));
          return createDeviceCsr(softwareSigner(priv, -7), spki, 'P-256', deviceId);
        },
        install(b) {
          writeFileSync(join(d(i), 'bundle.json.tmp'), JSON.stringify(b));
          renameSync(join(d(i), 'bundle.json.tmp'), join(d(i), 'bundle.json'));
          return Promise.resolve();
        },
      });
    },
    discard(i) {
      rmSync(d(i), { recursive: true, force: true });
      return Promise.resolve();
    },
    key(i) {
      return createPrivateKey(readFileSync(join(d(i), 'identity.pem')));
    },
    bundle(i) {
      const f = join(d(i), 'bundle.json');
      return existsSync(f) ? (JSON.parse(readFileSync(f, 'utf8')) as DeviceBundle) : undefined;
    },
  };
}

function checkIn(
  certPem: string | undefined,
  keyPem: string | undefined,
  chain: string[] = [],
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const r = httpsRequest(
      new URL('/d/v1/self', server.deviceUrl),
      {
        method: 'GET',
        ca: serverCert.certPem,
        ...(certPem === undefined ? {} : { cert: [certPem, ...chain].join(''), key: keyPem }),
        agent: false,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() });
        });
      },
    );
    r.on('error', reject);
    r.end();
  });
}

beforeAll(async () => {
  hsm = createSoftHsm();
  hsm.initToken('rotor-factory', PIN);
  dir = hsm.dir;
  token = FactoryToken.open({ module: hsm.module, token: 'pkcs11:token=rotor-factory', pin: PIN });
  const rootUri = 'pkcs11:token=rotor-factory;object=root-ca';
  const issUri = 'pkcs11:token=rotor-factory;object=issuing-ca';
  const rk = {
    ...(await token.generate(rootUri, 'P-256')),
    signer: await token.signer(rootUri),
    type: 'P-256' as const,
  };
  const ik = {
    ...(await token.generate(issUri, 'P-256')),
    signer: await token.signer(issUri),
    type: 'P-256' as const,
  };
  const notBefore = new Date(Date.now() - 60_000);
  root = {
    key: rk,
    cert: await createRootCa(rk, { name: 'CN=Test Root', validityDays: 30, now: notBefore }),
  };
  issuing = {
    key: ik,
    cert: await createIssuingCa(root, ik, { name: 'CN=Test Issuing', validityDays: 30, now: notBefore }),
  };
  serverCert = await selfSignedCert('localhost', { server: true });
  writeFileSync(join(dir, 'server.crt'), serverCert.certPem);
  writeFileSync(join(dir, 'server.key'), serverCert.keyPem);
  // The device CA bundle: the factory chain (issuing + root).
  writeFileSync(
    join(dir, 'device-ca.pem'),
    toPem(new Uint8Array(issuing.cert.rawData)) + toPem(new Uint8Array(root.cert.rawData)),
  );
  const config = loadConfig({
    argv: [
      '--port',
      '0',
      '--device-port',
      '0',
      '--mqtt-port',
      '0',
      '--log-level',
      'silent',
      '--data-dir',
      join(dir, 'data'),
    ],
    env: {
      ROTOR_ADMIN_TOKEN: ADMIN,
      ROTOR_TLS_CERT_FILE: join(dir, 'server.crt'),
      ROTOR_TLS_KEY_FILE: join(dir, 'server.key'),
      ROTOR_DEVICE_CA_FILE: join(dir, 'device-ca.pem'),
    },
  });
  mkdirSync(join(dir, 'data'), { recursive: true });
  server = await startServer(config, { db: await openDatabase({}) });
});

afterAll(async () => {
  await server.close();
  await server.db.close();
  await token.close();
  hsm.cleanup();
});

describe('manufacturing provisioning', () => {
  it('provisions a batch; devices check in over mTLS; forged, unregistered and disabled devices are refused', async () => {
    const devices = testDevices(join(dir, 'batch1'));
    const progress: number[] = [];
    const r = await provisionDevices({
      root,
      issuing,
      profile: profile(),
      journalPath: join(dir, 'batch1.journal'),
      count: 3,
      devices,
      registry: dbRegistry(server.db),
      onProgress: (done) => progress.push(done),
    });
    expect(r.provisioned).toBe(3);
    expect(r.deviceIds).toHaveLength(3);
    expect(progress.at(-1)).toBe(3);
    const b = devices.bundle(0)!;
    expect(b.chainPem).toHaveLength(2);
    expect(b.trustAnchors.factoryCaPem).toContain('BEGIN CERTIFICATE');
    const cert = new x509.X509Certificate(b.certificatePem);
    expect(cert.getExtension(x509.SubjectAlternativeNameExtension)?.names.items[0]?.value).toBe(b.deviceId);
    // Registered with class, profile and public key; every issued certificate is in the audit log.
    const rows = await server.db.query<{
      id: string;
      name: string;
      device_group: string;
      attributes: Record<string, string>;
    }>('SELECT id, name, device_group, attributes FROM devices ORDER BY name');
    expect(rows.map((x) => x.name).sort()).toEqual([...r.deviceIds].sort());
    expect(rows[0]!.device_group).toBe('sensor-v1');
    expect(rows[0]!.attributes.profile).toBe('test-profile');
    const issuedSerials: string[] = [];
    for await (const e of readAuditLog(server.db)) {
      const body = JSON.parse(e.body) as { action: string; details: { serial?: string } };
      if (body.action === 'certificate.issue' && body.details.serial !== undefined)
        issuedSerials.push(body.details.serial);
    }
    expect(issuedSerials).toContain(cert.serialNumber);
    expect(issuedSerials).toHaveLength(3);
    expect((await verifyAuditLogInDb(server.db)).ok).toBe(true);

    // mTLS check-in with the device's own certificate and key.
    const keyPem = devices.key(0).export({ type: 'pkcs8', format: 'pem' }).toString();
    const ok = await checkIn(b.certificatePem, keyPem);
    expect(ok.status).toBe(200);
    expect(JSON.parse(ok.body)).toMatchObject({ name: b.deviceId });

    // Unregistered: a certificate the factory CA issued but the registry does not know.
    const kp = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    const spki = new Uint8Array(kp.publicKey.export({ type: 'spki', format: 'der' }));
    const strayId = ueidUrn(new Uint8Array([1, ...randomBytes(16)]));
    const stray = await issueDeviceCertificate(
      issuing,
      await checkDeviceCsr(await createDeviceCsr(softwareSigner(kp.privateKey, -7), spki, 'P-256', strayId), {
        deviceId: strayId,
        keyType: 'P-256',
      }),
      { validityDays: 1, now: new Date(Date.now() - 60_000) },
    );
    const strayKeyPem = kp.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    const unknown = await checkIn(toPem(stray.der), strayKeyPem);
    expect(unknown.status).toBe(403);
    expect(JSON.parse(unknown.body)).toMatchObject({ code: 'DEVICE_UNKNOWN' });

    // Forged: the same device id and a look-alike issuer, signed by a CA outside the factory chain; refused (RFC 5280
    // §6 path validation by OpenSSL fails), whatever the registry says. The listener completes handshakes that
    // OpenSSL does not verify (RFC 3820 proxy certificates are decided in the application, device-tls.ts), so the
    // refusal is a typed 401 on the request.
    const forgedRootKey = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    const fspki = new Uint8Array(forgedRootKey.publicKey.export({ type: 'spki', format: 'der' }));
    const fk = { signer: softwareSigner(forgedRootKey.privateKey, -7), spki: fspki, type: 'P-256' as const };
    const fakeIssuing: CaCert = {
      key: fk,
      cert: await createRootCa(fk, {
        name: 'CN=Test Issuing',
        validityDays: 1,
        now: new Date(Date.now() - 60_000),
      }),
    };
    const devKey = devices.key(1);
    const devSpki = new Uint8Array(createPublicKey(devKey).export({ type: 'spki', format: 'der' }));
    const forged = await issueDeviceCertificate(
      fakeIssuing,
      { spki: devSpki, type: 'P-256', deviceId: r.deviceIds[1]! },
      { validityDays: 1, now: new Date(Date.now() - 60_000) },
    );
    const forgedIn = await checkIn(
      toPem(forged.der),
      devKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    );
    expect(forgedIn.status).toBe(401);
    expect(JSON.parse(forgedIn.body)).toMatchObject({ code: 'DEVICE_CERT_REQUIRED' });
    // No client certificate at all.
    const none = await checkIn(undefined, undefined);
    expect(none.status).toBe(401);
    expect(JSON.parse(none.body)).toMatchObject({ code: 'DEVICE_CERT_REQUIRED' });

    // Disabled: takes effect on the next request.
    const id = rows.find((x) => x.name === b.deviceId)!.id;
    const patch = await fetch(new URL(`/v1/devices/${id}`, server.operatorUrl), {
      method: 'PATCH',
      headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ enabled: false }),
    });
    expect(patch.status).toBe(200);
    const off = await checkIn(b.certificatePem, keyPem);
    expect(off.status).toBe(403);
    expect(JSON.parse(off.body)).toMatchObject({ code: 'DEVICE_DISABLED' });
  });

  it('a crash at any step leaves no half-provisioned device; the batch resumes', async () => {
    const steps: ProvisionStep[] = ['begin', 'csr', 'signed', 'issued', 'registered', 'installed', 'done'];
    const base = join(dir, 'crash');
    const devices = testDevices(base);
    const journalPath = join(dir, 'crash.journal');
    const registry = dbRegistry(server.db);
    const count = 10;
    const before = (await server.db.query<{ n: number }>('SELECT count(*)::int AS n FROM devices'))[0]!.n;
    let crashes = 0;
    for (const s of steps) {
      const crash = new Error(`crash after ${s}`);
      await expect(
        provisionDevices({
          root,
          issuing,
          profile: profile(),
          journalPath,
          count,
          devices,
          registry,
          concurrency: 2,
          afterStep: (step) => {
            if (step === s) throw crash;
          },
        }),
      ).rejects.toBe(crash);
      crashes++;
      // Invariant after recovery (a dry run with count 0 only recovers): each device is done or not started.
      await provisionDevices({ root, issuing, profile: profile(), journalPath, count: 0, devices, registry });
      const regs = await server.db.query<{ name: string }>(
        "SELECT name FROM devices WHERE 'factory' = ANY(tags)",
      );
      const names = new Set(regs.map((x) => x.name));
      for (const entry of existsSync(base) ? readdirSync(base) : []) {
        const i = Number(entry.slice('dev-'.length));
        const bundle = devices.bundle(i);
        // A device directory that exists after recovery is fully provisioned and registered.
        expect(bundle, `device ${i} after crash at ${s}`).toBeDefined();
        expect(names.has(bundle!.deviceId)).toBe(true);
      }
    }
    expect(crashes).toBe(steps.length);
    const r = await provisionDevices({
      root,
      issuing,
      profile: profile(),
      journalPath,
      count,
      devices,
      registry,
    });
    expect(r.deviceIds).toHaveLength(count);
    for (let i = 0; i < count; i++) expect(devices.bundle(i)?.deviceId).toBe(r.deviceIds[i]);
    const after = (await server.db.query<{ n: number }>('SELECT count(*)::int AS n FROM devices'))[0]!.n;
    expect(after - before).toBe(count);
    expect((await verifyAuditLogInDb(server.db)).ok).toBe(true);
  });
});
