/**
 * The device listener with RFC 3820 proxy client certificates (device-tls.ts), on PGlite: a device whose identity
 * key stays in its enclave checks in with a proxy credential ([proxy, device cert]); plain device certificates still
 * work; every way a proxy can break the path rules is refused with a typed code.
 */
import 'reflect-metadata';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { Agent, request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as x509 from '@peculiar/x509';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig, openDatabase, startServer, type RotorServer } from '../src/index.ts';
import { checkProxy } from '../src/device-tls.ts';
import { selfSignedCert, type TestCert } from './helpers.ts';
import {
  createTestPki,
  deviceSubject as devSubject,
  forgeProxy as forgeProxyAt,
  proxySubject,
  type SoftwareDevice as Device,
  type TestPki,
} from './proxy-pki.ts';

const ADMIN = `admin_${randomBytes(16).toString('hex')}`;
let dir: string;
let pki: TestPki;
let server: RotorServer;
let serverCert: TestCert;
let clock = Date.now();

function checkIn(
  cert: string | undefined,
  key: string | undefined,
  agent: Agent | false = false,
): Promise<{ status: number; body: { code?: string; name?: string } }> {
  return new Promise((resolve, reject) => {
    const r = httpsRequest(
      new URL('/d/v1/self', server.deviceUrl),
      {
        method: 'GET',
        ca: serverCert.certPem,
        ...(cert === undefined ? {} : { cert, key }),
        agent,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          resolve({
            status: res.statusCode ?? 0,
            body: JSON.parse(Buffer.concat(chunks).toString()) as { code?: string; name?: string },
          });
        });
      },
    );
    r.on('error', reject);
    r.end();
  });
}

async function register(d: { pem: string; deviceId: string }): Promise<string> {
  const res = await fetch(new URL('/v1/devices', server.operatorUrl), {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name: d.deviceId, certificatePem: d.pem }),
  });
  expect(res.status).toBe(201);
  return ((await res.json()) as { id: string }).id;
}

/** A hand-made "proxy" (any fields; valid for an hour around the server's clock by default): for the refusal cases. */
const forgeProxy = (d: Device, o: Parameters<typeof forgeProxyAt>[1] = {}): ReturnType<typeof forgeProxyAt> =>
  forgeProxyAt(d, { notBefore: new Date(clock - 60_000), notAfter: new Date(clock + 3600_000), ...o });

/**
 * A proxy credential as the device makes it (device/tracker/credential.ts: notBefore 5 min back, subject = issuer +
 * CN, critical proxyCertInfo inheritAll, keyUsage digitalSignature), built here with @peculiar/x509 — the server
 * package does not depend on the device package; the device's own credential meets this listener in the CLI's
 * end-to-end test (factory-device-run).
 */
const credential = (
  d: Device,
  o: { lifetimeMs?: number; now?: number } = {},
): Promise<{ cert: string; key: string }> => {
  const now = o.now ?? clock;
  return forgeProxy(d, {
    notBefore: new Date(now - 300_000),
    notAfter: new Date(now + (o.lifetimeMs ?? 86_400_000)),
  });
};

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'rotor-device-tls-'));
  mkdirSync(join(dir, 'data'));
  pki = await createTestPki('Device TLS');
  serverCert = await selfSignedCert('localhost', { server: true });
  writeFileSync(join(dir, 'server.crt'), serverCert.certPem);
  writeFileSync(join(dir, 'server.key'), serverCert.keyPem);
  writeFileSync(join(dir, 'device-ca.pem'), pki.caPem);
  const config = loadConfig({
    argv: ['--port', '0', '--device-port', '0', '--mqtt-port', '0', '--log-level', 'silent'],
    env: {
      ROTOR_ADMIN_TOKEN: ADMIN,
      ROTOR_DATA_DIR: join(dir, 'data'),
      ROTOR_TLS_CERT_FILE: join(dir, 'server.crt'),
      ROTOR_TLS_KEY_FILE: join(dir, 'server.key'),
      ROTOR_DEVICE_CA_FILE: join(dir, 'device-ca.pem'),
    },
  });
  server = await startServer(config, { db: await openDatabase({}), now: () => clock });
});

afterAll(async () => {
  await server.close();
  await server.db.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('device listener: RFC 3820 proxy client certificates', () => {
  it('a registered device checks in with a proxy credential; plain device certificates still work', async () => {
    const d = await pki.softwareDevice();
    await register(d);
    const cred = await credential(d);
    const ok = await checkIn(cred.cert, cred.key);
    expect(ok.status).toBe(200);
    expect(ok.body.name).toBe(d.deviceId);
    const plain = await checkIn(d.pem, d.key.export({ type: 'pkcs8', format: 'pem' }).toString());
    expect(plain.status).toBe(200);
    expect(plain.body.name).toBe(d.deviceId);
    // No client certificate at all.
    expect(await checkIn(undefined, undefined)).toMatchObject({
      status: 401,
      body: { code: 'DEVICE_CERT_REQUIRED' },
    });
  });

  it('refuses a proxy of an unregistered device, and of a disabled one on its next request', async () => {
    const stray = await pki.softwareDevice();
    const c = await credential(stray);
    expect(await checkIn(c.cert, c.key)).toMatchObject({ status: 403, body: { code: 'DEVICE_UNKNOWN' } });

    const d = await pki.softwareDevice();
    const id = await register(d);
    const cred = await credential(d);
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    try {
      expect((await checkIn(cred.cert, cred.key, agent)).status).toBe(200);
      const patch = await fetch(new URL(`/v1/devices/${id}`, server.operatorUrl), {
        method: 'PATCH',
        headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
        body: JSON.stringify({ enabled: false }),
      });
      expect(patch.status).toBe(200);
      // Same kept-alive connection: refused on the next request.
      expect(await checkIn(cred.cert, cred.key, agent)).toMatchObject({
        status: 403,
        body: { code: 'DEVICE_DISABLED' },
      });
    } finally {
      agent.destroy();
    }
  });

  it('refuses expired and over-long proxies; a kept-alive connection does not outlive its proxy', async () => {
    const d = await pki.softwareDevice();
    await register(d);
    const old = await credential(d, { lifetimeMs: 3600_000, now: clock - 2 * 3600_000 });
    expect(await checkIn(old.cert, old.key)).toMatchObject({
      status: 401,
      body: { code: 'DEVICE_PROXY_EXPIRED' },
    });
    const long = await credential(d, { lifetimeMs: 8 * 86_400_000 });
    expect(await checkIn(long.cert, long.key)).toMatchObject({
      status: 401,
      body: { code: 'DEVICE_PROXY_EXPIRED' },
    });
    const future = await forgeProxy(d, {
      notBefore: new Date(clock + 3600_000),
      notAfter: new Date(clock + 7200_000),
    });
    expect(await checkIn(future.cert, future.key)).toMatchObject({
      status: 401,
      body: { code: 'DEVICE_PROXY_EXPIRED' },
    });
    const cred = await credential(d, { lifetimeMs: 3600_000 });
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    const saved = clock;
    try {
      expect((await checkIn(cred.cert, cred.key, agent)).status).toBe(200);
      clock += 2 * 3600_000;
      expect(await checkIn(cred.cert, cred.key, agent)).toMatchObject({
        status: 401,
        body: { code: 'DEVICE_PROXY_EXPIRED' },
      });
    } finally {
      clock = saved;
      agent.destroy();
    }
  });

  it('refuses proxies that break the RFC 3820 profile', async () => {
    const d = await pki.softwareDevice();
    await register(d);
    const other = await pki.softwareDevice();
    await register(other);
    const refused = async (
      c: { cert: string; key: string },
      code = 'DEVICE_PROXY_INVALID',
    ): Promise<void> => {
      const r = await checkIn(c.cert, c.key);
      expect(r.body.code).toBe(code);
      expect(r.status).toBe(401);
    };
    // The control: a well-formed forged proxy signed by the device key is accepted.
    expect((await checkIn(...(Object.values(await forgeProxy(d)) as [string, string]))).status).toBe(200);
    // §3.4: subject is not issuer + one CN.
    await refused(await forgeProxy(d, { subject: 'CN=someone else, CN=1234' }));
    // …an O instead of the CN, two CNs, the issuer name alone.
    const withO = Buffer.from(proxySubject(devSubject(d), 'x')).toString('hex');
    const at = withO.lastIndexOf('0603550403');
    const oName = withO.slice(0, at) + '060355040a' + withO.slice(at + 10);
    await refused(await forgeProxy(d, { subject: new Uint8Array(Buffer.from(oName, 'hex')) }));
    await refused(await forgeProxy(d, { subject: proxySubject(proxySubject(devSubject(d), 'a'), 'b') }));
    await refused(await forgeProxy(d, { subject: devSubject(d) }));
    // §3.7: keyCertSign.
    await refused(
      await forgeProxy(d, {
        keyUsage: x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyCertSign,
      }),
    );
    // Signed by another key than the device certificate's.
    await refused(
      await forgeProxy(d, { signingKey: generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey }),
    );
    // The issuer is not the certificate presented after it: [proxy of d, certificate of other].
    const cred = await credential(d);
    const proxyOnly = cred.cert.slice(0, cred.cert.indexOf('-----END CERTIFICATE-----') + 26);
    await refused({ cert: proxyOnly + other.pem, key: cred.key });
    // …or nothing after it at all.
    await refused({ cert: proxyOnly, key: cred.key });
    // Without proxyCertInfo, a certificate issued by the device key is a plain certificate OpenSSL refuses.
    await refused(await forgeProxy(d, { proxyCertInfo: false }), 'DEVICE_CERT_REQUIRED');
  });

  it('refuses device certificates not issued by the device CA, plain or under a proxy', async () => {
    const foreign = await createTestPki('Device TLS');
    const f = await foreign.softwareDevice();
    // Registered by fingerprint (an operator mistake), still refused: it does not chain to the device CA.
    await register(f);
    expect(await checkIn(f.pem, f.key.export({ type: 'pkcs8', format: 'pem' }).toString())).toMatchObject({
      status: 401,
      body: { code: 'DEVICE_CERT_REQUIRED' },
    });
    const c = await credential(f);
    expect(await checkIn(c.cert, c.key)).toMatchObject({
      status: 401,
      body: { code: 'DEVICE_CERT_REQUIRED' },
    });
  });

  it('checkProxy: bounded, strict input', async () => {
    const d = await pki.softwareDevice();
    const cred = await credential(d);
    const der = (p: string): Uint8Array =>
      new Uint8Array(Buffer.from(p.replace(/-----[A-Z ]+-----|\s/g, ''), 'base64'));
    const proxyDer = der(cred.cert.slice(0, cred.cert.indexOf('-----END CERTIFICATE-----') + 25));
    expect(checkProxy(proxyDer, d.der, { nowMs: clock }).deviceDer).toEqual(d.der);
    const cut = proxyDer.slice(0, proxyDer.length - 1);
    expect(() => checkProxy(cut, d.der, { nowMs: clock })).toThrow(
      expect.objectContaining({ code: 'DEVICE_PROXY_INVALID' }),
    );
    expect(() => checkProxy(new Uint8Array(20_000), d.der, { nowMs: clock })).toThrow(
      expect.objectContaining({ code: 'DEVICE_PROXY_INVALID' }),
    );
    expect(() => checkProxy(proxyDer, d.der, { nowMs: clock, maxLifetimeMs: 3600_000 })).toThrow(
      expect.objectContaining({ code: 'DEVICE_PROXY_EXPIRED' }),
    );
  });
});
